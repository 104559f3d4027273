"""Detector and segmenter fixtures with torch-autograd goldens: tests/data/detection/.

Run from the repository root with the build-time venv (torch, torchvision, ultralytics,
transformers, onnx, onnxruntime)::

    /work/venvs/torch/bin/python -m tools.detection.make_detection_models [MODEL ...]

For each family it writes small seeded models (128 × 128 input, 4 classes) exported by every
exporter that works on it, one golden .npz per model and `index.json`, which describes each ONNX
file (source, exporter, opset, outputs with their shapes and format, the ONNX names of the feature
maps, of the DFL tensors and of the pre-NMS tensors) and each golden target (what is
differentiated, the anchor / query / proposal behind it, its score, the npz keys of ∂score/∂map
for every feature map). An exporter that fails is recorded with its error instead of a file.

Every ONNX file is checked against torch here: its outputs equal the torch outputs, and each
named tensor equals the torch activation it names (names are found by value, so they are right
for any exporter).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from tools.detection import detection_models as D

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "detection"
BOX = (40.0, 30.0, 100.0, 90.0)  # the box used by the box-overlap targets (input pixels, x0 y0 x1 y1)


class Fixture:
    """Collects one model's goldens (npz arrays) and its index entry."""

    def __init__(self, key: str, family: str, source: str, x: np.ndarray):
        self.key, self.arrays = key, {"x": x}
        self.entry = {"family": family, "source": source, "golden": f"{key}.npz", "layers": {}, "targets": [], "files": {}}

    def layers(self, feats: dict[str, torch.Tensor], note: str) -> None:
        self.entry["layers"] = {k: list(v.shape) for k, v in feats.items()}
        self.entry["layers_note"] = note
        for k, v in feats.items():
            self.arrays[f"act__{k}"] = v.detach().numpy().astype(np.float32)

    def target(self, tid: str, spec: str, score: torch.Tensor, feats: dict[str, torch.Tensor], **info) -> None:
        gs = D.grads(score, list(feats.values()))
        keys = {}
        for k, g in zip(feats, gs):
            keys[k] = f"{tid}__{k}"
            self.arrays[keys[k]] = g
        self.entry["targets"].append({"id": tid, "spec": spec, "score": float(score.detach()), "grads": keys, **info})

    def target_many(self, tid: str, spec: str, scores: list[torch.Tensor], feats: dict[str, torch.Tensor], **info) -> None:
        """k targets explained one by one (top-k): gradients stacked on a new first axis."""
        keys = {}
        per = [D.grads(s, list(feats.values())) for s in scores]
        for j, k in enumerate(feats):
            keys[k] = f"{tid}__{k}"
            self.arrays[keys[k]] = np.stack([p[j] for p in per])
        self.entry["targets"].append({"id": tid, "spec": spec, "scores": [float(s.detach()) for s in scores], "grads": keys, **info})

    def export(self, name: str, exporter: str, fn: Callable[[Path], object], outputs: dict, x: np.ndarray,
               torch_out: list[np.ndarray], named: dict[str, dict[str, np.ndarray]], tol: float = 1e-3) -> D.OnnxTaps | None:
        """Export with `fn(path)`, check the outputs against torch, find the `named` tensors by value."""
        path = OUT / f"{name}.onnx"
        info: dict = {"model": self.key, "exporter": exporter}
        try:
            ret = fn(path)
        except Exception as e:  # an exporter that fails is a fact worth recording
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            info["error"] = f"{type(root).__name__}: {str(root).strip().splitlines()[0][:300]}"
            print(f"  {name}: export failed: {info['error']}")
            traceback.print_exc(limit=2)
            path.unlink(missing_ok=True)
            self.entry["files"][name] = info
            return None
        info["opset"] = ret if isinstance(ret, int) else D.opset_of(path)
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        info["input"] = {"name": s.get_inputs()[0].name, "shape": s.get_inputs()[0].shape}
        outs = s.run(None, {s.get_inputs()[0].name: x})
        info["outputs"] = []
        for o, v, ref, (oname, fmt) in zip(s.get_outputs(), outs, torch_out, outputs.items()):
            diff = float(np.abs(v.astype(np.float64) - ref).max()) if v.shape == ref.shape else None
            if diff is None or diff > tol * max(1.0, float(np.abs(ref).max())):
                raise RuntimeError(f"{name}: output {o.name} {v.shape} differs from torch {ref.shape} (max diff {diff})")
            info["outputs"].append({"name": o.name, "shape": list(v.shape), "role": oname, "format": fmt, "max_diff_vs_torch": diff})
        taps = D.OnnxTaps(path, x)
        for group, refs in named.items():
            info[group] = {}
            for k, ref in refs.items():
                hits = taps.find(ref)
                if hits:
                    info[group][k] = hits[0]
                    if len(hits) > 1:
                        info.setdefault(f"{group}_aliases", {})[k] = hits[1:]
                else:
                    info.setdefault(f"{group}_not_in_main_graph", []).append(k)
        self.entry["files"][name] = info
        print(f"  {name}: opset {info['opset']}, outputs {[o['shape'] for o in info['outputs']]}")
        return taps

    def save(self, index: dict) -> None:
        np.savez_compressed(OUT / f"{self.key}.npz", **self.arrays)
        index["models"][self.key] = self.entry


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------ YOLO


def yolo(index: dict, x_np: np.ndarray, cfg: str, key: str, seed: int, with_torchscript: bool) -> None:
    print(key)
    bias = [0.0, -0.3, -0.6, -25.0]
    y = D.build_yolo(cfg, seed, bias)
    model = y.model
    x = torch.from_numpy(x_np)
    xb = torch.cat([x, x.flip(-1), x.flip(-2), x * 0.8 + 0.1])
    D.calibrate_bn(model, lambda: model(xb))
    model.fuse()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    det = model.model[-1]
    f = Fixture(key, "yolo", f"ultralytics {cfg} (scales n: [0.33, 0.0625, 256]), nc={D.NUM_CLASSES}, seed {seed}, "
                f"class biases {bias}, BN statistics from the test input", x_np)
    mods = {f"P{3 + i}": model.model[j] for i, j in enumerate(det.f)}
    heads = {f"{br}_P{3 + i}": getattr(det, br)[i] for br in ("cv2", "cv3") for i in range(len(det.f))}
    store, hs = D.capture({**mods, **heads})
    xg = x.clone().requires_grad_(True)
    out = D.FirstOutput(model)(xg)  # (1, 4 + K, A): cx cy w h in pixels, K sigmoid class scores
    for h in hs:
        h.remove()
    feats = {k: store[k] for k in mods}
    f.layers(feats, f"the maps feeding the Detect head at strides 8/16/32 (outputs of model.{det.f})")
    o = out[0]
    k_, a_ = o.shape[0] - 4, o.shape[1]
    s = o[4:]
    sn = _np(s)
    boxes = D.cxcywh_to_xyxy(_np(o[:4]).T)
    f.arrays["anchor_boxes_xyxy"] = boxes.astype(np.float32)
    sizes = [int(v.shape[2] * v.shape[3]) for v in feats.values()]
    f.entry["anchors_per_scale"] = sizes
    fmt = "yolov8: (1, 4+K, A) channels first: cx, cy, w, h (input pixels), K class scores after sigmoid; no objectness"
    for row in (100, a_ - 1):
        c = int(sn[:, row].argmax())
        f.target(f"row{row}", f"det:row={row}", s[c, row], feats, anchor=row, cls=c,
                 what="output[0, 4 + cls, anchor], cls = the best class at that anchor")
    a = int(sn[0].argmax())
    f.target("class0", "det:class=0", s[0, a], feats, anchor=a, cls=0, what="the best-scoring anchor of class 0")
    ious = D.iou(boxes, BOX)
    a = int(ious.argmax())
    c = int(sn[:, a].argmax())
    f.target("box", "det:box=" + ",".join(str(int(v)) for v in BOX), s[c, a], feats, anchor=a, cls=c, box=list(BOX),
             iou=float(ious[a]), what="the anchor whose box overlaps BOX most, its best class")
    flat = np.argsort(-sn.ravel(), kind="stable")[:3]
    pairs = [(int(i % a_), int(i // a_)) for i in flat]
    f.target_many("top3", "det:top=3", [s[c, a] for a, c in pairs], feats, anchors=[p[0] for p in pairs],
                  classes=[p[1] for p in pairs], what="the 3 best (anchor, class) scores, one gradient each")
    a = int(sn[3].argmax())
    f.target("tiny", "det:class=3", s[3, a], feats, anchor=a, cls=3,
             what="class 3 (bias −25): its best score is ~1e-11, a tiny but exact gradient")
    f.arrays["output"] = out.detach().numpy()

    named = {"layers": {k: v.detach().numpy() for k, v in feats.items()},
             "head_outputs": {k: store[k].detach().numpy() for k in heads}}  # box (4·16) and class maps: never layers
    outputs = {"output0": fmt}
    ref = [out.detach().numpy().astype(np.float64)]
    f.export(f"{key}_ultralytics", "ultralytics", lambda p: D.export_ultralytics(y, p), outputs, x_np, ref, named)
    wrapped = D.FirstOutput(model).eval()
    # ultralytics' export is torch.onnx's TorchScript exporter at opset 18: the opset-17 TorchScript
    # export is added for one family only (each YOLO file is ~0.8 MB, mostly the 64-wide DFL branch)
    if with_torchscript:
        f.export(f"{key}_torchscript", "torchscript", lambda p: D.export_torchscript(wrapped, x, p, ["output0"], 17),
                 outputs, x_np, ref, named)
    f.export(f"{key}_dynamo", "dynamo", lambda p: D.export_dynamo(wrapped, x, p, ["output0"], 18), outputs, x_np, ref, named)
    # DFL tensors: every tensor whose last axis runs over the A anchors and has the reg_max (16) bins
    for name, info in f.entry["files"].items():
        if "error" in info:
            continue
        taps = D.OnnxTaps(OUT / f"{name}.onnx", x_np)
        dfl = [n for n in taps.order if isinstance(taps.values.get(n), np.ndarray) and taps.values[n].ndim >= 3
               and taps.values[n].shape[-1] == a_ and 16 in taps.values[n].shape]
        info["dfl_tensors"] = dfl
    f.save(index)


# ----------------------------------------------------------------------- torchvision detectors


def tv_detector(index: dict, x_np: np.ndarray, key: str, builder, seed: int, kind: str) -> None:
    """kind: 'ssd' (softmax over K with background 0), 'retinanet' (sigmoid), 'fasterrcnn'."""
    print(key)
    m = builder(seed)
    x = torch.from_numpy(x_np)
    xb = torch.cat([x, x.flip(-1), x.flip(-2), x * 0.8 + 0.1])
    D.calibrate_bn(m, lambda: D.Whole(m)(xb))
    for p in m.parameters():
        p.requires_grad_(False)
    f = Fixture(key, kind, f"torchvision {type(m).__name__} ({builder.__doc__.split('.')[0].strip()}), "
                f"{D.NUM_CLASSES} classes incl. background, seed {seed}, BN statistics from the test input", x_np)
    mods = {"backbone": m.backbone}
    if kind == "fasterrcnn":
        mods.update(rpn=m.rpn, predictor=m.roi_heads.box_predictor)
    else:
        mods.update(head=m.head, anchors=m.anchor_generator)
    store, hs = D.capture(mods)
    xg = x.clone().requires_grad_(True)
    boxes_f, scores_f, labels_f = D.Whole(m)(xg)
    for h in hs:
        h.remove()
    feats = dict(store["backbone"])
    f.layers(feats, "the backbone/FPN maps feeding the detection head (SSD: 6 maps; FPN levels)")
    size = (D.SIZE, D.SIZE)
    from torchvision.ops import boxes as box_ops

    if kind == "fasterrcnn":
        logits, reg = store["predictor"]
        props = store["rpn"][0][0]
        cand = torch.softmax(logits, -1)  # (P, K)
        cboxes = box_ops.clip_boxes_to_image(m.roi_heads.box_coder.decode(reg, [props]).reshape(len(props), -1, 4), size)
        rows_name, what = "proposal", "softmax(class_logits[proposal])[cls]"
    else:
        head, anchors = store["head"], store["anchors"][0]
        logits = head["cls_logits"][0]
        cand = torch.softmax(logits, -1) if kind == "ssd" else torch.sigmoid(logits)
        cb = box_ops.clip_boxes_to_image(m.box_coder.decode_single(head["bbox_regression"][0], anchors), size)
        cboxes = cb[:, None, :].expand(-1, cand.shape[1], -1)
        rows_name = "anchor"
        what = "softmax(cls_logits[anchor])[cls] (class 0 = background)" if kind == "ssd" else "sigmoid(cls_logits[anchor, cls])"
    cn, cbn = _np(cand), _np(cboxes)
    n_final = len(scores_f)
    if n_final == 0:
        raise RuntimeError(f"{key}: no detections on the test input")
    mapping = []
    for i in range(n_final):
        lab, sc, bx = int(labels_f[i]), float(scores_f[i]), _np(boxes_f[i])
        err = np.abs(cn[:, lab] - sc) + np.abs(cbn[:, lab] - bx).max(-1)
        r = int(err.argmin())
        if err[r] > 1e-4:
            raise RuntimeError(f"{key}: final detection {i} matches no pre-NMS candidate (best error {err[r]})")
        mapping.append((r, lab))
    f.entry["final_to_" + rows_name] = mapping
    f.entry["score"] = what
    f.arrays["final_boxes"], f.arrays["final_scores"] = _np(boxes_f).astype(np.float32), _np(scores_f).astype(np.float32)
    f.arrays["final_labels"] = labels_f.numpy()
    f.arrays["candidate_scores"], f.arrays["candidate_boxes"] = cn.astype(np.float32), cbn.astype(np.float32)
    fg = cn.copy()
    if kind != "retinanet":
        fg[:, 0] = -1  # background is never a detection
    # targets on the final output (whole export) ...
    r, c = mapping[0]
    f.target("final0", "det:row=0", cand[r, c], feats, final=0, **{rows_name: r}, cls=c, applies=["whole"],
             what=f"the pre-NMS score behind final detection 0: {what}")
    other = next((i for i, (_, cc) in enumerate(mapping) if cc != c), min(3, n_final - 1))
    r2, c2 = mapping[other]
    f.target(f"final{other}", f"det:row={other}", cand[r2, c2], feats, final=other, **{rows_name: r2}, cls=c2, applies=["whole"],
             what=f"final detection {other} (another class where there is one)")
    ious = D.iou(_np(boxes_f), BOX)
    i = int(ious.argmax())
    f.target("box_final", "det:box=" + ",".join(str(int(v)) for v in BOX), cand[mapping[i]], feats, final=i,
             **{rows_name: mapping[i][0]}, cls=mapping[i][1], iou=float(ious[i]), applies=["whole"],
             what="the final detection whose box overlaps BOX most")
    k3 = list(range(min(3, n_final)))
    f.target_many("top3_final", "det:top=3", [cand[mapping[i]] for i in k3], feats, finals=k3,
                  **{rows_name + "s": [mapping[i][0] for i in k3]}, classes=[mapping[i][1] for i in k3], applies=["whole"],
                  what="the first 3 final detections")
    # ... and on the raw (head-only) output
    for cls in range(1 if kind != "retinanet" else 0, fg.shape[1]):
        r = int(fg[:, cls].argmax())
        f.target(f"class{cls}", f"det:class={cls}", cand[r, cls], feats, **{rows_name: r}, cls=cls, applies=["whole", "head"],
                 final=next((i for i, mp in enumerate(mapping) if mp == (r, cls)), None),
                 what=f"the best-scoring {rows_name} of class {cls} (= the first final detection of that class)")
    row = min(7, len(cn) - 1)
    c = int(fg[row].argmax())
    f.target(f"row{row}", f"det:row={row}", cand[row, c], feats, **{rows_name: row}, cls=c, applies=["head"],
             what=f"head-only export: {rows_name} {row}, its best foreground class")
    best = np.argsort(-fg.ravel(), kind="stable")[:3]
    pairs = [(int(i // fg.shape[1]), int(i % fg.shape[1])) for i in best]
    f.target_many("top3_raw", "det:top=3", [cand[p] for p in pairs], feats, **{rows_name + "s": [p[0] for p in pairs]},
                  classes=[p[1] for p in pairs], applies=["head"], what=f"head-only export: the 3 best ({rows_name}, class) scores")
    a_iou = D.iou(cbn[:, 1], BOX) if kind != "fasterrcnn" else None
    if a_iou is not None:
        r = int(a_iou.argmax())
        c = int(fg[r].argmax())
        f.target("box_raw", "det:box=" + ",".join(str(int(v)) for v in BOX), cand[r, c], feats, **{rows_name: r},
                 cls=c, iou=float(a_iou[r]), applies=["head"], what="head-only export: the anchor whose box overlaps BOX most, its best class")

    # exports
    named = {"layers": {k: v.detach().numpy() for k, v in feats.items()}}
    if kind == "fasterrcnn":
        named["pre_nms"] = {"class_logits": _np(logits).astype(np.float32), "scores": cn.astype(np.float32),
                            "box_regression": _np(reg).astype(np.float32), "proposals": _np(props).astype(np.float32)}
    else:
        named["pre_nms"] = {"cls_logits": _np(logits)[None].astype(np.float32), "scores": cn[None].astype(np.float32),
                            "bbox_regression": _np(head["bbox_regression"]).astype(np.float32),
                            "boxes": _np(cb).astype(np.float32)}
    with torch.no_grad():
        whole = D.Whole(m).eval()
        wo = [_np(t) for t in whole(x)]
        head_m = (D.TwoStageHead(m) if kind == "fasterrcnn" else D.SingleStageHead(m)).eval()
        ho = [_np(t) for t in head_m(x)]
    fmt_whole = {"boxes": "final detections (N, 4) x0 y0 x1 y1, input pixels, no batch axis",
                 "scores": f"(N,) {what}", "labels": "(N,) int64 class (0 = background never appears)"}
    if kind == "fasterrcnn":
        fmt_head = {"class_logits": "(P, K) logits of the P proposals; softmax over K, class 0 = background",
                    "boxes": "(P, K, 4) x0 y0 x1 y1 per class, input pixels (not clipped)"}
    else:
        fmt_head = {"cls_logits": "(1, A, K) logits; " + ("softmax over K, class 0 = background" if kind == "ssd" else "sigmoid per class"),
                    "boxes": "(1, A, 4) x0 y0 x1 y1 decoded from the anchors, input pixels (not clipped)"}
    f.export(f"{key}_whole_torchscript", "torchscript", lambda p: D.export_torchscript(whole, x, p, list(fmt_whole), 17),
             fmt_whole, x_np, wo, named)
    f.export(f"{key}_whole_dynamo", "dynamo", lambda p: D.export_dynamo(whole, x, p, list(fmt_whole), 18),
             fmt_whole, x_np, wo, named)
    f.export(f"{key}_head_torchscript", "torchscript", lambda p: D.export_torchscript(head_m, x, p, list(fmt_head), 17),
             fmt_head, x_np, ho, named)
    f.export(f"{key}_head_dynamo", "dynamo", lambda p: D.export_dynamo(head_m, x, p, list(fmt_head), 18),
             fmt_head, x_np, ho, named)
    f.save(index)


# -------------------------------------------------------------------------------------- DETR


def detr(index: dict, x_np: np.ndarray, seed: int) -> None:
    key = "detr"
    print(key)
    m = D.build_detr(seed)
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(x_np)
    f = Fixture(key, "detr", f"transformers DetrForObjectDetection (small DetrConfig + ResNetConfig backbone, "
                f"{D.NUM_CLASSES} classes + no-object, 8 queries), seed {seed}", x_np)
    proj = m.model.input_projection
    store = {}
    h = proj.register_forward_hook(lambda _m, i, o: store.update(backbone=i[0], projection=o))
    xg = x.clone().requires_grad_(True)
    logits, pboxes = D.DetrOut(m)(xg)
    h.remove()
    feats = {"backbone": store["backbone"], "projection": store["projection"]}
    f.layers(feats, "the CNN backbone's last map and its 1×1 input projection (the encoder's input)")
    p = torch.softmax(logits[0], -1)[:, : D.NUM_CLASSES]  # no-object (last) excluded
    pn = _np(p)
    boxes = D.cxcywh_to_xyxy(_np(pboxes[0])) * D.SIZE
    f.arrays["probs"], f.arrays["boxes_xyxy"] = pn.astype(np.float32), boxes.astype(np.float32)
    what = "softmax(logits[query])[cls] over K+1 classes, cls < K (the last class, no-object, is never a detection)"
    f.entry["score"] = what
    q, c = np.unravel_index(pn.argmax(), pn.shape)
    f.target("best", "det", p[q, c], feats, query=int(q), cls=int(c), what="the best (query, class)")
    for cls in range(D.NUM_CLASSES):
        q = int(pn[:, cls].argmax())
        f.target(f"class{cls}", f"det:class={cls}", p[q, cls], feats, query=q, cls=cls, what=f"the best query of class {cls}")
    q = 5
    f.target("row5", "det:row=5", p[q, int(pn[q].argmax())], feats, query=q, cls=int(pn[q].argmax()), what="query 5, its best class")
    ious = D.iou(boxes, BOX)
    q = int(ious.argmax())
    f.target("box", "det:box=" + ",".join(str(int(v)) for v in BOX), p[q, int(pn[q].argmax())], feats, query=q,
             cls=int(pn[q].argmax()), iou=float(ious[q]), what="the query whose box overlaps BOX most, its best class")
    best = np.argsort(-pn.ravel(), kind="stable")[:3]
    pairs = [(int(i // pn.shape[1]), int(i % pn.shape[1])) for i in best]
    f.target_many("top3", "det:top=3", [p[a] for a in pairs], feats, queries=[a[0] for a in pairs],
                  classes=[a[1] for a in pairs], what="the 3 best (query, class)")
    named = {"layers": {k: v.detach().numpy() for k, v in feats.items()}}
    fmt = {"logits": "(1, Q, K+1) logits; softmax over K+1, the last class is no-object",
           "pred_boxes": "(1, Q, 4) cx cy w h normalised to [0, 1]"}
    wrapped = D.DetrOut(m).eval()
    with torch.no_grad():
        ref = [_np(t) for t in wrapped(x)]
    f.export("detr_torchscript", "torchscript", lambda p_: D.export_torchscript(wrapped, x, p_, list(fmt), 17), fmt, x_np, ref, named)
    f.export("detr_dynamo", "dynamo", lambda p_: D.export_dynamo(wrapped, x, p_, list(fmt), 18), fmt, x_np, ref, named)
    f.save(index)


# -------------------------------------------------------------------------------- segmenters


def segmenter(index: dict, x_np: np.ndarray, key: str, builder, seed: int) -> None:
    print(key)
    m = builder(seed)
    x = torch.from_numpy(x_np)
    xb = torch.cat([x, x.flip(-1), x.flip(-2), x * 0.8 + 0.1])
    D.calibrate_bn(m, lambda: m(xb))
    with torch.no_grad():  # class K−1 is predicted nowhere: the negative test
        for conv in D.seg_classifier(m)[-1:]:
            conv.bias[D.NUM_CLASSES - 1] -= 50.0
    for p in m.parameters():
        p.requires_grad_(False)
    f = Fixture(key, "segmentation", f"torchvision {type(m).__name__} ({builder.__doc__.strip()}) on a dilated "
                f"width-{D.WIDTH} MobileNetV3-Large, {D.NUM_CLASSES} classes (class {D.NUM_CLASSES - 1} biased −50: "
                f"predicted nowhere), seed {seed}, BN statistics from the test input", x_np)
    store, hs = D.capture({"backbone": m.backbone})
    xg = x.clone().requires_grad_(True)
    y = D.SegOut(m)(xg)
    for h in hs:
        h.remove()
    feats = dict(store["backbone"])
    f.layers(feats, "the backbone maps the head reads ('out'/'high' stride 16; LR-ASPP also 'low' stride 8)")
    arg = y[0].argmax(0).numpy()
    counts = np.bincount(arg.ravel(), minlength=D.NUM_CLASSES)
    f.entry["pixels_per_class"] = counts.tolist()
    for c in range(D.NUM_CLASSES):
        mask = torch.from_numpy((arg == c).astype(np.float32))
        score = (y[0, c] * mask).sum()
        if counts[c]:
            f.target(f"seg{c}", f"seg:{c}", score, feats, cls=c, pixels=int(counts[c]),
                     what=f"Σ output[0, {c}] over the pixels predicted as {c} (pytorch-grad-cam's SemanticSegmentationTarget)")
        else:
            f.entry["targets"].append({"id": f"seg{c}", "spec": f"seg:{c}", "cls": c, "pixels": 0, "expect": "error",
                                       "what": f"class {c} is predicted nowhere: an empty mask, must be an error, never a blank map"})
    named = {"layers": {k: v.detach().numpy() for k, v in feats.items()}}
    fmt = {"out": "(1, K, H, W) class logits at the input's size"}
    wrapped = D.SegOut(m).eval()
    with torch.no_grad():
        ref = [_np(wrapped(x))]
    f.export(f"{key}_torchscript", "torchscript", lambda p: D.export_torchscript(wrapped, x, p, ["out"], 17), fmt, x_np, ref, named)
    f.export(f"{key}_dynamo", "dynamo", lambda p: D.export_dynamo(wrapped, x, p, ["out"], 18), fmt, x_np, ref, named)
    f.save(index)


def main(only: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    x = D.test_image(ROOT / "examples" / "coffee.png")
    ipath = OUT / "index.json"
    index = json.loads(ipath.read_text()) if only and ipath.exists() else {}
    index.update({"input": "examples/coffee.png resized to 128 × 128, RGB in [0, 1], (1, 3, 128, 128): `x` in each npz",
                  "box": list(BOX), "num_classes": D.NUM_CLASSES})
    index.setdefault("models", {})
    jobs = {
        "yolov8": lambda: yolo(index, x, "yolov8n.yaml", "yolov8", 0, True),
        "yolo11": lambda: yolo(index, x, "yolo11n.yaml", "yolo11", 1, False),
        "ssdlite": lambda: tv_detector(index, x, "ssdlite", D.build_ssdlite, 2, "ssd"),
        "retinanet": lambda: tv_detector(index, x, "retinanet", D.build_retinanet, 3, "retinanet"),
        "fasterrcnn": lambda: tv_detector(index, x, "fasterrcnn", D.build_fasterrcnn, 4, "fasterrcnn"),
        "detr": lambda: detr(index, x, 5),
        "deeplabv3": lambda: segmenter(index, x, "deeplabv3", D.build_deeplabv3, 6),
        "lraspp": lambda: segmenter(index, x, "lraspp", D.build_lraspp, 7),
        "fcn": lambda: segmenter(index, x, "fcn", D.build_fcn, 8),
    }
    for name, job in jobs.items():
        if not only or name in only:
            job()
            ipath.write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
