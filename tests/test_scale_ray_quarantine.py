"""`eval --ray` survives an image that kills its worker: Ray Data gives up its pass, the
quarantine (`onnxcam.scale.quarantine`, through `onnxcam.scale.records.gather`) finds the image,
lists it as an error with its path, and the report on the other images is the local eval's.

The Ray run is a child process (tests/scale_scenarios_quarantine.py: one local Ray, 2 CPUs, always
shut down), killed with its process group after SCENARIO_TIMEOUT, so a hang fails instead of
blocking CI. The reference is the local command, run here with CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")
pytest.importorskip("pyarrow", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")

from click.testing import CliRunner  # noqa: E402

from onnxcam.cli import cli  # noqa: E402

from .helpers import run_scenarios  # noqa: E402
from .scale_scenarios import MODEL  # noqa: E402
from .scale_scenarios_quarantine import KILLER_NAME, STEPS  # noqa: E402
from .test_scale_ray_ops import close  # noqa: E402

pytestmark = pytest.mark.ray

SCENARIO_TIMEOUT = 300  # seconds; the scenario takes about a minute on 2 busy cores


def test_eval_on_ray_lists_the_image_that_kills_its_worker(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir(), out.mkdir()
    log = run_scenarios("tests.scale_scenarios_quarantine", data, out, SCENARIO_TIMEOUT)
    status = json.loads((out / "status.json").read_text())
    assert status.get("eval_poison", "").startswith("ok"), (status, log[-3000:])
    run = json.loads((out / "eval_poison.json").read_text())
    got, folder = run["report"], data / "poison"
    killer = str(folder / KILLER_NAME)
    # the killer: one error with its source and the reason, reported once
    assert [e["image"] for e in got["errors"]] == [killer]
    message = got["errors"][0]["error"]
    assert message.startswith(f"{killer}: the worker process died while evaluating this image (2 times, alone; ")
    assert run["lines"] == [message]
    # everything else: the local eval's report (whose error for the crafted file is its decoder's)
    ref = CliRunner().invoke(cli, ["eval", str(MODEL), str(folder), "--steps", str(STEPS), "--json"],
                             catch_exceptions=False)
    assert ref.exit_code == 1  # the crafted file is an error locally too
    want = json.loads(ref.stdout)
    assert [e["image"] for e in want["errors"]] == [killer] and len(want["images"]) == 4
    close({**got, "errors": []}, {**want, "errors": []})
