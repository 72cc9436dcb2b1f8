"""ONNX -> IR converters of Resize (opsets 10-19) and Upsample (7, 9): both become `resize`.

Every opset difference is resolved here: roi, scales and sizes must be known at compile
time; `axes` and `keep_aspect_ratio_policy` (opset 18) are folded into full-rank output
sizes and scales. Resize-10 and Upsample use asymmetric coordinates and the "simple"
nearest rounding of those opsets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ....errors import ShapeError, UnsupportedOpError
from ....ir import Value
from ....ops.common import normalize_axis
from ..registry import ConvertContext, converter

_POLICIES = ("stretch", "not_larger", "not_smaller")


def _floats(array: np.ndarray | None) -> list[float] | None:
    """A compile-time tensor as floats; None when absent or empty (an unused input)."""
    if array is None or array.size == 0:
        return None
    return [float(v) for v in array.ravel()]


def _axes(cx: ConvertContext, rank: int) -> list[int]:
    try:
        axes = [normalize_axis(int(a), rank) for a in cx.attr("axes", range(rank))]
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{cx.where()}: axes {cx.attr('axes')} repeat an axis")
    return axes


def _from_sizes(cx: ConvertContext, shape: tuple[int, ...], axes: list[int],
                sizes: list[int]) -> tuple[list[int], list[float]]:
    """Output sizes and scales of the resized axes when target sizes are given."""
    if any(shape[a] == 0 for a in axes):
        raise ShapeError(f"{cx.where()}: cannot resize empty axes of input shape {shape}")
    scales = [n / shape[a] for n, a in zip(sizes, axes, strict=True)]
    policy = cx.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in _POLICIES:
        raise UnsupportedOpError(f"{cx.where()}: keep_aspect_ratio_policy '{policy}' is not "
                                 f"supported; expected one of {list(_POLICIES)}")
    if policy != "stretch":
        scale = min(scales) if policy == "not_larger" else max(scales)
        scales = [scale] * len(axes)
        sizes = [int(scale * shape[a] + 0.5) for a in axes]
    return sizes, scales


def _resize_attrs(cx: ConvertContext, x: Value, axes: list[int], *, scales: list[float] | None,
                  sizes: list[float] | None, roi: list[float] | None) -> dict[str, Any]:
    """The full-rank sizes, scales and roi of the resize IR op."""
    shape, rank = x.type.shape, x.type.rank
    given = sizes if scales is None else scales
    what = "sizes" if scales is None else "scales"
    if given is None:
        raise ShapeError(f"{cx.where()}: neither scales nor sizes are given")
    if len(given) != len(axes):
        raise ShapeError(f"{cx.where()}: {what} {given} must have one value per resized axis "
                         f"({len(axes)}) of input shape {shape}")
    if scales is None:
        out, used = _from_sizes(cx, shape, axes, [int(n) for n in given])
    else:
        if not all(0 < s < math.inf for s in scales):
            raise ShapeError(f"{cx.where()}: scales must be positive and finite, got {scales}")
        # floor(dim * scale) in float32, as onnx shape inference and onnxruntime compute it
        out = [int(np.float32(s) * np.float32(shape[a])) for s, a in zip(scales, axes, strict=True)]
        used = scales
    if roi is not None and len(roi) != 2 * len(axes):
        raise ShapeError(f"{cx.where()}: roi {roi} must have 2 values per resized axis "
                         f"({len(axes)})")
    full_sizes, full_scales = list(shape), [1.0] * rank
    full_roi = [0.0] * rank + [1.0] * rank
    for i, a in enumerate(axes):
        full_sizes[a], full_scales[a] = out[i], used[i]
        if roi is not None:
            full_roi[a], full_roi[rank + a] = roi[i], roi[len(axes) + i]
    return {"sizes": tuple(full_sizes), "scales": tuple(full_scales), "roi": tuple(full_roi)}


def _legacy_attrs(mode: str) -> dict[str, Any]:
    """Interpolation attrs of Upsample and Resize-10: asymmetric, simple nearest rounding."""
    return {"mode": mode, "coordinate_mode": "asymmetric", "nearest_mode": "simple",
            "cubic_coeff_a": -0.75, "exclude_outside": False, "antialias": False,
            "extrapolation_value": 0.0}


@converter("Resize")
def _resize(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    mode = cx.attr("mode", "nearest")
    if cx.opset < 11:
        scales = _floats(cx.const_input(1))
        geometry = _resize_attrs(cx, x, list(range(x.type.rank)), scales=scales, sizes=None,
                                 roi=None)
        return [cx.emit1("resize", [x], {**geometry, **_legacy_attrs(mode)})]
    coordinate_mode = cx.attr("coordinate_transformation_mode", "half_pixel")
    roi = _floats(cx.const_input(1)) if coordinate_mode == "tf_crop_and_resize" else None
    scales, sizes = _floats(cx.const_input(2)), _floats(cx.const_input(3))
    if scales is not None and sizes is not None:
        raise ShapeError(f"{cx.where()}: only one of scales and sizes may be given")
    geometry = _resize_attrs(cx, x, _axes(cx, x.type.rank), scales=scales, sizes=sizes, roi=roi)
    attrs = {
        "mode": mode,
        "coordinate_mode": coordinate_mode,
        "nearest_mode": cx.attr("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": float(cx.attr("cubic_coeff_a", -0.75)),
        "exclude_outside": bool(cx.attr("exclude_outside", 0)),
        "antialias": bool(cx.attr("antialias", 0)) and mode != "nearest",
        "extrapolation_value": float(cx.attr("extrapolation_value", 0.0)),
    }
    return [cx.emit1("resize", [x], {**geometry, **attrs})]


@converter("Upsample")
def _upsample(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    scales = _floats(np.asarray(cx.attr("scales", []))) if cx.opset < 9 else \
        _floats(cx.const_input(1))
    if scales is not None and any(s < 1 for s in scales):
        raise ShapeError(f"{cx.where()}: Upsample scales must be >= 1, got {scales}")
    geometry = _resize_attrs(cx, x, list(range(x.type.rank)), scales=scales, sizes=None,
                             roi=None)
    return [cx.emit1("resize", [x], {**geometry, **_legacy_attrs(cx.attr("mode", "nearest"))})]
