"""ONNX converters, one module per op family (importing registers them)."""

from . import conv, elementwise, linalg, movement, norm, pool, reduce, resize  # noqa: F401
