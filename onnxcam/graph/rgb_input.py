"""In-graph preprocessing: a uint8 RGB image input in place of the model's float tensor.

`add_rgb_input` replaces the model's image input X by `onnxcam_rgb`, uint8 (N, height, width, 3)
at any size — what a browser canvas (`getImageData`, alpha dropped) or a camera frame gives — and
computes X inside the graph as `image.preprocess` does for a preset:

    x = cv2.resize(rgb, (W, H), INTER_LINEAR) (in the graph, below);  [BGR: reverse the channels];
    [1 channel: 0.299 R + 0.587 G + 0.114 B];  x = (x · scale − mean) / std;  to the model's layout.

The resize is OpenCV's uint8 INTER_LINEAR itself, in integer arithmetic: the coefficients as
cv::resize computes them (source coordinate (d + 0.5)·(n_in/n_out) − 0.5 in double rounded to
float, weights rounded to 11 bits, columns clamped to the edge pixel, rows to the edge row), a horizontal pass into 32-bit sums, and
the vertical pass as its SIMD kernel (VResizeLinearVec_32s8u) rounds: ((S0 >> 4)·β0 >> 16) +
((S1 >> 4)·β1 >> 16), then (v + 2) >> 2. So the in-graph preprocessing equals `image.preprocess`
bit for bit at any image size (checked against cv2.resize on photos of several sizes).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UsageError
from ..grad.builder import Emitter
from ..model import ModelInfo, default_opset
from .passes import upgrade_opset

RGB_INPUT = "onnxcam_rgb"


class PresetLike(Protocol):
    """What the graph needs of an `image.Preset`: x ↦ (x · scale − mean) / std, channel order."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool

_I64, _F64, _F32 = TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT
_COEF = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE (11 bits)
GRAY = (0.299, 0.587, 0.114)
MIN_OPSET = 13  # OpenCV's RGB2GRAY


def add_rgb_input(model: onnx.ModelProto, info: ModelInfo, size: tuple[int, int], preset: PresetLike) -> onnx.ModelProto:
    """A copy of `model` whose image input is `onnxcam_rgb` (uint8, N × height × width × 3)."""
    x_name = info.image_input.name
    channels = info.channels
    if channels not in (1, 3):
        raise UsageError(f"--rgb-input needs a 1- or 3-channel image input; {x_name!r} has {channels}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m = upgrade_opset(m, MIN_OPSET).model  # Round (11), Min on int64 (12)
    opset = default_opset(m)
    e = Emitter({}, {}, opset, prefix="onnxcam_rgb/")
    e.set_info(RGB_INPUT, (None, None, None, 3), TensorProto.UINT8)
    resized = opencv_linear_resize_uint8(e, RGB_INPUT, size)  # (N, H, W, 3) int64 in [0, 255]
    x = e.op("Transpose", [e.op("Cast", [resized], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])  # (N, 3, H, W)
    if channels == 1:  # the gray value of the RGB image, whatever the preset's channel order
        x = e.reduce_sum(e.op("Mul", [x, e.const(np.asarray(GRAY, np.float32).reshape(1, 3, 1, 1))]), [1])
        mean, std = np.float32(preset.mean[0]), np.float32(preset.std[0])
    else:
        if preset.bgr:
            x = e.op("Gather", [x, e.ints([2, 1, 0])], axis=1)
        mean = np.asarray(preset.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(preset.std, np.float32).reshape(1, 3, 1, 1)
    x = e.op("Mul", [x, e.const(np.array(preset.scale, np.float32))])
    x = e.op("Div", [e.op("Sub", [x, e.const(np.asarray(mean))]), e.const(np.asarray(std))])
    if info.image_input.elem_type != TensorProto.FLOAT:
        x = e.op("Cast", [x], to=info.image_input.elem_type)
    if info.layout == "NHWC":
        x = e.op("Transpose", [x], perm=[0, 2, 3, 1])
    e.nodes.append(helper.make_node("Identity", [x], [x_name], name="onnxcam_rgb/image"))
    g = m.graph
    old = next(i for i in g.input if i.name == x_name)
    batch = old.type.tensor_type.shape.dim[0]
    n = batch.dim_param if batch.HasField("dim_param") else (batch.dim_value or None)
    new_inputs = [
        helper.make_tensor_value_info(RGB_INPUT, TensorProto.UINT8, [n, "height", "width", 3]) if i.name == x_name else i
        for i in g.input
    ]
    del g.input[:]
    g.input.extend(new_inputs)
    nodes = e.nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in e.nodes for i in n.input}
    g.initializer.extend(t for t in e.initializers if t.name in used)
    return m


def _axis_coefficients(e: Emitter, n_in: str, n_out: int, rows: bool) -> tuple[str, str, str, str]:
    """OpenCV's linear-resize taps along one axis at run time: (s0, s1, α0, α1), int64 (n_out,).
    n_in: the input's length as a (1,) int64 tensor. Columns outside the image take the edge
    pixel with weights (2048, 0); rows outside keep their weights and read the edge row twice
    (cv::resize clamps row indices only)."""
    c = lambda v, t=np.float64: e.const(np.asarray(v, t))  # noqa: E731
    n_in_f = e.op("Cast", [n_in], to=_F64)
    scale = e.op("Div", [c(1.0), e.op("Div", [c(float(n_out)), n_in_f])])  # 1 / inv_scale, in double
    d = c(np.arange(n_out, dtype=np.float64) + 0.5)
    f = e.op("Cast", [e.op("Sub", [e.op("Mul", [d, scale]), c(0.5)])], to=_F32)
    s = e.op("Floor", [f])
    f = e.op("Sub", [f, s])
    s = e.op("Cast", [s], to=_I64)
    last = e.op("Sub", [n_in, c(1, np.int64)])
    zero_f, zero_i, one = c(0.0, np.float32), c(0, np.int64), c(1, np.int64)
    if rows:
        s1 = e.op("Min", [e.op("Max", [e.op("Add", [s, one]), zero_i]), last])
        s = e.op("Min", [e.op("Max", [s, zero_i]), last])
    else:
        left = e.op("Less", [s, zero_i])
        f = e.op("Where", [left, zero_f, f])
        s = e.op("Where", [left, zero_i, s])
        right = e.op("Not", [e.op("Less", [s, last])])
        f = e.op("Where", [right, zero_f, f])
        s = e.op("Where", [right, last, s])
        s1 = e.op("Min", [e.op("Add", [s, one]), last])
    weight = lambda v: e.op("Cast", [e.op("Round", [e.op("Mul", [v, c(_COEF, np.float32)])])], to=_I64)  # noqa: E731
    return s, s1, weight(e.op("Sub", [c(1.0, np.float32), f])), weight(f)


def opencv_linear_resize_uint8(e: Emitter, x: str, size: tuple[int, int]) -> str:
    """cv2.resize(img, (W, H), interpolation=INTER_LINEAR) of uint8 (N, h, w, C) images, as
    int64 (N, H, W, C) values in [0, 255] (see the module docstring for the arithmetic)."""
    H, W = size
    c = lambda v: e.const(np.asarray(v, np.int64))  # noqa: E731
    shape = e.runtime_shape(x)
    sy0, sy1, b0, b1 = _axis_coefficients(e, e.slice(shape, 0, 1, 2), H, rows=True)
    sx0, sx1, a0, a1 = _axis_coefficients(e, e.slice(shape, 0, 2, 3), W, rows=False)
    src = e.op("Cast", [x], to=_I64)
    col = lambda v: e.op("Reshape", [v, c([-1, 1])])  # noqa: E731  (W,) → (W, 1) against C
    hor = e.op("Add", [  # (N, h, W, C): Σ taps · 2048
        e.op("Mul", [e.op("Gather", [src, sx0], axis=2), col(a0)]),
        e.op("Mul", [e.op("Gather", [src, sx1], axis=2), col(a1)]),
    ])
    row = lambda v: e.op("Reshape", [v, c([-1, 1, 1])])  # noqa: E731  (H,) → (H, 1, 1)

    def tap(s: str, b: str) -> str:  # ((S >> 4) · β) >> 16, as the SIMD kernel's mul_hi
        return e.op("Div", [e.op("Mul", [e.op("Div", [e.op("Gather", [hor, s], axis=1), c(16)]), row(b)]), c(65536)])

    v = e.op("Add", [tap(sy0, b0), tap(sy1, b1)])
    return e.op("Div", [e.op("Add", [v, c(2)]), c(4)])
