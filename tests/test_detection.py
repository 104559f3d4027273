"""Real detectors and segmenters (issue 16) against torch autograd.

tests/data/detection/ (tools/detection/make_detection_models.py, index.json) holds small seeded
YOLOv8 / YOLO11 (ultralytics' own configs and export, and both torch.onnx exporters), torchvision
SSDlite / RetinaNet / Faster R-CNN exported whole (post-NMS) and head-only, a transformers DETR and
torchvision DeepLabV3 / LR-ASPP / FCN, with ∂score/∂feature-map from torch autograd for every
documented target. Each test explains what the README's target table says and compares the
gradient at every default layer with the golden (1e-3 relative, float32), and the detection
chosen with the anchor / query torch chose.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam import Explainer
from onnxcam.cli import cli
from onnxcam.errors import ItemError, UsageError
from onnxcam.targets import DetectionTarget, parse_target, with_detection_options

from .helpers import EXAMPLES, ROOT, load_npz, rel_err

DET = ROOT / "tests" / "data" / "detection"
INDEX = json.loads((DET / "index.json").read_text())
STATED = {"ssd": "ssd", "retinanet": "retinanet"}  # raw logits + boxes: SSD and RetinaNet look alike
CPU = ["CPUExecutionProvider"]


def _files(*families: str) -> list[tuple[str, str]]:
    return [(f, key) for key, m in INDEX["models"].items() if m["family"] in families
            for f, info in m["files"].items() if "error" not in info]


@lru_cache(maxsize=None)
def _golden(key: str) -> dict[str, np.ndarray]:
    return load_npz(DET / INDEX["models"][key]["golden"])


@lru_cache(maxsize=None)
def _explainer(fname: str, layer: str | None = None) -> Explainer:
    return Explainer(DET / f"{fname}.onnx", layer=layer, providers=CPU)


def _layer_keys(info: dict) -> dict[str, str]:
    """ONNX tensor → golden layer key (aliases too: tensors holding the same values)."""
    keys = {v: k for k, v in info["layers"].items()}
    for k, names in info.get("layers_aliases", {}).items():
        keys.update({n: k for n in names})
    return keys


def _target(key: str, fname: str, spec: str):
    t = parse_target(spec)
    fam = INDEX["models"][key]["family"]
    if "_head_" in fname and fam in STATED:
        t = with_detection_options(t, STATED[fam])
    return t


def _row_of(t: dict):
    for k in ("anchor", "query", "proposal"):
        if k in t:
            return t[k]
    for k in ("anchors", "queries", "proposals"):
        if k in t:
            return t[k]
    return None


def _cases() -> list:
    out = []
    for fname, key in _files("yolo", "ssd", "retinanet", "detr", "fasterrcnn"):
        kind = "whole" if "_whole_" in fname else "head"
        if kind == "head" and INDEX["models"][key]["family"] == "fasterrcnn":
            continue  # per-proposal outputs without a batch axis: test_two_stage_head_export_is_refused
        for t in INDEX["models"][key]["targets"]:
            if t["id"] == "tiny" or kind not in t.get("applies", [kind]):
                continue
            out.append(pytest.param(fname, key, t["id"], id=f"{fname}-{t['id']}"))
    return out


@pytest.mark.parametrize("fname, key, tid", _cases())
def test_detection_target_gradient_equals_autograd(fname: str, key: str, tid: str) -> None:
    """The documented target differentiates the score torch differentiated, at every default layer."""
    model = INDEX["models"][key]
    info, t, g = model["files"][fname], next(t for t in model["targets"] if t["id"] == tid), _golden(key)
    target = _target(key, fname, t["spec"])
    res = _explainer(fname).explain(g["x"], targets=target)
    keys = _layer_keys(info)
    per_layer = res.layer_results or [res]
    assert all(r.layer in keys for r in per_layer), [r.layer for r in per_layer]
    for r in per_layer:
        gold = g[t["grads"][keys[r.layer]]]
        gold = gold.reshape(-1, *gold.shape[2:]) if gold.ndim == 5 else gold  # top-k: k gradients
        assert rel_err(r.gradients, gold) < 1e-3, (keys[r.layer], rel_err(r.gradients, gold))
    rows = [c[0] for c in target.chosen]
    classes = [c[1] for c in target.chosen]
    want_rows, want_cls = _row_of(t), t.get("cls", t.get("classes"))
    assert rows == (want_rows if isinstance(want_rows, list) else [want_rows])
    assert classes == (want_cls if isinstance(want_cls, list) else [want_cls])
    assert list(res.targets) == classes


@pytest.mark.parametrize("fname, key", _files("yolo", "ssd", "retinanet") + [("fasterrcnn_whole_torchscript", "fasterrcnn")])
def test_multiscale_default_layers_are_the_maps_the_head_reads(fname: str, key: str) -> None:
    """Default: the map the detection head reads at each scale (1×1 levels have no extent) —
    never a DFL tensor or a head convolution, which are not even candidates."""
    info = INDEX["models"][key]["files"][fname]
    ex = _explainer(fname)
    if "_whole_" in fname:  # the layers of what is explained: the pre-selection scores
        ex.explain(_golden(key)["x"], targets=_target(key, fname, "det:row=0"))
    prep = ex._prepare(ex.info.fixed_size, ex._whole.tensor if ex._whole else None)
    keys = _layer_keys(info)
    layers = INDEX["models"][key]["layers"]
    want = {k for k, (_, h, w) in ((k, s[1:]) for k, s in layers.items()) if h * w > 1}
    assert {keys.get(l.name, l.name) for l in prep.head_inputs()} == want
    names = {l.name for l in prep.layers}
    assert not names & set(info.get("dfl_tensors", []))
    assert prep.layer(None).name not in set(info.get("head_outputs", {}).values())


def test_row_reaches_every_anchor() -> None:
    """det:row=N is anchor N of a channels-first YOLOv8 output, for every N (here: the first and
    last anchor of each scale)."""
    info = INDEX["models"]["yolov8"]
    out = _golden("yolov8")["output"][0]  # (4 + K, A) from torch
    ex = _explainer("yolov8_ultralytics", info["files"]["yolov8_ultralytics"]["layers"]["P5"])
    edges = np.cumsum([0] + info["anchors_per_scale"])
    rows = sorted({int(e) for e in edges[:-1]} | {int(e) - 1 for e in edges[1:]})
    t = DetectionTarget(top=None, index=None)
    for r in rows:
        t = parse_target(f"det:row={r}")
        ex.explain(_golden("yolov8")["x"], targets=t)
        assert t.chosen == [(r, int(np.argmax(out[4:, r])))]


def test_tiny_gradients_give_full_range_maps() -> None:
    """Normalisation does not depend on the gradient's scale: a seed 1e-11 times smaller gives
    gradients 1e-11 times the golden and the same heatmap, over the full [0, 1] range."""
    g = _golden("yolov8")
    t = next(t for t in INDEX["models"]["yolov8"]["targets"] if t["id"] == "class0")
    info = INDEX["models"]["yolov8"]["files"]["yolov8_torchscript"]
    ex = _explainer("yolov8_torchscript", info["layers"]["P4"])
    u = np.zeros((1, 8, 336), np.float32)
    u[0, 4, t["anchor"]] = 1.0
    unit, tiny = ex.explain(g["x"], targets=u), ex.explain(g["x"], targets=u * np.float32(1e-11))
    assert rel_err(tiny.gradients, g[t["grads"]["P4"]] * 1e-11) < 1e-3
    assert tiny.cams.max() < 1e-9 and tiny.heatmaps.max() > 0.999
    assert np.abs(tiny.heatmaps - unit.heatmaps).max() < 1e-4
    assert tiny.errors == [None]


def test_score_the_runtime_computes_as_zero_is_reported_not_drawn() -> None:
    """YOLOv8's class 3 (bias −25) scores 7e-11 in torch; onnxruntime's float32 sigmoid returns
    exactly 0 there, so its gradient is exactly 0: reported for the image, not a blank map."""
    g = _golden("yolov8")
    res = _explainer("yolov8_dynamo").explain(g["x"], targets=parse_target("det:class=3"))
    assert res.errors[0] is not None and "exactly zero" in res.errors[0]


def test_zero_map_at_a_scale_without_the_anchor() -> None:
    """Anchor 100 lies on the stride-8 map: its score does not depend on the stride-32 map, whose
    Grad-CAM is exactly zero — an error for the image; fused over the scales it is fine."""
    g = _golden("yolov8")
    info = INDEX["models"]["yolov8"]["files"]["yolov8_ultralytics"]
    res = _explainer("yolov8_ultralytics", info["layers"]["P5"]).explain(g["x"], targets=parse_target("det:row=100"))
    assert res.errors[0].startswith("the map is exactly zero")
    fused = _explainer("yolov8_ultralytics").explain(g["x"], targets=parse_target("det:row=100"))
    assert fused.errors == [None] and fused.heatmaps.max() > 0.999


def test_raw_logit_pairs_need_a_stated_format() -> None:
    """SSD (softmax with background) and RetinaNet (sigmoid) logits look alike: no guess."""
    g = _golden("ssdlite")
    with pytest.raises(UsageError, match="cannot tell the detection format"):
        _explainer("ssdlite_head_dynamo").explain(g["x"], targets=parse_target("det:class=1"))


def test_no_detection_is_an_error_for_that_image() -> None:
    t = DetectionTarget(final=("boxes", "scores", "labels"), output="s")
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64), "s": np.zeros((5, 3), np.float32)}
    with pytest.raises(ItemError, match="no detections in this image"):
        t.seed(empty, "s")
    one = {**empty, "boxes": np.zeros((1, 4), np.float32), "scores": np.array([0.5], np.float32),
           "labels": np.array([2])}
    with pytest.raises(ItemError, match="no detection of class 1"):
        DetectionTarget(cls=1, final=t.final, output="s").seed(one, "s")


def test_two_stage_whole_export_one_image_at_a_time() -> None:
    """Faster R-CNN exported whole: its scores are per proposal (chosen by the RPN's NMS at run
    time, no batch axis), so images are explained one by one and the results concatenated; the
    gradient passes RoiAlign with the proposals as constants of the run, as torch detaches them."""
    g, model = _golden("fasterrcnn"), INDEX["models"]["fasterrcnn"]
    t = next(t for t in model["targets"] if t["id"] == "final0")
    info = model["files"]["fasterrcnn_whole_torchscript"]
    target = parse_target("det:row=0")
    res = _explainer("fasterrcnn_whole_torchscript", info["layers"]["0"]).explain(np.repeat(g["x"], 2, axis=0), target)
    assert target.chosen == [(t["proposal"], t["cls"])] * 2 and res.errors == [None, None]
    gold = g[t["grads"]["0"]]
    assert rel_err(res.gradients, np.concatenate([gold, gold])) < 1e-3


def test_two_stage_head_export_is_refused() -> None:
    """The head-only Faster R-CNN returns (proposals, K) without a batch axis: a clear usage error."""
    g = _golden("fasterrcnn")
    with pytest.raises(UsageError, match="cannot tell the detection format|per item"):
        _explainer("fasterrcnn_head_torchscript").explain(g["x"], targets=parse_target("det:class=1"))


# -- segmenters ----------------------------------------------------------------------------------
def _seg_cases() -> list:
    out = []
    for fname, key in _files("segmentation"):
        for t in INDEX["models"][key]["targets"]:
            out.append(pytest.param(fname, key, t["id"], id=f"{fname}-{t['id']}"))
    return out


@pytest.mark.parametrize("fname, key, tid", _seg_cases())
def test_segmentation_target(fname: str, key: str, tid: str) -> None:
    """seg:C equals autograd of Σ output[C] over the pixels predicted C; a class predicted nowhere
    is an error for the image, never a blank map."""
    model = INDEX["models"][key]
    info, t, g = model["files"][fname], next(t for t in model["targets"] if t["id"] == tid), _golden(key)
    lk = "high" if "high" in info["layers"] else "out"
    res = _explainer(fname, info["layers"][lk]).explain(g["x"], targets=parse_target(t["spec"]))
    if t.get("expect") == "error":
        assert res.errors[0] is not None and f"class {t['cls']} is predicted nowhere" in res.errors[0]
        return
    assert res.errors == [None]
    assert rel_err(res.gradients, g[t["grads"][lk]]) < 1e-3


# -- the command line ----------------------------------------------------------------------------
def _run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_detection_formats_and_boxes_output(tmp_path: Path) -> None:
    img = EXAMPLES / "coffee.png"
    r = _run("explain", DET / "yolov8_ultralytics.onnx", img, "-o", tmp_path / "y", "--preset", "unit",
             "--target", "det:row=100", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    keys = _layer_keys(INDEX["models"]["yolov8"]["files"]["yolov8_ultralytics"])
    assert [keys[n] for n in rep["layer"].split(" + ")] == ["P3", "P4", "P5"]
    # on this resize of the photo the two best YOLO scores are 1.0 in float32: their gradient is
    # exactly 0, reported per map (exit 1), not drawn
    r = _run("explain", DET / "yolov8_ultralytics.onnx", img, "-o", tmp_path / "y2", "--preset", "unit",
             "--target", "det:top=2", "--json")
    assert r.exit_code == 1 and r.stderr.count("the map is exactly zero") == 2
    r = _run("explain", DET / "detr_dynamo.onnx", img, "-o", tmp_path / "d", "--preset", "unit",
             "--target", "det:top=2", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [Path(i["overlay"]).name for i in rep["images"]] == ["coffee.top1.overlay.png", "coffee.top2.overlay.png"]

    head = DET / "ssdlite_head_torchscript.onnx"
    r = _run("explain", head, img, "-o", tmp_path / "s0", "--preset", "unit", "--target", "det:box=40,30,100,90")
    assert r.exit_code == 2 and "--det-format" in r.stderr
    r = _run("explain", head, img, "-o", tmp_path / "s", "--preset", "unit", "--target", "det:box=40,30,100,90",
             "--det-format", "ssd", "--boxes-output", "boxes", "--json")
    assert r.exit_code == 0, r.output
    r = _run("explain", head, img, "-o", tmp_path / "s2", "--preset", "unit", "--target", "top1",
             "--det-format", "ssd")
    assert r.exit_code == 2 and "apply to detection targets" in r.stderr


def test_cli_segmentation_class_predicted_nowhere(tmp_path: Path) -> None:
    r = _run("explain", DET / "fcn_torchscript.onnx", EXAMPLES / "coffee.png", "-o", tmp_path, "--preset", "unit",
             "--target", "seg:3")
    assert r.exit_code == 1 and "class 3 is predicted nowhere" in r.stderr
    assert not list(tmp_path.glob("*.npy"))


def test_transposed_yolov8_output_is_recognised() -> None:
    """(A, 4 + K) rows — a YOLOv8 export with its output transposed — read as such, not as YOLOv5."""
    import onnx
    from onnx import helper

    m = onnx.load(str(DET / "yolov8_dynamo.onnx"))
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node("Transpose", [out.name], ["rows"], perm=[0, 2, 1], name="to_rows"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, [1, 336, 8]))
    g, t = _golden("yolov8"), next(t for t in INDEX["models"]["yolov8"]["targets"] if t["id"] == "class0")
    layer = INDEX["models"]["yolov8"]["files"]["yolov8_dynamo"]["layers"]["P4"]
    target = parse_target("det:class=0")
    res = Explainer(m, layer=layer, providers=CPU).explain(g["x"], targets=target)
    assert target.chosen == [(t["anchor"], 0)]
    assert rel_err(res.gradients, g[t["grads"]["P4"]]) < 1e-3
