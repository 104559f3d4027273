"""The CLI: exit codes by contract, parsed JSON, files written only under OUT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.cli import cli
from onnxcam.image import load_image

from .helpers import EXAMPLES, GOLDENS, MOBILENET


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for n in ("chelsea.png", "coffee.png"):
        shutil.copy(EXAMPLES / n, d / n)
    return d


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_explain_writes_overlays_heatmaps_and_json(images: Path, tmp_path: Path):
    before = _snapshot(images)
    out = tmp_path / "out"
    r = run("explain", MOBILENET, images, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report == json.loads((out / "results.json").read_text())
    assert report["method"] == "gradcam" and report["provider"] == "CPUExecutionProvider"
    assert report["layer"] == "/features/features.18/features.18.2/Clip_output_0"
    assert report["preset"] == "imagenet"  # read from the model's metadata
    by_name = {Path(i["image"]).name: i for i in report["images"]}
    assert by_name["coffee.png"]["label"] == "espresso" and by_name["coffee.png"]["probability"] > 0.9
    assert 281 <= by_name["chelsea.png"]["target"] <= 285
    assert len(by_name["chelsea.png"]["top5"]) == 5
    ov = load_image(by_name["chelsea.png"]["overlay"])
    assert ov.shape == (300, 451, 3)  # the image's own size
    hm = np.load(by_name["chelsea.png"]["heatmap"])
    assert hm.shape == (224, 224) and 0 <= hm.min() and hm.max() <= 1
    assert _snapshot(images) == before  # inputs untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "chelsea.overlay.png", "chelsea.heatmap.npy", "coffee.overlay.png", "coffee.heatmap.npy"]
    )


def test_explain_target_and_method(images: Path, tmp_path: Path):
    r = run("explain", MOBILENET, images / "coffee.png", "-o", tmp_path / "o", "--json", "--target", "504", "--method", "cam")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["images"][0]
    assert rec["target"] == 504 and rec["label"] == "coffee mug"
    assert json.loads(r.stdout)["method"] == "cam"


def test_one_unreadable_image_is_reported_and_the_rest_processed(images: Path, tmp_path: Path):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    r = run("explain", MOBILENET, images, "-o", out, "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert [Path(e["image"]).name for e in report["errors"]] == ["broken.png"]
    assert len(report["images"]) == 2
    assert "cannot decode image" in r.stderr and r.stderr.count("\n") == 1


def test_existing_results_are_not_overwritten(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert run("explain", MOBILENET, images, "-o", out).exit_code == 0
    (out / "results.json").write_text("mine")
    r = run("explain", MOBILENET, images, "-o", out)
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr
    assert (out / "results.json").read_text() == "mine"
    assert run("explain", MOBILENET, images, "-o", out, "--overwrite").exit_code == 0
    assert json.loads((out / "results.json").read_text())["images"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--layer", "nope"], 2, "layer 'nope' is not a 4-D spatial activation"),
        (["--target", "5000"], 2, "out of range"),
        (["--target", "cat"], 2, "is neither a class index nor one of the model's labels"),
        (["--method", "nope"], 2, "Invalid value for '--method'"),
        (["--method", "cam", "--layer", "/features/features.17/conv/conv.2/Conv_output_0"], 1, "CAM needs layer"),
    ],
)
def test_errors_one_line_and_exit_code(images: Path, tmp_path: Path, args, code, message):
    r = run("explain", MOBILENET, images, "-o", tmp_path / "o", *args)
    assert r.exit_code == code, r.output
    assert message in r.stderr
    if code == 1 or "out of range" in message or "nope'" in message:
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_missing_model_and_not_onnx(tmp_path: Path, images: Path):
    r = run("explain", tmp_path / "none.onnx", images, "-o", tmp_path / "o")
    assert r.exit_code == 1 and "model file not found" in r.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = run("layers", bad)
    assert r.exit_code == 1 and "ONNX" in r.stderr
    assert not (tmp_path / "o").exists()


def test_layers_json_marks_the_default():
    r = run("layers", GOLDENS / "tf2onnx_smallresnet.onnx", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    defaults = [l for l in d["layers"] if l["default"]]
    assert len(defaults) == 1 and defaults[0]["name"] == d["default"]
    assert d["model"]["layout"] == "NHWC"  # tf2onnx keeps NHWC at the input, NCHW inside
    assert defaults[0]["name"] == "smallresnet_1/last_relu_1/Relu:0" and defaults[0]["shape"] == [32, 6, 6]
    text = run("layers", MOBILENET).output
    assert "* /features/features.18/features.18.2/Clip_output_0" in text


def test_info_reports_inputs_and_layout():
    d = json.loads(run("info", MOBILENET, "--json").stdout)
    assert d["opset"] == 17 and d["layout"] == "NCHW" and d["size"] == [224, 224]
    assert d["inputs"][0]["name"] == "input" and d["outputs"][0]["shape"][1] == 1000


def test_export_writes_a_model_that_runs_alone(tmp_path: Path):
    import onnxruntime as ort

    out = tmp_path / "rw.onnx"
    r = run("export", GOLDENS / "torchscript_tinyresnet.onnx", "-o", out)
    assert r.exit_code == 0, r.output
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert {"onnxcam_activation", "onnxcam_gradient", "onnxcam_targets"} <= set(names)
    from .helpers import load_golden

    g = load_golden("torchscript_tinyresnet")
    got = dict(zip(names, sess.run(None, {"input": g["x"]} if sess.get_inputs()[0].name == "input" else {sess.get_inputs()[0].name: g["x"]})))
    np.testing.assert_allclose(got["onnxcam_gradient"], g["gradient"], rtol=1e-4, atol=1e-6)
    assert run("export", GOLDENS / "torchscript_tinyresnet.onnx", "-o", out).exit_code == 1  # no overwrite


def test_methods_lists_the_registry():
    r = run("methods")
    assert r.exit_code == 0
    assert {l.split()[0] for l in r.output.splitlines()} >= {"cam", "gradcam", "hirescam"}


@pytest.mark.parametrize("stem", ["torchscript_tinyresnet", "tf2onnx_smallresnet", "paddle_resnet"])
def test_every_method_runs_from_the_cli_on_three_exporters(stem: str, tmp_path: Path):
    from onnxcam.methods import METHODS

    img = tmp_path / "img.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    for method in sorted(m for m, cls in METHODS.items() if not cls.needs_attention):  # CNNs: no attention
        out = tmp_path / method
        r = run("explain", GOLDENS / f"{stem}.onnx", img, "-o", out, "--method", method, "--json", "--preset", "unit")
        assert r.exit_code == 0, (method, r.output)
        rec = json.loads(r.stdout)["images"][0]
        hm = np.load(rec["heatmap"])
        assert hm.shape == ((48, 48) if "tf2onnx" in stem else (64, 64))
        assert np.isfinite(hm).all() and hm.max() <= 1 and hm.min() >= 0, method
        if method in ("guidedbackprop", "guidedgradcam"):
            assert load_image(rec["guided"]).shape == (300, 451, 3)


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam", "layercam", "eigencam", "ablationcam", "fullgrad", "fem"])
def test_methods_on_the_bundled_model_point_at_the_cat(method: str, boxes: dict):
    from onnxcam import Explainer, preprocess
    from onnxcam.image import resize_map

    img = load_image(EXAMPLES / "chelsea.png")
    res = Explainer(MOBILENET, method=method).explain(preprocess(img, (224, 224)))
    m = resize_map(res.heatmaps[0], (300, 451))
    y, x = np.unravel_index(int(m.argmax()), m.shape)
    x0, y0, x1, y1 = boxes["chelsea.png"]["box"]
    assert x0 <= x < x1 and y0 <= y < y1


def test_one_error_path_for_unexpected_failures(images: Path, tmp_path: Path, monkeypatch):
    from onnxcam.explainer import Explainer

    def boom(self, *a, **k):
        raise RuntimeError("runtime\n\x1b[31mfailure")

    monkeypatch.setattr(Explainer, "explain", boom)
    r = run("explain", MOBILENET, images, "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert r.stderr == "onnxcam: error: unexpected RuntimeError: runtime \\x1b[31mfailure (run with --debug for the traceback)\n"
    assert not (tmp_path / "o" / "results.json").exists()  # no summary: an incomplete run
    r = run("--debug", "explain", MOBILENET, images, "-o", tmp_path / "o2")
    assert r.exit_code == 1 and "Traceback" in r.stderr


@pytest.mark.parametrize("command", ["explain", "layers", "export", "check", "eval"])
def test_bad_size_is_a_one_line_usage_error(command: str, images: Path, tmp_path: Path):
    extra = {"explain": [images, "-o", tmp_path / "o"], "export": ["-o", tmp_path / "m.onnx"], "eval": [images]}
    r = run(command, GOLDENS / "paddle_resnet.onnx" if command != "eval" else MOBILENET, *extra.get(command, []),
            "--size", "12x")
    assert r.exit_code == 2 and "is not HxW" in r.stderr and r.stderr.count("\n") == 1


def test_an_image_opencv_chokes_on_is_one_error_and_the_rest_go_on(images: Path, tmp_path: Path, monkeypatch):
    import cv2

    import onnxcam.image as oi

    real = cv2.imdecode

    def imdecode(data, flags):
        if data.size == (images / "coffee.png").stat().st_size:
            raise cv2.error("OpenCV(4.x) error: (-4:Insufficient memory)\n multi-line")
        return real(data, flags)

    monkeypatch.setattr(oi.cv2, "imdecode", imdecode)
    r = run("explain", MOBILENET, images, "-o", tmp_path / "o", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert [Path(e["image"]).name for e in report["errors"]] == ["coffee.png"]
    assert [Path(i["image"]).name for i in report["images"]] == ["chelsea.png"]
    assert r.stderr.count("\n") == 1 and "cannot decode image" in r.stderr


def test_non_finite_maps_are_errors_not_results(images: Path, tmp_path: Path, monkeypatch):
    from onnxcam.explainer import Explainer

    real = Explainer.explain

    def nan_for_the_first(self, x, *a, **k):
        res = real(self, x, *a, **k)
        res.heatmaps[0] = np.nan
        return res

    monkeypatch.setattr(Explainer, "explain", nan_for_the_first)
    r = run("explain", MOBILENET, images, "-o", tmp_path / "o", "--json", "--batch-size", "1")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert len(report["errors"]) == 2 and report["images"] == []
    assert all("not finite" in e["error"] for e in report["errors"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["results.json"]
