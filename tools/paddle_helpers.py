"""PaddlePaddle helpers shared by the paddle2onnx generators (goldens/make_paddle_goldens.py,
arch/make_paddle_corpus.py). Imports paddle: only scripts run in the paddle venv import this module.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import paddle
from paddle import nn

from tools import common


def randomise_batchnorm(model: nn.Layer, rng: np.random.Generator, x_cal: np.ndarray) -> None:
    """Give every BatchNorm non-trivial parameters and moving statistics.

    Statistics are calibrated layer by layer on x_cal (sublayers() follows execution order for
    these models), then perturbed so that they are not exactly the batch statistics.
    """
    model.eval()
    xc = paddle.to_tensor(x_cal)
    for bn in [l for l in model.sublayers() if isinstance(l, (nn.BatchNorm2D, nn.BatchNorm))]:
        seen = {}

        def grab(layer, inp, seen=seen):  # must return None: a returned value replaces the input
            seen["x"] = inp[0].numpy()

        handle = bn.register_forward_pre_hook(grab)
        with paddle.no_grad():
            model(xc)
        handle.remove()
        v = seen["x"].astype(np.float64)
        mean, var = v.mean(axis=(0, 2, 3)), v.var(axis=(0, 2, 3))
        c = mean.shape[0]
        bn.weight.set_value(rng.uniform(0.6, 1.4, c).astype(np.float32))
        bn.bias.set_value(rng.normal(0.1, 0.2, c).astype(np.float32))
        bn._mean.set_value((mean + 0.1 * np.sqrt(var + 1e-3) * rng.standard_normal(c)).astype(np.float32))
        bn._variance.set_value((var * rng.uniform(0.7, 1.3, c) + 1e-3).astype(np.float32))


def randomise_linear_bias(model: nn.Layer, rng: np.random.Generator) -> None:
    """Random Linear biases (N(0, 0.1)), so that the head's Add is not dropped by the exporter."""
    for layer in model.sublayers():
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            layer.bias.set_value(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))


def float64_copy(model: nn.Layer, strict: bool = False) -> nn.Layer:
    """A float64 deep copy in eval mode; strict: assert every parameter and buffer is float64."""
    m64 = copy.deepcopy(model)
    m64.to(dtype="float64")
    m64.eval()
    if strict:
        for name, p in list(m64.named_parameters()) + list(m64.named_buffers()):
            assert p.dtype == paddle.float64, (name, p.dtype)
    return m64


def export_onnx(model: nn.Layer, path: Path, shape, opset: int | None = None) -> None:
    """paddle.onnx.export with a dynamic batch (input `x`); opset None: paddle2onnx's default."""
    spec = [paddle.static.InputSpec(shape=[None, *shape[1:]], dtype="float32", name="x")]
    if path.exists():
        path.unlink()
    kw = {} if opset is None else {"opset_version": opset}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, path.stem)
        paddle.onnx.export(model, prefix, input_spec=spec, **kw)
        produced = Path(prefix + ".onnx")
        if not produced.exists():  # paddle2onnx logs errors instead of raising
            raise SystemExit(f"paddle2onnx produced no file for {path.name}")
        path.write_bytes(produced.read_bytes())


def pick_input(model: nn.Layer, draw: Callable[[np.random.Generator], np.ndarray], seed: int) -> np.ndarray:
    """common.pick_input with the Paddle model run without gradients."""

    def predict(x: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()

    return common.pick_input(predict, draw, seed)
