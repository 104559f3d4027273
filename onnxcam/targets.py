"""What is explained: every target is a cotangent (a seed) on one model output.

The gradient onnxcam computes is ∂⟨u, Y⟩/∂A for a seed u shaped like the output Y, so one
mechanism serves classes, probabilities, counterfactuals, regression outputs, segmentation regions
and single detections. A target builds u for one batch item from that item's forward outputs.

Plain class indices (an int, or one per item) never reach this module: they are chosen inside the
rewritten graph (ArgMax / OneHot), which costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .errors import UsageError
from .limits import MAX_TOPK


class Target:
    """Base: `seed(outputs)` → u for one item, shaped like `outputs[self.output]` (no batch axis).

    outputs: every model output of this item, by name (computed only when `needs_outputs`).
    """

    output: Optional[str] = None  # None: the explainer's output
    needs_outputs: bool = True

    def seed(self, outputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        raise NotImplementedError

    def class_index(self, outputs: dict[str, np.ndarray], output: str) -> int:
        """The class this target explains, where that means something (else −1)."""
        return -1

    def describe(self) -> str:
        return type(self).__name__


def _onehot(shape: tuple, index: tuple, value: float = 1.0) -> np.ndarray:
    u = np.zeros(shape, np.float32)
    u[index] = value
    return u


def _class(y: np.ndarray, index: int | None, what: str) -> int:
    if y.ndim != 1:
        raise UsageError(f"{what} needs an output shaped (batch, classes); this one is {list(y.shape)} per item")
    c = int(np.argmax(y)) if index is None else int(index)
    if not 0 <= c < y.shape[0]:
        raise UsageError(f"target class {c} is out of range: the output has {y.shape[0]} classes (0..{y.shape[0] - 1})")
    return c


@dataclass
class ClassTarget(Target):
    """The score of class `index` (default: the predicted class): u = e_c."""

    index: Optional[int] = None
    output: Optional[str] = None

    def seed(self, outputs, output):
        y = outputs[output]
        return _onehot(y.shape, (_class(y, self.index, "a class target"),))

    def class_index(self, outputs, output):
        return _class(outputs[output], self.index, "a class target")


@dataclass
class SoftmaxTarget(Target):
    """The softmax probability of class c computed from the output's logits:
    u = ∂p_c/∂y = p_c (e_c − p)."""

    index: Optional[int] = None
    output: Optional[str] = None

    def seed(self, outputs, output):
        y = outputs[output].astype(np.float64)
        c = _class(y, self.index, "a softmax target")
        p = np.exp(y - y.max())
        p /= p.sum()
        return (p[c] * (np.eye(len(y))[c] - p)).astype(np.float32)

    def class_index(self, outputs, output):
        return _class(outputs[output], self.index, "a softmax target")


@dataclass
class CounterfactualTarget(Target):
    """What speaks against class c (Grad-CAM paper, §5): u = −e_c, so the map shows the regions
    whose increase would lower the score."""

    index: Optional[int] = None
    output: Optional[str] = None

    def seed(self, outputs, output):
        y = outputs[output]
        return _onehot(y.shape, (_class(y, self.index, "a counterfactual target"),), -1.0)

    def class_index(self, outputs, output):
        return _class(outputs[output], self.index, "a counterfactual target")


@dataclass
class OutputTarget(Target):
    """One element of any output (a regression value, a logit of a multi-output model):
    u = 1 at `index` (the item's index, without the batch axis)."""

    index: tuple = ()
    output: Optional[str] = None
    needs_outputs: bool = False

    def seed(self, outputs, output):
        shape = outputs[output].shape
        idx = tuple(self.index) if isinstance(self.index, (tuple, list)) else (int(self.index),)
        if len(idx) != len(shape) or any(not -d <= i < d for i, d in zip(idx, shape)):
            raise UsageError(f"index {list(idx)} does not fit output {output!r} shaped {list(shape)} per item")
        return _onehot(shape, idx)


@dataclass
class SegmentationTarget(Target):
    """A segmentation class's score summed over a region of the output map (pytorch-grad-cam's
    SemanticSegmentationTarget): u[c] = mask. The region: `mask` (H, W) at the output's
    resolution, or `box` (x0, y0, x1, y1) in output pixels, or — neither given — the pixels the
    model assigns to class c (argmax over classes)."""

    index: int = 0
    mask: Optional[np.ndarray] = None
    box: Optional[Sequence[int]] = None
    output: Optional[str] = None

    def seed(self, outputs, output):
        y = outputs[output]
        if y.ndim != 3:
            raise UsageError(f"a segmentation target needs an output shaped (batch, classes, H, W); {output!r} is {list(y.shape)} per item")
        k, h, w = y.shape
        if not 0 <= self.index < k:
            raise UsageError(f"segmentation class {self.index} is out of range: the output has {k} classes")
        if self.mask is not None:
            m = np.asarray(self.mask, np.float32)
            if m.shape != (h, w):
                raise UsageError(f"mask shape {list(m.shape)} does not match the output map {[h, w]}")
        elif self.box is not None:
            x0, y0, x1, y1 = (int(v) for v in self.box)
            m = np.zeros((h, w), np.float32)
            m[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = 1
        else:
            m = (y.argmax(axis=0) == self.index).astype(np.float32)
        u = np.zeros(y.shape, np.float32)
        u[self.index] = m
        return u

    def class_index(self, outputs, output):
        return int(self.index)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (M, 4) with one box b (4,), both x0, y0, x1, y1."""
    x0, y0 = np.maximum(a[:, 0], b[0]), np.maximum(a[:, 1], b[1])
    x1, y1 = np.minimum(a[:, 2], b[2]), np.minimum(a[:, 3], b[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(area, 1e-12)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


@dataclass
class DetectionTarget(Target):
    """The score of one detection in a detector's raw output (before NMS).

    format="yolo": one output (boxes, 5 + K) = (cx, cy, w, h, objectness logit, K class logits);
    the detection's score is objectness logit + class logit (u = 1 at both).
    format="scores": a scores output (boxes, K) of class logits (SSD, RetinaNet), with the boxes
    (boxes, 4), x0 y0 x1 y1, in output `boxes_output` (only needed to choose by `box`).
    Which detection: `index` (a box row); else the best-scoring row for class `cls`; else the
    row whose box overlaps `box` (x0, y0, x1, y1) most; else the best-scoring row overall.
    `what="box"` explains the box coordinates (regression) instead of the score.
    """

    index: Optional[int] = None
    cls: Optional[int] = None
    box: Optional[Sequence[float]] = None
    format: str = "yolo"
    output: Optional[str] = None
    boxes_output: Optional[str] = None
    what: str = "score"
    chosen: list = field(default_factory=list)  # (row, class) per explained item, for reports

    def _choose(self, outputs, output) -> tuple[int, int]:
        y = outputs[output]
        if y.ndim != 2:
            raise UsageError(f"a detection target needs (batch, boxes, values) outputs; {output!r} is {list(y.shape)} per item")
        if self.format == "yolo":
            if y.shape[1] < 6:
                raise UsageError(f"format='yolo' needs 5 + K values per box; {output!r} has {y.shape[1]}")
            cls_logits, boxes = y[:, 5:], y[:, :4]
            score = _sigmoid(y[:, 4:5]) * _sigmoid(cls_logits)
            xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                             boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], axis=1)
        elif self.format == "scores":
            score = _sigmoid(y)
            xyxy = outputs.get(self.boxes_output) if self.boxes_output else None
        else:
            raise UsageError(f"unknown detection format {self.format!r}: use 'yolo' or 'scores'")
        k = score.shape[1]
        if self.cls is not None and not 0 <= self.cls < k:
            raise UsageError(f"detection class {self.cls} is out of range: the detector has {k} classes")
        if self.index is not None:
            if not 0 <= self.index < len(y):
                raise UsageError(f"detection {self.index} is out of range: the output has {len(y)} boxes")
            row = int(self.index)
        elif self.cls is not None:
            row = int(np.argmax(score[:, self.cls]))
        elif self.box is not None:
            if xyxy is None:
                raise UsageError("choosing a detection by box needs the boxes output (boxes_output=...)")
            row = int(np.argmax(_iou(np.asarray(xyxy, np.float64), np.asarray(self.box, np.float64))))
        else:
            row = int(np.unravel_index(np.argmax(score), score.shape)[0])
        cls = int(self.cls) if self.cls is not None else int(np.argmax(score[row]))
        return row, cls

    def seed(self, outputs, output):
        name = output
        row, cls = self._choose(outputs, name)
        self.chosen.append((row, cls))
        y = outputs[name]
        u = np.zeros(y.shape, np.float32)
        if self.what == "box":
            u[row, :4] = 1 if self.format == "yolo" else 0
            if self.format != "yolo":
                raise UsageError("what='box' with format='scores': explain the boxes output with OutputTarget")
        elif self.format == "yolo":
            u[row, 4] = 1
            u[row, 5 + cls] = 1
        else:
            u[row, cls] = 1
        return u

    def class_index(self, outputs, output):
        return self._choose(outputs, output)[1]


@dataclass
class SeedTarget(Target):
    """A cotangent you give: an array shaped like the item's output (or the whole batch's)."""

    array: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output: Optional[str] = None
    needs_outputs: bool = False

    def seed(self, outputs, output):
        raise NotImplementedError  # handled as a whole batch by the explainer


@dataclass
class TopK:
    """One map for each of the k best classes of every item (the batch grows k-fold, items first)."""

    k: int = 3
    output: Optional[str] = None


TargetSpec = Target  # re-exported name for type hints


# -- target strings -------------------------------------------------------------------------------
TARGET_HELP = (
    "What to explain: top1 (default), a class index, a class label, topK (K maps per image), "
    "softmax:C, counterfactual:C, index:I[,J...] (one element of the output, e.g. a regression "
    "value), seg:C (the pixels predicted as C) or seg:C:x0,y0,x1,y1 (a region of the output map), "
    "det:best | det:row=R | det:class=C | det:box=x0,y0,x1,y1 (one detection of a YOLO-style raw "
    "output; det-scores:... for a (boxes, classes) scores output)."
)

_INT_LIMIT = 2**31


def _int(text: str) -> int:
    """An integer of a target string; ValueError when it is not one or is absurdly large."""
    v = int(text)
    if abs(v) >= _INT_LIMIT:
        raise ValueError(text)
    return v


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return v


def _ints(text: str) -> list[int]:
    return [_int(v) for v in text.split(",")]


def _parse_detection(kind: str, rest: str) -> DetectionTarget:
    fmt = "yolo" if kind == "det" else "scores"
    key, _, val = rest.partition("=")
    if key in ("", "best"):
        return DetectionTarget(format=fmt)
    if key == "row":
        return DetectionTarget(index=_int(val), format=fmt)
    if key == "class":
        return DetectionTarget(cls=_int(val), format=fmt)
    if key == "box":
        return DetectionTarget(box=[_float(b) for b in val.split(",")], format=fmt)
    raise ValueError(key)


def _parse_kind(kind: str, rest: str) -> "Target | None":
    """`kind:rest` forms; None when `kind` is not one of them."""
    if kind == "softmax":
        return SoftmaxTarget(_int(rest) if rest else None)
    if kind == "counterfactual":
        return CounterfactualTarget(_int(rest) if rest else None)
    if kind == "index":
        return OutputTarget(tuple(_ints(rest)))
    if kind == "seg":
        cls, _, box = rest.partition(":")
        return SegmentationTarget(_int(cls), box=_ints(box) if box else None)
    if kind in ("det", "det-scores"):
        return _parse_detection(kind, rest)
    return None


def _by_label(text: str, labels: Sequence[str] | None) -> int:
    if labels and text in labels:
        return list(labels).index(text)
    if labels:
        close = [name for name in labels if text.lower() in name.lower()][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"target {text!r} is neither a class index nor one of the model's labels{hint}")
    raise UsageError(f"target {text!r} is not a target. {TARGET_HELP}")


def parse_target(text: str, labels: Sequence[str] | None = None) -> "int | Target | TopK | None":
    """A target string (the CLI's --target) → what `Explainer.explain(targets=...)` takes.

    ``top1``/``pred`` → None (the predicted class); ``topK`` → TopK(K); ``281`` → 281; a label of
    `labels` → its index; ``softmax:C``, ``counterfactual:C``, ``index:I,J``, ``seg:C[:x0,y0,x1,y1]``,
    ``det:best|row=R|class=C|box=x0,y0,x1,y1`` and ``det-scores:...`` → the Target classes above.
    Raises UsageError (exit code 2) naming the string and the accepted forms.
    """
    v = text.strip()
    low = v.lower()
    if low in ("top1", "pred", "predicted"):
        return None
    try:
        if low.startswith("top") and low[3:].isdigit():
            k = _int(low[3:])
            if k < 1:
                raise ValueError(low)
            if k > MAX_TOPK:
                raise UsageError(f"target {text!r} asks for {k} maps per image; at most {MAX_TOPK}")
            return TopK(k)
        if v.lstrip("-").isdigit():
            return _int(v)
        kind, _, rest = v.partition(":")
        parsed = _parse_kind(kind.lower(), rest)
    except ValueError:
        raise UsageError(f"target {text!r} is malformed. {TARGET_HELP}") from None
    if parsed is not None:
        return parsed
    return _by_label(v, labels)
