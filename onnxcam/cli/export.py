"""`onnxcam export`: the rewritten model as one .onnx file, written atomically."""

from __future__ import annotations

import json

import click

from ..export import export_model
from ..graph.versions import RUNTIME_LIMITS
from ..output import write_file
from ..preprocessing import parse_size
from . import options as opt
from .common import echo_line, guarded


@click.command()
@opt.model_argument
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Rewritten .onnx file.")
@opt.layer_option
@click.option("--heatmap", is_flag=True, help="Compute the method's heatmap in the graph: output onnxcam_heatmap (N, H, W).")
@opt.method_option
@click.option("--gradient/--no-gradient", default=True, show_default=True,
              help="Without --heatmap: append the gradient of the target score.")
@click.option("--target-input/--no-target-input", default=True, show_default=True,
              help="A required int64 input onnxcam_target (−1 = predicted class), or none: always the top-1.")
@click.option("--rgb-input", is_flag=True, help="Take uint8 RGB images (N, height, width, 3) of any size; resize and "
                                                "normalise in the graph as `explain` does.")
@opt.preset_option()
@opt.config_option()
@click.option("--target-runtime", type=click.Choice(sorted(RUNTIME_LIMITS)), default=None,
              help="Cap IR and opset to what that runtime loads (onnxruntime-web/-node 1.30: IR 13, opset 26).")
@click.option("--max-opset", type=click.IntRange(min=7), default=None, help="Highest default-domain opset to write.")
@click.option("--max-ir", type=click.IntRange(min=3), default=None, help="Highest IR version to write.")
@opt.size_option()
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never the input model).")
@opt.json_option
@guarded
def export(model: str, out_path: str, layer: str | None, heatmap: bool, method: str, gradient: bool, target_input: bool,
           rgb_input: bool, preset: str | None, config_file: str | None, target_runtime: str | None,
           max_opset: int | None, max_ir: int | None, size: str | None, overwrite: bool, as_json: bool) -> None:
    """Write the rewritten model: its outputs, onnxcam_targets and either onnxcam_heatmap (--heatmap)
    or onnxcam_activation and onnxcam_gradient; its int64 input onnxcam_target (−1 = predicted
    class) is required unless --no-target-input. The file is at the lowest IR and opset it needs."""
    ex = export_model(
        model, method=method, layer=layer, heatmap=heatmap, gradient=gradient,
        target="input" if target_input else "predicted", rgb_input=rgb_input, preset=preset, config=config_file,
        size=parse_size(size), runtime=target_runtime, max_opset=max_opset, max_ir=max_ir,
    )
    write_file(out_path, ex.model.SerializeToString(), overwrite=overwrite, protect=[model])
    if as_json:
        click.echo(json.dumps({"file": out_path, **ex.as_dict()}, indent=2))
    what = f"heatmap {ex.method}" if ex.method else f"gradient {'yes' if gradient else 'no'}"
    echo_line(f"wrote {out_path} (layer {ex.layer}, output {ex.output}, {what}, IR {ex.ir_version}, opset {ex.opset}, "
              f"inputs {', '.join(ex.inputs)})", err=True)
