"""Activation statistics: FEM, channel weights from how much of each map stands out."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..graph.rewrite import GraphTensors
from .base import CAMMethod, MethodInputs, register
from .graph_ops import layer_map, on_spatial_layers, weighted_sum


@register
class FEM(CAMMethod):
    """FEM — Fuad et al., "Features Understanding in 3D CNNs for Actions Recognition in Video",
    IPTA 2020 (the Feature Explanation Method).

    k-sigma rule: w_k = mean_ij 1[A^k_ij > μ_k + k·σ_k] (the fraction of the map that stands out),
    L = ReLU(Σ_k w_k A^k). Gradient-free, class-agnostic; k = 2.

    Example: ``Explainer("model.onnx", method="fem").explain(x).heatmaps``
    """

    name = "fem"
    needs_gradients = False

    def __init__(self, k: float = 2.0) -> None:
        self.k = k

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        """μ_k, σ_k (population) and the threshold in float64 as `weights` computes them, then the
        weighted sum; only the map leaves the run. (Not `graph_map`: float64 reductions are not in
        every runtime an exported heatmap targets.)"""
        e = g.e
        a = e.op("Cast", [g.acts], "to_double", to=TensorProto.DOUBLE)
        mean = e.reduce("ReduceMean", a, [2, 3], keepdims=True)
        centred = e.op("Sub", [a, mean])
        std = e.op("Sqrt", [e.reduce("ReduceMean", e.op("Mul", [centred, centred]), [2, 3], keepdims=True)])
        th = e.op("Add", [mean, e.op("Mul", [std, e.const(np.array(self.k, np.float64), "k")])])
        above = e.op("Cast", [e.op("Greater", [a, th])], "to_double", to=TensorProto.DOUBLE)
        w = e.op("Cast", [e.reduce("ReduceMean", above, [2, 3], keepdims=True)], "to_float", to=TensorProto.FLOAT)
        return layer_map(g, weighted_sum(g, w))

    def weights(self, inp: MethodInputs) -> np.ndarray:
        a = inp.activations.astype(np.float64)
        th = a.mean(axis=(2, 3), keepdims=True) + self.k * a.std(axis=(2, 3), keepdims=True)
        return (a > th).mean(axis=(2, 3))
