"""Ops that only move elements: the gradient moves them back."""

from __future__ import annotations

from typing import Optional

from ...errors import UnsupportedOpError
from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(e: Emitter, node: Node, g: G) -> G:
    return [e.reshape_like(g[0], node.inputs[0])]


@register("Transpose")
def transpose(e: Emitter, node: Node, g: G) -> G:
    r = e.rank(node.inputs[0])
    perm = node.attr("perm") or list(reversed(range(r)))
    inv = [0] * r
    for i, a in enumerate(perm):
        inv[a] = i
    return [e.op("Transpose", [g[0]], perm=inv)]


@register("Concat")
def concat(e: Emitter, node: Node, g: G) -> G:
    axis = int(node.attr("axis"))
    out: list[Optional[str]] = []
    start = 0
    for name, need in zip(node.inputs, node.needs):
        size = e.shape(name)[axis]
        if not isinstance(size, int):
            raise UnsupportedOpError("Concat", node.name, f"input {name!r} has no static size on axis {axis}")
        out.append(e.slice(g[0], axis, start, start + size) if need else None)
        start += size
    return out
