"""What onnxcam does with each transformer fixture: default layer, explain, the golden layer, check.

Imports onnxcam and numpy only (run it with the test venv from the repository root)::

    /work/main/.venv/bin/python -m tools.transformers.probe_onnxcam

For every ``tests/data/transformers/*.onnx`` (described in ``index.json``) it records: the default
layer onnxcam picks and its (C, h, w) reading; whether ``Explainer(path).explain(x)`` (Grad-CAM)
succeeds, and the gradient error at that layer when it is the golden one; the same with
``layer=<golden default tensor>``; ``onnxcam check`` on the default layer. Errors are recorded by
their type and first line — this is a probe, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

import onnxcam
from onnxcam.check import self_check

from tools.common import ROOT

DATA = ROOT / "tests" / "data" / "transformers"


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _map_error(cams: np.ndarray, ref_raw: np.ndarray) -> float | str:
    """max |onnxcam − pytorch-grad-cam| of the min-max normalised ReLU'd maps at layer resolution."""
    if cams.shape != ref_raw.shape:
        return f"shape {list(cams.shape)} vs reference {list(ref_raw.shape)}"
    norm = lambda m: (m - m.min(axis=(1, 2), keepdims=True)) / (m.max(axis=(1, 2), keepdims=True) + 1e-7)
    return float(np.abs(norm(np.maximum(cams, 0)) - norm(np.maximum(ref_raw, 0))).max())


def probe(stem: str, entry: dict) -> dict:
    path = str(DATA / f"{stem}.onnx")
    g = np.load(DATA / f"{stem}.npz")
    x = g["x"]
    out: dict = {"stem": stem, "golden_layer": entry["layers"]["default"]["onnx"]}
    try:
        ex = onnxcam.Explainer(path, method="gradcam")
        layers = ex.layers((x.shape[2], x.shape[3]))
        out["candidates"] = len(layers)
        res = ex.explain(x)
        out["default"] = {"layer": res.layer, "activation_shape": list(res.activations.shape),
                          "is_golden": res.layer == out["golden_layer"], "exit": "ok",
                          "gradcam_err": _map_error(res.cams, g["pgc_raw_GradCAM"])}
    except Exception as exc:  # noqa: BLE001 - a probe records every failure
        out["default"] = {"exit": _err(exc)}
    try:
        res = onnxcam.Explainer(path, method="gradcam", layer=out["golden_layer"]).explain(x)
        out["golden"] = {"exit": "ok", "activation_shape": list(res.activations.shape),
                         "gradcam_err": _map_error(res.cams, g["pgc_raw_GradCAM"])}
    except Exception as exc:  # noqa: BLE001
        out["golden"] = {"exit": _err(exc)}
    try:
        rep = self_check(path)
        out["check"] = rep.as_dict()
    except Exception as exc:  # noqa: BLE001
        out["check"] = {"exit": _err(exc)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    index = json.loads((DATA / "index.json").read_text())
    rows = [probe(stem, e) for stem, e in index.items() if not args.only or stem in args.only]
    print(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
