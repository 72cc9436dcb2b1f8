"""ONNX -> IR converters of the elementwise ops (unary, binary, variadic, Where, Cast, Clip)."""

from __future__ import annotations

from functools import reduce

import numpy as np
from onnx import helper

from ....ir import Value
from ..registry import ConvertContext, converter

# ONNX op -> (IR op, {ONNX attribute: IR attribute}).
_SIMPLE = {
    "Relu": ("relu", {}),
    "LeakyRelu": ("leaky_relu", {"alpha": "alpha"}),
    "Sigmoid": ("sigmoid", {}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": "alpha", "beta": "beta"}),
    "HardSwish": ("hard_swish", {}),
    "Tanh": ("tanh", {}),
    "Exp": ("exp", {}),
    "Log": ("log", {}),
    "Sqrt": ("sqrt", {}),
    "Reciprocal": ("reciprocal", {}),
    "Neg": ("neg", {}),
    "Abs": ("abs", {}),
    "Erf": ("erf", {}),
    "Gelu": ("gelu", {"approximate": "approximate"}),
    "Softplus": ("softplus", {}),
    "Softsign": ("softsign", {}),
    "Mish": ("mish", {}),
    "Selu": ("selu", {"alpha": "alpha", "gamma": "gamma"}),
    "Elu": ("elu", {"alpha": "alpha"}),
    "Celu": ("celu", {"alpha": "alpha"}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": "alpha"}),
    "Shrink": ("shrink", {"lambd": "lambd", "bias": "bias"}),
    "Sign": ("sign", {}),
    "Floor": ("floor", {}),
    "Ceil": ("ceil", {}),
    "Round": ("round", {}),
    "Sin": ("sin", {}),
    "Cos": ("cos", {}),
    "Not": ("not", {}),
    "Add": ("add", {}),
    "Sub": ("sub", {}),
    "Mul": ("mul", {}),
    "Div": ("div", {}),
    "Pow": ("pow", {}),
    "Mod": ("mod", {"fmod": "fmod"}),
    "PRelu": ("prelu", {}),
    "Equal": ("equal", {}),
    "Greater": ("greater", {}),
    "Less": ("less", {}),
    "GreaterOrEqual": ("greater_equal", {}),
    "LessOrEqual": ("less_equal", {}),
    "And": ("and", {}),
    "Or": ("or", {}),
    "Xor": ("xor", {}),
    "Where": ("where", {}),
}


def _legacy_broadcast(cx: ConvertContext, inputs: list[Value]) -> list[Value]:
    """Opset < 7 binary ops broadcast B from `axis` only when broadcast=1: make it numpy-style."""
    if cx.opset >= 7 or len(inputs) != 2 or not cx.attr("broadcast", 0):
        return inputs
    a, b = inputs
    axis = cx.attr("axis", a.type.rank - b.type.rank)
    axis = axis % a.type.rank if a.type.rank else 0
    trailing = a.type.rank - axis - b.type.rank
    if trailing > 0:
        shape = np.array(b.type.shape + (1,) * trailing, dtype=np.int64)
        b = cx.builder.emit("reshape", [b], {"shape": tuple(int(s) for s in shape)})[0]
    return [a, b]


def _simple(cx: ConvertContext) -> list[Value]:
    op, attr_map = _SIMPLE[cx.node.op_type]
    attrs = {ir: cx.attrs[onnx_name] for onnx_name, ir in attr_map.items() if onnx_name in cx.attrs}
    inputs = _legacy_broadcast(cx, [cx.input(i) for i in range(cx.num_inputs)])
    if op == "prelu":
        inputs = _prelu_slope(cx, inputs)
    return [cx.emit1(op, inputs, attrs)]


def _prelu_slope(cx: ConvertContext, inputs: list[Value]) -> list[Value]:
    """Opset < 7 PRelu slopes of shape (C,) apply per channel: reshape them to (C,1,1...)."""
    x, slope = inputs
    if cx.opset < 7 and slope.type.rank == 1 and x.type.rank > 2 and slope.type.shape[0] > 1:
        shape = slope.type.shape + (1,) * (x.type.rank - 2)
        slope = cx.builder.emit("reshape", [slope], {"shape": shape})[0]
    return [x, slope]


converter(*_SIMPLE)(_simple)


@converter("Sum", "Max", "Min", "Mean")
def _variadic(cx: ConvertContext) -> list[Value]:
    op = {"Sum": "add", "Mean": "add", "Max": "max", "Min": "min"}[cx.node.op_type]
    inputs = [cx.input(i) for i in range(cx.num_inputs)]
    total = reduce(lambda a, b: cx.emit1(op, [a, b]), inputs)
    if cx.node.op_type == "Mean" and len(inputs) > 1:
        count = cx.constant(np.array(len(inputs), dtype=total.type.dtype), "count")
        total = cx.emit1("div", [total, count])
    return [total]


@converter("Cast")
def _cast(cx: ConvertContext) -> list[Value]:
    to = cx.attr("to")
    dtype = helper.tensor_dtype_to_np_dtype(to).name if isinstance(to, int) else str(to).lower()
    return [cx.emit1("cast", [cx.input(0)], {"to": dtype})]


@converter("CastLike")
def _cast_like(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("cast", [cx.input(0)], {"to": cx.input(1).type.dtype})]


@converter("Clip")
def _clip(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    if cx.opset < 11:
        return [cx.emit1("clip", [x], {"min": cx.attr("min"), "max": cx.attr("max")})]
    attrs = {}
    for i, key in ((1, "min"), (2, "max")):
        if not cx.has_input(i):
            continue
        bound = cx.builder.constant_of(cx.input(i))
        if bound is None:  # a run-time bound: clip as max/min against the tensor
            x = cx.emit1("max" if key == "min" else "min", [x, cx.input(i)])
        else:
            attrs[key] = bound.item()
    return [cx.emit1("clip", [x], attrs) if attrs else x]
