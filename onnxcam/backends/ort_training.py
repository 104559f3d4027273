"""A second gradient backend: onnxruntime-training's gradient graph builder.

`gradient_model_ort_training(model, wrt, output)` has the interface of
`onnxcam.graph.rewrite.gradient_model`: it returns a copy of `model` with one more input,
`onnxcam_seed` (a cotangent shaped like `output`), and one more output, `onnxcam_gradient`
= ∂⟨seed, output⟩/∂wrt. It appends `loss = ReduceSum(Mul(output, onnxcam_seed))` and lets
`GradientGraphBuilder(model, {loss}, {wrt}, loss)` write the backward graph; `wrt` may be a graph
input or any intermediate tensor.

The result uses com.microsoft training ops (ReluGrad, ConvGrad, Scale, BroadcastGradientArgs...)
that only the onnxruntime of the onnxruntime-training wheel runs. That wheel (1.19.2, the last
release) replaces the `onnxruntime` package, so it lives in its own environment; there
`from onnxruntime.capi._pybind_state import GradientGraphBuilder` works without torch.

Used to cross-check onnxcam's engine (tests/test_backend_ort_training.py). Where the builder has
no gradient for an op (inference BatchNormalization, HardSwish, ...) it raises
`OrtTrainingUnsupportedOpError` naming the ops: use the default backend there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxcamError, UnsupportedOpError, UsageError
from ..graph.passes import upgrade_opset
from ..graph.rewrite import ACT_OUTPUT, GRAD_OUTPUT, SEED_INPUT, TARGET_INPUT, TARGETS_OUTPUT
from ..model import default_opset
from ..protos import copy_model
from ..runtime import make_session
from ..shapes import infer_shapes

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the ort-training backend needs onnxruntime-training (pip install onnxruntime-training==1.19.2 "
    "in its own environment: it replaces onnxruntime)"
)

# What onnxruntime(-training) 1.19 loads: IR ≤ 10, ai.onnx opset ≤ 21 (onnx 1.16).
MAX_IR_VERSION = 10
MAX_OPSET = 21
# Highest TensorProto element type IR 10 knows (INT4 = 22); later IRs add FLOAT4E2M1 (23), ...
_MAX_ELEM_TYPE_IR10 = 22
# Below opset 11 the builder emits a 2-input Gemm for MatMul's gradient (C became optional in
# opset 11), which the graph check then rejects: such models are converted first.
MIN_OPSET = 11

_LOSS = "onnxcam/ort_training/loss"
_PROD = "onnxcam/ort_training/prod"
_MISSING = re.compile(r"has not been registered:\s*(\S+)\s+for node\s+(\S*)")


class OrtTrainingUnsupportedOpError(UnsupportedOpError):
    """onnxruntime-training's builder has no gradient for some op(s) between `wrt` and the output."""

    def __init__(self, missing: list[tuple[str, str]], detail: str = "") -> None:
        self.missing = missing  # (op_type, node name), in the order found
        self.op_types = sorted({op for op, _ in missing})
        self.op_type, self.node_name = missing[0]
        parts = []
        for op in dict.fromkeys(op for op, _ in missing):
            names = [name for o, name in missing if o == op]
            shown = ", ".join(repr(n) for n in names[:3]) + (f", ... {len(names)} in all" if len(names) > 3 else "")
            parts.append(f"{op} (node{'s' if len(names) > 1 else ''} {shown})")
        nodes = ", ".join(parts)
        msg = (
            f"onnxruntime-training has no gradient for {nodes}"
            + (f" {detail}" if detail else "")
            + "; use the default backend (onnxcam's own gradient engine)"
        )
        OnnxcamError.__init__(self, msg)


def _builder():
    try:
        from onnxruntime.capi._pybind_state import GradientGraphBuilder
    except ImportError:
        return None
    return GradientGraphBuilder


def available() -> bool:
    """True where the installed `onnxruntime` is the onnxruntime-training wheel."""
    return _builder() is not None


def _require():
    b = _builder()
    if b is None:
        raise OnnxcamError(INSTALL_HINT)
    return b


def _elem_types(model: onnx.ModelProto) -> set[int]:
    """Every tensor element type named in the main graph (subgraphs are not walked)."""
    g = model.graph
    types = {t.data_type for t in g.initializer} | {t.values.data_type for t in g.sparse_initializer}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types.add(vi.type.tensor_type.elem_type)
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.type == onnx.AttributeProto.INT:
                types.add(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                types.add(a.t.data_type)
    return types


def make_compatible(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxruntime-training 1.19 accepts it (a copy where anything changes).

    IR > 10 is lowered to 10 when the graph uses no element type IR 10 lacks; opset < 11 is
    converted to 13 (see MIN_OPSET); opset > 21 is refused.
    """
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise OnnxcamError(
            f"the model uses opset {opset}; onnxruntime-training 1.19.2 supports opsets up to {MAX_OPSET}: "
            f"convert the model to opset {MAX_OPSET} or use the default backend"
        )
    m = model
    if m.ir_version > MAX_IR_VERSION:
        newer = sorted(t for t in _elem_types(m) if t > _MAX_ELEM_TYPE_IR10)
        if newer or m.functions:
            why = f"element types {newer}" if newer else "model-local functions"
            raise OnnxcamError(
                f"the model has IR version {m.ir_version} and uses {why} that IR {MAX_IR_VERSION} "
                f"(onnxruntime-training 1.19.2) lacks; use the default backend"
            )
        m = copy_model(model)
        m.ir_version = MAX_IR_VERSION
    if opset < MIN_OPSET:
        m = upgrade_opset(m, 13).model
    return m


@contextlib.contextmanager
def _stderr_to_log():
    """The builder logs at INFO level to the process's stderr whatever the logger severity:
    catch file descriptor 2 while it runs and pass the lines to this module's debug log."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (notebook kernels, pythonw)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                log.debug("onnxruntime-training: %s", line)


def _build(builder_cls, model_bytes: bytes, wrt: str) -> bytes:
    with _stderr_to_log():
        b = builder_cls(model_bytes, {_LOSS}, {wrt}, _LOSS)
        b.build()
        return b.get_model()


def _expose_layer_norm_stats(graph: onnx.GraphProto) -> None:
    """The builder's LayerNormalization gradient reads the node's optional Mean and InvStdDev
    outputs, which exporters leave out (it fails with `i < node_->OutputDefs().size()`): name them."""
    for n in graph.node:
        if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx"):
            while len(n.output) < 3:
                n.output.append("")
            for i, what in ((1, "mean"), (2, "inv_std_dev")):
                if not n.output[i]:
                    n.output[i] = f"{n.output[0]}/onnxcam_{what}"


def _diagnose(builder_cls, model: onnx.ModelProto, wrt: str, first: tuple[str, str]) -> list[tuple[str, str]]:
    """All ops the builder lacks, found by standing an Identity in for each missing node and
    building again (at most 20 rounds; stops at the first other error)."""
    missing = [first]
    m = copy_model(model)
    for _ in range(20):
        op, name = missing[-1]
        nodes = [n for n in m.graph.node if n.name == name and n.op_type == op]
        if len(nodes) != 1 or not nodes[0].input:
            break
        node = nodes[0]
        stand_in = [helper.make_node("Identity", [node.input[0]], [out], name=f"{name}/stand_in{i}")
                    for i, out in enumerate(node.output) if out]
        idx = list(m.graph.node).index(node)
        del m.graph.node[idx]
        for k, s in enumerate(stand_in):
            m.graph.node.insert(idx + k, s)
        try:
            _build(builder_cls, m.SerializeToString(), wrt)
            break
        except Exception as exc:  # pybind raises RuntimeError / Fail / InvalidGraph
            hit = _MISSING.search(str(exc))
            if hit is None or (hit.group(1), hit.group(2)) in missing:
                break
            missing.append((hit.group(1), hit.group(2)))
    return missing


def gradient_model_ort_training(model: onnx.ModelProto, wrt: str, output: str | None = None) -> onnx.ModelProto:
    """A copy of `model` with input `onnxcam_seed` (shaped like `output`) and output
    `onnxcam_gradient` = ∂⟨seed, output⟩/∂wrt, built by onnxruntime-training's gradient builder.

    `output` defaults to the first graph output; `wrt` may be any float tensor on its path. The
    model's own outputs are kept. Run the result with the onnxruntime of the onnxruntime-training
    wheel (its com.microsoft *Grad ops are unknown to stock onnxruntime).
    """
    builder_cls = _require()
    m = make_compatible(model)
    if m is model:
        m = copy_model(model)
    g = m.graph
    y = output or g.output[0].name
    shapes = infer_shapes(m)
    for name in (y, wrt):
        if name not in shapes:
            raise UsageError(f"unknown tensor {name!r}")
    yinfo, xinfo = shapes[y], shapes[wrt]
    _expose_layer_norm_stats(g)
    originals = [o.name for o in g.output]
    g.input.append(helper.make_tensor_value_info(SEED_INPUT, yinfo.elem_type, list(yinfo.shape)))
    g.node.extend([
        helper.make_node("Mul", [y, SEED_INPUT], [_PROD], name=_PROD),
        helper.make_node("ReduceSum", [_PROD], [_LOSS], keepdims=0, name=_LOSS),
    ])
    g.output.append(helper.make_tensor_value_info(_LOSS, yinfo.elem_type, []))
    try:
        built = _build(builder_cls, m.SerializeToString(), wrt)
    except Exception as exc:
        text = str(exc)
        hit = _MISSING.search(text)
        if hit is not None:
            missing = _diagnose(builder_cls, m, wrt, (hit.group(1), hit.group(2)))
            raise OrtTrainingUnsupportedOpError(missing, f"between {wrt!r} and {y!r}") from None
        raise OnnxcamError(
            f"onnxruntime-training could not build the gradient of {y!r} with respect to {wrt!r}: "
            f"{text.strip().splitlines()[-1] if text.strip() else type(exc).__name__}; use the default backend"
        ) from None
    gm = onnx.load_from_string(built)
    grad = f"{wrt}_grad"
    gg = gm.graph
    if not any(grad in n.output for n in gg.node):
        raise OnnxcamError(f"onnxruntime-training produced no gradient tensor {grad!r}; use the default backend")
    keep = [o for o in gg.output if o.name in originals]
    del gg.output[:]
    gg.output.extend(keep)
    gg.node.append(helper.make_node("Identity", [grad], [GRAD_OUTPUT], name="onnxcam/gradient"))
    gg.output.append(helper.make_tensor_value_info(GRAD_OUTPUT, xinfo.elem_type, list(xinfo.shape)))
    return gm


class OrtTrainingSession:
    """Runs like onnxcam's own rewritten model (image and `onnxcam_target` in; outputs, targets,
    activation and gradient out), with the gradient from onnxruntime-training's builder."""

    def __init__(self, model: onnx.ModelProto, image: str, layer: str, output: str, providers=None) -> None:
        m = copy_model(model)
        m.graph.node.append(onnx.helper.make_node("Identity", [layer], [ACT_OUTPUT], name="onnxcam/activation"))
        m.graph.output.append(onnx.helper.make_tensor_value_info(ACT_OUTPUT, onnx.TensorProto.FLOAT, None))
        gm = gradient_model_ort_training(m, layer, output)
        self._sess = make_session(gm.SerializeToString(), providers)
        plain = copy_model(make_compatible(model))
        self._forward = make_session(plain.SerializeToString(), providers)
        self._names = (image, output, ACT_OUTPUT, GRAD_OUTPUT, SEED_INPUT, TARGET_INPUT, TARGETS_OUTPUT)
        self._k: int | None = None

    def get_providers(self) -> list[str]:
        return self._sess.get_providers()

    def run(self, names, feeds):
        image, output, act, grad, seed_in, target_in, targets_out = self._names
        x, t = feeds[image], np.asarray(feeds[target_in], np.int64)
        if (t < 0).any():
            y = self._forward.run([output], {image: x})[0]
            t = np.where(t < 0, y.reshape(len(x), -1).argmax(axis=1), t)
        if self._k is None:  # the number of classes, once (from the graph, else measured)
            k = [o for o in self._sess.get_outputs() if o.name == output][0].shape[-1]
            self._k = k if isinstance(k, int) else int(self._forward.run([output], {image: x[:1]})[0].shape[-1])
        seed = np.zeros((len(x), self._k), np.float32)
        seed[np.arange(len(x)), t] = 1
        got = dict(zip([output, act, grad], self._sess.run([output, act, grad], {image: x, seed_in: seed})))
        got[targets_out] = t
        return [got[n] for n in names]
