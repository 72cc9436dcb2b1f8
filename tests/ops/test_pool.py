"""MaxPool, AveragePool and the global pools: kiln vs onnxruntime, compiled and folded
(check_op)."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.errors import ShapeError
from tests.util import (
    check_against_ort,
    check_folded_against_ort,
    check_op,
    kiln_run,
    ort_run,
    single_node_model,
)
from tests.util import random_data as _data

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
