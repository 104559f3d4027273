"""One index of a graph's data flow: who produces and who consumes each tensor, and the walks
every other module needs (ancestors, descendants, the nodes on the paths between two tensors).

ONNX requires a graph's nodes in topological order, so each walk is one pass over them, forward
or backward. The index reads the graph as it is when built: build another after changing it.
"""

from __future__ import annotations

from typing import Iterable, Optional

import onnx


_SHAPE_READERS = frozenset({"Shape", "Size"})


class GraphIndex:
    """Producers and consumers of every tensor of one graph (nodes in topological order)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for o in node.output:
                if o:
                    self._producer[o] = node
            for i in node.input:
                if i:
                    self._consumers.setdefault(i, []).append(node)

    def producer(self, tensor: str) -> Optional[onnx.NodeProto]:
        """The node that computes `tensor`; None for graph inputs and initializers."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes that read `tensor`, in graph order (a node reading it twice, once)."""
        return _unique(self._consumers.get(tensor, []))

    def ancestors(self, outputs: Iterable[str]) -> set[str]:
        """Tensors that one of `outputs` depends on (`outputs` included)."""
        need = set(outputs)
        for node in reversed(self.nodes):
            if any(o in need for o in node.output):
                need.update(i for i in node.input if i)
        return need

    def descendants(self, sources: Iterable[str], avoid: Optional[str] = None) -> set[str]:
        """Tensors that depend on one of `sources` (`sources` included). With `avoid`, only along
        paths that do not pass through that tensor (its producer is cut)."""
        reach = set(sources)
        for node in self.nodes:
            if avoid is not None and avoid in node.output:
                continue
            if any(i in reach for i in node.input if i and i != avoid):
                reach.update(o for o in node.output if o)
        return reach

    def dominates(self, tensor: str, sources: Iterable[str], output: str) -> bool:
        """True when every path from `sources` to `output` passes through `tensor`."""
        return output not in self.descendants(sources, avoid=tensor)

    def path(self, x: str, ys: Iterable[str], values_only: bool = False) -> tuple[list[onnx.NodeProto], set[str]]:
        """The nodes that depend on `x` and feed one of `ys`, in topological order; and the set of
        tensors that depend on `x` (`x` included). `values_only`: through its values only — Shape
        and Size read a shape, so what is computed from them alone (Swin's shifted-window masks,
        ConstantOfShape and ScatterND from the feature map's size) is a constant for a gradient."""
        active = {x}
        forward: list[onnx.NodeProto] = []
        for node in self.nodes:
            if values_only and node.op_type in _SHAPE_READERS:
                continue
            if any(i in active for i in node.input if i):
                forward.append(node)
                active.update(o for o in node.output if o)
        needed = set(ys)
        on_path: list[onnx.NodeProto] = []
        for node in reversed(forward):
            if any(o in needed for o in node.output):
                on_path.append(node)
                needed.update(i for i in node.input if i in active)
        on_path.reverse()
        return on_path, active


def _unique(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    seen: set[int] = set()
    out = []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out
