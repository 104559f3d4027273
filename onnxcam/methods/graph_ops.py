"""Pieces the methods' in-graph forms share (`CAMMethod.graph`): sums over channels and locations
of channels-first (N, C, h, w) tensors, written through the rewrite's Emitter. Channel sums go
through graph/channel_sum.py, so that an image's map is the same alone and in any batch."""

from __future__ import annotations

import functools
from typing import Callable

from onnx import TensorProto

from ..graph.channel_sum import channel_sum
from ..graph.rewrite import GraphTensors


def spatial_sum(g: GraphTensors, x: str) -> str:
    """Σ_ij x (N, C, 1, 1)."""
    return g.e.reduce_sum(x, [2, 3], keepdims=True)


def layer_channel_sum(g: GraphTensors, x: str, weights: str | None = None) -> str:
    """Σ_k x_k (N, h, w) of a tensor shaped like A, or Σ_k w_k x_k for weights (N, C, 1, 1)."""
    return channel_sum(g.e, x, (g.layer.channels, g.layer.height, g.layer.width), weights=weights)


def channel_relu_sum(g: GraphTensors, x: str) -> str:
    """ReLU(Σ_k x) (N, h, w)."""
    return g.e.op("Relu", [layer_channel_sum(g, x)])


def weighted_sum(g: GraphTensors, w: str) -> str:
    """ReLU(Σ_k w_k A^k) (N, h, w) for weights w (N, C, 1, 1): the base class's `cam`."""
    return g.e.op("Relu", [layer_channel_sum(g, g.acts, weights=w)])


def layer_map(g: GraphTensors, m: str) -> dict[str, str]:
    """{"cam": m} for a float32 map m (N, h, w) at the layer's resolution (its shape declared)."""
    return {"cam": g.e.set_info(m, (None, g.layer.height, g.layer.width), TensorProto.FLOAT)}


def on_spatial_layers(graph: Callable) -> Callable:
    """A method's `graph` that reads A: nothing in the graph for token layers (`g.acts` None),
    where the method's numpy `cam` runs on the patch grid instead."""
    @functools.wraps(graph)
    def wrapped(self, g: GraphTensors) -> dict[str, str]:
        return {} if g.acts is None else graph(self, g)
    return wrapped
