"""IR operators: one module per family, each registering shape rules and NumPy references."""

from . import elementwise, linalg, movement, nn, reduce, resize, views  # noqa: F401  (register ops)
from .registry import ELEMENTWISE, OPAQUE, VIEW, OpDef, all_ops, get_op, register

__all__ = ["ELEMENTWISE", "OPAQUE", "VIEW", "OpDef", "all_ops", "get_op", "register"]
