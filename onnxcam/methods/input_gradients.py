"""Input-gradient methods: the gradient down to the image (guided backpropagation, Guided
Grad-CAM, FullGrad)."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..graph.fullgrad import append_fullgrad
from ..graph.rewrite import GraphTensors
from .base import CAMMethod, MethodInputs, register
from .gradients import GradCAM
from .maps import scale_maps


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
        inp.pixel_maps["guided_backprop"] = inp.input_gradients
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
        inp.pixel_maps["guided_backprop"] = inp.input_gradients
        inp.pixel_maps["guided_gradcam"] = (inp.input_gradients * heat[:, None]).astype(np.float32)
        return cams


@register
class FullGrad(CAMMethod):
    """FullGrad — Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019.

    S = ψ(|x ⊙ ∇_x y^c|) + Σ_l Σ_c ψ(|b_l ⊙ ∇_{z_l} y^c|), with z_l the output of every convolution
    with a bias and of every batch norm (effective bias β − μγ/√(σ²+ε)), ψ = per-channel min-max
    then bilinear resize to the input (as pytorch-grad-cam). Class-specific; the layer is unused.
    Computed inside the rewritten model (graph/fullgrad.py): the channel sums at each layer's
    resolution, one resize per resolution (the resize is linear), no bias gradient leaves the run.

    Example: ``Explainer("model.onnx", method="fullgrad").explain(x).heatmaps``
    """

    name = "fullgrad"
    needs_gradients = False
    input_gradient = "plain"
    bias_taps = True

    def graph(self, g: GraphTensors) -> dict[str, str]:
        return {"fullgrad": append_fullgrad(g.e, g.image, g.input_grad, g.image_layout, g.image_type, g.taps, g.input_size)}

    def cam(self, inp: MethodInputs) -> np.ndarray:
        if "fullgrad" not in inp.graph:
            raise UsageError("FullGrad is computed inside the rewritten model: use onnxcam's own backend (backend='onnx')")
        return inp.graph["fullgrad"].astype(np.float32, copy=False)
