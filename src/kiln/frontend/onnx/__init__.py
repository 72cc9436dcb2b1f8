"""The ONNX frontend."""

from .importer import from_onnx, load_model
from .registry import supported_op_types

__all__ = ["from_onnx", "load_model", "supported_op_types"]
