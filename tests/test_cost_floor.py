"""Issue 15's per-call floor: the heatmap made inside the explain run (graph/scaled_maps.py), CAM's
map in the graph, and the class seed of a linear head as a row of its weights — each against
the formula it replaces (numpy `scale_maps`, the numpy `cam`, the engine's Gemm/MatMul backward)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam.graph.rewrite as rewrite
from onnxcam import Explainer
from onnxcam.grad.builder import Emitter
from onnxcam.graph.scaled_maps import append_scaled_maps
from onnxcam.methods import MethodInputs, get_method, scale_maps
from onnxcam.types import TensorInfo

from .helpers import GOLDENS, MOBILENET

NAMES = ["tinyresnet", "tinymbv3", "tinymeanpool", "tinysqueeze", "tinyvgg"]
GRAPH_MAPS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcam-elementwise", "cam", "fem"]


def scaled_maps_session(h: int, w: int, size: tuple[int, int]) -> ort.InferenceSession:
    """A model (N, h, w) maps → (N, H, W) heatmaps made of `append_scaled_maps` alone."""
    e = Emitter({"m": TensorInfo("m", (None, h, w), TensorProto.FLOAT)}, {}, 17, prefix="t/")
    out = append_scaled_maps(e, "m", (h, w), size)
    assert out is not None
    graph = helper.make_graph(
        e.nodes + [helper.make_node("Identity", [out], ["heat"])], "scaled",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", h, w])],
        [helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["N", *size])], e.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("h, w, size", [(7, 7, (224, 224)), (14, 9, (100, 130)), (1, 1, (32, 32)), (6, 6, (6, 6)),
                                        (28, 28, (224, 224))])
def test_scaled_maps_in_the_graph_equal_scale_maps_and_are_batch_invariant(h: int, w: int, size: tuple[int, int]):
    rng = np.random.default_rng(h * 100 + w)
    maps = np.maximum(rng.standard_normal((5, h, w)), 0).astype(np.float32)
    maps[1] = 3.0  # constant: 0 everywhere
    maps[2] *= 1e-11  # a tiny gradient's map: relative ε keeps its shape
    maps[3] = 0.0
    sess = scaled_maps_session(h, w, size)
    got = sess.run(None, {"m": maps})[0]
    want = scale_maps(maps, size)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    if h * w > 1:
        assert got[2].max() > 0.99  # not blanked by an absolute ε
    for i in range(len(maps)):  # each image alone gives its own rows of the batch, bit for bit
        np.testing.assert_array_equal(sess.run(None, {"m": maps[i : i + 1]})[0][0], got[i])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", GRAPH_MAPS)
def test_explainer_heatmap_from_the_run_equals_scale_maps(name: str, method: str):
    """The explainer takes the heatmap from the run (asserted) and it equals numpy's `scale_maps`
    of the same maps; the maps equal the method's numpy `cam` (CAM: its head weights in the graph)."""
    with np.load(GOLDENS.parent / "methods" / f"{name}.npz") as z:
        x, targets = z["x"], z["targets"]
    if method == "cam" and name in ("tinymbv3", "tinyvgg"):
        pytest.skip("no GAP → linear head after the default layer")
    ex = Explainer(GOLDENS / f"torchscript_{name}.onnx", method=method)
    res = ex.explain(x, targets=targets)
    em = ex._build(tuple(x.shape[2:])).em
    assert {"cam", "heatmap"} <= set(em.method_outputs)
    np.testing.assert_allclose(res.heatmaps, scale_maps(res.cams, res.heatmaps.shape[1:]), rtol=0, atol=1e-6)
    head = ex._built[next(iter(ex._built))].head
    want = get_method(method).cam(MethodInputs(res.activations, res.gradients, res.targets, res.outputs, head))
    np.testing.assert_allclose(res.cams, want, rtol=1e-4, atol=1e-5 * want.max())


def test_eigen_smooth_scales_its_own_map():
    """With eigen_smooth the run's heatmap (of the unsmoothed map) is not used: the heatmap is
    `scale_maps` of the smoothed map."""
    ex = Explainer(MOBILENET, method="gradcam", eigen_smooth=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    res = ex.explain(x)
    assert "heatmap" not in ex._build((224, 224)).em.method_outputs
    np.testing.assert_allclose(res.heatmaps, scale_maps(res.cams, (224, 224)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["eigencam", "kpcacam", "ablationcam", "random"])
def test_maps_finished_in_numpy_are_scaled_as_scale_maps(method: str):
    """Maps a method finishes in numpy go through graph/scaled_maps.py's model: equal to numpy's
    `scale_maps` within 1e-6, and an image's heatmap the same alone as in the batch."""
    ex = Explainer(MOBILENET, method=method)
    x = np.random.default_rng(5).standard_normal((3, 3, 224, 224), dtype=np.float32)
    res = ex.explain(x)
    assert ex._scalers and all(s is not None for s in ex._scalers.values())
    np.testing.assert_allclose(res.heatmaps, scale_maps(res.cams, (224, 224)), rtol=0, atol=1e-6)
    alone = ex._scale_maps(res.cams[1:2], (224, 224))
    np.testing.assert_array_equal(alone[0], res.heatmaps[1])


def _without_head_seed(monkeypatch) -> None:
    monkeypatch.setattr(rewrite, "linear_head", lambda *a, **k: None)


@pytest.mark.parametrize("stem", ["torchscript_tinyresnet", "dynamo_tinymbv3", "tf2onnx_smallresnet"])
def test_linear_head_seed_equals_the_backward_of_the_head(stem: str, monkeypatch):
    """Gemm (torch exports) and MatMul + Add (tf2onnx) heads: ∂y_t/∂A from the row W[t] equals the
    engine's backward through the head (whose rules are tested against autograd), for ∂y/∂A and
    guided backpropagation's ∂y/∂x."""
    ex = Explainer(GOLDENS / f"{stem}.onnx", method="gradcam")
    size = ex.info.fixed_size or (32, 32)
    assert any(n.name == "onnxcam/seed" and n.op_type == "Gather" for n in ex._build(size).em.model.graph.node)
    shape = (3, 3, *size) if ex.info.layout == "NCHW" else (3, *size, 3)
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    fast = ex.explain(x, targets=[0, 1, 2])
    guided = Explainer(GOLDENS / f"{stem}.onnx", method="guidedbackprop").explain(x, targets=[0, 1, 2])
    _without_head_seed(monkeypatch)
    slow = Explainer(GOLDENS / f"{stem}.onnx", method="gradcam").explain(x, targets=[0, 1, 2])
    guided_slow = Explainer(GOLDENS / f"{stem}.onnx", method="guidedbackprop").explain(x, targets=[0, 1, 2])
    np.testing.assert_allclose(fast.gradients, slow.gradients, rtol=1e-6, atol=1e-7 * np.abs(slow.gradients).max())
    for k in guided.extra:
        np.testing.assert_allclose(guided.extra[k], guided_slow.extra[k], rtol=1e-6, atol=1e-6)


def _gemm_model(alpha: float, trans_b: int) -> onnx.ModelProto:
    """Conv → Relu → GAP → Flatten → Gemm(alpha, transB) → Relu → y: the head is not the last op."""
    rng = np.random.default_rng(7)
    wc = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wg = rng.standard_normal((4, 5) if not trans_b else (5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["z"], alpha=alpha, transB=trans_b),
        helper.make_node("Add", ["z", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wg, "wg"),
         numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("alpha, trans_b", [(0.5, 0), (2.0, 1)])
def test_linear_head_folds_alpha_and_trans_b(alpha: float, trans_b: int, monkeypatch):
    """∂y_t/∂A with alpha and transB folded into the row table, against the Gemm backward and
    central differences of y_t in A's direction through the closed form ∂y_t/∂A = α·W'[:, t]/(h·w)."""
    m = _gemm_model(alpha, trans_b)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8), dtype=np.float32)
    fast = Explainer(m, method="gradcam", layer="a").explain(x, targets=[1, 4])
    _without_head_seed(monkeypatch)
    slow = Explainer(m, method="gradcam", layer="a").explain(x, targets=[1, 4])
    np.testing.assert_allclose(fast.gradients, slow.gradients, rtol=1e-6)
    wg = numpy_helper.to_array(m.graph.initializer[1])
    w = wg.T if trans_b else wg  # (C, K)
    want = alpha * w[:, [1, 4]].T[:, :, None, None] / 64.0
    np.testing.assert_allclose(fast.gradients, np.broadcast_to(want, fast.gradients.shape), rtol=1e-6)


def test_linear_head_is_not_used_when_the_layer_is_its_input():
    m = _gemm_model(1.0, 1)
    assert rewrite.linear_head(m.graph, {"f": TensorInfo("f", ("N", 4), TensorProto.FLOAT)},
                               {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}, "y", "f") is None
    got = rewrite.linear_head(m.graph, {"f": TensorInfo("f", ("N", 4), TensorProto.FLOAT)},
                              {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}, "y", "a")
    assert got is not None and got.input == "f" and got.weight.shape == (5, 4)


@pytest.mark.parametrize("name", NAMES)
def test_kpcacam_from_the_in_graph_gram_equals_the_numpy_kernel(name: str):
    """KPCA-CAM's kernel tanh(γG + c₀) from the run's location Gram matrix equals the numpy
    formula of record (`kernel_component`, Gram in float64 numpy) on the same activations."""
    from onnxcam.methods.eigen import kernel_component

    with np.load(GOLDENS.parent / "methods" / f"{name}.npz") as z:
        x, targets = z["x"], z["targets"]
    ex = Explainer(GOLDENS / f"torchscript_{name}.onnx", method="kpcacam")
    res = ex.explain(x, targets=targets)
    layer = ex._build(tuple(x.shape[2:])).em.layer
    in_graph = "gram_locations" in ex._build(tuple(x.shape[2:])).em.method_outputs
    assert in_graph == (layer.height * layer.width <= layer.channels)
    want = np.maximum(kernel_component(res.activations), 0)
    np.testing.assert_allclose(res.cams, want, rtol=1e-5, atol=1e-6 * want.max())


def test_kpcacam_in_graph_on_mobilenet_equals_the_numpy_kernel():
    ex = Explainer(MOBILENET, method="kpcacam")
    x = np.random.default_rng(2).standard_normal((3, 3, 224, 224), dtype=np.float32)
    res = ex.explain(x)
    assert "gram_locations" in ex._build((224, 224)).em.method_outputs
    from onnxcam.methods.eigen import kernel_component

    want = np.maximum(kernel_component(res.activations), 0)
    np.testing.assert_allclose(res.cams, want, rtol=1e-5, atol=1e-6 * want.max())


def test_fem_in_graph_weights_equal_the_numpy_formula():
    """FEM's k-sigma weights in the run, on MobileNetV2: the map equals the numpy `cam` (float64
    weights) on the same activations."""
    ex = Explainer(MOBILENET, method="fem")
    x = np.random.default_rng(4).standard_normal((3, 3, 224, 224), dtype=np.float32)
    res = ex.explain(x)
    assert "cam" in ex._build((224, 224)).em.method_outputs
    want = get_method("fem").cam(MethodInputs(res.activations, None, res.targets, res.outputs))
    np.testing.assert_allclose(res.cams, want, rtol=1e-5, atol=1e-6 * want.max())
