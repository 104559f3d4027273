"""Model-version comparison: how much a new model's explanations drifted from the old model's.

`drift(report)` reads a review report (onnxcam.review) whose first model is the reference (the
deployed, OLD model) and, for every later model (NEW), lists per image the Spearman rank
correlation ρ of the two maps and the IoU of their top-k% regions (both at the image's own size,
as review measures agreement), the two labels, and — where the image has forbidden regions — the
share of map energy inside them for each model and its change (NEW − OLD: > 0 means energy moved
onto the forbidden regions). Images come most-changed first (lowest ρ; an undefined ρ, e.g. a
constant map, counts as the most changed; then lowest IoU). Per class (the OLD model's label):
the same numbers averaged, most-changed class first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def _mean(values: Sequence[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


def _change_key(rec: dict[str, Any]) -> tuple[float, float]:
    """Sort key, most changed first: ρ (None first), then top-k IoU (None first)."""
    rho, iou = rec.get("spearman"), rec.get("top_iou")
    return (-2.0 if rho is None else rho, -1.0 if iou is None else iou)


def _pair_record(image: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """One image's drift from `old` to `new`, from its per-image agreement pairs and model records."""
    pair = next((p for p in image["agreement"]["pairs"] if {p["a"], p["b"]} == {old, new}), None)
    if pair is None:
        raise ValueError(f"the review report has no agreement between {old!r} and {new!r} on {image['image']!r}")
    ro, rn = image["models"][old], image["models"][new]
    rec: dict[str, Any] = {
        "image": image["image"],
        "spearman": pair.get("spearman"),
        "top_iou": pair.get("top_iou"),
        "old_label": ro["label"],
        "new_label": rn["label"],
        "label_changed": ro["label"] != rn["label"],
    }
    if "energy_in_forbidden" in ro and "energy_in_forbidden" in rn:
        rec["energy_in_forbidden_old"] = ro["energy_in_forbidden"]
        rec["energy_in_forbidden_new"] = rn["energy_in_forbidden"]
        eo, en = ro["energy_in_forbidden"], rn["energy_in_forbidden"]
        rec["energy_moved_to_forbidden"] = None if eo is None or en is None else en - eo
    return rec


def _summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    moved = [r["energy_moved_to_forbidden"] for r in records if "energy_moved_to_forbidden" in r]
    return {
        "images": len(records),
        "spearman": _mean([r["spearman"] for r in records]),
        "top_iou": _mean([r["top_iou"] for r in records]),
        "labels_changed": sum(r["label_changed"] for r in records),
        "images_with_forbidden": len(moved),
        "energy_moved_to_forbidden": _mean(moved),
    }


def drift_between(report: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The drift of model `new` from model `old` in a review report: summary, images, classes."""
    records = sorted((_pair_record(im, old, new) for im in report["images"]),
                     key=lambda r: (*_change_key(r), r["image"]))
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_class.setdefault(str(r["old_label"]), []).append(r)
    classes = sorted(({"class": c, **_summarise(rs)} for c, rs in by_class.items()),
                     key=lambda r: (*_change_key(r), r["class"]))
    return {"old": old, "new": new, "summary": _summarise(records), "images": records, "classes": classes}


def drift(report: dict[str, Any], reference: int = 0) -> list[dict[str, Any]]:
    """Every other model's drift from the reference model (index `reference` in report["models"])."""
    names = [m["name"] for m in report["models"]]
    old = names[reference]
    return [drift_between(report, old, new) for new in names if new != old]
