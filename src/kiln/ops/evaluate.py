"""Compile-time evaluation of one op (constant folding), shared by GraphBuilder and the fold pass.

A node is evaluated only when each result's inferred size is within the folding limit, checked
before anything is computed: a ConstantOfShape of 2^40 elements allocates nothing here and
stays a run-time node. Each result is checked against the type the op's rule inferred.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LimitError, ShapeError
from ..ir.types import TensorType
from .registry import ReferenceFn

# The default largest tensor constant folding may create; $KILN_FOLD_LIMIT_BYTES overrides it.
DEFAULT_FOLD_LIMIT_BYTES = 64 * 2**20
FOLD_LIMIT_ENV = "KILN_FOLD_LIMIT_BYTES"


def fold_limit_bytes() -> int:
    """The largest result (in bytes) constant folding computes: $KILN_FOLD_LIMIT_BYTES or 64 MiB."""
    raw = os.environ.get(FOLD_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_FOLD_LIMIT_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise LimitError(f"{FOLD_LIMIT_ENV}={raw!r} is not a byte count (an integer >= 0)")
    return limit


def over_fold_limit(where: str, nbytes: int, what: str) -> str | None:
    """Why `what` (nbytes big, made by where) is not folded, or None when it is within the limit."""
    limit = fold_limit_bytes()
    if nbytes <= limit:
        return None
    return (f"{where} makes {what} of {nbytes} bytes, over the constant-folding limit of "
            f"{limit} bytes (${FOLD_LIMIT_ENV})")


def fold_refusal(where: str, types: Sequence[TensorType]) -> str | None:
    """Why the results of types are not folded (the first one over the limit), or None."""
    for t in types:
        reason = over_fold_limit(where, t.nbytes, f"{t}")
        if reason:
            return reason
    return None


def evaluate(reference: ReferenceFn, arrays: list[np.ndarray], attrs: dict[str, Any],
             types: Sequence[TensorType], where: str) -> list[np.ndarray]:
    """reference(arrays, attrs) as C-ordered arrays, each checked against its inferred type."""
    try:
        results = [np.asarray(r, order="C") for r in reference(arrays, attrs)]
    except MemoryError as e:
        raise LimitError(f"{where}: out of memory evaluating it at compile time") from e
    except (ValueError, IndexError, TypeError, ArithmeticError) as e:
        raise ShapeError(f"{where}: cannot evaluate at compile time: {e}") from e
    if len(results) != len(types):
        raise ShapeError(f"{where}: folded to {len(results)} results, inferred {len(types)}")
    for r, t in zip(results, types, strict=True):
        if TensorType.of(r) != t:
            raise ShapeError(f"{where}: folded to {TensorType.of(r)}, inferred {t}")
    return results
