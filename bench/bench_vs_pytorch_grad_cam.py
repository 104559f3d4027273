"""onnxcam against pytorch-grad-cam, side by side in one process (build-time: the torch venv).

    /work/venvs/torch/bin/python bench/bench_vs_pytorch_grad_cam.py [--threads 2] [--batches 1 8]
        [--rounds 5] [--methods gradcam fullgrad ...] [--slow] [--readme]

The model is torchvision's resnet50 with seeded weights and BN statistics (bench/torch_models.py),
exported to ONNX by the script (TorchScript exporter, opset 17, cached in bench/.cache/): the same
weights on both sides. torch runs with `torch.set_num_threads(T)`, onnxruntime with T intra-op
threads (default 2). The layer is `model.layer4[-1]` for pytorch-grad-cam, whose output is
onnxcam's default layer of the export (the last bottleneck's output ReLU); targets are the top-1
classes, given to both explicitly.

Timing: pytorch-grad-cam's call `cam(input_tensor=x, targets=...)` (the whole call: forward,
backward, post-processing, resize) against onnxcam's `Explainer.explain(x, targets)`; interleaved
rounds in alternating order, each call preceded by untimed calls for ≥ 0.1 s (calls under 1 s) so
that neither side's worker threads spin in the other's timing; the figure is the median over
rounds of (pytorch-grad-cam time / onnxcam time), i.e. onnxcam's speed-up. Maps: max |Δ| of the
(N, 224, 224) heatmaps (Eigen methods: the smaller of the two signs, since pytorch-grad-cam keeps
LAPACK's arbitrary sign).

pytorch-grad-cam's Ablation-CAM and Score-CAM rerun the whole model once per channel (about a
minute per image here); they run only with --slow, one round, batch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import onnxruntime as ort  # noqa: E402
import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import onnxcam  # noqa: E402
from onnxcam.methods import get_method  # noqa: E402
from onnxcam.methods.maps import normalize_maps  # noqa: E402
from timing import timed_block  # noqa: E402
from torch_models import export, torch_model  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- bench_vs_pgc:begin -->", "<!-- bench_vs_pgc:end -->"

# onnxcam name → pytorch-grad-cam class
PAIRS = {
    "gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "gradcam-elementwise": pgc.GradCAMElementWise,
    "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM, "kpcacam": pgc.KPCA_CAM, "fem": pgc.FEM,
    "fullgrad": pgc.FullGrad, "guidedbackprop": None, "ablationcam": pgc.AblationCAM, "scorecam": pgc.ScoreCAM,
}
SLOW = {"ablationcam", "scorecam"}
EIGEN = {"eigencam", "eigengradcam", "kpcacam"}


def pgc_call(name: str, model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> Callable[[], np.ndarray]:
    """A no-argument call of pytorch-grad-cam's method on (x, targets) returning the heatmaps."""
    tg = [ClassifierOutputTarget(int(t)) for t in targets]
    if name == "guidedbackprop":
        gb = pgc.GuidedBackpropReLUModel(model=model, device="cpu")

        def guided() -> np.ndarray:  # one call per image, as the library takes one target
            out = [gb(x[i : i + 1].clone(), target_category=int(targets[i])) for i in range(len(x))]
            return np.stack([np.abs(o).max(axis=2) for o in out])  # our heatmap: max |R| over channels
        return guided
    cls = PAIRS[name]
    kw = {"batch_size": 32} if name in SLOW else {}
    with contextlib.redirect_stdout(io.StringIO()):
        cam = cls(model=model, target_layers=[] if name == "fullgrad" else [model.layer4[-1]], **kw)

    def run() -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):
            return cam(input_tensor=x, targets=tg)
    return run


def paired(a: Callable[[], object], b: Callable[[], object], c: Callable[[], object], rounds: int,
           settle: float = 0.1, clock: Callable[[], float] = time.perf_counter) -> dict:
    """a = pytorch-grad-cam, b = onnxcam, c = plain onnxruntime inference of the same model and
    batch, timed in rotating order within each round. `speedup` = median of a/b over rounds;
    `ceiling` = median of a/c: the speed-up of an explanation that cost no more than one plain
    forward pass, i.e. the most any onnxruntime-based method can reach against that call."""
    fns = (a, b, c)
    slow = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        slow.append(time.perf_counter() - t0 > 1)
    times: list[list[float]] = [[], [], []]
    for r in range(rounds):
        for k in (r % 3, (r + 1) % 3, (r + 2) % 3):
            times[k].append(timed_block(fns[k], slow[k], settle, clock))
    ta, tb, tc = times
    return {"speedup": statistics.median([p / q for p, q in zip(ta, tb)]),
            "ceiling": statistics.median([p / q for p, q in zip(ta, tc)]),
            "pgc_ms": statistics.median(ta) * 1e3, "onnxcam_ms": statistics.median(tb) * 1e3,
            "plain_ms": statistics.median(tc) * 1e3, "rounds": rounds}


def map_diff(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |Δ| of the heatmaps (guided backprop: onnxcam's heatmap, the per-image min-max of
    max_c |R|, vs pytorch-grad-cam's raw max_c |R| min-max'd by the same formula, normalize_maps.
    scale_cam_image's absolute ε of 1e-7 would shrink a map whose max_c |R| is ~1e-3 by 1e-4 — the
    whole of the 9.3e-5 once reported here; bench/guided_parity.py)."""
    theirs = np.asarray(theirs, np.float32)
    if name == "guidedbackprop":
        theirs = normalize_maps(theirs)
    return float(np.abs(ours - theirs).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=[m for m in PAIRS if m not in SLOW])
    ap.add_argument("--slow", action="store_true", help="also Ablation-CAM and Score-CAM (batch 1, one round)")
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--cpu-time", action="store_true", help="this process's CPU time instead of the wall clock "
                    "(use with --threads 1: the work of each call, robust to other processes)")
    a = ap.parse_args(argv)
    clock = time.process_time if a.cpu_time else time.perf_counter
    settle = 0.0 if a.cpu_time else 0.1
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    model = torch_model("resnet50")
    path = export(model, "resnet50")
    methods = list(a.methods) + ([m for m in SLOW if m not in a.methods] if a.slow else [])
    rng = np.random.default_rng(0)
    rows = []
    load0 = _load()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for n in a.batches:
        xn = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        plain_fn = lambda: plain.run(None, {plain.get_inputs()[0].name: xn})  # noqa: E731
        x = torch.tensor(xn)
        with torch.no_grad():
            targets = model(x).argmax(1).numpy()
        for name in methods:
            if name in SLOW and n != 1:
                continue
            ex = onnxcam.Explainer(str(path), method=get_method(name), providers=["CPUExecutionProvider"], threads=a.threads)
            ours_fn = lambda: ex.explain(xn, targets=targets)  # noqa: E731
            theirs_fn = pgc_call(name, model, x, targets.tolist())
            ours = ours_fn().heatmaps
            theirs = theirs_fn()
            if name in EIGEN:
                flipped = _eigen_flipped(name, model, x, targets)
                diff = min(map_diff(name, ours, theirs), map_diff(name, ours, flipped)) if flipped is not None else map_diff(name, ours, theirs)
            else:
                diff = map_diff(name, ours, theirs)
            r = paired(theirs_fn, ours_fn, plain_fn, 1 if name in SLOW else a.rounds, settle, clock)
            row = {"batch": n, "method": name, **r, "max_abs_diff": diff}
            rows.append(row)
            print(f"[b{n}] {name:<20} onnxcam {row['speedup']:6.2f}× faster  ({r['onnxcam_ms']:.1f} ms vs "
                  f"pytorch-grad-cam {r['pgc_ms']:.1f} ms; ceiling {r['ceiling']:.2f}× at plain {r['plain_ms']:.1f} ms)  "
                  f"maps max|Δ| {diff:.1e}", file=sys.stderr, flush=True)
            del ex
    head = "| method | " + " | ".join(f"batch {b}: speed-up (ms ours / theirs) | ceiling | max abs Δ" for b in a.batches) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(a.batches)]
    for name in methods:
        cells = []
        for b in a.batches:
            r = next((q for q in rows if q["batch"] == b and q["method"] == name), None)
            cells += [f"{r['speedup']:.1f}× ({r['onnxcam_ms']:.0f} / {r['pgc_ms']:.0f})", f"{r['ceiling']:.1f}×",
                      f"{r['max_abs_diff']:.1e}"] if r else ["", "", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = (f"`bench/bench_vs_pytorch_grad_cam.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: torchvision resnet50 (seeded), {a.threads} threads "
            f"each (torch {torch.__version__}, pytorch-grad-cam {_version('grad-cam')}, onnxruntime {ort.__version__}); "
            f"load average {load0} before, {_load()} after; median of {a.rounds} interleaved rounds "
            f"(1 for Ablation-CAM / Score-CAM); {'CPU' if a.cpu_time else 'wall'} time.")
    tab = "\n".join(lines)
    print(tab + "\n\n" + note)
    if a.readme:
        text = README.read_text()
        block = BEGIN + "\n" + note + "\n\n" + tab + "\n" + END
        if BEGIN in text:
            pre, rest = text.split(BEGIN, 1)
            text = pre + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        README.write_text(text)
    return 0


def _eigen_flipped(name: str, model, x, targets) -> np.ndarray | None:
    """pytorch-grad-cam's Eigen map with the projection negated (its sign is LAPACK's)."""
    cls = PAIRS[name]
    with contextlib.redirect_stdout(io.StringIO()):
        cam = cls(model=model, target_layers=[model.layer4[-1]])
    orig = cam.get_cam_image

    def negated(*args, **kw):
        return -orig(*args, **kw)
    cam.get_cam_image = negated
    return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def _load() -> float:
    import os
    return round(os.getloadavg()[0], 2)


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    raise SystemExit(main())
