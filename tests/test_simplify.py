"""passes/simplify.py: BatchNorm folding with ops/norm.py's math, and the gemm weight layout
chosen after import (the frontend keeps the model's trans_b)."""

from __future__ import annotations

import numpy as np

from kiln.ir import Module, TensorType
from kiln.ops import GraphBuilder, verify
from kiln.ops.norm import batch_norm_scale_shift
from kiln.passes.simplify import fold_batch_norm, pretranspose_gemm_weights
from tests.util import ir_reference


def _gemm_module(weight: np.ndarray) -> Module:
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3), "float32"))
    w = b.add_constant("w", weight)
    (y,) = b.emit("gemm", [x, w], {"trans_b": True}, name="fc")
    mod = b.finish([y])
    return Module(mod.graph, dict(b.constants), mod.name)


def test_a_constant_transposed_gemm_weight_is_stored_transposed_once():
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    mod = _gemm_module(weight)
    want = ir_reference(mod, {"x": x})
    assert mod.graph.nodes[0].attrs["trans_b"]  # the frontend's IR keeps the model's layout
    out = pretranspose_gemm_weights(mod.copy())
    verify(out)
    node = out.graph.nodes[0]
    assert not node.attrs["trans_b"]
    assert node.inputs[1].name == "fc_weight_t"
    np.testing.assert_array_equal(out.params["fc_weight_t"], weight.T)
    assert out.params["fc_weight_t"].flags.c_contiguous
    np.testing.assert_array_equal(ir_reference(out, {"x": x})[0], want[0])


def test_batch_norm_folding_uses_the_ops_scale_and_shift():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 3, 2, 2), "float32"))
    stats = [b.add_constant(n, rng.uniform(0.5, 2, 3).astype(np.float32))
             for n in ("gamma", "beta", "mean", "var")]
    (y,) = b.emit("batch_norm", [x, *stats], {"epsilon": 1e-3}, name="bn")
    graph = b.finish([y]).graph
    mod = Module(graph, dict(b.constants))
    scale, shift = batch_norm_scale_shift(*(b.constants[v.name] for v in stats), 1e-3)
    out = fold_batch_norm(mod.copy())
    assert [n.op for n in out.graph.nodes] == ["mul", "add"]
    np.testing.assert_array_equal(out.params["bn_out0_scale"].reshape(-1),
                                  scale.astype(np.float32))
    np.testing.assert_array_equal(out.params["bn_out0_shift"].reshape(-1),
                                  shift.astype(np.float32))
    data = {"x": rng.standard_normal((1, 3, 2, 2)).astype(np.float32)}
    np.testing.assert_allclose(ir_reference(out, data)[0], ir_reference(mod, data)[0],
                               rtol=1e-6, atol=1e-6)
