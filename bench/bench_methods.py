"""Time per image of every CAM method on a ResNet-50-sized model (CPU), and Ablation-CAM's cost
against rerunning the whole model for each ablated channel.

    python bench/bench_methods.py [--threads N] [--runs 5] [--json bench/methods.json]

Methods that loop over channels (Score-CAM and its family, Ablation-CAM) run once; the others
report the median of --runs. SS-CAM and IS-CAM repeat Score-CAM's channel loop num_samples times
(35 and 10 by default); they are timed with num_samples=1 and their default cost is that figure
times num_samples (printed as such, marked "×N").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxcam  # noqa: E402
from onnxcam.methods import ISCAM, METHODS, SSCAM  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402

from resnet50 import build_resnet50  # noqa: E402

SINGLE_RUN = {"scorecam", "sscam", "iscam", "ablationcam"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "methods.json"))
    args = ap.parse_args(argv)

    path = build_resnet50()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 224, 224)).astype(np.float32)
    plain = make_session(Path(path).read_bytes(), ["CPUExecutionProvider"], args.threads)
    plain.run(None, {"input": x})
    t = []
    for _ in range(max(args.runs, 10)):
        s = time.perf_counter()
        plain.run(None, {"input": x})
        t.append(time.perf_counter() - s)
    plain_ms = statistics.median(t) * 1e3

    rows = []
    for name in sorted(METHODS):
        method = {"sscam": SSCAM(num_samples=1), "iscam": ISCAM(num_samples=1)}.get(name, name)
        ex = onnxcam.Explainer(path, method=method, providers=["CPUExecutionProvider"], threads=args.threads)
        ex.explain(x)  # warm-up (and, for the channel loops, builds the extra sessions)
        runs = 1 if name in SINGLE_RUN else args.runs
        times = []
        for _ in range(runs):
            s = time.perf_counter()
            ex.explain(x)
            times.append(time.perf_counter() - s)
        ms = statistics.median(times) * 1e3
        scale = {"sscam": 35, "iscam": 10}.get(name, 1)
        rows.append({"method": name, "ms_per_image": ms * scale, "measured_ms": ms, "x_samples": scale,
                     "ratio_to_inference": ms * scale / plain_ms, "runs": runs})
        print(f"{name:20s} {ms * scale:10.1f} ms  ({ms * scale / plain_ms:8.1f}× inference)"
              + (f"  = {ms:.1f} ms × {scale} samples" if scale > 1 else ""), flush=True)

    # Ablation-CAM: the tail after the layer vs the whole model, for all 2048 ablated copies
    ex = onnxcam.Explainer(path, method="ablationcam", providers=["CPUExecutionProvider"], threads=args.threads)
    ablation_ms = next(r["measured_ms"] for r in rows if r["method"] == "ablationcam")
    full_ms = plain_ms * 2048  # one whole-model run per ablated channel at batch 1
    s = time.perf_counter()
    batch = np.repeat(x, 32, axis=0)
    plain.run(None, {"input": batch})
    full32 = (time.perf_counter() - s) * 1e3
    report = {
        "model": "ResNet-50 (bench/resnet50.py, BN folded), 1×3×224×224, CPU",
        "threads": args.threads,
        "plain_inference_ms": plain_ms,
        "methods": rows,
        "ablation": {
            "tail_ms": ablation_ms,
            "whole_model_per_channel_ms_batch1": full_ms,
            "whole_model_per_channel_ms_batch32": full32 * 2048 / 32,
            "speedup_vs_batch32_reruns": full32 * 2048 / 32 / ablation_ms,
        },
    }
    print(f"\nplain inference {plain_ms:.1f} ms; Ablation-CAM {ablation_ms:.0f} ms on the tail vs "
          f"{full32 * 2048 / 32:.0f} ms rerunning the whole model (batches of 32): "
          f"{report['ablation']['speedup_vs_batch32_reruns']:.0f}× faster")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    del ex
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
