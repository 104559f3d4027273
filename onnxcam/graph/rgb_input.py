"""In-graph preprocessing: a uint8 RGB image input in place of the model's float tensor.

`add_rgb_input` replaces the model's image input X by `onnxcam_rgb`, uint8 (N, height, width, 3)
at any size — what a browser canvas (`getImageData`, alpha dropped) or a camera frame gives — and
computes X inside the graph as `image.preprocess` does for a preset:

    x = float(rgb);  x = Resize(x, (H, W)) (bilinear, half-pixel centres, rounded to integers
    and clipped to [0, 255] like OpenCV's uint8 resize);  [BGR: reverse the channels];
    [1 channel: 0.299 R + 0.587 G + 0.114 B];  x = (x · scale − mean) / std;  to the model's layout.

At the model's own size the resize is the identity and the graph reproduces `preprocess` exactly.
At other sizes, OpenCV resizes uint8 images in 11-bit fixed point, so values can differ from
onnxcam's Python path by one grey level where the interpolated value lies near a half.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UsageError
from ..grad.builder import Emitter
from ..image import Preset
from ..model import ModelInfo, default_opset

RGB_INPUT = "onnxcam_rgb"
GRAY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY


def add_rgb_input(model: onnx.ModelProto, info: ModelInfo, size: tuple[int, int], preset: Preset) -> onnx.ModelProto:
    """A copy of `model` whose image input is `onnxcam_rgb` (uint8, N × height × width × 3)."""
    x_name = info.image_input.name
    channels = info.channels
    if channels not in (1, 3):
        raise UsageError(f"--rgb-input needs a 1- or 3-channel image input; {x_name!r} has {channels}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = default_opset(m)
    if opset < 11:
        raise UsageError(f"--rgb-input needs opset ≥ 11 for Resize; the model is at opset {opset}")
    e = Emitter({}, {}, opset, prefix="onnxcam_rgb/")
    e.set_info(RGB_INPUT, (None, None, None, 3), TensorProto.UINT8)
    h, w = size
    x = e.op("Transpose", [e.op("Cast", [RGB_INPUT], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])  # (N, 3, h0, w0)
    sizes = e.op("Concat", [e.slice(e.runtime_shape(x), 0, 0, 2), e.ints([h, w])], axis=0)
    if opset >= 13:
        resize_in = [x, "", "", sizes]
    else:  # roi and scales are required inputs before 13 (empty tensors)
        empty = e.const(np.zeros(0, np.float32), "empty")
        resize_in = [x, empty, empty, sizes]
    x = e.op("Resize", resize_in, mode="linear", coordinate_transformation_mode="half_pixel")
    x = e.op("Clip", [e.op("Round", [x]), e.const(np.array(0, np.float32)), e.const(np.array(255, np.float32))])
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
    g.initializer.extend(e.initializers)
    return m
