"""Reduce ops (Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax, TopK): kiln vs onnxruntime.

Each case runs the compiled C kernels (inputs fed at run time) and, for most, the constant
folding path too (the same inputs as initializers, evaluated by the NumPy reference).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from kiln.ir import TensorType
from kiln.ops import GraphBuilder
from tests.util import (
    check_against_ort,
    check_op,
    folded_outputs,
    kiln_run,
    ort_run,
    single_node_model,
)

RNG = np.random.default_rng(0)
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if dtype == "bool":
        return RNG.integers(0, 2, shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-4, 5, shape).astype(dtype)


def _positive(op: str, x: np.ndarray) -> np.ndarray:
    """Data the op is defined on: positive for ReduceLogSum, near 1 for ReduceProd."""
    if op == "ReduceLogSum":
        return np.abs(x) + np.asarray(0.5, x.dtype)
    if op == "ReduceProd":
        return (x * np.asarray(0.2, x.dtype) + np.asarray(1, x.dtype)).astype(x.dtype)
    return x


# Reduce* ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes,keepdims", [(None, 1), ((1,), 0), ((0, 2), 1), ((-1,), 0)])
def test_reduce_axes_input(op, axes, keepdims):
    x = _positive(op, _data((3, 4, 5)))
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    check_op(op, {"x": x}, consts=consts, opset=18, keepdims=keepdims)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_axes_attribute(op):
    x = _positive(op, _data((2, 3, 4)))
    check_op(op, {"x": x}, opset=11, axes=[0, -1], keepdims=0)


def test_reduce_sum_axes_input_from_opset_13():
    check_op("ReduceSum", {"x": _data((2, 3, 4))}, consts={"axes": np.array([1], np.int64)},
             opset=13)


@pytest.mark.parametrize("shape,axes", [((5, 300), (0,)), ((3, 600, 2), (1,)),
                                        ((2, 3, 260), (0, 1)), ((4, 3, 2, 5), (1, 3))])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceLogSumExp"])
def test_reduce_layouts(op, shape, axes):
    """Kept contiguous dims (tiled, with a partial tile), interleaved kept/reduced dims."""
    check_op(op, {"x": _data(shape)}, consts={"axes": np.array(axes, np.int64)}, opset=18,
             fold=False)


@pytest.mark.parametrize("op,dtype", [("ReduceSum", "int32"), ("ReduceSum", "int64"),
                                      ("ReduceMean", "int32"), ("ReduceMax", "int8"),
                                      ("ReduceMin", "uint8"), ("ReduceProd", "int64"),
                                      ("ReduceL1", "int64"), ("ReduceL2", "int32"),
                                      ("ReduceSumSquare", "int32"), ("ReduceMax", "float64"),
                                      ("ReduceLogSumExp", "float64")])
def test_reduce_dtypes(op, dtype):
    check_op(op, {"x": _data((3, 7), dtype)}, consts={"axes": np.array([1], np.int64)}, opset=18,
             keepdims=0)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_bool(op):
    check_op(op, {"x": _data((4, 5), "bool")}, consts={"axes": np.array([1], np.int64)}, opset=20)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_noop_with_empty_axes(op):
    x = _positive(op, _data((2, 3)))
    check_op(op, {"x": x}, consts={"axes": np.array([], np.int64)}, opset=18,
             noop_with_empty_axes=1)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceProd", "ReduceLogSumExp",
                                "ReduceMean"])
def test_reduce_empty_set(op):
    x = np.zeros((2, 0, 3), np.float32)
    check_op(op, {"x": x}, consts={"axes": np.array([1], np.int64)}, opset=18, keepdims=0)


def test_reduce_with_fused_epilogue():
    """ReduceMean -> Relu -> Mul: the elementwise chain fuses into the reduction's store."""
    x = _data((4, 6, 5))
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Mul", ["r", "two"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_empty_tensor_value_info("y")],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.array(2, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    check_against_ort(model, {"x": x})


# ArgMax / ArgMin ------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keepdims,last", [(0, 1, 0), (1, 0, 0), (-1, 1, 1), (2, 0, 1)])
def test_arg(op, axis, keepdims, last):
    x = np.round(_data((3, 4, 5)))  # ties, to check first vs last index
    check_op(op, {"x": x}, opset=13, axis=axis, keepdims=keepdims, select_last_index=last)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "float64"])
def test_arg_dtypes(dtype):
    check_op("ArgMax", {"x": _data((4, 6), dtype)}, opset=13, axis=1)


# Softmax / LogSoftmax / Hardmax -----------------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset,axis,shape", [
    (13, None, (2, 3, 13)),   # last axis, rows not a multiple of the lane count
    (13, 1, (2, 5, 4)),       # a non-contiguous axis
    (13, 0, (4, 3)),
    (11, None, (2, 3, 4)),    # opset < 13: coerced to 2-D at axis 1
    (11, 2, (2, 3, 4)),
    (11, 0, (2, 3, 4)),
])
def test_softmax_family(op, opset, axis, shape):
    attrs = {} if axis is None else {"axis": axis}
    x = _data(shape) * np.float32(4)
    if op == "Hardmax":
        x = np.round(x)  # ties: the first index wins
    check_op(op, {"x": x}, opset=opset, **attrs)


def test_softmax_attention_shape():
    """BERT-style attention scores: softmax over the last axis of [1, heads, seq, seq]."""
    check_op("Softmax", {"x": _data((1, 2, 16, 128)) * np.float32(8)}, opset=13, fold=False)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_long_row(op):
    """A row longer than the kernel's scratch (the walker path) and float64."""
    check_op(op, {"x": _data((2, 9000)) * np.float32(4)}, opset=13, fold=False)
    check_op(op, {"x": _data((3, 8), "float64")}, opset=13, fold=False)


def test_softmax_masked_row():
    """-inf entries (masked attention) give exactly 0."""
    x = _data((2, 16))
    x[:, 3:7] = -np.inf
    model = check_op("Softmax", {"x": x}, opset=13)
    assert np.all(kiln_run(model, {"x": x})[0][:, 3:7] == 0)


# TopK -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,axis,largest", [(3, -1, 1), (2, 0, 1), (4, 1, 0), (1, -1, 0),
                                            (5, 1, 1), (0, -1, 1)])
def test_topk(k, axis, largest):
    x = np.round(_data((3, 5, 6)) * np.float32(2))  # ties: the lower index first
    check_op("TopK", {"x": x}, consts={"k": np.array([k], np.int64)}, opset=11,
             outputs=["values", "indices"], axis=axis, largest=largest)


def test_topk_k_attribute_and_int64():
    check_op("TopK", {"x": _data((4, 7))}, opset=9, outputs=["values", "indices"], k=3)
    check_op("TopK", {"x": _data((4, 9), "int64")}, consts={"k": np.array([4], np.int64)},
             opset=11, outputs=["values", "indices"])


def test_topk_unsorted_gives_the_same_set():
    x = _data((3, 10))
    model = single_node_model("TopK", {"x": x}, consts={"k": np.array([4], np.int64)}, opset=11,
                              outputs=["values", "indices"], sorted=0)
    got, want = kiln_run(model, {"x": x}), ort_run(model, {"x": x})
    np.testing.assert_array_equal(np.sort(got[1], axis=1), np.sort(want[1], axis=1))


# NaN semantics: the kernels agree with the NumPy reference (NaN propagates / wins) -----------

@pytest.mark.parametrize("op,attrs", [("ReduceMax", {"keepdims": 0}), ("ReduceMin", {}),
                                      ("ArgMax", {"axis": 1}), ("ArgMin", {"axis": 1}),
                                      ("ArgMax", {"axis": 1, "select_last_index": 1})])
def test_nan_compiled_matches_folded(op, attrs):
    x = np.round(_data((4, 9)))
    x[1, [2, 5]] = np.nan
    x[2, 0] = np.nan
    consts = {"axes": np.array([1], np.int64)} if op.startswith("Reduce") else {}
    model = single_node_model(op, {"x": x}, consts=consts, opset=18, **attrs)
    np.testing.assert_array_equal(kiln_run(model, {"x": x})[0],
                                  folded_outputs(model, {"x": x})[0])


# Errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,x,consts,attrs", [
    ("ReduceSum", _data((2, 3)), {"axes": np.array([2], np.int64)}, {}),
    ("ReduceMean", _data((2, 3)), {}, {"axes": [-3]}),
    ("ArgMax", _data((2, 3)), {}, {"axis": 2}),
    ("Softmax", _data((2, 3), "int32"), {}, {}),
    ("TopK", _data((2, 3)), {"k": np.array([4], np.int64)}, {}),
    ("TopK", _data((2, 3)), {"k": np.array([-1], np.int64)}, {}),
])
def test_bad_models_raise_shape_error(op, x, consts, attrs):
    opset = 11 if op == "ReduceMean" else 18
    outputs = ["values", "indices"] if op == "TopK" else ["y"]
    model = single_node_model(op, {"x": x}, consts=consts, opset=opset, outputs=outputs, **attrs)
    with pytest.raises(ShapeError, match=op):
        kiln.from_onnx(model)


def test_topk_k_from_a_model_input_is_unsupported():
    feeds = {"x": np.zeros((2, 5), np.float32), "k": np.zeros(1, np.int64)}
    model = single_node_model("TopK", feeds, opset=11, outputs=["values", "indices"])
    with pytest.raises(UnsupportedOpError, match="compile time"):
        kiln.from_onnx(model)


@pytest.mark.parametrize("op,attrs,shape", [
    ("reduce_sum", {"axes": (1, 0), "keepdims": True}, (2, 3)),   # unsorted
    ("reduce_sum", {"axes": (), "keepdims": True}, (2, 3)),       # empty
    ("reduce_max", {"axes": (-1,), "keepdims": True}, (2, 3)),    # negative
    ("argmax", {"axis": 1, "keepdims": True, "select_last_index": False}, (2, 0)),
    ("softmax", {"axis": -1}, (2, 3)),
    ("reduce_sum", {"axes": (0,), "keepdims": True, "dtype": "bool"}, (2, 3)),
])
def test_ir_attrs_are_checked(op, attrs, shape):
    dtype = attrs.pop("dtype", "float32")
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType(shape, dtype))
    with pytest.raises(ShapeError, match=op):
        builder.emit(op, [x], attrs)
