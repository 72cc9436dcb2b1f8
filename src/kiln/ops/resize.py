"""Resize: nearest, linear or cubic interpolation of a tensor to static output sizes.

ONNX Resize and Upsample lower to `resize`, whose attrs are fully resolved: `sizes` (output
shape), `scales` (per-axis factor of the coordinate transform), `roi` (starts then ends, used
by tf_crop_and_resize), `mode`, `coordinate_mode`, `nearest_mode`, `cubic_coeff_a`,
`exclude_outside`, `antialias` and `extrapolation_value`. Interpolation is separable: along
each axis, every output position reads a fixed number of source positions (its taps) with
fixed weights. `axis_taps` computes them in float64 exactly as ONNX's reference does; the
NumPy reference applies them here and the C kernel bakes them into tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir.types import TensorType
from .common import expect_arity
from .registry import REQUIRED, Attrs, register

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                    "align_corners", "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
# "simple" (Upsample, Resize-10) rounds down when an axis grows and up when it shrinks.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@dataclass(frozen=True)
class AxisTaps:
    """The taps of one resized axis: per output position, source indices and weights."""

    index: np.ndarray  # int64 [out, n], clamped into [0, in)
    weight: np.ndarray  # float64 [out, n]; nearest has n == 1 and weight 1
    outside: np.ndarray  # bool [out]: outside the crop (tf_crop_and_resize) -> extrapolate


def _source_coords(y: np.ndarray, n_in: int, n_out: int, scale: float,
                   roi: tuple[float, float], mode: str) -> np.ndarray:
    """The source coordinate of each output position y (ONNX's coordinate transforms)."""
    width = scale * n_in  # the real-valued output width, as ONNX's reference uses it
    if mode == "align_corners":
        return np.zeros_like(y) if width == 1 else y * (n_in - 1) / (width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if width == 1:
            x = np.full_like(y, (end - start) * (n_in - 1) / 2)
        else:
            x = y * (end - start) * (n_in - 1) / (width - 1)
        return x + start * (n_in - 1)
    if mode == "pytorch_half_pixel":
        return np.full_like(y, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    offset = n_in / 2 * (1 - n_out / width)  # half_pixel_symmetric
    return offset + (y + 0.5) / scale - 0.5


def _nearest_coeffs(ratio: float, scale: float, attrs: Attrs) -> list[float]:
    if ratio == 1:  # an exact source position
        return [0.0, 1.0]
    mode = attrs["nearest_mode"]
    if mode == "simple":
        mode = "floor" if scale >= 1 else "ceil"
    up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
          "floor": False, "ceil": True}[mode]
    return [float(not up), float(up)]


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _filter_coeffs(kernel: Callable[[float], float], radius: int, ratio: float, scale: float,
                   antialias: bool) -> list[float]:
    """Weights of a filter around ratio; antialias stretches it by 1/scale when shrinking."""
    s = min(scale, 1.0) if antialias else 1.0
    start = int(np.floor(-radius / s) + 1)
    coeffs = [kernel(s * (i - ratio)) for i in range(start, 2 - start)]
    if not antialias:
        return coeffs
    total = sum(coeffs)
    return [c / total for c in coeffs]


def _cubic_coeffs(ratio: float, scale: float, attrs: Attrs) -> list[float]:
    a = attrs["cubic_coeff_a"]
    return _filter_coeffs(lambda x: _cubic(x, a), 2, ratio, scale, attrs["antialias"])


def _linear_coeffs(ratio: float, scale: float, attrs: Attrs) -> list[float]:
    return _filter_coeffs(lambda x: max(0.0, 1 - abs(x)), 1, ratio, scale, attrs["antialias"])


_COEFFS = {"nearest": _nearest_coeffs, "linear": _linear_coeffs, "cubic": _cubic_coeffs}


def _neighbors(x: np.ndarray, n: int) -> np.ndarray:
    """The n source indices nearest each x (ties to the smaller), possibly out of range."""
    pad = (n + 1) // 2  # ONNX's reference rounds x shifted into an edge-padded axis
    shifted = x + pad
    p = np.floor(shifted).astype(np.int64)
    frac = shifted - p
    if n % 2 == 0:  # window centred between two indices
        start = p - n // 2 + np.where(frac == 0, 0, 1)
    else:
        start = p - (n - 1) // 2 + np.where(frac <= 0.5, 0, 1)
    return start[:, None] + np.arange(n)[None, :] - pad


def is_identity_axis(axis: int, n_in: int, attrs: Attrs) -> bool:
    """Whether `axis` passes through unchanged (ONNX's reference skips such axes)."""
    rank = len(attrs["sizes"])
    start, end = attrs["roi"][axis], attrs["roi"][axis + rank]
    return (math.isclose(attrs["scales"][axis], 1.0) and attrs["sizes"][axis] == n_in
            and math.isclose(start, 0.0) and math.isclose(end, 1.0))


def axis_taps(axis: int, n_in: int, attrs: Attrs) -> AxisTaps:
    """Source indices and weights of every output position along `axis`."""
    rank = len(attrs["sizes"])
    n_out, scale = attrs["sizes"][axis], float(attrs["scales"][axis])
    roi = (attrs["roi"][axis], attrs["roi"][axis + rank])
    mode = attrs["coordinate_mode"]
    x = _source_coords(np.arange(n_out, dtype=np.float64), n_in, n_out, scale, roi, mode)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)  # in (0, 1]: prefer the left neighbour
    coeffs = _COEFFS[attrs["mode"]]
    weight = np.array([coeffs(float(r), scale, attrs) for r in ratios], dtype=np.float64)
    weight = weight.reshape(n_out, -1)
    index = _neighbors(x, weight.shape[1])
    if attrs["mode"] == "nearest":  # keep only the tap with weight 1
        pick = np.argmax(weight, axis=1)[:, None]
        index, weight = np.take_along_axis(index, pick, 1), np.ones((n_out, 1))
    elif attrs["exclude_outside"]:
        weight = np.where((index < 0) | (index >= n_in), 0.0, weight)
        total = weight.sum(axis=1, keepdims=True)
        weight = weight / np.where(total == 0, 1.0, total)
    outside = np.zeros(n_out, dtype=bool)
    if mode == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
    return AxisTaps(np.clip(index, 0, n_in - 1), weight, outside)


def saturate(values: np.ndarray, dtype: str) -> np.ndarray:
    """Interpolated float64 values as dtype: integers truncate (as onnxruntime) and saturate."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.nan_to_num(np.clip(np.trunc(values), info.min, info.max)).astype(dtype)
    return values.astype(dtype)


def _check_attrs(x: TensorType, attrs: Attrs) -> None:
    for key, known in (("mode", MODES), ("coordinate_mode", COORDINATE_MODES),
                       ("nearest_mode", NEAREST_MODES)):
        if attrs[key] not in known:
            raise UnsupportedOpError(f"resize {key} '{attrs[key]}' is not supported; "
                                     f"expected one of {list(known)}")
    rank = x.rank
    if rank == 0:
        raise ShapeError(f"resize needs a tensor of rank >= 1, got {x}")
    for key, n in (("sizes", rank), ("scales", rank), ("roi", 2 * rank)):
        if len(attrs[key]) != n:
            raise ShapeError(f"resize of rank-{rank} {x} needs {n} {key}, "
                             f"got {list(attrs[key])}")
    if any(s <= 0 for s in attrs["scales"]):
        raise ShapeError(f"resize scales must be positive, got {list(attrs['scales'])}")
    if attrs["mode"] != "nearest" and x.dtype == "bool":
        raise ShapeError(f"{attrs['mode']} resize needs a numeric tensor, got {x}")
    for axis, (n_in, n_out) in enumerate(zip(x.shape, attrs["sizes"], strict=True)):
        if n_in == 0 and n_out > 0:
            raise ShapeError(f"resize cannot fill axis {axis} of size {n_out} from an empty "
                             f"axis of {x}")


def _infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    _check_attrs(types[0], attrs)
    return [TensorType(tuple(attrs["sizes"]), types[0].dtype)]


def _reference(arrays: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrays[0]
    nearest = attrs["mode"] == "nearest"
    result = x if nearest else x.astype(np.float64)
    for axis, n_in in enumerate(x.shape):
        if attrs["sizes"][axis] == 0:
            shape = list(result.shape)
            shape[axis] = 0
            result = np.empty(shape, result.dtype)
            continue
        if is_identity_axis(axis, n_in, attrs):
            continue
        taps = axis_taps(axis, n_in, attrs)
        if nearest:
            result = np.take(result, taps.index[:, 0], axis=axis)
        else:
            weight = taps.weight.reshape((1,) * axis + taps.weight.shape
                                         + (1,) * (x.ndim - axis - 1))
            result = (np.take(result, taps.index, axis=axis) * weight).sum(axis=axis + 1)
        if taps.outside.any():
            mask = taps.outside.reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1))
            fill = saturate(np.array(attrs["extrapolation_value"]), x.dtype.name)
            result = np.where(mask, fill.astype(result.dtype), result)
    return [result if nearest else saturate(result, x.dtype.name)]


# Every attr is resolved by the frontend (ONNX's defaults differ between Resize versions).
ATTRS = ("sizes", "scales", "roi", "mode", "coordinate_mode", "nearest_mode", "cubic_coeff_a",
         "exclude_outside", "antialias", "extrapolation_value")
register("resize", infer=_infer, reference=_reference, attrs=dict.fromkeys(ATTRS, REQUIRED))
