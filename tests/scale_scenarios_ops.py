"""Ray scenarios for tests/test_scale_ray_ops.py: `review --ray`, `eval --ray` with its CI files,
`explain --ray --target topK`, each run as the command line against one local Ray.

`python -m tests.scale_scenarios_ops DATA OUT` writes the images (tests.scale_scenarios.make_images)
into DATA, starts one local Ray (2 CPUs, no dashboard, small object store) through
`tests.scale_scenarios.main`, runs each scenario's command as a client of it, saves its exit
code, stdout and stderr to OUT/<name>.json (its files under OUT/<name>_out), and always shuts Ray
down. Nothing here asserts; the tests compare with the local commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .scale_scenarios import MODEL, ROOT, main, make_images

SPURIOUS = ROOT / "models" / "spurious"
HELDOUT = ROOT / "examples" / "spurious_heldout"
GATE = "model[biased].energy_in_forbidden<=0.02"  # the biased model fails it (tests/test_review_story.py)


def review_args(out: Path) -> list[str]:
    """review OLD NEW on the held-out spurious photos with the marks as forbidden regions, a gate
    and both CI files (the local run in the test uses the same arguments)."""
    return ["review", str(SPURIOUS / "biased.onnx"), str(SPURIOUS / "unbiased.onnx"), "--images", str(HELDOUT),
            "--forbidden", str(HELDOUT / "marks.json"), "--steps", "3", "--require", GATE,
            "--require", "agreement(biased,unbiased).spearman>=-0.9", "--junit", "gates.xml", "--markdown", "ci/summary.md",
            "-o", str(out)]


def review_errors_args(data: Path, out: Path) -> list[str]:
    """One model reviewed on a folder and a corrupt file (an error, exit code 1)."""
    return ["review", str(MODEL), "--images", str(data / "more"), "--images", str(data / "img_11_corrupt.jpg"),
            "--steps", "2", "-o", str(out)]


def eval_args(out: Path) -> list[str]:
    return ["eval", str(SPURIOUS / "biased.onnx"), str(HELDOUT), "--forbidden", str(HELDOUT / "marks.json"),
            "--steps", "3", "--require", GATE.split(".", 1)[1], "--junit", "gates.xml", "--markdown", "summary.md",
            "-o", str(out), "--json"]


def topk_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(MODEL), str(data / "more"), "--target", "top3", "-o", str(out), *extra]


def _cli(argv: list[str], out: Path, name: str) -> dict[str, Any]:
    """`onnxcam ARGV --ray --address <this Ray>` as its own process (a client of the cluster)."""
    import ray

    cmd = [sys.executable, "-c", "from onnxcam.cli import main; main()", *argv, "--ray", "--address",
           ray.get_runtime_context().gcs_address]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    run = {"argv": argv, "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
           "seconds": time.perf_counter() - t}
    (out / f"{name}.json").write_text(json.dumps(run))
    return run


def review(data: Path, out: Path) -> None:
    _cli(review_args(out / "review_out") + ["--actors", "2"], out, "review")


def review_errors(data: Path, out: Path) -> None:
    _cli(review_errors_args(data, out / "review_errors_out") + ["--actors", "2"], out, "review_errors")


def eval_ci(data: Path, out: Path) -> None:
    _cli(eval_args(out / "eval_ci_out") + ["--actors", "2"], out, "eval_ci")


def topk(data: Path, out: Path) -> None:
    _cli(topk_args(data, out / "topk_out", "--actors", "2"), out, "topk")


def topk_parquet(data: Path, out: Path) -> None:
    _cli(topk_args(data, out / "topk_parquet_out", "--actors", "1", "--format", "parquet"), out, "topk_parquet")


SCENARIOS: dict[str, Callable[[Path, Path], None]] = {
    "review": review, "review_errors": review_errors, "eval_ci": eval_ci, "topk": topk, "topk_parquet": topk_parquet,
}


if __name__ == "__main__":
    args = sys.argv[1:]
    data_dir, out_dir = Path(args[0]), Path(args[1])
    make_images(data_dir)
    sys.exit(main(data_dir, out_dir, args[2:] or list(SCENARIOS), SCENARIOS))
