"""ONNX converters, one module per op family (importing registers them)."""

from . import elementwise, linalg, movement, nn, reduce, resize  # noqa: F401
