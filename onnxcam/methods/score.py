"""Forward-only methods that perturb the input or the activations and watch the score."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, MethodInputs, register


def _interp_matrix(n_out: int, n_in: int, align_corners: bool) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation (PyTorch's two conventions)."""
    if align_corners:
        pos = np.linspace(0, n_in - 1, n_out) if n_out > 1 else np.zeros(1)
    else:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample(acts: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """(C, h, w) → (C, H, W), bilinear, separable (as torch's interpolate)."""
    ry = _interp_matrix(size[0], acts.shape[1], align_corners)
    rx = _interp_matrix(size[1], acts.shape[2], align_corners)
    return np.einsum("Yy,cyx,Xx->cYX", ry, acts.astype(np.float64), rx).astype(np.float32)


def _minmax(m: np.ndarray, eps: float) -> np.ndarray:
    mins = m.min(axis=(1, 2), keepdims=True)
    maxs = m.max(axis=(1, 2), keepdims=True)
    return (m - mins) / (maxs - mins + eps)


def upsampled_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Score-CAM's masks as pytorch-grad-cam makes them: (C, h, w) activations upsampled
    bilinearly with align_corners=True to (C, H, W), then min-max normalised per channel."""
    return _minmax(upsample(acts, size, align_corners=True), 1e-8)


def torchcam_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """SS-CAM/IS-CAM's masks as torchcam makes them: min-max at the layer's resolution, then
    bilinear upsampling with align_corners=False."""
    return upsample(_minmax(acts.astype(np.float32), 1e-7), size, align_corners=False)


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
        scores = np.empty(len(masks), np.float64)
        for s in range(0, len(masks), self.batch_size):
            out = inp.forward(make_inputs(masks[s : s + self.batch_size]))
            scores[s : s + self.batch_size] = inp.score(n, out)
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

    def __init__(self, batch_size: int = 32, num_samples: int = 35, std: float = 2.0, seed: int = 0) -> None:
        super().__init__(batch_size)
        self.num_samples, self.std, self.seed = num_samples, std, seed

    def channel_scores(self, inp: MethodInputs, n: int, masks: np.ndarray) -> np.ndarray:
        masks = torchcam_masks(inp.activations[n], inp.input_size)
        rng = np.random.default_rng(self.seed)
        total = np.zeros(len(masks))
        x = inp.inputs[n]
        for _ in range(self.num_samples):
            noisy = masks + rng.normal(0.0, self.std, size=masks.shape).astype(masks.dtype)
            total += self._run(inp, n, noisy, lambda m: _apply(inp, n, m))
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

    def __init__(self, batch_size: int = 32, num_samples: int = 10) -> None:
        super().__init__(batch_size)
        self.num_samples = num_samples

    def channel_scores(self, inp: MethodInputs, n: int, masks: np.ndarray) -> np.ndarray:
        masks = torchcam_masks(inp.activations[n], inp.input_size)
        total = np.zeros(len(masks))
        coeff = 0.0
        for i in range(1, self.num_samples + 1):
            coeff += i / self.num_samples
            total += self._run(inp, n, masks, lambda m, c=coeff: _apply(inp, n, c * m))
        return _softmax(total / self.num_samples)


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
