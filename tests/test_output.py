"""The one output writer (onnxcam.output) and the commands through it: nothing written outside OUT,
no link followed, no input overwritten, no two images writing one file, atomic files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam import OnnxcamError, UsageError
from onnxcam.cli import cli
from onnxcam.output import OutputDir, output_names, unique_names

from .helpers import EXAMPLES, GOLDENS

TINY = GOLDENS / "torchscript_tinyresnet.onnx"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def explain(*args):
    return run("explain", TINY, *args, "--preset", "unit", "--json")


def test_unique_names_never_collide_with_real_names():
    assert unique_names(["x", "x", "x-2"]) == ["x", "x-3", "x-2"]
    assert unique_names(["a", "a", "a"]) == ["a", "a-2", "a-3"]
    assert unique_names(["Cat", "cat", "cat-2"]) == ["Cat", "cat-3", "cat-2"]  # one file on macOS/Windows
    with pytest.raises(OnnxcamError, match="two outputs would be written to"):
        OutputDir(Path("/nonexistent-out")).check_free(["a.png", "b.png", "A.png"])
    got = output_names([(Path("in/a/x.png"), Path("in")), (Path("in/b/x.png"), Path("in")),
                        (Path("in/a/x.jpg"), Path("in")), (Path("one/x.png"), None), (Path("two/x.png"), None),
                        (Path("x-2.png"), None)])
    assert got == ["a/x", "b/x", "a/x-2", "x", "x-3", "x-2"]


def test_same_names_in_two_folders_keep_their_own_outputs(tmp_path: Path):
    src = tmp_path / "in"
    for sub, photo in (("a", "chelsea.png"), ("b", "coffee.png")):
        (src / sub).mkdir(parents=True)
        shutil.copy(EXAMPLES / photo, src / sub / "x.png")
    out = tmp_path / "out"
    r = explain(src, "-o", out)
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["images"]
    assert sorted(Path(x["overlay"]).relative_to(out).as_posix() for x in recs) == ["a/x.overlay.png", "b/x.overlay.png"]
    assert len({x["heatmap"] for x in recs}) == 2
    maps = [np.load(x["heatmap"]) for x in recs]
    assert not np.allclose(maps[0], maps[1])  # two photos, two maps: neither replaced the other


def test_symlink_planted_in_out_is_not_followed(tmp_path: Path):
    img = tmp_path / "c.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").symlink_to(victim)
    (out / "c.overlay.png").symlink_to(outside / "new.png")
    before = snapshot(outside)
    for extra in ([], ["--overwrite"]):
        r = explain(img, "-o", out, *extra)
        assert r.exit_code == 1 and "symbolic link" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(outside) == before and not (outside / "new.png").exists()
    assert victim.read_text() == "keep me"


def test_symlinked_folder_inside_out_is_not_followed(tmp_path: Path):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    shutil.copy(EXAMPLES / "coffee.png", src / "x.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    r = explain(tmp_path / "in", "-o", out, "--overwrite")
    assert r.exit_code == 1 and "symbolic link" in r.stderr
    assert list(outside.iterdir()) == []


def test_review_refuses_a_planted_link(tmp_path: Path):
    victim = tmp_path / "victim.html"
    victim.write_text("mine")
    out = tmp_path / "rev"
    out.mkdir()
    (out / "index.html").symlink_to(victim)
    r = run("review", TINY, "--images", EXAMPLES / "coffee.png", "-o", out, "--preset", "unit", "--overwrite",
            "--steps", "2")
    assert r.exit_code == 1 and "symbolic link" in r.stderr
    assert victim.read_text() == "mine" and not (out / "review.json").exists()


def test_an_input_is_never_an_output(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    img = tmp_path / "c.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    decoy = out / "c.overlay.png"  # an input image that is also the name of an output
    shutil.copy(EXAMPLES / "coffee.png", decoy)
    before = decoy.read_bytes()
    r = explain(img, decoy, "-o", out, "--overwrite")
    assert r.exit_code == 2 and "is an input" in r.stderr
    assert decoy.read_bytes() == before


def test_export_never_replaces_the_model(tmp_path: Path):
    model = tmp_path / "m.onnx"
    shutil.copy(TINY, model)
    link = tmp_path / "hard.onnx"
    os.link(model, link)
    before = model.read_bytes()
    for target in (model, link):
        r = run("export", model, "-o", target, "--overwrite")
        assert r.exit_code == 2 and "is an input" in r.stderr
    sym = tmp_path / "sym.onnx"
    sym.symlink_to(tmp_path / "elsewhere.onnx")
    r = run("export", model, "-o", sym, "--overwrite")
    assert r.exit_code == 1 and "symbolic link" in r.stderr and not (tmp_path / "elsewhere.onnx").exists()
    assert model.read_bytes() == before


def test_files_are_atomic_and_results_json_comes_last(tmp_path: Path):
    img = tmp_path / "c.png"
    shutil.copy(EXAMPLES / "chelsea.png", img)
    out = tmp_path / "out"
    assert explain(img, "-o", out).exit_code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["c.heatmap.npy", "c.overlay.png", "results.json"]  # no temp file left
    results = (out / "results.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= results for p in out.iterdir())


def test_output_dir_keeps_names_inside(tmp_path: Path):
    out = OutputDir(tmp_path / "o")
    for bad in ("../x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(OnnxcamError, match="plain relative name"):
            out.write_text(bad, "x")
    out.write_text("a/b.txt", "one")
    with pytest.raises(OnnxcamError, match="exists; pass --overwrite"):
        OutputDir(tmp_path / "o").write_text("a/b.txt", "two")
    assert (tmp_path / "o" / "a" / "b.txt").read_text() == "one"
    OutputDir(tmp_path / "o", overwrite=True).write_text("a/b.txt", "two")
    assert (tmp_path / "o" / "a" / "b.txt").read_text() == "two"
    with pytest.raises(UsageError, match="is an input"):
        OutputDir(tmp_path / "o", overwrite=True, protect=[tmp_path / "o" / "a" / "b.txt"]).write_text("a/b.txt", "3")
    assert json.loads(OutputDir(tmp_path / "o").write_json("n.json", {"v": float("nan")}).read_text()) == {"v": None}
