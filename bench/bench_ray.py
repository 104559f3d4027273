"""Images per second: the local CLI against the CLI on Ray Data with 1 and 2 actors.

Generates N photos (default 1,000: flips, crops, rescalings and rotations of the photos and
composites in examples/, JPEG, 200-480 px a side) into bench/.cache/ray-images/, then runs, each as
its own process on this machine, timing the whole command (wall) and, for Ray, the explaining
part alone (`results.json` → `ray.seconds`: from the first read to the last written result, after
Ray has started):

  local      onnxcam explain MODEL DIR -o OUT                      (one process, all cores)
  ray-1      onnxcam explain MODEL DIR -o OUT --ray --actors 1     (a local Ray with all cores)
  ray-2      onnxcam explain MODEL DIR -o OUT --ray --actors 2
  ray-2-parquet   the same photos as one Parquet file (4 row groups), --format parquet
  local-b3   onnxcam explain MODEL DIR -o OUT --batch-size 3           (other batches than local's 8)

and checks that every other run gives the local run's targets and heatmaps (max abs difference):
Ray's blocks batch the photos as they come, and local-b3 batches them differently on purpose, so
an explanation that depended on its batch would show here.
Results: a table on stdout and bench/ray.json (with the machine's CPUs and its load meanwhile,
since other processes on a shared machine slow every row).

    python bench/bench_ray.py [--images 1000] [--runs local ray-1 ray-2 ray-2-parquet local-b3] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
CACHE = HERE / ".cache"
RESULTS = HERE / "ray.json"


def make_images(dst: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEG photos from examples/ (3 photos + 40 composites), each a random flip, crop, scale and
    quarter turn of one of them; reused when already there."""
    done = sorted(dst.glob("*.jpg")) if dst.is_dir() else []
    if len(done) == n:
        return done
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    photos = [ROOT / "examples" / f for f in ("chelsea.png", "coffee.png", "astronaut.png")]
    photos += sorted((ROOT / "examples" / "composites").glob("comp_*.jpg"))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = cv2.imread(str(photos[k % len(photos)]), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        fy, fx = rng.uniform(0.6, 1.0, 2)
        y0, x0 = int(rng.uniform(0, 1 - fy) * h), int(rng.uniform(0, 1 - fx) * w)
        img = img[y0 : y0 + int(fy * h), x0 : x0 + int(fx * w)]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.rot90(img, int(rng.integers(0, 4)))
        side = int(rng.integers(200, 481))
        s = side / max(img.shape[:2])
        img = cv2.resize(np.ascontiguousarray(img), (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))))
        path = dst / f"{k:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(path)
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def busy_cpus() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat (steal counted as busy)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def write_parquet(images: Path, path: Path) -> None:
    """The photos as one Parquet file: columns `name` and `jpg` (the file bytes), 4 row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(images.glob("*.jpg"))
    table = pa.table({"name": [f.name for f in files], "jpg": pa.array([f.read_bytes() for f in files], pa.binary())})
    pq.write_table(table, path, row_group_size=-(-len(files) // 4))


def run(name: str, python: str, images: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    source = images
    if name.endswith("-parquet"):
        source = images.with_suffix(".parquet")
        write_parquet(images, source)
    cmd = [python, "-c", "from onnxcam.cli import main; main()", "explain", str(MODEL), str(source), "-o", str(out)]
    if name.startswith("ray-"):
        cmd += ["--ray", "--actors", name.split("-")[1]]
    if name.endswith("-parquet"):
        cmd += ["--format", "parquet"]
    if name.startswith("local-b"):
        cmd += ["--batch-size", name.removeprefix("local-b")]
    b0, t0 = busy_cpus()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    b1, t1 = busy_cpus()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads((out / "results.json").read_text())
    n = len(report["images"])
    row = {"run": name, "images": n, "errors": len(report["errors"]), "wall_s": round(wall, 1),
           "images_per_s_wall": round(n / wall, 2), "cpu_busy": round((b1 - b0) / max(1, t1 - t0) * cpu_count(), 2)}
    if "ray" in report:
        ray = report["ray"]
        row.update(actors=ray["actors"], cpus_per_actor=ray["cpus_per_actor"], threads=ray["threads"],
                   explain_s=round(ray["seconds"], 1), images_per_s=round(n / ray["seconds"], 2),
                   images_per_s_per_actor=round(n / ray["seconds"] / ray["actors"], 2))
    else:
        row.update(explain_s=round(wall, 1), images_per_s=round(n / wall, 2))
    return row


def _maps(out: Path) -> dict[str, tuple[int, np.ndarray]]:
    """(target, heatmap) per photo file name, from files or from Parquet parts (row i = i-th photo)."""
    report = json.loads((out / "results.json").read_text())
    if report.get("ray", {}).get("format") != "parquet":
        return {Path(r["image"]).name: (r["target"], np.load(r["heatmap"])) for r in report["images"]}
    import pyarrow.parquet as pq

    names = sorted(f.name for f in Path(report["images"][0]["image"].rpartition("#")[0]).with_suffix("").glob("*.jpg"))
    got = {}
    for part in sorted((out / "explanations").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            heat = np.asarray(row["heatmap"], np.float32).reshape(row["heatmap_height"], row["heatmap_width"])
            got[names[int(row["image"].rpartition("#")[2])]] = (row["target"], heat)
    return got


def compare(a: Path, b: Path) -> dict:
    """Targets and heatmaps of run b against run a, matched by photo."""
    ra, rb = _maps(a), _maps(b)
    assert ra.keys() == rb.keys(), "the runs explained different images"
    worst, same = 0.0, 0
    for k, (target, heat) in ra.items():
        same += target == rb[k][0]
        worst = max(worst, float(np.abs(heat - rb[k][1]).max()))
    return {"same_targets": same, "of": len(ra), "max_abs_heatmap_diff": worst}


def out_dir(name: str) -> Path:
    return CACHE / f"ray-out-{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--runs", nargs="+", default=["local", "ray-1", "ray-2", "ray-2-parquet", "local-b3"])
    ap.add_argument("--python", default=sys.executable, help="interpreter with onnxcam's dependencies and ray[data]")
    args = ap.parse_args()
    images = CACHE / f"ray-images-{args.images}"
    make_images(images, args.images)
    previous = {r["run"]: r for r in json.loads(RESULTS.read_text())["rows"]} if RESULTS.is_file() else {}
    rows = []
    for name in args.runs:
        rows.append(run(name, args.python, images, out_dir(name)))
        print(json.dumps(rows[-1]), flush=True)
    merged = {**previous, **{r["run"]: r for r in rows}}  # rows of earlier invocations kept (e.g. --runs ray-2-parquet)
    rows = list(merged.values())
    checks = {r["run"]: compare(out_dir("local"), out_dir(r["run"])) for r in rows
              if r["run"] != "local" and (out_dir("local") / "results.json").is_file()
              and (out_dir(r["run"]) / "results.json").is_file()}
    result = {"machine": {"cpus": cpu_count(), "loadavg_after": os.getloadavg()}, "model": MODEL.name,
              "rows": rows, "ray_vs_local": checks}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'run':<8} {'images/s':>9} {'per actor':>9} {'wall s':>7} {'cpu busy':>8}")
    for r in rows:
        print(f"{r['run']:<8} {r['images_per_s']:>9} {r.get('images_per_s_per_actor', '-'):>9} {r['wall_s']:>7} {r['cpu_busy']:>8}")
    for name, c in checks.items():
        print(f"{name}: {c['same_targets']}/{c['of']} same targets, max |heatmap diff| {c['max_abs_heatmap_diff']:.2e}")


if __name__ == "__main__":
    main()
