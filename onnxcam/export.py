"""Export: one ONNX file that returns the prediction and its explanation, for any runtime.

`export_model` runs the passes in order, each on a copy:
1. `graph.rewrite.build_explain_model`: the layer's activation A and ∂y_c/∂A in plain ai.onnx ops;
2. with `heatmap=True`, `graph.heatmap.append_heatmap`: the method's map in the graph, output
   `onnxcam_heatmap` (N, H, W), equal to `Explainer(...).explain(x).heatmaps`;
3. `graph.target_input.set_target_contract`: a required `onnxcam_target` input (−1 = predicted)
   or none at all (always the top-1) — never an input with a default, which other runtimes drop;
4. with `rgb_input=True`, `graph.rgb_input.add_rgb_input`: a uint8 (N, h, w, 3) image input with
   the preset's resize and normalisation inside the graph;
5. `graph.versions.lower_versions`: the lowest IR and opset the graph needs, within caps
   (`runtime="web"` or `"node"`: IR ≤ 13, opset ≤ 26), checked by onnx.checker.

Example: ``export_model("mobilenet_v2.onnx", heatmap=True, rgb_input=True, runtime="web").save("m.onnx")``
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import onnx

from .errors import UsageError
from .graph.heatmap import HEATMAP_OUTPUT, append_heatmap, check_method
from .graph.rewrite import ACT_OUTPUT, GRAD_OUTPUT, TARGETS_OUTPUT, build_explain_model, prepare
from .graph.rgb_input import RGB_INPUT, add_rgb_input
from .graph.target_input import CONTRACTS, TARGET_INPUT, set_target_contract
from .graph.versions import RUNTIME_LIMITS, lower_versions
from .image import Preset
from .layers import cam_head
from .model import inspect_model, load_model
from .preprocessing import resolve_policy
from .types import DEFAULT_SIZE

log = logging.getLogger(__name__)

EXPORT_METADATA = "onnxcam.export"


@dataclass
class Exported:
    """An exported model and what it contains."""

    model: onnx.ModelProto
    layer: str
    output: str  # the explained output
    method: str | None  # the in-graph heatmap's method, None without --heatmap
    target: str  # the target contract: "input" or "predicted"
    size: tuple[int, int]  # the model input's (H, W): the heatmap's size
    ir_version: int
    opset: int
    preset: str | None = None  # the in-graph preprocessing, with rgb_input

    @property
    def inputs(self) -> list[str]:
        inits = {t.name for t in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in inits]

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def as_dict(self) -> dict:
        return {
            "layer": self.layer, "output": self.output, "method": self.method, "target": self.target,
            "size": list(self.size), "ir_version": self.ir_version, "opset": self.opset, "preset": self.preset,
            "inputs": self.inputs, "outputs": self.outputs,
        }

    def save(self, path: str | os.PathLike) -> None:
        onnx.save(self.model, os.fspath(path))


def export_model(
    model: str | os.PathLike | onnx.ModelProto,
    method: str = "gradcam",
    layer: str | None = None,
    heatmap: bool = False,
    gradient: bool = True,
    target: str = "input",
    rgb_input: bool = False,
    preset: str | Preset | None = None,
    config: str | os.PathLike | None = None,
    size: tuple[int, int] | None = None,
    output: str | None = None,
    runtime: str | None = None,
    max_opset: int | None = None,
    max_ir: int | None = None,
    keep_tensors: bool = False,
) -> Exported:
    """The rewritten model, ready to save (see the module docstring for the passes).

    heatmap: add `onnxcam_heatmap` for `method` (cam, gradcam, hirescam, gradcam++, xgradcam,
    layercam, gradcam-elementwise); without it the model returns `onnxcam_activation` and
    `onnxcam_gradient` (with `gradient`). keep_tensors: keep those two next to the heatmap.
    target: "input" (a required int64 `onnxcam_target`, (1,) or (N,), −1 = predicted class) or
    "predicted" (no input: the top-1). rgb_input: the preprocessing is the model's input policy
    (`preset` or a `config` file, else the model's metadata, else imagenet; a Preset object is used
    as is). size: (H, W) for models whose input size is dynamic
    (default DEFAULT_SIZE, 224×224). runtime: "web" or "node" set the caps (IR ≤ 13, opset ≤ 26)."""
    if target not in CONTRACTS:
        raise UsageError(f"target must be one of {CONTRACTS}, got {target!r}")
    if runtime is not None:
        if runtime not in RUNTIME_LIMITS:
            raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIME_LIMITS)}")
        ir_cap, opset_cap = RUNTIME_LIMITS[runtime]
        max_ir = min(max_ir, ir_cap) if max_ir is not None else ir_cap
        max_opset = min(max_opset, opset_cap) if max_opset is not None else opset_cap
    m = model if isinstance(model, onnx.ModelProto) else load_model(model)
    info = inspect_model(m, "<model>" if isinstance(model, onnx.ModelProto) else os.fspath(model))
    meth = check_method(method) if heatmap else None
    if meth is not None and meth.needs_gradients and not gradient:
        raise UsageError(f"method {meth.name} needs the gradient: drop --no-gradient (gradient=False), or use --method cam")
    with_gradient = meth.needs_gradients if meth is not None else gradient
    name = meth.name if meth is not None else None
    prep = prepare(m, info, None if info.fixed_size else (size or DEFAULT_SIZE), output)
    em = build_explain_model(prep, layer, with_gradient)
    hw = info.fixed_size or (size or DEFAULT_SIZE)
    out = em.model
    if meth is not None:
        lay = em.layer
        head = cam_head(prep.model, prep.shapes, prep.constants, lay, em.output).weight if meth.needs_head else None
        keep = None
        if not keep_tensors:
            keep = [o.name for o in prep.model.graph.output] + [TARGETS_OUTPUT]
        out = append_heatmap(
            out, meth, lay, prep.info.image_input, prep.info.layout, ACT_OUTPUT,
            GRAD_OUTPUT if with_gradient else None, TARGETS_OUTPUT, hw, prep.shapes[lay.name].elem_type, head, keep,
        ).model
    out = set_target_contract(out, target, em.num_classes, TARGET_INPUT, TARGETS_OUTPUT)
    used = None
    if rgb_input:
        if isinstance(preset, Preset):
            pre = preset
        else:
            policy = resolve_policy(info, config_file=config, preset=preset)
            if policy.letterbox:
                raise UsageError("--rgb-input resizes without letterboxing; the model's config asks for a letterbox")
            pre = policy.preset
        out = add_rgb_input(out, info, hw, pre)
        used = pre.name
    low = lower_versions(out, max_opset, max_ir)
    meta = {
        "method": name, "layer": em.layer.name, "output": em.output, "target": target, "size": list(hw),
        "heatmap": HEATMAP_OUTPUT if name else None, "image_input": RGB_INPUT if rgb_input else info.image_input.name,
        "preset": used,
    }
    props = [p for p in low.model.metadata_props if p.key != EXPORT_METADATA]
    del low.model.metadata_props[:]
    low.model.metadata_props.extend(props)
    low.model.metadata_props.add(key=EXPORT_METADATA, value=json.dumps(meta))
    log.info("exported layer %s, method %s, IR %d, opset %d", em.layer.name, name, low.ir_version, low.opset)
    return Exported(low.model, em.layer.name, em.output, name, target, hw, low.ir_version, low.opset, used)
