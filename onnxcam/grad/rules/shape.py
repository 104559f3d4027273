"""Ops that only move elements: the gradient moves them back."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import UnsupportedOpError
from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(e: Emitter, node: Node, g: G) -> G:
    return [e.reshape_like(g[0], node.inputs[0])]


@register("Transpose")
def transpose(e: Emitter, node: Node, g: G) -> G:
    r = e.rank(node.inputs[0])
    perm = node.attr("perm") or list(reversed(range(r)))
    inv = [0] * r
    for i, a in enumerate(perm):
        inv[a] = i
    return [e.op("Transpose", [g[0]], perm=inv)]


@register("Concat", min_opset=10)
def concat(e: Emitter, node: Node, g: G) -> G:
    axis = int(node.attr("axis"))
    out: list[Optional[str]] = []
    start = 0
    for name, need in zip(node.inputs, node.needs):
        size = e.shape(name)[axis]
        if not isinstance(size, int):
            raise UnsupportedOpError("Concat", node.name, f"input {name!r} has no static size on axis {axis}")
        out.append(e.slice(g[0], axis, start, start + size) if need else None)
        start += size
    return out


def _const_ints(e: Emitter, node: Node, idx: int, attr: str) -> list[int] | None:
    """An int list given as attribute (old opsets) or as a constant input (new opsets)."""
    v = node.attr(attr)
    if v is not None:
        return [int(a) for a in v]
    if len(node.inputs) > idx and node.inputs[idx]:
        c = e.value(node.inputs[idx])
        if c is None:
            raise UnsupportedOpError(node.op_type, node.name, f"{attr} computed at run time")
        return [int(a) for a in c.reshape(-1)]
    return None


def _static(e: Emitter, node: Node, t: str) -> list[int]:
    s = e.shape(t)
    if not all(isinstance(d, int) for d in s[1:]):
        raise UnsupportedOpError(node.op_type, node.name, f"shape {list(s)} of {t!r} is not static")
    return list(s)


def _select_back(e: Emitter, g: str, axis: int, rank: int, sel: str) -> str:
    """g with its `axis` mapped back through a (n_out, n_in) selection matrix: Σ_j g[.., j, ..] sel[j, i]."""
    perm = [a for a in range(rank) if a != axis] + [axis]
    inv = [perm.index(a) for a in range(rank)]
    moved = e.op("Transpose", [g], perm=perm)
    return e.op("Transpose", [e.op("MatMul", [moved, sel])], perm=inv)


@register("Slice")
def slice_(e: Emitter, node: Node, g: G) -> G:
    """Put the gradient back where the elements came from, zeros elsewhere: unit steps by one Pad;
    an axis with step s spreads its k gradient rows s apart (Unsqueeze, Pad by s − 1, Reshape to
    k·s) and shifts them to their start (Swin's patch merging takes x[:, 0::2, 1::2, :]); negative
    steps reverse the gradient first. Any axis of static size may be sliced, axis 0 included (the
    stacked q, k, v of a dynamo export); a sliced axis of unknown size (a dynamic batch) may only be
    taken whole."""
    x = node.inputs[0]
    shape = list(e.shape(x))
    r = len(shape)
    starts = _const_ints(e, node, 1, "starts")
    ends = _const_ints(e, node, 2, "ends")
    axes = [a % r for a in (_const_ints(e, node, 3, "axes") or list(range(len(starts))))]
    steps = _const_ints(e, node, 4, "steps") or [1] * len(starts)
    pads = [0] * (2 * r)
    strided: list[tuple[int, list[int]]] = []
    cur = list(shape)  # the gradient's shape as it is rebuilt
    for st, en, ax, step in zip(starts, ends, axes, steps):
        dim = shape[ax]
        if not isinstance(dim, int):
            if step == 1 and st == 0 and en >= 2**31 - 1:
                continue  # the whole dynamic axis (Keras' Cropping2D writes this for the batch)
            raise UnsupportedOpError("Slice", node.name, f"slicing axis {ax} of unknown size (the batch?)")
        idx = list(range(dim))[slice(st, en, step)]
        if not idx:
            raise UnsupportedOpError("Slice", node.name, f"empty slice on axis {ax}")
        if step == 1:
            pads[ax], pads[ax + r] = idx[0], dim - idx[-1] - 1
        else:
            strided.append((ax, idx))
            cur[ax] = len(idx)
    out = g[0]
    if any(pads):
        out = e.op("Pad", [out, e.ints(pads)], mode="constant") if e.opset >= 11 else e.op("Pad", [out], pads=pads)
    for ax, idx in strided:
        if idx[1] < idx[0]:  # negative step: reverse the gradient along the axis first
            out = e.op("Slice", [out, e.ints([-1]), e.ints([-(2**62)]), e.ints([ax]), e.ints([-1])])
            idx = idx[::-1]
        s, k, dim = idx[1] - idx[0], len(idx), shape[ax]
        spread = [0] * (2 * (r + 1))
        spread[ax + 1 + r + 1] = s - 1
        out = e.op("Pad", [e.unsqueeze(out, [ax + 1]), e.ints(spread)], mode="constant")
        cur[ax] = k * s
        out = e.op("Reshape", [out, e.ints([d if isinstance(d, int) else -1 for d in cur])])
        before, after = idx[0], dim - idx[0] - k * s
        if after < 0:  # the last row's spread runs past the end: cut it
            out = e.slice(out, ax, 0, k * s + after)
            after = 0
        shift = [0] * (2 * r)
        shift[ax], shift[ax + r] = before, after
        out = e.op("Pad", [out, e.ints(shift)], mode="constant")
        cur[ax] = dim
    return [out]


@register("Pad", min_opset=10)
def pad(e: Emitter, node: Node, g: G) -> G:
    """Constant padding: the gradient is the un-padded window (a Slice)."""
    if node.attr("mode", "constant") != "constant":
        raise UnsupportedOpError("Pad", node.name, f"mode={node.attr('mode')}")
    x = node.inputs[0]
    shape = _static(e, node, x)
    r = len(shape)
    pads = _const_ints(e, node, 1, "pads")
    axes = _const_ints(e, node, 3, "axes") if e.opset >= 18 else None
    axes = [a % r for a in axes] if axes else list(range(r))
    full = [0] * (2 * r)
    for i, a in enumerate(axes):
        full[a], full[a + r] = pads[i], pads[i + len(axes)]
    if any(p < 0 for p in full):
        raise UnsupportedOpError("Pad", node.name, "negative pads")
    ax = [a for a in range(r) if full[a] or full[a + r]]
    if not ax:
        return [g[0]]
    starts = [full[a] for a in ax]
    ends = [full[a] + shape[a] for a in ax]
    return [e.op("Slice", [g[0], e.ints(starts), e.ints(ends), e.ints(ax)])]


@register("Split", min_opset=9)
def split(e: Emitter, node: Node, g: G) -> G:
    """Concatenate the outputs' gradients (zeros where an output has none)."""
    axis = int(node.attr("axis", 0))
    parts = []
    for out, go in zip(node.outputs, g):
        if go is None:
            shape = e.shape(out)
            if not all(isinstance(d, int) for d in shape):
                shape_t = e.runtime_shape(out)
            else:
                shape_t = e.ints(shape)
            from onnx import helper

            go = e.op("ConstantOfShape", [shape_t], value=helper.make_tensor("zero", e.elem_type(out), [1], [0]))
        parts.append(go)
    return [e.op("Concat", parts, axis=axis)]


@register("Expand", broadcast=True, min_opset=8)
def expand(e: Emitter, node: Node, g: G) -> G:
    return [g[0], None]


@register("Gather", min_opset=16)
def gather(e: Emitter, node: Node, g: G) -> G:
    """Gather's gradient scatters g back to the gathered positions, adding where an index repeats.

    1-D data (PyTorch's as_strided export flattens, then gathers with run-time indices):
    ScatterElements(zeros, indices, g, reduction="add"). Constant indices on any axis: a matrix
    product with the one-hot selection matrix (folded in numpy), so dynamic batch axes stay free.
    Indices computed at run time on N-d data (a detector's selected anchors: constants of the
    run): the same product, the matrix built by OneHot at run time.
    """
    from onnx import helper

    data, idx = node.inputs[0], node.inputs[1]
    axis = int(node.attr("axis", 0))
    dshape = e.shape(data)
    r = len(dshape)
    axis %= r
    if r == 1:
        flat = e.ints([-1])
        n = dshape[0]
        i = e.op("Reshape", [idx, flat])
        if isinstance(n, int):
            i = e.op("Where", [e.op("Less", [i, e.const(np.array(0, np.int64))]), e.op("Add", [i, e.const(np.array(n, np.int64))]), i])
        zeros = e.op("ConstantOfShape", [e.runtime_shape(data)], value=helper.make_tensor("zero", e.elem_type(data), [1], [0]))
        out = e.scatter_add(zeros, i, e.op("Reshape", [g[0], flat]))
        return [out, None]
    iv = e.value(idx)
    size = dshape[axis]
    if iv is None and isinstance(size, int):
        return [_gather_runtime(e, node, g[0], data, idx, axis), None]
    if iv is None or not isinstance(size, int) or iv.ndim > 1:
        raise UnsupportedOpError("Gather", node.name, "indices computed at run time on multi-dimensional data")
    sel = np.zeros((max(iv.size, 1), size), dtype=e.np_dtype(data))
    sel[np.arange(iv.size), iv.reshape(-1) % size] = 1.0  # row j: where output j came from
    gy = g[0] if iv.ndim == 1 else e.unsqueeze(g[0], [axis])
    perm = [a for a in range(r) if a != axis] + [axis]
    inv = [perm.index(a) for a in range(r)]
    moved = e.op("Transpose", [gy], perm=perm)
    back = e.op("MatMul", [moved, e.const(sel, "gather_sel")])
    return [e.op("Transpose", [back], perm=inv), None]


def _gather_runtime(e: Emitter, node: Node, g: str, data: str, idx: str, axis: int) -> str:
    """Gather on N-d data with indices known only at run time (constants of the run): the same
    selection-matrix product as constant indices, the matrix built at run time with OneHot."""
    dshape = e.shape(data)
    r = len(dshape)
    size = dshape[axis]
    rest = dshape[axis + 1:]
    if not isinstance(size, int) or not all(isinstance(d, int) for d in rest):
        raise UnsupportedOpError("Gather", node.name, f"data {data!r} has no static size after axis {axis}")
    flat = e.op("Reshape", [idx, e.ints([-1])])
    onoff = e.const(np.array([0.0, 1.0], dtype=np.float32), "onehot_values")  # ORT's OneHot: float32 values
    sel = e.op("OneHot", [flat, e.const(np.array(size, np.int64), "depth"), onoff], axis=-1)  # (n, size)
    if e.np_dtype(data) != np.float32:
        sel = e.op("Cast", [sel], to=e.elem_type(data))
    gy = e.op("Reshape", [g, e.ints([0] * axis + [-1] + list(rest))])  # the index axes as one
    return _select_back(e, gy, axis, r, sel)


@register("GatherND", min_opset=16)
def gather_nd(e: Emitter, node: Node, g: G) -> G:
    """GatherND (batch_dims = 0) with indices of the run: ScatterND(zeros, indices, g, add)."""
    from onnx import helper

    if int(node.attr("batch_dims", 0)) != 0:
        raise UnsupportedOpError("GatherND", node.name, "batch_dims other than 0")
    data, idx = node.inputs[0], node.inputs[1]
    zeros = e.op("ConstantOfShape", [e.runtime_shape(data)], value=helper.make_tensor("zero", e.elem_type(data), [1], [0]))
    return [e.op("ScatterND", [zeros, idx, g[0]], reduction="add"), None]


@register("TopK", min_opset=16)
def topk(e: Emitter, node: Node, g: G) -> G:
    """The values of TopK: their gradient goes back to where they were taken from (the indices
    output, a constant of the run); the indices carry none."""
    from onnx import helper

    if g[0] is None:
        return [None, None]
    x = node.inputs[0]
    axis = int(node.attr("axis", -1)) % e.rank(x)
    zeros = e.op("ConstantOfShape", [e.runtime_shape(x)], value=helper.make_tensor("zero", e.elem_type(x), [1], [0]))
    return [e.scatter_add(zeros, node.outputs[1], g[0], axis=axis), None]


@register("ScatterElements", min_opset=16)
def scatter_elements(e: Emitter, node: Node, g: G) -> G:
    """Positions written by `updates` (indices of the run, e.g. MultiScaleRoIAlign's per-level
    results put back in RoI order): their gradient goes to `updates` (GatherElements), the rest
    to `data` — all of it with reduction="add", the unwritten part with "none"."""
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise UnsupportedOpError("ScatterElements", node.name, f"reduction={reduction}")
    data, idx, upd = node.inputs[:3]
    axis = int(node.attr("axis", 0)) % e.rank(data)
    g_data = g_upd = None
    if node.needs[0]:
        if reduction == "add":
            g_data = g[0]
        else:
            from onnx import helper

            zeros = e.op("ConstantOfShape", [e.runtime_shape(upd)], value=helper.make_tensor("zero", e.elem_type(upd), [1], [0]))
            g_data = e.op("ScatterElements", [g[0], idx, zeros], axis=axis)
    if len(node.needs) > 2 and node.needs[2]:
        g_upd = e.op("GatherElements", [g[0], idx], axis=axis)
    return [g_data, None, g_upd]


def _resize_matrix(n_in: int, n_out: int, scale: float, mode: str, ctm: str, nearest_mode: str) -> np.ndarray:
    """(n_out, n_in) weights of ONNX Resize along one axis: y = R x (nearest or linear)."""
    o = np.arange(n_out, dtype=np.float64)
    if ctm == "align_corners":
        pos = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    elif ctm == "asymmetric":
        pos = o / scale
    elif ctm == "pytorch_half_pixel":
        pos = (o + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    elif ctm == "tf_half_pixel_for_nn":
        pos = (o + 0.5) / scale
    elif ctm == "half_pixel":
        pos = (o + 0.5) / scale - 0.5
    else:
        raise NotImplementedError(f"coordinate_transformation_mode={ctm}")
    r = np.zeros((n_out, n_in))
    if mode == "nearest":
        if nearest_mode == "floor":
            idx = np.floor(pos)
        elif nearest_mode == "ceil":
            idx = np.ceil(pos)
        elif nearest_mode == "round_prefer_ceil":
            idx = np.floor(pos + 0.5)
        else:  # round_prefer_floor
            idx = np.ceil(pos - 0.5)
        idx = np.clip(idx, 0, n_in - 1).astype(int)
        r[np.arange(n_out), idx] = 1
        return r
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    np.add.at(r, (np.arange(n_out), lo), 1 - frac)
    np.add.at(r, (np.arange(n_out), hi), frac)
    return r


@register("Resize", "Upsample")
def resize(e: Emitter, node: Node, g: G) -> G:
    """Resize is linear in its input: y = R_h · x · R_wᵀ over the two last axes, with R built in
    numpy from the mode (nearest / linear), coordinate_transformation_mode and nearest_mode; so
    dx = R_hᵀ · g · R_w, two MatMuls with constants. N and C must not be resized."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = _static(e, node, x), _static(e, node, y)
    if len(xs) != 4 or xs[1] != ys[1]:
        raise UnsupportedOpError(node.op_type, node.name, "only the two spatial axes of a 4-D tensor may be resized")
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise UnsupportedOpError(node.op_type, node.name, f"mode={mode}")
    if node.attr("antialias", 0):
        raise UnsupportedOpError(node.op_type, node.name, "antialias=1")
    if node.op_type == "Upsample" or e.opset < 11:
        ctm, nearest = "asymmetric", "floor"
    else:
        ctm = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest = node.attr("nearest_mode", "round_prefer_floor")
    scales = None
    for i in (2, 1):  # Resize-11+: (X, roi, scales, sizes); Resize-10/Upsample: (X, scales)
        if len(node.inputs) > i and node.inputs[i]:
            v = e.value(node.inputs[i])
            if v is not None and v.size == 4 and v.dtype.kind == "f":
                scales = [float(a) for a in v]
                break
    sh = scales[2] if scales else ys[2] / xs[2]
    sw = scales[3] if scales else ys[3] / xs[3]
    m = "linear" if mode in ("linear", "bilinear") else "nearest"
    dt = e.np_dtype(x)
    rh = _resize_matrix(xs[2], ys[2], sh, m, ctm, nearest)
    rw = _resize_matrix(xs[3], ys[3], sw, m, ctm, nearest)
    t = e.op("MatMul", [g[0], e.const(rw.astype(dt), "resize_w")])  # (N, C, Ho, Wi)
    return [e.op("MatMul", [e.const(np.ascontiguousarray(rh.T).astype(dt), "resize_hT"), t])] + [None] * (len(node.inputs) - 1)
