"""Ray scenario for tests/test_scale_ray_quarantine.py: `eval --ray` (`evaluate_sources`) on four
photos and one crafted file that aborts its worker every time, on 2 actors with batches of 2.

`python -m tests.scale_scenarios_quarantine DATA OUT` writes the photos and the crafted file into
DATA/poison, starts one local Ray (2 CPUs, no dashboard, small object store) through
`tests.scale_scenarios.main`, saves the report, the error lines and the files to
OUT/eval_poison.json, and always shuts Ray down. Nothing here asserts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from onnxcam.scale.evaluate import EvaluateBatches

from .scale_scenarios import KILLER, MODEL, main, make_images

STEPS = 3
KILLER_NAME = "img_02_crafted.png"


class AbortingEvaluate(EvaluateBatches):
    """EvaluateBatches with a decoder that aborts its worker (SIGABRT) on a file starting with
    KILLER, as a native decoder that crashes on a hostile file would (the `actor_class` seam)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any(bytes(b).startswith(KILLER) for b in batch["bytes"]):
            os.abort()
        return super().__call__(batch)


def poison_folder(data: Path) -> Path:
    """DATA/poison: four of make_images' photos and the crafted file, listed third."""
    folder = data / "poison"
    folder.mkdir(exist_ok=True)
    for f in sorted(data.glob("img_0*.png"))[:4]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / KILLER_NAME).write_bytes(KILLER + b" not an image")
    return folder


def eval_poison(data: Path, out: Path) -> None:
    from onnxcam.review import ModelRun
    from onnxcam.scale import RayOptions
    from onnxcam.scale.evaluate import evaluate_sources

    folder = poison_folder(data)
    run = ModelRun.load(str(MODEL), providers=["CPUExecutionProvider"])
    lines: list[str] = []
    report, _ = evaluate_sources(run, [str(folder)], steps=STEPS, batch_size=2,
                                 options=RayOptions(actors=2, batch_size=2), on_error=lines.append,
                                 actor_class=AbortingEvaluate)
    (out / "eval_poison.json").write_text(json.dumps({"report": report, "lines": lines}))


if __name__ == "__main__":
    data_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    make_images(data_dir)
    sys.exit(main(data_dir, out_dir, ["eval_poison"], {"eval_poison": eval_poison}))
