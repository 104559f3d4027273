"""The emitter: what gradient rules use to write ONNX nodes.

Rules never build NodeProtos by hand. They call `Emitter.op` and the opset-aware helpers here
(`reduce_sum`, `unsqueeze`, `slice`, ...), so the differences between opsets (axes as an attribute
before 13, as an input from 13 — 18 for ReduceMean/ReduceMax) live in one place. Constants are
folded in numpy at rewrite time (`value`, `const`), never recomputed at every run.

Element types. By default the gradient is emitted in each tensor's own float type (a float16
model gets a float16 gradient): rules take constants' types from the tensor they combine with
(`scalar(v, like)`, `const(arr.astype(e.np_dtype(x)))`). Where a runtime lacks a half-precision
kernel for an emitted op (onnxruntime's CPU provider: ScatterElements with reduction="add"), the
helper for that op (`scatter_add`) computes in float32 and casts back. `Emitter(compute_type=
TensorProto.FLOAT)` instead emits the whole gradient in float32: every float16/bfloat16 forward
tensor (and the seed) a rule reads is Cast to float32 once at its first use, constant operands
are converted in numpy, `elem_type`/`np_dtype` report float32 for them, and the engine casts the
final gradient back to the differentiated tensor's type. Use it for bfloat16 models or when
float16 gradients underflow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..protos import node_attr
from ..types import HALF_TYPES, Shape, TensorInfo

# ops whose half-precision kernels onnxruntime's CPU provider lacks (checked with onnxruntime
# 1.31: ScatterElements refuses MLFloat16 when reduction="add"; every other op the rules emit runs)
_NO_HALF_KERNEL = {"ScatterElements"}
# ops that read only the shape of a tensor: never worth a Cast
_SHAPE_ONLY = {"Shape", "Size"}


class UnknownTensorError(NotImplementedError):
    """A rule needs a tensor's static shape or type, and neither shape inference nor a run found
    it: a limit of the rule (the engine reports it as UnsupportedOpError), not a bug."""


class Node:
    """A read-only view of one forward node for a rule: inputs, outputs, attributes, needs."""

    def __init__(self, proto: onnx.NodeProto, needs: list[bool]) -> None:
        self.proto = proto
        self.op_type = proto.op_type
        self.name = proto.name or f"<{proto.op_type} -> {proto.output[0] if proto.output else ''}>"
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.needs = needs  # needs[i]: input i depends on the differentiated tensor

    def attr(self, name: str, default: Any = None) -> Any:
        v = node_attr(self.proto, name, default)
        return v.decode() if isinstance(v, bytes) else v


class Emitter:
    """Collects the nodes and initializers that the gradient adds to a graph."""

    def __init__(
        self,
        shapes: dict[str, TensorInfo],
        constants: dict[str, np.ndarray],
        opset: int,
        prefix: str = "onnxcam_grad/",
        compute_type: int | None = None,
    ) -> None:
        self.shapes = dict(shapes)
        self.constants = constants
        self.opset = opset
        self.prefix = prefix
        self.compute_type = compute_type  # None: each tensor's own type; else half types → this
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._shape_ops: dict[str, str] = {}
        self._cast: dict[str, str] = {}  # half forward tensor -> its compute_type Cast

    # -- names, shapes, constants -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def shape(self, name: str) -> Shape:
        """Static shape of a tensor (ints, symbolic names or None per axis)."""
        info = self.shapes.get(name)
        if info is None:
            raise UnknownTensorError(f"no shape known for tensor {name!r}")
        return info.shape

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def elem_type(self, name: str) -> int:
        """The tensor's element type as the gradient sees it (compute_type for half tensors)."""
        info = self.shapes.get(name)
        if info is None:
            raise UnknownTensorError(f"no type known for tensor {name!r}")
        t = info.elem_type
        return self.compute_type if self.compute_type and t in HALF_TYPES else t

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type(name)))

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value when it is a constant (initializer or Constant node), else None."""
        v = self.constants.get(name)
        if v is not None and self.compute_type and self.shapes.get(name) is not None \
                and self.shapes[name].elem_type in HALF_TYPES:
            return v.astype(helper.tensor_dtype_to_np_dtype(self.compute_type))
        return v

    def computed(self, name: str) -> str:
        """`name` in compute_type: itself unless it is a half tensor and compute_type is set
        (then a Cast, or a converted copy of a constant, made once)."""
        info = self.shapes.get(name)
        if not self.compute_type or info is None or info.elem_type not in HALF_TYPES:
            return name
        if name not in self._cast:
            v = self.constants.get(name)
            if v is not None:
                self._cast[name] = self.const(self.value(name), "to_compute")
            else:
                self._cast[name] = self.op("Cast", [name], "to_compute", to=self.compute_type)
        return self._cast[name]

    def set_info(self, name: str, shape: Shape, elem_type: int) -> str:
        self.shapes[name] = TensorInfo(name, tuple(shape), elem_type)
        return name

    # -- emission ----------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1, **attrs: Any):
        outs = [self.fresh(hint or op_type) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if self.compute_type and op_type not in _SHAPE_ONLY and not (op_type == "Cast" and len(inputs) == 1
                                                                     and attrs.get("to") == self.compute_type):
            inputs = [self.computed(i) if i else i for i in inputs]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        elem = self._result_type(op_type, list(inputs), attrs)
        for i, o in enumerate(outs):
            if elem is not None:
                self.shapes[o] = TensorInfo(o, (), elem if i == 0 else TensorProto.INT64)
        return outs[0] if n_out == 1 else outs

    def _result_type(self, op_type: str, inputs: list[str], attrs: dict) -> int | None:
        """Element type of an emitted op's first output (its shape is not tracked)."""
        if op_type in ("Shape", "ArgMax", "ArgMin", "Size"):
            return TensorProto.INT64
        if op_type in ("Greater", "Less", "Equal", "And", "Or", "Not", "GreaterOrEqual", "LessOrEqual"):
            return TensorProto.BOOL
        if op_type == "Cast":
            return int(attrs["to"])
        if op_type == "ConstantOfShape":
            return int(attrs["value"].data_type)
        if op_type == "Where":
            inputs = inputs[1:]
        for i in inputs:
            if i in self.shapes and self.shapes[i].elem_type:
                return self.shapes[i].elem_type
        return None

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        self.constants[name] = array
        self.set_info(name, tuple(array.shape), helper.np_dtype_to_tensor_dtype(array.dtype))
        return name

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant in `like`'s float type."""
        return self.const(np.array(value, dtype=self.np_dtype(like)), "scalar")

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")

    def runtime_shape(self, name: str) -> str:
        """A Shape node for `name` (one per tensor)."""
        if name not in self._shape_ops:
            self._shape_ops[name] = self.op("Shape", [name], "shape")
        return self._shape_ops[name]

    # -- opset-aware helpers -----------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        return self.reduce("ReduceSum", x, axes, keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(list(axes))])
        return self.op("Squeeze", [x], axes=list(axes))

    def reshape_like(self, g: str, x: str) -> str:
        """Reshape `g` to `x`'s shape (static when fully known, else via a Shape node)."""
        s = self.shape(x)
        if all(isinstance(d, int) for d in s):
            return self.op("Reshape", [g, self.ints(s)])
        return self.op("Reshape", [g, self.runtime_shape(x)])

    def expand_like(self, g: str, x: str) -> str:
        return self.op("Expand", [g, self.runtime_shape(x)])

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])

    def in_type_of(self, g: str, x: str) -> str:
        """`g` cast to `x`'s own element type where they differ (the end of a compute_type run)."""
        want = self.shapes[x].elem_type if x in self.shapes else 0
        got = self.shapes[g].elem_type if g in self.shapes else 0
        if want and got and want != got:
            return self.op("Cast", [g], "grad_out", to=want)
        return g

    def scatter_add(self, zeros: str, indices: str, updates: str, axis: int = 0) -> str:
        """ScatterElements(zeros, indices, updates, reduction="add"); in float32 (cast back) for
        half types, which onnxruntime's CPU provider refuses for this op."""
        t = self.elem_type(updates)
        if t in HALF_TYPES and "ScatterElements" in _NO_HALF_KERNEL:
            f32 = TensorProto.FLOAT
            out = self.op("ScatterElements", [
                self.op("Cast", [zeros], to=f32), indices, self.op("Cast", [updates], to=f32),
            ], axis=axis, reduction="add")
            return self.op("Cast", [out], to=t)
        return self.op("ScatterElements", [zeros, indices, updates], axis=axis, reduction="add")

    def mask(self, cond: str, g: str) -> str:
        """g where cond, 0 elsewhere."""
        return self.op("Where", [cond, g, self.scalar(0.0, g)])

    def unbroadcast(self, g: str, g_shape: Shape, target_shape: Shape) -> str:
        """Sum `g` (shaped like a broadcast result) down to `target_shape` (numpy broadcasting)."""
        lead = len(g_shape) - len(target_shape)
        axes = list(range(lead))
        for i, d in enumerate(target_shape):
            gd = g_shape[lead + i]
            if d == 1 and gd != 1:
                axes.append(lead + i)
        if not axes:
            return g
        out = self.reduce_sum(g, axes, keepdims=True)
        if lead:
            out = self.squeeze(out, range(lead))
        return out
