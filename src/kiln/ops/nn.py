"""nn ops: convolution, pooling and normalization over (N, C, *spatial) tensors.

Window attrs are explicit: `strides`, `dilations` and `pads` (all begins, then all ends, as
in ONNX); the frontend resolves auto_pad, output_shape and opset defaults. The C kernels are
in kiln/codegen/kernels/nn.py under the same names.
"""

from __future__ import annotations

import itertools
import math
from functools import reduce

import numpy as np

from ..errors import ShapeError
from ..ir.types import TensorType
from .common import broadcast_shapes, expect_arity, normalize_axis, same_dtype
from .registry import Attrs, register

# y = (x - mean) / (sqrt(var) + MVN_EPSILON), as ONNX MeanVarianceNormalization defines it.
MVN_EPSILON = 1e-9


def _need_float(t: TensorType) -> None:
    if np.dtype(t.dtype).kind != "f":
        raise ShapeError(f"expected a float tensor, got {t}")


def _need_image(t: TensorType, min_rank: int = 3) -> None:
    if t.rank < min_rank:
        raise ShapeError(f"expected a tensor (N, C, spatial...) of rank >= {min_rank}, got {t}")


def _vector(t: TensorType, n: int, what: str) -> None:
    if t.shape != (n,):
        raise ShapeError(f"{what} must have shape ({n},), got {t}")


def _check_window(x: TensorType, kernel: tuple[int, ...], attrs: Attrs, *,
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


def _window_shape(x_shape: tuple[int, ...], kernel: tuple[int, ...], attrs: Attrs,
                  ceil_mode: bool = False) -> tuple[int, ...]:
    """Output spatial shape of a sliding window over x's spatial dims."""
    nd = len(kernel)
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    return tuple(window_output_size(x_shape[2 + i], kernel[i], s[i], d[i], p[i], p[nd + i],
                                    ceil_mode) for i in range(nd))


def _window_slices(k: tuple[int, ...], out: tuple[int, ...], attrs: Attrs) -> tuple:
    """Index of the (N, C, *out) block of a padded input that kernel offset k reads."""
    s, d = attrs["strides"], attrs["dilations"]
    spatial = tuple(slice(k[i] * d[i], k[i] * d[i] + (out[i] - 1) * s[i] + 1, s[i])
                    for i in range(len(k)))
    return (slice(None), slice(None)) + spatial


def _pad_spatial(x: np.ndarray, pads: list[tuple[int, int]], value: float | int) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=value)


# ---- conv: [x (N,C,*I), w (M,C/group,*K), b (M,)?] -> (N,M,*O)


def _conv_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs (x, w, bias), got {len(types)}")
    x, w = types[0], types[1]
    _need_image(x)
    _need_float(x)
    same_dtype(types)
    group = attrs["group"]
    if w.rank != x.rank:
        raise ShapeError(f"weight {w} must have the rank of input {x}")
    if group < 1 or x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise ShapeError(f"input {x} and weight {w} do not fit group={group}: need C = "
                         "w.shape[1] * group and w.shape[0] divisible by group")
    _check_window(x, w.shape[2:], attrs)
    if len(types) == 3:
        _vector(types[2], w.shape[0], "bias")
    out = _window_shape(x.shape, w.shape[2:], attrs)
    return [TensorType((x.shape[0], w.shape[0]) + out, x.dtype)]


def _conv_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, w = arrs[0], arrs[1]
    nd, group = x.ndim - 2, attrs["group"]
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    out = _window_shape(x.shape, w.shape[2:], attrs)
    p = attrs["pads"]
    xp = _pad_spatial(x, [(p[i], p[nd + i]) for i in range(nd)], 0)
    y = np.zeros((n, group, m // group) + out, dtype=x.dtype)
    wg = w.reshape((group, m // group, c // group) + w.shape[2:])
    for k in itertools.product(*map(range, w.shape[2:])):
        patch = xp[_window_slices(k, out, attrs)].reshape((n, group, c // group) + out)
        y += np.einsum("ngc...,gmc->ngm...", patch, wg[(Ellipsis,) + k])
    y = y.reshape((n, m) + out)
    if len(arrs) == 3:
        y += arrs[2].reshape((m,) + (1,) * nd)
    return [y.astype(x.dtype)]


register("conv", infer=_conv_infer, reference=_conv_ref)


# ---- conv_transpose: [x (N,C,*I), w (C,M/group,*K), b (M,)?] -> (N,M,*O)
# O = (I-1)*stride + (K-1)*dilation + 1 - pad_begin - pad_end. Negative pads extend the
# output with zeros (plus bias): the frontend folds output_padding/output_shape into them.


def _conv_transpose_shape(x: tuple[int, ...], w: tuple[int, ...], attrs: Attrs) -> tuple:
    nd = len(x) - 2
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    out = tuple((x[2 + i] - 1) * s[i] + (w[2 + i] - 1) * d[i] + 1 - p[i] - p[nd + i]
                for i in range(nd))
    if any(o < 1 for o in out):
        raise ShapeError(f"conv_transpose output spatial shape {list(out)} is empty")
    return (x[0], w[1] * attrs["group"]) + out


def _conv_transpose_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs (x, w, bias), got {len(types)}")
    x, w = types[0], types[1]
    _need_image(x)
    _need_float(x)
    same_dtype(types)
    group = attrs["group"]
    if w.rank != x.rank:
        raise ShapeError(f"weight {w} must have the rank of input {x}")
    if group < 1 or x.shape[1] != w.shape[0] or x.shape[1] % group:
        raise ShapeError(f"input {x} and weight {w} do not fit group={group}: need C = "
                         "w.shape[0], divisible by group")
    _check_window(x, w.shape[2:], attrs, allow_negative_pads=True)
    out = _conv_transpose_shape(x.shape, w.shape, attrs)
    if len(types) == 3:
        _vector(types[2], out[1], "bias")
    return [TensorType(out, x.dtype)]


def _conv_transpose_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, w = arrs[0], arrs[1]
    nd, group = x.ndim - 2, attrs["group"]
    n, c, mg = x.shape[0], x.shape[1], w.shape[1]
    out = _conv_transpose_shape(x.shape, w.shape, attrs)
    p = attrs["pads"]
    # Scatter every kernel tap into a buffer holding both the full result and the output.
    full = [(x.shape[2 + i] - 1) * attrs["strides"][i] + (w.shape[2 + i] - 1)
            * attrs["dilations"][i] + 1 for i in range(nd)]
    lo = [min(0, p[i]) for i in range(nd)]
    size = [max(full[i], p[i] + out[2 + i]) - lo[i] for i in range(nd)]
    buf = np.zeros((n, group, mg, *size), dtype=x.dtype)
    xg = x.reshape((n, group, c // group) + x.shape[2:])
    wg = w.reshape((group, c // group, mg) + w.shape[2:])
    for k in itertools.product(*map(range, w.shape[2:])):
        start = [k[i] * attrs["dilations"][i] - lo[i] for i in range(nd)]
        index = (Ellipsis,) + tuple(
            slice(start[i], start[i] + (x.shape[2 + i] - 1) * attrs["strides"][i] + 1,
                  attrs["strides"][i]) for i in range(nd))
        buf[index] += np.einsum("ngc...,gcm->ngm...", xg, wg[(Ellipsis,) + k])
    crop = (Ellipsis,) + tuple(slice(p[i] - lo[i], p[i] - lo[i] + out[2 + i]) for i in range(nd))
    y = buf[crop].reshape(out)
    if len(arrs) == 3:
        y = y + arrs[2].reshape((out[1],) + (1,) * nd)
    return [np.ascontiguousarray(y).astype(x.dtype)]


register("conv_transpose", infer=_conv_transpose_infer, reference=_conv_transpose_ref)


# ---- pools: [x] -> (N,C,*O); attrs kernel_shape, strides, dilations, pads, ceil_mode
# (+ count_include_pad for avg_pool). Padding never wins a max and counts in an average only
# with count_include_pad; the part of a ceil_mode window past the end padding never counts.


def _pool_infer(kind: str):
    def infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
        expect_arity(types, 1)
        x = types[0]
        _need_image(x)
        if kind != "max" or x.dtype == "bool":
            _need_float(x)
        _check_window(x, attrs["kernel_shape"], attrs)
        out = _window_shape(x.shape, attrs["kernel_shape"], attrs, attrs["ceil_mode"])
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
    out = _window_shape(x.shape, kernel, attrs, attrs["ceil_mode"])
    extra = [max(0, (out[i] - 1) * attrs["strides"][i] + (kernel[i] - 1) * attrs["dilations"][i]
                 + 1 - (p[i] + x.shape[2 + i] + p[nd + i])) for i in range(nd)]
    xp = _pad_spatial(x, [(p[i], p[nd + i]) for i in range(nd)], fill)
    xp = _pad_spatial(xp, [(0, e) for e in extra], fill if overhang is None else overhang)
    return [xp[_window_slices(k, out, attrs)] for k in itertools.product(*map(range, kernel))]


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


register("max_pool", infer=_pool_infer("max"), reference=_max_pool_ref)
register("avg_pool", infer=_pool_infer("avg"), reference=_avg_pool_ref)
register("max_pool_argmax", infer=_pool_infer("argmax"), reference=_max_pool_argmax_ref)


def _global_pool_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x = types[0]
    _need_image(x)
    _need_float(x)
    return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


register("global_avg_pool", infer=_global_pool_infer, reference=lambda arrs, a: [
    arrs[0].mean(axis=_spatial_axes(arrs[0]), keepdims=True).astype(arrs[0].dtype)])
register("global_max_pool", infer=_global_pool_infer, reference=lambda arrs, a: [
    arrs[0].max(axis=_spatial_axes(arrs[0]), keepdims=True)])


# ---- lrn: [x (N,C,...)] attrs size, alpha, beta, bias; across-channel local response norm.


def _lrn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    _need_image(types[0], 2)
    _need_float(types[0])
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


register("lrn", infer=_lrn_infer, reference=_lrn_ref)


# ---- normalizations


def _bn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 5)
    x = types[0]
    _need_image(x, 2)
    _need_float(x)
    same_dtype(types)
    for t, what in zip(types[1:], ("scale", "bias", "mean", "var"), strict=True):
        _vector(t, x.shape[1], what)
    return [x]


def _per_channel(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((-1,) + (1,) * (rank - 2))


def _bn_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, scale, bias, mean, var = arrs[0], *(_per_channel(a, arrs[0].ndim) for a in arrs[1:])
    y = (x - mean) / np.sqrt(var + attrs["epsilon"]) * scale + bias
    return [y.astype(x.dtype)]


register("batch_norm", infer=_bn_infer, reference=_bn_ref)


def _standardize(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(var + epsilon) over axes (biased variance)."""
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def _instance_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 3)
    x = types[0]
    _need_image(x)
    _need_float(x)
    same_dtype(types)
    _vector(types[1], x.shape[1], "scale")
    _vector(types[2], x.shape[1], "bias")
    return [x]


def _instance_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, scale, bias = arrs[0], *(_per_channel(a, arrs[0].ndim) for a in arrs[1:])
    y = _standardize(x, _spatial_axes(x), attrs["epsilon"]) * scale + bias
    return [y.astype(x.dtype)]


register("instance_norm", infer=_instance_norm_infer, reference=_instance_norm_ref)


def _layer_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    if len(types) not in (2, 3):
        raise ShapeError(f"expected 2 or 3 inputs (x, scale, bias), got {len(types)}")
    x, axis = types[0], attrs["axis"]
    _need_float(x)
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


register("layer_norm", infer=_layer_norm_infer, reference=_layer_norm_ref)


def _rms_norm_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    """[x, scale] -> x / sqrt(mean(x^2 over axes axis..) + epsilon) * scale."""
    x = arrs[0]
    square = np.square(x).mean(axis=tuple(range(attrs["axis"], x.ndim)), keepdims=True)
    return [(x / np.sqrt(square + attrs["epsilon"]) * arrs[1]).astype(x.dtype)]


register("rms_norm", infer=_layer_norm_infer, reference=_rms_norm_ref)


def _layer_norm_stats_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    """[x] -> [mean, 1 / sqrt(var + epsilon)] over axes axis.., kept as size-1 dims."""
    expect_arity(types, 1)
    x, axis = types[0], attrs["axis"]
    _need_float(x)
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


register("layer_norm_stats", infer=_layer_norm_stats_infer, reference=_layer_norm_stats_ref)


def _mvn_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x, axes = types[0], tuple(attrs["axes"])
    _need_float(x)
    if axes != tuple(sorted(set(normalize_axis(a, x.rank) for a in axes))) or not axes:
        raise ShapeError(f"axes must be distinct, sorted and non-negative, got {list(axes)}")
    return [x]


def _mvn_ref(arrs: list[np.ndarray], attrs: Attrs) -> list[np.ndarray]:
    x, axes = arrs[0], tuple(attrs["axes"])
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.square(x - mean).mean(axis=axes, keepdims=True))
    return [((x - mean) / (std + MVN_EPSILON)).astype(x.dtype)]


register("mean_variance_norm", infer=_mvn_infer, reference=_mvn_ref)


def _lp_norm_infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    expect_arity(types, 1)
    x = types[0]
    _need_float(x)
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


register("lp_norm", infer=_lp_norm_infer, reference=_lp_norm_ref)
