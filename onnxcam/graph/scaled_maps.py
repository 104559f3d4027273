"""`methods.maps.scale_maps` as ONNX ops: the heatmap made inside the explain run.

For a method whose map is computed in the graph (`CAMMethod.graph` returning "cam"), the
explainer appends these ops after it, so that the (N, H, W) heatmap comes out of the same
onnxruntime run instead of numpy normalising, resizing and normalising again after it (on a small
model that numpy was a tenth of a call). The numpy `scale_maps` stays the formula of record; this
is the same computation, in float32:

1. per image: (m − min) / ((max − min)·(1 + 1e-7)), a constant map → 0 (`normalize_maps`);
2. OpenCV's INTER_LINEAR resize, separable as OpenCV computes it — along the width, then along
   the height, each output value w₀·s[i₀] + w₁·s[i₁] with OpenCV's own taps (read off cv2.resize
   of an identity matrix): Gather and Mul, no MatMul;
3. ReLU, then 1 again.

Every op is elementwise, a Gather, or a min/max over one image: an image's heatmap does not depend
on the other images of its batch. Equal to `scale_maps` within float32 rounding (≤ 1e-6).

`scaled_maps_model` is the same ops as a model of their own, (N, h, w) maps in, heatmaps out: the
explainer runs it on maps a method finishes in numpy (Eigen-CAM's eigh, Score-CAM's weights), where
numpy's float64 normalisation of (N, 224, 224) was ~0.7 ms per image against ~0.1 ms here.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from ..grad.builder import Emitter

_F32 = TensorProto.FLOAT
MAPS_INPUT, HEATMAPS_OUTPUT = "maps", "heatmaps"


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """OpenCV's INTER_LINEAR resize of a length-n_in signal to n_out as two taps per output:
    (i₀, i₁, w₀, w₁), out[k] = w₀[k]·s[i₀[k]] + w₁[k]·s[i₁[k]]. None where some output reads more
    than two inputs (not a case of INTER_LINEAR, checked rather than assumed)."""
    m = cv2.resize(np.eye(n_in, dtype=np.float32), (n_in, n_out), interpolation=cv2.INTER_LINEAR)
    i0, i1 = np.zeros(n_out, np.int64), np.zeros(n_out, np.int64)
    w0, w1 = np.zeros(n_out, np.float32), np.zeros(n_out, np.float32)
    for k, row in enumerate(m):
        nz = np.flatnonzero(row)
        if len(nz) > 2 or len(nz) == 0:
            return None
        i0[k], w0[k] = nz[0], row[nz[0]]
        i1[k], w1[k] = (nz[1], row[nz[1]]) if len(nz) == 2 else (nz[0], 0.0)
    return i0, i1, w0, w1


def _normalise(e: Emitter, m: str) -> str:
    """Per image over axes (1, 2): (m − min) / (span·(1 + 1e-7)), span = max − min; 0 where span = 0."""
    lo = e.reduce("ReduceMin", m, [1, 2], keepdims=True)
    span = e.op("Sub", [e.reduce("ReduceMax", m, [1, 2], keepdims=True), lo])
    positive = e.op("Greater", [span, e.scalar(0.0, m)])
    safe = e.op("Where", [positive, e.op("Mul", [span, e.scalar(1 + 1e-7, m)]), e.scalar(1.0, m)])
    return e.op("Div", [e.op("Sub", [m, lo]), safe])


def _resize_axis(e: Emitter, x: str, axis: int, taps: tuple[np.ndarray, ...]) -> str:
    """Two-tap linear interpolation of (N, a, b) along `axis` (1 or 2)."""
    i0, i1, w0, w1 = taps
    shape = [1, 1, 1]
    shape[axis] = len(i0)
    a = e.op("Mul", [e.op("Gather", [x, e.const(i0, "taps")], axis=axis), e.const(w0.reshape(shape), "weights")])
    b = e.op("Mul", [e.op("Gather", [x, e.const(i1, "taps")], axis=axis), e.const(w1.reshape(shape), "weights")])
    return e.op("Add", [a, b])


def append_scaled_maps(e: Emitter, cam: str, layer_size: tuple[int, int], input_size: tuple[int, int]) -> str | None:
    """The heatmaps (N, H, W) float32 in [0, 1] of the float32 maps `cam` (N, h, w): `scale_maps`
    in the graph. None (nothing emitted) where a size is not a positive int."""
    (h, w), (hh, ww) = layer_size, input_size
    if not all(isinstance(v, int) and v > 0 for v in (h, w, hh, ww)):
        return None
    tx, ty = linear_taps(w, ww), linear_taps(h, hh)
    if tx is None or ty is None:
        return None
    rows = _resize_axis(e, _normalise(e, cam), 2, tx)  # (N, h, W): along the width first, as OpenCV
    up = _resize_axis(e, rows, 1, ty)  # (N, H, W)
    out = _normalise(e, e.op("Relu", [up]))
    return e.set_info(out, (None, hh, ww), _F32)


def scaled_maps_model(layer_size: tuple[int, int], input_size: tuple[int, int]) -> onnx.ModelProto | None:
    """A model from float32 maps `maps` (N, h, w) to their heatmaps `heatmaps` (N, H, W): the ops of
    `append_scaled_maps` alone (opset 17, IR 8). None where `append_scaled_maps` emits nothing."""
    (h, w), (hh, ww) = layer_size, input_size
    e = Emitter({}, {}, 17, prefix="scaled_maps/")
    e.set_info(MAPS_INPUT, (None, h, w), _F32)
    out = append_scaled_maps(e, MAPS_INPUT, layer_size, input_size)
    if out is None:
        return None
    graph = helper.make_graph(
        e.nodes + [helper.make_node("Identity", [out], [HEATMAPS_OUTPUT], name="scaled_maps/output")], "scaled_maps",
        [helper.make_tensor_value_info(MAPS_INPUT, _F32, ["N", h, w])],
        [helper.make_tensor_value_info(HEATMAPS_OUTPUT, _F32, ["N", hh, ww])], e.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                             producer_name="onnxcam")
