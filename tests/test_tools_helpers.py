"""tools/common.py: the framework-free helpers every build-time script shares (README sections,
JSON tables, tolerances, directional check, seed search, ONNX inspection), checked against
hand-written expectations and numpy references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tools import common

from .helpers import tiny_model

BEGIN, END = "<!-- BEGIN a -->", "<!-- END a -->"


def test_readme_section_is_appended_then_rewritten_in_place(tmp_path: Path):
    path = tmp_path / "README.md"
    common.write_readme_section(path, BEGIN, END, "first\n\n", title="# Corpus")
    assert path.read_text() == f"# Corpus\n\n{BEGIN}\nfirst\n{END}\n"
    path.write_text(path.read_text() + "\n<!-- BEGIN b -->\nother\n<!-- END b -->\n")
    common.write_readme_section(path, BEGIN, END, "second")
    assert path.read_text() == f"# Corpus\n\n{BEGIN}\nsecond\n{END}\n\n<!-- BEGIN b -->\nother\n<!-- END b -->\n"


def test_readme_section_keeps_one_blank_line_before_the_next_section(tmp_path: Path):
    path = tmp_path / "README.md"
    path.write_text(f"# T\n\n{BEGIN}\nold\n{END}\n<!-- BEGIN b -->\nb\n<!-- END b -->\n")
    common.write_readme_section(path, BEGIN, END, "new")
    assert path.read_text() == f"# T\n\n{BEGIN}\nnew\n{END}\n\n<!-- BEGIN b -->\nb\n<!-- END b -->\n"


def test_readme_section_of_a_new_file_gets_the_default_title(tmp_path: Path):
    path = tmp_path / "README.md"
    common.write_readme_section(path, BEGIN, END, "x")
    assert path.read_text() == f"# Golden test models\n\n{BEGIN}\nx\n{END}\n"


def test_layers_json_merges_and_sorts(tmp_path: Path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"b": {"tensor": "old", "layout": "NCHW"}, "z": {"tensor": "t", "layout": "NHWC"}}))
    common.update_layers_json(path, [{"stem": "b", "tensor": "new", "layout": "NHWC", "extra": 1},
                                     {"stem": "a", "tensor": "r", "layout": "NCHW"}])
    assert list(json.loads(path.read_text())) == ["a", "b", "z"]
    assert json.loads(path.read_text())["b"] == {"tensor": "new", "layout": "NHWC"}
    assert path.read_text().endswith("}\n")
    assert common.layers_table({"s": {"tensor": "t", "layout": "NCHW", "bytes": 3}}) == (
        '{\n  "s": {\n    "tensor": "t",\n    "layout": "NCHW"\n  }\n}\n')


def test_report_keeps_other_stems_and_drops_deleted_files(tmp_path: Path):
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps({"gone": {"stem": "gone"}, "kept": {"stem": "kept", "v": 1}}))
    for stem in ("kept", "new"):
        (tmp_path / f"{stem}.onnx").write_bytes(b"")
    report = common.update_report(report_path, tmp_path, [{"stem": "new", "v": 2}])
    assert report == {"kept": {"stem": "kept", "v": 1}, "new": {"stem": "new", "v": 2}}
    assert json.loads(report_path.read_text()) == report


def test_tolerance_table():
    assert (common.ATOL, common.RTOL, common.DIRECTIONAL_RTOL, common.CHECK_REL, common.REBUILD_ATOL) == (
        1e-4, 1e-4, 1e-5, 1e-3, 1e-5)
    assert common.scaled_tol(np.array([0.5, -0.2])) == 1e-4
    assert common.scaled_tol(np.array([3.0, -20.0])) == pytest.approx(2e-3)


def test_directional_derivative_agrees_on_a_smooth_model_and_fails_on_a_wrong_gradient():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 4))
    f64 = lambda x: np.tanh(x.reshape(len(x), -1) @ w)  # noqa: E731
    x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    targets = np.array([1, 3])
    xf = x.astype(np.float64).reshape(2, -1)
    g = np.zeros_like(xf)
    for n, t in enumerate(targets):  # d tanh(x·w_t) / dx = (1 − tanh²) w_t
        g[n] = (1 - np.tanh(xf[n] @ w[:, t]) ** 2) * w[:, t]
    d = common.directional_derivative(f64, x, targets, g.reshape(x.shape))
    assert d.ok and d.eps == 1e-6 and d.rel <= 1e-5
    bad = common.directional_derivative(f64, x, targets, 1.1 * g.reshape(x.shape))
    assert not bad.ok and len(bad.fds) == 3
    with pytest.raises(SystemExit, match="fails the directional check"):
        common.check_directional_derivative("m", f64, x, targets, 1.1 * g.reshape(x.shape))


def test_pick_input_takes_the_first_seed_with_two_different_targets():
    def draw(r: np.random.Generator) -> np.ndarray:
        return r.normal(size=(2, 3))

    predict = lambda x: x  # noqa: E731  (targets = argmax of the drawn rows)
    want = next(s for s in range(10, 60) if len(set(draw(np.random.default_rng(s)).argmax(1))) == 2)
    x = common.pick_input(predict, draw, 10)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, draw(np.random.default_rng(want)).astype(np.float32))
    same = common.pick_input(lambda x: np.zeros((2, 3)), draw, 10)  # never different: the first seed's batch
    np.testing.assert_array_equal(same, draw(np.random.default_rng(10)).astype(np.float32))


def _relu_gap_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    return tiny_model(nodes, {}, {"x": ["N", 3, 4, 4]}, {"y": ["N", 3]}, opset=13)


def test_graph_walks_and_summaries(tmp_path: Path):
    m = _relu_gap_model()
    assert common.ancestors(m.graph, ["r"]) == {"r", "n", "x"}
    assert common.descendants(m.graph, "r") == {"r", "p", "y"}
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert common.op_types(path) == (["Flatten", "GlobalAveragePool", "Neg", "Relu"], 13)
    s = common.onnx_summary(path)
    assert s["opset"] == {"ai.onnx": 13} and s["inputs"] == [("x", ["N", 3, 4, 4])] and s["auto_pad"] == []
    assert s["bytes"] == path.stat().st_size and s["outputs"] == ["y"]


def test_activation_tensor_search_finds_the_pooled_relu_in_either_layout(tmp_path: Path):
    path = tmp_path / "m.onnx"
    onnx.save(_relu_gap_model(), path)
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 4)).astype(np.float32)
    act = np.maximum(-x.astype(np.float64), 0)  # numpy reference of the Relu output
    found = common.find_activation_tensor(path, x, act)
    assert found["tensor"] == "r" and found["layout"] == "NCHW" and found["all_matches"] == [("r", "NCHW")]
    assert common.find_layer_tensor(path, x, act.astype(np.float32)) == ("r", ["r"])
    with pytest.raises(SystemExit, match="no ONNX tensor matches"):
        common.find_activation_tensor(path, x, act + 1.0)
    np.testing.assert_allclose(common.run_ort(path, x)[0], act.mean(axis=(2, 3)), rtol=1e-6)
