"""Layout propagation from the channels-first ops, through Transposes and element-wise ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.layouts import tensor_layouts
from onnxcam.model import inspect_model
from onnxcam.shapes import infer_shapes


def _model(nodes, x_shape, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


W = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")


def test_nchw_from_conv_through_elementwise_ops() -> None:
    m = _model([
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "c"], ["y"]),
    ], [1, 3, 8, 8], [W])
    lay = tensor_layouts(m)
    assert {t: lay[t] for t in ("x", "s", "c", "r", "y")} == dict.fromkeys(("x", "s", "c", "r", "y"), "NCHW")
    assert inspect_model(m).layout == "NCHW"


def test_nhwc_input_found_through_transposes() -> None:
    """tf2onnx's pattern: NHWC input, Transpose to NCHW around the Conv, back to NHWC after it."""
    m = _model([
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"]),
        helper.make_node("Transpose", ["c"], ["u"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("MatMul", ["r", "fc"], ["y"]),  # channels-last MLP: acts on the last axis
        helper.make_node("Transpose", ["c"], ["odd"], perm=[0, 2, 1, 3]),
    ], [1, 8, 8, 3], [W, numpy_helper.from_array(np.ones((4, 5), np.float32), "fc")])
    shapes = infer_shapes(m)
    lay = tensor_layouts(m, {k: len(v.shape) for k, v in shapes.items()})
    assert lay["x"] == "NHWC" and lay["t"] == "NCHW" and lay["c"] == "NCHW"
    assert lay["u"] == "NHWC" and lay["r"] == "NHWC" and lay["y"] == "NHWC"
    assert lay["odd"] == "NHCW"
    assert inspect_model(m).layout == "NHWC"


def test_no_channels_first_op_no_layout() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [1, 3, 8, 8])
    assert tensor_layouts(m) == {}
