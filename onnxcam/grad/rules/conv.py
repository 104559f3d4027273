"""Convolutions. The input gradient of a Conv is the transposed convolution with the same weights.

Per spatial axis, y[o] = Σ_t W[t]·x[s·o + d·t − p_begin], so ∂⟨g, y⟩/∂x[i] = Σ_{o,t: s·o + d·t − p_begin = i}
W[t]·g[o]. Two ways to emit it, the same sums (equal up to float32 summation order):

- stride 1 with constant weights: a plain Conv of g with the weights transposed (input and output
  channels swapped within each group) and flipped in space, computed in numpy at rewrite time,
  pads d·(k − 1) − p on each side. onnxruntime runs a Conv with constant weights through its
  blocked (NCHWc) kernels, ~15–30 % faster on 3×3 convolutions than its ConvTranspose (im2col
  GEMM + col2im) on the same sizes.
- otherwise (strides, computed weights, a pad wider than the kernel): ConvTranspose with the same
  weights, strides, dilations and group. With effective kernel K = (k − 1)·d + 1 and output length L,
  it must give back the input length H exactly: s·(L − 1) + K − p_begin − p_end' + output_padding = H,
  so the end pad is shrunk (or output_padding grown) by the rows that no window reached. For
  strided convs the alternatives measured slower in onnxruntime (a sub-pixel Conv + DepthToSpace,
  per-phase Convs, a 1×1 Conv + zero insertion: bench/DESIGN-issue15.md).

auto_pad is resolved to explicit pads by the normalising pass; output_shape is never emitted.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...errors import UnsupportedOpError
from ..builder import Emitter, Node
from . import register

G = list[Optional[str]]


def transposed_pads(
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(pads, output_padding) of the ConvTranspose that maps `out_sizes` back onto `in_sizes`."""
    nd = len(in_sizes)
    begin, end, out_pad = list(pads[:nd]), [], []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        rest = strides[i] * (out_sizes[i] - 1) + eff - begin[i] - in_sizes[i]
        end.append(max(rest, 0))
        out_pad.append(max(-rest, 0))
    return begin + end, out_pad


def spatial(e: Emitter, t: str, what: str, node: Node) -> list[int]:
    dims = e.shape(t)[2:]
    if not all(isinstance(d, int) for d in dims):
        raise UnsupportedOpError(node.op_type, node.name, f"{what} spatial size {list(dims)} is not static")
    return [int(d) for d in dims]


def transposed_weights(w: np.ndarray, group: int) -> np.ndarray:
    """The weights of the Conv that computes a stride-1 Conv's input gradient: (C_out, C_in/G, *k)
    → (C_in, C_out/G, *k), input and output channels swapped within each group, flipped in space."""
    c_out, c_in_g = w.shape[:2]
    k = w.shape[2:]
    wg = w.reshape((group, c_out // group, c_in_g) + k).swapaxes(1, 2).reshape((c_in_g * group, c_out // group) + k)
    return np.ascontiguousarray(wg[(slice(None), slice(None)) + (slice(None, None, -1),) * len(k)])


def _as_conv(e: Emitter, g: str, w: np.ndarray, group: int, kernel: Sequence[int], dil: Sequence[int],
             pads: Sequence[int]) -> Optional[str]:
    """A stride-1 Conv's input gradient as a Conv with transposed, flipped constant weights
    (pads d·(k − 1) − p); None where a pad is wider than the dilated kernel (a negative pad)."""
    nd = len(kernel)
    reach = [(kernel[i] - 1) * dil[i] for i in range(nd)]
    new = [reach[i % nd] - pads[i] for i in range(2 * nd)]
    if min(new) < 0:
        return None
    return e.op("Conv", [g, e.const(transposed_weights(w, group), "conv_grad_w")], "conv_grad",
                dilations=list(dil), group=group, kernel_shape=list(kernel), pads=new)


@register("Conv")
def conv(e: Emitter, node: Node, g: G) -> G:
    x, w = node.inputs[0], node.inputs[1]
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise UnsupportedOpError("Conv", node.name, "auto_pad must be resolved first")
    if len(node.needs) > 1 and node.needs[1]:
        raise UnsupportedOpError("Conv", node.name, "weights computed from the explained layer")
    hw_in, hw_out = spatial(e, x, "input", node), spatial(e, node.outputs[0], "output", node)
    nd = len(hw_in)
    kernel = node.attr("kernel_shape") or list(e.shape(w)[2:])
    strides = node.attr("strides") or [1] * nd
    dil = node.attr("dilations") or [1] * nd
    group = int(node.attr("group", 1))
    pads, out_pad = transposed_pads(hw_in, hw_out, kernel, strides, dil, node.attr("pads") or [0] * 2 * nd)
    w_value = e.value(w)
    if w_value is not None and all(s == 1 for s in strides):
        gx = _as_conv(e, g[0], w_value.astype(e.np_dtype(w)), group, kernel, dil, pads)
        if gx is not None:
            return [gx, None, None]
    gx = e.op(
        "ConvTranspose", [g[0], w], "conv_grad",
        strides=list(strides), dilations=list(dil), group=group,
        kernel_shape=list(kernel), pads=pads,
        output_padding=out_pad if any(out_pad) else None,
    )
    return [gx, None, None]


@register("ConvTranspose")
def conv_transpose(e: Emitter, node: Node, g: G) -> G:
    """The input gradient of a ConvTranspose is the Conv with the same weights and geometry."""
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "") or node.attr("output_shape"):
        raise UnsupportedOpError("ConvTranspose", node.name, "auto_pad/output_shape are not supported")
    if len(node.needs) > 1 and node.needs[1]:
        raise UnsupportedOpError("ConvTranspose", node.name, "weights computed from the explained layer")
    x, w = node.inputs[0], node.inputs[1]
    nd = len(e.shape(x)) - 2
    gx = e.op(
        "Conv", [g[0], w], "convT_grad",
        strides=node.attr("strides") or [1] * nd, dilations=node.attr("dilations") or [1] * nd,
        group=int(node.attr("group", 1)), pads=node.attr("pads") or [0] * 2 * nd,
        kernel_shape=node.attr("kernel_shape") or list(e.shape(w)[2:]),
    )
    return [gx, None, None]
