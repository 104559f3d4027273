"""Build the PyTorch-exported ONNX test models and their autograd goldens.

Writes, under ``tests/data/goldens/`` (relative to the repository root):

* ``torchscript_<name>.onnx`` and ``dynamo_<name>.onnx`` for each tiny model below,
  exported by ``torch.onnx.export(..., dynamo=False)`` and ``(..., dynamo=True)``;
* ``<stem>.npz`` next to each ``.onnx`` (x, outputs, targets, activation, gradient,
  input_gradient, layer_desc and, for GAP -> Linear heads, fc_weight / fc_bias);
* ``layers.json``: {stem: ONNX tensor name holding the default-layer activation}
  (found by exposing every intermediate tensor and matching it to the golden; debugging aid);
* ``README.md`` (only the section between its torch BEGIN/END markers): the format, provenance,
  and per-file layer name and op types; ``torch_export_report.json``: the same details as JSON.

The onnxcam test suite reads these files with numpy/onnx/onnxruntime only; it never imports torch.

How to run (torch lives in its own venv, not in the project's environment)::

    python3 -m venv /work/venvs/torch
    /work/venvs/torch/bin/pip install torch==2.13.0 onnx onnxscript onnxruntime numpy
    /work/venvs/torch/bin/python -m tools.goldens.make_torch_goldens  # from the repo root

Options: ``--out DIR`` (default tests/data/goldens), ``--only NAME`` (repeatable).
The script is deterministic (seeded weights and inputs); it fails loudly (non-zero exit) when an
exported model's onnxruntime output differs from torch by more than 1e-4, when the default-layer
tensor cannot be found in the ONNX graph, or when a model file exceeds 300 KB.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from tools import common
from tools.common import ATOL, find_layer_tensor, op_types
from tools.torch_helpers import backward_goldens, calibrate_batchnorm_, he_normal_, standardise_head_

OPSET = 17          # TorchScript exporter
DYNAMO_OPSET = 18   # the dynamo exporter implements opset >= 18 only; its down-conversion to 17
                    # fails on ReduceMean (axes input -> attribute) before optimisation, so keep 18
MAX_BYTES = 300 * 1024


# --------------------------------------------------------------------------- models
# Each model names (class attribute ``cam_module``, a dotted submodule path) the module whose
# *output* is the default layer activation (the last spatial 4-D activation on the path to the
# output), describes it in ``cam_desc``, and names its final Linear in ``fc_module`` where the head
# is GAP -> flatten -> single Linear. (Names, not module references: assigning a module to a second
# attribute registers it twice and renames the dynamo export's initializers.)


def conv_bn(cin: int, cout: int, k: int, s: int = 1, p: int = 0, g: int = 1, d: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, p, dilation=d, groups=g, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + idt)


class TinyResNet(nn.Module):
    head_module = "fc"  # last affine layer, calibrated in build()
    input_shape = (2, 3, 64, 64)
    cam_module = "layer2"
    cam_desc = "layer2 output (BasicBlock(8->16, stride 2, 1x1 downsample); relu2 after residual add) = input of avgpool"
    fc_module = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class TinyMBV3(nn.Module):
    head_module = "classifier.3"  # last affine layer, calibrated in build()
    input_shape = (2, 3, 64, 64)
    cam_module = "last"
    cam_desc = "last output (Conv1x1(12->24) + BN + Hardswish) = input of avgpool"

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, 2, 1), nn.Hardswish())
        self.block = nn.Sequential(
            *conv_bn(8, 16, 1), nn.Hardswish(),                     # expand
            *conv_bn(16, 16, 3, 2, 1, g=16), nn.Hardswish(),        # depthwise, stride 2
            SqueezeExcite(16, 4),
            *conv_bn(16, 12, 1),                                    # project (linear)
        )
        self.dilated = nn.Sequential(*conv_bn(12, 12, 3, 1, 2, g=12, d=2), nn.ReLU())  # dilated depthwise
        self.last = nn.Sequential(*conv_bn(12, 24, 1), nn.Hardswish())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block(x)
        x = x + self.dilated(x)
        x = self.last(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class TinyMeanPool(nn.Module):
    head_module = "fc"  # last affine layer, calibrated in build()
    input_shape = (2, 3, 48, 48)
    cam_module = "features"
    cam_desc = "features output (Conv3x3(8->16) + ReLU6) = input of x.mean(dim=(2, 3))"
    fc_module = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(3, 8, 3, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU6(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class Fire(nn.Module):
    def __init__(self, cin: int, sq: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, sq, 1)
        self.squeeze_act = nn.ReLU()
        self.expand1 = nn.Conv2d(sq, e1, 1)
        self.expand1_act = nn.ReLU()
        self.expand3 = nn.Conv2d(sq, e3, 3, padding=1)
        self.expand3_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat([self.expand1_act(self.expand1(x)), self.expand3_act(self.expand3(x))], 1)


class TinySqueeze(nn.Module):
    head_module = "classifier.1"  # last affine layer, calibrated in build()
    input_shape = (2, 3, 48, 48)
    cam_module = "classifier.2"
    cam_desc = "classifier[2] output (ReLU after the final Conv1x1(16->10) classifier) = input of avgpool"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(8, 4, 8, 8),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class TinyVGG(nn.Module):
    head_module = "classifier.3"  # last affine layer, calibrated in build()
    input_shape = (2, 3, 32, 32)
    cam_module = "features"
    cam_desc = "features output (second MaxPool2d(2), 8x8x8) = input of torch.flatten (no global pooling)"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "tinyresnet": TinyResNet,
    "tinymbv3": TinyMBV3,
    "tinymeanpool": TinyMeanPool,
    "tinysqueeze": TinySqueeze,
    "tinyvgg": TinyVGG,
}
SEEDS = {name: 1000 + i for i, name in enumerate(MODELS)}


def build(name: str) -> nn.Module:
    """Seeded model with O(1) activations and gradients (PyTorch's default init shrinks the signal
    layer by layer, which gave gradients ~1e-7 at the input) and BatchNorms far from identity."""
    torch.manual_seed(SEEDS[name])
    model = MODELS[name]()
    g = torch.Generator().manual_seed(SEEDS[name] + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                he_normal_(m, g)
        calibrate_batchnorm_(model, torch.randn(8, *model.input_shape[1:], generator=g), g)
        return standardise_head_(model, model.head_module, torch.randn(64, *model.input_shape[1:], generator=g))


def make_input(model: nn.Module, name: str) -> torch.Tensor:
    """Seeded standard-normal batch of 2; the seed is advanced (deterministically) until the two
    images have different argmax classes, so per-sample target indexing is exercised."""
    for k in range(1000):
        gx = torch.Generator().manual_seed(SEEDS[name] + 99 + k)
        x = torch.randn(*model.input_shape, generator=gx)
        with torch.no_grad():
            y = model.double()(x.double())
            model.float()
        top2 = y.topk(2, 1).values
        if y[0].argmax() != y[1].argmax() and (top2[:, 0] - top2[:, 1]).min() > 1e-2:
            return x
    raise SystemExit(f"{name}: no input seed gives two different target classes")


# --------------------------------------------------------------------------- export


# Extra variants (stem suffix "_keepbn"): BatchNormalization kept as a node instead of folded into
# the preceding Conv. TorchScript: training=TrainingMode.PRESERVE (model is in eval mode, so BN is
# exported in inference mode). Dynamo: optimize=False (the raw translation: BN nodes, plus
# Shape/Expand/CastLike chains building the zero Conv biases, Constant nodes, etc.).
KEEPBN = {"tinyresnet", "tinymbv3"}


def export(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool, keepbn: bool = False) -> list[str]:
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(
                model, (x,), None, dynamo=True, opset_version=DYNAMO_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: batch},), external_data=False, optimize=not keepbn,
            )
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                external_data=False,
                training=torch.onnx.TrainingMode.PRESERVE if keepbn else torch.onnx.TrainingMode.EVAL,
            )
    for w in caught:
        msg = str(w.message).splitlines()[0][:200]
        if msg not in notes:
            notes.append(f"{w.category.__name__}: {msg}")
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    if path.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{path.name} is {path.stat().st_size} bytes > {MAX_BYTES}")
    return notes


# --------------------------------------------------------------------------- goldens


def goldens(model: nn.Module, x32: torch.Tensor) -> dict[str, np.ndarray]:
    md = build_double(model)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        store["act"] = out

    h = md.get_submodule(md.cam_module).register_forward_hook(hook)
    x = x32.double().clone().requires_grad_(True)
    out = md(x)
    h.remove()
    return backward_goldens(md, out, store["act"], x, x32, md.cam_desc, getattr(md, "fc_module", None))


def build_double(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).double().eval()


# --------------------------------------------------------------------------- README

BEGIN = "<!-- BEGIN torch goldens: generated by tools/goldens/make_torch_goldens.py, do not edit -->"
END = "<!-- END torch goldens -->"

README_HEAD = """## PyTorch goldens (`torchscript_*`, `dynamo_*`)

Generated by `tools/goldens/make_torch_goldens.py`; the script rewrites only the text between the
`BEGIN/END torch goldens` markers of this README (other sections belong to other generators).
Rebuild from the repository root with:

```
python3 -m venv /work/venvs/torch
/work/venvs/torch/bin/pip install torch==2.13.0 onnx onnxscript onnxruntime numpy
/work/venvs/torch/bin/python -m tools.goldens.make_torch_goldens
```

Provenance: {prov}.

### Models

Five tiny seeded models (eval mode; He-normal weights so activations and gradients are O(1); every
BatchNorm has running stats measured on random data and then randomly perturbed, and random
weight/bias, so it is not an identity), each exported twice with a dynamic batch axis (`batch`):
`torchscript_<name>.onnx` (`torch.onnx.export(..., dynamo=False, opset_version={opset})`) and
`dynamo_<name>.onnx` (`torch.onnx.export(..., dynamo=True, opset_version={dopset})`, saved without
external data). The dynamo exporter only implements opset >= 18: asked for 17 it exports 18 and then
tries onnx's version converter, which fails on models with ReduceMean (axes input → attribute) and
leaves them at 18, so the dynamo files are all kept at opset 18 (ReduceMean with `axes` as an input;
the TorchScript files have ReduceMean/GlobalAveragePool at opset 17). Input name `input`
(NCHW float32), output name `logits` (N, 10) in every file.

Both exporters fold every eval-mode BatchNorm into the preceding Conv, so the files above have no
BatchNormalization node. Two models (tinyresnet, tinymbv3) get extra `*_keepbn` variants that keep
BatchNormalization nodes (inference mode, non-trivial running stats): `torchscript_<name>_keepbn.onnx`
(`training=torch.onnx.TrainingMode.PRESERVE` on the eval-mode model) and `dynamo_<name>_keepbn.onnx`
(`optimize=False`: the raw dynamo translation, which also builds each bias-free Conv's zero bias at
run time with Shape → Expand → CastLike → Expand chains and keeps Constant nodes). Their goldens are
the same as the plain variant's.

| name | input | what it exercises |
|---|---|---|
| tinyresnet | 2x3x64x64 | Conv3x3/2 + BN + ReLU, overlapping MaxPool 3x3/2 pad 1, two BasicBlocks (residual Add, strided 1x1 downsample), AdaptiveAvgPool2d(1) → flatten → Linear |
| tinymbv3 | 2x3x64x64 | Conv+BN+Hardswish, depthwise (groups=C) conv, squeeze-excitation (GAP → 1x1 Conv → ReLU → 1x1 Conv → Hardsigmoid → Mul), dilated (d=2) depthwise conv with residual Add, Conv+BN+Hardswish, GAP → Linear → Hardswish → Dropout → Linear |
| tinymeanpool | 2x3x48x48 | Conv+BN+LeakyReLU(0.1), Conv+ReLU6 (Clip), `x.mean(dim=(2,3))` (ReduceMean) → Linear |
| tinysqueeze | 2x3x48x48 | SqueezeNet-like: Conv + ReLU + MaxPool(ceil_mode), Fire (1x1 squeeze, 1x1/3x3 expand, Concat), Dropout, 1x1 Conv classifier + ReLU, GAP, flatten |
| tinyvgg | 2x3x32x32 | Conv/ReLU/MaxPool ×2, no global pooling: flatten → Linear → ReLU → Dropout → Linear → Tanh |

### Golden format

One `<stem>.npz` per `<stem>.onnx` (`np.savez_compressed`; load with `np.load(path)`; the two
exports of one model share identical goldens). Goldens are computed by torch autograd with the
model cast to float64 and stored as float32:

| key | dtype, shape | meaning |
|---|---|---|
| `x` | float32 (2, 3, H, W) | input, seeded standard normal, NCHW (seed chosen so the two images have different targets) |
| `outputs` | float32 (2, 10) | model output (torch, float64 → float32); onnxruntime output of the `.onnx` was checked to match to 1e-4 |
| `targets` | int64 (2,) | argmax of `outputs` (top-2 margin ≥ 1e-3) |
| `activation` | float32 (2, C, h, w) | the DEFAULT layer activation: the last spatial 4-D activation on the path to the output (input of the final global pooling; input of the flatten where there is none; for tinysqueeze the output of the ReLU after the final 1x1 classifier conv) |
| `gradient` | float32 (2, C, h, w) | d(Σ_n outputs[n, targets[n]]) / d activation |
| `input_gradient` | float32 (2, 3, H, W) | d(Σ_n outputs[n, targets[n]]) / d x |
| `fc_weight`, `fc_bias` | float32 (10, C), (10,) | only where the head is GAP → flatten → single Linear (tinyresnet, tinymeanpool) |
| `layer_desc` | str (0-d array) | the layer in torch terms |

`layers.json` maps each stem to the ONNX tensor name holding the default activation. It was found
by exposing every node output as a graph output and matching values to `activation` (atol 1e-4);
the last matching tensor in node order is recorded (all matches are listed below). Debugging aid only:
the library must find the default layer by itself (entries of other generators in `layers.json` are kept).
`torch_export_report.json` keeps the per-file details
(sizes, opset, op types, max |onnxruntime − torch| on the outputs, all matching tensors, exporter warnings).

### Per file
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=common.GOLDENS_DIR)
    ap.add_argument("--only", action="append", choices=list(MODELS))
    args = ap.parse_args()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    layers_path = out_dir / "layers.json"
    layers: dict[str, str] = json.loads(layers_path.read_text()) if layers_path.exists() else {}  # shared: merge
    report_path = out_dir / "torch_export_report.json"  # per-file details (also lets --only regenerate the README)
    report: dict[str, dict] = json.loads(report_path.read_text()) if args.only and report_path.exists() else {}

    for name in args.only or list(MODELS):
        model = build(name)
        x = make_input(model, name)
        g = goldens(model, x)
        with torch.no_grad():
            y32 = model(x).numpy()
        if not np.allclose(y32, g["outputs"], atol=ATOL):
            raise SystemExit(f"{name}: float32 and float64 torch outputs differ")
        variants = [(e, False) for e in ("torchscript", "dynamo")]
        if name in KEEPBN:
            variants += [(e, True) for e in ("torchscript", "dynamo")]
        for exporter, keepbn in variants:
            stem = f"{exporter}_{name}" + ("_keepbn" if keepbn else "")
            onnx_path = out_dir / f"{stem}.onnx"
            notes = export(model, x, onnx_path, dynamo=exporter == "dynamo", keepbn=keepbn)
            if keepbn and "BatchNormalization" not in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}:
                raise SystemExit(f"{stem}: BatchNormalization was folded away")
            y = common.run_ort(onnx_path, g["x"])[0]
            err = float(np.abs(y - g["outputs"]).max())
            if not err <= ATOL:
                raise SystemExit(f"{stem}: onnxruntime output differs from torch by {err:.3g} > {ATOL}")
            # batch-1 run too, to make sure the dynamic batch axis works
            y1 = common.run_ort(onnx_path, g["x"][:1])[0]
            if not np.allclose(y1, g["outputs"][:1], atol=ATOL):
                raise SystemExit(f"{stem}: batch-1 run differs")
            np.savez_compressed(out_dir / f"{stem}.npz", **g)
            layer, hits = find_layer_tensor(onnx_path, g["x"], g["activation"])
            layers[stem] = layer
            ops, opset = op_types(onnx_path)
            report[stem] = {
                "bytes": onnx_path.stat().st_size,
                "npz_bytes": (out_dir / f"{stem}.npz").stat().st_size,
                "opset": opset, "ops": ops, "layer": layer, "matches": hits,
                "max_abs_err": err, "notes": notes,
                "act_shape": list(g["activation"].shape),
            }
            print(f"{stem}: {onnx_path.stat().st_size} B, opset {opset}, err {err:.2e}, layer {layer!r}, ops {ops}",
                  file=sys.stderr)

    layers_path.write_text(json.dumps(dict(sorted(layers.items())), indent=2) + "\n")
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    prov = (f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
            f"onnxscript {__import__('onnxscript').__version__}, numpy {np.__version__}")
    lines = [README_HEAD.format(prov=prov, opset=OPSET, dopset=DYNAMO_OPSET)]
    lines.append("| file | size (B) | opset | activation (N,C,h,w) | layer tensor | op types |")
    lines.append("|---|---|---|---|---|---|")
    for stem in sorted(report):
        r = report[stem]
        lines.append(f"| `{stem}.onnx` | {r['bytes']} | {r['opset']} | {tuple(r['act_shape'])} | "
                     f"`{r['layer']}` | {', '.join(r['ops'])} |")
    lines.append("")
    lines.append("All tensors matching the activation (in node order):")
    lines.append("")
    for stem in sorted(report):
        lines.append(f"- `{stem}`: " + ", ".join(f"`{h}`" for h in report[stem]["matches"]))
    lines.append("")
    common.write_readme_section(out_dir / "README.md", BEGIN, END, "\n".join(lines))


if __name__ == "__main__":
    main()
