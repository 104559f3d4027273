"""`onnxcam explain --ray` when it cannot run: one line on stderr and the contract's exit code,
before anything is written. These need no Ray (it is hidden where installed)."""

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


def test_topk_is_refused_on_ray_before_starting_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcam.cli.on_ray as er

    monkeypatch.setattr(er, "_connect_quietly", lambda *a: pytest.fail("Ray must not start"))
    res = _explain(tmp_path, "--ray", "--target", "top3")
    assert res.exit_code == 2
    assert "--target topK gives several maps per image; with --ray explain one target per image" in res.stderr


def test_eval_ray_options_need_ray() -> None:
    res = CliRunner().invoke(cli, ["eval", str(MOBILENET), str(EXAMPLES / "chelsea.png"), "--actors", "2"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "onnxcam: error: --actors needs --ray"
