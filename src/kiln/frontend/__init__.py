"""Frontends: model formats to kiln IR."""

from .onnx import from_onnx

__all__ = ["from_onnx"]
