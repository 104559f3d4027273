"""Split a model at a tensor: the head computes the layer (and what the rest needs besides it),
the tail maps the layer's activation to the output. Ablation-CAM runs the tail alone on batches of
ablated activations instead of rerunning the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import OnnxcamError
from ..model import TensorInfo


@dataclass
class Split:
    head: onnx.ModelProto  # image inputs → [layer] + externals
    tail: onnx.ModelProto  # [layer] + externals → output
    layer: str
    externals: list[str]  # tensors the tail needs that do not depend on the layer


def split_at(model: onnx.ModelProto, shapes: dict[str, TensorInfo], layer: str, output: str) -> Split:
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    # tail: every node needed for `output` that depends on `layer`
    active = {layer}
    for node in graph.node:
        if any(i in active for i in node.input if i):
            active.update(o for o in node.output if o)
    need = {output}
    tail_nodes = []
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            need.update(i for i in node.input if i)
            if any(i in active for i in node.input if i):
                tail_nodes.append(node)
    tail_nodes.reverse()
    if not tail_nodes:
        raise OnnxcamError(f"output {output!r} does not depend on layer {layer!r}")
    produced = {o for n in tail_nodes for o in n.output}
    constant_nodes = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    externals: list[str] = []
    used_consts = []
    for n in tail_nodes:
        for i in n.input:
            if not i or i in produced or i in inits or i == layer or i in externals:
                continue
            if i in constant_nodes:
                if constant_nodes[i] not in used_consts:
                    used_consts.append(constant_nodes[i])
                continue
            externals.append(i)

    def vi(name: str) -> onnx.ValueInfoProto:
        info = shapes.get(name)
        if info is None:
            raise OnnxcamError(f"no type known for tensor {name!r}; cannot split the model there")
        return helper.make_tensor_value_info(name, info.elem_type, list(info.shape))

    used_inits = {i for n in tail_nodes for i in n.input if i in inits}
    tail_graph = helper.make_graph(
        used_consts + tail_nodes, "onnxcam_tail", [vi(layer)] + [vi(e) for e in externals], [vi(output)],
        [i for i in graph.initializer if i.name in used_inits],
    )
    tail = helper.make_model(tail_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    del head.graph.output[:]
    head.graph.output.extend([vi(layer)] + [vi(e) for e in externals])
    return Split(head, tail, layer, externals)
