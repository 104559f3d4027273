"""What is explained: every target is a cotangent (a seed) on one model output.

The gradient onnxcam computes is ∂⟨u, Y⟩/∂A for a seed u shaped like the output Y, so one
mechanism serves classes, probabilities, counterfactuals, regression outputs, segmentation regions
and single detections. A target builds u for one batch item from that item's forward outputs.

Plain class indices (an int, or one per item) never reach this module: they are chosen inside the
rewritten graph (ArgMax / OneHot), which costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from . import detection as D
from .errors import ItemError, UsageError
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
        if not m.any():
            what = "the region is empty" if self.mask is not None or self.box is not None else \
                f"class {self.index} is predicted nowhere in this image"
            raise ItemError(f"segmentation target {self.index}: {what}, so there is nothing to explain "
                            "(give a region: seg:C:x0,y0,x1,y1)")
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


@dataclass
class DetectionTarget(Target):
    """The score of one detection, as the detector ranks its detections (onnxcam.detection has
    the formats: YOLOv5 rows, YOLOv8/YOLO11 channels first or transposed, RetinaNet / SSD /
    probability score + box pairs, DETR; "final" for whole exports, resolved by the explainer to
    the pre-selection scores behind the final, post-NMS detections).

    Which detection: `index` (a row: anchor, query, proposal; for a whole export the final
    detection's rank); else `rank` (the rank-th best, 0 = best); else the best-scoring row of
    class `cls`; else the row whose box overlaps `box` (x0, y0, x1, y1, input pixels) most; else
    the best row. `top=k` asks for the k best, one map each (the batch grows k-fold).
    format: "auto" (recognised from the graph and shapes), one of detection.FORMATS, or the
    older name "yolo" (= yolov5).
    boxes_output: the boxes of a paired format (default: the model's other (rows, 4) output).
    `what="box"` explains the box coordinates of a YOLO row instead of its score.
    """

    index: Optional[int] = None
    cls: Optional[int] = None
    box: Optional[Sequence[float]] = None
    format: str = "auto"
    output: Optional[str] = None
    boxes_output: Optional[str] = None
    what: str = "score"
    rank: Optional[int] = None
    top: Optional[int] = None
    input_size: Optional[tuple[int, int]] = None  # (H, W), filled in by the explainer (DETR boxes)
    final: Optional[tuple[str, str, str]] = None  # whole exports: the (boxes, scores, labels) outputs
    pre_format: str = "probs"  # whole exports: how the pre-selection tensor (`output`) becomes scores
    chosen: list = field(default_factory=list)  # (row, class) per explained item, for reports

    def fmt(self) -> str:
        return {"yolo": "yolov5"}.get(self.format, self.format)

    def _candidates(self, outputs, output) -> D.Candidates:
        fmt = self.fmt()
        if fmt == "auto":
            raise UsageError("the detection format is not resolved: give format=... (the explainer infers it)")
        boxes = outputs.get(self.boxes_output) if self.boxes_output else None
        return D.candidates(fmt, outputs[output], boxes, self.input_size or (0, 0))

    def _choose(self, outputs, output) -> tuple[int, int]:
        c = self._candidates(outputs, output)
        n, k = c.scores.shape
        if self.cls is not None and self.cls not in set(c.classes.tolist()):
            raise UsageError(f"detection class {self.cls} is out of range: the detector's classes are "
                             f"{int(c.classes[0])}..{int(c.classes[-1])}")
        if self.index is not None:
            if not 0 <= self.index < n:
                raise UsageError(f"detection row {self.index} is out of range: the output has {n} rows (0..{n - 1})")
            row = int(self.index)
        elif self.rank is not None:
            row, cls = c.best(self.rank + 1)[self.rank]
            return row, cls
        elif self.cls is not None:
            row = int(np.argmax(c.scores[:, self.cls]))
        elif self.box is not None:
            if c.boxes is None:
                raise UsageError("choosing a detection by box needs the boxes output (boxes_output=..., CLI --boxes-output)")
            row = int(np.argmax(_iou(c.boxes, np.asarray(self.box, np.float64))))
        else:
            return c.best(1)[0]
        cls = int(self.cls) if self.cls is not None else int(c.classes[np.argmax(c.scores[row, c.classes])])
        return row, cls

    def _final_choice(self, outputs, output) -> tuple[int, int, int]:
        """Whole exports: (final detection i, its row of the pre-selection scores, its label)."""
        from .preselection import final_row

        boxes, scores, labels = (np.asarray(outputs[n]) for n in self.final)
        n = len(scores)
        if n == 0:
            raise ItemError("no detections in this image (the detector's final output is empty): nothing to explain")
        want = self.index if self.index is not None else self.rank
        if want is not None:
            if not 0 <= want < n:
                raise ItemError(f"detection {want} asked for, but this image has {n} (0..{n - 1})")
            i = int(want)
        elif self.cls is not None:
            mine = np.flatnonzero(labels == self.cls)
            if not len(mine):
                raise ItemError(f"no detection of class {self.cls} in this image (its classes: {sorted(set(labels.tolist()))})")
            i = int(mine[np.argmax(scores[mine])])
        elif self.box is not None:
            i = int(np.argmax(_iou(boxes.astype(np.float64).reshape(-1, 4), np.asarray(self.box, np.float64))))
        else:
            i = int(np.argmax(scores))
        label = int(labels[i])
        row = final_row(np.asarray(outputs[output]), self.pre_format, float(scores[i]), label)
        if row is None:
            raise ItemError(f"final detection {i} (class {label}, score {float(scores[i]):.4g}) matches no "
                            f"pre-selection score in {output!r}")
        return i, row, label

    def seed(self, outputs, output):
        if self.final is not None:
            _, row, cls = self._final_choice(outputs, output)
            self.chosen.append((row, cls))
            s = np.asarray(outputs[output])
            return D.seed(self.pre_format, s.reshape(-1, s.shape[-1]), row, cls).reshape(s.shape)
        row, cls = self._choose(outputs, output)
        self.chosen.append((row, cls))
        y = outputs[output]
        if self.what == "box":
            if self.fmt() not in ("yolov5", "yolov8", "yolov8t"):
                raise UsageError("what='box' needs a YOLO output; for a separate boxes output explain it with OutputTarget")
            u = np.zeros(y.shape, np.float32)
            if self.fmt() == "yolov8":
                u[:4, row] = 1
            else:
                u[row, :4] = 1
            return u
        return D.seed(self.fmt(), y, row, cls)

    def class_index(self, outputs, output):
        if self.final is not None:
            return self._final_choice(outputs, output)[2]
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
    "det:best | det:row=R | det:class=C | det:box=x0,y0,x1,y1 | det:top=K (one detection, or the K "
    "best, of a detector's raw or final output; its format is recognised, or stated with "
    "--det-format; det-scores:... for sigmoid (boxes, classes) scores)."
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
    fmt = "auto" if kind == "det" else "scores"
    key, _, val = rest.partition("=")
    if key in ("", "best"):
        return DetectionTarget(format=fmt)
    if key == "row":
        return DetectionTarget(index=_int(val), format=fmt)
    if key == "class":
        return DetectionTarget(cls=_int(val), format=fmt)
    if key == "box":
        return DetectionTarget(box=[_float(b) for b in val.split(",")], format=fmt)
    if key == "top" and _int(val) >= 1:
        if _int(val) > MAX_TOPK:
            raise UsageError(f"det:top={val} asks for more than {MAX_TOPK} detections per image")
        return DetectionTarget(top=_int(val), format=fmt)
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


def with_detection_options(target, format: Optional[str] = None, boxes_output: Optional[str] = None):
    """`target` with a stated detection format and boxes output (CLI --det-format, --boxes-output);
    a UsageError when they are given for a target that is not a detection."""
    if format is None and boxes_output is None:
        return target
    if not isinstance(target, DetectionTarget):
        raise UsageError("--det-format and --boxes-output apply to detection targets (det:...)")
    if format is not None and format != "auto" and format not in D.FORMATS:
        raise UsageError(f"unknown detection format {format!r}; one of auto, {', '.join(D.FORMATS)}")
    return replace(target, format=format or target.format, boxes_output=boxes_output or target.boxes_output)


def maps_per_image(target) -> int:
    """How many maps a target makes for each image (topK, det:top=K: K; else 1)."""
    if isinstance(target, TopK):
        return target.k
    if isinstance(target, DetectionTarget) and target.top:
        return target.top
    return 1


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
