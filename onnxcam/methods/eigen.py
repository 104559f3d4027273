"""Principal-component methods: Eigen-CAM and EigenGrad-CAM, and the random baseline."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


def first_component(maps: np.ndarray) -> np.ndarray:
    """Project each (C, h, w) stack, centred over locations, on its first right singular vector.

    The singular vector's sign is arbitrary (pytorch-grad-cam's maps come out inverted at times);
    we fix it so that the projection correlates positively with the channel sum of the stack, i.e.
    the map is bright where the features are strong.
    """
    n, c, h, w = maps.shape
    out = np.zeros((n, h, w), np.float64)
    for i in range(n):
        x = maps[i].reshape(c, h * w).T.astype(np.float64)  # (hw, C)
        xc = x - x.mean(axis=0)
        if not np.any(xc):
            continue
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        proj = xc @ vt[0]
        ref = x.sum(axis=1)
        if float(np.dot(proj, ref - ref.mean())) < 0:
            proj = -proj
        out[i] = proj.reshape(h, w)
    return out


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

    def cam(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(first_component(inp.activations), 0).astype(np.float32)


@register
class EigenGradCAM(CAMMethod):
    """EigenGrad-CAM — Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) on the gradient-weighted
    activations ∂y^c/∂A ⊙ A, which makes it class discriminative; introduced by pytorch-grad-cam
    (Gildenblat et al., 2021).

    L^c = ReLU((g ⊙ A)_c · v₁).

    Example: ``Explainer("model.onnx", method="eigengradcam").explain(x).heatmaps``
    """

    name = "eigengradcam"

    def cam(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(first_component(inp.gradients * inp.activations), 0).astype(np.float32)


@register
class RandomCAM(CAMMethod):
    """Random baseline — channel weights drawn uniformly from [−1, 1] (seeded): the map a
    metric must beat to mean anything.

    Example: ``Explainer("model.onnx", method="random").explain(x).heatmaps``
    """

    name = "random"
    needs_gradients = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def weights(self, inp: MethodInputs) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.uniform(-1, 1, size=inp.activations.shape[:2])


def kernel_component(maps: np.ndarray, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """Kernel-PCA analogue of `first_component` with the sigmoid kernel
    k(a, b) = tanh(γ⟨a, b⟩ + c₀) (γ = 1/C by default) between locations: the first component of
    the centred kernel matrix, scaled by √λ (as scikit-learn's KernelPCA.fit_transform), sign fixed
    as in `first_component`."""
    n, c, h, w = maps.shape
    out = np.zeros((n, h, w), np.float64)
    g = gamma if gamma is not None else 1.0 / c
    for i in range(n):
        x = maps[i].reshape(c, h * w).T.astype(np.float64)
        x = x - x.mean(axis=0)
        k = np.tanh(g * (x @ x.T) + coef0)
        one = np.full_like(k, 1.0 / len(k))
        kc = k - one @ k - k @ one + one @ k @ one
        vals, vecs = np.linalg.eigh(kc)
        lam, vec = vals[-1], vecs[:, -1]
        if lam <= 0:
            continue
        proj = vec * np.sqrt(lam)
        ref = maps[i].reshape(c, h * w).sum(axis=0)
        if float(np.dot(proj, ref - ref.mean())) < 0:
            proj = -proj
        out[i] = proj.reshape(h, w)
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

    def cam(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(kernel_component(inp.activations, self.gamma, self.coef0), 0).astype(np.float32)


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
