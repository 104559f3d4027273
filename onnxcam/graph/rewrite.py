"""The rewriter: one model that returns scores, the layer's activation and its gradient.

`prepare` runs the normalising pipeline (graph/passes.py) at one image size and lists the layers.
`build_explain_model` works on a copy (the user's model is never changed):
1. raises the opset if a rule on the path needs it;
2. adds an int64 input `onnxcam_target` (default [-1], from an initializer, so the exported model
   runs with the image alone): −1 means the predicted class (ArgMax inside the graph);
3. seeds the output with OneHot(target) (or a fed cotangent, `onnxcam_seed`) and appends
   ∂y_target/∂A as plain ai.onnx ops;
4. exposes A, the gradient and the chosen targets as extra graph outputs; for the transformer
   methods, every block's attention probabilities and, when asked, their gradients (one
   reverse pass from the first block's, with the others as taps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelLoadError, OnnxcamError, UsageError
from ..grad.builder import Emitter
from ..grad.engine import append_gradient, required_opset
from ..layers import Layer, candidate_layers, default_layer, detection_head, find_layer, spatial_dims
from ..layouts import tensor_layouts
from ..limits import check_input_size
from ..model import ModelInfo, default_opset, inspect_model
from ..protos import copy_model
from ..shapes import Shapes
from ..storage import PROTOBUF_LIMIT, proto_size
from ..tokens import TokenModel, token_model
from ..types import FLOAT_TYPES, LAYOUTS, TensorInfo
from .constants import Constants, constant_values, fold_constants
from .index import GraphIndex
from .passes import normalize, with_opset

log = logging.getLogger(__name__)

TARGET_INPUT = "onnxcam_target"
TARGETS_OUTPUT = "onnxcam_targets"
GRAD_OUTPUT = "onnxcam_gradient"
ACT_OUTPUT = "onnxcam_activation"
INPUT_GRAD_OUTPUT = "onnxcam_input_gradient"
SEED_INPUT = "onnxcam_seed"
METHOD_OUTPUT = "onnxcam_{}"  # a method's in-graph result, by its key ("cam", "gram", "fullgrad", ...)
ATTN_OUTPUT = "onnxcam_attention_{}"
ATTN_GRAD_OUTPUT = "onnxcam_attention_gradient_{}"


@dataclass
class Prepared:
    """A normalised copy of the model at one image size, with shapes, constants and layers."""

    model: onnx.ModelProto
    shapes: dict[str, TensorInfo]
    constants: dict[str, np.ndarray]
    output: str
    layers: list[Layer]
    info: ModelInfo
    tokens: TokenModel | None = None  # vision transformers: prefix, grid, head tokens, attention
    heads: list[Layer] = field(default_factory=list)  # a multi-scale detection head's input maps

    def layer(self, name: str | None) -> Layer:
        if name is not None:
            return find_layer(self.layers, name)
        if self.heads:
            return self.heads[0]
        dense = len(self.shapes[self.output].shape) != 2
        return default_layer(self.layers, self.model, self.output, dense)

    def head_inputs(self) -> list[Layer]:
        """The maps a multi-scale detection head reads, one per scale (largest first); [] for
        other models. The explainer's default layers for such a detector (fused)."""
        return list(self.heads)


@dataclass
class ExplainModel:
    """The rewritten model and the names of what it returns."""

    model: onnx.ModelProto
    layer: Layer
    output: str
    num_classes: int
    with_gradient: bool
    input_gradient: str | None = None  # None, "plain" or "guided"
    taps: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (tensor, bias (C,))
    seed_input: bool = False  # the cotangent is fed (onnxcam_seed), not chosen by class inside
    method_outputs: dict[str, str] = field(default_factory=dict)  # key → graph output (the method's part)
    attention: list[str] = field(default_factory=list)  # Softmax outputs exposed (transformer methods)
    attention_gradients: bool = False

    @property
    def output_names(self) -> list[str]:
        names = [self.output] + ([] if self.seed_input else [TARGETS_OUTPUT]) + [ACT_OUTPUT]
        names += [GRAD_OUTPUT] if self.with_gradient else []
        names += [INPUT_GRAD_OUTPUT] if self.input_gradient else []
        names += list(self.method_outputs.values())
        names += [ATTN_OUTPUT.format(i) for i in range(len(self.attention))]
        names += [ATTN_GRAD_OUTPUT.format(i) for i in range(len(self.attention))] if self.attention_gradients else []
        return names


@dataclass
class GraphTensors:
    """What a method's in-graph part reads — tensor names of the rewritten graph — and the
    Emitter it writes through. `acts`/`grads` are the layer's A and ∂y/∂A channels-first (N, C, h, w)
    in float32 (None for a transformer's token layer: methods then compute in numpy); `targets` the (N,) int64 classes (None when a seed is fed); `input_grad` ∂y/∂x in
    the image's layout and `taps` (∂y/∂z_l, bias b_l, (h, w), element type) per biased layer when
    the method asked for them; `head_weight` (K, C) the classifier head's weights where the caller
    has them (CAM's in-graph form; None in the explain model, where CAM runs in numpy)."""

    e: Emitter
    layer: Layer
    acts: Optional[str]
    grads: Optional[str]
    targets: Optional[str]
    image: str
    image_layout: str
    image_type: int
    input_size: tuple[int, int]
    input_grad: Optional[str] = None
    taps: list[tuple[str, np.ndarray, tuple[int, int], int]] = field(default_factory=list)
    head_weight: Optional[np.ndarray] = None


# A method's in-graph part: emits its reductions, returns {key: tensor} to expose as outputs (each
# tensor's shape declared with `g.e.set_info`, None for unknown dimensions).
MethodGraph = Callable[[GraphTensors], dict[str, str]]


def choose_output(model: onnx.ModelProto, shapes: Shapes, name: str | None = None) -> str:
    """The output to explain: `name`, else the first float output shaped (N, K)."""
    outs = [o.name for o in model.graph.output]
    if name is not None:
        if name not in outs:
            raise UsageError(f"output {name!r} is not one of the model's outputs {outs}")
        return name
    for o in outs:
        info = shapes.get(o)
        if info is not None and info.elem_type in FLOAT_TYPES and len(info.shape) == 2:
            return o
    for o in outs:  # a segmenter or a detector: its first float output (targets say what to explain)
        info = shapes.get(o)
        if info is not None and info.elem_type in FLOAT_TYPES:
            return o
    raise UsageError(f"no float output among {outs}")


def prepare(model: onnx.ModelProto, info: ModelInfo, hw: tuple[int, int] | None, output: str | None = None) -> Prepared:
    """The normalised model at image size `hw` (graph/passes.py's pipeline), with the output to
    explain and its candidate layers; `model` is not changed. A model declaring an input over the
    size limit is refused before anything is allocated for it."""
    fixed = info.fixed_size
    if fixed is not None:
        check_input_size(fixed[0], fixed[1], f"the model's input {info.image_input.name!r} of",
                         ModelLoadError)
    norm = normalize(model, info, hw)
    out = choose_output(norm.model, norm.shapes, output)
    image = info.image_input.name if info else None
    layers = candidate_layers(norm.model, norm.shapes, out, norm.constants, image)
    tokens = token_model(norm.model, norm.shapes, norm.constants, image, out) if image else None
    head = detection_head(norm.model, norm.shapes, out, layers)  # a whole detector explains (rows, K) scores
    if head is None:
        return Prepared(norm.model, norm.shapes, norm.constants, out, layers, info, tokens)
    layers = [l for l in layers if l.name not in head.after_rows]  # DFL and other anchor-major tensors
    return Prepared(norm.model, norm.shapes, norm.constants, out, layers, info, tokens, head.inputs)


def _find_or_none(layers: list[Layer], name: str) -> Layer | None:
    return next((l for l in layers if l.name == name), None)


def bias_taps(prep: Prepared) -> list[tuple[str, np.ndarray]]:
    """FullGrad's bias terms: every spatial Conv output with a constant bias, and every
    BatchNormalization output with its effective bias β − μ·γ/√(σ² + ε), on the path to the output."""
    feeding = GraphIndex(prep.model.graph).ancestors([prep.output])
    taps = []
    c = prep.constants
    for node in prep.model.graph.node:
        out = node.output[0] if node.output else ""
        info = prep.shapes.get(out)
        if out not in feeding or info is None or len(info.shape) != 4:
            continue
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in c:
            taps.append((out, c[node.input[2]].astype(np.float64)))
        elif node.op_type == "BatchNormalization" and all(i in c for i in node.input[1:5]):
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (c[i].astype(np.float64) for i in node.input[1:5])
            taps.append((out, beta - mean * gamma / np.sqrt(var + eps)))
    return taps


@dataclass
class _Additions:
    """What the rewrite adds to the graph: nodes, initializers, inputs and outputs."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)

    def expose(self, tensor: str, name: str, info: TensorInfo) -> None:
        """Return `tensor` as graph output `name` (typed and shaped as `info`)."""
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"onnxcam/{name.removeprefix('onnxcam_')}"))
        self.outputs.append(helper.make_tensor_value_info(name, info.elem_type, list(info.shape)))

    def apply(self, graph: onnx.GraphProto) -> None:
        graph.input.extend(self.inputs)
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.inits)
        graph.output.extend(self.outputs)


def _select_target(add: _Additions, y: str) -> None:
    """`onnxcam_target` (default [−1]) in, `onnxcam_targets` out: −1 picks ArgMax(y) per item."""
    add.inputs.append(helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, ["onnxcam_T"]))
    add.inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), TARGET_INPUT))
    zero = "onnxcam/zero_i64"
    add.inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), zero))
    add.nodes += [
        helper.make_node("ArgMax", [y], ["onnxcam/argmax"], axis=1, keepdims=0, name="onnxcam/argmax"),
        helper.make_node("Less", [TARGET_INPUT, zero], ["onnxcam/use_argmax"], name="onnxcam/use_argmax"),
        helper.make_node("Where", ["onnxcam/use_argmax", "onnxcam/argmax", TARGET_INPUT], [TARGETS_OUTPUT], name="onnxcam/targets"),
    ]
    add.outputs.append(helper.make_tensor_value_info(TARGETS_OUTPUT, TensorProto.INT64, [None]))


def _seed(add: _Additions, shapes: Shapes, y: str, k: int, fed: bool) -> tuple[str, Shapes]:
    """The cotangent of `y`: fed as `onnxcam_seed`, or OneHot(targets, k); and the shapes with it."""
    yinfo = shapes[y]
    name = SEED_INPUT if fed else "onnxcam/seed"
    if fed:
        add.inputs.append(helper.make_tensor_value_info(SEED_INPUT, yinfo.elem_type, list(yinfo.shape)))
    else:
        np_type = helper.tensor_dtype_to_np_dtype(yinfo.elem_type)
        add.inits += [
            numpy_helper.from_array(np.array([k], dtype=np.int64), "onnxcam/depth"),
            numpy_helper.from_array(np.array([0, 1], dtype=np_type), "onnxcam/onehot_values"),
        ]
        add.nodes.append(helper.make_node(
            "OneHot", [TARGETS_OUTPUT, "onnxcam/depth", "onnxcam/onehot_values"], [name], axis=-1, name=name,
        ))
    return name, {**shapes, name: TensorInfo(name, yinfo.shape, yinfo.elem_type)}


@dataclass
class LinearHead:
    """y = X·Wᵀ + b with constant W: the (N, C) input X and the table W (K, C) with
    ∂y[n, t]/∂X[n, :] = W[t] (Gemm's alpha and transB folded in)."""

    input: str
    weight: np.ndarray


def linear_head(graph: onnx.GraphProto, shapes: Shapes, constants: Constants, y: str, layer: str) -> LinearHead | None:
    """The explained (N, K) output `y` as a linear layer of a 2-D tensor X with constant weights —
    Gemm(X, B[, C]) (transA = 0), MatMul(X, B), either with a constant Add after it — or None.
    None too where `layer` is X or lies between X and y (then the gradient must start at y)."""
    index = GraphIndex(graph)
    node, seen = index.producer(y), {y}
    if node is not None and node.op_type == "Add" and len(node.input) == 2:
        var = [i for i in node.input if i not in constants]
        if len(var) != 1:
            return None
        seen.add(var[0])
        node = index.producer(var[0])
    if node is None or node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in constants:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x, b = node.input[0], constants[node.input[1]]
    info = shapes.get(x)
    if info is None or len(info.shape) != 2 or b.ndim != 2 or attrs.get("transA", 0) or layer in seen | {x}:
        return None
    if node.op_type == "Gemm" and (len(node.input) > 2 and node.input[2] and node.input[2] not in constants):
        return None
    w = b if (node.op_type == "Gemm" and attrs.get("transB", 0)) else b.T  # (K, C)
    w = w.astype(np.float64) * float(attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else w
    return LinearHead(x, np.ascontiguousarray(w.astype(helper.tensor_dtype_to_np_dtype(info.elem_type))))


def _row_seed(add: _Additions, shapes: Shapes, head: LinearHead) -> tuple[str, Shapes]:
    """The cotangent of the head's input X for class targets: W[targets] (N, C), a Gather."""
    table, name = "onnxcam/head_weight", "onnxcam/seed"
    add.inits.append(numpy_helper.from_array(head.weight, table))
    add.nodes.append(helper.make_node("Gather", [table, TARGETS_OUTPUT], [name], axis=0, name=name))
    info = shapes[head.input]
    return name, {**shapes, name: TensorInfo(name, info.shape, info.elem_type)}


def _check_rewritten(m: onnx.ModelProto) -> None:
    """onnx.checker on the result (where it can serialise); a failure is onnxcam's bug."""
    try:
        onnx.checker.check_model(m) if proto_size(m) < PROTOBUF_LIMIT else None
    except onnx.checker.ValidationError as exc:
        raise OnnxcamError(f"the rewritten model is not valid ONNX ({exc}); please report this model") from None


def _explained_layer(prep: Prepared, layer: str | None) -> Layer:
    """A candidate layer by name (the default for None), else any 4-D float tensor."""
    return prep.layer(layer) if layer is None or _find_or_none(prep.layers, layer) else _any_tensor(prep, layer)


def _classes(prep: Prepared, seed_input: bool) -> int | str | None:
    """The number of classes K of an (N, K) output; a clear error for other outputs unless a
    cotangent is fed."""
    y = prep.output
    k = prep.shapes[y].shape[-1]
    if not seed_input and (len(prep.shapes[y].shape) != 2 or not isinstance(k, int)):
        raise UsageError(
            f"output {y!r} is shaped {list(prep.shapes[y].shape)}, not (batch, classes): give a target "
            "for it (a region, a detection, an index or a seed array)"
        )
    return k


def build_explain_model(
    prep: Prepared,
    layer: str | None,
    with_gradient: bool,
    input_gradient: str | None = None,
    with_bias_taps: bool = False,
    seed_input: bool = False,
    method_graph: MethodGraph | None = None,
    attention: bool = False,
    attention_gradients: bool = False,
) -> ExplainModel:
    """Rewrite `prep.model` so that one run returns outputs, A, ∂y_c/∂A and the targets; and,
    when asked, the input's gradient (plain or guided) and, for the method's in-graph part, the
    gradients at FullGrad's bias taps.

    seed_input: instead of a class chosen inside the graph, the cotangent u is an input,
    `onnxcam_seed`, shaped like the output: the gradient is ∂⟨u, y⟩/∂A (any target: a region of a
    segmentation map, one detection, a regression output, a counterfactual).
    method_graph: the method's reductions over A, ∂y/∂A (and ∂y/∂x, the taps) emitted into the
    same graph; what it returns becomes outputs `onnxcam_<key>` (`ExplainModel.method_outputs`).
    attention: also return every block's attention probabilities (`prep.tokens.attention`), and
    with `attention_gradients` their gradients ∂⟨seed, y⟩/∂A_l."""
    target = _explained_layer(prep, layer)
    probs = _attention_tensors(prep) if attention else []
    attention_gradients = attention_gradients and bool(probs)
    y, image = prep.output, prep.info.image_input.name
    k = _classes(prep, seed_input)
    taps = bias_taps(prep) if with_bias_taps else []
    m, shapes = copy_model(prep.model), prep.shapes
    if with_gradient or input_gradient or attention_gradients:
        need = max(required_opset(m.graph, target.name, y), required_opset(m.graph, image, y) if input_gradient else 1,
                   required_opset(m.graph, probs[0], y) if attention_gradients else 1)
        m, shapes = with_opset(m, shapes, need)
    add = _Additions()
    if not seed_input:
        _select_target(add, y)
    add.expose(target.name, ACT_OUTPUT, shapes[target.name])
    for i, p in enumerate(probs):
        add.expose(p, ATTN_OUTPUT.format(i), shapes[p])
    layer_grad = input_grad = None
    tap_grads: dict[str, str] = {}
    if with_gradient or input_gradient or attention_gradients:
        head = None if seed_input else linear_head(m.graph, shapes, prep.constants, y, target.name)
        if head is not None:  # ∂y_t/∂X is row t of the head's weights: a Gather, no backward Gemm
            seed, shapes = _row_seed(add, shapes, head)
            grads = _Gradients(m.graph, shapes, dict(prep.constants), default_opset(m), head.input, seed)
        else:
            seed, shapes = _seed(add, shapes, y, int(k) if isinstance(k, int) else 0, fed=seed_input)
            grads = _Gradients(m.graph, shapes, dict(prep.constants), default_opset(m), y, seed)
        if with_gradient:
            layer_grad = grads.layer(add, target.name)
            add.expose(layer_grad, GRAD_OUTPUT, shapes[target.name])
        if input_gradient:
            input_grad, tap_grads = grads.input(add, image, taps, input_gradient == "guided")
        if attention_gradients:
            grads.attention(add, probs)
    outputs = {}
    if method_graph is not None:
        e = Emitter(shapes, {}, default_opset(m), prefix="onnxcam_method/")
        spatial = sorted(target.layout) == sorted("NCHW")  # token layers: the numpy path (to_grid)
        g = GraphTensors(
            e, target, _channels_first(e, target, shapes, target.name if spatial else None),
            _channels_first(e, target, shapes, layer_grad if spatial else None),
            None if seed_input else TARGETS_OUTPUT, image, prep.info.layout, shapes[image].elem_type,
            prep.info.fixed_size or _input_size(shapes[image], prep.info.layout), input_grad,
            [(tap_grads[t], b, (int(shapes[t].shape[2]), int(shapes[t].shape[3])), shapes[t].elem_type)
             for t, b in taps if t in tap_grads],
        )
        found = method_graph(g)
        add.nodes += e.nodes
        add.inits += e.initializers
        for key, tensor in found.items():
            name = METHOD_OUTPUT.format(key)
            add.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"onnxcam/{key}"))
            info = e.shapes[tensor]  # the method declares each result's shape (Emitter.set_info)
            add.outputs.append(helper.make_tensor_value_info(name, info.elem_type, list(info.shape)))
            outputs[key] = name
    add.apply(m.graph)
    _check_rewritten(m)
    return ExplainModel(m, target, y, int(k) if isinstance(k, int) else 0, with_gradient, input_gradient, taps, seed_input,
                        outputs, probs, attention_gradients)


def _input_size(info: TensorInfo, layout: str) -> tuple[int, int]:
    return int(info.shape[layout.index("H")]), int(info.shape[layout.index("W")])


def _channels_first(e: Emitter, layer: Layer, shapes: Shapes, tensor: str | None) -> str | None:
    """The layer's A or its gradient (`tensor`, shaped like A) as channels-first float32 for a
    method's in-graph part: a Transpose from the layer's layout and a Cast from other float types,
    where needed (None for None)."""
    if tensor is None:
        return None
    info = shapes[layer.name]
    perm = [layer.layout.index(c) for c in "NCHW"]
    x = tensor if perm == [0, 1, 2, 3] else e.op("Transpose", [tensor], "to_nchw", perm=perm)
    if info.elem_type != TensorProto.FLOAT:
        x = e.op("Cast", [x], "to_float", to=TensorProto.FLOAT)
    return e.set_info(x, (None, layer.channels, layer.height, layer.width), TensorProto.FLOAT)


def _attention_tensors(prep: Prepared) -> list[str]:
    """The attention probabilities over all tokens, or a clear error where the model has none."""
    if prep.tokens is None:
        raise UsageError("this method reads the attention of a vision transformer, and the model has no patch "
                         "embedding (a Conv with kernel = stride on the image): use a CAM method such as gradcam")
    if not prep.tokens.attention:
        raise UsageError(
            f"this method reads self-attention over all {prep.tokens.tokens} tokens, and the model has none "
            "(windowed attention, as in Swin, has no token-to-token matrix over the image): use gradcam")
    return prep.tokens.attention


@dataclass
class _Gradients:
    """Appends gradients of ⟨seed, y⟩ to `_Additions`."""

    graph: onnx.GraphProto
    shapes: Shapes
    constants: Constants
    opset: int
    y: str
    seed: str

    def layer(self, add: _Additions, x: str) -> str:
        """∂⟨seed, y⟩/∂x; returns its tensor name."""
        grad = append_gradient(self.graph, self.shapes, self.constants, self.opset, x, self.y, self.seed)
        add.nodes += grad.nodes
        add.inits += grad.initializers
        return grad.grad

    def attention(self, add: _Additions, probs: list[str]) -> None:
        """∂⟨seed, y⟩/∂A_l of every block as ATTN_GRAD_OUTPUT.format(l): one reverse pass from
        the first block's probabilities, the later ones as taps on the way."""
        grad = append_gradient(self.graph, self.shapes, self.constants, self.opset, probs[0], self.y, self.seed,
                               prefix="onnxcam_agrad/", also=probs[1:])
        add.nodes += grad.nodes
        add.inits += grad.initializers
        for i, p in enumerate(probs):
            add.expose(grad.grad if i == 0 else grad.also[p], ATTN_GRAD_OUTPUT.format(i), self.shapes[p])

    def input(self, add: _Additions, image: str, taps: list[tuple[str, np.ndarray]], guided: bool) -> tuple[str, dict[str, str]]:
        """The image's gradient (guided backpropagation with `guided`) as INPUT_GRAD_OUTPUT; returns
        its tensor and the bias taps' gradient tensors (tap → gradient), left inside the graph."""
        grad = append_gradient(
            self.graph, self.shapes, self.constants, self.opset, image, self.y, self.seed,
            prefix="onnxcam_igrad/", also=[t for t, _ in taps], guided=guided,
        )
        add.nodes += grad.nodes
        add.inits += grad.initializers
        add.expose(grad.grad, INPUT_GRAD_OUTPUT, self.shapes[image])
        return grad.grad, {t: grad.also[t] for t, _ in taps}


def _any_tensor(prep: Prepared, name: str) -> Layer:
    """A layer that is not a spatial candidate — the image input, or a 4-D tensor with 1×1
    extent — seen through its propagated layout (NCHW where unknown)."""
    info = prep.shapes.get(name)
    if info is None or info.elem_type not in FLOAT_TYPES or len(info.shape) != 4:
        return find_layer(prep.layers, name)  # raises with suggestions
    if prep.tokens is not None and name != prep.info.image_input.name:
        return find_layer(prep.layers, name)  # inside a transformer's attention: no spatial reading
    ranks = {k: len(v.shape) for k, v in prep.shapes.items()}
    lay = prep.info.layout if name == prep.info.image_input.name else tensor_layouts(prep.model, ranks).get(name, "NCHW")
    if lay not in LAYOUTS:
        lay = "NCHW"
    c, h, w = spatial_dims(info.shape, lay)
    producer = GraphIndex(prep.model.graph).producer(name)
    return Layer(name, producer.op_type if producer else "input", producer.name if producer else "", lay, c, h, w, -1)


def gradient_model(model: onnx.ModelProto, wrt: str, output: str | None = None) -> onnx.ModelProto:
    """A copy of `model` with one more input, `onnxcam_seed` (a cotangent shaped like `output`),
    and one more output, `onnxcam_gradient` = ∂⟨seed, output⟩/∂wrt.

    Works on any model whose shapes ONNX can infer (no image input needed): `wrt` may be any float
    tensor, graph inputs included. Used by the self-check and the rule tests.
    """
    try:
        info = inspect_model(model)
    except UsageError:  # no image input: nothing to run it on; keep the inferred shapes
        info = None
    norm = normalize(model, info, resize=False)
    m, shapes = norm.model, norm.shapes
    y = output or m.graph.output[0].name
    if y not in shapes or wrt not in shapes:
        raise UsageError(f"unknown tensor {y if y not in shapes else wrt!r}")
    m, shapes = with_opset(m, shapes, required_opset(m.graph, wrt, y))
    constants = norm.constants if m is norm.model else _refolded(m, shapes)
    add = _Additions()
    seed, shapes = _seed(add, shapes, y, 0, fed=True)
    grads = _Gradients(m.graph, shapes, constants, default_opset(m), y, seed)
    add.expose(grads.layer(add, wrt), GRAD_OUTPUT, shapes[wrt])
    add.apply(m.graph)
    return m


def _refolded(model: onnx.ModelProto, shapes: Shapes) -> Constants:
    """The values known at rewrite time of a model whose opset was just raised."""
    return fold_constants(model, shapes, constant_values(model))
