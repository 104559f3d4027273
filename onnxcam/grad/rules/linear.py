"""Gemm and MatMul. Constant operands are transposed in numpy at rewrite time, never per run."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


@register("Gemm", min_opset=11)
def gemm(e: Emitter, node: Node, g: G) -> G:
    """Y = α·A'·B' + β·C, A' = Aᵀ if transA, B' = Bᵀ if transB.

    dA' = α·g·B'ᵀ and dB' = α·A'ᵀ·g, written as single Gemms with the trans flags folded in.
    """
    a, b = node.inputs[0], node.inputs[1]
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    gy = g[0]
    ga = gb = gc = None
    if node.needs[0]:
        if ta == 0:
            ga = e.op("Gemm", [gy, b], alpha=alpha, transA=0, transB=1 - tb)
        else:
            ga = e.op("Gemm", [b, gy], alpha=alpha, transA=tb, transB=1)
    if node.needs[1]:
        if tb == 0:
            gb = e.op("Gemm", [a, gy], alpha=alpha, transA=1 - ta, transB=0)
        else:
            gb = e.op("Gemm", [gy, a], alpha=alpha, transA=1, transB=ta)
    if len(node.inputs) > 2 and node.inputs[2] and node.needs[2]:
        gc = gy if beta == 1.0 else e.op("Mul", [gy, e.scalar(beta, gy)])
        gc = e.unbroadcast(gc, e.shape(node.outputs[0]), e.shape(node.inputs[2]))
    return [ga, gb, gc]


def _swap_last(e: Emitter, t: str) -> str:
    v = e.value(t)
    if v is not None:
        return e.const(np.ascontiguousarray(np.swapaxes(v, -1, -2)), "transposed")
    r = e.rank(t)
    return e.op("Transpose", [t], perm=list(range(r - 2)) + [r - 1, r - 2])


@register("MatMul")
def matmul(e: Emitter, node: Node, g: G) -> G:
    """Y = A·B (numpy semantics): dA = g·Bᵀ, dB = Aᵀ·g, summed over broadcast batch axes."""
    a, b = node.inputs
    ra, rb = e.rank(a), e.rank(b)
    ys = e.shape(node.outputs[0])
    if ra < 2:
        raise NotImplementedError("MatMul with a 1-D first operand")
    ga = gb = None
    if rb == 1:  # y[..., m] = Σ_k a[..., m, k] b[k]
        if node.needs[0]:
            ga = e.op("Mul", [e.unsqueeze(g[0], [len(ys)]), b])
        if node.needs[1]:
            gb = e.reduce_sum(e.op("Mul", [e.unsqueeze(g[0], [len(ys)]), a]), list(range(ra - 1)), keepdims=False)
        return [ga, gb]
    if node.needs[0]:
        ga = e.op("MatMul", [g[0], _swap_last(e, b)])
        ga = e.unbroadcast(ga, tuple(ys[:-2]) + tuple(e.shape(a)[-2:]), e.shape(a))
    if node.needs[1]:
        gb = e.op("MatMul", [_swap_last(e, a), g[0]])
        gb = e.unbroadcast(gb, tuple(ys[:-2]) + tuple(e.shape(b)[-2:]), e.shape(b))
    return [ga, gb]
