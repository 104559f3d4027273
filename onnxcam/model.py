"""Loading an ONNX model and reading its interface.

`load_model` reads a file (external data included) and fails with the reason; `inspect_model`
reports what onnxcam needs to know about the model's interface: opset, inputs, outputs, the image
input, its layout (NCHW or NHWC, propagated from the channels-first ops: see layouts.py) and size;
`with_input_size` gives a copy at a concrete image size with a symbolic batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from .errors import ModelLoadError, UsageError
from .layouts import tensor_layouts
from .limits import check_text_value, regular_file_size
from .protos import copy_model
from .types import BATCH, FLOAT_TYPES, Dim, TensorInfo, tensor_info

log = logging.getLogger(__name__)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data; raise ModelLoadError with the reason.

    The file must be a regular file (a FIFO or a device would block or stream forever); external
    data must lie inside the model's folder (no absolute path, no '..', no link leading out:
    CVE-2024-27318-style traversal is refused whatever the onnx version) and within its file;
    the graph must be acyclic."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ModelLoadError(f"model file not found: {p}")
    regular_file_size(p, "model file", ModelLoadError)
    try:
        model = onnx.load(p, load_external_data=False)
    except Exception as exc:  # protobuf errors come in many types
        raise ModelLoadError(f"cannot read {p} as an ONNX model: {exc}") from None
    if not model.graph.node:
        raise ModelLoadError(f"{p} holds no graph nodes; is it an ONNX model?")
    for entry in model.metadata_props:  # refused before any copy of the model multiplies it
        check_text_value(entry.value, f"{p}: metadata {entry.key!r}", error=ModelLoadError)
    base = os.path.dirname(os.path.abspath(p))
    if any(t.data_location == TensorProto.EXTERNAL for t in _all_tensors(model)):
        for t in _all_tensors(model):
            if t.data_location == TensorProto.EXTERNAL:
                _check_external(t, base, p)
        try:
            load_external_data_for_model(model, base)
        except Exception as exc:  # noqa: BLE001  (onnx raises several types here)
            raise ModelLoadError(f"cannot read the external data of {p}: {exc}") from None
    _check_acyclic(model.graph, p)
    return model


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t


def _check_external(t: onnx.TensorProto, base: str, model_path: str) -> None:
    """External data of tensor `t` must be a file inside the model's folder, links resolved."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    bad = (f"{model_path}: tensor {t.name!r} keeps its data at {loc!r}, outside the model's folder; "
           f"onnxcam reads external data only from files beside the model")
    if not loc or os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
        raise ModelLoadError(bad)
    real_base = os.path.realpath(base)
    target = os.path.realpath(os.path.join(base, loc))
    if not target.startswith(real_base + os.sep):
        raise ModelLoadError(bad)
    size = regular_file_size(target, f"external data of tensor {t.name!r} ({loc})", ModelLoadError)
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelLoadError(f"{model_path}: tensor {t.name!r} has a malformed external-data offset/length") from None
    if offset < 0 or (length is not None and (length < 0 or offset + length > size)):
        raise ModelLoadError(f"{model_path}: tensor {t.name!r} reads bytes {offset}..{offset + (length or 0)} of "
                             f"{loc}, which has {size}")


def _check_acyclic(graph: onnx.GraphProto, model_path: str) -> None:
    """ModelLoadError naming a node when the graph's nodes feed each other in a cycle."""
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = [{producers[x] for x in n.input if x in producers} for n in graph.node]
    users: list[list[int]] = [[] for _ in graph.node]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    missing = [len(d) for d in deps]
    ready = [i for i, m in enumerate(missing) if m == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                ready.append(u)
    if seen < len(graph.node):
        stuck = next(graph.node[i] for i, m in enumerate(missing) if m > 0)
        raise ModelLoadError(f"{model_path} is not a valid ONNX model: its graph has a cycle (through node "
                             f"{stuck.name or stuck.op_type!r}, {stuck.op_type})")


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelLoadError("the model imports no ai.onnx opset")


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Inputs that are fed at run time (initializers listed as inputs are excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [tensor_info(i) for i in model.graph.input if i.name not in inits]


@dataclass
class ModelInfo:
    """What onnxcam needs to know about a model's interface."""

    path: str
    opset: int
    ir_version: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    image_input: TensorInfo
    layout: str  # "NCHW" or "NHWC"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "NCHW" else 3

    @property
    def channels(self) -> Dim:
        return self.image_input.shape[self.channel_axis]

    @property
    def size(self) -> tuple[Dim, Dim]:
        """(H, W) of the image input; ints where fixed, names or None where dynamic."""
        s = self.image_input.shape
        return (s[2], s[3]) if self.layout == "NCHW" else (s[1], s[2])

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        h, w = self.size
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def batch(self) -> Dim:
        return self.image_input.shape[0]

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "opset": self.opset,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "inputs": [i.as_dict() for i in self.inputs],
            "outputs": [o.as_dict() for o in self.outputs],
            "image_input": self.image_input.name,
            "layout": self.layout,
            "size": list(self.size),
        }


def inspect_model(model: onnx.ModelProto, path: str = "") -> ModelInfo:
    """Report opset, inputs, outputs and the image input's layout and size."""
    inputs = graph_inputs(model)
    images = [i for i in inputs if len(i.shape) == 4 and i.elem_type in FLOAT_TYPES]
    if not images:
        desc = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs) or "none"
        raise UsageError(f"the model has no 4-D float image input (inputs: {desc})")
    image = images[0]
    layouts = tensor_layouts(model)
    lay = layouts.get(image.name)
    if lay not in ("NCHW", "NHWC"):
        s = image.shape
        lay = "NHWC" if s[3] in (1, 3, 4) and s[1] not in (1, 3, 4) else "NCHW"
    meta = {p.key: p.value for p in model.metadata_props}
    return ModelInfo(
        path=path,
        opset=default_opset(model),
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=[tensor_info(o) for o in model.graph.output],
        image_input=image,
        layout=lay,
        metadata=meta,
    )


def with_input_size(model: onnx.ModelProto, info: ModelInfo, hw: tuple[int, int] | None) -> onnx.ModelProto:
    """A copy whose image input has spatial size `hw` (where dynamic) and a symbolic batch."""
    m = copy_model(model)
    for inp in m.graph.input:
        if inp.name != info.image_input.name:
            continue
        dims = inp.type.tensor_type.shape.dim
        sp = (2, 3) if info.layout == "NCHW" else (1, 2)
        if hw is not None:
            for axis, v in zip(sp, hw):
                if not dims[axis].HasField("dim_value") or dims[axis].dim_value <= 0:
                    dims[axis].Clear()
                    dims[axis].dim_value = int(v)
                elif dims[axis].dim_value != int(v):
                    raise UsageError(
                        f"the model's input {inp.name!r} is fixed at {info.size[0]}x{info.size[1]}; "
                        f"got {hw[0]}x{hw[1]}: resize the images to the model's size"
                    )
        if not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
            dims[0].Clear()
            dims[0].dim_param = BATCH
    return m
