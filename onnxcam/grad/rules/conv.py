"""Convolutions. The input gradient of a Conv is a ConvTranspose with the same weights.

For every spatial axis, with effective kernel K = (k − 1)·d + 1 and output length L, the
transposed convolution must give back the input length H exactly:
    s·(L − 1) + K − p_begin − p_end' + output_padding = H,
so the end pad is shrunk (or output_padding grown) by the rows that no window reached.
auto_pad is resolved to explicit pads by the normalising pass; output_shape is never emitted.
"""

from __future__ import annotations

from typing import Optional, Sequence

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
    pads, out_pad = transposed_pads(hw_in, hw_out, kernel, strides, dil, node.attr("pads") or [0] * 2 * nd)
    gx = e.op(
        "ConvTranspose", [g[0], w], "conv_grad",
        strides=list(strides), dilations=list(dil), group=int(node.attr("group", 1)),
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
