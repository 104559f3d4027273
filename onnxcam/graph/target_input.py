"""How an exported model is told which class to explain, in a way every runtime honours.

An input backed by an initializer (a default value) is not a contract other runtimes keep:
onnxruntime-node drops it from `inputNames` and silently ignores a fed value (it explains the
predicted class instead), onnxruntime-web refuses the feed, and onnxruntime warns. So an exported
model has one of two target contracts, and never a defaulted input:

- ``"input"``: `onnxcam_target` is a *required* int64 input, shaped (1,) (one class for every
  image) or (N,) (one per image); −1 means the predicted class (ArgMax inside the graph);
- ``"predicted"``: no target input at all; the graph always explains each image's top-1 class.

Both return the explained classes as `onnxcam_targets` (N,) int64. With "input", a class ≥ the
number of classes K is refused by the runtime (the chosen classes go through Gather(0..K−1), whose
index check every onnxruntime build makes), never explained as an all-zero map.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UsageError

TARGET_INPUT = "onnxcam_target"
TARGETS_OUTPUT = "onnxcam_targets"
CONTRACTS = ("input", "predicted")


def set_target_contract(
    model: onnx.ModelProto, contract: str, num_classes: int, name: str = TARGET_INPUT, chosen: str = TARGETS_OUTPUT,
) -> onnx.ModelProto:
    """A copy of `model` whose target input `name` (an input with an initializer default, as the
    rewriter writes it) follows `contract`: "input" (required, no default; the chosen classes
    `chosen` checked against `num_classes`) or "predicted" (gone; a constant −1 in its place)."""
    if contract not in CONTRACTS:
        raise UsageError(f"target contract must be one of {CONTRACTS}, got {contract!r}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inputs = [i.name for i in g.input]
    if name not in inputs:
        raise UsageError(f"the model has no input {name!r} to set a target contract on (inputs: {inputs})")
    kept = [t for t in g.initializer if t.name != name]
    del g.initializer[:]
    g.initializer.extend(kept)
    if contract == "predicted":
        kept_inputs = [i for i in g.input if i.name != name]
        del g.input[:]
        g.input.extend(kept_inputs)
        const = numpy_helper.from_array(np.array([-1], dtype=np.int64))
        g.node.insert(0, helper.make_node("Constant", [], [name], value=const, name="onnxcam/predicted_class"))
        return m
    producer = next((n for n in g.node if chosen in n.output), None)
    if producer is None:
        raise UsageError(f"the model has no tensor {chosen!r} (the chosen classes) to check")
    unchecked = "onnxcam/targets_unchecked"
    for n in g.node:
        n.input[:] = [unchecked if i == chosen else i for i in n.input]
    producer.output[:] = [unchecked if o == chosen else o for o in producer.output]
    classes = "onnxcam/class_indices"
    g.initializer.append(numpy_helper.from_array(np.arange(num_classes, dtype=np.int64), classes))
    g.node.append(helper.make_node("Gather", [classes, unchecked], [chosen], axis=0, name="onnxcam/check_target"))
    return m
