"""IR operators: one module per family, each registering its ops' definitions (OpDef: attrs
with defaults, type rule, NumPy reference, kind, epilogue), plus what needs those
definitions: the graph builder, the verifier and the constant evaluator."""

from . import conv, elementwise, external, linalg, movement, norm, pool, reduce, resize, views  # noqa: F401  (register ops)
from .builder import GraphBuilder
from .registry import (
    ELEMENTWISE,
    EXTERNAL,
    OPAQUE,
    REQUIRED,
    VIEW,
    OpDef,
    all_ops,
    get_op,
    register,
)
from .verify import verify

__all__ = ["ELEMENTWISE", "EXTERNAL", "OPAQUE", "REQUIRED", "VIEW", "GraphBuilder", "OpDef",
           "all_ops", "get_op", "register", "verify"]
