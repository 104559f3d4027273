"""The graph index every walker uses, on a hand-built graph with a branch and a skip connection.

    x ─ A(Relu) ─ a ─ B(Neg) ─ b ─┐
                   └───────────── C(Add) ─ c ─ D(Relu) ─ y
    w (initializer) ─ E(Neg) ─ e ─ F(Abs) ─ f   (a side output that does not feed y)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.graph.index import GraphIndex


def _graph() -> onnx.GraphProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="A"),
        helper.make_node("Neg", ["a"], ["b"], name="B"),
        helper.make_node("Add", ["b", "a"], ["c"], name="C"),
        helper.make_node("Relu", ["c"], ["y"], name="D"),
        helper.make_node("Neg", ["w"], ["e"], name="E"),
        helper.make_node("Abs", ["e"], ["f"], name="F"),
    ]
    v = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    return helper.make_graph(nodes, "g", [v("x")], [v("y"), v("f")],
                             [numpy_helper.from_array(np.zeros(2, np.float32), "w")])


def test_producers_and_consumers() -> None:
    ix = GraphIndex(_graph())
    assert ix.producer("c").name == "C" and ix.producer("x") is None and ix.producer("w") is None
    assert [n.name for n in ix.consumers("a")] == ["B", "C"]
    assert ix.consumers("y") == []


def test_ancestors_and_descendants() -> None:
    ix = GraphIndex(_graph())
    assert ix.ancestors(["y"]) == {"x", "a", "b", "c", "y"}
    assert ix.ancestors(["f"]) == {"w", "e", "f"}
    assert ix.descendants(["a"]) == {"a", "b", "c", "y"}
    assert ix.descendants(["x"], avoid="b") == {"x", "a", "c", "y"}  # the skip still reaches y


def test_paths_and_domination() -> None:
    ix = GraphIndex(_graph())
    nodes, active = ix.path("a", ["y"])
    assert [n.name for n in nodes] == ["B", "C", "D"]
    assert active == {"a", "b", "c", "y"}
    assert [n.name for n in ix.path("b", ["y"])[0]] == ["C", "D"]
    assert ix.path("w", ["y"])[0] == []  # f's branch never reaches y
    assert ix.dominates("a", ["x"], "y")  # every path from x goes through a
    assert not ix.dominates("b", ["x"], "y")  # the skip connection goes around b
    assert ix.dominates("c", ["x"], "y")
