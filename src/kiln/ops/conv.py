"""conv and conv_transpose over (N, C, *spatial) tensors.

Window attrs are those of kiln/ops/window.py. The C kernels are in
kiln/codegen/kernels/conv.py under the same names.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from . import winograd
from .common import need_float, need_image, need_vector, same_dtype
from .layout import panels_shape, unpack_conv_weight
from .registry import REQUIRED, Attrs, register
from .window import check_window, pad_spatial, window_extent, window_shape, window_slices

# The attrs of conv and conv_transpose: explicit windows (kiln/ops/window.py) and groups.
CONV_ATTRS = {"strides": REQUIRED, "dilations": REQUIRED, "pads": REQUIRED, "group": 1}

# ---- conv: [x (N,C,*I), w (M,C/group,*K), b (M,)?] -> (N,M,*O)


def _operands(types: list[TensorType]) -> tuple[TensorType, TensorType]:
    """(x, w) of a conv or conv_transpose, after the checks both share."""
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs (x, w, bias), got {len(types)}")
    x, w = types[0], types[1]
    need_image(x)
    need_float(x)
    same_dtype(types)
    if w.rank != x.rank:
        raise ShapeError(f"weight {w} must have the rank of input {x}")
    return x, w


def weight_type(w: TensorType, attrs: Attrs) -> TensorType:
    """The type a conv's weight has for the conv: its own, or (M, C/group, *K) when stored
    as column panels (`packed_weight`, kiln/ops/layout.py) or Winograd-transformed
    (`winograd_weight`, kiln/ops/winograd.py)."""
    if attrs["packed_weight"]:
        shape = tuple(attrs["packed_weight"])
        expected = panels_shape(math.prod(shape[1:]), shape[0])
    elif attrs["winograd_weight"]:
        shape = tuple(attrs["winograd_weight"])
        expected = winograd.weight_shape(shape)
    else:
        return w
    if w.shape != expected:
        raise ShapeError(f"stored weight of shape {list(w.shape)} does not hold a weight of "
                         f"shape {list(shape)}: expected {list(expected)}")
    return TensorType(shape, w.dtype)


def _conv_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    x, w = _operands([types[0], weight_type(types[1], attrs), *types[2:]])
    group = attrs["group"]
    if group < 1 or x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise ShapeError(f"input {x} and weight {w} do not fit group={group}: need C = "
                         "w.shape[1] * group and w.shape[0] divisible by group")
    check_window(x, w.shape[2:], attrs)
    if len(types) == 3:
        need_vector(types[2], w.shape[0], "bias")
    out = window_shape(x.shape, w.shape[2:], attrs)
    return [TensorType((x.shape[0], w.shape[0]) + out, x.dtype)]


def _conv_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, w = arrs[0], arrs[1]
    if attrs["packed_weight"]:
        w = unpack_conv_weight(w, tuple(attrs["packed_weight"]))
    elif attrs["winograd_weight"]:
        w = winograd.untransform_weight(w, tuple(attrs["winograd_weight"]))
    nd, group = x.ndim - 2, attrs["group"]
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    out = window_shape(x.shape, w.shape[2:], attrs)
    p = attrs["pads"]
    xp = pad_spatial(x, [(p[i], p[nd + i]) for i in range(nd)], 0)
    y = np.zeros((n, group, m // group) + out, dtype=x.dtype)
    wg = w.reshape((group, m // group, c // group) + w.shape[2:])
    for k in itertools.product(*map(range, w.shape[2:])):
        patch = xp[window_slices(k, out, attrs)].reshape((n, group, c // group) + out)
        y += np.einsum("ngc...,gmc->ngm...", patch, wg[(Ellipsis,) + k])
    y = y.reshape((n, m) + out)
    if len(arrs) == 3:
        y += arrs[2].reshape((m,) + (1,) * nd)
    return [y.astype(x.dtype)]


# packed_weight: () when w is as the model gave it, else w's shape (M, C/group, *K) with w
# stored as column panels of its (M, C/group * prod(K)) matrix transposed, a layout the
# packing pass chooses (kiln/ops/layout.py). winograd_weight: likewise, w stored
# transformed for Winograd F(4x4, 3x3) (kiln/ops/winograd.py).
register("conv", infer=_conv_infer, reference=_conv_ref,
         attrs={**CONV_ATTRS, "packed_weight": (), "winograd_weight": ()})


# ---- conv_transpose: [x (N,C,*I), w (C,M/group,*K), b (M,)?] -> (N,M,*O)
# O = (I-1)*stride + (K-1)*dilation + 1 - pad_begin - pad_end. Negative pads extend the
# output with zeros (plus bias): the frontend folds output_padding/output_shape into them.


def _conv_transpose_shape(x: tuple[int, ...], w: tuple[int, ...], attrs: Attrs) -> tuple:
    nd = len(x) - 2
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    out = tuple(window_extent(x[2 + i], w[2 + i], s[i], d[i]) - p[i] - p[nd + i]
                for i in range(nd))
    if any(o < 1 for o in out):
        raise ShapeError(f"conv_transpose output spatial shape {list(out)} is empty")
    return (x[0], w[1] * attrs["group"]) + out


def _conv_transpose_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    x, w = _operands(types)
    group = attrs["group"]
    if group < 1 or x.shape[1] != w.shape[0] or x.shape[1] % group:
        raise ShapeError(f"input {x} and weight {w} do not fit group={group}: need C = "
                         "w.shape[0], divisible by group")
    check_window(x, w.shape[2:], attrs, allow_negative_pads=True)
    out = _conv_transpose_shape(x.shape, w.shape, attrs)
    if len(types) == 3:
        need_vector(types[2], out[1], "bias")
    return [TensorType(out, x.dtype)]


def _conv_transpose_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, w = arrs[0], arrs[1]
    nd, group = x.ndim - 2, attrs["group"]
    n, c, mg = x.shape[0], x.shape[1], w.shape[1]
    out = _conv_transpose_shape(x.shape, w.shape, attrs)
    p = attrs["pads"]
    # Scatter every kernel tap into a buffer holding both the full result and the output.
    full = [window_extent(x.shape[2 + i], w.shape[2 + i], attrs["strides"][i],
                          attrs["dilations"][i]) for i in range(nd)]
    lo = [min(0, p[i]) for i in range(nd)]
    size = [max(full[i], p[i] + out[2 + i]) - lo[i] for i in range(nd)]
    buf = np.zeros((n, group, mg, *size), dtype=x.dtype)
    xg = x.reshape((n, group, c // group) + x.shape[2:])
    wg = w.reshape((group, c // group, mg) + w.shape[2:])
    for k in itertools.product(*map(range, w.shape[2:])):
        start = [k[i] * attrs["dilations"][i] - lo[i] for i in range(nd)]
        index = (Ellipsis,) + tuple(
            slice(start[i], start[i] + window_extent(x.shape[2 + i], 1, attrs["strides"][i], 1),
                  attrs["strides"][i]) for i in range(nd))
        buf[index] += np.einsum("ngc...,gcm->ngm...", xg, wg[(Ellipsis,) + k])
    crop = (Ellipsis,) + tuple(slice(p[i] - lo[i], p[i] - lo[i] + out[2 + i]) for i in range(nd))
    y = buf[crop].reshape(out)
    if len(arrs) == 3:
        y = y + arrs[2].reshape((out[1],) + (1,) * nd)
    return [np.ascontiguousarray(y).astype(x.dtype)]


register("conv_transpose", infer=_conv_transpose_infer, reference=_conv_transpose_ref,
         attrs=CONV_ATTRS)
