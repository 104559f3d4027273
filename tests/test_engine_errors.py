"""The gradient engine tells a missing rule from a rule's refusal and from a bug inside a rule."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from onnxcam.errors import GradientRuleError, UnsupportedOpError
from onnxcam.grad.rules import RULES, Rule
from onnxcam.graph.rewrite import gradient_model


def _cos_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"], name="before"), helper.make_node("Cos", ["t"], ["y"], name="my_cos")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _raising(exc: BaseException):
    def rule(e, node, g):
        raise exc

    return Rule(rule, broadcast=False, min_opset=7)


def test_a_key_error_inside_a_rule_is_not_reported_as_unsupported(monkeypatch) -> None:
    monkeypatch.setitem(RULES, "Cos", _raising(KeyError("onnxcam_grad/typo")))
    with pytest.raises(GradientRuleError, match=r"rule for op Cos failed on node 'my_cos' \(KeyError") as info:
        gradient_model(_cos_model(), "x")
    assert not isinstance(info.value, UnsupportedOpError)
    assert isinstance(info.value.__cause__, KeyError)  # the original traceback is kept
    assert info.value.op_type == "Cos" and info.value.node_name == "my_cos"


@pytest.mark.parametrize("exc", [ValueError("bad axis"), IndexError("list index out of range"), TypeError("None")])
def test_other_exceptions_inside_a_rule_are_bugs_too(monkeypatch, exc: Exception) -> None:
    monkeypatch.setitem(RULES, "Cos", _raising(exc))
    with pytest.raises(GradientRuleError, match=type(exc).__name__):
        gradient_model(_cos_model(), "x")


def test_a_rule_that_refuses_a_case_is_unsupported(monkeypatch) -> None:
    monkeypatch.setitem(RULES, "Cos", _raising(NotImplementedError("Cos of a complex tensor")))
    with pytest.raises(UnsupportedOpError, match=r"op Cos \(node 'my_cos'\): Cos of a complex tensor"):
        gradient_model(_cos_model(), "x")


def test_a_missing_rule_is_unsupported() -> None:
    assert "Cos" not in RULES
    with pytest.raises(UnsupportedOpError, match=r"no gradient rule for op Cos \(node 'my_cos'\)") as info:
        gradient_model(_cos_model(), "x")
    assert info.value.__cause__ is None
