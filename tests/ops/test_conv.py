"""Conv and ConvTranspose: kiln vs onnxruntime, each case compiled (C kernels) and, through
check_op, folded (all inputs constant, so the importer evaluates the NumPy reference)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import (
    check_against_ort,
    check_op,
    direct_convs,
    kiln_run,
    reference_run,
    single_node_model,
)
from tests.util import random_data as _data

# Conv ----------------------------------------------------------------------------------------

CONV_2D = [
    # (x shape, w shape, attrs)
    ((1, 3, 7, 8), (4, 3, 3, 3), {}),
    ((2, 3, 7, 8), (4, 3, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ((1, 2, 9, 9), (3, 2, 3, 2), {"dilations": [2, 3], "pads": [2, 1, 0, 3]}),
    ((1, 4, 6, 7), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ((1, 6, 8, 8), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 3, 8, 8), (6, 1, 3, 3), {"group": 3, "pads": [0, 1, 2, 1]}),  # depth multiplier 2
    ((1, 5, 6, 7), (8, 5, 1, 1), {}),  # pointwise: one flat row
    ((1, 3, 9, 7), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 9, 7), (4, 3, 4, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 3, 9, 7), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((1, 2, 3, 300), (3, 2, 3, 3), {"pads": [1, 1, 1, 1]}),  # row wider than one tile
    ((1, 2, 5, 5), (2, 2, 5, 5), {"pads": [4, 4, 4, 4], "strides": [3, 3]}),  # pads > kernel
    ((1, 4, 11, 10), (4, 1, 3, 3), {"group": 4, "dilations": [2, 2], "strides": [3, 3],
                                    "pads": [2, 1, 0, 2]}),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("xs,ws,attrs", CONV_2D)
def test_conv_2d(xs, ws, attrs, bias):
    consts = {"w": _data(ws)} | ({"b": _data((ws[0],))} if bias else {})
    check_op("Conv", {"x": _data(xs)}, opset=22, consts=consts, **attrs)


# 8+ output channels per group take the im2col kernel: tiles of positions, chunks of taps.
@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 8, 9, 10), (16, 8, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ((1, 5, 12, 12), (16, 5, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((2, 6, 7, 7), (16, 3, 2, 3), {"group": 2, "pads": [0, 1, 1, 1]}),
    ((1, 7, 40), (12, 7, 5), {"strides": [2], "pads": [2, 1]}),
    ((1, 3, 4, 5, 6), (8, 3, 2, 3, 3), {"pads": [1, 1, 0, 0, 1, 1], "strides": [1, 2, 2]}),
    # partial tile, many chunks (5x5: a 3x3 kernel would take Winograd, tests/ops/test_winograd.py)
    ((1, 64, 20, 20), (64, 64, 5, 5), {"pads": [2, 2, 2, 2]}),
    ((1, 16, 9, 9), (32, 16, 1, 1), {}),
    ((1, 16, 9, 9), (32, 16, 1, 1), {"strides": [2, 2]}),
])
def test_conv_im2col(xs, ws, attrs):
    # Up to 576 products per output, summed in another order than MLAS': atol 1e-4.
    check_op("Conv", {"x": _data(xs)}, opset=22, consts={"w": _data(ws), "b": _data((ws[0],))},
             atol=1e-4, **attrs)


@pytest.mark.parametrize("xs,ws,attrs", [
    ((2, 3, 11), (4, 3, 3), {"pads": [2, 1], "dilations": [2], "strides": [2]}),
    ((1, 4, 10), (4, 1, 4), {"group": 4, "auto_pad": "SAME_UPPER"}),
    ((1, 2, 5, 6, 4), (3, 2, 3, 2, 3), {"pads": [1, 0, 1, 1, 1, 0], "strides": [1, 2, 1]}),
    ((1, 4, 4, 5, 6), (4, 2, 2, 3, 1), {"group": 2, "dilations": [2, 1, 1]}),
])
def test_conv_1d_3d(xs, ws, attrs):
    check_op("Conv", {"x": _data(xs)}, opset=22, consts={"w": _data(ws), "b": _data((ws[0],))},
             **attrs)


def test_conv_opset_1():
    x, w = _data((1, 2, 6, 6)), _data((3, 2, 3, 3))
    check_op("Conv", {"x": x}, consts={"w": w}, opset=1, pads=[1, 1, 1, 1], kernel_shape=[3, 3])


@pytest.mark.parametrize("m", [3, 8])
def test_conv_float64(m):
    # onnxruntime has no float64 Conv: compare with the ONNX reference evaluator.
    x, w = _data((1, 2, 6, 6), "float64"), _data((m, 2, 3, 3), "float64")
    model = single_node_model("Conv", {"x": x}, consts={"w": w}, opset=13, pads=[1, 0, 1, 1],
                              strides=[1, 2])
    expected = reference_run(model, {"x": x})[0]
    got = kiln_run(model, {"x": x})[0]
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c,group", [(3, 1), (16, 1), (16, 16)])  # row, im2col, depthwise
def test_conv_with_fused_epilogue(c, group, monkeypatch):
    direct_convs(monkeypatch)  # the kernels named above (tests/ops/test_winograd.py: Winograd)
    x = _data((1, c, 8, 8))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("Add", ["c", "r"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    inits = [numpy_helper.from_array(_data((c, c // group, 3, 3)), "w"),
             numpy_helper.from_array(_data((c,)), "b")]
    graph = helper.make_graph(
        nodes, "conv_add_relu",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, x.shape) for n in "xr"],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    check_against_ort(model, {"x": x, "r": _data(x.shape)})


def test_conv_weight_as_graph_input():
    x, w = _data((1, 2, 5, 5)), _data((2, 2, 3, 3))
    model = single_node_model("Conv", {"x": x, "w": w}, opset=13, strides=[2, 2])
    check_against_ort(model, {"x": x, "w": w})


def test_conv_group_mismatch_is_a_shape_error():
    model = single_node_model("Conv", {"x": _data((1, 4, 5, 5))}, consts={"w": _data((3, 2, 3, 3))},
                              opset=13, node_name="the_node", group=2)
    with pytest.raises(ShapeError, match="the_node.*group=2"):
        kiln.from_onnx(model)


def test_conv_unknown_auto_pad():
    model = single_node_model("Conv", {"x": _data((1, 2, 5, 5))}, consts={"w": _data((2, 2, 3, 3))},
                              opset=13, auto_pad="SAME")
    with pytest.raises(UnsupportedOpError, match="auto_pad 'SAME'"):
        kiln.from_onnx(model)


def test_conv_kernel_larger_than_input():
    model = single_node_model("Conv", {"x": _data((1, 2, 2, 2))}, consts={"w": _data((2, 2, 3, 3))},
                              opset=13)
    with pytest.raises(ShapeError, match="larger than the padded input"):
        kiln.from_onnx(model)


# A depthwise conv whose padded plane is over 256 KiB gets no local copy: the row kernel.
def test_depthwise_conv_large_plane():
    x = _data((1, 2, 260, 261))
    check_op("Conv", {"x": x}, opset=22, consts={"w": _data((2, 1, 3, 3))}, group=2,
             pads=[1, 1, 1, 1])


# ConvTranspose -------------------------------------------------------------------------------

@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 2, 3, 4), (2, 3, 3, 3), {}),
    ((2, 2, 3, 4), (2, 3, 3, 2), {"strides": [2, 3], "pads": [1, 0, 0, 2]}),
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_padding": [1, 0]}),
    ((1, 2, 4, 3), (2, 1, 2, 3), {"dilations": [2, 2], "pads": [1, 1, 0, 0]}),
    ((1, 4, 3, 3), (4, 2, 3, 3), {"group": 2, "strides": [2, 2]}),
    ((1, 4, 3, 3), (4, 1, 3, 3), {"group": 4, "strides": [2, 1], "pads": [1, 1, 1, 1]}),
    ((1, 2, 3, 3), (2, 1, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((1, 2, 3, 3), (2, 1, 3, 3), {"strides": [2, 2], "output_shape": [6, 5]}),
    ((1, 2, 3, 4), (2, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 4), (2, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 3, 4), (2, 2, 4, 4), {"strides": [2, 2], "auto_pad": "VALID"}),
    ((1, 2, 2, 2), (2, 2, 4, 4), {"pads": [2, 2, 2, 2]}),  # crop into the middle
])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_2d(xs, ws, attrs, bias):
    m = ws[1] * attrs.get("group", 1)
    consts = {"w": _data(ws)} | ({"b": _data((m,))} if bias else {})
    check_op("ConvTranspose", {"x": _data(xs)}, opset=22, consts=consts, **attrs)


@pytest.mark.parametrize("xs,ws,attrs", [
    ((2, 3, 5), (3, 2, 3), {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 2), {"strides": [2, 1, 2], "dilations": [1, 2, 1]}),
])
def test_conv_transpose_1d_3d(xs, ws, attrs):
    check_op("ConvTranspose", {"x": _data(xs)}, opset=22,
             consts={"w": _data(ws), "b": _data((ws[1],))}, **attrs)
