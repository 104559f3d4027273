"""`explain_dataset`: explain every image of a Ray Dataset on a pool of actors.

    >>> import ray, onnxcam.scale as oc                                   # doctest: +SKIP
    >>> ds, _ = oc.read_sources(["s3://bucket/val/"])                      # doctest: +SKIP
    >>> out = oc.explain_dataset(ds, "model.onnx", method="gradcam", actors=8)   # doctest: +SKIP
    >>> out.write_parquet("s3://bucket/explained/")                        # doctest: +SKIP

The dataset needs a `bytes` column (encoded images) or an `image` column (RGB uint8 arrays, as
`ray.data.read_images` gives), and optionally `path`; the result has `ExplainBatches`' columns.
Actors, their CPUs/GPUs and onnxruntime's threads come from `plan_actors`, so a small machine
neither hangs (reads starved of CPUs) nor runs more threads than it has cores.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Sequence

from ..methods import CAMMethod
from ..model import load_model
from .batches import ExplainBatches
from .cluster import ActorPlan, cluster_shape, plan_actors, require_ray

log = logging.getLogger(__name__)

SHIP_LIMIT = 1 << 30  # models up to 1 GiB travel with the job; larger ones are read from `model` on each node
ACTOR_RESTARTS = 1  # a batch whose worker died is retried this many times on the restarted worker


def _bounded_restarts() -> dict[str, int]:
    """Ray's default for actor pools is to restart and retry forever, so an image that kills its
    worker every time would hang the job. Actors still restart without limit, but a batch is
    retried ACTOR_RESTARTS times (once: a worker lost by chance); then Ray gives up the pass
    with the reason (measured with Ray 2.60: `max_errored_blocks` does not cover dead workers),
    and `onnxcam.scale.job` explains what is left in `onnxcam.scale.quarantine`, which finds the
    image that kills its worker (each further retry here would cost an actor restart). Ray 2.60 still takes these as `ray_remote_args`, with a deprecation
    warning that names no replacement: silenced here."""
    return {"max_restarts": -1, "max_task_retries": ACTOR_RESTARTS}


def model_payload(model: str | os.PathLike | bytes) -> str | bytes:
    """What the actors get: the model's bytes (external data included) when it is under SHIP_LIMIT,
    so that cluster nodes need no copy of the file; else its path, which every node must read."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    path = os.fspath(model)
    m = load_model(path)  # also fails early, on the driver, when the file is not a model
    if m.ByteSize() < SHIP_LIMIT:
        return m.SerializeToString()
    log.info("%s is %.1f GB: actors read it from that path, which every node must have", path, m.ByteSize() / 1e9)
    return path


def explain_dataset(ds: Any, model: str | os.PathLike | bytes, method: str | CAMMethod = "gradcam", actors: int | None = None,
                    batch_size: int = 8, cpus_per_actor: float | None = None, gpus: bool = False,
                    plan: ActorPlan | None = None, ship_model: bool = True, layer: str | Sequence[str] | None = None,
                    target: Any = None, actor_class: type = ExplainBatches, **kwargs: Any) -> Any:
    """The lazy Dataset of explanations of `ds` (one row per image; nothing runs until it is
    consumed). model: a path or bytes; with `ship_model` the bytes travel with the job (see
    `model_payload`), else every worker reads the path (a local Ray: no copy in the object store).
    actors, cpus_per_actor, gpus: the pool (see `plan_actors`; `plan` overrides them);
    actor_class: `ExplainBatches` or a subclass (e.g. another decoder); further keyword arguments
    (policy, overlay, heatmap_dtype, providers, explainer) go to it. Without a connected Ray, a
    local one is started (`onnxcam.scale.connect`)."""
    plan = plan or _plan(actors, cpus_per_actor, gpus)
    fn, ctor = explain_kwargs(model, method=method, plan=plan, ship_model=ship_model, layer=layer, target=target,
                              gpus=gpus, actor_class=actor_class, **kwargs)
    return map_on_actors(ds, fn, ctor, plan, batch_size)


def explain_kwargs(model: str | os.PathLike | bytes, *, plan: ActorPlan, method: str | CAMMethod = "gradcam",
                   ship_model: bool = True, layer: str | Sequence[str] | None = None, target: Any = None,
                   gpus: bool = False, actor_class: type = ExplainBatches, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    """(the actors' class, its constructor arguments) for `explain_dataset`'s arguments: the one
    place they are built, for the Ray Data pass and for `onnxcam.scale.quarantine`."""
    ctor = {"model": model_payload(model) if ship_model else os.fspath(model), "method": method, "layer": layer,
            "target": target, "threads": plan.threads, **kwargs}
    if gpus:
        ctor.setdefault("providers", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return actor_class, ctor


def _plan(actors: int | None, cpus_per_actor: float | None, gpus: bool) -> ActorPlan:
    ray = require_ray()
    if not ray.is_initialized():
        from .cluster import connect

        connect()
    return plan_actors(cluster_shape(), actors, cpus_per_actor, gpus)


def map_on_actors(ds: Any, fn: type, ctor: dict[str, Any], plan: ActorPlan, batch_size: int) -> Any:
    """`ds.map_batches(fn)` on a pool of `plan.actors` actors, each `fn(**ctor)` built once, with
    the plan's CPUs/GPUs and bounded retries (see `_bounded_restarts`)."""
    ray = require_ray()
    log.info("%s on %d actor(s) × %.2f CPU(s)%s, %d onnxruntime thread(s) each", fn.__name__, plan.actors,
             plan.cpus_per_actor, f" × {plan.gpus_per_actor:g} GPU" if plan.gpus_per_actor else "", plan.threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(
            fn,
            fn_constructor_kwargs=ctor,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            **plan.ray_args(),
            **_bounded_restarts(),
        )
