"""Elementwise ops: unary, binary (numpy broadcasting) and where.

Each row names the op, its NumPy reference and its attributes with their defaults (stated
here only). The C expression of each op is in kiln/codegen/kernels/elementwise.py under the
same name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import broadcast_shapes, expect_arity, same_dtype
from .registry import ELEMENTWISE, REQUIRED, Attrs, register

_erf = np.vectorize(math.erf, otypes=[np.float64])

# softplus(x) is x itself above this (log1p(exp(x)) would overflow); the C template uses it too.
SOFTPLUS_LINEAR_ABOVE = 20
# The tanh approximation of gelu: 0.5 x (1 + tanh(sqrt(2/pi) (x + GELU_TANH_CUBIC x^3))).
GELU_TANH_CUBIC = 0.044715


def _gelu(x: np.ndarray, a: Attrs) -> np.ndarray:
    if a["approximate"] == "tanh":
        inner = np.sqrt(2 / np.pi) * (x + GELU_TANH_CUBIC * x**3)
        return 0.5 * x * (1 + np.tanh(inner))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def _softplus(x: np.ndarray) -> np.ndarray:
    cut = SOFTPLUS_LINEAR_ABOVE
    return np.where(x > cut, x, np.log1p(np.exp(np.minimum(x, cut))))


def _clip(x: np.ndarray, a: Attrs) -> np.ndarray:
    lo, hi = a["min"], a["max"]
    if lo is not None:
        x = np.where(x < lo, np.asarray(lo).astype(x.dtype), x)
    if hi is not None:
        x = np.where(x > hi, np.asarray(hi).astype(x.dtype), x)
    return x


def _int_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (as C does); division by zero gives 0."""
    safe = np.where(y == 0, 1, y)
    q = np.abs(x) // np.abs(safe) * np.sign(x) * np.sign(safe)
    return np.where(y == 0, 0, q)


def _mod(x: np.ndarray, y: np.ndarray, a: Attrs) -> np.ndarray:
    if a["fmod"]:
        return np.fmod(x, y)
    if np.issubdtype(x.dtype, np.integer):
        return np.where(y == 0, 0, np.mod(x, np.where(y == 0, 1, y)))
    return np.mod(x, y)


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        return np.power(x.astype(np.int64), y.astype(np.int64))
    return np.power(x, y.astype(x.dtype))


def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        return _int_div(x, y)
    return x / y


def _selu(x: np.ndarray, a: Attrs) -> np.ndarray:
    return a["gamma"] * np.where(x > 0, x, a["alpha"] * (np.exp(x) - 1))


def _celu(x: np.ndarray, a: Attrs) -> np.ndarray:
    return np.maximum(x, 0) + np.minimum(0, a["alpha"] * (np.exp(x / a["alpha"]) - 1))


UnaryFn = Callable[[np.ndarray, Attrs], np.ndarray]
# name -> (reference(x, attrs), declared attrs with their defaults); output dtype = input's.
UNARY: dict[str, tuple[UnaryFn, Attrs]] = {
    "relu": (lambda x, a: np.where(x < 0, np.zeros_like(x), x), {}),
    "leaky_relu": (lambda x, a: np.where(x < 0, x * a["alpha"], x), {"alpha": 0.01}),
    "sigmoid": (lambda x, a: 1 / (1 + np.exp(-x)), {}),
    "hard_sigmoid": (lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0, 1),
                     {"alpha": 0.2, "beta": 0.5}),
    "hard_swish": (lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1), {}),
    "tanh": (lambda x, a: np.tanh(x), {}),
    "exp": (lambda x, a: np.exp(x), {}),
    "log": (lambda x, a: np.log(x), {}),
    "sqrt": (lambda x, a: np.sqrt(x), {}),
    "reciprocal": (lambda x, a: 1 / x, {}),
    "neg": (lambda x, a: -x, {}),
    "abs": (lambda x, a: np.abs(x), {}),
    "erf": (lambda x, a: _erf(x), {}),
    "gelu": (_gelu, {"approximate": "none"}),
    "softplus": (lambda x, a: _softplus(x), {}),
    "softsign": (lambda x, a: x / (1 + np.abs(x)), {}),
    "mish": (lambda x, a: x * np.tanh(_softplus(x)), {}),
    "selu": (_selu, {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "elu": (lambda x, a: np.where(x > 0, x, a["alpha"] * (np.exp(x) - 1)), {"alpha": 1.0}),
    "celu": (_celu, {"alpha": 1.0}),
    "thresholded_relu": (lambda x, a: np.where(x > a["alpha"], x, 0), {"alpha": 1.0}),
    "shrink": (lambda x, a: np.where(x < -a["lambd"], x + a["bias"], np.where(
        x > a["lambd"], x - a["bias"], 0)).astype(x.dtype), {"lambd": 0.5, "bias": 0.0}),
    "sign": (lambda x, a: np.sign(x), {}),
    "floor": (lambda x, a: np.floor(x), {}),
    "ceil": (lambda x, a: np.ceil(x), {}),
    "round": (lambda x, a: np.round(x), {}),
    "sin": (lambda x, a: np.sin(x), {}),
    "cos": (lambda x, a: np.cos(x), {}),
    "clip": (_clip, {"min": None, "max": None}),  # None: unbounded on that side
}

BinaryFn = Callable[[np.ndarray, np.ndarray, Attrs], np.ndarray]
# name -> (reference(x, y, attrs), declared attrs); output dtype = x's unless in
# COMPARE/LOGICAL.
BINARY: dict[str, tuple[BinaryFn, Attrs]] = {
    "add": (lambda x, y, a: x + y, {}),
    "sub": (lambda x, y, a: x - y, {}),
    "mul": (lambda x, y, a: x * y, {}),
    "div": (lambda x, y, a: _div(x, y), {}),
    "pow": (lambda x, y, a: _pow(x, y), {}),
    "max": (lambda x, y, a: np.maximum(x, y), {}),
    "min": (lambda x, y, a: np.minimum(x, y), {}),
    "mod": (_mod, {"fmod": 0}),
    "prelu": (lambda x, y, a: np.where(x < 0, x * y, x), {}),
    "equal": (lambda x, y, a: x == y, {}),
    "greater": (lambda x, y, a: x > y, {}),
    "less": (lambda x, y, a: x < y, {}),
    "greater_equal": (lambda x, y, a: x >= y, {}),
    "less_equal": (lambda x, y, a: x <= y, {}),
    "and": (lambda x, y, a: np.logical_and(x, y), {}),
    "or": (lambda x, y, a: np.logical_or(x, y), {}),
    "xor": (lambda x, y, a: np.logical_xor(x, y), {}),
}
COMPARE = {"equal", "greater", "less", "greater_equal", "less_equal"}
LOGICAL = {"and", "or", "xor"}
# Binary ops whose second operand may have its own dtype (cast to the first's in C).
MIXED = {"pow"}


def _unary_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    return [types[0]]


def _binary_infer(name: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 2)
        shape = broadcast_shapes(types[0].shape, types[1].shape)
        if name not in MIXED:
            same_dtype(types)
        if name in LOGICAL and types[0].dtype != "bool":
            raise ShapeError(f"{name} needs bool operands, got {types[0].dtype}")
        dtype = "bool" if name in COMPARE | LOGICAL else types[0].dtype
        return [TensorType(shape, dtype)]

    return infer


for _name, (_fn, _attrs) in UNARY.items():
    register(
        _name,
        infer=_unary_infer,
        reference=lambda arrs, a, f=_fn: [np.asarray(f(arrs[0], a)).astype(arrs[0].dtype)],
        kind=ELEMENTWISE,
        attrs=_attrs,
    )

for _name, (_fn, _attrs) in BINARY.items():
    _out_bool = _name in COMPARE | LOGICAL
    register(
        _name,
        infer=_binary_infer(_name),
        reference=lambda arrs, a, f=_fn, b=_out_bool: [
            np.asarray(f(arrs[0], arrs[1], a)).astype("bool" if b else arrs[0].dtype)
        ],
        kind=ELEMENTWISE,
        attrs=_attrs,
    )


def _not_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    if types[0].dtype != "bool":
        raise ShapeError(f"not needs a bool operand, got {types[0].dtype}")
    return [types[0]]


register("not", infer=_not_infer, reference=lambda arrs, a: [np.logical_not(arrs[0])],
         kind=ELEMENTWISE)


def _cast_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    return [TensorType(types[0].shape, attrs["to"])]


register("cast", infer=_cast_infer, reference=lambda arrs, a: [arrs[0].astype(a["to"])],
         kind=ELEMENTWISE, attrs={"to": REQUIRED})


def _where_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 3)
    if types[0].dtype != "bool":
        raise ShapeError(f"where condition must be bool, got {types[0].dtype}")
    same_dtype(types[1:])
    shape = broadcast_shapes(*(t.shape for t in types))
    return [TensorType(shape, types[1].dtype)]


register("where", infer=_where_infer,
         reference=lambda arrs, a: [np.where(arrs[0], arrs[1], arrs[2])], kind=ELEMENTWISE)
