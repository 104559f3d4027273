"""The one return convention of the normalising passes (graph/passes.py, graph/attention.py)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: its model (the input itself when `changed` is 0) and how many nodes
    (or opset versions) it changed."""

    model: onnx.ModelProto
    changed: int
