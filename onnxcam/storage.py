"""Model sizes and external data: what it takes to handle models over protobuf's 2 GB limit.

`proto_size` measures a model without serialising it; `without_big_data` makes a copy whose big
initializers carry no bytes (for shape inference, or written page-aligned to a side file so the
copy is a complete model with external data). The input model is never changed.
"""

from __future__ import annotations

from typing import BinaryIO, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PROTOBUF_LIMIT = 2**31 - 1
"""Protobuf refuses to serialise a message of this many bytes or more."""

SHAPE_INFERENCE_DATA_LIMIT = 1 << 16
"""Initializers at least this big are left out of the copy that shape inference sees (their
shapes come from their dims; data propagation only needs small integer tensors), so models over
protobuf's 2 GB limit can be inferred and big weights are not serialised for nothing."""

_EXTERNAL = "onnxcam-data-left-out"


def proto_size(message) -> int:
    """Serialised size of a protobuf message in bytes; for a ModelProto whose initializers alone
    reach the limit, their size from dims (protobuf's ByteSize() serialises internally: slow on
    big models, and the upb backend raises EncodeError over 2 GB, where PROTOBUF_LIMIT + 1 is
    returned)."""
    if isinstance(message, onnx.ModelProto):
        data = sum(tensor_bytes(t) for t in message.graph.initializer)
        if data >= PROTOBUF_LIMIT:
            return data
    try:
        return int(message.ByteSize())
    except Exception:  # upb's EncodeError over 2 GB (its type differs between protobuf backends)
        return PROTOBUF_LIMIT + 1


def tensor_bytes(t: onnx.TensorProto) -> int:
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


def _little_endian_bytes(t: onnx.TensorProto) -> bytes:
    """A tensor's data as ONNX stores it externally: raw little-endian bytes."""
    if t.HasField("raw_data"):
        return t.raw_data
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
    return numpy_helper.to_array(t).astype(dtype).tobytes()


def _write_aligned(data_file: BinaryIO, data: bytes, align: int) -> int:
    """Write `data` at the next multiple of `align` in `data_file`; return its offset."""
    offset = data_file.tell()
    if offset % align:
        data_file.write(b"\0" * (align - offset % align))
        offset = data_file.tell()
    data_file.write(data)
    return offset


def without_big_data(
    model: onnx.ModelProto,
    min_bytes: int = SHAPE_INFERENCE_DATA_LIMIT,
    data_file: Optional[BinaryIO] = None,
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
        size = tensor_bytes(t)
        if size < min_bytes:
            og.initializer.append(t)
            continue
        nt = og.initializer.add()
        nt.name, nt.data_type = t.name, t.data_type
        nt.dims.extend(t.dims)
        nt.data_location = TensorProto.EXTERNAL
        offset, length = 0, size
        if data_file is not None:
            data = _little_endian_bytes(t)
            offset, length = _write_aligned(data_file, data, align), len(data)
            del data
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = nt.external_data.add()
            entry.key, entry.value = k, v
    return out
