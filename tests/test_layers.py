"""The CAM-head matcher (layers.cam_head) on hand-built classifiers: the class weights and bias
it reads must be the ones written into the graph, and a head that is not GAP → linear is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import HeadError
from onnxcam.graph.rewrite import prepare
from onnxcam.layers import cam_head
from onnxcam.model import inspect_model

C, K = 3, 4
RNG = np.random.default_rng(0)
CONV_W = RNG.normal(size=(C, 2, 3, 3)).astype(np.float32)


def _classifier(head: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 13) -> onnx.ModelProto:
    """x (1, 2, 6, 6) → Conv(3×3, pad 1) → Relu → `a` (1, 3, 6, 6) → head → y (1, K)."""
    body = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["a"], name="relu"),
    ]
    graph = helper.make_graph(
        body + head, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])],
        [numpy_helper.from_array(CONV_W, "conv_w")] + inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _head(model: onnx.ModelProto):
    prep = prepare(model, inspect_model(model), None)
    layer = prep.layer("a")
    assert layer.layout == "NCHW" and (layer.channels, layer.height, layer.width) == (C, 6, 6)
    return cam_head(prep.model, prep.shapes, prep.constants, layer, prep.output)


def test_gap_flatten_gemm() -> None:
    w, b = RNG.normal(size=(K, C)).astype(np.float32), RNG.normal(size=K).astype(np.float32)
    model = _classifier([
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    head = _head(model)
    np.testing.assert_array_equal(head.weight, w)
    np.testing.assert_array_equal(head.bias, b)
    assert head.description == "GlobalAveragePool → Flatten → Gemm"


def test_gemm_alpha_beta_and_untransposed_weight() -> None:
    wt, b = RNG.normal(size=(C, K)).astype(np.float32), RNG.normal(size=K).astype(np.float32)
    model = _classifier([
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], alpha=2.0, beta=0.5),
    ], [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
    head = _head(model)
    np.testing.assert_allclose(head.weight, 2.0 * wt.T, rtol=1e-6)
    np.testing.assert_allclose(head.bias, 0.5 * b, rtol=1e-6)


def test_reduce_mean_matmul_add() -> None:
    w, b = RNG.normal(size=(C, K)).astype(np.float32), RNG.normal(size=K).astype(np.float32)
    model = _classifier([
        helper.make_node("ReduceMean", ["a"], ["p"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["p", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    head = _head(model)
    np.testing.assert_array_equal(head.weight, w.T)
    np.testing.assert_array_equal(head.bias, b)
    assert head.description == "ReduceMean → MatMul → Add"


def test_full_size_average_pool_reshape_gemm_softmax() -> None:
    w = RNG.normal(size=(K, C)).astype(np.float32)
    model = _classifier([
        helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[6, 6]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"], axis=1),
    ], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, C], np.int64), "shape")])
    head = _head(model)
    np.testing.assert_array_equal(head.weight, w)
    np.testing.assert_array_equal(head.bias, np.zeros(K, np.float32))
    assert head.description == "AveragePool → Reshape → Gemm → Softmax"


@pytest.mark.parametrize("head_nodes, why", [
    ([helper.make_node("GlobalMaxPool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
      helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)], r"found GlobalMaxPool \(no global average pooling\)"),
    ([helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[3, 3], strides=[3, 3]),
      helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w12"], ["y"], transB=1)],
     "AveragePool whose kernel is not the whole map"),
    ([helper.make_node("GlobalAveragePool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
      helper.make_node("Gemm", ["f", "w"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["y"])],
     r"GlobalAveragePool → Flatten → Gemm \(Relu after the linear layer\)"),
])
def test_other_heads_are_refused(head_nodes: list[onnx.NodeProto], why: str) -> None:
    inits = [numpy_helper.from_array(np.ones((K, C), np.float32), "w"),
             numpy_helper.from_array(np.ones((K, 4 * C), np.float32), "w12")]
    with pytest.raises(HeadError, match=f"layer 'a' to feed global average pooling.*{why}"):
        _head(_classifier(head_nodes, inits))
