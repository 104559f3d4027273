"""Class Activation Mapping, from the classifier's own weights (no gradient)."""

from __future__ import annotations

import numpy as np

from ..graph.rewrite import GraphTensors
from .base import CAMMethod, MethodInputs, register
from .graph_ops import layer_map, weighted_sum


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
    graph_map = True

    def graph(self, g: GraphTensors) -> dict[str, str]:
        """w = W_head[c] gathered by the targets, then the weighted sum; nothing in the graph
        without the head's weights, the targets or a spatial A (the numpy `cam` runs then)."""
        if g.acts is None or g.head_weight is None or g.targets is None:
            return {}
        w = g.e.op("Gather", [g.e.const(g.head_weight.astype(np.float32), "head_weight"), g.targets], axis=0)
        return layer_map(g, weighted_sum(g, g.e.unsqueeze(w, [2, 3])))

    def weights(self, inp: MethodInputs) -> np.ndarray:
        assert inp.head is not None
        return inp.head.weight[inp.targets].astype(np.float64)
