"""Why onnxcam's guided backpropagation differs from pytorch-grad-cam's on ResNet-50 (torch venv).

    /work/venvs/torch/bin/python bench/guided_parity.py [--batches 1 8] [--threads 2]

On torchvision's resnet50 (bench/torch_models.py: seeded weights and BN statistics) and its ONNX
export (BN folded into the convs), for the same seeded batches as bench_vs_pytorch_grad_cam.py and
the top-1 classes, the guided-backpropagation gradient R = ∂y_c/∂x (guided ReLUs) four ways:

  onnxcam    onnxcam on the ONNX export (float32, onnxruntime)
  pgc        pytorch-grad-cam 1.5.7's GuidedBackpropReLUModel (float32, BN not folded)
  float64    the same torch model in float64 (the reference)
  masked64   float64, every ReLU's mask 1[x > 0] (forward and backward) taken from onnxruntime's
             float32 forward of the export, MaxPool as torch's: what onnxcam's backward would give
             in exact arithmetic for the masks its own forward chose

and prints, per batch, max |Δ| of the raw gradients (relative to max |R|), of the bench's map
(per-image min-max of max_c |R|), and how many ReLU masks the float32 forwards flip relative to
the float64 one (pre-activations within float32 rounding of 0).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402

import onnxcam  # noqa: E402
from onnxcam.methods.maps import normalize_maps  # noqa: E402
from torch_models import export, torch_model  # noqa: E402


def pgc_guided(model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    gb = pgc.GuidedBackpropReLUModel(model=model, device="cpu")
    out = [gb(x[i: i + 1].clone(), target_category=int(targets[i])) for i in range(len(x))]
    return np.stack([o.transpose(2, 0, 1) for o in out])


class _MaskedGuided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return g * mask * (g > 0), None


class MaskedReLU(torch.nn.Module):
    """A guided ReLU whose k-th call uses the k-th given mask (torchvision reuses one ReLU module
    three times per bottleneck, so masks are consumed in call order)."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        super().__init__()
        self.masks = masks
        self.k = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.masks[self.k]
        self.k += 1
        return _MaskedGuided.apply(x, m.to(x.dtype))


def swap_relus(model: torch.nn.Module, new: torch.nn.Module) -> None:
    for name, mod in model.named_children():
        if isinstance(mod, (torch.nn.ReLU, MaskedReLU)):
            setattr(model, name, new)
        else:
            swap_relus(mod, new)


def onnx_relu_masks(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """1[y > 0] of every Relu of the export, in graph (= call) order, from onnxruntime."""
    m = onnx.load(str(path))
    relus = [n.output[0] for n in m.graph.node if n.op_type == "Relu"]
    for r in relus:
        m.graph.output.append(onnx.ValueInfoProto(name=r))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [o > 0 for o in s.run(relus, {"input": x})]


def torch_preacts(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Every ReLU's input, in call order."""
    seen: list[np.ndarray] = []
    hooks = [mod.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().numpy()))
             for mod in model.modules() if isinstance(mod, torch.nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def guided64(model64: torch.nn.Module, x: np.ndarray, targets: list[int], masks: list[np.ndarray] | None) -> np.ndarray:
    """Float64 guided backprop, one image at a time (as pgc), with given ReLU masks or torch's own."""
    out = []
    for i in range(len(x)):
        xi = torch.tensor(x[i: i + 1], dtype=torch.float64, requires_grad=True)
        if masks is None:
            y = pgc_model_forward(model64, xi)
        else:
            relu = MaskedReLU([torch.tensor(m[i: i + 1]) for m in masks])
            swap_relus(model64, relu)
            y = model64(xi)
            swap_relus(model64, torch.nn.ReLU())
        y[0, int(targets[i])].backward()
        out.append(xi.grad.numpy()[0])
    return np.stack(out)


def pgc_model_forward(model64: torch.nn.Module, xi: torch.Tensor) -> torch.Tensor:
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
    from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive
    replace_all_layer_type_recursive(model64, torch.nn.ReLU, GuidedBackpropReLUasModule())
    y = model64(xi)
    replace_all_layer_type_recursive(model64, GuidedBackpropReLUasModule, torch.nn.ReLU())
    return y


def heat(r: np.ndarray) -> np.ndarray:
    return scale_cam_image(np.abs(r).max(axis=1).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    model = torch_model("resnet50")
    path = export(model, "resnet50")
    model64 = torch_model("resnet50").double()
    ex = onnxcam.Explainer(str(path), method="guidedbackprop", providers=["CPUExecutionProvider"], threads=a.threads)
    rng = np.random.default_rng(0)
    for n in a.batches:
        xn = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        with torch.no_grad():
            targets = model(torch.tensor(xn)).argmax(1).numpy().tolist()
        res = ex.explain(xn, targets=np.array(targets))
        r = {
            "onnxcam": res.extra["guided_backprop"],
            "pgc": pgc_guided(model, torch.tensor(xn), targets),
            "float64": guided64(model64, xn, targets, None),
        }
        masks = onnx_relu_masks(path, xn)
        r["masked64"] = guided64(model64, xn, targets, masks)
        pre32 = torch_preacts(model, torch.tensor(xn))
        pre64 = torch_preacts(model64, torch.tensor(xn, dtype=torch.float64))
        flips_pgc = sum(int(((p > 0) != (q > 0)).sum()) for p, q in zip(pre32, pre64))
        flips_ort = sum(int((m != (q > 0)).sum()) for m, q in zip(masks, pre64))
        total = sum(q.size for q in pre64)
        print(f"batch {n}: ReLU masks differing from float64's: pgc float32 {flips_pgc}, onnxruntime float32 "
              f"{flips_ort} (of {total:,} ReLU inputs)")
        scale = np.abs(r["float64"]).max()
        peaks = np.abs(r["float64"]).max(axis=(1, 2, 3))
        bench = np.abs(scale_cam_image(res.heatmaps) - heat(r["pgc"])).max(axis=(1, 2))
        once = np.abs(res.heatmaps - normalize_maps(np.abs(r["pgc"]).max(axis=1))).max()
        print(f"  bench_vs_pytorch_grad_cam's figure (its heatmaps, min-max'd once more, vs pgc's raw map min-max'd): "
              f"{bench.max():.2e}; per image {np.array2string(bench, precision=1)}; 1e-7 / max_c|R| per image "
              f"{np.array2string(1e-7 / peaks, precision=1)}; onnxcam's heatmaps vs pgc's map normalised by the same "
              f"formula (normalize_maps, ε relative): {once:.2e}")
        for p, q in [("onnxcam", "float64"), ("pgc", "float64"), ("onnxcam", "pgc"), ("onnxcam", "masked64"),
                     ("masked64", "float64")]:
            raw = np.abs(r[p] - r[q]).max() / scale
            hm = np.abs(heat(r[p]) - heat(r[q])).max()
            print(f"  {p:9s} vs {q:9s}  raw max|Δ|/max|R| {raw:.2e}   map max|Δ| {hm:.2e}")


if __name__ == "__main__":
    main()
