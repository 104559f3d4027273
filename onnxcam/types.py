"""What every layer of onnxcam shares: tensor descriptions, shapes, layouts and element-type sets.

This module imports nothing from onnxcam, so the model reader, the graph passes, the gradient
engine and the methods can all depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper

Dim = Union[int, str, None]
"""One axis of a shape: an int where fixed, a symbolic name, or None where unknown."""
Shape = tuple[Dim, ...]

DEFAULT_SIZE: tuple[int, int] = (224, 224)
"""Image size (height, width) used for a model whose input size is dynamic, unless told otherwise."""

BATCH = "N"
"""The symbolic name onnxcam gives the batch axis when it fixes a model's input size."""

LAYOUTS = ("NCHW", "NHWC")
"""The image layouts a CAM can be read in: channels first (ONNX's own) or channels last (tf2onnx)."""

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
"""ONNX element types that carry gradients."""

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
"""Half-precision element types (the gradient emitter may compute them in float32)."""


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


def tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    """A TensorInfo from a graph input, output or value_info entry. Axes written as -1 or 0 by
    some exporters (a dynamic axis) read as None."""
    tt = vi.type.tensor_type
    dims: list[Dim] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorInfo(vi.name, tuple(dims), tt.elem_type)
