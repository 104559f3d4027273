"""The maths every method shares: normalising and resizing maps, upsampling activations, and
the first principal component of a stack of maps (Eigen-CAM, and eigen_smooth for any method)."""

from __future__ import annotations

import cv2
import numpy as np

from ..interpolation import linear_matrix


def normalize_maps(cams: np.ndarray) -> np.ndarray:
    """Per image: (m − min) / (max − min) · 1 / (1 + 1e-7), in float32.

    pytorch-grad-cam's scale_cam_image divides by (max − min + 1e-7): an absolute ε that blanks a
    map whose values are all tiny — a correct gradient of a score of 1e-11 (a saturated sigmoid)
    gives a map below 1e-3. Here ε is relative to the map's own range, so the result does not
    depend on the gradient's scale (it equals pytorch-grad-cam's wherever max − min ≫ 1e-7). A
    constant map stays 0 (the explainer reports an exactly zero map as such)."""
    m = cams.astype(np.float64)
    mins = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - mins
    safe = np.where(span > 0, span * (1 + 1e-7), 1.0)
    return ((m - mins) / safe).astype(np.float32)


def scale_maps(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The heatmaps, in [0, 1] at size=(H, W), exactly as pytorch-grad-cam makes them: normalise
    at the layer's resolution, resize bilinearly (OpenCV, half-pixel centres), normalise again
    (the resize can lift the minimum above 0)."""
    h, w = size
    normed = normalize_maps(cams)
    out = np.empty((len(cams), h, w), np.float32)
    for i, m in enumerate(normed):
        out[i] = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return normalize_maps(np.maximum(out, 0))


def upsample(acts: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """(C, h, w) → (C, H, W), bilinear, separable (as torch's interpolate)."""
    ry = linear_matrix(size[0], acts.shape[1], align_corners)
    rx = linear_matrix(size[1], acts.shape[2], align_corners)
    t = np.matmul(acts.astype(np.float32), rx.T.astype(np.float32))  # (C, h, W)
    return np.matmul(ry.astype(np.float32), t)  # (C, H, W), two BLAS products


def minmax_channels(m: np.ndarray, eps: float) -> np.ndarray:
    """Each (h, w) map min-max normalised: (m − min) / (max − min + eps)."""
    mins = m.min(axis=(1, 2), keepdims=True)
    maxs = m.max(axis=(1, 2), keepdims=True)
    return (m - mins) / (maxs - mins + eps)


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


def component_from_gram(gram: np.ndarray, centred_sum: np.ndarray, over_locations: bool,
                        maps: np.ndarray | None = None) -> np.ndarray:
    """`first_component` from the Gram matrix of the centred stack (graph/gram.py computes it in
    the session): with X_c = UΣVᵀ (h·w × C), X_c v₁ = σ₁u₁ and (u₁, σ₁²) is the leading eigenpair of
    G = X_c X_cᵀ, so the projection is √λ₁·u₁ (over locations); from the (C × C) X_cᵀ X_c it is X_c v₁
    (`maps` (N, C, h, w) needed). Sign as `first_component`: positive dot with Σ_c X_c
    (`centred_sum`, (N, h·w)). Returns (N, h·w) float64."""
    lam, vec = np.linalg.eigh(gram.astype(np.float64))  # ascending eigenvalues
    if over_locations:
        proj = vec[..., -1] * np.sqrt(np.maximum(lam[..., -1:], 0.0))
    else:
        n, c = maps.shape[:2]
        x = maps.reshape(n, c, -1).astype(np.float64)
        proj = np.einsum("nci,nc->ni", x - x.mean(axis=2, keepdims=True), vec[..., -1])
    flip = np.einsum("ni,ni->n", proj, centred_sum.reshape(len(proj), -1).astype(np.float64)) < 0
    return np.where(flip[:, None], -proj, proj)
