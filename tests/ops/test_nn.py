"""nn ops (Conv, ConvTranspose, pools, normalizations): kiln vs onnxruntime.

Each case runs twice: compiled (C kernels) and folded (all inputs constant, so the importer
evaluates the NumPy reference).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import (
    check_against_ort,
    check_folded_against_ort,
    check_op,
    kiln_run,
    ort_run,
    reference_run,
    single_node_model,
)

RNG = np.random.default_rng(0)


def _data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(max(info.min, -100), min(info.max, 100), shape).astype(dtype)


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
    ((1, 64, 20, 20), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}),  # partial tile, many chunks
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
def test_conv_with_fused_epilogue(c, group):
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


# Pools ---------------------------------------------------------------------------------------

POOLS = [
    ((1, 2, 7, 8), {"kernel_shape": [3, 3]}),
    ((2, 3, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 2, 1]}),
    ((1, 2, 6, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1],
                    "ceil_mode": 1}),  # the last window would start in the end padding
    ((1, 2, 8, 9), {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 9, 9), {"kernel_shape": [3, 3], "dilations": [2, 2], "strides": [2, 2],
                    "ceil_mode": 1, "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 8), {"kernel_shape": [4, 3], "strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 2], "ceil_mode": 1}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2],
                       "pads": [1, 0, 1, 0, 1, 1]}),
]


@pytest.mark.parametrize("xs,attrs", POOLS)
def test_max_pool(xs, attrs):
    check_op("MaxPool", {"x": _data(xs)}, opset=22, **attrs)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("xs,attrs", POOLS)
def test_average_pool(xs, attrs, count_include_pad):
    check_op("AveragePool", {"x": _data(xs)}, opset=22, count_include_pad=count_include_pad,
             **attrs)


# Planes over 256 KiB do not get a padded local copy: windows check their bounds instead.
@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 1],
                 "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 0, 1],
                     "ceil_mode": 1, "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}),
])
def test_pool_large_plane(op, attrs):
    check_op(op, {"x": _data((1, 1, 260, 261))}, opset=22, **attrs)


def test_depthwise_conv_large_plane():
    x = _data((1, 2, 260, 261))
    check_op("Conv", {"x": x}, opset=22, consts={"w": _data((2, 1, 3, 3))}, group=2,
             pads=[1, 1, 1, 1])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float64"])
def test_max_pool_dtypes(dtype):
    check_op("MaxPool", {"x": _data((1, 2, 5, 6), dtype)}, opset=22, kernel_shape=[2, 2],
             pads=[1, 1, 0, 0])


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(storage_order):
    x = _data((2, 2, 5, 6))
    x[0, 0, :2, :2] = 7.0  # a tie: the first maximum in the window wins
    model = single_node_model("MaxPool", {"x": x}, opset=12, outputs={"y": "float32", "i": "int64"},
                              kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                              storage_order=storage_order)
    check_against_ort(model, {"x": x})
    check_folded_against_ort(model, {"x": x}, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_same_with_dilation_follows_the_spec(op):
    # SAME pads for the dilated window ((3 - 1) * 2 + 1 = 5: 2 and 2), so 7 outputs; here
    # onnxruntime pads as if undilated and gives 5, so compare with explicit pads instead.
    x = _data((1, 2, 7, 7))
    attrs = {"kernel_shape": [3, 3], "dilations": [2, 2]}
    same = single_node_model(op, {"x": x}, opset=19, auto_pad="SAME_UPPER", **attrs)
    explicit = single_node_model(op, {"x": x}, opset=19, pads=[2, 2, 2, 2], **attrs)
    np.testing.assert_allclose(kiln_run(same, {"x": x})[0], ort_run(explicit, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [7, 10, 11])
def test_pools_old_opsets(opset):
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    check_op("MaxPool", {"x": _data((1, 2, 7, 7))}, opset=opset, **attrs)
    check_op("AveragePool", {"x": _data((1, 2, 7, 7))}, opset=opset, count_include_pad=1, **attrs)


def test_pool_window_larger_than_input():
    model = single_node_model("MaxPool", {"x": _data((1, 1, 3, 3))}, opset=13,
                              node_name="the_node", kernel_shape=[5, 5])
    with pytest.raises(ShapeError, match="the_node.*larger than the padded input"):
        kiln.from_onnx(model)


def test_pool_needs_kernel_shape():
    with pytest.raises(ShapeError, match="kernel_shape is required"):
        kiln.from_onnx(single_node_model("MaxPool", {"x": _data((1, 1, 3, 3))}, opset=13))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 7), (1, 2, 2, 3, 3)])
def test_global_pools(op, shape):
    check_op(op, {"x": _data(shape)}, opset=22)


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
    stats = ["y", "mean", "var"] + (["saved_mean", "saved_var"] if opset < 14 else [])
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
