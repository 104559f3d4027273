"""Ablation-CAM: channel weights from the score drop when each channel of the layer is zeroed."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


@register
class AblationCAM(CAMMethod):
    """Ablation-CAM — Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020.

    w_k = (y^c − y^c_k) / y^c, y^c_k the score with channel k of A zeroed; L^c = ReLU(Σ w_k A^k).

    When the layer feeds only global average pooling then a linear layer that gives the explained
    output (y = W·mean(A) + b), the ablated scores have a closed form: zeroing channel k lowers
    ⟨u, y⟩ by (uᵀW)_k·mean(A^k) (u the one-hot class or the seed), so w_k = (uᵀW)_k·mean(A^k) / ⟨u, y⟩
    — exact, no extra run. Otherwise the model up to the layer runs once and only the part after it
    runs, on batches of `batch_size` ablated activations.

    Example: ``Explainer("model.onnx", method="ablationcam").explain(x)``
    """

    name = "ablationcam"
    needs_gradients = False
    uses_head = True

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def weights(self, inp: MethodInputs) -> np.ndarray:
        if inp.head is not None and inp.head.linear:
            return self.closed_form(inp)
        return self.rerun(inp)

    @staticmethod
    def closed_form(inp: MethodInputs) -> np.ndarray:
        """(N, C) weights of a GAP → linear tail: (uᵀW)_k·mean(A^k) / ⟨u, y⟩."""
        assert inp.head is not None
        n = len(inp.activations)
        w = inp.head.weight.astype(np.float64)  # (K, C)
        if inp.seeds is None:  # uᵀW of a one-hot u: the target's row (no BLAS call: see bench/DESIGN-issue15.md)
            uw = w[inp.targets.astype(np.int64)]
        else:
            uw = np.einsum("nk,kc->nc", inp.seeds.reshape(n, -1).astype(np.float64), w)
        drop = uw * inp.activations.mean(axis=(2, 3), dtype=np.float64)
        y = np.array([float(inp.score(i, inp.outputs[i : i + 1])[0]) for i in range(n)])
        return drop / y[:, None]

    def rerun(self, inp: MethodInputs) -> np.ndarray:
        """(N, C) weights from running the model's tail on every ablated copy of A."""
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
