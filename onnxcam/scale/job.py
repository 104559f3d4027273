"""`explain_to_dir`: SOURCE strings explained on Ray, written into OUT as a local run writes them.

The actors explain (`ExplainBatches`, overlay PNGs encoded there); this driver streams their rows
and writes every file through `onnxcam.output.OutputDir` (inside OUT, atomic, never over an
input), with the local run's names (mirroring folders; rows of a Parquet file or a tar go under
its name: `data.parquet/17`, `shard.tar/KEY`) and results.json last, with the same keys plus
`ray` (actors, CPUs, threads, seconds). Formats:

- `files`: NAME.overlay.png, NAME.heatmap.npy (and NAME.guided.png), as `onnxcam explain`; with
  topK (or det:top=K) one of each per target, NAME.top1.overlay.png ... as `onnxcam explain`;
- `parquet`: explanations/part-NNNNN.parquet with columns image, name, rank, target, label, score,
  probability, heatmap (float32 list, heatmap_height × heatmap_width, row-major) and overlay (PNG):
  one row per image and target; `rank` is the target's rank (1..K; always 1 with one target per
  image) and `name` the files format's name (NAME, or NAME.topR with topK).

Reruns: the records of an earlier run in OUT (its results.json, or the journal an interrupted run
left in OUT/.onnxcam-ray/) are kept and their images skipped; images that failed are tried again.
`overwrite` starts afresh. A worker that dies is restarted and its batch retried (a crash loses
nothing); when one batch kills its worker ACTOR_RESTARTS + 1 times, Ray gives up the whole job:
the command then fails with Ray's reason in one line, and everything written so far stays in the
journal, so the same command resumes from there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import OnnxcamError, UsageError
from ..methods import CAMMethod, get_method
from ..output import OutputDir
from ..preprocessing import InputPolicy
from ..targets import maps_per_image
from .cluster import ActorPlan, cluster_shape, connect, plan_actors
from .dataset import explain_dataset
from .sources import ImageSource, output_stems, read_sources, row_name

log = logging.getLogger(__name__)

JOURNAL = ".onnxcam-ray"
FORMATS = ("files", "parquet")
PART_ROWS = 256  # rows per Parquet part
JOURNAL_ROWS = 64  # rows the driver takes at a time (files format: one journal entry each)
WRITER_THREADS = 4


@dataclass
class RayOptions:
    """Where and how wide to run: `address` (None: a local Ray on this machine's CPUs), `actors`
    and `cpus_per_actor` (see `plan_actors`), GPU actors, the output format, the Parquet image
    column (default: found), images per actor call."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus: bool = False
    fmt: str = "files"
    image_column: str | None = None
    batch_size: int = 8


@dataclass
class _State:
    out: OutputDir
    stems: dict[str, str]
    fmt: str
    target_spec: str
    per_image: int = 1  # maps per image (topK): names get .top1 ... .topK
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # parquet rows not yet written
    journal_part: int = 0
    parts: int = 0
    unjournaled: list[dict[str, Any]] = field(default_factory=list)
    layer: str = ""
    provider: str = ""
    output: str | None = None
    pool: ThreadPoolExecutor | None = None


def previous_records(out: OutputDir) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records an earlier run left in OUT (its results.json's images, else its journal) and
    that run's layer, provider and output (from results.json)."""
    done = out.path("results.json")
    if done.is_file():
        try:
            report = json.loads(done.read_text(encoding="utf-8"))
            header = {k: report.get(k) for k in ("layer", "provider", "output")}
            return list(report.get("images", [])), header
        except (ValueError, OSError, AttributeError) as exc:
            raise OnnxcamError(f"{out.shown('results.json')} is not readable JSON ({exc}); pass --overwrite") from None
    records: list[dict[str, Any]] = []
    folder = out.path(JOURNAL)
    for part in sorted(folder.glob("part-*.json")) if folder.is_dir() else []:
        try:
            records.extend(json.loads(part.read_text(encoding="utf-8")))
        except (ValueError, OSError):
            log.warning("ignoring the unreadable journal entry %s", part)
    return records, {}


def _flush_journal(state: _State) -> None:
    if state.unjournaled:
        state.out.write_json(f"{JOURNAL}/part-{state.journal_part:06d}.json", state.unjournaled)
        state.journal_part += 1
        state.unjournaled = []


def _parquet_part(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    maps = [np.asarray(r["heatmap"], np.float32) for r in rows]
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int32)
    values = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(0, np.float32)
    table = pa.table({
        "image": [r["image"] for r in rows], "name": [r["name"] for r in rows],
        "rank": pa.array([r["rank"] for r in rows], pa.int32()),
        "target": pa.array([r["target"] for r in rows], pa.int64()), "label": [r["label"] for r in rows],
        "score": pa.array([r["score"] for r in rows], pa.float64()),
        "probability": pa.array([r["probability"] for r in rows], pa.float64()),
        "heatmap": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),
        "heatmap_height": pa.array([m.shape[0] for m in maps], pa.int32()),
        "heatmap_width": pa.array([m.shape[1] for m in maps], pa.int32()),
        "overlay": pa.array([r["overlay"] for r in rows], pa.binary()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _flush_parquet(state: _State) -> None:
    if state.pending:
        name = f"explanations/part-{state.parts:05d}.parquet"
        shown = str(state.out.write_bytes(name, _parquet_part(state.pending)))
        for r in state.pending:
            r["record"]["parquet"] = shown
        state.parts += 1
        state.pending = []


def _write_files(state: _State, name: str, batch: dict[str, np.ndarray], i: int, heat: np.ndarray) -> dict[str, str]:
    """One image's files (overlay, heatmap, guided), as `onnxcam explain` names them."""
    files = {"overlay": str(state.out.write_bytes(f"{name}.overlay.png", bytes(batch["overlay"][i]))),
             "heatmap": str(state.out.write_npy(f"{name}.heatmap.npy", heat))}
    if "guided" in batch and len(batch["guided"][i]):
        files["guided"] = str(state.out.write_bytes(f"{name}.guided.png", bytes(batch["guided"][i])))
    return files


def _take(state: _State, batch: dict[str, np.ndarray], on_error: Callable[[str], None]) -> int:
    """Write one batch of actor rows; returns how many images it held. Files are written by
    WRITER_THREADS threads: each write is fsynced (the writer is atomic), and overlapping the
    fsyncs is what lets one driver keep up with many actors (measured: 83 → 670 images/s)."""
    n = len(batch["path"])
    todo: list[tuple[dict[str, Any], str, int, np.ndarray]] = []
    for i in range(n):
        path, err = str(batch["path"][i]), batch["error"][i]
        if isinstance(err, str) and err:
            state.errors.append({"image": path, "error": err})
            on_error(err)
            continue
        state.layer, state.provider, state.output = str(batch["layer"][i]), str(batch["provider"][i]), batch["output"][i]
        rec = json.loads(batch["record"][i])
        rec["target_spec"] = state.target_spec
        name = row_name(path, state.stems) + (f".top{int(batch['rank'][i])}" if state.per_image > 1 else "")
        heat = np.asarray(batch["heatmap"][i], np.float32)
        if state.fmt == "files":
            todo.append((rec, name, i, heat))
        else:
            rec["name"] = name
            state.pending.append({"record": rec, "image": path, "name": name, "rank": int(batch["rank"][i]),
                                  "target": rec["target"],
                                  "label": rec["label"], "score": rec.get("score"), "probability": rec.get("probability"),
                                  "heatmap": heat, "overlay": bytes(batch["overlay"][i])})
        state.records.append(rec)
        state.unjournaled.append(rec)
    if todo:
        assert state.pool is not None
        for (rec, *_), files in zip(todo, state.pool.map(lambda t: _write_files(state, t[1], batch, t[2], t[3]), todo)):
            rec.update(files)
    if state.fmt == "parquet" and len(state.pending) >= PART_ROWS:
        _flush_parquet(state)
    if state.fmt == "files" or not state.pending:
        _flush_journal(state)  # files: per batch, so an interrupted run leaves at most one batch unrecorded
    return n


def _run_pass(state: _State, ds: Any, model: str, common: dict[str, Any], batch_size: int,
              on_progress: Callable[[int], None], on_error: Callable[[str], None]) -> str | None:
    """Explain `ds` on the actors and write what comes back. Returns None, or why Ray gave up
    (e.g. a worker that kept dying); onnxcam's own errors are raised."""
    if ds is None:
        return None
    explained = explain_dataset(ds, model, batch_size=batch_size, **common)
    try:
        with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="onnxcam-writer") as state.pool:
            for batch in explained.iter_batches(batch_size=JOURNAL_ROWS, batch_format="numpy"):
                on_progress(_take(state, batch, on_error))
    except OnnxcamError:
        raise
    except Exception as exc:  # noqa: BLE001  (Ray wraps the actors' errors; show theirs)
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, OnnxcamError):
            raise cause from None
        return " ".join(str(cause).split()) or type(cause).__name__
    finally:
        if state.fmt == "files" or not state.pending:
            _flush_journal(state)
    return None


def _missing(state: _State, expected: list[str] | None) -> list[str]:
    """Expected rows with neither a record nor an error."""
    if expected is None:
        return []
    seen = {r["image"] for r in state.records} | {e["image"] for e in state.errors}
    return [p for p in expected if p not in seen]


def _planned_names(src: ImageSource, stems: dict[str, str], fmt: str, per_image: int = 1) -> list[str]:
    if fmt != "files":
        return []
    rows = src.expected() or [f for f, _ in src.files if f in stems and not f.lower().endswith((".tar", ".tgz", ".tar.gz"))]
    suffixes = [""] if per_image == 1 else [f".top{j + 1}" for j in range(per_image)]
    return [f"{row_name(p, stems)}{sfx}.{k}" for p in rows for sfx in suffixes for k in ("overlay.png", "heatmap.npy", "guided.png")]


def explain_to_dir(model: str, sources: Sequence[str], out: OutputDir, policy: InputPolicy, *, method: str | CAMMethod = "gradcam",
                   layer: str | list[str] | None = None, target: Any = None, target_spec: str = "top1",
                   explainer: dict[str, Any] | None = None, providers: list[str] | None = None,
                   options: RayOptions | None = None, on_progress: Callable[[int], None] = lambda n: None,
                   on_total: Callable[[int | None], None] = lambda n: None,
                   on_error: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Explain every image of `sources` on Ray into `out`; returns the results.json it wrote.

    policy, target: resolved on the driver (`policy_for`, `parse_target`) with a local Explainer,
    so that a wrong option fails before Ray starts. on_total/on_progress/on_error: the command's
    progress bar and error lines."""
    opts = options or RayOptions()
    if opts.fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {opts.fmt!r}")
    earlier, header = ([], {}) if out.overwrite else previous_records(out)
    done = {r["image"] for r in earlier}
    if out.overwrite:
        out.remove_stale("results.json")
    connect(opts.address)
    plan: ActorPlan = plan_actors(cluster_shape(), opts.actors, opts.cpus_per_actor, opts.gpus)
    src = read_sources(sources, opts.image_column, exclude=str(out.root), skip=done,
                       read_cpus=min(1.0, plan.reserve), parallelism=4 * plan.actors)
    stems = output_stems(src.files)
    per_image = maps_per_image(target)
    planned = _planned_names(src, stems, opts.fmt, per_image)
    if out.path(JOURNAL).is_dir():  # an interrupted run: its last batch's files have no record; redo them
        for name in planned:
            out.remove_stale(name)
    out.check_free(planned)
    state = _State(out, stems, opts.fmt, target_spec, per_image)
    state.layer, state.provider, state.output = header.get("layer") or "", header.get("provider") or "", header.get("output")
    state.journal_part = len(list(out.path(JOURNAL).glob("part-*.json"))) if out.path(JOURNAL).is_dir() else 0
    if earlier and out.path("results.json").is_file():
        # the finished run's records move to the journal: until this run writes results.json,
        # OUT is an unfinished run (no results.json) that a next rerun resumes with nothing lost
        state.unjournaled = list(earlier)
        _flush_journal(state)
        out.remove_stale("results.json")
    on_total(src.total)
    expected = src.expected()
    t0 = time.perf_counter()
    common = {"method": method, "layer": layer, "target": target, "policy": policy, "overlay": True,
              "providers": providers, "explainer": explainer, "gpus": opts.gpus, "ship_model": opts.address is not None}
    failure = _run_pass(state, src.ds, model, {**common, "plan": plan}, opts.batch_size, on_progress, on_error)
    if failure is not None:
        _flush_parquet(state)
        _flush_journal(state)
        raise OnnxcamError(f"Ray gave up the job: {failure[:300]}; the {len(state.records)} result(s) written are kept "
                           f"in {out.shown(JOURNAL)}: run the same command again to resume")
    if opts.fmt == "parquet":
        _flush_parquet(state)
    _flush_journal(state)
    seconds = time.perf_counter() - t0
    for p in _missing(state, expected):  # never silently missing, whatever Ray did
        msg = f"{p}: Ray returned no result for it; run again to retry"
        state.errors.append({"image": p, "error": msg})
        on_error(msg)
    new = state.records
    order = {f: k for k, (f, _) in enumerate(src.files)}

    def listing_order(rec: dict[str, Any]) -> tuple[int, int, str]:
        """Sources as given, folders sorted, rows of a file in their order (tar keys sorted)."""
        image = rec["image"]
        if image in order:
            return order[image], 0, ""
        uri, _, key = image.rpartition("#")
        return order.get(uri, len(order)), int(key) if key.isdigit() else 0, key

    records = sorted(earlier + new, key=listing_order)
    report = {
        "model": str(model),
        "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
        "method": get_method(method).name,
        "layer": state.layer,
        "output": state.output,
        "provider": state.provider,
        **policy.describe(),
        "images": records,
        "errors": state.errors,
        "ray": {"address": opts.address or "local", "format": opts.fmt, "actors": plan.actors,
                "cpus_per_actor": plan.cpus_per_actor, "gpus_per_actor": plan.gpus_per_actor, "threads": plan.threads,
                "note": plan.note, "seconds": seconds, "kept": len(earlier), "explained": len(new)},
    }
    out.write_json("results.json", report)
    journal = out.path(JOURNAL)
    if journal.is_dir():
        for part in journal.glob("part-*.json"):
            part.unlink()
        journal.rmdir()
    return report
