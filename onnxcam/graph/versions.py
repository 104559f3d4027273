"""Write a model at the lowest IR and opset it needs, under a cap (other runtimes lag behind onnx).

onnx 1.23's helpers stamp IR 14 / opset 28 whatever a graph uses; onnxruntime-web and -node 1.30
refuse anything above IR 13 / opset 26. `lower_versions`:

1. finds the lowest default-domain opset under which every node keeps the very schema it has now
   (for each node, the `since_version` of its schema at the declared opset), and declares that;
2. where a cap is lower still, converts the model with onnx's version converter, then repeats 1;
3. sets the lowest IR version that carries those opsets, and checks the result with
   onnx.checker — a failure there, or a cap that cannot be met, is an error naming the op.

The input model is never changed; the result says what was done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import onnx
from onnx import helper

from ..errors import OnnxcamError
from ..model import default_opset
from ..storage import PROTOBUF_LIMIT, proto_size

log = logging.getLogger(__name__)

_DEFAULT = ("", "ai.onnx")
# what each runtime loads (checked: onnxruntime-node/-web 1.30.0 refuse IR 14 and opset 27+)
RUNTIME_LIMITS: dict[str, tuple[int, int]] = {"web": (13, 26), "node": (13, 26)}


@dataclass
class Lowered:
    """The lowered model and its versions before and after."""

    model: onnx.ModelProto
    ir_version: int
    opset: int
    was: tuple[int, int]  # (IR, opset) before
    converted: bool  # onnx's version converter ran (a cap below what the graph was written for)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _nodes(g)


def needed_opsets(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Per default-domain op type: (the opset its current schema appeared in, one node using it)."""
    declared = default_opset(model)
    out: dict[str, tuple[int, str]] = {}
    for node in _nodes(model.graph):
        if node.domain not in _DEFAULT or node.op_type in out:
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, declared, "").since_version
        except onnx.defs.SchemaError:
            raise OnnxcamError(f"op {node.op_type} (node {node.name!r}) is not an ONNX op at opset {declared}") from None
        out[node.op_type] = (since, node.name)
    return out


def lowest_opset(model: onnx.ModelProto) -> int:
    """The lowest default-domain opset that leaves every node's schema as it is (at least 7)."""
    return max([7] + [v for v, _ in needed_opsets(model).values()])


def _set_opset(model: onnx.ModelProto, opset: int) -> None:
    for o in model.opset_import:
        if o.domain in _DEFAULT:
            o.version = opset


def _min_ir(model: onnx.ModelProto) -> int:
    return max(4, helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def lower_versions(model: onnx.ModelProto, max_opset: int | None = None, max_ir: int | None = None) -> Lowered:
    """A copy of `model` at the lowest opset and IR it needs, both within the caps (None: no cap)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    was = (int(m.ir_version), default_opset(m))
    need = lowest_opset(m)
    converted = False
    if max_opset is not None and need > max_opset:
        try:
            from onnx import version_converter

            m = version_converter.convert_version(m, max_opset)
            converted = True
        except Exception as exc:  # the converter's own message names the adapter it lacks
            newer = sorted((v, op, n) for op, (v, n) in needed_opsets(model).items() if v > max_opset)
            ops = ", ".join(f"{op} (node {n!r}) needs opset {v}" for v, op, n in newer)
            raise OnnxcamError(
                f"cannot lower the model to opset {max_opset}: {ops}; onnx's version converter failed "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                f"raise the cap (--max-opset {need}) or choose another layer or method"
            ) from None
        need = lowest_opset(m)
        if need > max_opset:
            newer = sorted((v, op, n) for op, (v, n) in needed_opsets(m).items() if v > max_opset)
            raise OnnxcamError(
                f"cannot lower the model to opset {max_opset}: "
                + ", ".join(f"{op} (node {n!r}) needs opset {v}" for v, op, n in newer)
            )
    _set_opset(m, need)
    m.ir_version = _min_ir(m)
    if max_ir is not None and m.ir_version > max_ir:
        raise OnnxcamError(
            f"opset {need} needs IR version {m.ir_version}, above the cap {max_ir}; lower the opset cap "
            f"(--max-opset) as well"
        )
    try:
        if proto_size(m) < PROTOBUF_LIMIT:  # the checker serialises the model
            onnx.checker.check_model(m)
    except onnx.checker.ValidationError as exc:
        raise OnnxcamError(
            f"the model at IR {m.ir_version} / opset {need} does not pass onnx's checker: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from None
    if (m.ir_version, need) != was:
        log.info("versions: IR %d → %d, opset %d → %d", was[0], m.ir_version, was[1], need)
    return Lowered(m, int(m.ir_version), need, was, converted)
