"""Torch reference implementations for the vision-transformer goldens (build time only).

Written for onnxcam from the papers' formulas; nothing here is copied from another project.

* :class:`AttentionRecorder` — a ``TorchFunctionMode`` that computes every attention explicitly
  (``softmax(q kᵀ · scale + mask) v``) wherever a model calls a fused kernel
  (``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward``), and records every
  softmax output with ``retain_grad()``, so one backward pass gives the attention probabilities A_l
  of every block and ∂y/∂A_l.
* :func:`vit_reshape` / :func:`swin_reshape` — pytorch-grad-cam style ``reshape_transform``s:
  (N, T, C) → drop the P prefix tokens → (N, C, h, w); Swin's channels-last (N, h, w, C) → (N, C, h, w).
* :func:`raw_attention`, :func:`rollout`, :func:`grad_rollout`, :func:`chefer` — the transformer
  explanation maps, each from the (N, heads, T, T) probabilities (and their gradients):

  - raw attention: mean_h A_L[r, P:] (the last block's attention of the head tokens r to the patches);
  - attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers"):
    per block, fuse heads (mean | max | min) → Â; discard: the ⌊ratio·T²⌋ smallest entries of Â
    (per image) are set to 0 (a stable ascending sort of the flattened Â); Ã = (Â + I)/2, rows
    renormalised Ã ← Ã / Σ_j Ã_ij; R = Ã_L · … · Ã_s (s = start layer); map = mean_{r∈rows} R[r, P:];
  - gradient-weighted rollout: as rollout with Â = ReLU(mean_h (∇A ⊙ A)) (fused after weighting);
  - Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", eq. (5)-(6) for self-attention:
    R = I (T×T); for each block l ≥ s: Ā_l = mean_h (∇A_l ⊙ A_l)⁺, R ← R + Ā_l · R;
    map = mean_{r∈rows} R[r, P:].

  ``rows`` are the tokens the head reads: (0,) for a class-token head, (0, 1) for a distilled DeiT
  (class and distillation heads averaged), every patch token P..T−1 for a mean-pooled head.
  Maps are returned raw, (N, h, w), float64.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}


class AttentionRecorder(TorchFunctionMode):
    """Records the attention probabilities (softmax outputs) of one forward pass, in call order.

    Fused attention calls are replaced by the explicit formula so that their probabilities exist
    as tensors; ``probs[i].grad`` holds ∂y/∂A_i after ``y.backward()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.probs: list[torch.Tensor] = []

    def _record(self, p: torch.Tensor) -> torch.Tensor:
        if p.requires_grad:
            p.retain_grad()
        self.probs.append(p)
        return p

    def _sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        assert not is_causal and dropout_p == 0.0
        s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
        logits = torch.matmul(q, k.transpose(-2, -1)) * s
        if attn_mask is not None:
            logits = logits + attn_mask if attn_mask.dtype != torch.bool else logits.masked_fill(~attn_mask, float("-inf"))
        return torch.matmul(self._record(torch.softmax(logits, dim=-1)), v)

    def _mha(self, query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
             bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
             key_padding_mask=None, need_weights=True, attn_mask=None, **kw: Any):
        """F.multi_head_attention_forward (sequence-first (T, N, C), packed in-projection)."""
        assert bias_k is None and bias_v is None and not add_zero_attn and key_padding_mask is None
        assert attn_mask is None and (dropout_p == 0.0 or not training)
        T, N, C = query.shape
        d = C // num_heads
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
        heads = lambda t: t.reshape(T, N, num_heads, d).permute(1, 2, 0, 3)  # (N, h, T, d)
        o = self._sdpa(heads(q), heads(k), heads(v))  # (N, h, T, d)
        o = o.permute(2, 0, 1, 3).reshape(T, N, C)
        return F.linear(o, out_proj_weight, out_proj_bias), None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self._mha(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX:
            self._record(out)
        return out


def vit_reshape(prefix: int, h: int, w: int):
    """reshape_transform for (N, T, C) token tensors: drop `prefix` tokens, (N, C, h, w)."""

    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return transform


def swin_reshape(t: torch.Tensor) -> torch.Tensor:
    """reshape_transform for a channels-last (N, h, w, C) Swin stage output."""
    return t.permute(0, 3, 1, 2)


def _grid(m: torch.Tensor, rows: Sequence[int], prefix: int, h: int, w: int) -> torch.Tensor:
    """mean over `rows` of R[:, rows, prefix:] reshaped to (N, h, w)."""
    return m[:, list(rows), prefix:].mean(dim=1).reshape(m.shape[0], h, w)


def fuse_heads(a: torch.Tensor, fusion: str) -> torch.Tensor:
    """(N, heads, T, T) → (N, T, T) by mean, max or min over the heads."""
    if fusion == "mean":
        return a.mean(dim=1)
    if fusion == "max":
        return a.amax(dim=1)
    if fusion == "min":
        return a.amin(dim=1)
    raise ValueError(f"unknown head fusion {fusion!r}")


def discard(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """Set the ⌊ratio·T²⌋ smallest entries of each (T, T) matrix to 0 (stable ascending order)."""
    if ratio <= 0:
        return a
    n, t, _ = a.shape
    k = int(math.floor(ratio * t * t))
    flat = a.reshape(n, t * t).clone()
    idx = torch.sort(flat, dim=-1, stable=True).indices[:, :k]
    flat.scatter_(1, idx, 0.0)
    return flat.reshape(n, t, t)


def _rollout_of(fused: list[torch.Tensor], ratio: float) -> torch.Tensor:
    t = fused[0].shape[-1]
    eye = torch.eye(t, dtype=fused[0].dtype)
    r = eye.expand_as(fused[0]).clone()
    for a in fused:
        a = (discard(a, ratio) + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        r = a @ r
    return r


def raw_attention(probs: list[torch.Tensor], rows, prefix, h, w) -> torch.Tensor:
    """mean_h A_L[rows, P:] of the last block, (N, h, w)."""
    return _grid(probs[-1].double().mean(dim=1), rows, prefix, h, w)


def rollout(probs: list[torch.Tensor], rows, prefix, h, w, fusion="mean", discard_ratio=0.0,
            start_layer=0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), (N, h, w)."""
    fused = [fuse_heads(a.double(), fusion) for a in probs[start_layer:]]
    return _grid(_rollout_of(fused, discard_ratio), rows, prefix, h, w)


def grad_rollout(probs, grads, rows, prefix, h, w, discard_ratio=0.0, start_layer=0) -> torch.Tensor:
    """Gradient-weighted rollout: Â = ReLU(mean_h (∇A ⊙ A)), then rollout, (N, h, w)."""
    fused = [torch.clamp((a.double() * g.double()).mean(dim=1), min=0)
             for a, g in zip(probs[start_layer:], grads[start_layer:])]
    return _grid(_rollout_of(fused, discard_ratio), rows, prefix, h, w)


def chefer(probs, grads, rows, prefix, h, w, start_layer=0) -> torch.Tensor:
    """Chefer et al. 2021 relevance: R = I; R ← R + mean_h (∇A ⊙ A)⁺ · R, (N, h, w)."""
    t = probs[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64).expand(probs[0].shape[0], t, t).clone()
    for a, g in zip(probs[start_layer:], grads[start_layer:]):
        abar = torch.clamp(a.double() * g.double(), min=0).mean(dim=1)
        r = r + abar @ r
    return _grid(r, rows, prefix, h, w)
