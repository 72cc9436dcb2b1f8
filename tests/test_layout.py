"""passes/layout.py: constant float32 B of products worth the GEMM driver stored in column
panels (ops/layout.py), recorded by `packed_n`; the ops' type rules and references read
the packed form, so the IR verifies and evaluates to the same values."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import ShapeError
from kiln.ir import Module, TensorType
from kiln.ops import GraphBuilder, verify
from kiln.ops.layout import PANEL, unpack_panels
from kiln.passes.layout import pack_gemm_weights
from kiln.passes.simplify import pretranspose_gemm_weights
from tests.util import ir_reference

RNG = np.random.default_rng(3)


def _module(op: str, x_shape: tuple[int, ...], weight: np.ndarray, **attrs) -> Module:
    b = GraphBuilder()
    x = b.add_input("x", TensorType(x_shape, weight.dtype.name))
    w = b.add_constant("w", weight)
    (y,) = b.emit(op, [x, w], attrs, name="fc")
    mod = b.finish([y])
    return Module(mod.graph, dict(b.constants), mod.name)


@pytest.mark.parametrize("op,x_shape,attrs", [
    ("matmul", (3, 20, 64), {}),
    ("gemm", (40, 64), {}),
    ("gemm", (64, 40), {"trans_a": True, "alpha": 0.5}),
])
def test_constant_b_is_packed_and_means_the_same(op, x_shape, attrs):
    weight = RNG.standard_normal((64, 70)).astype(np.float32)
    mod = _module(op, x_shape, weight, **attrs)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    want = ir_reference(mod, {"x": x})
    out = pack_gemm_weights(mod.copy())
    verify(out)
    node = out.graph.nodes[0]
    assert node.attrs["packed_n"] == 70
    packed = out.params[node.inputs[1].name]
    assert packed.shape == (3, 64, PANEL) and packed.flags.c_contiguous
    np.testing.assert_array_equal(unpack_panels(packed, 70), weight)
    np.testing.assert_allclose(ir_reference(out, {"x": x})[0], want[0], rtol=1e-6, atol=1e-6)


def test_a_transposed_gemm_weight_is_packed_after_pretranspose():
    weight = RNG.standard_normal((70, 64)).astype(np.float32)  # B^T: (n, k)
    mod = _module("gemm", (40, 64), weight, trans_b=True)
    assert pack_gemm_weights(mod.copy()).graph.nodes[0].attrs["packed_n"] == 0
    out = pack_gemm_weights(pretranspose_gemm_weights(mod.copy()))
    verify(out)
    node = out.graph.nodes[0]
    assert (node.attrs["packed_n"], node.attrs["trans_b"]) == (70, False)
    np.testing.assert_array_equal(unpack_panels(out.params[node.inputs[1].name], 70), weight.T)


@pytest.mark.parametrize("dtype,x_shape", [("float64", (40, 64)), ("float32", (2, 64)),
                                           ("float32", (100, 64))],
                         ids=["float64", "small", "narrow"])
def test_other_dtypes_small_products_and_narrow_weights_are_left_alone(dtype, x_shape):
    """float64 has no driver; 2 x 64 x 8 is below SGEMM_MIN_WORK; 8 columns would be padded
    to 32 (more than PACK_MAX_GROWTH): the driver packs those at run time."""
    weight = RNG.standard_normal((64, 8)).astype(dtype)
    out = pack_gemm_weights(_module("matmul", x_shape, weight))
    assert out.graph.nodes[0].attrs["packed_n"] == 0
    assert out.graph.nodes[0].inputs[1].name == "w"


def test_packed_operand_of_the_wrong_shape_is_a_shape_error():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4, 64), "float32"))
    w = b.add_constant("w", np.zeros((2, 64, PANEL), np.float32))
    with pytest.raises(ShapeError, match=r"does not hold 70 columns in panels of 32"):
        b.emit("matmul", [x, w], {"packed_n": 70}, name="fc")
    with pytest.raises(ShapeError, match="packed B cannot also transpose"):
        b.emit("gemm", [x, w], {"packed_n": 40, "trans_b": True}, name="fc")
