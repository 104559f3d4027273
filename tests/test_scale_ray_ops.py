"""`review --ray`, `eval --ray` with --junit/--markdown/-o and `explain --ray --target topK` give
what the same commands give without --ray: the same review.json / report (numbers within float
tolerance: onnxruntime's float32 kernels are not batch-invariant), the same files, the same exit
codes (3 when a gate fails, 1 on an unreadable image).

The --ray commands run in a child process (tests/scale_scenarios_ops.py) as clients of one local
Ray (2 CPUs, no dashboard, small object store, always shut down); the child is killed with its
process group when it outlives SCENARIO_TIMEOUT, so a hang fails instead of blocking CI. The
references are the local commands, run here with CliRunner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")
pytest.importorskip("pyarrow", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")

from click.testing import CliRunner  # noqa: E402

from onnxcam.cli import cli  # noqa: E402

from .helpers import run_scenarios  # noqa: E402
from .scale_scenarios import CORRUPT  # noqa: E402
from .scale_scenarios_ops import eval_args, review_args, review_errors_args, topk_args  # noqa: E402

pytestmark = pytest.mark.ray

SCENARIO_TIMEOUT = 480  # seconds; the scenarios take ~2 minutes on 2 busy cores
HEATMAP_TOL = 2e-6  # as tests/test_scale_ray.py: actors batch images differently from the local run
METRIC_TOL = {"rel": 1e-4, "abs": 1e-5}  # numbers derived from maps and masked scores (float32 runs)


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data, out = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("ray_ops")
    run_scenarios("tests.scale_scenarios_ops", data, out, SCENARIO_TIMEOUT)
    return data, out


def ray_run(out: Path, name: str) -> dict[str, Any]:
    status = json.loads((out / "status.json").read_text())
    assert status.get(name, "").startswith("ok"), status.get(name, "scenario did not run")
    return json.loads((out / f"{name}.json").read_text())


def local(argv: list[str]) -> Any:
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def close(a: Any, b: Any, where: str = "") -> None:
    """Same JSON structure and values; floats within METRIC_TOL."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in b:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and not isinstance(a, bool):
        assert a == pytest.approx(b, **METRIC_TOL), where
    else:
        assert a == b, (where, a, b)


def _no_timestamp(xml: str) -> str:
    return re.sub(r' timestamp="[^"]*"', "", xml)


def test_review_on_ray_writes_the_local_review(ray_runs, tmp_path: Path) -> None:
    _, out = ray_runs
    run = ray_run(out, "review")
    ref = local(review_args(tmp_path / "local"))
    assert (run["rc"], ref.exit_code) == (3, 3), run["stderr"]  # the biased model fails its gate
    failed = [line for line in run["stderr"].splitlines() if "gate failed" in line]
    assert failed == [line for line in ref.stderr.splitlines() if "gate failed" in line] and len(failed) == 1
    ray_dir, local_dir = out / "review_out", tmp_path / "local"
    got, want = (json.loads((d / "review.json").read_text()) for d in (ray_dir, local_dir))
    assert got["order"] == want["order"] and len(want["images"]) == 20  # the same disagreement ranking
    assert got["gates"]["passed"] is False and [g["passed"] for g in got["gates"]["conditions"]] == [False, True]
    close(got, want)  # every key and value: per-model metrics, pairs, per-image records, drift, gates
    assert want["drift"] and want["models"][0]["metrics"]["energy_in_forbidden"] > 0.05
    # the same files; the page and the CI files as the local run writes them
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(ray_dir) == files(local_dir)
    assert len([f for f in files(ray_dir) if f.startswith("ci/thumbs/")]) == 10
    for f in files(local_dir):
        if f.startswith("ci/thumbs/"):  # the thumbnails' maps are made on the driver as locally
            assert (ray_dir / f).read_bytes() == (local_dir / f).read_bytes(), f
    assert (ray_dir / "ci" / "summary.md").read_text() == (local_dir / "ci" / "summary.md").read_text()
    assert _no_timestamp((ray_dir / "gates.xml").read_text()) == _no_timestamp((local_dir / "gates.xml").read_text())
    page, ref_page = ((d / "index.html").read_text() for d in (ray_dir, local_dir))
    img = r'<img alt="([^"]*)"'
    assert re.findall(img, page) == re.findall(img, ref_page) and len(re.findall(img, page)) == 20 * 3


def test_review_on_ray_lists_an_unreadable_image_and_exits_1(ray_runs, tmp_path: Path) -> None:
    data, out = ray_runs
    run = ray_run(out, "review_errors")
    ref = local(review_errors_args(data, tmp_path / "local"))
    assert (run["rc"], ref.exit_code) == (1, 1)
    got, want = (json.loads((d / "review.json").read_text()) for d in (out / "review_errors_out", tmp_path / "local"))
    assert got["errors"] == want["errors"] == [
        {"image": str(data / CORRUPT), "error": f"cannot decode image: {data / CORRUPT}"}]
    assert f"onnxcam: error: cannot decode image: {data / CORRUPT}" in run["stderr"].splitlines()
    assert len(want["images"]) == 12
    close(got, want)


def test_eval_on_ray_writes_the_ci_files_of_the_local_eval(ray_runs, tmp_path: Path) -> None:
    _, out = ray_runs
    run = ray_run(out, "eval_ci")
    ref = local(eval_args(tmp_path / "local"))
    assert (run["rc"], ref.exit_code) == (3, 3), run["stderr"]
    close(json.loads(run["stdout"]), json.loads(ref.stdout))
    ray_dir, local_dir = out / "eval_ci_out", tmp_path / "local"
    names = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(ray_dir).as_posix() for p in ray_dir.rglob("*") if p.is_file())
    assert "summary.md" in names and "gates.xml" in names and any(n.startswith("thumbs/") for n in names)
    for n in names:
        a, b = (ray_dir / n).read_bytes(), (local_dir / n).read_bytes()
        assert (_no_timestamp(a.decode()) == _no_timestamp(b.decode())) if n == "gates.xml" else a == b, n


def _topk_records(report: dict, root: Path) -> list[tuple]:
    return [(r["image"], r["target"], r["label"], Path(r["overlay"]).relative_to(root).as_posix(),
             Path(r["heatmap"]).relative_to(root).as_posix()) for r in report["images"]]


def test_topk_on_ray_writes_one_map_per_target_as_the_local_run(ray_runs, tmp_path: Path) -> None:
    data, out = ray_runs
    run = ray_run(out, "topk")
    assert run["rc"] == 0, run["stderr"]
    ref = local(topk_args(data, tmp_path / "local"))
    assert ref.exit_code == 0
    got, want = (json.loads((d / "results.json").read_text()) for d in (out / "topk_out", tmp_path / "local"))
    assert len(want["images"]) == 12 * 3
    assert _topk_records(got, out / "topk_out") == _topk_records(want, tmp_path / "local")
    assert {Path(r["overlay"]).name.split(".")[1] for r in got["images"]} == {"top1", "top2", "top3"}
    for a, b in zip(got["images"], want["images"]):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5) and a["target_spec"] == b["target_spec"] == "top3"
        assert float(np.abs(np.load(a["heatmap"]) - np.load(b["heatmap"])).max()) <= HEATMAP_TOL, a["heatmap"]
    for key in ("model", "method", "layer", "output", "errors"):
        assert got[key] == want[key], key


def test_topk_on_ray_as_parquet_has_one_row_per_image_and_target(ray_runs, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    data, out = ray_runs
    run = ray_run(out, "topk_parquet")
    assert run["rc"] == 0, run["stderr"]
    local(topk_args(data, tmp_path / "local"))
    want = json.loads((tmp_path / "local" / "results.json").read_text())
    got = json.loads((out / "topk_parquet_out" / "results.json").read_text())
    table = pq.read_table(out / "topk_parquet_out" / "explanations" / "part-00000.parquet").to_pylist()
    assert len(table) == len(got["images"]) == len(want["images"]) == 12 * 3
    for row, rec, ref in zip(table, got["images"], want["images"]):
        stem = Path(ref["overlay"]).relative_to(tmp_path / "local").as_posix().removesuffix(".overlay.png")
        assert (row["image"], row["name"], row["target"]) == (ref["image"], stem, ref["target"])
        assert row["rank"] == int(stem.rsplit(".top", 1)[1]) and rec["name"] == stem
        heat = np.asarray(row["heatmap"], np.float32).reshape(row["heatmap_height"], row["heatmap_width"])
        assert float(np.abs(heat - np.load(ref["heatmap"])).max()) <= HEATMAP_TOL
