"""Baselines: maps that carry no information about the model, for metrics to beat."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


@register
class RandomCAM(CAMMethod):
    """Random baseline — channel weights drawn uniformly from [−1, 1] (seeded): the map a
    metric must beat to mean anything. One draw of C weights for every image, so an image's map
    does not depend on the batch it is in (local or Ray).

    Example: ``Explainer("model.onnx", method="random").explain(x).heatmaps``
    """

    name = "random"
    needs_gradients = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def weights(self, inp: MethodInputs) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        n, c = inp.activations.shape[:2]
        return np.tile(rng.uniform(-1, 1, size=c), (n, 1))
