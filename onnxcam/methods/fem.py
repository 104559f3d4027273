"""Activation statistics: FEM, channel weights from how much of each map stands out."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


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

    def weights(self, inp: MethodInputs) -> np.ndarray:
        a = inp.activations.astype(np.float64)
        th = a.mean(axis=(2, 3), keepdims=True) + self.k * a.std(axis=(2, 3), keepdims=True)
        return (a > th).mean(axis=(2, 3))
