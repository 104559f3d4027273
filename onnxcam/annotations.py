"""What is known about the images a review measures: forbidden regions and true labels.

Forbidden regions are where a map must not look (a watermark, a border, a ruler, a spurious mark):
JSON ``{image name: entry}`` with an entry being a box ``[x0, y0, x1, y1]`` or a list of boxes in
the image's own pixels (end-exclusive, as ``--boxes``), ``{"box": ...}`` / ``{"boxes": ...}``, or
``{"relative": box or boxes}`` in fractions of the image's width and height (``[0, 0, 1, 0.1]`` is
the top tenth of any image). The key ``"*"`` applies to every image, together with the image's own
entry. Images are looked up by their name as given, then their file name, then their stem.

True labels: JSON ``{image name: class name | class index | {"label": ...}}`` (a boxes file whose
entries carry a ``label`` works as is).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np

from .errors import UsageError
from .limits import read_text

T = TypeVar("T")
Boxes = list[list[float]]


def lookup(table: Mapping[str, T] | None, image: str | os.PathLike) -> T | None:
    """`table`'s entry for an image: by its name as given, its POSIX path, its file name, its stem."""
    if not table:
        return None
    p = Path(image)
    return next((table[k] for k in (str(image), p.as_posix(), p.name, p.stem) if k in table), None)


def _read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    text = read_text(path, f"{what} file")  # a regular UTF-8 file within the size limit
    try:
        raw = json.loads(text)  # NaN/Infinity parse, then fail the entry checks naming the entry
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"cannot read {what} file {path}: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{what} file {path} must hold a JSON object {{image name: ...}}")
    return raw


def _boxes(v: Any, path: str | os.PathLike, name: str, relative: bool) -> Boxes:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not len(arr) or not np.isfinite(arr).all():
        raise UsageError(f"regions file {path}: entry {name!r} is not [x0, y0, x1, y1] or a list of them")
    if relative and (arr.min() < 0 or arr.max() > 1):
        raise UsageError(f"regions file {path}: entry {name!r} is relative: coordinates are fractions in [0, 1]")
    return arr.tolist()


@dataclass(frozen=True)
class Regions:
    """Forbidden regions per image name: boxes in pixels and boxes in fractions of the image."""

    pixels: dict[str, Boxes] = field(default_factory=dict)
    relative: dict[str, Boxes] = field(default_factory=dict)

    def for_image(self, image: str | os.PathLike, shape: tuple[int, int]) -> Boxes | None:
        """An image's regions in its pixels (its own entry and "*"); None when it has none."""
        h, w = shape
        own = {k: v for k, v in self.pixels.items() if k != "*"}
        rel = {k: v for k, v in self.relative.items() if k != "*"}
        found = list(lookup(own, image) or []) + self.pixels.get("*", [])
        for x0, y0, x1, y1 in list(lookup(rel, image) or []) + self.relative.get("*", []):
            found.append([x0 * w, y0 * h, x1 * w, y1 * h])
        return found or None


def load_regions(path: str | os.PathLike) -> Regions:
    """Forbidden regions from a JSON file (format: the module docstring); UsageError when malformed."""
    pixels: dict[str, Boxes] = {}
    relative: dict[str, Boxes] = {}
    for name, v in _read_json_object(path, "regions").items():
        if isinstance(v, dict) and "relative" in v:
            relative[name] = _boxes(v["relative"], path, name, True)
            continue
        if isinstance(v, dict):
            v = v.get("boxes", [v["box"]] if "box" in v else None)
        pixels[name] = _boxes(v, path, name, False)
    return Regions(pixels, relative)


def load_truth(path: str | os.PathLike) -> dict[str, str | int]:
    """True labels (format: the module docstring); entries without a label are skipped."""
    out: dict[str, str | int] = {}
    for name, v in _read_json_object(path, "truth").items():
        v = v.get("label") if isinstance(v, dict) else v
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise UsageError(f"truth file {path}: the label of {name!r} must be a class name or index, got {v!r}")
        out[name] = v
    if not out:
        raise UsageError(f"truth file {path} holds no label")
    return out


def is_correct(truth: str | int, predicted: int, label: str | None) -> bool:
    """Whether a prediction (class `predicted`, named `label`) is the true class `truth` (an index,
    a name, or an index written as text for a model without labels)."""
    if isinstance(truth, int):
        return predicted == truth
    return truth == label or (label is None and truth == str(predicted))


@dataclass(frozen=True)
class Annotations:
    """Everything known about the images: ground-truth boxes (review.load_boxes), forbidden
    regions, true labels; None where not given."""

    boxes: dict[str, Boxes] | None = None
    forbidden: Regions | None = None
    truth: dict[str, str | int] | None = None

    def forbidden_for(self, image: str, shape: tuple[int, int]) -> Boxes | None:
        return self.forbidden.for_image(image, shape) if self.forbidden else None

    def label_of(self, image: str) -> str | int | None:
        return lookup(self.truth, image)
