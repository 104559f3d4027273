"""The Score-CAM family: the input masked by each upsampled activation map, scored by a forward
run (Score-CAM, SS-CAM, IS-CAM)."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register
from .maps import minmax_channels, upsample


def upsampled_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Score-CAM's masks as pytorch-grad-cam makes them: (C, h, w) activations upsampled
    bilinearly with align_corners=True to (C, H, W), then min-max normalised per channel."""
    return minmax_channels(upsample(acts, size, align_corners=True), 1e-8)


def torchcam_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """SS-CAM/IS-CAM's masks as torchcam makes them: min-max at the layer's resolution, then
    bilinear upsampling with align_corners=False."""
    return upsample(minmax_channels(acts.astype(np.float32), 1e-7), size, align_corners=False)


def _softmax(v: np.ndarray) -> np.ndarray:
    z = np.exp(v - v.max())
    return z / z.sum()


class _MaskedScoreMethod(CAMMethod):
    """Shared loop: for each image, its channel masks are made and scored `batch_size` at a time,
    so memory stays bounded by one batch of masked images (never all C masks at once)."""

    needs_gradients = False
    torchcam_masks = False  # mask convention: pytorch-grad-cam's (Score-CAM) or torchcam's

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size

    def channel_scores(self, inp: MethodInputs, n: int) -> np.ndarray:
        raise NotImplementedError

    def _masks(self, inp: MethodInputs, n: int, sl: slice) -> np.ndarray:
        acts = inp.activations[n][sl]
        return torchcam_masks(acts, inp.input_size) if self.torchcam_masks else upsampled_masks(acts, inp.input_size)

    def _run(self, inp: MethodInputs, n: int, transform=lambda m: m) -> np.ndarray:
        """Item n's score on x ⊙ transform(M_k) for every channel k."""
        c = inp.activations.shape[1]
        scores = np.empty(c, np.float64)
        for s in range(0, c, self.batch_size):
            sl = slice(s, min(c, s + self.batch_size))
            out = inp.forward(_apply(inp, n, transform(self._masks(inp, n, sl))))
            scores[sl] = inp.score(n, out)
        return scores

    def weights(self, inp: MethodInputs) -> np.ndarray:
        return np.stack([self.channel_scores(inp, n) for n in range(inp.activations.shape[0])])


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

    def channel_scores(self, inp: MethodInputs, n: int) -> np.ndarray:
        return _softmax(self._run(inp, n))


@register
class SSCAM(_MaskedScoreMethod):
    """SS-CAM — Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", 2020.

    Score-CAM with the masks smoothed by Gaussian noise:
    s_k = (1/N) Σ_i y^c(x ⊙ (M_k + ε_ik)), ε_ik ~ N(0, σ²) per pixel of each mask, w = softmax_k(s).
    Masks as torchcam makes them (min-max at the layer, then bilinear); N = 35, σ = 2 as there.
    Seeded (`seed`), so a map is reproducible.

    Example: ``Explainer("model.onnx", method=SSCAM(num_samples=35, std=2.0)).explain(x)``
    """

    name = "sscam"
    torchcam_masks = True

    def __init__(self, batch_size: int = 32, num_samples: int = 35, std: float = 2.0, seed: int = 0) -> None:
        super().__init__(batch_size)
        self.num_samples, self.std, self.seed = num_samples, std, seed

    def channel_scores(self, inp: MethodInputs, n: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)  # noise drawn chunk by chunk: reproducible per batch_size
        total = np.zeros(inp.activations.shape[1])
        for _ in range(self.num_samples):
            total += self._run(inp, n, lambda m: m + rng.normal(0.0, self.std, size=m.shape).astype(m.dtype))
        return _softmax(total / self.num_samples)


@register
class ISCAM(_MaskedScoreMethod):
    """IS-CAM — Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    2020.

    Score-CAM with the score integrated along the mask's intensity:
    s_k = (1/N) Σ_{i=1..N} y^c(x ⊙ c_i M_k), c_i = Σ_{j≤i} j/N (the cumulative coefficients
    torchcam uses), w = softmax_k(s). Masks as torchcam makes them; N = 10.

    Example: ``Explainer("model.onnx", method="iscam").explain(x)``
    """

    name = "iscam"
    torchcam_masks = True

    def __init__(self, batch_size: int = 32, num_samples: int = 10) -> None:
        super().__init__(batch_size)
        self.num_samples = num_samples

    def channel_scores(self, inp: MethodInputs, n: int) -> np.ndarray:
        total = np.zeros(inp.activations.shape[1])
        coeff = 0.0
        for i in range(1, self.num_samples + 1):
            coeff += i / self.num_samples
            total += self._run(inp, n, lambda m, c=coeff: c * m)
        return _softmax(total / self.num_samples)
