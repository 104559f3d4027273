"""Normalisation layers in inference mode."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import UnsupportedOpError
from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


@register("BatchNormalization")
def batch_norm(e: Emitter, node: Node, g: G) -> G:
    """Inference BN is per-channel affine: dx = g · scale / sqrt(var + ε) (folded in numpy)."""
    if int(node.attr("training_mode", 0)):
        raise UnsupportedOpError("BatchNormalization", node.name, "training_mode=1")
    x, scale, _, _, var = node.inputs[:5]
    eps = float(node.attr("epsilon", 1e-5))
    rank = e.rank(x)
    sv, vv = e.value(scale), e.value(var)
    shape = [-1] + [1] * (rank - 2)
    if sv is not None and vv is not None:
        factor = (sv.astype(np.float64) / np.sqrt(vv.astype(np.float64) + eps)).astype(e.np_dtype(x))
        f = e.const(factor.reshape(shape), "bn_factor")
    else:
        f = e.op("Div", [scale, e.op("Sqrt", [e.op("Add", [var, e.scalar(eps, var)])])])
        f = e.op("Reshape", [f, e.ints(shape)])
    return [e.op("Mul", [g[0], f])]


def _normalized_grad(e: Emitter, x: str, gamma: str, axes: list[int], eps: float, g: str) -> str:
    """For y = x̂·γ + β, x̂ = (x − μ)/σ over `axes` (μ, σ recomputed here):
    dx = (ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂)) / σ with ĝ = g·γ."""
    mu = e.reduce("ReduceMean", x, axes, True)
    xc = e.op("Sub", [x, mu])
    sigma = e.op("Sqrt", [e.op("Add", [e.reduce("ReduceMean", e.op("Mul", [xc, xc]), axes, True), e.scalar(eps, x)])])
    xhat = e.op("Div", [xc, sigma])
    gh = e.op("Mul", [g, gamma])
    t = e.op("Sub", [gh, e.reduce("ReduceMean", gh, axes, True)])
    t = e.op("Sub", [t, e.op("Mul", [xhat, e.reduce("ReduceMean", e.op("Mul", [gh, xhat]), axes, True)])])
    return e.op("Div", [t, sigma])


@register("LayerNormalization")
def layer_norm(e: Emitter, node: Node, g: G) -> G:
    """LayerNorm over axes [axis, r), γ and β constants of those axes' shape."""
    x, scale = node.inputs[0], node.inputs[1]
    r = e.rank(x)
    axes = list(range(int(node.attr("axis", -1)) % r, r))
    return [_normalized_grad(e, x, scale, axes, float(node.attr("epsilon", 1e-5)), g[0])]


@register("InstanceNormalization")
def instance_norm(e: Emitter, node: Node, g: G) -> G:
    """Per-sample, per-channel normalisation over the spatial axes, γ broadcast over channels."""
    x, scale = node.inputs[0], node.inputs[1]
    r = e.rank(x)
    s = e.value(scale)
    shape = [-1] + [1] * (r - 2)
    gamma = e.const(s.reshape(shape), "in_scale") if s is not None else e.op("Reshape", [scale, e.ints(shape)])
    return [_normalized_grad(e, x, gamma, list(range(2, r)), float(node.attr("epsilon", 1e-5)), g[0])]
