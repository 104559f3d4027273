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
_ACTIVATIONS = {"Softmax", "LogSoftmax", "Sigmoid"}


@dataclass
class CamHead:
    """Class weights (K, C) and bias (K,) of the linear classifier after global average pooling."""

    weight: np.ndarray
    bias: np.ndarray
    description: str
    linear: bool = True  # the output is exactly W·mean(A) + b (no activation after the linear layer)


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
    linear = True
    while t != output:  # up to the output, only reshapes or a monotone activation
        node = walk.next_node(t)
        if node is None or node.op_type not in _MONOTONE_TAIL:
            raise walk.fail(f"{node.op_type if node else 'a branch'} after the linear layer")
        linear = linear and node.op_type not in _ACTIVATIONS
        t = walk.step(node)
    if w.shape[1] != layer.channels:
        raise walk.fail(f"linear layer takes {w.shape[1]} features, the layer has {layer.channels} channels")
    return CamHead(np.asarray(w, np.float32), np.asarray(bias, np.float32), " → ".join(walk.seen), linear)



# ---------------------------------------------------------------------------------------------
# multi-scale detection heads (FPN / PAN necks): the maps the head reads at each scale
@dataclass
class DetectionHead:
    """A multi-scale detection head: the map it reads at each scale (largest first) and the
    tensors computed from its rows (anchor-major tensors such as YOLOv8's DFL: never layers)."""

    inputs: list[Layer]
    after_rows: set[str]


def _to_rows(node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, TensorInfo]) -> bool:
    """A node that turns a head convolution's 4-D map into rows of anchors: a Reshape / Flatten
    to another rank of a Conv output, or of a Concat of Conv outputs (YOLOv8's box and class maps)."""
    if node.op_type not in ("Reshape", "Flatten") or not node.input or not node.output:
        return False
    i, o = shapes.get(node.input[0]), shapes.get(node.output[0])
    if i is None or o is None or len(i.shape) != 4 or len(o.shape) == 4:
        return False
    p = index.producer(node.input[0])
    if p is not None and p.op_type == "Concat":
        return all((q := index.producer(t)) is not None and q.op_type == "Conv" for t in p.input)
    return p is not None and p.op_type == "Conv"


# inputs of these ops that carry a gradient; their other inputs are indices, shapes or RoIs,
# constants of the run (a two-stage detector's proposals reach its scores only as RoIs)
_DIFFERENTIABLE_INPUTS = {
    "RoiAlign": (0,), "MaxRoiPool": (0,), "Gather": (0,), "GatherElements": (0,), "GatherND": (0,),
    "ScatterElements": (0, 2), "ScatterND": (0, 2), "Slice": (0,), "Reshape": (0,), "Expand": (0,),
    "Tile": (0,), "Pad": (0,), "Resize": (0,), "TopK": (0,), "ConstantOfShape": (), "Shape": (), "Size": (),
    "Range": (), "NonZero": (), "NonMaxSuppression": (),
}


def _reaches_differentiably(index: GraphIndex, shapes: dict[str, TensorInfo], x: str, y: str) -> bool:
    """True when a gradient can flow from `x` to `y`: a path through float tensors and the
    differentiable inputs of each op."""
    reach = {x}
    for node in index.nodes:
        diff = _DIFFERENTIABLE_INPUTS.get(node.op_type, range(len(node.input)))
        if any(i < len(node.input) and node.input[i] in reach for i in diff):
            reach.update(o for o in node.output if o and shapes.get(o) is not None and shapes[o].elem_type in FLOAT_TYPES)
    return y in reach


def _immediate_dominators(index: GraphIndex, sources: list[str]) -> dict[str, str | None]:
    """Each tensor reachable from `sources` → its immediate dominator (every path from the sources
    to it passes through that tensor): the common ancestor, in the dominator tree, of the inputs of
    its producer (Cooper, Harvey & Kennedy's intersection, in one pass over a topological order)."""
    idom: dict[str, str | None] = {s: None for s in sources}
    depth = {s: 0 for s in sources}

    def common(a: str, b: str) -> str | None:
        while a != b:
            if a is None or b is None:
                return None
            if depth[a] >= depth[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    for node in index.nodes:
        live = [i for i in node.input if i in idom]
        if not live:
            continue
        d: str | None = live[0]
        for i in live[1:]:
            d = common(d, i) if d is not None else None
        for o in node.output:
            if o and d is not None:
                idom[o], depth[o] = d, depth[d] + 1
    return idom


def _dominator_chain(idom: dict[str, str | None], t: str) -> list[str]:
    """`t` and its dominators, nearest first."""
    chain = []
    cur: str | None = t
    while cur is not None:
        chain.append(cur)
        cur = idom.get(cur)
    return chain


def detection_head(model: onnx.ModelProto, shapes: dict[str, TensorInfo], output: str,
                   layers: list[Layer]) -> DetectionHead | None:
    """The multi-scale detection head feeding `output`, or None where there is none.

    Such a head turns each scale's map into rows (a Reshape/Flatten of a 4-D map) and a Concat
    joins the rows of two or more scales (YOLOv5/v8/11, SSD, RetinaNet). For each joined scale the
    map the head reads is the latest map of that size that every path from the image to that
    scale's row tensors passes through (their common dominator): the neck's output (P3, P4, P5),
    not a head convolution, and never a tensor computed after the rows (DFL).
    """
    index = GraphIndex(model.graph)
    feeding = index.ancestors([o.name for o in model.graph.output])  # scores and boxes: the whole head
    by_name = {l.name: l for l in layers}
    tags: dict[str, frozenset] = {}  # tensor computed from rows → the scales it comes from
    rows: dict[tuple, list[str]] = {}
    joined: set = set()
    for node in index.nodes:
        tin = frozenset().union(*(tags.get(i, frozenset()) for i in node.input if i))
        if not tin and _to_rows(node, index, shapes) and node.output[0] in feeding:
            layer = by_name.get(node.input[0])
            hw = (layer.height, layer.width) if layer else tuple(shapes[node.input[0]].shape[2:])  # NCHW
            rows.setdefault(hw, []).append(node.input[0])
            tin = frozenset([hw])
        if node.op_type == "Concat":
            parts = {tags[i] for i in node.input if i in tags}
            if len(parts) >= 2:
                joined |= frozenset().union(*parts)
        for o in node.output:
            if o and tin:
                tags[o] = tin
    if len(joined) < 2:
        return None
    idom = _immediate_dominators(index, [i.name for i in model.graph.input])
    maps = {l.name: l for l in layers if l.name not in tags}
    inputs: dict[str, Layer] = {}
    for hw in joined:
        chains = {r: _dominator_chain(idom, r) for r in rows[hw]}
        for r, chain in chains.items():
            at_hw = [t for t in chain[1:] if t in maps and (maps[t].height, maps[t].width) == hw
                     and _reaches_differentiably(index, shapes, t, output)]
            shared = [t for t in at_hw if any(t in c for q, c in chains.items() if q != r)]
            pick = shared[0] if len(chains) > 1 and shared else (at_hw[0] if at_hw else None)
            if pick is not None:
                inputs[pick] = maps[pick]
    area = lambda l: l.height * l.width if isinstance(l.height, int) and isinstance(l.width, int) else 0
    return DetectionHead(sorted(inputs.values(), key=lambda l: (-area(l), l.index)), set(tags))
