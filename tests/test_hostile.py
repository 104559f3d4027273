"""Fault injection: hostile models, images, options and output folders (tests/hostile/).

Every case runs the CLI in its own process and checks the contract: the documented exit code;
each error one line on stderr (no traceback, no library noise, control characters escaped); no
file outside OUT changed (a snapshot of the case's folder, links not followed: kind, size, mtime,
sha256); results.json strict JSON with every good input's record, distinct files inside OUT, each
overlay at its own image's size; peak RSS of the CLI process ≤ 2 GiB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.methods import METHODS

from .hostile import images as I
from .hostile import models as M
from .hostile.cases import CASES, Spec, fixed_batch_case
from .hostile.harness import (
    Snapshot, check_results, check_run, is_incomplete, results_records, run_cli, strict_json,
)

for _m in sorted(METHODS):
    if not getattr(METHODS[_m], "needs_attention", False):  # the attention methods need a transformer
        CASES[f"model-fixed-batch1-{_m}"] = fixed_batch_case(_m)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    if not folder.exists() or folder.is_symlink():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name: str, tmp_path: Path):
    d = tmp_path / "case"
    d.mkdir()
    spec: Spec = CASES[name](d)
    skip = [spec.out] if spec.out is not None and spec.out != d else []
    before = Snapshot.take(d, skip=skip)
    out_before = {p: _sha(p) for p in _files(spec.out)} if spec.out is not None else {}
    protected = {p: _sha(p) for p in spec.protect}
    run = run_cli(spec.args, d, fsize=spec.fsize, restricted=spec.restricted, timeout=spec.timeout)
    check_run(run, spec.code, spec.errors)
    if not skip and spec.out == d:  # OUT is the case folder: only the protected files are checked
        pass
    else:
        after = Snapshot.take(d, skip=skip)
        assert before.diff(after) == [], "files outside OUT changed:\n" + "\n".join(before.diff(after))
    for p, digest in protected.items():
        assert p.exists() and not p.is_symlink() and _sha(p) == digest, f"input {p} was changed"
    if spec.out is not None:
        if spec.out_empty:
            new = [p for p in _files(spec.out) if p not in out_before]
            assert new == [], f"files written to OUT by a run that failed before starting: {new}"
        for p, digest in out_before.items():  # files planted in OUT before a failed run stay as they were
            if run.code != 0 and p.exists() and not p.is_symlink():
                assert _sha(p) == digest or p.name == "results.json", f"{p} changed by a failed run"
        report = check_results(spec.out, d, spec.good, spec.bad, spec.sizes) if not spec.out.is_symlink() else None
        if spec.results is True:
            assert report is not None and not is_incomplete(report), "results.json missing"
        if spec.results is False:
            assert report is None or (spec.out / "results.json") in out_before, "results.json written"
    if "--json" in spec.args and run.stdout.strip():
        strict_json(run.stdout)
    if "--json" not in spec.args:
        assert "\x1b" not in run.stdout and "\r" not in run.stdout, f"control characters on stdout: {run.stdout[:300]!r}"


# -- full disk, failed overwrite, Ctrl-C: OUT is left as it was or marked incomplete; reruns resume --
def _three_images(d: Path, big: bool = False) -> list[Path]:
    files = [I.photo(d / "in" / "a.png", 40, 56, 1), I.photo(d / "in" / "sub" / "b.png", 30, 20, 2)]
    if big:  # noise compresses badly: its overlay is the biggest file of the run
        rng = np.random.default_rng(9)
        p = d / "in" / "c.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (500, 700, 3), dtype=np.uint8))
        files.append(p)
    else:
        files.append(I.photo(d / "in" / "c.png", 50, 50, 3))
    return files


def _assert_clean_or_incomplete(out: Path, cwd: Path) -> dict | None:
    """After a failed or interrupted run: no truncated file under a final name, no stray temp
    files, and results.json absent, marked incomplete, or consistent with the files."""
    report = results_records(out, cwd)
    for p in _files(out):
        if p.suffix == ".npy":
            np.load(p, allow_pickle=False)
        elif p.suffix == ".png":
            assert cv2.imread(str(p)) is not None, f"{p} is truncated"
        elif p.name == "results.json":
            continue
        elif ".incomplete" in p.name:  # the run's journal: OUT is marked incomplete
            continue
        else:
            raise AssertionError(f"stray file in OUT after a failed run: {p}")
    if report is not None and not is_incomplete(report):
        check_results(out, cwd)
    return report


@pytest.mark.parametrize("limit", [8_000, 100_000])
def test_full_disk_leaves_out_clean_and_rerun_resumes(tmp_path: Path, limit: int):
    """A write that fails (RLIMIT_FSIZE: EFBIG, as ENOSPC would) mid-run: exit 1, one line; then
    the same command, with room, finishes the run instead of refusing it."""
    d = tmp_path
    m = M.good(d / "m.onnx", size=("H", "W"))
    files = _three_images(d, big=True)
    out = d / "out"
    args = ["explain", m, d / "in", "-o", out, "--size", "64x64"]
    before = Snapshot.take(d, skip=[out])
    run = run_cli(args, d, fsize=limit)
    check_run(run, 1)
    assert Snapshot.take(d, skip=[out]).diff(before) == []
    _assert_clean_or_incomplete(out, d)
    again = run_cli(args, d)
    check_run(again, 0)
    report = check_results(out, d, files)
    assert report is not None and not is_incomplete(report) and len(report["images"]) == 3


def test_failed_overwrite_never_leaves_old_results_over_new_files(tmp_path: Path):
    d = tmp_path
    m = M.good(d / "m.onnx")
    _three_images(d, big=True)
    out = d / "out"
    first = run_cli(["explain", m, d / "in", "-o", out], d)
    check_run(first, 0)
    old = {p: _sha(p) for p in _files(out)}
    second = run_cli(["explain", m, d / "in", "-o", out, "--overwrite", "--method", "eigencam"], d, fsize=400_000)
    check_run(second, 1)
    report = _assert_clean_or_incomplete(out, d)
    if report is not None and not is_incomplete(report):
        for rec in report["images"]:
            for key in ("overlay", "heatmap"):
                p = Path(rec[key]) if Path(rec[key]).is_absolute() else d / rec[key]
                assert old.get(p) == _sha(p), f"results.json describes {p}, which the failed run replaced"


def test_ctrl_c_leaves_out_clean_and_rerun_resumes(tmp_path: Path):
    d = tmp_path
    m = M.good(d / "m.onnx")
    files = [I.photo(d / "in" / f"p{i:03d}.png", 300, 400, i) for i in range(120)]
    out = d / "out"
    args = ["explain", m, d / "in", "-o", out, "--batch-size", "1", "--method", "scorecam"]
    run = run_cli(args, d, interrupt_when=lambda: any(out.glob("**/*.npy")))
    if run.code == 0:
        pytest.skip("the run finished before the interrupt")
    assert run.code == 130, run.describe()
    check_run(run, 130)
    _assert_clean_or_incomplete(out, d)
    again = run_cli(args, d)
    check_run(again, 0)
    report = check_results(out, d, files)
    assert report is not None and len(report["images"]) == len(files)


# -- bounded memory regardless of the number of images ----------------------------------------------
@pytest.mark.parametrize("command", ["eval", "review", "explain"])
def test_memory_does_not_grow_with_the_number_of_images(tmp_path: Path, command: str):
    d = tmp_path
    m = M.good(d / "m.onnx")
    rss = {}
    for n in (10, 120):
        folder = d / f"in{n}"
        for i in range(n):
            I.photo(folder / f"p{i:03d}.png", 400, 500, i)
        args = {
            "eval": ["eval", m, folder, "--steps", "2", "--json"],
            "review": ["review", m, "--images", folder, "-o", d / f"out{n}", "--steps", "2"],
            "explain": ["explain", m, folder, "-o", d / f"out{n}", "--json"],
        }[command]
        run = run_cli(args, d)
        check_run(run, 0)
        rss[n] = run.max_rss
    growth = (rss[120] - rss[10]) / 2**20
    assert growth < 60, f"peak RSS grew by {growth:.0f} MiB from 10 to 120 images ({rss})"


# -- first impressions ------------------------------------------------------------------------------
def test_methods_labels_say_what_each_method_runs(tmp_path: Path):
    run = run_cli(["methods"], tmp_path)
    check_run(run, 0)
    lines = {l.split()[0]: l for l in run.stdout.splitlines() if l.strip()}
    for name in ("fullgrad", "guidedbackprop", "guidedgradcam", "gradcam"):
        assert "forward-only" not in lines[name], lines[name]
    for name in ("scorecam", "ablationcam", "eigencam", "random"):
        assert "forward-only" in lines[name] or "forward" in lines[name], lines[name]
