"""Detector outputs: the formats onnxcam reads, recognising them, and the score of one detection.

A raw (pre-NMS) detector output holds, for every candidate row (anchor, grid cell, query or
proposal), a box and class scores. What a "score" is differs by family, and the gradient onnxcam
computes is that of the score the model itself ranks detections by:

| format      | output(s), per item                          | score of (row r, class c)                     |
| ----------- | -------------------------------------------- | --------------------------------------------- |
| `yolov5`    | (R, 5 + K): cx cy w h, objectness, K classes | obj_r + cls_rc, the raw values (u = 1 at both) |
| `yolov8`    | (4 + K, R) channels first: cx cy w h, K scores after sigmoid (YOLOv8, YOLO11) | y[4 + c, r] |
| `yolov8t`   | (R, 4 + K), the same transposed              | y[r, 4 + c]                                   |
| `retinanet` | scores (R, K) logits + boxes (R, 4) x0 y0 x1 y1 | sigmoid(s_rc)                              |
| `ssd`       | scores (R, K) logits, class 0 background + boxes (R, 4) | softmax(s_r)_c, c ≥ 1              |
| `probs`     | scores (R, K) probabilities + boxes (R, 4)   | s_rc                                          |
| `scores`    | scores (R, K) + boxes (R, 4) (`det-scores:`) | the raw value s_rc, rows ranked by sigmoid(s) |
| `detr`      | logits (Q, K + 1), no-object last + boxes (Q, 4) cx cy w h in [0, 1] | softmax(l_q)_c, c < K  |

The seed u = ∂score/∂output is the score's derivative on the output (chain rule through the
sigmoid / softmax, done here in numpy: σ(1 − σ) e_c, p_c (e_c − p)).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import onnx

from .errors import UsageError
from .graph.index import GraphIndex

FORMATS = ("yolov5", "yolov8", "yolov8t", "retinanet", "ssd", "probs", "scores", "detr")
PAIRED = ("retinanet", "ssd", "probs", "scores", "detr")  # scores + a separate boxes output


@dataclass
class Candidates:
    """One item's detections before selection: scores (R, K) as the model ranks them, boxes
    (R, 4) x0 y0 x1 y1 in input pixels (None when unknown), and the classes that can be
    detections (background / no-object excluded)."""

    scores: np.ndarray
    boxes: Optional[np.ndarray]
    classes: np.ndarray

    def best(self, k: int = 1) -> list[tuple[int, int]]:
        """The k best (row, class) pairs, best first."""
        s = self.scores[:, self.classes]
        flat = np.argsort(-s, axis=None, kind="stable")[:k]
        return [(int(i // s.shape[1]), int(self.classes[i % s.shape[1]])) for i in flat]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = (cxcywh[:, i] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def candidates(fmt: str, y: np.ndarray, boxes: Optional[np.ndarray], input_hw: tuple[int, int]) -> Candidates:
    """Read one item's raw output `y` (and `boxes`, for the paired formats) in format `fmt`."""
    y = np.asarray(y, np.float64)
    if fmt in ("yolov8", "yolov8t", "yolov5"):
        if y.ndim != 2:
            raise UsageError(f"format {fmt!r} needs a 2-D output per item; this one is {list(y.shape)}")
        rows = y.T if fmt == "yolov8" else y
        extra = 5 if fmt == "yolov5" else 4
        if rows.shape[1] <= extra:
            raise UsageError(f"format {fmt!r} needs {extra} + K values per row; the output has {rows.shape[1]} "
                             f"(shape {list(y.shape)}: state the format that fits)")
        if fmt == "yolov5":
            scores = _sigmoid(rows[:, 4:5]) * _sigmoid(rows[:, 5:])
        else:
            scores = rows[:, 4:]
        return Candidates(scores, _xyxy(rows[:, :4]), np.arange(scores.shape[1]))
    if fmt not in PAIRED:
        raise UsageError(f"unknown detection format {fmt!r}; one of {', '.join(FORMATS)}")
    if y.ndim != 2:
        raise UsageError(f"format {fmt!r} needs scores shaped (rows, classes) per item; this one is {list(y.shape)}")
    b = None if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
    if b is not None and len(b) != len(y):
        raise UsageError(f"the boxes output has {len(b)} rows, the scores {len(y)}")
    k = y.shape[1]
    if fmt in ("retinanet", "scores"):
        return Candidates(_sigmoid(y), b, np.arange(k))
    if fmt == "probs":
        return Candidates(y, b, np.arange(k))
    if fmt == "ssd":
        return Candidates(_softmax(y), b, np.arange(1, k))
    # detr: boxes cx cy w h normalised to [0, 1]
    if b is not None:
        b = _xyxy(b) * np.array([input_hw[1], input_hw[0], input_hw[1], input_hw[0]], np.float64)
    return Candidates(_softmax(y), b, np.arange(k - 1))


def seed(fmt: str, y: np.ndarray, row: int, cls: int) -> np.ndarray:
    """u = ∂score(row, cls)/∂y, shaped like the item's output y."""
    y = np.asarray(y, np.float64)
    u = np.zeros(y.shape, np.float64)
    if fmt == "yolov8":
        u[4 + cls, row] = 1.0
    elif fmt == "yolov8t":
        u[row, 4 + cls] = 1.0
    elif fmt == "yolov5":
        u[row, 4] = 1.0
        u[row, 5 + cls] = 1.0
    elif fmt in ("probs", "scores"):
        u[row, cls] = 1.0
    elif fmt == "retinanet":
        s = _sigmoid(y[row, cls])
        u[row, cls] = s * (1 - s)
    elif fmt in ("ssd", "detr"):
        p = _softmax(y[row])
        u[row] = p[cls] * (np.eye(len(p))[cls] - p)
    else:
        raise UsageError(f"unknown detection format {fmt!r}; one of {', '.join(FORMATS)}")
    return u.astype(np.float32)


# -- recognising the format from the graph and the shapes -----------------------------------------
_THROUGH = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast"}


def _producer_through(index: GraphIndex, tensor: str) -> Optional[onnx.NodeProto]:
    """The first producer of `tensor` that is not a layout-only op."""
    node = index.producer(tensor)
    while node is not None and node.op_type in _THROUGH and node.input:
        node = index.producer(node.input[0])
    return node


def infer_format(index: GraphIndex, output: str, item_shape: tuple, boxes_output: Optional[str] = None) -> str:
    """The format of a raw detection output, from the graph and the shapes; a UsageError naming
    the choices where it cannot be told (raw SSD and RetinaNet logits look alike)."""
    node = _producer_through(index, output)
    if boxes_output is None and len(item_shape) == 2 and all(isinstance(d, int) for d in item_shape):
        a, b = item_shape
        sig = node is not None and node.op_type == "Concat" and any(
            (p := _producer_through(index, i)) is not None and p.op_type == "Sigmoid" for i in node.input)
        if sig:  # YOLOv8 / YOLO11: Concat(boxes, sigmoid(classes)) on the channel axis
            return "yolov8" if a < b else "yolov8t"
        if a > b >= 6:
            return "yolov5"
    if boxes_output is not None:
        if node is not None and node.op_type in ("Softmax", "Sigmoid"):
            return "probs"
        bnode = _producer_through(index, boxes_output)
        if bnode is not None and bnode.op_type == "Sigmoid":
            return "detr"  # DETR's box MLP ends in a sigmoid (normalised cx cy w h)
    raise UsageError(
        f"cannot tell the detection format of output {output!r} shaped {list(item_shape)} per item: state it "
        f"(--det-format, or DetectionTarget(format=...)): {', '.join(FORMATS)}")


def boxes_output_of(model: onnx.ModelProto, shapes: dict, output: str) -> Optional[str]:
    """The model's other float output holding one box (4 values) per row of `output`."""
    rows = shapes[output].shape[-2] if len(shapes[output].shape) >= 2 else None
    for o in model.graph.output:
        s = shapes.get(o.name)
        if o.name == output or s is None or len(s.shape) < 2 or s.shape[-1] != 4:
            continue
        if s.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                           onnx.TensorProto.BFLOAT16) and s.shape[-2] == rows:
            return o.name
    return None


def resolve(target, model: onnx.ModelProto, shapes: dict, output: str, item_shape: tuple, hw: tuple[int, int]):
    """A copy of a DetectionTarget with its format recognised ("auto"), its boxes output found
    (paired formats) and the input size set; the copy shares `chosen` with the original."""
    fmt = target.fmt()
    boxes = target.boxes_output
    if boxes is None and (fmt == "auto" or fmt in PAIRED):
        boxes = boxes_output_of(model, shapes, output)
    if fmt == "auto":
        fmt = infer_format(GraphIndex(model.graph), output, item_shape, boxes)
    if fmt not in FORMATS:
        raise UsageError(f"unknown detection format {target.format!r}; one of {', '.join(FORMATS)}")
    return replace(target, format=fmt, boxes_output=boxes if fmt in PAIRED else None,
                   input_size=target.input_size or hw, chosen=target.chosen)
