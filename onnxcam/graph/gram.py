"""The Gram matrix of a layer's centred activations, inside the graph: the one product that
Eigen-CAM, EigenGrad-CAM and KPCA-CAM need, so that numpy is left with an eigendecomposition of a
small (h·w × h·w) matrix.

Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) projects X_c, the (h·w × C) activations centred over
locations, on its first right singular vector v₁. With X_c = U Σ Vᵀ, that projection is
X_c v₁ = σ₁ u₁, and u₁, σ₁² are the leading eigenpair of G = X_c X_cᵀ. So the thin SVD of an
(h·w × C) matrix (49 × 2048 on ResNet-50: numpy's gesdd, multi-threaded BLAS fighting onnxruntime's
worker threads for the cores) becomes one batched MatMul in onnxruntime and `numpy.linalg.eigh` of
an (N, 49, 49) stack. G is computed in float64 (the SVD reference is float64 too).

Where h·w > C (early layers) the (C × C) covariance X_cᵀ X_c is the smaller one; `append_gram`
then returns that instead, and the projection X_c v₁ is finished in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from ..grad.builder import Emitter
from .channel_sum import channel_sum

GRAM_OUTPUT = "onnxcam_gram"
CENTRED_SUM_OUTPUT = "onnxcam_centred_sum"


@dataclass
class GramTensors:
    gram: str  # (N, k, k) float64: k = h·w (over locations) or C (over channels)
    centred_sum: str  # (N, h·w) float64: Σ_c X_c, for the sign convention
    over_locations: bool


def append_gram(e: Emitter, x: str, channels: int, height: int, width: int) -> GramTensors:
    """Emit G for a channels-first float tensor `x` (N, C, h, w): over locations when h·w ≤ C,
    else over channels; and the centred channel sum."""
    hw = height * width
    x64 = e.op("Cast", [x], "to_double", to=TensorProto.DOUBLE)
    e.set_info(x64, (None, channels, height, width), TensorProto.DOUBLE)
    centred = e.op("Sub", [x64, e.reduce("ReduceMean", x64, [2, 3], keepdims=True)])
    flat = e.op("Reshape", [centred, e.ints([0, channels, hw])])  # (N, C, hw)
    e.set_info(flat, (None, channels, hw), TensorProto.DOUBLE)
    t = e.op("Transpose", [flat], perm=[0, 2, 1])  # (N, hw, C)
    over_locations = hw <= channels
    k = hw if over_locations else channels
    gram = e.set_info(e.op("MatMul", [t, flat] if over_locations else [flat, t]), (None, k, k), TensorProto.DOUBLE)
    summed = channel_sum(e, centred, (channels, height, width))  # (N, h, w), the same in any batch
    centred_sum = e.set_info(e.op("Reshape", [summed, e.ints([0, hw])]), (None, hw), TensorProto.DOUBLE)
    return GramTensors(gram, centred_sum, over_locations)
