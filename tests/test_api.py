"""The Python API contract on the bundled real model and on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxcam
from onnxcam import Explainer, HeadError, UsageError, load_image, preprocess

from .helpers import EXAMPLES, MOBILENET, tiny_model

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def mobilenet() -> Explainer:
    return Explainer(MOBILENET, method="gradcam")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    imgs = [load_image(EXAMPLES / n) for n in ("chelsea.png", "coffee.png")]
    return preprocess(imgs, (224, 224), "imagenet")


def _peak(heatmap: np.ndarray, size_hw: tuple[int, int]) -> tuple[int, int]:
    m = onnxcam.image.resize_map(heatmap, size_hw)
    y, x = np.unravel_index(int(m.argmax()), m.shape)
    return int(x), int(y)


def _inside(pt: tuple[int, int], box: list[int]) -> bool:
    return box[0] <= pt[0] < box[2] and box[1] <= pt[1] < box[3]


def test_result_contract(mobilenet: Explainer, photos: np.ndarray):
    res = mobilenet.explain(photos)
    assert res.heatmaps.shape == (2, 224, 224) and res.heatmaps.dtype == np.float32
    assert res.heatmaps.min() >= 0 and res.heatmaps.max() <= 1
    assert res.cams.shape == (2, 7, 7) and res.cams.min() >= 0
    assert res.activations.shape == res.gradients.shape == (2, 1280, 7, 7)
    assert res.targets.dtype == np.int64 and res.targets.shape == (2,)
    assert res.outputs.shape == (2, 1000)
    assert res.layer == "/features/features.18/features.18.2/Clip_output_0"
    assert res.provider == "CPUExecutionProvider"


def test_real_model_predicts_and_points_at_the_cat(mobilenet: Explainer, photos: np.ndarray, boxes: dict):
    res = mobilenet.explain(photos)
    assert int(res.targets[0]) in CAT_CLASSES
    assert mobilenet.labels[int(res.targets[1])] == "espresso"
    np.testing.assert_array_equal(res.targets, res.outputs.argmax(1))
    cat_peak = _peak(res.heatmaps[0], (300, 451))
    assert _inside(cat_peak, boxes["chelsea.png"]["face"]), cat_peak
    cup_peak = _peak(res.heatmaps[1], (400, 600))
    assert _inside(cup_peak, boxes["coffee.png"]["box"]), cup_peak


def test_gradient_of_gap_fc_head_is_the_classifier_row(mobilenet: Explainer, photos: np.ndarray):
    """Below GAP → Flatten → Gemm, ∂y_c/∂A_kij = W[c, k] / (h·w) exactly: read W from the file."""
    model = onnx.load(str(MOBILENET))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == gemm.input[1])
    res = mobilenet.explain(photos, targets=[3, 999])
    assert list(res.targets) == [3, 999]
    for n, c in enumerate((3, 999)):
        want = np.broadcast_to((w[c] / 49.0)[:, None, None], (1280, 7, 7))
        np.testing.assert_allclose(res.gradients[n], want, rtol=1e-5, atol=1e-9)


def test_targets_forms(mobilenet: Explainer, photos: np.ndarray):
    assert list(mobilenet.explain(photos, targets=7).targets) == [7, 7]
    assert list(mobilenet.explain(photos, targets=np.array([1, 2])).targets) == [1, 2]
    with pytest.raises(UsageError, match="out of range: the model has 1000 classes"):
        mobilenet.explain(photos, targets=1000)
    with pytest.raises(UsageError, match="got 3 targets for a batch of 2"):
        mobilenet.explain(photos, targets=[1, 2, 3])


def test_batch_checks(mobilenet: Explainer, photos: np.ndarray):
    with pytest.raises(UsageError, match="channels"):
        mobilenet.explain(photos.transpose(0, 2, 3, 1))
    with pytest.raises(UsageError, match="4-D"):
        mobilenet.explain(photos[0, 0])
    single = mobilenet.explain(photos[0])  # a single CHW image is a batch of one
    both = mobilenet.explain(photos)
    np.testing.assert_allclose(single.cams[0], both.cams[0], rtol=1e-4, atol=1e-6)


def test_methods_and_layers_by_name(photos: np.ndarray):
    ex = Explainer(MOBILENET, method="cam")
    res = ex.explain(photos)
    assert res.gradients is None and res.method == "cam"
    grad = Explainer(MOBILENET, method="gradcam").explain(photos)
    np.testing.assert_allclose(grad.heatmaps, res.heatmaps, atol=1e-3)  # GAP→FC: equal up to scale
    layer = "/features/features.17/conv/conv.2/Conv_output_0"
    mid = Explainer(MOBILENET, method="hirescam", layer=layer).explain(photos)
    assert mid.layer == layer and mid.activations.shape == (2, 320, 7, 7)
    with pytest.raises(HeadError, match="use --method gradcam"):
        Explainer(MOBILENET, method="cam", layer=layer)
    with pytest.raises(UsageError, match="unknown method 'nope'"):
        Explainer(MOBILENET, method="nope")
    with pytest.raises(UsageError, match="layer 'nope' is not a 4-D spatial activation"):
        Explainer(MOBILENET, layer="nope")


def test_model_file_is_never_changed(tmp_path):
    src = MOBILENET.read_bytes()
    Explainer(MOBILENET).explain(np.zeros((1, 3, 224, 224), np.float32))
    assert MOBILENET.read_bytes() == src


# -- hand-built graphs (onnx.helper) ---------------------------------------------------------------
def _nhwc_model() -> onnx.ModelProto:
    """tf2onnx's pattern: NHWC input → Transpose → Conv → Transpose → Relu → ReduceMean[1,2] → MatMul."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["ct"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["p"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["p", "fc"], ["y"]),
    ]
    return tiny_model(nodes, {"w": w, "fc": fc}, {"x": ["N", 6, 6, 3]}, {"y": ["N", 5]}, opset=13, name="nhwc")


def test_nhwc_graph_layout_default_layer_and_numpy_gradient():
    m = _nhwc_model()
    ex = Explainer(m)
    assert ex.info.layout == "NHWC" and ex.info.size == (6, 6)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    res = ex.explain(x)
    assert res.layer == "r"
    # independent numpy forward and backward
    w = numpy_helper.to_array(m.graph.initializer[0]).astype(np.float64)
    fc = numpy_helper.to_array(m.graph.initializer[1]).astype(np.float64)
    xp = np.pad(x.astype(np.float64).transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((2, 4, 6, 6))
    for i in range(6):
        for j in range(6):
            conv[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i : i + 3, j : j + 3], w)
    relu = np.maximum(conv, 0)
    y = relu.mean(axis=(2, 3)) @ fc
    t = y.argmax(1)
    np.testing.assert_array_equal(res.targets, t)
    np.testing.assert_allclose(res.activations, relu, rtol=1e-4, atol=1e-5)
    want_g = np.broadcast_to((fc[:, t].T / 36.0)[:, :, None, None], relu.shape)
    np.testing.assert_allclose(res.gradients, want_g, rtol=1e-5, atol=1e-8)
    cam = Explainer(m, method="cam").explain(x)  # ReduceMean + MatMul is a CAM head too
    np.testing.assert_allclose(cam.cams, np.maximum(np.einsum("nc,nchw->nhw", fc[:, t].T, relu), 0), rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_does_not_fool_the_layer_finder():
    """conv → relu → [SE: GAP → 1x1 conv → sigmoid → Mul] → conv → relu → GAP → Gemm."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)), "wse": rng.normal(size=(4, 4, 1, 1)),
        "w2": rng.normal(size=(6, 4, 1, 1)), "fc": rng.normal(size=(3, 6)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["se_p"]),
        helper.make_node("Conv", ["se_p", "wse"], ["se_c"]),
        helper.make_node("Sigmoid", ["se_c"], ["se_s"]),
        helper.make_node("Mul", ["r1", "se_s"], ["gated"]),
        helper.make_node("Conv", ["gated", "w2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    m = tiny_model(nodes, inits, {"x": [1, 3, 8, 8]}, {"y": [1, 3]}, name="se")
    ex = Explainer(m)
    names = [l.name for l in ex.layers()]
    assert "se_p" not in names and "se_s" not in names  # 1x1 maps are not candidates
    assert ex.explain(np.ones((1, 3, 8, 8), np.float32)).layer == "r2"
    # the fixed batch of 1 is respected by running items one at a time
    res = ex.explain(np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32))
    assert res.cams.shape == (3, 8, 8)
