"""Target layers: the candidates, the default one, and the CAM-compatible classifier head.

A candidate is a float 4-D tensor with spatial extent > 1 that feeds the explained output. The
default is the last of them in topological order: the input of the final global pooling (or of the
flatten where there is none). Squeeze-excitation blocks pool too, but their pooled tensors are
1×1 and their gated outputs come before the final activation, so they never win; NHWC tensors
(tf2onnx) are read with the layout propagated from the channels-first ops.

Vision transformers (a patch-embedding Conv on the image, tokens.py): the candidates are the token
layers — LayerNormalization outputs and residual Adds, (N, T, C) in any axis order, with P prefix
tokens and the patch grid — and the grids that follow the patch embedding (Swin's channels-last
stages); tensors inside attention (query, key, value, heads) never are. The default is the last
candidate whose patch tokens can receive a gradient: behind a class-token head, the norm1 output
feeding the last attention block (from its output on, only the class token reaches the logits);
behind a mean over tokens, the tensor pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .errors import HeadError, UsageError
from .graph.index import GraphIndex
from .layouts import tensor_layouts
from .protos import node_attrs
from .tokens import TokenLayout, has_attention, is_token_layer, patch_liveness, token_layouts
from .types import FLOAT_TYPES, LAYOUTS, TensorInfo


@dataclass(frozen=True)
class Layer:
    """A candidate target layer: tensor name, producing op, layout, (C, h, w) at the image size."""

    name: str
    op_type: str
    node: str
    layout: str
    channels: int | str | None
    height: int | str | None
    width: int | str | None
    index: int  # topological position of the producing node
    prefix: int = 0  # token layers: the class / distillation / register tokens before the patches
    live: bool = True  # False: only prefix tokens reach the output (the patch gradient is exactly 0)

    @property
    def is_tokens(self) -> bool:
        return "T" in self.layout

    def as_dict(self, default: bool = False) -> dict:
        d = {
            "name": self.name, "op": self.op_type, "node": self.node, "layout": self.layout,
            "shape": [self.channels, self.height, self.width], "default": default,
        }
        if self.is_tokens:
            d["prefix_tokens"] = self.prefix
        return d


def spatial_dims(shape: tuple, layout: str) -> tuple:
    """(C, H, W) of a 4-D shape read in `layout`."""
    return (shape[layout.index("C")], shape[layout.index("H")], shape[layout.index("W")])


def _extent(chw: tuple) -> int:
    """h·w where both are known, else a large number (dynamic sizes are spatial)."""
    _, h, w = chw
    return h * w if isinstance(h, int) and isinstance(w, int) else 2**31


def candidate_layers(model: onnx.ModelProto, shapes: dict[str, TensorInfo], output: str,
                     constants: dict[str, np.ndarray] | None = None, image: str | None = None) -> list[Layer]:
    """All candidate layers feeding `output`, in topological order (token layers where `image`
    starts with a patch embedding)."""
    ranks = {k: len(v.shape) for k, v in shapes.items()}
    layouts = tensor_layouts(model, ranks)
    index = GraphIndex(model.graph)
    feeding = index.ancestors([output])
    constants = constants or {}
    patch, tokens = token_layouts(model, shapes, constants, image) if image else (None, {})
    live = patch_liveness(model, constants, tokens, output) if patch else {}
    attention = patch is not None or has_attention(model, shapes)
    out: list[Layer] = []
    for idx, node in enumerate(model.graph.node):
        for t in node.output:
            info = shapes.get(t)
            if not t or t not in feeding or info is None or info.elem_type not in FLOAT_TYPES:
                continue
            if patch is not None and t in tokens and node.op_type != "Conv":
                if is_token_layer(node, tokens, constants, index.producer):
                    out.append(_token_layer(t, node, idx, tokens[t], info, live.get(t, True)))
                continue  # its transposes and reshapes are the same layer
            if len(info.shape) != 4:
                continue
            lay = layouts.get(t)
            if lay is None and attention:
                continue  # in a model with attention, a 4-D tensor of unknown layout may be its heads
            if lay is None:
                # unknown layout: a candidate only if spatial under both readings, so that a
                # pooled (N, 1, 1, C) tensor is never taken for a 1×C map
                if any(_extent(spatial_dims(info.shape, l)) <= 1 for l in ("NCHW", "NHWC")):
                    continue
                lay = "NCHW"
            if lay not in LAYOUTS:
                continue
            c, h, w = spatial_dims(info.shape, lay)
            if _extent((c, h, w)) <= 1:
                continue
            out.append(Layer(t, node.op_type, node.name, lay, c, h, w, idx))
    return out


def _token_layer(t: str, node: onnx.NodeProto, idx: int, lay: TokenLayout, info: TensorInfo, live: bool) -> Layer:
    """A token layer (N, T, C) or a grid after the patch embedding (Swin's (N, h, w, C))."""
    c = info.shape[lay.axes.index("C")]
    return Layer(t, node.op_type, node.name, lay.axes, c, lay.grid[0], lay.grid[1], idx, lay.prefix, live)


def default_layer(layers: list[Layer], model: onnx.ModelProto | None = None, output: str | None = None,
                  dense: bool = False) -> Layer:
    """The default layer. Classifiers: the last candidate (the input of the final pooling, or of
    the flatten). Dense outputs (segmentation maps, raw detections), `dense=True`: the input of the
    head — the last candidate that a Conv consumes and that every path from the image to the
    output passes through (the backbone's or the neck's output); where skip connections leave no
    such tensor, the widest Conv-fed feature map (the backbone's deepest output)."""
    if not layers:
        raise UsageError("the model has no 4-D activation with spatial extent > 1 feeding its output; "
                         "name a layer with --layer")
    if any(not l.live for l in layers):  # a class-token head: the last layer its patches reach
        layers = [l for l in layers if l.live] or layers
    if dense and model is not None and output is not None:
        index = GraphIndex(model.graph)
        sources = [i.name for i in model.graph.input]
        fed = [l for l in sorted(layers, key=lambda l: -l.index)
               if l.name != output and any(n.op_type == "Conv" for n in index.consumers(l.name))]
        for layer in fed:
            if index.dominates(layer.name, sources, output):
                return layer
        if fed:  # skip connections from early layers (LR-ASPP, U-Nets): the widest feature map
            return max(fed, key=lambda l: (l.channels if isinstance(l.channels, int) else 0, l.index))
    return max(layers, key=lambda l: l.index)


def find_layer(layers: list[Layer], name: str) -> Layer:
    for l in layers:
        if l.name == name:
            if not l.live:
                use = default_layer(layers)
                raise UsageError(
                    f"layer {name!r}: from there on the output reads only the first {l.prefix} token(s) "
                    f"(class/distillation/register), so the gradient on every patch token is exactly zero "
                    f"and no map can come from it; use layer {use.name!r} (the input of the last "
                    f"attention block, after its norm)")
            return l
    close = [l.name for l in layers if name.lower() in l.name.lower()][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see `onnxcam layers MODEL`)"
    raise UsageError(f"layer {name!r} is not a 4-D spatial activation or a token layer feeding the output{hint}")


# ---------------------------------------------------------------------------------------------
# CAM head: layer → global average pooling → [flatten] → linear → [softmax] → output
_PASS = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Transpose", "Unsqueeze", "Cast"}
_MONOTONE_TAIL = {"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Flatten", "Reshape", "Squeeze"}


@dataclass
class CamHead:
    """Class weights (K, C) and bias (K,) of the linear classifier after global average pooling."""

    weight: np.ndarray
    bias: np.ndarray
    description: str


class _HeadWalk:
    """A walk down the single chain of nodes after a layer, remembering the ops it passed."""

    def __init__(self, model: onnx.ModelProto, layer: Layer, output: str) -> None:
        self.index = GraphIndex(model.graph)
        self.feeding = self.index.ancestors([output])
        self.layer = layer
        self.seen: list[str] = []

    def next_node(self, t: str) -> onnx.NodeProto | None:
        """The one node after `t` on the way to the output (None: none, or a branch)."""
        nodes = [
            n for n in self.index.consumers(t)
            if n.op_type not in ("Shape", "Size") and any(o in self.feeding for o in n.output)
        ]
        return nodes[0] if len(nodes) == 1 else None

    def step(self, node: onnx.NodeProto, op: str | None = None) -> str:
        self.seen.append(op or node.op_type)
        return node.output[0]

    def fail(self, why: str) -> HeadError:
        path = " → ".join(self.seen) or "nothing"
        tokens = (" — a vision transformer's token layer: its head reads the class token, or pools the tokens "
                  "and normalises them before the classifier") if self.layer.is_tokens else ""
        return HeadError(
            f"CAM needs layer {self.layer.name!r} to feed global average pooling then one linear layer; "
            f"found {path} ({why}){tokens}; use --method gradcam, which works on any head"
        )


def _check_global_pooling(walk: _HeadWalk, node: onnx.NodeProto | None, constants: dict[str, np.ndarray]) -> str:
    """Accept GlobalAveragePool, ReduceMean over the spatial axes or a whole-map AveragePool,
    after Transposes of a 4-D layer (Swin's channels-last stage put channels first); return the
    pooled tensor."""
    layer = walk.layer
    layout = layer.layout
    while node is not None and node.op_type == "Transpose" and len(layout) == 4:
        layout = "".join(layout[p] for p in node_attrs(node).get("perm", [3, 2, 1, 0]))
        node = walk.next_node(walk.step(node))
    if node is None:
        raise walk.fail("the layer feeds more than one branch")
    t = walk.step(node)
    attrs = node_attrs(node)
    if node.op_type in ("GlobalAveragePool", "AveragePool") and layout not in ("NCHW", "NCWH"):
        raise walk.fail(f"{node.op_type} over a tensor laid out {layout}, not channels first")
    if node.op_type == "GlobalAveragePool":
        return t
    if node.op_type == "ReduceMean":
        hw = [layout.index("H"), layout.index("W")] if "H" in layout else [-1]
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = constants.get(node.input[1], np.array([])).tolist()
        if sorted(int(a) % 4 for a in (axes or [])) != sorted(hw):
            raise walk.fail(f"ReduceMean over axes {axes}, not the spatial axes {hw}")
        return t
    if node.op_type == "AveragePool":
        if list(attrs.get("kernel_shape", [])) != [layer.height, layer.width]:
            raise walk.fail("AveragePool whose kernel is not the whole map")
        return t
    raise walk.fail("no global average pooling")


def _gemm_weights(walk: _HeadWalk, node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(K, C) weight and (K,) bias of y = alpha·x·B' + beta·C with constant B and C."""
    a = node_attrs(node)
    b = constants.get(node.input[1])
    if b is None or a.get("transA", 0):
        raise walk.fail("Gemm with run-time weights")
    w = (b if a.get("transB", 0) else b.T) * float(a.get("alpha", 1.0))
    c = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    bias = np.broadcast_to(c * float(a.get("beta", 1.0)), (w.shape[0],)) if c is not None else np.zeros(w.shape[0])
    return w, bias


def _matmul_weights(walk: _HeadWalk, node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str]:
    """(K, C) weight and (K,) bias of MatMul by a constant, with the constant Add after it if any;
    and the tensor after them."""
    b = constants.get(node.input[1])
    if b is None or b.ndim != 2:
        raise walk.fail("MatMul with run-time weights")
    w, bias = b.T, np.zeros(b.shape[1])
    t = node.output[0]
    nxt = walk.next_node(t)
    if nxt is not None and nxt.op_type == "Add":
        other = [i for i in nxt.input if i != t]
        c = constants.get(other[0]) if other else None
        if c is not None:
            bias = np.broadcast_to(c.reshape(-1), (w.shape[0],))
            t = walk.step(nxt)
    return w, bias, t


def cam_head(
    model: onnx.ModelProto,
    shapes: dict[str, TensorInfo],
    constants: dict[str, np.ndarray],
    layer: Layer,
    output: str,
) -> CamHead:
    """Recognise GAP → [Flatten/Reshape] → Gemm|MatMul(+Add) → [monotone activation] → output
    after `layer`; raise HeadError naming what was found instead."""
    walk = _HeadWalk(model, layer, output)
    t = _check_global_pooling(walk, walk.next_node(layer.name), constants)
    node = walk.next_node(t)
    while node is not None and node.op_type in _PASS:
        t = walk.step(node)
        node = walk.next_node(t)
    if node is None:
        if t == output and layer.channels == (shapes[output].shape[-1] if output in shapes else None):
            k = int(layer.channels)  # the layer already holds one map per class (1x1-conv classifier)
            return CamHead(np.eye(k, dtype=np.float32), np.zeros(k, np.float32), "class maps → GAP")
        raise walk.fail("no linear layer after the pooling")
    walk.step(node)
    if node.op_type == "Gemm":
        (w, bias), t = _gemm_weights(walk, node, constants), node.output[0]
    elif node.op_type == "MatMul":
        w, bias, t = _matmul_weights(walk, node, constants)
    else:
        raise walk.fail(f"{node.op_type} instead of Gemm/MatMul")
    while t != output:  # up to the output, only reshapes or a monotone activation
        node = walk.next_node(t)
        if node is None or node.op_type not in _MONOTONE_TAIL:
            raise walk.fail(f"{node.op_type if node else 'a branch'} after the linear layer")
        t = walk.step(node)
    if w.shape[1] != layer.channels:
        raise walk.fail(f"linear layer takes {w.shape[1]} features, the layer has {layer.channels} channels")
    return CamHead(np.asarray(w, np.float32), np.asarray(bias, np.float32), " → ".join(walk.seen))

