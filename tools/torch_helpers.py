"""PyTorch helpers shared by the torch generators (goldens/make_torch_goldens.py,
arch/make_torchvision_corpus.py): seeded weights that keep random networks well scaled, and the
autograd goldens of one float64 forward.
Imports torch: only scripts run in a torch venv import this module.

All functions draw from the given torch.Generator in a fixed order (callers rely on it for
reproducible goldens) and must run under torch.no_grad().
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def he_normal_(m: nn.Conv2d | nn.Linear, g: torch.Generator) -> None:
    """He-normal weight (std √(2 / fan_in)) and N(0, 0.1²) bias. PyTorch's default init shrinks
    the signal layer by layer (it gave input gradients ~1e-7 on the tiny goldens)."""
    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
    if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def calibrate_batchnorm_(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> None:
    """BatchNorm2d running statistics measured on x in train mode (so BN keeps activations O(1)),
    then perturbed so that no BN is the identity or an exact normaliser; random affine weight/bias.
    The model is left in train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    model(x)
    for m in bns:
        c = m.num_features
        m.running_mean.add_(torch.randn(c, generator=g) * 0.3 * m.running_var.sqrt())
        m.running_var.mul_(torch.rand(c, generator=g) * 1.5 + 0.5)
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        m.momentum = 0.1


def standardise_head_(model: nn.Module, head: str, x: torch.Tensor) -> nn.Module:
    """Random nets map random inputs to nearly the same logits (pooling averages the noise out),
    so every image gets the same argmax. Standardise the output of the affine layer `head` per
    class over the calibration batch x: logits then differ per image and are O(1). Returns the
    model in eval mode."""
    model.eval()
    hm = model.get_submodule(head)
    seen: list[torch.Tensor] = []
    h = hm.register_forward_hook(lambda _m, _i, o: seen.append(o.clone()))  # clone: an inplace ReLU may follow
    model(x)
    h.remove()
    o = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)  # (K, N*spatial)
    mean, std = o.mean(1), o.std(1)
    view = (-1,) + (1,) * (hm.weight.dim() - 1)
    hm.weight.div_(std.view(view))
    hm.bias.copy_((hm.bias - mean) / std)
    return model.eval()


def backward_goldens(md: nn.Module, out: torch.Tensor, act: torch.Tensor, x: torch.Tensor, x32: torch.Tensor,
                     desc: str, fc: str | None = None) -> dict[str, np.ndarray]:
    """The golden arrays (tests/data/goldens/README.md) of one float64 forward: targets = argmax of
    `out`, then one backward of Σ_n out[n, targets[n]] to the retained activation `act` and the
    input `x` (which requires grad; x32 is its float32 original). fc: the GAP → Linear head whose
    weight and bias are stored. Stops (SystemExit) on a near-tie argmax or a degenerate golden."""
    targets = out.argmax(1)
    top2 = out.topk(2, 1).values
    if (top2[:, 0] - top2[:, 1]).min() < 1e-3:
        raise SystemExit("argmax margin too small; change the seed")
    out.gather(1, targets[:, None]).sum().backward()
    g: dict[str, np.ndarray] = {
        "x": x32.numpy().astype(np.float32),
        "outputs": out.detach().numpy().astype(np.float32),
        "targets": targets.numpy().astype(np.int64),
        "activation": act.detach().numpy().astype(np.float32),
        "gradient": act.grad.numpy().astype(np.float32),
        "input_gradient": x.grad.numpy().astype(np.float32),
        "layer_desc": np.array(desc),
    }
    if fc:
        layer = md.get_submodule(fc)
        g["fc_weight"] = layer.weight.detach().numpy().astype(np.float32)
        g["fc_bias"] = layer.bias.detach().numpy().astype(np.float32)
    for k in ("activation", "gradient", "input_gradient"):
        if not np.isfinite(g[k]).all() or not np.abs(g[k]).max() > 0:
            raise SystemExit(f"degenerate golden {k}")
    return g
