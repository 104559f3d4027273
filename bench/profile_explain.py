"""Per-node kernel time of one method's explain model under onnxruntime's profiler.

The profiler's times are wall-clock: on a loaded machine read the shares, not the milliseconds
(bench_methods.py --cpu-time --threads 1 gives robust ratios).

Builds `Explainer(model, method)`, takes its rewritten model, runs it in a one-thread session with
`SessionOptions.enable_profiling` (one thread: robust to a loaded machine) and sums the kernel
time ("kernel_time" events) per op type, split into the forward (nodes of the original model) and
the nodes the rewrite added (names starting with "onnxcam"); plus the top nodes.

    python bench/profile_explain.py [--model PATH] [--method guidedbackprop] [--batch 1] [--runs 5]
                                    [--top 25] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import onnxcam  # noqa: E402


def profile(model_bytes: bytes, feeds: dict, runs: int) -> list[dict]:
    """The kernel events of `runs` timed runs (after one warm-up run, whose events are dropped)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(None, feeds)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    runs_ev = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_end = runs_ev[0]["ts"] + runs_ev[0]["dur"] if runs_ev else 0
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_end]


def summarise(events: list[dict], runs: int, top: int) -> dict:
    by_op: dict[tuple[str, str], float] = collections.defaultdict(float)
    by_node: dict[str, list] = {}
    for e in events:
        node = e["name"][: -len("_kernel_time")]
        part = "added" if node.startswith("onnxcam") else "forward"
        op = e["args"].get("op_name", "?")
        by_op[(part, op)] += e["dur"] / 1e3 / runs
        by_node.setdefault(node, [op, part, 0.0])[2] += e["dur"] / 1e3 / runs
    total = sum(by_op.values())
    parts = {p: sum(v for (q, _), v in by_op.items() if q == p) for p in ("forward", "added")}
    return {
        "total_ms": total, "parts_ms": parts,
        "by_op": sorted(([p, o, v] for (p, o), v in by_op.items()), key=lambda r: -r[2]),
        "top_nodes": sorted(([n, o, p, v] for n, (o, p, v) in by_node.items()), key=lambda r: -r[3])[:top],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX file (default: bench/resnet50.py's ResNet-50)")
    ap.add_argument("--method", default="guidedbackprop")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--plain", action="store_true", help="profile the original model instead")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.model is None:
        from resnet50 import build_resnet50
        a.model = str(build_resnet50())
    ex = onnxcam.Explainer(a.model, method=a.method, providers=["CPUExecutionProvider"], threads=1)
    m = onnx.load(a.model) if a.plain else ex.explain_model()
    name = ex.info.image_input.name
    x = np.random.default_rng(0).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
    res = summarise(profile(m.SerializeToString(), {name: x}, a.runs), a.runs, a.top)
    print(f"total kernel {res['total_ms']:.1f} ms/run  forward {res['parts_ms']['forward']:.1f}  "
          f"added {res['parts_ms']['added']:.1f}")
    print("\nper op type (ms/run):")
    for p, o, v in res["by_op"]:
        print(f"  {p:8s} {o:22s} {v:9.2f}  {100 * v / res['total_ms']:5.1f}%")
    print("\ntop nodes (ms/run):")
    for n, o, p, v in res["top_nodes"]:
        print(f"  {v:8.2f}  {o:18s} {p:8s} {n}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
