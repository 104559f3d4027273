"""`onnxcam explain`: maps, overlays and results.json for images, through the output writer."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from ..errors import ImageError, UsageError
from ..explainer import Explainer, Result
from ..image import deprocess, load_image, overlay
from ..methods import configured
from ..output import OutputDir, dumps, image_record, output_names
from ..preprocessing import Batch, InputPolicy, policy_for
from ..detection import FORMATS
from ..resume import Journal, explain_signature, file_sha256
from ..targets import maps_per_image, parse_target, with_detection_options
from . import options as opt
from .common import chunks, collect_images, echo_line, guarded, parse_inputs, progress, report_error

KINDS = ("overlay.png", "heatmap.npy", "guided.png")


@dataclass
class Job:
    """What one explain run writes: images, their unique output stems, the per-target suffixes."""

    out: OutputDir
    images: list[Path]
    names: list[str]
    suffixes: list[str]
    target_spec: str
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    provider: str = ""
    layer: str = ""
    last_size: tuple[int, int] | None = None

    def planned(self) -> list[str]:
        return ["results.json"] + [f"{n}{s}.{k}" for n in self.names for s in self.suffixes for k in KINDS]


def _write_item(job: Job, res: Result, batch: Batch, policy: InputPolicy, i: int, path: Path, name: str,
                img: np.ndarray) -> None:
    """Write image i's overlay, heatmap (and guided image) per target; append its records."""
    pixel = res.extra.get("guided_gradcam", res.extra.get("guided_backprop"))
    for j, sfx in enumerate(job.suffixes):
        r = i * len(job.suffixes) + j
        heat = res.heatmaps[r]
        if res.errors and res.errors[r]:
            _error(job, path, f"{path}: {res.errors[r]}; no map written")
            continue
        if not (np.isfinite(heat).all() and np.isfinite(res.outputs[r]).all()):
            _error(job, path, f"{path}: the model's outputs or the map are not finite (NaN or Inf); no map written")
            continue
        rec = image_record(str(path), res.outputs[r], int(res.targets[r]), policy.label)
        rec["target_spec"] = job.target_spec
        rec["overlay"] = str(job.out.write_png(f"{name}{sfx}.overlay.png", overlay(img, batch.image_map(i, heat))))
        rec["heatmap"] = str(job.out.write_npy(f"{name}{sfx}.heatmap.npy", batch.saved_map(i, heat)))
        if pixel is not None:
            rec["guided"] = str(job.out.write_png(f"{name}{sfx}.guided.png", deprocess(pixel[r], img.shape[:2])))
        job.records.append(rec)


def _error(job: Job, path: Path, message: str) -> None:
    """An image that could not be explained: one line on stderr, one error record, exit code 1."""
    report_error(message)
    job.errors.append({"image": str(path), "error": message})


def _load(job: Job, chunk: Sequence[tuple[Path, str]]) -> list[tuple[Path, str, np.ndarray]]:
    """Decode a chunk's images; each unreadable one is one line on stderr and one error record."""
    loaded = []
    for path, name in chunk:
        try:
            loaded.append((path, name, load_image(path)))
        except ImageError as exc:
            _error(job, path, str(exc))
    return loaded


def _resumed(job: Job, journal: Journal, path: Path, name: str) -> bool:
    """Take image `name`'s records from the journal of the unfinished run being resumed, when
    that run finished it and its files are all there."""
    if not journal.resuming:
        return False
    entry = journal.done.get(name)
    files = [rec[k] for rec in (entry or {}).get("records", []) for k in ("overlay", "heatmap", "guided") if k in rec]
    if entry is None or entry.get("image") != str(path) or not journal.finished(name, files):
        return False
    job.records.extend(entry["records"])
    job.provider, job.layer = entry.get("provider", job.provider), entry.get("layer", job.layer)
    return True


def _run(job: Job, ex: Explainer, policy: InputPolicy, target: Any, batch_size: int, show_bar: bool,
         journal: Journal) -> None:
    items = [(p, n) for p, n in zip(job.images, job.names) if not _resumed(job, journal, p, n)]
    with progress(len(items), show_bar) as bar:
        for chunk in chunks(items, policy.batch_step(batch_size)):
            loaded = _load(job, chunk)
            if loaded:
                batch = policy.batch([img for _, _, img in loaded])
                res = ex.explain(batch.x, targets=target)
                job.provider, job.layer, job.last_size = res.provider, res.layer, batch.size
                for i, (path, name, img) in enumerate(loaded):
                    n_rec, n_err = len(job.records), len(job.errors)
                    if not journal.started:  # the first file: a stale results.json goes, the journal starts
                        job.out.remove_stale("results.json")
                        journal.start()
                    _write_item(job, res, batch, policy, i, path, name, img)
                    journal.record(name, {"image": str(path), "records": job.records[n_rec:],
                                          "errors": job.errors[n_err:], "provider": job.provider, "layer": job.layer})
            bar.update(len(chunk))


def _report(job: Job, model: str, model_sha: str, ex: Explainer, policy: InputPolicy,
            output_name: str | None, sig: str) -> dict[str, Any]:
    """results.json. Images in the listing order, whichever were finished by an earlier,
    interrupted run (their journal lines come in the order that run finished them, e.g. Ray's)."""
    order = {str(p): i for i, p in enumerate(job.images)}
    return {
        "model": str(model),
        "model_sha256": model_sha,
        "signature": sig,
        "method": ex.method.name,
        "layer": job.layer,
        "output": output_name or (ex.prepared(job.last_size).output if job.last_size else None),
        "provider": job.provider,
        **policy.describe(),
        "images": sorted(job.records, key=lambda r: order.get(r["image"], len(order))),  # stable: topK ranks stay
        "errors": sorted(job.errors, key=lambda e: order.get(e.get("image", ""), len(order))),
    }


@click.command()
@opt.model_argument
@click.argument("inputs", nargs=-1, required=True)
@opt.out_dir_option
@opt.method_option
@opt.attention_options()
@click.option("--layer", "layers_opt", multiple=True,
              help="ONNX tensor to explain (default: the last spatial activation); repeat to fuse several.")
@click.option("--fuse", default="mean", show_default=True, type=click.Choice(["mean", "max"]),
              help="How several layers' maps are fused.")
@click.option("--aug-smooth", is_flag=True, help="Test-time augmentation: flips × value scales, maps averaged.")
@click.option("--eigen-smooth", is_flag=True,
              help="First principal component of the weighted activations instead of their sum.")
@opt.target_option
@click.option("--output", "output_name", default=None,
              help="The model output to explain (default: the first (batch, classes) output).")
@click.option("--det-format", default=None, type=click.Choice(["auto", *FORMATS]),
              help="A detector's output format, where it is not recognised (det: targets; README's target table).")
@click.option("--boxes-output", default=None,
              help="The output holding a detector's boxes (det:box=... on score + box outputs; default: found).")
@opt.input_options()
@click.option("--input", "extra_inputs", multiple=True, help="Another model input, NAME=VALUE (numbers or a .npy file).")
@opt.batch_size_option
@opt.labels_option
@opt.device_option
@click.option("--backend", default="onnx", show_default=True, type=click.Choice(["onnx", "ort-training"]),
              help="Gradient backend.")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout; no progress bar.")
@opt.overwrite_option
@opt.ray_options()
@guarded
def explain(model: str, inputs: tuple[str, ...], out_dir: str, method: str, head_fusion: str | None,
            discard_ratio: float | None, start_layer: int | None, layers_opt: tuple[str, ...], fuse: str,
            aug_smooth: bool, eigen_smooth: bool, target: str, output_name: str | None, det_format: str | None,
            boxes_output: str | None, preset: str | None,
            config_file: str | None, size: str | None, letterbox: bool | None, extra_inputs: tuple[str, ...],
            batch_size: int, labels_file: str | None, device: str, backend: str, as_json: bool, overwrite: bool,
            use_ray: bool, address: str | None, actors: int | None, out_format: str, image_column: str | None) -> None:
    """Explain images (files or folders) with a CAM method.

    Writes, per image, OUT/NAME.overlay.png (at the image's own size) and OUT/NAME.heatmap.npy
    (the map at the model's input size, in [0, 1]), and OUT/results.json, last, with the model,
    layer, method and provider and, per image, the target, label, score, top-5 and files. NAME
    mirrors the image's path below the folder it was found in. With --target topK, one of each per
    class: NAME.top1.overlay.png ... Methods with a pixel-space result (guidedbackprop,
    guidedgradcam) also write OUT/NAME.guided.png.

    With --ray the images are explained on Ray Data (onnxcam.scale) with the same results;
    see --ray and README's "Scaling out".
    """
    extra = parse_inputs(extra_inputs)
    ray_only = {"--address": address, "--actors": actors, "--image-column": image_column,
                "--format": None if out_format == "files" else out_format}
    if not use_ray and any(v is not None for v in ray_only.values()):
        raise UsageError(f"{next(k for k, v in ray_only.items() if v is not None)} needs --ray")
    chosen = configured(method, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer)
    if use_ray:
        from .on_ray import explain_on_ray

        explainer = {"fuse": fuse, "aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth, "output": output_name,
                     "backend": backend, "inputs": extra}
        explain_on_ray(model, inputs, out_dir, chosen, layers_opt, explainer, target,
                       {"config_file": config_file, "preset": preset, "size": size, "letterbox": letterbox,
                        "labels_file": labels_file},
                       batch_size, device, as_json, overwrite,
                       {"address": address, "actors": actors, "fmt": out_format, "image_column": image_column},
                       det_format, boxes_output)
        return
    found = collect_images(inputs, Path(out_dir))
    if not found:
        raise UsageError("no images to explain")
    layer = list(layers_opt) if len(layers_opt) > 1 else (layers_opt[0] if layers_opt else None)
    ex = Explainer(model, method=chosen, layer=layer, providers=opt.providers(device), fuse=fuse,
                   aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, output=output_name, backend=backend, inputs=extra)
    policy = policy_for(ex, config_file=config_file, preset=preset, size=size, letterbox=letterbox,
                        labels_file=labels_file)
    tgt = with_detection_options(parse_target(target, policy.labels), det_format, boxes_output)
    per_image = maps_per_image(tgt)
    images = [p for p, _ in found]
    out = OutputDir(out_dir, overwrite, protect=[model, *images])
    job = Job(out, images, output_names(found), [""] if per_image == 1 else [f".top{j + 1}" for j in range(per_image)],
              target)
    model_sha = file_sha256(model)
    sig = explain_signature(model_sha, chosen, policy, layers=list(layers_opt), target=target,
                            explainer={"fuse": fuse, "aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth,
                                       "output": output_name, "backend": backend, "inputs": extra},
                            per_image=per_image, det_format=det_format, boxes_output=boxes_output)
    journal = Journal(out, sig, "explain")
    resuming = journal.exists() and not overwrite
    if resuming:  # finishing an unfinished run: its own files may be replaced (links, inputs still refused)
        out.overwrite = True
    out.check_free(job.planned())
    journal.open(overwrite)
    _run(job, ex, policy, tgt, batch_size, not as_json and sys.stderr.isatty() and len(images) > 1, journal)
    report = _report(job, model, model_sha, ex, policy, output_name, sig)
    out.write_json("results.json", report)
    journal.close()
    if as_json:
        click.echo(dumps(report))
    else:
        echo_line(f"explained {len(job.records)} map(s) with {ex.method.name} at {job.layer}; results in {out_dir}",
                   err=True)
    if job.errors:
        sys.exit(1)
