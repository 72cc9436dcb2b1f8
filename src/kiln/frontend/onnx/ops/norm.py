"""ONNX -> IR converters of the normalizations: LRN, BatchNormalization,
InstanceNormalization, LayerNormalization, RMSNormalization, GroupNormalization (lowered to
instance_norm), MeanVarianceNormalization and LpNormalization.
"""

from __future__ import annotations

import numpy as np

from ....errors import ShapeError, UnsupportedOpError
from ....ir import Value
from ..registry import ConvertContext, converter


@converter("LRN")
def _lrn(cx: ConvertContext) -> list[Value]:
    if cx.attr("size") is None:
        raise ShapeError(f"{cx.where()}: attribute size is required")
    attrs = {"size": int(cx.attr("size")), **cx.given(alpha=float, beta=float, bias=float)}
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
    return [cx.emit1("batch_norm", inputs, cx.given(epsilon=float))]


@converter("InstanceNormalization")
def _instance_norm(cx: ConvertContext) -> list[Value]:
    inputs = [cx.input(i) for i in range(3)]
    return [cx.emit1("instance_norm", inputs, cx.given(epsilon=float))]


def _norm_attrs(cx: ConvertContext, x: Value) -> dict:
    """axis (normalized) and epsilon of LayerNormalization / RMSNormalization."""
    axis = int(cx.attr("axis", -1))
    if not -x.type.rank <= axis < x.type.rank:
        raise ShapeError(f"{cx.where()}: axis {axis} out of range for input {x.type}")
    return {"axis": axis % x.type.rank, **cx.given(epsilon=float)}


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
    eps = cx.given(epsilon=float)
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
    attrs = {"axis": axis % x.type.rank, **cx.given(p=int)}
    if "p" in attrs and attrs["p"] not in (1, 2):
        raise UnsupportedOpError(f"{cx.where()}: p={attrs['p']}; LpNormalization supports "
                                 "p = 1 or 2")
    return [cx.emit1("lp_norm", [x], attrs)]
