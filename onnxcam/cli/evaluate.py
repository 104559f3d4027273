"""`onnxcam eval` (metrics of one model's explanations) and `onnxcam review` (several models side
by side in one self-contained HTML page). Both prepare images with the input policy `explain`
uses (onnxcam.preprocessing), so their maps are explain's maps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from ..console import escape
from ..errors import UsageError
from ..limits import MAX_STEPS
from ..output import OutputDir, dumps, unique_names
from ..review import (METRIC_COLUMNS, Evaluation, Loader, ModelRun, evaluate_stream, file_items, load_boxes,
                      review_stream, write_report)
from . import options as opt
from .common import collect_images, echo_line, guarded, report_error


class _Errors:
    """Images that could not be evaluated: one line on stderr each, one record each, exit 1."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.records: list[dict[str, str]] = []

    def __call__(self, name: str, message: str) -> None:
        report_error(message)
        self.records.append({"image": str(self.paths.get(name, name)), "error": message})


def _inputs(inputs: tuple[str, ...], boxes_file: str | None, verb: str,
            exclude: Path | None = None) -> tuple[dict | None, list[tuple[str, Loader]], _Errors]:
    """The boxes and the images, as loaders: each is decoded when its batch comes (memory does not
    grow with the number of images); an unreadable one is reported then, in one line."""
    files = [p for p, _ in collect_images(inputs, exclude)]
    if not files:
        raise UsageError(f"no images to {verb}")
    boxes = load_boxes(boxes_file) if boxes_file else None
    items = file_items(files)
    return boxes, items, _Errors({name: p for (name, _), p in zip(items, files)})


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
    click.echo(escape(f"{model}: {ev.model['method']} at {ev.layer}, preset {run.preset}, {s['images']} image(s)"))
    for r in ev.images:
        line = (f"  {escape(r['image'])}: {escape(r['label'])} (p={r['probability']:.3f})  drop {r['drop']:.1f}%  "
                f"deletion {r['deletion_auc']:.3f}  insertion {r['insertion_auc']:.3f}")
        if "pointing_hit" in r:
            line += (f"  pointing {'hit' if r['pointing_hit'] else 'miss'}  energy {r['energy']:.3f}  "
                     f"box IoU {r['localisation_iou']:.3f}")
        click.echo(line)
    for key, title, _ in METRIC_COLUMNS:
        if s.get(key) is not None:
            click.echo(f"{title:<28} {s[key]:.4f}")


@click.command("eval")
@opt.model_argument
@click.argument("images", nargs=-1, required=True)
@_metric_options
@opt.input_options()
@opt.labels_option
@opt.json_option
@guarded
def eval_(model: str, images: tuple[str, ...], method: str, boxes_file: str | None, steps: int, road: bool,
          tolerance: float, batch_size: int, device: str, preset: str | None, config_file: str | None,
          size: str | None, letterbox: bool | None, labels_file: str | None, as_json: bool) -> None:
    """Measure how faithful and well placed a model's explanations are on IMAGES (files or folders).

    Per image and on average: average drop and increase in confidence (Grad-CAM++), deletion and
    insertion AUC (RISE), optionally ROAD (--road); with --boxes, the pointing game, the
    energy-based pointing game and the IoU of the CAM paper's box. Writes nothing.
    """
    boxes, items, errors = _inputs(images, boxes_file, "evaluate")
    run = ModelRun.load(model, method, preset, size, providers=opt.providers(device), config=config_file,
                        letterbox=letterbox, labels_file=labels_file)
    ev = evaluate_stream(run, items, boxes, steps, road, batch_size, tolerance, on_error=errors)
    if as_json:
        click.echo(dumps({"model": ev.model, "metrics": ev.summary, "images": ev.images, "errors": errors.records}))
    else:
        _print_eval(model, run, ev)
    if errors.records:
        sys.exit(1)


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
@click.option("--overwrite", is_flag=True, help="Replace index.html / review.json in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Also print review.json on stdout.")
@guarded
def review(models: tuple[str, ...], images: tuple[str, ...], out_dir: str, method: str, boxes_file: str | None,
           steps: int, road: bool, tolerance: float, batch_size: int, device: str, presets: tuple[str, ...],
           configs: tuple[str, ...], size: str | None, letterbox: bool | None, overwrite: bool, as_json: bool) -> None:
    """Compare models' explanations on the same images in one self-contained HTML page.

    Writes OUT/index.html (images inlined, no network needed to view it) with, per image, the
    photo and each model's overlay, predicted label and probability, sorted by how little the
    models' maps agree; a table of metrics per model; the agreement of every pair (Spearman ρ and
    top-20% IoU of the maps at the image's own size). OUT/review.json, written last, holds all the
    numbers. Each model is prepared as `explain` would prepare it: its own input size, layout,
    metadata (onnxcam.preprocess / onnxcam.preset / onnxcam.labels), --config and --preset.
    """
    chosen_presets = per_model(presets, len(models), "--preset")
    chosen_configs = per_model(configs, len(models), "--config")
    out = OutputDir(out_dir, overwrite, protect=models)
    out.check_free(("index.html", "review.json"))
    boxes, items, errors = _inputs(images, boxes_file, "review", exclude=Path(out_dir))
    runs = [ModelRun.load(m, method, p, size, name=n, providers=opt.providers(device), config=c, letterbox=letterbox)
            for m, p, c, n in zip(models, chosen_presets, chosen_configs, unique_names([Path(m).stem for m in models]))]
    rv = review_stream(runs, items, boxes, steps, road, batch_size, tolerance, on_error=errors)
    rv.report["errors"] = errors.records
    page, _ = write_report(out, rv)
    if as_json:
        click.echo(dumps(rv.report))
    echo_line(f"reviewed {len(rv.report['images'])} image(s) with {len(runs)} model(s); open {page}", err=True)
    if errors.records:
        sys.exit(1)
