"""Reduce ops: reductions over axes, arg reductions, softmax-like ops and top-k.

Reductions (`reduce_sum`, ...) take attrs `axes` (sorted, unique, non-negative, non-empty)
and `keepdims`. Floats accumulate in float64, integers in int64 with wrap-around; the C
kernels (kiln/codegen/kernels/reduce.py) do the same. An empty reduced set gives the op's
identity (sum 0, prod 1, max -inf or the type's minimum, log ops -inf, mean 0). NaN
propagates through max/min and wins argmax/argmin, as in NumPy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import expect_arity
from .registry import REQUIRED, Attrs, register

ReduceFn = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def _acc(x: np.ndarray) -> np.ndarray:
    """x in its accumulation dtype: float64 for floats, int64 (wrapping) for integers."""
    return x.astype(np.float64 if x.dtype.kind == "f" else np.int64)


def _sum(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sum(_acc(x), axis=axes, keepdims=True)


def _mean(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    total = _sum(x, axes)
    if n == 0:
        return np.zeros_like(total)
    if total.dtype.kind == "f":
        return total / n
    return np.abs(total) // n * np.sign(total)  # integer mean truncates toward zero, as C


def _extreme(x: np.ndarray, axes: tuple[int, ...], largest: bool) -> np.ndarray:
    if x.dtype == np.bool_:
        start = not largest
    elif x.dtype.kind == "f":
        start = -np.inf if largest else np.inf
    else:
        start = np.iinfo(x.dtype).min if largest else np.iinfo(x.dtype).max
    fn = np.max if largest else np.min
    return fn(x, axis=axes, keepdims=True, initial=start)


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    shift = np.where(np.isinf(m), 0.0, m)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - shift), axis=axes, keepdims=True)) + shift


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x.astype(np.float64))


# IR op -> reference(x, axes) with keepdims; cast to the input dtype afterwards.
REDUCTIONS: dict[str, ReduceFn] = {
    "reduce_sum": _sum,
    "reduce_mean": _mean,
    "reduce_max": lambda x, ax: _extreme(x, ax, True),
    "reduce_min": lambda x, ax: _extreme(x, ax, False),
    "reduce_prod": lambda x, ax: np.prod(_acc(x), axis=ax, keepdims=True),
    "reduce_l1": lambda x, ax: _sum(np.abs(_acc(x)), ax),
    "reduce_l2": lambda x, ax: np.sqrt(_sum(x.astype(np.float64) ** 2, ax)),
    "reduce_sum_square": lambda x, ax: _sum(_acc(x) * _acc(x), ax),
    "reduce_log_sum": lambda x, ax: _log(_sum(x, ax)),
    "reduce_log_sum_exp": _log_sum_exp,
}
# Reductions defined on bool tensors (any / all).
BOOL_REDUCTIONS = {"reduce_max", "reduce_min"}


def _check_numeric(op: str, t: TensorType, kinds: str = "fiu") -> None:
    if t.dtype == "bool" or np.dtype(t.dtype).kind not in kinds:
        raise ShapeError(f"{op} does not support dtype {t.dtype}")


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...],
                   keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if d in axes else n for d, n in enumerate(shape))
    return tuple(n for d, n in enumerate(shape) if d not in axes)


def _reduction_infer(op: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 1)
        t = types[0]
        if not (t.dtype == "bool" and op in BOOL_REDUCTIONS):
            _check_numeric(op, t)
        axes = tuple(attrs["axes"])
        if not axes or list(axes) != sorted(set(axes)) or not all(0 <= a < t.rank for a in axes):
            raise ShapeError(f"{op} axes must be sorted, unique and in [0, {t.rank}), got "
                             f"{list(axes)}")
        return [TensorType(_reduced_shape(t.shape, axes, bool(attrs["keepdims"])), t.dtype)]

    return infer


def _reduction_reference(op: str):
    fn = REDUCTIONS[op]

    def reference(arrays: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
        x = arrays[0]
        axes = tuple(attrs["axes"])
        out = fn(x, axes)
        with np.errstate(invalid="ignore"):
            out = out.astype(x.dtype)
        return [out.reshape(_reduced_shape(x.shape, axes, bool(attrs["keepdims"])))]

    return reference


for _op in REDUCTIONS:
    register(_op, infer=_reduction_infer(_op), reference=_reduction_reference(_op),
             attrs={"axes": REQUIRED, "keepdims": True})


def _check_axis(op: str, t: TensorType, axis: int) -> None:
    if not 0 <= axis < t.rank:
        raise ShapeError(f"{op} axis must be in [0, {t.rank}), got {axis}")


# ---- argmax / argmin ------------------------------------------------------------------------


def _arg_infer(op: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 1)
        t = types[0]
        _check_numeric(op, t)
        axis = attrs["axis"]
        _check_axis(op, t, axis)
        if t.shape[axis] == 0:
            raise ShapeError(f"{op} over axis {axis} of {t}, which is empty")
        return [TensorType(_reduced_shape(t.shape, (axis,), bool(attrs["keepdims"])), "int64")]

    return infer


def arg_extreme(x: np.ndarray, axis: int, largest: bool, last: bool) -> np.ndarray:
    """Index of the first (or last) largest/smallest element along axis, NaN winning."""
    fn = np.argmax if largest else np.argmin
    if not last:
        return fn(x, axis=axis, keepdims=True)
    return x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis, keepdims=True)


def _arg_reference(largest: bool):
    def reference(arrays: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
        x, axis = arrays[0], attrs["axis"]
        idx = arg_extreme(x, axis, largest, bool(attrs["select_last_index"]))
        shape = _reduced_shape(x.shape, (axis,), bool(attrs["keepdims"]))
        return [idx.astype(np.int64).reshape(shape)]

    return reference


ARG_ATTRS = {"axis": REQUIRED, "keepdims": True, "select_last_index": False}
register("argmax", infer=_arg_infer("argmax"), reference=_arg_reference(True), attrs=ARG_ATTRS)
register("argmin", infer=_arg_infer("argmin"), reference=_arg_reference(False), attrs=ARG_ATTRS)


# ---- softmax / log_softmax / hardmax ----------------------------------------------------------


def _axis_op_infer(op: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 1)
        _check_numeric(op, types[0], "f")
        _check_axis(op, types[0], attrs["axis"])
        return [types[0]]

    return infer


def _softmax_ref(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    shifted = x.astype(np.float64) - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    total = np.sum(np.exp(shifted), axis=axis, keepdims=True)
    return shifted - np.log(total) if log else np.exp(shifted) / total


def _hardmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    if x.size == 0:
        return np.zeros_like(x)
    idx = arg_extreme(x, axis, True, False)
    return np.arange(x.shape[axis]).reshape([-1] + [1] * (x.ndim - 1 - axis)) == idx


_AXIS_OPS = {
    "softmax": lambda x, axis: _softmax_ref(x, axis, False),
    "log_softmax": lambda x, axis: _softmax_ref(x, axis, True),
    "hardmax": _hardmax_ref,
}
for _op, _fn in _AXIS_OPS.items():
    register(
        _op,
        infer=_axis_op_infer(_op),
        reference=lambda arrs, a, f=_fn: [np.asarray(f(arrs[0], a["axis"])).astype(arrs[0].dtype)],
        attrs={"axis": REQUIRED},
    )


# ---- topk --------------------------------------------------------------------------------------


def _topk_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    t = types[0]
    _check_numeric("topk", t)
    axis, k = attrs["axis"], attrs["k"]
    _check_axis("topk", t, axis)
    if not 0 <= k <= t.shape[axis]:
        raise ShapeError(f"topk k must be in [0, {t.shape[axis]}] for axis {axis} of {t}, "
                         f"got {k}")
    shape = t.shape[:axis] + (k,) + t.shape[axis + 1:]
    return [TensorType(shape, t.dtype), TensorType(shape, "int64")]


def _topk_reference(arrays: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    """The k best along axis, best first; equal values in index order (always sorted)."""
    x, axis, k = arrays[0], attrs["axis"], attrs["k"]
    if attrs["largest"]:
        n = x.shape[axis]
        order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return [np.take_along_axis(x, idx, axis=axis), idx]


# Results are always sorted (best first), so `sorted` only records what the model asked for.
register("topk", infer=_topk_infer, reference=_topk_reference,
         attrs={"k": REQUIRED, "axis": REQUIRED, "largest": True, "sorted": True},
         epilogue=False)  # two outputs
