"""The reverse-mode driver.

`append_gradient` walks only the nodes between the differentiated tensor `x` and the output `y`,
in reverse topological order; for each it sums the gradient contributions of its outputs (fan-out),
asks the op's registered rule for its inputs' gradients, sums broadcast gradients down to each
input's shape, and finally returns the name of ∂(⟨seed, y⟩)/∂x.

Errors: an op with no registered rule, or a rule that refuses the node (it raises
UnsupportedOpError, or NotImplementedError for a case it does not handle, such as a tensor of
unknown shape), is UnsupportedOpError naming the op, the node and what to do instead. Anything
else a rule raises is a bug in that rule: GradientRuleError naming the op and the node, with the
original exception chained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import GradientRuleError, OnnxcamError, UnsupportedOpError
from ..graph.index import GraphIndex
from ..types import FLOAT_TYPES, TensorInfo
from .builder import Emitter, Node
from .rules import RULES, Rule


def _guided_relu(e: Emitter, node: Node, g: list) -> list:
    """Guided backpropagation's ReLU: 1[y > 0]·1[g > 0]·g, written Where(y > 0, Relu(g), 0) — one
    comparison fewer, and onnxruntime fuses the Relu into the Conv that computed g."""
    y = node.outputs[0]
    return [e.mask(e.op("Greater", [y, e.scalar(0, y)]), e.op("Relu", [g[0]], "guided"))]


GUIDED_RELU = Rule(_guided_relu, broadcast=False, min_opset=9)


@dataclass
class GradientResult:
    """What `append_gradient` added: nodes, initializers and the gradient tensor's name."""

    grad: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    path_ops: list[str] = field(default_factory=list)
    also: dict[str, str] = field(default_factory=dict)  # tensor → its gradient's name


def path_nodes(graph: onnx.GraphProto, x: str, ys: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes that depend on the values of `x` and feed one of `ys`, in graph (topological) order;
    and the set of tensors that depend on them (shape arithmetic carries no gradient)."""
    return GraphIndex(graph).path(x, ys, values_only=True)


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def missing_rules(graph: onnx.GraphProto, x: str, y: str, shapes: dict[str, TensorInfo]) -> list[tuple[str, str]]:
    """(op type, node name) of every node on the path that carries a gradient (has a float
    output) and has no rule. Shape arithmetic (Shape, Gather on shapes, ...) carries none."""
    nodes, _ = path_nodes(graph, x, [y])
    floats = lambda n: any(shapes.get(o) is not None and shapes[o].elem_type in FLOAT_TYPES for o in n.output)
    return [
        (n.op_type, n.name) for n in nodes
        if (n.op_type not in RULES or not _is_default_domain(n)) and floats(n)
    ]


def required_opset(graph: onnx.GraphProto, x: str, y: str) -> int:
    """The lowest default-domain opset that the rules on the path need."""
    nodes, _ = path_nodes(graph, x, [y])
    return max([RULES[n.op_type].min_opset for n in nodes if n.op_type in RULES] + [1])


def rule_for(proto: onnx.NodeProto, guided: bool = False) -> Rule:
    """The registered rule of a node's op (guided backpropagation's for Relu when `guided`);
    UnsupportedOpError where there is none."""
    rule = RULES.get(proto.op_type) if _is_default_domain(proto) else None
    if guided and proto.op_type == "Relu":
        rule = GUIDED_RELU
    if rule is None:
        raise UnsupportedOpError(proto.op_type if not proto.domain else f"{proto.domain}.{proto.op_type}", proto.name)
    return rule


def apply_rule(rule: Rule, e: Emitter, node: Node, g_out: list) -> list:
    """Run one rule. Its refusals (UnsupportedOpError, NotImplementedError) are UnsupportedOpError;
    any other exception is a bug in the rule: GradientRuleError, the cause chained."""
    try:
        return rule.fn(e, node, g_out)
    except UnsupportedOpError:
        raise
    except NotImplementedError as exc:
        raise UnsupportedOpError(node.op_type, node.name, str(exc)) from None
    except Exception as exc:
        raise GradientRuleError(node.op_type, node.name, exc) from exc


class _Cotangents:
    """The gradient contributions collected for each tensor, summed (fan-in) when read."""

    def __init__(self, e: Emitter, y: str, seed: str) -> None:
        self.e = e
        self.parts: dict[str, list[str]] = {y: [seed]}

    def add(self, name: str, g: str) -> None:
        self.parts.setdefault(name, []).append(g)

    def total(self, name: str) -> str | None:
        parts = self.parts.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            self.parts[name] = [self.e.op("Sum", parts, "fanin")]
        return self.parts[name][0]

    def final(self, x: str, y: str) -> str:
        """The total gradient of `x`, in `x`'s own type; an error if none reaches it."""
        gx = self.total(x)
        if gx is None:
            raise OnnxcamError(f"no gradient reaches tensor {x!r} from output {y!r}")
        return self.e.in_type_of(gx, x)


def _backward(proto: onnx.NodeProto, rule: Rule, e: Emitter, grads: _Cotangents, g_out: list,
              active: set[str], shapes: dict[str, TensorInfo]) -> None:
    """One node's backward step: its inputs' gradient contributions added to `grads`."""
    needs = [
        bool(i) and i in active and shapes.get(i, TensorInfo(i, (), 0)).elem_type in FLOAT_TYPES
        for i in proto.input
    ]
    g_in = apply_rule(rule, e, Node(proto, needs), g_out)
    for i, (name, g) in enumerate(zip(proto.input, g_in)):
        if g is None or not needs[i]:
            continue
        if rule.broadcast:
            g = e.unbroadcast(g, e.shape(proto.output[0]), e.shape(name))
        grads.add(name, g)


def append_gradient(
    graph: onnx.GraphProto,
    shapes: dict[str, TensorInfo],
    constants: dict[str, np.ndarray],
    opset: int,
    x: str,
    y: str,
    seed: str,
    prefix: str = "onnxcam_grad/",
    also: tuple[str, ...] | list[str] = (),
    guided: bool = False,
    compute_type: int | None = None,
) -> GradientResult:
    """Emit ∂⟨seed, y⟩/∂x as ONNX nodes (returned, not yet added to `graph`).

    also: more tensors between x and y whose gradients to return (FullGrad's bias taps).
    guided: guided backpropagation (Springenberg et al., 2015): Relu passes only positive
    gradients where its input is positive (pytorch-grad-cam swaps only ReLU, so do we).
    compute_type: None emits each gradient in its tensor's own type; TensorProto.FLOAT emits a
    float16/bfloat16 model's gradient in float32, cast back to each tensor's type (see Emitter).
    """
    nodes, active = path_nodes(graph, x, [y])
    if x != y and not nodes:
        raise OnnxcamError(f"output {y!r} does not depend on tensor {x!r}: choose a layer that feeds it")
    e = Emitter(shapes, constants, opset, prefix, compute_type)
    grads = _Cotangents(e, y, seed)
    carries = lambda i: bool(i) and i in active and shapes.get(i, TensorInfo(i, (), 0)).elem_type in FLOAT_TYPES  # noqa: E731
    for proto in reversed(nodes):
        if not any(carries(i) for i in proto.input):
            continue  # only shapes or indices depend on x here (ConstantOfShape of x's shape): no gradient
        g_out = [grads.total(o) if o else None for o in proto.output]
        if any(g is not None for g in g_out):
            _backward(proto, rule_for(proto, guided), e, grads, g_out, active, shapes)
    gx = grads.final(x, y)
    also_grads = {t: grads.final(t, y) for t in also}
    return GradientResult(gx, e.nodes, e.initializers, [n.op_type for n in nodes], also_grads)
