"""`quarantine`: finish what a Ray Data pass left when its workers died, and name the images that
killed them.

Why a second pass, and why on Ray Core. Ray Data retries a task whose worker process died
(`onnxcam.scale.dataset.ACTOR_RESTARTS` times), then gives up the whole dataset, and its error says
nothing about the rows the dead worker held (Ray Data 2.60 raises ActorUnavailableError or
ActorDiedError: measured). One image that segfaults a native decoder or onnxruntime would thus stop
a million-image job. A Ray Core actor call fails alone instead: its ObjectRef raises
`RayActorError` and every other call goes on. So the driver (`onnxcam.scale.job`) keeps what the
Data pass wrote (it is in the journal) and hands the images left to this pass:

1. a pool of actors sized by the same plan (CPUs, GPUs, onnxruntime threads) running the same
   callable class (`ExplainBatches`), each given one batch at a time, so a death names one batch;
2. a batch whose worker died is split into single images, queued again first; an image alone whose
   worker died is tried again until it has killed CRASH_TRIES workers, then it is a failure with
   its path and the reason (`on_crash`), and the others are explained as if it were not there;
3. a dead actor is replaced by a new one; a new actor that dies before it is ready (it cannot even
   build its Explainer) or cannot be placed within READY_TIMEOUT ends the pass with a RayError.

The same pass serves `explain --ray` (`onnxcam.scale.job`) and `eval --ray` / `review --ray`
(`onnxcam.scale.records.gather`): `pass_failure` says whether a Data pass ended because workers
died, `crash_message` words the failure of an image given up.

Bounded: a batch dies at most once, an image alone at most CRASH_TRIES times, so the pass starts
at most (batches that died) + CRASH_TRIES × (their images) replacement actors; it never retries
forever. Bisecting a dead batch instead of splitting it would save restarts only for batches much
larger than the few images an actor takes at a time (`--batch-size`, 8 by default).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import OnnxcamError
from .cluster import ActorPlan, RayError, require_ray

log = logging.getLogger(__name__)

CRASH_TRIES = 2  # deaths of a worker explaining one image alone before that image is a failure
READY_TIMEOUT = 300.0  # seconds a new actor may take to be placed and build its Explainer


class _Worker:
    """One quarantine actor: `fn(**ctor)` built once, called with one batch at a time."""

    def __init__(self, fn: type, ctor: dict[str, Any]) -> None:
        self.fn = fn(**ctor)

    def ready(self) -> bool:
        return True

    def explain(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fn(batch)


def death_reason(exc: BaseException) -> str:
    """What Ray says about a dead worker, in a few words (its exit type and detail when given)."""
    text = " ".join(str(getattr(exc, "error_msg", "") or exc).split())
    kind = re.search(r"Worker exit type: (\w+)", text)
    detail = re.search(r"Worker exit detail: (.*?)(?:\.\s|$)", text)
    if kind or detail:
        return ", ".join(x for x in ((kind.group(1) if kind else ""), (detail.group(1) if detail else "")) if x)
    return text.split(". ")[0][:200] or type(exc).__name__


@dataclass
class PassFailure:
    """Why Ray Data gave up a pass: its reason in one line, and whether workers died (then
    `quarantine` can finish the pass)."""

    reason: str
    workers_died: bool


def pass_failure(exc: BaseException) -> PassFailure:
    """What ended a Ray Data pass (`exc`, as its iterator raised it); onnxcam's own errors, which
    Ray wraps, are raised as they are (a wrong request ends the job, as locally)."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, OnnxcamError):
        raise cause from None
    from ray.exceptions import RayActorError, WorkerCrashedError

    died = isinstance(cause, (RayActorError, WorkerCrashedError))
    return PassFailure(" ".join(str(cause).split()) or type(cause).__name__, died)


def crash_message(path: str, reason: str, doing: str = "explaining") -> str:
    """The error line of an image that killed its worker CRASH_TRIES times alone."""
    return (f"{path}: the worker process died while {doing} this image ({CRASH_TRIES} times, alone; Ray says: "
            f"{reason})")


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(batch["path"])
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(n)]


def quarantine(batches: Iterable[dict[str, np.ndarray]], fn: type, ctor: dict[str, Any], plan: ActorPlan,
               take: Callable[[dict[str, np.ndarray]], None], on_crash: Callable[[str, str], None]) -> int:
    """Explain `batches` (dicts of columns as `fn` takes them, e.g. `read_sources(...).ds.iter_batches`)
    on `plan.actors` Ray Core actors running `fn(**ctor)`, isolating images that kill their worker
    (see the module docstring). `take` gets each result batch; `on_crash(path, reason)` each image
    given up. Returns how many workers died."""
    ray = require_ray()
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    remote = ray.remote(_Worker).options(num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor,
                                         max_restarts=0, max_task_retries=0)
    ctor_ref = ray.put(ctor)  # the model's bytes travel once, however many actors start
    actors: list[Any] = []

    def start() -> Any:
        actor = remote.remote(fn, ctor_ref)
        actors.append(actor)
        try:
            ray.get(actor.ready.remote(), timeout=READY_TIMEOUT)
        except GetTimeoutError:
            raise RayError(f"a worker was not ready within {READY_TIMEOUT:g} s (the cluster has no room for it, or it "
                           "hangs building its Explainer)") from None
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, OnnxcamError) else RayError(f"a worker failed to start: {cause or exc}")) from None
        except RayActorError as exc:
            raise RayError(f"a new worker died before it was ready ({death_reason(exc)}): the model cannot even be "
                           "loaded there") from None
        return actor

    feed = iter(batches)
    queue: deque[tuple[dict[str, np.ndarray], int]] = deque()  # (batch, deaths of its worker so far)
    inflight: dict[Any, tuple[Any, dict[str, np.ndarray], int]] = {}
    deaths = 0
    try:
        idle = [start() for _ in range(plan.actors)]
        fed = True
        while True:
            while idle and (queue or fed):
                if queue:
                    batch, tries = queue.popleft()
                else:
                    batch, tries = next(feed, None), 0
                    if batch is None:
                        fed = False
                        break
                actor = idle.pop()
                inflight[actor.explain.remote(batch)] = (actor, batch, tries)
            if not inflight:
                return deaths
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            actor, batch, tries = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as exc:  # onnxcam's own errors (a wrong request) end the job, as on Data
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, OnnxcamError) else RayError(" ".join(str(exc).split())[:300])) from None
            except RayActorError as exc:
                deaths += 1
                reason = death_reason(exc)
                ray.kill(actor)
                actors.remove(actor)
                paths = [str(p) for p in batch["path"]]
                if len(paths) > 1:
                    log.info("a worker died explaining %d images (%s); trying them one by one", len(paths), reason)
                    queue.extendleft((row, 0) for row in reversed(_rows(batch)))
                elif tries + 1 < CRASH_TRIES:
                    queue.appendleft((batch, tries + 1))
                else:
                    on_crash(paths[0], reason)
                idle.append(start())
                continue
            take(result)
            idle.append(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
