"""ONNX -> IR converters of Conv and ConvTranspose.

They resolve auto_pad, output_shape, output_padding and opset defaults into the explicit
window attrs of kiln/ops/window.py.
"""

from __future__ import annotations

from ....errors import ShapeError
from ....ir import Value
from ....ops.window import window_extent
from ..registry import ConvertContext, converter
from .window import auto_pad, ints, kernel_shape, split_padding, window_attrs


@converter("Conv")
def _conv(cx: ConvertContext) -> list[Value]:
    x, w = cx.input(0), cx.input(1)
    attrs = {**window_attrs(cx, x, kernel_shape(cx, w)), **cx.given(group=int)}
    inputs = [x, w] + ([cx.input(2)] if cx.has_input(2) else [])
    return [cx.emit1("conv", inputs, attrs)]


@converter("ConvTranspose")
def _conv_transpose(cx: ConvertContext) -> list[Value]:
    x, w = cx.input(0), cx.input(1)
    kernel = kernel_shape(cx, w)
    nd = len(kernel)
    attrs = {**window_attrs(cx, x, kernel), **cx.given(group=int)}
    extra = ints(cx.attr("output_padding", [0] * nd))
    if len(extra) != nd:
        raise ShapeError(f"{cx.where()}: output_padding {list(extra)} needs {nd} entries")
    mode = auto_pad(cx)
    target = cx.attr("output_shape")
    if target is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * s for size, s in zip(x.type.shape[2:], attrs["strides"], strict=False)]
    if target is not None:  # pads from the wanted output shape; the odd one at the start
        target = ints(target)[-nd:]  # some exporters include N and C
        begins, ends = [], []
        for i in range(nd):
            full = window_extent(x.type.shape[2 + i], kernel[i], attrs["strides"][i],
                                 attrs["dilations"][i]) + extra[i]
            begin, end = split_padding(full - target[i], mode == "SAME_UPPER")
            begins.append(begin)
            ends.append(end - extra[i])
        attrs["pads"] = tuple(begins + ends)
    else:  # output_padding extends the end: a negative end pad
        p = attrs["pads"]
        attrs["pads"] = p[:nd] + tuple(p[nd + i] - extra[i] for i in range(len(extra)))
    inputs = [x, w] + ([cx.input(2)] if cx.has_input(2) else [])
    return [cx.emit1("conv_transpose", inputs, attrs)]
