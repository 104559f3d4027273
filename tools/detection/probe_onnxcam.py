"""What onnxcam does with each detector / segmenter fixture: the coverage table.

Run from the repository root with onnxcam's own environment (no torch needed)::

    python tools/detection/probe_onnxcam.py [--md FILE]

For every ONNX file in tests/data/detection/index.json it records the default layer `onnxcam
layers` picks (and whether DFL or head-output tensors are offered as candidates), and for every
golden target: what `onnxcam explain --target SPEC` does on the CLI (exit code, the stderr line,
the layer and target it reports), and the relative error of onnxcam's gradient at the golden's
feature map against torch autograd, max|g − g_torch| / max|g_torch| (Python API, the golden's
input). Prints a markdown report (or writes it to --md).
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DIR = ROOT / "tests" / "data" / "detection"
IMAGE = ROOT / "examples" / "coffee.png"


def _cli(args: list[str]) -> tuple[int, str, str]:
    from onnxcam.cli import cli

    r = CliRunner().invoke(cli, args)
    err = (r.stderr if hasattr(r, "stderr") else "") or ""
    if r.exception and not isinstance(r.exception, SystemExit):
        err = f"unhandled {type(r.exception).__name__}: {r.exception}"
    return r.exit_code, r.stdout, err.strip().splitlines()[-1][:220] if err.strip() else ""


def _api_gradient(path: Path, layer: str, spec: str, x: np.ndarray, output: str) -> np.ndarray:
    from onnxcam import Explainer
    from onnxcam.cli import _parse_target

    ex = Explainer(str(path), method="gradcam", layer=layer, output=output, providers=["CPUExecutionProvider"])
    res = ex.explain(x, targets=_parse_target(spec))
    return res.gradients


def probe(md: list[str]) -> None:
    index = json.loads((DIR / "index.json").read_text())
    md.append("| file | default layer | DFL/head tensors among candidates |")
    md.append("| --- | --- | --- |")
    rows = []
    for key, model in index["models"].items():
        g = np.load(DIR / model["golden"])
        for fname, info in model["files"].items():
            if "error" in info:
                md.append(f"| {fname} | export failed: {info['error'][:100]} | |")
                continue
            path = DIR / f"{fname}.onnx"
            code, out, err = _cli(["layers", str(path), "--json"])
            if code == 0:
                lay = json.loads(out)
                cands = [c["name"] for c in lay.get("layers", lay if isinstance(lay, list) else [])] if isinstance(lay, (dict, list)) else []
                default = next((c["name"] for c in lay.get("layers", []) if c.get("default")), lay.get("default")) if isinstance(lay, dict) else None
                bad = [n for n in info.get("dfl_tensors", []) + list(info.get("head_outputs", {}).values()) if n in cands]
                known = {v: k for k, v in info.get("layers", {}).items()}
                md.append(f"| {fname} | `{default}` ({known.get(default, 'not a head input')}) | {len(bad)} of {len(cands)}: {', '.join(bad[:3])} |")
            else:
                md.append(f"| {fname} | layers exits {code}: {err} | |")
            output = info["outputs"][0]["name"]
            kind = "whole" if "_whole_" in fname else "head"
            for t in model["targets"]:
                if kind not in t.get("applies", [kind]):
                    continue
                with tempfile.TemporaryDirectory() as td:
                    code, out, err = _cli(["explain", str(path), str(IMAGE), "-o", td, "--preset", "unit", "--target",
                                           t["spec"], "--json", "--device", "cpu"])
                cli_note = f"exit {code}"
                if code == 0:
                    try:
                        res = json.loads(out)
                        img = res["images"][0] if "images" in res else res
                        cli_note += f", layer {res.get('layer')}, " + json.dumps({k: img.get(k) for k in ("target", "score", "detection") if k in img})[:120]
                    except (ValueError, KeyError, IndexError, TypeError):
                        cli_note += ", output not JSON"
                else:
                    cli_note += f": {err}"
                errs = []
                if t.get("expect") == "error":
                    rows.append((fname, t["id"], t["spec"], cli_note, "should be an error (class predicted nowhere)"))
                    continue
                # one layer per target: the one where the torch gradient is largest
                lk = max(t["grads"], key=lambda k: float(np.abs(g[t["grads"][k]]).max()))
                for lk, gk in [(lk, t["grads"][lk])]:
                    lname = info.get("layers", {}).get(lk)
                    if lname is None:
                        errs.append(f"{lk}: not in the ONNX main graph")
                        continue
                    gold = g[gk]
                    try:
                        got = _api_gradient(path, lname, t["spec"], g["x"], output)
                        if gold.ndim == got.ndim + 1:  # top-k: k gradients
                            gold = gold.reshape(-1, *gold.shape[2:])
                        if got.shape != gold.shape:
                            errs.append(f"{lk}: shape {list(got.shape)} vs {list(gold.shape)}")
                        else:
                            rel = float(np.abs(got - gold).max() / max(np.abs(gold).max(), 1e-30))
                            errs.append(f"{lk}: {rel:.1e}")
                    except Exception as e:  # noqa: BLE001 - recorded, this is a probe
                        errs.append(f"{lk}: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
                rows.append((fname, t["id"], t["spec"], cli_note, "; ".join(errs)))
    md.append("")
    md.append("| file | target | spec | CLI | API gradient at the golden layer (largest torch gradient): rel. error vs torch |")
    md.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        md.append("| " + " | ".join(s.replace("|", "/") for s in r) + " |")


def main() -> int:
    md: list[str] = []
    try:
        probe(md)
    except Exception:
        traceback.print_exc()
        return 1
    text = "\n".join(md) + "\n"
    if len(sys.argv) > 2 and sys.argv[1] == "--md":
        Path(sys.argv[2]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
