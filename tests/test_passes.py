"""Rewrite-time constant folding and the normalising passes: hand-computed values, and the input
model never changed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import OnnxcamError
from onnxcam.graph.constants import constant_values, fold_constants
from onnxcam.graph.attention import decompose_attention
from onnxcam.graph.passes import normalize, resolve_auto_pad, same_pads, upgrade_opset
from onnxcam.model import inspect_model
from onnxcam.shapes import fill_runtime_shapes, infer_shapes


def _shape_model() -> onnx.ModelProto:
    """x (N, 3, 4, 5), batch symbolic: Shape(x)[1] and Shape(x)[2]·Shape(x)[3] are static."""
    idx = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),       # 3
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),       # the batch: unknown
        helper.make_node("Gather", ["s", "i23"], ["hw"], axis=0),     # [4, 5]
        helper.make_node("ReduceProd", ["hw"], ["area"], keepdims=1),  # [20], by the evaluator
        helper.make_node("Shape", ["x"], ["tail"], start=2),           # [4, 5]
        helper.make_node("Concat", ["n", "c", "area"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [idx("i1", [1]), idx("i0", [0]), idx("i23", [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def test_static_dims_of_a_dynamic_shape_are_folded() -> None:
    m = _shape_model()
    before = m.SerializeToString()
    given = constant_values(m)
    got = fold_constants(m, infer_shapes(m), given)
    np.testing.assert_array_equal(got["c"], [3])
    np.testing.assert_array_equal(got["hw"], [4, 5])
    np.testing.assert_array_equal(got["area"], [20])
    np.testing.assert_array_equal(got["tail"], [4, 5])
    for unknown in ("s", "n", "target", "y"):  # they depend on the batch
        assert unknown not in got
    assert set(given) == {"i1", "i0", "i23"}  # the given dict is not changed
    assert m.SerializeToString() == before


def test_fully_static_shape_is_folded() -> None:
    m = _shape_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    got = fold_constants(m, infer_shapes(m), constant_values(m))
    np.testing.assert_array_equal(got["s"], [2, 3, 4, 5])
    np.testing.assert_array_equal(got["target"], [2, 3, 20])


def test_same_pads() -> None:
    # size 5, kernel 3, stride 2: out 3, total (3-1)*2 + 3 - 5 = 2
    assert same_pads(5, 3, 2, 1, upper=True) == (1, 1)
    # size 6: out 3, total (3-1)*2 + 3 - 6 = 1; SAME_UPPER puts the extra pad at the end
    assert same_pads(6, 3, 2, 1, upper=True) == (0, 1)
    assert same_pads(6, 3, 2, 1, upper=False) == (1, 0)


def _auto_pad_model() -> onnx.ModelProto:
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_resolve_auto_pad_works_on_a_copy() -> None:
    m = _auto_pad_model()
    before = m.SerializeToString()
    res = resolve_auto_pad(m, infer_shapes(m))
    assert res.changed == 1 and res.model is not m
    assert m.SerializeToString() == before
    attrs = {a.name: helper.get_attribute_value(a) for a in res.model.graph.node[0].attribute}
    assert attrs["auto_pad"] == b"NOTSET"
    assert list(attrs["pads"]) == [0, 1, 1, 1]  # H 6 → (0, 1), W 5 → (1, 1): [H_b, W_b, H_e, W_e]
    again = resolve_auto_pad(res.model, infer_shapes(res.model))
    assert again.changed == 0 and again.model is res.model


def test_upgrade_opset_returns_a_new_model() -> None:
    m = _auto_pad_model()
    res = upgrade_opset(m, 16)
    assert res.changed == 3 and res.model.opset_import[0].version == 16 and m.opset_import[0].version == 13
    assert upgrade_opset(m, 11).model is m and upgrade_opset(m, 11).changed == 0


def test_pipeline_leaves_the_model_alone() -> None:
    m = _auto_pad_model()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param = "batch", "h"
    before = m.SerializeToString()
    norm = normalize(m, inspect_model(m), (6, 5))
    assert m.SerializeToString() == before
    assert norm.shapes["y"].shape == ("N", 2, 3, 3)
    assert [name for name, _ in norm.applied] == ["resolve_auto_pad"]


def test_shapes_inference_loses_are_measured_without_changing_the_given_shapes() -> None:
    """Reshape to Abs(Shape(x)): ONNX's data propagation stops at Abs, so y's shape is unknown
    until a run at batch 1 and 2 measures them."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Abs", ["s"], ["si"]),
        helper.make_node("Reshape", ["x", "si"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    inferred = infer_shapes(m)
    assert inferred["y"].shape == ()  # not even the rank
    filled = fill_runtime_shapes(m, inspect_model(m), inferred)
    assert filled["y"].shape == ("N", 4, 6, 6) and filled["r"].shape == ("N", 4, 6, 6)
    assert inferred["y"].shape == ()  # the given dict is unchanged
    norm = normalize(m, inspect_model(m), None)
    assert norm.shapes["y"].shape == ("N", 4, 6, 6)
    assert ("fill_runtime_shapes", 2) in norm.applied


def _attention_model(q_shape: list[int], kv_shape: list[int], **attrs) -> onnx.ModelProto:
    """One opset-23 Attention node on graph inputs q, k, v."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("q", q_shape), ("k", kv_shape), ("v", kv_shape))]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn", **attrs)
    g = helper.make_graph([node], "attention", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize("q_shape, kv_shape, attrs", [
    ([2, 3, 5, 4], [2, 3, 7, 4], {}),
    ([2, 3, 5, 4], [2, 3, 5, 4], {"scale": 0.3}),
    ([2, 5, 12], [2, 7, 12], {"q_num_heads": 3, "kv_num_heads": 3}),
])
def test_decompose_attention_equals_onnxruntimes_attention(q_shape, kv_shape, attrs) -> None:
    """The decomposed graph (MatMul → Softmax → MatMul, probabilities a tensor) computes what
    onnxruntime's own Attention kernel does, on a copy."""
    model = _attention_model(q_shape, kv_shape, **attrs)
    res = decompose_attention(model, infer_shapes(model))
    assert res.changed == 1 and res.model is not model and model.graph.node[0].op_type == "Attention"
    assert "Attention" not in {n.op_type for n in res.model.graph.node}
    assert sum(n.op_type == "Softmax" for n in res.model.graph.node) == 1
    rng = np.random.default_rng(0)
    feeds = {"q": rng.normal(size=q_shape), "k": rng.normal(size=kv_shape), "v": rng.normal(size=kv_shape)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]  # noqa: E731
    np.testing.assert_allclose(run(res.model), run(model), rtol=1e-5, atol=1e-6)


def test_decompose_attention_refuses_what_it_does_not_write() -> None:
    model = _attention_model([1, 2, 4, 4], [1, 2, 4, 4], is_causal=1)
    with pytest.raises(OnnxcamError, match=r"Attention node 'attn': is_causal is not supported; export at opset 18"):
        decompose_attention(model, infer_shapes(model))
