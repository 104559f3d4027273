"""Gradient-weighted methods: Grad-CAM and HiResCAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


@register
class GradCAM(CAMMethod):
    """Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.

    α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij,  L^c = ReLU(Σ_k α_k^c A^k).

    Example: ``Explainer("model.onnx", method="gradcam").explain(x).heatmaps``
    """

    name = "gradcam"

    def weights(self, inp: MethodInputs) -> np.ndarray:
        return inp.gradients.astype(np.float64).mean(axis=(2, 3))


@register
class HiResCAM(CAMMethod):
    """HiResCAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", 2020.

    L^c = ReLU(Σ_k ∂y^c/∂A^k ⊙ A^k): the element-wise product keeps where the gradient points,
    which Grad-CAM's spatial average loses.

    Example: ``Explainer("model.onnx", method="hirescam").explain(x).heatmaps``
    """

    name = "hirescam"

    def cam(self, inp: MethodInputs) -> np.ndarray:
        m = (inp.gradients.astype(np.float64) * inp.activations.astype(np.float64)).sum(axis=1)
        return np.maximum(m, 0).astype(np.float32)
