"""The one input policy (onnxcam.preprocessing): metadata, --config, --preset, --size, letterbox and
labels resolved once, and eval/review seeing a model exactly as explain does (same maps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcam import UsageError
from onnxcam.errors import ModelLoadError
from onnxcam.cli import cli
from onnxcam.explainer import Explainer
from onnxcam.image import letterbox, load_image, resize_map
from onnxcam.preprocessing import DEFAULT_SIZE, load_config, parse_size, policy_for, resolve_policy
from onnxcam.review import ModelRun, evaluate

from .helpers import EXAMPLES, GOLDENS, MOBILENET, ROOT, golden_stems

OCR = ROOT / "models" / "ocr"
CLS = OCR / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_CONFIG = OCR / "cls.json"
TEXT = EXAMPLES / "ocr" / "text.png"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cls_with_metadata(tmp_path_factory) -> Path:
    """The OCR direction classifier with its preprocessing in metadata instead of a --config file."""
    m = onnx.load(str(CLS))
    onnx.helper.set_model_props(m, {"onnxcam.preprocess": CLS_CONFIG.read_text()})
    path = tmp_path_factory.mktemp("meta") / "cls_meta.onnx"
    onnx.save(m, str(path))
    return path


def _by_hand(img: np.ndarray) -> np.ndarray:
    """cls.json written out: resize to 48×192, BGR, x/255, (x − 0.5)/0.5, NCHW."""
    x = cv2.resize(img, (192, 48), interpolation=cv2.INTER_LINEAR).astype(np.float32)[..., ::-1]
    x = (x / 255 - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None]


def test_config_and_metadata_give_the_same_policy_and_batch(cls_with_metadata: Path):
    img = load_image(TEXT)
    by_config = policy_for(Explainer(CLS), config_file=CLS_CONFIG)
    by_meta = policy_for(Explainer(cls_with_metadata))
    for pol in (by_config, by_meta):
        assert pol.size == (48, 192) and pol.labels == ["0", "180"] and pol.preset.bgr
        assert pol.preset.mean == (0.5, 0.5, 0.5) and pol.preset.std == (0.5, 0.5, 0.5)
        np.testing.assert_allclose(pol.batch([img]).x, _by_hand(img), atol=1e-5)


def test_precedence_size_preset_labels(tmp_path: Path):
    info = Explainer(GOLDENS / "torchscript_tinyresnet.onnx").info  # fixed 64×64, no metadata
    assert resolve_policy(info, size="300x300").size == (64, 64)  # a fixed size always wins
    dyn = Explainer(CLS).info
    assert resolve_policy(dyn).size == DEFAULT_SIZE and resolve_policy(dyn).preset.name == "imagenet"
    assert resolve_policy(dyn, size="native").native
    assert resolve_policy(dyn, config_file=CLS_CONFIG, size="32x96").size == (32, 96)  # --size over config
    pol = resolve_policy(dyn, config_file=CLS_CONFIG, preset="tf")  # --preset replaces mean/std/bgr
    assert pol.preset.name == "tf" and not pol.preset.bgr and pol.size == (48, 192)
    labels = tmp_path / "l.txt"
    labels.write_text("up\ndown\n")
    assert resolve_policy(dyn, config_file=CLS_CONFIG, labels_file=labels).labels == ["up", "down"]
    native = resolve_policy(dyn, config_file=OCR / "det.json")
    assert native.native and native.size_for(np.zeros((300, 451, 3), np.uint8)) == (288, 448)


@pytest.mark.parametrize("bad, message", [("224", "is not HxW"), ("0x5", "is not HxW"), ("axb", "is not HxW")])
def test_bad_sizes_are_usage_errors(bad: str, message: str):
    with pytest.raises(UsageError, match=message):
        parse_size(bad)


def test_bad_configs_are_usage_errors(tmp_path: Path):
    with pytest.raises(UsageError, match="unknown config key"):
        load_config(text='{"mean": [0.5], "colour": 1}')
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(tmp_path / "none.json")
    with pytest.raises(UsageError, match="config mean must be 1 or 3 finite number"):
        load_config(text='{"mean": [1, 2]}')
    with pytest.raises(UsageError, match="config std must not be 0"):
        load_config(text='{"std": [0.2, 0, 0.2]}')
    with pytest.raises(UsageError, match=r"config size must be \[height, width\]"):
        load_config(text="size: [48]")
    with pytest.raises(UsageError, match="config letterbox must be true or false"):
        load_config(text='{"letterbox": "yes"}')
    with pytest.raises(UsageError, match="40000x40000 is over the limit"):
        load_config(text='{"size": [40000, 40000]}')


def test_bad_metadata_configs_are_model_errors():
    """The model's own metadata is the model's fault: exit code 1, the key named (not a usage error)."""
    info = SimpleNamespace(metadata={"onnxcam.preprocess": '{"mean": [1, 2]}'}, fixed_size=None, layout="NCHW",
                           channels=3)
    with pytest.raises(ModelLoadError, match="metadata onnxcam.preprocess: config mean must be 1 or 3"):
        resolve_policy(info)
    info.metadata = {"onnxcam.preprocess": 'size: [48]'}
    with pytest.raises(ModelLoadError, match=r"metadata onnxcam.preprocess: config size must be \[height, width\]"):
        resolve_policy(info)
    info.metadata = {"onnxcam.preset": "sepia"}
    with pytest.raises(ModelLoadError, match="metadata onnxcam.preset 'sepia' is not one of"):
        resolve_policy(info)
    assert ModelLoadError.exit_code == 1


@pytest.mark.parametrize("use_letterbox, layer, target", [
    (False, None, None), (True, None, None),
    (False, "hardswish_17.tmp_0", "1"),  # a layer and a target of its own (class 1, labelled "180")
])
def test_review_maps_equal_explain_maps(tmp_path: Path, cls_with_metadata: Path, use_letterbox: bool,
                                        layer: str | None, target: str | None):
    """The OCR classifier (preprocessing in cls.json, or in the model's metadata): eval/review's maps
    at the photo's size equal explain's saved heatmaps put onto the photo, also for a chosen layer
    and target."""
    img = load_image(TEXT)
    extra = (["--letterbox"] if use_letterbox else []) + (["--layer", layer, "--target", target] if layer else [])
    r = run("explain", CLS, TEXT, "-o", tmp_path / "ex", "--config", CLS_CONFIG, "--json", *extra)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["images"][0]
    saved = np.load(rec["heatmap"])
    expected = saved if use_letterbox else np.clip(resize_map(saved, img.shape[:2]), 0, 1)
    assert saved.shape == (img.shape[:2] if use_letterbox else (48, 192))
    for model, config in ((CLS, CLS_CONFIG), (cls_with_metadata, None)):
        ev = evaluate(ModelRun.load(str(model), config=config, letterbox=use_letterbox or None, layer=layer,
                                    target=target), [("text.png", img)], steps=2)
        np.testing.assert_allclose(ev.maps[0], np.clip(expected, 0, 1), atol=1e-5)
        assert ev.images[0]["label"] == rec["label"] and ev.images[0]["target"] == rec["target"]
        assert ev.layer == json.loads(r.stdout)["layer"]
    if target:
        assert rec["target"] == 1 and rec["label"] == "180"


def test_review_and_eval_read_config_and_metadata(tmp_path: Path, cls_with_metadata: Path):
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(TEXT, images / "text.png")
    r = run("review", CLS, cls_with_metadata, "--images", images, "-o", tmp_path / "rev", "--config", CLS_CONFIG,
            "--config", "-", "--steps", "2")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rev" / "review.json").read_text())
    assert [m["input_size"] for m in rep["models"]] == [[48, 192], [48, 192]]
    assert [m["preset"] for m in rep["models"]] == ["custom", "custom"]
    assert rep["agreement"]["spearman"][0][1] == pytest.approx(1.0)  # the same model, seen the same way
    r = run("eval", CLS, TEXT, "--config", CLS_CONFIG, "--steps", "2", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["model"]["input_size"] == [48, 192] and ev["images"][0]["label"] in ("0", "180")
    r = run("review", CLS, MOBILENET, "--images", images, "-o", tmp_path / "r2", "--config", CLS_CONFIG,
            "--config", "-", "--config", "-")
    assert r.exit_code == 2 and "once per model" in r.stderr


def test_letterbox_batch_matches_the_letterboxed_canvas():
    img = load_image(TEXT)
    pol = resolve_policy(Explainer(CLS).info, config_file=CLS_CONFIG, letterbox=True)
    canvas, box = letterbox(img, (48, 192))
    np.testing.assert_allclose(pol.batch([img]).x, _by_hand(canvas), atol=1e-5)
    b = pol.batch([img])
    assert b.fits[0] == box and b.image_map(0, np.ones((48, 192), np.float32)).shape == img.shape[:2]


@pytest.mark.parametrize("model", [
    MOBILENET,  # bundled, ImageNet labels in its metadata
    ROOT / "models" / "spurious" / "biased.onnx",  # bundled, preset and labels in its metadata, fixed 64×64
    ROOT / "models" / "spurious" / "unbiased.onnx",
    # every test model: TorchScript/dynamo/tf2onnx (NHWC, one channel, dynamic size)/Paddle exports
    *(GOLDENS / f"{stem}.onnx" for stem in golden_stems()),
], ids=lambda p: p.stem)
def test_review_maps_equal_explain_maps_for_bundled_and_test_models(tmp_path: Path, model: Path):
    """Every kind of model with its defaults: eval/review's map of a non-square photo equals
    explain's saved heatmap put onto the photo, for the same target and label."""
    photo = EXAMPLES / "chelsea.png"
    img = load_image(photo)
    r = run("explain", model, photo, "-o", tmp_path / "ex", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["images"][0]
    expected = np.clip(resize_map(np.load(rec["heatmap"]), img.shape[:2]), 0, 1)
    ev = evaluate(ModelRun.load(str(model)), [("chelsea.png", img)], steps=2)
    np.testing.assert_allclose(ev.maps[0], expected, atol=1e-5)
    assert ev.images[0]["target"] == rec["target"] and ev.images[0]["label"] == (rec["label"] or f"class {rec['target']}")
