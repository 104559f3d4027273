"""Measure where Grad-CAM (onnxcam) looks for the biased and the unbiased model.

Run with the venv that has onnxcam (it needs scikit-image and Pillow too, for the test split):

    /work/venvs/dev/bin/python -m tools.spurious.measure [--n 1000] [--json out.json]

For each model, on the test split of ``make_dataset.py`` (mark independent of the class, fixed
seed) and on the 12 images in ``examples/spurious/``:

* mark energy: sum of the heatmap inside the mark box / sum of the heatmap (heatmaps at 64x64, as
  onnxcam returns them), averaged over the images that carry the mark;
  (also inside the mark box grown by 4 px, one cell of the 16x16 target layer);
* pointing game on the object: fraction of images whose heatmap maximum lies inside the object box
  (tolerance 0 px and 4 px; the object box is exact, we pasted it);
* pointing game on the mark: fraction of marked images whose maximum lies in the mark box grown by
  4 px.

Heatmaps are for the predicted class (onnxcam's default); the JSON also has them for the true class
and for the mark's class ("cat").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tools import common
from tools.spurious import make_dataset as md

ROOT = str(common.ROOT)


def _inside(box, yx, tol=0) -> bool:
    y, x = yx
    return box[0] - tol <= x < box[2] + tol and box[1] - tol <= y < box[3] + tol


TOL = 4  # px: one cell of the 16x16 target layer


def stats(maps: np.ndarray, boxes: list, marks: list) -> dict:
    energy, energy_g, mark_hit, obj_hit, obj_hit_t = [], [], [], [], []
    for m, box, mark in zip(maps, boxes, marks):
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        obj_hit.append(_inside(box, peak))
        obj_hit_t.append(_inside(box, peak, tol=TOL))
        if mark is not None:
            x0, y0, x1, y1 = mark
            total = max(float(m.sum()), 1e-12)
            energy.append(float(m[y0:y1, x0:x1].sum()) / total)
            energy_g.append(float(m[max(0, y0 - TOL) : y1 + TOL, max(0, x0 - TOL) : x1 + TOL].sum()) / total)
            mark_hit.append(_inside(mark, peak, tol=TOL))
    return {
        "mark_energy": float(np.mean(energy)),
        f"mark_energy_grown{TOL}": float(np.mean(energy_g)),
        "mark_pointing": float(np.mean(mark_hit)),
        "object_pointing": float(np.mean(obj_hit)),
        f"object_pointing_tol{TOL}": float(np.mean(obj_hit_t)),
        "n": len(maps),
        "n_marked": len(energy),
    }


def run(model_path: str, x: np.ndarray, labels: np.ndarray, boxes: list, marks: list) -> dict:
    import onnxcam

    ex = onnxcam.Explainer(model_path, method="gradcam")
    out = {}
    for name, tgt in (("predicted", None), ("true", labels), ("mark_class", np.full(len(x), md.MARK_CLASS))):
        maps, preds = [], []
        for i in range(0, len(x), 200):
            r = ex.explain(x[i : i + 200], None if tgt is None else tgt[i : i + 200])
            maps.append(np.asarray(r.heatmaps))
            if tgt is None:
                preds.append(np.asarray(r.targets))
        maps = np.concatenate(maps)
        assert maps.shape[1:] == (md.SIZE, md.SIZE), maps.shape
        out[name] = stats(maps, boxes, marks)
        if tgt is None:
            p = np.concatenate(preds)
            out["accuracy"] = float((p == labels).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="test images (from the test split)")
    ap.add_argument("--models", default=os.path.join(ROOT, "models", "spurious"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import onnxcam.image as oi

    test = md.make_split("test", a.n)
    x, y, _ = md.to_arrays(test)
    sets = {"test": (x, y, [s.box for s in test], [s.mark for s in test])}
    ex_dir = os.path.join(ROOT, "examples", "spurious")
    with open(os.path.join(ex_dir, "boxes.json")) as f:
        meta = json.load(f)
    names = sorted(meta)
    imgs = [oi.load_image(os.path.join(ex_dir, n)) for n in names]
    xe = oi.preprocess(imgs, (md.SIZE, md.SIZE), preset="unit")
    ye = np.array([md.CLASSES.index(meta[n]["label"]) for n in names])
    sets["examples"] = (xe, ye, [meta[n]["box"] for n in names], [meta[n]["mark"] for n in names])
    res = {}
    for kind in ("biased", "unbiased"):
        path = os.path.join(a.models, f"{kind}.onnx")
        res[kind] = {s: run(path, *v) for s, v in sets.items()}
    for s in sets:
        b, u = res["biased"][s]["predicted"], res["unbiased"][s]["predicted"]
        res[f"ratio_{s}"] = b["mark_energy"] / max(u["mark_energy"], 1e-12)
    print(json.dumps(res, indent=1))
    for s in sets:
        print(
            f"[{s}] mark energy biased {res['biased'][s]['predicted']['mark_energy']:.4f} "
            f"unbiased {res['unbiased'][s]['predicted']['mark_energy']:.4f} ratio {res[f'ratio_{s}']:.2f}; "
            f"object pointing biased {res['biased'][s]['predicted']['object_pointing']:.3f} "
            f"unbiased {res['unbiased'][s]['predicted']['object_pointing']:.3f}",
            file=sys.stderr,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
