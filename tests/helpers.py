"""Shared test helpers: repository paths, golden loading, the relative error every numeric
comparison uses, and the one builder of hand-written tiny ONNX models.

conftest.py holds only pytest fixtures; tests import what they share from here
(`from .helpers import ...`). Like the rest of the suite, nothing here imports torch or tensorflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "data" / "goldens"
MOBILENET = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
EXAMPLES = ROOT / "examples"

Dims = Sequence[int | str | None]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read eagerly (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def golden_stems() -> list[str]:
    """Stems of the models in tests/data/goldens (each has a `<stem>.npz`)."""
    return sorted(p.stem for p in GOLDENS.glob("*.onnx"))


def load_golden(stem: str) -> dict[str, np.ndarray]:
    """The golden arrays of tests/data/goldens/<stem>.npz (format: that folder's README.md)."""
    return load_npz(GOLDENS / f"{stem}.npz")


def golden_of(model_path: Path) -> dict[str, np.ndarray]:
    """The golden next to a model file, or of the file it is a variant of: `keras_x_op17.onnx` has
    no npz of its own and uses `keras_x.npz` (suffixes are dropped one `_part` at a time)."""
    stem, npz = model_path.stem, model_path.with_suffix(".npz")
    while not npz.exists() and "_" in stem:
        stem = stem.rsplit("_", 1)[0]
        npz = model_path.with_name(f"{stem}.npz")
    return load_npz(npz)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|: the relative error of `a` against the reference `b` (same shapes)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def tiny_model(
    nodes: Sequence[onnx.NodeProto],
    weights: Mapping[str, np.ndarray],
    inputs: Mapping[str, Dims],
    outputs: Mapping[str, Dims],
    *,
    opset: int = 17,
    ir_version: int = 8,
    name: str = "tiny",
) -> onnx.ModelProto:
    """A float32 ONNX model from its nodes: the one builder of the suite's hand-written graphs.

    `weights` become initializers (cast to float32, in the given order), `inputs`/`outputs` map
    each graph input/output name to its shape (ints, or strings for symbolic dimensions). The
    model imports only the default domain at `opset`, with the given IR version.
    """
    graph = helper.make_graph(
        list(nodes), name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def run_scenarios(module: str, data: Path, out: Path, timeout: float) -> str:
    """Run `python -m module DATA OUT` (a Ray scenario script) in its own process group, with the
    repository on PYTHONPATH; returns its log. A run past `timeout` seconds has its whole group
    (the script, its local Ray, its servers) killed and fails the test, as does a non-zero exit:
    a hang never blocks the suite."""
    import os
    import signal
    import subprocess
    import sys

    import pytest

    proc = subprocess.Popen([sys.executable, "-m", module, str(data), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        pytest.fail(f"{module} hung: killed after {timeout} s; log tail:\n{log.decode()[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{module} exited {proc.returncode}:\n{log.decode()[-3000:]}")
    return log.decode()
