"""Build-time helpers for the detector and segmenter fixtures (make_detection_models.py).

Small seeded models of the architectures people deploy — ultralytics YOLOv8 / YOLO11 built from
their own model configs, torchvision SSDlite, RetinaNet, Faster R-CNN, DeepLabV3, LR-ASPP and FCN
assembled from torchvision's own building blocks at reduced widths, a small DETR from
transformers — plus the three exporters (ultralytics, torch.onnx TorchScript, torch.onnx dynamo),
the torch-side bookkeeping the goldens need (feature maps captured by hooks, the final detection
→ anchor/proposal mapping), and the search for an ONNX tensor by value (exporter-independent: the
tensor whose values equal a torch activation).

Needs torch, torchvision, ultralytics and transformers: build time only, never imported by the
test suite.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

NUM_CLASSES = 4  # detector/segmenter classes (torchvision's include the background)
SIZE = 128  # input height = width
FPN = 16  # FPN channels (torchvision's builders: 256)
WIDTH = 0.1  # MobileNetV3 width multiplier of every torchvision backbone here (files stay ~0.5 MB)


# --------------------------------------------------------------------------------------------
# test input


def test_image(path: Path, size: int = SIZE) -> np.ndarray:
    """A real photo (the repo's examples/), resized to size × size, as (1, 3, size, size) in [0, 1]."""
    from PIL import Image

    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return (np.asarray(im, np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


# --------------------------------------------------------------------------------------------
# exporters


def export_torchscript(module: nn.Module, x: torch.Tensor, path: Path, outputs: Sequence[str], opset: int = 17) -> None:
    """torch.onnx's TorchScript-based exporter (dynamo=False), static shapes, input `images`."""
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                      output_names=list(outputs), do_constant_folding=True)


def export_dynamo(module: nn.Module, x: torch.Tensor, path: Path, outputs: Sequence[str], opset: int = 18) -> None:
    """torch.onnx's dynamo-based exporter (torch.export), static shapes, one file."""
    prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=["images"],
                             output_names=list(outputs), external_data=False)
    prog.save(str(path), external_data=False)
    strip_metadata(path)


def strip_metadata(path: Path) -> None:
    """Drop the per-node metadata (stack traces, scopes) and doc strings the dynamo exporter
    writes — half of a small model's file — keeping the graph unchanged."""
    m = onnx.load(str(path))
    for n in m.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    onnx.save(m, str(path))


def export_ultralytics(yolo, path: Path, size: int = SIZE) -> int:
    """ultralytics' own ONNX export (what its users run: `yolo export format=onnx`); returns the opset."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as td:
        os.chdir(td)
        try:
            f = yolo.export(format="onnx", imgsz=size, simplify=False, dynamic=False, verbose=False)
            shutil.move(os.path.join(td, f), path)
        finally:
            os.chdir(cwd)
    return int(onnx.load(str(path), load_external_data=False).opset_import[0].version)


def opset_of(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")))


# --------------------------------------------------------------------------------------------
# finding an ONNX tensor by value


class OnnxTaps:
    """Every float tensor of a model's main graph, computed once by onnxruntime on one input."""

    def __init__(self, path: Path, x: np.ndarray):
        m = onnx.load(str(path))
        names = [o for n in m.graph.node for o in n.output if o]
        known = {o.name for o in m.graph.output}
        for o in names:
            if o not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        outs = s.run(None, feed)
        self.values = {o.name: v for o, v in zip(s.get_outputs(), outs)}
        self.order = names

    def find(self, ref: np.ndarray, tol: float = 1e-4) -> list[str]:
        """Names of the tensors equal to `ref` (same shape, or same shape without a leading 1),
        in graph order."""
        ref = np.asarray(ref, np.float32)
        hits = []
        for name in self.order:
            v = self.values.get(name)
            if not isinstance(v, np.ndarray) or v.dtype != np.float32:
                continue
            if v.shape != ref.shape:
                if v.shape == ref.shape[1:] and ref.shape[0] == 1:
                    v = v[None]
                else:
                    continue
            scale = float(np.abs(ref).max()) or 1.0
            if np.abs(v - ref).max() <= tol * max(scale, 1.0):
                hits.append(name)
        return hits

    def first(self, ref: np.ndarray, what: str, tol: float = 1e-4) -> str:
        hits = self.find(ref, tol)
        if not hits:
            raise RuntimeError(f"no ONNX tensor equals the torch {what} {list(np.shape(ref))}")
        return hits[0]


def capture(modules: dict[str, nn.Module]) -> tuple[dict[str, object], list]:
    """Forward hooks storing each module's output under its key; returns (store, handles)."""
    store: dict[str, object] = {}
    handles = []
    for key, mod in modules.items():
        handles.append(mod.register_forward_hook(lambda _m, _i, out, key=key: store.__setitem__(key, out)))
    return store, handles


def grads(score: torch.Tensor, feats: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """∂score/∂feat for each feature map, float32 numpy."""
    gs = torch.autograd.grad(score, list(feats), retain_graph=True, allow_unused=True)
    return [np.zeros(tuple(f.shape), np.float32) if g is None else g.detach().numpy().astype(np.float32) for g, f in zip(gs, feats)]


def iou(boxes: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """IoU of (M, 4) x0 y0 x1 y1 boxes with one box."""
    b = np.asarray(box, np.float64)
    x0, y0 = np.maximum(boxes[:, 0], b[0]), np.maximum(boxes[:, 1], b[1])
    x1, y1 = np.minimum(boxes[:, 2], b[2]), np.minimum(boxes[:, 3], b[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(union, 1e-12)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2], -1)


# --------------------------------------------------------------------------------------------
# ultralytics YOLOv8 / YOLO11


def build_yolo(cfg: str, seed: int, class_bias: Sequence[float], scale: Sequence[float] = (0.33, 0.0625, 256)):
    """ultralytics' own model config (`yolov8n.yaml`, `yolo11n.yaml`) with a custom width/depth
    scale and NUM_CLASSES classes; seeded random weights, no download. The class-score biases of
    the head's last convolutions are set to `class_bias` at every scale (ultralytics' own bias_init
    sets them near log(5 / nc / (640 / stride)²) ≈ −8.5: here class K−1 is pushed to −25 so that
    its best score is ~1e-11, the tiny-gradient case)."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    d = {k: v for k, v in yaml_model_load(cfg).items() if k not in ("scale", "yaml_file")}
    d["scales"] = {"n": list(scale)}
    d["nc"] = NUM_CLASSES
    td = tempfile.mkdtemp()
    p = os.path.join(td, cfg)
    Path(p).write_text(yaml.safe_dump(d))
    torch.manual_seed(seed)
    y = YOLO(p)
    det = y.model.model[-1]
    with torch.no_grad():
        for seq in det.cv3:
            seq[-1].bias.copy_(torch.tensor(class_bias, dtype=torch.float32))
    y.model.eval()
    return y


class FirstOutput(nn.Module):
    """ultralytics' eval forward returns (decoded (1, 4+K, A), raw per-scale maps): keep the first."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[0]


# --------------------------------------------------------------------------------------------
# torchvision detectors at small widths


def _bn():
    return partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def build_ssdlite(seed: int):
    """SSDlite320-MobileNetV3-Large as torchvision's builder assembles it (reduced tail, SSDLite
    head, DefaultBoxGenerator, its defaults), at width WIDTH and a SIZE × SIZE input."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import ssdlite
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    torch.manual_seed(seed)
    norm = _bn()
    mb = mobilenet_v3_large(weights=None, norm_layer=norm, reduced_tail=True, width_mult=WIDTH)
    ssdlite._normal_init(mb)
    feats = mb.features
    stages = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
    backbone = ssdlite.SSDLiteFeatureExtractorMobileNet(feats, stages[-2], norm, width_mult=WIDTH)
    size = (SIZE, SIZE)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    from torchvision.models.detection import _utils as det_utils

    out_channels = det_utils.retrieve_out_channels(backbone, size)
    head = ssdlite.SSDLiteHead(out_channels, anchors.num_anchors_per_location(), NUM_CLASSES, norm)
    m = SSD(backbone, anchors, size, NUM_CLASSES, head=head, score_thresh=0.001, nms_thresh=0.55,
            detections_per_img=20, topk_candidates=50, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return m.eval()


def _small_fpn_backbone(seed: int, out_channels: int = 16, returned=(4, 5), extra=None):
    """torchvision's _mobilenet_extractor(fpn=True) with a width-WIDTH MobileNetV3-Large and
    `out_channels` FPN channels (the builders hard-code 256)."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    torch.manual_seed(seed)
    mb = mobilenet_v3_large(weights=None, width_mult=WIDTH, reduced_tail=False)
    feats = mb.features
    stages = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
    returned = [r for r in returned if r < len(stages)]
    return_layers = {f"{stages[k]}": str(v) for v, k in enumerate(returned)}
    in_ch = [feats[stages[i]].out_channels for i in returned]
    return BackboneWithFPN(feats, return_layers, in_ch, out_channels, extra_blocks=extra or LastLevelMaxPool())


def build_retinanet(seed: int):
    """RetinaNet (torchvision's class, head and anchor rules: sizes 32…512 × 3 scales × 3 ratios)
    on a small MobileNetV3-FPN backbone (FPN channels) with P6/P7 (LastLevelP6P7), SIZE input."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    bb = _small_fpn_backbone(seed, FPN, returned=(3, 4, 5), extra=LastLevelP6P7(FPN, FPN))
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
    ag = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    torch.manual_seed(seed + 1)
    head = RetinaNetHead(FPN, ag.num_anchors_per_location()[0], NUM_CLASSES)
    # torchvision initialises the head for training (std 0.01, prior bias −4.6): every score would
    # be 0.01, below the 0.05 threshold. He-normal weights and bias −1 give varied scores.
    for c in head.modules():
        if isinstance(c, nn.Conv2d):
            nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            nn.init.zeros_(c.bias)
    nn.init.normal_(head.classification_head.cls_logits.weight, std=0.05)
    nn.init.constant_(head.classification_head.cls_logits.bias, -1.0)
    m = RetinaNet(bb, NUM_CLASSES, min_size=SIZE, max_size=SIZE, anchor_generator=ag, head=head,
                  score_thresh=0.05, detections_per_img=20, topk_candidates=50)
    return m.eval()


def build_fasterrcnn(seed: int):
    """Faster R-CNN as fasterrcnn_mobilenet_v3_large_320_fpn assembles it (MobileNetV3-Large FPN,
    anchors 32…512 × 3 ratios at each level, RPN, MultiScaleRoIAlign, TwoMLPHead) at width WIDTH,
    FPN channels, a 32-wide box head and a SIZE input."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    bb = _small_fpn_backbone(seed, FPN)
    anchor_sizes = ((16, 32, 64, 128, 256),) * 3
    ag = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * 3)
    torch.manual_seed(seed + 1)
    pool = MultiScaleRoIAlign(["0", "1", "pool"], 7, 2)
    m = FasterRCNN(bb, None, min_size=SIZE, max_size=SIZE, rpn_anchor_generator=ag, box_roi_pool=pool,
                   box_head=TwoMLPHead(FPN * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, NUM_CLASSES),
                   rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=30, rpn_score_thresh=0.0,
                   box_score_thresh=0.05, box_detections_per_img=20)
    return m.eval()


class Whole(nn.Module):
    """A torchvision detector on a (1, 3, H, W) batch, returning its post-NMS (boxes, scores, labels)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        d = self.m(list(x))[0]
        return d["boxes"], d["scores"], d["labels"]


class SingleStageHead(nn.Module):
    """SSD / RetinaNet without post-processing: (1, A, K) class logits and (1, A, 4) decoded
    x0 y0 x1 y1 boxes (anchors + the model's box coder), the raw pair a deployed export gives."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        m = self.m
        images, _ = m.transform(list(x))
        feats = m.backbone(images.tensors)
        feats = list(feats.values())
        out = m.head(feats)
        anchors = m.anchor_generator(images, feats)
        boxes = m.box_coder.decode_single(out["bbox_regression"][0], anchors[0])
        return out["cls_logits"], boxes[None]


class TwoStageHead(nn.Module):
    """Faster R-CNN without post-processing: (P, K) class logits of the RPN's P proposals and
    their (P, K, 4) decoded boxes (per class)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        m = self.m
        images, _ = m.transform(list(x))
        feats = m.backbone(images.tensors)
        props, _ = m.rpn(images, feats)
        rh = m.roi_heads
        bf = rh.box_head(rh.box_roi_pool(feats, props, images.image_sizes))
        logits, reg = rh.box_predictor(bf)
        boxes = rh.box_coder.decode(reg, props)
        return logits, boxes


# --------------------------------------------------------------------------------------------
# DETR


def build_detr(seed: int):
    """transformers' DetrForObjectDetection from a small config: a 4-stage ResNet backbone built
    from ResNetConfig (no timm, no download), d_model 32, 1 + 1 layers, 8 queries."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    bcfg = ResNetConfig(embedding_size=16, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic",
                        out_features=["stage4"])
    cfg = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, backbone_config=bcfg,
                     num_labels=NUM_CLASSES, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, auxiliary_loss=False,
                     init_std=0.3)  # larger than the training init (0.02): queries that differ
    torch.manual_seed(seed)
    m = DetrForObjectDetection(cfg)
    return m.eval()


class DetrOut(nn.Module):
    """(logits (1, Q, K+1) with the no-object class last, pred_boxes (1, Q, 4) cx cy w h in [0, 1])."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        o = self.m(pixel_values=x)
        return o.logits, o.pred_boxes


# --------------------------------------------------------------------------------------------
# segmenters


def _seg_backbone(seed: int):
    """A dilated width-WIDTH MobileNetV3-Large returning 'low' (stride 8) and 'out' (stride 16),
    as torchvision's segmentation builders take it."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models._utils import IntermediateLayerGetter

    torch.manual_seed(seed)
    feats = mobilenet_v3_large(weights=None, width_mult=WIDTH, dilated=True).features
    stages = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
    low, high = stages[-4], stages[-1]
    bb = IntermediateLayerGetter(feats, {str(low): "low", str(high): "out"})
    return bb, feats[low].out_channels, feats[high].out_channels


def build_deeplabv3(seed: int):
    """DeepLabV3 (torchvision's DeepLabV3 and ASPP, the DeepLabHead layout at 16 channels)."""
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

    bb, _, hi = _seg_backbone(seed)
    head = nn.Sequential(ASPP(hi, [12, 24, 36], out_channels=16), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, NUM_CLASSES, 1))
    return DeepLabV3(bb, head).eval()


def build_lraspp(seed: int):
    """LR-ASPP (torchvision's LRASPP) with 16 inter channels."""
    from torchvision.models.segmentation.lraspp import LRASPP

    bb, lo, hi = _seg_backbone(seed)
    bb.return_layers = {k: ("high" if v == "out" else v) for k, v in bb.return_layers.items()}
    return LRASPP(bb, lo, hi, NUM_CLASSES, inter_channels=16).eval()


def build_fcn(seed: int):
    """FCN (torchvision's FCN and FCNHead)."""
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    bb, _, hi = _seg_backbone(seed)
    return FCN(bb, FCNHead(hi, NUM_CLASSES)).eval()


class SegOut(nn.Module):
    """torchvision segmenters return a dict: keep 'out' (1, K, H, W)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def last_conv(m: nn.Module) -> nn.Conv2d:
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    return convs[-1]


def seg_classifier(m: nn.Module) -> list[nn.Conv2d]:
    """The convolutions producing class maps (LR-ASPP has two, summed)."""
    return [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.out_channels == NUM_CLASSES]


Builder = Callable[[int], nn.Module]


def calibrate_bn(model: nn.Module, run: Callable[[], object], passes: int = 2) -> None:
    """Re-estimate every BatchNorm's running statistics on the test input (cumulative average),
    so that a randomly initialised network's activations stay O(1) and vary across the image
    instead of vanishing into one constant prediction; the model is left in eval mode."""
    bns = [b for b in model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
        b.train()
    with torch.no_grad():
        for _ in range(passes):
            run()
    model.eval()
