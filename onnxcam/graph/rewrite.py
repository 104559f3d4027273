"""The rewriter: one model that returns scores, the layer's activation and its gradient.

`build_explain_model` works on a copy (the user's model is never changed):
1. fixes the image size where it is dynamic (batch stays symbolic) and infers every shape;
2. resolves auto_pad, raises the opset if a rule on the path needs it;
3. adds an int64 input `onnxcam_target` (default [-1], from an initializer, so the exported model
   runs with the image alone): −1 means the predicted class (ArgMax inside the graph);
4. seeds the output with OneHot(target) and appends ∂y_target/∂A as plain ai.onnx ops;
5. exposes A, the gradient and the chosen targets as extra graph outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import OnnxcamError, UsageError
from ..grad.engine import append_gradient, required_opset
from ..layers import Layer, candidate_layers, default_layer, find_layer
from ..model import PROTOBUF_LIMIT, proto_size
from ..model import (
    FLOAT_TYPES, ModelInfo, TensorInfo, constant_values, default_opset, fill_runtime_shapes, infer_shapes, inspect_model, tensor_layouts, with_input_size,
)
from .normalize import fold_constants, resolve_auto_pad, upgrade_opset

log = logging.getLogger(__name__)

TARGET_INPUT = "onnxcam_target"
TARGETS_OUTPUT = "onnxcam_targets"
GRAD_OUTPUT = "onnxcam_gradient"
ACT_OUTPUT = "onnxcam_activation"
INPUT_GRAD_OUTPUT = "onnxcam_input_gradient"
TAP_OUTPUT = "onnxcam_bias_gradient_{}"
SEED_INPUT = "onnxcam_seed"


@dataclass
class Prepared:
    """A normalised copy of the model at one image size, with shapes, constants and layers."""

    model: onnx.ModelProto
    shapes: dict[str, TensorInfo]
    constants: dict[str, np.ndarray]
    output: str
    layers: list[Layer]
    info: ModelInfo

    def layer(self, name: str | None) -> Layer:
        if name is not None:
            return find_layer(self.layers, name)
        dense = len(self.shapes[self.output].shape) != 2
        return default_layer(self.layers, self.model, self.output, dense)


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

    @property
    def output_names(self) -> list[str]:
        names = [self.output] + ([] if self.seed_input else [TARGETS_OUTPUT]) + [ACT_OUTPUT]
        names += [GRAD_OUTPUT] if self.with_gradient else []
        names += [INPUT_GRAD_OUTPUT] if self.input_gradient else []
        names += [TAP_OUTPUT.format(i) for i in range(len(self.taps))]
        return names


def choose_output(model: onnx.ModelProto, shapes: dict[str, TensorInfo], name: str | None = None) -> str:
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
    """Copy the model at image size `hw`, infer shapes, resolve auto_pad, list layers."""
    m = with_input_size(model, info, hw)
    shapes = infer_shapes(m)
    if resolve_auto_pad(m, shapes):
        shapes = infer_shapes(m)
    fill_runtime_shapes(m, info, shapes)
    out = choose_output(m, shapes, output)
    constants = constant_values(m)
    fold_constants(m, shapes, constants)
    return Prepared(m, shapes, constants, out, candidate_layers(m, shapes, out), info)


def _find_or_none(layers: list[Layer], name: str) -> Layer | None:
    return next((l for l in layers if l.name == name), None)


def bias_taps(prep: Prepared) -> list[tuple[str, np.ndarray]]:
    """FullGrad's bias terms: every spatial Conv output with a constant bias, and every
    BatchNormalization output with its effective bias β − μ·γ/√(σ² + ε), on the path to the output."""
    from ..layers import ancestors

    feeding = ancestors(prep.model.graph, [prep.output])
    taps = []
    for node in prep.model.graph.node:
        out = node.output[0] if node.output else ""
        info = prep.shapes.get(out)
        if out not in feeding or info is None or len(info.shape) != 4:
            continue
        c = prep.constants
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in c:
            taps.append((out, c[node.input[2]].astype(np.float64)))
        elif node.op_type == "BatchNormalization" and all(i in c for i in node.input[1:5]):
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (c[i].astype(np.float64) for i in node.input[1:5])
            taps.append((out, beta - mean * gamma / np.sqrt(var + eps)))
    return taps


def build_explain_model(
    prep: Prepared,
    layer: str | None,
    with_gradient: bool,
    input_gradient: str | None = None,
    with_bias_taps: bool = False,
    seed_input: bool = False,
) -> ExplainModel:
    """Rewrite `prep.model` so that one run returns outputs, A, ∂y_c/∂A and the targets; and,
    when asked, the input's gradient (plain or guided) and FullGrad's bias-tap gradients.

    seed_input: instead of a class chosen inside the graph, the cotangent u is an input,
    `onnxcam_seed`, shaped like the output: the gradient is ∂⟨u, y⟩/∂A (any target: a region of a
    segmentation map, one detection, a regression output, a counterfactual)."""
    m = onnx.ModelProto()
    m.CopyFrom(prep.model)
    shapes = prep.shapes
    target = prep.layer(layer) if layer is None or _find_or_none(prep.layers, layer) else _any_tensor(prep, layer)
    y = prep.output
    k = shapes[y].shape[-1]
    if not seed_input and (len(shapes[y].shape) != 2 or not isinstance(k, int)):
        raise UsageError(
            f"output {y!r} is shaped {list(shapes[y].shape)}, not (batch, classes): give a target "
            "for it (a region, a detection, an index or a seed array)"
        )
    image = prep.info.image_input.name
    taps = bias_taps(prep) if with_bias_taps else []
    if with_gradient or input_gradient:
        need = max(required_opset(m.graph, target.name, y), required_opset(m.graph, image, y) if input_gradient else 1)
        if need > default_opset(m):
            m = upgrade_opset(m, need)
            shapes = infer_shapes(m)
    opset = default_opset(m)
    g = m.graph
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs = []
    if not seed_input:  # target selection inside the graph
        g.input.append(helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, ["onnxcam_T"]))
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), TARGET_INPUT))
        zero = "onnxcam/zero_i64"
        inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), zero))
        nodes += [
            helper.make_node("ArgMax", [y], ["onnxcam/argmax"], axis=1, keepdims=0, name="onnxcam/argmax"),
            helper.make_node("Less", [TARGET_INPUT, zero], ["onnxcam/use_argmax"], name="onnxcam/use_argmax"),
            helper.make_node("Where", ["onnxcam/use_argmax", "onnxcam/argmax", TARGET_INPUT], [TARGETS_OUTPUT], name="onnxcam/targets"),
        ]
        outputs.append(helper.make_tensor_value_info(TARGETS_OUTPUT, TensorProto.INT64, [None]))
    a_type = shapes[target.name].elem_type
    nodes.append(helper.make_node("Identity", [target.name], [ACT_OUTPUT], name="onnxcam/activation"))
    a_shape = list(shapes[target.name].shape)
    outputs.append(helper.make_tensor_value_info(ACT_OUTPUT, a_type, a_shape))
    seed = "onnxcam/seed"
    if seed_input and (with_gradient or input_gradient):
        seed = SEED_INPUT
        g.input.append(helper.make_tensor_value_info(SEED_INPUT, shapes[y].elem_type, list(shapes[y].shape)))
        shapes = dict(shapes)
        shapes[SEED_INPUT] = TensorInfo(SEED_INPUT, shapes[y].shape, shapes[y].elem_type)
    elif with_gradient or input_gradient:
        y_type = shapes[y].elem_type
        np_type = helper.tensor_dtype_to_np_dtype(y_type)
        inits += [
            numpy_helper.from_array(np.array([k], dtype=np.int64), "onnxcam/depth"),
            numpy_helper.from_array(np.array([0, 1], dtype=np_type), "onnxcam/onehot_values"),
        ]
        nodes.append(helper.make_node(
            "OneHot", [TARGETS_OUTPUT, "onnxcam/depth", "onnxcam/onehot_values"], ["onnxcam/seed"], axis=-1,
            name="onnxcam/seed",
        ))
        shapes = dict(shapes)
        shapes["onnxcam/seed"] = TensorInfo("onnxcam/seed", shapes[y].shape, y_type)
    if with_gradient:
        grad = append_gradient(g, shapes, dict(prep.constants), opset, target.name, y, seed)
        nodes += grad.nodes
        inits += grad.initializers
        nodes.append(helper.make_node("Identity", [grad.grad], [GRAD_OUTPUT], name="onnxcam/gradient"))
        outputs.append(helper.make_tensor_value_info(GRAD_OUTPUT, a_type, a_shape))
    if input_gradient:
        grad = append_gradient(
            g, shapes, dict(prep.constants), opset, image, y, seed, prefix="onnxcam_igrad/",
            also=[t for t, _ in taps], guided=input_gradient == "guided",
        )
        nodes += grad.nodes
        inits += grad.initializers
        x_info = shapes[image]
        nodes.append(helper.make_node("Identity", [grad.grad], [INPUT_GRAD_OUTPUT], name="onnxcam/input_gradient"))
        outputs.append(helper.make_tensor_value_info(INPUT_GRAD_OUTPUT, x_info.elem_type, list(x_info.shape)))
        for i, (t, _) in enumerate(taps):
            name = TAP_OUTPUT.format(i)
            nodes.append(helper.make_node("Identity", [grad.also[t]], [name], name=f"onnxcam/{name}"))
            outputs.append(helper.make_tensor_value_info(name, shapes[t].elem_type, list(shapes[t].shape)))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.output.extend(outputs)
    try:
        onnx.checker.check_model(m) if proto_size(m) < PROTOBUF_LIMIT else None  # it serialises
    except onnx.checker.ValidationError as exc:
        raise OnnxcamError(f"the rewritten model is not valid ONNX ({exc}); please report this model") from None
    return ExplainModel(m, target, y, int(k) if isinstance(k, int) else 0, with_gradient, input_gradient, taps, seed_input)


def _any_tensor(prep: Prepared, name: str) -> Layer:
    """A layer that is not a spatial candidate — the image input, or a 4-D tensor with 1×1
    extent — seen through its propagated layout (NCHW where unknown)."""
    info = prep.shapes.get(name)
    if info is None or info.elem_type not in FLOAT_TYPES or len(info.shape) != 4:
        return find_layer(prep.layers, name)  # raises with suggestions
    ranks = {k: len(v.shape) for k, v in prep.shapes.items()}
    lay = prep.info.layout if name == prep.info.image_input.name else tensor_layouts(prep.model, ranks).get(name, "NCHW")
    if lay not in ("NCHW", "NHWC"):
        lay = "NCHW"
    s = info.shape
    c, h, w = s[lay.index("C")], s[lay.index("H")], s[lay.index("W")]
    producer = next((n for n in prep.model.graph.node if name in n.output), None)
    return Layer(name, producer.op_type if producer else "input", producer.name if producer else "", lay, c, h, w, -1)


def gradient_model(model: onnx.ModelProto, wrt: str, output: str | None = None) -> onnx.ModelProto:
    """A copy of `model` with one more input, `onnxcam_seed` (a cotangent shaped like `output`),
    and one more output, `onnxcam_gradient` = ∂⟨seed, output⟩/∂wrt.

    Works on any model whose shapes ONNX can infer (no image input needed): `wrt` may be any float
    tensor, graph inputs included. Used by the self-check and the rule tests.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shapes = infer_shapes(m)
    if resolve_auto_pad(m, shapes):
        shapes = infer_shapes(m)
    try:
        fill_runtime_shapes(m, inspect_model(m), shapes)
    except UsageError:  # no image input: nothing to run it on; keep the inferred shapes
        pass
    y = output or m.graph.output[0].name
    if y not in shapes or wrt not in shapes:
        raise UsageError(f"unknown tensor {y if y not in shapes else wrt!r}")
    need = required_opset(m.graph, wrt, y)
    if need > default_opset(m):
        m = upgrade_opset(m, need)
        shapes = infer_shapes(m)
    constants = constant_values(m)
    fold_constants(m, shapes, constants)
    yinfo = shapes[y]
    m.graph.input.append(helper.make_tensor_value_info(SEED_INPUT, yinfo.elem_type, list(yinfo.shape)))
    shapes = dict(shapes)
    shapes[SEED_INPUT] = TensorInfo(SEED_INPUT, yinfo.shape, yinfo.elem_type)
    grad = append_gradient(m.graph, shapes, constants, default_opset(m), wrt, y, SEED_INPUT)
    m.graph.node.extend(grad.nodes)
    m.graph.node.append(helper.make_node("Identity", [grad.grad], [GRAD_OUTPUT], name="onnxcam/gradient"))
    m.graph.initializer.extend(grad.initializers)
    x = shapes[wrt]
    m.graph.output.append(helper.make_tensor_value_info(GRAD_OUTPUT, x.elem_type, list(x.shape)))
    return m
