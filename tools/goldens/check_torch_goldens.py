"""Sanity-check the PyTorch goldens against their ONNX files, without torch.

Run from the repository root with any environment that has numpy, onnx and onnxruntime::

    python -m tools.goldens.check_torch_goldens

For every ``tests/data/goldens/{torchscript,dynamo}_*.onnx`` it checks, with onnxruntime: the
outputs and their argmax match ``outputs``/``targets``; the tensor named in ``layers.json`` matches
``activation``; for GAP -> Linear heads, ``gradient`` equals fc_weight[target] / (h*w) everywhere;
and a central difference (eps 1e-3, float32) of Σ_n y[n, t_n] along a random direction agrees with
``input_gradient`` to 5% (the models are piecewise linear, so a float32 difference quotient crosses
ReLU/MaxPool kinks; in float64 torch it agrees to 1e-8 at eps 1e-5). Exit code 1 on a failure.
"""

import glob
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tools import common

DIR = common.GOLDENS_DIR


def main() -> int:
    layers = json.loads((DIR / "layers.json").read_text())
    bad = 0
    for f in sorted(glob.glob(str(DIR / "torchscript_*.onnx")) + glob.glob(str(DIR / "dynamo_*.onnx"))):
        stem = Path(f).stem
        g = np.load(DIR / f"{stem}.npz")
        m = onnx.load(f)
        m.graph.output.append(onnx.ValueInfoProto(name=layers[stem]))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        y, a = s.run(None, {"input": g["x"]})
        errs = {"outputs": float(np.abs(y - g["outputs"]).max()), "activation": float(np.abs(a - g["activation"]).max())}
        ok = errs["outputs"] < 1e-4 and errs["activation"] < 1e-4 and (y.argmax(1) == g["targets"]).all()
        if "fc_weight" in g.files:
            exp = g["fc_weight"][g["targets"]][:, :, None, None] / (a.shape[2] * a.shape[3]) * np.ones_like(a)
            errs["gap_fc"] = float(np.abs(exp - g["gradient"]).max())
            ok &= errs["gap_fc"] < 1e-6
        v = np.random.default_rng(0).standard_normal(g["x"].shape).astype(np.float32)
        obj = lambda x: s.run(None, {"input": x})[0][np.arange(len(x)), g["targets"]].astype(np.float64).sum()
        eps = 1e-3
        fd = (obj(g["x"] + eps * v) - obj(g["x"] - eps * v)) / (2 * eps)
        an = float((g["input_gradient"].astype(np.float64) * v).sum())
        errs["dir_deriv_rel"] = abs(fd - an) / max(1.0, abs(an))
        ok &= errs["dir_deriv_rel"] < 5e-2
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {stem:32s} " + " ".join(f"{k}={v:.2g}" for k, v in errs.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
