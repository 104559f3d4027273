"""Class Activation Mapping, from the classifier's own weights (no gradient)."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


@register
class CAM(CAMMethod):
    """CAM — Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

    For a network ending in global average pooling then a linear layer W, the map of class c is
    M_c = Σ_k W_{c,k} A^k (we keep ReLU(M_c), as for every method). Needs that head: a layer that
    feeds anything else raises HeadError (use Grad-CAM there).

    Example: ``Explainer("model.onnx", method="cam").explain(x).heatmaps``
    """

    name = "cam"
    needs_gradients = False
    needs_head = True

    def weights(self, inp: MethodInputs) -> np.ndarray:
        assert inp.head is not None
        return inp.head.weight[inp.targets].astype(np.float64)
