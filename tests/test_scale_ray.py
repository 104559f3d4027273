"""Explaining on Ray Data gives what the local path gives: same targets, same scores, heatmaps
within 1e-7 (float32; 1e-3 as float16), with failures listed and nothing else lost.

Ray runs in a child process (tests/scale_scenarios.py): one local Ray with 2 CPUs, no dashboard
and a small object store, always shut down; the child is killed with its process group when it
outlives SCENARIO_TIMEOUT, so a hang (e.g. actors starving the read tasks) fails the tests instead
of blocking CI. The reference is the local path in this process: `load_image` → `preprocess` →
`Explainer.explain`, one image at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")
pytest.importorskip("pyarrow", reason="the ray extra is not installed (pip install 'onnxcam[ray]')")

from onnxcam import Explainer, load_image, preprocess  # noqa: E402
from onnxcam.resume import JOURNAL  # noqa: E402

from .helpers import run_scenarios  # noqa: E402
from .scale_scenarios import CORRUPT, MODEL, make_images  # noqa: E402

pytestmark = pytest.mark.ray

SCENARIO_TIMEOUT = 480  # seconds; all scenarios take ~3 minutes on 2 busy cores
# Ray's actors batch images differently from the local run (one image at a time here); an image's
# heatmap does not depend on its batch (tests/test_batch_invariance.py: bit-identical, since the
# in-graph channel sums are one MatMul per image, graph/channel_sum.py), so the maps agree to the
# last bit (all 10 Ray tests pass with a tolerance of 0.0); 1e-7 leaves one float32 ulp near 1.
# Targets must agree exactly, scores to 1e-5.
HEATMAP_TOL = 1e-7


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    data, out = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("ray_out")
    images = make_images(data)
    run_scenarios("tests.scale_scenarios", data, out, SCENARIO_TIMEOUT)
    return data, out, images


@pytest.fixture(scope="module")
def local() -> "callable":
    ex = Explainer(MODEL)
    cache: dict[str, tuple[int, float, np.ndarray]] = {}

    def reference(path: str | Path) -> tuple[int, float, np.ndarray]:
        key = str(path)
        if key not in cache:
            res = ex.explain(preprocess([load_image(path)], (224, 224)))
            t = int(res.targets[0])
            cache[key] = (t, float(res.outputs[0, t]), res.heatmaps[0])
        return cache[key]

    return reference


def load(out: Path, name: str) -> tuple[list[dict], list[np.ndarray], dict]:
    status = json.loads((out / "status.json").read_text())
    assert status.get(name, "").startswith("ok"), status.get(name, "scenario did not run")
    meta = json.loads((out / f"{name}.json").read_text())
    with np.load(out / f"{name}.npz") as z:
        maps = [z[f"arr_{i}"] for i in range(len(meta["rows"]))]
    return meta.pop("rows"), maps, meta


def check_rows(rows: list[dict], maps: list[np.ndarray], files: list[str | Path], local, tol: float = HEATMAP_TOL) -> None:
    assert len(rows) == len(files)
    for row, heat, f in zip(rows, maps, files):
        target, score, ref = local(f)
        assert row["error"] == "", row
        assert row["target"] == target, (row["path"], row["target"], target)
        assert row["score"] == pytest.approx(score, rel=1e-5)
        assert heat.shape == ref.shape == (224, 224)
        assert float(np.abs(heat.astype(np.float32) - ref).max()) <= tol, row["path"]


def test_folder_on_two_actors_matches_local_and_lists_the_corrupt_image(scenarios, local) -> None:
    data, out, images = scenarios
    rows, maps, meta = load(out, "folder")
    assert meta["plan"]["actors"] == 2 and meta["plan"]["cpus_per_actor"] == 0.5  # not 2 × 1 CPU: that hangs
    bad = [r for r in rows if r["error"]]
    assert [r["path"] for r in bad] == [str(data / CORRUPT)]
    assert bad[0]["error"] == f"cannot decode image: {data / CORRUPT}" and bad[0]["target"] == -1
    assert np.isnan(maps[rows.index(bad[0])]).all()  # never a map that could pass for one
    good = [(r, m) for r, m in zip(rows, maps) if not r["error"]]
    assert [r["path"] for r, _ in good] == [str(p) for p in images]  # the local listing order
    check_rows([r for r, _ in good], [m for _, m in good], images, local)
    assert all(r["overlay_bytes"] > 1000 for r, _ in good)
    assert {r["label"] for r, _ in good} >= {"Egyptian cat", "espresso"}


def test_parquet_struct_and_binary_columns(scenarios, local) -> None:
    _, out, _ = scenarios
    rows, maps, meta = load(out, "parquet")
    files = meta["files"]
    want = [f"{out / 'hf.parquet'}#{i}" for i in range(len(files))] + [f"{out / 'plain.parquet'}#{i}" for i in range(len(files))]
    assert [r["path"] for r in rows] == want
    check_rows(rows, maps, files + files[::-1], local)


def test_webdataset_shards_float16(scenarios, local) -> None:
    _, out, _ = scenarios
    rows, maps, meta = load(out, "webdataset")
    assert [r["path"] for r in rows] == [f"{out / 'shard-000.tar'}#s{i:04d}" for i in range(len(meta["files"]))]
    assert all(m.dtype == np.float16 for m in maps)
    check_rows(rows, maps, meta["files"], local, tol=1e-3)  # float16: 2^-11 resolution near 1


def test_s3_compatible_endpoint(scenarios, local) -> None:
    _, out, _ = scenarios
    if "skipped" in json.loads((out / "s3.json").read_text()):
        pytest.skip(json.loads((out / "s3.json").read_text())["skipped"])
    rows, maps, meta = load(out, "s3")
    files = [Path(f) for f in meta["files"]]
    assert [r["path"] for r in rows] == [f"s3://onnxcam-test/imgs/{f.name}" for f in files] + [
        f"s3://onnxcam-test/tables/part-0.parquet#{i}" for i in range(3)]
    check_rows(rows, maps, files + files[:3], local)


def test_a_crashed_worker_loses_nothing(scenarios, local) -> None:
    _, out, _ = scenarios
    rows, maps, meta = load(out, "crash")
    assert meta["crashed"] is True  # the worker really died once
    check_rows(rows, maps, meta["files"], local)


# -- the command line: `explain --ray` against `explain` ------------------------------------------
def _cli_run(out: Path, name: str) -> dict:
    status = json.loads((out / "status.json").read_text())
    assert status.get(name.split("_rerun")[0], "").startswith("ok"), status
    return json.loads((out / f"{name}.json").read_text())


def _relative(report: dict, out: Path) -> list[tuple]:
    return [(r["image"], r["target"], r["label"], Path(r["overlay"]).relative_to(out).as_posix(),
             Path(r["heatmap"]).relative_to(out).as_posix()) for r in report["images"]]


def test_cli_ray_writes_what_the_local_cli_writes(scenarios, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from onnxcam.cli import cli

    data, out, images = scenarios
    run = _cli_run(out, "cli")
    local_out = tmp_path / "local"
    local = CliRunner().invoke(cli, ["explain", str(MODEL), str(data), "-o", str(local_out)])
    assert (run["rc"], local.exit_code) == (1, 1)  # the corrupt image makes both exit 1
    assert f"onnxcam: error: cannot decode image: {data / CORRUPT}" in run["stderr"].splitlines()
    ray_report = json.loads((out / "cli_out" / "results.json").read_text())
    local_report = json.loads((local_out / "results.json").read_text())
    assert ray_report["errors"] == local_report["errors"] == [
        {"image": str(data / CORRUPT), "error": f"cannot decode image: {data / CORRUPT}"}]
    for key in ("model", "model_sha256", "method", "layer", "output", "provider", "preset", "input_size", "letterbox"):
        assert ray_report[key] == local_report[key], key
    # same images in the same order, same targets and labels, same file names (mirroring more/)
    assert _relative(ray_report, out / "cli_out") == _relative(local_report, local_out)
    assert any("/" in r[3] for r in _relative(ray_report, out / "cli_out"))
    for a, b in zip(ray_report["images"], local_report["images"]):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
        assert [t["class"] for t in a["top5"]] == [t["class"] for t in b["top5"]]
        diff = np.abs(np.load(a["heatmap"]) - np.load(b["heatmap"])).max()
        assert diff <= HEATMAP_TOL, (a["image"], diff)
    assert ray_report["ray"]["actors"] == 2
    assert f"explained {len(images)} map(s) with gradcam" in run["stderr"]  # (the rerun rewrote results.json)


def test_cli_rerun_keeps_what_out_has(scenarios) -> None:
    _, out, images = scenarios
    run = _cli_run(out, "cli_rerun")
    assert run["rc"] == 1  # the corrupt image is tried again, and fails again
    assert "explained 0 map(s)" in run["stderr"] and f"{len(images)} kept from an earlier run" in run["stderr"]
    mtimes = json.loads((out / "cli_mtimes.json").read_text())
    assert mtimes["before"] == mtimes["after"] and len(mtimes["before"]) == len(images)  # nothing rewritten
    report = json.loads((out / "cli_out" / "results.json").read_text())
    assert [r["image"] for r in report["images"]] == [str(p) for p in images]
    assert not (out / "cli_out" / JOURNAL).exists()  # the journal goes once results.json is written


def test_cli_parquet_format_on_an_unseen_parquet_dataset(scenarios, local) -> None:
    import pyarrow.parquet as pq

    _, out, _ = scenarios
    run = _cli_run(out, "cli_parquet")
    assert run["rc"] == 0, run["stderr"]
    files = json.loads((out / "cli_parquet_files.json").read_text())
    report = json.loads((out / "cli_parquet_out" / "results.json").read_text())
    source = out / "unseen.parquet"
    assert [r["image"] for r in report["images"]] == [f"{source}#{i}" for i in range(len(files))]
    assert [r["name"] for r in report["images"]] == [f"unseen.parquet/{i}" for i in range(len(files))]
    table = pq.read_table(out / "cli_parquet_out" / "explanations" / "part-00000.parquet").to_pylist()
    assert [t["image"] for t in table] == [r["image"] for r in report["images"]]
    for row, f in zip(table, files):
        target, score, ref = local(f)
        assert (row["target"], row["heatmap_height"], row["heatmap_width"]) == (target, 224, 224)
        assert row["score"] == pytest.approx(score, rel=1e-5)
        heat = np.asarray(row["heatmap"], np.float32).reshape(224, 224)
        assert float(np.abs(heat - ref).max()) <= HEATMAP_TOL
        assert row["overlay"][:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_on_ray_reports_what_local_eval_reports(scenarios) -> None:
    from click.testing import CliRunner

    from onnxcam.cli import cli

    from .scale_scenarios import EVAL_ARGS, write_boxes

    data, out, _ = scenarios
    run = _cli_run(out, "cli_eval")
    assert run["rc"] == 0, run["stderr"]
    local = CliRunner().invoke(cli, ["eval", str(MODEL), str(data / "more"), "--boxes", str(write_boxes(data)), *EVAL_ARGS])
    assert local.exit_code == 0, local.stderr
    ray_report, local_report = json.loads(run["stdout"]), json.loads(local.stdout)
    assert ray_report["model"] == local_report["model"]
    assert [r["image"] for r in ray_report["images"]] == [r["image"] for r in local_report["images"]]
    assert ray_report["metrics"]["images_with_boxes"] == local_report["metrics"]["images_with_boxes"] == 2
    for a, b in zip(ray_report["images"], local_report["images"]):
        assert a.keys() == b.keys()
        assert a["target"] == b["target"] and a.get("pointing_hit") == b.get("pointing_hit")
        assert a["cam_box"] == b["cam_box"]
        for k in ("probability", "drop", "deletion_auc", "insertion_auc", "energy", "localisation_iou"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["image"], k)
    for k, v in local_report["metrics"].items():  # averaged across the two workers: the same numbers
        assert ray_report["metrics"][k] == (pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(v, float) else v), k


def test_an_image_that_kills_its_worker_is_listed_and_everything_else_written(scenarios, local, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from onnxcam.cli import cli

    _, out, _ = scenarios
    status = json.loads((out / "status.json").read_text())
    assert status.get("poison", "").startswith("ok"), status.get("poison")
    got = json.loads((out / "poison.json").read_text())
    report, files = got["report"], got["files"]
    killer = next(f for f in files if "crafted" in f)
    # the killer is a failure with its source and the reason, one line (stderr in the command)
    assert [e["image"] for e in report["errors"]] == [killer]
    message = report["errors"][0]["error"]
    assert message.startswith(f"{killer}: the worker process died while explaining this image (2 times, alone; ")
    assert message.endswith("; no map written") and "\n" not in message
    assert got["lines"] == [message]
    on_disk = json.loads((out / "poison_out" / "results.json").read_text())
    assert on_disk["errors"] == report["errors"] and not (out / "poison_out" / JOURNAL).exists()
    # everything else is written, as the local command writes it
    assert [r["image"] for r in report["images"]] == [f for f in files if f != killer]
    local_out = tmp_path / "local"
    run = CliRunner().invoke(cli, ["explain", str(MODEL), *files, "-o", str(local_out)])
    assert run.exit_code == 1  # there, the crafted file is an undecodable image
    local_report = json.loads((local_out / "results.json").read_text())
    assert _relative(report, out / "poison_out") == _relative(local_report, local_out)
    for rec in report["images"]:
        target, _, ref = local(rec["image"])
        assert rec["target"] == target
        assert float(np.abs(np.load(rec["heatmap"]) - ref).max()) <= HEATMAP_TOL


def test_an_interrupted_ray_run_is_finished_by_the_local_command(scenarios, local) -> None:
    from click.testing import CliRunner

    from onnxcam.cli import cli

    _, out, _ = scenarios
    status = json.loads((out / "status.json").read_text())
    assert status.get("interrupted", "").startswith("ok"), status.get("interrupted")
    got = json.loads((out / "interrupted.json").read_text())
    files, dest = got["files"], out / "interrupted_out"
    stopped, refused = got["messages"]
    assert stopped.startswith("Ray gave up the job: ") and "\n" not in stopped
    assert stopped.endswith(f"kept in {dest / JOURNAL}: run the same command again to resume")
    # the same journal, another command (--format parquet on Ray, another method locally): refused in one line
    assert refused == (f"{dest / JOURNAL}: the folder holds an unfinished run of another command (explain --ray), "
                       "or of other options; rerun that command to finish it, or pass --overwrite to start over")
    other = CliRunner().invoke(cli, ["explain", str(MODEL), *files, "-o", str(dest), "--method", "hirescam"])
    assert other.exit_code == 1 and other.stderr == f"onnxcam: error: {refused}\n"
    journaled = [json.loads(line)["image"] for line in got["journal"][1:]]
    assert journaled and set(journaled) < set(files)  # the run stopped part-way
    # the local command finishes the Ray run: journaled images are kept (files untouched), the rest explained
    run = CliRunner().invoke(cli, ["explain", str(MODEL), *files, "-o", str(dest)])
    assert run.exit_code == 1, run.stderr  # the crafted file cannot be decoded
    report = json.loads((dest / "results.json").read_text())
    crafted = next(f for f in files if "crafted" in f)
    assert report["errors"] == [{"image": crafted, "error": f"cannot decode image: {crafted}"}]
    assert [r["image"] for r in report["images"]] == [f for f in files if f != crafted]
    assert not (dest / JOURNAL).exists()
    kept = {Path(f).stem + ".heatmap.npy" for f in journaled}
    assert kept == set(got["mtimes"])
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy") if p.name in kept} == got["mtimes"]
    for rec in report["images"]:
        target, _, ref = local(rec["image"])
        assert rec["target"] == target
        assert float(np.abs(np.load(rec["heatmap"]) - ref).max()) <= HEATMAP_TOL


def test_an_interrupted_local_run_is_finished_on_ray(scenarios, local) -> None:
    _, out, _ = scenarios
    status = json.loads((out / "status.json").read_text())
    assert status.get("local_then_ray", "").startswith("ok"), status.get("local_then_ray")
    got = json.loads((out / "local_then_ray.json").read_text())
    files, report = got["files"], got["report"]
    assert got["local"]["rc"] == 1 and got["local"]["stderr"].count("\n") == 1  # stopped by EFBIG, one line
    journaled = [json.loads(line)["image"] for line in got["journal"][1:]]
    assert journaled and set(journaled) < set(files)
    assert (report["ray"]["kept"], report["ray"]["explained"]) == (len(journaled), len(files) - len(journaled))
    assert report["errors"] == [] and [r["image"] for r in report["images"]] == files
    assert not got["journal_left"]
    kept = {Path(f).stem + ".heatmap.npy" for f in journaled}
    assert {k: v for k, v in got["after"].items() if k in kept} == {k: got["before"][k] for k in kept}  # not redone
    for rec in report["images"]:
        target, _, ref = local(rec["image"])
        assert rec["target"] == target
        assert float(np.abs(np.load(rec["heatmap"]) - ref).max()) <= HEATMAP_TOL
