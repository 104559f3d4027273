"""Dev-time check of onnxcam on FULL-SIZE keras.applications models (not part of the test suite).

Builds each model with weights=None at its default input size (batch 2, 10 classes, logits),
exports it with tf2onnx (``model.export(format="onnx", opset_version=13)``) to
/tmp/onnxcam_full_keras/<name>.onnx with float64 autograd goldens <name>.npz (same format as
tests/data/arch), then ``--check`` runs onnxcam Grad-CAM on each file and prints the coverage table.
BatchNorm statistics are mildly randomised (no layer-by-layer calibration: too slow at full size).

    /work/venvs/tf/bin/python -m tools.arch.validate_keras_fullsize [--only ResNet50 ...]
    /work/venvs/dev/bin/python -m tools.arch.validate_keras_fullsize --check
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from tools import common

OUT = Path("/tmp/onnxcam_full_keras")
NAMES = ["ResNet50", "MobileNetV2", "MobileNetV3Large", "EfficientNetB0", "DenseNet121", "Xception",
         "ConvNeXtTiny", "VGG16", "InceptionV3"]


def builder(name):
    import keras

    def f():
        kw = dict(weights=None, classes=10, classifier_activation=None)
        if name.startswith("MobileNetV3"):  # no default input_shape when weights=None
            kw["input_shape"] = (224, 224, 3)
        if name == "EfficientNetB0":
            # the un-adapted Normalization layer's mean/variance become extra ONNX graph inputs on export
            from keras.src.applications import efficientnet as E
            orig = E.layers.Normalization
            E.layers.Normalization = lambda *a, **k: keras.layers.Identity(name="normalization")
            try:
                return E.EfficientNetB0(**kw)
            finally:
                E.layers.Normalization = orig
        return getattr(keras.applications, name)(**kw)
    return f


def main(argv):
    if "--check" in argv:
        rows = common.check_corpus("", OUT, "*.onnx")
        status = json.loads((OUT / "build_status.json").read_text()) if (OUT / "build_status.json").exists() else {}
        for n, s in status.items():
            if not s.startswith("ok"):
                print(f"| `{n}` (build) | {s} |")
        return 0 if rows else 1
    from tools.arch import make_keras_corpus as K  # imports TensorFlow

    OUT.mkdir(parents=True, exist_ok=True)
    only = argv[argv.index("--only") + 1:] if "--only" in argv else NAMES
    sp = OUT / "build_status.json"
    status = json.loads(sp.read_text()) if sp.exists() else {}
    for i, name in enumerate(only):
        t0 = time.time()
        scale, offset = (127.5 / 2, 127.5) if name in ("EfficientNetB0", "ConvNeXtTiny") else (1.0, 0.0)
        try:
            infos = K.build_one(name, OUT, None, seed=i, builder=builder(name), scale=scale, offset=offset,
                                run_directional=False, calibrate=False, find_tensor=False)
            status[name] = f"ok {infos[0]['bytes']} B, ort err {infos[0]['ort_max_abs_err']:.1e}, {time.time() - t0:.0f}s"
        except (Exception, SystemExit) as e:
            traceback.print_exc()
            status[name] = f"BUILD FAILED {type(e).__name__}: {str(e)[:600]}"
            for suf in (".onnx", ".npz"):
                (OUT / f"{name}{suf}").unlink(missing_ok=True)
        print(name, status[name], flush=True)
        sp.write_text(json.dumps(status, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
