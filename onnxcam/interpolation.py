"""Linear interpolation as constant matrices: resizing one axis is one matrix product, in numpy
(Score-CAM masks) or as a MatMul in an ONNX graph (FullGrad's in-graph maps)."""

from __future__ import annotations

import numpy as np


def linear_matrix(n_out: int, n_in: int, align_corners: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 weights of 1-D linear interpolation. align_corners=False: half-pixel
    centres with clamped edges (OpenCV's INTER_LINEAR when enlarging, torch's default);
    align_corners=True: the end samples coincide (torch's align_corners=True)."""
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
