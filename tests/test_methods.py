"""Every CAM method against the reference libraries' own output on the same models and inputs.

tests/data/methods/<name>.npz holds the maps pytorch-grad-cam 1.5.7 and torchcam 0.5.0 compute on
the tiny torch models whose ONNX exports are tests/data/goldens/torchscript_<name>.onnx, made by
tools/methods/make_reference_maps.py (see its README for the calls and the libraries' quirks).
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx

from onnxcam import Explainer
from onnxcam.errors import UsageError
from onnxcam.methods import ISCAM, METHODS, SSCAM, AblationCAM, MethodInputs, ScoreCAM, SmoothGradCAMpp, get_method, scale_maps
from onnxcam.methods.maps import first_component
from onnxcam.methods.score import channel_batch, top_channels, upsampled_masks

from .helpers import GOLDENS, ROOT

REFS = ROOT / "tests" / "data" / "methods"
NAMES = ["tinyresnet", "tinymbv3", "tinymeanpool", "tinysqueeze", "tinyvgg"]

# onnxcam method → reference key. AblationCAM: the paper's zero-ablation (pytorch-grad-cam's stock
# layer ablates to min − 1e7 when the minimum is not 0; see the README). IS-CAM: torchcam's.
REFERENCE = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM_zero",
    "iscam": "tc_ISCAM",
    "fem": "FEM",
}
TOLERANCE = {"scorecam": 1e-2, "iscam": 1e-2}


def ref(name: str) -> dict[str, np.ndarray]:
    with np.load(REFS / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def explain(name: str, method, r: dict) -> np.ndarray:
    return Explainer(GOLDENS / f"torchscript_{name}.onnx", method=method).explain(r["x"], targets=r["targets"]).heatmaps


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_method_matches_reference_library(name: str, method: str):
    r = ref(name)
    got = explain(name, method, r)
    assert np.abs(got - r[REFERENCE[method]]).max() <= TOLERANCE.get(method, 1e-3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "method, key", [("eigencam", "EigenCAM"), ("eigengradcam", "EigenGradCAM"), ("kpcacam", "KPCA_CAM")]
)
def test_eigen_methods_match_up_to_the_arbitrary_sign(name: str, method: str, key: str):
    """pytorch-grad-cam keeps LAPACK's sign; ours is fixed (bright where features are strong).
    Per image, our map is the reference's, or the reference's with the projection negated."""
    r = ref(name)
    got = explain(name, method, r)
    signed = r[f"{key}_signed"]
    for i in range(len(got)):
        candidates = [scale_maps(np.maximum(s * signed[i : i + 1], 0), got.shape[1:])[0] for s in (1, -1)]
        assert min(np.abs(got[i] - c).max() for c in candidates) <= 1e-3


def test_eigencam_sign_is_deterministic_and_follows_the_features():
    r = ref("tinymeanpool")
    a = Explainer(GOLDENS / "torchscript_tinymeanpool.onnx", method="eigencam").explain(r["x"])
    proj = a.cams
    total = a.activations.sum(axis=1)
    for i in range(len(proj)):  # the kept lobe is where the channel sum is high
        assert np.corrcoef(proj[i].ravel(), total[i].ravel())[0, 1] > 0


@pytest.mark.parametrize("name", NAMES)
def test_sscam_without_noise_is_torchcam_scorecam(name: str):
    """SS-CAM's noise is random (torch's RNG there, numpy's here): with σ → 0 it must reduce to
    torchcam's Score-CAM, which checks its masks (min-max at the layer, bilinear, align_corners
    False) and its scores."""
    r = ref(name)
    got = explain(name, SSCAM(num_samples=1, std=1e-9), r)
    assert np.abs(got - r["tc_ScoreCAM"]).max() <= 1e-2


def test_sscam_is_seeded():
    r = ref("tinyresnet")
    a = explain("tinyresnet", SSCAM(num_samples=3, seed=5), r)
    b = explain("tinyresnet", SSCAM(num_samples=3, seed=5), r)
    np.testing.assert_array_equal(a, b)


def test_ablation_uses_only_the_tail_and_equals_rerunning_the_model():
    """w_k = (y − y_k)/y with y_k from zeroing channel k: compare with the reference weights."""
    r = ref("tinyresnet")
    ex = Explainer(GOLDENS / "torchscript_tinyresnet.onnx", method="ablationcam")
    res = ex.explain(r["x"], targets=r["targets"])
    w = r["AblationCAM_zero_weights"].astype(np.float64)
    want = np.maximum(np.einsum("nc,nchw->nhw", w, res.activations.astype(np.float64)), 0)
    np.testing.assert_allclose(res.cams, want, rtol=1e-3, atol=1e-4 * want.max())


def test_registry_lists_every_method_with_paper_formula_and_example():
    for name, cls in METHODS.items():
        doc = cls.__doc__ or ""
        assert "Example:" in doc, f"{name}: docstring has no example"
        assert any(year in doc for year in ("201", "202")) or name == "random", f"{name}: no paper"
        assert any(ch in doc for ch in "=Σ"), f"{name}: docstring has no formula"


@pytest.mark.parametrize("name", NAMES)
def test_input_gradient_methods_match_reference(name: str):
    """Guided backprop, Guided Grad-CAM and FullGrad need the gradient down to the input (with
    guided ReLUs for the first two); compared with pytorch-grad-cam's own results. FullGrad on
    tinyresnet: the reference with its bias/gradient pairing repaired (README: quirks)."""
    r = ref(name)
    path = GOLDENS / f"torchscript_{name}.onnx"
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    gb = Explainer(path, method="guidedbackprop").explain(r["x"], targets=r["targets"])
    assert rel(gb.extra["guided_backprop"], r["GuidedBackprop"]) < 1e-4
    ggc = Explainer(path, method="guidedgradcam").explain(r["x"], targets=r["targets"])
    assert rel(ggc.extra["guided_gradcam"], r["GuidedGradCAM"]) < 1e-4
    np.testing.assert_allclose(ggc.heatmaps, r["GradCAM"], atol=1e-3)
    fg = Explainer(path, method="fullgrad").explain(r["x"], targets=r["targets"])
    assert np.abs(fg.heatmaps - r.get("FullGrad_fixed", r["FullGrad"])).max() <= 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_smoothgradcampp_without_noise_is_gradcampp(name: str):
    r = ref(name)
    got = explain(name, SmoothGradCAMpp(num_samples=1, std=1e-9), r)
    assert np.abs(got - r["GradCAMPlusPlus"]).max() <= 1e-3


def test_smoothgradcampp_averages_noisy_gradients():
    """With noise, the weights follow the averaged powers of the noisy gradients (numpy here); each
    image gets the same draws, so its map is the same alone as in the batch."""
    r = ref("tinyresnet")
    path = GOLDENS / "torchscript_tinyresnet.onnx"
    method = SmoothGradCAMpp(num_samples=3, std=0.5, seed=1)
    res = Explainer(path, method=method).explain(r["x"], targets=r["targets"])
    plain = Explainer(path, method="gradcam")
    rng = np.random.default_rng(1)
    gs = []
    for _ in range(3):
        noisy = (r["x"] + 0.5 * rng.normal(0.0, 1.0, size=r["x"].shape[1:])).astype(np.float32)
        gs.append(plain.explain(noisy, targets=r["targets"]).gradients.astype(np.float64))
    g1, g2, g3 = (np.mean([g**p for g in gs], axis=0) for p in (1, 2, 3))
    a = res.activations.astype(np.float64)
    alpha = np.where(g2 != 0, g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6), 0)
    w = (alpha * np.maximum(g1, 0)).sum(axis=(2, 3))
    want = np.maximum(np.einsum("nc,nchw->nhw", w, a), 0)
    np.testing.assert_allclose(res.cams, want, rtol=1e-4, atol=1e-6 * want.max())
    alone = Explainer(path, method=method).explain(r["x"][1:], targets=r["targets"][1:])
    np.testing.assert_array_equal(alone.heatmaps[0], res.heatmaps[1])


@pytest.mark.parametrize("name", NAMES)
def test_aug_smooth_and_eigen_smooth_match_reference(name: str):
    r = ref(name)
    path = GOLDENS / f"torchscript_{name}.onnx"
    aug = Explainer(path, aug_smooth=True).explain(r["x"], targets=r["targets"])
    assert np.abs(aug.heatmaps - r["GradCAM_aug_smooth"]).max() <= 1e-3
    eig = Explainer(path, eigen_smooth=True).explain(r["x"], targets=r["targets"])
    signed = r["GradCAM_eigen_smooth_signed"]
    for i in range(len(eig.heatmaps)):  # the principal component's sign is arbitrary there
        candidates = [scale_maps(np.maximum(s * signed[i : i + 1], 0), eig.heatmaps.shape[1:])[0] for s in (1, -1)]
        assert min(np.abs(eig.heatmaps[i] - c).max() for c in candidates) <= 1e-3


def test_several_layers_are_fused():
    """pytorch-grad-cam's multi-layer rule: per-layer maps at input size, mean (or max), min-max."""
    path = GOLDENS / "torchscript_tinyresnet.onnx"
    r = ref("tinyresnet")
    layers = ["/layer1/relu2/Relu_output_0", "/layer2/relu2/Relu_output_0"]
    one = [Explainer(path, layer=l).explain(r["x"], targets=r["targets"]).heatmaps for l in layers]
    for fuse, op in (("mean", np.mean), ("max", np.max)):
        res = Explainer(path, layer=layers, fuse=fuse).explain(r["x"], targets=r["targets"])
        want = op(np.stack(one), axis=0)
        want = want - want.min(axis=(1, 2), keepdims=True)
        want = want / (want.max(axis=(1, 2), keepdims=True) + 1e-7)
        np.testing.assert_allclose(res.heatmaps, want, atol=1e-5)
        assert res.layer == " + ".join(layers)


# -- cost floors (issue 15): the fast paths against the formulas they replace ---------------------
GRAPH_MAPS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcam-elementwise"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", GRAPH_MAPS)
def test_in_graph_map_equals_the_numpy_formula(name: str, method: str):
    """The Grad-CAM family's map computed inside the run equals the method's numpy `cam` (float64
    formula) on the same A and ∂y/∂A."""
    r = ref(name)
    res = Explainer(GOLDENS / f"torchscript_{name}.onnx", method=method).explain(r["x"], targets=r["targets"])
    want = get_method(method).cam(MethodInputs(res.activations, res.gradients, res.targets, res.outputs))
    np.testing.assert_allclose(res.cams, want, rtol=1e-4, atol=1e-5 * want.max())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_in_graph_gram_equals_the_svd(name: str, method: str):
    """Eigen methods from the in-graph Gram matrix (eigh of h·w × h·w) equal the thin SVD's
    projection (`first_component`) on the same stack."""
    r = ref(name)
    res = Explainer(GOLDENS / f"torchscript_{name}.onnx", method=method).explain(r["x"], targets=r["targets"])
    stack = res.activations if method == "eigencam" else res.gradients * res.activations
    want = np.maximum(first_component(stack), 0)
    np.testing.assert_allclose(res.cams, want, rtol=1e-5, atol=1e-6 * want.max())


class _RerunAblation(AblationCAM):
    """Ablation-CAM without its closed form: the model's tail reruns on every ablated copy."""

    uses_head = False


@pytest.mark.parametrize("name", NAMES)
def test_ablation_closed_form_equals_rerunning_the_tail(name: str):
    """On a GAP → linear head (tinyresnet, tinymeanpool, tinysqueeze) Ablation-CAM needs no extra
    run and its weights equal the reruns'; elsewhere (tinymbv3's MLP head, tinyvgg's flatten) it
    reruns the tail."""
    r = ref(name)
    path = GOLDENS / f"torchscript_{name}.onnx"
    ex = Explainer(path, method="ablationcam")
    got = ex.explain(r["x"], targets=r["targets"])
    want = Explainer(path, method=_RerunAblation()).explain(r["x"], targets=r["targets"])
    assert (not ex._splits) == (name in ("tinyresnet", "tinymeanpool", "tinysqueeze"))
    np.testing.assert_allclose(got.cams, want.cams, rtol=1e-4, atol=1e-5 * want.cams.max())


def test_ablation_closed_form_with_a_seed_target():
    """A seed u instead of a class: the score is ⟨u, y⟩, closed form and reruns agree."""
    r = ref("tinyresnet")
    path = GOLDENS / "torchscript_tinyresnet.onnx"
    k = Explainer(path).explain(r["x"]).outputs.shape[1]
    u = np.random.default_rng(3).uniform(0.5, 1.5, size=(len(r["x"]), k)).astype(np.float32)
    got = Explainer(path, method="ablationcam").explain(r["x"], targets=u)
    want = Explainer(path, method=_RerunAblation()).explain(r["x"], targets=u)
    np.testing.assert_allclose(got.cams, want.cams, rtol=1e-4, atol=1e-5 * want.cams.max())


def test_ablation_reruns_a_fixed_batch_tail_in_padded_chunks(tmp_path):
    """A model exported with a fixed batch of 2: the ablated copies (5 per run here) go through
    its tail in chunks of 2, the last one padded; same maps as the dynamic-batch model."""
    src = GOLDENS / "torchscript_tinyvgg.onnx"
    m = onnx.load(src)
    for v in list(m.graph.input[:1]) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 2
    del m.graph.value_info[:]
    onnx.save(m, tmp_path / "fixed.onnx")
    r = ref("tinyvgg")
    x, t = r["x"][:2], r["targets"][:2]
    got = Explainer(tmp_path / "fixed.onnx", method=AblationCAM(batch_size=5)).explain(x, targets=t)
    want = Explainer(src, method=AblationCAM(batch_size=5)).explain(x, targets=t)
    np.testing.assert_allclose(got.cams, want.cams, rtol=1e-5, atol=1e-6 * want.cams.max())


@pytest.mark.parametrize("cls", [ScoreCAM, SSCAM, ISCAM])
def test_max_n_of_all_channels_is_the_full_method(cls):
    r = ref("tinyresnet")
    kw = {"num_samples": 2} if cls is not ScoreCAM else {}
    full = explain("tinyresnet", cls(**kw), r)
    c = Explainer(GOLDENS / "torchscript_tinyresnet.onnx").explain(r["x"]).activations.shape[1]
    np.testing.assert_array_equal(explain("tinyresnet", cls(max_N=c, **kw), r), full)
    np.testing.assert_array_equal(explain("tinyresnet", cls(max_N=10 * c, **kw), r), full)


def test_max_n_scores_only_the_most_varied_channels():
    """Faster Score-CAM: weights only on the max_N channels of largest spatial std, softmax over
    their scores (Score-CAM's score on the same masks)."""
    r = ref("tinyresnet")
    path = GOLDENS / "torchscript_tinyresnet.onnx"
    res = Explainer(path, method=ScoreCAM(max_N=3)).explain(r["x"], targets=r["targets"])
    plain = Explainer(path)
    for n in range(len(r["x"])):
        a = res.activations[n]
        ks = top_channels(a, 3)
        std = a.reshape(len(a), -1).std(axis=1)
        assert set(ks) == set(np.argsort(-std)[:3])
        masked = (r["x"][n][None] * upsampled_masks(a[ks], r["x"].shape[2:])[:, None]).astype(np.float32)
        s = plain.explain(masked).outputs[:, r["targets"][n]].astype(np.float64)
        w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        want = np.maximum(np.einsum("k,khw->hw", w, a[ks].astype(np.float64)), 0)
        np.testing.assert_allclose(res.cams[n], want, rtol=1e-4, atol=1e-5 * want.max())
    with pytest.raises(UsageError, match="max_N must be a positive"):
        ScoreCAM(max_N=0)


def test_channel_batches_are_sized_from_memory():
    assert channel_batch(1 << 20, budget=64 << 20) == 64
    assert channel_batch(1 << 40, budget=64 << 20) == 1
    assert channel_batch(1, budget=64 << 20) == 128
    r = ref("tinyresnet")  # the batch size changes neither Score-CAM's nor SS-CAM's maps
    for cls, kw in ((ScoreCAM, {}), (SSCAM, {"num_samples": 2})):
        np.testing.assert_allclose(explain("tinyresnet", cls(batch_size=3, **kw), r), explain("tinyresnet", cls(**kw), r),
                                   atol=1e-6)
