"""Normalising passes, and the one pipeline that runs them before differentiation.

Convention: a pass takes a model (and what it needs to read: shapes, an opset) and returns a
`PassResult`: the resulting model and how many things it changed. A pass never changes its input:
where it changes something it works on a copy; where it changes nothing it returns the input
itself (`changed == 0`).

- `resolve_auto_pad`: auto_pad=SAME_UPPER/SAME_LOWER/VALID (tf2onnx writes them) become explicit
  pads, computed from the input's spatial size, so gradient rules only ever see explicit pads.
- `decompose_attention`: opset 23's fused `Attention` op written as MatMul → Softmax → MatMul, so
  its probabilities are a tensor (the transformer methods read them) and its gradient is the
  rules' of those ops.
- `upgrade_opset`: raise the default-domain opset where a rule needs a newer op (MaxPool's
  gradient scatters with ScatterElements(reduction="add"), opset 16).

`normalize` is the pipeline: the image size fixed (batch symbolic), shapes inferred, pads made
explicit, fused attention decomposed, lost shapes measured, constants folded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import onnx
from onnx import helper, version_converter

from ..errors import OnnxcamError
from ..model import ModelInfo, default_opset, with_input_size
from ..protos import copy_model, node_attr
from ..shapes import Shapes, fill_runtime_shapes, infer_shapes
from .attention import decompose_attention
from .pass_result import PassResult
from .constants import Constants, constant_values, fold_constants

log = logging.getLogger(__name__)

_PADDED_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """Begin/end pads of auto_pad=SAME_*: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _auto_pad_mode(node: onnx.NodeProto) -> str:
    mode = node_attr(node, "auto_pad", b"NOTSET")
    return mode.decode() if isinstance(mode, bytes) else mode


def _explicit_pads(node: onnx.NodeProto, mode: str, shapes: Shapes) -> list[int]:
    """The pads that auto_pad `mode` means for `node` at its input's static size."""
    x = shapes.get(node.input[0])
    if x is None or len(x.shape) < 3 or not all(isinstance(d, int) for d in x.shape[2:]):
        raise OnnxcamError(
            f"node {node.name!r} ({node.op_type}) has auto_pad={mode} and an input of unknown "
            "spatial size; give the image size explicitly"
        )
    spatial = [int(d) for d in x.shape[2:]]
    nd = len(spatial)
    kernel = node_attr(node, "kernel_shape")
    if kernel is None:  # Conv: from the weight
        w = shapes.get(node.input[1])
        kernel = list(w.shape[2:]) if w is not None else None
    if kernel is None:
        raise OnnxcamError(f"node {node.name!r}: cannot resolve auto_pad without kernel_shape")
    if mode == "VALID":
        return [0] * (2 * nd)
    strides = list(node_attr(node, "strides", [1] * nd))
    dil = list(node_attr(node, "dilations", [1] * nd))
    pairs = [same_pads(s, k, st, d, mode == "SAME_UPPER") for s, k, st, d in zip(spatial, kernel, strides, dil)]
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def resolve_auto_pad(model: onnx.ModelProto, shapes: Shapes) -> PassResult:
    """auto_pad on conv/pool nodes replaced by explicit pads (a copy; the input is untouched)."""
    todo = [i for i, n in enumerate(model.graph.node)
            if n.op_type in _PADDED_OPS and _auto_pad_mode(n) not in ("NOTSET", "")]
    if not todo:
        return PassResult(model, 0)
    pads = {i: _explicit_pads(model.graph.node[i], _auto_pad_mode(model.graph.node[i]), shapes) for i in todo}
    m = copy_model(model)
    for i, p in pads.items():
        _set_attr(m.graph.node[i], "auto_pad", "NOTSET")
        _set_attr(m.graph.node[i], "pads", p)
    return PassResult(m, len(todo))


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> PassResult:
    """The model converted to at least opset `minimum` (default domain); the input is untouched."""
    current = default_opset(model)
    if current >= minimum:
        return PassResult(model, 0)
    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises many types (adapters missing, checker errors)
        raise OnnxcamError(
            f"the model's opset {current} must be raised to {minimum} for this gradient, and ONNX's "
            f"version converter failed: {exc}; convert the model to opset {minimum} yourself"
        ) from None
    log.info("converted the model from opset %d to %d", current, minimum)
    return PassResult(converted, minimum - current)


@dataclass
class Normalized:
    """The pipeline's result: a normalised copy of the model, every tensor's shape and the values
    known at rewrite time; `applied`: (pass, how many changes) for each pass that changed something."""

    model: onnx.ModelProto
    shapes: Shapes
    constants: Constants
    applied: list[tuple[str, int]] = field(default_factory=list)


def _initializers_not_inputs(m: onnx.ModelProto) -> None:
    """IR < 4 (opset ≤ 8 era) lists every initializer as a graph input too, and makes every
    initializer an input: the tensors the rewriter adds would be invalid there. The copy `m` gets IR
    4, where initializers are constants, and its inputs lose the initializers (values unchanged)."""
    inits = {t.name for t in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.ir_version = 4


def normalize(
    model: onnx.ModelProto, info: Optional[ModelInfo], hw: Optional[tuple[int, int]] = None, resize: bool = True,
) -> Normalized:
    """The pipeline, on a copy (`model` is never changed): the image input at size `hw` where it is
    dynamic, with a symbolic batch (with `info` and `resize`); shapes inferred; auto_pad made
    explicit; shapes that inference lost measured by a run (with `info`: a model without an image
    input is not run); constants folded."""
    m = with_input_size(model, info, hw) if info is not None and resize else copy_model(model)
    if m.ir_version < 4:
        _initializers_not_inputs(m)
        applied_ir = [("initializers_not_inputs", 1)]
    else:
        applied_ir = []
    shapes = infer_shapes(m)
    applied = applied_ir
    pads = resolve_auto_pad(m, shapes)
    if pads.changed:
        m, shapes = pads.model, infer_shapes(pads.model)
        applied.append(("resolve_auto_pad", pads.changed))
    attention = decompose_attention(m, shapes)
    if attention.changed:
        m, shapes = attention.model, infer_shapes(attention.model)
        applied.append(("decompose_attention", attention.changed))
    if info is not None:
        measured = fill_runtime_shapes(m, info, shapes)
        changed = sum(1 for k, v in measured.items() if shapes.get(k) != v)
        shapes, applied = measured, applied + ([("fill_runtime_shapes", changed)] if changed else [])
    constants = fold_constants(m, shapes, constant_values(m))
    return Normalized(m, shapes, constants, applied)


def with_opset(model: onnx.ModelProto, shapes: Shapes, minimum: int) -> tuple[onnx.ModelProto, Shapes]:
    """`upgrade_opset`, with the shapes inferred again where the model changed."""
    up = upgrade_opset(model, minimum)
    return (up.model, infer_shapes(up.model)) if up.changed else (model, shapes)
