"""torchvision models for the side-by-side benchmarks, and their ONNX exports (build-time: torch).

`torch_model(name)` builds torchvision's `resnet50` or `mobilenet_v2` with seeded random weights
(no download) and seeded, non-trivial BatchNorm statistics as bench/resnet50.py draws them
(γ ≈ 1 ± 0.1, β, μ ~ N(0, 0.05²), σ² ~ U(0.5, 1.5); γ × 0.2 on a residual branch's last BN), so
that FullGrad's BN biases β − μγ/√(σ²+ε) are not all zero; eval mode. `export(model, path)` writes
the TorchScript export (opset 17, dynamic batch, BN folded into the convs as the exporter does in
eval mode) once into bench/.cache/ and returns its path.

Only the scripts that compare with pytorch-grad-cam import this (torch venv); onnxcam never does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

CACHE = Path(__file__).resolve().parent / ".cache"


def torch_model(name: str = "resnet50", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            last = mod_name.endswith("bn3")
            with torch.no_grad():
                mod.weight.copy_((0.2 if last else 1.0) * (1 + 0.1 * torch.randn(c, generator=g)))
                mod.bias.copy_(0.05 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.05 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def export(model: torch.nn.Module, name: str, seed: int = 0) -> Path:
    """The model's ONNX export, cached by name and seed."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"torchvision-{name}-seed{seed}.onnx"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        x = torch.zeros(1, 3, 224, 224)
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        tmp.replace(path)
    return path
