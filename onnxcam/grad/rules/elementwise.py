"""Element-wise ops and activations: ∂y/∂x is a pointwise factor.

Conventions at kinks follow PyTorch's autograd (ReLU: 0 at x = 0; Clip/ReLU6: 0 at the bounds;
HardSwish: x/3 + 1/2 on [-3, 3]), so maps compare with pytorch-grad-cam.
"""

from __future__ import annotations

import math
from typing import Optional

from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


def _only(node: Node, g: Optional[str]) -> G:
    return [g if node.needs[0] else None] + [None] * (len(node.inputs) - 1)


@register("Identity", "Dropout")
def identity(e: Emitter, node: Node, g: G) -> G:
    return _only(node, g[0])


@register("Cast")
def cast(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Cast", [g[0]], to=e.elem_type(node.inputs[0]))]


@register("CastLike")
def cast_like(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Cast", [g[0]], to=e.elem_type(node.inputs[0])) if node.needs[0] else None, None]


@register("Neg")
def neg(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Neg", [g[0]])]


@register("Relu", min_opset=9)
def relu(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    return [e.mask(e.op("Greater", [y, e.scalar(0, y)]), g[0])]


@register("LeakyRelu", min_opset=9)
def leaky_relu(e: Emitter, node: Node, g: G) -> G:
    x, alpha = node.inputs[0], node.attr("alpha", 0.01)
    neg_side = e.op("Mul", [g[0], e.scalar(alpha, x)])
    return [e.op("Where", [e.op("Greater", [x, e.scalar(0, x)]), g[0], neg_side])]


@register("PRelu", broadcast=True, min_opset=9)
def prelu(e: Emitter, node: Node, g: G) -> G:
    x, slope = node.inputs
    pos = e.op("Greater", [x, e.scalar(0, x)])
    gx = e.op("Where", [pos, g[0], e.op("Mul", [g[0], slope])]) if node.needs[0] else None
    gs = e.op("Where", [pos, e.scalar(0, x), e.op("Mul", [g[0], x])]) if node.needs[1] else None
    return [gx, gs]


@register("Elu", min_opset=9)
def elu(e: Emitter, node: Node, g: G) -> G:
    x, y = node.inputs[0], node.outputs[0]
    neg_side = e.op("Mul", [g[0], e.op("Add", [y, e.scalar(node.attr("alpha", 1.0), y)])])
    return [e.op("Where", [e.op("Greater", [x, e.scalar(0, x)]), g[0], neg_side])]


@register("Clip", min_opset=9)
def clip(e: Emitter, node: Node, g: G) -> G:
    x = node.inputs[0]
    if e.opset >= 11:
        lo = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] else None
        hi = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    else:
        lo_v, hi_v = node.attr("min"), node.attr("max")
        lo = e.scalar(lo_v, x) if lo_v is not None else None
        hi = e.scalar(hi_v, x) if hi_v is not None else None
    conds = []
    if lo is not None:
        conds.append(e.op("Greater", [x, lo]))
    if hi is not None:
        conds.append(e.op("Less", [x, hi]))
    if not conds:
        return _only(node, g[0])
    cond = conds[0] if len(conds) == 1 else e.op("And", conds)
    return _only(node, e.mask(cond, g[0]))


@register("Sigmoid")
def sigmoid(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    return [e.op("Mul", [g[0], e.op("Mul", [y, e.op("Sub", [e.scalar(1, y), y])])])]


@register("HardSigmoid", min_opset=9)
def hard_sigmoid(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    inside = e.op("And", [e.op("Greater", [y, e.scalar(0, y)]), e.op("Less", [y, e.scalar(1, y)])])
    return [e.mask(inside, e.op("Mul", [g[0], e.scalar(node.attr("alpha", 0.2), y)]))]


@register("HardSwish")
def hard_swish(e: Emitter, node: Node, g: G) -> G:
    x = node.inputs[0]
    d = e.op("Add", [e.op("Mul", [x, e.scalar(1 / 3, x)]), e.scalar(0.5, x)])
    d = e.op("Where", [e.op("Greater", [x, e.scalar(3, x)]), e.scalar(1, x), d])
    d = e.op("Where", [e.op("Less", [x, e.scalar(-3, x)]), e.scalar(0, x), d])
    return [e.op("Mul", [g[0], d])]


@register("Tanh")
def tanh(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    return [e.op("Mul", [g[0], e.op("Sub", [e.scalar(1, y), e.op("Mul", [y, y])])])]


@register("Exp")
def exp(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Mul", [g[0], node.outputs[0]])]


@register("Log")
def log(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Div", [g[0], node.inputs[0]])]


@register("Sqrt")
def sqrt(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    return [e.op("Div", [e.op("Mul", [g[0], e.scalar(0.5, y)]), y])]


@register("Reciprocal")
def reciprocal(e: Emitter, node: Node, g: G) -> G:
    y = node.outputs[0]
    return [e.op("Neg", [e.op("Mul", [g[0], e.op("Mul", [y, y])])])]


@register("Abs", min_opset=9)
def abs_(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Mul", [g[0], e.op("Sign", [node.inputs[0]])])]


@register("Softplus")
def softplus(e: Emitter, node: Node, g: G) -> G:
    return [e.op("Mul", [g[0], e.op("Sigmoid", [node.inputs[0]])])]


@register("Erf")
def erf(e: Emitter, node: Node, g: G) -> G:
    x = node.inputs[0]
    d = e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])
    return [e.op("Mul", [g[0], e.op("Mul", [d, e.scalar(2 / math.sqrt(math.pi), x)])])]


@register("Gelu")
def gelu(e: Emitter, node: Node, g: G) -> G:
    if node.attr("approximate", "none") != "none":
        raise NotImplementedError("Gelu with approximate='tanh'")
    x = node.inputs[0]
    cdf = e.op("Mul", [e.op("Add", [e.op("Erf", [e.op("Mul", [x, e.scalar(1 / math.sqrt(2), x)])]), e.scalar(1, x)]), e.scalar(0.5, x)])
    pdf = e.op("Mul", [e.op("Exp", [e.op("Mul", [e.op("Mul", [x, x]), e.scalar(-0.5, x)])]), e.scalar(1 / math.sqrt(2 * math.pi), x)])
    return [e.op("Mul", [g[0], e.op("Add", [cdf, e.op("Mul", [x, pdf])])])]


@register("Add", "Sum", broadcast=True)
def add(e: Emitter, node: Node, g: G) -> G:
    return [g[0] if n else None for n in node.needs]


@register("Mean", broadcast=True)
def mean(e: Emitter, node: Node, g: G) -> G:
    share = e.op("Mul", [g[0], e.scalar(1 / len(node.inputs), g[0])])
    return [share if n else None for n in node.needs]


@register("Sub", broadcast=True)
def sub(e: Emitter, node: Node, g: G) -> G:
    return [g[0] if node.needs[0] else None, e.op("Neg", [g[0]]) if node.needs[1] else None]


@register("Mul", broadcast=True)
def mul(e: Emitter, node: Node, g: G) -> G:
    a, b = node.inputs
    return [
        e.op("Mul", [g[0], b]) if node.needs[0] else None,
        e.op("Mul", [g[0], a]) if node.needs[1] else None,
    ]


@register("Div", broadcast=True)
def div(e: Emitter, node: Node, g: G) -> G:
    b, y = node.inputs[1], node.outputs[0]
    return [
        e.op("Div", [g[0], b]) if node.needs[0] else None,
        e.op("Neg", [e.op("Div", [e.op("Mul", [g[0], y]), b])]) if node.needs[1] else None,
    ]


@register("Pow", broadcast=True)
def pow_(e: Emitter, node: Node, g: G) -> G:
    a, b = node.inputs
    y = node.outputs[0]
    ga = gb = None
    if node.needs[0]:
        p = e.value(b)
        if p is not None and p.size == 1:
            pv = float(p.reshape(()))
            ga = e.op("Mul", [g[0], e.op("Mul", [e.op("Pow", [a, e.scalar(pv - 1, a)]), e.scalar(pv, a)])])
        else:
            ga = e.op("Mul", [g[0], e.op("Mul", [b, e.op("Pow", [a, e.op("Sub", [b, e.scalar(1, b)])])])])
    if node.needs[1]:
        gb = e.op("Mul", [g[0], e.op("Mul", [y, e.op("Log", [a])])])
    return [ga, gb]


@register("Max", "Min", broadcast=True, min_opset=11)
def max_min(e: Emitter, node: Node, g: G) -> G:
    """Ties split evenly between the inputs that reach the extreme (as TensorFlow does)."""
    y = node.outputs[0]
    hits = [e.op("Cast", [e.op("Equal", [i, y])], to=e.elem_type(y)) for i in node.inputs]
    count = hits[0] if len(hits) == 1 else e.op("Sum", hits)
    share = e.op("Div", [g[0], count])
    return [e.op("Mul", [share, h]) if n else None for h, n in zip(hits, node.needs)]


@register("Where", broadcast=True, min_opset=9)
def where(e: Emitter, node: Node, g: G) -> G:
    c = node.inputs[0]
    zero = e.scalar(0, g[0])
    return [
        None,
        e.op("Where", [c, g[0], zero]) if node.needs[1] else None,
        e.op("Where", [c, zero, g[0]]) if node.needs[2] else None,
    ]


def _softmax_axes(e: Emitter, node: Node) -> list[int]:
    r = e.rank(node.inputs[0])
    axis = node.attr("axis", -1 if e.opset >= 13 else 1)
    axis = axis % r
    return [axis] if e.opset >= 13 else list(range(axis, r))  # before 13: coerced to 2-D


@register("Softmax")
def softmax(e: Emitter, node: Node, g: G) -> G:
    """dx = y ⊙ (g − Σ_axis g ⊙ y)."""
    y = node.outputs[0]
    s = e.reduce_sum(e.op("Mul", [g[0], y]), _softmax_axes(e, node), keepdims=True)
    return [e.op("Mul", [y, e.op("Sub", [g[0], s])])]


@register("LogSoftmax")
def log_softmax(e: Emitter, node: Node, g: G) -> G:
    """dx = g − softmax(x) ⊙ Σ_axis g."""
    y = node.outputs[0]
    s = e.reduce_sum(g[0], _softmax_axes(e, node), keepdims=True)
    return [e.op("Sub", [g[0], e.op("Mul", [e.op("Exp", [y]), s])])]
