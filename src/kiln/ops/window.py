"""Sliding-window rules shared by conv and the pools, over (N, C, *spatial) tensors.

Window attrs are explicit: `strides`, `dilations` and `pads` (all begins, then all ends, as
in ONNX); the frontend resolves auto_pad, output_shape and opset defaults.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .registry import Attrs


def window_extent(count: int, kernel: int, stride: int, dilation: int) -> int:
    """Input positions spanned by `count` windows of `kernel` taps: from the first tap of the
    first window through the last tap of the last, (count-1)*stride + (kernel-1)*dilation + 1."""
    return (count - 1) * stride + (kernel - 1) * dilation + 1


def check_window(x: TensorType, kernel: tuple[int, ...], attrs: Attrs, *,
                 allow_negative_pads: bool = False) -> int:
    """Check kernel/strides/dilations/pads against the spatial rank of x; return that rank."""
    nd = x.rank - 2
    given = {"kernel_shape": kernel, "strides": attrs["strides"],
             "dilations": attrs["dilations"], "pads": attrs["pads"]}
    for key, value in given.items():
        want = 2 * nd if key == "pads" else nd
        if len(value) != want:
            raise ShapeError(f"{key} {list(value)} has {len(value)} entries, expected {want} "
                             f"for input {x}")
        if key != "pads" and any(v < 1 for v in value):
            raise ShapeError(f"{key} must be positive, got {list(value)}")
    if not allow_negative_pads and any(p < 0 for p in attrs["pads"]):
        raise ShapeError(f"pads must be non-negative, got {list(attrs['pads'])}")
    return nd


def window_output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                       pad_end: int, ceil_mode: bool = False) -> int:
    """Number of windows along one spatial dim (ceil_mode: the last may hang past the end)."""
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if span < 0:
        raise ShapeError(f"window of {kernel} (dilation {dilation}) is larger than the padded "
                         f"input of {size} + {pad_begin} + {pad_end}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # a window must start inside the input or its begin padding
    return out


def window_shape(x_shape: tuple[int, ...], kernel: tuple[int, ...], attrs: Attrs,
                 ceil_mode: bool = False) -> tuple[int, ...]:
    """Output spatial shape of a sliding window over x's spatial dims."""
    nd = len(kernel)
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    return tuple(window_output_size(x_shape[2 + i], kernel[i], s[i], d[i], p[i], p[nd + i],
                                    ceil_mode) for i in range(nd))


def window_slices(k: tuple[int, ...], out: tuple[int, ...], attrs: Attrs) -> tuple:
    """Index of the (N, C, *out) block of a padded input that kernel offset k reads."""
    s, d = attrs["strides"], attrs["dilations"]
    spatial = tuple(slice(k[i] * d[i], k[i] * d[i] + window_extent(out[i], 1, s[i], 1), s[i])
                    for i in range(len(k)))
    return (slice(None), slice(None)) + spatial


def pad_spatial(x: np.ndarray, pads: list[tuple[int, int]], value: float | int) -> np.ndarray:
    """x padded with value over its spatial dims, (begin, end) per dim."""
    return np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=value)
