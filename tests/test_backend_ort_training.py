"""onnxruntime-training's gradient builder against onnxcam's engine and the framework goldens.

Runs only where `onnxruntime` is the onnxruntime-training wheel (`make test-ort-training` builds
that environment in .venv-ortt); skipped elsewhere. For every golden model and every tests/data/arch
model, the default layer's gradient from `gradient_model_ort_training` must equal the one from
onnxcam's `gradient_model` and the framework's autograd; for a selection, the input gradient too
(a path through every layer: ConvGrad, MaxPoolGrad, Concat, ...). What the builder or its runtime
cannot do is listed in the tables below, so that a change in either is noticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcam.errors import OnnxcamError, UnsupportedOpError
from onnxcam.graph.rewrite import GRAD_OUTPUT, SEED_INPUT, _any_tensor, gradient_model, prepare
from onnxcam.model import inspect_model, load_model

from .helpers import GOLDENS, ROOT, golden_of, rel_err, tiny_model

ot = pytest.importorskip("onnxcam.backends.ort_training")
if not ot.available():
    pytest.skip(
        "onnxruntime-training is not installed (`make test-ort-training` runs these tests in their own environment)",
        allow_module_level=True,
    )
import onnxruntime as ort  # noqa: E402  (the training wheel's)

ARCH = ROOT / "tests" / "data" / "arch"
MODELS = sorted(GOLDENS.glob("*.onnx")) + sorted(ARCH.glob("*.onnx"))
IDS = [p.stem for p in MODELS]

# Default layer → output: ops onnxruntime-training 1.19.2 has no gradient for.
BUILDER_GAPS = {
    "dynamo_tinymbv3": {"HardSwish"}, "dynamo_tinymbv3_keepbn": {"HardSwish"},
    "torchscript_tinymbv3": {"HardSwish"}, "torchscript_tinymbv3_keepbn": {"HardSwish"},
    "tv_dy_mobilenetv3": {"HardSwish"}, "tv_ts_mobilenetv3": {"HardSwish"},
    "tv_ts13_mobilenetv3": {"HardSigmoid"},
    "paddle_mobilenetv3small": {"HardSigmoid"}, "paddle_mobilenetv3small_op13": {"HardSigmoid"},
}
# Models onnxruntime-training 1.19.2 cannot load (opset > 21).
TOO_NEW = {"jax_smallcnn_op23"}
# Where onnxcam's `gradient_model` (plain shape inference, unlike the Explainer's `prepare`, which
# also fills run-time shapes) raises: compared with the golden only.
NATIVE_GAPS: dict[str, str] = {}  # models onnxcam's own engine cannot differentiate (none now)

# Input gradients (wrt the image input): a selection whose built graph runs and whose float32
# gradient is not kink-sensitive (see tests/test_arch.py).
INPUT_GRADIENT = [
    "torchscript_tinyresnet", "dynamo_tinyresnet", "torchscript_tinyvgg", "dynamo_tinysqueeze",
    "tf2onnx_smallresnet", "tf2onnx_mbv2", "tv_ts_resnet", "tv_dy_resnext", "tv_ts_mobilenetv2",
    "tv_dy_mobilenetv2", "tv_ts_googlenet", "tv_ts_convnext", "tv_ts_efficientnet_b0", "tv_dy_regnet",
    "keras_resnet", "keras_mobilenetv2", "keras_xception", "keras_efficientnet", "paddle_squeezenet",
    "jax_smallcnn",
]
# Input gradients whose built graph fails when run (onnxruntime-training 1.19.2 CPU).
# Not run: keras_densenet, whose gradient graph kills the process with SIGFPE in a ConvGrad node.
INPUT_RUNTIME_FAILS = {
    "tv_ts_alexnet": "MaxPoolGrad", "tv_ts_vgg_bn": "MaxPoolGrad", "tv_ts_inception_v3": "Sum",
    "keras_nasnet": "Sum",
}
# Inference BatchNormalization has no gradient (torchscript exports keep it with keepbn, Paddle always).
INPUT_BUILDER_GAPS = {
    "torchscript_tinyresnet_keepbn": {"BatchNormalization"}, "paddle_resnet": {"BatchNormalization"},
    "tv_ts_densenet": {"BatchNormalization"}, "dynamo_tinymbv3": {"HardSwish", "HardSigmoid"},
}


def _prepared(path: Path):
    g = golden_of(path)
    model = load_model(path)
    info = inspect_model(model, str(path))
    x = g["x"]
    hw = x.shape[2:4] if info.layout == "NCHW" else x.shape[1:3]
    return g, info, prepare(model, info, tuple(int(v) for v in hw))


def _seed(g: dict[str, np.ndarray]) -> np.ndarray:
    seed = np.zeros(g["outputs"].shape, np.float32)
    seed[np.arange(len(seed)), g["targets"]] = 1
    return seed


def _run(model: onnx.ModelProto, image_input: str, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run([GRAD_OUTPUT], {image_input: x, SEED_INPUT: seed})[0]


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_default_layer_gradient_matches_native_engine_and_autograd(path: Path):
    stem = path.stem
    g, info, prep = _prepared(path)
    layer = prep.layer(None)
    if stem in TOO_NEW:
        with pytest.raises(OnnxcamError, match=r"opset \d+; onnxruntime-training 1.19.2 supports opsets up to 21"):
            ot.gradient_model_ort_training(prep.model, layer.name, prep.output)
        return
    if stem in BUILDER_GAPS:
        with pytest.raises(ot.OrtTrainingUnsupportedOpError, match="use the default backend") as exc:
            ot.gradient_model_ort_training(prep.model, layer.name, prep.output)
        assert set(exc.value.op_types) == BUILDER_GAPS[stem]
        assert all(op in str(exc.value) for op in BUILDER_GAPS[stem])
        return
    x, seed = g["x"], _seed(g)
    ours = _run(ot.gradient_model_ort_training(prep.model, layer.name, prep.output), info.image_input.name, x, seed)
    if stem in NATIVE_GAPS:
        with pytest.raises(UnsupportedOpError, match=NATIVE_GAPS[stem]):
            gradient_model(prep.model, layer.name, prep.output)
    else:
        native = _run(gradient_model(prep.model, layer.name, prep.output), info.image_input.name, x, seed)
        assert rel_err(ours, native) < 1e-4
    if layer.layout == "NHWC":
        ours = ours.transpose(0, 3, 1, 2)
    assert rel_err(ours, g["gradient"]) < 1e-4


def _input_case(stem: str):
    path = GOLDENS / f"{stem}.onnx"
    path = path if path.exists() else ARCH / f"{stem}.onnx"
    g, info, prep = _prepared(path)
    return g, info, prep, _any_tensor(prep, info.image_input.name).name


@pytest.mark.parametrize("stem", INPUT_GRADIENT)
def test_input_gradient_matches_native_engine_and_autograd(stem: str):
    g, info, prep, x_name = _input_case(stem)
    x, seed = g["x"], _seed(g)
    ours = _run(ot.gradient_model_ort_training(prep.model, x_name, prep.output), x_name, x, seed)
    native = _run(gradient_model(prep.model, x_name, prep.output), x_name, x, seed)
    assert rel_err(ours, native) < 1e-4
    assert rel_err(ours, g["input_gradient"]) < 1e-4  # both in the model's own layout


@pytest.mark.parametrize("stem", sorted(INPUT_RUNTIME_FAILS))
def test_input_gradient_runtime_failures_are_still_there(stem: str):
    g, info, prep, x_name = _input_case(stem)
    gm = ot.gradient_model_ort_training(prep.model, x_name, prep.output)
    with pytest.raises(Exception, match=INPUT_RUNTIME_FAILS[stem]):
        _run(gm, x_name, g["x"], _seed(g))


@pytest.mark.parametrize("stem", sorted(INPUT_BUILDER_GAPS))
def test_input_gradient_builder_gaps_name_every_missing_op(stem: str):
    g, info, prep, x_name = _input_case(stem)
    with pytest.raises(ot.OrtTrainingUnsupportedOpError) as exc:
        ot.gradient_model_ort_training(prep.model, x_name, prep.output)
    assert INPUT_BUILDER_GAPS[stem] <= set(exc.value.op_types)


def _tiny(ir_version: int, opset: int) -> onnx.ModelProto:
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    return tiny_model(nodes, {"w": w}, {"x": [2, 4]}, {"y": [2, 3]}, opset=opset, ir_version=ir_version)


def test_interface_matches_gradient_model_and_lowers_a_newer_ir():
    m = _tiny(ir_version=12, opset=17)
    gm = ot.gradient_model_ort_training(m, "h", "y")
    assert gm.ir_version == ot.MAX_IR_VERSION and m.ir_version == 12  # the input is untouched
    assert [i.name for i in gm.graph.input] == ["x", SEED_INPUT]
    assert [o.name for o in gm.graph.output] == ["y", GRAD_OUTPUT]
    x = np.array([[1, -2, 3, 0.5], [-1, 0.3, 2, -4]], np.float32)
    seed = np.array([[1, 2, 3], [-1, 0.5, 0]], np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(gm.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y, grad = sess.run(None, {"x": x, SEED_INPUT: seed})
    h = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    np.testing.assert_allclose(y, np.maximum(h, 0), rtol=1e-6)
    np.testing.assert_allclose(grad, seed * (h > 0), rtol=1e-6)


def test_too_new_opset_and_missing_wheel_are_clear_errors(monkeypatch):
    with pytest.raises(OnnxcamError, match="opset 22; onnxruntime-training 1.19.2 supports opsets up to 21"):
        ot.gradient_model_ort_training(_tiny(ir_version=10, opset=22), "h", "y")
    monkeypatch.setattr(ot, "_builder", lambda: None)
    assert not ot.available()
    with pytest.raises(OnnxcamError, match=r"pip install onnxruntime-training==1.19.2 in its own environment"):
        ot.gradient_model_ort_training(_tiny(ir_version=8, opset=17), "h", "y")


@pytest.mark.parametrize("stem", ["torchscript_tinyresnet", "tf2onnx_smallresnet", "paddle_resnet"])
def test_explainer_with_the_ort_training_backend(stem: str):
    """The API end to end: backend="ort-training" gives the golden activations and gradients and
    the same Grad-CAM maps as the default backend."""
    from onnxcam import Explainer

    path = GOLDENS / f"{stem}.onnx"
    g = golden_of(path)
    res = Explainer(path, method="gradcam", backend="ort-training").explain(g["x"])
    np.testing.assert_array_equal(res.targets, g["targets"])
    assert rel_err(res.gradients, g["gradient"]) < 1e-4
    native = Explainer(path, method="gradcam").explain(g["x"])
    np.testing.assert_allclose(res.heatmaps, native.heatmaps, atol=1e-4)
