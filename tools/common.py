"""Framework-free helpers shared by the build-time scripts in tools/ (numpy, plus onnx and
onnxruntime imported inside the functions that need them).

Run every script as a module from the repository root, e.g.
``/work/venvs/tf/bin/python -m tools.arch.make_keras_corpus``, so that ``from tools import common``
works without touching sys.path (see tools/__init__.py). Framework-specific helpers live in
tools/keras_helpers.py, tools/paddle_helpers.py and tools/torch_helpers.py; they import their
framework, this module never does.

What is here:
- paths and the tolerance table every generator checks its exports against;
- the README-section writer and the JSON tables (per-file report, default-layer tensors);
- the float64 directional-derivative check of an input gradient;
- the seed search for an input batch whose samples get different target classes;
- ONNX inspection: op types and opset, a per-file summary, graph ancestors/descendants, and the
  search for the tensor that holds a golden activation (every node output exposed and compared);
- the onnxcam-vs-goldens coverage check run by the corpus scripts' ``--check``.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ROOT = Path(__file__).resolve().parents[1]
GOLDENS_DIR = ROOT / "tests" / "data" / "goldens"
ARCH_DIR = ROOT / "tests" / "data" / "arch"

# Tolerances (one table for every generator):
ATOL = 1e-4  # float32 export (onnxruntime) vs the framework's float64 model, absolute (scaled by max(1, |ref|))
RTOL = 1e-4  # relative part where np.allclose is used (torch exports)
DIRECTIONAL_RTOL = 1e-5  # <input_gradient, v> vs central differences of the float64 model
CHECK_REL = 1e-3  # onnxcam vs goldens (`--check`): max |ours − golden| / max |golden|
REBUILD_ATOL = 1e-5  # a torch golden model rebuilt from its seed vs its stored golden (tools/methods)


def scaled_tol(ref: np.ndarray, atol: float = ATOL) -> float:
    """atol scaled by the reference's magnitude: atol · max(1, max |ref|)."""
    return atol * max(1.0, float(np.abs(ref).max()))


# ----------------------------------------------------------------------------- README and JSON tables


def write_readme_section(path: Path, begin: str, end: str, body: str, title: str = "# Golden test models") -> None:
    """Rewrite only the text between one generator's BEGIN/END markers of a README, keeping one
    blank line before the next section; append the section (after `title` for a new file) when
    the markers are absent."""
    text = path.read_text() if path.exists() else f"{title}\n"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def update_layers_json(path: Path, infos: list[dict]) -> None:
    """Merge this run's default-layer tensors ({stem: {tensor, layout}}) into the JSON table at `path`."""
    table = json.loads(path.read_text()) if path.exists() else {}
    for info in infos:
        table[info["stem"]] = {"tensor": info["tensor"], "layout": info["layout"]}
    path.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")


def layers_table(report: dict) -> str:
    """The {stem: {tensor, layout}} JSON text of a whole report."""
    return json.dumps({k: {"tensor": v["tensor"], "layout": v["layout"]} for k, v in report.items()}, indent=2) + "\n"


def update_report(report_path: Path, out_dir: Path, infos: list[dict]) -> dict:
    """Merge this run's per-file details into report_path (so --only rebuilds keep the others),
    dropping entries whose .onnx is gone; returns the merged report, sorted by stem."""
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for info in infos:
        report[info["stem"]] = info
    report = {k: report[k] for k in sorted(report) if (out_dir / f"{k}.onnx").exists()}
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def golden_per_file_table(report: dict) -> str:
    """The per-file table of the tf2onnx and paddle goldens sections of tests/data/goldens/README.md."""
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


# ----------------------------------------------------------------------------- gradients and inputs


@dataclass(frozen=True)
class Directional:
    """Outcome of a directional-derivative check: `fd` and `eps` of the first agreeing step
    (None when none agreed), the analytic value <input_gradient, v> and every step's estimate."""

    analytic: float
    fds: list[float]
    fd: float | None = None
    eps: float | None = None

    @property
    def ok(self) -> bool:
        return self.fd is not None

    @property
    def rel(self) -> float:
        """|fd − analytic| / max(1, |analytic|) of the agreeing step."""
        assert self.fd is not None
        return abs(self.fd - self.analytic) / max(1.0, abs(self.analytic))


def directional_derivative(
    f64: Callable[[np.ndarray], np.ndarray], x: np.ndarray, targets: np.ndarray, g_x: np.ndarray,
    eps_steps: Sequence[float] = (1e-6, 1e-7, 1e-8), rtol: float = DIRECTIONAL_RTOL,
) -> Directional:
    """Central differences of Σ_n f64(x)[n, targets[n]] along a seeded random direction v
    (rng 7) vs the autograd value <g_x, v>, at each step in turn until one agrees to
    rtol · max(1, |<g_x, v>|). ReLU/ReLU6 kinks within eps of x make large steps unreliable (seen on
    the MobileNetV2s at eps=1e-6), so the check passes when any of a few small steps agrees."""
    v = np.random.default_rng(7).standard_normal(x.shape)
    x = x.astype(np.float64)
    rows = np.arange(len(targets))
    an = float((g_x * v).sum())
    fds: list[float] = []
    for eps in eps_steps:
        fd = (f64(x + eps * v)[rows, targets].sum() - f64(x - eps * v)[rows, targets].sum()) / (2 * eps)
        fds.append(float(fd))
        if abs(fd - an) <= rtol * max(1.0, abs(an)):
            return Directional(an, fds, float(fd), eps)
    return Directional(an, fds)


def check_directional_derivative(stem: str, f64, x, targets, g_x, rtol: float = DIRECTIONAL_RTOL) -> None:
    """directional_derivative(), printing the agreeing step or stopping the script (SystemExit)."""
    d = directional_derivative(f64, x, targets, g_x, rtol=rtol)
    if not d.ok:
        raise SystemExit(f"{stem}: input gradient fails the directional check ({d.fds} vs {d.analytic})")
    print(f"{stem}: directional derivative fd={d.fd:.8f} (eps={d.eps:g}) autograd={d.analytic:.8f}", flush=True)


def pick_input(predict: Callable[[np.ndarray], np.ndarray], draw: Callable[[np.random.Generator], np.ndarray],
               seed: int, tries: int = 50) -> np.ndarray:
    """A seeded float32 batch of 2 from draw(default_rng(s)), s = seed, seed + 1, ...: the first whose
    two samples get different argmax classes under predict (outputs as numpy); after `tries`
    seeds, the batch of `seed`."""
    for s in range(seed, seed + tries):
        x = draw(np.random.default_rng(s)).astype(np.float32)
        t = np.asarray(predict(x)).argmax(axis=1)
        if t[0] != t[1]:
            return x
    return draw(np.random.default_rng(seed)).astype(np.float32)


# ----------------------------------------------------------------------------- ONNX inspection


def run_ort(model: Path | bytes, x: np.ndarray, names: list[str] | None = None, optimise: bool = True) -> list[np.ndarray]:
    """Run a model file or serialized model on CPU with x fed to its first input."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model) if isinstance(model, Path) else model, so, providers=["CPUExecutionProvider"])
    return sess.run(names, {sess.get_inputs()[0].name: x})


def op_types(path: Path) -> tuple[list[str], int]:
    """Sorted op types (domain-prefixed outside ai.onnx, plus a `functions:` entry) and the ai.onnx opset."""
    import onnx

    m = onnx.load(str(path))
    ops = sorted({(n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in m.graph.node})
    if m.functions:
        ops.append("functions:" + ",".join(f.name for f in m.functions))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return ops, opset


def onnx_summary(path: Path) -> dict:
    """Op types, non-default auto_pad values, opsets, producer, inputs, outputs and size of a file."""
    import onnx

    m = onnx.load(str(path))
    ops = sorted({n.op_type for n in m.graph.node})
    auto_pads = sorted(
        {
            f"{n.op_type}:{a.s.decode()}"
            for n in m.graph.node
            for a in n.attribute
            if a.name == "auto_pad" and a.s.decode() not in ("NOTSET", "")
        }
    )
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return {
        "ops": ops,
        "auto_pad": auto_pads,
        "opset": opset,
        "producer": f"{m.producer_name} {m.producer_version}",
        "inputs": [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input],
        "outputs": [o.name for o in m.graph.output],
        "bytes": path.stat().st_size,
    }


def ancestors(graph: "onnx.GraphProto", outputs: Iterable[str]) -> set[str]:
    """Every tensor name the given tensors depend on, themselves included (one reverse pass over
    the topologically sorted nodes)."""
    need = set(outputs)
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            need.update(i for i in node.input if i)
    return need


def descendants(graph: "onnx.GraphProto", start: str) -> set[str]:
    """Every tensor name computed from `start`, itself included (one forward pass)."""
    seen = {start}
    for node in graph.node:
        if any(i in seen for i in node.input):
            seen.update(node.output)
    return seen


POOL_OPS = ("GlobalAveragePool", "ReduceMean", "AveragePool")


def find_activation_tensor(onnx_path: Path, x: np.ndarray, act_nchw: np.ndarray, atol: float = ATOL) -> dict:
    """The ONNX tensor holding a golden activation, in either layout: expose every float node
    output, run onnxruntime and match values to atol · max(1, |act|). Of the matches (in node
    order) the one feeding a global pooling node is chosen, else the last.
    Returns {"tensor", "layout", "all_matches": [(name, layout), ...]}."""
    import onnx

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    graph = model.graph
    existing = {o.name for o in graph.output}
    order = []
    for node in graph.node:
        for name in node.output:
            if name and name not in existing and elem.get(name) == onnx.TensorProto.FLOAT:
                graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                order.append(name)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    tol = scaled_tol(act_nchw, atol)
    matches = []
    for name in order:
        v = values.get(name)
        if not isinstance(v, np.ndarray) or v.ndim != 4:
            continue
        for layout, ref in (("NCHW", act_nchw), ("NHWC", act_nchw.transpose(0, 2, 3, 1))):
            if v.shape == ref.shape and np.abs(v - ref).max() <= tol:
                matches.append((name, layout))
    if not matches:
        raise SystemExit(f"{onnx_path.name}: no ONNX tensor matches the golden activation")
    pooled = {n.input[0] for n in onnx.load(str(onnx_path)).graph.node if n.op_type in POOL_OPS}
    chosen = next((m for m in matches if m[0] in pooled), matches[-1])
    return {"tensor": chosen[0], "layout": chosen[1], "all_matches": matches}


def find_layer_tensor(path: Path, x: np.ndarray, act: np.ndarray) -> tuple[str, list[str]]:
    """Torch exports (channels first): expose every node output, run onnxruntime without graph
    optimisations and return the last tensor (in node order) whose value matches `act`
    (np.allclose, ATOL/RTOL), with all matching names."""
    import onnx

    m = onnx.load(str(path))
    existing = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in existing]
    for nme in names:
        m.graph.output.append(onnx.ValueInfoProto(name=nme))
    outs = run_ort(m.SerializeToString(), x, names, optimise=False)
    hits = [nme for nme, v in zip(names, outs)
            if getattr(v, "shape", None) == act.shape and np.allclose(v, act, atol=ATOL, rtol=RTOL)]
    if not hits:
        raise SystemExit(f"{path.name}: no ONNX tensor matches the golden activation {act.shape}")
    return hits[-1], hits


# ----------------------------------------------------------------------------- onnxcam check (dev venv)


def check_corpus(prefix: str, out_dir: Path = ARCH_DIR, pattern: str | None = None) -> list[tuple[str, str]]:
    """Run onnxcam Grad-CAM on every <prefix>*.onnx and compare with the .npz goldens, printing one
    Markdown row per file. Errors raised by onnxcam are reported verbatim (with the traceback when
    ONNXCAM_TRACE is set); the comparison is max|ours − golden| / max|golden| < CHECK_REL."""
    import onnxcam

    rows = []
    for onnx_path in sorted(out_dir.glob(pattern or f"{prefix}*.onnx")):
        z = np.load(onnx_path.with_suffix(".npz"))
        try:
            r = onnxcam.Explainer(str(onnx_path), method="gradcam").explain(z["x"])
        except Exception as e:  # report verbatim
            status = f"ERROR {type(e).__name__}: {e}"
            if os.environ.get("ONNXCAM_TRACE"):
                traceback.print_exc()
        else:
            if r.activations.shape != z["activation"].shape or r.gradients is None or r.gradients.shape != z["gradient"].shape:
                status = (f"MISMATCH shape: activations {r.activations.shape} vs golden {z['activation'].shape}, "
                          f"layer `{r.layer}`")
            else:
                ea = float(np.abs(r.activations - z["activation"]).max() / np.abs(z["activation"]).max())
                eg = float(np.abs(r.gradients - z["gradient"]).max() / np.abs(z["gradient"]).max())
                ok = ea < CHECK_REL and eg < CHECK_REL and bool((r.targets == z["targets"]).all())
                status = f"{'OK' if ok else 'MISMATCH'} act {ea:.1e}, grad {eg:.1e}, layer `{r.layer}`"
        rows.append((onnx_path.name, status))
        print(f"| `{onnx_path.name}` | {status} |", flush=True)
    return rows
