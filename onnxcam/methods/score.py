"""Forward-only methods that perturb the input or the activations and watch the score."""

from __future__ import annotations

import cv2
import numpy as np

from .base import CAMMethod, MethodInputs, register


def upsampled_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) activations → (C, H, W) bilinear upsampled, min-max normalised per channel."""
    h, w = size
    out = np.empty((acts.shape[0], h, w), np.float32)
    for s in range(0, acts.shape[0], 512):  # OpenCV resizes up to 512 channels at once
        chunk = np.ascontiguousarray(acts[s : s + 512].transpose(1, 2, 0).astype(np.float32))
        up = cv2.resize(chunk, (w, h), interpolation=cv2.INTER_LINEAR)
        out[s : s + 512] = up.reshape(h, w, -1).transpose(2, 0, 1)
    mins = out.min(axis=(1, 2), keepdims=True)
    maxs = out.max(axis=(1, 2), keepdims=True)
    return (out - mins) / (maxs - mins + 1e-8)


def _softmax(v: np.ndarray) -> np.ndarray:
    z = np.exp(v - v.max())
    return z / z.sum()


class _MaskedScoreMethod(CAMMethod):
    """Shared loop: for each image, channel masks in batches of `batch_size`, one forward each."""

    needs_gradients = False

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size

    def channel_scores(self, inp: MethodInputs, n: int, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run(self, inp: MethodInputs, n: int, masks: np.ndarray, make_inputs) -> np.ndarray:
        """Scores y_t for each channel's masked inputs; make_inputs(mask_chunk) → batch."""
        t = int(inp.targets[n])
        scores = np.empty(len(masks), np.float64)
        for s in range(0, len(masks), self.batch_size):
            out = inp.forward(make_inputs(masks[s : s + self.batch_size]))
            scores[s : s + self.batch_size] = out[:, t]
        return scores

    def weights(self, inp: MethodInputs) -> np.ndarray:
        n_img, c = inp.activations.shape[:2]
        w = np.empty((n_img, c), np.float64)
        for n in range(n_img):
            masks = upsampled_masks(inp.activations[n], inp.input_size)
            w[n] = self.channel_scores(inp, n, masks)
        return w


def _apply(inp: MethodInputs, n: int, masks: np.ndarray) -> np.ndarray:
    """x_n ⊙ M_k for a chunk of masks, in the model's layout."""
    x = inp.inputs[n]
    if inp.layout == "NCHW":
        return (x[None] * masks[:, None]).astype(x.dtype)
    return (x[None] * masks[..., None]).astype(x.dtype)


@register
class ScoreCAM(_MaskedScoreMethod):
    """Score-CAM — Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020.

    M_k = minmax(Up(A^k)), s_k = y^c(x ⊙ M_k), w = softmax_k(s), L^c = ReLU(Σ_k w_k A^k).
    Costs one forward per channel, run in batches of `batch_size` (memory stays bounded).

    Example: ``Explainer("model.onnx", method=ScoreCAM(batch_size=64)).explain(x)``
    """

    name = "scorecam"

    def channel_scores(self, inp: MethodInputs, n: int, masks: np.ndarray) -> np.ndarray:
        return _softmax(self._run(inp, n, masks, lambda m: _apply(inp, n, m)))


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
            t = int(inp.targets[n])
            y = float(inp.outputs[n, t])
            scores = np.empty(c, np.float64)
            for s in range(0, c, self.batch_size):
                ks = np.arange(s, min(c, s + self.batch_size))
                a = np.repeat(inp.activations[n][None], len(ks), axis=0)
                a[np.arange(len(ks)), ks] = 0
                scores[ks] = inp.tail(n, a)[:, t]
            w[n] = (y - scores) / y
        return w
