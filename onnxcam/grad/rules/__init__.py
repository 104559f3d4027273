"""Gradient rules, one small registered function per op.

Contract (the whole of it): a rule receives the emitter `e`, a `Node` view of the forward node and
`g`, the list of gradients of the node's outputs (a tensor name, or None where that output has no
gradient). It returns one entry per node input: the name of that input's gradient, or None where
the input needs none (`node.needs[i]` is False) or has none (indices, shapes). Rules registered
with `broadcast=True` return gradients shaped like the output; the engine sums them down to each
input's shape (numpy broadcasting), once, for all such ops. Every other rule returns gradients
already shaped like the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..builder import Emitter, Node

RuleFn = Callable[[Emitter, Node, list[Optional[str]]], list[Optional[str]]]


@dataclass(frozen=True)
class Rule:
    fn: RuleFn
    broadcast: bool
    min_opset: int


RULES: dict[str, Rule] = {}


def register(*op_types: str, broadcast: bool = False, min_opset: int = 7) -> Callable[[RuleFn], RuleFn]:
    """Register `fn` as the gradient of `op_types`; `min_opset`: the opset its emitted ops need
    (7 at least: rules rely on numpy-style broadcasting; 9 for Where, Sign, ConstantOfShape; 10 for
    Slice with inputs; 11 for Equal on floats and Gemm without C; 16 for ScatterElements add)."""

    def deco(fn: RuleFn) -> RuleFn:
        for op in op_types:
            RULES[op] = Rule(fn, broadcast, min_opset)
        return fn

    return deco


from . import conv, elementwise, linear, norm, pool, shape  # noqa: E402,F401  (registration)
