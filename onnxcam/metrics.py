"""Faithfulness and localisation metrics for saliency maps (numpy + the model's own forward).

Every perturbation metric takes
- ``x``: the preprocessed batch in the model's layout (``layout="NCHW"`` or ``"NHWC"``),
- ``heatmaps``: (N, H, W) maps at the model input's spatial size (``Result.heatmaps``),
- ``forward``: any callable ``batch -> (N, K)`` scores (logits or probabilities); `scores_fn`
  builds one from an `Explainer` with a plain onnxruntime session,
- ``targets``: the explained classes (default: the top-1 class of ``forward(x)``).

Scores become probabilities with a softmax over the K classes (``softmax=True``), are used as
they are (``softmax=False``), or, by default (``softmax=None``), softmaxed unless every row is
already a probability vector (non-negative, sums to 1).

Localisation metrics (pointing games, the CAM box) take one (H, W) map and a box
``[x0, y0, x1, y1]`` in the same pixel grid, end-exclusive (pixel (r, c) is inside when
x0 ≤ c < x1 and y0 ≤ r < y1), or a boolean (H, W) mask.

Agreement metrics compare two maps of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import cv2
import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]
Box = Sequence[float]
Region = Union[Box, np.ndarray]

__all__ = [
    "Forward", "DropIncrease", "Curves", "RoadResult",
    "probabilities", "scores_fn", "average_drop_increase", "deletion", "insertion", "deletion_insertion",
    "auc", "blur_substrate", "impute_linear", "road", "pointing_game", "energy_pointing_game",
    "box_mask", "cam_box", "box_iou", "spearman", "rank", "top_k_iou",
]


# -- helpers ------------------------------------------------------------------------------------
def probabilities(scores: np.ndarray, softmax: bool | None = None) -> np.ndarray:
    """(N, K) scores → (N, K) values used by the metrics (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if softmax is None:
        softmax = not (np.all(s >= 0) and np.allclose(s.sum(axis=1), 1.0, atol=1e-3))
    if not softmax:
        return s
    z = np.exp(s - s.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def scores_fn(explainer, hw: tuple[int, int] | None = None, batch_size: int = 32,
              providers: Sequence[str] | None = None) -> Forward:
    """A plain forward ``batch -> (N, K)`` of the output the `Explainer` explains.

    Its own onnxruntime session over the explainer's normalised model (``explainer.prepared(hw)``)
    with only the explained output kept; runs in chunks of ``batch_size`` (memory bounded), and in
    chunks of the model's batch size when that is fixed (the last chunk padded by repetition).
    """
    import onnx

    from .runtime import session_for

    prep = explainer.prepared(hw)
    m = onnx.ModelProto()
    m.CopyFrom(prep.model)
    keep = [o for o in m.graph.output if o.name == prep.output]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    sess = session_for(m, providers if providers is not None else explainer.providers, explainer.threads)
    name = explainer.info.image_input.name
    dtype = explainer.info.image_input.dtype
    fixed = explainer.info.batch if isinstance(explainer.info.batch, int) else None
    step = fixed or max(1, int(batch_size))

    def forward(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch).astype(dtype, copy=False))
        parts = []
        for s in range(0, len(x), step):
            chunk = x[s : s + step]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            out = sess.run([prep.output], {name: chunk})[0]
            parts.append(np.asarray(out, dtype=np.float32).reshape(len(chunk), -1)[:n])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return forward


def _chw(x: np.ndarray, layout: str) -> np.ndarray:
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D batch, got shape {x.shape}")
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _from_chw(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1))


def _check_maps(x_chw: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    if h.shape != (x_chw.shape[0],) + x_chw.shape[2:]:
        raise ValueError(f"heatmaps must be (N, H, W) = {(x_chw.shape[0],) + x_chw.shape[2:]}, got {h.shape}")
    return h


def _targets(scores: np.ndarray, targets: int | Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if targets is None:
        return np.argmax(scores, axis=1).astype(np.int64)
    t = np.broadcast_to(np.asarray(targets, dtype=np.int64).reshape(-1), (n,)).copy()
    return t


def _run(forward: Forward, batch: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [np.asarray(forward(batch[s : s + batch_size])) for s in range(0, len(batch), batch_size)]
    return np.concatenate([p.reshape(len(p), -1) for p in parts])


# -- average drop / increase in confidence --------------------------------------------------------
@dataclass
class DropIncrease:
    """Average drop and increase in confidence (percentages) and the per-image values."""

    average_drop: float
    increase_in_confidence: float
    drop: np.ndarray  # (N,) max(0, Y − O) / Y · 100
    increase: np.ndarray  # (N,) bool, O > Y
    y: np.ndarray  # (N,) probability of the target on x
    o: np.ndarray  # (N,) probability of the target on x ⊙ heatmap
    targets: np.ndarray


def average_drop_increase(
    x: np.ndarray, heatmaps: np.ndarray, forward: Forward, targets=None, layout: str = "NCHW",
    softmax: bool | None = None, batch_size: int = 32,
) -> DropIncrease:
    """Average drop (AD) and increase in confidence (IC).

    Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
    Convolutional Networks", WACV 2018, section 5.1. The explanation map is E_i = x_i ⊙ H_i (the
    preprocessed input times the heatmap, broadcast over channels); with Y_i, O_i the target's
    probability on x_i and on E_i:

        AD = (1/N) Σ_i max(0, Y_i − O_i) / Y_i · 100        (lower is better)
        IC = (1/N) Σ_i 1[O_i > Y_i] · 100                    (higher is better)

    >>> f = lambda b: b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    >>> r = average_drop_increase(np.ones((1, 1, 2, 2)), np.array([[[1, 1], [0, 0]]]), f, softmax=False)
    >>> r.average_drop
    50.0
    """
    xc = _chw(x, layout)
    h = _check_maps(xc, heatmaps)
    base = probabilities(_run(forward, np.asarray(x), batch_size), softmax)
    t = _targets(base, targets, len(xc))
    e = _from_chw((xc * h[:, None]).astype(np.asarray(x).dtype), layout)
    masked = probabilities(_run(forward, e, batch_size), softmax)
    idx = np.arange(len(t))
    y, o = base[idx, t], masked[idx, t]
    drop = np.maximum(0.0, y - o) / np.maximum(y, 1e-12) * 100
    inc = o > y
    return DropIncrease(float(drop.mean()), float(inc.mean() * 100), drop, inc, y, o, t)


# -- deletion / insertion (RISE) ------------------------------------------------------------------
@dataclass
class Curves:
    """Probability curves (N, steps + 1) at fractions `fractions` of pixels changed, and AUCs."""

    mode: str
    auc: np.ndarray  # (N,)
    curves: np.ndarray  # (N, steps + 1)
    fractions: np.ndarray  # (steps + 1,) in [0, 1]
    targets: np.ndarray
    mean_auc: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean_auc = float(np.mean(self.auc)) if len(self.auc) else float("nan")


def auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoid area under curve(s) sampled at evenly spaced x in [0, 1] (last axis).

    RISE's ``auc``: (Σ_i c_i − c_0/2 − c_n/2) / n for n + 1 samples.
    """
    c = np.asarray(curve, dtype=np.float64)
    n = c.shape[-1] - 1
    if n < 1:
        raise ValueError("a curve needs at least 2 points")
    return (c.sum(axis=-1) - c[..., 0] / 2 - c[..., -1] / 2) / n


def blur_substrate(x: np.ndarray, layout: str = "NCHW", ksize: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Each image Gaussian-blurred per channel (RISE's insertion start: kernel 11, σ = 5)."""
    xc = _chw(x, layout).astype(np.float32)
    out = np.empty_like(xc)
    for i in range(len(xc)):
        for c in range(xc.shape[1]):
            out[i, c] = cv2.GaussianBlur(xc[i, c], (ksize, ksize), sigma)
    return _from_chw(out, layout)


def _substrate(x: np.ndarray, baseline, layout: str) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline == "blur":
            return blur_substrate(x, layout)
        if baseline == "zero":
            return np.zeros_like(x)
        if baseline == "mean":
            xc = _chw(x, layout)
            return _from_chw(np.broadcast_to(xc.mean(axis=(2, 3), keepdims=True), xc.shape).copy(), layout)
        raise ValueError(f"baseline must be 'zero', 'blur', 'mean', a number or an array, got {baseline!r}")
    b = np.asarray(baseline, dtype=np.asarray(x).dtype)
    return np.broadcast_to(b, np.shape(x)).copy()


def deletion_insertion(
    x: np.ndarray, heatmaps: np.ndarray, forward: Forward, mode: str = "deletion", targets=None,
    steps: int = 50, baseline: str | float | np.ndarray | None = None, layout: str = "NCHW",
    softmax: bool | None = None, batch_size: int = 32,
) -> Curves:
    """Deletion or insertion AUC.

    Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018. Pixels are ranked by the heatmap (highest first; ties in row-major order). At step
    i = 0..n the first ⌈i·HW/n⌉ pixels (all channels) are
    - deletion: replaced by the baseline (default 0, i.e. the dataset mean under mean/std
      preprocessing; "blur", "mean" or any array also work) starting from x,
    - insertion: copied from x into the baseline (default: x blurred, kernel 11, σ = 5),
    and the target's probability p_i is recorded. AUC = (Σ_i p_i − p_0/2 − p_n/2) / n, the
    trapezoid rule on x = i/n ∈ [0, 1]. Deletion: lower is better; insertion: higher is better.
    Perturbed images are built and scored ``batch_size`` at a time (memory bounded).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    x = np.asarray(x)
    xc = _chw(x, layout)
    h = _check_maps(xc, heatmaps)
    n, ch, hh, ww = xc.shape
    hw = hh * ww
    if baseline is None:
        baseline = "zero" if mode == "deletion" else "blur"
    sub = _chw(_substrate(x, baseline, layout), layout)
    start, end = (xc, sub) if mode == "deletion" else (sub, xc)
    base = probabilities(_run(forward, x, batch_size), softmax)
    t = _targets(base, targets, n)
    counts = np.minimum(np.ceil(np.arange(steps + 1) * hw / steps).astype(np.int64), hw)
    curves = np.zeros((n, steps + 1))
    for i in range(n):
        order = np.argsort(-h[i].reshape(-1), kind="stable")
        rank = np.empty(hw, np.int64)
        rank[order] = np.arange(hw)
        rank = rank.reshape(hh, ww)
        for s0 in range(0, steps + 1, batch_size):
            cs = counts[s0 : s0 + batch_size]
            changed = rank[None] < cs[:, None, None]  # (b, H, W)
            imgs = np.where(changed[:, None], end[i][None], start[i][None]).astype(x.dtype)
            p = probabilities(np.asarray(forward(_from_chw(imgs, layout))).reshape(len(cs), -1), softmax)
            curves[i, s0 : s0 + len(cs)] = p[:, t[i]]
    return Curves(mode, auc(curves), curves, counts / hw, t)


def deletion(x: np.ndarray, heatmaps: np.ndarray, forward: Forward, **kw) -> Curves:
    """Deletion AUC (lower is better); see `deletion_insertion`."""
    return deletion_insertion(x, heatmaps, forward, mode="deletion", **kw)


def insertion(x: np.ndarray, heatmaps: np.ndarray, forward: Forward, **kw) -> Curves:
    """Insertion AUC (higher is better); see `deletion_insertion`."""
    return deletion_insertion(x, heatmaps, forward, mode="insertion", **kw)


# -- ROAD -------------------------------------------------------------------------------------------
def _resize_stack(a: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
    """Resize (..., H, W) arrays to hw=(H', W') slice-wise with cv2."""
    lead = a.shape[:-2]
    flat = a.reshape((-1,) + a.shape[-2:])
    out = np.stack([cv2.resize(s, (hw[1], hw[0]), interpolation=interp) for s in flat])
    return out.reshape(lead + tuple(hw))


def _neighbour_sum(u: np.ndarray) -> np.ndarray:
    """Σ_q w_q u[p + q] over the 8 neighbours (0 outside the image), without shifted copies."""
    pad = np.pad(u, [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)])
    h, w = u.shape[-2:]
    s = lambda dy, dx: pad[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]  # noqa: E731
    direct = s(-1, 0) + s(1, 0)
    direct += s(0, -1)
    direct += s(0, 1)
    diag = s(-1, -1) + s(-1, 1)
    diag += s(1, -1)
    diag += s(1, 1)
    return direct * (1 / 6) + diag * (1 / 12)


def _pcg(x: np.ndarray, R: np.ndarray, v: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Jacobi-preconditioned CG on the imputation system of every (b, c) slice at once."""
    K = 1.0 - R
    d = _neighbour_sum(np.ones(x.shape[-2:]))
    b = _neighbour_sum(x * K) * R

    def matvec(u: np.ndarray) -> np.ndarray:
        return (d * u - _neighbour_sum(u)) * R

    v = v * R
    res = b - matvec(v)
    dinv = R / d
    z = res * dinv
    p = z.copy()
    rz = (res * z).sum(axis=(-2, -1), keepdims=True)
    bnorm = np.sqrt((b * b).sum(axis=(-2, -1), keepdims=True)) + 1e-30
    for _ in range(max_iter):
        if np.all(np.sqrt((res * res).sum(axis=(-2, -1), keepdims=True)) <= tol * bnorm):
            break
        ap = matvec(p)
        pap = (p * ap).sum(axis=(-2, -1), keepdims=True)
        alpha = rz / np.where(pap > 0, pap, np.inf)
        v = v + alpha * p
        res = res - alpha * ap
        z = res * dinv
        rz_new = (res * z).sum(axis=(-2, -1), keepdims=True)
        p = z + (rz_new / np.where(rz > 0, rz, np.inf)) * p
        rz = rz_new
    return v


def _solve_imputation(x: np.ndarray, R: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Cascadic multigrid: solve a half-size problem (known value = mean of a 2×2 block's known
    pixels; removed where the whole block is), upsample it as the start, then PCG here."""
    h, w = x.shape[-2:]
    K = 1.0 - R
    if min(h, w) >= 16:
        hc, wc = (h + 1) // 2, (w + 1) // 2
        kc = _resize_stack(K, (hc, wc), cv2.INTER_AREA)
        xc = _resize_stack(x * K, (hc, wc), cv2.INTER_AREA) / np.maximum(kc, 1e-12)
        rc = (kc < 1e-9).astype(np.float64)
        vc = _solve_imputation(xc * (1 - rc), rc, tol, max_iter)
        guess = _resize_stack(xc * (1 - rc) + vc * rc, (h, w), cv2.INTER_LINEAR)
    else:
        known = K.sum(axis=(-2, -1), keepdims=True)
        guess = np.broadcast_to((x * K).sum(axis=(-2, -1), keepdims=True) / np.maximum(known, 1), x.shape)
    return _pcg(x * K, R, guess, tol, max_iter)


def impute_linear(
    img: np.ndarray, removed: np.ndarray, noise: float = 0.01, rng: np.random.Generator | None = None,
    tol: float = 1e-6, max_iter: int = 200,
) -> np.ndarray:
    """ROAD's noisy linear imputation of the removed pixels of (C, H, W) images (or (B, C, H, W)).

    Each removed pixel p takes the weighted mean of its 8 neighbours inside the image (weight 1/6
    for the 4 direct, 1/12 for the 4 diagonal ones), known neighbours being fixed:

        (Σ_{q∈N(p)} w_pq) v_p − Σ_{q∈N(p)∩R} w_pq v_q = Σ_{q∈N(p)\\R} w_pq x_q      for p ∈ R

    — the sparse system of Rong et al.'s ``NoisyLinearImputer`` (there solved by scipy's spsolve).
    It is symmetric positive definite whenever every removed region touches a known pixel. We
    solve it without scipy: Jacobi-preconditioned conjugate gradients, matrix-free (8 array shifts
    per product), every image and channel at once, to a relative residual ≤ ``tol``, started from
    the upsampled solution of the same problem at half resolution (cascadic multigrid, recursively
    down to 16 px), which keeps large holes (90% removed) to tens of iterations. Gaussian noise of
    std ``noise`` is then added to the imputed pixels only (as the authors' code). A linear ramp
    a·i + b·j + c solves the equations exactly where the removed pixels keep all 8 neighbours in
    the image, so it is reproduced there (to ``tol``). ``max_iter`` bounds the CG iterations per
    level: the defaults (1e-6, 200) leave errors ≤ 1e-3 of the image's range at 224 × 224 (10–90%
    removed), under the added noise; about 1–2 s per mask on one CPU core.

    removed: bool (H, W) or (B, H, W), True where the pixel is removed.
    """
    x = np.asarray(img, dtype=np.float64)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"img must be (C, H, W) or (B, C, H, W), got shape {np.shape(img)}")
    r = np.asarray(removed, dtype=bool)
    if r.ndim == 2:
        r = np.broadcast_to(r, (len(x),) + r.shape)
    if r.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"removed must be (H, W) or (B, H, W) matching the images, got {r.shape}")
    if r.all(axis=(1, 2)).any():
        raise ValueError("cannot impute an image whose pixels are all removed")
    R = np.ascontiguousarray(np.broadcast_to(r[:, None], x.shape), dtype=np.float64)
    v = _solve_imputation(x, R, tol, max_iter)
    out = x * (1 - R) + v * R
    if noise:
        rng = rng if rng is not None else np.random.default_rng(0)
        out = out + noise * rng.standard_normal(out.shape) * R
    dt = np.asarray(img).dtype
    out = out.astype(dt if dt.kind == "f" else np.float32)
    return out[0] if single else out


@dataclass
class RoadResult:
    """ROAD curves (N, P) of the target's probability at each removal percentile, and summaries."""

    percentiles: np.ndarray  # (P,)
    morf: np.ndarray  # (N, P) most relevant removed first: lower is better
    lerf: np.ndarray  # (N, P) least relevant removed first: higher is better
    targets: np.ndarray
    morf_mean: float = field(init=False)
    lerf_mean: float = field(init=False)
    combined: float = field(init=False)  # (LeRF − MoRF) / 2, higher is better

    def __post_init__(self) -> None:
        self.morf_mean = float(self.morf.mean()) if self.morf.size else float("nan")
        self.lerf_mean = float(self.lerf.mean()) if self.lerf.size else float("nan")
        self.combined = (self.lerf_mean - self.morf_mean) / 2


def road(
    x: np.ndarray, heatmaps: np.ndarray, forward: Forward, targets=None,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), layout: str = "NCHW",
    noise: float = 0.01, seed: int = 0, softmax: bool | None = None, batch_size: int = 32,
) -> RoadResult:
    """ROAD: RemOve And Debias.

    Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation Strategy for
    Attribution Methods", ICML 2022. For each percentile p the p% most relevant pixels (MoRF) or
    the p% least relevant (LeRF) by the heatmap are removed and filled by noisy linear
    imputation (`impute_linear`, which hides the removal mask's shape from the model), and the
    target's probability is recorded. MoRF curves should fall fast (low mean), LeRF curves stay
    high. Returns both curves and their means; ``combined`` = (mean LeRF − mean MoRF) / 2 (as
    pytorch-grad-cam's ROADCombined). The noise is seeded (``seed``) for repeatability.
    """
    x = np.asarray(x)
    xc = _chw(x, layout)
    h = _check_maps(xc, heatmaps)
    n, _, hh, ww = xc.shape
    hw = hh * ww
    pct = np.asarray(percentiles, dtype=np.float64)
    if np.any((pct <= 0) | (pct >= 100)):
        raise ValueError("percentiles must lie strictly between 0 and 100")
    base = probabilities(_run(forward, x, batch_size), softmax)
    t = _targets(base, targets, n)
    rng = np.random.default_rng(seed)
    curves = {"morf": np.zeros((n, len(pct))), "lerf": np.zeros((n, len(pct)))}
    for i in range(n):
        order = np.argsort(-h[i].reshape(-1), kind="stable")
        rank = np.empty(hw, np.int64)
        rank[order] = np.arange(hw)
        rank = rank.reshape(hh, ww)
        masks = [rank < int(round(p / 100 * hw)) for p in pct] + [rank >= hw - int(round(p / 100 * hw)) for p in pct]
        imgs = np.stack([impute_linear(xc[i], m, noise, rng) for m in masks])
        probs = probabilities(_run(forward, _from_chw(imgs.astype(x.dtype), layout), batch_size), softmax)[:, t[i]]
        curves["morf"][i], curves["lerf"][i] = probs[: len(pct)], probs[len(pct) :]
    return RoadResult(pct, curves["morf"], curves["lerf"], t)


# -- localisation ---------------------------------------------------------------------------------
def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of an end-exclusive box [x0, y0, x1, y1] (clipped to the image)."""
    h, w = shape
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    m = np.zeros((h, w), bool)
    m[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return m


def _region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(region)
    if arr.ndim == 2 and arr.shape == tuple(shape):
        return arr.astype(bool)
    if arr.ndim == 1 and arr.size == 4:
        return box_mask(arr, shape)
    if arr.ndim == 2 and arr.shape[1] == 4:  # several boxes: their union
        m = np.zeros(shape, bool)
        for b in arr:
            m |= box_mask(b, shape)
        return m
    raise ValueError(f"a region is a box [x0, y0, x1, y1], an (M, 4) array of boxes or an (H, W) mask; got shape {arr.shape}")


def pointing_game(heatmap: np.ndarray, region: Region, tolerance: float = 15.0) -> bool:
    """Pointing game hit.

    Zhang, Lin, Brandt, Shen, Sclaroff, "Top-down Neural Attention by Excitation Backprop", ECCV
    2016: a hit when the map's maximum (the first one in row-major order) lies on the object,
    within ``tolerance`` pixels (15 in the paper; Euclidean distance from the maximum's pixel to
    the nearest object pixel ≤ tolerance). region: a box, several boxes or a mask.
    """
    hm = np.asarray(heatmap)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {hm.shape}")
    mask = _region_mask(region, hm.shape)
    if not mask.any():
        return False
    r, c = np.unravel_index(int(np.argmax(hm)), hm.shape)
    ys, xs = np.nonzero(mask)
    d2 = (ys - r) ** 2 + (xs - c) ** 2
    return bool(d2.min() <= tolerance**2 + 1e-9)


def energy_pointing_game(heatmap: np.ndarray, region: Region) -> float:
    """Energy-based pointing game: Σ_{p ∈ box} H_p / Σ_p H_p.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR-W 2020, section 5.2 (1 when all the map's energy is on the object). A map that
    sums to 0 scores 0.
    """
    hm = np.asarray(heatmap, dtype=np.float64)
    mask = _region_mask(region, hm.shape)
    total = hm.sum()
    return float(hm[mask].sum() / total) if total > 0 else 0.0


def cam_box(heatmap: np.ndarray, threshold: float = 0.2) -> list[int] | None:
    """The CAM paper's box: threshold at ``threshold`` × max, the largest 8-connected component,
    its bounding box [x0, y0, x1, y1] (end-exclusive). None for a map without a positive value.

    Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
    Localization", CVPR 2016, section 3.1 (20% of the max).
    """
    hm = np.asarray(heatmap, dtype=np.float64)
    top = hm.max() if hm.size else 0.0
    if not top > 0:
        return None
    binary = (hm >= threshold * top).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[k, j]) for j in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    return [x, y, x + w, y + h]


def box_iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two end-exclusive boxes [x0, y0, x1, y1] (0 when one is None)."""
    if a is None or b is None:
        return 0.0
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


# -- agreement between two maps -------------------------------------------------------------------
def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flattened array, ties given their average rank."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], len(sv)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(v))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation ρ of two maps: Pearson's correlation of their ranks (ties
    averaged). NaN when either map is constant."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _top_region(m: np.ndarray, percent: float) -> np.ndarray:
    v = np.asarray(m, dtype=np.float64).reshape(-1)
    k = max(1, int(math.ceil(percent / 100 * v.size)))
    thr = np.partition(v, v.size - k)[v.size - k]
    ge, gt = v >= thr, v > thr
    # ties at the threshold: all in or all out, whichever count is nearer k (a non-empty region)
    use_gt = gt.any() and abs(int(gt.sum()) - k) < abs(int(ge.sum()) - k)
    return (gt if use_gt else ge).reshape(np.shape(m))


def top_k_iou(a: np.ndarray, b: np.ndarray, percent: float = 20.0) -> float:
    """IoU of the two maps' top-``percent``% regions.

    A map's region: the pixels above its k-th largest value t (k = ⌈percent·HW/100⌉), plus all
    those equal to t unless that takes the region further from k pixels than leaving them out
    (so a map that is 0 on 90% of the image has its 10% positive pixels as its top-20% region,
    not the whole image). Tie-breaking never depends on pixel order."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    ra, rb = _top_region(a, percent), _top_region(b, percent)
    union = np.logical_or(ra, rb).sum()
    return float(np.logical_and(ra, rb).sum() / union) if union else 0.0
