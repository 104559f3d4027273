"""The method's heatmap as plain ONNX ops, appended to a rewritten explain model.

`append_heatmap` takes a model that already computes the layer's activation A and its gradient
g = ∂y_c/∂A (the explain model of `graph.rewrite`), and adds what the Python path does in numpy
after the run (`methods.base.CAMMethod.cam` then `methods.maps.scale_maps`):

1. A and g to channels-first float32 (a Transpose from the layer's layout; token layers without
   their prefix tokens, reshaped onto the patch grid; a Cast from half types);
2. the method's map at the layer's resolution, ReLU included: the method class's own `graph`
   (`CAMMethod.graph`, the ops the Python path appends to its explain model; the methods that set
   `graph_map`), fed the tensors of step 1 — the formulas live in `onnxcam.methods` only;
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
import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import OnnxcamError, UsageError
from ..grad.builder import Emitter
from ..layers import Layer
from ..methods import METHODS, CAMMethod, get_method
from ..model import default_opset
from ..types import TensorInfo
from .rewrite import GraphTensors

HEATMAP_OUTPUT = "onnxcam_heatmap"
_F32 = TensorProto.FLOAT


def in_graph_methods() -> tuple[str, ...]:
    """The names of the methods whose `graph` is their whole map (`CAMMethod.graph_map`)."""
    return tuple(sorted(n for n, cls in METHODS.items() if cls.graph_map))


GRAPH_MAPS = in_graph_methods()


def check_method(method: str | CAMMethod) -> CAMMethod:
    """The method (a name or an instance) when it has an in-graph form, else UsageError."""
    m = get_method(method)
    if not m.graph_map:
        raise UsageError(
            f"method {m.name!r} cannot be computed inside one ONNX graph (it needs several runs, an SVD, "
            f"noise or per-layer taps); --heatmap works with: {', '.join(GRAPH_MAPS)}"
        )
    return m


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
    method: str | CAMMethod,
    layer: Layer,
    image: TensorInfo,
    image_layout: str,
    activation: str,
    gradient: str | None,
    targets: str,
    input_size: tuple[int, int],
    elem_type: int = _F32,
    head_weight: np.ndarray | None = None,
    keep_outputs: list[str] | None = None,
) -> HeatmapGraph:
    """A copy of `model` that also returns the method's heatmap, `onnxcam_heatmap` (N, H, W).

    layer: the explained layer (its axes — grid NCHW or token NTC in any order, with `prefix`
    class/register tokens —, spatial size or patch grid (h, w)); image: the model's image input, in
    `image_layout`; activation, gradient: the layer's A and ∂y_c/∂A (tensors of the graph, element
    type `elem_type`); targets: the (N,) int64 explained classes; input_size: the model input's
    (H, W); head_weight: the classifier's (K, C) weights (CAM). keep_outputs: the graph outputs to
    keep (default all); the heatmap is added after them."""
    meth = check_method(method)
    if meth.needs_gradients and gradient is None:
        raise UsageError(f"method {meth.name} needs the gradient: export with the gradient")
    if meth.needs_head and head_weight is None:
        raise UsageError(f"method {meth.name} needs the classifier head's weights (the GAP → linear head after the layer)")
    if not isinstance(layer.height, int) or not isinstance(layer.width, int):
        raise UsageError(f"layer {layer.name!r} has a dynamic spatial size {layer.height}x{layer.width}; give --size")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    e = Emitter({}, {}, default_opset(m), prefix="onnxcam_heatmap/")
    e.set_info(targets, (None,), TensorProto.INT64)
    for t in (activation, gradient):
        if t is not None:
            e.set_info(t, (None, None, None, None), elem_type)
    grid = (layer.height, layer.width)
    acts = _channels_first(e, activation, layer.layout, elem_type, layer.prefix, grid)
    grads = _channels_first(e, gradient, layer.layout, elem_type, layer.prefix, grid) if meth.needs_gradients else None
    e.set_info(acts, (None, None, None, None), _F32)
    if grads is not None:
        e.set_info(grads, (None, None, None, None), _F32)
    found = meth.graph(GraphTensors(e, layer, acts, grads, targets, image.name, image_layout, image.elem_type,
                                    input_size, head_weight=head_weight))
    if "cam" not in found:
        raise OnnxcamError(f"method {meth.name}'s graph returned no map (keys {sorted(found)}); it cannot be exported with --heatmap")
    cam = found["cam"]
    (h, w), (H, W) = grid, input_size
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
    return HeatmapGraph(m, meth.name, HEATMAP_OUTPUT, (H, W), (h, w))


def _batch_dim(g: onnx.GraphProto) -> str | int | None:
    """The first graph output's batch dimension (a name or a number), for the heatmap's shape."""
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if dims:
            d = dims[0]
            return d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
    return None
