"""What the in-graph heatmap (`onnxcam export --heatmap`) costs over the exported gradient model.

For each model, layer, method and batch size, on the CPU with the same intra-op thread count, in one
process:

  gradient  the model `export_model(path)` writes (scores, targets, activation, ∂y_c/∂A), fed
            {input: x, onnxcam_target: [-1]}
  heatmap   the model `export_model(path, method=M, heatmap=True)` writes (scores, targets and
            onnxcam_heatmap (N, H, W): the method's map, normalised and resized, in the graph)
  explain   `Explainer(path, method=M).explain(x)`: the gradient run plus numpy post-processing,
            which is what the heatmap graph replaces

timed with bench_gradcam.py's interleaved blocks (warm-up, 0.1 s untimed settling per block, order
rotating each round), medians and paired ratios reported. The ratio heatmap / gradient is the extra
graph's cost; the issue asks for ≤ 1.05. Wall times on a loaded machine (other processes on the
cores) blur that ratio by more than the 5 % asked, so the extra graph is also measured directly:
both sessions are run with onnxruntime's profiler, and `profiled` = (kernel time of the gradient
session + kernel time of the nodes the heatmap adds, named onnxcam_heatmap/*) / kernel time of the
gradient session, and `share` = the median over runs of (heatmap nodes) / (all other nodes) in the
heatmap session, which a preempted run does not move. Before timing, the heatmap run is checked against
`explain` (max abs difference ≤ 1e-5). Results: stdout table, bench/export_heatmap.json.

    python bench/bench_export_heatmap.py [--threads N] [--runs 20] [--batches 1 8] [--resnet50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_gradcam import (  # noqa: E402
    MOBILENET, OtherLoad, cpu_count, cpu_name, paired_ratio, profile_session, summary, timed_rounds,
)

import onnxcam  # noqa: E402
from onnxcam.export import export_model  # noqa: E402
from onnxcam.runtime import CPU, make_session  # noqa: E402

RESULTS = HERE / "export_heatmap.json"
MIDDLE = "/features/features.14/conv/conv.0/conv.0.2/Clip_output_0"  # MobileNetV2, 14×14×576


def per_run_share(profile: str, prefix: str, runs: int) -> float:
    """Median over the last `runs` runs of a profile of (kernel time of the nodes named `prefix`*) /
    (kernel time of the other nodes): robust to a run that the OS preempted in the middle."""
    with open(profile) as f:
        events = json.load(f)
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    ours, rest = [0.0] * len(spans), [0.0] * len(spans)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for i, (a, b) in enumerate(spans):
            if a <= e["ts"] <= b:
                (ours if e["name"].startswith(prefix) else rest)[i] += e["dur"]
                break
    return statistics.median(o / r for o, r in zip(ours, rest) if r > 0)


def bench_case(name: str, path: Path, layer: str | None, method: str, batches: list[int], threads: int,
               runs: int, warmup: int, tmp: str) -> list[dict]:
    grad_model = export_model(path, layer=layer).model.SerializeToString()
    heat_model = export_model(path, method=method, layer=layer, heatmap=True).model.SerializeToString()
    grad = make_session(grad_model, [CPU], threads)
    heat = make_session(heat_model, [CPU], threads)
    ex = onnxcam.Explainer(str(path), method=method, layer=layer, providers=[CPU], threads=threads)
    rows = []
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.standard_normal((n, 3, *ex.input_size), dtype=np.float32)
        feeds = {ex.info.image_input.name: x, "onnxcam_target": np.array([-1], np.int64)}
        got = dict(zip([o.name for o in heat.get_outputs()], heat.run(None, feeds)))
        diff = float(np.abs(got["onnxcam_heatmap"] - ex.explain(x).heatmaps).max())
        if diff > 1e-5:
            raise SystemExit(f"{name} {method}: the in-graph heatmap differs from explain by {diff:.2e}")
        others = OtherLoad()
        t, rounds = timed_rounds({
            "gradient": lambda: grad.run(None, feeds),
            "heatmap": lambda: heat.run(None, feeds),
            "explain": lambda: ex.explain(x),
        }, warmup, runs)
        g, h, e = (statistics.median(t[k]) for k in ("gradient", "heatmap", "explain"))
        kp = max(5, runs // 2)
        gp = profile_session(lambda pre: make_session(grad_model, [CPU], threads, profile=True), feeds, warmup, kp, tmp, "gradient")
        hp = profile_session(lambda pre: make_session(heat_model, [CPU], threads, profile=True), feeds, warmup, kp, tmp, "heatmap")
        added = sum(v["ms"] for k, v in hp["nodes"].items() if k.startswith("onnxcam_heatmap/"))
        share = per_run_share(hp["file"], "onnxcam_heatmap/", kp)
        row = {
            "model": name, "layer": layer or "default", "method": method, "batch": n,
            "gradient_ms": g, "heatmap_ms": h, "explain_ms": e, "ratio": h / g,
            "ratio_paired": paired_ratio(t, rounds, "heatmap", "gradient"), "max_abs_diff_vs_explain": diff,
            "gradient_kernel_ms": gp["kernel_ms"], "heatmap_nodes_ms": added, "ratio_profiled": (gp["kernel_ms"] + added) / gp["kernel_ms"],
            "heatmap_share_median": share,
            "other_load_cores": others.cores(), "detail": {k: summary(v) for k, v in t.items()},
        }
        rows.append(row)
        print(f"[{name} {row['layer'][:24]} {method}] batch {n}: gradient {g:.2f} ms, heatmap {h:.2f} ms "
              f"({h / g:.3f}×, paired {row['ratio_paired']:.3f}), explain {e:.2f} ms; heatmap nodes {added:.3f} ms of "
              f"{gp['kernel_ms']:.2f} ms kernels ({row['ratio_profiled']:.4f}×; per-run median share {share:.4f}); diff {diff:.1e}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=cpu_count())
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--resnet50", action="store_true", help="also the ResNet-50 of bench/resnet50.py (~100 MB, cached)")
    args = ap.parse_args(argv)
    cases = [("mobilenet_v2", MOBILENET, None, "gradcam"), ("mobilenet_v2", MOBILENET, None, "gradcam++"),
             ("mobilenet_v2", MOBILENET, MIDDLE, "gradcam")]
    if args.resnet50:
        from resnet50 import build_resnet50

        cases.append(("resnet50", Path(build_resnet50()), None, "gradcam"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, layer, method in cases:
            rows += bench_case(name, path, layer, method, args.batches, args.threads, args.runs, args.warmup, tmp)
    print(f"{'model':<13} {'layer':<8} {'method':<10} {'batch':>5} {'gradient ms':>12} {'heatmap ms':>11} {'ratio':>6} "
          f"{'paired':>7} {'explain ms':>11} {'heatmap nodes ms':>17} {'profiled':>9} {'share':>7}")
    for r in rows:
        print(f"{r['model']:<13} {('middle' if r['layer'] != 'default' else 'default'):<8} {r['method']:<10} {r['batch']:>5} "
              f"{r['gradient_ms']:>12.2f} {r['heatmap_ms']:>11.2f} {r['ratio']:>6.3f} {r['ratio_paired']:>7.3f} "
              f"{r['explain_ms']:>11.2f} {r['heatmap_nodes_ms']:>17.3f} {r['ratio_profiled']:>9.4f} {r['heatmap_share_median']:>7.4f}")
    RESULTS.write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads, "runs": args.runs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
