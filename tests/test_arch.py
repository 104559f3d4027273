"""Architecture × exporter coverage: the default layer, its gradient and the input gradient
against framework autograd, on small-channel versions of deployed architectures.

tests/data/arch holds torchvision architectures exported by torch.onnx (TorchScript-based `tv_ts_`,
at opsets 11/13/17, and dynamo-based `tv_dy_`), Keras models via tf2onnx (`keras_`, NHWC, opsets 13
and 17, dynamic spatial sizes with auto_pad=SAME_UPPER), PaddlePaddle via paddle2onnx (`paddle_`,
opsets 9 to 17) and flax via jax2onnx (`jax_`), with goldens from each framework's own autograd,
made by tools/arch/*.py.
"""

from __future__ import annotations


import numpy as np
import pytest

from onnxcam import Explainer

from .helpers import ROOT, golden_of, rel_err

ARCH = ROOT / "tests" / "data" / "arch"
MODELS = sorted(p.stem for p in ARCH.glob("*.onnx"))


def golden(stem: str) -> dict[str, np.ndarray]:
    """The golden of a file, or of the file it is a variant of (`keras_x_op17` → `keras_x`)."""
    return golden_of(ARCH / f"{stem}.onnx")


def test_corpus_spans_exporters_and_architectures():
    prefixes = {m.split("_")[0] + ("_" + m.split("_")[1] if m.startswith("tv_") else "") for m in MODELS}
    assert {"tv_ts", "tv_dy", "keras", "paddle", "jax"} <= prefixes
    tv = {m.split("_", 2)[2] for m in MODELS if m.startswith("tv_ts_")}
    assert {"resnet", "resnext", "wide_resnet", "vgg_bn", "densenet", "mobilenetv2", "mobilenetv3",
            "efficientnet_b0", "efficientnet_v2", "squeezenet", "shufflenetv2", "regnet", "convnext",
            "googlenet", "inception_v3", "mnasnet", "alexnet"} <= tv


@pytest.mark.parametrize("stem", MODELS)
def test_default_layer_gradient(stem: str):
    g = golden(stem)
    res = Explainer(ARCH / f"{stem}.onnx").explain(g["x"])
    np.testing.assert_array_equal(res.targets, g["targets"])
    assert res.activations.shape == g["activation"].shape, f"wrong default layer {res.layer}"
    assert rel_err(res.activations, g["activation"]) < 1e-4, f"wrong default layer {res.layer}"
    assert rel_err(res.gradients, g["gradient"]) < 1e-4


# Deep ReLU6 stacks where, at the golden input, a few pre-activations sit within float32 rounding
# of a kink: the float32 forward switches them differently from the framework's float64 one, and
# the input gradient moves by ~1e-2 over a whole receptive field. For these, the engine's gradient
# graph is checked where precision allows: run in float64 (onnx's reference evaluator) against the
# float64 golden, or — when the exporter rounded the weights themselves (tf2onnx folds BN in
# float32) — against float64 finite differences of the ONNX model (`onnxcam check`).
KINK_SENSITIVE = {"tv_dy_mnasnet": "float64", "keras_mobilenet": "finite-differences"}


@pytest.mark.parametrize("stem", [m for m in MODELS if "input_gradient" in golden(m)])
def test_input_gradient(stem: str):
    g = golden(stem)
    ex = Explainer(ARCH / f"{stem}.onnx")
    name = ex.info.image_input.name
    want = g["input_gradient"]
    if ex.info.layout == "NHWC":
        want = want.transpose(0, 3, 1, 2)
    how = KINK_SENSITIVE.get(stem)
    if how is None:
        res = Explainer(ARCH / f"{stem}.onnx", layer=name).explain(g["x"])
        assert rel_err(res.gradients, want) < 1e-4
    elif how == "float64":
        from onnx.reference import ReferenceEvaluator

        from onnxcam.check import to_float64
        from onnxcam.graph.rewrite import GRAD_OUTPUT, SEED_INPUT, gradient_model

        prep = ex.prepared()
        gm = to_float64(gradient_model(prep.model, name, prep.output))
        seed = np.zeros(g["outputs"].shape)
        seed[np.arange(len(seed)), g["targets"]] = 1
        got = ReferenceEvaluator(gm).run([GRAD_OUTPUT], {name: g["x"].astype(np.float64), SEED_INPUT: seed})[0]
        assert rel_err(got, g["input_gradient"]) < 1e-5
    else:
        from onnxcam.check import self_check

        report = self_check(str(ARCH / f"{stem}.onnx"), [name], directions=5)
        assert report.ok and report.layers[0].median_rel_error < 1e-4, report.as_dict()
