"""The Grad-CAM family: channel weights (or element-wise terms) from the layer's gradient
∂y^c/∂A — Grad-CAM, HiResCAM, Grad-CAM++, XGrad-CAM, LayerCAM, element-wise Grad-CAM and
SmoothGrad-CAM++ (Grad-CAM++ on gradients averaged over noisy inputs)."""

from __future__ import annotations

import numpy as np

from ..graph.rewrite import GraphTensors
from .base import CAMMethod, MethodInputs, register
from .graph_ops import channel_relu_sum, layer_channel_sum, layer_map, on_spatial_layers, spatial_sum, weighted_sum


@register
class GradCAM(CAMMethod):
    """Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.

    α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij,  L^c = ReLU(Σ_k α_k^c A^k).

    Example: ``Explainer("model.onnx", method="gradcam").explain(x).heatmaps``
    """

    name = "gradcam"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return layer_map(g, weighted_sum(g, g.e.reduce("ReduceMean", g.grads, [2, 3], keepdims=True)))

    def weights(self, inp: MethodInputs) -> np.ndarray:
        return inp.gradients.mean(axis=(2, 3), dtype=np.float64)


@register
class HiResCAM(CAMMethod):
    """HiResCAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", 2020.

    L^c = ReLU(Σ_k ∂y^c/∂A^k ⊙ A^k): the element-wise product keeps where the gradient points,
    which Grad-CAM's spatial average loses.

    Example: ``Explainer("model.onnx", method="hirescam").explain(x).heatmaps``
    """

    name = "hirescam"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return layer_map(g, channel_relu_sum(g, g.e.op("Mul", [g.grads, g.acts])))

    def weighted(self, inp: MethodInputs) -> np.ndarray:
        return inp.gradients.astype(np.float64) * inp.activations.astype(np.float64)

    def cam(self, inp: MethodInputs) -> np.ndarray:
        m = (inp.gradients.astype(np.float64) * inp.activations.astype(np.float64)).sum(axis=1)
        return np.maximum(m, 0).astype(np.float32)


@register
class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ — Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", WACV 2018.

    α_ij^kc = g² / (2g² + Σ_ab A^k_ab · g³ + 1e-6) (0 where g = 0),
    w_k^c = Σ_ij α_ij^kc · ReLU(g_ij),  L^c = ReLU(Σ_k w_k^c A^k), with g = ∂y^c/∂A^k_ij
    (the exponential-score form of the paper, as pytorch-grad-cam implements it).

    Example: ``Explainer("model.onnx", method="gradcam++").explain(x).heatmaps``
    """

    name = "gradcam++"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        """α and w in float32 (pytorch-grad-cam's precision); where g = 0, α = 0 / 1e-6 = 0."""
        e = g.e
        g2 = e.op("Mul", [g.grads, g.grads])
        g3 = e.op("Mul", [g2, g.grads])
        denom = e.op("Add", [e.op("Add", [e.op("Mul", [g2, e.scalar(2.0, g2)]), e.op("Mul", [spatial_sum(g, g.acts), g3])]),
                             e.scalar(1e-6, g2)])
        w = spatial_sum(g, e.op("Mul", [e.op("Div", [g2, denom]), e.op("Relu", [g.grads])]))
        return layer_map(g, weighted_sum(g, w))

    def weights(self, inp: MethodInputs) -> np.ndarray:
        g = inp.gradients.astype(np.float64)
        return self.weights_from(inp.activations, g, g**2, g**3)

    @staticmethod
    def weights_from(acts: np.ndarray, g: np.ndarray, g2: np.ndarray, g3: np.ndarray) -> np.ndarray:
        """w from the gradient's first three powers (SmoothGrad-CAM++ passes averages)."""
        a = acts.astype(np.float64)
        denom = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6
        alpha = np.where(g2 != 0, g2 / denom, 0.0)
        return (alpha * np.maximum(g, 0)).sum(axis=(2, 3))


@register
class XGradCAM(CAMMethod):
    """XGrad-CAM — Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020.

    w_k^c = Σ_ij (A^k_ij / (Σ_ab A^k_ab + 1e-7)) · ∂y^c/∂A^k_ij,  L^c = ReLU(Σ_k w_k^c A^k).

    Example: ``Explainer("model.onnx", method="xgradcam").explain(x).heatmaps``
    """

    name = "xgradcam"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        e = g.e
        den = e.op("Add", [spatial_sum(g, g.acts), e.scalar(1e-7, g.acts)])
        return layer_map(g, weighted_sum(g, e.op("Div", [spatial_sum(g, e.op("Mul", [g.grads, g.acts])), den])))

    def weights(self, inp: MethodInputs) -> np.ndarray:
        g = inp.gradients.astype(np.float64)
        a = inp.activations.astype(np.float64)
        return (g * a).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + 1e-7)


@register
class LayerCAM(CAMMethod):
    """LayerCAM — Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021.

    L^c = ReLU(Σ_k ReLU(∂y^c/∂A^k) ⊙ A^k): each location weighted by its own positive gradient.

    Example: ``Explainer("model.onnx", method="layercam", layer="<an early layer>")``
    """

    name = "layercam"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return layer_map(g, channel_relu_sum(g, g.e.op("Mul", [g.e.op("Relu", [g.grads]), g.acts])))

    def weighted(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(inp.gradients.astype(np.float64), 0) * inp.activations.astype(np.float64)

    def cam(self, inp: MethodInputs) -> np.ndarray:
        m = (np.maximum(inp.gradients.astype(np.float64), 0) * inp.activations.astype(np.float64)).sum(axis=1)
        return np.maximum(m, 0).astype(np.float32)


@register
class GradCAMElementWise(CAMMethod):
    """Grad-CAM element-wise — pytorch-grad-cam's (Gildenblat et al., 2021) variant of HiResCAM
    (Draelos & Carin, 2020) with the ReLU inside:
    L^c = Σ_k ReLU(∂y^c/∂A^k ⊙ A^k) (then ReLU, a no-op here).

    Example: ``Explainer("model.onnx", method="gradcam-elementwise").explain(x).heatmaps``
    """

    name = "gradcam-elementwise"
    graph_map = True

    @on_spatial_layers
    def graph(self, g: GraphTensors) -> dict[str, str]:
        return layer_map(g, layer_channel_sum(g, g.e.op("Relu", [g.e.op("Mul", [g.grads, g.acts])])))

    def weighted(self, inp: MethodInputs) -> np.ndarray:
        return np.maximum(inp.gradients.astype(np.float64) * inp.activations.astype(np.float64), 0)

    def cam(self, inp: MethodInputs) -> np.ndarray:
        m = np.maximum(inp.gradients.astype(np.float64) * inp.activations.astype(np.float64), 0).sum(axis=1)
        return m.astype(np.float32)


@register
class SmoothGradCAMpp(CAMMethod):
    """SmoothGrad-CAM++ — Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models", 2019.

    Grad-CAM++'s α and weights computed from gradients averaged over n noisy copies of the input
    (x + N(0, σ²), σ = `std`·(max x − min x)): ḡ² = mean_i g_i², ḡ³ = mean_i g_i³,
    α = ḡ² / (2ḡ² + Σ_ab A · ḡ³), w_k = Σ_ij α · ReLU(ḡ), L^c = ReLU(Σ_k w_k A^k) on the clean A.
    Seeded, and per image: every image of a batch gets the same n noise draws (σ from its own
    range with `relative`), so its map does not depend on the batch it is in (local or Ray).

    Example: ``Explainer("model.onnx", method=SmoothGradCAMpp(num_samples=8)).explain(x)``
    """

    name = "smoothgradcam++"

    def __init__(self, num_samples: int = 4, std: float = 0.3, seed: int = 0, relative: bool = False) -> None:
        self.num_samples, self.std, self.seed, self.relative = num_samples, std, seed, relative

    def weights(self, inp: MethodInputs) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        x = inp.inputs
        flat = x.reshape(len(x), -1).astype(np.float64)
        span = flat.max(axis=1) - flat.min(axis=1) if self.relative else np.ones(len(x))
        sigma = (self.std * span).reshape(-1, *[1] * (x.ndim - 1))
        g1 = g2 = g3 = 0.0
        for _ in range(self.num_samples):
            noisy = (x + sigma * rng.normal(0.0, 1.0, size=x.shape[1:])).astype(x.dtype)  # one draw for every image
            _, g = inp.gradients_at(noisy)
            g = g.astype(np.float64)
            g1, g2, g3 = g1 + g, g2 + g**2, g3 + g**3
        k = self.num_samples
        return GradCAMPlusPlus.weights_from(inp.activations, g1 / k, g2 / k, g3 / k)
