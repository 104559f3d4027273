"""The heatmap inside the exported model (onnxcam.export, graph/heatmap.py) in onnxruntime.

References: pytorch-grad-cam 1.5.7's maps on the tiny torch models (tests/data/methods), maps made
in numpy from the framework-autograd goldens' activation and gradient (tests/data/goldens), and
the Python Explainer's maps (the in-graph map must equal what `onnxcam explain` writes to 1e-5).
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxcam import Explainer
from onnxcam.errors import OnnxcamError, UsageError
from onnxcam.export import export_model
from onnxcam.graph.heatmap import GRAPH_MAPS, interpolation_matrix
from onnxcam.graph.versions import lower_versions, lowest_opset
from onnxcam.image import load_image, preprocess

from .helpers import EXAMPLES, GOLDENS, MOBILENET, ROOT, load_golden

REFS = ROOT / "tests" / "data" / "methods"
METHODS = sorted(GRAPH_MAPS)
GRADIENT_METHODS = [m for m in METHODS if m != "cam"]
PYTORCH_GRAD_CAM = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "gradcam-elementwise": "GradCAMElementWise",
}


def run(exported, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(exported.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def scale_like_opencv(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """GUIDE.md's convention in plain numpy + cv2: normalise, cv2.resize, ReLU, normalise."""
    def norm(m):
        m = m - m.min(axis=(1, 2), keepdims=True)
        return m / (m.max(axis=(1, 2), keepdims=True) + 1e-7)

    up = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in norm(cams.astype(np.float32))])
    return norm(np.maximum(up, 0))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return preprocess([load_image(EXAMPLES / "chelsea.png"), load_image(EXAMPLES / "coffee.png")], (224, 224))


# -- against pytorch-grad-cam and the Python path, every method ----------------------------------
@pytest.mark.parametrize("name", ["tinyresnet", "tinysqueeze", "tinymbv3"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_in_graph_heatmap_matches_pytorch_grad_cam_and_explainer(name: str, method: str):
    with np.load(REFS / f"{name}.npz") as z:
        x, targets, want = z["x"], z["targets"], z[PYTORCH_GRAD_CAM[method]]
    path = GOLDENS / f"torchscript_{name}.onnx"
    got = run(export_model(path, method=method, heatmap=True), {"input": x, "onnxcam_target": targets})
    np.testing.assert_array_equal(got["onnxcam_targets"], targets)
    assert np.abs(got["onnxcam_heatmap"] - want).max() <= 1e-3  # the reference library (test_methods' bound)
    py = Explainer(path, method=method).explain(x, targets=targets).heatmaps
    assert np.abs(got["onnxcam_heatmap"] - py).max() <= 1e-5


def test_cam_in_graph_is_the_classifier_weights_times_the_golden_activation():
    g = load_golden("torchscript_tinyresnet")
    want = scale_like_opencv(np.maximum(np.einsum("nc,nchw->nhw", g["fc_weight"][g["targets"]], g["activation"]), 0), (64, 64))
    got = run(export_model(GOLDENS / "torchscript_tinyresnet.onnx", method="cam", heatmap=True),
              {"input": g["x"], "onnxcam_target": np.array([-1], np.int64)})
    np.testing.assert_array_equal(got["onnxcam_targets"], g["targets"])
    assert np.abs(got["onnxcam_heatmap"] - want).max() <= 1e-4


# -- exporters and layouts: autograd goldens in numpy --------------------------------------------
ARCH = ROOT / "tests" / "data" / "arch"


@pytest.mark.parametrize("stem", ["tf2onnx_fer", "tf2onnx_smallresnet", "paddle_mbv2", "dynamo_tinyresnet",
                                  "torchscript_tinysqueeze", "arch/jax_smallcnn"])
def test_gradcam_heatmap_matches_framework_autograd(stem: str):
    """tf2onnx's NHWC models (FER's head is a 1×1 conv to 7 channels then GAP), paddle at opset 9,
    the dynamo exporter at opset 18, SqueezeNet's 1×1-conv classifier, and a jax2onnx CNN whose
    layer itself is NHWC."""
    if stem.startswith("arch/"):
        stem = stem[5:]
        with np.load(ARCH / f"{stem}.npz") as z:
            g = {k: z[k] for k in z.files}
        path = ARCH / f"{stem}.onnx"
    else:
        g, path = load_golden(stem), GOLDENS / f"{stem}.onnx"
    a, d = g["activation"].astype(np.float64), g["gradient"].astype(np.float64)
    cams = np.maximum((d.mean(axis=(2, 3))[:, :, None, None] * a).sum(1), 0)
    x = g["x"]
    size = x.shape[1:3] if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3) else x.shape[2:4]
    ex = export_model(path, method="gradcam", heatmap=True, runtime="web")
    got = run(ex, {ex.inputs[0]: x, "onnxcam_target": np.array([-1], np.int64)})
    np.testing.assert_array_equal(got["onnxcam_targets"], g["targets"])
    assert np.abs(got["onnxcam_heatmap"] - scale_like_opencv(cams, tuple(size))).max() <= 1e-3
    py = Explainer(path, method="gradcam").explain(x).heatmaps
    assert np.abs(got["onnxcam_heatmap"] - py).max() <= 1e-5
    assert ex.ir_version <= 13 and ex.opset <= 26


# -- the bundled model: default and middle layer, targets ----------------------------------------
@pytest.mark.parametrize("layer", [None, "/features/features.14/conv/conv.0/conv.0.2/Clip_output_0"])
def test_mobilenet_default_and_middle_layer_equal_explain(photos, layer):
    ex = export_model(MOBILENET, method="gradcam", layer=layer, heatmap=True, runtime="node")
    feeds = {"input": photos, "onnxcam_target": np.array([-1], np.int64)}
    got = run(ex, feeds)
    py = Explainer(MOBILENET, method="gradcam", layer=layer).explain(photos)
    np.testing.assert_array_equal(got["onnxcam_targets"], py.targets)
    np.testing.assert_allclose(got["logits"], py.outputs, atol=1e-4)
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5
    assert py.targets.tolist() == [285, 967]  # Egyptian cat, espresso


def test_fed_target_is_honoured_per_image_and_for_all(photos):
    ex = export_model(MOBILENET, method="gradcam", heatmap=True)
    for t in ([281, 504], [504]):
        got = run(ex, {"input": photos, "onnxcam_target": np.array(t, np.int64)})
        py = Explainer(MOBILENET, method="gradcam").explain(photos, targets=np.broadcast_to(t, (2,)).copy())
        assert got["onnxcam_targets"].tolist() == py.targets.tolist() == list(np.broadcast_to(t, (2,)))
        assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


def test_target_contracts_have_no_defaulted_inputs(photos):
    need = export_model(MOBILENET, method="gradcam", heatmap=True)
    top1 = export_model(MOBILENET, method="gradcam", heatmap=True, target="predicted")
    for ex in (need, top1):
        assert not {i.name for i in ex.model.graph.input} & {t.name for t in ex.model.graph.initializer}
    assert need.inputs == ["input", "onnxcam_target"] and top1.inputs == ["input"]
    assert need.outputs == top1.outputs == ["logits", "onnxcam_targets", "onnxcam_heatmap"]
    sess = ort.InferenceSession(need.model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="onnxcam_target"):  # required: never silently the top-1
        sess.run(None, {"input": photos})
    with pytest.raises(Exception, match="idx=1000 must be within the inclusive range"):  # never an all-zero map
        sess.run(None, {"input": photos, "onnxcam_target": np.array([1000], np.int64)})
    a = run(top1, {"input": photos})
    b = run(need, {"input": photos, "onnxcam_target": np.array([-1], np.int64)})
    np.testing.assert_array_equal(a["onnxcam_heatmap"], b["onnxcam_heatmap"])


def test_export_without_heatmap_keeps_activation_and_gradient_and_a_required_target(photos):
    ex = export_model(MOBILENET, runtime="web")
    assert ex.inputs == ["input", "onnxcam_target"]
    got = run(ex, {"input": photos, "onnxcam_target": np.array([-1], np.int64)})
    py = Explainer(MOBILENET, method="gradcam").explain(photos)
    np.testing.assert_allclose(got["onnxcam_gradient"], py.gradients, atol=1e-6)


def test_methods_without_a_graph_form_say_so():
    for method in ("scorecam", "eigencam", "fullgrad", "smoothgradcam++"):
        with pytest.raises(UsageError, match=re.escape(f"method '{method}' cannot be computed inside one ONNX graph") + r".*gradcam\+\+"):
            export_model(GOLDENS / "torchscript_tinyresnet.onnx", method=method, heatmap=True)


def test_a_heatmap_without_the_gradient_it_needs_is_refused():
    with pytest.raises(UsageError, match="method gradcam needs the gradient"):
        export_model(MOBILENET, method="gradcam", heatmap=True, gradient=False)
    ex = export_model(GOLDENS / "torchscript_tinyresnet.onnx", method="cam", heatmap=True, gradient=False)
    assert not any(n.name.startswith("onnxcam_grad") for n in ex.model.graph.node)  # CAM: no backward pass


def test_cam_refuses_a_layer_without_a_gap_linear_head():
    with pytest.raises(OnnxcamError, match="CAM needs layer"):
        export_model(MOBILENET, method="cam", heatmap=True, layer="/features/features.14/conv/conv.0/conv.0.2/Clip_output_0")


def test_interpolation_matrices_are_opencv_resize():
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in (((7, 7), (224, 224)), ((5, 9), (48, 31)), ((16, 16), (8, 8))):
        m = rng.random((h, w), dtype=np.float32)
        want = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(interpolation_matrix(h, H) @ m @ interpolation_matrix(w, W).T, want, atol=1e-6)


# -- versions --------------------------------------------------------------------------------
def _tiny(opset: int, ops: list[str]) -> onnx.ModelProto:
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [prev], [f"t{i}"]))
        prev = f"t{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_lowering_declares_the_lowest_opset_and_ir_that_keep_every_schema():
    m = _tiny(28, ["Relu", "Neg"])  # Relu's schema dates from 14, Neg's from 13
    assert m.ir_version == onnx.IR_VERSION and lowest_opset(m) == 14
    low = lower_versions(m, max_opset=26, max_ir=13)
    assert (low.opset, low.ir_version, low.converted) == (14, 7, False)
    x = np.array([-1.0, 2.0], np.float32)
    sess = ort.InferenceSession(low.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], [0.0, -2.0])  # -relu(x)
    assert m.opset_import[0].version == 28  # the input is untouched


def test_a_cap_below_the_graph_converts_or_names_the_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)  # axes an input from 18
    g = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    low = lower_versions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), max_opset=17)
    assert low.converted and low.opset <= 17 and low.ir_version <= 8
    sess = ort.InferenceSession(low.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})[0], [1.0, 4.0])
    with pytest.raises(OnnxcamError, match=r"Relu \(node .*\) needs opset 14.*No Adapter"):
        lower_versions(_tiny(18, ["Relu"]), max_opset=13)
    with pytest.raises(OnnxcamError, match=r"Gelu \(node .*\) needs opset 20"):
        lower_versions(_tiny(20, ["Gelu"]), max_opset=19)
    with pytest.raises(OnnxcamError, match="IR version 7, above the cap 6"):
        lower_versions(_tiny(14, ["Relu"]), max_ir=6)


@pytest.mark.parametrize("rgb_input", [False, True])
def test_runtime_caps_the_export_and_the_model_runs_without_warnings(rgb_input, capfd):
    ex = export_model(MOBILENET, method="gradcam++", heatmap=True, runtime="web", rgb_input=rgb_input)
    assert ex.ir_version <= 13 and ex.opset <= 26
    onnx.checker.check_model(ex.model, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 1  # warnings and above
    capfd.readouterr()
    ort.InferenceSession(ex.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    err = capfd.readouterr().err
    assert "[W:" not in err and "W onnxruntime" not in err, err


# -- uint8 RGB input ----------------------------------------------------------------------------
def _with_image_output(ex, name: str) -> dict:
    """The exported model with its (now internal) preprocessed image tensor as an extra output."""
    m = onnx.ModelProto()
    m.CopyFrom(ex.model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


@pytest.mark.parametrize("stem, preset, layout, channels", [
    ("torchscript_tinyresnet", "imagenet", "NCHW", 3),
    ("torchscript_tinyresnet", "caffe", "NCHW", 3),  # BGR
    ("tf2onnx_fer", "unit", "NHWC", 1),  # grayscale NHWC
])
def test_rgb_input_preprocesses_like_python(stem, preset, layout, channels):
    size = (64, 64)
    ex = export_model(GOLDENS / f"{stem}.onnx", heatmap=True, rgb_input=True, preset=preset, runtime="web")
    assert ex.inputs[0] == "onnxcam_rgb" and ex.preset == preset
    name = onnx.load_model_from_string(export_model(GOLDENS / f"{stem}.onnx").model.SerializeToString()).graph.input[0].name
    sess = ort.InferenceSession(_with_image_output(ex, name).SerializeToString(), providers=["CPUExecutionProvider"])
    t = np.array([-1], np.int64)
    photo = load_image(EXAMPLES / "chelsea.png")
    for img in (photo, photo[:301, :257], photo[:41, :37], photo[:128, :128], photo[:5, :300], cv2.resize(photo, size, interpolation=cv2.INTER_AREA)):
        want = preprocess(img, size, preset, layout, channels)  # cv2.resize on uint8 (or none)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"onnxcam_rgb": img[None], "onnxcam_target": t})))
        np.testing.assert_allclose(got[name], want, rtol=0, atol=0 if channels == 3 else 1e-6)  # gray: float sums
    py = Explainer(GOLDENS / f"{stem}.onnx").explain(want)
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


def test_rgb_input_mobilenet_photo_at_model_size(photos):
    ex = export_model(MOBILENET, method="gradcam", heatmap=True, rgb_input=True, runtime="web")
    img = np.stack([cv2.resize(load_image(EXAMPLES / f), (224, 224), interpolation=cv2.INTER_AREA) for f in ("chelsea.png", "coffee.png")])
    got = run(ex, {"onnxcam_rgb": img, "onnxcam_target": np.array([-1], np.int64)})
    py = Explainer(MOBILENET).explain(preprocess(list(img), (224, 224)))
    assert got["onnxcam_targets"].tolist() == py.targets.tolist() == [285, 967]
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


# -- the command -----------------------------------------------------------------------------------
def test_cli_export_heatmap_rgb_input_for_the_web(tmp_path):
    import json

    from click.testing import CliRunner

    from onnxcam.cli import cli

    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli, ["export", str(MOBILENET), "-o", str(out), "--heatmap", "--method", "gradcam++",
                                 "--rgb-input", "--target-runtime", "web", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["method"] == "gradcam++" and d["preset"] == "imagenet" and d["ir_version"] <= 13 and d["opset"] <= 26
    assert d["inputs"] == ["onnxcam_rgb", "onnxcam_target"] and d["outputs"] == ["logits", "onnxcam_targets", "onnxcam_heatmap"]
    m = onnx.load(str(out))
    assert m.ir_version == d["ir_version"] and not {t.name for t in m.graph.initializer} & {i.name for i in m.graph.input}
    img = cv2.resize(load_image(EXAMPLES / "chelsea.png"), (224, 224), interpolation=cv2.INTER_AREA)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"onnxcam_rgb": img[None], "onnxcam_target": np.array([-1], np.int64)})
    py = Explainer(MOBILENET, method="gradcam++").explain(preprocess(img, (224, 224)))
    assert np.abs(got[2] - py.heatmaps).max() <= 1e-5
    bad = CliRunner().invoke(cli, ["export", str(MOBILENET), "-o", str(tmp_path / "b.onnx"), "--heatmap", "--method", "scorecam"])
    assert bad.exit_code == 2 and "method 'scorecam' cannot be computed inside one ONNX graph" in bad.stderr
    low = CliRunner().invoke(cli, ["export", str(MOBILENET), "-o", str(tmp_path / "c.onnx"), "--heatmap", "--max-opset", "12"])
    assert low.exit_code == 1 and "cannot lower the model to opset 12" in low.stderr and low.stderr.count("\n") == 1


def test_rgb_input_refuses_a_letterbox_config_and_keep_tensors_keeps_a_and_g(tmp_path, photos):
    cfg = tmp_path / "pre.json"
    cfg.write_text('{"preset": "imagenet", "letterbox": true}')
    with pytest.raises(UsageError, match="without letterboxing"):
        export_model(MOBILENET, heatmap=True, rgb_input=True, config=cfg)
    ex = export_model(MOBILENET, heatmap=True, keep_tensors=True)
    assert ex.outputs == ["logits", "onnxcam_targets", "onnxcam_activation", "onnxcam_gradient", "onnxcam_heatmap"]
    got = run(ex, {"input": photos, "onnxcam_target": np.array([-1], np.int64)})
    py = Explainer(MOBILENET).explain(photos)
    np.testing.assert_allclose(got["onnxcam_gradient"], py.gradients, atol=1e-6)
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


@pytest.mark.parametrize("stem, golden", [("torchscript_tinyresnet_fp16", "torchscript_tinyresnet"),
                                          ("tf2onnx_smallresnet_fp16", "tf2onnx_smallresnet")])
def test_float16_models_agree_to_their_precision(stem, golden):
    """In the graph, the float16 gradient is not rounded to float16 before the map (it is no
    output any more, and onnxruntime keeps its float32 kernels' result): within ~1e-3 of explain."""
    path = ROOT / "tests" / "data" / "fp16" / f"{stem}.onnx"
    x = load_golden(golden)["x"]
    ex = export_model(path, heatmap=True, runtime="web")
    sess = ort.InferenceSession(ex.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = x.astype(np.float16) if sess.get_inputs()[0].type == "tensor(float16)" else x
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {ex.inputs[0]: x, "onnxcam_target": np.array([-1], np.int64)})))
    py = Explainer(path).explain(x)
    assert got["onnxcam_heatmap"].dtype == np.float32 and got["onnxcam_targets"].tolist() == py.targets.tolist()
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 2e-3


TRANSFORMERS = ROOT / "tests" / "data" / "transformers"


@pytest.mark.parametrize("stem", ["timm_vit_reg_ts17", "tv_vit_dy18", "tv_swin_dy18"])
@pytest.mark.parametrize("method, key", [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus")])
def test_token_layers_in_graph_match_pytorch_grad_cam_and_explain(stem, method, key):
    """ViT with register tokens (TorchScript export), torchvision's sequence-first ViT and Swin
    (dynamo): prefix tokens dropped and patches laid on the grid inside the graph."""
    with np.load(TRANSFORMERS / f"{stem}.npz") as z:
        x, raw = z["x"], z[f"pgc_raw_{key}"]
    ex = export_model(TRANSFORMERS / f"{stem}.onnx", method=method, heatmap=True, runtime="web")
    got = run(ex, {ex.inputs[0]: x, "onnxcam_target": np.array([-1], np.int64)})["onnxcam_heatmap"]
    assert np.abs(got - scale_like_opencv(np.maximum(raw, 0), got.shape[1:])).max() <= 2e-3  # pytorch-grad-cam's raw maps
    py = Explainer(TRANSFORMERS / f"{stem}.onnx", method=method).explain(x).heatmaps
    assert np.abs(got - py).max() <= 1e-5
