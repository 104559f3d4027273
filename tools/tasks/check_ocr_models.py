"""Run the bundled PaddleOCR models (models/ocr/) on real text and describe their graphs.

Needs numpy, onnx, onnxruntime, opencv and scikit-image (the project's dev venv has them)::

    /work/venvs/dev/bin/python -m tools.tasks.check_ocr_models [--json]

Preprocessing is RapidOCR 1.4.4's (rapidocr_onnxruntime/ch_ppocr_{det,cls}): BGR uint8 image,
x = (x / 255 - 0.5) / 0.5 per channel, HWC -> CHW. Detector: resize so each side is a multiple of
32 (limit_type "min", limit_side_len 736 in RapidOCR; here the text images are only rounded to a
multiple of 32, at 2x). Classifier: resize to height 48 keeping the aspect ratio (width <= 192),
pad with zeros on the right to 3x48x192; labels ["0", "180"].

Checks (exit 1 on failure), on scikit-image's page() (a printed page): the detector's probability map
is high on the text (2-60% of the pixels above RapidOCR's 0.3 binarisation threshold, max > 0.9),
and the classifier says "0" for two upright text lines and "180" for them rotated by 180 degrees.
The detector is also run on text() (handwriting, reported only).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import skimage.data

from tools import common
from tools.common import ancestors, descendants

REPO = common.ROOT
DET = REPO / "models" / "ocr" / "ch_PP-OCRv4_det_infer.onnx"
CLS = REPO / "models" / "ocr" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def norm(bgr: np.ndarray) -> np.ndarray:
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def det_input(gray: np.ndarray, scale: float = 2.0) -> np.ndarray:
    h, w = gray.shape
    rh, rw = (max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32))
    bgr = cv2.cvtColor(cv2.resize(gray, (rw, rh)), cv2.COLOR_GRAY2BGR)
    return norm(bgr)[None]


def cls_input(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    rw = min(192, int(np.ceil(48 * w / h)))
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :rw] = norm(cv2.resize(bgr, (rw, 48)))
    return out


def path_ops(m: onnx.ModelProto, start: str, out: str) -> dict[str, int]:
    down, up = descendants(m.graph, start), ancestors(m.graph, [out])
    return dict(sorted(collections.Counter(
        n.op_type for n in m.graph.node if any(i in down for i in n.input) and any(o in up for o in n.output)).items()))


def describe(path: Path, x: np.ndarray) -> dict:
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    exp = onnx.load(str(path))
    names = [o for n in exp.graph.node if n.op_type != "Constant" for o in n.output]
    for t in names:
        if t != out:
            exp.graph.output.append(onnx.ValueInfoProto(name=t))
    s = ort.InferenceSession(exp.SerializeToString(), providers=["CPUExecutionProvider"])
    vals = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))
    order = [t for t in names if t in ancestors(m.graph, [out])]
    spatial = [t for t in order if vals[t].ndim == 4 and vals[t].shape[2] * vals[t].shape[3] > 1]
    return {
        "file": path.name, "bytes": path.stat().st_size,
        "opset": [(o.domain or "ai.onnx", o.version) for o in m.opset_import],
        "ir_version": m.ir_version, "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input},
        "outputs": {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output},
        "ops": dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())),
        "resize": [{"output": n.output[0], **{a.name: (onnx.helper.get_attribute_value(a).decode()
                    if isinstance(onnx.helper.get_attribute_value(a), bytes) else onnx.helper.get_attribute_value(a))
                    for a in n.attribute}} for n in m.graph.node if n.op_type == "Resize"],
        "last_4d_rule": spatial[-1] if spatial else None,
        "_vals": vals, "_model": m, "_out": out,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = ap.parse_args(argv)
    ok = True
    report: dict = {}

    # ---- detector on skimage's text() and page()
    det = ort.InferenceSession(str(DET), providers=["CPUExecutionProvider"])
    # page(): a printed page (the check); text(): handwritten formulas on slanted paper (reported
    # only), at RapidOCR's own scale (shorter side 736 = 4.28x)
    for name, scale in (("page", 2.0), ("text", 736 / 172)):
        x = det_input(getattr(skimage.data, name)(), scale)
        p = det.run(None, {"x": x})[0]
        frac = float((p > 0.3).mean())
        report[f"det_{name}"] = {"input": list(x.shape), "output": list(p.shape), "min": float(p.min()),
                                 "max": float(p.max()), "mean": float(p.mean()), "frac_gt_0.3": frac}
        if name == "page":
            ok &= p.shape == (1, 1, *x.shape[2:]) and p.max() > 0.9 and 0.02 < frac < 0.6
    d = describe(DET, det_input(skimage.data.page()))
    m, vals, out = d.pop("_model"), d.pop("_vals"), d.pop("_out")
    backbone_last = "p2o.Add.215"   # PPLCNetV3 stride-32 output (learnable-affine Hardswish), 384 ch
    neck_out = "p2o.Concat.1"       # neck output (4 upsampled levels concatenated), stride 4: feeds the DB head
    d["backbone_last"] = {"tensor": backbone_last, "shape": list(vals[backbone_last].shape),
                          "path_ops_to_output": path_ops(m, backbone_last, out)}
    d["neck_out"] = {"tensor": neck_out, "shape": list(vals[neck_out].shape),
                     "path_ops_to_output": path_ops(m, neck_out, out)}
    report["det_graph"] = d

    # ---- direction classifier on a line of skimage's text(), upright and rotated 180 degrees
    cls = ort.InferenceSession(str(CLS), providers=["CPUExecutionProvider"])
    page = skimage.data.page()
    title = cv2.cvtColor(page[5:42, 0:300], cv2.COLOR_GRAY2BGR)   # "Region-based segmentation"
    line = cv2.cvtColor(page[44:68, 0:200], cv2.COLOR_GRAY2BGR)   # "Let us first determine"
    batch = np.stack([cls_input(title), cls_input(cv2.rotate(title, cv2.ROTATE_180)),
                      cls_input(line), cls_input(cv2.rotate(line, cv2.ROTATE_180))])
    probs = cls.run(None, {"x": batch})[0]
    labels = ["0", "180"]
    report["cls"] = {"inputs": ["page title", "page title rotated 180", "page line 1", "page line 1 rotated 180"],
                     "probs": probs.round(4).tolist(), "pred": [labels[i] for i in probs.argmax(1)]}
    ok &= [labels[i] for i in probs.argmax(1)] == ["0", "180", "0", "180"]
    c = describe(CLS, batch)
    m, vals, out = c.pop("_model"), c.pop("_vals"), c.pop("_out")
    last = c["last_4d_rule"]
    c["last_4d_rule_shape"] = list(vals[last].shape)
    c["path_ops_from_last_4d"] = path_ops(m, last, out)
    c["backbone_last"] = {"tensor": "hardswish_17.tmp_0", "shape": list(vals["hardswish_17.tmp_0"].shape),
                          "path_ops_to_output": path_ops(m, "hardswish_17.tmp_0", out)}
    report["cls_graph"] = c
    report["ok"] = bool(ok)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k}: {v}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
