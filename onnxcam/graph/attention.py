"""Opset 23's fused `Attention` op written out as the ops it stands for (a normalising pass).

Y = Softmax(Q Kᵀ · scale [+ mask]) V, scale = 1/√d by default (ONNX operator spec, Attention-23):
written as MatMul → Softmax → MatMul, so the attention probabilities are a tensor of the graph
(the transformer methods read them) and every op has a gradient rule.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxcamError
from ..protos import copy_model, node_attr
from ..shapes import Shapes
from .pass_result import PassResult

_UNSUPPORTED = ("is_causal", "softcap")


def decompose_attention(model: onnx.ModelProto, shapes: Shapes) -> PassResult:
    """Every default-domain `Attention` node replaced by its plain ops. 3-D inputs (N, S, heads·d)
    are split into heads (q_num_heads) and merged back. Refused, naming the node: causal masks,
    softcap, grouped key/value heads, past key/values and the optional outputs."""
    nodes = [n for n in model.graph.node if _is_attention(n)]
    if not nodes:
        return PassResult(model, 0)
    m = copy_model(model)
    out_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for node in m.graph.node:
        out_nodes.extend(_Writer(node, shapes, inits).decompose() if _is_attention(node) else [node])
    del m.graph.node[:]
    m.graph.node.extend(out_nodes)
    m.graph.initializer.extend(inits)
    return PassResult(m, len(nodes))


def _is_attention(node: onnx.NodeProto) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx")


class _Writer:
    """Writes the plain ops of one Attention node, naming every new tensor after the node."""

    def __init__(self, node: onnx.NodeProto, shapes: Shapes, inits: list[onnx.TensorProto]) -> None:
        self.node, self.shapes, self.inits = node, shapes, inits
        self.name = node.name or node.output[0]
        self.made: list[onnx.NodeProto] = []
        self.count = 0
        self.np_type = helper.tensor_dtype_to_np_dtype(shapes[node.input[0]].elem_type)

    def refuse(self, why: str) -> OnnxcamError:
        return OnnxcamError(f"Attention node {self.name!r}: {why} is not supported; export at opset 18 "
                            "(torch.onnx.export(..., opset_version=18)) to get attention as plain ops")

    def tensor(self, hint: str) -> str:
        self.count += 1
        return f"{self.name}/{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.tensor(hint)
        self.made.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray, hint: str) -> str:
        out = self.tensor(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), out))
        return out

    def check_supported(self) -> None:
        node = self.node
        for a in _UNSUPPORTED:
            if node_attr(node, a, 0):
                raise self.refuse(a)
        if len(node.input) > 4 and any(node.input[4:]):
            raise self.refuse("past key/value")
        if len(node.output) > 1 and any(node.output[1:]):
            raise self.refuse("an optional output (present key/value, qk_matmul_output)")
        heads, kv_heads = node_attr(node, "q_num_heads"), node_attr(node, "kv_num_heads")
        if heads and kv_heads and heads != kv_heads:
            raise self.refuse("grouped key/value heads (kv_num_heads ≠ q_num_heads)")

    def to_heads(self, x: str, heads: int) -> str:
        """(N, S, heads·d) → (N, heads, S, d)."""
        split = self.op("Reshape", [x, self.const(np.array([0, 0, heads, -1], np.int64), "heads")], "split")
        return self.op("Transpose", [split], "to_heads", perm=[0, 2, 1, 3])

    def head_inputs(self) -> tuple[str, str, str, int]:
        """Q, K, V as (N, heads, S, d) and the head size d."""
        q, k, v = self.node.input[:3]
        qs = self.shapes[q].shape
        if len(qs) == 3:
            heads = node_attr(self.node, "q_num_heads")
            if not heads:
                raise self.refuse("3-D inputs without q_num_heads")
            d = qs[2] // heads if isinstance(qs[2], int) else None
            q, k, v = self.to_heads(q, heads), self.to_heads(k, heads), self.to_heads(v, heads)
        else:
            d = qs[3]
            if self.shapes[k].shape[1] != qs[1]:
                raise self.refuse("grouped key/value heads")
        if not isinstance(d, int):
            raise self.refuse("a head size that is not static")
        return q, k, v, d

    def probabilities(self, q: str, k: str, d: int) -> str:
        """Softmax(Q Kᵀ · scale [+ mask]) over the keys."""
        scale = node_attr(self.node, "scale") or 1.0 / float(np.sqrt(d))
        kt = self.op("Transpose", [k], "kT", perm=[0, 1, 3, 2])
        logits = self.op("Mul", [self.op("MatMul", [q, kt], "qk"), self.const(np.array(scale, self.np_type), "scale")],
                         "scaled")
        mask = self.node.input[3] if len(self.node.input) > 3 and self.node.input[3] else None
        if mask is not None and self.shapes[mask].elem_type == onnx.TensorProto.BOOL:
            logits = self.op("Where", [mask, logits, self.const(np.array(-np.inf, self.np_type), "neg_inf")], "masked")
        elif mask is not None:
            logits = self.op("Add", [logits, mask], "masked")
        return self.op("Softmax", [logits], "probs", axis=-1)

    def decompose(self) -> list[onnx.NodeProto]:
        self.check_supported()
        q, k, v, d = self.head_inputs()
        probs = self.probabilities(q, k, d)
        y = self.node.output[0]
        if len(self.shapes[self.node.input[0]].shape) == 3:
            merged = self.op("Transpose", [self.op("MatMul", [probs, v], "pv")], "from_heads", perm=[0, 2, 1, 3])
            shape = self.const(np.array([0, 0, -1], np.int64), "merge")
            self.made.append(helper.make_node("Reshape", [merged, shape], [y], name=self.tensor("out")))
        else:
            self.made.append(helper.make_node("MatMul", [probs, v], [y], name=self.tensor("pv")))
        return self.made
