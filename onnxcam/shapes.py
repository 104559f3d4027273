"""Every tensor's shape and element type: ONNX shape inference, then a measurement where it fails.

`infer_shapes` runs ONNX shape inference (with data propagation) on a copy without the big
initializers' bytes, so models over 2 GB work too. `fill_runtime_shapes` measures, by running the
model in onnxruntime at batch 1 and 2, the float tensors whose shapes inference lost (reshapes
computed from run-time shapes, as TorchScript's channel shuffle).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .errors import ModelLoadError
from .model import ModelInfo
from .runtime import CPU, session_for
from .storage import without_big_data
from .types import BATCH, FLOAT_TYPES, Dim, TensorInfo, tensor_info

log = logging.getLogger(__name__)

Shapes = dict[str, TensorInfo]


def infer_shapes(model: onnx.ModelProto) -> Shapes:
    """Shapes and element types of every value, by ONNX shape inference (with data propagation).
    Runs on a copy without the big initializers' data, so models over 2 GB work too."""
    try:
        inferred = onnx.shape_inference.infer_shapes(
            without_big_data(model), check_type=False, strict_mode=False, data_prop=True,
        )
    except Exception as exc:  # onnx raises several types (InferenceError, ValidationError, ...)
        raise ModelLoadError(f"ONNX shape inference failed: {exc}") from None
    out: Shapes = {}
    g = inferred.graph
    for init in g.initializer:
        out[init.name] = TensorInfo(init.name, tuple(int(d) for d in init.dims), init.data_type)
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name not in out or out[vi.name].elem_type == 0:
            out[vi.name] = tensor_info(vi)
    for node in g.node:  # Constant nodes: shape from their value
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = TensorInfo(node.output[0], tuple(a.t.dims), a.t.data_type)
    return out


def _unknown_shapes(model: onnx.ModelProto, shapes: Shapes) -> list[str]:
    """Node outputs with no shape, or a non-batch axis that is not a number, whose type is float
    or unknown."""
    missing = []
    for node in model.graph.node:
        for o in node.output:
            t = shapes.get(o)
            if o and (t is None or not t.shape or any(not isinstance(d, int) for d in t.shape[1:])):
                if t is None or t.elem_type in FLOAT_TYPES or t.elem_type == 0:
                    missing.append(o)
    return missing


def _measuring_session(model: onnx.ModelProto, shapes: Shapes, names: list[str]) -> ort.InferenceSession:
    """A CPU session on a copy of `model` that also returns `names` (typed float where unknown)."""
    m = without_big_data(model, min_bytes=1 << 62)  # a copy that shares no state with `model`
    known = {o.name for o in m.graph.output}
    for name in names:
        t = shapes.get(name)
        elem = t.elem_type if t is not None and t.elem_type else TensorProto.FLOAT
        if name not in known:
            m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return session_for(m, providers=[CPU])


def _run_at_batches(sess: ort.InferenceSession, info: ModelInfo, shapes: Shapes) -> list[dict[str, np.ndarray]]:
    """The session's outputs on zero inputs at batch 1 and 2 (or the model's fixed batch)."""
    names = [o.name for o in sess.get_outputs()]
    fixed_batch = info.batch if isinstance(info.batch, int) else None
    runs = []
    for b in ([fixed_batch] if fixed_batch else [1, 2]):
        feeds = {}
        for inp in info.inputs:
            dims = [b if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
                    for i, d in enumerate(shapes.get(inp.name, inp).shape)]
            feeds[inp.name] = np.zeros(dims, dtype=inp.dtype)
        runs.append(dict(zip(names, sess.run(None, feeds))))
    return runs


def _measured(name: str, runs: list[dict[str, np.ndarray]]) -> TensorInfo:
    """A tensor's shape from runs at different batch sizes: the axes that vary are the batch."""
    vals = [r[name] for r in runs]
    dims: list[Dim] = []
    for axis, d in enumerate(vals[0].shape):
        varies = len(vals) > 1 and vals[1].shape[axis] != d
        dims.append(BATCH if varies else int(d))
    return TensorInfo(name, tuple(dims), helper.np_dtype_to_tensor_dtype(vals[0].dtype))


def fill_runtime_shapes(model: onnx.ModelProto, info: ModelInfo, shapes: Shapes) -> Shapes:
    """Where ONNX shape inference lost a float tensor's shape, measure it: run the model at batch
    1 and 2 with those tensors as outputs; axes that follow the batch become symbolic. Returns
    `shapes` with the measured ones (a new dict where any was measured; neither `shapes` nor the
    model is changed)."""
    missing = _unknown_shapes(model, shapes)
    if not missing:
        return shapes
    try:
        sess = _measuring_session(model, shapes, missing)
    except Exception:  # onnxruntime refused a guessed (float) type: measure only typed tensors
        missing = [n for n in missing if n in shapes and shapes[n].elem_type]
        if not missing:
            return shapes
        sess = _measuring_session(model, shapes, missing)
    runs = _run_at_batches(sess, info, shapes)
    log.debug("measured %d shapes that shape inference lost", len(missing))
    return {**shapes, **{name: _measured(name, runs) for name in missing}}
