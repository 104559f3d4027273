"""`onnxcam explain/eval/review --ray` when they cannot run: one line on stderr and the
contract's exit code, before anything is written (and before Ray starts). These need no Ray (it is hidden where installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxcam.cli import cli

from .helpers import EXAMPLES, MOBILENET


def _explain(tmp_path: Path, *extra: str):
    return CliRunner().invoke(cli, ["explain", str(MOBILENET), str(EXAMPLES / "chelsea.png"), "-o", str(tmp_path / "out"),
                                    *extra])


def test_missing_ray_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = _explain(tmp_path, "--ray")
    assert res.exit_code == 1
    assert res.stderr.strip() == ("onnxcam: error: Ray Data is not installed (ray); install it with "
                                  "pip install 'onnxcam[ray]'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--actors", "2"], ["--address", "auto"], ["--format", "parquet"],
                                    ["--image-column", "jpg"]])
def test_ray_options_need_ray(tmp_path: Path, option: list[str]) -> None:
    res = _explain(tmp_path, *option)
    assert res.exit_code == 2
    assert res.stderr.strip() == f"onnxcam: error: {option[0]} needs --ray"


@pytest.mark.parametrize("argv, message", [
    (["explain", str(MOBILENET), str(EXAMPLES / "chelsea.png"), "--det-format", "yolov8"],
     "--det-format and --boxes-output apply to detection targets (det:...)"),
    (["eval", str(MOBILENET), str(EXAMPLES / "chelsea.png"), "--junit", "j.xml"],
     "--junit and --markdown write inside the output folder: give -o OUT"),
    (["review", str(MOBILENET), "--images", str(EXAMPLES / "chelsea.png"), "--require", "model[other].drop<=5"],
     "model[other]"),
    (["review", str(MOBILENET), "--images", str(EXAMPLES / "chelsea.png"), "--target", "top3"],
     "eval and review measure one map per image"),
])
def test_a_wrong_request_fails_before_ray_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                 message: str) -> None:
    import onnxcam.cli.on_ray as er

    monkeypatch.setattr(er, "_connect_quietly", lambda *a: pytest.fail("Ray must not start"))
    out = ["-o", str(tmp_path / "out")] if argv[0] != "eval" else []
    res = CliRunner().invoke(cli, [*argv, *out, "--ray"])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["eval", str(MOBILENET), str(EXAMPLES / "chelsea.png")],
                                  ["review", str(MOBILENET), "--images", str(EXAMPLES / "chelsea.png"), "-o", "x"]])
def test_eval_and_review_ray_options_need_ray(argv: list[str]) -> None:
    res = CliRunner().invoke(cli, [*argv, "--actors", "2"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "onnxcam: error: --actors needs --ray"
