"""Pooling and reductions.

Average pooling spreads each output's gradient evenly over its window: a grouped ConvTranspose
with a kernel of ones after dividing by the window sizes (computed in numpy at rewrite time, so
count_include_pad and ceil_mode are exact). Max pooling routes it to the arg-max through
MaxPool's Indices output and ScatterElements(reduction="add") — correct where windows overlap —
which needs opset 16. Global/reduce max splits ties evenly.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from onnx import helper

from ...errors import UnsupportedOpError
from ...protos import node_attrs
from ..builder import Emitter, Node
from . import register
from .conv import spatial, transposed_pads

G = list[Optional[str]]


def _reduce_axes(e: Emitter, node: Node) -> list[int]:
    r = e.rank(node.inputs[0])
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        v = e.value(node.inputs[1])
        if v is None:
            raise UnsupportedOpError(node.op_type, node.name, "reduction axes computed at run time")
        axes = v.tolist()
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return []
        axes = list(range(r))
    return sorted(int(a) % r for a in axes)


def _restore(e: Emitter, node: Node, g: str, axes: list[int]) -> str:
    """Bring a reduced gradient back to the input's rank (keepdims=0 drops the axes)."""
    if not int(node.attr("keepdims", 1)) and axes:
        return e.unsqueeze(g, axes)
    return g


def _count(e: Emitter, node: Node, axes: Sequence[int]) -> int:
    dims = [e.shape(node.inputs[0])[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        raise UnsupportedOpError(node.op_type, node.name, f"mean over axes {list(axes)} of unknown size")
    return int(np.prod(dims)) if dims else 1


@register("ReduceSum", min_opset=8)
def reduce_sum(e: Emitter, node: Node, g: G) -> G:
    axes = _reduce_axes(e, node)
    return [e.expand_like(_restore(e, node, g[0], axes), node.inputs[0]), None]


@register("ReduceMean", min_opset=8)
def reduce_mean(e: Emitter, node: Node, g: G) -> G:
    axes = _reduce_axes(e, node)
    scaled = e.op("Mul", [g[0], e.scalar(1.0 / _count(e, node, axes), g[0])])
    return [e.expand_like(_restore(e, node, scaled, axes), node.inputs[0]), None]


@register("GlobalAveragePool", min_opset=8)
def global_average_pool(e: Emitter, node: Node, g: G) -> G:
    x = node.inputs[0]
    axes = list(range(2, e.rank(x)))
    scaled = e.op("Mul", [g[0], e.scalar(1.0 / _count(e, node, axes), g[0])])
    return [e.expand_like(scaled, x)]


def _max_split(e: Emitter, x: str, y: str, gy: str, axes: list[int]) -> str:
    hit = e.op("Cast", [e.op("Equal", [x, y])], to=e.elem_type(x))
    count = e.reduce_sum(hit, axes, keepdims=True)
    return e.op("Mul", [hit, e.op("Div", [gy, count])])


@register("GlobalMaxPool", min_opset=11)
def global_max_pool(e: Emitter, node: Node, g: G) -> G:
    x = node.inputs[0]
    return [_max_split(e, x, node.outputs[0], g[0], list(range(2, e.rank(x))))]


@register("ReduceMax", "ReduceMin", min_opset=11)
def reduce_max(e: Emitter, node: Node, g: G) -> G:
    axes = _reduce_axes(e, node)
    y = _restore(e, node, node.outputs[0], axes)
    return [_max_split(e, node.inputs[0], y, _restore(e, node, g[0], axes), axes), None]


def _window_counts(size: int, out: int, k: int, s: int, pb: int, pe: int, include_pad: bool) -> np.ndarray:
    """How many elements each output window averages over, along one axis (ONNX semantics)."""
    counts = np.empty(out, dtype=np.float64)
    for i in range(out):
        start = i * s - pb
        stop = start + k
        lo, hi = (-pb, size + pe) if include_pad else (0, size)
        counts[i] = min(stop, hi) - max(start, lo)
    return counts


@register("AveragePool")
def average_pool(e: Emitter, node: Node, g: G) -> G:
    x, y = node.inputs[0], node.outputs[0]
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise UnsupportedOpError("AveragePool", node.name, "auto_pad must be resolved first")
    hw_in, hw_out = spatial(e, x, "input", node), spatial(e, y, "output", node)
    nd = len(hw_in)
    k = list(node.attr("kernel_shape"))
    s = list(node.attr("strides") or [1] * nd)
    d = list(node.attr("dilations") or [1] * nd)
    if any(v != 1 for v in d):
        raise UnsupportedOpError("AveragePool", node.name, "dilated average pooling")
    p = list(node.attr("pads") or [0] * 2 * nd)
    include = bool(node.attr("count_include_pad", 0))
    counts = np.ones([1, 1] + hw_out, dtype=np.float64)
    for a in range(nd):
        c = _window_counts(hw_in[a], hw_out[a], k[a], s[a], p[a], p[a + nd], include)
        counts = counts * c.reshape([1, 1] + [-1 if b == a else 1 for b in range(nd)])
    scaled = e.op("Mul", [g[0], e.const((1.0 / counts).astype(e.np_dtype(x)), "pool_area")])
    channels = e.shape(x)[1]
    ones = e.const(np.ones([channels, 1] + k, dtype=e.np_dtype(x)), "pool_ones")
    pads, out_pad = transposed_pads(hw_in, hw_out, k, s, [1] * nd, p)
    return [e.op(
        "ConvTranspose", [scaled, ones], "avgpool_grad", strides=s, kernel_shape=k, group=int(channels),
        pads=pads, output_padding=out_pad if any(out_pad) else None,
    )]


@register("MaxPool", min_opset=16)
def max_pool(e: Emitter, node: Node, g: G) -> G:
    """Route g to the arg-max of each window via MaxPool Indices (flat over N·C·H·W)."""
    x = node.inputs[0]
    if int(node.attr("storage_order", 0)) != 0:
        raise UnsupportedOpError("MaxPool", node.name, "storage_order=1")
    attrs = node_attrs(node.proto)
    _, idx = e.op("MaxPool", [x], "maxpool_idx", n_out=2, **attrs)
    flat = e.ints([-1])
    zeros = e.op(
        "ConstantOfShape", [e.op("Shape", [e.op("Reshape", [x, flat])])],
        value=helper.make_tensor("zero", e.elem_type(x), [1], [0]),
    )
    scattered = e.scatter_add(zeros, e.op("Reshape", [idx, flat]), e.op("Reshape", [g[0], flat]))
    return [e.op("Reshape", [scattered, e.runtime_shape(x)])]


def _roi_axis_weights(e: Emitter, lo: str, span: str, n_out: int, grid: int, size: int, like: str) -> str:
    """(R, n_out, size): RoiAlign's bilinear weights along one axis, averaged over the `grid`
    samples of each output bin — samples at lo + (i + (k + ½)/grid)·span/n_out, dropped outside
    [−1, size], clamped to [0, size − 1], weight max(0, 1 − |s − h|) on pixel h."""
    dt = e.np_dtype(like)
    frac = (np.arange(n_out)[:, None] + (np.arange(grid)[None, :] + 0.5) / grid).astype(dt)  # (n_out, grid)
    bins = e.op("Div", [span, e.const(np.array(n_out, dt))])
    r3 = e.ints([-1, 1, 1])
    pos = e.op("Add", [e.op("Reshape", [lo, r3]), e.op("Mul", [e.const(frac[None], "roi_frac"), e.op("Reshape", [bins, r3])])])
    inside = e.op("And", [e.op("GreaterOrEqual", [pos, e.const(np.array(-1.0, dt))]),
                          e.op("LessOrEqual", [pos, e.const(np.array(float(size), dt))])])
    clamped = e.op("Min", [e.op("Max", [pos, e.const(np.array(0.0, dt))]), e.const(np.array(size - 1.0, dt))])
    dist = e.op("Abs", [e.op("Sub", [e.unsqueeze(clamped, [3]), e.const(np.arange(size, dtype=dt), "roi_pixels")])])
    tri = e.op("Relu", [e.op("Sub", [e.const(np.array(1.0, dt)), dist])])  # (R, n_out, grid, size)
    tri = e.op("Mul", [tri, e.unsqueeze(e.op("Cast", [inside], to=e.elem_type(like)), [3])])
    return e.op("Div", [e.reduce_sum(tri, [2], keepdims=False), e.const(np.array(grid, dt))])


@register("RoiAlign", min_opset=16)
def roi_align(e: Emitter, node: Node, g: G) -> G:
    """RoiAlign (average mode) is linear in X and separable: Y[r] = Wy_r · X[n_r] · Wx_rᵀ per
    channel, with bilinear weights fixed by the RoIs (constants of the run: proposals, already
    chosen). Its gradient: Wy_rᵀ · g_r · Wx_r, added into X at each RoI's batch index (ScatterND)."""
    a = node_attrs(node.proto)
    if a.get("mode", b"avg") not in (b"avg", "avg"):
        raise UnsupportedOpError("RoiAlign", node.name, "mode=max")
    grid = int(a.get("sampling_ratio", 0))
    if grid <= 0:
        raise UnsupportedOpError("RoiAlign", node.name, "sampling_ratio=0 (a sample count that depends on each RoI)")
    x, rois, batch = node.inputs[:3]
    shape = e.shape(x)
    h, w = shape[2], shape[3]
    if not isinstance(h, int) or not isinstance(w, int):
        raise UnsupportedOpError("RoiAlign", node.name, f"input {x!r} has no static height and width")
    oh, ow = int(a.get("output_height", 1)), int(a.get("output_width", 1))
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    dt = e.np_dtype(x)
    boxes = e.op("Mul", [e.op("Cast", [rois], to=e.elem_type(x)), e.const(np.array(float(a.get("spatial_scale", 1.0)), dt))])
    if ctm == "half_pixel":
        boxes = e.op("Sub", [boxes, e.const(np.array(0.5, dt))])
    col = lambda i: e.op("Gather", [boxes, e.const(np.array(i, np.int64))], axis=1)  # noqa: E731  (R,)
    spans = [e.op("Sub", [col(2), col(0)]), e.op("Sub", [col(3), col(1)])]
    if ctm != "half_pixel":  # output_half_pixel (torchvision's aligned=False): spans of at least 1
        spans = [e.op("Max", [s, e.const(np.array(1.0, dt))]) for s in spans]
    wx = _roi_axis_weights(e, col(0), spans[0], ow, grid, w, x)  # (R, ow, W)
    wy = _roi_axis_weights(e, col(1), spans[1], oh, grid, h, x)  # (R, oh, H)
    gy = e.op("MatMul", [e.unsqueeze(e.op("Transpose", [wy], perm=[0, 2, 1]), [1]), g[0]])  # (R, C, H, ow)
    gx = e.op("MatMul", [gy, e.unsqueeze(wx, [1])])  # (R, C, H, W)
    zeros = e.op("ConstantOfShape", [e.runtime_shape(x)], value=helper.make_tensor("zero", e.elem_type(x), [1], [0]))
    idx = e.unsqueeze(e.op("Cast", [batch], to=7), [1])  # (R, 1) int64
    return [e.op("ScatterND", [zeros, idx, gx], reduction="add"), None, None]
