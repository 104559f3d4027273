"""Layout propagation: which axes of each 4-D tensor are batch, channels, height and width.

ONNX fixes the layout of some ops (Conv, the pools, BatchNormalization: channels first). From
their inputs and outputs the axis letters are propagated, forward and backward until nothing
changes, through Transposes (which permute the letters), through element-wise ops (which share
their layout) and through MatMul against 2-D weights (which acts on the last axis only, as in
ConvNeXt's channels-last MLP). A tf2onnx model's NHWC input is found this way.
"""

from __future__ import annotations

from typing import Callable, Optional

import onnx

# ops whose 4-D data inputs and outputs are channels-first by the ONNX spec
NCHW_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
    "MaxUnpool", "DepthToSpace", "SpaceToDepth", "MaxRoiPool", "RoiAlign",
    "QLinearConv", "ConvInteger", "QLinearAveragePool", "QLinearGlobalAveragePool",
})
# ops whose output has the layout of their (first) 4-D input, element by element
SAME_LAYOUT_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg",
    "Reciprocal", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
    "Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear", "Pad", "Resize", "Upsample",
    "Floor", "Ceil", "Round", "Sign", "LayerNormalization", "Softmax", "LogSoftmax",
})
# ops that keep the layout of their first input when it is 4-D and the second is at most 2-D
FIRST_INPUT_LAYOUT_OPS = frozenset({"MatMul"})

Layouts = dict[str, str]


def _seed(nodes: list[onnx.NodeProto]) -> Layouts:
    """NCHW for the data input and output of every default-domain channels-first op."""
    layouts: Layouts = {}
    for node in nodes:
        if node.op_type in NCHW_OPS and node.domain in ("", "ai.onnx"):
            for t in (node.input[:1] or []) + (node.output[:1] or []):
                if t:
                    layouts[t] = "NCHW"
    return layouts


def _through_transpose(node: onnx.NodeProto, layouts: Layouts) -> bool:
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    if not perm or len(perm[0]) != 4:
        return False
    p = perm[0]
    src, dst = node.input[0], node.output[0]
    if src in layouts and dst not in layouts:
        layouts[dst] = "".join(layouts[src][i] for i in p)
        return True
    if dst in layouts and src not in layouts:
        inv = [0] * 4
        for i, a in enumerate(p):
            inv[a] = i
        layouts[src] = "".join(layouts[dst][i] for i in inv)
        return True
    return False


def _through_first_input(node: onnx.NodeProto, layouts: Layouts, ranks: Optional[dict[str, int]]) -> bool:
    src, dst = node.input[0], node.output[0]
    if ranks is not None and (ranks.get(src) != 4 or ranks.get(dst) != 4 or ranks.get(node.input[1], 0) > 2):
        return False
    if src in layouts and dst not in layouts:
        layouts[dst] = layouts[src]
        return True
    return False


def _through_elementwise(node: onnx.NodeProto, layouts: Layouts, ranks: Optional[dict[str, int]],
                         is4d: Callable[[str], bool]) -> bool:
    data_inputs = list(node.input)[1:3] if node.op_type == "Where" else list(node.input)[:2]
    tensors = [t for t in data_inputs if t and is4d(t)] + [o for o in node.output[:1] if o]
    known = [layouts[t] for t in tensors if t in layouts]
    if not known:
        return False
    changed = False
    for t in tensors:
        if t not in layouts and (ranks is None or ranks.get(t) == 4):
            layouts[t] = known[0]
            changed = True
    return changed


def tensor_layouts(model: onnx.ModelProto, ranks: Optional[dict[str, int]] = None) -> Layouts:
    """Layout string ("NCHW", "NHWC" or another axis order) of every 4-D tensor that can be known.

    ranks: each tensor's rank where known (from shape inference); without them every tensor an
    element-wise op touches is taken for 4-D.
    """
    nodes = list(model.graph.node)
    layouts = _seed(nodes)
    is4d = (lambda n: ranks.get(n, 4) == 4) if ranks else (lambda n: True)
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if not node.input or not node.output:
                continue
            if node.op_type == "Transpose":
                changed |= _through_transpose(node, layouts)
            elif node.op_type in FIRST_INPUT_LAYOUT_OPS:
                changed |= _through_first_input(node, layouts, ranks)
            elif node.op_type in SAME_LAYOUT_OPS:
                changed |= _through_elementwise(node, layouts, ranks, is4d)
    return layouts
