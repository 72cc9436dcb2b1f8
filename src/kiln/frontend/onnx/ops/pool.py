"""ONNX -> IR converters of MaxPool, AveragePool and the global pools.

They resolve auto_pad and opset defaults into the explicit window attrs of kiln/ops/window.py.
"""

from __future__ import annotations

from ....ir import Value
from ..registry import ConvertContext, converter
from .window import kernel_shape, window_attrs


def _pool_attrs(cx: ConvertContext, x: Value) -> dict:
    kernel = kernel_shape(cx, None)
    attrs = window_attrs(cx, x, kernel)
    return {**attrs, "kernel_shape": kernel, **cx.given(ceil_mode=bool)}


@converter("MaxPool")
def _max_pool(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    attrs = _pool_attrs(cx, x)
    outputs = [cx.emit1("max_pool", [x], attrs)]
    if len(cx.node.output) > 1 and cx.node.output[1]:
        attrs.update(cx.given(storage_order=int))
        outputs.append(cx.builder.emit("max_pool_argmax", [x], attrs, name=cx.name,
                                       out_names=[cx.node.output[1]])[0])
    return outputs


@converter("AveragePool")
def _avg_pool(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    attrs = _pool_attrs(cx, x)
    attrs.update(cx.given(count_include_pad=bool))
    return [cx.emit1("avg_pool", [x], attrs)]


@converter("GlobalAveragePool")
def _global_avg_pool(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("global_avg_pool", [cx.input(0)])]


@converter("GlobalMaxPool")
def _global_max_pool(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("global_max_pool", [cx.input(0)])]
