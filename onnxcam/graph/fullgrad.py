"""FullGrad's saliency map as plain ONNX ops, appended after the input and bias-tap gradients.

FullGrad (Srinivas & Fleuret, NeurIPS 2019), as pytorch-grad-cam computes it:

    S = Σ_c ψ(|x ⊙ ∂y/∂x|)_c + Σ_l Σ_c Up(ψ(|b_l ⊙ ∂y/∂z_l|)_c),
    ψ(t)_c = (t_c − min t_c) / (max(t_c − min t_c) + 1e-7)   per image and channel,

Up = bilinear resize to the input (OpenCV's INTER_LINEAR, half-pixel centres). Computed naively
(numpy, as the reference does) that is one 224×224 resize per channel of every biased layer —
26,563 of them per image on ResNet-50, 97 % of the method's time and ~7 GB at batch 8 — because
every channel map is resized before the channel sum. But Up is linear and the same for every
channel of a layer (and of every layer at the same resolution), so

    Σ_l Σ_c Up(ψ_lc) = Σ_r Up_r(Σ_{l at resolution r} Σ_c ψ_lc):

ψ and the channel sums stay at each layer's resolution, inside the graph, and one resize per
resolution (two MatMuls with constant interpolation matrices) remains. The bias taps never leave
onnxruntime; the map is the only output. Equal to the reference up to float32 summation order.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..grad.builder import Emitter
from ..interpolation import linear_matrix
from .channel_sum import channel_sum

FULLGRAD_OUTPUT = "onnxcam_fullgrad"
_F32 = TensorProto.FLOAT


def _float32(e: Emitter, x: str, elem_type: int) -> str:
    return x if elem_type == _F32 else e.op("Cast", [x], "to_float", to=_F32)


def channel_minmax_sum(e: Emitter, t: str, spatial: tuple[int, int], channel: int, dims: tuple | None = None) -> str:
    """Σ_c ψ(t)_c for a non-negative (N, C, h, w)-like tensor `t`: min-max per image and channel over
    the `spatial` axes, then the sum over the `channel` axis (kept, size 1). dims: (C, h, w) of a
    channels-first `t`, for the batch-invariant channel sum (graph/channel_sum.py)."""
    shifted = e.op("Sub", [t, e.reduce("ReduceMin", t, list(spatial), keepdims=True)])
    top = e.op("Add", [e.reduce("ReduceMax", shifted, list(spatial), keepdims=True), e.scalar(1e-7, t)])
    psi = e.op("Div", [shifted, top])
    if channel == 1 and dims is not None:
        return channel_sum(e, psi, dims, keepdims=True)
    return e.reduce_sum(psi, [channel], keepdims=True)


def append_fullgrad(
    e: Emitter,
    image: str,
    image_grad: str,
    image_layout: str,
    image_type: int,
    taps: list[tuple[str, np.ndarray, tuple[int, int], int]],
    size: tuple[int, int],
) -> str:
    """Emit FullGrad's (N, H, W) float32 map (before the final per-image normalisation).

    image, image_grad: the image input and ∂y/∂x, in `image_layout` ("NCHW" or "NHWC");
    taps: (∂y/∂z_l tensor (N, C, h, w), bias b_l (C,), (h, w), element type) per biased layer;
    size: the input's (H, W)."""
    c_ax = image_layout.index("C")
    sp = (image_layout.index("H"), image_layout.index("W"))
    x = _float32(e, image, image_type)
    gx = _float32(e, image_grad, image_type)
    dims = _image_dims(e, image, image_layout, size)
    total = channel_minmax_sum(e, e.op("Abs", [e.op("Mul", [x, gx])]), sp, c_ax, dims)  # (N, 1, H, W) or (N, H, W, 1)
    total = e.reduce_sum(total, [c_ax], keepdims=False)  # (N, H, W)
    by_size: dict[tuple[int, int], list[str]] = {}
    for grad, bias, hw, elem in taps:
        absb = np.abs(np.asarray(bias, np.float64)).astype(np.float32).reshape(1, -1, 1, 1)
        term = e.op("Mul", [e.op("Abs", [_float32(e, grad, elem)]), e.const(absb, "abs_bias")])  # |b ⊙ g|
        by_size.setdefault(tuple(hw), []).append(channel_minmax_sum(e, term, (2, 3), 1, (absb.shape[1], *hw)))  # (N, 1, h, w)
    H, W = size
    for (h, w), sums in by_size.items():
        s = sums[0]
        for other in sums[1:]:
            s = e.op("Add", [s, other])
        s = e.reduce_sum(s, [1], keepdims=False)  # (N, h, w)
        if (h, w) != (H, W):
            s = e.op("MatMul", [s, e.const(linear_matrix(W, w).T.astype(np.float32), "resize_x")])  # (N, h, W)
            s = e.op("MatMul", [e.const(linear_matrix(H, h).astype(np.float32), "resize_y"), s])  # (N, H, W)
        total = e.op("Add", [total, s])
    return e.set_info(total, (None, H, W), _F32)


def _image_dims(e: Emitter, image: str, layout: str, size: tuple[int, int]) -> tuple | None:
    """(C, H, W) of a channels-first image input whose channel count is declared, else None."""
    info = e.shapes.get(image)
    if layout != "NCHW" or info is None or len(info.shape) != 4:
        return None
    return (info.shape[1], *size)
