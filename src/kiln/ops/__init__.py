"""IR operators: one module per family, each registering shape rules and NumPy references."""

from . import conv, elementwise, linalg, movement, norm, pool, reduce, resize, views  # noqa: F401  (register ops)
from .registry import ELEMENTWISE, OPAQUE, VIEW, OpDef, all_ops, get_op, register

__all__ = ["ELEMENTWISE", "OPAQUE", "VIEW", "OpDef", "all_ops", "get_op", "register"]
