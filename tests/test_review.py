"""`review` and `eval` through click's CliRunner, and the review page in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli.evaluate import eval_, review

from .helpers import EXAMPLES, GOLDENS, MOBILENET, ROOT

TINY = GOLDENS / "torchscript_tinyresnet.onnx"
BOXES = ROOT / "tests" / "data" / "boxes.json"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("review")
    images = base / "images"
    images.mkdir()
    for n in PHOTOS:  # a fixed set, whatever else examples/ holds
        shutil.copy(EXAMPLES / n, images / n)
    out = base / "report"
    args = [str(MOBILENET), str(TINY), "--images", str(images), "-o", str(out), "--boxes", str(BOXES),
            "--preset", "imagenet", "--preset", "unit", "--steps", "4", "--device", "cpu"]
    res = CliRunner().invoke(review, args)
    return {"res": res, "out": out, "args": args, "base": base}


def test_review_writes_a_self_contained_page(reviewed):
    res, out = reviewed["res"], reviewed["out"]
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "review.json"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # every src is a data URI
    assert "<script" not in page


def test_review_json_is_consistent(reviewed):
    rep = json.loads((reviewed["out"] / "review.json").read_text())
    names = [m["name"] for m in rep["models"]]
    assert names == ["mobilenet_v2", "torchscript_tinyresnet"]
    assert [m["preset"] for m in rep["models"]] == ["imagenet", "unit"]
    assert [m["input_size"] for m in rep["models"]] == [[224, 224], [64, 64]]
    sp, iou = np.array(rep["agreement"]["spearman"], float), np.array(rep["agreement"]["top_iou"], float)
    np.testing.assert_allclose(sp, sp.T)
    np.testing.assert_allclose(iou, iou.T)
    np.testing.assert_allclose(np.diag(sp), 1.0)
    assert len(rep["images"]) == len(PHOTOS) and sorted(rep["order"]) == sorted(PHOTOS)
    # sorted by agreement, lowest first; the pair mean is the mean over images
    per_image = [im["agreement"]["spearman"] for im in rep["images"]]
    assert per_image == sorted(per_image)
    assert rep["agreement"]["pairs"][0]["spearman"] == pytest.approx(np.mean(per_image))
    assert sp[0, 1] == pytest.approx(np.mean(per_image))
    for m in rep["models"]:
        met = m["metrics"]
        assert met["images"] == len(PHOTOS) and met["images_with_boxes"] == 2
        assert 0 <= met["average_drop"] <= 100 and 0 <= met["increase_in_confidence"] <= 100
        assert 0 <= met["deletion_auc"] <= 1 and 0 <= met["insertion_auc"] <= 1
        assert met["pointing_game"] in (0.0, 50.0, 100.0)
    for im in rep["images"]:
        assert set(im["models"]) == set(names)
        for r in im["models"].values():
            assert 0 <= r["probability"] <= 1
            assert ("pointing_hit" in r) == (im["image"] != "astronaut.png")
    assert rep["images"][0]["models"]["mobilenet_v2"]["label"]  # ImageNet names from the metadata


def test_review_refuses_to_overwrite_and_checks_presets(reviewed):
    res = CliRunner().invoke(review, reviewed["args"])
    assert res.exit_code == 1
    assert "exists; pass --overwrite" in res.output
    bad = reviewed["args"] + ["--preset", "raw", "--overwrite"]  # 3 presets for 2 models
    res = CliRunner().invoke(review, bad)
    assert res.exit_code == 2
    assert "once per model" in res.output


def test_eval_json_on_the_tiny_model():
    res = CliRunner().invoke(eval_, [str(TINY), str(EXAMPLES / "coffee.png"), "--preset", "unit", "--steps", "4",
                                     "--boxes", str(BOXES), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["metrics"]["images"] == 1 and rep["metrics"]["images_with_boxes"] == 1
    assert rep["images"][0]["image"] == "coffee.png"
    assert set(rep["images"][0]) >= {"drop", "deletion_auc", "insertion_auc", "pointing_hit", "energy", "cam_box"}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
                                              "the page is not rendered in a real browser")
def test_review_page_in_headless_chromium(reviewed):
    page = reviewed["out"] / "index.html"
    shot = reviewed["base"] / "screenshot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(flags + [f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,2000",
                                page.as_uri()], check=True, capture_output=True, timeout=60)
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(flags + [f"--user-data-dir={profile}", "--dump-dom", page.as_uri()], check=True,
                             capture_output=True, timeout=60, text=True).stdout
    # what a person sees: the model names, a metrics table, every image rendered
    assert "mobilenet_v2" in dom and "torchscript_tinyresnet" in dom
    assert re.search(r'<table class="metrics">.*average drop.*deletion AUC.*</table>', dom, re.S)
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', dom)
    assert len(srcs) == len(PHOTOS) * (1 + 2)  # photo + one overlay per model
    assert all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in srcs)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1400)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 5000  # photos and heatmaps, not a blank or text-only page


def test_review_collector_gives_the_same_report_whatever_order_the_images_come_in() -> None:
    """What `review --ray` relies on: images reviewed in separate batches and handed to the
    collector out of order (with their listing position, and named by path) give the report the
    one-process review gives."""
    from onnxcam.annotations import Annotations
    from onnxcam.image import load_image
    from onnxcam.review import ModelRun, ReviewCollector, review as review_images, review_chunk

    spurious = ROOT / "models" / "spurious"
    runs = [ModelRun.load(str(spurious / f"{m}.onnx"), providers=["CPUExecutionProvider"]) for m in ("biased", "unbiased")]
    paths = sorted((EXAMPLES / "spurious_heldout").glob("*.png"))[:5]
    images = [(p.name, load_image(p)) for p in paths]
    notes = Annotations()
    want = review_images(runs, images, steps=2, batch_size=1).report
    collector = ReviewCollector([r.name for r in runs])
    for key in (4, 1, 3, 0, 2):  # one image per batch, out of order, named by its full path
        [got] = review_chunk(runs, [(str(paths[key]), images[key][1])], None, 2, False, 15.0, 20.0, notes)
        collector.add(got, key)
    got = collector.finish([r.describe() for r in runs], "gradcam", 2, 15.0, names=[n for n, _ in images])
    assert got.report == want
    assert [rec["image"] for rec in want["images"]] != [n for n, _ in images]  # ranked by disagreement
