"""A held-out set for the spurious-mark gate: images the gate's threshold was not chosen on.

The gate example (README, examples/spurious_heldout/README.md) sets its threshold on the 12 images of
``examples/spurious/`` (generator seed 7) and is checked on these: the same generator
(tools/spurious/make_dataset.py, test-style: the mark independent of the class), seed 8,
``--per-cell`` images per (class, mark) cell. Writes the images, ``boxes.json`` (label, object box,
mark box per file) and ``marks.json`` (the mark boxes only: the forbidden regions)::

    python -m tools.spurious.make_heldout      # from the repo root; any Python with scikit-image + Pillow
"""

from __future__ import annotations

import argparse
import json
import os

from tools import common
from tools.spurious.make_dataset import write_examples

ROOT = str(common.ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "examples", "spurious_heldout"))
    ap.add_argument("--seed", type=int, default=8, help="generator seed (examples/spurious/ uses 7)")
    ap.add_argument("--per-cell", type=int, default=5, help="images per (class, with/without mark) cell")
    a = ap.parse_args()
    meta = write_examples(a.out, per_cell=a.per_cell, seed=a.seed)
    marks = {name: m["mark"] for name, m in meta.items() if m["mark"] is not None}
    with open(os.path.join(a.out, "marks.json"), "w") as f:
        json.dump(marks, f, indent=1)
        f.write("\n")
    print(f"wrote {len(meta)} images, boxes.json and marks.json ({len(marks)} marks) to {a.out}")


if __name__ == "__main__":
    main()
