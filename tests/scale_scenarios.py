"""Ray scenarios for tests/test_scale_ray.py, run in a child process under a hard timeout.

`python -m tests.scale_scenarios DATA OUT` starts one local Ray (2 CPUs, no dashboard, a small
object store), runs every scenario on the images `make_images` wrote into DATA, saves each
scenario's rows to OUT/<name>.json + OUT/<name>.npz, and always shuts Ray down. The test module
runs it once, kills its process group if it outlives the timeout (a hang fails instead of
blocking), and compares the rows with the local path. Nothing here asserts; the tests do.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from onnxcam.scale import ExplainBatches

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
CORRUPT = "img_11_corrupt.jpg"
BUCKET = "onnxcam-test"


# -- test images (also used by the tests for the local references) ---------------------------------
def _variants(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    return [rgb, rgb[:, ::-1], rgb[h // 10 : h - h // 10, w // 8 : w - w // 8], rgb[::-1, :]]


def make_images(dst: Path, n: int = 24) -> list[Path]:
    """`n` photos made from examples/ (flips and crops of the photos and composites), PNG and JPEG,
    half of them in a subfolder, plus one corrupt file in the middle of the sorted order.
    Returns the good images in the order a local run lists the folder."""
    sources = [ROOT / "examples" / f for f in ("chelsea.png", "coffee.png", "astronaut.png")]
    sources += sorted((ROOT / "examples" / "composites").glob("comp_*.jpg"))[:3]
    made: list[Path] = []
    for k in range(n):
        bgr = cv2.imread(str(sources[k % len(sources)]), cv2.IMREAD_COLOR)
        img = np.ascontiguousarray(_variants(bgr)[(k // len(sources)) % 4])
        folder = dst if k < n // 2 else dst / "more"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"img_{k:02d}.png" if k % 3 else f"img_{k:02d}.jpg")
        cv2.imwrite(str(path), img)
        made.append(path)
    (dst / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return sorted(p for p in made if p.parent == dst) + sorted(p for p in made if p.parent != dst)


def write_parquet(files: list[Path], path: Path, struct: bool) -> None:
    """Images in a Parquet file, 2 row groups: column `image` as {bytes, path} structs (as Hugging
    Face datasets write) or a plain binary column `jpg`, next to an int `label` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [f.read_bytes() for f in files]
    col = pa.array([{"bytes": b, "path": f.name} for b, f in zip(blobs, files)]) if struct else pa.array(blobs, pa.binary())
    table = pa.table({"label": pa.array(range(len(files)), pa.int64()), ("image" if struct else "jpg"): col})
    pq.write_table(table, path, row_group_size=max(1, len(files) // 2 + 1))


def write_tar(files: list[Path], path: Path) -> None:
    """A WebDataset shard: per sample KEY.jpg|png and KEY.cls."""
    with tarfile.open(path, "w") as tar:
        for i, f in enumerate(files):
            for name, data in ((f"s{i:04d}{f.suffix}", f.read_bytes()), (f"s{i:04d}.cls", str(i).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# -- scenarios ------------------------------------------------------------------------------------
def _save(out: Path, name: str, rows: list[dict[str, Any]], extra: dict | None = None) -> None:
    rows = sorted(rows, key=lambda r: int(r["order"]))
    meta = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()
             if k not in ("heatmap", "overlay")} for r in rows]
    for m, r in zip(meta, rows):
        m["target"], m["order"] = int(r["target"]), int(r["order"])
        m["overlay_bytes"] = len(r["overlay"]) if "overlay" in r else None
    (out / f"{name}.json").write_text(json.dumps({"rows": meta, **(extra or {})}, default=str))
    np.savez(out / f"{name}.npz", *[np.asarray(r["heatmap"]) for r in rows])


def _explain(sources: list[str], **kw: Any) -> list[dict[str, Any]]:
    import onnxcam.scale as oc

    src = oc.read_sources(sources, parallelism=8)
    return oc.explain_dataset(src.ds, str(MODEL), **kw).take_all()


def folder(data: Path, out: Path) -> None:
    """The folder (recursive, one corrupt file) on 2 actors of a 2-CPU Ray: must not hang."""
    import onnxcam.scale as oc

    plan = oc.plan_actors(oc.cluster_shape(), 2)
    t = time.perf_counter()
    rows = _explain([str(data)], plan=plan, overlay=True)
    _save(out, "folder", rows, {"plan": plan.__dict__, "seconds": time.perf_counter() - t})


def parquet(data: Path, out: Path) -> None:
    files = sorted(data.glob("*.png"))[:6] + sorted((data / "more").glob("*.jpg"))[:2]
    write_parquet(files, out / "hf.parquet", struct=True)
    write_parquet(files[::-1], out / "plain.parquet", struct=False)
    rows = _explain([str(out / "hf.parquet"), str(out / "plain.parquet")], actors=1)
    _save(out, "parquet", rows, {"files": [str(f) for f in files]})


def webdataset(data: Path, out: Path) -> None:
    files = sorted((data / "more").iterdir())[:6]
    write_tar(files, out / "shard-000.tar")
    rows = _explain([str(out / "shard-*.tar")], actors=1, heatmap_dtype="float16")
    _save(out, "webdataset", rows, {"files": [str(f) for f in files]})


class CrashOnce(ExplainBatches):
    """ExplainBatches that kills its worker process the first time it sees `img_05`."""

    def __init__(self, *args: Any, marker: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.marker = marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any("img_05" in str(p) for p in batch["path"]) and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed once")
            os._exit(1)  # a dying worker, as a segfault or the OOM killer would leave it
        return super().__call__(batch)


KILLER = b"ONNXCAM-TEST-KILLER"  # a crafted file: the test decoder below aborts its process on it
FAILER = b"ONNXCAM-TEST-FAILER"  # a crafted file: the test class below raises on it (a job error, no death)


class AbortingDecoder(ExplainBatches):
    """ExplainBatches with a decoder that aborts its worker process (SIGABRT) on a file starting
    with KILLER, as a native decoder that crashes on a hostile file would; given to
    `explain_to_dir(actor_class=...)`, the public seam for another decoder."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any(bytes(b).startswith(KILLER) for b in batch["bytes"]):
            os.abort()
        return super().__call__(batch)


class FailingBatches(ExplainBatches):
    """ExplainBatches that raises (a Ray task error, not a dead worker) on a file starting with
    FAILER: the job stops as a lost cluster would stop it, leaving its journal."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if any(bytes(b).startswith(FAILER) for b in batch["bytes"]):
            raise RuntimeError("the job stops here")
        return super().__call__(batch)


def _crafted(data: Path, out: Path, name: str, marker: bytes, at: int) -> list[str]:
    """Six photos of DATA and one crafted file at position `at`, copied into OUT/name/."""
    folder = out / name
    folder.mkdir()
    files = []
    for f in sorted(data.glob("img_0*.png"))[:6]:
        (folder / f.name).write_bytes(f.read_bytes())
        files.append(folder / f.name)
    crafted = folder / f"img_{at:02d}_crafted.png"
    crafted.write_bytes(marker + b" not an image")
    return [str(f) for f in sorted(files + [crafted])]


def poison(data: Path, out: Path) -> None:
    """explain_to_dir with an image that aborts its worker every time (2 actors, batches of 2):
    Ray Data gives up its pass, the quarantine finds the killer, everything else is written."""
    from onnxcam import Explainer
    from onnxcam.output import OutputDir
    from onnxcam.preprocessing import policy_for
    from onnxcam.scale import RayOptions, explain_to_dir

    files = _crafted(data, out, "poison_in", KILLER, 3)
    policy = policy_for(Explainer(MODEL))
    lines: list[str] = []
    t = time.perf_counter()
    report = explain_to_dir(str(MODEL), files, OutputDir(out / "poison_out"), policy, options=RayOptions(actors=2, batch_size=2),
                            actor_class=AbortingDecoder, on_error=lines.append)
    (out / "poison.json").write_text(json.dumps({"report": report, "lines": lines, "files": files,
                                                 "seconds": time.perf_counter() - t}))


def interrupted(data: Path, out: Path) -> None:
    """A Ray run stopped by a task error leaves its journal; a Ray run with other options
    (--format parquet) is refused on it. The test then finishes it with the local command."""
    from onnxcam import Explainer
    from onnxcam.errors import OnnxcamError
    from onnxcam.output import OutputDir
    from onnxcam.preprocessing import policy_for
    from onnxcam.resume import JOURNAL
    from onnxcam.scale import RayOptions, explain_to_dir

    files = _crafted(data, out, "interrupted_in", FAILER, 99)  # the crafted file comes last
    policy = policy_for(Explainer(MODEL))
    messages = []
    for fmt, cls in (("files", FailingBatches), ("parquet", ExplainBatches)):
        try:
            explain_to_dir(str(MODEL), files, OutputDir(out / "interrupted_out"), policy, actor_class=cls,
                           options=RayOptions(actors=1, batch_size=2, fmt=fmt))
            messages.append(None)
        except OnnxcamError as exc:
            messages.append(str(exc))
        if fmt == "files":
            journal = (out / "interrupted_out" / JOURNAL).read_text().splitlines()
            mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "interrupted_out").glob("*.npy")}
    (out / "interrupted.json").write_text(json.dumps({"messages": messages, "journal": journal, "files": files,
                                                      "mtimes": mtimes}))


def local_then_ray(data: Path, out: Path) -> None:
    """An interrupted local run (a file over RLIMIT_FSIZE fails with EFBIG, as a full disk would
    fail it; the big noise photo comes last), then the same images through explain_to_dir on Ray,
    which finishes that run from its journal."""
    import resource

    from onnxcam import Explainer
    from onnxcam.output import OutputDir
    from onnxcam.preprocessing import policy_for
    from onnxcam.resume import JOURNAL
    from onnxcam.scale import RayOptions, explain_to_dir

    folder, dest = out / "local_first_in", out / "local_first_out"
    folder.mkdir()
    for f in sorted(data.glob("img_0*.png"))[:4]:
        (folder / f.name).write_bytes(f.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, (1600, 1600, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "zz_noise.png"), noise)  # its overlay PNG is ~7 MB
    files = [str(f) for f in sorted(folder.iterdir())]
    limit = 3 << 20

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", "from onnxcam.cli import main; main()", "explain", str(MODEL), *files,
                           "-o", str(dest)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limited)
    journal = (dest / JOURNAL).read_text().splitlines() if (dest / JOURNAL).exists() else []
    before = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy")}
    report = explain_to_dir(str(MODEL), files, OutputDir(dest), policy_for(Explainer(MODEL)),
                            options=RayOptions(actors=1, batch_size=2))
    after = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy")}
    (out / "local_then_ray.json").write_text(json.dumps({
        "local": {"rc": proc.returncode, "stderr": proc.stderr}, "journal": journal, "files": files,
        "before": before, "after": after, "report": report, "journal_left": (dest / JOURNAL).exists()}))


def crash(data: Path, out: Path) -> None:
    """A worker dies mid-job: Ray restarts it and retries its batch; nothing is lost."""
    import ray

    import onnxcam.scale as oc
    from onnxcam.scale.dataset import _bounded_restarts

    files = sorted(data.glob("img_0*.png"))[:6]
    ds = oc.read_sources([str(f) for f in files], parallelism=6).ds
    marker = str(out / "crashed")
    got = ds.map_batches(CrashOnce, fn_constructor_kwargs={"model": str(MODEL), "marker": marker, "threads": 1},
                         batch_size=2, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
                         num_cpus=0.5, **_bounded_restarts()).take_all()
    _save(out, "crash", got, {"crashed": os.path.exists(marker), "files": [str(f) for f in files]})


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def s3(data: Path, out: Path) -> None:
    """An S3-compatible endpoint (moto's server on 127.0.0.1): a prefix of images and a Parquet file."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as exc:
        (out / "s3.json").write_text(json.dumps({"skipped": f"moto/boto3 not installed ({exc.name})"}))
        return
    port = int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    c = boto3.client("s3")
    c.create_bucket(Bucket=BUCKET)
    files = sorted(data.glob("*.png"))[:5]
    for f in files:
        c.put_object(Bucket=BUCKET, Key=f"imgs/{f.name}", Body=f.read_bytes())
    write_parquet(files[:3], out / "s3.parquet", struct=False)
    c.put_object(Bucket=BUCKET, Key="tables/part-0.parquet", Body=(out / "s3.parquet").read_bytes())
    rows = _explain([f"s3://{BUCKET}/imgs/", f"s3://{BUCKET}/tables/*.parquet"], actors=1)
    _save(out, "s3", rows, {"files": [str(f) for f in files], "port": port})


def _cli(args: list[str], out: Path, name: str, command: str = "explain") -> dict[str, Any]:
    """`onnxcam explain ... --ray --address <this Ray>` as its own process (a client of the
    cluster this runner started: the model and the onnxcam package travel with the job)."""
    import ray

    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-c", "from onnxcam.cli import main; main()", command, str(MODEL), *args,
           "--ray", "--address", address]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    run = {"args": args, "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
           "seconds": time.perf_counter() - t}
    (out / f"{name}.json").write_text(json.dumps(run))
    return run


def cli(data: Path, out: Path) -> None:
    """The command line on the folder: --ray on 2 actors, then a rerun that keeps everything."""
    _cli([str(data), "-o", str(out / "cli_out"), "--actors", "2"], out, "cli")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cli_out").rglob("*.npy")}
    _cli([str(data), "-o", str(out / "cli_out"), "--actors", "2"], out, "cli_rerun")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cli_out").rglob("*.npy")}
    (out / "cli_mtimes.json").write_text(json.dumps({"before": before, "after": after}))


def cli_parquet(data: Path, out: Path) -> None:
    """--format parquet on a Parquet source (a dataset the library scenarios did not use)."""
    files = sorted(data.rglob("img_*"))[::3]
    files = [f for f in files if "corrupt" not in f.name]
    write_parquet(files, out / "unseen.parquet", struct=False)
    _cli([str(out / "unseen.parquet"), "-o", str(out / "cli_parquet_out"), "--format", "parquet", "--actors", "1"],
         out, "cli_parquet")
    (out / "cli_parquet_files.json").write_text(json.dumps([str(f) for f in files]))


EVAL_ARGS = ["--steps", "5", "--json"]


def write_boxes(data: Path) -> Path:
    """Boxes for two of the subfolder's photos (the pointing games need some)."""
    path = data.parent / f"{data.name}-boxes.json"
    path.write_text(json.dumps({"img_12.jpg": [40, 40, 200, 200], "img_13.png": [[0, 0, 120, 120]]}))
    return path


def cli_eval(data: Path, out: Path) -> None:
    """eval --ray on 2 actors (metrics averaged over both) on the subfolder, with boxes."""
    _cli([str(data / "more"), "--boxes", str(write_boxes(data)), *EVAL_ARGS, "--actors", "2"], out, "cli_eval", "eval")


SCENARIOS: dict[str, Callable[[Path, Path], None]] = {
    "folder": folder, "parquet": parquet, "webdataset": webdataset, "s3": s3, "crash": crash,
    "cli": cli, "cli_parquet": cli_parquet, "cli_eval": cli_eval, "poison": poison, "interrupted": interrupted,
    "local_then_ray": local_then_ray,
}


def _start_moto() -> subprocess.Popen | None:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return None
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    # before ray.init: the local Ray's workers inherit the driver's environment
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return proc


def main(data: Path, out: Path, names: list[str], table: dict[str, Callable[[Path, Path], None]] | None = None) -> int:
    """Run the scenarios `names` of `table` (default: SCENARIOS) on one local Ray."""
    import ray

    import onnxcam.scale as oc

    table = table or SCENARIOS
    moto = _start_moto() if "s3" in names else None
    status: dict[str, str] = {}
    try:
        t = time.perf_counter()
        oc.connect(num_cpus=2, object_store_memory=256 * 2**20)
        status["_init_seconds"] = f"{time.perf_counter() - t:.1f}"
        for name in names:
            t = time.perf_counter()
            try:
                table[name](data, out)
                status[name] = f"ok {time.perf_counter() - t:.1f}s"
            except Exception:  # noqa: BLE001  (reported to the test that reads this scenario)
                status[name] = "error: " + traceback.format_exc()
            (out / "status.json").write_text(json.dumps(status, indent=1))
    finally:
        ray.shutdown()
        if moto is not None:
            moto.terminate()
            moto.wait(10)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(Path(args[0]), Path(args[1]), args[2:] or list(SCENARIOS)))
