"""Loading ONNX models and reading what a CAM needs from them.

`load_model` reads a file (external data included); `ModelInfo` reports opset, inputs, outputs, the
image input's layout (NCHW or NHWC) and size; `infer_shapes` gives every tensor's shape at a
concrete image size (batch kept symbolic); `tensor_layouts` says, for each 4-D tensor, which axes
are channels and which are spatial, propagated from the ops whose layout ONNX fixes (Conv, pools,
BatchNormalization are channels-first) through Transposes and element-wise ops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelLoadError, UsageError

log = logging.getLogger(__name__)

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]

BATCH = "N"
# ops whose 4-D data inputs and outputs are channels-first by the ONNX spec
_NCHW_OPS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
    "MaxUnpool", "DepthToSpace", "SpaceToDepth", "MaxRoiPool", "RoiAlign",
    "QLinearConv", "ConvInteger", "QLinearAveragePool", "QLinearGlobalAveragePool",
}
# ops whose output has the layout of their (first) 4-D input, element by element
_SAME_LAYOUT_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg",
    "Reciprocal", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
    "Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear", "Pad", "Resize", "Upsample",
    "Floor", "Ceil", "Round", "Sign", "LayerNormalization", "Softmax", "LogSoftmax",
}
# ops that keep the layout of their first input when it is 4-D (MatMul against 2-D weights acts
# on the last axis only, as in ConvNeXt's channels-last MLP)
_FIRST_INPUT_LAYOUT_OPS = {"MatMul"}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, symbolic names or None) and ONNX element type of a graph value."""

    name: str
    shape: Shape
    elem_type: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype)}


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    dims: list[Dim] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value"):  # some exporters write -1 (or 0) for a dynamic axis
                dims.append(None)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorInfo(vi.name, tuple(dims), tt.elem_type)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data; raise ModelLoadError with the reason."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ModelLoadError(f"model file not found: {p}")
    try:
        model = onnx.load(p, load_external_data=True)
    except Exception as exc:  # protobuf and external-data errors come in many types
        raise ModelLoadError(f"cannot read {p} as an ONNX model: {exc}") from None
    if not model.graph.node:
        raise ModelLoadError(f"{p} holds no graph nodes; is it an ONNX model?")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelLoadError("the model imports no ai.onnx opset")


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Inputs that are fed at run time (initializers listed as inputs are excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [_value_info(i) for i in model.graph.input if i.name not in inits]


def tensor_layouts(model: onnx.ModelProto, ranks: dict[str, int] | None = None) -> dict[str, str]:
    """Layout string ("NCHW", "NHWC" or another axis order) of every 4-D tensor that can be known.

    Seeds: inputs/outputs of channels-first ops. Propagation, forward and backward until nothing
    changes: Transpose permutes the axis letters; element-wise ops share their layout.
    """
    layouts: dict[str, str] = {}
    nodes = list(model.graph.node)
    is4d = (lambda n: ranks.get(n, 4) == 4) if ranks else (lambda n: True)
    for node in nodes:
        if node.op_type in _NCHW_OPS and node.domain in ("", "ai.onnx"):
            if node.input and node.input[0]:
                layouts[node.input[0]] = "NCHW"
            if node.output and node.output[0]:
                layouts[node.output[0]] = "NCHW"
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.op_type == "Transpose" and node.input and node.output:
                perm = [a.ints for a in node.attribute if a.name == "perm"]
                if not perm or len(perm[0]) != 4:
                    continue
                p = list(perm[0])
                src, dst = node.input[0], node.output[0]
                if src in layouts and dst not in layouts:
                    layouts[dst] = "".join(layouts[src][i] for i in p)
                    changed = True
                elif dst in layouts and src not in layouts:
                    inv = [0] * 4
                    for i, a in enumerate(p):
                        inv[a] = i
                    layouts[src] = "".join(layouts[dst][i] for i in inv)
                    changed = True
            elif node.op_type in _FIRST_INPUT_LAYOUT_OPS and node.input and node.output:
                src, dst = node.input[0], node.output[0]
                if ranks is not None and (ranks.get(src) != 4 or ranks.get(dst) != 4 or ranks.get(node.input[1], 0) > 2):
                    continue
                if src in layouts and dst not in layouts:
                    layouts[dst] = layouts[src]
                    changed = True
            elif node.op_type in _SAME_LAYOUT_OPS:
                data = [t for t in list(node.input)[:2] if t and is4d(t)]
                if node.op_type == "Where":
                    data = [t for t in list(node.input)[1:3] if t and is4d(t)]
                outs = [o for o in node.output[:1] if o]
                known = [layouts[t] for t in data + outs if t in layouts]
                if not known:
                    continue
                lay = known[0]
                for t in data + outs:
                    if t not in layouts and (ranks is None or ranks.get(t) == 4):
                        layouts[t] = lay
                        changed = True
    return layouts


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
        outputs=[_value_info(o) for o in model.graph.output],
        image_input=image,
        layout=lay,
        metadata=meta,
    )


def with_input_size(model: onnx.ModelProto, info: ModelInfo, hw: tuple[int, int] | None) -> onnx.ModelProto:
    """A copy whose image input has spatial size `hw` (where dynamic) and a symbolic batch."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
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


# Initializers at least this big are left out of the copy that shape inference sees (their
# shapes come from their dims; data propagation only needs small integer tensors), so models
# over protobuf's 2 GB limit can be inferred and big weights are not serialised for nothing.
SHAPE_INFERENCE_DATA_LIMIT = 1 << 16
_EXTERNAL = "onnxcam-data-left-out"


PROTOBUF_LIMIT = 2**31 - 1


def proto_size(message) -> int:
    """Serialised size of a protobuf message in bytes; for a ModelProto whose initializers alone
    reach the limit, their size from dims (protobuf's ByteSize() serialises internally: slow on
    big models, and the upb backend raises EncodeError over 2 GB, where PROTOBUF_LIMIT + 1 is
    returned)."""
    if isinstance(message, onnx.ModelProto):
        data = sum(_tensor_bytes(t) for t in message.graph.initializer)
        if data >= PROTOBUF_LIMIT:
            return data
    try:
        return int(message.ByteSize())
    except Exception:
        return PROTOBUF_LIMIT + 1


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type (nothing serialised or copied); 0 for
    external data and strings."""
    if t.data_location == TensorProto.EXTERNAL or t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of protobuf message `src` into `dst`, except the field `skip`."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def without_big_data(
    model: onnx.ModelProto,
    min_bytes: int = SHAPE_INFERENCE_DATA_LIMIT,
    data_file=None,
    location: str = _EXTERNAL,
    align: int = 4096,
) -> onnx.ModelProto:
    """A copy of `model` whose initializers of at least `min_bytes` carry no data, marked as
    external data at `location`. With `data_file` (a binary file open for writing) their bytes
    are written there, page-aligned, so that the copy saved next to that file is a complete
    model with external data. The input is never changed (unlike onnx.save_model(...,
    save_as_external_data=True), which moves the data out of the proto it is given) and the big
    data is never copied into another proto."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    g, og = model.graph, out.graph
    _copy_fields(g, og, skip="initializer")
    for t in g.initializer:
        size = _tensor_bytes(t)
        if size < min_bytes:
            og.initializer.append(t)
            continue
        nt = og.initializer.add()
        nt.name, nt.data_type = t.name, t.data_type
        nt.dims.extend(t.dims)
        nt.data_location = TensorProto.EXTERNAL
        offset, length = 0, size
        if data_file is not None:
            offset = data_file.tell()
            if offset % align:
                data_file.write(b"\0" * (align - offset % align))
                offset = data_file.tell()
            data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).astype(
                np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")).tobytes()
            data_file.write(data)
            length = len(data)
            del data
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = nt.external_data.add()
            entry.key, entry.value = k, v
    return out


def infer_shapes(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Shapes and element types of every value, by ONNX shape inference (with data propagation).
    Runs on a copy without the big initializers' data, so models over 2 GB work too."""
    try:
        inferred = onnx.shape_inference.infer_shapes(
            without_big_data(model), check_type=False, strict_mode=False, data_prop=True,
        )
    except Exception as exc:
        raise ModelLoadError(f"ONNX shape inference failed: {exc}") from None
    out: dict[str, TensorInfo] = {}
    g = inferred.graph
    for init in g.initializer:
        out[init.name] = TensorInfo(init.name, tuple(int(d) for d in init.dims), init.data_type)
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        info = _value_info(vi)
        if vi.name not in out or out[vi.name].elem_type == 0:
            out[vi.name] = info
    for node in g.node:  # Constant nodes: shape from their value
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = TensorInfo(node.output[0], tuple(a.t.dims), a.t.data_type)
    return out


def fill_runtime_shapes(model: onnx.ModelProto, info: "ModelInfo", shapes: dict[str, TensorInfo]) -> int:
    """Where ONNX shape inference lost a float tensor's shape (reshapes computed from run-time
    shapes, as TorchScript's channel shuffle), measure it: run the model at batch 1 and 2 with
    those tensors as outputs; axes that follow the batch become symbolic. Returns how many."""
    missing = []
    for node in model.graph.node:
        for o in node.output:
            t = shapes.get(o)
            if o and (t is None or not t.shape or any(not isinstance(d, int) for d in t.shape[1:])):
                if t is None or t.elem_type in FLOAT_TYPES or t.elem_type == 0:
                    missing.append(o)
    if not missing:
        return 0
    from .runtime import session_for

    def session(names: list[str]):
        m = without_big_data(model, min_bytes=1 << 62)  # a copy that shares no state with `model`
        known = {o.name for o in m.graph.output}
        for name in names:
            t = shapes.get(name)
            elem = t.elem_type if t is not None and t.elem_type else TensorProto.FLOAT
            if name not in known:
                m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        return session_for(m, providers=["CPUExecutionProvider"])

    try:
        sess = session(missing)
    except Exception:  # a guessed (float) type was wrong somewhere: measure only typed tensors
        missing = [n for n in missing if n in shapes and shapes[n].elem_type]
        if not missing:
            return 0
        sess = session(missing)
    names = [o.name for o in sess.get_outputs()]
    runs = []
    img = shapes[info.image_input.name]
    fixed_batch = info.batch if isinstance(info.batch, int) else None
    for b in ([fixed_batch] if fixed_batch else [1, 2]):
        feeds = {}
        for inp in info.inputs:
            dims = [b if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
                    for i, d in enumerate(shapes.get(inp.name, inp).shape)]
            feeds[inp.name] = np.zeros(dims, dtype=inp.dtype)
        runs.append(dict(zip(names, sess.run(None, feeds))))
    del img
    filled = 0
    for name in missing:
        vals = [r[name] for r in runs]
        dims: list[Dim] = []
        for axis, d in enumerate(vals[0].shape):
            varies = len(vals) > 1 and vals[1].shape[axis] != d
            dims.append(BATCH if varies else int(d))
        elem = helper.np_dtype_to_tensor_dtype(vals[0].dtype)
        shapes[name] = TensorInfo(name, tuple(dims), elem)
        filled += 1
    return filled


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs as numpy arrays (external data already loaded)."""
    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            if a.name == "value":
                vals[node.output[0]] = numpy_helper.to_array(a.t)
            elif a.name == "value_float":
                vals[node.output[0]] = np.array(a.f, dtype=np.float32)
            elif a.name == "value_floats":
                vals[node.output[0]] = np.array(list(a.floats), dtype=np.float32)
            elif a.name == "value_int":
                vals[node.output[0]] = np.array(a.i, dtype=np.int64)
            elif a.name == "value_ints":
                vals[node.output[0]] = np.array(list(a.ints), dtype=np.int64)
    return vals
