"""Type-rule helpers shared by op families."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, or ShapeError naming them."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {list(shapes)} do not broadcast") from None


def same_dtype(types: list[TensorType]) -> str:
    """The common dtype of types, or ShapeError if they differ."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(f"operands must share one dtype, got {[t.dtype for t in types]}")
    return types[0].dtype


def normalize_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as 0..rank-1, or ShapeError."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def expect_arity(types: list[TensorType], n: int) -> None:
    if len(types) != n:
        raise ShapeError(f"expected {n} inputs, got {len(types)}")


def need_float(t: TensorType) -> None:
    if np.dtype(t.dtype).kind != "f":
        raise ShapeError(f"expected a float tensor, got {t}")


def need_image(t: TensorType, min_rank: int = 3) -> None:
    if t.rank < min_rank:
        raise ShapeError(f"expected a tensor (N, C, spatial...) of rank >= {min_rank}, got {t}")


def need_vector(t: TensorType, n: int, what: str) -> None:
    if t.shape != (n,):
        raise ShapeError(f"{what} must have shape ({n},), got {t}")


def spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    """The spatial axes of an (N, C, *spatial) array."""
    return tuple(range(2, x.ndim))
