"""linalg ops (MatMul, Gemm, Einsum, CumSum, Trilu): kiln's compiled kernels vs onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.errors import ShapeError, UnsupportedOpError
from tests.util import check_against_ort, folded_outputs, kiln_run, single_node_model

RNG = np.random.default_rng(0)


def _data(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-5, 6, shape).astype(dtype)


# MatMul --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 3)), ((3, 1, 3, 4), (1, 2, 4, 2)), ((4,), (2, 4, 1)),
    ((1, 2, 4, 3), (3,)), ((3,), (3,)), ((2, 5, 6), (6, 7)), ((5, 0), (0, 3)), ((7, 40), (40, 300)),
])
def test_matmul_shapes(sa, sb):
    model = single_node_model("MatMul", {"a": _data(sa), "b": _data(sb)}, opset=13)
    check_against_ort(model, {"a": _data(sa), "b": _data(sb)}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "int32", "int64"])
@pytest.mark.parametrize("opset", [9, 13])
def test_matmul_dtypes(dtype, opset):
    a, b = _data((2, 3, 5), dtype), _data((5, 4), dtype)
    check_against_ort(single_node_model("MatMul", {"a": a, "b": b}, opset=opset), {"a": a, "b": b})


def test_matmul_bert_sized_with_constant_weight():
    # K = 768 sums in float32: the order differs from MLAS', hence the looser tolerance.
    x, w = _data((16, 768)), _data((768, 96)) / 16
    model = single_node_model("MatMul", {"x": x}, consts={"w": w}, opset=13)
    check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)


def test_matmul_inner_dim_mismatch():
    model = single_node_model("MatMul", {"a": _data((3, 4)), "b": _data((5, 2))}, opset=13)
    with pytest.raises(ShapeError, match="inner dims 4 and 5"):
        kiln.from_onnx(model)


# Gemm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm(trans_a, trans_b, c_shape):
    a = _data((4, 3) if trans_a else (3, 4))
    b = _data((5, 4) if trans_b else (4, 5))
    feeds = {"a": a, "b": b} | ({} if c_shape is None else {"c": _data(c_shape)})
    model = single_node_model("Gemm", feeds, opset=13, alpha=0.25, beta=0.35, transA=trans_a,
                              transB=trans_b)
    check_against_ort(model, feeds)


@pytest.mark.parametrize("opset", [7, 9, 11])
def test_gemm_opsets_with_constant_transposed_weight(opset):
    x, w, c = _data((2, 6)), _data((3, 6)), _data((3,))
    model = single_node_model("Gemm", {"x": x}, consts={"w": w, "c": c}, opset=opset, transB=1)
    check_against_ort(model, {"x": x})


def test_gemm_float64():
    feeds = {"a": _data((3, 4), "float64"), "b": _data((4, 2), "float64"),
             "c": _data((2,), "float64")}
    check_against_ort(single_node_model("Gemm", feeds, opset=13, alpha=0.5), feeds)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_gemm_integers(dtype):
    # onnxruntime has no integer Gemm kernel; the ONNX definition is checked directly.
    feeds = {"a": _data((3, 4), dtype), "b": _data((4, 2), dtype), "c": _data((2,), dtype)}
    (got,) = kiln_run(single_node_model("Gemm", feeds, opset=13, alpha=2.0, beta=3.0), feeds)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, 2 * feeds["a"] @ feeds["b"] + 3 * feeds["c"])


def test_gemm_bias_must_broadcast_to_output():
    feeds = {"a": _data((3, 4)), "b": _data((4, 5)), "c": _data((3, 5, 1))}
    with pytest.raises(ShapeError, match="does not broadcast"):
        kiln.from_onnx(single_node_model("Gemm", feeds, opset=13))


# Einsum --------------------------------------------------------------------------------------

@pytest.mark.parametrize("equation,shapes", [
    ("bij,bjk->bik", [(5, 2, 3), (5, 3, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij->i", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("i,i", [(5,)]*2),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->ij", [(3, 4)]*2),
    ("bij,jk->bik", [(2, 3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("abc,cd->", [(2, 3, 4), (4, 5)]),
    ("...ii->...i", [(3, 4, 4)]),
    ("ii", [(4, 4)]),
    ("->", [()]),
])
def test_einsum(equation, shapes):
    feeds = {f"x{k}": _data(s, "float64") for k, s in enumerate(shapes)}
    check_against_ort(single_node_model("Einsum", feeds, opset=12, equation=equation), feeds)


@pytest.mark.parametrize("equation,shapes", [
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)]),
    ("...i,...i->...", [(3, 1, 4), (2, 4)]),
])
def test_einsum_broadcasting(equation, shapes):
    # onnxruntime rejects broadcast size-1 dims in Einsum; numpy defines the result.
    feeds = {f"x{k}": _data(s, "float64") for k, s in enumerate(shapes)}
    (got,) = kiln_run(single_node_model("Einsum", feeds, opset=12, equation=equation), feeds)
    np.testing.assert_allclose(got, np.einsum(equation, *feeds.values()), rtol=1e-12)


def test_einsum_int64_matmul():
    feeds = {"a": _data((2, 3), "int64"), "b": _data((3, 4), "int64")}
    check_against_ort(single_node_model("Einsum", feeds, opset=12, equation="ij,jk->ik"), feeds)


@pytest.mark.parametrize("equation,match", [
    ("ij,jk->ik", "dims 4 and 5"),
    ("ijk,jk->ik", "does not fit"),
    ("ij,jk->iz", "uses one no operand has"),
    ("ij->", "1 operands, the node 2 inputs"),
    ("i1,jk->ik", "characters other than letters"),
])
def test_einsum_errors(equation, match):
    feeds = {"a": _data((3, 4)), "b": _data((5, 2))}
    model = single_node_model("Einsum", feeds, opset=12, equation=equation)
    with pytest.raises(ShapeError, match=match):
        kiln.from_onnx(model)


# CumSum --------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(axis, exclusive, reverse):
    x = _data((3, 4, 5))
    model = single_node_model("CumSum", {"x": x}, consts={"axis": np.array(axis, np.int64)},
                              opset=14, exclusive=exclusive, reverse=reverse)
    check_against_ort(model, {"x": x})


@pytest.mark.parametrize("dtype", ["float64", "int32", "int64"])
def test_cumsum_dtypes_opset11(dtype):
    x = _data((2, 7), dtype)
    model = single_node_model("CumSum", {"x": x}, consts={"axis": np.array([1], np.int32)},
                              opset=11, exclusive=1)
    check_against_ort(model, {"x": x})


def test_cumsum_axis_must_be_constant():
    model = single_node_model("CumSum", {"x": _data((3,)), "axis": np.array(0, np.int64)}, opset=14)
    with pytest.raises(UnsupportedOpError, match="must be known at compile time"):
        kiln.from_onnx(model)


def test_cumsum_axis_out_of_range():
    model = single_node_model("CumSum", {"x": _data((3,))},
                              consts={"axis": np.array(1, np.int64)}, opset=14)
    with pytest.raises(ShapeError, match="axis 1 out of range"):
        kiln.from_onnx(model)


# Trilu ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -7, -1, 0, 2, 9])
def test_trilu(upper, k):
    x = _data((2, 4, 5), "int64")
    consts = {} if k is None else {"k": np.array(k, np.int64)}
    model = single_node_model("Trilu", {"x": x}, consts=consts, opset=14, upper=upper)
    check_against_ort(model, {"x": x})


def test_trilu_float_and_empty():
    for x in (_data((5, 3)), _data((3, 0, 5))):
        check_against_ort(single_node_model("Trilu", {"x": x}, opset=14, upper=0), {"x": x})


def test_trilu_needs_rank_2():
    with pytest.raises(ShapeError, match="rank >= 2"):
        kiln.from_onnx(single_node_model("Trilu", {"x": _data((4,))}, opset=14))


# Constant folding through the references -----------------------------------------------------

def test_constant_operands_fold_to_reference():
    a, b = _data((3, 4)), _data((5, 4))
    model = single_node_model("Gemm", {}, consts={"a": a, "b": b}, opset=13, transB=1, alpha=2.0)
    (got,) = folded_outputs(model, {})
    np.testing.assert_allclose(got, 2.0 * a @ b.T, rtol=1e-6)
