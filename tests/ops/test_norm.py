"""Normalizations (LRN, BatchNormalization, InstanceNormalization, LayerNormalization,
RMSNormalization, GroupNormalization, MeanVarianceNormalization, LpNormalization): kiln vs
onnxruntime, compiled and folded (check_op)."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import (
    check_against_ort,
    check_folded_against_ort,
    check_op,
    kiln_run,
    single_node_model,
)
from tests.util import random_data as _data

RNG = np.random.default_rng(0)  # _bn_params' variances


# LRN -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,attrs", [(3, {}), (1, {"alpha": 0.01, "beta": 0.5, "bias": 2.0}),
                                        (5, {"alpha": 2e-4})])
def test_lrn(size, attrs):
    check_op("LRN", {"x": _data((2, 7, 4, 5))}, opset=13, size=size, **attrs)


def test_lrn_even_size():
    # onnxruntime rejects even sizes (and the ONNX reference mixes up N and C): the window of
    # channel c is max(0, c - 1) .. min(C - 1, c + 2) for size 4, from the spec's formula.
    x = _data((2, 6, 3, 2))
    model = single_node_model("LRN", {"x": x}, opset=13, size=4, alpha=0.1, beta=0.75, bias=1.0)
    sums = np.stack([np.square(x[:, max(0, c - 1):c + 3]).sum(axis=1) for c in range(6)], 1)
    expected = x / (1.0 + 0.1 / 4 * sums) ** 0.75
    np.testing.assert_allclose(kiln_run(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)


# Normalizations ------------------------------------------------------------------------------

def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {"scale": _data((c,)), "bias": _data((c,)), "mean": _data((c,)),
            "var": RNG.uniform(0.5, 2.0, c).astype(np.float32)}


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4), (2, 3, 6)])
def test_batch_norm(opset, shape):
    check_op("BatchNormalization", {"x": _data(shape)}, opset=opset, consts=_bn_params(shape[1]),
             epsilon=1e-3)


@pytest.mark.parametrize("opset,attrs", [(9, {}), (15, {"training_mode": 1})])
def test_batch_norm_training_mode_is_unsupported(opset, attrs):
    # Before opset 14, listing the statistics outputs is what asks for training mode.
    stats = ["y", "running_mean", "running_var"]
    stats += ["saved_mean", "saved_var"] if opset < 14 else []
    model = single_node_model("BatchNormalization", {"x": _data((2, 3, 4))}, opset=opset,
                              consts=_bn_params(3), outputs=dict.fromkeys(stats, "float32"),
                              node_name="the_node", **attrs)
    with pytest.raises(UnsupportedOpError, match="the_node.*training mode"):
        kiln.from_onnx(model)


def test_instance_norm():
    x = _data((2, 3, 5, 6)) * 3 + 1
    check_op("InstanceNormalization", {"x": x}, opset=22,
             consts={"scale": _data((3,)), "bias": _data((3,))}, epsilon=1e-3)


@pytest.mark.parametrize("shape,axis", [((2, 5, 8), -1), ((2, 5, 8), 1), ((3, 4, 2, 5), 0),
                                        ((4, 768), -1)])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_norm(shape, axis, bias):
    norm = shape[axis % len(shape):]
    consts = {"scale": _data(norm)} | ({"bias": _data(norm)} if bias else {})
    check_op("LayerNormalization", {"x": _data(shape) + 2}, opset=17, consts=consts, axis=axis,
             epsilon=1e-4)


def test_layer_norm_broadcast_scale_and_statistics_outputs():
    x = _data((2, 3, 4)) * 2 + 1
    model = single_node_model("LayerNormalization", {"x": x}, opset=17,
                              consts={"scale": _data((1, 4)), "bias": _data((4,))}, axis=1,
                              outputs=dict.fromkeys(["y", "mean", "inv_std"], "float32"))
    check_against_ort(model, {"x": x})
    check_folded_against_ort(model, {"x": x}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,axis", [((2, 5, 8), -1), ((3, 4, 2, 5), 1)])
def test_rms_norm(shape, axis):
    norm = shape[axis % len(shape):]
    check_op("RMSNormalization", {"x": _data(shape)}, opset=23, consts={"scale": _data(norm)},
             axis=axis, epsilon=1e-4)


def test_layer_norm_axis_out_of_range():
    model = single_node_model("LayerNormalization", {"x": _data((2, 3))}, opset=17,
                              consts={"scale": _data((3,))}, axis=2)
    with pytest.raises(ShapeError, match="axis 2 out of range"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(opset):
    groups, c = 2, 6
    param = groups if opset == 18 else c
    check_op("GroupNormalization", {"x": _data((2, c, 3, 4)) + 1}, opset=opset, num_groups=groups,
             consts={"scale": _data((param,)), "bias": _data((param,))}, epsilon=1e-3)


def test_group_norm_groups_must_divide_channels():
    model = single_node_model("GroupNormalization", {"x": _data((1, 6, 2))}, opset=21, num_groups=4,
                              consts={"scale": _data((6,)), "bias": _data((6,))})
    with pytest.raises(ShapeError, match="num_groups 4 must divide the 6 channels"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("axes", [None, [1], [2, 3], [0, -1]])
def test_mean_variance_norm(axes):
    attrs = {} if axes is None else {"axes": axes}
    check_op("MeanVarianceNormalization", {"x": _data((2, 3, 4, 5)) * 2 + 1}, opset=13, **attrs)


@pytest.mark.parametrize("p,axis", [(2, -1), (1, 1), (2, 0)])
def test_lp_norm(p, axis):
    x = _data((3, 4, 5))
    x[0, 0] = 0  # a zero vector normalizes to zeros
    check_op("LpNormalization", {"x": x}, opset=22, p=p, axis=axis)


def test_lp_norm_other_p_is_unsupported():
    with pytest.raises(UnsupportedOpError, match="p=3"):
        kiln.from_onnx(single_node_model("LpNormalization", {"x": _data((2, 3))}, opset=13, p=3))
