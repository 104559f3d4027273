"""The onnxcam command line.

Data goes to stdout (JSON with --json), words to stderr. Exit codes: 0 success; 1 an error (one
line on stderr; an unreadable image among others still lets the rest be processed); 2 a usage
error (bad option, unknown layer or method, target out of range). --debug shows tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from .errors import ImageError, OnnxcamError, UsageError
from .explainer import Explainer
from .graph.rewrite import build_explain_model, prepare
from .layers import default_layer
from .model import inspect_model, load_model
from .image import IMAGE_SUFFIXES, PRESETS, deprocess, load_image, overlay, preprocess, save_png
from .methods import METHODS

log = logging.getLogger("onnxcam")


class _State:
    debug = False


def _fail(exc: BaseException) -> None:
    code = getattr(exc, "exit_code", 1)
    if _State.debug:
        traceback.print_exc()
    click.echo(f"onnxcam: error: {exc}", err=True)
    sys.exit(code)


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
        return h, w
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 224x224", param_hint="--size") from None


def _parse_target(value: str) -> int | None:
    if value.lower() in ("top1", "pred", "predicted"):
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a class index or 'top1'", param_hint="--target") from None


def _providers(name: str) -> list[str] | None:
    return {"auto": None, "cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[name]


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.version_option(package_name="onnxcam")
def cli(debug: bool, verbose: bool) -> None:
    """CAM and Grad-CAM explanations for ONNX image models, computed by onnxruntime."""
    _State.debug = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="onnxcam: %(message)s", stream=sys.stderr)


def _model_option(f):
    return click.argument("model", type=click.Path(dir_okay=False))(f)


def _layer_option(f):
    return click.option("--layer", default=None, help="ONNX tensor to explain (default: the last spatial activation).")(f)


def _method_option(f):
    return click.option(
        "--method", "-m", default="gradcam", show_default=True,
        type=click.Choice(sorted(METHODS), case_sensitive=False), help="CAM method.",
    )(f)


# -- explain ---------------------------------------------------------------------------------
def _collect_images(inputs: tuple[str, ...], out_dir: Path) -> list[Path]:
    files: list[Path] = []
    out_abs = out_dir.resolve()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and out_abs not in f.resolve().parents
            )
            if not found:
                log.warning("no images in %s", p)
            files.extend(found)
        else:
            files.append(p)  # unreadable ones are reported one by one
    return files


def _file_names(images: list[Path]) -> list[str]:
    """Unique output stems: the image's stem, with -2, -3, ... where two images share it."""
    seen: dict[str, int] = {}
    names = []
    for img in images:
        stem = img.stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _softmax(v: np.ndarray) -> np.ndarray:
    if np.all(v >= 0) and abs(float(v.sum()) - 1) < 1e-3:
        return v
    z = np.exp(v - v.max())
    return z / z.sum()


@cli.command()
@_model_option
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@_method_option
@click.option("--layer", "layers_opt", multiple=True, help="ONNX tensor to explain (default: the last spatial activation); repeat to fuse several.")
@click.option("--fuse", default="mean", show_default=True, type=click.Choice(["mean", "max"]), help="How several layers' maps are fused.")
@click.option("--aug-smooth", is_flag=True, help="Test-time augmentation: flips × value scales, maps averaged.")
@click.option("--eigen-smooth", is_flag=True, help="First principal component of the weighted activations instead of their sum.")
@click.option("--target", default="top1", show_default=True, help="Class index to explain, or top1.")
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)), help="Preprocessing (default: the model's metadata, else imagenet).")
@click.option("--size", default=None, help="Input size HxW for models with a dynamic size (default 224x224).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout; no progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace result files that already exist in OUT.")
def explain(model: str, inputs: tuple[str, ...], out_dir: str, method: str, layers_opt: tuple[str, ...], fuse: str,
            aug_smooth: bool, eigen_smooth: bool, target: str, preset: str | None, size: str | None, batch_size: int,
            labels_file: str | None, device: str, as_json: bool, overwrite: bool) -> None:
    """Explain images (files or folders) with a CAM method.

    Writes, per image, OUT/NAME.overlay.png (at the image's own size) and OUT/NAME.heatmap.npy
    (the map at the model's input size, in [0, 1]), and OUT/results.json with the model, layer,
    method and provider and, per image, the target, label, score, top-5 and files. Methods with a
    pixel-space result (guidedbackprop, guidedgradcam) also write OUT/NAME.guided.png.
    """
    try:
        tgt = _parse_target(target)
        hw = _parse_size(size)
        out = Path(out_dir)
        images = _collect_images(inputs, out)
        if not images:
            raise UsageError("no images to explain")
        names = _file_names(images)
        planned = [out / "results.json"] + [out / f"{n}.{k}" for n in names for k in ("overlay.png", "heatmap.npy", "guided.png")]
        clash = [p for p in planned if p.exists()]
        if clash and not overwrite:
            raise OnnxcamError(f"{clash[0]} exists; pass --overwrite or choose another -o")
        layer = list(layers_opt) if len(layers_opt) > 1 else (layers_opt[0] if layers_opt else None)
        ex = Explainer(model, method=method, layer=layer, providers=_providers(device), fuse=fuse,
                       aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        hw = ex.input_size or hw or (224, 224)
        preset_name = preset or ex.info.metadata.get("onnxcam.preset") or "imagenet"
        if preset_name not in PRESETS:
            preset_name = "imagenet"
        labels = ex.labels
        if labels_file:
            labels = Path(labels_file).read_text(encoding="utf-8").splitlines()
        channels = ex.info.channels if isinstance(ex.info.channels, int) else 3
        out.mkdir(parents=True, exist_ok=True)
    except click.BadParameter:
        raise
    except (OnnxcamError, OSError) as exc:
        _fail(exc)
        return

    records: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    provider = layer_name = ""
    show_bar = not as_json and sys.stderr.isatty() and len(images) > 1
    items = list(zip(images, names))
    try:
        with click.progressbar(length=len(items), label="explaining", file=sys.stderr) if show_bar else _NoBar() as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                loaded = []
                for path, name in chunk:
                    try:
                        loaded.append((path, name, load_image(path)))
                    except ImageError as exc:
                        click.echo(f"onnxcam: error: {exc}", err=True)
                        errors.append({"image": str(path), "error": str(exc)})
                if loaded:
                    batch = preprocess([im for _, _, im in loaded], hw, preset_name, ex.info.layout, channels)
                    res = ex.explain(batch, targets=tgt)
                    provider, layer_name = res.provider, res.layer
                    for i, (path, name, img) in enumerate(loaded):
                        ov, hm = out / f"{name}.overlay.png", out / f"{name}.heatmap.npy"
                        save_png(ov, overlay(img, res.heatmaps[i]))
                        np.save(hm, res.heatmaps[i])
                        rec = _record(path, ov, hm, res.outputs[i], int(res.targets[i]), labels)
                        pixel = res.extra.get("guided_gradcam", res.extra.get("guided_backprop"))
                        if pixel is not None:
                            gp = out / f"{name}.guided.png"
                            save_png(gp, deprocess(pixel[i], (img.shape[0], img.shape[1])))
                            rec["guided"] = str(gp)
                        records.append(rec)
                bar.update(len(chunk))
    except OnnxcamError as exc:
        _fail(exc)
        return
    report = {
        "model": str(model),
        "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
        "method": ex.method.name,
        "layer": layer_name,
        "provider": provider,
        "preset": preset_name,
        "input_size": list(hw),
        "images": records,
        "errors": errors,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"explained {len(records)} image(s) with {ex.method.name} at {layer_name}; results in {out}", err=True)
    if errors:
        sys.exit(1)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _record(path: Path, ov: Path, hm: Path, scores: np.ndarray, target: int, labels: list[str] | None) -> dict:
    probs = _softmax(scores.astype(np.float64))
    top = np.argsort(-scores)[:5]
    name = (lambda k: labels[k] if labels and 0 <= k < len(labels) else None)
    return {
        "image": str(path),
        "target": target,
        "label": name(target),
        "score": float(scores[target]),
        "probability": float(probs[target]),
        "top5": [{"class": int(k), "label": name(int(k)), "score": float(scores[k]), "probability": float(probs[k])} for k in top],
        "overlay": str(ov),
        "heatmap": str(hm),
    }


# -- layers, info, export, methods ----------------------------------------------------------------
@cli.command()
@_model_option
@click.option("--size", default=None, help="Input size HxW for models with a dynamic size (default 224x224).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def layers(model: str, size: str | None, as_json: bool) -> None:
    """List candidate target layers (4-D activations feeding the output) and mark the default."""
    hw = _parse_size(size)
    try:
        m = load_model(model)
        info = inspect_model(m, model)
        size_used = info.fixed_size or hw or (224, 224)
        prep = prepare(m, info, None if info.fixed_size else size_used)
        cands = prep.layers
        default = default_layer(cands).name if cands else None
    except OnnxcamError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({
            "model": info.as_dict(), "input_size": list(size_used), "output": prep.output,
            "layers": [l.as_dict(l.name == default) for l in cands], "default": default,
        }, indent=2))
        return
    click.echo(f"{model}: opset {info.opset}, input {info.image_input.name} {list(info.image_input.shape)} "
               f"{info.layout}, explained output {prep.output}, size {size_used[0]}x{size_used[1]}")
    width = max([len(l.name) for l in cands] + [5])
    for l in cands:
        mark = "*" if l.name == default else " "
        click.echo(f"{mark} {l.name:<{width}}  {l.op_type:<18} {l.channels}x{l.height}x{l.width}  {l.layout}")
    click.echo("* default layer")


@cli.command()
@_model_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model: str, as_json: bool) -> None:
    """Opset, inputs, outputs, input layout and size of a model."""
    try:
        i = inspect_model(load_model(model), model)
    except OnnxcamError as exc:
        _fail(exc)
        return
    d = i.as_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{model}\n  opset {i.opset}, IR {i.ir_version}, producer {i.producer or '?'}")
    for io in ("inputs", "outputs"):
        for t in d[io]:
            click.echo(f"  {io[:-1]:<6} {t['name']} {t['shape']} {t['dtype']}")
    click.echo(f"  image input {i.image_input.name}: {i.layout}, size {i.size[0]}x{i.size[1]}, {i.channels} channel(s)")


@cli.command()
@_model_option
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Rewritten .onnx file.")
@_layer_option
@click.option("--gradient/--no-gradient", default=True, show_default=True, help="Append the gradient of the target score.")
@click.option("--size", default=None, help="Input size HxW for models with a dynamic size.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export(model: str, out_path: str, layer: str | None, gradient: bool, size: str | None, overwrite: bool) -> None:
    """Write the rewritten model: its outputs plus onnxcam_activation, onnxcam_gradient and
    onnxcam_targets; optional int64 input onnxcam_target (−1 = predicted class)."""
    hw = _parse_size(size)
    try:
        out = Path(out_path)
        if out.exists() and (not overwrite or out.resolve() == Path(model).resolve()):
            raise OnnxcamError(f"{out} exists; pass --overwrite (never the input model) or choose another -o")
        m = load_model(model)
        info = inspect_model(m, model)
        prep = prepare(m, info, None if info.fixed_size else (hw or (224, 224)))
        em = build_explain_model(prep, layer, gradient)
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(em.model, str(out))
    except OnnxcamError as exc:
        _fail(exc)
        return
    click.echo(f"wrote {out} (layer {em.layer.name}, output {em.output}, gradient {'yes' if gradient else 'no'})", err=True)


@cli.command()
@_model_option
@click.option("--layer", "layer_names", multiple=True, help="Layer(s) to check (default: the default layer).")
@click.option("--all-layers", is_flag=True, help="Check every candidate layer.")
@click.option("--size", default=None, help="Input size HxW for models with a dynamic size (default 224x224).")
@click.option("--directions", default=3, show_default=True, type=click.IntRange(1, 100), help="Random directions per layer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check(model: str, layer_names: tuple[str, ...], all_layers: bool, size: str | None, directions: int, as_json: bool) -> None:
    """Self-check: ops without a gradient rule on the path, and the engine's gradient against
    central finite differences of the model itself (evaluated in float64 by onnx's reference
    evaluator) in random directions. Exit 0 when every checked layer agrees (relative error
    ≤ 1e-2: the engine runs in float32), 1 otherwise."""
    from .check import GRADIENT_FREE, self_check

    hw = _parse_size(size)
    try:
        names = list(layer_names) or None
        if all_layers:
            m = load_model(model)
            info = inspect_model(m, model)
            names = [l.name for l in prepare(m, info, None if info.fixed_size else (hw or (224, 224))).layers]
        rep = self_check(model, names, hw, directions)
    except OnnxcamError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(rep.as_dict(), indent=2))
    if rep.quantised_ops:
        _fail(OnnxcamError(
            f"the model is quantised ({', '.join(rep.quantised_ops)}): gradients do not exist there, so "
            f"gradient methods cannot apply; use a gradient-free method: {', '.join(GRADIENT_FREE)}"
        ))
    if not as_json:
        for l in rep.layers:
            if l.missing:
                click.echo(f"FAIL {l.layer}: no gradient rule for {', '.join(l.missing)}")
            elif l.error:
                click.echo(f"FAIL {l.layer}: {l.error}")
            else:
                click.echo(
                    f"{'ok  ' if l.ok else 'FAIL'} {l.layer}: relative error median {l.median_rel_error:.1e}, "
                    f"max {l.max_rel_error:.1e} over {l.directions} directions"
                )
    sys.exit(0 if rep.ok else 1)


@cli.command()
def methods() -> None:
    """List the CAM methods with their papers."""
    for name in sorted(METHODS):
        cls = METHODS[name]
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        kind = "gradient" if cls.needs_gradients else "forward-only"
        click.echo(f"{name:<20} [{kind}] {doc}")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except OnnxcamError as exc:  # pragma: no cover - commands catch their own
        _fail(exc)


if __name__ == "__main__":
    main()
