"""Shared paths and fixtures. The suite never imports torch or tensorflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "data" / "goldens"
MOBILENET = ROOT / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
EXAMPLES = ROOT / "examples"


def golden_stems() -> list[str]:
    return sorted(p.stem for p in GOLDENS.glob("*.onnx"))


def load_golden(stem: str) -> dict[str, np.ndarray]:
    with np.load(GOLDENS / f"{stem}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def boxes() -> dict:
    return json.loads((ROOT / "tests" / "data" / "boxes.json").read_text())
