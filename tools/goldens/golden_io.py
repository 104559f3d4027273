"""Framework-free helpers shared by the golden generators (make_tf_goldens.py,
make_paddle_goldens.py): the golden format text, the JSON tables and README sections they keep
up to date, and the float64 directional-derivative check of an input gradient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def check_directional_derivative(stem, f64, x, targets, g_x, rtol=1e-5) -> None:
    """Central differences of the float64 model along a random direction vs <input_gradient, v>.

    ReLU/ReLU6 kinks within eps of x make large steps unreliable (seen on the MobileNetV2s at
    eps=1e-6), so the check passes when any of a few small steps agrees.
    """
    v = np.random.default_rng(7).standard_normal(x.shape)
    x = x.astype(np.float64)
    rows = np.arange(len(targets))
    an = float((g_x * v).sum())
    fds = []
    for eps in (1e-6, 1e-7, 1e-8):
        fd = (f64(x + eps * v)[rows, targets].sum() - f64(x - eps * v)[rows, targets].sum()) / (2 * eps)
        fds.append(float(fd))
        if abs(fd - an) <= rtol * max(1.0, abs(an)):
            print(f"{stem}: directional derivative fd={fd:.8f} (eps={eps:g}) autograd={an:.8f}", flush=True)
            return
    raise SystemExit(f"{stem}: input gradient fails the directional check ({fds} vs {an})")


def update_layers_json(path: Path, infos: list[dict]) -> None:
    """Merge this run's default-layer tensors into the JSON table at `path`."""
    table = json.loads(path.read_text()) if path.exists() else {}
    for info in infos:
        table[info["stem"]] = {"tensor": info["tensor"], "layout": info["layout"]}
    path.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")


def update_report(report_path: Path, out_dir: Path, infos: list[dict]) -> dict:
    """Merge this run's per-file details into report_path (kept so --only rebuilds keep the others)."""
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for info in infos:
        report[info["stem"]] = info
    report = {k: report[k] for k in sorted(report) if (out_dir / f"{k}.onnx").exists()}
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def write_readme_section(path: Path, begin: str, end: str, body: str) -> None:
    """Rewrite only the text between this generator's markers in README.md (append if absent)."""
    text = path.read_text() if path.exists() else "# Golden test models\n"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def per_file_table(report: dict) -> str:
    rows = [
        "| file | size (B) | opset | input (name, shape) | activation (N,C,h,w) | layer (framework) "
        "| layer tensor | layout in graph | auto_pad | op types |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stem, r in report.items():
        (iname, ishape), = r["inputs"]
        shape = "×".join(str(d) if d else "?" for d in ishape)
        rows.append(
            f"| `{stem}.onnx` | {r['bytes']} | {r['opset'].get('ai.onnx')} | `{iname}` {shape} "
            f"| {tuple(r['activation_shape'])} | `{r['layer']}` | `{r['tensor']}` | {r['layout']} "
            f"| {', '.join(r['auto_pad']) or 'none'} | {', '.join(r['ops'])} |"
        )
    rows.append("")
    rows.append("All tensors matching the activation (in node order), and max |onnxruntime − framework| on the outputs:")
    rows.append("")
    for stem, r in report.items():
        ms = ", ".join(f"`{n}` ({l})" for n, l in r["all_matches"])
        rows.append(f"- `{stem}`: {ms}; output error {r['ort_max_abs_err']:.1e}")
    return "\n".join(rows)


GOLDEN_FORMAT = """\
One `<stem>.npz` per `<stem>.onnx` (`np.savez_compressed`). Goldens are computed by the framework's
own autograd on a float64 copy of the model (same weights) and stored as float32; the generator
also checks the input gradient against float64 central differences along a random direction.

| key | dtype, shape | meaning |
|---|---|---|
| `x` | float32, the model's own input layout{x_layout} | seeded input, batch 2 (seed chosen so the two samples get different targets){x_note} |
| `outputs` | float32 (2, K) | model output by the framework; the onnxruntime output of the `.onnx` matches to 1e-4 (checked) |
| `targets` | int64 (2,) | argmax of `outputs` |
| `activation` | float32 (2, C, h, w), CHANNELS FIRST{act_note} | the DEFAULT layer: last spatial 4-D activation on the path to the output = input of the final global average pooling |
| `gradient` | float32 (2, C, h, w), channels first | d(Σ_n outputs[n, targets[n]]) / d activation |
| `input_gradient` | float32, same shape and layout as `x` | d(Σ_n outputs[n, targets[n]]) / d x |
| `fc_weight`, `fc_bias` | float32 (K, C), (K,) | only where the head is GAP → single Dense/Linear |
| `layer_desc` | str (0-d array) | the framework's layer name |

`layers_tf_paddle.json` maps each stem to `{{"tensor": <ONNX tensor holding the default activation>,
"layout": "NCHW"|"NHWC"}}` (layout of that tensor inside the ONNX graph). Found by exposing every
float node output as a graph output and matching values to `activation` (atol 1e-4, in either
layout); the match that feeds the global pooling node is recorded. Debugging aid only: the library
must find the default layer by itself. `{report}` keeps the per-file details."""
