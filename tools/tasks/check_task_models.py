"""Check the task models against their goldens with numpy + onnx + onnxruntime only (no torch/tf).

    /work/venvs/dev/bin/python -m tools.tasks.check_task_models

For every stem in tests/data/tasks/layers.json: onnxruntime's outputs match every `outputs_<name>`
(atol 1e-4 + rtol 1e-4, batch 2 and batch 1), every case's seed has its output's shape, and the
tensor named in layers.json holds the case's activation (max error <= 1e-4 * max(1, |act|)).
Exit 1 on any failure.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

from tools import common
from tools.common import ATOL, RTOL

REPO = common.ROOT
TASKS = REPO / "tests" / "data" / "tasks"
FILES = {"fer": (REPO / "tests/data/goldens/tf2onnx_fer.onnx", TASKS / "fer_cases.npz")}


def main() -> int:
    layers = json.loads((TASKS / "layers.json").read_text())
    bad = 0
    for stem, cases in layers.items():
        onnx_path, npz_path = FILES.get(stem, (TASKS / f"{stem}.onnx", TASKS / f"{stem}.npz"))
        g = np.load(npz_path)
        m = onnx.load(str(onnx_path))
        outs = [o.name for o in m.graph.output]
        for t in sorted(set(cases.values())):
            m.graph.output.append(onnx.ValueInfoProto(name=t))
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        msgs = []
        for n in (2, 1):
            vals = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: g["x"][:n]})))
            for o in outs:
                ref = g[f"outputs_{o}"][:n]
                err = float(np.abs(vals[o] - ref).max())
                if vals[o].shape != ref.shape or not np.allclose(vals[o], ref, atol=ATOL, rtol=RTOL):
                    msgs.append(f"output {o} (batch {n}) err {err:.3g}")
                elif n == 2:
                    msgs.append(f"{o} {tuple(ref.shape)} ok (err {err:.1e})")
            for case, t in cases.items():
                act = g[f"case_{case}_activation"][:n]
                out = str(g[f"case_{case}_output"])
                if g[f"case_{case}_seed"].shape != g[f"outputs_{out}"].shape:
                    msgs.append(f"case {case}: seed shape != output shape")
                err = float(np.abs(vals[t] - act).max()) if vals[t].shape == act.shape else np.inf
                if not err <= 1e-4 * max(1.0, float(np.abs(act).max())):
                    msgs.append(f"case {case}: tensor {t} != activation (err {err:.3g}, batch {n})")
        fails = [s for s in msgs if " ok " not in s]
        bad += bool(fails)
        print(f"{stem}: {'FAIL' if fails else 'ok'}; " + "; ".join(msgs)
              + f"; cases {list(cases)} -> {sorted(set(cases.values()))}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
