"""ONNX -> IR converters of the nn ops: Conv, ConvTranspose, pools and normalizations.

They resolve auto_pad, output_shape, output_padding and opset defaults into the explicit
window attrs of kiln/ops/nn.py.
"""

from __future__ import annotations

import numpy as np

from ....errors import ShapeError, UnsupportedOpError
from ....ir import Value
from ..registry import ConvertContext, converter

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _ints(values: object) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _kernel_shape(cx: ConvertContext, weight: Value | None) -> tuple[int, ...]:
    """kernel_shape, which must agree with the weight's spatial dims when both are known."""
    from_weight = weight.type.shape[2:] if weight is not None else None
    given = cx.attr("kernel_shape")
    if given is None:
        if from_weight is None:
            raise ShapeError(f"{cx.where()}: attribute kernel_shape is required")
        return from_weight
    if from_weight is not None and _ints(given) != from_weight:
        raise ShapeError(f"{cx.where()}: kernel_shape {list(given)} does not match the weight's "
                         f"spatial shape {list(from_weight)}")
    return _ints(given)


def _auto_pad(cx: ConvertContext) -> str:
    mode = cx.attr("auto_pad", "NOTSET") or "NOTSET"
    if mode not in _AUTO_PADS:
        raise UnsupportedOpError(f"{cx.where()}: auto_pad '{mode}' is not one of {_AUTO_PADS}")
    return mode


def _split(total: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding from a total: SAME_UPPER puts the odd one at the end."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _window_attrs(cx: ConvertContext, x: Value, kernel: tuple[int, ...]) -> dict:
    """strides, dilations and explicit pads of a conv or pool node (auto_pad resolved)."""
    nd = len(kernel)
    if x.type.rank != nd + 2:
        raise ShapeError(f"{cx.where()}: input {x.type} must have rank {nd + 2} for a "
                         f"{nd}-D kernel")
    strides = _ints(cx.attr("strides", [1] * nd))
    dilations = _ints(cx.attr("dilations", [1] * nd))
    mode = _auto_pad(cx)
    pads = _ints(cx.attr("pads", [0] * 2 * nd))
    if mode == "VALID":
        pads = (0,) * 2 * nd
    elif mode != "NOTSET":
        if len(strides) != nd or len(dilations) != nd:
            raise ShapeError(f"{cx.where()}: strides/dilations need {nd} entries")
        begins, ends = [], []
        for size, k, s, d in zip(x.type.shape[2:], kernel, strides, dilations, strict=True):
            out = -(-size // s)  # SAME: ceil(size / stride) outputs
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            begin, end = _split(total, mode == "SAME_UPPER")
            begins.append(begin)
            ends.append(end)
        pads = tuple(begins + ends)
    return {"strides": strides, "dilations": dilations, "pads": pads}


def _group(cx: ConvertContext) -> int:
    return int(cx.attr("group", 1))


@converter("Conv")
def _conv(cx: ConvertContext) -> list[Value]:
    x, w = cx.input(0), cx.input(1)
    attrs = _window_attrs(cx, x, _kernel_shape(cx, w))
    attrs["group"] = _group(cx)
    inputs = [x, w] + ([cx.input(2)] if cx.has_input(2) else [])
    return [cx.emit1("conv", inputs, attrs)]


@converter("ConvTranspose")
def _conv_transpose(cx: ConvertContext) -> list[Value]:
    x, w = cx.input(0), cx.input(1)
    kernel = _kernel_shape(cx, w)
    nd = len(kernel)
    attrs = _window_attrs(cx, x, kernel)
    attrs["group"] = _group(cx)
    extra = _ints(cx.attr("output_padding", [0] * nd))
    if len(extra) != nd:
        raise ShapeError(f"{cx.where()}: output_padding {list(extra)} needs {nd} entries")
    mode = _auto_pad(cx)
    target = cx.attr("output_shape")
    if target is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * s for size, s in zip(x.type.shape[2:], attrs["strides"], strict=False)]
    if target is not None:  # pads from the wanted output shape; the odd one at the start
        target = _ints(target)[-nd:]  # some exporters include N and C
        begins, ends = [], []
        for i in range(nd):
            full = ((x.type.shape[2 + i] - 1) * attrs["strides"][i] + extra[i]
                    + (kernel[i] - 1) * attrs["dilations"][i] + 1)
            begin, end = _split(full - target[i], mode == "SAME_UPPER")
            begins.append(begin)
            ends.append(end - extra[i])
        attrs["pads"] = tuple(begins + ends)
    else:  # output_padding extends the end: a negative end pad
        p = attrs["pads"]
        attrs["pads"] = p[:nd] + tuple(p[nd + i] - extra[i] for i in range(len(extra)))
    inputs = [x, w] + ([cx.input(2)] if cx.has_input(2) else [])
    return [cx.emit1("conv_transpose", inputs, attrs)]


def _pool_attrs(cx: ConvertContext, x: Value) -> dict:
    kernel = _kernel_shape(cx, None)
    attrs = _window_attrs(cx, x, kernel)
    attrs["kernel_shape"] = kernel
    attrs["ceil_mode"] = bool(cx.attr("ceil_mode", 0))
    return attrs


@converter("MaxPool")
def _max_pool(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    attrs = _pool_attrs(cx, x)
    outputs = [cx.emit1("max_pool", [x], attrs)]
    if len(cx.node.output) > 1 and cx.node.output[1]:
        attrs["storage_order"] = int(cx.attr("storage_order", 0))
        outputs.append(cx.builder.emit("max_pool_argmax", [x], attrs, name=cx.name,
                                       out_names=[cx.node.output[1]])[0])
    return outputs


@converter("AveragePool")
def _avg_pool(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    attrs = _pool_attrs(cx, x)
    attrs["count_include_pad"] = bool(cx.attr("count_include_pad", 0))
    return [cx.emit1("avg_pool", [x], attrs)]


@converter("GlobalAveragePool")
def _global_avg_pool(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("global_avg_pool", [cx.input(0)])]


@converter("GlobalMaxPool")
def _global_max_pool(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("global_max_pool", [cx.input(0)])]


@converter("LRN")
def _lrn(cx: ConvertContext) -> list[Value]:
    if cx.attr("size") is None:
        raise ShapeError(f"{cx.where()}: attribute size is required")
    attrs = {"size": int(cx.attr("size")), "alpha": float(cx.attr("alpha", 1e-4)),
             "beta": float(cx.attr("beta", 0.75)), "bias": float(cx.attr("bias", 1.0))}
    return [cx.emit1("lrn", [cx.input(0)], attrs)]


@converter("BatchNormalization")
def _batch_norm(cx: ConvertContext) -> list[Value]:
    # Before opset 14, asking for the statistics outputs is what selects training mode.
    if cx.attr("training_mode", 0) or (cx.opset < 14 and any(cx.node.output[1:])):
        raise UnsupportedOpError(f"{cx.where()}: training mode (batch statistics, running "
                                 "mean/var outputs) is not supported; kiln compiles inference")
    if not cx.attr("spatial", 1) and cx.input(0).type.rank > 2:
        raise UnsupportedOpError(f"{cx.where()}: spatial=0 (per-element statistics) is not "
                                 "supported")
    inputs = [cx.input(i) for i in range(5)]
    return [cx.emit1("batch_norm", inputs, {"epsilon": float(cx.attr("epsilon", 1e-5))})]


@converter("InstanceNormalization")
def _instance_norm(cx: ConvertContext) -> list[Value]:
    inputs = [cx.input(i) for i in range(3)]
    return [cx.emit1("instance_norm", inputs, {"epsilon": float(cx.attr("epsilon", 1e-5))})]


def _norm_attrs(cx: ConvertContext, x: Value) -> dict:
    """axis (normalized) and epsilon of LayerNormalization / RMSNormalization."""
    axis = int(cx.attr("axis", -1))
    if not -x.type.rank <= axis < x.type.rank:
        raise ShapeError(f"{cx.where()}: axis {axis} out of range for input {x.type}")
    return {"axis": axis % x.type.rank, "epsilon": float(cx.attr("epsilon", 1e-5))}


@converter("RMSNormalization")
def _rms_norm(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    return [cx.emit1("rms_norm", [x, cx.input(1)], _norm_attrs(cx, x))]


@converter("LayerNormalization")
def _layer_norm(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    attrs = _norm_attrs(cx, x)
    inputs = [x, cx.input(1)] + ([cx.input(2)] if cx.has_input(2) else [])
    outputs = [cx.emit1("layer_norm", inputs, attrs)]
    if any(cx.node.output[1:]):  # Mean and InvStdDev
        names = [f"{cx.name}_mean", f"{cx.name}_invstd"]
        for k, name in enumerate(cx.node.output[1:3]):
            names[k] = name or names[k]
        outputs += cx.builder.emit("layer_norm_stats", [x], attrs, name=cx.name,
                                   out_names=names)
    return outputs


@converter("GroupNormalization")
def _group_norm(cx: ConvertContext) -> list[Value]:
    """Instance norm over (N, groups, C/groups * spatial), then the affine per channel."""
    x, scale, bias = (cx.input(i) for i in range(3))
    n, c = x.type.shape[:2]
    groups = int(cx.attr("num_groups", 0))
    if groups < 1 or c % groups:
        raise ShapeError(f"{cx.where()}: num_groups {groups} must divide the {c} channels of "
                         f"input {x.type}")
    emit = cx.builder.emit
    grouped = emit("reshape", [x], {"shape": (n, groups, x.type.numel // n // groups)})[0]
    eps = {"epsilon": float(cx.attr("epsilon", 1e-5))}
    if cx.opset < 21:  # opset 18: scale and bias per group
        y = emit("instance_norm", [grouped, scale, bias], eps, name=cx.name)[0]
        return [cx.emit1("reshape", [y], {"shape": x.type.shape})]
    ones = cx.constant(np.ones(groups, x.type.dtype), "ones")
    zeros = cx.constant(np.zeros(groups, x.type.dtype), "zeros")
    y = emit("instance_norm", [grouped, ones, zeros], eps, name=cx.name)[0]
    y = emit("reshape", [y], {"shape": x.type.shape})[0]
    per_channel = {"shape": (c,) + (1,) * (x.type.rank - 2)}
    y = emit("mul", [y, emit("reshape", [scale], per_channel)[0]], name=cx.name)[0]
    bias = emit("reshape", [bias], per_channel)[0]
    return [cx.emit1("add", [y, bias])]


@converter("MeanVarianceNormalization")
def _mvn(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    if cx.opset < 9:
        raise UnsupportedOpError(f"{cx.where()}: MeanVarianceNormalization before opset 9 "
                                 "(across_channels, normalize_variance) is not supported")
    axes = cx.attr("axes", [0, 2, 3])
    rank = x.type.rank
    if any(not -rank <= a < rank for a in axes):
        raise ShapeError(f"{cx.where()}: axes {list(axes)} out of range for input {x.type}")
    return [cx.emit1("mean_variance_norm", [x], {"axes": tuple(sorted({a % rank for a in axes}))})]


@converter("LpNormalization")
def _lp_norm(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    axis = int(cx.attr("axis", -1))
    if not -x.type.rank <= axis < x.type.rank:
        raise ShapeError(f"{cx.where()}: axis {axis} out of range for input {x.type}")
    p = int(cx.attr("p", 2))
    if p not in (1, 2):
        raise UnsupportedOpError(f"{cx.where()}: p={p}; LpNormalization supports p = 1 or 2")
    return [cx.emit1("lp_norm", [x], {"axis": axis % x.type.rank, "p": p})]
