"""Principal-component methods: Eigen-CAM, EigenGrad-CAM and KPCA-CAM."""

from __future__ import annotations

import numpy as np

from ..graph.gram import append_gram
from ..graph.rewrite import GraphTensors
from .base import CAMMethod, MethodInputs, register
from .graph_ops import on_spatial_layers
from .maps import component_from_gram, first_component


def _gram_outputs(g: GraphTensors, x: str) -> dict[str, str]:
    """The Gram matrix of the centred stack `x` and its centred channel sum (graph/gram.py)."""
    t = append_gram(g.e, x, int(g.layer.channels), int(g.layer.height), int(g.layer.width))
    return {"gram_locations" if t.over_locations else "gram_channels": t.gram, "centred_sum": t.centred_sum}


def _component(inp: MethodInputs, stack) -> np.ndarray:
    """The first component (N, h, w): from the in-graph Gram matrix where the run computed it,
    else `first_component` of `stack()` (the SVD)."""
    n, _, h, w = inp.activations.shape
    if "gram_locations" in inp.graph:
        return component_from_gram(inp.graph["gram_locations"], inp.graph["centred_sum"], True).reshape(n, h, w)
    if "gram_channels" in inp.graph:
        return component_from_gram(inp.graph["gram_channels"], inp.graph["centred_sum"], False, stack()).reshape(n, h, w)
    return first_component(stack())


@register
class EigenCAM(CAMMethod):
    """Eigen-CAM — Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020.

    L = ReLU(A_c · v₁), A_c the (hw × C) activations centred over locations, v₁ their first right
    singular vector (sign fixed: positive correlation with Σ_k A^k). Class-agnostic, gradient-free.

    Example: ``Explainer("model.onnx", method="eigencam").explain(x).heatmaps``
    """

    name = "eigencam"
    needs_gradients = False

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return _gram_outputs(g, g.acts)

    def cam(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(_component(inp, lambda: inp.activations), 0).astype(np.float32)


@register
class EigenGradCAM(CAMMethod):
    """EigenGrad-CAM — Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) on the gradient-weighted
    activations ∂y^c/∂A ⊙ A, which makes it class discriminative; introduced by pytorch-grad-cam
    (Gildenblat et al., 2021).

    L^c = ReLU((g ⊙ A)_c · v₁).

    Example: ``Explainer("model.onnx", method="eigengradcam").explain(x).heatmaps``
    """

    name = "eigengradcam"

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return _gram_outputs(g, g.e.op("Mul", [g.grads, g.acts]))

    def cam(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(_component(inp, lambda: inp.gradients * inp.activations), 0).astype(np.float32)


def kernel_component(maps: np.ndarray, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """Kernel-PCA analogue of `first_component` with the sigmoid kernel
    k(a, b) = tanh(γ⟨a, b⟩ + c₀) (γ = 1/C by default) between locations: the first component of
    the centred kernel matrix, scaled by √λ (as scikit-learn's KernelPCA.fit_transform), sign fixed
    as in `first_component`. (N, h, w) float64."""
    n, c, h, w = maps.shape
    grams, sums = np.zeros((n, h * w, h * w)), np.zeros((n, h * w))
    for i in range(n):
        x = maps[i].reshape(c, h * w).T.astype(np.float64)
        x = x - x.mean(axis=0)  # (hw, C), centred over locations
        grams[i], sums[i] = x @ x.T, x.sum(axis=1)
    return kernel_component_from_gram(grams, sums, c, gamma, coef0).reshape(n, h, w)


def kernel_component_from_gram(gram: np.ndarray, centred_sum: np.ndarray, channels: int, gamma: float | None = None,
                               coef0: float = 1.0) -> np.ndarray:
    """`kernel_component` from G = X_c X_cᵀ (N, hw, hw), the Gram matrix of the centred locations
    (graph/gram.py computes it in the run), and Σ_c X_c (N, hw) for the sign: K = tanh(γG + c₀),
    centred (K − 1K − K1 + 1K1, 1 = 1/hw), its leading eigenpair (λ, v), projection √λ·v (0 where
    λ ≤ 0), negated where its dot with Σ_c X_c is negative. Returns (N, hw) float64."""
    g = gamma if gamma is not None else 1.0 / channels
    out = np.zeros(centred_sum.shape, np.float64)
    for i in range(len(gram)):
        k = np.tanh(g * gram[i].astype(np.float64) + coef0)
        one = np.full_like(k, 1.0 / len(k))
        kc = k - one @ k - k @ one + one @ k @ one
        vals, vecs = np.linalg.eigh(kc)
        lam, vec = vals[-1], vecs[:, -1]
        if lam <= 0:
            continue
        proj = vec * np.sqrt(lam)
        if float(np.dot(proj, centred_sum[i])) < 0:
            proj = -proj
        out[i] = proj
    return out


@register
class KPCACAM(CAMMethod):
    """KPCA-CAM — Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA", 2024.

    Eigen-CAM with kernel PCA: L = ReLU(first kernel principal component of the (hw × C)
    centred activations), sigmoid kernel tanh(γ⟨a, b⟩ + 1), γ = 1/C. Gradient-free,
    class-agnostic; the sign is fixed as Eigen-CAM's. Costs an (hw × hw) eigendecomposition.

    Example: ``Explainer("model.onnx", method="kpcacam").explain(x).heatmaps``
    """

    name = "kpcacam"
    needs_gradients = False

    def __init__(self, gamma: float | None = None, coef0: float = 1.0) -> None:
        self.gamma, self.coef0 = gamma, coef0

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        """The location Gram matrix of the centred A in the run (where h·w ≤ C; the kernel is a
        function of it), so that only (N, hw, hw) leaves it; nothing otherwise."""
        if g.layer.height * g.layer.width > g.layer.channels:
            return {}
        return _gram_outputs(g, g.acts)

    def cam(self, inp: MethodInputs) -> np.ndarray:
        n, c, h, w = inp.activations.shape
        if "gram_locations" in inp.graph:
            comp = kernel_component_from_gram(inp.graph["gram_locations"], inp.graph["centred_sum"], c, self.gamma,
                                              self.coef0).reshape(n, h, w)
        else:
            comp = kernel_component(inp.activations, self.gamma, self.coef0)
        return np.maximum(comp, 0).astype(np.float32)
