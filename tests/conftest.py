"""pytest fixtures shared by the suite (shared functions and paths live in helpers.py).
The suite never imports torch or tensorflow."""

from __future__ import annotations

import json

import pytest

from .helpers import ROOT


@pytest.fixture(scope="session")
def boxes() -> dict:
    """Hand-measured object boxes of the example photos, [x0, y0, x1, y1] in pixels."""
    return json.loads((ROOT / "tests" / "data" / "boxes.json").read_text())
