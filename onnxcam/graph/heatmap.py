"""The method's heatmap as plain ONNX ops, appended to a rewritten explain model.

`append_heatmap` takes a model that already computes the layer's activation A and its gradient
g = ∂y_c/∂A (the explain model of `graph.rewrite`), and adds what the Python path does in numpy
after the run (`methods.base.CAMMethod.cam` then `methods.maps.scale_maps`):

1. A and g to channels-first float32 (a Transpose from the layer's layout; token layers without
   their prefix tokens, reshaped onto the patch grid; a Cast from half types);
2. the method's map at the layer's resolution, ReLU included — one small registered function per
   method below, each the formula of the Python class of the same name in `onnxcam.methods`;
3. per image: m ← (m − min m) / (max(m − min m) + 1e-7);
4. bilinear resize to the input's (H, W) exactly as OpenCV's INTER_LINEAR (half-pixel centres,
   clamped edges), as two constant interpolation matrices: R_y · m · R_xᵀ. The matrices are
   OpenCV's own: cv2.resize of an identity matrix, so the graph and `scale_maps` agree by
   construction on every runtime (no Resize-op coordinate conventions involved);
5. ReLU, normalise again, output `onnxcam_heatmap` (N, H, W) float32 in [0, 1].

Methods whose map is not one fixed graph (Score-CAM's batch of masked forwards, Eigen-CAM's SVD,
SmoothGrad's noise, FullGrad's bias taps) raise UsageError naming the methods that work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UsageError
from ..grad.builder import Emitter
from ..model import default_opset

HEATMAP_OUTPUT = "onnxcam_heatmap"
_F32 = TensorProto.FLOAT


@dataclass
class MapInputs:
    """What an in-graph method reads: tensor names in the graph, channels-first float32."""

    e: Emitter
    acts: str  # (N, C, h, w)
    grads: str | None  # (N, C, h, w), None for gradient-free methods
    targets: str  # (N,) int64: the explained class per image
    head_weight: np.ndarray | None = None  # (K, C): CAM's classifier weights


GraphMap = Callable[[MapInputs], str]
GRAPH_MAPS: dict[str, GraphMap] = {}
NEEDS_GRADIENT: dict[str, bool] = {}


def graph_map(name: str, needs_gradient: bool = True) -> Callable[[GraphMap], GraphMap]:
    """Register the in-graph form of method `name`: a function emitting its (N, h, w) map after
    ReLU (the Python class's `cam`)."""

    def register(fn: GraphMap) -> GraphMap:
        GRAPH_MAPS[name] = fn
        NEEDS_GRADIENT[name] = needs_gradient
        return fn

    return register


def _weighted_sum(i: MapInputs, w: str) -> str:
    """ReLU(Σ_k w_k A^k) for w (N, C, 1, 1) — the base class's `cam`."""
    return i.e.op("Relu", [i.e.reduce_sum(i.e.op("Mul", [w, i.acts]), [1], keepdims=False)])


def _spatial_sum(i: MapInputs, x: str) -> str:
    return i.e.reduce_sum(x, [2, 3], keepdims=True)


@graph_map("cam", needs_gradient=False)
def _cam(i: MapInputs) -> str:
    """CAM (Zhou et al., CVPR 2016): w = W_head[c]."""
    if i.head_weight is None:
        raise UsageError("method cam needs the classifier head's weights (the GAP → linear head after the layer)")
    w = i.e.op("Gather", [i.e.const(i.head_weight.astype(np.float32), "head_weight"), i.targets], axis=0)
    return _weighted_sum(i, i.e.unsqueeze(w, [2, 3]))


@graph_map("gradcam")
def _gradcam(i: MapInputs) -> str:
    """Grad-CAM (Selvaraju et al., ICCV 2017): w = mean_ij g."""
    return _weighted_sum(i, i.e.reduce("ReduceMean", i.grads, [2, 3], keepdims=True))


@graph_map("hirescam")
def _hirescam(i: MapInputs) -> str:
    """HiResCAM (Draelos & Carin, 2020): ReLU(Σ_k g ⊙ A)."""
    return i.e.op("Relu", [i.e.reduce_sum(i.e.op("Mul", [i.grads, i.acts]), [1], keepdims=False)])


@graph_map("gradcam++")
def _gradcampp(i: MapInputs) -> str:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018): α = g² / (2g² + Σ_ab A · g³ + 1e-6),
    w = Σ_ij α · ReLU(g). Where g = 0 the quotient is 0 / 1e-6 = 0, the Python class's α = 0."""
    e = i.e
    g2 = e.op("Mul", [i.grads, i.grads])
    g3 = e.op("Mul", [g2, i.grads])
    denom = e.op("Add", [
        e.op("Add", [e.op("Mul", [g2, e.scalar(2.0, g2)]), e.op("Mul", [_spatial_sum(i, i.acts), g3])]),
        e.scalar(1e-6, g2),
    ])
    alpha = e.op("Div", [g2, denom])
    w = _spatial_sum(i, e.op("Mul", [alpha, e.op("Relu", [i.grads])]))
    return _weighted_sum(i, w)


@graph_map("xgradcam")
def _xgradcam(i: MapInputs) -> str:
    """XGrad-CAM (Fu et al., BMVC 2020): w = Σ_ij g·A / (Σ_ij A + 1e-7)."""
    e = i.e
    num = _spatial_sum(i, e.op("Mul", [i.grads, i.acts]))
    den = e.op("Add", [_spatial_sum(i, i.acts), e.scalar(1e-7, i.acts)])
    return _weighted_sum(i, e.op("Div", [num, den]))


@graph_map("layercam")
def _layercam(i: MapInputs) -> str:
    """LayerCAM (Jiang et al., IEEE TIP 2021): ReLU(Σ_k ReLU(g) ⊙ A)."""
    e = i.e
    return e.op("Relu", [e.reduce_sum(e.op("Mul", [e.op("Relu", [i.grads]), i.acts]), [1], keepdims=False)])


@graph_map("gradcam-elementwise")
def _elementwise(i: MapInputs) -> str:
    """Grad-CAM element-wise (pytorch-grad-cam): Σ_k ReLU(g ⊙ A)."""
    e = i.e
    return e.reduce_sum(e.op("Relu", [e.op("Mul", [i.grads, i.acts])]), [1], keepdims=False)


def check_method(name: str) -> str:
    """The registered name of a method that has an in-graph form, else UsageError."""
    if name not in GRAPH_MAPS:
        raise UsageError(
            f"method {name!r} cannot be computed inside one ONNX graph (it needs several runs, an SVD, "
            f"noise or per-layer taps); --heatmap works with: {', '.join(sorted(GRAPH_MAPS))}"
        )
    return name


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): OpenCV's INTER_LINEAR resize of a length-n_in signal to n_out, as a matrix
    (cv2.resize of the identity, so half-pixel centres and clamped edges are OpenCV's own)."""
    eye = np.eye(n_in, dtype=np.float32)
    return cv2.resize(eye, (n_in, n_out), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _normalise(e: Emitter, m: str) -> str:
    """Per image over axes (1, 2): (m − min) / (max(m − min) + 1e-7) (methods.maps.normalize_maps)."""
    shifted = e.op("Sub", [m, e.reduce("ReduceMin", m, [1, 2], keepdims=True)])
    top = e.op("Add", [e.reduce("ReduceMax", shifted, [1, 2], keepdims=True), e.scalar(1e-7, m)])
    return e.op("Div", [shifted, top])


def _channels_first(e: Emitter, name: str, layout: str, elem_type: int, prefix: int, grid: tuple[int, int]) -> str:
    """The layer's tensor as (N, C, h, w) float32 (tokens.to_grid in the graph): a grid layout
    transposed; a token layout (N, T, C in any order) without its `prefix` tokens, on the grid."""
    if "T" in layout and sorted(layout) == sorted("NTC"):
        x = e.op("Transpose", [name], "to_ntc", perm=[layout.index(c) for c in "NTC"])
        x = e.op("Slice", [x, e.ints([prefix]), e.ints([np.iinfo(np.int64).max]), e.ints([1])], "patch_tokens")
        x = e.op("Reshape", [x, e.ints([0, grid[0], grid[1], -1])], "on_grid")
        x = e.op("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    elif sorted(layout) == sorted("NCHW"):
        perm = [layout.index(c) for c in "NCHW"]
        x = name if perm == [0, 1, 2, 3] else e.op("Transpose", [name], "to_nchw", perm=perm)
    else:
        raise UsageError(f"the in-graph heatmap needs a grid (N, C, H, W) or token (N, T, C) layer, in any axis order; "
                         f"this layer's axes are {layout!r}")
    if elem_type != _F32:
        x = e.op("Cast", [x], "to_float", to=_F32)
    return x


@dataclass
class HeatmapGraph:
    """The model with `onnxcam_heatmap` appended, and what was appended."""

    model: onnx.ModelProto
    method: str
    output: str
    size: tuple[int, int]
    layer_size: tuple[int, int]


def append_heatmap(
    model: onnx.ModelProto,
    method: str,
    activation: str,
    gradient: str | None,
    targets: str,
    layout: str,
    layer_size: tuple[int, int],
    input_size: tuple[int, int],
    elem_type: int = _F32,
    head_weight: np.ndarray | None = None,
    keep_outputs: list[str] | None = None,
    prefix: int = 0,
) -> HeatmapGraph:
    """A copy of `model` that also returns the method's heatmap, `onnxcam_heatmap` (N, H, W).

    activation, gradient: the layer's A and ∂y_c/∂A (tensors of the graph, in `layout` — grid
    axes NCHW or token axes NTC in any order, with `prefix` class/register tokens —, spatial size
    or patch grid `layer_size` (h, w), element type `elem_type`); targets: the (N,) int64 explained
    classes; input_size: the model input's (H, W). keep_outputs: the graph outputs to keep
    (default all); the heatmap is added after them."""
    name = check_method(method)
    if NEEDS_GRADIENT[name] and gradient is None:
        raise UsageError(f"method {name} needs the gradient: export with the gradient")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    e = Emitter({}, {}, default_opset(m), prefix="onnxcam_heatmap/")
    e.set_info(targets, (None,), TensorProto.INT64)
    for t in (activation, gradient):
        if t is not None:
            e.set_info(t, (None, None, None, None), elem_type)
    acts = _channels_first(e, activation, layout, elem_type, prefix, layer_size)
    grads = _channels_first(e, gradient, layout, elem_type, prefix, layer_size) if NEEDS_GRADIENT[name] else None
    e.set_info(acts, (None, None, None, None), _F32)
    if grads is not None:
        e.set_info(grads, (None, None, None, None), _F32)
    cam = GRAPH_MAPS[name](MapInputs(e, acts, grads, targets, head_weight))
    (h, w), (H, W) = layer_size, input_size
    normed = _normalise(e, cam)
    rows = e.op("MatMul", [normed, e.const(interpolation_matrix(w, W).T.copy(), "resize_x")])  # (N, h, W)
    up = e.op("MatMul", [e.const(interpolation_matrix(h, H), "resize_y"), rows])  # (N, H, W)
    final = _normalise(e, e.op("Relu", [up]))
    e.nodes.append(helper.make_node("Identity", [final], [HEATMAP_OUTPUT], name="onnxcam_heatmap/output"))
    g = m.graph
    g.node.extend(e.nodes)
    g.initializer.extend(e.initializers)
    if keep_outputs is not None:
        known = {o.name: o for o in g.output}
        missing = [o for o in keep_outputs if o not in known]
        if missing:
            raise UsageError(f"outputs {missing} are not outputs of the model ({sorted(known)})")
        kept = [known[o] for o in keep_outputs]
        del g.output[:]
        g.output.extend(kept)
    g.output.append(helper.make_tensor_value_info(HEATMAP_OUTPUT, _F32, [_batch_dim(g), H, W]))
    return HeatmapGraph(m, name, HEATMAP_OUTPUT, (H, W), (h, w))


def _batch_dim(g: onnx.GraphProto) -> str | int | None:
    """The first graph output's batch dimension (a name or a number), for the heatmap's shape."""
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if dims:
            d = dims[0]
            return d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
    return None
