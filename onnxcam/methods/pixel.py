"""Methods that need the gradient down to the input image."""

from __future__ import annotations

import cv2
import numpy as np

from .base import CAMMethod, MethodInputs, normalize_maps, register, scale_maps
from .gradcam import GradCAM, GradCAMPlusPlus


def _minmax_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) → (N, C, H, W): each (n, c) map min-max normalised, then resized bilinearly
    (pytorch-grad-cam's scale_accross_batch_and_channels)."""
    n, c = maps.shape[:2]
    flat = normalize_maps(maps.reshape(n * c, *maps.shape[2:]))
    h, w = size
    if flat.shape[1:] == (h, w):
        return flat.reshape(n, c, h, w)
    from .score import upsample  # separable bilinear, half-pixel centres: OpenCV's INTER_LINEAR

    out = np.concatenate([upsample(flat[s : s + 256], (h, w), align_corners=False) for s in range(0, n * c, 256)])
    return out.reshape(n, c, h, w)


@register
class GuidedBackprop(CAMMethod):
    """Guided backpropagation — Springenberg et al., "Striving for Simplicity: The All
    Convolutional Net", ICLR workshop 2015.

    R = ∂y^c/∂x with every ReLU passing back only positive gradients where its input is positive:
    R_l = 1[x_l > 0] ⊙ 1[R_{l+1} > 0] ⊙ R_{l+1}. The (N, C, H, W) gradient image is in
    ``res.extra["guided_backprop"]``; the heatmap is its per-pixel max of |R| over channels.

    Example: ``Explainer("model.onnx", method="guidedbackprop").explain(x).extra["guided_backprop"]``
    """

    name = "guidedbackprop"
    needs_gradients = False
    input_gradient = "guided"

    def cam(self, inp: MethodInputs) -> np.ndarray:
        inp.extra["guided_backprop"] = inp.input_gradients
        return np.abs(inp.input_gradients).max(axis=1).astype(np.float32)


@register
class GuidedGradCAM(CAMMethod):
    """Guided Grad-CAM — Selvaraju et al., ICCV 2017: guided backpropagation times the Grad-CAM
    heatmap upsampled to the input, G ⊙ Up(L^c_Grad-CAM), in ``res.extra["guided_gradcam"]``
    (N, C, H, W); the heatmap itself is Grad-CAM's, L^c = ReLU(Σ_k α_k^c A^k).

    Example: ``Explainer("model.onnx", method="guidedgradcam").explain(x).extra["guided_gradcam"]``
    """

    name = "guidedgradcam"
    input_gradient = "guided"

    def cam(self, inp: MethodInputs) -> np.ndarray:
        cams = GradCAM().cam(inp)
        heat = scale_maps(cams, inp.input_size)
        inp.extra["guided_backprop"] = inp.input_gradients
        inp.extra["guided_gradcam"] = (inp.input_gradients * heat[:, None]).astype(np.float32)
        return cams


@register
class FullGrad(CAMMethod):
    """FullGrad — Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019.

    S = ψ(|x ⊙ ∇_x y^c|) + Σ_l Σ_c ψ(|b_l ⊙ ∇_{z_l} y^c|), with z_l the output of every convolution
    with a bias and of every batch norm (effective bias β − μγ/√(σ²+ε)), ψ = per-channel min-max
    then bilinear resize to the input (as pytorch-grad-cam). Class-specific; the layer is unused.

    Example: ``Explainer("model.onnx", method="fullgrad").explain(x).heatmaps``
    """

    name = "fullgrad"
    needs_gradients = False
    input_gradient = "plain"
    bias_taps = True

    def cam(self, inp: MethodInputs) -> np.ndarray:
        size = inp.input_size
        total = _minmax_resize(np.abs(inp.input_gradients * inp.inputs_nchw), size).sum(axis=1)
        for bias, grads in inp.bias_gradients:
            term = np.abs(bias[None, :, None, None] * grads.astype(np.float64))
            total = total + _minmax_resize(term.astype(np.float32), size).sum(axis=1)
        return total.astype(np.float32)


@register
class SmoothGradCAMpp(CAMMethod):
    """SmoothGrad-CAM++ — Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models", 2019.

    Grad-CAM++'s α and weights computed from gradients averaged over n noisy copies of the input
    (x + N(0, σ²), σ = `std`·(max x − min x)): ḡ² = mean_i g_i², ḡ³ = mean_i g_i³,
    α = ḡ² / (2ḡ² + Σ_ab A · ḡ³), w_k = Σ_ij α · ReLU(ḡ), L^c = ReLU(Σ_k w_k A^k) on the clean A.
    Seeded.

    Example: ``Explainer("model.onnx", method=SmoothGradCAMpp(num_samples=8)).explain(x)``
    """

    name = "smoothgradcam++"

    def __init__(self, num_samples: int = 4, std: float = 0.3, seed: int = 0, relative: bool = False) -> None:
        self.num_samples, self.std, self.seed, self.relative = num_samples, std, seed, relative

    def weights(self, inp: MethodInputs) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        x = inp.inputs
        sigma = self.std * (float(x.max() - x.min()) if self.relative else 1.0)
        g1 = g2 = g3 = 0.0
        for _ in range(self.num_samples):
            noisy = (x + rng.normal(0.0, sigma, size=x.shape)).astype(x.dtype)
            _, g = inp.gradients_at(noisy)
            g = g.astype(np.float64)
            g1, g2, g3 = g1 + g, g2 + g**2, g3 + g**3
        k = self.num_samples
        return GradCAMPlusPlus.weights_from(inp.activations, g1 / k, g2 / k, g3 / k)
