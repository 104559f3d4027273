"""Split a model at a tensor: the head computes the layer (and what the rest needs besides it),
the tail maps the layer's activation to the output. Ablation-CAM runs the tail alone on batches of
ablated activations instead of rerunning the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import OnnxcamError
from ..protos import copy_model
from ..types import TensorInfo
from .index import GraphIndex


@dataclass
class Split:
    head: onnx.ModelProto  # image inputs → [layer] + externals
    tail: onnx.ModelProto  # [layer] + externals → output
    layer: str
    externals: list[str]  # tensors the tail needs that do not depend on the layer


def _tail_inputs(graph: onnx.GraphProto, index: GraphIndex, tail_nodes: list[onnx.NodeProto],
                 layer: str) -> tuple[list[str], list[onnx.NodeProto]]:
    """What the tail reads besides the layer and initializers: tensors computed before it
    (externals, fed from the head) and Constant nodes (copied into the tail)."""
    inits = {i.name for i in graph.initializer}
    produced = {o for n in tail_nodes for o in n.output}
    externals: list[str] = []
    used_consts: list[onnx.NodeProto] = []
    for n in tail_nodes:
        for i in n.input:
            if not i or i in produced or i in inits or i == layer or i in externals:
                continue
            producer = index.producer(i)
            if producer is not None and producer.op_type == "Constant":
                if producer not in used_consts:
                    used_consts.append(producer)
                continue
            externals.append(i)
    return externals, used_consts


def split_at(model: onnx.ModelProto, shapes: dict[str, TensorInfo], layer: str, output: str) -> Split:
    """The head (image → layer and the externals) and the tail (layer and externals → output)."""
    graph = model.graph
    index = GraphIndex(graph)
    tail_nodes, _ = index.path(layer, [output])  # every node between layer and output
    if not tail_nodes:
        raise OnnxcamError(f"output {output!r} does not depend on layer {layer!r}")
    externals, used_consts = _tail_inputs(graph, index, tail_nodes, layer)

    def vi(name: str) -> onnx.ValueInfoProto:
        info = shapes.get(name)
        if info is None:
            raise OnnxcamError(f"no type known for tensor {name!r}; cannot split the model there")
        return helper.make_tensor_value_info(name, info.elem_type, list(info.shape))

    used_inits = {i for n in tail_nodes for i in n.input}
    tail_graph = helper.make_graph(
        used_consts + tail_nodes, "onnxcam_tail", [vi(layer)] + [vi(e) for e in externals], [vi(output)],
        [i for i in graph.initializer if i.name in used_inits],
    )
    tail = helper.make_model(tail_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    head = copy_model(model)
    del head.graph.output[:]
    head.graph.output.extend([vi(layer)] + [vi(e) for e in externals])
    return Split(head, tail, layer, externals)
