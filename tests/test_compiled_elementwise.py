"""Random elementwise graphs (with broadcasting) compiled to C agree with the NumPy references.

This exercises fusion (epilogues with broadcast operands), the memory planner and the
executor together on graphs no one wrote by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln.ir import TensorType
from kiln.ops import GraphBuilder
from tests.util import check_op, ir_reference

UNARY = ["relu", "sigmoid", "tanh", "neg", "abs", "exp", "hard_swish", "softplus", "erf"]
BINARY = ["add", "sub", "mul", "max", "min"]
SHAPES = [(3, 5), (5,), (3, 1), (1,), (2, 3, 5), (1, 3, 1)]


@st.composite
def elementwise_graph(draw):
    b = GraphBuilder()
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n_in = draw(st.integers(1, 3))
    values = [b.add_input(f"x{k}", TensorType(draw(st.sampled_from(SHAPES)), "float32"))
              for k in range(n_in)]
    if draw(st.booleans()):
        values.append(b.add_constant("c", rng.standard_normal(draw(st.sampled_from(SHAPES)))
                                     .astype(np.float32)))
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            src = draw(st.sampled_from(values))
            values.append(b.emit(draw(st.sampled_from(UNARY)), [src])[0])
        else:
            a, c = draw(st.sampled_from(values)), draw(st.sampled_from(values))
            try:
                np.broadcast_shapes(a.type.shape, c.type.shape)
            except ValueError:
                continue
            values.append(b.emit(draw(st.sampled_from(BINARY)), [a, c])[0])
    outs = [v for v in values[-2:] if v.producer is not None] or [values[-1]]
    mod = b.finish(outs)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in mod.graph.inputs}
    return mod, b.constants, feeds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(elementwise_graph())
def test_compiled_graph_matches_reference(case):
    mod, consts, feeds = case
    params = {p.name: consts[p.name] for p in mod.graph.params}
    lib = kiln.build(mod, params=params, progress=False)
    gmod = kiln.GraphModule(lib["default"](kiln.cpu(0)))
    gmod.set_input(**feeds)
    gmod.run()
    for k, want in enumerate(ir_reference(mod, {**consts, **feeds})):
        np.testing.assert_allclose(gmod.get_output(k), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int8"])
@pytest.mark.parametrize("attrs", [{}, {"lambd": 1.5, "bias": 1.5}, {"lambd": 0.0, "bias": -2.0}])
def test_shrink_matches_onnxruntime(dtype, attrs):
    x = np.linspace(-4, 4, 33).astype(dtype)  # values on, between and beyond +-lambd
    check_op("Shrink", {"x": x}, opset=9, **attrs)
