"""CAM methods, one class each, registered by name (`onnxcam methods` lists them), in files named
by family; maps.py holds the maths they share."""

from .ablation import AblationCAM
from .base import METHODS, CAMMethod, MethodInputs, configured, get_method
from .baselines import RandomCAM
from .cam import CAM
from .eigen import KPCACAM, EigenCAM, EigenGradCAM
from .fem import FEM
from .gradients import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, SmoothGradCAMpp, XGradCAM
from .input_gradients import FullGrad, GuidedBackprop, GuidedGradCAM
from .maps import normalize_maps, scale_maps
from .score import ISCAM, SSCAM, ScoreCAM
from .transformer import AttentionRollout, Chefer, GradRollout, RawAttention

__all__ = [
    "AblationCAM", "AttentionRollout", "Chefer", "GradRollout", "RawAttention", "CAM", "CAMMethod", "EigenCAM", "EigenGradCAM", "FEM", "FullGrad", "GradCAM",
    "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "ISCAM",
    "KPCACAM", "LayerCAM", "METHODS", "MethodInputs", "RandomCAM", "SSCAM", "ScoreCAM",
    "SmoothGradCAMpp", "XGradCAM", "configured", "get_method", "normalize_maps", "scale_maps",
]
