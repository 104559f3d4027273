"""Reverse-mode differentiation of ONNX graphs, emitted as plain ai.onnx ops."""

from .engine import GradientResult, append_gradient

__all__ = ["GradientResult", "append_gradient"]
