"""ONNX -> IR converters of the movement ops: reshapes, shape queries, constants, copies.

Shapes are static, so Shape, Size, Constant, ConstantOfShape and Range become constants and
the shape arithmetic models do with them (Shape -> Gather -> Concat -> Reshape) folds away.
Reshape-like ops become the `reshape` view; Identity and Dropout pass their input through.
Opset differences (attributes that became inputs) are resolved here into static IR attrs.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from ....errors import LimitError, ShapeError, UnsupportedOpError
from ....ir import Value
from ....ops.common import broadcast_shapes, normalize_axis
from ....ops.evaluate import over_fold_limit
from ....ops.movement import PAD_MODES
from ..registry import ConvertContext, converter


def _ints(array: np.ndarray | list | None) -> list[int]:
    return [] if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def _raw_axes(cx: ConvertContext, index: int) -> list[int] | None:
    """Axes from the attribute (old opsets) or compile-time input `index`, as given."""
    raw = cx.attr("axes") if "axes" in cx.attrs else cx.const_input(index)
    return None if raw is None else _ints(raw)


def _normalized(cx: ConvertContext, axes: list[int], rank: int) -> list[int]:
    """Axes as 0..rank-1, or ShapeError on one out of range or repeated."""
    try:
        out = [normalize_axis(a, rank) for a in axes]
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e
    if len(set(out)) != len(out):
        raise ShapeError(f"{cx.where()}: repeated axes {axes}")
    return out


def _axes(cx: ConvertContext, rank: int, index: int) -> list[int] | None:
    """Optional axes (attribute or input `index`), normalized for rank."""
    axes = _raw_axes(cx, index)
    return None if axes is None else _normalized(cx, axes, rank)


def _axis(cx: ConvertContext, rank: int, default: int) -> int:
    try:
        return normalize_axis(cx.attr("axis", default), rank)
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e


def _reshape(cx: ConvertContext, x: Value, shape: tuple[int, ...]) -> Value:
    """x under another static shape (x itself when the shape does not change)."""
    if tuple(shape) == x.type.shape:
        return x
    return cx.emit1("reshape", [x], {"shape": tuple(int(d) for d in shape)})


# reshapes ----------------------------------------------------------------------------------

@converter("Reshape")
def _reshape_op(cx: ConvertContext) -> list[Value]:
    x, target = cx.input(0), _ints(cx.const_input(1))
    allowzero = cx.attr("allowzero", 0)
    shape = []
    for k, d in enumerate(target):
        if d == 0 and not allowzero:
            if k >= x.type.rank:
                raise ShapeError(f"{cx.where()}: 0 at position {k} of shape {target} copies "
                                 f"a dim the rank-{x.type.rank} input does not have")
            d = x.type.shape[k]
        shape.append(d)
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"{cx.where()}: invalid target shape {target}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or x.type.numel % known:
            raise ShapeError(f"{cx.where()}: cannot reshape {x.type} to {target}")
        shape[shape.index(-1)] = x.type.numel // known
    return [_reshape(cx, x, tuple(shape))]


@converter("Flatten")
def _flatten(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    shape = x.type.shape
    axis = cx.attr("axis", 1)
    if not -len(shape) <= axis <= len(shape):
        raise ShapeError(f"{cx.where()}: axis {axis} out of range for {x.type}")
    axis += len(shape) if axis < 0 else 0
    return [_reshape(cx, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))]


@converter("Squeeze")
def _squeeze(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    shape = x.type.shape
    axes = _axes(cx, len(shape), 1)
    if axes is None:
        axes = [d for d, n in enumerate(shape) if n == 1]
    if any(shape[a] != 1 for a in axes):
        raise ShapeError(f"{cx.where()}: cannot squeeze axes {axes} of {x.type}: not all 1")
    return [_reshape(cx, x, tuple(n for d, n in enumerate(shape) if d not in axes))]


@converter("Unsqueeze")
def _unsqueeze(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    raw = _raw_axes(cx, 1)
    if raw is None:
        raise ShapeError(f"{cx.where()}: axes are required")
    axes = _normalized(cx, raw, x.type.rank + len(raw))
    dims = iter(x.type.shape)
    shape = tuple(1 if d in axes else next(dims) for d in range(x.type.rank + len(axes)))
    return [_reshape(cx, x, shape)]


@converter("Identity")
def _identity(cx: ConvertContext) -> list[Value]:
    return [cx.input(0)]


@converter("Dropout")
def _dropout(cx: ConvertContext) -> list[Value | None]:
    x = cx.input(0)
    training = cx.const_input(2) if cx.opset >= 12 else None
    if training is not None and training.reshape(-1)[0] and cx.const_input(
            1, np.array(0.5)).reshape(-1)[0] != 0:
        raise UnsupportedOpError(f"{cx.where()}: training_mode=true is not supported "
                                 "(kiln compiles inference only; only ratio 0 is a no-op)")
    if len(cx.node.output) < 2 or not cx.node.output[1]:
        return [x]
    one = cx.constant(np.ones((), dtype="bool" if cx.opset >= 10 else x.type.dtype), "one")
    return [x, _filled(cx, one, x.type.shape, cx.node.output[1])]


# shape queries and constants ---------------------------------------------------------------

@converter("Shape")
def _shape(cx: ConvertContext) -> list[Value]:
    shape = cx.input(0).type.shape
    start, end = cx.attr("start", 0), cx.attr("end", len(shape))
    return [cx.constant(np.array(shape[start:end], dtype=np.int64), "shape")]


@converter("Size")
def _size(cx: ConvertContext) -> list[Value]:
    return [cx.constant(np.array(cx.input(0).type.numel, dtype=np.int64), "size")]


_CONSTANT_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32,
    "value_int": np.int64, "value_ints": np.int64,
}


@converter("Constant")
def _constant(cx: ConvertContext) -> list[Value]:
    if "value" in cx.attrs:
        return [cx.constant(numpy_helper.to_array(cx.attrs["value"]), "value")]
    for key, dtype in _CONSTANT_ATTRS.items():
        if key in cx.attrs:
            return [cx.constant(np.array(cx.attrs[key], dtype=dtype), "value")]
    found = sorted(cx.attrs) or ["none"]
    raise UnsupportedOpError(f"{cx.where()}: constant attribute {found} is not supported; "
                             f"kiln reads value, {', '.join(_CONSTANT_ATTRS)}")


@converter("ConstantOfShape")
def _constant_of_shape(cx: ConvertContext) -> list[Value]:
    shape = _ints(cx.const_input(0))
    if any(d < 0 for d in shape):
        raise ShapeError(f"{cx.where()}: negative dim in shape {shape}")
    value = cx.attr("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(
        1, np.float32)
    if fill.size != 1:
        raise ShapeError(f"{cx.where()}: value must hold one element, got {fill.size}")
    return [_filled(cx, cx.constant(fill.reshape(()), "value"), tuple(shape), cx.node.output[0])]


def _filled(cx: ConvertContext, scalar: Value, shape: tuple[int, ...], out: str) -> Value:
    """scalar broadcast to shape: a constant when within the folding limit, else a kernel."""
    return cx.builder.emit("expand", [scalar], {"shape": shape}, name=cx.name, out_names=[out])[0]


def _range_length(cx: ConvertContext, start: np.generic, limit: np.generic,
                  delta: np.generic) -> int:
    """How many values Range(start, limit, delta) makes; ShapeError if not a finite count."""
    if np.issubdtype(np.asarray(start).dtype, np.integer):
        return max(-((int(start) - int(limit)) // int(delta)), 0)
    span = (float(limit) - float(start)) / float(delta)
    if not math.isfinite(span):
        raise ShapeError(f"{cx.where()}: start {start}, limit {limit} and delta {delta} give no "
                         "finite number of values")
    return max(math.ceil(span), 0)


@converter("Range")
def _range(cx: ConvertContext) -> list[Value]:
    start, limit, delta = (cx.const_input(i).reshape(-1)[0] for i in range(3))
    if delta == 0:
        raise ShapeError(f"{cx.where()}: delta is 0")
    dtype = np.asarray(start).dtype
    count = _range_length(cx, start, limit, delta)
    refusal = over_fold_limit(cx.where(), count * dtype.itemsize, f"{count} {dtype} values")
    if refusal:  # Range has no run-time kernel: its values must be a constant
        raise LimitError(refusal)
    if np.issubdtype(dtype, np.integer):
        values = int(start) + np.arange(count, dtype=np.int64) * int(delta)
    else:
        values = start + np.arange(count, dtype=dtype) * delta
    return [cx.constant(values.astype(dtype), "range")]


# copies with a layout change ---------------------------------------------------------------

@converter("Transpose")
def _transpose(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    perm = tuple(_ints(cx.attr("perm", list(range(x.type.rank))[::-1])))
    if perm == tuple(range(x.type.rank)):
        return [x]
    return [cx.emit1("transpose", [x], {"perm": perm})]


@converter("Concat")
def _concat(cx: ConvertContext) -> list[Value]:
    inputs = [cx.input(i) for i in range(cx.num_inputs)]
    if not inputs:
        raise ShapeError(f"{cx.where()}: needs at least one input")
    if len(inputs) == 1:
        return inputs
    return [cx.emit1("concat", inputs, {"axis": _axis(cx, inputs[0].type.rank, 1)})]


def _split_sizes(cx: ConvertContext, dim: int) -> list[int]:
    if "split" in cx.attrs:
        return _ints(cx.attr("split"))
    if cx.has_input(1):
        return _ints(cx.const_input(1))
    if "num_outputs" in cx.attrs:
        parts = cx.attr("num_outputs")
        chunk = -(-dim // parts) if parts > 0 else 0
        if parts < 1 or chunk * (parts - 1) > dim:
            raise ShapeError(f"{cx.where()}: cannot split dim {dim} into {parts} outputs")
        return [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
    parts = len(cx.node.output)
    if dim % parts:
        raise ShapeError(f"{cx.where()}: dim {dim} does not split into {parts} equal parts")
    return [dim // parts] * parts


@converter("Split")
def _split(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    axis = _axis(cx, x.type.rank, 0)
    sizes = _split_sizes(cx, x.type.shape[axis])
    if len(sizes) != len(cx.node.output):
        raise ShapeError(f"{cx.where()}: {len(sizes)} split sizes {sizes} for "
                         f"{len(cx.node.output)} outputs")
    return cx.emit("split", [x], {"axis": axis, "sizes": tuple(sizes)}, num_outputs=len(sizes))


@converter("Slice")
def _slice(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    shape = x.type.shape
    if cx.opset < 10:
        starts, ends = _ints(cx.attr("starts")), _ints(cx.attr("ends"))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(cx.const_input(1)), _ints(cx.const_input(2))
        steps = _ints(cx.const_input(4)) or [1] * len(starts)
    axes = _axes(cx, len(shape), 3)
    axes = list(range(len(starts))) if axes is None else axes
    if not len(starts) == len(ends) == len(steps) == len(axes):
        raise ShapeError(f"{cx.where()}: starts {starts}, ends {ends}, axes {axes} and steps "
                         f"{steps} differ in length")
    bounds = [(0, n, 1) for n in shape]
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        if st == 0:
            raise ShapeError(f"{cx.where()}: step of axis {a} is 0")
        bounds[a] = slice(s, e, st).indices(shape[a])
    if all(b == (0, n, 1) for b, n in zip(bounds, shape, strict=True)):
        return [x]
    starts, ends, steps = (tuple(b[k] for b in bounds) for k in range(3))
    return [cx.emit1("slice", [x], {"starts": starts, "ends": ends, "steps": steps})]


# gathers -----------------------------------------------------------------------------------

@converter("Gather", "GatherElements")
def _gather(cx: ConvertContext) -> list[Value]:
    data, indices = cx.input(0), cx.input(1)
    op = "gather" if cx.node.op_type == "Gather" else "gather_elements"
    return [cx.emit1(op, [data, indices], {"axis": _axis(cx, data.type.rank, 0)})]


@converter("GatherND")
def _gather_nd(cx: ConvertContext) -> list[Value]:
    data, indices = cx.input(0), cx.input(1)
    return [cx.emit1("gather_nd", [data, indices], cx.given(batch_dims=int))]


# expand, tile, pad -------------------------------------------------------------------------

@converter("Expand")
def _expand(cx: ConvertContext) -> list[Value]:
    x, target = cx.input(0), tuple(_ints(cx.const_input(1)))
    try:
        shape = broadcast_shapes(x.type.shape, target)
    except ShapeError as e:
        raise ShapeError(f"{cx.where()}: {e}") from e
    if shape == x.type.shape:
        return [x]
    return [cx.emit1("expand", [x], {"shape": shape})]


@converter("Tile")
def _tile(cx: ConvertContext) -> list[Value]:
    x, repeats = cx.input(0), tuple(_ints(cx.const_input(1)))
    if all(r == 1 for r in repeats) and len(repeats) == x.type.rank:
        return [x]
    return [cx.emit1("tile", [x], {"repeats": repeats})]


def _pad_value(value: np.ndarray | float | None, dtype: str) -> float | int:
    item = 0 if value is None else np.asarray(value).reshape(-1)[0].item()
    return float(item) if np.dtype(dtype).kind == "f" else int(item)


@converter("Pad")
def _pad(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    rank = x.type.rank
    mode = cx.attr("mode", "constant")
    if mode not in PAD_MODES:
        raise UnsupportedOpError(f"{cx.where()}: mode '{mode}' is not one of {list(PAD_MODES)}")
    if cx.opset < 11:
        pads, value = _ints(cx.attr("pads")), cx.attr("value", 0.0)
    else:
        pads, value = _ints(cx.const_input(1)), cx.const_input(2)
    axes = (_axes(cx, rank, 3) if cx.opset >= 18 else None) or list(range(rank))
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"{cx.where()}: {len(pads)} pads for {len(axes)} axes "
                         "(need begins then ends)")
    full = [0] * (2 * rank)
    for k, a in enumerate(axes):
        full[a], full[rank + a] = pads[k], pads[len(axes) + k]
    if not any(full):
        return [x]
    attrs = {"pads": tuple(full), "mode": mode, "value": _pad_value(value, x.type.dtype)}
    return [cx.emit1("pad", [x], attrs)]


# rearrangements lowered to reshape + transpose ---------------------------------------------

def _blocks(cx: ConvertContext, x: Value) -> tuple[int, ...]:
    if x.type.rank != 4:
        raise ShapeError(f"{cx.where()}: input must be NCHW (rank 4), got {x.type}")
    size = cx.attr("blocksize")
    if not isinstance(size, int) or size < 1:
        raise ShapeError(f"{cx.where()}: blocksize must be a positive int, got {size}")
    return (*x.type.shape, size)


def _mode(cx: ConvertContext) -> str:
    mode = cx.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise UnsupportedOpError(f"{cx.where()}: mode '{mode}' is not DCR or CRD")
    return mode


def _rearrange(cx: ConvertContext, x: Value, split: tuple, perm: tuple, out: tuple) -> Value:
    t = cx.emit1("transpose", [_reshape(cx, x, split)], {"perm": perm})
    return _reshape(cx, t, out)


@converter("DepthToSpace")
def _depth_to_space(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    n, c, h, w, b = _blocks(cx, x)
    if c % (b * b):
        raise ShapeError(f"{cx.where()}: channels {c} not divisible by blocksize^2 {b * b}")
    d = c // (b * b)
    if _mode(cx) == "DCR":
        split, perm = (n, b, b, d, h, w), (0, 3, 4, 1, 5, 2)
    else:
        split, perm = (n, d, b, b, h, w), (0, 1, 4, 2, 5, 3)
    return [_rearrange(cx, x, split, perm, (n, d, h * b, w * b))]


@converter("SpaceToDepth")
def _space_to_depth(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    n, c, h, w, b = _blocks(cx, x)
    if h % b or w % b:
        raise ShapeError(f"{cx.where()}: spatial dims {h}x{w} not divisible by blocksize {b}")
    perm = (0, 3, 5, 1, 2, 4) if _mode(cx) == "DCR" else (0, 1, 3, 5, 2, 4)
    split = (n, c, h // b, b, w // b, b)
    return [_rearrange(cx, x, split, perm, (n, c * b * b, h // b, w // b))]


@converter("OneHot")
def _one_hot(cx: ConvertContext) -> list[Value]:
    indices, values = cx.input(0), cx.input(2)
    depth_array = cx.const_input(1).reshape(-1)
    if depth_array.size != 1:
        raise ShapeError(f"{cx.where()}: depth must be a scalar, got {depth_array.size} values")
    depth = int(depth_array[0])
    if depth < 1:
        raise ShapeError(f"{cx.where()}: depth must be >= 1, got {depth}")
    axis = _axis(cx, indices.type.rank + 1, -1)
    return [cx.emit1("one_hot", [indices, values], {"depth": depth, "axis": axis})]
