"""`onnxcam eval` (metrics of one model's explanations) and `onnxcam review` (several models side
by side in one self-contained HTML page)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import OnnxcamError, UsageError
from ..image import IMAGE_SUFFIXES, PRESETS
from ..methods import METHODS
from ..review import ModelRun, evaluate, load_boxes, load_images, review as run_review, write_report
from . import parse_size, fail

_DEVICES = {"auto": None, "cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _collect(inputs: tuple[str, ...], exclude: Path | None = None) -> list[Path]:
    files: list[Path] = []
    ex = exclude.resolve() if exclude is not None else None
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and (ex is None or ex not in f.resolve().parents)
            ))
        else:
            files.append(p)
    return files


def _inputs(files: list, boxes_file: str | None, verb: str):
    """The boxes and the readable images (each unreadable one reported in one line)."""
    if not files:
        raise UsageError(f"no images to {verb}")
    boxes = load_boxes(boxes_file) if boxes_file else None
    loaded, errors = load_images(files)
    for err in errors:
        click.echo(f"onnxcam: error: {err['error']}", err=True)
    if not loaded:
        raise OnnxcamError("no readable image")
    return boxes, loaded, errors


def _common(f):
    f = click.option("--method", "-m", default="gradcam", show_default=True,
                     type=click.Choice(sorted(METHODS), case_sensitive=False), help="CAM method.")(f)
    f = click.option("--boxes", "boxes_file", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="JSON {image file name: [x0, y0, x1, y1] or {\"box\": [...]}} in image pixels: "
                          "adds the pointing games and the CAM box IoU.")(f)
    f = click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1),
                     help="Deletion/insertion steps.")(f)
    f = click.option("--road", is_flag=True, help="Also ROAD MoRF/LeRF at 10..90% (slow: an imputation per step).")(f)
    f = click.option("--tolerance", default=15.0, show_default=True, type=click.FloatRange(min=0),
                     help="Pointing-game tolerance in image pixels.")(f)
    f = click.option("--size", default=None, help="Input size HxW for models with a dynamic size (default 224x224).")(f)
    f = click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))(f)
    f = click.option("--device", default="auto", show_default=True, type=click.Choice(sorted(_DEVICES)))(f)
    return f


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@_common
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
              help="Preprocessing (default: the model's metadata, else imagenet).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_(model: str, images: tuple[str, ...], method: str, boxes_file: str | None, steps: int, road: bool,
          tolerance: float, size: str | None, batch_size: int, device: str, preset: str | None, as_json: bool) -> None:
    """Measure how faithful and well placed a model's explanations are on IMAGES (files or folders).

    Per image and on average: average drop and increase in confidence (Grad-CAM++), deletion and
    insertion AUC (RISE), optionally ROAD (--road); with --boxes, the pointing game, the
    energy-based pointing game and the IoU of the CAM paper's box. Writes nothing.
    """
    hw = parse_size(size)
    try:
        boxes, loaded, errors = _inputs(_collect(images), boxes_file, "evaluate")
        run = ModelRun.load(model, method, preset, hw, providers=_DEVICES[device])
        ev = evaluate(run, loaded, boxes, steps, road, batch_size, tolerance)
    except OnnxcamError as exc:
        fail(exc)
        return
    from ..review import _clean

    report: dict[str, Any] = _clean({"model": ev.model, "metrics": ev.summary, "images": ev.images, "errors": errors})
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        s = ev.summary
        click.echo(f"{model}: {ev.model['method']} at {ev.layer}, preset {run.preset}, {s['images']} image(s)")
        for r in ev.images:
            line = (f"  {r['image']}: {r['label']} (p={r['probability']:.3f})  drop {r['drop']:.1f}%  "
                    f"deletion {r['deletion_auc']:.3f}  insertion {r['insertion_auc']:.3f}")
            if "pointing_hit" in r:
                line += f"  pointing {'hit' if r['pointing_hit'] else 'miss'}  energy {r['energy']:.3f}  box IoU {r['localisation_iou']:.3f}"
            click.echo(line)
        names = {"pointing_game": "pointing game (%)", "energy_pointing_game": "energy pointing game",
                 "localisation_iou": "CAM box IoU", "average_drop": "average drop (%)",
                 "increase_in_confidence": "increase in confidence (%)", "deletion_auc": "deletion AUC",
                 "insertion_auc": "insertion AUC", "road_morf": "ROAD MoRF mean", "road_lerf": "ROAD LeRF mean"}
        for k, title in names.items():
            if s.get(k) is not None:
                click.echo(f"{title:<28} {s[k]:.4f}")
    if errors:
        sys.exit(1)




@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--images", "images", multiple=True, required=True, help="Image folder or file (repeatable).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder.")
@_common
@click.option("--preset", "presets", multiple=True,
              help="Preprocessing: once for every model, or once per model in order ('-' = the model's "
                   "metadata, else imagenet). Default: each model's metadata.")
@click.option("--overwrite", is_flag=True, help="Replace index.html / review.json in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Also print review.json on stdout.")
def review(models: tuple[str, ...], images: tuple[str, ...], out_dir: str, method: str, boxes_file: str | None,
           steps: int, road: bool, tolerance: float, size: str | None, batch_size: int, device: str,
           presets: tuple[str, ...], overwrite: bool, as_json: bool) -> None:
    """Compare models' explanations on the same images in one self-contained HTML page.

    Writes OUT/index.html (images inlined, no network needed to view it) with, per image, the
    photo and each model's overlay, predicted label and probability, sorted by how little the
    models' maps agree; a table of metrics per model; the agreement of every pair (Spearman ρ and
    top-20% IoU of the maps at the image's own size). OUT/review.json holds all the numbers.
    Each model gets its own input size, layout and preset (metadata `onnxcam.preset`).
    """
    hw = parse_size(size)
    try:
        if len(presets) not in (0, 1, len(models)):
            raise UsageError(f"give --preset once, or once per model ({len(models)}); got {len(presets)}")
        bad = [p for p in presets if p != "-" and p not in PRESETS]
        if bad:
            raise UsageError(f"unknown preset {bad[0]!r}; choose one of: {', '.join(PRESETS)} (or '-')")
        per_model = list(presets) * len(models) if len(presets) == 1 else list(presets) or ["-"] * len(models)
        out = Path(out_dir)
        for p in (out / "index.html", out / "review.json"):
            if p.exists() and not overwrite:
                raise OnnxcamError(f"{p} exists; pass --overwrite or choose another -o")
        boxes, loaded, errors = _inputs(_collect(images, exclude=out), boxes_file, "review")
        from ..review import _unique_names

        names = _unique_names(models)
        runs = [ModelRun.load(m, method, None if p == "-" else p, hw, name=n, providers=_DEVICES[device])
                for m, p, n in zip(models, per_model, names)]
        report, evals = run_review(runs, loaded, boxes, steps, road, batch_size, tolerance)
        report["errors"] = errors
        page, js = write_report(out, report, loaded, evals, overwrite)
    except OnnxcamError as exc:
        fail(exc)
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
    click.echo(f"reviewed {len(loaded)} image(s) with {len(runs)} model(s); open {page}", err=True)
    if errors:
        sys.exit(1)
