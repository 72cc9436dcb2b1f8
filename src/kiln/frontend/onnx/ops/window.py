"""Window attrs of Conv, ConvTranspose and the pools: auto_pad and opset defaults resolved
into the explicit strides, dilations and pads of kiln/ops/window.py.
"""

from __future__ import annotations

from ....errors import ShapeError, UnsupportedOpError
from ....ir import Value
from ....ops.window import window_extent
from ..registry import ConvertContext

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def ints(values: object) -> tuple[int, ...]:
    """An attribute's values as a tuple of ints."""
    return tuple(int(v) for v in values)


def kernel_shape(cx: ConvertContext, weight: Value | None) -> tuple[int, ...]:
    """kernel_shape, which must agree with the weight's spatial dims when both are known."""
    from_weight = weight.type.shape[2:] if weight is not None else None
    given = cx.attr("kernel_shape")
    if given is None:
        if from_weight is None:
            raise ShapeError(f"{cx.where()}: attribute kernel_shape is required")
        return from_weight
    if from_weight is not None and ints(given) != from_weight:
        raise ShapeError(f"{cx.where()}: kernel_shape {list(given)} does not match the weight's "
                         f"spatial shape {list(from_weight)}")
    return ints(given)


def auto_pad(cx: ConvertContext) -> str:
    """The node's auto_pad mode, one of AUTO_PADS."""
    mode = cx.attr("auto_pad", "NOTSET") or "NOTSET"
    if mode not in AUTO_PADS:
        raise UnsupportedOpError(f"{cx.where()}: auto_pad '{mode}' is not one of {AUTO_PADS}")
    return mode


def split_padding(total: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding from a total: SAME_UPPER puts the odd one at the end."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def window_attrs(cx: ConvertContext, x: Value, kernel: tuple[int, ...]) -> dict:
    """strides, dilations and explicit pads of a conv or pool node (auto_pad resolved)."""
    nd = len(kernel)
    if x.type.rank != nd + 2:
        raise ShapeError(f"{cx.where()}: input {x.type} must have rank {nd + 2} for a "
                         f"{nd}-D kernel")
    strides = ints(cx.attr("strides", [1] * nd))
    dilations = ints(cx.attr("dilations", [1] * nd))
    mode = auto_pad(cx)
    pads = ints(cx.attr("pads", [0] * 2 * nd))
    if mode == "VALID":
        pads = (0,) * 2 * nd
    elif mode != "NOTSET":
        if len(strides) != nd or len(dilations) != nd:
            raise ShapeError(f"{cx.where()}: strides/dilations need {nd} entries")
        begins, ends = [], []
        for size, k, s, d in zip(x.type.shape[2:], kernel, strides, dilations, strict=True):
            out = -(-size // s)  # SAME: ceil(size / stride) outputs
            total = max(0, window_extent(out, k, s, d) - size)
            begin, end = split_padding(total, mode == "SAME_UPPER")
            begins.append(begin)
            ends.append(end)
        pads = tuple(begins + ends)
    return {"strides": strides, "dilations": dilations, "pads": pads}
