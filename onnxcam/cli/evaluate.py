"""`onnxcam eval` (metrics of one model's explanations) and `onnxcam review` (several models side
by side in one self-contained HTML page). Both prepare images with the input policy `explain`
uses (onnxcam.preprocessing), so their maps are explain's maps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from collections.abc import Mapping

import click
import numpy as np

from ..console import escape
from ..errors import UsageError
from ..limits import MAX_STEPS
from ..output import OutputDir, dumps, unique_names
from ..review import (METRIC_COLUMNS, Evaluation, Loader, ModelRun, evaluate_stream, file_items, image_map,
                      review_stream, write_report)
from . import gating
from . import options as opt
from .common import collect_images, echo_line, guarded, report_error


def _files(inputs: tuple[str, ...], verb: str, exclude: Path | None = None) -> list[Path]:
    """The image files of the inputs (folders searched, OUT skipped); UsageError when none."""
    files = [p for p, _ in collect_images(inputs, exclude)]
    if not files:
        raise UsageError(f"no images to {verb}")
    return files


class _Errors:
    """Images that could not be evaluated: one line on stderr each, one record each, exit 1."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.records: list[dict[str, str]] = []

    def __call__(self, name: str, message: str) -> None:
        report_error(message)
        self.records.append({"image": str(self.paths.get(name, name)), "error": message})


def _items(files: list[Path]) -> tuple[list[tuple[str, Loader]], _Errors]:
    """The images as loaders, decoded one batch at a time (memory does not grow with their
    number); an unreadable one is reported when its batch comes, in one line."""
    items = file_items(files)
    return items, _Errors({name: p for (name, _), p in zip(items, files)})


class _Images(Mapping):
    """Images by name, decoded when asked: the CI summary shows only the few that break a gate."""

    def __init__(self, items: list[tuple[str, Loader]], done: set[str]) -> None:
        self.loaders = {n: load for n, load in items if n in done}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.loaders[name]()

    def __iter__(self):
        return iter(self.loaders)

    def __len__(self) -> int:
        return len(self.loaders)


class _Maps(Mapping):
    """(model, image) → the model's map at the image's size, computed when asked."""

    def __init__(self, runs: Sequence[ModelRun], images: _Images) -> None:
        self.runs = {r.name: r for r in runs}
        self.images = images

    def __getitem__(self, key: tuple[str, str]) -> np.ndarray:
        model, image = key
        return image_map(self.runs[model], self.images[image])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[0] in self.runs and key[1] in self.images

    def __iter__(self):
        return ((m, i) for m in self.runs for i in self.images)

    def __len__(self) -> int:
        return len(self.runs) * len(self.images)


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # NaN passes every range check
        raise click.BadParameter("must be a number, not NaN")
    return value


def _metric_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options eval and review share: method, boxes, steps, ROAD, tolerance, batch, device."""
    return opt.stack(
        opt.method_option,
        click.option("--boxes", "boxes_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="JSON {image file name: [x0, y0, x1, y1] or {\"box\": [...]}} in image pixels: "
                          "adds the pointing games and the CAM box IoU."),
        click.option("--steps", default=50, show_default=True, type=click.IntRange(1, MAX_STEPS),
                     help="Deletion/insertion steps."),
        click.option("--road", is_flag=True, help="Also ROAD MoRF/LeRF at 10..90% (slow: an imputation per step)."),
        click.option("--tolerance", default=15.0, show_default=True, type=click.FloatRange(0, 1e6),
                     callback=_finite, help="Pointing-game tolerance in image pixels."),
        opt.batch_size_option,
        opt.device_option,
    )(f)


def _print_eval(model: str, run: ModelRun, ev: Evaluation) -> None:
    s = ev.summary
    echo_line(f"{model}: {ev.model['method']} at {ev.layer}, preset {run.preset}, {s['images']} image(s)")
    for r in ev.images:
        line = (f"  {escape(r['image'])}: {escape(r['label'])} (p={r['probability']:.3f})  drop {r['drop']:.1f}%  "
                f"deletion {r['deletion_auc']:.3f}  insertion {r['insertion_auc']:.3f}")
        if "pointing_hit" in r:
            line += (f"  pointing {'hit' if r['pointing_hit'] else 'miss'}  energy {r['energy']:.3f}  "
                     f"box IoU {r['localisation_iou']:.3f}")
        if "energy_in_forbidden" in r:
            e = r["energy_in_forbidden"]
            line += f"  forbidden {'undefined' if e is None else f'{e:.3f}'}"
        if "correct" in r:
            line += f"  {'right' if r['correct'] else 'wrong'} (true {r['true_label']})"
        echo_line(line)
    for key, title, _ in METRIC_COLUMNS:
        if s.get(key) is not None:
            click.echo(f"{title:<28} {s[key]:.4f}")


@click.command("eval")
@opt.model_argument
@click.argument("images", nargs=-1, required=True)
@_metric_options
@opt.input_options()
@opt.labels_option
@opt.layer_option
@click.option("--target", default="top1", show_default=True,
              help="What to explain, as explain's --target (one map per image: not topK).")
@gating.gate_options
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for --junit/--markdown (eval writes nothing else).")
@opt.overwrite_option
@opt.json_option
@opt.ray_options(formats=False)
@guarded
def eval_(model: str, images: tuple[str, ...], method: str, boxes_file: str | None, steps: int, road: bool,
          tolerance: float, batch_size: int, device: str, preset: str | None, config_file: str | None,
          size: str | None, letterbox: bool | None, labels_file: str | None, layer: str | None, target: str,
          forbidden_file: str | None, truth_file: str | None, requires: tuple[str, ...], junit_name: str | None,
          markdown_name: str | None, out_dir: str | None, overwrite: bool, as_json: bool, use_ray: bool,
          address: str | None, actors: int | None, image_column: str | None) -> None:
    """Measure how faithful and well placed a model's explanations are on IMAGES (files or folders).

    Per image and on average: average drop and increase in confidence (Grad-CAM++), deletion and
    insertion AUC (RISE), optionally ROAD (--road); with --boxes, the pointing game, the
    energy-based pointing game and the IoU of the CAM paper's box; with --forbidden, the share of
    the map's energy inside regions it must avoid; with --truth, the accuracy. --require gates the
    numbers (exit code 3 when one fails, one stderr line each); --junit/--markdown write CI files
    inside -o OUT. With --ray the images are evaluated on Ray Data's workers (any SOURCE explain
    --ray takes) and the metrics averaged over all of them: the same report and files.
    """
    gp = gating.plan(requires, boxes_file, forbidden_file, truth_file, road, junit_name, markdown_name, bool(out_dir))
    gating.check(gp, [Path(model).stem])
    _check_ray_options(use_ray, address, actors, image_column)
    if use_ray:
        from .on_ray import eval_on_ray

        out = _ray_out(out_dir, overwrite, [model], images, gp.planned()) if out_dir else None
        run = ModelRun.load(model, method, preset, size, providers=["CPUExecutionProvider"], config=config_file,
                            letterbox=letterbox, labels_file=labels_file, layer=layer, target=target)
        report, got = eval_on_ray(run, images, gp.notes, steps, road, tolerance, batch_size, device,
                                  {"address": address, "actors": actors, "image_column": image_column,
                                   "exclude": out_dir})
        ev = Evaluation(report["model"], report["images"], report["metrics"], [], report["model"]["layer"])
        errors = report["errors"]
        gating.judge(gp, report)
        shown = _Images(got.items(), {r["image"] for r in report["images"]})
        gating.write_ci(gp, out, report, shown, _Maps([run], shown))
    else:
        files = _files(images, "evaluate", Path(out_dir) if out_dir else None)
        out = None
        if out_dir:
            out = OutputDir(out_dir, overwrite, protect=[model, *files])
            out.check_free(gp.planned())
        items, failed = _items(files)
        run = ModelRun.load(model, method, preset, size, providers=opt.providers(device), config=config_file,
                            letterbox=letterbox, labels_file=labels_file, layer=layer, target=target)
        ev = evaluate_stream(run, items, gp.notes.boxes, steps, road, batch_size, tolerance, on_error=failed,
                             notes=gp.notes)
        errors = failed.records
        report = {"model": ev.model, "metrics": ev.summary, "images": ev.images, "errors": errors}
        gating.judge(gp, report)
        shown = _Images(items, {r["image"] for r in ev.images})
        gating.write_ci(gp, out, report, shown, _Maps([run], shown))
    if as_json:
        click.echo(dumps(report))
    else:
        _print_eval(model, run, ev)
    gating.finish(gp, errors)


def _check_ray_options(use_ray: bool, address: str | None, actors: int | None, image_column: str | None) -> None:
    """--address, --actors and --image-column only mean something with --ray."""
    ray_only = {"--address": address, "--actors": actors, "--image-column": image_column}
    if not use_ray and any(v is not None for v in ray_only.values()):
        raise UsageError(f"{next(k for k, v in ray_only.items() if v is not None)} needs --ray")


def _ray_out(out_dir: str, overwrite: bool, models: Sequence[str], sources: Sequence[str],
             planned: Sequence[str]) -> OutputDir:
    """OUT of a --ray run, checked before Ray starts: never over a model or a local input file."""
    out = OutputDir(out_dir, overwrite, protect=[*models, *(p for p in sources if os.path.isfile(p))])
    out.check_free(planned)
    return out


def per_model(values: Sequence[str], n: int, what: str) -> list[str | None]:
    """An option given once (for every model), once per model, or not at all; '-' = none."""
    if len(values) not in (0, 1, n):
        raise UsageError(f"give {what} once, or once per model ({n}); got {len(values)}")
    chosen = list(values) * n if len(values) == 1 else list(values) or ["-"] * n
    return [None if v == "-" else v for v in chosen]


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--images", "images", multiple=True, required=True, help="Image folder or file (repeatable).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder.")
@_metric_options
@opt.input_options(per_model=True)
@click.option("--layer", "layers", multiple=True,
              help="ONNX tensor to explain: once for every model, or once per model in order ('-' = the default).")
@click.option("--target", "targets", multiple=True,
              help="What to explain (explain's --target, not topK): once, or once per model ('-' = top1).")
@click.option("--labels", "labels_files", multiple=True, type=click.Path(dir_okay=False),
              help="Class names, one per line: once, or once per model ('-' = the model's own).")
@gating.gate_options
@click.option("--overwrite", is_flag=True, help="Replace index.html, review.json and the CI files in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Also print review.json on stdout.")
@opt.ray_options(formats=False)
@guarded
def review(models: tuple[str, ...], images: tuple[str, ...], out_dir: str, method: str, boxes_file: str | None,
           steps: int, road: bool, tolerance: float, batch_size: int, device: str, presets: tuple[str, ...],
           configs: tuple[str, ...], size: str | None, letterbox: bool | None, layers: tuple[str, ...],
           targets: tuple[str, ...], labels_files: tuple[str, ...], forbidden_file: str | None, truth_file: str | None, requires: tuple[str, ...],
           junit_name: str | None, markdown_name: str | None, overwrite: bool, as_json: bool, use_ray: bool,
           address: str | None, actors: int | None, image_column: str | None) -> None:
    """Compare models' explanations on the same images in one self-contained HTML page.

    Writes OUT/index.html (images inlined, no network needed to view it) with, per image, the
    photo and each model's overlay, predicted label and probability, sorted by how little the
    models' maps agree; a table of metrics per model; the agreement of every pair (Spearman ρ and
    top-20% IoU of the maps at the image's own size). OUT/review.json, written last, holds all the
    numbers. Each model is prepared as `explain` would prepare it: its own input size, layout,
    metadata (onnxcam.preprocess / onnxcam.preset / onnxcam.labels), --config, --preset, --labels,
    --layer and --target (each once, or once per model).

    `onnxcam review OLD NEW` compares model versions: review.json's "drift" lists, per image (most
    changed first) and per class, the rank correlation, top-k IoU, label changes and the energy
    moved onto --forbidden regions of every model against the first. --require gates any metric
    per model or per pair (exit code 3 when one fails); --junit/--markdown write CI files in OUT.
    With --ray the images (any SOURCE explain --ray takes) are reviewed on Ray Data's workers,
    each holding every model, and the numbers aggregated here: the same review.json and files.
    """
    _check_ray_options(use_ray, address, actors, image_column)
    n = len(models)
    chosen_presets = per_model(presets, n, "--preset")
    chosen_configs = per_model(configs, n, "--config")
    chosen_layers = per_model(layers, n, "--layer")
    chosen_targets = per_model(targets, n, "--target")
    chosen_labels = per_model(labels_files, n, "--labels")
    names = unique_names([Path(m).stem for m in models])
    gp = gating.plan(requires, boxes_file, forbidden_file, truth_file, road, junit_name, markdown_name, True)
    gating.check(gp, names)
    planned = ["index.html", "review.json", *gp.planned()]
    if use_ray:
        out = _ray_out(out_dir, overwrite, models, images, planned)
    else:
        files = _files(images, "review", exclude=Path(out_dir))
        out = OutputDir(out_dir, overwrite, protect=[*models, *files])
        out.check_free(planned)
        items, errors = _items(files)
    providers = ["CPUExecutionProvider"] if use_ray else opt.providers(device)
    runs = [ModelRun.load(m, method, p, size, name=nm, providers=providers, config=c, letterbox=letterbox,
                          labels_file=lb, layer=ly, target=t)
            for m, p, c, nm, ly, t, lb in zip(models, chosen_presets, chosen_configs, names, chosen_layers,
                                              chosen_targets, chosen_labels)]
    if use_ray:
        from .on_ray import review_on_ray

        rv, got = review_on_ray(runs, images, gp.notes, steps, road, tolerance, batch_size, device,
                                {"address": address, "actors": actors, "image_column": image_column,
                                 "exclude": out_dir})
        items, error_records = got.items(), got.errors
    else:
        rv = review_stream(runs, items, gp.notes.boxes, steps, road, batch_size, tolerance, on_error=errors,
                           notes=gp.notes)
        error_records = errors.records
    report = rv.report
    report["errors"] = error_records
    gating.judge(gp, report)
    shown = _Images(items, {r["image"] for r in report["images"]})
    gating.write_ci(gp, out, report, shown, _Maps(runs, shown))
    page, _ = write_report(out, rv)
    if as_json:
        click.echo(dumps(report))
    echo_line(f"reviewed {len(report['images'])} image(s) with {len(runs)} model(s); open {page}", err=True)
    gating.finish(gp, error_records)
