"""Small seeded vision transformers as ONNX, with torch-autograd goldens and reference maps.

Writes, under ``tests/data/transformers/`` (relative to the repository root):

* ``<model>_<exporter>.onnx``: ``ts17`` = ``torch.onnx.export(..., dynamo=False, opset_version=17)``
  (``ts14``: at opset 14, where LayerNormalization is written out as element-wise ops),
  ``dy18`` = ``torch.onnx.export(..., dynamo=True, opset_version=18)``, ``dy23`` = dynamo at opset 23
  (where attention becomes one fused ``Attention`` op); batch axis dynamic where the exporter allows;
* ``<model>_<exporter>.npz``: the goldens (see ``README.md`` there, written by this script);
* ``index.json``: per file, the model's framework, exporter, opset, input size, patch size, grid,
  prefix tokens, head type, the layers (torch module, ONNX tensor, shape) and the ONNX names of the
  attention probabilities.

Models (tiny: 32–96 px, patch 4–8 (the hybrid: 32 in image pixels), width 16–32, depth 2, 2 heads; every weight re-drawn from one
seeded scheme so attention is far from uniform and the heads are not zero):

* ``tv_vit``: torchvision ``VisionTransformer`` (class token; its head is zero at init — re-drawn);
* ``tv_swin``: torchvision ``SwinTransformer`` (channels-last stages, shifted windows, mean pool);
* ``hf_vit``: ``transformers.ViTForImageClassification`` (eager attention), wrapped to return logits;
* ``hf_deit``: ``transformers.DeiTForImageClassificationWithTeacher`` (class + distillation tokens);
* ``timm_vit``: ``timm`` ViT with a class token; ``timm_vit_avg``: ``global_pool='avg'``;
  ``timm_vit_reg``: 4 register tokens; ``timm_deit``: distilled DeiT; ``timm_vit_rect``: 32×48 input;
  ``timm_hybrid``: a hybrid ViT (ResNetV2 stem, then an 8×8 patch embedding of its feature map).

Goldens come from torch autograd on float32 CPU for a seeded input x (2 images) and the predicted
classes: logits; activation and gradient (of the predicted logit) at the default layer (class-token
heads: the norm1 output feeding the last block's attention; mean-pooled heads: the tensor the final
pooling reads) and at the last block's output (zero patch gradient for class-token heads); every
block's attention probabilities and their gradients (via tfx_reference.AttentionRecorder, which
evaluates fused attention explicitly); pytorch-grad-cam 1.5.7 maps with reshape transforms; attention
rollout / gradient rollout / Chefer maps from tfx_reference. ONNX tensor names are found by running
the exported graph with every intermediate tensor exposed and matching values.

Run from the repository root (build time only; the test suite never imports torch)::

    /work/venvs/torch/bin/python -m tools.transformers.make_transformer_models [--only MODEL ...]

Fails loudly (non-zero exit) when onnxruntime's logits differ from torch by more than 1e-4, when a
layer or attention tensor is not found in a graph that should expose it, when the explicit-attention
forward differs from the model's own, or when the data exceed 8 MB in all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import warnings
from itertools import permutations
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from tools.common import ROOT
from tools.transformers import tfx_reference as R

OUT = ROOT / "tests" / "data" / "transformers"
SEED = 0
NUM_CLASSES = 10
BATCH = 2
ATOL = 1e-4
MAX_TOTAL = 8 * 1024 * 1024

# rollout variants stored in every golden: key -> kwargs of tfx_reference.rollout
ROLLOUTS = {
    "rollout_mean": dict(fusion="mean"),
    "rollout_max": dict(fusion="max"),
    "rollout_min": dict(fusion="min"),
    "rollout_mean_discard0.5": dict(fusion="mean", discard_ratio=0.5),
    "rollout_mean_start1": dict(fusion="mean", start_layer=1),
}


class Logits(nn.Module):
    """A Hugging Face classifier returning its logits tensor (for export and pytorch-grad-cam)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values=x).logits


# --------------------------------------------------------------------------- models
# A builder returns (model, spec): size (H, W), patch, prefix, head ('class_token' | 'distilled' |
# 'mean_pool'), default (module whose output is the default layer), last (last block module),
# ts/dy (exporters that work), notes.


def b_tv_vit():
    from torchvision.models import VisionTransformer
    m = VisionTransformer(image_size=48, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                          num_classes=NUM_CLASSES)
    return m, dict(framework="torchvision", size=(48, 48), patch=8, prefix=1, head="class_token",
                   default="encoder.layers.encoder_layer_1.ln_1", last="encoder.layers.encoder_layer_1",
                   notes="torchvision VisionTransformer(image_size=48, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)")


def b_tv_swin():
    from torchvision.models import SwinTransformer
    m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                        stochastic_depth_prob=0.0, num_classes=NUM_CLASSES)
    return m, dict(framework="torchvision", size=(32, 32), patch=4, prefix=0, head="mean_pool", grid_final=(4, 4),
                   default="norm", last="features.3.1",
                   notes="torchvision SwinTransformer(patch_size=[4,4], embed_dim=16, depths=[2,2], num_heads=[2,2], window_size=[4,4]); "
                         "stage 1 8x8 (shifted windows), patch merging to 4x4, final norm (N, 4, 4, 32) channels-last")


def _hf_common():
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=48,
                patch_size=8, num_labels=NUM_CLASSES, hidden_act="gelu")


def b_hf_vit():
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(**_hf_common())
    cfg._attn_implementation = "eager"
    m = Logits(ViTForImageClassification(cfg))
    return m, dict(framework="transformers", size=(48, 48), patch=8, prefix=1, head="class_token",
                   default="m.vit.layers.1.layernorm_before", last="m.vit.layers.1",
                   notes="transformers ViTForImageClassification(ViTConfig(hidden_size=32, layers=2, heads=2, intermediate=64, image 48, patch 8)), eager attention, wrapped to return logits")


def b_hf_deit():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
    cfg = DeiTConfig(**_hf_common())
    cfg._attn_implementation = "eager"
    m = Logits(DeiTForImageClassificationWithTeacher(cfg))
    return m, dict(framework="transformers", size=(48, 48), patch=8, prefix=2, head="distilled",
                   default="m.deit.layers.1.layernorm_before", last="m.deit.layers.1",
                   notes="transformers DeiTForImageClassificationWithTeacher(DeiTConfig(same sizes)), logits = (cls + distillation)/2, eager attention")


def _timm(name: str, **kw):
    import timm
    args = dict(pretrained=False, img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                num_classes=NUM_CLASSES)
    args.update(kw)
    return timm.create_model(name, **args)


def b_timm_vit():
    return _timm("vit_tiny_patch16_224"), dict(
        framework="timm", size=(48, 48), patch=8, prefix=1, head="class_token", default="blocks.1.norm1", last="blocks.1",
        notes="timm vit_tiny_patch16_224(img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2)")


def b_timm_vit_avg():
    return _timm("vit_tiny_patch16_224", global_pool="avg"), dict(
        framework="timm", size=(48, 48), patch=8, prefix=1, head="mean_pool", default="blocks.1", last="blocks.1",
        notes="timm ViT as timm_vit with global_pool='avg' (class token kept but unread; fc_norm after the mean over patch tokens; final norm = Identity)")


def b_timm_vit_reg():
    return _timm("vit_tiny_patch16_224", reg_tokens=4), dict(
        framework="timm", size=(48, 48), patch=8, prefix=5, head="class_token", default="blocks.1.norm1", last="blocks.1",
        notes="timm ViT as timm_vit with reg_tokens=4 (prefix = class + 4 registers)")


def b_timm_deit():
    return _timm("deit_tiny_distilled_patch16_224"), dict(
        framework="timm", size=(48, 48), patch=8, prefix=2, head="distilled", default="blocks.1.norm1", last="blocks.1",
        notes="timm deit_tiny_distilled_patch16_224 (VisionTransformerDistilled) at the same sizes; eval output = (head + head_dist)/2")


def b_timm_vit_rect():
    return _timm("vit_tiny_patch16_224", img_size=(32, 48)), dict(
        framework="timm", size=(32, 48), patch=8, prefix=1, head="class_token", default="blocks.1.norm1", last="blocks.1",
        notes="timm ViT as timm_vit with img_size=(32, 48): a 4x6 patch grid")


def b_timm_hybrid():
    m = _timm("vit_tiny_r_s16_p8_224", img_size=96)
    return m, dict(
        framework="timm", size=(96, 96), patch=32, prefix=1, head="class_token", default="blocks.1.norm1", last="blocks.1",
        notes="timm hybrid vit_tiny_r_s16_p8_224(img_size=96, embed_dim=32, depth=2, num_heads=2): a ResNetV2 stem "
              "(StdConv 7x7/2, GroupNorm, max-pool /2) then an 8x8/8 patch embedding of its 24x24 map: a 3x3 grid")


MODELS: dict[str, Callable] = {
    "tv_vit": b_tv_vit, "tv_swin": b_tv_swin, "hf_vit": b_hf_vit, "hf_deit": b_hf_deit,
    "timm_vit": b_timm_vit, "timm_vit_avg": b_timm_vit_avg, "timm_vit_reg": b_timm_vit_reg,
    "timm_deit": b_timm_deit, "timm_vit_rect": b_timm_vit_rect, "timm_hybrid": b_timm_hybrid,
}
EXPORTS: dict[str, list[str]] = {name: ["ts17", "dy18"] for name in MODELS}
EXPORTS["timm_vit"] += ["dy23", "ts14"]  # opset 14: LayerNormalization written out as element-wise ops
EXPORTS["timm_hybrid"] = ["ts17"]  # its stem's weights make it the largest file: one exporter

_TOKEN_PARAMS = ("cls_token", "class_token", "pos_embed", "pos_embedding", "position_embeddings", "reg_token",
                 "dist_token", "distillation_token", "relative_position_bias_table")


def randomise(model: nn.Module, seed: int) -> None:
    """One seeded weight scheme for every model: matrices N(0, (1.5/√fan_in)²), biases N(0, 0.1²),
    norm scales 1 + N(0, 0.2²), tokens / position tables N(0, 0.5²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if any(t in name for t in _TOKEN_PARAMS):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))
            elif leaf == "bias" or "bias" in leaf:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.2)


def build(name: str):
    torch.manual_seed(SEED)
    model, spec = MODELS[name]()
    randomise(model, SEED)
    model.eval()
    h, w = spec["size"]
    p = spec["patch"]
    spec["grid"] = list(spec.get("grid_final", (h // p, w // p)))
    spec["patch_grid"] = [h // p, w // p]
    spec["tokens"] = spec["prefix"] + spec["grid"][0] * spec["grid"][1]
    if spec["head"] == "class_token":
        spec["rows"] = [0]
    elif spec["head"] == "distilled":
        spec["rows"] = [0, 1]
    else:
        spec["rows"] = list(range(spec["prefix"], spec["tokens"]))
    x = torch.randn((BATCH, 3, h, w), generator=torch.Generator().manual_seed(SEED + 1))
    return model, spec, x


# --------------------------------------------------------------------------- goldens (torch)


def _hook_outputs(model: nn.Module, names: list[str]):
    store: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m, _i, out, n=n):
            t = out[0] if isinstance(out, tuple) else out
            if t.requires_grad:
                t.retain_grad()
            store[n] = t
        handles.append(model.get_submodule(n).register_forward_hook(hook))
    return store, handles


def torch_goldens(model: nn.Module, spec: dict, x: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        plain = model(x)
    store, handles = _hook_outputs(model, [spec["default"], spec["last"]])
    rec = R.AttentionRecorder()
    xg = x.clone().requires_grad_(True)
    with rec:
        logits = model(xg)
    for hd in handles:
        hd.remove()
    err = float((logits - plain).abs().max())
    if err > 1e-5:
        raise SystemExit(f"explicit-attention forward differs from the model's own by {err}")
    targets = logits.argmax(dim=1)
    logits[torch.arange(BATCH), targets].sum().backward()
    g: dict[str, Any] = {
        "x": x.numpy(), "logits": logits.detach().numpy(), "targets": targets.numpy().astype(np.int64),
        "activation": store[spec["default"]].detach().numpy(), "gradient": store[spec["default"]].grad.numpy(),
        "last_activation": store[spec["last"]].detach().numpy(), "last_gradient": store[spec["last"]].grad.numpy(),
    }
    probs = [p.detach() for p in rec.probs]
    grads = [p.grad.detach() for p in rec.probs]
    for i, (p, gr) in enumerate(zip(probs, grads)):
        g[f"attn_{i}"] = p.numpy()
        g[f"attn_grad_{i}"] = gr.numpy()
    g["_probs"], g["_grads"] = probs, grads
    return g


def transformer_maps(spec: dict, probs, grads) -> dict[str, np.ndarray]:
    if spec["framework"] == "torchvision" and spec["head"] == "mean_pool":
        return {}  # Swin: windowed attention, no global token-to-token matrix
    kw = dict(rows=spec["rows"], prefix=spec["prefix"], h=spec["grid"][0], w=spec["grid"][1])
    out = {"map_attention": R.raw_attention(probs, **kw)}
    for key, rk in ROLLOUTS.items():
        out[f"map_{key}"] = R.rollout(probs, **kw, **rk)
    out["map_grad_rollout"] = R.grad_rollout(probs, grads, **kw)
    out["map_chefer"] = R.chefer(probs, grads, **kw)
    out["map_chefer_start1"] = R.chefer(probs, grads, **kw, start_layer=1)
    return {k: v.numpy() for k, v in out.items()}


def discard_margin(probs, ratio: float) -> float:
    """Smallest gap, over images and blocks, between the last discarded and the first kept fused
    entry (mean fusion): a test's float32 rollout agrees with the reference when this exceeds its error."""
    gaps = []
    for a in probs:
        f = a.double().mean(dim=1).reshape(a.shape[0], -1)
        k = int(math.floor(ratio * f.shape[1]))
        s = torch.sort(f, dim=-1).values
        gaps.append(float((s[:, k] - s[:, k - 1]).min()))
    return min(gaps)


# --------------------------------------------------------------------------- pytorch-grad-cam


def pgc_maps(model: nn.Module, spec: dict, x: torch.Tensor, targets: np.ndarray) -> dict[str, np.ndarray]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class ZeroVit(AblationLayerVit):
        """pytorch-grad-cam's AblationLayerVit, always ablating to 0 (the paper's definition; the
        stock layer writes min − 1e7 where the activation's minimum is not exactly 0)."""

        def __call__(self, x):
            out = self.activations.transpose(1, self.activations.ndim - 1)
            for i in range(out.size(0)):
                out[i, self.indices[i], :] = 0
            return out.transpose(self.activations.ndim - 1, 1)

    if spec["head"] == "mean_pool" and spec["framework"] == "torchvision":
        transform = R.swin_reshape
    else:
        transform = R.vit_reshape(spec["prefix"], *spec["grid"])
    layer = model.get_submodule(spec["default"])
    methods = {
        "GradCAM": (pgc.GradCAM, {}), "HiResCAM": (pgc.HiResCAM, {}), "GradCAMPlusPlus": (pgc.GradCAMPlusPlus, {}),
        "XGradCAM": (pgc.XGradCAM, {}), "LayerCAM": (pgc.LayerCAM, {}), "GradCAMElementWise": (pgc.GradCAMElementWise, {}),
        "EigenCAM": (pgc.EigenCAM, {}), "EigenGradCAM": (pgc.EigenGradCAM, {}), "ScoreCAM": (pgc.ScoreCAM, {}),
        "AblationCAM": (pgc.AblationCAM, dict(ablation_layer=AblationLayerVit(), batch_size=32)),
        "AblationCAM_zero": (pgc.AblationCAM, dict(ablation_layer=ZeroVit(), batch_size=32)),
    }
    tg = [ClassifierOutputTarget(int(t)) for t in targets]
    out: dict[str, np.ndarray] = {}
    for key, (cls, kw) in methods.items():
        cam = cls(model=model, target_layers=[layer], reshape_transform=transform, **kw)
        if cls is pgc.ScoreCAM:
            cam.batch_size = 16
        raw: list[np.ndarray] = []
        orig = cam.get_cam_image

        def get_cam_image(*a, orig=orig, **k):
            r = orig(*a, **k)
            raw.append(np.asarray(r, dtype=np.float32))
            return r

        cam.get_cam_image = get_cam_image
        torch.manual_seed(SEED)
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = cam(input_tensor=x, targets=tg, aug_smooth=False, eigen_smooth=False)
        if key == "GradCAM":  # the post-processed map at input size (min-max, cv2 bilinear) once
            out[f"pgc_{key}"] = np.asarray(m, dtype=np.float32)
        out[f"pgc_raw_{key}"] = raw[0]
        cam.activations_and_grads.release()
    return out


# --------------------------------------------------------------------------- export and graph names


def export(model: nn.Module, x: torch.Tensor, kind: str, path: Path) -> None:
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind.startswith("ts"):
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(kind[2:]), input_names=["pixel_values"],
                              output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        else:
            opset = int(kind[2:])
            batch = torch.export.Dim("batch", min=1, max=64)
            try:
                prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["pixel_values"],
                                         output_names=["logits"], dynamic_shapes=({0: batch},))
            except Exception as exc:  # noqa: BLE001 - record and retry static
                print(f"  {path.stem}: dynamic batch failed ({type(exc).__name__}); static batch", flush=True)
                prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["pixel_values"],
                                         output_names=["logits"])
            prog.save(str(path), external_data=False)
    m = onnx.load(str(path))
    if kind.startswith("dy"):  # the dynamo exporter's per-node stack traces are 60% of the file: dropped
        for node in m.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        onnx.save(m, str(path))
    onnx.checker.check_model(m)


def intermediate_values(path: Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], onnx.ModelProto]:
    """Every float tensor of the graph, by name, for input x (plus the model, shape-inferred)."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {v.name: v for v in list(m.graph.value_info)}
    outs = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for t in node.output:
            v = known.get(t)
            if t and t not in outs and v is not None and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                m.graph.output.append(v)
                outs.add(t)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    vals = s.run(None, {s.get_inputs()[0].name: x})
    return dict(zip(names, vals)), m


def find_tensor(values: dict[str, np.ndarray], ref: np.ndarray, order: list[str], tol: float = 1e-4) -> list[dict]:
    """ONNX tensors equal to `ref` up to a reshape or an axis permutation, in node order."""
    found = []
    scale = max(float(np.abs(ref).max()), 1e-6)
    for name in order:
        v = values.get(name)
        if v is None or v.size != ref.size:
            continue
        if v.shape == ref.shape or v.ndim != ref.ndim:
            cands = [(None, v.reshape(ref.shape))]
        else:
            cands = [(p, np.transpose(v, p)) for p in permutations(range(v.ndim)) if tuple(v.shape[i] for i in p) == ref.shape]
            cands.append((None, v.reshape(ref.shape)))
        for perm, c in cands:
            if float(np.abs(c - ref).max()) <= tol * scale:
                found.append({"tensor": name, "shape": list(v.shape), "perm": list(perm) if perm else None})
                break
    return found


def producers(m: onnx.ModelProto) -> dict[str, str]:
    return {t: n.op_type for n in m.graph.node for t in n.output}


# --------------------------------------------------------------------------- main


def _to_grid(a: np.ndarray, spec: dict) -> np.ndarray:
    """(N, T, C) tokens → drop the prefix → (N, C, h, w); Swin's (N, h, w, C) → (N, C, h, w)."""
    if a.ndim == 4:
        return a.transpose(0, 3, 1, 2)
    h, w = spec["grid"]
    return a[:, spec["prefix"]:].reshape(a.shape[0], h, w, a.shape[2]).transpose(0, 3, 1, 2)


def make(name: str) -> dict[str, dict]:
    model, spec, x = build(name)
    t0 = time.perf_counter()
    g = torch_goldens(model, spec, x)
    probs, grads = g.pop("_probs"), g.pop("_grads")
    maps = transformer_maps(spec, probs, grads)
    pg = pgc_maps(model, spec, x, g["targets"])
    # pytorch-grad-cam hooks the same layer: its gradient must be the golden's
    with torch.no_grad():
        again = model(x)
    assert torch.allclose(again, torch.from_numpy(g["logits"]), atol=1e-5)
    patch = g["last_gradient"]
    if spec["head"] in ("class_token", "distilled"):
        patch = patch[:, spec["prefix"]:]
        if np.abs(patch).max() != 0.0:
            raise SystemExit(f"{name}: patch gradient at the last block output is not zero")
    # pytorch-grad-cam hooked the golden layer: its raw Grad-CAM is Σ_k mean_ij(g) A on the golden tensors
    grid = lambda a: _to_grid(a, spec)
    a, gr = grid(g["activation"]), grid(g["gradient"])
    mine = (gr.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1)
    if not np.allclose(mine, pg["pgc_raw_GradCAM"], atol=1e-5 * max(1.0, float(np.abs(mine).max()))):
        raise SystemExit(f"{name}: pytorch-grad-cam's Grad-CAM is not the golden layer's")
    margin = discard_margin(probs, 0.5) if maps else None
    infos = {}
    for kind in EXPORTS[name]:
        stem = f"{name}_{kind}"
        path = OUT / f"{stem}.onnx"
        export(model, x, kind, path)
        values, m = intermediate_values(path, g["x"])
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ort_logits = sess.run(None, {sess.get_inputs()[0].name: g["x"]})[0]
        err = float(np.abs(ort_logits - g["logits"]).max())
        if err > ATOL:
            raise SystemExit(f"{stem}: onnxruntime logits differ from torch by {err}")
        order = [t for n in m.graph.node for t in n.output]
        prod = producers(m)
        layers = {}
        for key, ref in (("default", g["activation"]), ("last", g["last_activation"])):
            hits = find_tensor(values, ref, order)
            if not hits:
                raise SystemExit(f"{stem}: no ONNX tensor matches the {key} layer ({spec[key]})")
            for h in hits:
                h["op"] = prod[h["tensor"]]
            layers[key] = {"module": spec[key], "shape": list(ref.shape), "onnx": hits[0]["tensor"],
                           "onnx_op": hits[0]["op"], "matches": hits}
        attn = []
        for i, p in enumerate(probs):
            hits = [h for h in find_tensor(values, p.numpy(), order) if prod[h["tensor"]] == "Softmax"]
            if not hits and "Attention" not in prod.values():
                raise SystemExit(f"{stem}: attention {i} not found among Softmax outputs")
            attn.append({"shape": list(p.shape), "onnx": hits[0]["tensor"] if hits else None,
                         "onnx_shape": hits[0]["shape"] if hits else None})
        ops = sorted({n.op_type for n in m.graph.node})
        dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        data = dict(g)
        data.update(maps)
        data.update(pg)
        data["default_tensor"] = np.array(layers["default"]["onnx"])
        data["last_tensor"] = np.array(layers["last"]["onnx"])
        data["attn_tensors"] = np.array([a["onnx"] or "" for a in attn])
        np.savez_compressed(OUT / f"{stem}.npz", **data)
        infos[stem] = {
            "model": name, "framework": spec["framework"], "exporter": "dynamo" if kind.startswith("dy") else "torchscript",
            "opset": int(kind[2:]), "input": {"name": m.graph.input[0].name, "shape": dims},
            "size": list(spec["size"]), "patch": spec["patch"], "patch_grid": spec["patch_grid"], "grid": spec["grid"],
            "prefix": spec["prefix"], "tokens": spec["tokens"], "head": spec["head"], "head_rows": spec["rows"],
            "blocks": len(probs), "heads": int(probs[0].shape[1]) if probs[0].ndim == 4 else None,
            "targets": g["targets"].tolist(), "layers": layers, "attention": attn,
            "fused_attention": "Attention" in prod.values(), "ops": ops,
            "discard0.5_margin": margin, "logits_err": err, "bytes": path.stat().st_size,
            "notes": spec["notes"],
        }
        print(f"  {stem}: {path.stat().st_size} B, ops={len(ops)}, default={layers['default']['onnx']} "
              f"({layers['default']['onnx_op']}), last={layers['last']['onnx']}, attn={[a['onnx'] for a in attn]}, "
              f"err={err:.2e}", flush=True)
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return infos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    index_path = OUT / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in args.only or list(MODELS):
        index.update(make(name))
    index = {k: index[k] for k in sorted(index) if (OUT / f"{k}.onnx").exists()}
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"total {total} B in {OUT}")
    if total > MAX_TOTAL:
        raise SystemExit(f"test data {total} B exceed {MAX_TOTAL} B")


if __name__ == "__main__":
    main()
