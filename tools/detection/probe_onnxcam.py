"""The coverage table of tests/data/detection: what onnxcam does with every fixture and target.

Run from the repository root with onnxcam's own environment (no torch needed)::

    python -m tools.detection.probe_onnxcam [--md FILE]

For every ONNX file of tests/data/detection/index.json and every golden target that applies to
it, explain the target as the README documents it (`--target` string; the stated format for raw
SSD / RetinaNet logits) at the default layers, and report the relative error of the gradient at
each default layer against torch autograd, max|g − g_torch| / max|g_torch| (the worst layer),
whether the detection chosen is torch's, and the error onnxcam reports instead where it refuses.
(tools/detection/BEFORE.md records what onnxcam did with the same fixtures before issue 16.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from onnxcam import Explainer
from onnxcam.targets import parse_target, with_detection_options

ROOT = Path(__file__).resolve().parents[2]
DIR = ROOT / "tests" / "data" / "detection"
STATED = {"ssd": "ssd", "retinanet": "retinanet"}


def _keys(info: dict) -> dict[str, str]:
    keys = {v: k for k, v in info["layers"].items()}
    for k, names in info.get("layers_aliases", {}).items():
        keys.update({n: k for n in names})
    return keys


def _want_row(t: dict):
    for k in ("anchor", "query", "proposal", "anchors", "queries", "proposals"):
        if k in t:
            return t[k]
    return None


def _one(ex: Explainer, g, t: dict, info: dict, fam: str, fname: str) -> tuple[str, str]:
    """(gradient error, note) of one target on one file."""
    target = parse_target(t["spec"])
    if "_head_" in fname and fam in STATED:
        target = with_detection_options(target, STATED[fam])
    seg = fam == "segmentation"
    try:
        res = ex.explain(g["x"], targets=target)
    except Exception as exc:  # noqa: BLE001 - the table records refusals
        return "—", f"refused: {str(exc).splitlines()[0][:120]}"
    if t.get("expect") == "error":
        return "—", "error for the image: " + (res.errors[0] or "NONE (a blank map!)")[:90]
    keys = _keys(info)
    errs = []
    for r in res.layer_results or [res]:
        k = keys.get(r.layer)
        if k is None or k not in t["grads"]:
            errs.append(float("nan"))
            continue
        gold = g[t["grads"][k]]
        gold = gold.reshape(-1, *gold.shape[2:]) if gold.ndim == 5 else gold
        errs.append(float(np.abs(r.gradients - gold).max() / (np.abs(gold).max() + 1e-30)))
    note = ""
    if not seg:
        want = _want_row(t)
        rows = [c[0] for c in getattr(target, "chosen", [])]
        same = rows == (want if isinstance(want, list) else [want])
        note = "row as torch" if same else f"row {rows} vs torch {want}"
    if res.errors and any(res.errors):
        note += f"; reported: {next(e for e in res.errors if e)[:60]}"
    layers = " + ".join(keys.get(r.layer, r.layer) for r in res.layer_results or [res])
    return f"{max(errs):.1e}", f"{layers}; {note}"


def table() -> list[str]:
    index = json.loads((DIR / "index.json").read_text())
    lines = ["| file | target | spec | rel. error vs autograd (worst default layer) | layers; detection |",
             "| --- | --- | --- | --- | --- |"]
    for key, model in index["models"].items():
        with np.load(DIR / model["golden"]) as z:
            g = {k: z[k] for k in z.files}
        fam = model["family"]
        for fname, info in model["files"].items():
            if "error" in info:
                lines.append(f"| {fname} | — | — | not exported: {info['error'][:80]} | |")
                continue
            kind = "whole" if "_whole_" in fname else "head"
            layer = None
            if fam == "segmentation":
                layer = info["layers"]["high" if "high" in info["layers"] else "out"]
            ex = Explainer(DIR / f"{fname}.onnx", layer=layer, providers=["CPUExecutionProvider"])
            for t in model["targets"]:
                if kind not in t.get("applies", [kind]) or t["id"] == "tiny":
                    continue
                err, note = _one(ex, g, t, info, fam, fname)
                lines.append(f"| {fname} | {t['id']} | `{t['spec']}` | {err} | {note.replace('|', '/')} |")
    return lines


def main() -> int:
    text = "\n".join(table()) + "\n"
    if len(sys.argv) > 2 and sys.argv[1] == "--md":
        Path(sys.argv[2]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
