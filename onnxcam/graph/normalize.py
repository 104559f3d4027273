"""Normalising passes run on a copy of the model before differentiation.

- `resolve_auto_pad`: auto_pad=SAME_UPPER/SAME_LOWER/VALID (tf2onnx writes them) become explicit
  pads, computed from the input's spatial size, so gradient rules only ever see explicit pads.
- `upgrade_opset`: raise the default-domain opset where a rule needs a newer op (MaxPool's
  gradient scatters with ScatterElements(reduction="add"), opset 16).
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from ..errors import OnnxcamError
from ..model import TensorInfo, default_opset

log = logging.getLogger(__name__)

_PADDED_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


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


def resolve_auto_pad(model: onnx.ModelProto, shapes: dict[str, TensorInfo]) -> int:
    """Replace auto_pad on conv/pool nodes by explicit pads; return how many nodes changed."""
    changed = 0
    for node in model.graph.node:
        if node.op_type not in _PADDED_OPS:
            continue
        mode = _attr(node, "auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode in ("NOTSET", ""):
            continue
        x = shapes.get(node.input[0])
        if x is None or len(x.shape) < 3 or not all(isinstance(d, int) for d in x.shape[2:]):
            raise OnnxcamError(
                f"node {node.name!r} ({node.op_type}) has auto_pad={mode} and an input of unknown "
                "spatial size; give the image size explicitly"
            )
        spatial = [int(d) for d in x.shape[2:]]
        nd = len(spatial)
        kernel = _attr(node, "kernel_shape")
        if kernel is None:  # Conv: from the weight
            w = shapes.get(node.input[1])
            kernel = list(w.shape[2:]) if w is not None else None
        if kernel is None:
            raise OnnxcamError(f"node {node.name!r}: cannot resolve auto_pad without kernel_shape")
        strides = list(_attr(node, "strides", [1] * nd))
        dil = list(_attr(node, "dilations", [1] * nd))
        if mode == "VALID":
            pads = [0] * (2 * nd)
        else:
            pairs = [same_pads(s, k, st, d, mode == "SAME_UPPER") for s, k, st, d in zip(spatial, kernel, strides, dil)]
            pads = [p[0] for p in pairs] + [p[1] for p in pairs]
        _set_attr(node, "auto_pad", "NOTSET")
        _set_attr(node, "pads", pads)
        changed += 1
    return changed


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """Return the model converted to at least `minimum` (default domain); the input is untouched."""
    current = default_opset(model)
    if current >= minimum:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise OnnxcamError(
            f"the model's opset {current} must be raised to {minimum} for this gradient, and ONNX's "
            f"version converter failed: {exc}; convert the model to opset {minimum} yourself"
        ) from None
    log.info("converted the model from opset %d to %d", current, minimum)
    return converted


def fold_constants(model: onnx.ModelProto, shapes: dict[str, TensorInfo], constants: dict) -> int:
    """Evaluate, at rewrite time, small subgraphs whose inputs are all known (shape arithmetic:
    Shape of a static tensor, Gather, Concat, Reshape of constants, ...), adding their values to
    `constants` so rules can read axes, pads or shapes computed that way. The graph is unchanged.
    """
    import numpy as np
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    opset = default_opset(model)
    added = 0
    partial: dict[str, list] = {}  # Shape outputs with symbolic entries (the batch)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or all(o in constants for o in node.output if o):
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            dims = shapes[node.input[0]].shape
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            dims = list(dims[start:end])
            if all(isinstance(d, int) for d in dims):
                constants[node.output[0]] = np.asarray(dims, np.int64)
                added += 1
            else:
                partial[node.output[0]] = dims
            continue
        if node.op_type == "Gather" and node.input[0] in partial and node.input[1] in constants:
            # Shape(x)[k] where dim k is static, though the batch is not (TorchScript's shuffle)
            dims, idx = partial[node.input[0]], constants[node.input[1]]
            picked = [dims[int(i)] for i in idx.reshape(-1)]
            if all(isinstance(d, int) for d in picked):
                constants[node.output[0]] = np.asarray(picked, np.int64).reshape(idx.shape)
                added += 1
            continue
        ins = [i for i in node.input if i]
        if not ins or not all(i in constants for i in ins) or node.op_type in ("RandomNormal", "RandomUniform"):
            continue
        if any(constants[i].size > 4096 for i in ins):
            continue
        try:
            feeds = [numpy_helper.from_array(np.asarray(constants[i]), i) for i in ins]
            g = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output if o], feeds)
            ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))
            outs = ref.run(None, {})
        except Exception:  # anything the reference evaluator cannot do stays unknown
            continue
        for o, v in zip([o for o in node.output if o], outs):
            constants[o] = np.asarray(v)
        added += 1
    return added
