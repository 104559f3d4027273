"""How far Faster Score-CAM (`max_N`) is from the full Score-CAM, on real photos.

    python bench/faster_scorecam.py [--max-n 16 32 64 128 256] [--threads 2] [--readme]

The bundled MobileNetV2 (ImageNet weights, 1280 channels at its default layer) explains the real
photos of examples/ (chelsea, coffee, astronaut; ImageNet preprocessing from the model's metadata)
and, with --composites, the 40 photos of examples/composites/. For each max_N: the max |Δ| and the
Pearson correlation of the heatmaps against the full Score-CAM (max_N = None), whether the
heatmap's peak stays in the same place (within 16 px), and the time against the full method's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from onnxcam import Explainer  # noqa: E402
from onnxcam.methods import ScoreCAM  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
README = HERE / "README.md"
BEGIN, END = "<!-- faster_scorecam:begin -->", "<!-- faster_scorecam:end -->"


def photos(composites: bool) -> tuple[list[str], np.ndarray]:
    """The example photos preprocessed as the model expects (ImageNet mean/std, 224×224, NCHW)."""
    import cv2

    files = sorted((ROOT / "examples").glob("*.png"))
    if composites:
        files += sorted((ROOT / "examples" / "composites").glob("*.jpg"))
    ims = []
    for f in files:
        im = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        h, w = im.shape[:2]
        s = 256 / min(h, w)
        im = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        y0, x0 = (im.shape[0] - 224) // 2, (im.shape[1] - 224) // 2
        im = im[y0 : y0 + 224, x0 : x0 + 224].astype(np.float32) / 255
        ims.append(((im - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1))
    return [f.stem for f in files], np.stack(ims).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-n", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--composites", action="store_true")
    ap.add_argument("--readme", action="store_true")
    a = ap.parse_args(argv)
    names, x = photos(a.composites)
    t0 = time.perf_counter()
    full = Explainer(MODEL, method=ScoreCAM(), threads=a.threads).explain(x)
    t_full = time.perf_counter() - t0
    c = full.activations.shape[1]
    rows = []
    for n in a.max_n:
        t0 = time.perf_counter()
        got = Explainer(MODEL, method=ScoreCAM(max_N=n), threads=a.threads).explain(x, targets=full.targets)
        dt = time.perf_counter() - t0
        diff = np.abs(got.heatmaps - full.heatmaps).reshape(len(x), -1).max(axis=1)
        corr = [np.corrcoef(g.ravel(), f.ravel())[0, 1] for g, f in zip(got.heatmaps, full.heatmaps)]
        peaks = [np.unravel_index(np.argmax(m), m.shape) for m in (*got.heatmaps, *full.heatmaps)]
        same = [np.hypot(*np.subtract(p, q)) <= 16 for p, q in zip(peaks[: len(x)], peaks[len(x):])]
        rows.append((n, float(np.median(diff)), float(diff.max()), float(np.median(corr)), float(min(corr)),
                     sum(same), dt / t_full))
        print(f"max_N={n:4d}: max|Δ| median {rows[-1][1]:.3f} worst {rows[-1][2]:.3f}; corr median {rows[-1][3]:.3f} "
              f"worst {rows[-1][4]:.3f}; peak kept {sum(same)}/{len(x)}; time {dt / t_full:.3f}× full", file=sys.stderr)
    lines = [f"| max_N | forwards per image | heatmap max abs Δ (median / worst) | correlation (median / worst) | "
             f"peak within 16 px | time vs full |", "|---:|---:|---:|---:|---:|---:|"]
    for n, dmed, dmax, cmed, cmin, same, tr in rows:
        lines.append(f"| {n} | {min(n, c)} of {c} | {dmed:.3f} / {dmax:.3f} | {cmed:.3f} / {cmin:.3f} | {same}/{len(x)} | {tr:.3f}× |")
    note = (f"`python bench/faster_scorecam.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: bundled MobileNetV2, {len(x)} real photos "
            f"({', '.join(names[:3])}{', …' if len(names) > 3 else ''}), their top-1 classes; full Score-CAM "
            f"{t_full:.0f} s for all of them.")
    text = note + "\n\n" + "\n".join(lines)
    print(text)
    if a.readme:
        body = README.read_text()
        block = BEGIN + "\n" + text + "\n" + END
        if BEGIN in body:
            pre, rest = body.split(BEGIN, 1)
            body = pre + block + rest.split(END, 1)[1]
        else:
            body = body.rstrip("\n") + "\n\n## Faster Score-CAM (`max_N`) against the full method\n\n" + block + "\n"
        README.write_text(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
