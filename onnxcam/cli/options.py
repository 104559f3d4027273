"""The options the commands share, each defined once (name, type, default, help)."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..image import PRESETS
from ..methods import METHODS
from ..targets import TARGET_HELP

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DEVICES: dict[str, list[str] | None] = {
    "auto": None,
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
"""--device → onnxruntime providers (None: onnxruntime's best available)."""


def providers(device: str) -> list[str] | None:
    return DEVICES[device]


def stack(*decorators: Decorator) -> Decorator:
    """Several option decorators as one (applied in the order listed, as when stacked above a def)."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


model_argument = click.argument("model", type=click.Path(dir_okay=False))
method_option = click.option("--method", "-m", default="gradcam", show_default=True,
                             type=click.Choice(sorted(METHODS), case_sensitive=False), help="CAM method.")

def attention_options() -> Decorator:
    """The transformer methods' parameters: rollout's head fusion and discard ratio, the first block."""
    return stack(
        click.option("--head-fusion", type=click.Choice(["mean", "max", "min"]), default=None,
                     help="rollout: how heads are fused (default mean)."),
        click.option("--discard-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="rollout, grad-rollout: share of the smallest attention entries set to 0 (default 0)."),
        click.option("--start-layer", type=click.IntRange(min=0), default=None,
                     help="attention methods: the first block taken into account (default 0)."),
    )


layer_option = click.option("--layer", default=None,
                            help="ONNX tensor to explain (default: the last spatial activation).")
target_option = click.option("--target", default="top1", show_default=True, help=TARGET_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace result files that already exist in OUT.")
out_dir_option = click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
                              help="Output folder.")
device_option = click.option("--device", default="auto", show_default=True, type=click.Choice(sorted(DEVICES)))
batch_size_option = click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
labels_option = click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False),
                             help="Class names, one per line.")
letterbox_option = click.option("--letterbox", is_flag=True, default=None,
                                help="Fit images keeping their aspect ratio, padded (detectors); maps are mapped back.")


def size_option(native: bool = False) -> Decorator:
    """--size HxW (and 'native' where the command can run each image at its own size)."""
    extra = ", or 'native' (each image at its own size)" if native else ""
    return click.option("--size", default=None,
                        help=f"Input size HxW for models with a dynamic size{extra}; default 224x224.")


def preset_option(per_model: bool = False) -> Decorator:
    if per_model:
        return click.option("--preset", "presets", multiple=True,
                            help="Preprocessing preset: once for every model, or once per model in order ('-' = "
                                 "the model's own). Default: each model's metadata/config, else imagenet.")
    return click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
                        help="Preprocessing (default: --config, the model's metadata, else imagenet).")


def config_option(per_model: bool = False) -> Decorator:
    what = ("Preprocessing config (JSON or YAML): preset or mean/std/scale/bgr, size, letterbox, labels, "
            "multiple.")
    if per_model:
        return click.option("--config", "configs", multiple=True,
                            help=what + " Once for every model, or once per model in order ('-' = none).")
    return click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help=what)


def input_options(per_model: bool = False, native: bool = True) -> Decorator:
    """How images become model inputs (onnxcam.preprocessing): preset, config, size, letterbox."""
    return stack(preset_option(per_model), config_option(per_model), size_option(native), letterbox_option)


def ray_options(formats: bool = True) -> Decorator:
    """Running on Ray Data (the `ray` extra): --ray, --address, --actors, --image-column and, for
    commands that write per-image files, --format."""
    fmt = click.option("--format", "out_format", default="files", show_default=True, type=click.Choice(["files", "parquet"]),
                       help="With --ray: overlays and .npy files as without --ray, or Parquet parts in OUT/explanations/.")
    return stack(
        click.option("--ray", "use_ray", is_flag=True,
                     help="Run on Ray Data (pip install 'onnxcam[ray]'): a local Ray, or the cluster at --address. "
                          "Images may then also come as globs, Parquet files with an image column, WebDataset tars "
                          "or s3:// URIs; explain's reruns keep what OUT already has."),
        click.option("--address", default=None,
                     help="With --ray: the cluster, 'auto' or ray://HOST:10001 (default: start a local Ray)."),
        click.option("--actors", default=None, type=click.IntRange(min=1),
                     help="With --ray: explaining actors (default: one per free CPU, or per GPU with --device cuda)."),
        *([fmt] if formats else []),
        click.option("--image-column", default=None,
                     help="With --ray: the Parquet column holding encoded images (default: the first binary one)."),
    )
