"""Transformer methods: maps read from the attention probabilities (the Softmax outputs of every
self-attention block) and, for the gradient-weighted ones, their gradients ∂y/∂A, all from one
onnxruntime run.

Notation: A_l (N, heads, T, T) the probabilities of block l (row i: how token i attends to every
token j), ∇A_l = ∂y_t/∂A_l, P the prefix tokens (class, distillation, registers), r the tokens the
head reads (the class token; DeiT: class and distillation; a mean-pooled head: every patch token).
Every map is the rows r (averaged) of a (T × T) matrix, at the patch columns P.., on the patch grid.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import UsageError
from .base import CAMMethod, MethodInputs, register


def _rows(inp: MethodInputs, m: np.ndarray) -> np.ndarray:
    """mean over the head's rows r of m[:, r, P:], on the patch grid: (N, h, w)."""
    tok = inp.tokens
    h, w = tok.grid
    return m[:, tok.rows, tok.prefix:].mean(axis=1).reshape(m.shape[0], h, w)


def fuse_heads(a: np.ndarray, fusion: str) -> np.ndarray:
    """(N, heads, T, T) → (N, T, T): the mean, max or min over heads."""
    if fusion == "mean":
        return a.mean(axis=1)
    if fusion == "max":
        return a.max(axis=1)
    if fusion == "min":
        return a.min(axis=1)
    raise UsageError(f"head_fusion must be 'mean', 'max' or 'min', got {fusion!r}")


def discard_lowest(a: np.ndarray, ratio: float) -> np.ndarray:
    """Each (T, T) matrix with its ⌊ratio·T²⌋ smallest entries set to 0 (stable order)."""
    if ratio <= 0:
        return a
    n, t, _ = a.shape
    k = int(np.floor(ratio * t * t))
    flat = a.reshape(n, t * t).copy()
    idx = np.argsort(flat, axis=1, kind="stable")[:, :k]
    np.put_along_axis(flat, idx, 0.0, axis=1)
    return flat.reshape(n, t, t)


def rollout_of(fused: list[np.ndarray], discard: float) -> np.ndarray:
    """R = Ã_L ⋯ Ã_s with Ã = row-normalised (discarded Â + I) / 2."""
    t = fused[0].shape[-1]
    eye = np.eye(t)
    r = np.broadcast_to(eye, fused[0].shape).copy()
    for a in fused:
        a = (discard_lowest(a, discard) + eye) / 2
        r = (a / a.sum(axis=-1, keepdims=True)) @ r
    return r


class _AttentionMethod(CAMMethod):
    """A map from the attention probabilities: no gradient at a layer; `attention_gradients` says
    whether ∂y/∂A is needed too."""

    needs_gradients: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = True

    def __init__(self, start_layer: int = 0) -> None:
        self.start_layer = start_layer

    def eigen_cam(self, inp: MethodInputs) -> np.ndarray:
        raise UsageError(f"eigen_smooth takes the principal component over a layer's channels; {self.name} reads "
                         "attention and has none: explain without eigen_smooth")

    def blocks(self, inp: MethodInputs) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        a = [x.astype(np.float64) for x in inp.attentions]
        g = [x.astype(np.float64) for x in inp.attention_gradients] if inp.attention_gradients else None
        if not 0 <= self.start_layer < len(a):
            raise UsageError(f"start_layer must be in 0..{len(a) - 1} (the model has {len(a)} attention blocks)")
        return a[self.start_layer:], (g[self.start_layer:] if g else None)


@register
class RawAttention(_AttentionMethod):
    """Raw attention — the last block's attention from the head's tokens to the patches, averaged
    over heads (the baseline of Abnar & Zuidema, ACL 2020): map = mean_h A_L[r, P:].

    Example: ``Explainer("vit.onnx", method="attention").explain(x)``
    """

    name = "attention"

    def cam(self, inp: MethodInputs) -> np.ndarray:
        a, _ = self.blocks(inp)
        return _rows(inp, a[-1].mean(axis=1)).astype(np.float32)


@register
class AttentionRollout(_AttentionMethod):
    """Attention rollout — Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    Per block from `start_layer`: fuse the heads (mean, max or min) into Â; set the ⌊discard·T²⌋
    smallest entries to 0; add the residual and renormalise rows, Ã = (Â + I)/2, Ã_ij /= Σ_j Ã_ij;
    multiply through the blocks, R = Ã_L ⋯ Ã_s. map = mean_r R[r, P:].

    Example: ``Explainer("vit.onnx", method=AttentionRollout(head_fusion="max", discard_ratio=0.9))``
    """

    name = "rollout"

    def __init__(self, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0) -> None:
        super().__init__(start_layer)
        fuse_heads(np.zeros((1, 1, 1, 1)), head_fusion)  # validates the name
        if not 0.0 <= discard_ratio < 1.0:
            raise UsageError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio

    def cam(self, inp: MethodInputs) -> np.ndarray:
        a, _ = self.blocks(inp)
        r = rollout_of([fuse_heads(x, self.head_fusion) for x in a], self.discard_ratio)
        return _rows(inp, r).astype(np.float32)


@register
class GradRollout(_AttentionMethod):
    """Gradient-weighted attention rollout (J. Gildenblat's vit-explain, 2020): rollout (above)
    with each block's heads fused as Â = ReLU(mean_h ∇A ⊙ A), so the heads and entries that raise
    the target count, the others not.

    Example: ``Explainer("vit.onnx", method="grad-rollout").explain(x)``
    """

    name = "grad-rollout"
    attention_gradients = True

    def __init__(self, discard_ratio: float = 0.0, start_layer: int = 0) -> None:
        super().__init__(start_layer)
        self.discard_ratio = discard_ratio

    def cam(self, inp: MethodInputs) -> np.ndarray:
        a, g = self.blocks(inp)
        fused = [np.maximum((x * gx).mean(axis=1), 0) for x, gx in zip(a, g)]
        return _rows(inp, rollout_of(fused, self.discard_ratio)).astype(np.float32)


@register
class Chefer(_AttentionMethod):
    """Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021 (self-attention rules, eqs. 5–6):
    R = I; for each block, Ā = mean_h (∇A ⊙ A)⁺ and R ← R + Ā · R. map = mean_r R[r, P:].

    Example: ``Explainer("vit.onnx", method="chefer").explain(x)``
    """

    name = "chefer"
    attention_gradients = True

    def cam(self, inp: MethodInputs) -> np.ndarray:
        a, g = self.blocks(inp)
        t = a[0].shape[-1]
        r = np.broadcast_to(np.eye(t), (a[0].shape[0], t, t)).copy()
        for x, gx in zip(a, g):
            r = r + np.maximum(x * gx, 0).mean(axis=1) @ r
        return _rows(inp, r).astype(np.float32)
