"""Packaging: the dependency floor past the onnx external-data CVEs, an explicit onnxruntime
choice (extras) with a broken mix refused, no setuptools deprecation, `make demo` on the photos
the ImageNet model fits."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxcam.errors import OnnxcamError
from onnxcam.runtime import RUNTIME_DISTRIBUTIONS, check_install, install_problem, installed_runtimes

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(reqs: list[str], name: str) -> tuple[int, ...] | None:
    for r in reqs:
        m = re.fullmatch(rf"{re.escape(name)}\s*>=\s*([\d.]+)(;.*)?", r.strip())
        if m:
            return tuple(int(v) for v in m.group(1).split("."))
    return None


def test_onnx_floor_is_past_the_external_data_cves(project: dict):
    deps = project["project"]["dependencies"]
    assert _floor(deps, "onnx") >= (1, 21)  # CVE-2024-27318/27319 (1.16), CVE-2026-27489/34445 (1.21)


def test_onnxruntime_is_an_explicit_choice(project: dict):
    deps = project["project"]["dependencies"]
    assert not any(d.startswith("onnxruntime") for d in deps), deps
    extras = project["project"]["optional-dependencies"]
    assert _floor(extras["cpu"], "onnxruntime") and _floor(extras["gpu"], "onnxruntime-gpu")
    assert any(r.startswith("hypothesis") for r in extras["test"])


def test_license_is_an_spdx_string(project: dict):
    """A TOML table makes setuptools ≥ 77 print a deprecation on every install."""
    assert project["project"]["license"] == "MIT"
    assert any(re.fullmatch(r"setuptools\s*>=\s*(\d+)", r) and int(r.split(">=")[1]) >= 77
               for r in project["build-system"]["requires"])


def test_a_mix_of_onnxruntime_distributions_is_refused_with_the_fix():
    assert install_problem(["onnxruntime==1.31.1"]) is None
    assert install_problem(["onnxruntime-gpu==1.31.1"]) is None
    msg = install_problem(["onnxruntime==1.31.1", "onnxruntime-gpu==1.31.1"])
    assert msg is not None and "installed together" in msg
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg and "onnxcam[cpu]" in msg
    found = installed_runtimes()
    assert len(found) == 1 and found[0].split("==")[0] in RUNTIME_DISTRIBUTIONS  # this environment is not broken
    check_install()


def test_check_install_raises_on_a_mix(monkeypatch: pytest.MonkeyPatch):
    import onnxcam.runtime as runtime

    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["onnxruntime==1.31.1", "onnxruntime-gpu==1.31.1"])
    runtime.check_install.cache_clear()
    try:
        with pytest.raises(OnnxcamError, match="installed together"):
            runtime.check_install()
    finally:
        runtime.check_install.cache_clear()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_explains_only_the_imagenet_photos():
    out = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if " explain " in l)
    assert "examples/ocr" not in line and "examples/spurious" not in line and "examples/composites" not in line
    assert "examples/*.png" in line or "examples/chelsea.png" in line
