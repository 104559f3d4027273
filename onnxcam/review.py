"""Evaluate one model's explanations, or review several models side by side in one HTML page.

`evaluate(run, images, boxes)` computes, per image, the prediction and the metrics of
`onnxcam.metrics` (average drop, increase in confidence, deletion/insertion AUC, optionally ROAD,
and with ground-truth boxes the pointing games and the CAM box's IoU); `review(...)` does it for
several models, measures how much their maps agree (Spearman's ρ and top-20% IoU, at each image's
own size) and writes REPORT_DIR/index.html (one self-contained page: images inlined as base64 PNG
data URIs, CSS inline, no script, nothing fetched at view time) and REPORT_DIR/review.json.

Each model gets the input policy `explain` gives it (onnxcam.preprocessing: the model's metadata
``onnxcam.preprocess``/``onnxcam.preset``/``onnxcam.labels``, a config file, a preset, the size,
letterboxing), so review's maps are explain's maps for the same model and image.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import cv2
import numpy as np

from . import metrics as M
from .annotations import Annotations, is_correct, lookup
from .drift import drift
from .errors import ImageError, OnnxcamError, UsageError
from .explainer import Explainer, Result
from .image import encode_png, load_image, overlay
from .limits import read_text
from .output import OutputDir, json_safe, unique_names
from .preprocessing import Batch, InputPolicy, policy_for
from .targets import SoftmaxTarget, TopK, parse_target

TOP_PERCENT = 20.0

# (key, title, better) for the per-model metrics table; better: "higher" / "lower"
METRIC_COLUMNS: list[tuple[str, str, str]] = [
    ("pointing_game", "pointing game (%)", "higher"),
    ("energy_pointing_game", "energy pointing game", "higher"),
    ("localisation_iou", "CAM box IoU", "higher"),
    ("accuracy", "accuracy (%)", "higher"),
    ("energy_in_forbidden", "energy in forbidden regions", "lower"),
    ("average_drop", "average drop (%)", "lower"),
    ("increase_in_confidence", "increase in confidence (%)", "higher"),
    ("deletion_auc", "deletion AUC", "lower"),
    ("insertion_auc", "insertion AUC", "higher"),
    ("road_morf", "ROAD MoRF", "lower"),
    ("road_lerf", "ROAD LeRF", "higher"),
]


# -- inputs -------------------------------------------------------------------------------------
def load_boxes(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """Ground-truth boxes from JSON: {image name: [x0, y0, x1, y1] | [[...], ...] |
    {"box": [...]} | {"boxes": [[...], ...]}} in the image's own pixels, end-exclusive."""
    text = read_text(path, "boxes file")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"boxes file {path} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"boxes file {path} must hold a JSON object {{image name: box}}")
    out: dict[str, list[list[float]]] = {}
    for name, v in raw.items():
        bad = UsageError(f"boxes file {path}: entry {name!r} is not [x0, y0, x1, y1] (finite numbers, x0 < x1, "
                         f"y0 < y1) or a list of them")
        if isinstance(v, dict):
            v = v.get("boxes", [v["box"]] if "box" in v else None)
        try:
            arr = np.asarray(v, dtype=np.float64) if v is not None else np.zeros((0,))
        except (TypeError, ValueError):
            raise bad from None
        if arr.ndim == 1 and arr.size == 4:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4 or not len(arr) or not np.isfinite(arr).all():
            raise bad
        if (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
            raise bad
        out[name] = arr.tolist()
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def boxes_for(boxes: dict[str, list[list[float]]] | None, image: str | os.PathLike) -> list[list[float]] | None:
    """The boxes of an image, looked up by its path as given, then its file name, then its stem."""
    return lookup(boxes, image)


@dataclass
class ModelRun:
    """One model ready to explain: its Explainer, input policy (onnxcam.preprocessing) and plain
    forward (one per input size, built when first needed)."""

    name: str
    path: str
    explainer: Explainer
    policy: InputPolicy
    batch_size: int = 32
    target: Any = None  # what explain(targets=...) takes; None = the predicted class
    _forwards: dict[tuple[int, int], M.Forward] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str, method: str = "gradcam", preset: str | None = None,
             size: str | Sequence[int] | None = None, name: str | None = None,
             providers: Sequence[str] | None = None, batch_size: int = 32,
             config: str | os.PathLike | None = None, letterbox: bool | None = None,
             labels_file: str | os.PathLike | None = None, layer: str | None = None,
             target: str | None = None) -> "ModelRun":
        """The model at `path` as `explain` would see it: the same input policy, `layer` (default:
        the last spatial activation) and `target` (a target string as explain's --target, read
        with this model's labels; default: the predicted class). One map per image: topK is refused."""
        ex = Explainer(path, method=method, layer=layer, providers=providers)
        policy = policy_for(ex, config_file=config, preset=preset, size=size, letterbox=letterbox,
                            labels_file=labels_file)
        parsed = parse_target(target, policy.labels) if target else None
        if isinstance(parsed, TopK):
            raise UsageError(f"target {target!r}: eval and review measure one map per image; use explain for topK")
        if not (parsed is None or isinstance(parsed, (int, SoftmaxTarget))):
            # the metrics mask the image and read one class's probability: a region, a detection or
            # an output element has no such probability, and its numbers would mean nothing
            raise UsageError(f"target {target!r}: eval and review measure a class's probability; give top1, a "
                             f"class index or label, or softmax:C (explain takes every target)")
        return cls(name or Path(path).stem, path, ex, policy, batch_size, parsed)

    @property
    def preset(self) -> str:
        return self.policy.preset.name

    @property
    def labels(self) -> list[str] | None:
        return self.policy.labels

    def forward(self, size: tuple[int, int]) -> M.Forward:
        """The plain forward of the explained output at input size `size`."""
        if size not in self._forwards:
            self._forwards[size] = M.scores_fn(self.explainer, size, batch_size=self.batch_size)
        return self._forwards[size]

    def label(self, k: int) -> str:
        return self.policy.label(k) or f"class {k}"

    def describe(self) -> dict[str, Any]:
        info = self.explainer.info
        return {
            "name": self.name,
            "path": self.path,
            "sha256": hashlib.sha256(Path(self.path).read_bytes()).hexdigest(),
            **self.policy.describe(),
            "layout": info.layout,
            "channels": self.policy.channels,
            "method": self.explainer.method.name,
            "target": "top1" if self.target is None else str(self.target),
        }


@dataclass
class Evaluation:
    """One model over a list of images: per-image records, the summary, maps at image size."""

    model: dict[str, Any]
    images: list[dict[str, Any]]
    summary: dict[str, Any]
    maps: list[np.ndarray] = field(repr=False)  # (h, w) per image, at the image's own size
    layer: str = ""


def _nanmean(values: Sequence[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else None


@dataclass
class _BatchScores:
    """The faithfulness metrics of one batch (per item)."""

    probs: np.ndarray
    adic: M.DropIncrease
    deletion: M.Curves
    insertion: M.Curves
    road: M.RoadResult | None


def _batch_scores(run: ModelRun, batch: Batch, res: Result, steps: int, road: bool) -> _BatchScores:
    fwd, x, t, layout = run.forward(batch.size), batch.x, res.targets, run.explainer.info.layout
    return _BatchScores(
        M.probabilities(res.outputs),
        M.average_drop_increase(x, res.heatmaps, fwd, targets=t, layout=layout),
        M.deletion(x, res.heatmaps, fwd, targets=t, steps=steps, layout=layout),
        M.insertion(x, res.heatmaps, fwd, targets=t, steps=steps, layout=layout),
        M.road(x, res.heatmaps, fwd, targets=t, layout=layout) if road else None,
    )


def _annotate(rec: dict[str, Any], run: ModelRun, name: str, big: np.ndarray, probs: np.ndarray,
              notes: Annotations) -> None:
    """Add the forbidden-region energy and the correctness of the prediction to an image record."""
    bad = notes.forbidden_for(name, big.shape[:2])
    if bad is not None:
        rec["forbidden"] = bad
        # a map without energy (all zero) says nothing about where the model looks: undefined, not 0
        rec["energy_in_forbidden"] = M.energy_pointing_game(big, np.asarray(bad)) if float(big.sum()) > 0 else None
    truth = notes.label_of(name)
    if truth is not None:
        pred = int(np.argmax(probs))
        rec["true_label"] = truth
        rec["predicted"] = pred
        rec["correct"] = is_correct(truth, pred, run.policy.label(pred))


def _image_record(run: ModelRun, name: str, big: np.ndarray, k: int, sc: _BatchScores, i: int,
                  boxes: dict | None, tolerance: float) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "image": name,
        "target": k,
        "label": run.label(k),
        "probability": float(sc.probs[i, k]),
        "drop": float(sc.adic.drop[i]),
        "increase": bool(sc.adic.increase[i]),
        "deletion_auc": float(sc.deletion.auc[i]),
        "insertion_auc": float(sc.insertion.auc[i]),
        "cam_box": M.cam_box(big),
    }
    if sc.road is not None:
        rec["road_morf"] = sc.road.morf[i].tolist()
        rec["road_lerf"] = sc.road.lerf[i].tolist()
    gt = boxes_for(boxes, name)
    if gt is not None:
        rec["boxes"] = gt
        rec["pointing_hit"] = M.pointing_game(big, np.asarray(gt), tolerance)
        rec["energy"] = M.energy_pointing_game(big, np.asarray(gt))
        rec["localisation_iou"] = max(M.box_iou(rec["cam_box"], b) for b in gt)
    return rec


def summarise(records: list[dict[str, Any]], steps: int, tolerance: float) -> dict[str, Any]:
    """The metrics over per-image records (means, rates): the same whether the records come from
    one process or from many Ray workers (onnxcam.scale.evaluate)."""
    with_boxes = [r for r in records if "pointing_hit" in r]
    with_forbidden = [r for r in records if "energy_in_forbidden" in r]
    with_truth = [r for r in records if "correct" in r]
    return {
        "images": len(records),
        "images_with_boxes": len(with_boxes),
        "pointing_game": (100.0 * sum(r["pointing_hit"] for r in with_boxes) / len(with_boxes)) if with_boxes else None,
        "energy_pointing_game": _nanmean([r["energy"] for r in with_boxes]),
        "localisation_iou": _nanmean([r["localisation_iou"] for r in with_boxes]),
        "average_drop": _nanmean([r["drop"] for r in records]),
        "increase_in_confidence": (100.0 * sum(r["increase"] for r in records) / len(records)) if records else None,
        "deletion_auc": _nanmean([r["deletion_auc"] for r in records]),
        "insertion_auc": _nanmean([r["insertion_auc"] for r in records]),
        "road_morf": _nanmean([float(np.mean(r["road_morf"])) for r in records if "road_morf" in r]),
        "road_lerf": _nanmean([float(np.mean(r["road_lerf"])) for r in records if "road_lerf" in r]),
        "images_with_forbidden": len(with_forbidden),
        "energy_in_forbidden": _nanmean([r["energy_in_forbidden"] for r in with_forbidden]),
        "images_with_truth": len(with_truth),
        "accuracy": (100.0 * sum(r["correct"] for r in with_truth) / len(with_truth)) if with_truth else None,
        "deletion_steps": steps,
        "pointing_tolerance_px": tolerance,
    }


Loader = Callable[[], np.ndarray]
"""Decodes one image when called (ImageError when it cannot): images are read one batch at a time."""


@dataclass
class _Explained:
    """One batch of images through one model: per item its record and map at the image's size,
    or the reason it is an error (non-finite outputs, map or metrics)."""

    records: list[dict[str, Any]]
    maps: list[np.ndarray]
    bad: dict[int, str]
    layer: str


def _finite(v: Any) -> bool:
    if isinstance(v, dict):
        return all(_finite(x) for k, x in v.items() if k != "boxes")
    if isinstance(v, (list, tuple)):
        return all(_finite(x) for x in v)
    if isinstance(v, (float, np.floating)):
        return math.isfinite(float(v))
    return True


def _explain_chunk(run: ModelRun, chunk: Sequence[tuple[str, np.ndarray]], boxes: dict | None, steps: int,
                   road: bool, tolerance: float, notes: Annotations) -> _Explained:
    batch = run.policy.batch([im for _, im in chunk])
    res = run.explainer.explain(batch.x, targets=run.target)
    sc = _batch_scores(run, batch, res, steps, road)
    records, maps, bad = [], [], {}
    for i, (name, _) in enumerate(chunk):
        big = np.clip(batch.image_map(i, res.heatmaps[i]), 0, 1)
        finite = bool(np.isfinite(res.outputs[i]).all() and np.isfinite(res.heatmaps[i]).all())
        rec = _image_record(run, name, big, int(res.targets[i]), sc, i, boxes, tolerance) if finite else {}
        if finite:
            _annotate(rec, run, name, big, sc.probs[i], notes)
        if not finite or not _finite(rec):
            bad[i] = f"{name}: {run.name}'s outputs, map or metrics are not finite (NaN or Inf); no result"
        records.append(rec)
        maps.append(big)
    return _Explained(records, maps, bad, res.layer)


def _loaded(chunk: Sequence[tuple[str, Loader]], on_error: Callable[[str, str], None]
            ) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, load in chunk:
        try:
            out.append((name, load()))
        except ImageError as exc:
            on_error(name, str(exc))
    return out


def evaluate_stream(run: ModelRun, items: Sequence[tuple[str, Loader]], boxes: dict | None = None,
                    steps: int = 50, road: bool = False, batch_size: int = 8, tolerance: float = 15.0,
                    on_error: Callable[[str, str], None] | None = None, keep_maps: bool = False,
                    notes: Annotations | None = None) -> Evaluation:
    """`evaluate` over images decoded one batch at a time: memory does not grow with their number
    (the maps are kept only with `keep_maps`). An unreadable image, or one whose outputs, map or
    metrics are not finite, goes to `on_error(name, message)` and has no record."""
    notes = notes or Annotations(boxes=boxes)
    boxes = boxes if boxes is not None else notes.boxes
    records: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    layer = ""
    report = on_error or _raise
    step = run.policy.batch_step(batch_size)
    for s in range(0, len(items), step):
        chunk = _loaded(items[s : s + step], report)
        if not chunk:
            continue
        ex = _explain_chunk(run, chunk, boxes, steps, road, tolerance, notes)
        layer = ex.layer
        for i, (name, _) in enumerate(chunk):
            if i in ex.bad:
                report(name, ex.bad[i])
                continue
            records.append(ex.records[i])
            if keep_maps:
                maps.append(ex.maps[i])
    model = run.describe()
    model["layer"] = layer
    return Evaluation(model, records, summarise(records, steps, tolerance), maps, layer)


def _raise(name: str, message: str) -> None:
    raise OnnxcamError(message)


def evaluate(run: ModelRun, images: Sequence[tuple[str, np.ndarray]], boxes: dict | None = None,
             steps: int = 50, road: bool = False, batch_size: int = 8, tolerance: float = 15.0,
             notes: Annotations | None = None) -> Evaluation:
    """Explain `images` ((name, RGB uint8) pairs) with `run` and measure every metric per image.

    The images are prepared by the model's input policy and the maps put back onto the photos as
    `explain` does (same size, normalisation, letterbox, layer, target), so the maps are explain's
    maps. `notes` adds the energy inside forbidden regions and the accuracy on labelled images
    (its boxes, when given, are used where `boxes` is None). An image whose outputs, map or
    metrics are not finite raises OnnxcamError."""
    items = [(name, (lambda im=im: im)) for name, im in images]
    return evaluate_stream(run, items, boxes, steps, road, batch_size, tolerance, keep_maps=True, notes=notes)


def image_map(run: ModelRun, img: np.ndarray) -> np.ndarray:
    """`run`'s map of one image at the image's own size, as evaluate computes it (for the few images
    a CI summary shows after a streamed run, which kept no maps)."""
    batch = run.policy.batch([img])
    res = run.explainer.explain(batch.x, targets=run.target)
    return np.clip(batch.image_map(0, res.heatmaps[0]), 0, 1)


def file_items(paths: Sequence[Path]) -> list[tuple[str, Loader]]:
    """(name, loader) per file: names are file names, made unique with their parent folders where
    two share one (then with -2, -3, ...); nothing is decoded until a loader is called."""
    return [(n, (lambda p=p: load_image(p))) for n, p in zip(image_names(paths), paths)]


# -- review ---------------------------------------------------------------------------------------
def agreement(maps_a: Sequence[np.ndarray], maps_b: Sequence[np.ndarray], percent: float = TOP_PERCENT) -> list[dict[str, float]]:
    """Per image: Spearman's ρ and top-`percent`% IoU of two models' maps (same image size)."""
    return [{"spearman": M.spearman(a, b), "top_iou": M.top_k_iou(a, b, percent)} for a, b in zip(maps_a, maps_b)]


def image_pairs(names: Sequence[str], maps: Sequence[np.ndarray], recs: Sequence[dict[str, Any]],
                percent: float = TOP_PERCENT) -> list[dict[str, Any]]:
    """One image's pairwise agreement (every pair a < b of the models): ρ, top-k IoU, same label,
    and the energy moved onto forbidden regions from a to b where both have it."""
    out = []
    for a, b in itertools.combinations(range(len(names)), 2):
        g: dict[str, Any] = agreement([maps[a]], [maps[b]], percent)[0]
        ra, rb = recs[a], recs[b]
        g["same_label"] = ra["label"] == rb["label"]
        if "energy_in_forbidden" in ra and "energy_in_forbidden" in rb:
            ea, eb = ra["energy_in_forbidden"], rb["energy_in_forbidden"]
            g["energy_moved_to_forbidden"] = None if ea is None or eb is None else eb - ea
        out.append({"a": names[a], "b": names[b], **g})
    return out


@dataclass
class Review:
    """A finished review: the report (review.json) and, in the report's image order, where each
    image's card pictures (a JSON list of data URIs: the photo, then each model's overlay) lie in
    the spool file (offset, length); `write_report` renders the cards from them."""

    report: dict[str, Any]
    spool: BinaryIO
    cards: list[tuple[int, int]]


@dataclass
class Reviewed:
    """One image through every model of a review: its review.json entry (before it is ranked), its
    card's pictures (data URIs: the photo, then each model's overlay) and each model's layer."""

    record: dict[str, Any]
    figures: list[str]
    layers: list[str]


class _Pairs:
    """Running pairwise agreement between the models (means over the images seen)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.values: dict[tuple[int, int], list[dict[str, Any]]] = {
            ab: [] for ab in itertools.combinations(range(len(names)), 2)}

    def add(self, image_pairs: Sequence[dict[str, Any]]) -> None:
        """One image's pairs (`image_pairs`, in the same pair order)."""
        for ab, g in zip(self.values, image_pairs):
            self.values[ab].append(g)

    def summary(self) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
        m = len(self.names)
        sp, iou = np.full((m, m), np.nan), np.full((m, m), np.nan)
        pairs = []
        for (a, b), vals in self.values.items():
            ms, mi = _nanmean([g["spearman"] for g in vals]), _nanmean([g["top_iou"] for g in vals])
            sp[a, b] = sp[b, a] = np.nan if ms is None else ms
            iou[a, b] = iou[b, a] = np.nan if mi is None else mi
            same, n = sum(bool(g["same_label"]) for g in vals), len(vals)
            pair = {"a": self.names[a], "b": self.names[b], "spearman": ms, "top_iou": mi, "same_label": same,
                    "label_agreement": same / n if n else None}
            moved = [g["energy_moved_to_forbidden"] for g in vals if "energy_moved_to_forbidden" in g]
            if moved:
                pair["energy_moved_to_forbidden"] = _nanmean(moved)
            pairs.append(pair)
        for i in range(m):
            sp[i, i] = iou[i, i] = 1.0
        return pairs, sp, iou


def review_chunk(runs: Sequence[ModelRun], chunk: Sequence[tuple[str, np.ndarray]], boxes: dict | None,
                 steps: int, road: bool, tolerance: float, percent: float, notes: Annotations,
                 thumb_width: int = 300) -> list[Reviewed | str]:
    """Decoded images ((name, RGB) pairs) through every model: per image its `Reviewed`, or why it
    has no result (a model's outputs, map or metrics are not finite). The work of one batch, the
    same in one process (`review_stream`) and on Ray's actors (`onnxcam.scale.review`)."""
    names = [r.name for r in runs]
    done = [_explain_chunk(r, chunk, boxes, steps, road, tolerance, notes) for r in runs]
    out: list[Reviewed | str] = []
    for i, (name, img) in enumerate(chunk):
        bad = [ex.bad[i] for ex in done if i in ex.bad]
        if bad:
            out.append(bad[0])
            continue
        recs, maps = [ex.records[i] for ex in done], [ex.maps[i] for ex in done]
        pairs = image_pairs(names, maps, recs, percent)
        rec = json_safe({
            "image": name, "size": [int(img.shape[0]), int(img.shape[1])], "boxes": boxes_for(boxes, name),
            "forbidden": notes.forbidden_for(name, img.shape[:2]),
            "agreement": {"spearman": _nanmean([p["spearman"] for p in pairs]),
                          "top_iou": _nanmean([p["top_iou"] for p in pairs]), "pairs": pairs},
            "models": {names[k]: recs[k] for k in range(len(runs))},
        })
        out.append(Reviewed(rec, card_figures(rec, img, maps, thumb_width), [ex.layer for ex in done]))
    return out


class ReviewCollector:
    """Builds a `Review` from `Reviewed` images given one at a time, in any order (`key`: the
    image's place in the listing): their pictures are spooled to a temporary file at once, so
    memory holds only the records. The same whether the images come from this process or from
    Ray's workers, so the numbers are the same."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.items: list[tuple[int, dict[str, Any], tuple[int, int]]] = []
        self.layers = [""] * len(self.names)
        self.spool = tempfile.TemporaryFile()

    def add(self, item: Reviewed, key: int | None = None) -> None:
        data = json.dumps(item.figures).encode("ascii")
        self.spool.seek(0, os.SEEK_END)
        self.items.append((len(self.items) if key is None else key, item.record, (self.spool.tell(), len(data))))
        self.spool.write(data)
        self.layers = [ly or old for ly, old in zip(item.layers, self.layers)]

    def finish(self, models: Sequence[dict[str, Any]], method: str, steps: int, tolerance: float,
               percent: float = TOP_PERCENT, names: Sequence[str] | None = None) -> Review:
        """The report: per model (`models`: each run's `describe()`) its metrics, the pairs, the
        images lowest agreement first, the drift. `names`: the images' names in listing order,
        replacing the names their records were made with (Ray's workers name rows by path)."""
        self.items.sort(key=lambda t: t[0])
        per_image = [rec for _, rec, _ in self.items]
        if names is not None:
            for rec, name in zip(per_image, names):
                rec["image"] = name
                for r in rec["models"].values():
                    r["image"] = name
        m = len(self.names)
        pairs = _Pairs(self.names)
        for rec in per_image:
            pairs.add(rec["agreement"]["pairs"])
        n = len(per_image)  # may be 0 when every image was an error: the page says so
        # lowest agreement first (no pair → keep the given order); NaN counts as the least agreement
        order = sorted(range(n), key=lambda i: (-2.0 if per_image[i]["agreement"]["spearman"] is None and m > 1
                                                else (per_image[i]["agreement"]["spearman"] if m > 1 else 0.0), i))
        for rank_, i in enumerate(order):
            per_image[i]["disagreement_rank"] = rank_
        pair_list, sp, iou = pairs.summary()
        described = [{**d, "layer": self.layers[k],
                      "metrics": summarise([rec["models"][self.names[k]] for rec in per_image], steps, tolerance)}
                     for k, d in enumerate(models)]
        report = json_safe({
            "method": method,
            "top_percent": percent,
            "models": described,
            "agreement": {"models": self.names, "spearman": sp.tolist(), "top_iou": iou.tolist(), "pairs": pair_list},
            "order": [per_image[i]["image"] for i in order],
            "images": [per_image[i] for i in order],
        })
        if m > 1:
            report["drift"] = drift(report)
        return Review(report, self.spool, [self.items[i][2] for i in order])


def review_stream(runs: Sequence[ModelRun], items: Sequence[tuple[str, Loader]], boxes: dict | None = None,
                  steps: int = 50, road: bool = False, batch_size: int = 8, tolerance: float = 15.0,
                  percent: float = TOP_PERCENT, on_error: Callable[[str, str], None] | None = None,
                  thumb_width: int = 300, notes: Annotations | None = None) -> Review:
    """Evaluate every model and their pairwise agreement, one batch of images at a time: each
    image's card pictures (photo, overlays) are made as soon as its maps exist and spooled to a
    temporary file, so memory does not grow with the number of images. An image that cannot be
    read, or that any model gives non-finite outputs, maps or metrics, goes to `on_error`.

    The report's "drift" (onnxcam.drift) compares every later model with the first one (the
    reference: the deployed, OLD model), per image and per class."""
    if not runs:
        raise UsageError("review needs at least one model")
    if not items:
        raise UsageError("no images to review")
    report_error = on_error or _raise
    boxes = boxes if boxes is not None or notes is None else notes.boxes
    notes = notes or Annotations(boxes=boxes)
    collector = ReviewCollector([r.name for r in runs])
    step = min(r.policy.batch_step(batch_size) for r in runs)
    for s in range(0, len(items), step):
        chunk = _loaded(items[s : s + step], report_error)
        if not chunk:
            continue
        for (name, _), got in zip(chunk, review_chunk(runs, chunk, boxes, steps, road, tolerance, percent, notes,
                                                     thumb_width)):
            if isinstance(got, str):
                report_error(name, got)
            else:
                collector.add(got)
    return collector.finish([r.describe() for r in runs], runs[0].explainer.method.name, steps, tolerance, percent)


def review(runs: Sequence[ModelRun], images: Sequence[tuple[str, np.ndarray]], boxes: dict | None = None,
           steps: int = 50, road: bool = False, batch_size: int = 8, tolerance: float = 15.0,
           percent: float = TOP_PERCENT, notes: Annotations | None = None) -> Review:
    """`review_stream` over images already decoded ((name, RGB uint8) pairs)."""
    items = [(name, (lambda im=im: im)) for name, im in images]
    return review_stream(runs, items, boxes, steps, road, batch_size, tolerance, percent, notes=notes)


# -- HTML -----------------------------------------------------------------------------------------
def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a data:image/png;base64 URI."""
    return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode("ascii")


def _thumb(rgb: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    s = min(1.0, width / w)
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return rgb, s


def _draw_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None, scale: float, colour: tuple[int, int, int]) -> np.ndarray:
    out = rgb.copy()
    for b in boxes or []:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in b)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, 2 if max(out.shape[:2]) >= 200 else 1)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "hit" if v else "miss"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return html.escape(str(v))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d232a;background:#f6f7f9}
h1{margin:0 0 4px;font-size:26px}h2{margin:28px 0 10px;font-size:20px;border-bottom:2px solid #d8dde3;padding-bottom:4px}
.sub{color:#5b6673;margin:0 0 12px}
table{border-collapse:collapse;background:#fff;margin:6px 0;font-size:14px}
th,td{border:1px solid #d8dde3;padding:5px 10px;text-align:right}
th{background:#eef1f5}td.name,th.name{text-align:left;font-weight:600}
.better{font-weight:400;color:#5b6673;font-size:12px}
.best{background:#e3f4e6}
.card{background:#fff;border:1px solid #d8dde3;border-radius:8px;padding:12px 14px;margin:14px 0}
.card h3{margin:0 0 8px;font-size:16px}.card h3 span{font-weight:400;color:#5b6673;font-size:14px}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;width:300px}figure img{width:300px;height:auto;display:block;border-radius:4px}
figcaption{font-size:13px;line-height:1.35;margin-top:4px}
figcaption b{font-size:14px}.p{color:#5b6673}
.hit{color:#1a7f37;font-weight:600}.miss{color:#c62828;font-weight:600}
.low{color:#c62828}.pairs{font-size:13px;color:#5b6673;margin-top:6px}
"""


def _size_text(size: Any) -> str:
    return f"{size[0]}×{size[1]}" if isinstance(size, list) else html.escape(str(size))


def _models_table(report: dict[str, Any]) -> list[str]:
    e = html.escape
    out = ["<h2>Models</h2><table><tr><th class=name>model</th><th class=name>file</th><th>input</th><th>layout</th>"
           "<th>preset</th><th class=name>layer</th></tr>"]
    for m in report["models"]:
        out.append(
            f"<tr><td class=name>{e(m['name'])}</td><td class=name>{e(os.path.basename(m['path']))}</td>"
            f"<td>{_size_text(m['input_size'])}</td><td>{e(m['layout'])}</td><td>{e(m['preset'])}</td>"
            f"<td class=name>{e(m.get('layer', ''))}</td></tr>"
        )
    out.append("</table>")
    return out


def _metrics_table(report: dict[str, Any]) -> list[str]:
    """Models × metrics, only the columns with a value; the best of each column marked."""
    e = html.escape
    models = report["models"]
    cols = [c for c in METRIC_COLUMNS if any(m["metrics"].get(c[0]) is not None for m in models)]
    out = ['<h2>Metrics</h2><table class="metrics"><tr><th class=name>model</th>']
    for _, t, better in cols:
        out.append(f"<th>{e(t)}<br><span class=better>{'↑' if better == 'higher' else '↓'} {better} is better</span></th>")
    out.append("</tr>")
    for m in models:
        out.append(f"<tr><td class=name>{e(m['name'])}</td>")
        for key, title, better in cols:
            vals = [x["metrics"].get(key) for x in models if x["metrics"].get(key) is not None]
            v = m["metrics"].get(key)
            best = v is not None and len(vals) > 1 and v == (max(vals) if better == "higher" else min(vals))
            out.append(f"<td{' class=best' if best else ''}>{_fmt(v, 1 if '(%)' in title else 3)}</td>")
        out.append("</tr>")
    out.append("</table>")
    if models:
        met = models[0]["metrics"]
        out.append(f'<p class="sub">{met["images"]} image(s), {met["images_with_boxes"]} with a ground-truth box; '
                   f'deletion/insertion in {met["deletion_steps"]} steps; pointing-game tolerance '
                   f'{met["pointing_tolerance_px"]:g} px.</p>')
    return out


def _agreement_table(report: dict[str, Any]) -> list[str]:
    e = html.escape
    out = ["<h2>Agreement between models</h2><table><tr><th class=name>model A</th><th class=name>model B</th>"
           f"<th>mean Spearman ρ</th><th>mean top-{report['top_percent']:g}% IoU</th></tr>"]
    for p in report["agreement"]["pairs"]:
        out.append(f"<tr><td class=name>{e(p['a'])}</td><td class=name>{e(p['b'])}</td>"
                   f"<td>{_fmt(p['spearman'])}</td><td>{_fmt(p['top_iou'])}</td></tr>")
    out.append("</table>")
    return out


def _gates_table(report: dict[str, Any]) -> list[str]:
    """The gates (onnxcam.gates) with their verdicts, when the run had some."""
    e = html.escape
    gates = report.get("gates")
    if not gates:
        return []
    verdict = "all passed" if gates["passed"] else f"failed (exit code {gates['exit_code']})"
    out = [f"<h2>Gates: {e(verdict)}</h2><table><tr><th></th><th class=name>gate</th><th class=name>subject</th>"
           "<th>value</th><th>images breaking it</th></tr>"]
    for g in gates["conditions"]:
        mark = '<span class=hit>pass</span>' if g["passed"] else '<span class=miss>FAIL</span>'
        broken = f"{len(g['failing_images'])} / {g['images']}" if not g["passed"] and g["images"] else "–"
        out.append(f"<tr><td>{mark}</td><td class=name><code>{e(g['gate'])}</code></td><td class=name>{e(g['subject'])}"
                   f"</td><td>{_fmt(g['value'], 4)}</td><td>{broken}</td></tr>")
    out.append("</table>")
    return out


def _drift_table(report: dict[str, Any]) -> list[str]:
    """Each model's drift from the first (onnxcam.drift), per class, most changed first."""
    e = html.escape
    out: list[str] = []
    for d in report.get("drift", []):
        out.append(f"<h2>Drift: {e(d['old'])} → {e(d['new'])}</h2><table><tr><th class=name>class ({e(d['old'])})</th>"
                   "<th>images</th><th>mean ρ</th><th>mean top-k IoU</th><th>labels changed</th>"
                   "<th>energy moved to forbidden</th></tr>")
        for c in d["classes"] + [{"class": "all", **d["summary"]}]:
            out.append(f"<tr><td class=name>{e(c['class'])}</td><td>{c['images']}</td><td>{_fmt(c['spearman'])}</td>"
                       f"<td>{_fmt(c['top_iou'])}</td><td>{c['labels_changed']}</td>"
                       f"<td>{_fmt(c['energy_moved_to_forbidden'], 4)}</td></tr>")
        out.append("</table>")
    return out


def _caption(name: str, r: dict[str, Any]) -> str:
    e = html.escape
    lines = [f"<b>{e(name)}</b>", f"{e(r['label'])} <span class=p>p = {r['probability']:.3f}</span>",
             f"<span class=p>deletion {r['deletion_auc']:.3f} · insertion {r['insertion_auc']:.3f} · drop {r['drop']:.1f}%</span>"]
    if "pointing_hit" in r:
        hit = "hit" if r["pointing_hit"] else "miss"
        lines.append(f"pointing <span class={hit}>{hit}</span> <span class=p>· energy {r['energy']:.2f} · "
                     f"box IoU {r['localisation_iou']:.2f}</span>")
    if "energy_in_forbidden" in r:
        lines.append(f"<span class=p>energy in forbidden regions {_fmt(r['energy_in_forbidden'])}</span>")
    return "<br>".join(lines)


def card_figures(rec: dict[str, Any], img: np.ndarray, maps: Sequence[np.ndarray], thumb_width: int = 300) -> list[str]:
    """One image's card pictures as PNG data URIs: the photo (ground-truth boxes in green,
    forbidden regions in red), then each model's overlay (boxes in green), `thumb_width` wide."""
    small, s = _thumb(img, thumb_width)
    photo = _draw_boxes(_draw_boxes(small, rec.get("boxes"), s, (0, 200, 0)), rec.get("forbidden"), s, (220, 0, 0))
    out = [png_data_uri(photo)]
    for heat in maps:
        out.append(png_data_uri(_draw_boxes(_thumb(overlay(img, heat), thumb_width)[0], rec.get("boxes"), s, (0, 200, 0))))
    return out


def card_html(rec: dict[str, Any], figures: Sequence[str], names: Sequence[str], top_percent: float) -> list[str]:
    """One image's card: the photo, each model's overlay and caption (`figures` from
    `card_figures`), the pairs."""
    e = html.escape
    ag = rec["agreement"]
    head = f"<h3>{e(rec['image'])}"
    if len(names) > 1:
        cls = " class=low" if ag["spearman"] is not None and ag["spearman"] < 0.5 else ""
        head += (f" <span{cls}>· agreement ρ = {_fmt(ag['spearman'])}, top-{top_percent:g}% IoU = "
                 f"{_fmt(ag['top_iou'])}</span>")
    out = [f'<section class="card">{head}</h3><div class="row">']
    cap = ("photo" + (" · ground truth in green" if rec.get("boxes") else "")
           + (" · forbidden regions in red" if rec.get("forbidden") else ""))
    out.append(f'<figure><img alt="{e(rec["image"])}" src="{figures[0]}"><figcaption class=p>{cap}</figcaption></figure>')
    for name, uri in zip(names, figures[1:]):
        out.append(f'<figure><img alt="{e(name)} on {e(rec["image"])}" src="{uri}">'
                   f'<figcaption>{_caption(name, rec["models"][name])}</figcaption></figure>')
    out.append("</div>")
    if len(ag["pairs"]) > 1:
        out.append('<div class="pairs">' + " · ".join(
            f"{e(p['a'])} vs {e(p['b'])}: ρ {_fmt(p['spearman'])}, IoU {_fmt(p['top_iou'])}" for p in ag["pairs"]) + "</div>")
    out.append("</section>")
    return out


def _page_head(report: dict[str, Any], title: str = "onnxcam review") -> str:
    names = [m["name"] for m in report["models"]]
    e = html.escape
    out: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="sub">{len(names)} model(s) · {len(report["images"])} image(s) · method {e(report["method"])} · '
        f'agreement at each image\'s own size (Spearman ρ, top-{report["top_percent"]:g}% IoU)</p>',
    ]
    out += _gates_table(report) + _models_table(report) + _metrics_table(report)
    if len(names) > 1:
        out += _agreement_table(report) + _drift_table(report)
    out.append(f"<h2>Images{' (lowest agreement first)' if len(names) > 1 else ''}</h2>")
    return "\n".join(out) + "\n"


_PAGE_TAIL = '\n<p class="sub">Generated by onnxcam review. Self-contained: no external resources.</p></body></html>'


def write_report(out: OutputDir, rv: Review) -> tuple[Path, Path]:
    """Write OUT/index.html (its head, then each image's card, its pictures read from the spool, so
    the page is never held whole), then OUT/review.json (last: its presence marks a complete run), each
    atomically through the output writer (inside OUT, no links, no silent replacing)."""
    names = ("index.html", "review.json")
    out.check_free(names)
    out.remove_stale("review.json")
    with out.open_atomic("index.html") as f:
        f.write(_page_head(rv.report).encode("utf-8"))
        names = [m["name"] for m in rv.report["models"]]
        for rec, (offset, length) in zip(rv.report["images"], rv.cards):
            rv.spool.seek(offset)
            card = card_html(rec, json.loads(rv.spool.read(length)), names, rv.report["top_percent"])
            f.write("\n".join(card).encode("utf-8"))
            f.write(b"\n")
        f.write(_PAGE_TAIL.encode("utf-8"))
    page = out.shown("index.html")
    js = out.write_json("review.json", rv.report)
    return page, js


def load_images(paths: Sequence[Path]) -> tuple[list[tuple[str, np.ndarray]], list[dict[str, str]]]:
    """(name, RGB) pairs and one error record per unreadable file. Names are file names, made
    unique with their parent folders where two share one (then with -2, -3, ...)."""
    good, errors = [], []
    for p in paths:
        try:
            good.append((p, load_image(p)))
        except ImageError as exc:
            errors.append({"image": str(p), "error": str(exc)})
    return list(zip(image_names([p for p, _ in good]), [im for _, im in good])), errors


def image_names(paths: Sequence[Path]) -> list[str]:
    """The names eval and review show: file names, made unique with their parent folders where
    two share one (then with -2, -3, ...)."""
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return unique_names([(p.parent.name + "/" + p.name) if p.name in dup else p.name for p in paths])
