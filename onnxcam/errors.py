"""One exception family for onnxcam.

Every error says what went wrong, where (op type, node, tensor) and what to do instead, so the CLI
can print it as one line and a notebook user can act on it.
"""

from __future__ import annotations


class OnnxcamError(Exception):
    """Base class of all onnxcam errors (CLI exit code 1 unless noted)."""

    exit_code = 1


class UsageError(OnnxcamError):
    """The request does not fit the model: bad layer name, target out of range (exit code 2)."""

    exit_code = 2


class ModelLoadError(OnnxcamError):
    """The file is not a readable ONNX model, or its external data is missing."""


class UnsupportedOpError(OnnxcamError):
    """The gradient engine has no rule for an op on the path between the layer and the output."""

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        msg = (
            f"no gradient rule for op {op_type} (node {node_name!r})"
            + (f": {detail}" if detail else "")
            + "; pick a layer after this node (--layer), or a gradient-free method (--method cam)"
        )
        super().__init__(msg)


class GradientRuleError(OnnxcamError):
    """A gradient rule failed in a way it did not mean to: a bug in onnxcam, not a missing rule."""

    def __init__(self, op_type: str, node_name: str, cause: BaseException) -> None:
        self.op_type = op_type
        self.node_name = node_name
        super().__init__(
            f"the gradient rule for op {op_type} failed on node {node_name!r} "
            f"({type(cause).__name__}: {cause}); this is a bug in onnxcam: please report it with the model"
        )


class HeadError(OnnxcamError):
    """CAM asked for, but the layer does not feed a global-average-pooling + linear head."""


class ImageError(OnnxcamError):
    """An image could not be read or does not fit the model."""


class ItemError(OnnxcamError):
    """One image of a batch cannot be explained as asked — its segmentation class is predicted
    nowhere, it has no detection, its map is exactly zero — while the others can: the explainer
    reports it in `Result.errors` for that image instead of drawing a blank map."""
