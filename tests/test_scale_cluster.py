"""Sizing the Ray actor pool (onnxcam.scale.cluster): pure arithmetic, no Ray needed.

Each expected plan is worked out by hand from the policy: 1 CPU kept for the read tasks (half the
cluster below 2 CPUs), 1 CPU per actor unless more actors were asked for than fit, never below
0.25 CPU, packed node by node, onnxruntime threads = whole CPUs per actor.
"""

from __future__ import annotations

import sys

import pytest

from onnxcam.errors import UsageError
from onnxcam.scale import NodeShape, RayError, plan_actors, require_ray


def shape(*cpus: float, gpus: tuple[float, ...] | None = None) -> NodeShape:
    return NodeShape(tuple(cpus), gpus or tuple(0.0 for _ in cpus))


def test_two_actors_on_two_cpus_leave_one_cpu_to_the_reads() -> None:
    # Ray's default (1 CPU each) holds both CPUs and starves the read task forever
    p = plan_actors(shape(2), actors=2)
    assert (p.actors, p.cpus_per_actor, p.threads, p.reserve) == (2, 0.5, 1, 1.0)
    assert p.actors * p.cpus_per_actor + p.reserve <= 2
    assert "0.50 CPUs instead of 1" in p.note


def test_default_is_one_actor_per_free_cpu() -> None:
    assert (plan_actors(shape(2)).actors, plan_actors(shape(2)).cpus_per_actor) == (1, 1.0)
    p = plan_actors(shape(64))
    assert (p.actors, p.cpus_per_actor, p.threads, p.note) == (63, 1.0, 1, "")


def test_too_many_actors_are_capped_and_said_so() -> None:
    p = plan_actors(shape(2), actors=8)  # 1 free CPU / 0.25 = 4
    assert (p.actors, p.cpus_per_actor, p.threads) == (4, 0.25, 1)
    assert "8 actors do not fit" in p.note and "using 4" in p.note


def test_one_cpu_machine_keeps_half_for_reading() -> None:
    p = plan_actors(shape(1), actors=2)
    assert (p.reserve, p.actors, p.cpus_per_actor) == (0.5, 2, 0.25)


def test_actors_are_packed_node_by_node() -> None:
    # two 8-CPU nodes, 1 kept on the first: 6 CPUs fit once per node (2 actors), 5 too; 4 fits
    # once on the first (7 free) and twice on the second: 3 actors of 4 CPUs and 4 threads
    p = plan_actors(shape(8, 8), actors=3, cpus_per_actor=6)
    assert (p.actors, p.cpus_per_actor, p.threads) == (3, 4.0, 4)
    # an actor bigger than any node could never be placed: shrunk to the largest node's free CPUs
    p = plan_actors(shape(4, 4), cpus_per_actor=6)
    assert (p.actors, p.cpus_per_actor, p.threads) == (1, 4.0, 4)
    # plenty of room: the request stands
    p = plan_actors(shape(16, 16), actors=4, cpus_per_actor=6)
    assert (p.actors, p.cpus_per_actor, p.threads, p.note) == (4, 6.0, 6, "")


def test_gpu_actors() -> None:
    p = plan_actors(shape(8, gpus=(2.0,)), gpus=True)
    assert (p.actors, p.gpus_per_actor, p.cpus_per_actor) == (2, 1.0, 1.0)
    assert p.ray_args() == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert plan_actors(shape(8, gpus=(2.0,)), actors=4, gpus=True).gpus_per_actor == 0.5
    with pytest.raises(RayError, match="no GPUs"):
        plan_actors(shape(8), gpus=True)


def test_bad_requests() -> None:
    with pytest.raises(UsageError, match="--actors must be at least 1, got 0"):
        plan_actors(shape(2), actors=0)
    with pytest.raises(UsageError, match="CPUs per actor must be positive"):
        plan_actors(shape(2), cpus_per_actor=0)
    with pytest.raises(RayError, match="no CPUs"):
        plan_actors(shape(0))


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayError, match=r"Ray Data is not installed .*pip install 'onnxcam\[ray\]'"):
        require_ray()


@pytest.mark.ray
def test_unreachable_cluster_fails_in_seconds() -> None:
    pytest.importorskip("ray.data", reason="the ray extra is not installed")
    import socket
    import time

    from onnxcam.scale import connect

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = time.perf_counter()
    with pytest.raises(RayError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"):
        connect(f"127.0.0.1:{port}")  # Ray alone keeps retrying for minutes
    assert time.perf_counter() - t < 30
