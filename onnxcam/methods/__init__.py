"""CAM methods, one class each, registered by name."""

from .base import METHODS, CAMMethod, MethodInputs, get_method, normalize_maps, scale_maps
from .cam import CAM
from .gradcam import GradCAM, HiResCAM

__all__ = [
    "CAM", "CAMMethod", "GradCAM", "HiResCAM", "METHODS", "MethodInputs",
    "get_method", "normalize_maps", "scale_maps",
]
