"""Vision transformers (issue 9) against torch autograd, pytorch-grad-cam and a torch rollout.

tests/data/transformers/ holds tiny seeded ViT, DeiT and Swin models from torchvision, Hugging Face
transformers and timm, exported by both torch exporters (opset 17 and 18; one at opset 23 with the
fused Attention op; one at 32×48), with goldens made by tools/transformers/make_transformer_models.py
(README.md there): the default layer's activation and gradient, every block's attention
probabilities and their gradients, pytorch-grad-cam 1.5.7's maps with its reshape transforms, and
rollout / gradient rollout / Chefer maps from tools/transformers/tfx_reference.py. onnxcam is given
the ONNX file only: grid, prefix tokens, token layers and the head are read from the graph.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from onnxcam import Explainer, HeadError, UsageError
from onnxcam.check import self_check
from onnxcam.methods import AttentionRollout, Chefer, GradRollout, RawAttention

from .helpers import EXAMPLES, ROOT, load_npz, rel_err

DATA = ROOT / "tests" / "data" / "transformers"
INDEX: dict[str, dict] = json.loads((DATA / "index.json").read_text())
STEMS = sorted(INDEX)
# a few files cover every method; Swin's TorchScript export (1592 nodes) is the slowest
SAMPLE = ["timm_vit_ts17", "tv_vit_dy18", "hf_deit_dy18", "timm_vit_reg_ts17", "timm_vit_rect_dy18",
          "timm_vit_avg_dy18", "tv_swin_dy18", "timm_vit_dy23"]
GLOBAL_ATTENTION = [s for s in STEMS if "swin" not in s]


def golden(stem: str) -> dict[str, np.ndarray]:
    return load_npz(DATA / f"{stem}.npz")


def on_grid(a: np.ndarray, e: dict) -> np.ndarray:
    """pytorch-grad-cam's reshape transforms: (N, T, C) → drop P → (N, C, h, w); Swin (N, h, w, C)."""
    if a.ndim == 4:
        return a.transpose(0, 3, 1, 2)
    h, w = e["grid"]
    return a[:, e["prefix"]:].reshape(a.shape[0], h, w, a.shape[2]).transpose(0, 3, 1, 2)


def normalised(m: np.ndarray) -> np.ndarray:
    """ReLU, then per-image min-max as pytorch-grad-cam's scale_cam_image (before the resize)."""
    m = np.maximum(m.astype(np.float64), 0)
    m = m - m.min(axis=(1, 2), keepdims=True)
    return m / (m.max(axis=(1, 2), keepdims=True) + 1e-7)


@pytest.mark.parametrize("stem", STEMS)
def test_token_layout_default_layer_and_gradcam(stem: str) -> None:
    """The default layer is the golden one (norm1 of the last block behind a class-token head,
    the pooled tensor behind a mean); its activation and gradient equal torch's, and Grad-CAM
    equals pytorch-grad-cam's with the right reshape transform."""
    e, g = INDEX[stem], golden(stem)
    ex = Explainer(DATA / f"{stem}.onnx")
    layer = next(l for l in ex.layers(tuple(e["size"])) if l.name == e["layers"]["default"]["onnx"])
    assert (layer.height, layer.width) == tuple(e["grid"])
    assert layer.prefix == (e["prefix"] if layer.is_tokens else 0)
    r = ex.explain(g["x"])
    assert r.layer == e["layers"]["default"]["onnx"]
    assert list(r.targets) == list(g["targets"])
    assert rel_err(r.activations, on_grid(g["activation"], e)) < 1e-5
    assert rel_err(r.gradients, on_grid(g["gradient"], e)) < 1e-4
    assert np.abs(normalised(r.cams) - normalised(g["pgc_raw_GradCAM"])).max() < 1e-4
    assert np.abs(r.heatmaps - g["pgc_GradCAM"]).max() < 1e-4


def test_attention_internals_are_never_layers() -> None:
    """Only LayerNormalization outputs and residual Adds are token layers: no query, key, value,
    heads or probabilities (the old default was the attention output (N, T, heads, d))."""
    ex = Explainer(DATA / "hf_vit_ts17.onnx")
    layers = ex.layers((48, 48))
    assert {l.op_type for l in layers} <= {"LayerNormalization", "Add", "Conv"}
    assert not any("attention" in l.name for l in layers)
    tokens = [l for l in layers if l.is_tokens]
    assert len(tokens) == 9 and all(l.layout == "NTC" and l.channels == 32 for l in tokens)
    with pytest.raises(UsageError, match="not a 4-D spatial activation or a token layer"):
        Explainer(DATA / "hf_vit_ts17.onnx", layer="/m/vit/layers.1/attention/Transpose_3_output_0")


METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "gradcam-elementwise": "GradCAMElementWise", "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM_zero", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
}


@pytest.mark.parametrize("stem", SAMPLE)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_token_layers_matches_pytorch_grad_cam(stem: str, method: str) -> None:
    """Raw maps at the grid, min-max normalised; Eigen methods up to their arbitrary sign
    (pytorch-grad-cam keeps LAPACK's); Ablation-CAM ablates a channel on every token, as its ViT
    ablation layer does (writing 0)."""
    g = golden(stem)
    ref = g[f"pgc_raw_{METHODS[method]}"]
    got = normalised(Explainer(DATA / f"{stem}.onnx", method=method).explain(g["x"]).cams)
    signs = (1, -1) if "eigen" in method else (1,)
    for i in range(len(ref)):
        err = min(np.abs(got[i] - normalised(s * ref[i : i + 1])[0]).max() for s in signs)
        assert err < (5e-4 if method == "gradcam++" else 1e-4), (i, err)


ROLLOUTS = {
    "attention": lambda: RawAttention(),
    "rollout_mean": lambda: AttentionRollout(),
    "rollout_max": lambda: AttentionRollout(head_fusion="max"),
    "rollout_min": lambda: AttentionRollout(head_fusion="min"),
    "rollout_mean_discard0.5": lambda: AttentionRollout(discard_ratio=0.5),
    "rollout_mean_start1": lambda: AttentionRollout(start_layer=1),
    "grad_rollout": lambda: GradRollout(),
    "chefer": lambda: Chefer(),
    "chefer_start1": lambda: Chefer(start_layer=1),
}


class Capture(Chefer):
    """Chefer, keeping what the explainer hands the method (the other methods reuse it)."""

    def cam(self, inp):
        self.inputs = inp
        return super().cam(inp)


@pytest.mark.parametrize("stem", GLOBAL_ATTENTION)
def test_transformer_methods_match_torch(stem: str) -> None:
    """One run returns every block's probabilities and ∂y/∂A (the opset-23 file's through the
    Attention decomposition), equal to torch's; raw attention, rollout (head fusion, discard ratio,
    start layer), gradient rollout and Chefer relevance from them equal the torch reference maps."""
    e, g = INDEX[stem], golden(stem)
    cap = Capture()
    r = Explainer(DATA / f"{stem}.onnx", method=cap).explain(g["x"])
    assert r.cams.shape == (2, *e["grid"])
    inp = cap.inputs
    assert len(inp.attentions) == len(inp.attention_gradients) == e["blocks"]
    for i in range(e["blocks"]):
        assert rel_err(inp.attentions[i], g[f"attn_{i}"]) < 1e-5
        assert rel_err(inp.attention_gradients[i], g[f"attn_grad_{i}"]) < 1e-4
    for key, method in ROLLOUTS.items():
        if key == "rollout_mean_discard0.5" and e["discard0.5_margin"] < 1e-6:
            continue  # float32 probabilities cannot order entries closer than their error
        assert rel_err(method().cam(inp), g[f"map_{key}"]) < 1e-4, key


@pytest.mark.parametrize("stem", ["tv_vit_ts17", "hf_deit_dy18", "timm_vit_avg_ts17"])
@pytest.mark.parametrize("key", ["attention", "rollout_max", "grad_rollout"])
def test_transformer_methods_by_name(stem: str, key: str) -> None:
    """The same through the method registry (forward-only methods build no gradient)."""
    g = golden(stem)
    name = {"attention": "attention", "rollout_max": "rollout", "grad_rollout": "grad-rollout"}[key]
    method = AttentionRollout(head_fusion="max") if key == "rollout_max" else name
    r = Explainer(DATA / f"{stem}.onnx", method=method).explain(g["x"])
    assert rel_err(r.cams, g[f"map_{key}"]) < 1e-4
    assert np.abs(r.heatmaps.max(axis=(1, 2)) - 1).max() < 1e-5


def test_transformer_methods_with_explainer_options() -> None:
    """aug_smooth (flips and value scales) and explicit targets work; eigen_smooth has no channels
    to work on and says so."""
    g = golden("timm_vit_ts17")
    r = Explainer(DATA / "timm_vit_ts17.onnx", method="chefer", aug_smooth=True).explain(g["x"])
    assert r.heatmaps.shape == (2, 48, 48) and np.isfinite(r.heatmaps).all()
    assert list(Explainer(DATA / "timm_vit_ts17.onnx", method="chefer").explain(g["x"], targets=[3, 3]).targets) == [3, 3]
    with pytest.raises(UsageError, match="eigen_smooth"):
        Explainer(DATA / "timm_vit_ts17.onnx", method="rollout", eigen_smooth=True).explain(g["x"])


def test_transformer_methods_refuse_windowed_attention_and_cnns() -> None:
    g = golden("tv_swin_dy18")
    with pytest.raises(UsageError, match="windowed attention"):
        Explainer(DATA / "tv_swin_dy18.onnx", method="rollout").explain(g["x"])
    with pytest.raises(UsageError, match="no patch embedding"):
        Explainer(ROOT / "tests" / "data" / "goldens" / "torchscript_tinyresnet.onnx", method="chefer")


@pytest.mark.parametrize("stem", [s for s in STEMS if INDEX[s]["head"] != "mean_pool"])
def test_layer_with_structurally_zero_patch_gradient_is_refused(stem: str) -> None:
    """Behind a class-token head, the last block's output reaches the logits only through the
    class (and distillation/register) tokens: its patch gradient is exactly zero (torch's is),
    so asking for it is an error that names the layer to use."""
    e, g = INDEX[stem], golden(stem)
    assert not g["last_gradient"][:, e["prefix"]:].any()
    last, default = e["layers"]["last"]["onnx"], e["layers"]["default"]["onnx"]
    with pytest.raises(UsageError, match=rf"exactly zero.*use layer {re.escape(repr(default))}"):
        Explainer(DATA / f"{stem}.onnx", layer=last).explain(g["x"])


@pytest.mark.parametrize("stem", ["timm_vit_ts17", "hf_deit_dy18", "timm_vit_avg_dy18"])
def test_cam_refuses_transformer_heads(stem: str) -> None:
    g = golden(stem)
    with pytest.raises(HeadError, match="global average pooling then one linear layer.*vision transformer"):
        Explainer(DATA / f"{stem}.onnx", method="cam").explain(g["x"])


@pytest.mark.parametrize("stem", STEMS)
def test_check_passes_in_float64(stem: str) -> None:
    """`onnxcam check` on every fixture: exact GELU's Erf (and opset 20's Gelu) evaluated in
    float64, so the finite differences agree with the gradient to float32 precision."""
    report = self_check(str(DATA / f"{stem}.onnx"), size=tuple(INDEX[stem]["size"]))
    assert report.ok
    assert all(l.median_rel_error < 1e-4 for l in report.layers)


@pytest.mark.parametrize("stem, layer", [
    ("tv_swin_ts17", "/features/features.0/features.0.2/LayerNormalization_output_0"),
    ("tv_swin_dy18", "layer_norm"),
    ("timm_vit_dy18", "layer_norm"),
])
def test_check_through_shifted_windows_patch_merging_and_stacked_qkv(stem: str, layer: str) -> None:
    """From the first layer: Swin's shifted-window masks (ConstantOfShape/ScatterND from shapes:
    no gradient), its patch merging (Slice with step 2), timm's q, k, v sliced on axis 0."""
    report = self_check(str(DATA / f"{stem}.onnx"), layers=[layer], size=tuple(INDEX[stem]["size"]))
    assert report.ok and report.layers[0].median_rel_error < 1e-4


def test_cli_layers_and_transformer_methods(tmp_path) -> None:
    """`onnxcam layers` lists token layers with grid and prefix, the default marked; `explain`
    runs every transformer method on a photo (resized to the model's 48×48)."""
    import shutil

    from click.testing import CliRunner

    from onnxcam.cli import cli
    from onnxcam.methods import METHODS

    path = DATA / "timm_vit_reg_dy18.onnx"
    r = CliRunner().invoke(cli, ["layers", str(path), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    layers = json.loads(r.stdout)
    layers = layers["layers"] if isinstance(layers, dict) else layers
    default = [l for l in layers if l["default"]]
    assert [l["name"] for l in default] == ["layer_norm_2"]
    assert default[0]["layout"] == "NTC" and default[0]["shape"] == [32, 6, 6] and default[0]["prefix_tokens"] == 5
    img = tmp_path / "chelsea.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    for name in sorted(m for m, cls in METHODS.items() if cls.needs_attention):
        out = tmp_path / name
        r = CliRunner().invoke(cli, ["explain", str(path), str(img), "-o", str(out), "--method", name, "--json"],
                               catch_exceptions=False)
        assert r.exit_code == 0, (name, r.output)
        hm = np.load(json.loads(r.stdout)["images"][0]["heatmap"])
        assert hm.shape == (48, 48) and np.isfinite(hm).all() and hm.max() <= 1 and hm.min() >= 0


@pytest.mark.parametrize("axes", ["NTC", "TNC", "NCT"])
def test_token_grid_round_trip(axes: str) -> None:
    """to_grid drops the prefix and lays patch tokens row-major on the grid (as the ViT reshape
    transform); from_grid puts them back behind the given prefix rows."""
    from onnxcam.tokens import from_grid, to_grid

    rng = np.random.default_rng(0)
    ntc = rng.normal(size=(2, 2 + 3 * 4, 5)).astype(np.float32)
    a = ntc.transpose(["NTC".index(c) for c in axes])
    grid = to_grid(a, axes, prefix=2, grid=(3, 4))
    assert grid.shape == (2, 5, 3, 4)
    assert np.array_equal(grid[:, :, 1, 2], ntc[:, 2 + 1 * 4 + 2, :])
    assert np.array_equal(from_grid(grid, axes, ntc[:, :2]), a)


def test_cam_on_swin_channels_last_stage_equals_grad_cam() -> None:
    """Swin's TorchScript export pools its channels-last last stage through a Transpose into
    GlobalAveragePool → Flatten → Gemm: a real CAM head, so CAM = Grad-CAM up to scale (the
    gradient is constant over the grid), here pytorch-grad-cam's Grad-CAM."""
    g = golden("tv_swin_ts17")
    r = Explainer(DATA / "tv_swin_ts17.onnx", method="cam").explain(g["x"])
    assert r.layer == INDEX["tv_swin_ts17"]["layers"]["default"]["onnx"]
    assert np.abs(normalised(r.cams) - normalised(g["pgc_raw_GradCAM"])).max() < 1e-4


def test_cli_attention_options(tmp_path) -> None:
    """--head-fusion/--discard-ratio/--start-layer configure rollout (the map is the reference's);
    a method that takes no such parameter is a usage error (exit 2)."""
    import shutil

    from click.testing import CliRunner

    from onnxcam.cli import cli

    from onnxcam.methods import configured

    g = golden("hf_vit_dy18")
    r = Explainer(DATA / "hf_vit_dy18.onnx", method=configured("rollout", head_fusion="max")).explain(g["x"])
    assert rel_err(r.cams, g["map_rollout_max"]) < 1e-4
    img = tmp_path / "chelsea.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    path = str(DATA / "hf_vit_dy18.onnx")
    r = CliRunner().invoke(cli, ["explain", path, str(img), "-o", str(tmp_path / "a"), "--method", "rollout",
                                 "--head-fusion", "max", "--start-layer", "1", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["method"] == "rollout"
    r = CliRunner().invoke(cli, ["explain", path, str(img), "-o", str(tmp_path / "b"), "--method", "gradcam",
                                 "--head-fusion", "max"], catch_exceptions=False)
    assert r.exit_code == 2 and "method gradcam takes no --head-fusion" in r.output
