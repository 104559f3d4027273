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
