"""`onnxcam export`: the rewritten model as one .onnx file, written atomically."""

from __future__ import annotations

import click

from ..graph.rewrite import build_explain_model
from ..output import write_file
from ..preprocessing import parse_size
from . import options as opt
from .common import echo_line, guarded, prepared_model


@click.command()
@opt.model_argument
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Rewritten .onnx file.")
@opt.layer_option
@click.option("--gradient/--no-gradient", default=True, show_default=True, help="Append the gradient of the target score.")
@opt.size_option()
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never the input model).")
@guarded
def export(model: str, out_path: str, layer: str | None, gradient: bool, size: str | None, overwrite: bool) -> None:
    """Write the rewritten model: its outputs plus onnxcam_activation, onnxcam_gradient and
    onnxcam_targets; optional int64 input onnxcam_target (−1 = predicted class)."""
    _, prep = prepared_model(model, parse_size(size))
    em = build_explain_model(prep, layer, gradient)
    write_file(out_path, em.model.SerializeToString(), overwrite=overwrite, protect=[model])
    echo_line(f"wrote {out_path} (layer {em.layer.name}, output {em.output}, gradient {'yes' if gradient else 'no'})",
               err=True)
