"""ONNX -> IR converters of the reduce ops (Reduce*, ArgMax/Min, Softmax family, TopK)."""

from __future__ import annotations

import math

from ....errors import ShapeError
from ....ir import Value
from ....ops.common import normalize_axis
from ..registry import ConvertContext, converter

_REDUCE = {
    "ReduceSum": "reduce_sum",
    "ReduceMean": "reduce_mean",
    "ReduceMax": "reduce_max",
    "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod",
    "ReduceL1": "reduce_l1",
    "ReduceL2": "reduce_l2",
    "ReduceSumSquare": "reduce_sum_square",
    "ReduceLogSum": "reduce_log_sum",
    "ReduceLogSumExp": "reduce_log_sum_exp",
}
# The opset from which `axes` is an input rather than an attribute (18 unless listed).
_AXES_INPUT_FROM = {"ReduceSum": 13}


def _per_element(cx: ConvertContext, op: str, x: Value) -> Value:
    """A reduction over no axes: each element reduced alone (what onnxruntime computes)."""
    if op in ("reduce_l1", "reduce_l2"):
        return cx.emit1("abs", [x])
    if op == "reduce_sum_square":
        return cx.emit1("mul", [x, x])
    if op == "reduce_log_sum":
        return cx.emit1("log", [x])
    return x  # sum, mean, max, min, prod and log-sum-exp of one element are the element


def _reduce_axes(cx: ConvertContext) -> list[int]:
    """The axes the node names (attribute or compile-time input); [] when none are given."""
    if cx.opset >= _AXES_INPUT_FROM.get(cx.node.op_type, 18):
        axes = cx.const_input(1)
        return [] if axes is None else [int(a) for a in axes.reshape(-1)]
    return list(cx.attr("axes", []))


@converter(*_REDUCE)
def _reduce(cx: ConvertContext) -> list[Value]:
    op, x = _REDUCE[cx.node.op_type], cx.input(0)
    axes = _reduce_axes(cx)
    if not axes and cx.attr("noop_with_empty_axes", 0):
        return [_per_element(cx, op, x)]
    rank = x.type.rank
    try:
        axes = sorted({normalize_axis(a, rank) for a in axes}) if axes else list(range(rank))
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e
    if not axes:  # a scalar input
        return [_per_element(cx, op, x)]
    return [cx.emit1(op, [x], {"axes": tuple(axes), **cx.given(keepdims=bool)})]


def _axis(cx: ConvertContext, default: int) -> int:
    try:
        return normalize_axis(cx.attr("axis", default), cx.input(0).type.rank)
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e


@converter("ArgMax", "ArgMin")
def _arg(cx: ConvertContext) -> list[Value]:
    attrs = {"axis": _axis(cx, 0), **cx.given(keepdims=bool, select_last_index=bool)}
    return [cx.emit1(cx.node.op_type.lower(), [cx.input(0)], attrs)]


_AXIS_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Hardmax": "hardmax"}


@converter(*_AXIS_OPS)
def _softmax(cx: ConvertContext) -> list[Value]:
    """Opset >= 13: along `axis` (default -1); before: on the input coerced to 2-D at axis."""
    op, x = _AXIS_OPS[cx.node.op_type], cx.input(0)
    if cx.opset >= 13:
        return [cx.emit1(op, [x], {"axis": _axis(cx, -1)})]
    axis, shape = _axis(cx, 1), x.type.shape
    if math.prod(shape[axis + 1:]) == 1:  # the 2-D view reduces over this axis alone
        return [cx.emit1(op, [x], {"axis": axis})]
    flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
    x2 = cx.builder.emit("reshape", [x], {"shape": flat})[0]
    y2 = cx.emit1(op, [x2], {"axis": 1})
    return [cx.builder.emit("reshape", [y2], {"shape": shape})[0]]


@converter("TopK")
def _topk(cx: ConvertContext) -> list[Value]:
    if cx.opset < 10:
        k = cx.attr("k")
    else:
        k_input = cx.const_input(1)
        k = None if k_input is None or k_input.size != 1 else int(k_input.reshape(-1)[0])
    if k is None:
        raise ShapeError(f"{cx.where()}: K must be given as one integer")
    attrs = {"k": int(k), "axis": _axis(cx, -1), **cx.given(largest=bool, sorted=bool)}
    return cx.emit("topk", [cx.input(0)], attrs, num_outputs=2)
