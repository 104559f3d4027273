"""Model storage: float16 models, and models stored with external data (the > 2 GB path).

float16: tests/data/fp16 holds float16 conversions of three golden models (made by
tools/fp16/make_fp16.py with onnxconverter-common, which the suite does not need). Their gradients
are emitted in float16 and compared with the float32 autograd goldens at a float16 tolerance.

External data: protobuf cannot serialise 2 GB, so `runtime.session_for` hands models at least
`runtime.INLINE_LIMIT` bytes to onnxruntime through a temporary directory (model + weights file).
The tests lower that limit instead of writing 2 GB.
"""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam.explainer
from onnxcam import Explainer, runtime
from onnxcam.grad.engine import append_gradient, required_opset
from onnxcam.graph.passes import upgrade_opset
from onnxcam.model import load_model
from onnxcam.shapes import infer_shapes
from onnxcam.storage import without_big_data
from onnxcam.types import TensorInfo

from .helpers import GOLDENS, ROOT, load_golden, rel_err, tiny_model

FP16 = ROOT / "tests" / "data" / "fp16"
FP16_MODELS = sorted(p.name for p in FP16.glob("*.onnx"))


def source_stem(name: str) -> str:
    return name.rsplit("_", 1)[0]  # torchscript_tinyresnet_fp16.onnx -> torchscript_tinyresnet


# -- float16 -------------------------------------------------------------------------------------


def test_fp16_corpus_is_there_and_small():
    assert {"torchscript_tinyresnet_fp16.onnx", "torchscript_tinyresnet_fp16io32.onnx",
            "torchscript_tinymbv3_fp16.onnx", "tf2onnx_smallresnet_fp16.onnx"} <= set(FP16_MODELS)
    assert all((FP16 / n).stat().st_size < 1 << 20 for n in FP16_MODELS)


@pytest.mark.parametrize("name", FP16_MODELS)
def test_fp16_gradient_matches_the_float32_golden(name: str):
    g = load_golden(source_stem(name))
    ex = Explainer(FP16 / name, method="gradcam")
    io_type = TensorProto.FLOAT if name.endswith("io32.onnx") else TensorProto.FLOAT16
    assert ex.info.image_input.elem_type == io_type
    res = ex.explain(g["x"])  # float32 images, cast to the model's input type by the Explainer
    np.testing.assert_array_equal(res.targets, g["targets"])
    for a in (res.gradients, res.activations, res.outputs, res.cams, res.heatmaps):
        assert a.dtype == np.float32
    assert res.gradients.shape == g["gradient"].shape
    assert rel_err(res.gradients, g["gradient"]) < 2e-2
    assert rel_err(res.activations, g["activation"]) < 2e-2
    assert rel_err(res.outputs, g["outputs"]) < 5e-2
    # the gradient is emitted in float16, next to the float16 activation
    outs = {o.name: o.type.tensor_type.elem_type for o in ex.explain_model().graph.output}
    assert outs["onnxcam_gradient"] == outs["onnxcam_activation"] == TensorProto.FLOAT16


def test_fp16_input_gradient_through_maxpool():
    """The image gradient of the float16 ResNet crosses MaxPool, whose gradient scatters with
    ScatterElements(reduction="add"): onnxruntime's CPU provider has no float16 kernel for it,
    so the emitter scatters in float32. Compared with the float32 model's image gradient (the
    float16 forward pass flips a few ReLU/MaxPool decisions, hence the L2 tolerance)."""
    stem = "torchscript_tinyresnet"
    g = load_golden(stem)
    ex16 = Explainer(FP16 / f"{stem}_fp16.onnx", layer="input")
    ex32 = Explainer(GOLDENS / f"{stem}.onnx", layer="input")
    ops = [n.op_type for n in ex16.explain_model().graph.node if n.name.startswith("onnxcam_grad/")]
    assert "ScatterElements" in ops and "ConvTranspose" in ops
    r16, r32 = ex16.explain(g["x"], targets=g["targets"]), ex32.explain(g["x"], targets=g["targets"])
    assert r16.gradients.dtype == np.float32 and r16.gradients.shape == r32.gradients.shape
    assert np.linalg.norm(r16.gradients - r32.gradients) / np.linalg.norm(r32.gradients) < 5e-2


def _gradient_session(path: Path, wrt: str | None, compute_type: int | None):
    """A session returning ∂⟨seed, y⟩/∂wrt for the Explainer's prepared model."""
    prep = Explainer(path).prepared()
    wrt = wrt or prep.layer(None).name
    m = upgrade_opset(prep.model, required_opset(prep.model.graph, wrt, prep.output)).model
    shapes = infer_shapes(m)
    y = prep.output
    m.graph.input.append(helper.make_tensor_value_info("seed", shapes[y].elem_type, list(shapes[y].shape)))
    shapes["seed"] = TensorInfo("seed", shapes[y].shape, shapes[y].elem_type)
    opset = next(i.version for i in m.opset_import if i.domain in ("", "ai.onnx"))
    gr = append_gradient(m.graph, shapes, dict(prep.constants), opset, wrt, y, "seed", compute_type=compute_type)
    m.graph.node.extend(gr.nodes)
    m.graph.initializer.extend(gr.initializers)
    m.graph.output.append(helper.make_tensor_value_info(gr.grad, shapes[wrt].elem_type, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess, gr, prep.info.image_input.name


@pytest.mark.parametrize("wrt", [None, "input"])
def test_fp16_gradient_computed_in_float32(wrt: str | None):
    """compute_type=FLOAT: the gradient of a float16 model emitted in float32 (every float16
    tensor it reads cast once), cast back to float16 at the end; same numbers as float16."""
    path = FP16 / "torchscript_tinyresnet_fp16.onnx"
    g = load_golden("torchscript_tinyresnet")
    seed = np.eye(g["outputs"].shape[1], dtype=np.float16)[g["targets"]]
    got = {}
    for ct in (None, TensorProto.FLOAT):
        sess, gr, image = _gradient_session(path, wrt, ct)
        got[ct] = sess.run([gr.grad], {image: g["x"].astype(np.float16), "seed": seed})[0]
        assert got[ct].dtype == np.float16
        if ct is not None:
            assert all(t.data_type != TensorProto.FLOAT16 for t in gr.initializers)
            half_ops = {n.op_type for n in gr.nodes} - {"Cast", "Shape"}
            assert "Cast" in {n.op_type for n in gr.nodes} and half_ops
    a, b = got[None].astype(np.float32), got[TensorProto.FLOAT].astype(np.float32)
    assert rel_err(a, b) < 5e-3
    if wrt is None:
        assert rel_err(b, g["gradient"]) < 2e-2


# -- external data -------------------------------------------------------------------------------


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-ReLU-Conv-ReLU-GlobalAveragePool-Gemm on 1×3×16×16, weights big enough (> 1 KiB) to
    be stored as external data."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.3, (10, 32)).astype(np.float32)
    weights = {"w1": w1, "w2": w2, "fc": fc, "b1": np.zeros(16, np.float32),
               "fcb": rng.normal(0, 0.1, 10).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    return tiny_model(nodes, weights, {"x": ["N", 3, 16, 16]}, {"logits": ["N", 10]}, name="small_cnn")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stored(tmp_path: Path) -> dict[str, Path]:
    inline = tmp_path / "inline.onnx"
    onnx.save_model(small_cnn(), inline)
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    external = ext_dir / "model.onnx"
    onnx.save_model(small_cnn(), external, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.weights", size_threshold=0)
    return {"inline": inline, "external": external, "weights": ext_dir / "model.weights"}


def test_external_data_model_is_stored_externally(stored):
    proto = onnx.load(stored["external"], load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert stored["weights"].stat().st_size > 20000


def test_without_big_data_leaves_the_model_alone_and_keeps_shapes(tmp_path: Path):
    model = small_cnn()
    before = model.SerializeToString()
    skel = without_big_data(model, min_bytes=1024)
    assert model.SerializeToString() == before
    big = [t.name for t in skel.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert set(big) == {"w1", "w2", "fc"}
    assert all(not t.raw_data for t in skel.graph.initializer if t.name in big)
    assert infer_shapes(model)["r2"].shape == ("N", 32, 8, 8)
    # written to a data file, the skeleton is a complete model again
    with open(tmp_path / "w.bin", "wb") as f:
        skel = without_big_data(model, min_bytes=1024, data_file=f, location="w.bin")
    onnx.save_model(skel, tmp_path / "m.onnx")
    back = onnx.load(tmp_path / "m.onnx", load_external_data=True)
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    offsets = [int(e.value) for t in skel.graph.initializer for e in t.external_data if e.key == "offset"]
    assert all(o % 4096 == 0 for o in offsets)


def test_session_for_goes_through_external_data_above_the_limit(monkeypatch, stored):
    model = load_model(stored["external"])
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    want = runtime.session_for(model, ["CPUExecutionProvider"]).run(None, {"x": x})[0]
    before = model.SerializeToString()
    monkeypatch.setattr(runtime, "INLINE_LIMIT", 1000)
    sess = runtime.session_for(model, ["CPUExecutionProvider"], threads=1)
    tmp = Path(sess.onnxcam_tmpdir.name)
    assert sorted(p.name for p in tmp.iterdir()) == ["model.onnx", runtime.WEIGHTS_FILE]
    assert (tmp / "model.onnx").stat().st_size < 2000  # the weights are in the side file
    assert model.SerializeToString() == before  # the in-memory model is not changed
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)
    assert sess.get_providers() == ["CPUExecutionProvider"] and sess.get_outputs()[0].name == "logits"
    del sess
    gc.collect()
    assert not tmp.exists()


def test_explainer_on_an_external_data_model(monkeypatch, stored):
    hashes = {k: sha(p) for k, p in stored.items()}
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    want = Explainer(stored["inline"]).explain(x)
    made: list[Path] = []
    real = runtime.session_for

    def spy(model, *args, **kwargs):
        sess = real(model, *args, **kwargs)
        if hasattr(sess, "onnxcam_tmpdir"):
            made.append(Path(sess.onnxcam_tmpdir.name))
        return sess

    monkeypatch.setattr(runtime, "INLINE_LIMIT", 1000)
    monkeypatch.setattr(runtime, "session_for", spy)
    if hasattr(onnxcam.explainer, "session_for"):
        monkeypatch.setattr(onnxcam.explainer, "session_for", spy)
    ex = Explainer(stored["external"])
    got = ex.explain(x)
    assert got.layer == want.layer == "r2"
    np.testing.assert_array_equal(got.targets, want.targets)
    np.testing.assert_allclose(got.gradients, want.gradients, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, rtol=1e-6, atol=1e-7)
    assert {k: sha(p) for k, p in stored.items()} == hashes  # the user's files are untouched
    assert sorted(os.listdir(stored["external"].parent)) == ["model.onnx", "model.weights"]
    if hasattr(onnxcam.explainer, "session_for"):
        assert made and all(p.exists() for p in made)
    del ex
    gc.collect()
    assert not any(p.exists() for p in made)
