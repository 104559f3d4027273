"""Whole exported detectors: from a final (post-NMS) detection back to the score it was chosen by.

A detector exported with its post-processing returns final detections — boxes (N, 4), scores
(N,), labels (N,), no batch axis — picked by data-dependent ops (a score threshold and NonZero,
TopK, NonMaxSuppression inside If). No gradient flows through a selection, and none is needed:
each final score is one value of a pre-selection score tensor S (rows × classes) computed before
any data-dependent op, so a detection's gradient is that of S[r, label] (through the sigmoid or
softmax that makes it a score), and the path from the layer to S has no selection on it.

`find_preselection` finds S by value on one image: among the tensors computed before any
data-dependent op, the latest (rows, classes) tensor that, as probabilities, through a sigmoid or
through a softmax, holds every final score at its label. `final_row` maps one final detection
to its row of S (torchvision's SSD, RetinaNet: the anchor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx

from .errors import ItemError, UsageError
from .graph.index import GraphIndex
from .types import FLOAT_TYPES, TensorInfo

DATA_DEPENDENT = frozenset({"NonZero", "TopK", "NonMaxSuppression", "If", "Loop", "Scan", "Compress", "Unique"})
_ACTIVATIONS = ("probs", "retinanet", "ssd")  # S itself, sigmoid(S), softmax(S) (detection formats)


@dataclass(frozen=True)
class FinalOutputs:
    """The outputs of a whole exported detector: boxes (N, 4), scores (N,), labels (N,)."""

    boxes: str
    scores: str
    labels: str


@dataclass(frozen=True)
class PreSelection:
    """The pre-selection scores S of a whole export: the tensor, the detection format that turns
    it into scores (probs / retinanet: sigmoid / ssd: softmax), and the final outputs."""

    tensor: str
    format: str
    final: FinalOutputs
    batched: bool = True  # (1, rows, K); False: (rows, K), rows chosen at run time (two-stage proposals)


def final_outputs(model: onnx.ModelProto, shapes: dict[str, TensorInfo]) -> Optional[FinalOutputs]:
    """The (boxes, scores, labels) outputs when the model returns final detections, else None."""
    boxes = scores = labels = None
    for o in model.graph.output:
        info = shapes.get(o.name)
        if info is None:
            continue
        s = info.shape
        if info.elem_type in FLOAT_TYPES and len(s) == 2 and s[1] == 4 and boxes is None:
            boxes = o.name
        elif info.elem_type in FLOAT_TYPES and len(s) == 1 and scores is None:
            scores = o.name
        elif info.elem_type not in FLOAT_TYPES and len(s) == 1 and labels is None:
            labels = o.name
    if boxes and scores and labels:
        return FinalOutputs(boxes, scores, labels)
    return None


def before_selection(model: onnx.ModelProto) -> list[str]:
    """The tensors computed without any data-dependent op upstream, in graph order."""
    late: set[str] = set()
    out = []
    for node in GraphIndex(model.graph).nodes:
        if node.op_type in DATA_DEPENDENT or any(i in late for i in node.input if i):
            late.update(o for o in node.output if o)
        else:
            out.extend(o for o in node.output if o)
    return out


def _as_scores(s: np.ndarray, fmt: str) -> np.ndarray:
    s = s.astype(np.float64)
    if fmt == "retinanet":
        return 1.0 / (1.0 + np.exp(-s))
    if fmt == "ssd":
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return s


def final_row(s: np.ndarray, fmt: str, score: float, label: int, tol: float = 1e-5) -> Optional[int]:
    """The row of S (rows, K) whose score at `label` is the final detection's `score`; None if none."""
    if not 0 <= label < s.shape[-1]:
        return None
    col = _as_scores(s.reshape(-1, s.shape[-1]), fmt)[:, label]
    r = int(np.argmin(np.abs(col - score)))
    return r if abs(col[r] - score) <= tol * max(1.0, abs(score)) else None


def find_preselection(model: onnx.ModelProto, shapes: dict[str, TensorInfo], final: FinalOutputs,
                      run: Callable[[onnx.ModelProto, list[str]], dict[str, np.ndarray]]) -> PreSelection:
    """S for a whole export, found by value: `run(model, names)` evaluates tensors on one image."""
    floats = lambda t: t in shapes and shapes[t].elem_type in FLOAT_TYPES  # noqa: E731
    early = before_selection(model)
    # (1, rows, classes) computed before any selection (single-stage: anchors); else (rows, classes)
    # computed from rows chosen at run time (two-stage: the RPN's proposals, constants of the run)
    names = [t for t in early if floats(t) and len(shapes[t].shape) == 3 and shapes[t].shape[0] == 1]
    early_set = set(early)
    late = [o for n in GraphIndex(model.graph).nodes for o in n.output
            if o and o not in early_set and floats(o) and len(shapes[o].shape) == 2]
    values = run(model, [final.scores, final.labels] + names + late)
    scores, labels = values[final.scores].astype(np.float64), values[final.labels].astype(np.int64)
    if len(scores) == 0:
        raise ItemError("the detector finds nothing in this image, so its pre-selection scores cannot be "
                         "located: explain an image with detections first")
    # single-stage: the latest match (nearest the selection); two-stage: the first (before the
    # scores are split per image with run-time sizes)
    for batched, group in ((True, names[::-1]), (False, late)):
        for t in group:
            v = values[t]
            if v.ndim != (3 if batched else 2) or (batched and v.shape[0] != 1) or v.shape[-2] < len(scores):
                continue
            for fmt in _ACTIVATIONS:
                if all(final_row(v, fmt, float(s), int(l)) is not None for s, l in zip(scores, labels)):
                    return PreSelection(t, fmt, final, batched)
    raise UsageError(
        "no tensor before the detector's selection (NMS, TopK, NonZero) holds its final scores; "
        "explain its raw scores instead: --output NAME with --det-format")
