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
from kiln.ir import GraphBuilder, TensorType
from tests.util import check_against_ort, kiln_run, ort_run

RNG = np.random.default_rng(0)
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if dtype == "bool":
        return RNG.integers(0, 2, shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-4, 5, shape).astype(dtype)


def _model(op: str, x: np.ndarray, consts: dict | None = None, *, opset: int,
           outputs: int = 1, **attrs) -> onnx.ModelProto:
    """A one-node model: input x, then the constant inputs (initializers) in order."""
    consts = consts or {}
    node = helper.make_node(op, ["x", *consts], [f"y{k}" for k in range(outputs)], **attrs)
    graph = helper.make_graph(
        [node], op.lower(),
        [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_empty_tensor_value_info(f"y{k}") for k in range(outputs)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _folded(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Import model with x baked in as an initializer: every output must fold to a param."""
    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    baked.graph.initializer.append(numpy_helper.from_array(x, "x"))
    del baked.graph.input[:]
    mod, params = kiln.from_onnx(baked)
    assert not mod.graph.nodes, f"not folded: {mod.graph.nodes}"
    return [params[v.name] for v in mod.graph.outputs]


def _check(op: str, x: np.ndarray, consts: dict | None = None, *, opset: int, fold: bool = True,
           rtol: float = 1e-5, atol: float = 1e-5, **attrs) -> onnx.ModelProto:
    """Compiled kernels vs onnxruntime; with fold, the constant-folded result too."""
    model = _model(op, x, consts, opset=opset, **attrs)
    check_against_ort(model, {"x": x}, rtol=rtol, atol=atol)
    if fold:
        for got, want in zip(_folded(model, x), ort_run(model, {"x": x}), strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return model


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
    _check(op, x, consts, opset=18, keepdims=keepdims)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_axes_attribute(op):
    x = _positive(op, _data((2, 3, 4)))
    _check(op, x, opset=11, axes=[0, -1], keepdims=0)


def test_reduce_sum_axes_input_from_opset_13():
    _check("ReduceSum", _data((2, 3, 4)), {"axes": np.array([1], np.int64)}, opset=13)


@pytest.mark.parametrize("shape,axes", [((5, 300), (0,)), ((3, 600, 2), (1,)),
                                        ((2, 3, 260), (0, 1)), ((4, 3, 2, 5), (1, 3))])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceLogSumExp"])
def test_reduce_layouts(op, shape, axes):
    """Kept contiguous dims (tiled, with a partial tile), interleaved kept/reduced dims."""
    _check(op, _data(shape), {"axes": np.array(axes, np.int64)}, opset=18, fold=False)


@pytest.mark.parametrize("op,dtype", [("ReduceSum", "int32"), ("ReduceSum", "int64"),
                                      ("ReduceMean", "int32"), ("ReduceMax", "int8"),
                                      ("ReduceMin", "uint8"), ("ReduceProd", "int64"),
                                      ("ReduceL1", "int64"), ("ReduceL2", "int32"),
                                      ("ReduceSumSquare", "int32"), ("ReduceMax", "float64"),
                                      ("ReduceLogSumExp", "float64")])
def test_reduce_dtypes(op, dtype):
    _check(op, _data((3, 7), dtype), {"axes": np.array([1], np.int64)}, opset=18, keepdims=0)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_bool(op):
    _check(op, _data((4, 5), "bool"), {"axes": np.array([1], np.int64)}, opset=20)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_noop_with_empty_axes(op):
    x = _positive(op, _data((2, 3)))
    _check(op, x, {"axes": np.array([], np.int64)}, opset=18, noop_with_empty_axes=1)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceProd", "ReduceLogSumExp",
                                "ReduceMean"])
def test_reduce_empty_set(op):
    x = np.zeros((2, 0, 3), np.float32)
    _check(op, x, {"axes": np.array([1], np.int64)}, opset=18, keepdims=0)


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
    _check(op, x, opset=13, axis=axis, keepdims=keepdims, select_last_index=last)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "float64"])
def test_arg_dtypes(dtype):
    _check("ArgMax", _data((4, 6), dtype), opset=13, axis=1)


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
    _check(op, x, opset=opset, **attrs)


def test_softmax_attention_shape():
    """BERT-style attention scores: softmax over the last axis of [1, heads, seq, seq]."""
    _check("Softmax", _data((1, 2, 16, 128)) * np.float32(8), opset=13, fold=False)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_long_row(op):
    """A row longer than the kernel's scratch (the walker path) and float64."""
    _check(op, _data((2, 9000)) * np.float32(4), opset=13, fold=False)
    _check(op, _data((3, 8), "float64"), opset=13, fold=False)


def test_softmax_masked_row():
    """-inf entries (masked attention) give exactly 0."""
    x = _data((2, 16))
    x[:, 3:7] = -np.inf
    got = _check("Softmax", x, opset=13)
    assert np.all(kiln_run(got, {"x": x})[0][:, 3:7] == 0)


# TopK -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,axis,largest", [(3, -1, 1), (2, 0, 1), (4, 1, 0), (1, -1, 0),
                                            (5, 1, 1), (0, -1, 1)])
def test_topk(k, axis, largest):
    x = np.round(_data((3, 5, 6)) * np.float32(2))  # ties: the lower index first
    _check("TopK", x, {"k": np.array([k], np.int64)}, opset=11, outputs=2, axis=axis,
           largest=largest)


def test_topk_k_attribute_and_int64():
    _check("TopK", _data((4, 7)), opset=9, outputs=2, k=3)
    _check("TopK", _data((4, 9), "int64"), {"k": np.array([4], np.int64)}, opset=11,
           outputs=2)


def test_topk_unsorted_gives_the_same_set():
    x = _data((3, 10))
    model = _model("TopK", x, {"k": np.array([4], np.int64)}, opset=11, outputs=2, sorted=0)
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
    model = _model(op, x, consts, opset=18, **attrs)
    np.testing.assert_array_equal(kiln_run(model, {"x": x})[0], _folded(model, x)[0])


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
    with pytest.raises(ShapeError, match=op):
        kiln.from_onnx(_model(op, x, consts, opset=opset, outputs=2 if op == "TopK" else 1,
                              **attrs))


def test_topk_k_from_a_model_input_is_unsupported():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (2, 5)),
                      helper.make_tensor_value_info("k", onnx.TensorProto.INT64, (1,))],
        [helper.make_empty_tensor_value_info("v"), helper.make_empty_tensor_value_info("i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
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
