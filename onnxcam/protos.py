"""Small helpers on ONNX protobuf messages that every layer uses: a deep copy of a model, and a
node's attributes as Python values."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: changing it never changes `model`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute `name` (strings as bytes, as onnx gives them), else `default`."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """Every attribute of a node as a Python value, by name."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
