"""The journal of an unfinished run (onnxcam.resume): what a rerun may skip, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxcam import Explainer
from onnxcam.errors import OnnxcamError
from onnxcam.methods import configured
from onnxcam.output import OutputDir
from onnxcam.preprocessing import policy_for
from onnxcam.resume import JOURNAL, Journal, explain_signature, signature

from .helpers import MOBILENET


def test_signature_is_stable_and_order_free():
    a = signature({"method": "gradcam", "target": "top1", "sizes": [224, 224]})
    assert a == signature({"sizes": [224, 224], "target": "top1", "method": "gradcam"})
    assert a != signature({"method": "hirescam", "target": "top1", "sizes": [224, 224]})
    assert len(a) == 64


def test_a_rerun_of_the_same_run_resumes_and_another_is_refused(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    j = Journal(out, "sig-1", "explain")
    j.open(overwrite=False)
    assert not (tmp_path / "out").exists()  # nothing written before the first file
    j.start()
    header = json.loads((tmp_path / "out" / JOURNAL).read_text().splitlines()[0])
    assert header == {"signature": "sig-1", "command": "explain"}
    done = tmp_path / "out" / "a.overlay.png"
    done.write_bytes(b"png")
    j.record("a", {"image": "in/a.png", "records": [{"overlay": str(done)}], "errors": []})
    j.record("b", {"image": "in/b.png", "records": [], "errors": [{"error": "cannot decode"}]})
    with open(tmp_path / "out" / JOURNAL, "a") as f:
        f.write('{"key": "c", "image": "in/c.pn')  # torn: the run died while appending

    again = Journal(OutputDir(tmp_path / "out"), "sig-1", "explain")
    again.open(overwrite=False)
    assert again.resuming and set(again.done) == {"a", "b"}
    assert again.finished("a", [str(done)]) is not None
    assert again.finished("b", []) is None  # an error is retried
    done.unlink()
    assert again.finished("a", [str(done)]) is None  # its file is gone: redone

    other = Journal(OutputDir(tmp_path / "out"), "sig-2", "explain")
    with pytest.raises(OnnxcamError, match="unfinished run of another command.*--overwrite"):
        other.open(overwrite=False)
    other.open(overwrite=True)  # starts over
    other.start()
    assert not other.resuming and json.loads((tmp_path / "out" / JOURNAL).read_text())["signature"] == "sig-2"
    other.close()
    assert not (tmp_path / "out" / JOURNAL).exists()


def test_the_journal_is_never_written_through_a_link(tmp_path: Path):
    (tmp_path / "out").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out" / JOURNAL).symlink_to(victim)
    with pytest.raises(OnnxcamError, match="symbolic link"):
        j = Journal(OutputDir(tmp_path / "out"), "s", "explain")
        j.open(overwrite=True)
        j.start()
    assert victim.read_text() == "precious"


def test_one_signature_for_local_and_ray_runs_of_the_same_options():
    """The local command and explain_to_dir describe the same run with different argument forms;
    the output format and every option that changes a map change the signature."""
    policy = policy_for(Explainer(str(MOBILENET)))
    local = explain_signature("sha", configured("gradcam"), policy, layers=[], target="top1",
                              explainer={"fuse": "mean", "aug_smooth": False, "eigen_smooth": False, "output": None,
                                         "backend": "onnx", "inputs": {}})
    ray = explain_signature("sha", configured("gradcam"), policy, layers=None, target="top1", explainer=None)
    assert local == ray
    assert explain_signature("sha", configured("gradcam"), policy, layers="x", target="top1") == \
        explain_signature("sha", configured("gradcam"), policy, layers=["x"], target="top1")
    others = [
        explain_signature("sha", configured("gradcam"), policy, layers=None, target="top1", fmt="parquet"),
        explain_signature("sha2", configured("gradcam"), policy, layers=None, target="top1"),
        explain_signature("sha", configured("hirescam"), policy, layers=None, target="top1"),
        explain_signature("sha", configured("rollout", head_fusion="max"), policy, layers=None, target="top1"),
        explain_signature("sha", configured("rollout"), policy, layers=None, target="top1"),
        explain_signature("sha", configured("gradcam"), policy, layers=None, target="281"),
        explain_signature("sha", configured("gradcam"), policy, layers=None, target="top1", explainer={"fuse": "max"}),
        explain_signature("sha", configured("gradcam"), policy, layers=None, target="top1",
                          explainer={"inputs": {"scale": np.float32([2.0])}}),
    ]
    assert len({ray, *others}) == len(others) + 1


def test_record_many_appends_lines_a_rerun_reads(tmp_path: Path):
    j = Journal(OutputDir(tmp_path / "out"), "sig", "explain --ray")
    j.open(overwrite=False)
    j.record_many([(f"k{i}", {"image": f"in/{i}.png", "records": [{"target": i}], "errors": []}) for i in range(3)])
    j.record_many([])
    j.record("k1", {"image": "in/1.png", "records": [{"target": 10}], "errors": []})  # a later line wins
    again = Journal(OutputDir(tmp_path / "out"), "sig", "explain")
    again.open(overwrite=False)
    assert again.resuming and [again.done[k]["records"][0]["target"] for k in ("k0", "k1", "k2")] == [0, 10, 2]
