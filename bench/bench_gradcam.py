"""What Grad-CAM costs on top of plain onnxruntime inference.

For each model (the bundled MobileNetV2 and a ResNet-50 built by bench/resnet50.py) and each
batch size, three things are timed on the CPU with the same intra-op thread count:

  plain    onnxruntime.InferenceSession(original model bytes).run(None, {input: x})
  session  the rewritten Grad-CAM model (scores + activation + ∂y_c/∂A in one graph), the session
           made by onnxcam.runtime.make_session from `Explainer.explain_model()`, fed {input: x}
           (onnxcam_target keeps its default: the top-1 class)
  explain  the whole `Explainer.explain(x)`: the session run plus numpy post-processing
           (channel weights, weighted sum, ReLU, normalisation, bilinear resize to 224x224)

After warm-up runs, the three are timed in interleaved blocks (untimed calls for 0.1 s, then 2
timed ones back to back; the order rotating each round, so that drift on a shared machine hits all
three alike) and the median of each is reported, with the ratios session/plain and explain/plain.
Results go to stdout (a table) and bench/results.json.

--profile additionally runs the Grad-CAM session (and the plain one, for comparison) with
onnxruntime's profiler and prints, per run: the top-10 op types by total time, the time of the
nodes the rewrite added (names starting with "onnxcam"), and the per-op-type difference
Grad-CAM − plain.

    python bench/bench_gradcam.py [--threads N] [--runs 20] [--batches 1 8] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import onnxcam  # noqa: E402
from onnxcam.runtime import CPU, make_session  # noqa: E402
from resnet50 import build_resnet50  # noqa: E402

MOBILENET = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
RESULTS = HERE / "results.json"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


class OtherLoad:
    """How many cores other processes kept busy meanwhile: the machine's busy time (/proc/stat,
    steal included: the hypervisor running someone else on our vCPUs) minus this process's CPU
    time, per second of wall time. None where /proc/stat is missing."""

    def __init__(self) -> None:
        self.start = self._snap()

    @staticmethod
    def _snap() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(v[:8]) - v[3] - v[4]) / hz  # user..steal but idle and iowait (guest is in user)
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def cores(self) -> float | None:
        end = self._snap()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        return round(max(0.0, (end[1] - self.start[1]) - (end[2] - self.start[2])) / wall, 2) if wall > 0 else None


def plain_session(model_bytes: bytes, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    """The baseline: a stock session on the original model, same thread count as make_session."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=[CPU])


def timed_rounds(fns: dict[str, Callable[[], object]], warmup: int, runs: int, block: int = 2,
                 settle_s: float = 0.1) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Wall times in ms of `runs` calls of each function, measured in interleaved blocks, and
    the round in which each was measured.

    Each function is called `warmup` times first. Then, round after round (the order rotating
    each round, so that slow drift on a shared machine hits all alike), each function is called
    untimed for at least `settle_s` seconds and then `block` times timed, back to back.

    Why the settling: after a run, onnxruntime's intra-op worker threads keep spinning for tens
    of milliseconds, and an idle vCPU wakes up slowly. Measured on 2 cores (MobileNetV2, batch 1,
    3.8 ms back to back): the first ~6 runs of a session right after another session's run take
    8-10 ms, and one run after a 50 ms pause takes 7 ms. A session used on its own, back to back
    (the real use), pays neither, so neither may enter a comparison between sessions. Blocks
    are short (default 2 timed runs) so that all three see the same moments of a machine whose
    speed drifts by ±15 % over seconds (a VM: neighbours on the host, invisible from here).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds: dict[str, list[int]] = {n: [] for n in names}
    r = 0
    while any(len(v) < runs for v in times.values()):
        for n in names[r % len(names):] + names[: r % len(names)]:
            if len(times[n]) >= runs:
                continue
            t_end = time.perf_counter() + settle_s
            fns[n]()
            while time.perf_counter() < t_end:
                fns[n]()
            for _ in range(min(block, runs - len(times[n]))):
                t0 = time.perf_counter()
                fns[n]()
                times[n].append((time.perf_counter() - t0) * 1e3)
                rounds[n].append(r)
        r += 1
    return times, rounds


def paired_ratio(times: dict[str, list[float]], rounds: dict[str, list[int]], num: str, den: str) -> float:
    """Median over rounds of (median of `num` in the round) / (median of `den` in the round):
    a ratio of neighbours in time, less sensitive to drift than the ratio of overall medians."""
    def per_round(name: str) -> dict[int, float]:
        by: dict[int, list[float]] = defaultdict(list)
        for t, r in zip(times[name], rounds[name]):
            by[r].append(t)
        return {r: statistics.median(v) for r, v in by.items()}
    a, b = per_round(num), per_round(den)
    return statistics.median(a[r] / b[r] for r in a if r in b)


def summary(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms)}


# -- profiling -------------------------------------------------------------------------------------
def profile_events(path: str) -> list[dict]:
    """Per-node kernel events ("cat": "Node", name ending in _kernel_time) of a profile JSON."""
    with open(path) as f:
        events = json.load(f)
    return [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]


def profile_session(make: Callable[[str], ort.InferenceSession], feeds: dict, warmup: int, runs: int, tmp: str, tag: str) -> dict:
    """Run a profiling session; return per-run ms by op type and by node."""
    sess = make(os.path.join(tmp, tag))
    for _ in range(warmup):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feeds)
    wall = (time.perf_counter() - t0) * 1e3 / runs
    path = sess.end_profiling()  # written relative to the cwd when no prefix was given: move it
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(tmp):
        path = shutil.move(path, os.path.join(tmp, os.path.basename(path)))
    events = profile_events(path)
    # the first `warmup` runs are in the profile too: keep only the last `runs` occurrences per node
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        node = e["name"][: -len("_kernel_time")]
        per_node[node].append(e["dur"] / 1e3)
        op_of[node] = e.get("args", {}).get("op_name", "?")
    node_ms = {n: sum(d[-runs:]) / runs for n, d in per_node.items()}
    by_op: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for n, ms in node_ms.items():
        by_op[op_of[n]] += ms
        count[op_of[n]] += 1
    return {
        "wall_ms": wall,
        "kernel_ms": sum(node_ms.values()),
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "op_count": dict(count),
        "nodes": {n: {"op": op_of[n], "ms": ms} for n, ms in sorted(node_ms.items(), key=lambda kv: -kv[1])},
        "file": path,
    }


def print_profile(label: str, grad: dict, plain: dict, top: int = 10) -> dict:
    out = sys.stdout
    print(f"\n== profile: {label} (per run; wall {grad['wall_ms']:.2f} ms Grad-CAM vs {plain['wall_ms']:.2f} ms plain;"
          f" kernels {grad['kernel_ms']:.2f} vs {plain['kernel_ms']:.2f} ms)", file=out)
    print(f"  top {top} op types of the Grad-CAM session:", file=out)
    print(f"    {'op':<24}{'nodes':>6}{'gradcam ms':>12}{'plain ms':>10}{'diff ms':>9}", file=out)
    for op, ms in list(grad["by_op"].items())[:top]:
        p = plain["by_op"].get(op, 0.0)
        print(f"    {op:<24}{grad['op_count'][op]:>6}{ms:>12.3f}{p:>10.3f}{ms - p:>+9.3f}", file=out)
    added = {n: v for n, v in grad["nodes"].items() if n.startswith("onnxcam")}
    added_ms = sum(v["ms"] for v in added.values())
    print(f"  nodes added by the rewrite (onnxcam*): {len(added)}, {added_ms:.3f} ms in total", file=out)
    for n, v in list(added.items())[:top]:
        print(f"    {n:<48}{v['op']:<20}{v['ms']:>9.3f} ms", file=out)
    diffs = {op: grad["by_op"].get(op, 0.0) - plain["by_op"].get(op, 0.0) for op in set(grad["by_op"]) | set(plain["by_op"])}
    big = sorted(diffs.items(), key=lambda kv: -abs(kv[1]))[:top]
    print("  per-op-type difference Grad-CAM − plain (largest first):", file=out)
    for op, d in big:
        print(f"    {op:<24}{d:>+9.3f} ms", file=out)
    return {"added_nodes": added, "added_ms": added_ms, "op_diff_ms": dict(big)}


# -- the benchmark ---------------------------------------------------------------------------------
def bench_model(name: str, path: Path, batches: list[int], threads: int, runs: int, warmup: int,
                profile: bool, tmp: str) -> tuple[list[dict], dict]:
    model_bytes = path.read_bytes()
    t0 = time.perf_counter()
    ex = onnxcam.Explainer(str(path), method="gradcam", providers=[CPU], threads=threads)
    em = ex.explain_model()
    em_bytes = em.SerializeToString()
    rewrite_s = time.perf_counter() - t0
    input_name = ex.info.image_input.name
    added = [n for n in em.graph.node if n.name.startswith("onnxcam")]
    layer = next((n.input[0] for n in em.graph.node if n.name == "onnxcam/activation"), "?")
    print(f"[{name}] rewrite {rewrite_s:.1f} s, layer {layer}, {len(added)} nodes added: "
          f"{sorted({n.op_type for n in added})}", file=sys.stderr)
    plain = plain_session(model_bytes, threads)
    grad = make_session(em_bytes, [CPU], threads)
    rows, profiles = [], {}
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.standard_normal((n, 3, *ex.input_size), dtype=np.float32)
        feeds = {input_name: x}
        # the rewritten graph computes the same scores as the original
        ref = plain.run(None, feeds)[0]
        got = grad.run(None, feeds)[0]
        if not np.allclose(ref, got, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"{name}: the Grad-CAM session's scores differ from the plain session's")
        others = OtherLoad()
        t, rounds = timed_rounds({
            "plain": lambda: plain.run(None, feeds),
            "session": lambda: grad.run(None, feeds),
            "explain": lambda: ex.explain(x),
        }, warmup, runs)
        p, s, e = (statistics.median(t[key]) for key in ("plain", "session", "explain"))
        row = {
            "model": name, "batch": n, "plain_ms": p, "gradcam_session_ms": s, "explain_ms": e,
            "ratio_session": s / p, "ratio_explain": e / p, "other_load_cores": others.cores(),
            "ratio_session_paired": paired_ratio(t, rounds, "session", "plain"),
            "ratio_explain_paired": paired_ratio(t, rounds, "explain", "plain"),
            "detail": {key: summary(v) for key, v in t.items()},
        }
        rows.append(row)
        print(f"[{name}] batch {n}: plain {p:.2f} ms, session {s:.2f} ms ({s / p:.3f}×), "
              f"explain {e:.2f} ms ({e / p:.3f}×); paired ratios {row['ratio_session_paired']:.3f}, "
              f"{row['ratio_explain_paired']:.3f}  [{runs} runs; other processes used {row['other_load_cores']} cores]",
              file=sys.stderr)
        if profile:
            kp = max(5, runs // 2)
            gp = profile_session(lambda pre: make_session(em_bytes, [CPU], threads, profile=True), feeds, warmup, kp, tmp, f"{name}-b{n}-gradcam")
            pp = profile_session(lambda pre: plain_session(model_bytes, threads, pre), feeds, warmup, kp, tmp, f"{name}-b{n}-plain")
            info = print_profile(f"{name}, batch {n}, {kp} runs", gp, pp)
            profiles[f"{name}/b{n}"] = {
                "gradcam": {k2: v for k2, v in gp.items() if k2 not in ("file", "nodes")},
                "plain": {k2: v for k2, v in pp.items() if k2 not in ("file", "nodes")},
                **info,
            }
    return rows, profiles


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<14}{'batch':>6}{'plain ms':>11}{'gradcam-session ms':>20}{'explain ms':>12}"
            f"{'session/plain':>15}{'explain/plain':>15}{'other load':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        other = r.get("other_load_cores")
        print(f"{r['model']:<14}{r['batch']:>6}{r['plain_ms']:>11.2f}{r['gradcam_session_ms']:>20.2f}{r['explain_ms']:>12.2f}"
              f"{r['ratio_session']:>15.3f}{r['ratio_explain']:>15.3f}{'' if other is None else f'{other:.2f}':>12}")
    print("(other load: cores kept busy by other processes meanwhile; above ~0.1 the numbers are blurred)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=cpu_count(), help="intra-op threads for every session (default: all cores)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per measurement (median; at least 20 is sensible)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"], choices=["mobilenet_v2", "resnet50"])
    ap.add_argument("--profile", action="store_true", help="also profile the sessions and print the top ops")
    ap.add_argument("--no-fold-bn", action="store_true", help="ResNet-50 with BatchNormalization nodes kept")
    ap.add_argument("--json", default=str(RESULTS), help="where to write the results (default: bench/results.json; '' for none)")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.threads < 1:
        ap.error("--runs and --threads must be positive")

    paths = {"mobilenet_v2": MOBILENET}
    if "resnet50" in a.models:
        t0 = time.perf_counter()
        paths["resnet50"] = build_resnet50(fold_bn=not a.no_fold_bn)
        print(f"[resnet50] {paths['resnet50']} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    load_before = load_average()
    if load_before[0] > 0.5:
        print(f"note: load average {load_before[0]:.2f} before starting: other work on this machine will "
              "blur the numbers", file=sys.stderr)
    started = time.perf_counter()
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="onnxcam-bench-") as tmp:
        for name in a.models:
            r, p = bench_model(name, paths[name], a.batches, a.threads, a.runs, a.warmup, a.profile, tmp)
            rows += r
            profiles.update(p)
    total_s = time.perf_counter() - started
    print()
    print_table(rows)
    print(f"\n{a.threads} threads, median of {a.runs} runs after {a.warmup} warm-up; {cpu_count()} cores "
          f"({cpu_name()}), onnxruntime {ort.__version__}, {total_s:.0f} s in total")
    if a.json:
        result = {
            "machine": {
                "cpu_count": cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
                "python": platform.python_version(), "onnxruntime": ort.__version__,
                "numpy": np.__version__, "onnxcam": getattr(onnxcam, "__version__", None),
                "load_average_before": load_before, "load_average_after": load_average(),
            },
            "settings": {"threads": a.threads, "runs": a.runs, "warmup": a.warmup, "provider": CPU,
                         "resnet50_fold_bn": not a.no_fold_bn},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "total_s": total_s,
            "results": rows,
        }
        if profiles:
            result["profiles"] = profiles
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
