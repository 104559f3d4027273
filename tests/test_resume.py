"""The journal of an unfinished run (onnxcam.resume): what a rerun may skip, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxcam.errors import OnnxcamError
from onnxcam.output import OutputDir
from onnxcam.resume import JOURNAL, Journal, signature


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
