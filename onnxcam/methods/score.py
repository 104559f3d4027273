"""The Score-CAM family: the input masked by each upsampled activation map, scored by a forward
run (Score-CAM, SS-CAM, IS-CAM)."""

from __future__ import annotations

import numpy as np

import os

from ..errors import UsageError
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


# Memory for one batch of masked forwards: at most this, and at most a quarter of what is free.
MEMORY_BUDGET = 1 << 30
MAX_BATCH = 128


def channel_batch(item_bytes: int, budget: int = MEMORY_BUDGET) -> int:
    """How many masked images one forward run takes: the budget (capped at a quarter of the
    available memory where the OS tells it) over one image's working set, 1..MAX_BATCH."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        budget = min(budget, free // 4)
    except (AttributeError, ValueError, OSError):
        pass
    return int(max(1, min(MAX_BATCH, budget // max(1, item_bytes))))


def top_channels(acts: np.ndarray, max_n: int | None) -> np.ndarray:
    """The channels Faster Score-CAM scores (tf-keras-vis's `max_N`): the max_n channels of one
    image's (C, h, w) activation with the largest spatial standard deviation, in channel order;
    every channel when max_n is None or ≥ C."""
    c = acts.shape[0]
    if max_n is None or max_n >= c:
        return np.arange(c)
    std = acts.reshape(c, -1).astype(np.float64).std(axis=1)
    return np.sort(np.argsort(-std, kind="stable")[:max_n])


class _MaskedScoreMethod(CAMMethod):
    """Shared loop: for each image, its channel masks are made and scored `batch_size` at a time,
    so memory stays bounded by one batch of masked images (never all C masks at once).
    batch_size=None sizes the batches from memory (`channel_batch`). max_N (Faster Score-CAM):
    only the max_N channels of largest spatial standard deviation are scored and weighted (softmax
    over them), the others weigh 0; None or ≥ C is the full method."""

    needs_gradients = False
    torchcam_masks = False  # mask convention: pytorch-grad-cam's (Score-CAM) or torchcam's

    def __init__(self, batch_size: int | None = None, max_N: int | None = None) -> None:
        if max_N is not None and max_N < 1:
            raise UsageError(f"max_N must be a positive number of channels (or None for all), got {max_N}")
        self.batch_size, self.max_N = batch_size, max_N

    def channel_scores(self, inp: MethodInputs, n: int, ks: np.ndarray) -> np.ndarray:
        """Item n's weights (softmax over the scored channels `ks`), one per channel in ks."""
        raise NotImplementedError

    def _masks(self, inp: MethodInputs, n: int, ks: np.ndarray) -> np.ndarray:
        acts = inp.activations[n][ks]
        return torchcam_masks(acts, inp.input_size) if self.torchcam_masks else upsampled_masks(acts, inp.input_size)

    def _run(self, inp: MethodInputs, n: int, ks: np.ndarray, transform=lambda m: m) -> np.ndarray:
        """Item n's score on x ⊙ transform(M_k) for every channel k in ks."""
        b = self.batch_size or channel_batch(inp.item_bytes)
        scores = np.empty(len(ks), np.float64)
        for s in range(0, len(ks), b):
            chunk = ks[s : s + b]
            out = inp.forward(_apply(inp, n, transform(self._masks(inp, n, chunk))))
            scores[s : s + len(chunk)] = inp.score(n, out)
        return scores

    def weights(self, inp: MethodInputs) -> np.ndarray:
        w = np.zeros(inp.activations.shape[:2], np.float64)
        for n in range(len(w)):
            ks = top_channels(inp.activations[n], self.max_N)
            w[n, ks] = self.channel_scores(inp, n, ks)
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
    Costs one forward per channel, run in batches of `batch_size` (default: sized from memory).
    `max_N`: Faster Score-CAM (tf-keras-vis) — only the max_N channels with the largest spatial
    standard deviation are scored (max_N forwards), the softmax runs over them, the rest weigh 0.

    Example: ``Explainer("model.onnx", method=ScoreCAM(max_N=64)).explain(x)``
    """

    name = "scorecam"

    def channel_scores(self, inp: MethodInputs, n: int, ks: np.ndarray) -> np.ndarray:
        return _softmax(self._run(inp, n, ks))


@register
class SSCAM(_MaskedScoreMethod):
    """SS-CAM — Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", 2020.

    Score-CAM with the masks smoothed by Gaussian noise:
    s_k = (1/N) Σ_i y^c(x ⊙ (M_k + ε_ik)), ε_ik ~ N(0, σ²) per pixel of each mask, w = softmax_k(s).
    Masks as torchcam makes them (min-max at the layer, then bilinear); N = 35, σ = 2 as there.
    Seeded (`seed`), so a map is reproducible.

    Noise is drawn chunk after chunk from one generator: the same maps whatever the batch size.
    `max_N` as Score-CAM's (Faster Score-CAM).

    Example: ``Explainer("model.onnx", method=SSCAM(num_samples=35, std=2.0)).explain(x)``
    """

    name = "sscam"
    torchcam_masks = True

    def __init__(self, batch_size: int | None = None, num_samples: int = 35, std: float = 2.0, seed: int = 0,
                 max_N: int | None = None) -> None:
        super().__init__(batch_size, max_N)
        self.num_samples, self.std, self.seed = num_samples, std, seed

    def channel_scores(self, inp: MethodInputs, n: int, ks: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        total = np.zeros(len(ks))
        for _ in range(self.num_samples):
            total += self._run(inp, n, ks, lambda m: m + rng.normal(0.0, self.std, size=m.shape).astype(m.dtype))
        return _softmax(total / self.num_samples)


@register
class ISCAM(_MaskedScoreMethod):
    """IS-CAM — Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    2020.

    Score-CAM with the score integrated along the mask's intensity:
    s_k = (1/N) Σ_{i=1..N} y^c(x ⊙ c_i M_k), c_i = Σ_{j≤i} j/N (the cumulative coefficients
    torchcam uses), w = softmax_k(s). Masks as torchcam makes them; N = 10. `max_N` as
    Score-CAM's (Faster Score-CAM).

    Example: ``Explainer("model.onnx", method="iscam").explain(x)``
    """

    name = "iscam"
    torchcam_masks = True

    def __init__(self, batch_size: int | None = None, num_samples: int = 10, max_N: int | None = None) -> None:
        super().__init__(batch_size, max_N)
        self.num_samples = num_samples

    def channel_scores(self, inp: MethodInputs, n: int, ks: np.ndarray) -> np.ndarray:
        total = np.zeros(len(ks))
        coeff = 0.0
        for i in range(1, self.num_samples + 1):
            coeff += i / self.num_samples
            total += self._run(inp, n, ks, lambda m, c=coeff: c * m)
        return _softmax(total / self.num_samples)
