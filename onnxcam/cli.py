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

from .commands import parse_size as _parse_size
from .errors import ImageError, OnnxcamError, UsageError
from .explainer import Explainer
from .graph.rewrite import build_explain_model, prepare
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


TARGET_HELP = (
    "What to explain: top1 (default), a class index, a class label, topK (K maps per image), "
    "softmax:C, counterfactual:C, index:I[,J...] (one element of the output, e.g. a regression "
    "value), seg:C (the pixels predicted as C) or seg:C:x0,y0,x1,y1 (a region of the output map), "
    "det:best | det:row=R | det:class=C | det:box=x0,y0,x1,y1 (one detection of a YOLO-style raw "
    "output; det-scores:... for a (boxes, classes) scores output)."
)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _parse_target(value: str, labels: list[str] | None = None):
    """A --target value → what Explainer.explain takes (None, an int, a Target or TopK)."""
    from . import targets as T

    v = value.strip()
    low = v.lower()
    try:
        if low in ("top1", "pred", "predicted"):
            return None
        if low.startswith("top") and low[3:].isdigit():
            return T.TopK(int(low[3:]))
        if v.lstrip("-").isdigit():
            return int(v)
        kind, _, rest = v.partition(":")
        kind = kind.lower()
        if kind == "softmax":
            return T.SoftmaxTarget(int(rest) if rest else None)
        if kind == "counterfactual":
            return T.CounterfactualTarget(int(rest) if rest else None)
        if kind == "index":
            return T.OutputTarget(tuple(_ints(rest)))
        if kind == "seg":
            cls, _, box = rest.partition(":")
            return T.SegmentationTarget(int(cls), box=_ints(box) if box else None)
        if kind in ("det", "det-scores"):
            fmt = "yolo" if kind == "det" else "scores"
            key, _, val = rest.partition("=")
            if key in ("", "best"):
                return T.DetectionTarget(format=fmt)
            if key == "row":
                return T.DetectionTarget(index=int(val), format=fmt)
            if key == "class":
                return T.DetectionTarget(cls=int(val), format=fmt)
            if key == "box":
                return T.DetectionTarget(box=[float(b) for b in val.split(",")], format=fmt)
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a target; {TARGET_HELP}", param_hint="--target") from None
    if labels and v in labels:
        return labels.index(v)
    if labels:
        close = [l for l in labels if low in l.lower()][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise click.BadParameter(f"{value!r} is neither a class index nor one of the model's labels{hint}", param_hint="--target")
    raise click.BadParameter(f"{value!r} is not a target; {TARGET_HELP}", param_hint="--target")


def _parse_inputs(values: tuple[str, ...]) -> dict[str, np.ndarray]:
    """--input NAME=VALUE: a number, a comma list, or a .npy file."""
    out = {}
    for item in values:
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--input")
        try:
            out[name] = np.load(val) if val.endswith(".npy") else np.asarray([float(v) for v in val.split(",")])
        except (OSError, ValueError):
            raise click.BadParameter(f"{item!r}: VALUE must be numbers or a readable .npy file", param_hint="--input") from None
        if out[name].size == 1 and not val.endswith(".npy"):
            out[name] = out[name].reshape(())
    return out


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
@click.option("--target", default="top1", show_default=True, help=TARGET_HELP)
@click.option("--output", "output_name", default=None, help="The model output to explain (default: the first (batch, classes) output).")
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)), help="Preprocessing (default: --config, the model's metadata, else imagenet).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="Preprocessing config (JSON or YAML): preset or mean/std/scale/bgr, size, letterbox, labels.")
@click.option("--size", default=None, help="Input size HxW for models with a dynamic size, or 'native' (each image at its own size; default 224x224).")
@click.option("--letterbox", is_flag=True, default=None, help="Fit images keeping their aspect ratio, padded (detectors); maps are mapped back.")
@click.option("--input", "extra_inputs", multiple=True, help="Another model input, NAME=VALUE (numbers or a .npy file).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--backend", default="onnx", show_default=True, type=click.Choice(["onnx", "ort-training"]), help="Gradient backend.")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout; no progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace result files that already exist in OUT.")
def explain(model: str, inputs: tuple[str, ...], out_dir: str, method: str, layers_opt: tuple[str, ...], fuse: str,
            aug_smooth: bool, eigen_smooth: bool, target: str, output_name: str | None, preset: str | None,
            config_file: str | None, size: str | None, letterbox: bool | None, extra_inputs: tuple[str, ...],
            batch_size: int, labels_file: str | None, device: str, backend: str, as_json: bool, overwrite: bool) -> None:
    """Explain images (files or folders) with a CAM method.

    Writes, per image, OUT/NAME.overlay.png (at the image's own size) and OUT/NAME.heatmap.npy
    (the map at the model's input size, in [0, 1]), and OUT/results.json with the model, layer,
    method and provider and, per image, the target, label, score, top-5 and files. With --target
    topK, one of each per class: NAME.top1.overlay.png ... Methods with a pixel-space result
    (guidedbackprop, guidedgradcam) also write OUT/NAME.guided.png.
    """
    from .image import letterbox as fit_letterbox, load_config, preset_from_config, unletterbox_map
    from .targets import TopK

    try:
        extra = _parse_inputs(extra_inputs)
        native = size is not None and size.lower() == "native"
        hw = None if native else _parse_size(size)
        out = Path(out_dir)
        images = _collect_images(inputs, out)
        if not images:
            raise UsageError("no images to explain")
        layer = list(layers_opt) if len(layers_opt) > 1 else (layers_opt[0] if layers_opt else None)
        ex = Explainer(model, method=method, layer=layer, providers=_providers(device), fuse=fuse,
                       aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, output=output_name, backend=backend,
                       inputs=extra)
        cfg: dict[str, Any] = {}
        if ex.info.metadata.get("onnxcam.preprocess"):
            cfg.update(load_config(text=ex.info.metadata["onnxcam.preprocess"]))
        elif ex.info.metadata.get("onnxcam.preset") in PRESETS:
            cfg["preset"] = ex.info.metadata["onnxcam.preset"]
        if config_file:
            cfg.update(load_config(config_file))
        if preset:
            cfg = {k: v for k, v in cfg.items() if k not in ("mean", "std", "scale", "bgr")}
            cfg["preset"] = preset
        pre = preset_from_config(cfg) if cfg else PRESETS["imagenet"]
        if ex.input_size:
            hw = ex.input_size
        elif not native:
            cfg_size = cfg.get("size")
            native = isinstance(cfg_size, str) and cfg_size.lower() == "native"
            hw = hw or (tuple(int(v) for v in cfg_size) if isinstance(cfg_size, list) else None) or (None if native else (224, 224))
        multiple = int(cfg.get("multiple", 32))
        use_letterbox = bool(cfg.get("letterbox", False)) if letterbox is None else letterbox
        labels = ex.labels or (list(cfg["labels"]) if isinstance(cfg.get("labels"), list) else None)
        if labels_file:
            labels = Path(labels_file).read_text(encoding="utf-8").splitlines()
        tgt = _parse_target(target, labels)
        per_image = tgt.k if isinstance(tgt, TopK) else 1
        names = _file_names(images)
        suffixes = [""] if per_image == 1 else [f".top{j + 1}" for j in range(per_image)]
        planned = [out / "results.json"] + [
            out / f"{n}{sfx}.{k}" for n in names for sfx in suffixes for k in ("overlay.png", "heatmap.npy", "guided.png")
        ]
        clash = [p for p in planned if p.exists()]
        if clash and not overwrite:
            raise OnnxcamError(f"{clash[0]} exists; pass --overwrite or choose another -o")
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
    step = 1 if native else batch_size  # native sizes differ: one image per batch
    last_size = None
    try:
        with click.progressbar(length=len(items), label="explaining", file=sys.stderr) if show_bar else _NoBar() as bar:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                loaded = []
                for path, name in chunk:
                    try:
                        loaded.append((path, name, load_image(path)))
                    except ImageError as exc:
                        click.echo(f"onnxcam: error: {exc}", err=True)
                        errors.append({"image": str(path), "error": str(exc)})
                if not loaded:
                    bar.update(len(chunk))
                    continue
                size_now = hw
                if native:
                    h0, w0 = loaded[0][2].shape[:2]
                    size_now = (max(multiple, h0 // multiple * multiple), max(multiple, w0 // multiple * multiple))
                fitted, boxes = [], []
                for _, _, img in loaded:
                    if use_letterbox:
                        canvas, box = fit_letterbox(img, size_now)
                        fitted.append(canvas)
                        boxes.append(box)
                    else:
                        fitted.append(img)
                        boxes.append(None)
                batch = preprocess(fitted, size_now, pre, ex.info.layout, channels)
                last_size = size_now
                res = ex.explain(batch, targets=tgt)
                provider, layer_name = res.provider, res.layer
                for i, (path, name, img) in enumerate(loaded):
                    for j, sfx in enumerate(suffixes):
                        r = i * per_image + j
                        heat = res.heatmaps[r]
                        full = unletterbox_map(heat, boxes[i]) if boxes[i] is not None else heat
                        ov, hm = out / f"{name}{sfx}.overlay.png", out / f"{name}{sfx}.heatmap.npy"
                        save_png(ov, overlay(img, full))
                        np.save(hm, full if boxes[i] is not None else heat)
                        rec = _record(path, ov, hm, res.outputs[r], int(res.targets[r]), labels)
                        rec["target_spec"] = target
                        pixel = res.extra.get("guided_gradcam", res.extra.get("guided_backprop"))
                        if pixel is not None:
                            gp = out / f"{name}{sfx}.guided.png"
                            save_png(gp, deprocess(pixel[r], (img.shape[0], img.shape[1])))
                            rec["guided"] = str(gp)
                        records.append(rec)
                bar.update(len(chunk))
    except OnnxcamError as exc:
        _fail(exc)
        return
    except Exception as exc:  # noqa: BLE001  (a bug or a runtime failure: one line, --debug for more)
        _fail(OnnxcamError(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"))
        return
    report = {
        "model": str(model),
        "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
        "method": ex.method.name,
        "layer": layer_name,
        "output": output_name or (ex.prepared(last_size).output if last_size else None),
        "provider": provider,
        "preset": pre.name,
        "input_size": list(hw) if hw else "native",
        "letterbox": use_letterbox,
        "images": records,
        "errors": errors,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"explained {len(records)} map(s) with {ex.method.name} at {layer_name}; results in {out}", err=True)
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
    name = (lambda k: labels[k] if labels and 0 <= k < len(labels) else None)
    rec: dict[str, Any] = {"image": str(path), "target": target, "label": name(target) if target >= 0 else None}
    if scores.ndim == 1:  # a classifier: scores and the top-5
        probs = _softmax(scores.astype(np.float64))
        top = np.argsort(-scores)[:5]
        if target >= 0:
            rec["score"] = float(scores[target])
            rec["probability"] = float(probs[target])
        rec["top5"] = [{"class": int(k), "label": name(int(k)), "score": float(scores[k]), "probability": float(probs[k])} for k in top]
    rec["overlay"], rec["heatmap"] = str(ov), str(hm)
    return rec


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
        default = prep.layer(None).name if cands else None
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


from .commands.eval_review import eval_, review as review_command  # noqa: E402  (registered below)

cli.add_command(eval_)
cli.add_command(review_command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except OnnxcamError as exc:  # pragma: no cover - commands catch their own
        _fail(exc)


if __name__ == "__main__":
    main()
