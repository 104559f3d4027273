"""Make the float16 test models in tests/data/fp16 from committed float32 goldens.

Build-time only (not a runtime or test dependency): run in a throwaway venv with
onnxconverter-common installed, e.g.

    python -m venv /work/venvs/fp16 --system-site-packages
    /work/venvs/fp16/bin/pip install onnxconverter-common
    /work/venvs/fp16/bin/python -m tools.fp16.make_fp16

For each source model it writes `<stem>_fp16.onnx` (everything float16, inputs and outputs too,
`keep_io_types=False`); for the first one it also writes `<stem>_fp16io32.onnx`
(`keep_io_types=True`: float32 inputs/outputs with Casts inside). The float32 goldens
(tests/data/goldens/<stem>.npz) are the reference the tests compare against.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnxconverter_common import float16

from tools import common

ROOT = common.ROOT
SRC = ROOT / "tests" / "data" / "goldens"
DST = ROOT / "tests" / "data" / "fp16"
STEMS = ["torchscript_tinyresnet", "torchscript_tinymbv3", "tf2onnx_smallresnet"]
KEEP_IO = ["torchscript_tinyresnet"]


def convert(stem: str, keep_io_types: bool) -> Path:
    model = onnx.load(SRC / f"{stem}.onnx")
    half = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.checker.check_model(half)
    out = DST / f"{stem}_{'fp16io32' if keep_io_types else 'fp16'}.onnx"
    onnx.save_model(half, out)
    return out


def main() -> None:
    DST.mkdir(parents=True, exist_ok=True)
    made = {}
    for stem in STEMS:
        paths = [convert(stem, False)] + ([convert(stem, True)] if stem in KEEP_IO else [])
        for p in paths:
            made[p.name] = {
                "source": f"tests/data/goldens/{stem}.onnx",
                "keep_io_types": p.stem.endswith("io32"),
                "bytes": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            print(p.relative_to(ROOT), p.stat().st_size)
    (DST / "manifest.json").write_text(json.dumps(made, indent=2) + "\n")


if __name__ == "__main__":
    main()
