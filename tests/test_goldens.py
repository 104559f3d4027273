"""Gradients, activations and maps against framework autograd goldens.

The goldens (tests/data/goldens, made by tools/goldens/*.py) hold, per model, the input, the
framework's outputs, and the default layer's activation and gradient d(Σ_n y[n, t_n])/dA computed
by torch autograd, tf.GradientTape or paddle autograd. Matching the activation proves the default
layer is the right tensor; matching the gradient proves the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam import Explainer
from onnxcam.methods import normalize_maps

from .helpers import GOLDENS, golden_stems, load_golden, rel_err

STEMS = golden_stems()


def test_corpus_covers_every_exporter():
    prefixes = {s.split("_")[0] for s in STEMS}
    assert {"torchscript", "dynamo", "tf2onnx", "paddle"} <= prefixes


@pytest.mark.parametrize("stem", STEMS)
def test_default_layer_and_gradient_match_autograd(stem: str):
    g = load_golden(stem)
    ex = Explainer(GOLDENS / f"{stem}.onnx", method="gradcam")
    res = ex.explain(g["x"])
    np.testing.assert_array_equal(res.targets, g["targets"])
    assert res.outputs.shape == g["outputs"].shape
    assert rel_err(res.outputs, g["outputs"]) < 1e-4
    assert res.activations.shape == g["activation"].shape, f"default layer {res.layer} has the wrong shape"
    assert rel_err(res.activations, g["activation"]) < 1e-4, f"default layer {res.layer} is not the golden layer"
    assert res.gradients.shape == g["gradient"].shape
    assert rel_err(res.gradients, g["gradient"]) < 1e-4


@pytest.mark.parametrize("stem", STEMS)
def test_gradcam_and_hirescam_maps_follow_the_formulas(stem: str):
    """Maps from the golden A and g by the papers' formulas, in plain numpy."""
    g = load_golden(stem)
    a, d = g["activation"].astype(np.float64), g["gradient"].astype(np.float64)
    want_grad = np.maximum((d.mean(axis=(2, 3))[:, :, None, None] * a).sum(1), 0)
    want_hires = np.maximum((d * a).sum(1), 0)
    for method, want in (("gradcam", want_grad), ("hirescam", want_hires)):
        res = Explainer(GOLDENS / f"{stem}.onnx", method=method).explain(g["x"])
        scale = np.abs(want).max() + 1e-12
        assert np.abs(res.cams - want).max() / scale < 1e-4, method
        # normalised maps: (m - min) / (max + 1e-7) per image
        w = want - want.min(axis=(1, 2), keepdims=True)
        w = w / (w.max(axis=(1, 2), keepdims=True) + 1e-7)
        live = want.max(axis=(1, 2)) > 1e-6 * scale  # an all-zero map has no shape to compare
        np.testing.assert_allclose(normalize_maps(res.cams)[live], w[live], atol=2e-3)


CAM_STEMS = [s for s in STEMS if "fc_weight" in load_golden(s)]


@pytest.mark.parametrize("stem", CAM_STEMS)
def test_cam_uses_the_classifier_weights_and_equals_gradcam_up_to_scale(stem: str):
    g = load_golden(stem)
    a = g["activation"].astype(np.float64)
    w = g["fc_weight"].astype(np.float64)[g["targets"]]
    want = np.maximum(np.einsum("nc,nchw->nhw", w, a), 0)
    cam = Explainer(GOLDENS / f"{stem}.onnx", method="cam").explain(g["x"])
    assert cam.gradients is None
    np.testing.assert_allclose(cam.cams, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    grad = Explainer(GOLDENS / f"{stem}.onnx", method="gradcam").explain(g["x"])
    hw = a.shape[2] * a.shape[3]
    np.testing.assert_allclose(grad.cams * hw, cam.cams, rtol=1e-3, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(grad.heatmaps, cam.heatmaps, atol=1e-3)


@pytest.mark.parametrize("stem", STEMS)
def test_input_gradient_matches_autograd(stem: str):
    """layer=<the image input>: the full network's gradient, stem (overlapping MaxPool) included."""
    g = load_golden(stem)
    ex = Explainer(GOLDENS / f"{stem}.onnx")
    name = ex.info.image_input.name
    res = Explainer(GOLDENS / f"{stem}.onnx", layer=name).explain(g["x"])
    want = g["input_gradient"]
    if ex.info.layout == "NHWC":
        want = want.transpose(0, 3, 1, 2)
    assert res.layer == name
    assert res.gradients.shape == want.shape
    assert rel_err(res.gradients, want) < 1e-4
