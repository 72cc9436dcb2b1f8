"""Pools over (N, C, *spatial) tensors: max_pool (and its argmax), avg_pool, the global pools.

Window attrs are those of kiln/ops/window.py. The C kernels are in
kiln/codegen/kernels/pool.py under the same names.
"""

from __future__ import annotations

import itertools
import math
from functools import reduce

import numpy as np

from ..ir.types import TensorType
from .common import expect_arity, need_float, need_image, spatial_axes
from .registry import REQUIRED, Attrs, register
from .window import check_window, pad_spatial, window_extent, window_shape, window_slices

# ---- pools: [x] -> (N,C,*O); attrs kernel_shape, strides, dilations, pads, ceil_mode
# (+ count_include_pad for avg_pool). Padding never wins a max and counts in an average only
# with count_include_pad; the part of a ceil_mode window past the end padding never counts.


def _pool_infer(kind: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 1)
        x = types[0]
        need_image(x)
        if kind != "max" or x.dtype == "bool":
            need_float(x)
        check_window(x, attrs["kernel_shape"], attrs)
        out = window_shape(x.shape, attrs["kernel_shape"], attrs, attrs["ceil_mode"])
        types_out = [TensorType(x.shape[:2] + out, x.dtype)]
        if kind == "argmax":
            types_out = [TensorType(x.shape[:2] + out, "int64")]
        return types_out

    return infer


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _pool_blocks(x: np.ndarray, attrs: Attrs, fill: float | int,
                 overhang: float | int | None = None) -> list[np.ndarray]:
    """The (N, C, *out) blocks a pool reads, one per kernel offset, from x padded with fill
    (and its ceil_mode overhang past the end padding with `overhang`, default fill)."""
    kernel, p = attrs["kernel_shape"], attrs["pads"]
    nd = len(kernel)
    out = window_shape(x.shape, kernel, attrs, attrs["ceil_mode"])
    extra = [max(0, window_extent(out[i], kernel[i], attrs["strides"][i], attrs["dilations"][i])
                 - (p[i] + x.shape[2 + i] + p[nd + i])) for i in range(nd)]
    xp = pad_spatial(x, [(p[i], p[nd + i]) for i in range(nd)], fill)
    xp = pad_spatial(xp, [(0, e) for e in extra], fill if overhang is None else overhang)
    return [xp[window_slices(k, out, attrs)] for k in itertools.product(*map(range, kernel))]


def _max_pool_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    return [np.ascontiguousarray(reduce(np.maximum, _pool_blocks(x, attrs, _lowest(x.dtype))))]


def _avg_pool_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x = arrs[0]
    total = sum(_pool_blocks(x, attrs, 0))
    ones = np.ones((1, 1) + x.shape[2:], x.dtype)
    count = sum(_pool_blocks(ones, attrs, int(attrs["count_include_pad"]), 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return [(total / count).astype(x.dtype)]


def _max_pool_argmax_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    """Flat index into x (row-major, or column-major over spatial dims if storage_order=1)."""
    x = arrs[0]
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    flat = np.arange(math.prod(spatial), dtype=np.int64).reshape(spatial)
    if attrs["storage_order"]:
        flat = np.arange(math.prod(spatial), dtype=np.int64).reshape(spatial[::-1]).T
    planes = np.arange(n * c, dtype=np.int64) * math.prod(spatial)
    index = flat + planes.reshape((n, c) + (1,) * len(spatial))
    blocks = _pool_blocks(x, attrs, _lowest(x.dtype))
    iblocks = _pool_blocks(index, attrs, -1)
    best, arg = blocks[0], iblocks[0]
    for block, iblock in zip(blocks[1:], iblocks[1:], strict=True):
        better = (block > best) | (arg < 0)  # the first maximum wins; padding never does
        best, arg = np.where(better, block, best), np.where(better, iblock, arg)
    return [np.ascontiguousarray(arg)]


# The attrs of every windowed pool: explicit windows (kiln/ops/window.py) and ceil_mode.
POOL_ATTRS = {"kernel_shape": REQUIRED, "strides": REQUIRED, "dilations": REQUIRED,
              "pads": REQUIRED, "ceil_mode": False}
register("max_pool", infer=_pool_infer("max"), reference=_max_pool_ref, attrs=POOL_ATTRS)
register("avg_pool", infer=_pool_infer("avg"), reference=_avg_pool_ref,
         attrs={**POOL_ATTRS, "count_include_pad": False})
register("max_pool_argmax", infer=_pool_infer("argmax"), reference=_max_pool_argmax_ref,
         attrs={**POOL_ATTRS, "storage_order": 0})


def _global_pool_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x = types[0]
    need_image(x)
    need_float(x)
    return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]


register("global_avg_pool", infer=_global_pool_infer, reference=lambda arrs, a: [
    arrs[0].mean(axis=spatial_axes(arrs[0]), keepdims=True).astype(arrs[0].dtype)])
register("global_max_pool", infer=_global_pool_infer, reference=lambda arrs, a: [
    arrs[0].max(axis=spatial_axes(arrs[0]), keepdims=True)])
