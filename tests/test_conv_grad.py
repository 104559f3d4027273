"""The Conv input gradient's formulations (onnxcam/grad/rules/conv.py) against the definition.

The reference is the transposed convolution written out in numpy, independently of the rule:
for every kernel tap t, gx[s·o + d·t − p_begin] += Wᵀ[t]·g[o] (summed over output channels of the
tap's group), in float64. Each case builds a one-Conv model with constant weights, asks
`gradient_model` for ∂⟨u, y⟩/∂x, runs it in onnxruntime (float32) and compares; the geometry table
covers strides, pads (symmetric, asymmetric, wider than the kernel), dilations, groups (depthwise,
depthwise with a multiplier, grouped), odd sizes, 1-D and 3-D. Separate tests pin which ONNX ops
each geometry is emitted as, so that a fast path that silently stops applying is noticed.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.grad.rules.conv import transposed_weights
from onnxcam.graph.rewrite import GRAD_OUTPUT, SEED_INPUT, gradient_model


def reference_input_grad(g: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], strides: list[int],
                         pads: list[int], dil: list[int], group: int) -> np.ndarray:
    """∂⟨g, conv(x, w)⟩/∂x by the definition, tap by tap, in float64."""
    nd = len(x_shape) - 2
    n, c_in = x_shape[:2]
    c_out, c_in_g = w.shape[:2]
    k = w.shape[2:]
    out = g.shape[2:]
    padded = [x_shape[2 + i] + pads[i] + pads[i + nd] for i in range(nd)]
    gx = np.zeros((n, c_in, *padded))
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    co_g = c_out // group
    for j in range(group):
        gj = g64[:, j * co_g:(j + 1) * co_g]
        for t in itertools.product(*[range(kk) for kk in k]):
            region = tuple(slice(dil[i] * t[i], dil[i] * t[i] + strides[i] * (out[i] - 1) + 1, strides[i])
                           for i in range(nd))
            wt = w64[(slice(j * co_g, (j + 1) * co_g), slice(None)) + t]  # (co_g, c_in_g)
            gx[(slice(None), slice(j * c_in_g, (j + 1) * c_in_g)) + region] += np.einsum("no...,oc->nc...", gj, wt)
    crop = tuple(slice(pads[i], pads[i] + x_shape[2 + i]) for i in range(nd))
    return gx[(slice(None), slice(None)) + crop]


def conv_model(x_shape: tuple[int, ...], w: np.ndarray, attrs: dict) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# (id, x shape, w shape, attributes)
GEOMETRIES = [
    ("3x3_p1", (2, 5, 9, 9), (7, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("3x3_valid_odd", (1, 3, 11, 8), (4, 3, 3, 3), {}),
    ("1x1", (2, 6, 7, 5), (4, 6, 1, 1), {}),
    ("1x1_pad1_wider_than_kernel", (1, 3, 5, 6), (4, 3, 1, 1), {"pads": [1, 1, 1, 1]}),
    ("3x3_pad2_wider_than_kernel", (1, 3, 6, 5), (4, 3, 3, 3), {"pads": [3, 0, 1, 2]}),
    ("asymmetric_pads", (1, 3, 8, 7), (5, 3, 3, 2), {"pads": [0, 1, 2, 0]}),
    ("5x5_p2", (1, 2, 10, 9), (3, 2, 5, 5), {"pads": [2, 2, 2, 2]}),
    ("dilation2", (1, 3, 11, 10), (4, 3, 3, 3), {"dilations": [2, 2], "pads": [2, 1, 1, 2]}),
    ("dilation_2x3", (1, 2, 12, 13), (3, 2, 3, 2), {"dilations": [2, 3], "pads": [1, 0, 2, 3]}),
    ("depthwise", (2, 6, 7, 7), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),
    ("depthwise_multiplier2", (1, 4, 6, 7), (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    ("group2", (1, 4, 7, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 0, 1, 2]}),
    ("group3_1x1", (2, 6, 5, 5), (9, 2, 1, 1), {"group": 3}),
    ("stride2_3x3", (1, 3, 9, 9), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("stride2_even_size", (2, 3, 8, 8), (4, 3, 3, 3), {"strides": [2, 2]}),
    ("stride2_1x1", (1, 6, 9, 8), (5, 6, 1, 1), {"strides": [2, 2]}),
    ("stride2_7x7_stem", (1, 3, 23, 22), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ("stride_2x3_asymmetric", (1, 2, 10, 11), (3, 2, 3, 3), {"strides": [2, 3], "pads": [0, 1, 1, 2]}),
    ("stride2_dilation2", (1, 2, 11, 10), (3, 2, 3, 3), {"strides": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ("stride2_depthwise", (1, 4, 9, 8), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("stride2_group2", (1, 4, 9, 9), (6, 2, 3, 3), {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("conv1d", (2, 3, 13), (4, 3, 3), {"pads": [2, 0]}),
    ("conv1d_stride2", (2, 3, 13), (4, 3, 5), {"strides": [2], "pads": [2, 1]}),
    ("conv3d", (1, 2, 5, 6, 4), (3, 2, 3, 3, 2), {"pads": [1, 1, 0, 1, 1, 1]}),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", [pytest.param(*g[1:], id=g[0]) for g in GEOMETRIES])
def test_conv_input_gradient_matches_definition(x_shape: tuple, w_shape: tuple, attrs: dict) -> None:
    rng = np.random.default_rng(len(x_shape) * 1000 + sum(w_shape))
    w = rng.standard_normal(w_shape).astype(np.float32)
    model = conv_model(x_shape, w, attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    u = rng.standard_normal(y.shape).astype(np.float32)
    gm = gradient_model(model, "x")
    got = session(gm).run([GRAD_OUTPUT], {"x": x, SEED_INPUT: u})[0]
    nd = len(x_shape) - 2
    want = reference_input_grad(u, w, x_shape, attrs.get("strides", [1] * nd), attrs.get("pads", [0] * 2 * nd),
                                attrs.get("dilations", [1] * nd), attrs.get("group", 1))
    assert got.shape == want.shape
    scale = np.abs(u).max() * np.abs(w).sum(axis=tuple(range(1, w.ndim))).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)


def _grad_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in gradient_model(model, "x").graph.node if n.name.startswith("onnxcam")]


@pytest.mark.parametrize("gid", ["3x3_p1", "1x1", "dilation2", "depthwise", "group2", "conv3d"])
def test_stride1_constant_weights_are_a_conv(gid: str) -> None:
    """Stride 1, constant weights: the gradient is one Conv with transposed weights, no ConvTranspose."""
    _, x_shape, w_shape, attrs = next(g for g in GEOMETRIES if g[0] == gid)
    ops = _grad_ops(conv_model(x_shape, np.ones(w_shape, np.float32), attrs))
    assert ops.count("Conv") == 1 and "ConvTranspose" not in ops, ops


def test_pad_wider_than_kernel_falls_back_to_conv_transpose() -> None:
    _, x_shape, w_shape, attrs = next(g for g in GEOMETRIES if g[0] == "1x1_pad1_wider_than_kernel")
    assert "ConvTranspose" in _grad_ops(conv_model(x_shape, np.ones(w_shape, np.float32), attrs))


def test_computed_weights_keep_conv_transpose() -> None:
    """Weights that are not an initializer cannot be transposed at rewrite time."""
    nodes = [helper.make_node("Neg", ["w0"], ["w"], name="neg"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
                                              helper.make_tensor_value_info("w0", TensorProto.FLOAT, [3, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert "ConvTranspose" in _grad_ops(model)


def test_transposed_weights_by_index() -> None:
    """Wᵀ[j·Cin/G + a, b, u, v] = W[j·Cout/G + b, a, k−1−u, k−1−v] for group j, element by element."""
    rng = np.random.default_rng(3)
    group, c_out, c_in_g, k = 3, 6, 2, (3, 2)
    w = rng.standard_normal((c_out, c_in_g, *k))
    wt = transposed_weights(w, group)
    assert wt.shape == (group * c_in_g, c_out // group, *k)
    for j, a, b, u, v in itertools.product(range(group), range(c_in_g), range(c_out // group), range(k[0]), range(k[1])):
        assert wt[j * c_in_g + a, b, u, v] == w[j * (c_out // group) + b, a, k[0] - 1 - u, k[1] - 1 - v]
