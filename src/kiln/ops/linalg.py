"""Linear-algebra ops: matmul, gemm, cumsum and trilu.

ONNX Einsum has no IR op of its own: the frontend lowers it to transpose, reshape, matmul,
mul, where and reduce_sum (kiln/frontend/onnx/ops/linalg.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import broadcast_shapes, expect_arity, same_dtype
from .layout import unpack_panels, unpacked_shape
from .registry import REQUIRED, Attrs, register

# `packed_n` (matmul, gemm): 0 when B is as the model gave it; n when B is a 2-D (k x n)
# matrix stored in column panels (kiln/ops/layout.py), a layout the packing pass chooses.


@dataclass(frozen=True)
class MatmulDims:
    """A matmul's operands seen as batches of matrices: (a_batch, m, k) @ (b_batch, k, n)."""

    a_batch: tuple[int, ...]
    b_batch: tuple[int, ...]
    batch: tuple[int, ...]  # the broadcast batch shape of the output
    m: int
    k: int
    n: int
    out_shape: tuple[int, ...]  # numpy's: 1-D operands drop their added dim


def matmul_dims(a: tuple[int, ...], b: tuple[int, ...]) -> MatmulDims:
    """The dims of numpy matmul(a, b) (1-D operands promoted as numpy does), or ShapeError."""
    if not a or not b:
        raise ShapeError(f"matmul operands must have rank >= 1, got {list(a)} and {list(b)}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"matmul of {list(a)} and {list(b)}: inner dims {a2[-1]} and "
                         f"{b2[-2]} differ")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2],) * (len(a) > 1) + (b2[-1],) * (len(b) > 1)
    return MatmulDims(a2[:-2], b2[:-2], batch, a2[-2], a2[-1], b2[-1], out)


def _numeric_dtype(types: list[TensorType], op: str) -> str:
    dtype = same_dtype(types)
    if dtype == "bool":
        raise ShapeError(f"{op} needs numeric operands, got bool")
    return dtype


def b_shape(b: tuple[int, ...], attrs: Attrs) -> tuple[int, ...]:
    """The shape B has for the product: its own, or (k, n) when stored as panels."""
    return unpacked_shape(b, attrs["packed_n"]) if attrs["packed_n"] else tuple(b)


def _b_array(b: np.ndarray, attrs: Attrs) -> np.ndarray:
    return unpack_panels(b, attrs["packed_n"]) if attrs["packed_n"] else b


def _matmul_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 2)
    dtype = _numeric_dtype(types, "matmul")
    dims = matmul_dims(types[0].shape, b_shape(types[1].shape, attrs))
    return [TensorType(dims.out_shape, dtype)]


def _matmul_reference(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    return [np.matmul(arrs[0], _b_array(arrs[1], attrs)).astype(arrs[0].dtype)]


register("matmul", infer=_matmul_infer, reference=_matmul_reference, attrs={"packed_n": 0})


def gemm_dims(a: tuple[int, ...], b: tuple[int, ...], attrs: Attrs) -> tuple[int, int, int]:
    """(m, k, n) of gemm: op(a) is (m, k) and op(b) is (k, n), op transposing if asked."""
    if attrs["packed_n"] and attrs["trans_b"]:
        raise ShapeError("gemm with a packed B cannot also transpose it (trans_b)")
    b = b_shape(b, attrs)
    if len(a) != 2 or len(b) != 2:
        raise ShapeError(f"gemm operands must be 2-D, got {list(a)} and {list(b)}")
    m, k = a[::-1] if attrs["trans_a"] else a
    kb, n = b[::-1] if attrs["trans_b"] else b
    if k != kb:
        raise ShapeError(f"gemm of {list(a)} (trans_a={attrs['trans_a']}) and {list(b)} "
                         f"(trans_b={attrs['trans_b']}): inner dims {k} and {kb} differ")
    return m, k, n


def _gemm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs, got {len(types)}")
    dtype = _numeric_dtype(types, "gemm")
    m, _, n = gemm_dims(types[0].shape, types[1].shape, attrs)
    if len(types) == 3:
        c = types[2].shape
        if len(c) > 2 or broadcast_shapes(c, (m, n)) != (m, n):
            raise ShapeError(f"gemm bias of shape {list(c)} does not broadcast to [{m}, {n}]")
    return [TensorType((m, n), dtype)]


def _gemm_reference(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    a, b = arrs[0], _b_array(arrs[1], attrs)
    a = a.T if attrs["trans_a"] else a
    b = b.T if attrs["trans_b"] else b
    dtype = a.dtype
    out = np.asarray(attrs["alpha"]).astype(dtype) * (a @ b)
    if len(arrs) == 3:
        out = out + np.asarray(attrs["beta"]).astype(dtype) * arrs[2]
    return [out.astype(dtype)]


# trans_b is the model's; whether a constant B is stored transposed is a layout choice made
# later (passes/simplify.py), not by the frontend.
register("gemm", infer=_gemm_infer, reference=_gemm_reference,
         attrs={"alpha": 1.0, "beta": 1.0, "trans_a": False, "trans_b": False, "packed_n": 0})


def _cumsum_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x = types[0]
    if x.dtype == "bool":
        raise ShapeError("cumsum needs a numeric operand, got bool")
    if not 0 <= attrs["axis"] < x.rank:
        raise ShapeError(f"cumsum axis {attrs['axis']} out of range for {x}")
    return [x]


def _cumsum_reference(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = np.moveaxis(arrs[0], attrs["axis"], -1)
    if attrs["reverse"]:
        x = x[..., ::-1]
    if attrs["exclusive"]:  # shift right by one along the axis
        x = np.concatenate([np.zeros_like(x[..., :1]), x[..., :-1]], axis=-1)
    out = np.cumsum(x, axis=-1, dtype=x.dtype)
    if attrs["reverse"]:
        out = out[..., ::-1]
    return [np.ascontiguousarray(np.moveaxis(out, -1, attrs["axis"]))]


register("cumsum", infer=_cumsum_infer, reference=_cumsum_reference,
         attrs={"axis": REQUIRED, "exclusive": False, "reverse": False})


def _trilu_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    if types[0].rank < 2:
        raise ShapeError(f"trilu needs rank >= 2, got {types[0]}")
    return [types[0]]


def _trilu_reference(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    fn = np.triu if attrs["upper"] else np.tril
    return [fn(arrs[0], attrs["k"])]


register("trilu", infer=_trilu_infer, reference=_trilu_reference,
         attrs={"k": 0, "upper": True})
