"""Data-movement ops: transpose, concat, split, slice, gathers, expand, tile, pad, one_hot.

Attrs are fully resolved by the frontend (per-axis, non-negative axes, normalized slice
bounds), so each C kernel in kiln/codegen/kernels/movement.py only does index arithmetic.
Indices read from data wrap once if negative and are then clamped into range, so no kernel
reads out of bounds; the references here do the same.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import broadcast_shapes, expect_arity, same_dtype
from .registry import REQUIRED, Attrs, register

INDEX_DTYPES = ("int32", "int64")
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _wrap_clamp(indices: np.ndarray, n: int) -> np.ndarray:
    """Indices in [-n, n) mapped to [0, n): negatives wrap once, then all are clamped."""
    i = indices.astype(np.int64)
    return np.clip(np.where(i < 0, i + n, i), 0, max(n - 1, 0))


def _expect_index(t: TensorType, what: str) -> None:
    if t.dtype not in INDEX_DTYPES:
        raise ShapeError(f"{what} must be int32 or int64, got {t.dtype}")


def _check_rank(values: tuple | list, rank: int, what: str) -> None:
    if len(values) != rank:
        raise ShapeError(f"{what} has {len(values)} entries for a rank-{rank} input")


# transpose ---------------------------------------------------------------------------------

def _transpose_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    perm, shape = tuple(attrs["perm"]), types[0].shape
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(f"perm {list(perm)} is not a permutation of the {len(shape)} axes")
    return [TensorType(tuple(shape[p] for p in perm), types[0].dtype)]


register("transpose", infer=_transpose_infer,
         reference=lambda arrs, a: [np.transpose(arrs[0], a["perm"])], attrs={"perm": REQUIRED})


# concat / split ----------------------------------------------------------------------------

def _concat_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if not types:
        raise ShapeError("concat needs at least one input")
    dtype = same_dtype(types)
    rank, axis = types[0].rank, attrs["axis"]
    if rank == 0 or not 0 <= axis < rank:
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    for t in types:
        rest = t.shape[:axis] + t.shape[axis + 1:]
        if t.rank != rank or rest != types[0].shape[:axis] + types[0].shape[axis + 1:]:
            raise ShapeError(f"cannot concat {[str(u) for u in types]} along axis {axis}")
    total = sum(t.shape[axis] for t in types)
    return [TensorType(types[0].shape[:axis] + (total,) + types[0].shape[axis + 1:], dtype)]


register("concat", infer=_concat_infer,
         reference=lambda arrs, a: [np.concatenate(arrs, axis=a["axis"])],
         attrs={"axis": REQUIRED})


def _split_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    shape, axis, sizes = types[0].shape, attrs["axis"], tuple(attrs["sizes"])
    if not 0 <= axis < len(shape):
        raise ShapeError(f"axis {axis} out of range for rank {len(shape)}")
    if any(s < 0 for s in sizes) or sum(sizes) != shape[axis]:
        raise ShapeError(f"split sizes {list(sizes)} do not add up to dim {shape[axis]} "
                         f"of axis {axis}")
    return [TensorType(shape[:axis] + (s,) + shape[axis + 1:], types[0].dtype) for s in sizes]


def _split_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    bounds = np.cumsum(a["sizes"])[:-1]
    return [np.ascontiguousarray(p) for p in np.split(arrs[0], bounds, axis=a["axis"])]


register("split", infer=_split_infer, reference=_split_reference,
         attrs={"axis": REQUIRED, "sizes": REQUIRED}, epilogue=False)  # one output per size


# slice -------------------------------------------------------------------------------------

def _slice_length(start: int, end: int, step: int) -> int:
    """Elements in start, start+step, ... before end (end is -1 for 'through 0' when step<0)."""
    return len(range(start, end, step))


def _slice_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    shape = types[0].shape
    starts, ends, steps = attrs["starts"], attrs["ends"], attrs["steps"]
    for what in (starts, ends, steps):
        _check_rank(what, len(shape), "slice bounds")
    out = []
    for d, (n, s, e, st) in enumerate(zip(shape, starts, ends, steps, strict=True)):
        if st == 0:
            raise ShapeError(f"slice step of axis {d} is 0")
        length = _slice_length(s, e, st)
        if length and not (0 <= s < n and 0 <= s + (length - 1) * st < n):
            raise ShapeError(f"slice {s}:{e}:{st} of axis {d} is outside its dim {n}")
        out.append(length)
    return [TensorType(tuple(out), types[0].dtype)]


def _slice_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    index = tuple(slice(s, e if e >= 0 else None, st)
                  for s, e, st in zip(a["starts"], a["ends"], a["steps"], strict=True))
    return [arrs[0][index]]


register("slice", infer=_slice_infer, reference=_slice_reference,
         attrs={"starts": REQUIRED, "ends": REQUIRED, "steps": REQUIRED})


# gather, gather_elements, gather_nd --------------------------------------------------------

def _gather_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 2)
    data, idx = types
    _expect_index(idx, "gather indices")
    axis = attrs["axis"]
    if not 0 <= axis < data.rank:
        raise ShapeError(f"axis {axis} out of range for rank {data.rank}")
    if data.shape[axis] == 0 and idx.numel:
        raise ShapeError(f"cannot gather from empty axis {axis} of {data}")
    return [TensorType(data.shape[:axis] + idx.shape + data.shape[axis + 1:], data.dtype)]


def _gather_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    data, idx = arrs
    return [np.take(data, _wrap_clamp(idx, data.shape[a["axis"]]), axis=a["axis"])]


register("gather", infer=_gather_infer, reference=_gather_reference, attrs={"axis": REQUIRED})


def _gather_elements_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 2)
    data, idx = types
    _expect_index(idx, "gather_elements indices")
    axis = attrs["axis"]
    if data.rank != idx.rank or not 0 <= axis < data.rank:
        raise ShapeError(f"gather_elements needs data and indices of one rank and an axis "
                         f"in it, got {data}, {idx}, axis {axis}")
    if any(i > d for k, (i, d) in enumerate(zip(idx.shape, data.shape, strict=True)) if k != axis):
        raise ShapeError(f"indices {idx} exceed data {data} outside axis {axis}")
    if data.shape[axis] == 0 and idx.numel:
        raise ShapeError(f"cannot gather from empty axis {axis} of {data}")
    return [TensorType(idx.shape, data.dtype)]


def _gather_elements_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    data, idx = arrs
    axis = a["axis"]
    window = tuple(slice(None) if k == axis else slice(0, n) for k, n in enumerate(idx.shape))
    clamped = _wrap_clamp(idx, data.shape[axis])
    return [np.take_along_axis(data[window], clamped, axis=axis)]


register("gather_elements", infer=_gather_elements_infer, reference=_gather_elements_reference,
         attrs={"axis": REQUIRED})


def _gather_nd_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 2)
    data, idx = types
    _expect_index(idx, "gather_nd indices")
    b = attrs["batch_dims"]
    if idx.rank < 1 or not 0 <= b < min(data.rank, idx.rank):
        raise ShapeError(f"gather_nd needs 0 <= batch_dims < min(ranks), got batch_dims {b} "
                         f"for {data}, {idx}")
    k = idx.shape[-1]
    if idx.shape[:b] != data.shape[:b] or not 1 <= k <= data.rank - b:
        raise ShapeError(f"gather_nd indices {idx} do not fit data {data} "
                         f"with batch_dims {b}")
    if idx.numel and 0 in data.shape[b:b + k]:
        raise ShapeError(f"cannot gather from empty dims of {data}")
    return [TensorType(idx.shape[:-1] + data.shape[b + k:], data.dtype)]


def _gather_nd_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    data, idx = arrs
    b, k = a["batch_dims"], idx.shape[-1]
    batch = int(np.prod(data.shape[:b], dtype=np.int64))
    flat_data = data.reshape((batch,) + data.shape[b:])
    rows = idx.reshape(batch, -1, k)
    cols = [_wrap_clamp(rows[..., j], data.shape[b + j]) for j in range(k)]
    picked = flat_data[(np.arange(batch)[:, None], *cols)]
    return [picked.reshape(idx.shape[:-1] + data.shape[b + k:])]


register("gather_nd", infer=_gather_nd_infer, reference=_gather_nd_reference,
         attrs={"batch_dims": 0})


# expand, tile, pad -------------------------------------------------------------------------

def _expand_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    shape = tuple(attrs["shape"])
    if broadcast_shapes(types[0].shape, shape) != shape:
        raise ShapeError(f"cannot expand {types[0]} to {list(shape)}")
    return [TensorType(shape, types[0].dtype)]


register("expand", infer=_expand_infer,
         reference=lambda arrs, a: [np.broadcast_to(arrs[0], a["shape"]).copy()],
         attrs={"shape": REQUIRED})


def _tile_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    reps, shape = tuple(attrs["repeats"]), types[0].shape
    _check_rank(reps, len(shape), "tile repeats")
    if any(r < 0 for r in reps):
        raise ShapeError(f"tile repeats {list(reps)} must be >= 0")
    return [TensorType(tuple(n * r for n, r in zip(shape, reps, strict=True)), types[0].dtype)]


register("tile", infer=_tile_infer, reference=lambda arrs, a: [np.tile(arrs[0], a["repeats"])],
         attrs={"repeats": REQUIRED})


def _pad_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    shape, pads, mode = types[0].shape, tuple(attrs["pads"]), attrs["mode"]
    rank = len(shape)
    _check_rank(pads, 2 * rank, "pads (begins then ends)")
    if mode not in PAD_MODES:
        raise ShapeError(f"pad mode '{mode}' is not one of {list(PAD_MODES)}")
    out = tuple(n + pads[d] + pads[rank + d] for d, n in enumerate(shape))
    if any(n < 0 for n in out):
        raise ShapeError(f"pads {list(pads)} remove more than {types[0]} holds")
    if mode != "constant" and any(n == 0 and m for n, m in zip(shape, out, strict=True)):
        raise ShapeError(f"{mode} padding needs non-empty dims, got {types[0]}")
    return [TensorType(out, types[0].dtype)]


def _pad_source(out_index: np.ndarray, begin: int, n: int, mode: str) -> np.ndarray:
    """Input positions read by output positions of one padded axis (constant: may be outside)."""
    c = out_index - begin
    if mode == "edge":
        return np.clip(c, 0, n - 1)
    if mode == "wrap":
        return np.mod(c, n)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(c)
        c = np.mod(c, 2 * (n - 1))
        return np.where(c >= n, 2 * (n - 1) - c, c)
    return c


def _pad_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    x, pads, mode = arrs[0], a["pads"], a["mode"]
    (out_type,) = _pad_infer([TensorType.of(x)], a)
    fill = np.full(out_type.shape, a["value"]).astype(x.dtype)
    if x.size == 0:
        return [fill]
    srcs = [_pad_source(np.arange(m), pads[d], n, mode)
            for d, (n, m) in enumerate(zip(x.shape, out_type.shape, strict=True))]
    inside = [(s >= 0) & (s < n) for s, n in zip(srcs, x.shape, strict=True)]
    picked = x[np.ix_(*[np.clip(s, 0, n - 1) for s, n in zip(srcs, x.shape, strict=True)])]
    mask = np.ones(out_type.shape, dtype=bool)
    for d, m in enumerate(inside):
        mask &= m.reshape((-1,) + (1,) * (x.ndim - d - 1))
    return [np.where(mask, picked, fill)]


register("pad", infer=_pad_infer, reference=_pad_reference,
         attrs={"pads": REQUIRED, "mode": REQUIRED, "value": REQUIRED})


# one_hot -----------------------------------------------------------------------------------

def _one_hot_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 2)
    idx, values = types
    depth, axis = attrs["depth"], attrs["axis"]
    if values.numel != 2:
        raise ShapeError(f"one_hot values must hold [off, on], got {values}")
    if depth < 1 or not 0 <= axis <= idx.rank:
        raise ShapeError(f"one_hot needs depth >= 1 and axis in [0, {idx.rank}], "
                         f"got depth {depth}, axis {axis}")
    return [TensorType(idx.shape[:axis] + (depth,) + idx.shape[axis:], values.dtype)]


def _one_hot_reference(arrs: list[np.ndarray], a: Attrs) -> list[np.ndarray]:
    # Non-integer indices are cast to int64 (truncated: 2.7 is class 2), as ONNX specifies.
    idx, values = arrs[0].astype(np.int64), arrs[1].reshape(-1)
    depth, axis = a["depth"], a["axis"]
    idx = np.where(idx < 0, idx + depth, idx)
    classes = np.arange(depth).reshape((depth,) + (1,) * (idx.ndim - axis))
    hot = np.expand_dims(idx, axis) == classes
    return [np.where(hot, values[1], values[0]).astype(values.dtype)]


register("one_hot", infer=_one_hot_infer, reference=_one_hot_reference,
         attrs={"depth": REQUIRED, "axis": REQUIRED})

