"""Ablation-CAM: channel weights from the score drop when each channel of the layer is zeroed."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


@register
class AblationCAM(CAMMethod):
    """Ablation-CAM — Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020.

    w_k = (y^c − y^c_k) / y^c, y^c_k the score with channel k of A zeroed; L^c = ReLU(Σ w_k A^k).
    The model up to the layer runs once; only the part after it runs, on batches of ablated
    activations.

    Example: ``Explainer("model.onnx", method="ablationcam").explain(x)``
    """

    name = "ablationcam"
    needs_gradients = False

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def weights(self, inp: MethodInputs) -> np.ndarray:
        n_img, c = inp.activations.shape[:2]
        w = np.empty((n_img, c), np.float64)
        for n in range(n_img):
            y = float(inp.score(n, inp.outputs[n : n + 1])[0])
            scores = np.empty(c, np.float64)
            for s in range(0, c, self.batch_size):
                ks = np.arange(s, min(c, s + self.batch_size))
                a = np.repeat(inp.activations[n][None], len(ks), axis=0)
                a[np.arange(len(ks)), ks] = 0
                scores[ks] = inp.score(n, inp.tail(n, a))
            w[n] = (y - scores) / y
        return w
