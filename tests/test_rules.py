"""Every gradient rule against central finite differences, driven by one table (JAX lax-test style).

Each `Case` describes a one-node model: the op, its attributes, its inputs (graph inputs, or
initializers for weights and axes), the value range of each input (chosen away from kinks), the
opset and the float type. For every input named in `wrt` the test builds the model, asks
`gradient_model` for ∂⟨u, y⟩/∂x with a random seed u, runs it in onnxruntime and compares:

- inputs of at most JACOBIAN_MAX elements: the whole vector Jᵀu, element by element, with
  (⟨u, f(x + h·e_i)⟩ − ⟨u, f(x − h·e_i)⟩) / 2h;
- larger inputs: ⟨v, Jᵀu⟩ with (⟨u, f(x + h·v)⟩ − ⟨u, f(x − h·v)⟩) / 2h in a few random
  directions v ∈ [−1, 1]ⁿ (cheap at any size).

float64 where onnxruntime runs the op in double; float32 otherwise (Conv, pools, BN, HardSwish...),
with a larger h: those ops are piecewise linear (HardSwish: piecewise quadratic), so central
differences are exact up to rounding. The step actually taken (x + h and x − h rounded to the
input's type) is what the differences divide by.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import UnsupportedOpError
from onnxcam.grad.rules import RULES
from onnxcam.graph.rewrite import GRAD_OUTPUT, SEED_INPUT, gradient_model

OPSET = 17
F8, F4 = np.float64, np.float32
JACOBIAN_MAX = 200  # inputs up to this many elements get the full Jᵀu, element by element
DIRECTIONS = 3
OUT = "out"  # the one-node model's output  # random directions for larger inputs
DEFAULT_H = {F8: 1e-5, F4: 1e-2}
DEFAULT_TOL = {F8: 1e-6, F4: 2e-3}
NONLINEAR_F4 = {"h": 1e-3, "tol": 3e-3}  # float32-only smooth ops: truncation ~h², rounding ~eps/h


# ------------------------------------------------------------------------------------------------
# the table's vocabulary


@dataclass(frozen=True)
class In:
    """One node input: a graph input (`const=False`) or an initializer, and how to sample it."""

    shape: tuple[int, ...] = ()
    lo: float = -1.0
    hi: float = 1.0
    const: bool = False
    gen: str = "uniform"  # uniform | distinct (shuffled evenly spaced lo..hi) | grid (0.1·k + offset)
    avoid: tuple[float, ...] = ()  # kinks: uniform samples stay `margin` away from them
    margin: float = 0.05
    offset: float = 0.0
    value: Union[np.ndarray, Callable[[np.random.Generator], np.ndarray], None] = None
    dtype: Any = None  # default: the case's float type (ints and bools keep their own)


def V(*shape: int, **kw: Any) -> In:
    """A float graph input (what can be differentiated)."""
    return In(tuple(shape), **kw)


def W(*shape: int, **kw: Any) -> In:
    """A float initializer (weights, biases, constant operands)."""
    return In(tuple(shape), const=True, **kw)


def I(values: Any) -> In:  # noqa: E743  (an int64 initializer: axes, shapes)
    return In(const=True, value=np.asarray(values, dtype=np.int64))


def F(value: float) -> In:
    """A float scalar initializer in the case's float type (Clip bounds, exponents)."""
    return In(const=True, value=np.asarray(value, dtype=np.float64))


@dataclass(frozen=True)
class Case:
    id: str
    op: str
    inputs: dict[str, In]
    attrs: dict[str, Any] = field(default_factory=dict)
    wrt: tuple[str, ...] = ("x",)
    opset: int = OPSET
    dtype: Any = F8
    order: Optional[tuple[str, ...]] = None  # node inputs when not `inputs` in order ("" = omitted)
    n_out: int = 1  # node outputs; the one at `out_index` is the graph output
    out_index: int = 0
    h: Optional[float] = None
    tol: Optional[float] = None
    expect_opset: Optional[int] = None  # the gradient model's opset where it must be upgraded (else unchanged)

    @property
    def step(self) -> float:
        return self.h or DEFAULT_H[self.dtype]

    @property
    def rtol(self) -> float:
        return self.tol or DEFAULT_TOL[self.dtype]


def C(id: str, op: str, inputs: dict[str, In], **kw: Any) -> Case:
    if isinstance(kw.get("wrt"), str):
        kw["wrt"] = (kw["wrt"],)
    return Case(id, op, inputs, **kw)


BIAS4 = W(4)
F4_SCALES = In(const=True, value=np.array([1.0, 1.0, 2.0, 3.0]), dtype=np.float32)
UNARY = V(2, 3, 4, 5)  # 120 elements: the full Jacobian


def bools(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.random(shape) < 0.5


# ------------------------------------------------------------------------------------------------
# the table

CASES: list[Case] = [
    # -- activations ------------------------------------------------------------------------------
    C("relu", "Relu", {"x": V(2, 3, 4, 5, avoid=(0,), margin=0.1)}),
    C("relu_large", "Relu", {"x": V(1, 8, 16, 16, avoid=(0,))}),
    C("relu_f4", "Relu", {"x": V(2, 3, 5, avoid=(0,))}, dtype=F4),
    C("leaky_relu", "LeakyRelu", {"x": V(3, 4, 5, avoid=(0,))}),
    C("leaky_relu_alpha", "LeakyRelu", {"x": V(3, 4, 5, lo=-2, hi=2, avoid=(0,))}, attrs={"alpha": 0.2}),
    C("clip13_inputs", "Clip", {"x": V(3, 4, 5, avoid=(-0.5, 0.5)), "lo": F(-0.5), "hi": F(0.5)}, opset=13),
    C("clip13_relu6", "Clip", {"x": V(2, 3, 4, 5, lo=-2, hi=8, avoid=(0, 6)), "lo": F(0.0), "hi": F(6.0)}, opset=13),
    C("clip13_no_bounds", "Clip", {"x": V(3, 4, 5)}, opset=13),
    C("clip12_max_only", "Clip", {"x": V(3, 4, 5, avoid=(0.3,)), "hi": F(0.3)}, order=("x", "", "hi"), opset=12),
    C("clip11_inputs", "Clip", {"x": V(3, 4, 5, avoid=(-0.5, 0.5)), "lo": F(-0.5), "hi": F(0.5)},
      opset=11, dtype=F4, h=1e-3),
    C("clip11_min_only", "Clip", {"x": V(3, 4, 5, avoid=(-0.2,)), "lo": F(-0.2)}, opset=11, dtype=F4, h=1e-3),
    C("clip6_attrs", "Clip", {"x": V(3, 4, 5, avoid=(-0.5, 0.5))}, attrs={"min": -0.5, "max": 0.5},
      opset=6, dtype=F4, h=1e-3, expect_opset=9),
    C("clip6_relu6", "Clip", {"x": V(2, 3, 4, 5, lo=-2, hi=8, avoid=(0, 6))}, attrs={"min": 0.0, "max": 6.0},
      opset=6, dtype=F4, expect_opset=9),
    C("sigmoid", "Sigmoid", {"x": V(2, 3, 4, 5, lo=-4, hi=4)}),
    C("hard_sigmoid", "HardSigmoid", {"x": V(2, 3, 4, 5, lo=-4, hi=4, avoid=(-2.5, 2.5))}, dtype=F4),
    C("hard_sigmoid_attrs", "HardSigmoid", {"x": V(3, 4, 5, lo=-2, hi=2, avoid=(-1.2, 0.8))},
      attrs={"alpha": 0.5, "beta": 0.6}, dtype=F4),
    C("hard_swish", "HardSwish", {"x": V(2, 3, 4, 5, lo=-5, hi=5, avoid=(-3, 3))}, dtype=F4),
    C("tanh", "Tanh", {"x": V(2, 3, 4, 5, lo=-3, hi=3)}),
    C("exp", "Exp", {"x": V(3, 4, 5, lo=-2, hi=2)}),
    C("log", "Log", {"x": V(3, 4, 5, lo=0.2, hi=3)}),
    C("sqrt", "Sqrt", {"x": V(3, 4, 5, lo=0.2, hi=3)}),
    C("reciprocal", "Reciprocal", {"x": V(3, 4, 5, lo=-2, hi=2, avoid=(0,), margin=0.3)}),
    C("abs", "Abs", {"x": V(3, 4, 5, avoid=(0,))}),
    C("softplus", "Softplus", {"x": V(3, 4, 5, lo=-4, hi=4)}, dtype=F4, **NONLINEAR_F4),
    C("erf", "Erf", {"x": V(3, 4, 5, lo=-2, hi=2)}, dtype=F4, **NONLINEAR_F4),
    C("elu", "Elu", {"x": V(3, 4, 5, lo=-3, hi=2, avoid=(0,))}, dtype=F4, **NONLINEAR_F4),
    C("elu_alpha", "Elu", {"x": V(3, 4, 5, lo=-3, hi=2, avoid=(0,))}, attrs={"alpha": 0.5}, dtype=F4,
      **NONLINEAR_F4),
    C("prelu_channel", "PRelu", {"x": V(2, 3, 4, 5, avoid=(0,)), "s": W(3, 1, 1)}),
    C("prelu_channel_slope", "PRelu", {"x": V(2, 3, 4, 5, avoid=(0,)), "s": V(3, 1, 1)}, wrt=("x", "s")),
    C("prelu_last_axis_slope", "PRelu", {"x": V(2, 3, 5, avoid=(0,)), "s": V(5)}, wrt=("x", "s")),
    C("gelu20", "Gelu", {"x": V(3, 4, 5, lo=-3, hi=3)}, opset=20, dtype=F4, **NONLINEAR_F4),
    # -- binary element-wise, broadcasting both ways ---------------------------------------------
    C("add_channel", "Add", {"x": V(2, 3, 4, 5), "b": V(3, 1, 1)}, wrt=("x", "b")),
    C("add_nchw_channel", "Add", {"x": V(2, 3, 4, 5), "b": V(1, 3, 1, 1)}, wrt=("x", "b")),
    C("add_scalar", "Add", {"x": V(2, 3, 4, 5), "b": V()}, wrt=("x", "b")),
    C("add_both_ways", "Add", {"x": V(2, 1, 4, 1), "b": V(1, 3, 1, 5)}, wrt=("x", "b")),
    C("add_const", "Add", {"b": W(3, 1, 1), "x": V(2, 3, 4, 5)}),
    C("sub_channel", "Sub", {"x": V(2, 3, 4, 5), "b": V(1, 3, 1, 1)}, wrt=("x", "b")),
    C("sub_broadcast_first", "Sub", {"b": V(3, 1, 1), "x": V(2, 3, 4, 5)}, wrt=("x", "b")),
    C("sub_both_ways", "Sub", {"x": V(2, 1, 4, 1), "b": V(3, 1, 5)}, wrt=("x", "b")),
    C("mul_channel", "Mul", {"x": V(2, 3, 4, 5), "b": V(3, 1, 1)}, wrt=("x", "b")),
    C("mul_scalar", "Mul", {"x": V(2, 3, 4, 5), "b": V()}, wrt=("x", "b")),
    C("mul_both_ways", "Mul", {"x": V(2, 1, 4, 1), "b": V(1, 3, 1, 5)}, wrt=("x", "b")),
    C("mul_const", "Mul", {"x": V(2, 3, 4, 5), "b": W(1, 3, 1, 1)}),
    C("mul_square", "Mul", {"x": V(3, 4, 5)}, order=("x", "x")),
    C("div_channel", "Div", {"x": V(2, 3, 4, 5), "b": V(3, 1, 1, lo=0.5, hi=2)}, wrt=("x", "b")),
    C("div_scalar", "Div", {"x": V(2, 3, 4, 5), "b": V(lo=0.5, hi=2)}, wrt=("x", "b")),
    C("div_broadcast_numerator", "Div", {"a": V(1, 3, 1, 1), "x": V(2, 3, 4, 5, lo=0.5, hi=2)}, wrt=("x", "a")),
    C("div_both_ways", "Div", {"x": V(2, 1, 4, 1), "b": V(1, 3, 1, 5, lo=-2, hi=2, avoid=(0,), margin=0.3)},
      wrt=("x", "b")),
    C("pow_square", "Pow", {"x": V(2, 3, 4, 5, lo=-2, hi=2), "p": F(2.0)}),
    C("pow_sqrt", "Pow", {"x": V(3, 4, 5, lo=0.3, hi=3), "p": F(0.5)}),
    C("pow_int_exponent", "Pow", {"x": V(3, 4, 5, lo=-2, hi=2), "p": I(3)}),
    C("pow_tensor_exponent", "Pow", {"x": V(3, 4, 5, lo=0.3, hi=3), "p": W(5, lo=-2, hi=3)}),
    C("pow_wrt_exponent", "Pow", {"a": V(3, 4, 5, lo=0.3, hi=3), "x": V(5, lo=-2, hi=3)}, wrt=("x", "a")),
    C("max_broadcast", "Max", {"x": V(2, 3, 4, gen="grid", offset=0.05), "b": V(3, 4, gen="grid")}, wrt=("x", "b")),
    C("max_three", "Max", {"x": V(2, 3, 4, gen="grid", offset=0.05), "b": V(4, gen="grid"),
                           "c": W(3, 1, gen="grid", offset=0.025)}, wrt=("x", "b")),
    C("max_single", "Max", {"x": V(3, 4)}),
    C("min_broadcast", "Min", {"x": V(2, 3, 4, gen="grid", offset=0.05), "b": V(3, 4, gen="grid")}, wrt=("x", "b")),
    C("min_three", "Min", {"x": V(2, 3, 4, gen="grid", offset=0.05), "b": V(4, gen="grid"),
                           "c": W(3, 1, gen="grid", offset=0.025)}, wrt=("x", "b")),
    C("where", "Where", {"c": In((3, 1, 5), const=True, value=bools(3, 1, 5)), "x": V(2, 3, 4, 5), "y": V(4, 5)},
      wrt=("x", "y")),
    C("where_scalar_branch", "Where", {"c": In((2, 3, 4), const=True, value=bools(2, 3, 4)), "x": V(), "y": V(2, 3, 4)},
      wrt=("x", "y")),
    C("sum_broadcast", "Sum", {"x": V(2, 3, 4), "b": V(4), "c": W(3, 1)}, wrt=("x", "b")),
    C("sum_fan_in", "Sum", {"x": V(2, 3, 4), "b": V(2, 3, 4)}, order=("x", "b", "x")),
    C("sum_single", "Sum", {"x": V(2, 3, 4)}),
    C("mean_broadcast", "Mean", {"x": V(2, 3, 4), "b": V(4), "c": W(3, 1)}, wrt=("x", "b"), dtype=F4),
    C("mean_fan_in", "Mean", {"x": V(2, 3, 4)}, order=("x", "x"), dtype=F4),
    # -- identities ------------------------------------------------------------------------------
    C("neg", "Neg", {"x": UNARY}),
    C("identity", "Identity", {"x": UNARY}),
    C("dropout13_inference", "Dropout", {"x": UNARY}, opset=13),
    C("dropout13_ratio_training_false", "Dropout",
      {"x": UNARY, "r": F(0.3), "t": In(const=True, value=np.array(False))}, opset=13, n_out=2),
    C("dropout10_ratio_attr", "Dropout", {"x": UNARY}, attrs={"ratio": 0.4}, opset=10),
    C("cast_f64_to_f32", "Cast", {"x": UNARY}, attrs={"to": TensorProto.FLOAT}, h=1e-2, tol=2e-3),
    C("cast_f32_to_f64", "Cast", {"x": UNARY}, attrs={"to": TensorProto.DOUBLE}, dtype=F4),
    C("cast_like_f64_to_f32", "CastLike", {"x": UNARY, "t": In(const=True, value=np.zeros(()), dtype=F4)},
      opset=15, h=1e-2, tol=2e-3),
    C("cast_like_f32_to_f64", "CastLike", {"x": UNARY, "t": In(const=True, value=np.zeros(()), dtype=F8)},
      opset=15, dtype=F4),
    # -- reductions and global pooling ------------------------------------------------------------
    C("global_average_pool", "GlobalAveragePool", {"x": V(2, 3, 4, 5)}, dtype=F4),
    C("global_average_pool_1d", "GlobalAveragePool", {"x": V(2, 3, 7)}, dtype=F4),
    C("global_max_pool", "GlobalMaxPool", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")}, dtype=F4),
    C("reduce_mean11_spatial", "ReduceMean", {"x": V(2, 3, 4, 5)}, attrs={"axes": [2, 3]}, opset=11),
    C("reduce_mean11_keepdims0", "ReduceMean", {"x": V(2, 3, 4, 5)}, attrs={"axes": [2, 3], "keepdims": 0}, opset=11),
    C("reduce_mean13_negative_axis", "ReduceMean", {"x": V(2, 3, 4, 5)}, attrs={"axes": [-3], "keepdims": 0}, opset=13),
    C("reduce_mean13_all", "ReduceMean", {"x": V(2, 3, 4)}, attrs={"keepdims": 0}, opset=13),
    C("reduce_mean18_axes_input", "ReduceMean", {"x": V(2, 3, 4, 5), "axes": I([2, 3])}, attrs={"keepdims": 1},
      opset=18),
    C("reduce_mean18_axes_input_keepdims0", "ReduceMean", {"x": V(2, 3, 4, 5), "axes": I([-1, 1])},
      attrs={"keepdims": 0}, opset=18),
    C("reduce_mean18_no_axes", "ReduceMean", {"x": V(2, 3, 4)}, opset=18),
    C("reduce_sum11_attr", "ReduceSum", {"x": V(2, 3, 4, 5)}, attrs={"axes": [1], "keepdims": 1}, opset=11),
    C("reduce_sum11_negative_keepdims0", "ReduceSum", {"x": V(2, 3, 4, 5)}, attrs={"axes": [-1, 0], "keepdims": 0},
      opset=11),
    C("reduce_sum13_axes_input", "ReduceSum", {"x": V(2, 3, 4, 5), "axes": I([1, 3])}, attrs={"keepdims": 1}, opset=13),
    C("reduce_sum13_axes_input_keepdims0", "ReduceSum", {"x": V(2, 3, 4, 5), "axes": I([-2])},
      attrs={"keepdims": 0}, opset=13),
    C("reduce_sum13_all", "ReduceSum", {"x": V(2, 3, 4)}, attrs={"keepdims": 0}, opset=13),
    C("reduce_max13_attr", "ReduceMax", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")},
      attrs={"axes": [1], "keepdims": 0}, opset=13),
    C("reduce_max13_spatial", "ReduceMax", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")},
      attrs={"axes": [2, 3], "keepdims": 1}, opset=13),
    C("reduce_max18_axes_input", "ReduceMax", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct"), "axes": I([-1])},
      attrs={"keepdims": 1}, opset=18),
    C("reduce_max13_all", "ReduceMax", {"x": V(3, 4, 5, lo=-3, hi=3, gen="distinct")}, attrs={"keepdims": 0}, opset=13),
    C("reduce_min13_attr", "ReduceMin", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")},
      attrs={"axes": [-2], "keepdims": 0}, opset=13),
    # -- pooling ---------------------------------------------------------------------------------
    C("avgpool_2x2_s2", "AveragePool", {"x": V(2, 3, 6, 6)}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
      dtype=F4),
    C("avgpool_3x3_p1_exclude_pad", "AveragePool", {"x": V(1, 2, 5, 6)},
      attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}, dtype=F4),
    C("avgpool_3x3_s2_p1_include_pad", "AveragePool", {"x": V(1, 2, 7, 7)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, dtype=F4),
    C("avgpool_asymmetric_pads", "AveragePool", {"x": V(1, 2, 5, 6)},
      attrs={"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}, dtype=F4),
    C("avgpool_ceil_mode", "AveragePool", {"x": V(1, 2, 6, 7)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, dtype=F4),
    C("avgpool_ceil_mode_pads_include_pad", "AveragePool", {"x": V(1, 2, 6, 6)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
             "count_include_pad": 1}, dtype=F4),
    C("avgpool_ceil_mode_pads_exclude_pad", "AveragePool", {"x": V(1, 2, 6, 6)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, dtype=F4),
    C("avgpool_same_upper", "AveragePool", {"x": V(1, 2, 7, 6)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, dtype=F4),
    C("avgpool_1d", "AveragePool", {"x": V(2, 3, 9)}, attrs={"kernel_shape": [3], "strides": [2]}, dtype=F4),
    C("avgpool_large", "AveragePool", {"x": V(2, 4, 15, 15)},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("maxpool_3x3_s2_p1_overlapping", "MaxPool", {"x": V(2, 2, 7, 7, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("maxpool_3x3_s2_p1_large", "MaxPool", {"x": V(2, 3, 15, 15, lo=-35, hi=35, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("maxpool_2x2_s2", "MaxPool", {"x": V(2, 3, 4, 6, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, dtype=F4),
    C("maxpool_opset13_upgraded", "MaxPool", {"x": V(2, 2, 7, 7, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, opset=13, dtype=F4, expect_opset=16),
    C("maxpool_ceil_mode", "MaxPool", {"x": V(1, 2, 8, 8, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, dtype=F4),
    C("maxpool_dilated", "MaxPool", {"x": V(1, 2, 7, 7, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [2, 2], "dilations": [2, 2]}, dtype=F4),
    C("maxpool_same_upper", "MaxPool", {"x": V(1, 2, 8, 7, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, dtype=F4),
    C("maxpool_f8", "MaxPool", {"x": V(2, 2, 6, 6, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # -- moving elements ---------------------------------------------------------------------------
    C("flatten_axis1", "Flatten", {"x": V(2, 3, 4, 5)}, attrs={"axis": 1}),
    C("flatten_axis0", "Flatten", {"x": V(2, 3, 4)}, attrs={"axis": 0}),
    C("flatten_axis_negative", "Flatten", {"x": V(2, 3, 4, 5)}, attrs={"axis": -2}),
    C("reshape", "Reshape", {"x": V(2, 3, 4, 5), "s": I([6, -1])}),
    C("reshape_zero_dim", "Reshape", {"x": V(2, 3, 4, 5), "s": I([0, 3, 20])}),
    C("squeeze11_attr", "Squeeze", {"x": V(2, 1, 4, 1)}, attrs={"axes": [1]}, opset=11),
    C("squeeze13_axes_input", "Squeeze", {"x": V(2, 1, 4, 1), "a": I([1, -1])}, opset=13),
    C("squeeze13_all", "Squeeze", {"x": V(2, 1, 4, 1)}, opset=13),
    C("unsqueeze11_attr", "Unsqueeze", {"x": V(2, 3, 4)}, attrs={"axes": [0, 3]}, opset=11),
    C("unsqueeze13_axes_input", "Unsqueeze", {"x": V(2, 3, 4), "a": I([1, -1])}, opset=13),
    C("transpose_nchw_to_nhwc", "Transpose", {"x": V(2, 3, 4, 5)}, attrs={"perm": [0, 2, 3, 1]}),
    C("transpose_default_perm", "Transpose", {"x": V(3, 4, 5)}),
    C("concat_const", "Concat", {"x": V(2, 3, 4), "w": W(2, 2, 4)}, attrs={"axis": 1}),
    C("concat_both", "Concat", {"x": V(2, 3, 4), "y": V(2, 1, 4)}, attrs={"axis": 1}, wrt=("x", "y")),
    C("concat_three_negative_axis", "Concat", {"w": W(2, 3, 1), "x": V(2, 3, 4), "y": V(2, 3, 2)},
      attrs={"axis": -1}, wrt=("x", "y")),
    C("concat_same_input_twice", "Concat", {"x": V(2, 3, 4)}, attrs={"axis": 0}, order=("x", "x")),
    C("slice13_one_axis", "Slice", {"x": V(2, 3, 6, 5), "s": I([1]), "e": I([5]), "a": I([2])}, opset=13),
    C("slice13_negative", "Slice", {"x": V(2, 3, 6, 5), "s": I([1, -3]), "e": I([2, 100]), "a": I([1, -1]),
                                    "st": I([1, 1])}, opset=13),
    C("slice10_inputs", "Slice", {"x": V(2, 3, 6, 5), "s": I([2, 0]), "e": I([-1, 4]), "a": I([2, 3])}, opset=10),
    C("slice9_attrs", "Slice", {"x": V(2, 3, 6, 5)}, attrs={"starts": [1, 2], "ends": [3, 5], "axes": [1, 3]}, opset=9),
    # steps (Swin's patch merging x[:, 0::2, 1::2, :]), negative steps, overshooting ends
    C("slice_step2", "Slice", {"x": V(2, 6, 6, 3), "s": I([0, 1]), "e": I([6, 6]), "a": I([1, 2]), "st": I([2, 2])},
      opset=13),
    C("slice_step3_offset", "Slice", {"x": V(2, 3, 7, 5), "s": I([1]), "e": I([100]), "a": I([2]), "st": I([3])},
      opset=13),
    C("slice_step_negative", "Slice", {"x": V(2, 3, 7, 5), "s": I([-1, 5]), "e": I([-100, 0]), "a": I([3, 2]),
                                       "st": I([-1, -2])}, opset=13),
    C("slice_step_mixed", "Slice", {"x": V(2, 3, 6, 5), "s": I([1, 0]), "e": I([3, 5]), "a": I([1, 3]),
                                    "st": I([1, 2])}, opset=18),
    # axis 0 of a static size: the stacked (3, N, heads, T, d) q, k, v of timm's dynamo export
    C("slice_axis0_static", "Slice", {"x": V(3, 2, 4, 5), "s": I([1]), "e": I([2]), "a": I([0])}, opset=18),
    C("slice13_step2", "Slice", {"x": V(2, 3, 6, 5), "s": I([0]), "e": I([6]), "a": I([2]), "st": I([2])}, opset=13),
    C("slice13_reversed", "Slice", {"x": V(2, 3, 6, 5), "s": I([-1]), "e": I([-100]), "a": I([3]), "st": I([-2])},
      opset=13),
    C("slice13_steps_and_unit", "Slice", {"x": V(2, 3, 6, 5), "s": I([1, 0]), "e": I([3, 5]), "a": I([1, 3]),
                                          "st": I([1, 3])}, opset=13),
    C("pad13", "Pad", {"x": V(2, 3, 4, 5), "p": I([0, 0, 1, 2, 0, 0, 2, 1]), "v": F(0.5)}, opset=13),
    C("pad11_no_value", "Pad", {"x": V(2, 3, 4, 5), "p": I([0, 1, 0, 0, 0, 2, 0, 3])}, opset=11),
    C("pad18_axes", "Pad", {"x": V(2, 3, 4, 5), "p": I([1, 2, 2, 1]), "a": I([2, -1])}, order=("x", "p", "", "a"),
      opset=18),
    C("pad2_attrs", "Pad", {"x": V(2, 3, 4, 5)}, attrs={"pads": [0, 0, 1, 1, 0, 0, 1, 0]}, opset=9, expect_opset=10),
    C("split13_sizes_first", "Split", {"x": V(2, 6, 4), "s": I([2, 4])}, attrs={"axis": 1}, opset=13, n_out=2),
    C("split13_sizes_second", "Split", {"x": V(2, 6, 4), "s": I([2, 4])}, attrs={"axis": 1}, opset=13, n_out=2,
      out_index=1),
    C("split11_attr_middle", "Split", {"x": V(2, 6, 4)}, attrs={"axis": 1, "split": [1, 2, 3]}, opset=11, n_out=3,
      out_index=1),
    C("split13_equal_negative_axis", "Split", {"x": V(2, 3, 6)}, attrs={"axis": -1}, opset=13, n_out=3, out_index=2),
    C("split18_num_outputs", "Split", {"x": V(2, 3, 6)}, attrs={"axis": 2, "num_outputs": 2}, opset=18, n_out=2,
      out_index=1),
    C("expand", "Expand", {"x": V(3, 1, 5), "s": I([2, 3, 4, 5])}),
    C("expand_both_ways", "Expand", {"x": V(4, 1), "s": I([3, 1, 2])}),
    *[
        C(f"resize_{mode}_{ctm}", "Resize", {"x": V(2, 3, 5, 7), "s": F4_SCALES},
          attrs={"mode": mode, "coordinate_transformation_mode": ctm}, order=("x", "", "s"), dtype=F4)
        for mode in ("nearest", "linear") for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
    ],
    C("resize_linear_sizes", "Resize", {"x": V(2, 3, 5, 7), "z": I([2, 3, 9, 16])},
      attrs={"mode": "linear"}, order=("x", "", "", "z"), dtype=F4),
    C("resize_nearest_floor_sizes", "Resize", {"x": V(2, 3, 5, 7), "z": I([2, 3, 12, 13])},
      attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
      order=("x", "", "", "z"), dtype=F4),
    C("upsample9_nearest", "Upsample", {"x": V(2, 3, 4, 5), "s": F4_SCALES}, attrs={"mode": "nearest"}, opset=9,
      dtype=F4),
    C("gather_1d_repeated_negative", "Gather", {"x": V(6), "i": I([[0, 5, 2], [2, 2, -1]])}),
    C("gather_1d_runtime_indices", "Gather", {"x": V(6), "i": In((4,), value=np.array([3, 3, 0, 5]))}),
    C("gather_axis1_const", "Gather", {"x": V(2, 5, 3), "i": I([4, 0, 4])}, attrs={"axis": 1}),
    C("gather_axis_neg_scalar", "Gather", {"x": V(2, 3, 4), "i": I(2)}, attrs={"axis": -1}),
    C("gather_axis1_runtime_indices", "Gather", {"x": V(2, 5, 3), "i": In((3,), value=np.array([4, 0, 4]))},
      attrs={"axis": 1}),
    C("gather_runtime_2d_negative_indices", "Gather",
      {"x": V(2, 5, 3), "i": In((2, 2), value=np.array([[1, -1], [3, 1]]))}, attrs={"axis": 1}),
    C("gathernd_runtime", "GatherND", {"x": V(4, 5, 3), "i": In((3, 2), value=np.array([[0, 1], [3, 4], [0, 1]]))}),
    C("topk_values", "TopK", {"x": V(2, 6), "k": I([3])}, n_out=2),
    C("roialign_output_half_pixel", "RoiAlign",
      {"x": V(2, 3, 8, 9), "r": In((3, 4), value=np.array([[0.5, 1.2, 6.3, 5.1], [2.0, 0.0, 8.5, 7.0], [-0.7, 3.0, 4.0, 9.5]])),
       "b": In((3,), value=np.array([0, 1, 0]))},
      attrs={"output_height": 3, "output_width": 2, "sampling_ratio": 2, "coordinate_transformation_mode": "output_half_pixel"},
      opset=16),
    C("roialign_half_pixel_scaled", "RoiAlign",
      {"x": V(1, 2, 6, 7), "r": In((2, 4), value=np.array([[1.0, 2.0, 11.0, 9.0], [0.0, 0.0, 14.0, 12.0]])),
       "b": In((2,), value=np.array([0, 0]))},
      attrs={"output_height": 2, "output_width": 3, "sampling_ratio": 3, "spatial_scale": 0.5}, opset=16),
    C("scatter_elements_runtime", "ScatterElements",
      {"x": V(4, 3), "i": In((2, 3), value=np.array([[1, 0, 3], [2, 3, 0]])), "u": V(2, 3)}, wrt=("x", "u")),
    C("scatter_elements_add", "ScatterElements",
      {"x": V(3, 4), "i": In((3, 2), value=np.array([[0, 0], [1, 3], [0, 0]])), "u": V(3, 2)},
      attrs={"axis": 1, "reduction": "add"}, wrt=("x", "u")),
    # -- linear ------------------------------------------------------------------------------------
    *[
        C(f"gemm_tA{ta}_tB{tb}", "Gemm", {"x": V(*((4, 3) if ta else (3, 4))), "b": V(*((5, 4) if tb else (4, 5))),
                                         "c": W(5)},
          attrs={"transA": ta, "transB": tb, "alpha": 0.7, "beta": 1.3}, wrt=("x", "b"))
        for ta in (0, 1) for tb in (0, 1)
    ],
    C("gemm_fc_const_weight", "Gemm", {"x": V(3, 8), "w": W(5, 8), "c": W(5)}, attrs={"transB": 1}),
    C("gemm_bias_full", "Gemm", {"a": V(3, 4), "b": W(4, 5), "x": V(3, 5)}, attrs={"beta": 0.5}),
    C("gemm_bias_row", "Gemm", {"a": V(3, 4), "b": W(4, 5), "x": V(1, 5)}, attrs={"beta": 0.5}),
    C("gemm_bias_column", "Gemm", {"a": V(3, 4), "b": W(4, 5), "x": V(3, 1)}),
    C("gemm_bias_vector", "Gemm", {"a": V(3, 4), "b": W(4, 5), "x": V(5)}, attrs={"beta": 2.0}),
    C("gemm_bias_scalar", "Gemm", {"a": V(3, 4), "b": W(4, 5), "x": V()}),
    C("gemm_no_bias", "Gemm", {"x": V(3, 4), "b": V(5, 4)}, attrs={"transB": 1, "alpha": 1.5}, wrt=("x", "b")),
    C("matmul_2d", "MatMul", {"x": V(3, 4), "b": V(4, 5)}, wrt=("x", "b")),
    C("matmul_2d_const", "MatMul", {"x": V(3, 4), "b": W(4, 5)}),
    C("matmul_3d_const_2d", "MatMul", {"x": V(2, 3, 4), "b": W(4, 5)}),
    C("matmul_3d_by_2d", "MatMul", {"x": V(2, 3, 4), "b": V(4, 5)}, wrt=("x", "b")),
    C("matmul_2d_by_3d", "MatMul", {"x": V(3, 4), "b": V(2, 4, 5)}, wrt=("x", "b")),
    C("matmul_batched_3d", "MatMul", {"x": V(2, 3, 4), "b": V(2, 4, 5)}, wrt=("x", "b")),
    C("matmul_4d_broadcast", "MatMul", {"x": V(2, 1, 3, 4), "b": V(3, 4, 2)}, wrt=("x", "b")),
    C("matmul_4d_const_broadcast", "MatMul", {"x": V(2, 3, 3, 4), "b": W(1, 3, 4, 2)}),
    C("matmul_vector", "MatMul", {"x": V(2, 3, 4), "b": V(4)}, wrt=("x", "b")),
    # -- convolutions --------------------------------------------------------------------------------
    C("conv_3x3_p1_bias", "Conv", {"x": V(1, 3, 7, 7), "w": W(4, 3, 3, 3), "b": BIAS4},
      attrs={"pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_s2_p1_odd", "Conv", {"x": V(1, 2, 9, 9), "w": W(3, 2, 3, 3)},
      attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_s2_output_padding", "Conv", {"x": V(2, 2, 8, 8), "w": W(3, 2, 3, 3)}, attrs={"strides": [2, 2]},
      dtype=F4),
    C("conv_s2_asymmetric_exact_fit", "Conv", {"x": V(1, 2, 8, 7), "w": W(3, 2, 3, 3)},
      attrs={"strides": [2, 2], "pads": [1, 0, 0, 1]}, dtype=F4),
    C("conv_asymmetric_pads", "Conv", {"x": V(1, 2, 8, 7), "w": W(3, 2, 3, 3)},
      attrs={"strides": [2, 2], "pads": [0, 1, 1, 2]}, dtype=F4),
    C("conv_dilation2", "Conv", {"x": V(1, 2, 9, 9), "w": W(3, 2, 3, 3)},
      attrs={"dilations": [2, 2], "pads": [2, 2, 2, 2]}, dtype=F4),
    C("conv_dilation2_s2", "Conv", {"x": V(1, 2, 10, 9), "w": W(3, 2, 3, 3)},
      attrs={"dilations": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_depthwise", "Conv", {"x": V(1, 4, 6, 6), "w": W(4, 1, 3, 3)},
      attrs={"group": 4, "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_depthwise_s2", "Conv", {"x": V(1, 4, 7, 7), "w": W(8, 1, 3, 3), "b": W(8)},
      attrs={"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_group2", "Conv", {"x": V(1, 4, 6, 6), "w": W(6, 2, 3, 3)},
      attrs={"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_1x1", "Conv", {"x": V(2, 3, 5, 5), "w": W(4, 3, 1, 1), "b": BIAS4}, dtype=F4),
    C("conv_1x1_s2", "Conv", {"x": V(2, 3, 5, 5), "w": W(4, 3, 1, 1)}, attrs={"strides": [2, 2]}, dtype=F4),
    C("conv_same_upper", "Conv", {"x": V(1, 2, 8, 7), "w": W(3, 2, 3, 3)},
      attrs={"strides": [2, 2], "auto_pad": "SAME_UPPER"}, dtype=F4),
    C("conv_same_lower_even_kernel", "Conv", {"x": V(1, 2, 8, 7), "w": W(3, 2, 4, 4)},
      attrs={"strides": [2, 2], "auto_pad": "SAME_LOWER"}, dtype=F4),
    C("conv_same_upper_s1", "Conv", {"x": V(1, 2, 6, 5), "w": W(3, 2, 2, 2)}, attrs={"auto_pad": "SAME_UPPER"},
      dtype=F4),
    C("conv_valid", "Conv", {"x": V(1, 2, 7, 8), "w": W(3, 2, 3, 3)}, attrs={"strides": [2, 2], "auto_pad": "VALID"},
      dtype=F4),
    C("conv_1d", "Conv", {"x": V(2, 3, 11), "w": W(4, 3, 3)}, attrs={"strides": [2], "pads": [1, 0]}, dtype=F4),
    C("conv_large", "Conv", {"x": V(2, 8, 15, 15), "w": W(8, 8, 3, 3), "b": W(8)},
      attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_transpose_s1", "ConvTranspose", {"x": V(1, 2, 5, 5), "w": W(2, 3, 3, 3)}, dtype=F4),
    C("conv_transpose_s2_p1_outpad", "ConvTranspose", {"x": V(1, 3, 4, 4), "w": W(3, 2, 3, 3), "b": W(2)},
      attrs={"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, dtype=F4),
    C("conv_transpose_group2", "ConvTranspose", {"x": V(1, 4, 5, 5), "w": W(4, 3, 3, 3)},
      attrs={"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}, dtype=F4),
    C("conv_transpose_dilation2", "ConvTranspose", {"x": V(1, 2, 5, 5), "w": W(2, 3, 3, 3)},
      attrs={"dilations": [2, 2], "pads": [1, 2, 2, 1]}, dtype=F4),
    # -- normalisation -----------------------------------------------------------------------------
    C("batchnorm", "BatchNormalization",
      {"x": V(2, 3, 4, 5), "s": W(3, lo=0.5, hi=1.5), "b": W(3), "m": W(3), "v": W(3, lo=0.5, hi=2)},
      attrs={"epsilon": 1e-3}, opset=15, dtype=F4),
    C("batchnorm_opset9", "BatchNormalization",
      {"x": V(2, 3, 4, 5), "s": W(3, lo=0.5, hi=1.5), "b": W(3), "m": W(3), "v": W(3, lo=0.5, hi=2)},
      opset=9, dtype=F4),
    C("batchnorm_2d", "BatchNormalization",
      {"x": V(4, 3), "s": W(3, lo=-1.5, hi=1.5), "b": W(3), "m": W(3), "v": W(3, lo=0.5, hi=2)}, dtype=F4),
    C("batchnorm_runtime_scale", "BatchNormalization",
      {"x": V(2, 3, 4, 5), "s": V(3, lo=0.5, hi=1.5), "b": W(3), "m": W(3), "v": V(3, lo=0.5, hi=2)},
      opset=15, dtype=F4),
    C("layer_norm_last", "LayerNormalization", {"x": V(2, 3, 4, lo=-2, hi=2), "s": W(4), "b": W(4)}),
    C("layer_norm_axis1", "LayerNormalization", {"x": V(2, 3, 4, lo=-2, hi=2), "s": W(3, 4), "b": W(3, 4)},
      attrs={"axis": 1, "epsilon": 1e-3}),
    C("layer_norm_no_bias", "LayerNormalization", {"x": V(2, 3, 4, lo=-2, hi=2), "s": W(4)}, opset=18),
    C("instance_norm", "InstanceNormalization", {"x": V(2, 3, 4, 5, lo=-2, hi=2), "s": W(3), "b": W(3)},
      dtype=F4, **NONLINEAR_F4),
    C("instance_norm_1d", "InstanceNormalization", {"x": V(2, 3, 7, lo=-2, hi=2), "s": W(3), "b": W(3)},
      attrs={"epsilon": 1e-2}, dtype=F4, **NONLINEAR_F4),
    # -- old opsets: what the gradient emits must exist there (or the model is upgraded) ----------
    C("relu_opset6", "Relu", {"x": V(3, 4, 5, avoid=(0,))}, opset=6, expect_opset=9),
    C("abs_opset6", "Abs", {"x": V(3, 4, 5, avoid=(0,))}, opset=6, expect_opset=9),
    C("gemm_opset9", "Gemm", {"x": V(3, 8), "w": W(5, 8), "c": W(5)}, attrs={"transB": 1}, opset=9, expect_opset=11),
    C("gemm_opset7", "Gemm", {"x": V(3, 8), "w": W(8, 5), "c": W(5)}, opset=7, expect_opset=11),
    C("global_max_pool_opset9", "GlobalMaxPool", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")}, opset=9,
      dtype=F4, expect_opset=11),
    C("max_opset8", "Max", {"x": V(2, 3, 4, gen="grid", offset=0.05), "b": V(3, 4, gen="grid")}, opset=8,
      wrt=("x", "b"), expect_opset=11),
    C("reduce_max_opset9", "ReduceMax", {"x": V(2, 3, 4, 5, lo=-3, hi=3, gen="distinct")},
      attrs={"axes": [1], "keepdims": 0}, opset=9, expect_opset=11),
    C("concat_opset9", "Concat", {"x": V(2, 3, 4), "w": W(2, 2, 4)}, attrs={"axis": 1}, opset=9, expect_opset=10),
    C("softmax_opset9", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, opset=9),
    C("reduce_mean_opset9", "ReduceMean", {"x": V(2, 3, 4, 5)}, attrs={"axes": [2, 3], "keepdims": 0}, opset=9),
    C("maxpool_opset9", "MaxPool", {"x": V(2, 2, 7, 7, lo=-5, hi=5, gen="distinct")},
      attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, opset=9, dtype=F4, expect_opset=16),
    C("batchnorm_opset7", "BatchNormalization",
      {"x": V(2, 3, 4, 5), "s": W(3, lo=0.5, hi=1.5), "b": W(3), "m": W(3), "v": W(3, lo=0.5, hi=2)},
      opset=7, dtype=F4),
    # -- softmax -------------------------------------------------------------------------------------
    C("softmax13_last", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": -1}, opset=13),
    C("softmax13_axis1", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": 1}, opset=13),
    C("softmax13_default", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, opset=13),
    C("softmax11_axis1_coerced", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": 1}, opset=11),
    C("softmax11_default_coerced", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, opset=11),
    C("softmax11_last", "Softmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": -1}, opset=11),
    C("softmax11_2d", "Softmax", {"x": V(3, 7, lo=-2, hi=2)}, opset=11),
    C("log_softmax13_last", "LogSoftmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": -1}, opset=13),
    C("log_softmax13_axis1", "LogSoftmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": 1}, opset=13),
    C("log_softmax11_axis1_coerced", "LogSoftmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": 1}, opset=11),
    C("log_softmax11_last", "LogSoftmax", {"x": V(2, 3, 4, lo=-2, hi=2)}, attrs={"axis": -1}, opset=11),
]


# ------------------------------------------------------------------------------------------------
# building and running


def ir_version(opset: int) -> int:
    return 8 if opset <= 18 else 9 if opset <= 20 else 10


def sample(spec: In, dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """A value for one input, inside its range and away from its kinks."""
    if spec.value is not None:
        v = np.asarray(spec.value(rng) if callable(spec.value) else spec.value)
        return v.astype(spec.dtype or (dtype if v.dtype.kind == "f" else v.dtype))
    n = int(np.prod(spec.shape, dtype=np.int64))
    if spec.gen == "distinct":
        v = spec.lo + (spec.hi - spec.lo) * rng.permutation(n) / max(n - 1, 1)
    elif spec.gen == "grid":
        v = 0.1 * rng.integers(round(spec.lo * 10), round(spec.hi * 10), n) + spec.offset
    else:
        v = rng.uniform(spec.lo, spec.hi, n)
        for _ in range(1000):
            bad = np.zeros(n, dtype=bool)
            for k in spec.avoid:
                bad |= np.abs(v - k) < spec.margin
            if not bad.any():
                break
            v[bad] = rng.uniform(spec.lo, spec.hi, int(bad.sum()))
        else:
            raise AssertionError(f"cannot sample away from kinks {spec.avoid} in [{spec.lo}, {spec.hi}]")
    return v.reshape(spec.shape).astype(spec.dtype or dtype)


def build(case: Case, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The one-node model and the values of its graph inputs."""
    feeds: dict[str, np.ndarray] = {}
    inputs, inits = [], []
    for name, spec in case.inputs.items():
        v = sample(spec, case.dtype, rng)
        if spec.const:
            inits.append(numpy_helper.from_array(v, name))
        else:
            feeds[name] = v
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    outs = [OUT if k == case.out_index else f"{OUT}_aux{k}" for k in range(case.n_out)]
    node = helper.make_node(case.op, list(case.order or case.inputs), outs, name=f"{case.id}_node", **case.attrs)
    graph = helper.make_graph([node], case.id, inputs, [onnx.ValueInfoProto(name=OUT)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)],
                              ir_version=ir_version(case.opset))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    y = inferred.graph.output[0]
    assert y.type.tensor_type.elem_type and y.type.tensor_type.HasField("shape"), f"{case.id}: no shape for the output"
    model.graph.output[0].CopyFrom(y)
    onnx.checker.check_model(model, full_check=True)
    return model, feeds


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check_kink_margins(case: Case, wrt: str, x: np.ndarray) -> None:
    """The table's own sanity: no perturbation of ±h (per element) crosses a kink or a tie."""
    spec, h = case.inputs[wrt], case.step
    if spec.avoid:
        assert spec.margin >= 2 * h, f"{case.id}: margin {spec.margin} too small for h={h}"
    if spec.gen == "distinct":
        gap = np.diff(np.sort(x.ravel().astype(F8))).min()
        assert gap >= 4 * h, f"{case.id}: distinct values {gap} apart, need ≥ 4h = {4 * h}"
    if spec.gen == "grid":
        assert 0.025 >= 4 * h, f"{case.id}: grid offsets too close for h={h}"


def seeded_rng(*parts: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(parts).encode()))


PARAMS = [pytest.param(c, w, id=f"{c.id}-d{w}") for c in CASES for w in c.wrt]


@pytest.mark.parametrize("case, wrt", PARAMS)
def test_rule_matches_finite_differences(case: Case, wrt: str) -> None:
    rng = seeded_rng(case.id, wrt)
    model, feeds = build(case, rng)
    x = feeds[wrt]
    check_kink_margins(case, wrt, x)

    forward = session(model)

    def f(xv: np.ndarray) -> np.ndarray:
        return forward.run([OUT], {**feeds, wrt: xv})[0].astype(F8)

    y = forward.run([OUT], feeds)[0]
    u = rng.standard_normal(y.shape).astype(y.dtype)

    gm = gradient_model(model, wrt)
    bad_domains = {n.domain for n in gm.graph.node} - {"", "ai.onnx"}
    assert not bad_domains, f"{case.id}: gradient model uses non-standard domains {bad_domains}"
    opset = next(o.version for o in gm.opset_import if o.domain in ("", "ai.onnx"))
    want = case.expect_opset or case.opset
    assert opset == want, f"{case.id}: gradient model at opset {opset}, want {want} (model at {case.opset})"
    y2, g = session(gm).run([OUT, GRAD_OUTPUT], {**feeds, SEED_INPUT: u})
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6, err_msg=f"{case.id}: the rewrite changed the output")
    assert g.shape == x.shape and g.dtype == x.dtype, (
        f"{case.id}: gradient is {g.dtype}{list(g.shape)}, input {wrt} is {x.dtype}{list(x.shape)}"
    )
    assert np.all(np.isfinite(g)), f"{case.id}: non-finite gradient"
    g = g.astype(F8)
    u = u.astype(F8)
    h, tol = case.step, case.rtol

    if x.size <= JACOBIAN_MAX:
        fd = np.empty(x.size)
        for i in range(x.size):
            xp, xm = x.copy(), x.copy()
            xp.flat[i] += h
            xm.flat[i] -= h
            step = float(xp.flat[i]) - float(xm.flat[i])
            fd[i] = np.vdot(u, f(xp) - f(xm)) / step
        fd = fd.reshape(x.shape)
        err = np.abs(g - fd)
        atol = tol * max(1.0, float(np.abs(fd).max()))
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err - tol * np.abs(fd))), x.shape))
        np.testing.assert_allclose(
            g, fd, rtol=tol, atol=atol,
            err_msg=(f"{case.id}: ∂⟨u,y⟩/∂{wrt} from the engine vs central differences (h={h}); worst at "
                     f"{worst}: engine {g[worst]:.6g}, differences {fd[worst]:.6g}"),
        )
    else:
        for k in range(DIRECTIONS):
            v = rng.uniform(-1.0, 1.0, x.shape)
            xp, xm = (x + h * v).astype(x.dtype), (x - h * v).astype(x.dtype)
            d = xp.astype(F8) - xm.astype(F8)
            lhs = float(np.vdot(g, d))
            rhs = float(np.vdot(u, f(xp) - f(xm)))
            scale = float(np.abs(g * d).sum())
            assert abs(lhs - rhs) <= tol * scale + 1e-12, (
                f"{case.id}: direction {k}: ⟨v, Jᵀu⟩·2h = {lhs:.8g} from the engine, {rhs:.8g} from central "
                f"differences (h={h}); |diff| {abs(lhs - rhs):.3g} > {tol:g}·{scale:.3g}"
            )


def test_table_covers_every_rule() -> None:
    missing = sorted(set(RULES) - {c.op for c in CASES})
    assert not missing, f"registered rules without a finite-difference case: {missing}"


# ------------------------------------------------------------------------------------------------
# what the engine refuses, and what it emits


def _one_node(op: str, name: str, x_shape: list[int], y_shape: list[Any], domain: str = "",
              pre: Optional[str] = None, **attrs: Any) -> onnx.ModelProto:
    nodes, src = [], "x"
    if pre:
        nodes.append(helper.make_node(pre, ["x"], ["t"], name="before"))
        src = "t"
    nodes.append(helper.make_node(op, [src], ["y"], name=name, domain=domain, **attrs))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
    )
    imports = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def _nms_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["y"], name="nms")],
        "g",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 3])],
        [numpy_helper.from_array(np.array([3], dtype=np.int64), "k")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize(
    "model, wrt, op, node",
    [
        pytest.param(_one_node("Cos", "my_cos", [2, 3], [2, 3]), "x", "Cos", "my_cos", id="cos"),
        pytest.param(_one_node("Cos", "cos_after_relu", [2, 3], [2, 3], pre="Relu"), "x", "Cos", "cos_after_relu",
                     id="cos_after_a_supported_op"),
        pytest.param(_one_node("Gelu", "ms_gelu", [2, 3], [2, 3], domain="com.microsoft"), "x",
                     "com.microsoft.Gelu", "ms_gelu", id="com.microsoft"),
        pytest.param(_one_node("Gelu", "tanh_gelu", [2, 3], [2, 3], approximate="tanh"), "x", "Gelu", "tanh_gelu",
                     id="gelu_tanh_approximation"),
        pytest.param(_nms_model(), "scores", "NonMaxSuppression", "nms", id="nms"),
    ],
)
def test_missing_rule_names_op_and_node(model: onnx.ModelProto, wrt: str, op: str, node: str) -> None:
    pattern = rf"no gradient rule for op {re.escape(op)} \(node '{re.escape(node)}'\)"
    with pytest.raises(UnsupportedOpError, match=pattern) as info:
        gradient_model(model, wrt)
    assert info.value.op_type == op and info.value.node_name == node


REFUSED = [
    # (case, the op named in the error, a word of the reason)
    (C("avgpool_dilated", "AveragePool", {"x": V(1, 2, 7, 7)}, attrs={"kernel_shape": [2, 2], "dilations": [2, 2]},
       opset=19, dtype=F4), "AveragePool", "dilated"),
    (C("pad_reflect", "Pad", {"x": V(2, 3, 4, 5), "p": I([0, 0, 1, 1, 0, 0, 1, 1])}, attrs={"mode": "reflect"},
       opset=13), "Pad", "reflect"),
    (C("conv_weight_wrt", "Conv", {"x": W(1, 2, 5, 5), "w": V(3, 2, 3, 3)}, wrt="w", dtype=F4), "Conv", "weights"),
    (C("maxpool_storage_order", "MaxPool", {"x": V(1, 2, 4, 4)}, attrs={"kernel_shape": [2, 2], "storage_order": 1},
       dtype=F4), "MaxPool", "storage_order"),
]


@pytest.mark.parametrize("case, op, reason", [pytest.param(*r, id=r[0].id) for r in REFUSED])
def test_refusing_rule_names_op_node_and_reason(case: Case, op: str, reason: str) -> None:
    model, _ = build(case, seeded_rng(case.id))
    node = model.graph.node[0].name
    with pytest.raises(UnsupportedOpError, match=rf"op {op} \(node '{re.escape(node)}'\): .*{reason}"):
        gradient_model(model, case.wrt[0])


def _small_cnn(opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv → BN → Relu → MaxPool(3×3/2) → Conv (+ residual Add) → Relu → GlobalAveragePool →
    Flatten → Gemm → Softmax: the layers a CAM walks through, chained."""
    rng = np.random.default_rng(7)

    def w(name: str, *shape: int, lo: float = -0.5, hi: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(F4), name)

    inits = [
        w("w1", 4, 3, 3, 3), w("bn_s", 4, lo=0.5, hi=1.5), w("bn_b", 4), w("bn_m", 4), w("bn_v", 4, lo=0.5, hi=2),
        w("w2", 4, 4, 3, 3), w("fc_w", 5, 4), w("fc_b", 5),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["b1"], name="bn1"),
        n("Relu", ["b1"], ["r1"], name="relu1"),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="pool"),
        n("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        n("Add", ["c2", "p1"], ["s2"], name="residual"),
        n("Relu", ["s2"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        n("Softmax", ["logits"], ["y"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, {"x": rng.uniform(-1, 1, (2, 3, 9, 9)).astype(F4)}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("wrt", ["x", "r1", "r2"])
def test_gradient_model_is_plain_onnx(opset: int, wrt: str) -> None:
    """Only ai.onnx ops in the gradient (no com.microsoft *Grad ops), a valid model that stock
    onnxruntime runs, and a gradient that agrees with central differences through the chain."""
    model, feeds = _small_cnn(opset)
    gm = gradient_model(model, wrt)
    assert {o.domain for o in gm.opset_import} <= {"", "ai.onnx"}, f"opset imports {list(gm.opset_import)}"
    foreign = [(n.op_type, n.domain) for n in gm.graph.node if n.domain not in ("", "ai.onnx")]
    assert not foreign, f"non-standard ops in the gradient model: {foreign}"
    onnx.checker.check_model(gm, full_check=True)
    rng = np.random.default_rng(11)
    u = rng.standard_normal((2, 5)).astype(F4)
    if wrt == "x":
        g = session(gm).run([GRAD_OUTPUT], {**feeds, SEED_INPUT: u})[0].astype(F8)
        forward = session(model)
        h, x = 1e-3, feeds["x"]
        for k in range(DIRECTIONS):
            v = rng.uniform(-1, 1, x.shape)
            xp, xm = (x + h * v).astype(F4), (x - h * v).astype(F4)
            lhs = float(np.vdot(g, xp.astype(F8) - xm.astype(F8)))
            rhs = float(np.vdot(u, forward.run(["y"], {"x": xp})[0].astype(F8) - forward.run(["y"], {"x": xm})[0]))
            scale = float(np.abs(g * (xp.astype(F8) - xm.astype(F8))).sum())
            assert abs(lhs - rhs) <= 1e-2 * scale, f"direction {k}: engine {lhs:.6g}, differences {rhs:.6g}"
    else:
        (g,) = session(gm).run([GRAD_OUTPUT], {**feeds, SEED_INPUT: u})
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, f"gradient at {wrt} is zero or not finite"
