"""Why onnxcam's FullGrad differs from pytorch-grad-cam's on ResNet-50 (build-time: torch venv).

    /work/venvs/torch/bin/python bench/fullgrad_parity.py [--batch 1] [--threads 2]

On torchvision's resnet50 (bench/torch_models.py: seeded weights and BN statistics) and its ONNX
export, for one seeded random batch and the top-1 classes, this computes the FullGrad map

    S = ψ(|x ⊙ ∂y/∂x|) + Σ_l Σ_c ψ(|b_l,c · ∂y/∂z_l,c|),   ψ = per-(image, channel) (m − min)/(max + 1e-7), resize,

five ways and prints how far apart they are (max |Δ| of the final, normalised maps):

  pgc        pytorch-grad-cam 1.5.7's FullGrad, as shipped
  paired     the same formula in numpy on torch's float32 gradients, each bias with its own layer's
             gradient (per-module hooks)
  float64    the same on torch's gradients of the model in float64 (the reference)
  onnxcam    onnxcam's FullGrad on the ONNX export
  onnxcam64  onnxcam's own gradients (the session's bias taps) through the float64-reference formula

and, per bias layer, the largest per-channel normalised-term difference between pgc's pairing and
the true pairing, with the scale of |b·g| next to the 1e-7 in ψ's denominator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from torch_models import export, torch_model  # noqa: E402


def psi(t: np.ndarray, size: tuple[int, int], eps: float = 1e-7) -> np.ndarray:
    """pytorch-grad-cam's scale_accross_batch_and_channels: per (n, c) min-max, cv2 resize."""
    n, c = t.shape[:2]
    flat = t.reshape(n * c, *t.shape[2:]).astype(np.float32)
    out = np.empty((n * c, size[1], size[0]), np.float32)
    for i, m in enumerate(flat):
        m = m - m.min()
        m = m / (eps + m.max())
        out[i] = cv2.resize(m, size) if m.shape != (size[1], size[0]) else m
    return out.reshape(n, c, size[1], size[0])


def final(total: np.ndarray) -> np.ndarray:
    out = []
    for m in total:
        m = m - m.min()
        out.append(m / (1e-7 + m.max()))
    return np.float32(out)


def fullgrad_formula(x: np.ndarray, gx: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], dtype=np.float32,
                     acc=None, raw: list | None = None) -> np.ndarray:
    """The map; `dtype` for gradients and products, `acc` for the channel sums (default: dtype)."""
    size = (x.shape[3], x.shape[2])
    acc = acc or dtype
    total = psi(np.abs(gx.astype(dtype) * x.astype(dtype)), size).astype(acc).sum(axis=1)
    for b, g in pairs:
        total = total + psi(np.abs(b.astype(dtype)[None, :, None, None] * g.astype(dtype)), size).astype(acc).sum(axis=1)
    if raw is not None:
        raw.append(total)
    return final(total)


def photos(n: int) -> np.ndarray:
    """examples/*.png at 224×224, RGB, ImageNet mean/std, cycled to n images."""
    files = sorted((HERE.parent / "examples").glob("*.png"))
    ims = []
    for f in files:
        im = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        im = cv2.resize(im, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        ims.append(((im - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1))
    return np.stack([ims[i % len(ims)] for i in range(n)]).astype(np.float32)


def bias_of(bn: torch.nn.BatchNorm2d) -> np.ndarray:
    return (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()


def torch_grads(model: torch.nn.Module, x: np.ndarray, targets: np.ndarray, bns: dict[str, torch.nn.Module], dtype):
    """∂y_t/∂x and ∂y_t/∂(each BN's output), hooked per module (no ordering assumption)."""
    m = model.to(dtype)
    grads: dict[str, np.ndarray] = {}
    hooks = []
    for name, mod in bns.items():
        def fwd(_m, _i, o, _n=name):
            o.register_hook(lambda g, _n=_n: grads.__setitem__(_n, g.detach().double().numpy().copy()))
        hooks.append(mod.register_forward_hook(fwd))
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    y = m(xt)
    y[torch.arange(len(x)), torch.tensor(targets)].sum().backward()
    for h in hooks:
        h.remove()
    model.float()
    return xt.grad.double().numpy(), grads


def _tap_model(prep):
    """The explain model of FullGrad with every bias tap's gradient as an extra output."""
    from onnx import helper

    from onnxcam.graph.rewrite import build_explain_model

    outs: list[str] = []

    def expose(g):
        for i, (grad, _, _, _) in enumerate(g.taps):
            outs.append(grad)
        return {}
    em = build_explain_model(prep, None, False, input_gradient="plain", with_bias_taps=True, method_graph=expose)
    m = em.model
    names = []
    for i, t in enumerate(outs):
        name = f"tap_{i}"
        m.graph.node.append(helper.make_node("Identity", [t], [name]))
        m.graph.output.append(helper.make_tensor_value_info(name, 1, None))
        names.append(name)
    return m, em, names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", action="store_true", help="the batch is examples/*.png (ImageNet-normalised), repeated")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    import onnxcam

    model = torch_model("resnet50")
    path = export(model, "resnet50")
    x = photos(a.batch) if a.photos else np.random.default_rng(a.seed).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        targets = model(torch.tensor(x)).argmax(1).numpy()
    bns = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)}

    # 1. pytorch-grad-cam as shipped
    fg = FullGrad(model=model, target_layers=[])
    pgc = fg(input_tensor=torch.tensor(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    order = [n for n, mod in model.named_modules() if any(mod is l for l in fg.target_layers)]
    lib_grads = [g.numpy() for g in fg.activations_and_grads.gradients]
    fg.activations_and_grads.release()

    # 2./3. the formula with per-module hooks, float32 and float64
    gx32, g32 = torch_grads(model, x, targets, bns, torch.float32)
    gx64, g64 = torch_grads(model, x, targets, bns, torch.float64)
    biases = {n: bias_of(bns[n]) for n in bns}
    lib_pairs = [(biases[n], g) for n, g in zip(order, lib_grads)]
    again = fullgrad_formula(x, gx32, lib_pairs)
    paired = fullgrad_formula(x, gx32, [(biases[n], g32[n]) for n in order])
    raw64: list = []
    ref64 = fullgrad_formula(x, gx64, [(biases[n], g64[n]) for n in order], np.float64, raw=raw64)
    acc64 = fullgrad_formula(x, gx32, [(biases[n], g32[n]) for n in order], np.float32, np.float64)

    # 4./5. onnxcam, and onnxcam's gradients through the reference formula
    ex = onnxcam.Explainer(str(path), method="fullgrad", providers=["CPUExecutionProvider"], threads=a.threads)
    res = ex.explain(x, targets=targets)
    ours = res.heatmaps
    # onnxcam's own gradients (input and bias taps) through the float64 formula: a model whose
    # extra outputs are the taps' gradients, built with the rewrite's own pieces
    from onnxcam.graph.rewrite import INPUT_GRAD_OUTPUT, TARGET_INPUT
    prep = ex.prepared((224, 224))
    taps_model, em, tap_outputs = _tap_model(prep)
    import onnxruntime as ort
    sess = ort.InferenceSession(taps_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [INPUT_GRAD_OUTPUT] + tap_outputs
    got = dict(zip(names, sess.run(names, {"input": x, TARGET_INPUT: targets.astype(np.int64)})))
    tap_names = []
    for t, _ in em.taps:  # "/layer1/layer1.0/conv1/Conv_output_0" → "layer1.0.bn1"
        mod = t.split("/")[-2] if t.count("/") >= 2 else ""
        scope = ".".join(p for p in t.split("/")[1:-2] if "." in p)
        bn = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "downsample.0": "downsample.1"}[mod]
        tap_names.append(f"{scope}.{bn}" if scope else bn)
    ours_pairs = [(b, got[name]) for (_, b), name in zip(em.taps, tap_outputs)]
    ours64 = fullgrad_formula(x, got[INPUT_GRAD_OUTPUT], ours_pairs, np.float64)

    d = lambda p, q: float(np.abs(p - q).max())  # noqa: E731
    print(f"ResNet-50 (torchvision, seeded), batch {a.batch}, targets {targets.tolist()}")
    print(f"  pgc formula re-run reproduces pgc:            {d(again, pgc):.2e}")
    print(f"  onnxcam   vs pgc (as shipped):                {d(ours, pgc):.2e}")
    print(f"  onnxcam   vs pgc formula, true pairing (f32): {d(ours, paired):.2e}")
    print(f"  onnxcam   vs float64 reference:               {d(ours, ref64):.2e}")
    print(f"  onnxcam64 vs float64 reference:               {d(ours64, ref64):.2e}")
    print(f"  pgc       vs float64 reference:               {d(pgc, ref64):.2e}")
    print(f"  pgc-true-pairing vs float64 reference:        {d(paired, ref64):.2e}")
    print(f"  f32 gradients, f64 channel sums vs reference: {d(acc64, ref64):.2e}")
    t = raw64[0].reshape(a.batch, -1)
    print(f"  the summed map before the final min-max: min/range per image "
          f"{np.round(t.min(1) / (t.max(1) - t.min(1)), 2).tolist()} (the final min-max amplifies relative errors by ~this + 1)")
    print(f"  per image max|Δ| onnxcam vs pgc: {np.abs(ours - pgc).reshape(a.batch, -1).max(1).round(6).tolist()}")
    mism = [(i, n) for i, n in enumerate(order) if lib_grads[i].shape != g32[n].shape or not np.allclose(lib_grads[i], g32[n], atol=1e-7, rtol=1e-5)]
    print(f"  pgc pairs {len(mism)} of {len(order)} biases with another layer's gradient: {[n for _, n in mism][:12]}")
    print(f"  onnxcam taps {len(em.taps)} layers; torch has {len(order)} BNs; same set: {sorted(tap_names) == sorted(order)}")
    # per layer: tiny maps where the eps matters, and what mispairing does there
    size = (224, 224)
    rows = []
    for i, n in enumerate(order):
        bg_true = np.abs(biases[n][None, :, None, None] * g64[n])
        mx = bg_true.reshape(a.batch, len(biases[n]), -1).max(axis=2)
        t_lib = psi(np.abs(biases[n][None, :, None, None] * lib_grads[i]).astype(np.float32), size).sum(axis=1)
        t_true = psi(np.abs(biases[n][None, :, None, None] * g32[n]).astype(np.float32), size).sum(axis=1)
        rows.append((float(np.abs(t_lib - t_true).max()), n, float(np.median(mx)), float((mx < 1e-6).mean())))
    rows.sort(reverse=True)
    print("  largest per-layer term differences (pgc pairing − true pairing), with median max|b·g| and "
          "the share of channels whose max|b·g| < 1e-6 (where ψ's 1e-7 is ≥ 10 %):")
    for diff, n, med, tiny in rows[:8]:
        print(f"    {n:<26} Δ {diff:9.3e}   median max|b·g| {med:9.2e}   tiny {tiny:5.1%}")
    total_terms = sum(len(biases[n]) for n in order) + 3
    print(f"  channels summed before the final min-max: {total_terms}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
