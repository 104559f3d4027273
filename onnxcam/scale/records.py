"""Per-image records computed on Ray's actors and gathered on the driver: what `eval --ray` and
`review --ray` share.

Every number eval and review report is either a per-image value or a mean/rate/ranking over the
per-image values (`onnxcam.review.summarise`, `onnxcam.review.ReviewCollector`). So the actors
(`RecordBatches` subclasses) return one JSON record per image, and the driver (`gather`) puts them
back in the listing order and aggregates them with the same code as the local run: the same numbers
whatever the number of workers.

Faults, as for `explain --ray` (`onnxcam.scale.job`): an image that fails is an error row; when
Ray Data gives up the pass because a batch keeps killing its worker, the images it did not finish
go through `onnxcam.scale.quarantine` (one batch per actor call, a dead batch split into single
images), so only an image that kills its worker alone CRASH_TRIES times is lost: an error row
("PATH: the worker process died while evaluating this image ..."), the others counted as usual.

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
from .quarantine import PassFailure, crash_message, pass_failure, quarantine
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


class _Collected:
    """The rows of the actors' result batches as they come (from the Data pass, then from the
    quarantine): (order, path, kept record) per image with a result, (order, error) per failure."""

    def __init__(self, keep: Callable[[int, dict[str, Any]], dict[str, Any]], on_progress: Callable[[int], None],
                 on_error: Callable[[str], None], orders: dict[str, int], doing: str) -> None:
        self.keep, self.on_progress, self.on_error, self.doing = keep, on_progress, on_error, doing
        self.orders = orders  # path -> order in the first listing (a quarantine's read numbers rows afresh)
        self.rows: list[tuple[int, str, dict[str, Any]]] = []
        self.failed: list[tuple[int, dict[str, str]]] = []

    def take(self, batch: dict[str, np.ndarray]) -> None:
        for path, order, rec, err in zip(batch["path"], batch["order"], batch["record"], batch["error"]):
            path, order = str(path), self.orders.get(str(path), int(order))
            if isinstance(err, str) and err:
                self.fail(path, err, order)
            else:
                self.rows.append((order, path, self.keep(order, json.loads(rec))))
        self.on_progress(len(batch["path"]))

    def fail(self, path: str, error: str, order: int = -1) -> None:
        self.failed.append((self.orders.get(path, order), {"image": path, "error": error}))
        self.on_error(error)

    def crashed(self, path: str, reason: str) -> None:
        """An image the quarantine gave up: it killed its worker CRASH_TRIES times alone."""
        self.fail(path, crash_message(path, reason, self.doing))
        self.on_progress(1)

    def seen(self) -> set[str]:
        return {p for _, p, _ in self.rows} | {e["image"] for _, e in self.failed}


def _data_pass(got: _Collected, ds: Any, fn: type, args: dict[str, Any], plan: ActorPlan,
               batch_size: int) -> PassFailure | None:
    """`fn(**args)` over `ds` on a Ray Data actor pool, each result batch to `got`. Returns None,
    or why Ray gave up when its workers kept dying; any other failure is raised. (Returning, not
    handling the failure inside `except`: the traceback would keep the pool's actors and CPUs.)"""
    if ds is None:
        return None
    try:
        for batch in map_on_actors(ds, fn, args, plan, batch_size).iter_batches(batch_size=64, batch_format="numpy"):
            got.take(batch)
    except OnnxcamError:
        raise
    except Exception as exc:  # noqa: BLE001  (Ray wraps the actors' errors; pass_failure raises onnxcam's)
        failure = pass_failure(exc)
        if not failure.workers_died:
            raise
        return failure
    return None


def _quarantine_rest(got: _Collected, fn: type, args: dict[str, Any], sources: Sequence[str], options: RayOptions,
                     plan: ActorPlan, batch_size: int, exclude: str | None) -> None:
    """The images a Data pass whose workers kept dying did not finish, through `quarantine`."""
    rest = read_sources(sources, options.image_column, exclude=exclude, skip=got.seen(),
                        read_cpus=min(1.0, plan.reserve), parallelism=4 * plan.actors)
    if rest.ds is not None:
        log.warning("a worker kept dying: evaluating the %s image(s) left one batch per call, to find what kills it",
                    "other" if rest.total is None else rest.total)
        quarantine(rest.ds.iter_batches(batch_size=batch_size, batch_format="numpy"), fn, args, plan, got.take,
                   got.crashed)


def gather(fn: type, ctor: Callable[[ActorPlan], dict[str, Any]], sources: Sequence[str], options: RayOptions,
           batch_size: int, on_progress: Callable[[int], None] = lambda n: None,
           on_total: Callable[[int | None], None] = lambda n: None,
           on_error: Callable[[str], None] = lambda m: None,
           keep: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda order, rec: rec,
           exclude: str | None = None, doing: str = "evaluating") -> Gathered:
    """Run `fn(**ctor(plan))` (a `RecordBatches`) over every image of `sources` on a pool of actors
    and gather its rows; `keep(order, record)` is what is kept of each record (e.g. nothing, once
    the caller has consumed it as it came); `exclude`: a folder not searched for images (OUT);
    `doing`: what the actors do, for the error of an image that kills them (see the module docstring).
    An expected image that came back with neither a record nor an error (its worker kept
    crashing) is an error too: never silently missing."""
    ray = connect(options.address)
    plan = plan_actors(cluster_shape(), options.actors, options.cpus_per_actor, options.gpus)
    src = read_sources(sources, options.image_column, exclude=exclude, read_cpus=min(1.0, plan.reserve),
                       parallelism=4 * plan.actors)
    on_total(src.total)
    expected = src.expected()
    ray.data.DataContext.get_current().max_errored_blocks = -1 if expected is not None else 0
    got, args = _Collected(keep, on_progress, on_error, src.orders(), doing), ctor(plan)
    failure = _data_pass(got, src.ds, fn, args, plan, batch_size)
    if failure is not None:  # workers kept dying (any other failure was raised)
        log.info("Ray Data gave up the pass: %s", failure.reason)
        _quarantine_rest(got, fn, args, sources, options, plan, batch_size, exclude)
    seen = got.seen()
    for p in expected or []:
        if p not in seen:
            got.fail(p, f"{p}: lost: its worker crashed repeatedly; run again")
    rows, failed = sorted(got.rows, key=lambda r: r[0]), got.failed
    if expected is not None:  # errors in the listing order, as the local run lists them
        position = {p: k for k, p in enumerate(expected)}
        failed.sort(key=lambda t: position.get(t[1]["image"], len(position)))
    errors = [e for _, e in failed]
    return Gathered([(p, rec) for _, p, rec in rows], errors, src, plan)
