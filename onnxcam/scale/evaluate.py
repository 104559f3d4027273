"""`onnxcam eval --ray`: explanation metrics over a dataset, per image on the actors, averaged here.

Every metric of `onnxcam.review.evaluate` is a per-image number (drop, deletion/insertion AUC,
ROAD, pointing hit, energy, box IoU); the summary is means and rates over those records
(`review.summarise`). So the actors (`EvaluateBatches`) return each image's record and the driver
summarises all of them: the same numbers as one process, whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..annotations import Annotations
from ..errors import OnnxcamError, UsageError
from ..explainer import Explainer
from ..image import decode_image
from ..output import json_safe
from ..preprocessing import InputPolicy
from ..review import ModelRun, evaluate, image_names, summarise
from .cluster import cluster_shape, connect, plan_actors
from .dataset import map_on_actors, model_payload
from .job import RayOptions
from .sources import read_sources

log = logging.getLogger(__name__)


class _ActorRun(ModelRun):
    """A ModelRun inside an actor: the driver describes the model (path, sha256); the actor may
    have only its bytes, so it describes nothing."""

    def describe(self) -> dict[str, Any]:
        return {}


class EvaluateBatches:
    """Per-image metric records of a batch of encoded images (columns path, bytes, order,
    read_error), inside a Ray actor; an image that fails is a row with `error`, never a failed
    batch. See `onnxcam.review.evaluate` for the arguments."""

    def __init__(self, model: str | bytes, method: str, policy: InputPolicy, notes: Annotations, steps: int,
                 road: bool, tolerance: float, batch_size: int, layer: str | None = None, target: Any = None,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        source = onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray)) else model
        ex = Explainer(source, method=method, layer=layer, providers=providers, threads=threads)
        self.run = _ActorRun("model", "", ex, policy, 32, target)
        self.notes, self.steps, self.road, self.tolerance, self.batch_size = notes, steps, road, tolerance, batch_size

    def _records(self, items: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
        ev = evaluate(self.run, items, self.notes.boxes, self.steps, self.road, self.batch_size, self.tolerance,
                      notes=self.notes)
        return [json_safe({**r, "layer": ev.layer}) for r in ev.images]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        records: list[str] = [""] * len(paths)
        errors: list[str] = [""] * len(paths)
        good: list[tuple[int, np.ndarray]] = []
        for i, path in enumerate(paths):
            try:
                if batch["read_error"][i]:
                    raise OnnxcamError(str(batch["read_error"][i]))
                good.append((i, decode_image(bytes(batch["bytes"][i]), path)))
            except OnnxcamError as exc:
                errors[i] = str(exc)
        groups = [good] if good else []
        while groups:
            group = groups.pop()
            try:
                for (i, _), rec in zip(group, self._records([(paths[i], img) for i, img in group])):
                    records[i] = json.dumps(rec)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001  (find the image that fails; keep the others)
                if len(group) == 1:
                    errors[group[0][0]] = f"{paths[group[0][0]]}: {type(exc).__name__}: {exc}"
                else:
                    groups.extend([g] for g in group)
        return {"path": np.asarray(paths, dtype=object), "order": np.asarray(batch["order"], np.int64),
                "record": np.asarray(records, dtype=object), "error": np.asarray(errors, dtype=object)}


def evaluate_sources(run: ModelRun, sources: Sequence[str], notes: Annotations | None = None, steps: int = 50,
                     road: bool = False, tolerance: float = 15.0, batch_size: int = 8,
                     options: RayOptions | None = None, on_progress: Callable[[int], None] = lambda n: None,
                     on_total: Callable[[int | None], None] = lambda n: None,
                     on_error: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """`onnxcam eval`'s JSON ({model, metrics, images, errors}) for every image of `sources`,
    computed on Ray. `run`: the model loaded on the driver (its policy, layer and target go to the
    actors); `notes`: boxes, forbidden regions, true labels (onnxcam.annotations)."""
    opts = options or RayOptions()
    ray = connect(opts.address)
    plan = plan_actors(cluster_shape(), opts.actors, opts.cpus_per_actor, opts.gpus)
    src = read_sources(sources, opts.image_column, read_cpus=min(1.0, plan.reserve), parallelism=4 * plan.actors)
    on_total(src.total)
    expected = src.expected()
    ray.data.DataContext.get_current().max_errored_blocks = -1 if expected is not None else 0
    model = model_payload(run.path) if opts.address is not None else run.path
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if opts.gpus else ["CPUExecutionProvider"]
    ctor = {"model": model, "method": run.explainer.method.name, "policy": run.policy, "notes": notes or Annotations(),
            "steps": steps, "road": road, "tolerance": tolerance, "batch_size": batch_size,
            "layer": run.explainer.layer_name, "target": run.target, "providers": providers, "threads": plan.threads}
    rows: list[tuple[int, str, dict[str, Any]]] = []
    errors: list[dict[str, str]] = []
    if src.ds is not None:
        for batch in map_on_actors(src.ds, EvaluateBatches, ctor, plan, batch_size).iter_batches(
                batch_size=64, batch_format="numpy"):
            for path, order, rec, err in zip(batch["path"], batch["order"], batch["record"], batch["error"]):
                if isinstance(err, str) and err:
                    errors.append({"image": str(path), "error": err})
                    on_error(err)
                else:
                    rows.append((int(order), str(path), json.loads(rec)))
            on_progress(len(batch["path"]))
    seen = {p for _, p, _ in rows} | {e["image"] for e in errors}
    for p in expected or []:
        if p not in seen:
            errors.append({"image": p, "error": f"{p}: lost: its worker crashed repeatedly; run again"})
            on_error(errors[-1]["error"])
    rows.sort(key=lambda r: r[0])
    names = image_names([Path(p) for _, p, _ in rows])
    layer = next((rec.get("layer", "") for _, _, rec in rows), "")
    records = [{**{k: v for k, v in rec.items() if k != "layer"}, "image": name} for name, (_, _, rec) in zip(names, rows)]
    model_info = {**run.describe(), "layer": layer}
    return {"model": model_info, "metrics": summarise(records, steps, tolerance), "images": records, "errors": errors}
