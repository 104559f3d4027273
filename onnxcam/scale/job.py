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

Reruns and resuming: the same journal as the local run (`onnxcam.resume`,
OUT/results.incomplete.jsonl, one line per image written, with the run's signature): an
interrupted run (Ctrl-C, a lost cluster, a full disk) is finished by the same command, which skips
the images in the journal whose files are there; a journal or a finished results.json of another
command (other options, or `--format`) is refused in one line unless `overwrite` starts afresh.
With `--format files` the signature is the local run's, so `onnxcam explain` without --ray may
finish a Ray run's journal and the other way round. A rerun of the same command into a finished
OUT keeps its records and explains only the rest (failed images are tried again).

Faults: an undecodable image is an error row from its actor, the rest goes on. A worker that
dies is restarted and its batch retried by Ray Data (ACTOR_RESTARTS times); when a batch keeps
killing its worker, Ray Data gives up the pass, and the images it did not finish go through
`onnxcam.scale.quarantine` (one batch per actor call, a dead batch split into single images), so
only the images that kill their worker alone are lost, each listed with its path and the reason;
everything else is written and results.json completed (exit code 1 from the command, as for any
failed image). `eval --ray` and `review --ray` do the same (`onnxcam.scale.records.gather`).
"""

from __future__ import annotations

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
from ..resume import JOURNAL, Journal, explain_signature, file_sha256
from ..targets import maps_per_image
from .batches import ExplainBatches
from .cluster import ActorPlan, cluster_shape, connect, plan_actors
from .dataset import explain_dataset, explain_kwargs
from .quarantine import PassFailure, crash_message, pass_failure, quarantine
from .sources import ImageSource, output_stems, read_sources, row_name

log = logging.getLogger(__name__)

FORMATS = ("files", "parquet")
PART_ROWS = 256  # rows per Parquet part
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
    journal: Journal | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # parquet rows not yet written
    parts: int = 0
    unjournaled: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, journal entry)
    layer: str = ""
    provider: str = ""
    output: str | None = None
    pool: ThreadPoolExecutor | None = None


def _record_files(rec: dict[str, Any]) -> list[str]:
    return [rec[k] for k in ("overlay", "heatmap", "guided", "parquet") if isinstance(rec.get(k), str)]


def previous_records(out: OutputDir, journal: Journal) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records an earlier run of the same command left in OUT, and its layer, provider and
    output: from its journal when it was interrupted (images whose files are all there), else
    from its results.json; another command's results.json is refused (see the module docstring)."""
    if journal.resuming:
        records: list[dict[str, Any]] = []
        header: dict[str, Any] = {}
        for key, entry in journal.done.items():
            recs = entry.get("records") or []
            if journal.finished(key, [f for r in recs for f in _record_files(r)]):
                records.extend(recs)
                header = {k: entry.get(k) for k in ("layer", "provider", "output")}
        return records, header
    done = out.path("results.json")
    if out.overwrite or not done.is_file():
        return [], {}
    try:
        report = json.loads(done.read_text(encoding="utf-8"))
        images, header = list(report["images"]), {k: report.get(k) for k in ("layer", "provider", "output")}
        sig = report.get("signature")
    except (ValueError, OSError, AttributeError, KeyError, TypeError) as exc:
        raise OnnxcamError(f"{out.shown('results.json')} is not readable JSON ({exc}); pass --overwrite") from None
    if sig != journal.sig:
        raise OnnxcamError(f"{out.shown('results.json')}: the folder holds a finished run of another command, or of "
                           "other options; pass --overwrite to start over, or choose another -o")
    return images, header


def _flush_journal(state: _State) -> None:
    if state.unjournaled and state.journal is not None:
        state.journal.record_many(state.unjournaled)
        state.unjournaled = []


def _entry(state: _State, path: str, rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One image's journal line, as the local run writes it (`onnxcam.cli.explain`)."""
    return row_name(path, state.stems), {"image": path, "records": [rec], "errors": [], "provider": state.provider,
                                         "layer": state.layer, "output": state.output}


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
        rank = int(batch["rank"][i]) if "rank" in batch else 1
        name = row_name(path, state.stems) + (f".top{rank}" if state.per_image > 1 else "")
        heat = np.asarray(batch["heatmap"][i], np.float32)
        if state.fmt == "files":
            todo.append((rec, name, i, heat))
        else:
            rec["name"] = name
            state.pending.append({"record": rec, "image": path, "name": name, "rank": rank, "target": rec["target"],
                                  "label": rec["label"], "score": rec.get("score"), "probability": rec.get("probability"),
                                  "heatmap": heat, "overlay": bytes(batch["overlay"][i])})
        state.records.append(rec)
        key, entry = _entry(state, path, rec)
        if state.unjournaled and state.unjournaled[-1][0] == key:  # topK: an image's rows come together
            state.unjournaled[-1][1]["records"].append(rec)
        else:
            state.unjournaled.append((key, entry))
    if todo:
        assert state.pool is not None
        for (rec, *_), files in zip(todo, state.pool.map(lambda t: _write_files(state, t[1], batch, t[2], t[3]), todo)):
            rec.update(files)
    if state.fmt == "parquet" and len(state.pending) >= PART_ROWS:
        _flush_parquet(state)
    if state.fmt == "files" or not state.pending:
        _flush_journal(state)  # files: per batch, so an interrupted run leaves at most one batch unrecorded
    return int((np.asarray(batch["rank"]) <= 1).sum()) if "rank" in batch else n  # topK: K rows, one image


def _run_pass(state: _State, ds: Any, model: str, common: dict[str, Any], batch_size: int,
              on_progress: Callable[[int], None], on_error: Callable[[str], None]) -> PassFailure | None:
    """Explain `ds` on the actors and write what comes back. Returns None, or why Ray gave up
    (e.g. a worker that kept dying); onnxcam's own errors are raised."""
    if ds is None:
        return None
    explained = explain_dataset(ds, model, batch_size=batch_size, **common)
    try:
        with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="onnxcam-writer") as state.pool:
            # batch_size None: each actor batch as it arrives, written and journaled at once, so an
            # interrupted run loses at most the batches in flight
            for batch in explained.iter_batches(batch_size=None, batch_format="numpy"):
                on_progress(_take(state, batch, on_error))
    except OnnxcamError:
        raise
    except Exception as exc:  # noqa: BLE001  (Ray wraps the actors' errors; show theirs)
        return pass_failure(exc)
    finally:
        if state.fmt == "files" or not state.pending:
            _flush_journal(state)
    return None


def _quarantine_pass(state: _State, sources: Sequence[str], out: OutputDir, model: str, opts: "RayOptions",
                     plan: ActorPlan, common: dict[str, Any], done: set[str], on_progress: Callable[[int], None],
                     on_error: Callable[[str], None]) -> None:
    """The images the failed Data pass did not finish, through `onnxcam.scale.quarantine`."""
    seen = done | {r["image"] for r in state.records} | {e["image"] for e in state.errors}
    rest = read_sources(sources, opts.image_column, exclude=str(out.root), skip=seen,
                        read_cpus=min(1.0, plan.reserve), parallelism=4 * plan.actors)
    if rest.ds is None:
        return
    fn, ctor = explain_kwargs(model, plan=plan, **common)

    def crashed(path: str, reason: str) -> None:
        msg = f"{crash_message(path, reason)}; no map written"
        state.errors.append({"image": path, "error": msg})
        on_error(msg)
        on_progress(1)

    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="onnxcam-writer") as state.pool:
        try:
            quarantine(rest.ds.iter_batches(batch_size=opts.batch_size, batch_format="numpy"), fn, ctor, plan,
                       lambda b: on_progress(_take(state, b, on_error)), crashed)
        except OnnxcamError:
            raise
        except Exception as exc:  # noqa: BLE001  (reading failed on Ray: the job stops, the journal stays)
            cause = getattr(exc, "cause", None) or exc
            raise OnnxcamError(f"Ray gave up the job: {' '.join(str(cause).split())[:300]}; the {len(state.records)} "
                               f"result(s) written are kept in {out.shown(JOURNAL)}: run the same command again to "
                               "resume") from None
        finally:  # whatever happens, what was written is journaled
            _flush_parquet(state)
            _flush_journal(state)


def _missing(state: _State, expected: list[str] | None) -> list[str]:
    """Expected rows with neither a record nor an error."""
    if expected is None:
        return []
    seen = {r["image"] for r in state.records} | {e["image"] for e in state.errors}
    return [p for p in expected if p not in seen]


def _next_part(out: OutputDir) -> int:
    """The first Parquet part number after those in OUT/explanations (a rerun adds parts)."""
    folder = out.path("explanations")
    nums = [int(p.stem.split("-")[-1]) for p in folder.glob("part-*.parquet") if p.stem.split("-")[-1].isdigit()] \
        if folder.is_dir() else []
    return max(nums, default=-1) + 1


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
                   on_error: Callable[[str], None] = lambda m: None,
                   actor_class: type = ExplainBatches, det_format: str | None = None,
                   boxes_output: str | None = None) -> dict[str, Any]:
    """Explain every image of `sources` on Ray into `out`; returns the results.json it wrote.

    policy, target: resolved on the driver (`policy_for`, `parse_target`) with a local Explainer,
    so that a wrong option fails before Ray starts; target_spec: the target as the user wrote it.
    on_total/on_progress/on_error: the command's progress bar and error lines. actor_class: the
    callable class the actors run, `ExplainBatches` or a subclass (another decoder, say).
    det_format, boxes_output: the options as the command got them (already in `target`), for the
    run's signature, which is then the local command's."""
    opts = options or RayOptions()
    if opts.fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {opts.fmt!r}")
    m = get_method(method)
    model_sha = file_sha256(model)
    per_image = maps_per_image(target)
    sig = explain_signature(model_sha, m, policy, layers=layer, target=target_spec, explainer=explainer,
                            per_image=per_image, det_format=det_format, boxes_output=boxes_output, fmt=opts.fmt)
    journal = Journal(out, sig, "explain --ray" + (f" --format {opts.fmt}" if opts.fmt != "files" else ""))
    journal.open(out.overwrite)
    earlier, header = previous_records(out, journal)
    done = {r["image"] for r in earlier}
    if out.overwrite:
        out.remove_stale("results.json")
    connect(opts.address)
    plan: ActorPlan = plan_actors(cluster_shape(), opts.actors, opts.cpus_per_actor, opts.gpus)
    src = read_sources(sources, opts.image_column, exclude=str(out.root), skip=done,
                       read_cpus=min(1.0, plan.reserve), parallelism=4 * plan.actors)
    stems = output_stems(src.files)
    if journal.resuming:  # finishing an unfinished run: its own files may be replaced (links, inputs still refused)
        out.overwrite = True
    out.check_free(_planned_names(src, stems, opts.fmt, per_image))
    state = _State(out, stems, opts.fmt, target_spec, per_image, journal=journal)
    state.layer, state.provider, state.output = header.get("layer") or "", header.get("provider") or "", header.get("output")
    state.parts = _next_part(out) if earlier else 0
    if earlier and not journal.resuming:
        # a finished run's records go to a new journal: until this run writes results.json, OUT is
        # an unfinished run (no results.json) that a next rerun resumes with nothing lost
        journal.start()
        state.unjournaled = [_entry(state, r["image"], r) for r in earlier]
        _flush_journal(state)
    if earlier or journal.resuming or out.path("results.json").is_file():
        out.remove_stale("results.json")  # checked above: the same run's, or --overwrite
    on_total(src.total)
    expected = src.expected()
    t0 = time.perf_counter()
    common = {"method": method, "layer": layer, "target": target, "policy": policy, "overlay": True,
              "providers": providers, "explainer": explainer, "gpus": opts.gpus, "ship_model": opts.address is not None,
              "actor_class": actor_class}
    failure = _run_pass(state, src.ds, model, {**common, "plan": plan}, opts.batch_size, on_progress, on_error)
    if failure is not None and failure.workers_died:
        log.info("Ray Data gave up the pass: %s", failure.reason)
        left = "the other" if src.total is None else str(src.total - len(state.records) - len(state.errors))
        log.warning("a worker kept dying: explaining %s image(s) left one batch per call, to find what kills it", left)
        _quarantine_pass(state, sources, out, model, opts, plan, common, done, on_progress, on_error)
    elif failure is not None:
        _flush_parquet(state)
        _flush_journal(state)
        raise OnnxcamError(f"Ray gave up the job: {failure.reason[:300]}; the {len(state.records)} result(s) written "
                           f"are kept in {out.shown(JOURNAL)}: run the same command again to resume")
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
        "model_sha256": model_sha,
        "signature": sig,
        "method": m.name,
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
    journal.close()
    return report
