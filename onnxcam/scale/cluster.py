"""The Ray cluster: importing Ray, connecting to it, and sizing the explaining actors.

Why sizing is policy here and not left to Ray's defaults: an actor asks for 1 CPU unless told
otherwise, and Ray Data's read tasks ask for 1 CPU each. Two actors on a 2-CPU machine hold both
CPUs, the read task never gets one, nothing reaches the actors, and the job waits forever without
an error (measured with Ray 2.60). `plan_actors` therefore

1. keeps `reserve` CPUs free for the read tasks (1 CPU, or half the cluster below 2 CPUs);
2. gives each actor `cpus_per_actor` CPUs (default 1), shrinking it to a fraction when more actors
   were asked for than the remaining CPUs hold, down to `MIN_CPUS_PER_ACTOR`; past that the number
   of actors is capped and the plan says so in `note`;
3. never asks one actor for more CPUs than the largest node has (it could never be placed), and
   caps the number of actors at what the nodes can hold side by side;
4. sets onnxruntime's intra-op threads to the actor's whole CPUs (at least 1), so that N actors run
   about N × cpus_per_actor threads: no oversubscription, no idle cores.

GPU actors (`gpus=True`) get 1 GPU each, or an equal share when more actors than GPUs are asked for.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import OnnxcamError, UsageError

log = logging.getLogger(__name__)

MIN_CPUS_PER_ACTOR = 0.25
INSTALL_HINT = "pip install 'onnxcam[ray]'"


class RayError(OnnxcamError):
    """Ray is missing, the cluster cannot be reached, or the job failed on it (exit code 1)."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a RayError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Core alone is not enough)
    except ImportError as exc:
        raise RayError(f"Ray Data is not installed ({exc.name or exc}); install it with {INSTALL_HINT}") from None
    return ray


CONNECT_TIMEOUT = 5.0


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: Ray itself retries an unreachable host:port for minutes
    (measured with Ray 2.60: still waiting after 2 minutes)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # "auto" is resolved (or refused) by Ray at once
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayError(f"cannot reach the Ray cluster at {address}: {reason} (is `ray start --head` running there, "
                       "and the port open?)") from None


def connect(address: str | None = None, num_cpus: int | None = None, ship_package: bool = True,
            **init_kwargs: Any) -> Any:
    """Connect to Ray once per process: `address` "auto" (the cluster this machine belongs to),
    "ray://host:10001" (Ray Client) or "host:6379"; None starts a local Ray with `num_cpus` CPUs
    (default: all) and no dashboard. On a cluster, this onnxcam package is shipped to the workers
    (`runtime_env` py_modules) unless `ship_package` is False; its dependencies (onnxruntime,
    OpenCV, numpy, onnx) must be installed there. An already initialised Ray is reused as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    else:
        _check_reachable(address)
        kwargs["address"] = address
        if ship_package and "runtime_env" not in kwargs:
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]}
        if address.startswith("ray://"):
            kwargs.pop("include_dashboard")
            try:
                import grpc  # noqa: F401  (Ray Client's transport)
            except ImportError:
                raise RayError(f"--address {address} uses Ray Client, which needs grpcio: pip install 'ray[client]'") from None
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayError(f"cannot reach {where}: {first} (start one with `ray start --head`, or drop --address "
                       "to run a local Ray)") from None
    return ray


@dataclass(frozen=True)
class NodeShape:
    """What a cluster offers: CPUs and GPUs per alive node."""

    cpus: tuple[float, ...]
    gpus: tuple[float, ...]

    @property
    def total_cpus(self) -> float:
        return float(sum(self.cpus))

    @property
    def total_gpus(self) -> float:
        return float(sum(self.gpus))


def cluster_shape() -> NodeShape:
    """The connected cluster's alive nodes (call `connect` first)."""
    ray = require_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = tuple(float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes)
    gpus = tuple(float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes)
    return NodeShape(cpus or (0.0,), gpus or (0.0,))


@dataclass(frozen=True)
class ActorPlan:
    """How many explaining actors, what each asks Ray for, and onnxruntime's threads in each."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    reserve: float  # CPUs left to the read tasks
    note: str = ""  # why the request was changed, when it was

    def ray_args(self) -> dict[str, float]:
        """`num_cpus` / `num_gpus` for `Dataset.map_batches`."""
        args = {"num_cpus": self.cpus_per_actor}
        if self.gpus_per_actor:
            args["num_gpus"] = self.gpus_per_actor
        return args


def _fits(nodes: Sequence[float], per: float, reserve: float) -> int:
    """Actors of `per` CPUs the nodes hold side by side, `reserve` CPUs kept on the largest node."""
    free = sorted(nodes, reverse=True)
    free[0] = max(0.0, free[0] - reserve)
    return sum(int(math.floor(c / per + 1e-9)) for c in free)


def _largest_share(nodes: Sequence[float], n: int, want: float, reserve: float) -> float:
    """The most CPUs per actor (at most `want`) with which `n` actors fit on the nodes; 0 if none."""
    free = sorted(nodes, reverse=True)
    free[0] = max(0.0, free[0] - reserve)
    shares = sorted({want} | {c / k for c in free for k in range(1, n + 1) if c / k <= want}, reverse=True)
    return next((s for s in shares if s > 0 and _fits(nodes, s, reserve) >= n), 0.0)


def plan_actors(shape: NodeShape, actors: int | None = None, cpus_per_actor: float | None = None,
                gpus: bool = False) -> ActorPlan:
    """Size the actor pool for `shape` (see the module docstring for the policy).

    actors: how many (default: one per GPU with `gpus`, else one per CPU left after the reserve).
    cpus_per_actor: CPUs each actor asks for (default 1, shrunk to fit as described above).
    """
    if actors is not None and actors < 1:
        raise UsageError(f"--actors must be at least 1, got {actors}")
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise UsageError(f"CPUs per actor must be positive, got {cpus_per_actor}")
    total = shape.total_cpus
    if total <= 0:
        raise RayError("the Ray cluster has no CPUs: nothing can run")
    reserve = 1.0 if total >= 2 else total / 2
    avail = total - reserve
    notes: list[str] = []
    gpus_per_actor = 0.0
    if gpus:
        if shape.total_gpus <= 0:
            raise RayError("GPU actors were asked for but the Ray cluster has no GPUs; run without --device cuda")
        n = actors or max(1, int(shape.total_gpus))
        gpus_per_actor = min(1.0, shape.total_gpus / n)
    else:
        n = actors or max(1, int(math.floor(avail / (cpus_per_actor or 1.0))))
    want = cpus_per_actor or 1.0
    per = _largest_share(shape.cpus, n, want, reserve)
    if per < MIN_CPUS_PER_ACTOR:
        per = min(want, MIN_CPUS_PER_ACTOR)
        cap = max(1, _fits(shape.cpus, per, reserve))
        notes.append(f"{n} actors do not fit in {avail:g} free CPUs ({reserve:g} kept for reading): using {cap}")
        n = cap
    elif per < want:
        notes.append(f"each actor gets {per:.2f} CPUs instead of {want:g} so that {n} fit next to the reads")
    threads = max(1, int(math.floor(per + 1e-9)))
    plan = ActorPlan(n, round(per, 4), round(gpus_per_actor, 4), threads, reserve, "; ".join(notes))
    if plan.note:
        log.warning("%s", plan.note)
    return plan
