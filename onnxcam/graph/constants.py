"""Values known at rewrite time: initializers, Constant nodes, and the small subgraphs computed
from them (shape arithmetic), so gradient rules can read axes, pads or shapes computed that way.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..model import default_opset
from ..protos import node_attr
from ..types import Dim, TensorInfo

Constants = dict[str, np.ndarray]

FOLD_SIZE_LIMIT = 4096
"""Nodes with a constant input bigger than this (elements) are not evaluated at rewrite time."""
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
_CONSTANT_ATTRS = {
    "value_float": lambda a: np.array(a.f, dtype=np.float32),
    "value_floats": lambda a: np.array(list(a.floats), dtype=np.float32),
    "value_int": lambda a: np.array(a.i, dtype=np.int64),
    "value_ints": lambda a: np.array(list(a.ints), dtype=np.int64),
    "value": lambda a: numpy_helper.to_array(a.t),
}


def constant_values(model: onnx.ModelProto) -> Constants:
    """Initializers and Constant-node outputs as numpy arrays (external data already loaded)."""
    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name in _CONSTANT_ATTRS:
            vals[node.output[0]] = _CONSTANT_ATTRS[node.attribute[0].name](node.attribute[0])
    return vals


def _shape_dims(node: onnx.NodeProto, shapes: dict[str, TensorInfo]) -> list[Dim]:
    """What Shape(x)[start:end] holds: ints where fixed, names or None where not."""
    return list(shapes[node.input[0]].shape[node_attr(node, "start", 0):node_attr(node, "end", None)])


def _evaluate(node: onnx.NodeProto, constants: Constants, opset: int) -> list[np.ndarray] | None:
    """Run one node on constant inputs with onnx's reference evaluator; None where it cannot."""
    ins = [i for i in node.input if i]
    if not ins or not all(i in constants for i in ins) or node.op_type in _RANDOM_OPS:
        return None
    if any(constants[i].size > FOLD_SIZE_LIMIT for i in ins):
        return None
    try:
        feeds = [numpy_helper.from_array(np.asarray(constants[i]), i) for i in ins]
        outs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
        g = helper.make_graph([node], "fold", [], outs, feeds)
        ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))
        return [np.asarray(v) for v in ref.run(None, {})]
    except Exception:  # anything the reference evaluator cannot do stays unknown
        return None


def fold_constants(model: onnx.ModelProto, shapes: dict[str, TensorInfo], constants: Constants) -> Constants:
    """`constants` plus the values of the small subgraphs whose inputs are all known (Shape of a
    static tensor, Shape(x)[k] of a static axis, Gather, Concat, Reshape of constants, ...).
    Returns a new dict; neither the model nor `constants` is changed."""
    known = dict(constants)
    opset = default_opset(model)
    partial: dict[str, list[Dim]] = {}  # Shape outputs with symbolic entries (the batch)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or all(o in known for o in node.output if o):
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            dims = _shape_dims(node, shapes)
            if all(isinstance(d, int) for d in dims):
                known[node.output[0]] = np.asarray(dims, np.int64)
            else:
                partial[node.output[0]] = dims
        elif node.op_type == "Gather" and node.input[0] in partial and node.input[1] in known:
            # Shape(x)[k] where dim k is static, though the batch is not (TorchScript's shuffle)
            idx = known[node.input[1]]
            picked = [partial[node.input[0]][int(i)] for i in idx.reshape(-1)]
            if all(isinstance(d, int) for d in picked):
                known[node.output[0]] = np.asarray(picked, np.int64).reshape(idx.shape)
        else:
            values = _evaluate(node, known, opset)
            known.update(zip([o for o in node.output if o], values or []))
    return known
