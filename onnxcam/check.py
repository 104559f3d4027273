"""Self-check: can onnxcam differentiate this model, and does its gradient agree with the model?

`self_check` lists the ops on the path from each checked layer to the output that have no
gradient rule, flags quantised models (no gradient exists there), and compares the engine's
∂⟨u, y⟩/∂A with central finite differences of the model's own tail (the part after the layer,
run by onnxruntime) in random directions v:  ⟨v, ∇⟩ ≈ (⟨u, f(A + hv)⟩ − ⟨u, f(A − hv)⟩) / 2h, with f evaluated in float64
by onnx's reference evaluator, with an Erf of its own: onnx's computes Erf (and so exact GELU, a
function of it) in float32, which made every transformer with exact GELU fail the check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import math

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .errors import OnnxcamError
from .grad.engine import missing_rules
from .graph.rewrite import GRAD_OUTPUT, SEED_INPUT, gradient_model, prepare
from .graph.split import Split, split_at
from .model import inspect_model, load_model
from .protos import copy_model
from .runtime import CPU, session_for
from .types import DEFAULT_SIZE

QUANTISED_OPS = {
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
}
GRADIENT_FREE = ["ablationcam", "scorecam", "eigencam", "random"]


@dataclass
class LayerCheck:
    layer: str
    missing: list[str] = field(default_factory=list)  # "OpType (node)"
    median_rel_error: float | None = None  # what decides ok: one direction may cross a kink
    max_rel_error: float | None = None
    directions: int = 0
    ok: bool = False
    error: str = ""


@dataclass
class CheckReport:
    model: str
    quantised_ops: list[str]
    layers: list[LayerCheck]

    @property
    def ok(self) -> bool:
        return not self.quantised_ops and all(l.ok for l in self.layers)

    def as_dict(self) -> dict:
        return {"model": self.model, "ok": self.ok, "quantised_ops": self.quantised_ops,
                "layers": [asdict(l) for l in self.layers]}


class Erf(OpRun):
    """Erf in the input's own precision (math.erf is correctly rounded in float64); replaces the
    reference evaluator's float32 Erf."""

    op_domain = ""
    _erf = np.frompyfunc(math.erf, 1, 1)

    def _run(self, x):  # noqa: D102 - OpRun's contract
        return (np.asarray(self._erf(x), dtype=x.dtype),)


class Gelu(OpRun):
    """Gelu (opset 20) in the input's own precision: exact, 0.5·x·(1 + erf(x/√2)), or
    approximate="tanh", 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

    op_domain = ""

    def _run(self, x, approximate="none"):  # noqa: D102 - OpRun's contract
        if approximate == "tanh":
            inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
            return ((0.5 * x * (1 + np.tanh(inner))).astype(x.dtype),)
        return ((0.5 * x * (1 + np.asarray(Erf._erf(x / np.sqrt(2)), dtype=x.dtype))).astype(x.dtype),)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with float32 initializers, constants, casts and graph values made float64, for
    onnx's numpy reference evaluator (onnxruntime has no float64 Conv)."""
    m = copy_model(model)
    f32, f64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
    for init in m.graph.initializer:
        if init.data_type == f32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for node in m.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = f64
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type == f32:
            v.type.tensor_type.elem_type = f64
    return m


def _random_image(prep, rng: np.random.Generator) -> np.ndarray:
    """A random batch for the image input (2 where the batch is dynamic); the self-check feeds
    nothing else."""
    info = prep.info
    for other in info.inputs:
        if other.name != info.image_input.name:
            raise OnnxcamError(f"self-check feeds only the image input; the model also needs {other.name!r}")
    shape = [d if isinstance(d, int) else 2 for d in prep.shapes[info.image_input.name].shape]
    shape[0] = 2 if not isinstance(info.batch, int) else info.batch
    return rng.normal(size=shape).astype(info.image_input.dtype)


Tail = Callable[[np.ndarray], np.ndarray]


def _float64_tail(sp: Split, acts: np.ndarray, externals: list[np.ndarray]) -> tuple[Tail, np.ndarray]:
    """The model after the layer evaluated in float64 by onnx's reference evaluator, and its value
    at `acts`; an error where it cannot run it or disagrees with onnxruntime."""
    try:
        ref = ReferenceEvaluator(to_float64(sp.tail), new_ops=[Erf, Gelu])
        ext = {n: (v.astype(np.float64) if v.dtype == np.float32 else v) for n, v in zip(sp.externals, externals)}
        tail = lambda a: np.asarray(ref.run(None, {sp.layer: a, **ext})[0], np.float64)  # noqa: E731
        y = tail(acts.astype(np.float64))
    except Exception as exc:  # the evaluator raises whatever its op implementations raise
        raise OnnxcamError(f"the float64 reference evaluator cannot run the model after {sp.layer!r}: {exc}") from None
    y32 = session_for(sp.tail, [CPU]).run(None, {sp.layer: acts, **dict(zip(sp.externals, externals))})[0]
    if np.abs(y32 - y).max() > 1e-3 * (np.abs(y).max() + 1e-6):
        raise OnnxcamError(
            f"onnx's reference evaluator and onnxruntime disagree on the model after {sp.layer!r} "
            f"(max difference {np.abs(y32 - y).max():.2e}); no trustworthy reference for this layer"
        )
    return tail, y


def _directional_errors(grad: np.ndarray, acts: np.ndarray, u: np.ndarray, tail: Tail, directions: int,
                        rng: np.random.Generator) -> list[float]:
    """|⟨v, ∇⟩ − FD| / max(|FD|, |⟨v, ∇⟩|) for random directions v, FD = ⟨u, tail(A + hv) −
    tail(A − hv)⟩ / 2h, the smaller error of two step sizes (a kink crossed at one is rarely
    crossed at both)."""
    a64 = acts.astype(np.float64)
    scale = np.abs(a64).max() + 1e-3
    # saturated values (0 after ReLU, 6 after ReLU6: any value shared by many entries) sit on
    # kinks, or tie inside max-pooling windows, where no derivative exists: not perturbed
    vals, counts = np.unique(acts, return_counts=True)
    live = ~np.isin(acts, vals[counts > max(2, acts.size // 1000)])
    errors = []
    for _ in range(directions):
        v = rng.normal(size=acts.shape) * (live if live.mean() > 0.01 else 1)
        an = float((grad * v).sum())
        err = np.inf
        for rel in (1e-6, 1e-8):
            h = rel * scale / np.abs(v).max()
            fd = float((u * (tail(a64 + h * v) - tail(a64 - h * v))).sum() / (2 * h))
            err = min(err, abs(fd - an) / max(abs(fd), abs(an), 1e-12))
        errors.append(err)
    return errors


def _fd_check(prep, layer: str, directions: int, rng: np.random.Generator) -> tuple[float, float]:
    """(median, max) over random directions v of |⟨v, ∇⟩ − FD| / max(|FD|, |⟨v, ∇⟩|), FD being
    the central difference of the model's tail evaluated in float64 with a tiny step (so ReLU
    and max-pool kinks are almost never crossed)."""
    x = _random_image(prep, rng)
    sp = split_at(prep.model, prep.shapes, layer, prep.output)
    feeds = {prep.info.image_input.name: x}
    acts, *externals = session_for(sp.head, [CPU]).run(None, feeds)
    gsess = session_for(gradient_model(prep.model, layer, prep.output), [CPU])
    tail, y = _float64_tail(sp, acts, externals)
    u = rng.normal(size=y.shape)
    grad = gsess.run([GRAD_OUTPUT], {**feeds, SEED_INPUT: u.astype(y.dtype if y.dtype != np.float64 else np.float32)})[0]
    errors = _directional_errors(grad.astype(np.float64), acts, u, tail, directions, rng)
    return float(np.median(errors)), float(np.max(errors))


def self_check(
    path: str,
    layers: list[str] | None = None,
    size: tuple[int, int] | None = None,
    directions: int = 3,
    tolerance: float = 1e-2,
    seed: int = 0,
) -> CheckReport:
    """Check the default layer (or `layers`) of the model at `path`."""
    model = load_model(path)
    info = inspect_model(model, path)
    quant = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTISED_OPS})
    if quant:
        return CheckReport(path, quant, [])
    prep = prepare(model, info, None if info.fixed_size else (size or DEFAULT_SIZE))
    names = layers or [prep.layer(None).name]
    tensors = {o for n in prep.model.graph.node for o in n.output} | {i.name for i in prep.model.graph.input}
    for name in names:  # a tensor the model does not have is a usage error (exit 2), not a failed check
        if name not in tensors:
            prep.layer(name)  # raises UsageError, with the close names
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        lc = LayerCheck(name)
        lc.missing = [f"{op} ({node})" for op, node in missing_rules(prep.model.graph, name, prep.output, prep.shapes)]
        if not lc.missing:
            try:
                lc.median_rel_error, lc.max_rel_error = _fd_check(prep, name, directions, rng)
                lc.directions = directions
                lc.ok = lc.median_rel_error <= tolerance
            except OnnxcamError as exc:
                lc.error = str(exc)
        out.append(lc)
    return CheckReport(path, [], out)
