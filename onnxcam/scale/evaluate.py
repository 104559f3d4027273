"""`onnxcam eval --ray`: explanation metrics over a dataset, per image on the actors, averaged here.

Every metric of `onnxcam.review.evaluate` is a per-image number (drop, deletion/insertion AUC,
ROAD, pointing hit, energy, box IoU); the summary is means and rates over those records
(`review.summarise`). So the actors (`EvaluateBatches`) return each image's record and the driver
summarises all of them (`onnxcam.scale.records`): the same numbers as one process, whatever the
number of workers.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..annotations import Annotations
from ..explainer import Explainer
from ..output import json_safe
from ..preprocessing import InputPolicy
from ..review import ModelRun, evaluate, summarise
from .cluster import ActorPlan
from .job import RayOptions
from .records import Gathered, RecordBatches, gather, model_for_actors, providers_for

log = logging.getLogger(__name__)


class _ActorRun(ModelRun):
    """A ModelRun inside an actor: the driver describes the model (path, sha256); the actor may
    have only its bytes, so it describes nothing."""

    def describe(self) -> dict[str, Any]:
        return {}


def actor_run(name: str, model: str | bytes, method: str, policy: InputPolicy, layer: str | None, target: Any,
              providers: Sequence[str] | None, threads: int | None) -> ModelRun:
    """A model loaded inside an actor (from its bytes or a path), with the driver's policy and target."""
    source = onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray)) else model
    ex = Explainer(source, method=method, layer=layer, providers=providers, threads=threads)
    return _ActorRun(name, "", ex, policy, 32, target)


def actor_args(run: ModelRun, options: RayOptions, plan: ActorPlan) -> dict[str, Any]:
    """What an actor needs to rebuild `run` (`actor_run`'s arguments)."""
    return {"model": model_for_actors(run.path, options), "method": run.explainer.method.name, "policy": run.policy,
            "layer": run.explainer.layer_name, "target": run.target, "providers": providers_for(options),
            "threads": plan.threads}


class EvaluateBatches(RecordBatches):
    """Per-image metric records of a batch of encoded images (columns path, bytes, order,
    read_error), inside a Ray actor; an image that fails is a row with `error`, never a failed
    batch. See `onnxcam.review.evaluate` for the arguments."""

    def __init__(self, model: str | bytes, method: str, policy: InputPolicy, notes: Annotations, steps: int,
                 road: bool, tolerance: float, batch_size: int, layer: str | None = None, target: Any = None,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.run = actor_run("model", model, method, policy, layer, target, providers, threads)
        self.notes, self.steps, self.road, self.tolerance, self.batch_size = notes, steps, road, tolerance, batch_size

    def _results(self, items: list[tuple[str, np.ndarray]]) -> list[dict[str, Any] | str]:
        ev = evaluate(self.run, items, self.notes.boxes, self.steps, self.road, self.batch_size, self.tolerance,
                      notes=self.notes)
        return [json_safe({**r, "layer": ev.layer}) for r in ev.images]


def evaluate_sources(run: ModelRun, sources: Sequence[str], notes: Annotations | None = None, steps: int = 50,
                     road: bool = False, tolerance: float = 15.0, batch_size: int = 8,
                     options: RayOptions | None = None, on_progress: Callable[[int], None] = lambda n: None,
                     on_total: Callable[[int | None], None] = lambda n: None,
                     on_error: Callable[[str], None] = lambda m: None,
                     exclude: str | None = None,
                     actor_class: type[EvaluateBatches] = EvaluateBatches) -> tuple[dict[str, Any], Gathered]:
    """`onnxcam eval`'s JSON ({model, metrics, images, errors}) for every image of `sources`,
    computed on Ray, and what the actors returned (`Gathered`: its `items()` read images again
    for a CI summary). `run`: the model loaded on the driver (its policy, layer and target go to
    the actors); `notes`: boxes, forbidden regions, true labels (onnxcam.annotations); `exclude`:
    a folder not searched for images (OUT); `actor_class`: `EvaluateBatches` or a subclass (e.g.
    another decoder)."""
    opts = options or RayOptions()
    ctor = lambda plan: {**actor_args(run, opts, plan), "notes": notes or Annotations(), "steps": steps,  # noqa: E731
                         "road": road, "tolerance": tolerance, "batch_size": batch_size}
    got = gather(actor_class, ctor, sources, opts, batch_size, on_progress, on_total, on_error, exclude=exclude)
    layer = next((rec.get("layer", "") for _, rec in got.rows), "")
    records = [{**{k: v for k, v in rec.items() if k != "layer"}, "image": name}
               for name, (_, rec) in zip(got.names(), got.rows)]
    model_info = {**run.describe(), "layer": layer}
    report = {"model": model_info, "metrics": summarise(records, steps, tolerance), "images": records,
              "errors": got.errors}
    return report, got
