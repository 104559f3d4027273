"""onnxcam: CAM and Grad-CAM explanations for any ONNX vision model, computed by onnxruntime."""

try:
    import onnxruntime as _onnxruntime  # noqa: F401  (checked first: the one dependency chosen by hand)
except ImportError as _exc:
    raise ImportError(
        f"onnxcam needs onnxruntime, which cannot be imported ({_exc}): pip install 'onnxcam[cpu]', or "
        f"'onnxcam[gpu]' for CUDA (exactly one of onnxruntime / onnxruntime-gpu)"
    ) from None

from .errors import (
    GradientRuleError, HeadError, ImageError, ModelLoadError, OnnxcamError, UnsupportedOpError, UsageError,
)
from .explainer import Explainer, Result
from .export import Exported, export_model
from .image import PRESETS, load_image, overlay, preprocess
from .layers import Layer
from .methods import CAM, METHODS, CAMMethod, GradCAM, HiResCAM
from .model import ModelInfo, inspect_model, load_model
from .targets import parse_target

__version__ = "0.1.0"

__all__ = [
    "CAM", "CAMMethod", "Explainer", "Exported", "GradCAM", "GradientRuleError", "HeadError", "HiResCAM", "ImageError", "Layer",
    "METHODS", "ModelInfo", "ModelLoadError", "OnnxcamError", "PRESETS", "Result",
    "UnsupportedOpError", "UsageError", "export_model", "inspect_model", "load_image", "load_model", "overlay",
    "parse_target", "preprocess",
]
