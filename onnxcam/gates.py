"""Gates: conditions on the numbers of an eval or review report, for deployment pipelines.

A gate is one condition on one metric, written as text (the CLI's ``--require``)::

    condition := [scope "."] metric op number ["%"]
    scope     := "model[" NAME "]"                 one model (its name in the report)
               | "agreement(" NAME "," NAME ")"   one pair of models, in that order (A, B)
    op        := "<=" | ">=" | "<" | ">"
    metric    := a name of METRICS (per model) or PAIR_METRICS (per pair), or any other number
                 in a model's "metrics" of the report

Examples: ``pointing_game>=0.8``, ``model[biased].energy_in_forbidden<=0.05``,
``agreement(deployed,candidate).spearman>=0.6``, ``accuracy>=95%``. Without a scope a model
metric must hold for every model and a pair metric for every pair. Spaces are allowed between
tokens; NAME may hold any character but the closing bracket (and, in a pair, the comma).

Units: every metric is compared as a share or a plain value. ``x%`` means x/100 everywhere; the
report keeps some metrics in percent (pointing_game, accuracy, average_drop,
increase_in_confidence) and a gate reads them as shares, so ``pointing_game>=0.8`` and
``pointing_game>=80%`` are one condition. A threshold outside a metric's range (a condition that
can never fail or never pass, e.g. ``pointing_game>=80``) is a usage error.

Outcomes: a condition holds or fails on the model's (pair's) mean over the images that have the
metric; where the metric has a per-image value, the images whose own value breaks the condition
are listed with it (``failing_images``). A metric the report lacks (``pointing_game`` without
boxes, an unknown name or model) is a usage error (exit code 2); a metric the report has but with
no value (``null``: e.g. Spearman's ρ of constant maps), as a mean or on any one image, fails: a
map that cannot be measured cannot be shown to satisfy the condition. A failed gate exits with
GATE_FAILED_EXIT_CODE (3), one stderr line per failed condition.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .errors import UsageError

GATE_FAILED_EXIT_CODE = 3
"""The exit code of a command whose gates failed (0 ok, 1 error, 2 usage error)."""

def _image_value(v: Any, scale: float) -> float | None:
    """An image record's value as gates read it: bool → 1/0, a ROAD curve → its mean, / scale."""
    if v is None:
        return None
    if isinstance(v, list):
        return sum(float(x) for x in v) / len(v) / scale if v else None
    return float(v) / scale


@dataclass(frozen=True)
class Metric:
    """A metric gates know: where it lives, its unit and range, what it needs, its per-image value."""

    name: str
    doc: str
    percent: bool = False  # stored in percent in the report; gates read it as a share
    low: float = 0.0  # range of the value as gates read it
    high: float = 1.0
    per_image: str | None = None  # the key of its per-image value in an image record
    image_scale: float = 1.0  # the per-image value is divided by it (percent → share)
    needs: str = ""  # what provides it (for the usage error when it is missing)
    antisymmetric: bool = False  # pair metrics: (B, A) = −(A, B)
    count: str = ""  # the summary key counting the images that had what it needs


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("pointing_game", "share of images whose map maximum lies on a ground-truth box (within the "
           "tolerance)", True, per_image="pointing_hit", needs="--boxes",
           count="images_with_boxes"),
    Metric("energy_pointing_game", "mean share of the map's energy inside the ground-truth boxes",
           per_image="energy", needs="--boxes", count="images_with_boxes"),
    Metric("localisation_iou", "mean IoU of the CAM paper's box with the ground-truth box",
           per_image="localisation_iou", needs="--boxes", count="images_with_boxes"),
    Metric("energy_in_forbidden", "mean share of the map's energy inside the forbidden regions "
           "(images that have some)", per_image="energy_in_forbidden", needs="--forbidden",
           count="images_with_forbidden"),
    Metric("accuracy", "share of labelled images whose predicted label is the true one", True,
           per_image="correct", needs="--truth", count="images_with_truth"),
    Metric("average_drop", "mean drop of the target's probability on the map-masked image", True,
           per_image="drop", image_scale=100.0),
    Metric("increase_in_confidence", "share of images whose probability rises on the masked image", True,
           per_image="increase"),
    Metric("deletion_auc", "mean area under the deletion curve", per_image="deletion_auc"),
    Metric("insertion_auc", "mean area under the insertion curve", per_image="insertion_auc"),
    Metric("road_morf", "mean ROAD most-relevant-first curve", per_image="road_morf", needs="--road"),
    Metric("road_lerf", "mean ROAD least-relevant-first curve", per_image="road_lerf", needs="--road"),
    Metric("images", "number of images evaluated", low=0.0, high=math.inf),
)}
"""Per-model metrics (the keys of a model's ``metrics`` in eval/review JSON)."""

PAIR_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("spearman", "mean Spearman ρ between the two models' maps", low=-1.0, per_image="spearman",
           needs="two models"),
    Metric("top_iou", "mean IoU of the two maps' top-20% regions", per_image="top_iou", needs="two models"),
    Metric("label_agreement", "share of images both models give the same label", per_image="same_label",
           needs="two models"),
    Metric("energy_moved_to_forbidden", "mean of B's minus A's energy_in_forbidden", low=-1.0,
           per_image="energy_moved_to_forbidden", needs="--forbidden and two models", antisymmetric=True),
)}
"""Per-pair metrics (``agreement.pairs`` of review JSON)."""

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}

_CONDITION = re.compile(
    r"""^\s*(?:(?P<scope>model\s*\[(?P<model>[^\]]+)\]|agreement\s*\((?P<a>[^,)]+),(?P<b>[^,)]+)\))\s*\.\s*)?
        (?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*
        (?P<op><=|>=|<|>|==|!=|=)\s*
        (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<pct>%)?\s*$""",
    re.VERBOSE,
)

GRAMMAR_HELP = ("write [model[NAME]. | agreement(A,B).]METRIC OP NUMBER[%] with OP one of <= >= < >, "
                "e.g. 'pointing_game>=0.8' or 'model[biased].energy_in_forbidden<=0.05'")


@dataclass(frozen=True)
class Condition:
    """One parsed gate. `threshold` is a share or plain value (``80%`` → 0.8)."""

    text: str
    metric: str
    op: str
    threshold: float
    model: str | None = None  # model[NAME]
    pair: tuple[str, str] | None = None  # agreement(A,B)

    @property
    def is_pair(self) -> bool:
        return self.pair is not None or (self.model is None and self.metric in PAIR_METRICS)

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


def parse_condition(text: str) -> Condition:
    """One gate's text → a Condition; UsageError naming the text and the grammar otherwise."""
    m = _CONDITION.match(text)
    if not m:
        raise UsageError(f"gate {text!r} is not a condition: {GRAMMAR_HELP}")
    op = m["op"]
    if op not in OPS:
        raise UsageError(f"gate {text!r}: operator {op!r} is not allowed (maps' numbers are not exact): "
                         f"use one of {' '.join(OPS)}")
    threshold = float(m["number"]) / (100.0 if m["pct"] else 1.0)
    if not math.isfinite(threshold):
        raise UsageError(f"gate {text!r}: the threshold is not a finite number")
    metric = m["metric"]
    model = m["model"].strip() if m["model"] else None
    pair = (m["a"].strip(), m["b"].strip()) if m["a"] else None
    if model is not None and metric in PAIR_METRICS:
        raise UsageError(f"gate {text!r}: {metric} is a metric of a pair of models; write "
                         f"agreement(A,B).{metric}")
    if pair is not None and metric not in PAIR_METRICS:
        raise UsageError(f"gate {text!r}: {metric} is not a pair metric; pair metrics: {', '.join(PAIR_METRICS)}")
    if model == "" or (pair is not None and "" in pair):
        raise UsageError(f"gate {text!r}: empty model name")
    known = PAIR_METRICS.get(metric) if (pair is not None or metric in PAIR_METRICS) else METRICS.get(metric)
    if known is not None:
        _check_range(text, known, op, threshold)
    return Condition(text.strip(), metric, op, threshold, model, pair)


def _check_range(text: str, metric: Metric, op: str, t: float) -> None:
    """A threshold that makes the condition always true or never true is a usage error."""
    lo, hi = metric.low, metric.high
    never = (op == ">=" and t > hi) or (op == ">" and t >= hi) or (op == "<=" and t < lo) or (op == "<" and t <= lo)
    always = (op == ">=" and t <= lo) or (op == ">" and t < lo) or (op == "<=" and t >= hi) or (op == "<" and t > hi)
    if never or always:
        unit = " (read as a share: write 0.8 or 80%)" if metric.percent else ""
        raise UsageError(f"gate {text!r} can {'never pass' if never else 'never fail'}: {metric.name} lies in "
                         f"[{lo:g}, {hi:g}]{unit}")


def parse_conditions(texts: Iterable[str]) -> list[Condition]:
    return [parse_condition(t) for t in texts]


# -- the numbers a report holds -------------------------------------------------------------------
@dataclass
class Facts:
    """The numbers gates read, as shares: per model (and per image), per ordered pair (and per image).

    models: model → metric → value; images: model → metric → [(image, value)];
    pairs / pair_images: the same keyed by (A, B)."""

    models: dict[str, dict[str, float | None]] = field(default_factory=dict)
    images: dict[str, dict[str, list[tuple[str, float | None]]]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], dict[str, float | None]] = field(default_factory=dict)
    pair_images: dict[tuple[str, str], dict[str, list[tuple[str, float | None]]]] = field(default_factory=dict)


def _model_values(metrics: dict[str, Any]) -> dict[str, float | None]:
    """A model's summary as gates read it: only the metrics the run computed, percent → share."""
    out: dict[str, float | None] = {}
    for key, v in metrics.items():
        if isinstance(v, bool) or not (v is None or isinstance(v, (int, float))):
            continue
        known = METRICS.get(key)
        if v is None and (known is None or (known.needs and not metrics.get(known.count))):
            continue  # not computed in this run (no boxes, no --road...): missing, not undefined
        out[key] = None if v is None else float(v) / (100.0 if known is not None and known.percent else 1.0)
    return out


def _per_image(records: Sequence[tuple[str, dict[str, Any]]], table: dict[str, Metric]
               ) -> dict[str, list[tuple[str, float | None]]]:
    """metric → [(image, value)] over the records that have the metric (a null value: undefined)."""
    return {name: [(image, _image_value(rec[m.per_image], m.image_scale)) for image, rec in records
                   if m.per_image in rec]
            for name, m in table.items() if m.per_image is not None}


def facts_from_report(report: dict[str, Any]) -> Facts:
    """The Facts of an eval JSON ({"model", "metrics", "images"}) or a review JSON
    ({"models": [...], "agreement": {"pairs"}, "images": [...]})."""
    facts = Facts()
    if "model" in report and "metrics" in report:  # eval
        name = str(report["model"].get("name") or report["model"].get("path"))
        facts.models[name] = _model_values(report["metrics"])
        facts.images[name] = _per_image([(r["image"], r) for r in report.get("images", [])], METRICS)
        return facts
    for m in report.get("models", []):
        facts.models[m["name"]] = _model_values(m["metrics"])
        recs = [(im["image"], im["models"][m["name"]]) for im in report.get("images", []) if m["name"] in im["models"]]
        facts.images[m["name"]] = _per_image(recs, METRICS)
    for p in report.get("agreement", {}).get("pairs", []):
        a, b = p["a"], p["b"]
        values = {k: (None if p.get(k) is None else float(p[k])) for k in PAIR_METRICS if k in p}
        recs = [(im["image"], q) for im in report.get("images", []) for q in im["agreement"]["pairs"]
                if q["a"] == a and q["b"] == b]
        per = _per_image(recs, {k: v for k, v in PAIR_METRICS.items() if k in values})
        facts.pairs[(a, b)], facts.pair_images[(a, b)] = values, per
        flip = {k: (-1.0 if PAIR_METRICS[k].antisymmetric else 1.0) for k in values}
        facts.pairs[(b, a)] = {k: (None if v is None else flip[k] * v) for k, v in values.items()}
        facts.pair_images[(b, a)] = {k: [(i, None if v is None else flip[k] * v) for i, v in vs] for k, vs in per.items()}
    return facts


# -- checking -------------------------------------------------------------------------------------
def check_names(conditions: Sequence[Condition], models: Sequence[str], provided: Iterable[str] = ()) -> None:
    """Before any work: every named model exists, a pair needs two models, and each known metric's
    input (--boxes, --forbidden, --truth, --road) was given. UsageError otherwise."""
    given = set(provided) | {""}
    for c in conditions:
        for name in ([c.model] if c.model else []) + list(c.pair or ()):
            if name not in models:
                raise UsageError(f"gate {c.text!r}: no model named {name!r}; models: {', '.join(models)}")
        if c.pair is not None and c.pair[0] == c.pair[1]:
            raise UsageError(f"gate {c.text!r}: a pair needs two different models")
        if c.is_pair and len(models) < 2:
            raise UsageError(f"gate {c.text!r}: {c.metric} compares two models; give at least two")
        known = PAIR_METRICS.get(c.metric) if c.is_pair else METRICS.get(c.metric)
        needs = [n for n in (known.needs.split(" and ") if known else []) if n != "two models"]
        missing = [n for n in needs if n not in given]
        if missing:
            raise UsageError(f"gate {c.text!r}: {c.metric} needs {' and '.join(missing)}")


@dataclass
class Outcome:
    """One condition on one subject (a model or an ordered pair)."""

    condition: Condition
    subject: str
    value: float | None
    passed: bool
    failing_images: list[tuple[str, float | None]] = field(default_factory=list)
    images: int = 0  # images with a value

    @property
    def percent(self) -> bool:
        known = METRICS.get(self.condition.metric)
        return bool(known and known.percent and not self.condition.is_pair)

    def value_text(self, v: float | None = None) -> str:
        v = self.value if v is None else v
        if v is None:
            return "undefined"
        return f"{v:.4g}" + (f" ({100 * v:.1f}%)" if self.percent else "")

    def line(self) -> str:
        """The one stderr line of a failed condition."""
        c = self.condition
        text = (f"gate failed: {c.text}: {self.subject} {c.metric} = {self.value_text()}, "
                f"required {c.op} {c.threshold:g}")
        undefined = sum(1 for _, x in self.failing_images if x is None)
        if undefined:
            text += f"; undefined on {undefined} image(s)"
        if self.failing_images:
            shown = ", ".join(i for i, _ in self.failing_images[:5])
            more = f" and {len(self.failing_images) - 5} more" if len(self.failing_images) > 5 else ""
            text += f"; {len(self.failing_images)} of {self.images} image(s) break it: {shown}{more}"
        return text

    def to_json(self) -> dict[str, Any]:
        c = self.condition
        return {"gate": c.text, "subject": self.subject, "metric": c.metric, "op": c.op, "threshold": c.threshold,
                "value": self.value, "passed": self.passed, "images": self.images,
                "failing_images": [{"image": i, "value": v} for i, v in self.failing_images]}


def _subjects(c: Condition, facts: Facts) -> list[tuple[str, dict[str, float | None], dict]]:
    if c.is_pair:
        keys = [c.pair] if c.pair else [k for k in facts.pairs if list(facts.models).index(k[0])
                                         < list(facts.models).index(k[1])]
        if c.pair and c.pair not in facts.pairs:
            raise UsageError(f"gate {c.text!r}: the report has no pair {c.pair[0]}, {c.pair[1]}; "
                             f"models: {', '.join(facts.models)}")
        if not keys:
            raise UsageError(f"gate {c.text!r}: {c.metric} compares two models; the report has one")
        return [(f"{a} vs {b}", facts.pairs[(a, b)], facts.pair_images.get((a, b), {})) for a, b in keys]
    names = [c.model] if c.model else list(facts.models)
    for n in names:
        if n not in facts.models:
            raise UsageError(f"gate {c.text!r}: no model named {n!r}; models: {', '.join(facts.models)}")
    return [(n, facts.models[n], facts.images.get(n, {})) for n in names]


def evaluate_gates(conditions: Sequence[Condition], facts: Facts) -> list[Outcome]:
    """Each condition on each of its subjects. UsageError when the report lacks a metric."""
    outcomes = []
    for c in conditions:
        for subject, values, per_image in _subjects(c, facts):
            if c.metric not in values:
                table = PAIR_METRICS if c.is_pair else METRICS
                known = table.get(c.metric)
                hint = (f" (it needs {known.needs} for at least one image)" if known and known.needs else
                        "" if known else f"; known: {', '.join(sorted(values))}")
                raise UsageError(f"gate {c.text!r}: the report has no {c.metric} for {subject}{hint}")
            v = values[c.metric]
            images = per_image.get(c.metric, [])
            worst_first = c.op in ("<=", "<")  # the largest values break an upper bound most
            failing = sorted(((i, x) for i, x in images if x is None or not c.holds(x)),
                             key=lambda ix: (ix[1] is not None, -ix[1] if ix[1] is not None and worst_first
                                             else (ix[1] or 0.0)))
            # an image where the metric is undefined (a constant or all-zero map) cannot be shown
            # to satisfy the condition: the gate fails, whatever the mean over the others
            passed = v is not None and math.isfinite(v) and c.holds(v) and all(x is not None for _, x in images)
            outcomes.append(Outcome(c, subject, v, passed, failing if not passed else [], len(images)))
    return outcomes


def gate_report(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The gates' part of a report's JSON."""
    return {"passed": all(o.passed for o in outcomes), "exit_code": 0 if all(o.passed for o in outcomes)
            else GATE_FAILED_EXIT_CODE, "conditions": [o.to_json() for o in outcomes]}
