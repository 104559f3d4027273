"""Top-1 and Grad-CAM pointing game of the bundled MobileNetV2 on ``examples/composites/``.

    /work/venvs/dev/bin/python -m tools.composites.measure [--method gradcam] [--tol 15] [--json out.json]

For each composite: preprocess as the model's preset says (resize to 224x224, ImageNet mean/std),
explain the predicted class (onnxcam's default target) and, separately, the best-scoring accepted
class of the pasted object; resize the heatmap back to the composite's own size and count a hit
when its maximum lies inside the object's box grown by ``--tol`` px.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tools import common

ROOT = str(common.ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(ROOT, "examples", "composites"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "mobilenet_v2", "mobilenet_v2.onnx"))
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--tol", type=int, default=15)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import onnx

    import onnxcam
    import onnxcam.image as oi

    meta = json.load(open(os.path.join(a.dir, "boxes.json")))
    m = onnx.load(a.model, load_external_data=False)
    classes = json.loads({p.key: p.value for p in m.metadata_props}["onnxcam.labels"])
    ex = onnxcam.Explainer(a.model, method=a.method)
    rows = []
    for fname in sorted(meta):
        info = meta[fname]
        img = oi.load_image(os.path.join(a.dir, fname))
        H, W = img.shape[:2]
        x = oi.preprocess([img], (224, 224), preset="imagenet")
        acc_idx = [classes.index(c) for c in info["label"]]
        r = ex.explain(x)
        pred = int(np.asarray(r.targets)[0])
        obj_cls = pred if pred in acc_idx else None
        if obj_cls is None:
            # the accepted class the model scores highest (logits from a plain run)
            import onnxruntime as ort

            sess = getattr(main, "_sess", None) or ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
            main._sess = sess
            y = sess.run(None, {"input": x})[0][0]
            obj_cls = max(acc_idx, key=lambda i: y[i])
            r_obj = ex.explain(x, [obj_cls])
        else:
            r_obj = r
        row = {"file": fname, "object": info["object"], "pred": classes[pred], "top1_ok": pred in acc_idx}
        x0, y0, x1, y1 = info["box"]
        # chance level: the share of the image covered by the grown box (a uniformly random peak)
        gx = min(W, x1 + a.tol) - max(0, x0 - a.tol)
        gy = min(H, y1 + a.tol) - max(0, y0 - a.tol)
        row["chance"] = gx * gy / (W * H)
        cx, cy = W // 2, H // 2
        row["center_hit"] = bool(x0 - a.tol <= cx < x1 + a.tol and y0 - a.tol <= cy < y1 + a.tol)
        for key, res in (("pred", r), ("object", r_obj)):
            hm = oi.resize_map(np.asarray(res.heatmaps)[0], (H, W))
            py, px = np.unravel_index(int(np.argmax(hm)), hm.shape)
            row[f"peak_{key}"] = [int(px), int(py)]
            row[f"hit_{key}"] = bool(x0 - a.tol <= px < x1 + a.tol and y0 - a.tol <= py < y1 + a.tol)
        rows.append(row)
        print(
            f"{fname} {info['object']:9s} pred={classes[pred]!r:22s} top1={'ok' if row['top1_ok'] else '--'} "
            f"hit(pred)={int(row['hit_pred'])} hit(object)={int(row['hit_object'])}",
            file=sys.stderr,
        )
    n = len(rows)
    summary = {
        "n": n,
        "method": a.method,
        "tol_px": a.tol,
        "top1_correct": sum(r["top1_ok"] for r in rows),
        "pointing_pred": sum(r["hit_pred"] for r in rows) / n,
        "pointing_object_class": sum(r["hit_object"] for r in rows) / n,
        "chance_uniform_peak": float(np.mean([r["chance"] for r in rows])),
        "baseline_center_peak": sum(r["center_hit"] for r in rows) / n,
        "pointing_when_top1_correct": (
            sum(r["hit_pred"] for r in rows if r["top1_ok"]) / max(1, sum(r["top1_ok"] for r in rows))
        ),
        "per_object": {},
    }
    for o in sorted({r["object"] for r in rows}):
        rs = [r for r in rows if r["object"] == o]
        summary["per_object"][o] = {
            "n": len(rs),
            "top1": sum(r["top1_ok"] for r in rs),
            "hit_pred": sum(r["hit_pred"] for r in rs),
            "hit_object": sum(r["hit_object"] for r in rs),
        }
    print(json.dumps(summary, indent=1))
    if a.json:
        json.dump({"summary": summary, "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
