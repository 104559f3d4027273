"""`onnxcam layers`, `info` and `methods`: what a model and onnxcam offer, nothing written."""

from __future__ import annotations

import click

from ..methods import METHODS
from ..model import inspect_model, load_model
from ..output import dumps
from ..preprocessing import DEFAULT_SIZE, parse_size
from . import options as opt
from .common import echo_line, guarded, prepared_model


@click.command()
@opt.model_argument
@opt.size_option()
@opt.json_option
@guarded
def layers(model: str, size: str | None, as_json: bool) -> None:
    """List candidate target layers (4-D activations, or a vision transformer's token layers on
    their patch grid, feeding the output) and mark the default."""
    hw = parse_size(size)
    info, prep = prepared_model(model, hw)
    size_used = info.fixed_size or hw or DEFAULT_SIZE
    cands = prep.layers
    default = prep.layer(None).name if cands else None
    if as_json:
        click.echo(dumps({
            "model": info.as_dict(), "input_size": list(size_used), "output": prep.output,
            "layers": [l.as_dict(l.name == default) for l in cands], "default": default,
        }))
        return
    echo_line(f"{model}: opset {info.opset}, input {info.image_input.name} {list(info.image_input.shape)} "
               f"{info.layout}, explained output {prep.output}, size {size_used[0]}x{size_used[1]}")
    width = max([len(l.name) for l in cands] + [5])
    for l in cands:
        mark = "*" if l.name == default else " "
        tokens = f" +{l.prefix} prefix token(s)" if l.is_tokens else ""
        zero = "  (patch gradient exactly 0)" if not l.live else ""
        echo_line(f"{mark} {l.name:<{width}}  {l.op_type:<18} {l.channels}x{l.height}x{l.width}  {l.layout}{tokens}{zero}")
    echo_line("* default layer")


@click.command()
@opt.model_argument
@opt.json_option
@guarded
def info(model: str, as_json: bool) -> None:
    """Opset, inputs, outputs, input layout and size of a model."""
    i = inspect_model(load_model(model), model)
    d = i.as_dict()
    if as_json:
        click.echo(dumps(d))
        return
    echo_line(f"{model}")
    echo_line(f"  opset {i.opset}, IR {i.ir_version}, producer {i.producer or '?'}")
    for io in ("inputs", "outputs"):
        for t in d[io]:
            echo_line(f"  {io[:-1]:<6} {t['name']} {t['shape']} {t['dtype']}")
    echo_line(f"  image input {i.image_input.name}: {i.layout}, size {i.size[0]}x{i.size[1]}, {i.channels} channel(s)")


@click.command()
def methods() -> None:
    """List the CAM methods with their papers."""
    for name in sorted(METHODS):
        cls = METHODS[name]
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        kind = "gradient" if cls.needs_backward() else "forward-only"
        echo_line(f"{name:<20} [{kind}] {doc}")
