"""Property and fuzz tests over the CLI: random options, random corruptions of real files.

The properties, on every run: the exit code is 0, 1 or 2; stderr keeps the contract (each error
one line, no traceback, no library noise, no control characters); nothing outside OUT changes;
no input is lost — every image given has either a record or an error in results.json, and the
error lines on stderr are those errors; the peak RSS stays ≤ 2 GiB.

Two drivers share the generators: a seeded one that always runs (fixed seeds, reproducible), and
hypothesis (the `test` extra) which explores and shrinks a failing example to a small one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from .hostile import images as I
from .hostile import models as M
from .hostile.harness import ROOT, Snapshot, check_results, check_run, results_records, run_cli, strict_json

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded driver below still runs
    st = None

EXAMPLES = ROOT / "examples"
MOBILENET = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
REAL_IMAGES = [EXAMPLES / "chelsea.png", EXAMPLES / "coffee.png", EXAMPLES / "composites" / "comp_00.jpg"]

# -- generators -----------------------------------------------------------------------------------
TARGETS = ["top1", "0", "9", "10", "-1", "top3", "top0", "top10", "top11", "softmax:3", "counterfactual:2",
           "index:0", "index:0,3", "index:99", "seg:0", "det:best", "det:row=0", "cat", "", " ", "1e3",
           "9" * 25, "top" + "9" * 20, "softmax:", "index:", "\x1b[31m", "ü", "det:box=1,2,3", "seg:1:0,0,5,5"]
SIZES = [None, "32x32", "64x48", "1x1", "0x0", "-3x5", "axb", "32", "32x32x3", "100000x100000", "16X16",
         "native", "3x300000", " 32 x 32 "]
METHODS = ["gradcam", "gradcam++", "scorecam", "ablationcam", "eigencam", "fullgrad", "guidedgradcam", "cam",
           "layercam", "random", "nosuch"]


def option_args(r: random.Random) -> list[str]:
    """One random explain command line over the tiny model with a dynamic input size."""
    args: list[str] = []
    if r.random() < 0.7:
        args += ["--target", r.choice(TARGETS)]
    size = r.choice(SIZES)
    if size is not None:
        args += ["--size", size]
    if r.random() < 0.6:
        args += ["--method", r.choice(METHODS)]
    if r.random() < 0.3:
        args += ["--batch-size", str(r.choice([1, 2, 3, 10**9, 0, -1]))]
    if r.random() < 0.3:
        args += ["--preset", r.choice(["imagenet", "raw", "tf", "caffe", "unit", "bogus"])]
    for flag in ("--aug-smooth", "--eigen-smooth", "--letterbox", "--json", "--overwrite"):
        if r.random() < 0.15:
            args.append(flag)
    if r.random() < 0.2:
        args += ["--fuse", r.choice(["mean", "max", "min"])]
    if r.random() < 0.2:
        args += ["--layer", r.choice(["relu", "conv", "gap", "x", "nope"])]
    return args


def corrupt(data: bytes, r: random.Random) -> bytes:
    """Random byte flips, a cut, or a spliced block — the ways files break in transit."""
    b = bytearray(data)
    kind = r.choice(["flip", "cut", "splice", "zero"])
    if kind == "flip":
        for _ in range(r.randint(1, 16)):
            i = r.randrange(len(b))
            b[i] = r.randrange(256)
    elif kind == "cut":
        b = b[: r.randrange(1, len(b))]
    elif kind == "splice":
        i, j = sorted(r.randrange(len(b)) for _ in range(2))
        b[i:i] = b[j : j + r.randint(1, 4096)]
    else:
        i = r.randrange(len(b))
        b[i : i + r.randint(1, 512)] = bytes(min(512, len(b) - i))
    return bytes(b)


# -- properties -----------------------------------------------------------------------------------
def _check_explain(d: Path, args: list, out: Path, inputs: list[Path]) -> None:
    before = Snapshot.take(d, skip=[out])
    run = run_cli(args, d)
    check_run(run, {0, 1, 2}, errors=None if run.code != 1 else _error_count(out, d, run))
    assert Snapshot.take(d, skip=[out]).diff(before) == [], "files outside OUT changed"
    if "--json" in args and run.code in (0, 1) and run.stdout.strip():
        strict_json(run.stdout)
    if run.code == 2:
        return
    report = check_results(out, d)
    if report is None:
        assert run.code == 1, run.describe()
        return
    done = {os.path.realpath(rec["image"] if os.path.isabs(rec["image"]) else d / rec["image"]) for rec in report["images"]}
    failed = {os.path.realpath(e["image"] if os.path.isabs(e["image"]) else d / e["image"]) for e in report.get("errors", [])}
    for p in inputs:
        assert os.path.realpath(p) in done | failed, f"{p} is neither a result nor an error"
    assert (run.code == 1) == bool(failed), run.describe()


def _error_count(out: Path, d: Path, run) -> int:
    """Error lines expected on stderr: one per error in results.json (or one fatal error)."""
    try:
        report = results_records(out, d)
    except Exception:  # noqa: BLE001  (the check below reports an invalid results.json)
        return 1
    if report is None:
        return 1
    return max(1, len(report.get("errors", [])))


def run_options_case(d: Path, r: random.Random) -> None:
    model = M.good(d / "m.onnx", size=("H", "W"))
    imgs = [I.photo(d / "in" / "a.png", 40, 56, 1), I.photo(d / "in" / "b.png", 30, 20, 2)]
    out = d / "out"
    _check_explain(d, ["explain", model, d / "in", "-o", out, *option_args(r)], out, imgs)


def run_corrupt_images_case(d: Path, r: random.Random, n: int = 6) -> None:
    model = M.good(d / "m.onnx")
    inputs = []
    for i in range(n):
        src = r.choice(REAL_IMAGES)
        p = d / "in" / f"c{i}{src.suffix}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(corrupt(src.read_bytes(), r))
        inputs.append(p)
    out = d / "out"
    _check_explain(d, ["explain", model, d / "in", "-o", out], out, inputs)


def run_corrupt_model_case(d: Path, r: random.Random, source: Path | None = None) -> None:
    data = (source.read_bytes() if source else M.tiny_model().SerializeToString())
    m = d / "m.onnx"
    m.write_bytes(corrupt(data, r))
    img = I.photo(d / "in" / "a.png", 40, 56, 1)
    out = d / "out"
    _check_explain(d, ["explain", m, img, "-o", out], out, [img])


# -- the seeded driver (always runs) ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_seeded_options(tmp_path: Path, seed: int):
    run_options_case(tmp_path, random.Random(seed))


@pytest.mark.parametrize("seed", range(4))
def test_seeded_corrupt_images(tmp_path: Path, seed: int):
    run_corrupt_images_case(tmp_path, random.Random(100 + seed))


@pytest.mark.parametrize("seed", range(8))
def test_seeded_corrupt_tiny_model(tmp_path: Path, seed: int):
    run_corrupt_model_case(tmp_path, random.Random(200 + seed))


@pytest.mark.parametrize("seed", range(2))
def test_seeded_corrupt_bundled_model(tmp_path: Path, seed: int):
    run_corrupt_model_case(tmp_path, random.Random(300 + seed), MOBILENET)


# -- hypothesis (explores beyond the fixed seeds; shrinks failures) ---------------------------------
if st is not None:
    _settings = settings(max_examples=10, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

    def _fresh(tmp_path: Path) -> Path:
        d = tmp_path / "h"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    @_settings
    @given(st.randoms(use_true_random=False))
    def test_hypothesis_options(tmp_path: Path, r: random.Random):
        run_options_case(_fresh(tmp_path), r)

    @_settings
    @given(st.randoms(use_true_random=False))
    def test_hypothesis_corrupt_images(tmp_path: Path, r: random.Random):
        run_corrupt_images_case(_fresh(tmp_path), r, n=4)

    @_settings
    @given(st.randoms(use_true_random=False))
    def test_hypothesis_corrupt_model(tmp_path: Path, r: random.Random):
        run_corrupt_model_case(_fresh(tmp_path), r)
