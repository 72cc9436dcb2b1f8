"""Normalizations: lrn, batch_norm, instance_norm, layer_norm (and its statistics),
rms_norm, mean_variance_norm and lp_norm.

The C kernels are in kiln/codegen/kernels/norm.py under the same names.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import (
    broadcast_shapes,
    expect_arity,
    need_float,
    need_image,
    need_vector,
    normalize_axis,
    same_dtype,
    spatial_axes,
)
from .registry import REQUIRED, Attrs, register

# y = (x - mean) / (sqrt(var) + MVN_EPSILON), as ONNX MeanVarianceNormalization defines it.
MVN_EPSILON = 1e-9
# The attrs of the layer norms: the first normalized axis (non-negative) and epsilon.
LAYER_NORM_ATTRS = {"axis": REQUIRED, "epsilon": 1e-5}


# ---- lrn: [x (N,C,...)] attrs size, alpha, beta, bias; across-channel local response norm.


def _lrn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    need_image(types[0], 2)
    need_float(types[0])
    if attrs["size"] < 1:
        raise ShapeError(f"size must be positive, got {attrs['size']}")
    return [types[0]]


def lrn_window(size: int) -> tuple[int, int]:
    """Channels before and after c in c's window: floor and ceil of (size - 1) / 2."""
    return (size - 1) // 2, size // 2


def _lrn_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    before, after = lrn_window(attrs["size"])
    sq = np.pad(x * x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    total = sum(sq[:, j:j + x.shape[1]] for j in range(attrs["size"]))
    scale = attrs["bias"] + attrs["alpha"] / attrs["size"] * total
    return [(x / scale ** attrs["beta"]).astype(x.dtype)]


register("lrn", infer=_lrn_infer, reference=_lrn_ref,
         attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0})


# ---- normalizations


def _bn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 5)
    x = types[0]
    need_image(x, 2)
    need_float(x)
    same_dtype(types)
    for t, what in zip(types[1:], ("scale", "bias", "mean", "var"), strict=True):
        need_vector(t, x.shape[1], what)
    return [x]


def _per_channel(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((-1,) + (1,) * (rank - 2))


def batch_norm_scale_shift(scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                           var: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) in float64 with batch_norm(x) = x * a + b: the reference uses them
    and passes/simplify.py folds them into a conv's weights or a mul + add."""
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    return a, bias.astype(np.float64) - mean.astype(np.float64) * a


def _bn_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    a, b = (_per_channel(v, x.ndim) for v in batch_norm_scale_shift(*arrs[1:], attrs["epsilon"]))
    return [(x * a + b).astype(x.dtype)]


register("batch_norm", infer=_bn_infer, reference=_bn_ref, attrs={"epsilon": 1e-5})


def _standardize(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(var + epsilon) over axes (biased variance)."""
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def _instance_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 3)
    x = types[0]
    need_image(x)
    need_float(x)
    same_dtype(types)
    need_vector(types[1], x.shape[1], "scale")
    need_vector(types[2], x.shape[1], "bias")
    return [x]


def _instance_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, scale, bias = arrs[0], *(_per_channel(a, arrs[0].ndim) for a in arrs[1:])
    y = _standardize(x, spatial_axes(x), attrs["epsilon"]) * scale + bias
    return [y.astype(x.dtype)]


register("instance_norm", infer=_instance_norm_infer, reference=_instance_norm_ref,
         attrs={"epsilon": 1e-5})


def _layer_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs (x, scale, bias), got {len(types)}")
    x, axis = types[0], attrs["axis"]
    need_float(x)
    same_dtype(types)
    if normalize_axis(axis, x.rank) != axis:
        raise ShapeError(f"axis must be normalized to 0..{x.rank - 1}, got {axis}")
    for t in types[1:]:
        if broadcast_shapes(t.shape, x.shape[axis:]) != x.shape[axis:]:
            raise ShapeError(f"scale/bias {t} does not broadcast to the normalized shape "
                             f"{list(x.shape[axis:])}")
    return [x]


def _layer_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    y = _standardize(x, tuple(range(attrs["axis"], x.ndim)), attrs["epsilon"]) * arrs[1]
    if len(arrs) == 3:
        y = y + arrs[2]
    return [y.astype(x.dtype)]


register("layer_norm", infer=_layer_norm_infer, reference=_layer_norm_ref,
         attrs=LAYER_NORM_ATTRS)


def _rms_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    """[x, scale] -> x / sqrt(mean(x^2 over axes axis..) + epsilon) * scale."""
    x = arrs[0]
    square = np.square(x).mean(axis=tuple(range(attrs["axis"], x.ndim)), keepdims=True)
    return [(x / np.sqrt(square + attrs["epsilon"]) * arrs[1]).astype(x.dtype)]


register("rms_norm", infer=_layer_norm_infer, reference=_rms_norm_ref, attrs=LAYER_NORM_ATTRS)


def _layer_norm_stats_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    """[x] -> [mean, 1 / sqrt(var + epsilon)] over axes axis.., kept as size-1 dims."""
    expect_arity(types, 1)
    x, axis = types[0], attrs["axis"]
    need_float(x)
    if normalize_axis(axis, x.rank) != axis:
        raise ShapeError(f"axis must be normalized to 0..{x.rank - 1}, got {axis}")
    stat = TensorType(x.shape[:axis] + (1,) * (x.rank - axis), x.dtype)
    return [stat, stat]


def _layer_norm_stats_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    axes = tuple(range(attrs["axis"], x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    return [mean.astype(x.dtype), (1 / np.sqrt(var + attrs["epsilon"])).astype(x.dtype)]


register("layer_norm_stats", infer=_layer_norm_stats_infer, reference=_layer_norm_stats_ref,
         attrs=LAYER_NORM_ATTRS, epilogue=False)  # two outputs


def _mvn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x, axes = types[0], tuple(attrs["axes"])
    need_float(x)
    if axes != tuple(sorted(set(normalize_axis(a, x.rank) for a in axes))) or not axes:
        raise ShapeError(f"axes must be distinct, sorted and non-negative, got {list(axes)}")
    return [x]


def _mvn_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, axes = arrs[0], tuple(attrs["axes"])
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.square(x - mean).mean(axis=axes, keepdims=True))
    return [((x - mean) / (std + MVN_EPSILON)).astype(x.dtype)]


register("mean_variance_norm", infer=_mvn_infer, reference=_mvn_ref, attrs={"axes": REQUIRED})


def _lp_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x = types[0]
    need_float(x)
    if normalize_axis(attrs["axis"], x.rank) != attrs["axis"]:
        raise ShapeError(f"axis must be normalized to 0..{x.rank - 1}, got {attrs['axis']}")
    if attrs["p"] not in (1, 2):
        raise ShapeError(f"p must be 1 or 2, got {attrs['p']}")
    return [x]


def _lp_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, axis = arrs[0], attrs["axis"]
    if attrs["p"] == 1:
        norm = np.abs(x).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.square(x).sum(axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(norm == 0, 0, x / norm).astype(x.dtype)]


register("lp_norm", infer=_lp_norm_infer, reference=_lp_norm_ref,
         attrs={"axis": REQUIRED, "p": 2})
