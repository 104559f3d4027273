"""Exported --heatmap models on other runtimes: onnxruntime-node, and onnxruntime-web (WASM) in
headless Chromium through the demo page, against the Python `Explainer`.

Needs `web/node_modules` (`make web-deps`: npm ci with ONNXRUNTIME_NODE_INSTALL=skip) and, for the
page, Debian's chromium; each test skips with the reason where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnxcam import Explainer
from onnxcam.export import export_model
from onnxcam.image import load_image, preprocess

from .helpers import EXAMPLES, GOLDENS, MOBILENET, ROOT, load_golden

WEB = ROOT / "web"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
needs_node = pytest.mark.skipif(
    NODE is None or not (WEB / "node_modules" / "onnxruntime-node").is_dir(),
    reason="node or web/node_modules is missing: run `make web-deps` (npm ci in web/, ONNXRUNTIME_NODE_INSTALL=skip)",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or NODE is None or not (WEB / "node_modules" / "playwright-core").is_dir(),
    reason="chromium (apt-get install -y chromium) or web/node_modules (make web-deps) is missing",
)


def node_run(model: Path, out: Path, check: bool = True, **feeds: np.ndarray) -> dict[str, np.ndarray] | subprocess.CompletedProcess:
    """Run `model` in onnxruntime-node (web/run.mjs) on .npy feeds; its outputs, or the failed process."""
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for name, value in feeds.items():
        np.save(out / f"in_{name}.npy", value)
        args.append(f"{name}={out / f'in_{name}.npy'}")
    proc = subprocess.run([NODE, str(WEB / "run.mjs"), str(model), str(out / "outputs"), *args],
                          capture_output=True, text=True, timeout=300)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "outputs" / "run.json").read_text())
    return {name: np.load(out / "outputs" / o["file"]) for name, o in meta["outputs"].items()}


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return preprocess([load_image(EXAMPLES / "chelsea.png"), load_image(EXAMPLES / "coffee.png")], (224, 224))


@pytest.fixture(scope="module")
def mobilenet_export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("node") / "mobilenet_heatmap.onnx"
    export_model(MOBILENET, method="gradcam", heatmap=True, runtime="node").save(path)
    return path


@needs_node
@pytest.mark.parametrize("target", [[-1], [281, 504], [504]])
def test_node_matches_explain_and_honours_a_fed_target(mobilenet_export, photos, tmp_path, target):
    got = node_run(mobilenet_export, tmp_path, input=photos, onnxcam_target=np.array(target, np.int64))
    t = None if target == [-1] else np.broadcast_to(target, (2,)).copy()
    py = Explainer(MOBILENET, method="gradcam").explain(photos, targets=t)
    assert got["onnxcam_targets"].tolist() == py.targets.tolist()
    assert py.targets.tolist() == ([285, 967] if target == [-1] else list(np.broadcast_to(target, (2,))))
    np.testing.assert_allclose(got["logits"], py.outputs, atol=1e-4)
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


@needs_node
def test_node_refuses_a_missing_out_of_range_or_unknown_target(mobilenet_export, photos, tmp_path):
    proc = node_run(mobilenet_export, tmp_path / "a", check=False, input=photos)
    assert proc.returncode == 1 and "missing input(s) onnxcam_target" in proc.stderr
    proc = node_run(mobilenet_export, tmp_path / "c", check=False, input=photos, onnxcam_target=np.array([1000], np.int64))
    assert proc.returncode == 1 and "idx=1000 must be within the inclusive range" in proc.stderr
    top1 = tmp_path / "top1.onnx"
    export_model(MOBILENET, heatmap=True, target="predicted", runtime="node").save(top1)
    proc = node_run(top1, tmp_path / "b", check=False, input=photos, onnxcam_target=np.array([3], np.int64))
    assert proc.returncode == 1 and "has no input onnxcam_target" in proc.stderr


@needs_node
@pytest.mark.parametrize("stem, method", [("tf2onnx_smallresnet", "gradcam"), ("tf2onnx_fer", "layercam"),
                                          ("paddle_mbv2", "gradcam++"), ("torchscript_tinysqueeze", "xgradcam")])
def test_node_on_tf2onnx_paddle_and_conv_head_models(tmp_path, stem, method):
    g = load_golden(stem)
    path = tmp_path / "m.onnx"
    ex = export_model(GOLDENS / f"{stem}.onnx", method=method, heatmap=True, runtime="node")
    ex.save(path)
    got = node_run(path, tmp_path, **{ex.inputs[0]: g["x"], "onnxcam_target": np.array([-1], np.int64)})
    py = Explainer(GOLDENS / f"{stem}.onnx", method=method).explain(g["x"])
    assert got["onnxcam_targets"].tolist() == py.targets.tolist() == g["targets"].tolist()
    assert np.abs(got["onnxcam_heatmap"] - py.heatmaps).max() <= 1e-5


# -- the demo page in headless Chromium ----------------------------------------------------------
SITE_MODELS = {"mobilenet": MOBILENET, "tf2onnx": GOLDENS / "tf2onnx_smallresnet.onnx", "paddle": GOLDENS / "paddle_mbv2.onnx"}

@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """web/serve.mjs over a root holding web/, models/ and the exported demo model."""
    root = tmp_path_factory.mktemp("site")
    (root / "web").symlink_to(WEB)
    (root / "models").symlink_to(ROOT / "models")
    for name, path in SITE_MODELS.items():
        export_model(path, method="gradcam", heatmap=True, rgb_input=True, runtime="web").save(root / f"{name}.onnx")
    proc = subprocess.Popen([NODE, str(WEB / "serve.mjs"), "--root", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving"), line
        yield line.split(" at ")[1].strip() + "web/demo/?model=/{}.onnx"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def page_result(url: str, image: Path, out: Path, target: int = -1) -> dict:
    proc = subprocess.run([NODE, str(WEB / "page_check.mjs"), url, str(image), str(out), "--target", str(target)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr + (out.read_text() if out.exists() else "")
    return json.loads(out.read_text())


@needs_chromium
@pytest.mark.parametrize("model, photo, target", [
    ("mobilenet", "astronaut.png", -1), ("mobilenet", "coffee.png", 504),  # 504: coffee mug
    ("tf2onnx", "chelsea.png", -1), ("paddle", "coffee.png", 3),
])
def test_demo_page_matches_explain_on_a_photo_at_its_own_size(demo_server, tmp_path, model, photo, target):
    """The photo goes in at its own size (512×512, 451×300, 600×400): the graph resizes it as cv2."""
    ex = Explainer(SITE_MODELS[model], method="gradcam")
    size = ex.input_size
    res = page_result(demo_server.format(model), EXAMPLES / photo, tmp_path / "page.json", target)
    x = preprocess(load_image(EXAMPLES / photo), size, "imagenet", ex.info.layout, ex.info.channels)
    py = ex.explain(x, targets=None if target < 0 else target)
    assert res["consoleErrors"] == []
    origin = demo_server.split("/web/")[0]
    assert all(u.startswith(origin) for u in res["requests"]), res["requests"]  # offline: nothing else fetched
    assert any(u.endswith(".wasm") for u in res["requests"])
    assert res["predicted"] == int(np.argmax(py.outputs[0]))
    assert res["explained"] == int(py.targets[0]) == (res["predicted"] if target < 0 else target)
    assert res["dims"] == list(size)
    heat = np.asarray(res["heatmap"], np.float32).reshape(size)
    assert np.abs(heat - py.heatmaps[0]).max() <= 1e-4
    assert f"({res['explained']})" in res["text"]


@needs_node
def test_node_rgb_model_equals_the_explain_command_on_a_photo(tmp_path):
    """`onnxcam explain`'s saved heatmap (preset from the model's metadata) against the exported
    --rgb-input file run by onnxruntime-node on the photo's own pixels (512×512)."""
    from click.testing import CliRunner

    from onnxcam.cli import cli

    r = CliRunner().invoke(cli, ["export", str(MOBILENET), "-o", str(tmp_path / "m.onnx"), "--heatmap", "--rgb-input",
                                 "--target-runtime", "node"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["explain", str(MOBILENET), str(EXAMPLES / "astronaut.png"), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    want = np.load(tmp_path / "out" / "astronaut.heatmap.npy")
    photo = load_image(EXAMPLES / "astronaut.png")
    got = node_run(tmp_path / "m.onnx", tmp_path / "node", onnxcam_rgb=photo[None], onnxcam_target=np.array([-1], np.int64))
    assert got["onnxcam_targets"].tolist() == [json.loads(r.stdout)["images"][0]["target"]]
    assert np.abs(got["onnxcam_heatmap"][0] - want).max() <= 1e-4
