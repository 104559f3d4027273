"""Build the task models (detection, segmentation, multi-output regression) and their goldens.

Writes, under ``tests/data/tasks/`` (relative to the repository root):

* ``det_yolo.onnx``, ``det_ssd.onnx``, ``seg_fcn.onnx``, ``reg_multi.onnx`` (untrained, seeded);
* ``<stem>.npz`` next to each: ``x``, ``outputs_<name>`` per model output, ``layer_desc`` and, per
  named case ``k``: ``case_<k>_output`` (ONNX output name the seed applies to), ``case_<k>_seed``
  (float32, shaped like that output), ``case_<k>_activation`` (N, C, h, w), ``case_<k>_gradient``
  (d<seed, output>/d activation, torch autograd in float64, stored float32), ``case_<k>_desc`` and
  ``case_<k>_layer`` (torch module whose output is the activation);
* ``layers.json``: {stem: {case: ONNX tensor holding that case's activation}} (found by exposing
  every node output and matching values; entries of other generators are kept);
* ``task_report.json``: per model size, opset, op counts, ops on the path activation -> output,
  Resize attributes, all matching tensors, and the tensor the plain "last 4-D spatial tensor
  feeding the output" rule would pick.

The onnxcam test suite reads these with numpy/onnx/onnxruntime only; it never imports torch.

Run from the repository root (torch + torchvision live in their own venv)::

    /work/venvs/tv/bin/python -m tools.tasks.make_task_models           # or --only det_yolo ...

Deterministic (seeded weights and inputs). Fails loudly (non-zero exit) when onnxruntime differs
from torch by more than 1e-4 on any output (batch 2 and batch 1), when a case's activation does not
match exactly one ONNX tensor, when the autograd gradient disagrees with central differences along
a random direction, or when a file exceeds 3 MB.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from tools import common
from tools.common import ATOL, RTOL, ancestors, descendants

REPO = common.ROOT
OPSET = 17           # TorchScript exporter
DYNAMO_OPSET = 18    # dynamo exporter (implements >= 18 only)
MAX_BYTES = 3 * 1024 * 1024


# =========================================================================== building blocks


def cbr(cin: int, cout: int, k: int, s: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation, 'same'-style padding."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), act())


# =========================================================================== det_yolo


class TinyYolo(nn.Module):
    """YOLOv5-shaped: Conv+BN+SiLU backbone to stride 16, a YOLOv3-tiny style neck (1x1 lateral,
    nearest 2x upsample, concat with the stride-8 map, 3x3 conv), ONE 1x1 detection conv with
    A*(5+K) channels on the 8x8 grid, then the YOLOv5 decode inside the graph (no NMS):
    view (N, A, 5+K, H, W) -> permute (N, A, H, W, 5+K); xy = (2*sigmoid - 0.5 + grid) * stride;
    wh = (2*sigmoid)^2 * anchor; objectness and class logits passed through raw; reshape to
    (N, A*H*W, 5+K) = (cx, cy, w, h, objectness logit, K class logits). Box index = a*H*W + y*W + x."""

    input_shape = (2, 3, 64, 64)
    A, K, H, W, STRIDE = 3, 3, 8, 8, 8
    heads = ["head"]

    def __init__(self) -> None:
        super().__init__()
        s = nn.SiLU
        self.stem = cbr(3, 16, 3, 2, s)        # 32
        self.c2 = cbr(16, 24, 3, 2, s)         # 16
        self.c3 = cbr(24, 32, 3, 2, s)         # 8   (route)
        self.c4 = cbr(32, 64, 3, 2, s)         # 4
        self.lateral = cbr(64, 32, 1, 1, s)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = cbr(64, 48, 3, 1, s)       # 8x8: the feature map feeding the head (default layer)
        self.head = nn.Conv2d(48, self.A * (5 + self.K), 1)
        anchors = torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]])
        ys, xs = torch.meshgrid(torch.arange(self.H), torch.arange(self.W), indexing="ij")
        self.register_buffer("grid", torch.stack((xs, ys), 2).view(1, 1, self.H, self.W, 2).float())
        self.register_buffer("anchor_grid", anchors.view(1, self.A, 1, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.c3(self.c2(self.stem(x)))
        c4 = self.c4(c3)
        f = self.neck(torch.cat([self.up(self.lateral(c4)), c3], 1))
        p = self.head(f)
        no = 5 + self.K
        p = p.view(-1, self.A, no, self.H, self.W).permute(0, 1, 3, 4, 2)
        xy = (p[..., 0:2].sigmoid() * 2 - 0.5 + self.grid) * self.STRIDE
        wh = (p[..., 2:4].sigmoid() * 2) ** 2 * self.anchor_grid
        out = torch.cat((xy, wh, p[..., 4:]), -1)
        return out.reshape(-1, self.A * self.H * self.W, no)


# =========================================================================== det_ssd


class TinySSD(nn.Module):
    """SSD/RetinaNet-shaped, two outputs. Backbone Conv+BN+ReLU to an 8x8 map P3 (stride 8), an
    SSD 'extra layer' P4 = Conv3x3/2(P3) (4x4), and per level one 3x3 class conv (A*K logits) and
    one 3x3 box conv (A*4 deltas). Each head map is permuted to NHWC and reshaped to (N, h*w*A, .),
    the levels concatenated along the box axis (B = 8*8*2 + 4*4*2 = 160; boxes 0..127 from P3,
    128..159 from P4; index = level offset + (y*w + x)*A + a). Boxes are decoded against fixed
    anchors (cx, cy, w, h in pixels): cx = acx + 0.1*dx*aw, cy = acy + 0.1*dy*ah,
    w = aw*exp(0.2*dw), h = ah*exp(0.2*dh). Scores are raw class logits (no sigmoid/softmax)."""

    input_shape = (2, 3, 64, 64)
    A, K = 2, 3
    heads = ["cls3", "cls4", "box3", "box4"]

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 24, 3, 2), cbr(24, 32, 3, 2))  # P3 8x8
        self.extra = cbr(32, 32, 3, 2)                                                          # P4 4x4
        self.cls3 = nn.Conv2d(32, self.A * self.K, 3, 1, 1)
        self.cls4 = nn.Conv2d(32, self.A * self.K, 3, 1, 1)
        self.box3 = nn.Conv2d(32, self.A * 4, 3, 1, 1)
        self.box4 = nn.Conv2d(32, self.A * 4, 3, 1, 1)
        anchors = []
        for size, stride, scales in ((8, 8, (12.0, 20.0)), (4, 16, (28.0, 44.0))):
            for y in range(size):
                for x in range(size):
                    for s_ in scales:
                        anchors.append([(x + 0.5) * stride, (y + 0.5) * stride, s_, s_ * 0.75])
        self.register_buffer("anchors", torch.tensor(anchors).unsqueeze(0))  # (1, B, 4)

    def _flat(self, t: torch.Tensor, per: int) -> torch.Tensor:
        h, w = t.shape[-2], t.shape[-1]
        return t.permute(0, 2, 3, 1).reshape(-1, int(h) * int(w) * self.A, per)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.backbone(x)
        p4 = self.extra(p3)
        scores = torch.cat([self._flat(self.cls3(p3), self.K), self._flat(self.cls4(p4), self.K)], 1)
        d = torch.cat([self._flat(self.box3(p3), 4), self._flat(self.box4(p4), 4)], 1)
        a = self.anchors
        cxcy = a[..., 0:2] + 0.1 * d[..., 0:2] * a[..., 2:4]
        wh = a[..., 2:4] * torch.exp(0.2 * d[..., 2:4])
        return torch.cat([cxcy, wh], -1), scores


# =========================================================================== seg_fcn


class LRASPPWrap(nn.Module):
    """torchvision LR-ASPP on a width-0.4 dilated MobileNetV3-Large, returning the "out" tensor."""

    input_shape = (2, 3, 64, 64)
    heads = ["model.classifier.low_classifier", "model.classifier.high_classifier"]

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large
        from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

        backbone = mobilenet_v3_large(weights=None, dilated=True, width_mult=0.4)
        self.model = _lraspp_mobilenetv3(backbone, num_classes=4)
        # the "high" feature: the last backbone block (Conv1x1 + BN + Hardswish), stride 16
        self.high_key = next(k for k, v in self.model.backbone.return_layers.items() if v == "high")
        self.low_key = next(k for k, v in self.model.backbone.return_layers.items() if v == "low")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


# =========================================================================== reg_multi


class MultiHead(nn.Module):
    """Shared conv trunk -> GAP -> flatten, then two heads: `age` = Linear(48,32) -> ReLU ->
    Linear(32,1) (regression) and `gender` = Linear(48,2) (logits)."""

    input_shape = (2, 3, 48, 48)
    heads = ["age.2", "gender"]

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            cbr(3, 16, 3, 2), cbr(16, 32, 3, 2), cbr(32, 32, 3, 1), cbr(32, 48, 3, 2),  # 6x6
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.age = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 1))
        self.gender = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.flatten(self.pool(self.features(x)), 1)
        return self.age(f), self.gender(f)


# =========================================================================== specs


@dataclass
class Case:
    key: str
    output: str
    seed: np.ndarray
    desc: str


@dataclass
class Spec:
    cls: Callable[[], nn.Module]
    seed: int
    exporter: str                    # "torchscript" | "dynamo"
    outputs: list[str]
    layer: dict[str, tuple[str, str]]  # output -> (torch module path, description)
    cases: Callable[[dict[str, np.ndarray]], list[Case]]
    what: str
    input_fn: str = "normal"
    notes: list[str] = field(default_factory=list)


def yolo_cases(out: dict[str, np.ndarray]) -> list[Case]:
    det = out["detections"]  # (N, B, 8)
    n, b, no = det.shape
    seed_s = np.zeros_like(det, dtype=np.float32)
    seed_b = np.zeros_like(det, dtype=np.float32)
    picks = []
    for i in range(n):
        score = det[i, :, 4] + det[i, :, 5:].max(1)
        box = int(score.argmax())
        c = int(det[i, box, 5:].argmax())
        picks.append((box, c))
        seed_s[i, box, 4] = 1.0
        seed_s[i, box, 5 + c] = 1.0
        seed_b[i, box, 0:4] = 1.0
    txt = ", ".join(f"image {i}: box {bx} (anchor {bx // 64}, y {bx % 64 // 8}, x {bx % 8}) class {c}"
                    for i, (bx, c) in enumerate(picks))
    return [
        Case("score", "detections", seed_s,
             "score of one detection per image: seed 1 at [n, box, 4] (objectness logit) and "
             f"[n, box, 5+c] (class-c logit); box = argmax over boxes of objectness + max class logit, "
             f"c = its argmax class ({txt})"),
        Case("box", "detections", seed_b,
             f"box of the same detection: seed 1 on [n, box, 0:4] (cx + cy + w + h, decoded pixels) ({txt})"),
    ]


def ssd_cases(out: dict[str, np.ndarray]) -> list[Case]:
    sc, bx = out["scores"], out["boxes"]  # (N, 160, 3), (N, 160, 4)
    seed_s = np.zeros_like(sc, dtype=np.float32)
    seed_b = np.zeros_like(bx, dtype=np.float32)
    picks = []
    for i, (lo, hi) in enumerate(((0, 128), (128, 160))):  # image 0: a P3 box, image 1: a P4 box
        sub = sc[i, lo:hi]
        j, c = np.unravel_index(int(sub.argmax()), sub.shape)
        picks.append((lo + int(j), int(c)))
        seed_s[i, lo + j, c] = 1.0
    seed_b[0, picks[0][0], 0] = 1.0   # image 0: cx
    seed_b[1, picks[1][0], 3] = 1.0   # image 1: h (goes through exp)
    return [
        Case("score", "scores", seed_s,
             f"score (class logit) of one detection: seed 1 at scores[0, {picks[0][0]}, {picks[0][1]}] "
             f"(image 0: best logit among the P3 boxes 0..127) and scores[1, {picks[1][0]}, {picks[1][1]}] "
             "(image 1: best logit among the P4 boxes 128..159)"),
        Case("box", "boxes", seed_b,
             f"one box coordinate of the same detections: boxes[0, {picks[0][0]}, 0] (cx, linear in the "
             f"delta) and boxes[1, {picks[1][0]}, 3] (h = ah*exp(0.2*dh))"),
    ]


SEG_REGIONS = {0: (1, 16, 40, 8, 32), 1: (2, 30, 60, 28, 56)}  # image: (class, y0, y1, x0, x1)


def seg_cases(out: dict[str, np.ndarray]) -> list[Case]:
    y = out["out"]  # (N, K, H, W)
    n, k, h, w = y.shape
    seed_r = np.zeros_like(y, dtype=np.float32)
    for i, (c, y0, y1, x0, x1) in SEG_REGIONS.items():
        seed_r[i, c, y0:y1, x0:x1] = 1.0
    pred = y.argmax(1)
    seed_m = np.zeros_like(y, dtype=np.float32)
    picks = []
    for i in range(n):
        counts = np.bincount(pred[i].ravel(), minlength=k)
        ok = [c for c in range(k) if 0 < counts[c] < h * w]
        if not ok:
            raise SystemExit("seg_fcn: argmax map is a single class; change the seed")
        prev = [p[0] for p in picks]  # prefer a class not picked for an earlier image
        c = max(ok, key=lambda c: (c not in prev, counts[c]))
        picks.append((c, int(counts[c])))
        seed_m[i, c] = (pred[i] == c)
    reg = "; ".join(f"image {i}: class {c}, rows {y0}:{y1}, cols {x0}:{x1}" for i, (c, y0, y1, x0, x1) in SEG_REGIONS.items())
    mk = "; ".join(f"image {i}: class {c} ({cnt} of {h * w} pixels)" for i, (c, cnt) in enumerate(picks))
    return [
        Case("region", "out", seed_r,
             f"class-c logit summed over a rectangle: seed[n, c, y0:y1, x0:x1] = 1 ({reg})"),
        Case("argmax_mask", "out", seed_m,
             "pytorch-grad-cam SemanticSegmentationTarget: class-c logit summed over the pixels whose "
             f"argmax is c, seed[n, c] = (argmax_k out[n, k] == c); c = the most frequent predicted "
             f"class per image, not already picked for an earlier image where possible ({mk})"),
    ]


def reg_cases(out: dict[str, np.ndarray]) -> list[Case]:
    age, gender = out["age"], out["gender"]
    cls = gender.argmax(1)
    cf = np.zeros_like(gender, dtype=np.float32)
    cf[np.arange(len(cls)), cls] = -1.0
    return [
        Case("age", "age", np.ones_like(age, dtype=np.float32), "regression target: d age / dA (seed 1 on age[n, 0])"),
        Case("gender1", "gender", np.tile(np.array([[0.0, 1.0]], np.float32), (len(cls), 1)),
             "class target: d gender[n, 1] / dA (seed one-hot(1) on the gender logits, both images)"),
        Case("gender_counterfactual", "gender", cf,
             f"counterfactual: seed = -onehot(argmax gender) = -onehot({cls.tolist()}) on the gender logits"),
    ]


SPECS: dict[str, Spec] = {
    "det_yolo": Spec(
        TinyYolo, 2000, "torchscript", ["detections"],
        {"detections": ("neck", "neck output: Conv3x3(64->48) + BN + SiLU on concat(nearest-up(lateral(c4)), c3), "
                                "8x8, the feature map feeding the 1x1 detection conv")},
        yolo_cases, "YOLOv5-style single-scale detector, decode in graph, no NMS"),
    "det_ssd": Spec(
        TinySSD, 2001, "dynamo", ["boxes", "scores"],
        {"boxes": ("backbone", "backbone output P3: Conv3x3/2(24->32) + BN + ReLU, 8x8; feeds the P3 heads "
                               "and (through the extra layer) the P4 heads"),
         "scores": ("backbone", "backbone output P3 (as for boxes)")},
        ssd_cases, "SSD/RetinaNet-style two-level detector, two outputs"),
    "seg_fcn": Spec(
        LRASPPWrap, 2002, "torchscript", ["out"],
        {"out": ("model.backbone.HIGH", "backbone 'high' feature: last block of the dilated MobileNetV3-Large "
                                         "(width 0.4): Conv1x1(64->384) + BN + Hardswish, 4x4 (stride 16); "
                                         "feeds LR-ASPP's cbr and scale branches")},
        seg_cases, "torchvision LR-ASPP MobileNetV3-Large (width_mult=0.4), 4 classes", input_fn="smooth"),
    "reg_multi": Spec(
        MultiHead, 2003, "torchscript", ["age", "gender"],
        {"age": ("features", "features output: Conv3x3/2(32->48) + BN + ReLU, 6x6 = input of the shared GAP"),
         "gender": ("features", "features output (as for age)")},
        reg_cases, "multi-output regressor: age (regression) + gender (2 logits)"),
}


# =========================================================================== weights and inputs


def module_path(model: nn.Module, path: str) -> str:
    if "HIGH" in path:
        path = path.replace("HIGH", model.high_key)
    return path


def build(name: str) -> nn.Module:
    """Seeded model: He-normal conv/linear weights, BN running stats measured on random data then
    perturbed, random BN affine; the head convs/linears standardised per output channel over a
    calibration batch so outputs are O(1) and differ between images (as make_torch_goldens.py)."""
    spec = SPECS[name]
    torch.manual_seed(spec.seed)
    model = spec.cls()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # hooks + retain_grad on clean tensors
    g = torch.Generator().manual_seed(spec.seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        # BN running stats layer by layer, in eval mode: each BN gets the mean/var of its input as
        # the (already finalised) layers before it produce it, then a random perturbation (so no BN
        # is an identity or an exact normaliser); random affine. Measuring all BNs in one train-mode
        # pass instead lets the perturbations compound (activations ~400 deep in MobileNetV3).
        model.eval()
        calib = make_raw_input(spec, (8, *model.input_shape[1:]), g)
        for m in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            seen: list[torch.Tensor] = []
            h = m.register_forward_pre_hook(lambda _m, i: seen.append(i[0]))
            model(calib)
            h.remove()
            c = m.num_features
            mean = seen[0].mean((0, 2, 3))
            var = seen[0].var((0, 2, 3))
            m.running_mean.copy_(mean + torch.randn(c, generator=g) * 0.3 * var.sqrt())
            m.running_var.copy_(var * (torch.rand(c, generator=g) * 1.5 + 0.5))
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        model.eval()
        for hname in spec.cls.heads:
            head = model.get_submodule(hname)
            seen: list[torch.Tensor] = []
            h = head.register_forward_hook(lambda _m, _i, o: seen.append(o))
            model(make_raw_input(spec, (32, *model.input_shape[1:]), g))
            h.remove()
            o = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)
            mean, std = o.mean(1), o.std(1)
            shape = (-1,) + (1,) * (head.weight.dim() - 1)
            head.weight.div_(std.view(shape))
            head.bias.copy_((head.bias - mean) / std)
    return model.eval()


def make_raw_input(spec: Spec, shape: tuple, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(*shape, generator=g)
    if spec.input_fn == "smooth":  # low-frequency structure so segmentation maps form regions
        lo = torch.randn(shape[0], shape[1], 4, 4, generator=g)
        x = 0.5 * x + 1.5 * F.interpolate(lo, size=shape[2:], mode="bilinear", align_corners=False)
    return x


def make_input(name: str, model: nn.Module) -> torch.Tensor:
    """Seeded input batch; for reg_multi the seed is advanced until the two images get different
    gender classes (so the counterfactual case is not just -1 x the gender1 case)."""
    for k in range(100):
        g = torch.Generator().manual_seed(SPECS[name].seed + 99 + k)
        x = make_raw_input(SPECS[name], model.input_shape, g)
        if name != "reg_multi":
            return x
        with torch.no_grad():
            gender = model(x)[1]
        if gender[0].argmax() != gender[1].argmax():
            return x
    raise SystemExit(f"{name}: no input seed gives two different gender classes")


# =========================================================================== goldens


def as_dict(spec: Spec, y) -> dict[str, torch.Tensor]:
    ys = y if isinstance(y, tuple) else (y,)
    return dict(zip(spec.outputs, ys))


def goldens(name: str, model: nn.Module, x32: torch.Tensor) -> tuple[dict[str, np.ndarray], list[Case]]:
    spec = SPECS[name]
    md = copy.deepcopy(model).double().eval()
    x = x32.double()
    with torch.no_grad():
        outs = {k: v.numpy() for k, v in as_dict(spec, md(x)).items()}
    g: dict[str, np.ndarray] = {"x": x32.numpy().astype(np.float32)}
    for k, v in outs.items():
        g[f"outputs_{k}"] = v.astype(np.float32)
    descs = [f"{o}: {module_path(md, p)} ({d})" for o, (p, d) in spec.layer.items()]
    g["layer_desc"] = np.array("; ".join(descs))
    cases = spec.cases(outs)
    rng = np.random.default_rng(spec.seed)
    for case in cases:
        mpath = module_path(md, spec.layer[case.output][0])
        mod = md.get_submodule(mpath)
        store: dict[str, torch.Tensor] = {}

        def hook(_m, _i, out, store=store):
            out.retain_grad()
            store["act"] = out

        h = mod.register_forward_hook(hook)
        y = as_dict(spec, md(x))[case.output]
        h.remove()
        seed = torch.from_numpy(case.seed.astype(np.float64))
        (y * seed).sum().backward()
        act = store["act"].detach().numpy()
        grad = store["act"].grad.numpy()
        if act.ndim != 4 or not np.isfinite(grad).all() or not np.abs(grad).max() > 0:
            raise SystemExit(f"{name}/{case.key}: degenerate activation/gradient")
        # central differences along a random direction on the activation
        v = rng.standard_normal(act.shape)
        eps = 1e-6

        def f(e: float) -> float:
            def add(_m, _i, out):
                return out + e * torch.from_numpy(v)
            hh = mod.register_forward_hook(add)
            with torch.no_grad():
                yy = as_dict(spec, md(x))[case.output]
            hh.remove()
            return float((yy * seed).sum())

        fd = (f(eps) - f(-eps)) / (2 * eps)
        an = float((grad * v).sum())
        if abs(fd - an) > 1e-5 * max(1.0, abs(an)):
            raise SystemExit(f"{name}/{case.key}: autograd {an} vs central difference {fd}")
        g[f"case_{case.key}_output"] = np.array(case.output)
        g[f"case_{case.key}_seed"] = case.seed.astype(np.float32)
        g[f"case_{case.key}_activation"] = act.astype(np.float32)
        g[f"case_{case.key}_gradient"] = grad.astype(np.float32)
        g[f"case_{case.key}_desc"] = np.array(case.desc)
        g[f"case_{case.key}_layer"] = np.array(mpath)
        print(f"  {name}/{case.key}: act {act.shape}, |g|max {np.abs(grad).max():.3g}, fd check {fd:.6g} ~ {an:.6g}",
              file=sys.stderr)
    return g, cases


# =========================================================================== export and checks


def export(name: str, model: nn.Module, x: torch.Tensor, path: Path) -> list[str]:
    spec = SPECS[name]
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec.exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=DYNAMO_OPSET,
                                     input_names=["input"], output_names=spec.outputs,
                                     dynamic_shapes=({0: batch},), external_data=False)
            prog.save(str(path), external_data=False)
        else:
            axes = {k: {0: "batch"} for k in ["input", *spec.outputs]}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=spec.outputs, dynamic_axes=axes,
                              external_data=False)
    for w in caught:
        msg = f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}"
        if msg not in notes:
            notes.append(msg)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    if [o.name for o in m.graph.output] != spec.outputs:
        raise SystemExit(f"{path.name}: outputs {[o.name for o in m.graph.output]} != {spec.outputs}")
    if path.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{path.name} is {path.stat().st_size} bytes > {MAX_BYTES}")
    return notes


def expose_all(path: Path, x: np.ndarray) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    m = onnx.load(str(path))
    existing = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in existing]
    for nme in names:
        m.graph.output.append(onnx.ValueInfoProto(name=nme))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return onnx.load(str(path)), {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, (int, float, str, list)):
            out[a.name] = v
    return out


def analyse(path: Path, g: dict[str, np.ndarray], cases: list[Case], outputs: list[str]) -> dict:
    m, vals = expose_all(path, g["x"])
    order = [o for n in m.graph.node for o in n.output if o]
    info: dict = {"bytes": path.stat().st_size,
                  "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                  "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input},
                  "outputs": {o: list(vals[o].shape) for o in outputs},
                  "ops": dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())),
                  "resize": [{"name": n.name, "output": n.output[0], **attrs(n)} for n in m.graph.node if n.op_type == "Resize"],
                  "cases": {}, "last_4d_rule": {}}
    for o in outputs:
        anc = ancestors(m.graph, [o])
        cand = [t for t in order if t in anc and t in vals and vals[t].ndim == 4
                and vals[t].dtype == np.float32 and vals[t].shape[2] * vals[t].shape[3] > 1]
        info["last_4d_rule"][o] = cand[-1] if cand else None
    for case in cases:
        act = g[f"case_{case.key}_activation"]
        tol = ATOL * max(1.0, float(np.abs(act).max()))  # float32 graph vs float64 torch
        hits = [t for t in order if t in vals and vals[t].shape == act.shape
                and float(np.abs(vals[t] - act).max()) <= tol]
        if len(hits) != 1:
            raise SystemExit(f"{path.name}/{case.key}: {len(hits)} ONNX tensors match the activation: {hits}")
        t = hits[0]
        down, up = descendants(m.graph, t), ancestors(m.graph, [case.output])
        path_nodes = [n for n in m.graph.node
                      if any(i in down for i in n.input) and any(o in up for o in n.output)]
        info["cases"][case.key] = {
            "output": case.output, "tensor": t, "shape": list(act.shape),
            "path_ops": dict(sorted(collections.Counter(n.op_type for n in path_nodes).items())),
        }
    return info


def run_ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "tasks")
    ap.add_argument("--only", action="append", choices=list(SPECS))
    args = ap.parse_args()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    layers_path = out_dir / "layers.json"
    layers: dict = json.loads(layers_path.read_text()) if layers_path.exists() else {}
    report_path = out_dir / "task_report.json"
    report: dict = json.loads(report_path.read_text()) if report_path.exists() else {}

    for name in args.only or list(SPECS):
        spec = SPECS[name]
        print(f"{name}:", file=sys.stderr)
        model = build(name)
        x = make_input(name, model)
        g, cases = goldens(name, model, x)
        with torch.no_grad():
            y32 = as_dict(spec, model(x))
        for k, v in y32.items():
            if not np.allclose(v.numpy(), g[f"outputs_{k}"], atol=ATOL, rtol=RTOL):
                raise SystemExit(f"{name}: float32 and float64 torch outputs differ on {k}")
        path = out_dir / f"{name}.onnx"
        notes = export(name, model, x, path)
        errs = {}
        for xb in (g["x"], g["x"][:1]):
            ys = run_ort(path, xb)
            for k, y in zip(spec.outputs, ys):
                ref = g[f"outputs_{k}"][: len(xb)]
                err = float(np.abs(y - ref).max())
                if y.shape != ref.shape or not np.allclose(y, ref, atol=ATOL, rtol=RTOL):
                    raise SystemExit(f"{name}: onnxruntime output {k} differs from torch by {err:.3g} (batch {len(xb)})")
                errs[k] = max(errs.get(k, 0.0), err)
        np.savez_compressed(out_dir / f"{name}.npz", **g)
        info = analyse(path, g, cases, spec.outputs)
        info.update(exporter=spec.exporter, what=spec.what, max_abs_err=errs, notes=notes,
                    npz_bytes=(out_dir / f"{name}.npz").stat().st_size)
        report[name] = info
        layers[name] = {k: v["tensor"] for k, v in info["cases"].items()}
        print(f"  {path.name}: {info['bytes']} B, opset {info['opset']}, err {errs}", file=sys.stderr)
        print(f"  layers {layers[name]}; last-4D rule {info['last_4d_rule']}", file=sys.stderr)
        print(f"  ops {info['ops']}", file=sys.stderr)
        for k, c in info["cases"].items():
            print(f"  path ops {k}: {c['path_ops']}", file=sys.stderr)
        if info["resize"]:
            print(f"  resize {info['resize']}", file=sys.stderr)

    layers_path.write_text(json.dumps(dict(sorted(layers.items())), indent=2) + "\n")
    report["_provenance"] = (f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}, "
                             f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
                             f"onnxscript {__import__('onnxscript').__version__}, numpy {np.__version__}")
    report_path.write_text(json.dumps(dict(sorted(report.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
