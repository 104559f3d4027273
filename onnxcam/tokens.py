"""Token layouts of vision transformers, read from the graph.

A vision transformer cuts the image into patches with one convolution whose kernel equals its
stride (the patch embedding): at an image of H×W and patch p×q its output is the (h, w) =
(H/p, W/q) grid. From there the tensors are tokens, (N, T, C) with T = P + h·w, where the P prefix
tokens (class, distillation, register tokens) are image-independent tensors concatenated before
the patch tokens; or, in Swin, channels-last grids (N, h, w, C).

`token_layouts` propagates, forward from the patch embedding, an axis string per tensor: letters N
(batch), T (tokens), C (channels), H and W (grid), e.g. "NTC", "TNC" (sequence-first, as inside
torchvision's attention), "NCHW", "NHWC" (Swin). The batch axis is whatever the patch
embedding's batch axis becomes through Transposes, never a position. Propagation goes through
Transpose, Flatten/Reshape of the grid into tokens, Concat of prefix tokens, per-token ops
(LayerNormalization, element-wise ops, MatMul by a weight matrix) and strided Slices and Concats
of grids (Swin's patch merging). It stops at everything that mixes or splits tokens or channels
(Reshape into heads, Gather or Slice of tokens, attention's MatMuls, Softmax).

`patch_liveness` answers which tensors can pass a gradient to the patch tokens at all: walking
back from the output, a Gather or Slice that keeps only prefix tokens (a class-token head) leaves
only the prefix rows alive, per-token ops keep that, and attention (which mixes tokens) makes
every token alive again. At a layer where only the prefix is alive the patch gradient is exactly
zero, so no gradient map can be read there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx
from .protos import node_attr
from .types import TensorInfo

# ops applied to every token alike: a token layout passes through when the shape is kept
PER_TOKEN_OPS = frozenset({
    "LayerNormalization", "Add", "Sub", "Mul", "Div", "Relu", "Gelu", "Erf", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "Softplus", "Elu", "LeakyRelu", "Identity", "Dropout", "Cast",
    "Sqrt", "Pow", "Neg", "Abs", "Clip", "Exp", "Log", "Reciprocal",
})
TOKEN_AXES = ("NTC", "TNC")
_CHANNEL_REDUCTIONS = frozenset({"ReduceMean", "ReduceSum"})


@dataclass(frozen=True)
class PatchEmbedding:
    """The patch-embedding Conv: its node, output tensor, patch size and grid at the image size."""

    node: str
    output: str
    patch: tuple[int, int]
    grid: tuple[int, int]


@dataclass(frozen=True)
class TokenLayout:
    """Axis letters of one tensor (N, T, C, H, W), its prefix tokens and the patch grid (h, w)."""

    axes: str
    prefix: int
    grid: tuple[int, int]

    @property
    def is_tokens(self) -> bool:
        return "T" in self.axes


@dataclass(frozen=True)
class TokenModel:
    """What the transformer methods need: the prefix tokens and patch grid of the token stream,
    the tokens the head reads, and the attention probabilities (Softmax outputs over all T
    tokens) of every block, in order. Windowed attention (Swin) has none over all tokens."""

    patch: PatchEmbedding
    prefix: int
    grid: tuple[int, int]
    rows: list[int]
    attention: list[str]

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


def _const_ints(node: onnx.NodeProto, idx: int, attr: str, constants: dict[str, np.ndarray]) -> Optional[list[int]]:
    """An int list given as attribute (old opsets) or as a constant input (new opsets)."""
    v = node_attr(node, attr)
    if v is not None:
        return [int(a) for a in v]
    if len(node.input) > idx and node.input[idx] in constants:
        return [int(a) for a in np.asarray(constants[node.input[idx]]).reshape(-1)]
    return None


def _same_shape(a, b) -> bool:
    """Equal shapes, where any two symbolic or unknown axes count as equal (the batch axis is
    renamed freely by shape inference)."""
    return len(a) == len(b) and all(x == y if isinstance(x, int) and isinstance(y, int)
                                    else not isinstance(x, int) and not isinstance(y, int) for x, y in zip(a, b))


def _ints(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def _patchify(node: onnx.NodeProto, shapes: dict[str, TensorInfo], image: str,
              min_kernel: int) -> Optional[PatchEmbedding]:
    """`node` as a patch embedding: a Conv whose kernel equals its strides (≥ min_kernel),
    unpadded, undilated, ungrouped, with a known output grid; the patch is the image size over
    the grid (the kernel where the Conv reads the image itself)."""
    if node.op_type != "Conv":
        return None
    k = list(node_attr(node, "kernel_shape", []) or [])
    s = list(node_attr(node, "strides", []) or [])
    pads = list(node_attr(node, "pads", []) or [])
    dil = list(node_attr(node, "dilations", []) or [])
    out, img = shapes.get(node.output[0]), shapes.get(image)
    if not (len(k) == 2 and k == s and min(k) >= min_kernel and not any(pads) and all(d == 1 for d in dil)
            and node_attr(node, "group", 1) == 1 and out is not None and len(out.shape) == 4 and _ints(out.shape[2:])):
        return None
    h, w = out.shape[2], out.shape[3]
    hw_in = [d for d in (img.shape if img is not None else ()) if isinstance(d, int) and d > 4]
    patch = (hw_in[0] // h, hw_in[1] // w) if len(hw_in) == 2 else (k[0], k[1])
    return PatchEmbedding(node.name, node.output[0], patch, (h, w))


def patch_embeddings(model: onnx.ModelProto, shapes: dict[str, TensorInfo], image: str) -> list[PatchEmbedding]:
    """Candidate patch embeddings, in order: the first Conv fed by the image (through element-wise
    preprocessing only) when its kernel equals its strides (ViT, DeiT, Swin); then every later such
    Conv (a hybrid ViT embeds the feature map of a CNN stem, even with 1×1 patches)."""
    fed, found = {image}, []
    first = True
    for node in model.graph.node:
        if node.op_type == "Conv":
            pe = _patchify(node, shapes, image, 2 if first else 1) if not first or node.input[0] in fed else None
            found += [pe] if pe else []
            first = False
        elif first and any(i in fed for i in node.input if i) and (node.op_type in PER_TOKEN_OPS or node.op_type == "Transpose"):
            fed.update(o for o in node.output if o)
    return found


class _Propagation:
    def __init__(self, model: onnx.ModelProto, shapes: dict[str, TensorInfo], constants: dict[str, np.ndarray],
                 image: str) -> None:
        self.shapes = shapes
        self.constants = constants
        self.image_dependent = {image}  # tensors whose values depend on the image (not its shape)
        for node in model.graph.node:
            if node.op_type not in ("Shape", "Size") and any(i in self.image_dependent for i in node.input if i):
                self.image_dependent.update(o for o in node.output if o)
        self.layouts: dict[str, TokenLayout] = {}

    def shape(self, t: str) -> Optional[tuple]:
        info = self.shapes.get(t)
        return info.shape if info is not None else None

    def set(self, t: str, lay: TokenLayout) -> None:
        shape = self.shape(t)
        if shape is None or len(shape) != len(lay.axes):
            return
        if lay.is_tokens:
            tdim = shape[lay.axes.index("T")]
            if tdim != lay.prefix + lay.grid[0] * lay.grid[1]:
                return
        self.layouts[t] = lay

    def step(self, node: onnx.NodeProto) -> None:
        ins = [(i, self.layouts[i]) for i in node.input if i in self.layouts]
        if not ins or not node.output or not node.output[0]:
            return
        src, lay = ins[0]
        out = node.output[0]
        op = node.op_type
        oshape, ishape = self.shape(out), self.shape(src)
        if oshape is None or ishape is None:
            return
        if op == "Transpose":
            perm = node_attr(node, "perm") or list(reversed(range(len(lay.axes))))
            self.set(out, TokenLayout("".join(lay.axes[p] for p in perm), lay.prefix, lay.grid))
        elif op in ("Reshape", "Flatten") and lay.axes == "NCHW" and len(oshape) == 3:
            # (N, C, h, w) → (N, C, h·w): patch tokens, channels first
            if oshape[1] == ishape[1] and oshape[2] == lay.grid[0] * lay.grid[1]:
                self.set(out, TokenLayout("NCT", 0, lay.grid))
        elif op == "Concat":
            self._concat(node, src, lay)
        elif op == "Slice" and lay.axes in ("NHWC", "NCHW"):
            axes = _const_ints(node, 3, "axes", self.constants) or list(range(len(ishape)))
            if all(lay.axes[a % len(ishape)] in "HW" for a in axes):
                h, w = oshape[lay.axes.index("H")], oshape[lay.axes.index("W")]
                if isinstance(h, int) and isinstance(w, int):
                    self.set(out, TokenLayout(lay.axes, 0, (h, w)))
        elif op == "MatMul":
            w = self.shape(node.input[1])
            if node.input[0] == src and node.input[1] not in self.image_dependent and w is not None and len(w) == 2:
                self.set(out, lay)
        elif op in _CHANNEL_REDUCTIONS:  # a mean over each token's channels (LayerNormalization written out)
            axes = _const_ints(node, 1, "axes", self.constants)
            if axes is not None and [a % len(ishape) for a in axes] == [lay.axes.index("C")] \
                    and node_attr(node, "keepdims", 1):
                self.set(out, lay)
        elif op in PER_TOKEN_OPS or op == "Pad":  # Pad: where it pads nothing (Swin, sizes fitting the windows)
            if _same_shape(oshape, ishape):
                self.set(out, lay)

    def _concat(self, node: onnx.NodeProto, src: str, lay: TokenLayout) -> None:
        r = len(lay.axes)
        axis = int(node_attr(node, "axis", 0)) % r
        letter = lay.axes[axis]
        out = node.output[0]
        if letter in "CHW" and lay.axes in ("NHWC", "NCHW"):
            # Swin's patch merging (four strided grids along C) and its cyclic shift (along H, W)
            oshape = self.shape(out)
            if oshape is not None and all(i in self.layouts and self.layouts[i].axes == lay.axes for i in node.input):
                self.set(out, TokenLayout(lay.axes, 0, (oshape[lay.axes.index("H")], oshape[lay.axes.index("W")])))
            return
        if letter != "T":
            return
        prefix = 0
        seen = False
        for i in node.input:
            if i == src:
                seen = True
                continue
            if i in self.image_dependent:
                return  # tokens computed from the image besides the patches: not a known layout
            if seen:
                return  # suffix tokens: not supported
            s = self.shape(i)
            if s is None or not isinstance(s[axis], int):
                return
            prefix += s[axis]
        self.set(out, TokenLayout(lay.axes, lay.prefix + prefix, lay.grid))


def has_attention(model: onnx.ModelProto, shapes: dict[str, TensorInfo]) -> bool:
    """A Softmax over a rank ≥ 3 tensor: attention probabilities (a classifier's is (N, K))."""
    for node in model.graph.node:
        info = shapes.get(node.output[0]) if node.op_type == "Softmax" and node.output else None
        if info is not None and len(info.shape) >= 3:
            return True
    return False


def token_layouts(model: onnx.ModelProto, shapes: dict[str, TensorInfo], constants: dict[str, np.ndarray],
                  image: str) -> tuple[Optional[PatchEmbedding], dict[str, TokenLayout]]:
    """The patch embedding and the layout of every tensor reached from it (empty for CNNs): the
    Conv on the image if it patchifies, else the first later patchifying Conv whose output becomes
    tokens (a hybrid's)."""
    if not has_attention(model, shapes):
        return None, {}  # a patchify stem without attention (ConvNeXt) is a CNN's
    for k, pe in enumerate(patch_embeddings(model, shapes, image)):
        prop = _Propagation(model, shapes, constants, image)
        prop.layouts[pe.output] = TokenLayout("NCHW", 0, pe.grid)
        for node in model.graph.node:
            prop.step(node)
        first_on_image = k == 0 and _reads_image(model, pe, image)
        if first_on_image or any(lay.is_tokens for lay in prop.layouts.values()):
            return pe, prop.layouts
    return None, {}


def _reads_image(model: onnx.ModelProto, pe: PatchEmbedding, image: str) -> bool:
    """True when no Conv comes before the patch embedding (it reads the image itself)."""
    for node in model.graph.node:
        if node.name == pe.node and node.output[0] == pe.output:
            return True
        if node.op_type == "Conv":
            return False
    return False


def is_token_layer(node: onnx.NodeProto, layouts: dict[str, TokenLayout], constants: dict[str, np.ndarray],
                   producer: Callable[[str], Optional[onnx.NodeProto]]) -> bool:
    """A layer is the residual stream or its normalisation: a LayerNormalization output (or one
    written out, as exporters do below opset 17), or an Add of two computed tensors (a residual
    connection). Query, key and value (MatMul outputs and their bias Adds), the position-embedding
    Add and every tensor inside attention are not."""
    if not node.output or node.output[0] not in layouts:
        return False
    if node.op_type == "LayerNormalization" or _written_out_layernorm(node, constants, producer):
        return True
    return node.op_type == "Add" and not any(i in constants for i in node.input[:2])


def _written_out_layernorm(node: onnx.NodeProto, constants: dict[str, np.ndarray],
                           producer: Callable[[str], Optional[onnx.NodeProto]]) -> bool:
    """Add(Mul(Div(Sub(x, mean), ·), γ), β): LayerNormalization as element-wise ops."""

    def through(n: Optional[onnx.NodeProto], op: str) -> Optional[onnx.NodeProto]:
        """The producer of `n`'s one non-constant input, if `n` is `op` with one constant input."""
        if n is None or n.op_type != op or len(n.input) != 2 or sum(i in constants for i in n.input) != 1:
            return None
        return producer(next(i for i in n.input if i not in constants))

    div = through(through(node, "Add"), "Mul")
    if div is None or div.op_type != "Div":
        return False
    sub = producer(div.input[0])
    return sub is not None and sub.op_type == "Sub"


def _token_axis_selection(node: onnx.NodeProto, lay: TokenLayout, constants: dict[str, np.ndarray]) -> Optional[list[int]]:
    """The token indices a Gather or Slice on the T axis keeps (None: not such a node, or unknown)."""
    rank, t_axis = len(lay.axes), lay.axes.index("T")
    n_tokens = lay.prefix + lay.grid[0] * lay.grid[1]
    if node.op_type == "Gather":
        if int(node_attr(node, "axis", 0)) % rank != t_axis or node.input[1] not in constants:
            return None
        return sorted({int(i) % n_tokens for i in np.asarray(constants[node.input[1]]).reshape(-1)})
    if node.op_type == "Slice":
        starts, ends = _const_ints(node, 1, "starts", constants), _const_ints(node, 2, "ends", constants)
        axes = _const_ints(node, 3, "axes", constants) or list(range(len(starts or [])))
        steps = _const_ints(node, 4, "steps", constants) or [1] * len(axes)
        if starts is None or ends is None or [a % rank for a in axes] != [t_axis]:
            return None
        return list(range(n_tokens))[slice(starts[0], ends[0], steps[0])]
    return None


def patch_liveness(model: onnx.ModelProto, constants: dict[str, np.ndarray],
                   layouts: dict[str, TokenLayout], output: str) -> dict[str, bool]:
    """For each token tensor feeding `output`: can a gradient reach its patch tokens (True), or do
    only its prefix tokens reach the output (False: the patch gradient is structurally zero)?

    Walking back from the output: a Gather or Slice of tokens passes on the tokens it keeps; an op
    applied per token (LayerNormalization, element-wise, a mean over channels, MatMul by weights,
    Transpose) passes on
    what its output has; anything else (attention, which mixes the tokens) reaches every token."""
    live: dict[str, bool] = {output: True}
    for node in reversed(list(model.graph.node)):
        outs = [live[o] for o in node.output if o in live]
        if not outs:
            continue
        out_lay = layouts.get(node.output[0])
        per_token = (node.op_type in PER_TOKEN_OPS or node.op_type in _CHANNEL_REDUCTIONS
                     or node.op_type in ("Transpose", "MatMul")) and out_lay is not None and out_lay.is_tokens
        for k, i in enumerate(node.input):
            lay = layouts.get(i) if i else None
            state = True
            if lay is not None and lay.is_tokens:
                kept = _token_axis_selection(node, lay, constants) if k == 0 else None
                if kept is not None:
                    state = any(t >= lay.prefix for t in kept)
                elif per_token:
                    state = any(outs)
            if i:
                live[i] = live.get(i, False) or state
    return {t: v for t, v in live.items() if t in layouts}


def head_tokens(model: onnx.ModelProto, constants: dict[str, np.ndarray], layouts: dict[str, TokenLayout]) -> Optional[list[int]]:
    """The tokens the head reads: the indices kept by the Gathers / Slices of the last token tensor
    that is read that way ([0] for a class token, [0, 1] for DeiT's class and distillation
    tokens, the patch tokens for a mean over them); None where no token is picked (Swin's pooling)."""
    picks: dict[str, set[int]] = {}
    order: list[str] = []
    for node in model.graph.node:
        src = node.input[0] if node.input else ""
        lay = layouts.get(src)
        if lay is None or not lay.is_tokens or node.op_type not in ("Gather", "Slice"):
            continue
        kept = _token_axis_selection(node, lay, constants)
        if kept is None:
            continue
        if src not in picks:
            order.append(src)
        picks.setdefault(src, set()).update(kept)
    return sorted(picks[order[-1]]) if order else None


def to_grid(a: np.ndarray, axes: str, prefix: int = 0, grid: tuple[int, int] | None = None) -> np.ndarray:
    """A layer's tensor in its own axes as channels-first (N, C, h, w) float32: token tensors
    (N, T, C in any order) lose their prefix tokens and are laid on the patch grid; grids are
    transposed (no copy when already NCHW)."""
    if "T" in axes:
        t = a.transpose([axes.index(c) for c in "NTC"])[:, prefix:]
        h, w = grid
        a = t.reshape(t.shape[0], h, w, t.shape[2]).transpose(0, 3, 1, 2)
    else:
        perm = [axes.index(c) for c in "NCHW"]
        a = a if perm == [0, 1, 2, 3] else a.transpose(perm)
    return np.ascontiguousarray(a).astype(np.float32, copy=False)


def from_grid(g: np.ndarray, axes: str, prefix_rows: np.ndarray | None = None) -> np.ndarray:
    """The inverse of `to_grid`: (B, C, h, w) back to the layer's axes; token layers get
    `prefix_rows` (B, P, C) in front of the patch tokens."""
    if "T" in axes:
        b, c = g.shape[:2]
        t = g.reshape(b, c, -1).transpose(0, 2, 1)
        if prefix_rows is not None and prefix_rows.shape[1]:
            t = np.concatenate([prefix_rows.astype(t.dtype), t], axis=1)
        return np.ascontiguousarray(t.transpose(["NTC".index(x) for x in axes]))
    return np.ascontiguousarray(g.transpose(["NCHW".index(x) for x in axes]))


def token_model(model: onnx.ModelProto, shapes: dict[str, TensorInfo], constants: dict[str, np.ndarray],
                image: str, output: str) -> Optional[TokenModel]:
    """The token stream of a vision transformer (None without a patch embedding)."""
    pe, layouts = token_layouts(model, shapes, constants, image)
    if pe is None:
        return None
    prefixes = [lay.prefix for lay in layouts.values() if lay.is_tokens]
    prefix = max(prefixes) if prefixes else 0
    n = prefix + pe.grid[0] * pe.grid[1]
    rows = head_tokens(model, constants, layouts) or list(range(prefix, n))
    feeding: set[str] = {output}
    for node in reversed(list(model.graph.node)):
        if any(o in feeding for o in node.output):
            feeding.update(i for i in node.input if i)
    attention = []
    if prefixes:
        for node in model.graph.node:
            info = shapes.get(node.output[0]) if node.output else None
            if (node.op_type == "Softmax" and node.output[0] in feeding and info is not None
                    and len(info.shape) >= 3 and info.shape[-1] == n and info.shape[-2] == n):
                attention.append(node.output[0])
    return TokenModel(pe, prefix, pe.grid, rows, attention)
