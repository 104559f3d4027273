"""Per-image records computed on Ray's actors and gathered on the driver: what `eval --ray` and
`review --ray` share.

Every number eval and review report is either a per-image value or a mean/rate/ranking over the
per-image values (`onnxcam.review.summarise`, `onnxcam.review.ReviewCollector`). So the actors
(`RecordBatches` subclasses) return one JSON record per image, and the driver (`gather`) puts them
back in the listing order and aggregates them with the same code as the local run: the same numbers
whatever the number of workers.

The driver can also read one image again (`Gathered.loader`): the CI summary's thumbnails show the
few images that break a gate, and are made here, as the local run makes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import OnnxcamError, UsageError
from ..image import decode_image
from ..review import Loader, image_names
from .cluster import ActorPlan, cluster_shape, connect, plan_actors
from .dataset import map_on_actors
from .job import RayOptions
from .sources import ImageSource, read_row, read_sources

log = logging.getLogger(__name__)


class RecordBatches:
    """The callable `Dataset.map_batches` runs in each actor: decodes a batch of encoded images
    (columns path, bytes, order, read_error) and returns per image `record` (JSON) or `error`.
    Subclasses build their models in `__init__` and define `_results`. An image that fails is a
    row with `error`, never a failed batch: a batch that raises is split until the culprit is alone."""

    def _results(self, items: list[tuple[str, np.ndarray]]) -> list[dict[str, Any] | str]:
        """Per (path, RGB) item: its record, or why it has none."""
        raise NotImplementedError

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
                for (i, _), got in zip(group, self._results([(paths[i], img) for i, img in group])):
                    if isinstance(got, str):
                        errors[i] = got
                    else:
                        records[i] = json.dumps(got)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001  (find the image that fails; keep the others)
                if len(group) == 1:
                    errors[group[0][0]] = str(exc) if isinstance(exc, OnnxcamError) else \
                        f"{paths[group[0][0]]}: {type(exc).__name__}: {exc}"
                else:
                    groups.extend([g] for g in group)
        return {"path": np.asarray(paths, dtype=object), "order": np.asarray(batch["order"], np.int64),
                "record": np.asarray(records, dtype=object), "error": np.asarray(errors, dtype=object)}


@dataclass
class Gathered:
    """What the actors returned, in the listing order: (path, record) per image that has a
    result, error records ({image: path, error}) for the others, the source and the actor plan."""

    rows: list[tuple[str, dict[str, Any]]]
    errors: list[dict[str, str]]
    source: ImageSource
    plan: ActorPlan

    def names(self) -> list[str]:
        """The images' names as eval and review show them (`onnxcam.review.image_names`)."""
        return image_names([Path(p) for p, _ in self.rows])

    def loader(self, path: str) -> Loader:
        """Decodes image `path` again, read here on the driver (for the few a CI summary shows)."""
        return lambda: decode_image(read_row(self.source, path), path)

    def items(self) -> list[tuple[str, Loader]]:
        """(name, loader) per image with a result."""
        return [(name, self.loader(p)) for name, (p, _) in zip(self.names(), self.rows)]


def model_for_actors(path: str, options: RayOptions) -> str | bytes:
    """The model as the actors get it: its bytes on a cluster (`model_payload`), else its path."""
    from .dataset import model_payload

    return model_payload(path) if options.address is not None else path


def providers_for(options: RayOptions) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if options.gpus else ["CPUExecutionProvider"]


def gather(fn: type, ctor: Callable[[ActorPlan], dict[str, Any]], sources: Sequence[str], options: RayOptions,
           batch_size: int, on_progress: Callable[[int], None] = lambda n: None,
           on_total: Callable[[int | None], None] = lambda n: None,
           on_error: Callable[[str], None] = lambda m: None,
           keep: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda order, rec: rec,
           exclude: str | None = None) -> Gathered:
    """Run `fn(**ctor(plan))` (a `RecordBatches`) over every image of `sources` on a pool of actors
    and gather its rows; `keep(order, record)` is what is kept of each record (e.g. nothing, once
    the caller has consumed it as it came); `exclude`: a folder not searched for images (OUT).
    An expected image that came back with neither a record nor an error (its worker kept
    crashing) is an error too: never silently missing."""
    ray = connect(options.address)
    plan = plan_actors(cluster_shape(), options.actors, options.cpus_per_actor, options.gpus)
    src = read_sources(sources, options.image_column, exclude=exclude, read_cpus=min(1.0, plan.reserve),
                       parallelism=4 * plan.actors)
    on_total(src.total)
    expected = src.expected()
    ray.data.DataContext.get_current().max_errored_blocks = -1 if expected is not None else 0
    rows: list[tuple[int, str, dict[str, Any]]] = []
    failed: list[tuple[int, dict[str, str]]] = []
    if src.ds is not None:
        for batch in map_on_actors(src.ds, fn, ctor(plan), plan, batch_size).iter_batches(
                batch_size=64, batch_format="numpy"):
            for path, order, rec, err in zip(batch["path"], batch["order"], batch["record"], batch["error"]):
                if isinstance(err, str) and err:
                    failed.append((int(order), {"image": str(path), "error": err}))
                    on_error(err)
                else:
                    rows.append((int(order), str(path), keep(int(order), json.loads(rec))))
            on_progress(len(batch["path"]))
    seen = {p for _, p, _ in rows} | {e["image"] for _, e in failed}
    for p in expected or []:
        if p not in seen:
            failed.append((-1, {"image": p, "error": f"{p}: lost: its worker crashed repeatedly; run again"}))
            on_error(failed[-1][1]["error"])
    rows.sort(key=lambda r: r[0])
    if expected is not None:  # errors in the listing order, as the local run lists them
        position = {p: k for k, p in enumerate(expected)}
        failed.sort(key=lambda t: position.get(t[1]["image"], len(position)))
    errors = [e for _, e in failed]
    return Gathered([(p, rec) for _, p, rec in rows], errors, src, plan)
