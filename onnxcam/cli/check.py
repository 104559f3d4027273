"""`onnxcam check`: can the model be differentiated, and does the engine agree with finite differences?"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..check import GRADIENT_FREE, self_check
from ..errors import OnnxcamError
from ..output import dumps
from ..preprocessing import parse_size
from . import options as opt
from .common import echo_line, fail, guarded, prepared_model


def _print_layers(rep: Any) -> None:
    """One line per checked layer: ok/FAIL and why."""
    for l in rep.layers:
        if l.missing:
            echo_line(f"FAIL {l.layer}: no gradient rule for {', '.join(l.missing)}")
        elif l.error:
            echo_line(f"FAIL {l.layer}: {l.error}")
        else:
            echo_line(f"{'ok  ' if l.ok else 'FAIL'} {l.layer}: relative error median {l.median_rel_error:.1e}, "
                       f"max {l.max_rel_error:.1e} over {l.directions} directions")


@click.command()
@opt.model_argument
@click.option("--layer", "layer_names", multiple=True, help="Layer(s) to check (default: the default layer).")
@click.option("--all-layers", is_flag=True, help="Check every candidate layer.")
@opt.size_option()
@click.option("--directions", default=3, show_default=True, type=click.IntRange(1, 100), help="Random directions per layer.")
@opt.json_option
@guarded
def check(model: str, layer_names: tuple[str, ...], all_layers: bool, size: str | None, directions: int,
          as_json: bool) -> None:
    """Self-check: ops without a gradient rule on the path, and the engine's gradient against
    central finite differences of the model itself (evaluated in float64 by onnx's reference
    evaluator) in random directions. Exit 0 when every checked layer agrees (relative error
    ≤ 1e-2: the engine runs in float32), 1 otherwise."""
    hw = parse_size(size)
    names = list(layer_names) or None
    if all_layers:
        names = [l.name for l in prepared_model(model, hw)[1].layers]
    rep = self_check(model, names, hw, directions)
    if as_json:
        click.echo(dumps(rep.as_dict()))
    if rep.quantised_ops:
        fail(OnnxcamError(
            f"the model is quantised ({', '.join(rep.quantised_ops)}): gradients do not exist there, so "
            f"gradient methods cannot apply; use a gradient-free method: {', '.join(GRADIENT_FREE)}"
        ))
    if not as_json:
        _print_layers(rep)
    sys.exit(0 if rep.ok else 1)
