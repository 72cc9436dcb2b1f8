"""The operator contract: each IR op has a shape/dtype rule and a NumPy reference.

The reference is the op's meaning: constant folding evaluates it and tests compare the
compiled kernels with it. The C kernel for the op lives in the paired file under
kiln/codegen/kernels/ with the same family name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UnsupportedOpError
from ..ir.types import TensorType

Attrs = dict[str, Any]
InferFn = Callable[[list[TensorType], Attrs], list[TensorType]]
ReferenceFn = Callable[[list[np.ndarray], Attrs], list[np.ndarray]]

# Op kinds: how passes may treat an op.
OPAQUE = "opaque"  # a kernel of its own; may take an elementwise epilogue
ELEMENTWISE = "elementwise"  # one output element from the same-index input elements
VIEW = "view"  # output is the input's bytes reinterpreted (reshape-like): no kernel


@dataclass(frozen=True)
class OpDef:
    """One IR operator: its name, type rule, NumPy reference and kind."""

    name: str
    infer: InferFn
    reference: ReferenceFn
    kind: str = OPAQUE


_OPS: dict[str, OpDef] = {}


def register(name: str, *, infer: InferFn, reference: ReferenceFn, kind: str = OPAQUE) -> OpDef:
    """Register an IR op; each name may be registered once."""
    if name in _OPS:
        raise ValueError(f"op {name} registered twice")
    op = OpDef(name, infer, reference, kind)
    _OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    """Look up an IR op by name."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown IR op '{name}'") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_OPS)
