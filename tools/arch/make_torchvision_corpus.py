"""Build small-channel torchvision architectures as ONNX (both exporters) with autograd goldens.

Writes, under ``tests/data/arch/`` (relative to the repository root):

* ``tv_ts_<arch>.onnx`` (``torch.onnx.export(..., dynamo=False, opset_version=17)``) and
  ``tv_dy_<arch>.onnx`` (``torch.onnx.export(..., dynamo=True, opset_version=18)``), dynamic batch;
  plus ``tv_ts11_resnet.onnx`` (opset 11) and ``tv_ts13_mobilenetv3.onnx`` (opset 13);
* ``<stem>.npz`` next to each ``.onnx``, in the format of ``tests/data/goldens/README.md``
  (x, outputs, targets, activation, gradient, input_gradient, layer_desc, and fc_weight/fc_bias where
  the head is global pooling -> flatten -> [Dropout] -> single Linear);
* ``tv_report.json`` (per-file details) and ``README.md`` (format, rebuild command, per-file table).

Every model is built from torchvision's own classes with reduced widths (constructor arguments
where they exist, otherwise torchvision's own building blocks with every channel count divided by
a constant), then seeded He-normal weights, randomised BatchNorm statistics, and a calibrated last
affine layer so that the two batch items get different targets (as tools/goldens/make_torch_goldens.py).

Run from the repository root::

    /work/venvs/tv/bin/pip install torch torchvision onnx onnxscript onnxruntime numpy
    /work/venvs/tv/bin/python -m tools.arch.make_torchvision_corpus            # [--only ARCH ...]
    /work/venvs/dev/bin/python -m tools.arch.make_torchvision_corpus --check   # onnxcam coverage table

``--check`` imports onnxcam (and not torch): for every ``tv_*.onnx`` it runs
``onnxcam.Explainer(path, method="gradcam").explain(x)`` and compares activations and gradients with
the golden (max |diff| / max |golden|). It fails loudly (non-zero exit) on export problems: an
onnxruntime output differing from torch by more than 1e-4, a file over 2 MB, or no ONNX tensor
matching the golden activation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tools import common
from tools.common import ATOL, find_layer_tensor, op_types, run_ort

OUT = common.ARCH_DIR
OPSET, DYNAMO_OPSET = 17, 18
MAX_BYTES = 2 * 1024 * 1024
NUM_CLASSES = 10

# --------------------------------------------------------------------------- architectures
# Each builder returns (model, spec). spec: input shape; capture = ("pre", module) -> the input of
# that module (the final pooling), ("out", module) -> its output; head = the last affine module
# (calibrated); fc = the Linear of a GAP -> flatten -> [Dropout] -> Linear head (goldens store its
# weights); desc = the default layer in torch terms; notes = how it was shrunk.


def _divide_convs(model: Any, div: int, keep_in: int = 3, keep_out: int | None = None) -> None:
    """Replace every nn.Conv2d of a BN-free model by the same conv with channels // div (except an
    input of `keep_in` channels and an output of `keep_out`); Linear layers are rebuilt by the caller."""
    import torch.nn as nn

    for name, m in list(model.named_modules()):
        for cname, c in list(m.named_children()):
            if isinstance(c, nn.Conv2d):
                cin = c.in_channels if c.in_channels == keep_in else c.in_channels // div
                cout = c.out_channels if c.out_channels == keep_out else c.out_channels // div
                setattr(m, cname, nn.Conv2d(cin, cout, c.kernel_size, c.stride, c.padding, c.dilation,
                                            groups=c.groups, bias=c.bias is not None, padding_mode=c.padding_mode))


def _scaled_resnet(block: Any, layers: list[int], base: int, **kw: Any) -> Any:
    """torchvision ResNet (same class, forward and _make_layer) with stage widths base*(1,2,4,8)
    instead of 64*(1,2,4,8)."""
    import torch.nn as nn
    from torchvision.models.resnet import ResNet

    m = ResNet(block, layers, num_classes=NUM_CLASSES, **kw)
    m.inplanes = base
    m.dilation = 1
    m.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    m.bn1 = nn.BatchNorm2d(base)
    m.layer1 = m._make_layer(block, base, layers[0])
    m.layer2 = m._make_layer(block, base * 2, layers[1], stride=2)
    m.layer3 = m._make_layer(block, base * 4, layers[2], stride=2)
    m.layer4 = m._make_layer(block, base * 8, layers[3], stride=2)
    m.fc = nn.Linear(base * 8 * block.expansion, NUM_CLASSES)
    return m


def b_resnet():
    from torchvision.models.resnet import BasicBlock
    m = _scaled_resnet(BasicBlock, [1, 1, 1, 1], 8)
    return m, dict(capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="layer4 output (BasicBlock(32->64, stride 2, 1x1 downsample), relu after residual add) = input of avgpool",
                   notes="torchvision ResNet(BasicBlock, [1,1,1,1]) with its stem/layers rebuilt by ResNet._make_layer at base width 8 (8,16,32,64)")


def b_resnext():
    from torchvision.models.resnet import Bottleneck
    m = _scaled_resnet(Bottleneck, [1, 1, 1, 1], 8, groups=4, width_per_group=32)
    return m, dict(capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="layer4 output (Bottleneck, grouped 3x3 conv groups=4, 1x1 downsample, relu after add) = input of avgpool",
                   notes="torchvision ResNet(Bottleneck, [1,1,1,1], groups=4, width_per_group=32) rebuilt at base width 8 (resnext50_32x4d's width = 2*planes kept)")


def b_wide_resnet():
    from torchvision.models.resnet import Bottleneck
    m = _scaled_resnet(Bottleneck, [1, 1, 1, 1], 8, width_per_group=128)
    return m, dict(capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="layer4 output (Bottleneck with width_per_group=128, relu after add) = input of avgpool",
                   notes="torchvision ResNet(Bottleneck, [1,1,1,1], width_per_group=128) rebuilt at base width 8 (wide_resnet50_2's width = 2*planes kept)")


def b_vgg():
    import torch.nn as nn
    from torchvision.models.vgg import VGG, make_layers
    cfg: list[Any] = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"]  # vgg11 ('A') / 8
    m = VGG(make_layers(cfg, batch_norm=True), num_classes=NUM_CLASSES, init_weights=True)
    m.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(0.5),
                                 nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(64, NUM_CLASSES))
    return m, dict(shape=(2, 3, 224, 224), capture=("pre", "avgpool"), head="classifier.6",
                   desc="features output (last MaxPool2d, 7x7) = input of AdaptiveAvgPool2d((7, 7)) (an identity at 224) = input of the flatten",
                   notes="torchvision VGG(make_layers(vgg11 cfg / 8, batch_norm=True)), classifier rebuilt with the same layers at 64 instead of 4096; "
                         "input 224 because the TorchScript exporter only exports AdaptiveAvgPool2d((7,7)) when the feature size is a multiple of 7")


def b_densenet():
    from torchvision.models import DenseNet
    m = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, num_classes=NUM_CLASSES)
    return m, dict(capture=("func", "torchvision.models.densenet.F.adaptive_avg_pool2d"), head="classifier", fc="classifier",
                   desc="F.relu(features(x)) (features ends with norm5 BatchNorm) = input of F.adaptive_avg_pool2d",
                   notes="torchvision DenseNet(growth_rate=8, block_config=(2,2,2,2), num_init_features=16, bn_size=2)")


def b_mobilenetv2():
    from torchvision.models import MobileNetV2
    m = MobileNetV2(num_classes=NUM_CLASSES, width_mult=0.25)
    return m, dict(capture=("out", "features"), head="classifier.1", fc="classifier.1",
                   desc="features output (features[18]: Conv1x1(80->1280) + BN + ReLU6) = input of adaptive_avg_pool2d",
                   notes="torchvision MobileNetV2(width_mult=0.25) (the 1280-channel last conv does not shrink)")


def b_mobilenetv3():
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
    setting, last = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=0.25)
    m = MobileNetV3(setting, last, num_classes=NUM_CLASSES)
    return m, dict(capture=("pre", "avgpool"), head="classifier.3",
                   desc="features output (last Conv1x1 + BN + Hardswish) = input of avgpool",
                   notes="torchvision MobileNetV3(*_mobilenet_v3_conf('mobilenet_v3_large', width_mult=0.25))")


def b_efficientnet_b0():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    m = EfficientNet(setting, dropout=0.2, num_classes=NUM_CLASSES, last_channel=last)
    return m, dict(capture=("pre", "avgpool"), head="classifier.1", fc="classifier.1",
                   desc="features output (Conv1x1 + BN + SiLU) = input of avgpool",
                   notes="torchvision EfficientNet(*_efficientnet_conf('efficientnet_b0', width_mult=0.25, depth_mult=0.5))")


def b_efficientnet_v2():
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig
    setting = [  # efficientnet_v2_s's table with channels / 4 (min 8) and fewer layers
        FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        FusedMBConvConfig(4, 3, 2, 8, 12, 2),
        FusedMBConvConfig(4, 3, 2, 12, 16, 2),
        MBConvConfig(4, 3, 2, 16, 32, 2),
        MBConvConfig(6, 3, 1, 32, 40, 2),
        MBConvConfig(6, 3, 2, 40, 64, 2),
    ]
    m = EfficientNet(setting, dropout=0.2, num_classes=NUM_CLASSES, last_channel=320)
    return m, dict(capture=("pre", "avgpool"), head="classifier.1", fc="classifier.1",
                   desc="features output (Conv1x1(64->320) + BN + SiLU) = input of avgpool",
                   notes="torchvision EfficientNet with efficientnet_v2_s's FusedMBConv/MBConv table, channels / 4 (min 8), 1-2 layers per stage, last_channel=320")


def b_squeezenet():
    import torch.nn as nn
    from torchvision.models import SqueezeNet
    m = SqueezeNet(version="1_1", num_classes=NUM_CLASSES)
    _divide_convs(m, 4, keep_out=NUM_CLASSES)
    return m, dict(capture=("pre", "classifier.3"), head="classifier.1",
                   desc="classifier[2] output (ReLU after the final Conv1x1(128->10)) = input of AdaptiveAvgPool2d(1)",
                   notes="torchvision SqueezeNet('1_1') with every conv's channels / 4 (Fire modules kept)")


def b_shufflenetv2():
    from torchvision.models import ShuffleNetV2
    m = ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=NUM_CLASSES)
    return m, dict(capture=("out", "conv5"), head="fc", fc="fc",
                   desc="conv5 output (Conv1x1(64->128) + BN + ReLU) = input of x.mean([2, 3])",
                   notes="torchvision ShuffleNetV2(stages_repeats=[2,2,2], stages_out_channels=[8,16,32,64,128])")


def b_regnet():
    from torchvision.models.regnet import BlockParams, RegNet
    bp = BlockParams.from_init_params(depth=6, w_0=8, w_a=6.0, w_m=2.0, group_width=8, se_ratio=0.25)
    m = RegNet(bp, num_classes=NUM_CLASSES, stem_width=8)
    return m, dict(capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="trunk_output output (last ResBottleneckBlock with SE, relu after add) = input of avgpool",
                   notes="torchvision RegNet(BlockParams.from_init_params(depth=6, w_0=8, w_a=6, w_m=2, group_width=8, se_ratio=0.25), stem_width=8) (RegNetY-like)")


def b_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 2), CNBlockConfig(128, None, 1)]
    m = ConvNeXt(cfg, stochastic_depth_prob=0.1, num_classes=NUM_CLASSES)
    return m, dict(capture=("pre", "avgpool"), head="classifier.2",
                   desc="features output (last CNBlock: dwconv7x7, LayerNorm, Linear, GELU, Linear, layer_scale, residual add) = input of avgpool",
                   notes="torchvision ConvNeXt([CNBlockConfig(16,32,1), (32,64,1), (64,128,2), (128,None,1)]); layer_scale randomised in [0.2, 1]")


class _DivBasicConv2d:
    """conv_block factory for torchvision's Inception/GoogLeNet: BasicConv2d with channels // div
    (the 3-channel image input kept)."""

    def __init__(self, div: int) -> None:
        self.div = div

    def __call__(self, cin: int, cout: int, **kw: Any) -> Any:
        from torchvision.models.inception import BasicConv2d
        return BasicConv2d(cin if cin == 3 else cin // self.div, cout // self.div, **kw)


def b_googlenet():
    import torch.nn as nn
    from torchvision.models.googlenet import GoogLeNet, Inception, InceptionAux
    from torchvision.models.googlenet import BasicConv2d as GBasic

    def gconv(cin: int, cout: int, **kw: Any) -> Any:  # googlenet's own BasicConv2d, channels / 8
        return GBasic(cin if cin == 3 else cin // 8, cout // 8, **kw)

    m = GoogLeNet(num_classes=NUM_CLASSES, aux_logits=False, init_weights=True,
                  blocks=[gconv, partial(Inception, conv_block=gconv), InceptionAux])
    m.fc = nn.Linear(1024 // 8, NUM_CLASSES)
    return m, dict(capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="inception5b output (Concat of the four branches) = input of avgpool",
                   notes="torchvision GoogLeNet(aux_logits=False, blocks=[BasicConv2d / 8, Inception(conv_block=BasicConv2d / 8), InceptionAux]); fc rebuilt 128->10")


def b_inception_v3():
    import torch.nn as nn
    from torchvision.models.inception import (Inception3, InceptionA, InceptionAux, InceptionB, InceptionC,
                                              InceptionD, InceptionE)
    conv = _DivBasicConv2d(16)
    blocks = [conv] + [partial(b, conv_block=conv) for b in (InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, InceptionAux)]
    m = Inception3(num_classes=NUM_CLASSES, aux_logits=False, transform_input=False, inception_blocks=blocks, init_weights=True)
    # InceptionA/B/C/D/E are built with in_channels of the full model; conv_block divides them.
    m.fc = nn.Linear(2048 // 16, NUM_CLASSES)
    return m, dict(shape=(2, 3, 112, 112), capture=("pre", "avgpool"), head="fc", fc="fc",
                   desc="Mixed_7c output (InceptionE: Concat of branches incl. the split 1x3/3x1 Concats) = input of avgpool",
                   notes="torchvision Inception3(aux_logits=False, inception_blocks=[BasicConv2d / 16, Inception{A..E}(conv_block=BasicConv2d / 16), InceptionAux]); fc rebuilt 128->10; input 112, the smallest giving a 2x2 final map (75..106 give 1x1, so the GAP output also matches the activation)")


def b_mnasnet():
    from torchvision.models import MNASNet
    m = MNASNet(alpha=0.25, num_classes=NUM_CLASSES)
    return m, dict(capture=("out", "layers"), head="classifier.1", fc="classifier.1",
                   desc="layers output (Conv1x1(80->1280) + BN + ReLU) = input of x.mean([2, 3])",
                   notes="torchvision MNASNet(alpha=0.25) (the 1280-channel last conv does not shrink)")


def b_alexnet():
    import torch.nn as nn
    from torchvision.models import AlexNet
    m = AlexNet(num_classes=NUM_CLASSES)
    _divide_convs(m, 8)
    m.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(32 * 6 * 6, 64), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                 nn.Linear(64, 64), nn.ReLU(inplace=True), nn.Linear(64, NUM_CLASSES))
    return m, dict(shape=(2, 3, 224, 224), capture=("pre", "avgpool"), head="classifier.6",
                   desc="features output (last MaxPool2d, 6x6) = input of AdaptiveAvgPool2d((6, 6)) (an identity at 224) = input of the flatten",
                   notes="torchvision AlexNet with every conv's channels / 8 and the classifier rebuilt with the same layers at 64 instead of 4096; "
                         "input 224 because the TorchScript exporter only exports AdaptiveAvgPool2d((6,6)) when the feature size is a multiple of 6")


ARCHS: dict[str, Callable[[], tuple[Any, dict]]] = {
    "resnet": b_resnet,
    "resnext": b_resnext,
    "wide_resnet": b_wide_resnet,
    "vgg_bn": b_vgg,
    "densenet": b_densenet,
    "mobilenetv2": b_mobilenetv2,
    "mobilenetv3": b_mobilenetv3,
    "efficientnet_b0": b_efficientnet_b0,
    "efficientnet_v2": b_efficientnet_v2,
    "squeezenet": b_squeezenet,
    "shufflenetv2": b_shufflenetv2,
    "regnet": b_regnet,
    "convnext": b_convnext,
    "googlenet": b_googlenet,
    "inception_v3": b_inception_v3,
    "mnasnet": b_mnasnet,
    "alexnet": b_alexnet,
}
EXTRA = {"tv_ts11_resnet": ("resnet", 11), "tv_ts13_mobilenetv3": ("mobilenetv3", 13)}
SEEDS = {name: 3000 + 17 * i for i, name in enumerate(ARCHS)}


# --------------------------------------------------------------------------- weights / inputs (torch)


def randomise(model: Any, shape: tuple[int, ...], seed: int, head: str, n_stats: int = 8, n_cal: int = 64) -> Any:
    """He-normal Conv/Linear weights, small random biases; BatchNorm statistics measured on random
    data then perturbed, random affine; LayerNorm affine and ConvNeXt layer_scale random; last
    affine layer standardised per class over a calibration batch (as make_torch_goldens.py)."""
    import torch
    import torch.nn as nn
    from torchvision.models.convnext import CNBlock

    from tools.torch_helpers import calibrate_batchnorm_, he_normal_, standardise_head_

    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                he_normal_(m, g)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, CNBlock):
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) * 0.8 + 0.2)
        calibrate_batchnorm_(model, torch.randn(n_stats, *shape[1:], generator=g), g)
        return standardise_head_(model, head, torch.randn(n_cal, *shape[1:], generator=g))


def make_input(model: Any, shape: tuple[int, ...], seed: int, name: str, tries: int = 1000, strict: bool = True) -> Any:
    """Seeded standard-normal batch; the seed advances until the two images get different targets
    (top-2 margin > 1e-2). strict=False: after `tries` seeds, keep the first input."""
    import torch
    md = copy.deepcopy(model).double()
    for k in range(tries):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 99 + k))
        with torch.no_grad():
            y = md(x.double())
        top2 = y.topk(2, 1).values
        if y[0].argmax() != y[1].argmax() and (top2[:, 0] - top2[:, 1]).min() > 1e-2:
            return x
    if not strict:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 99))
    raise SystemExit(f"{name}: no input seed gives two different target classes")


class _Capture:
    """Grabs the default-layer tensor: input of a module, output of a module, or the first
    argument of a module-level function (patched for the duration)."""

    def __init__(self, model: Any, capture: tuple[str, str]) -> None:
        self.kind, self.where = capture
        self.model = model
        self.value = None
        self._undo: Callable[[], None] = lambda: None

    def _keep(self, t: Any) -> None:  # the last call wins (the final pooling runs last)
        t.retain_grad()
        self.value = t

    def __enter__(self) -> "_Capture":
        if self.kind == "pre":
            h = self.model.get_submodule(self.where).register_forward_pre_hook(lambda _m, a: self._keep(a[0]))
            self._undo = h.remove
        elif self.kind == "out":
            h = self.model.get_submodule(self.where).register_forward_hook(lambda _m, _a, o: self._keep(o))
            self._undo = h.remove
        else:
            import importlib
            import types
            modpath, fname = self.where.rsplit(".", 1)
            modname, attr = modpath.rsplit(".", 1)
            owner = importlib.import_module(modname)
            real = getattr(owner, attr)
            fn = getattr(real, fname)

            def wrapped(t: Any, *a: Any, **k: Any) -> Any:
                self._keep(t)
                return fn(t, *a, **k)

            proxy = types.SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if not n.startswith("__")})
            setattr(proxy, fname, wrapped)
            setattr(owner, attr, proxy)
            self._undo = lambda: setattr(owner, attr, real)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._undo()


def goldens(model: Any, spec: dict, x32: Any) -> dict[str, np.ndarray]:
    from tools.torch_helpers import backward_goldens

    md = copy.deepcopy(model).double().eval()
    x = x32.double().clone().requires_grad_(True)
    with _Capture(md, spec["capture"]) as cap:
        out = md(x)
    act = cap.value
    if act is None or act.dim() != 4:
        raise SystemExit("default layer not captured")
    return backward_goldens(md, out, act, x, x32, spec["desc"], spec.get("fc"))


# --------------------------------------------------------------------------- export / inspection


def export(model: Any, x: Any, path: Path, dynamo: bool, opset: int) -> list[str]:
    import torch
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: batch},), external_data=False)
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    for w in caught:
        msg = f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
        if msg not in notes and "legacy TorchScript-based ONNX export" not in msg:
            notes.append(msg)
    import onnx
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return notes


# --------------------------------------------------------------------------- check (onnxcam)


def compare(path: Path, npz: Path) -> dict:
    import onnxcam
    z = np.load(npz)
    t0 = time.perf_counter()
    try:
        ex = onnxcam.Explainer(str(path), method="gradcam")
        r = ex.explain(z["x"])
    except Exception as e:  # report verbatim
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=-4)}
    res: dict[str, Any] = {"layer": r.layer, "seconds": round(time.perf_counter() - t0, 2)}
    ga, gg = z["activation"], z["gradient"]
    if r.activations.shape != ga.shape:
        res.update(ok=False, error=f"activation shape {r.activations.shape} != golden {ga.shape} (layer {r.layer!r})")
        return res
    res["act_rel"] = float(np.abs(r.activations - ga).max() / np.abs(ga).max())
    res["grad_rel"] = float(np.abs(r.gradients - gg).max() / np.abs(gg).max()) if r.gradients is not None else None
    res["targets_ok"] = bool((r.targets == z["targets"]).all())
    res["ok"] = res["act_rel"] < 1e-3 and res["grad_rel"] is not None and res["grad_rel"] < 1e-3 and res["targets_ok"]
    if not res["ok"]:
        res["error"] = (f"MISMATCH layer {r.layer!r}: act rel {res['act_rel']:.2e}, grad rel {res['grad_rel']}, "
                        f"targets {r.targets.tolist()} vs {z['targets'].tolist()}")
    return res


def coverage_table(results: dict[str, dict], rows: list[str], cols: list[tuple[str, str]]) -> str:
    """rows: arch names; cols: (header, stem prefix) -> cell of results[prefix + arch]."""
    lines = ["| arch | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for a in rows:
        cells = []
        for _, pre in cols:
            r = results.get(pre + a)
            if r is None:
                cells.append("—")
            elif r.get("ok"):
                cells.append(f"OK act {r['act_rel']:.1e} grad {r['grad_rel']:.1e}")
            else:
                cells.append("FAIL: " + r["error"].replace("|", "\\|").replace("\n", " "))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(out_dir: Path) -> int:
    import onnxcam  # noqa: F401
    results: dict[str, dict] = {}
    for p in sorted(out_dir.glob("tv_*.onnx")):
        stem = p.stem
        results[stem] = compare(p, p.with_suffix(".npz"))
        r = results[stem]
        print(f"{stem}: " + ("OK act %.1e grad %.1e layer %r (%.1fs)" % (r["act_rel"], r["grad_rel"], r["layer"], r["seconds"])
                             if r.get("ok") else "FAIL " + r["error"]), file=sys.stderr, flush=True)
    (out_dir / "tv_onnxcam_check.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    import onnxcam
    table = "\n\n".join([
        coverage_table(results, list(ARCHS), [("TorchScript opset 17 (`tv_ts_`)", "tv_ts_"), ("dynamo opset 18 (`tv_dy_`)", "tv_dy_")]),
        coverage_table(results, ["resnet"], [("TorchScript opset 11 (`tv_ts11_`)", "tv_ts11_")]),
        coverage_table(results, ["mobilenetv3"], [("TorchScript opset 13 (`tv_ts13_`)", "tv_ts13_")]),
    ])
    table = (f"`Explainer(path, method='gradcam').explain(x)` vs the goldens, max |diff| / max |golden| "
             f"(onnxcam {getattr(onnxcam, '__version__', '?')}); OK needs both < 1e-3 and the same targets.\n\n" + table)
    (out_dir / "tv_onnxcam_check.md").write_text(table + "\n")
    refresh_readme(out_dir)
    print(table)
    return 0


# --------------------------------------------------------------------------- README

BEGIN = "<!-- BEGIN torchvision corpus: generated by tools/arch/make_torchvision_corpus.py -->"
END = "<!-- END torchvision corpus -->"

README_HEAD = """## torchvision architecture corpus (`tv_*`)

Built by `tools/arch/make_torchvision_corpus.py` (rewrites only the text between its BEGIN/END
markers of this README; other sections belong to other generators).
Small-channel versions of torchvision's classification architectures, built from torchvision's own
classes, untrained (seeded He-normal weights, BatchNorm statistics measured on random data then
perturbed, random BatchNorm/LayerNorm affine, the last affine layer standardised per class so that
the two batch items get different targets), each exported with both PyTorch exporters:

* `tv_ts_<arch>.onnx`: `torch.onnx.export(..., dynamo=False, opset_version=17)` (TorchScript);
* `tv_dy_<arch>.onnx`: `torch.onnx.export(..., dynamo=True, opset_version=18)` (torch.export), saved without external data;
* `tv_ts11_resnet.onnx`, `tv_ts13_mobilenetv3.onnx`: TorchScript at opset 11 and 13 (opset coverage).

Dynamic batch axis (`batch`), input `input` (NCHW float32), output `logits` (N, 10). Every file's
onnxruntime output was checked against torch (float64) to 1e-4, at batch 2 and batch 1.

Rebuild from the repository root:

```
/work/venvs/tv/bin/pip install torch torchvision onnx onnxscript onnxruntime numpy
/work/venvs/tv/bin/python -m tools.arch.make_torchvision_corpus            # or --only resnet ...
/work/venvs/dev/bin/python -m tools.arch.make_torchvision_corpus --check   # onnxcam vs goldens
```

Provenance: {prov}.

### Golden format

Exactly the format of `tests/data/goldens/README.md` (PyTorch goldens): one `<stem>.npz` per
`<stem>.onnx` (`np.savez_compressed`), computed by torch autograd on a float64 copy of the model and
stored as float32; exports of one architecture share identical goldens.

| key | dtype, shape | meaning |
|---|---|---|
| `x` | float32 (2, 3, H, W) | seeded standard-normal input (seed chosen so the two images have different targets, top-2 margin ≥ 1e-2) |
| `outputs` | float32 (2, 10) | torch output (float64 → float32); onnxruntime matches to 1e-4 |
| `targets` | int64 (2,) | argmax of `outputs` |
| `activation` | float32 (2, C, h, w) | the DEFAULT layer: last spatial 4-D activation on the path to the output = the input of the final global pooling (VGG/AlexNet: of the flatten; their AdaptiveAvgPool2d is an identity at 224) |
| `gradient` | float32 (2, C, h, w) | d(Σ_n outputs[n, targets[n]]) / d activation |
| `input_gradient` | float32 (2, 3, H, W) | d(Σ_n outputs[n, targets[n]]) / d x |
| `fc_weight`, `fc_bias` | float32 (10, C), (10,) | only where the head is global pooling → flatten → [Dropout] → single Linear |
| `layer_desc` | str (0-d array) | the layer in torch terms |

The "layer tensor" column below is the ONNX tensor holding the default activation, found by exposing
every node output and matching values to `activation` (atol 1e-4; the last match in node order; all
matches are in `tv_report.json`). Debugging aid only: the library must find the layer by itself.

### Architectures

| arch | input | how it was made small |
|---|---|---|
"""


def write_readme(out_dir: Path, report: dict[str, dict], prov: str, arch_notes: dict[str, tuple[str, str]]) -> None:
    lines = [README_HEAD.format(prov=prov).rstrip("\n")]
    for a, (shape, notes) in arch_notes.items():
        lines.append(f"| {a} | {shape} | {notes} |")
    lines += ["", "### Per file", "",
              "| file | size (B) | opset | activation (N,C,h,w) | layer tensor | max abs err vs torch | op types |",
              "|---|---|---|---|---|---|---|"]
    for stem in sorted(report):
        r = report[stem]
        lines.append(f"| `{stem}.onnx` | {r['bytes']} | {r['opset']} | {tuple(r['act_shape'])} | `{r['layer']}` | "
                     f"{r['max_abs_err']:.1e} | {', '.join(r['ops'])} |")
    notes = [(s, r["notes"]) for s, r in sorted(report.items()) if r["notes"]]
    if notes:
        lines += ["", "Exporter warnings (first line each):", ""]
        for s, ns in notes:
            lines.append(f"- `{s}`: " + "; ".join(n.replace("|", "/") for n in ns))
    check_md = out_dir / "tv_onnxcam_check.md"
    if check_md.exists():
        lines += ["", "### onnxcam coverage (from `--check`)", "", check_md.read_text().strip()]
    common.write_readme_section(out_dir / "README.md", BEGIN, END, "\n".join(lines), title="# Architecture corpus")


def refresh_readme(out_dir: Path) -> None:
    """Rewrite this generator's README section from tv_report.json, tv_arch_notes.json and
    tv_onnxcam_check.md (no torch needed)."""
    report = json.loads((out_dir / "tv_report.json").read_text())
    notes = json.loads((out_dir / "tv_arch_notes.json").read_text())
    prov = notes.get("__provenance__", ["?"])[0]
    ordered = {a: tuple(notes[a]) for a in ARCHS if a in notes}
    write_readme(out_dir, report, prov, ordered)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- main


def build_all(out_dir: Path, only: list[str] | None) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    import torchvision

    torch.set_num_threads(2)
    report_path = out_dir / "tv_report.json"
    report: dict[str, dict] = json.loads(report_path.read_text()) if report_path.exists() else {}
    arch_notes_path = out_dir / "tv_arch_notes.json"
    arch_notes: dict[str, list[str]] = json.loads(arch_notes_path.read_text()) if arch_notes_path.exists() else {}
    failures: list[str] = []
    for name in only or list(ARCHS):
        t0 = time.perf_counter()
        torch.manual_seed(SEEDS[name])
        model, spec = ARCHS[name]()
        shape = spec.get("shape", (2, 3, 64, 64))
        model = randomise(model, shape, SEEDS[name], spec["head"])
        x = make_input(model, shape, SEEDS[name], name)
        g = goldens(model, spec, x)
        arch_notes[name] = ["x".join(map(str, shape)), spec["notes"]]
        with torch.no_grad():
            y32 = model(x).numpy()
        if not np.allclose(y32, g["outputs"], atol=1e-3):
            raise SystemExit(f"{name}: float32 and float64 torch outputs differ by {np.abs(y32 - g['outputs']).max():.3g}")
        variants = [(f"tv_ts_{name}", False, OPSET), (f"tv_dy_{name}", True, DYNAMO_OPSET)]
        variants += [(stem, False, op) for stem, (a, op) in EXTRA.items() if a == name]
        for stem, dynamo, opset in variants:
            path = out_dir / f"{stem}.onnx"
            try:
                notes = export(model, x, path, dynamo, opset)
            except Exception as e:
                failures.append(f"{stem}: export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                print(failures[-1], file=sys.stderr)
                continue
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise SystemExit(f"{stem}: {size} bytes > {MAX_BYTES}")
            y = run_ort(path, g["x"])[0]
            err = float(np.abs(y - g["outputs"]).max())
            if not err <= ATOL:
                raise SystemExit(f"{stem}: onnxruntime output differs from torch by {err:.3g} > {ATOL}")
            y1 = run_ort(path, g["x"][:1])[0]
            if not np.allclose(y1, g["outputs"][:1], atol=ATOL):
                raise SystemExit(f"{stem}: batch-1 run differs by {np.abs(y1 - g['outputs'][:1]).max():.3g}")
            np.savez_compressed(out_dir / f"{stem}.npz", **g)
            layer, hits = find_layer_tensor(path, g["x"], g["activation"])
            ops, real_opset = op_types(path)
            report[stem] = {"arch": name, "bytes": size, "npz_bytes": (out_dir / f"{stem}.npz").stat().st_size,
                            "opset": real_opset, "ops": ops, "layer": layer, "matches": hits, "max_abs_err": err,
                            "notes": notes, "act_shape": list(g["activation"].shape), "input_shape": list(shape)}
            print(f"{stem}: {size} B, opset {real_opset}, err {err:.1e}, layer {layer!r}, act {g['activation'].shape}, ops {ops}",
                  file=sys.stderr, flush=True)
        print(f"{name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    prov = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, "
            f"onnxruntime {ort.__version__}, onnxscript {__import__('onnxscript').__version__}, numpy {np.__version__}")
    arch_notes["__provenance__"] = [prov]
    arch_notes_path.write_text(json.dumps(arch_notes, indent=2) + "\n")
    refresh_readme(out_dir)
    if failures:
        raise SystemExit("export failures:\n" + "\n".join(failures))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", action="append", choices=list(ARCHS))
    ap.add_argument("--check", action="store_true", help="run onnxcam on the corpus (dev venv, no torch)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.check:
        sys.exit(check(args.out))
    build_all(args.out, args.only)


if __name__ == "__main__":
    main()
