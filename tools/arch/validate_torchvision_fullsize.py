"""Dev-time check of onnxcam on FULL-SIZE torchvision architectures (not part of the test suite).

Step 1 (torch venv): for each architecture, build ``torchvision.models.<arch>(weights=None)`` at its
default widths (untrained; weights re-randomised as in make_torchvision_corpus.py: He-normal,
BatchNorm statistics measured on random data then perturbed, last affine layer calibrated), export it
with both exporters (TorchScript opset 17, dynamo opset 18, dynamic batch) into ``--out``
(default /tmp/onnxcam_full, outside the repository), and save autograd goldens (float64, batch 2,
224x224 or 299x299 for Inception-v3) as ``<stem>.npz`` next to each ``.onnx`` in the format of
tests/data/goldens/README.md (default layer = the input of the final global pooling, grabbed by a
forward (pre-)hook). Failures are recorded in ``export_report.json`` and the run continues.

Step 2 (dev venv, ``--check``): runs ``onnxcam.Explainer(path, method="gradcam").explain(x)`` on every
file and prints the coverage table (max |diff| / max |golden| for activations and gradients, or
the exact error message).

    /work/venvs/tv/bin/python -m tools.arch.validate_torchvision_fullsize [--only resnet50 ...]
    /work/venvs/dev/bin/python -m tools.arch.validate_torchvision_fullsize --check
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from tools import common
from tools.arch import make_torchvision_corpus as corpus  # numpy-only at import time

OUT = Path("/tmp/onnxcam_full")

# name -> (constructor kwargs, input size, capture, head module, fc module or None)
ARCHS: dict[str, tuple[dict, int, tuple[str, str], str, str | None]] = {
    "squeezenet1_1": ({}, 224, ("pre", "classifier.3"), "classifier.1", None),
    "shufflenet_v2_x1_0": ({}, 224, ("out", "conv5"), "fc", "fc"),
    "mobilenet_v2": ({}, 224, ("out", "features"), "classifier.1", "classifier.1"),
    "mobilenet_v3_large": ({}, 224, ("pre", "avgpool"), "classifier.3", None),
    "mnasnet1_0": ({}, 224, ("out", "layers"), "classifier.1", "classifier.1"),
    "regnet_y_400mf": ({}, 224, ("pre", "avgpool"), "fc", "fc"),
    "efficientnet_b0": ({}, 224, ("pre", "avgpool"), "classifier.1", "classifier.1"),
    "resnet50": ({}, 224, ("pre", "avgpool"), "fc", "fc"),
    "densenet121": ({}, 224, ("func", "torchvision.models.densenet.F.adaptive_avg_pool2d"), "classifier", "classifier"),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224, ("pre", "avgpool"), "fc", "fc"),
    "alexnet": ({}, 224, ("pre", "avgpool"), "classifier.6", None),
    "convnext_tiny": ({}, 224, ("pre", "avgpool"), "classifier.2", None),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299, ("pre", "avgpool"), "fc", "fc"),
    "vgg11_bn": ({}, 224, ("pre", "avgpool"), "classifier.6", None),
    "resnext50_32x4d": ({}, 224, ("pre", "avgpool"), "fc", "fc"),
    "wide_resnet50_2": ({}, 224, ("pre", "avgpool"), "fc", "fc"),
    "efficientnet_v2_s": ({}, 224, ("pre", "avgpool"), "classifier.1", "classifier.1"),
}


def build_one(name: str, out: Path, report: dict) -> None:
    import torch
    import torchvision

    kw, size, capture, head, fc = ARCHS[name]
    seed = 5000 + list(ARCHS).index(name)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kw)
    shape = (2, 3, size, size)
    model = corpus.randomise(model, shape, seed, head, n_stats=4, n_cal=16)
    x = corpus.make_input(model, shape, seed, name, tries=4, strict=False)  # targets may coincide
    spec = {"capture": capture, "desc": f"{name}: input of the final global pooling ({capture[0]} {capture[1]})", "fc": fc}
    g = corpus.goldens(model, spec, x)
    t_gold = time.perf_counter() - t0
    with torch.no_grad():  # conditioning of the randomised net: torch float32 vs the float64 golden
        f32_err = float(np.abs(model(x).numpy() - g["outputs"]).max())
    for exporter, dynamo, opset in (("ts", False, corpus.OPSET), ("dy", True, corpus.DYNAMO_OPSET)):
        stem = f"full_{exporter}_{name}"
        path = out / f"{stem}.onnx"
        t1 = time.perf_counter()
        entry: dict = {"arch": name, "exporter": exporter, "golden_s": round(t_gold, 1), "torch_f32_err": f32_err}
        try:
            entry["notes"] = corpus.export(model, x, path, dynamo, opset)
            y = common.run_ort(path, g["x"])[0]  # not asserted: deep randomised nets can be ill-conditioned in float32
            entry["max_abs_err"] = float(np.abs(y - g["outputs"]).max())
            entry["rel_err"] = entry["max_abs_err"] / float(np.abs(g["outputs"]).max())
            entry["bytes"] = path.stat().st_size
            entry["ops"], entry["opset"] = common.op_types(path)
            np.savez_compressed(out / f"{stem}.npz", **g)
            entry["ok"] = True
        except Exception as e:  # keep going
            entry.update(ok=False, error=f"{type(e).__name__}: {str(e)[:1500]}")
        entry["export_s"] = round(time.perf_counter() - t1, 1)
        report[stem] = entry
        print(f"{stem}: " + (f"ok, ort vs torch {entry['max_abs_err']:.1e} (rel {entry['rel_err']:.1e}; torch float32 vs float64 {f32_err:.1e}), {entry['export_s']}s"
                             if entry["ok"] else entry["error"][:300]), file=sys.stderr, flush=True)
    del model
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", action="append", choices=list(ARCHS))
    ap.add_argument("--check", action="store_true", help="run onnxcam on the exported files (dev venv)")
    ap.add_argument("--budget-s", type=float, default=25 * 60, help="stop starting new architectures after this")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rpath = out / "export_report.json"
    report: dict = json.loads(rpath.read_text()) if rpath.exists() else {}
    names = args.only or list(ARCHS)
    if args.check:
        results: dict = {}
        for name in names:
            for exporter in ("ts", "dy"):
                stem = f"full_{exporter}_{name}"
                p = out / f"{stem}.onnx"
                if not (p.exists() and p.with_suffix(".npz").exists()):
                    err = report.get(stem, {}).get("error")
                    if err:
                        results[stem] = {"ok": False, "error": "EXPORT FAILED: " + err.splitlines()[0][:300]}
                    continue
                results[stem] = corpus.compare(p, p.with_suffix(".npz"))
                r = results[stem]
                print(f"{stem}: " + (f"OK act {r['act_rel']:.1e} grad {r['grad_rel']:.1e} layer {r['layer']!r} ({r['seconds']}s)"
                                     if r.get("ok") else "FAIL " + r["error"]), file=sys.stderr, flush=True)
        (out / "onnxcam_check.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(corpus.coverage_table(results, names, [("TorchScript opset 17", "full_ts_"), ("dynamo opset 18", "full_dy_")]))
        return
    import torch
    torch.set_num_threads(2)
    start = time.perf_counter()
    for name in names:
        if time.perf_counter() - start > args.budget_s:
            print(f"{name}: skipped (time budget)", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        try:
            build_one(name, out, report)
        except BaseException as e:  # SystemExit from goldens too
            if isinstance(e, KeyboardInterrupt):
                raise
            report[f"full_ts_{name}"] = report[f"full_dy_{name}"] = {"arch": name, "ok": False, "error": f"golden/build: {type(e).__name__}: {e}"}
            print(f"{name}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
        print(f"{name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        rpath.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
