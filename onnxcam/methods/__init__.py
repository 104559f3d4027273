"""CAM methods, one class each, registered by name (`onnxcam methods` lists them)."""

from .base import METHODS, CAMMethod, MethodInputs, get_method, normalize_maps, scale_maps
from .cam import CAM
from .eigen import FEM, KPCACAM, EigenCAM, EigenGradCAM, RandomCAM
from .pixel import FullGrad, GuidedBackprop, GuidedGradCAM, SmoothGradCAMpp
from .score import ISCAM, SSCAM, AblationCAM, ScoreCAM
from .gradcam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

__all__ = [
    "AblationCAM", "CAM", "FEM", "KPCACAM", "FullGrad", "GuidedBackprop", "GuidedGradCAM", "SmoothGradCAMpp", "CAMMethod", "ISCAM", "SSCAM", "ScoreCAM", "EigenCAM", "EigenGradCAM", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus",
    "HiResCAM", "LayerCAM", "METHODS", "MethodInputs", "RandomCAM", "XGradCAM",
    "get_method", "normalize_maps", "scale_maps",
]
