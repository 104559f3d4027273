"""Gates through the commands (CliRunner): exit codes 0 / 2 / 3, one stderr line per failed
condition, --json keeping the numbers, the CI files inside OUT, and the new per-image numbers
(energy in forbidden regions, accuracy) checked against numpy on explain's own maps."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli import cli

from .helpers import EXAMPLES, ROOT

SPURIOUS = ROOT / "models" / "spurious"
IMAGES = EXAMPLES / "spurious"
MARKS = IMAGES / "marks.json"
TRUTH = IMAGES / "boxes.json"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def eval_(model: str, *args):
    return run("eval", SPURIOUS / f"{model}.onnx", IMAGES, "--steps", "2", "--device", "cpu", *args)


def gate_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("onnxcam: gate failed:")]


def test_exit_codes_pass_fail_and_usage():
    ok = eval_("unbiased", "--require", "images>=12", "--json")
    assert ok.exit_code == 0, ok.output
    gates = json.loads(ok.stdout)["gates"]
    assert gates["passed"] and gates["conditions"][0]["value"] == 12.0
    bad = eval_("unbiased", "--require", "images>=13", "--require", "images>=12", "--require", "images>20", "--json")
    assert bad.exit_code == 3
    lines = gate_lines(bad.stderr)
    assert lines == ["onnxcam: gate failed: images>=13: unbiased images = 12, required >= 13",
                     "onnxcam: gate failed: images>20: unbiased images = 12, required > 20"]
    rep = json.loads(bad.stdout)  # --json keeps every number
    assert [(c["gate"], c["passed"], c["value"]) for c in rep["gates"]["conditions"]] == [
        ("images>=13", False, 12.0), ("images>=12", True, 12.0), ("images>20", False, 12.0)]
    assert rep["gates"]["exit_code"] == 3 and rep["metrics"]["images"] == 12


@pytest.mark.parametrize("args, message", [
    (["--require", "pointing_game>=0.5"], "pointing_game needs --boxes"),
    (["--require", "model[other].images>=1"], "no model named 'other'"),
    (["--require", "spearman>=0.5"], "compares two models"),
    (["--require", "images=>1"], "is not a condition"),
    (["--require", "f1>=0.5"], "the report has no f1 for unbiased"),
    (["--junit", "j.xml"], "give -o OUT"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str):
    r = eval_("unbiased", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not r.stdout


def test_forbidden_energy_and_accuracy_match_numpy_on_explains_maps(tmp_path: Path):
    """energy_in_forbidden = Σ map inside the mark box / Σ map, on the heatmaps `explain` saves;
    accuracy = the share of images whose explain label is the file's true label."""
    ex = run("explain", SPURIOUS / "biased.onnx", IMAGES, "-o", tmp_path / "ex", "--json")
    assert ex.exit_code == 0, ex.output
    recs = {Path(r["image"]).name: r for r in json.loads(ex.stdout)["images"]}
    marks, truth = json.loads(MARKS.read_text()), json.loads(TRUTH.read_text())
    expected = {}
    for name, (x0, y0, x1, y1) in marks.items():
        heat = np.load(recs[name]["heatmap"]).astype(np.float64)  # 64×64: the photos' own size
        expected[name] = heat[y0:y1, x0:x1].sum() / heat.sum()
    accuracy = np.mean([recs[n]["label"] == truth[n]["label"] for n in truth])
    r = eval_("biased", "--forbidden", MARKS, "--truth", TRUTH, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    got = {i["image"]: i["energy_in_forbidden"] for i in rep["images"] if "energy_in_forbidden" in i}
    assert got.keys() == expected.keys()
    for name in got:
        assert got[name] == pytest.approx(expected[name], abs=1e-5), name
    assert rep["metrics"]["energy_in_forbidden"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    assert rep["metrics"]["images_with_forbidden"] == 6 and rep["metrics"]["images_with_truth"] == 12
    assert rep["metrics"]["accuracy"] == pytest.approx(100 * accuracy)


def test_review_writes_junit_and_markdown_inside_out(tmp_path: Path):
    out = tmp_path / "out"
    r = run("review", SPURIOUS / "unbiased.onnx", SPURIOUS / "biased.onnx", "--images", IMAGES, "-o", out,
            "--forbidden", MARKS, "--steps", "2", "--device", "cpu",
            "--require", "energy_in_forbidden<=0.02", "--require", "agreement(unbiased,biased).top_iou>=0.01",
            "--junit", "reports/junit.xml", "--markdown", "reports/summary.md", "--json")
    assert r.exit_code == 3, r.output
    assert len(gate_lines(r.stderr)) == 1 and "biased energy_in_forbidden" in gate_lines(r.stderr)[0]
    rep = json.loads(r.stdout)
    saved = json.loads((out / "review.json").read_text())
    assert saved["gates"] == rep["gates"] and not rep["gates"]["passed"]
    failed = next(c for c in rep["gates"]["conditions"] if not c["passed"])
    assert failed["subject"] == "biased" and failed["failing_images"]

    root = ET.parse(out / "reports" / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 3 + len(failed["failing_images"])
    assert int(suite.get("failures")) == 1 + len(failed["failing_images"])

    md = (out / "reports" / "summary.md").read_text()
    links = [line.split("](")[1].split(")")[0] for line in md.splitlines() if "](thumbs/" in line]
    assert len(links) == len(failed["failing_images"])
    for link in links:  # small overlays of the failing images, next to the summary
        thumb = cv2.imread(str(out / "reports" / link))
        assert thumb is not None and thumb.shape == (64, 64, 3)
    assert "| ❌ | `energy_in_forbidden<=0.02` | biased |" in md
    # the drift of the second model from the first, with the energy moved onto the marks
    (drift,) = rep["drift"]
    assert (drift["old"], drift["new"]) == ("unbiased", "biased")
    assert drift["summary"]["energy_moved_to_forbidden"] > 0
    rhos = [i["spearman"] for i in drift["images"]]
    assert rhos == sorted(rhos)  # most changed first
    page = (out / "index.html").read_text()
    assert "Gates: failed (exit code 3)" in page and "Drift: unbiased → biased" in page


def test_ci_files_never_leave_out_nor_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    r = eval_("unbiased", "-o", out, "--junit", "../escape.xml", "--require", "images>=1")
    assert r.exit_code == 1 and "not a plain relative name" in r.stderr
    assert not (tmp_path / "escape.xml").exists()
    r = eval_("unbiased", "-o", out, "--junit", "j.xml", "--require", "images>=1")
    assert r.exit_code == 0 and (out / "j.xml").is_file()
    r = eval_("unbiased", "-o", out, "--junit", "j.xml", "--require", "images>=1")
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr


def test_review_layer_and_target_per_model(tmp_path: Path):
    """review --layer/--target once per model: each model explained as explain would (same map,
    same target), read back from review.json and explain's results."""
    layer = "/features/features.4/features.4.2/Relu_output_0"
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(IMAGES / "cat_mark_0.png", images / "cat_mark_0.png")
    r = run("review", SPURIOUS / "biased.onnx", SPURIOUS / "unbiased.onnx", "--images", images, "-o", tmp_path / "r",
            "--layer", layer, "--layer", "-", "--target", "cup", "--target", "-", "--steps", "2")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r" / "review.json").read_text())
    assert [m["layer"] for m in rep["models"]] == [layer, "/features/features.5/features.5.2/Relu_output_0"]
    rec = rep["images"][0]["models"]
    assert rec["biased"]["target"] == 1 and rec["biased"]["label"] == "cup"
    ex = run("explain", SPURIOUS / "biased.onnx", images, "-o", tmp_path / "ex", "--layer", layer, "--target", "cup",
             "--json")
    assert ex.exit_code == 0, ex.output
    e = json.loads(ex.stdout)["images"][0]
    assert e["target"] == 1 and rec["biased"]["probability"] == pytest.approx(e["probability"], abs=1e-6)
    names = tmp_path / "names.txt"
    names.write_text("kitten\nmug\n")
    r = run("review", SPURIOUS / "biased.onnx", SPURIOUS / "unbiased.onnx", "--images", images, "-o", tmp_path / "r3",
            "--labels", "-", "--labels", names, "--target", "cup", "--target", "mug", "--steps", "2")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r3" / "review.json").read_text())["images"][0]["models"]
    assert (rec["biased"]["label"], rec["unbiased"]["label"]) == ("cup", "mug")  # each read with its own labels
    assert rec["biased"]["target"] == rec["unbiased"]["target"] == 1
    r = run("review", SPURIOUS / "biased.onnx", SPURIOUS / "unbiased.onnx", "--images", images, "-o", tmp_path / "r2",
            "--target", "top2")
    assert r.exit_code == 2 and "one map per image" in r.stderr
    for target in ("seg:1", "index:0", "det:best", "counterfactual:1"):  # no class probability to measure
        r = run("eval", SPURIOUS / "biased.onnx", images, "--target", target)
        assert r.exit_code == 2 and "measure a class's probability" in r.stderr, (target, r.output)
    r = run("eval", SPURIOUS / "biased.onnx", images, "--target", "softmax:cup", "--steps", "2", "--json")
    assert r.exit_code == 2 and "is malformed" in r.stderr  # softmax:C takes an index
    r = run("eval", SPURIOUS / "biased.onnx", images, "--target", "softmax:1", "--steps", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["images"][0]["target"] == 1


def test_an_unreadable_image_exits_1_after_the_gate_lines(tmp_path: Path):
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(IMAGES / "cat_mark_0.png", images / "good.png")
    (images / "broken.png").write_bytes(b"not a png")
    r = run("eval", SPURIOUS / "biased.onnx", images, "--require", "images>=2", "--steps", "2", "--json")
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("onnxcam: error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert gate_lines(r.stderr) == ["onnxcam: gate failed: images>=2: biased images = 1, required >= 2"]
    rep = json.loads(r.stdout)
    assert rep["errors"][0]["image"].endswith("broken.png") and not rep["gates"]["passed"]
