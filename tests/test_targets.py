"""Targets as cotangents on detectors, segmenters, multi-output regressors and classifiers, against
framework autograd goldens (tests/data/tasks, made by tools/tasks/*.py: the gradient of
⟨seed, output⟩ at the model's head input, by torch autograd / tf.GradientTape)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxcam import Explainer, UsageError
from onnxcam import targets as T
from onnxcam.cli import cli

from .helpers import EXAMPLES, GOLDENS, MOBILENET, ROOT, load_npz, rel_err

TASKS = ROOT / "tests" / "data" / "tasks"
LAYERS = json.loads((TASKS / "layers.json").read_text())


def load(stem: str) -> dict[str, np.ndarray]:
    return load_npz(TASKS / f"{stem}.npz")


def cases(stem: str) -> list[str]:
    return sorted(k[5:-7] for k in load(stem) if k.startswith("case_") and k.endswith("_output"))


ALL = [(s, c) for s in ("det_yolo", "det_ssd", "seg_fcn", "reg_multi") for c in cases(s)]


@pytest.mark.parametrize("stem, case", ALL)
def test_seed_array_gradient_matches_autograd_at_the_head_input(stem: str, case: str):
    z = load(stem)
    out = str(z[f"case_{case}_output"])
    res = Explainer(TASKS / f"{stem}.onnx", output=out).explain(z["x"], targets=z[f"case_{case}_seed"])
    assert res.layer == LAYERS[stem][case], "default layer of a dense model: the head's input"
    assert rel_err(res.activations, z[f"case_{case}_activation"]) < 1e-4
    assert rel_err(res.gradients, z[f"case_{case}_gradient"]) < 1e-4


def _rows(seed: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in np.argwhere(s)[0]) for s in seed]


def test_target_objects_build_the_golden_seeds():
    """Each Target, chosen by index/class/region, gives exactly the seed the goldens were made with."""
    yolo = load("det_yolo")
    seed = yolo["case_score_seed"]
    rows = [int(np.argwhere(s[:, 4])[0][0]) for s in seed]
    classes = [int(np.argwhere(s[r, 5:])[0][0]) for s, r in zip(seed, rows)]
    ex = Explainer(TASKS / "det_yolo.onnx")
    res = ex.explain(yolo["x"], targets=[T.DetectionTarget(index=r, cls=c) for r, c in zip(rows, classes)])
    assert rel_err(res.gradients, yolo["case_score_gradient"]) < 1e-4
    assert list(res.targets) == classes
    box = ex.explain(yolo["x"], targets=[T.DetectionTarget(index=r, what="box") for r in rows])
    assert rel_err(box.gradients, yolo["case_box_gradient"]) < 1e-4

    ssd = load("det_ssd")
    row_cls = [tuple(int(v) for v in np.argwhere(s)[0]) for s in ssd["case_score_seed"]]
    res = Explainer(TASKS / "det_ssd.onnx", output="scores").explain(
        ssd["x"], targets=[T.DetectionTarget(index=r, cls=c, format="scores", output="scores") for r, c in row_cls])
    assert rel_err(res.gradients, ssd["case_score_gradient"]) < 1e-4

    seg = load("seg_fcn")
    boxes = []
    for s in seg["case_region_seed"]:
        c, ys, xs = np.nonzero(s)
        boxes.append((int(c[0]), [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]))
    ex = Explainer(TASKS / "seg_fcn.onnx")
    res = ex.explain(seg["x"], targets=[T.SegmentationTarget(c, box=b) for c, b in boxes])
    assert rel_err(res.gradients, seg["case_region_gradient"]) < 1e-4
    mask_classes = [int(np.argwhere(s.sum(axis=(1, 2)))[0][0]) for s in seg["case_argmax_mask_seed"]]
    res = ex.explain(seg["x"], targets=[T.SegmentationTarget(c) for c in mask_classes])  # argmax region
    assert rel_err(res.gradients, seg["case_argmax_mask_gradient"]) < 1e-4

    reg = load("reg_multi")
    ex = Explainer(TASKS / "reg_multi.onnx", output="age")
    assert rel_err(ex.explain(reg["x"], targets=T.OutputTarget((0,), output="age")).gradients, reg["case_age_gradient"]) < 1e-4
    g = Explainer(TASKS / "reg_multi.onnx", output="gender")
    assert rel_err(g.explain(reg["x"], targets=1).gradients, reg["case_gender1_gradient"]) < 1e-4
    cf = reg["case_gender_counterfactual_seed"]
    cls = [int(np.argwhere(s)[0][0]) for s in cf]
    res = g.explain(reg["x"], targets=[T.CounterfactualTarget(c) for c in cls])
    assert rel_err(res.gradients, reg["case_gender_counterfactual_gradient"]) < 1e-4


def test_fer_probability_target_nhwc_grayscale():
    """The real Keras FER model (NHWC, 1 channel, softmax output) against tf.GradientTape."""
    z = np.load(TASKS / "fer_cases.npz")
    g = np.load(GOLDENS / "tf2onnx_fer.npz")
    ex = Explainer(GOLDENS / "tf2onnx_fer.onnx")
    assert ex.info.layout == "NHWC" and ex.info.channels == 1
    res = ex.explain(g["x"], targets=3)
    assert rel_err(res.gradients, z["case_prob3_gradient"]) < 1e-4


def test_softmax_and_counterfactual_targets_on_the_classifier_head():
    """Below GAP → Gemm: ∂p_c/∂A = p_c (W_c − Σ_j p_j W_j)/hw and ∂(−y_c)/∂A = −W_c/hw (numpy)."""
    model = onnx.load(str(MOBILENET))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == gemm.input[1]).astype(np.float64)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ex = Explainer(MOBILENET)
    soft = ex.explain(x, targets=T.SoftmaxTarget(7))
    y = soft.outputs.astype(np.float64)
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = (p[:, 7:8] * (w[7][None] - p @ w)) / 49.0
    np.testing.assert_allclose(soft.gradients[:, :, 0, 0], want, rtol=1e-3, atol=1e-9)
    cf = ex.explain(x, targets=T.CounterfactualTarget(7))
    np.testing.assert_allclose(cf.gradients[:, :, 3, 3], -np.broadcast_to(w[7] / 49.0, (2, 1280)), rtol=1e-5, atol=1e-9)


def test_topk_gives_one_map_per_class():
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ex = Explainer(MOBILENET)
    res = ex.explain(x, targets=T.TopK(3))
    assert res.heatmaps.shape == (6, 224, 224)
    scores = ex.explain(x).outputs
    want = np.argsort(-scores, axis=1)[:, :3].reshape(-1)
    np.testing.assert_array_equal(res.targets, want)
    one = ex.explain(x[1:], targets=int(want[4]))
    np.testing.assert_allclose(res.heatmaps[4], one.heatmaps[0], atol=1e-5)


def test_target_errors_are_clear():
    seg = load("seg_fcn")
    ex = Explainer(TASKS / "seg_fcn.onnx")
    with pytest.raises(UsageError, match="segmentation class 9 is out of range"):
        ex.explain(seg["x"], targets=T.SegmentationTarget(9))
    with pytest.raises(UsageError, match=r"mask shape \[3, 3\] does not match the output map \[64, 64\]"):
        ex.explain(seg["x"], targets=T.SegmentationTarget(1, mask=np.ones((3, 3))))
    with pytest.raises(UsageError, match="give a target"):
        ex.explain(seg["x"])
    with pytest.raises(UsageError, match="output 'nope' is not one of the model's outputs"):
        Explainer(TASKS / "reg_multi.onnx").explain(load("reg_multi")["x"], targets=T.OutputTarget((0,), output="nope"))
    with pytest.raises(UsageError, match="does not match output"):
        Explainer(MOBILENET).explain(np.zeros((1, 3, 224, 224), np.float32), targets=np.zeros((5,), np.float32))


def test_cli_targets(tmp_path: Path):
    img = tmp_path / "c.png"
    img.write_bytes((EXAMPLES / "coffee.png").read_bytes())
    run = lambda *a: CliRunner().invoke(cli, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    r = run("explain", MOBILENET, img, "-o", tmp_path / "a", "--target", "coffee mug", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"][0]["target"] == 504
    r = run("explain", MOBILENET, img, "-o", tmp_path / "b", "--target", "top3", "--json")
    recs = json.loads(r.stdout)["images"]
    assert [Path(x["overlay"]).name for x in recs] == ["c.top1.overlay.png", "c.top2.overlay.png", "c.top3.overlay.png"]
    assert recs[0]["label"] == "espresso"
    r = run("explain", TASKS / "seg_fcn.onnx", img, "-o", tmp_path / "s", "--target", "seg:1:8,16,32,40", "--preset", "unit", "--json")
    assert r.exit_code == 0, r.output
    r = run("explain", TASKS / "det_yolo.onnx", img, "-o", tmp_path / "d", "--target", "det:class=2", "--letterbox",
            "--preset", "unit", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["images"][0]
    assert rec["target"] == 2 and np.load(rec["heatmap"]).shape == (400, 600)  # mapped back to the photo
    r = run("explain", TASKS / "reg_multi.onnx", img, "-o", tmp_path / "r", "--output", "age", "--target", "index:0",
            "--preset", "unit", "--json", "--method", "layercam")
    assert r.exit_code == 0, r.output
    # Grad-CAM of the same value is exactly zero on this photo (every channel weighs against it):
    # reported for the image, never written as a blank map (issue 16)
    r = run("explain", TASKS / "reg_multi.onnx", img, "-o", tmp_path / "r0", "--output", "age", "--target", "index:0",
            "--preset", "unit", "--json")
    assert r.exit_code == 1 and "the map is exactly zero" in r.stderr
    assert json.loads(r.stdout)["images"] == [] and not list((tmp_path / "r0").glob("*.npy"))
    r = run("explain", TASKS / "seg_fcn.onnx", img, "-o", tmp_path / "e", "--target", "seg:9", "--preset", "unit")
    assert r.exit_code == 2 and "segmentation class 9 is out of range" in r.stderr
    r = run("explain", MOBILENET, img, "-o", tmp_path / "f", "--output", "nope")
    assert r.exit_code == 2 and "output 'nope' is not one of the model's outputs" in r.stderr


def test_cli_on_the_nhwc_grayscale_fer_model(tmp_path: Path):
    """The real Keras FER model from the CLI: a colour photo is fed as one grayscale NHWC channel."""
    img = tmp_path / "a.png"
    img.write_bytes((EXAMPLES / "astronaut.png").read_bytes())
    r = CliRunner().invoke(cli, ["explain", str(GOLDENS / "tf2onnx_fer.onnx"), str(img), "-o", str(tmp_path / "o"),
                                 "--preset", "unit", "--target", "3", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["images"][0]
    assert rec["target"] == 3 and np.load(rec["heatmap"]).shape == (64, 64)
    assert abs(sum(t["probability"] for t in rec["top5"]) - 1) < 0.2  # a softmax output, read as is


# -- parse_target: every form of README's target table, and bad strings ---------------------------
LABELS = ["tench", "goldfish", "coffee mug", "espresso"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("top1", None),
        ("pred", None),
        ("281", 281),
        (" 7 ", 7),
        ("coffee mug", 2),  # a label of the model → its index
        ("top3", T.TopK(3)),
        ("softmax:281", T.SoftmaxTarget(281)),
        ("softmax:", T.SoftmaxTarget(None)),
        ("counterfactual:281", T.CounterfactualTarget(281)),
        ("index:0", T.OutputTarget((0,))),
        ("index:1,2", T.OutputTarget((1, 2))),
        ("seg:1", T.SegmentationTarget(1, box=None)),
        ("seg:1:8,16,32,40", T.SegmentationTarget(1, box=[8, 16, 32, 40])),
        ("det:best", T.DetectionTarget(format="auto")),
        ("det", T.DetectionTarget(format="auto")),
        ("softmax", T.SoftmaxTarget(None)),
        ("det:class=2", T.DetectionTarget(cls=2, format="auto")),
        ("det:row=17", T.DetectionTarget(index=17, format="auto")),
        ("det:box=10,20.5,30,40", T.DetectionTarget(box=[10.0, 20.5, 30.0, 40.0], format="auto")),
        ("det-scores:class=1", T.DetectionTarget(cls=1, format="scores")),
        ("DET-SCORES:best", T.DetectionTarget(format="scores")),
    ],
)
def test_parse_target_forms(text: str, expected):
    got = T.parse_target(text, LABELS)
    assert type(got) is type(expected) and got == expected


def test_parse_target_is_public_api():
    import onnxcam

    assert onnxcam.parse_target is T.parse_target
    assert onnxcam.parse_target("espresso", LABELS) == 3


@pytest.mark.parametrize(
    "text, labels, message",
    [
        ("cat", None, "target 'cat' is not a target"),
        ("cat", LABELS, "target 'cat' is neither a class index nor one of the model's labels"),
        ("coffee", LABELS, "did you mean coffee mug"),
        ("softmax:x", None, "target 'softmax:x' is malformed"),
        ("index:", None, "target 'index:' is malformed"),
        ("seg:a", None, "target 'seg:a' is malformed"),
        ("seg:1:1,2,x", None, "malformed"),
        ("det:class=", None, "malformed"),
        ("det:size=3", None, "target 'det:size=3' is malformed"),
        ("top0", None, "target 'top0' is malformed"),
        ("bogus:3", None, "target 'bogus:3' is not a target"),
    ],
)
def test_parse_target_bad_strings_are_usage_errors(text: str, labels, message: str):
    with pytest.raises(UsageError, match=message) as err:
        T.parse_target(text, labels)
    assert err.value.exit_code == 2
    assert "\n" not in str(err.value)
    if "malformed" in message or "is not a target" in message:
        assert "softmax:C" in str(err.value)  # names the accepted forms
