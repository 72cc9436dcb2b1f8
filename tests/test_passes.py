"""Pass unit tests: folding, BatchNorm folding, dead code, fusion, memory planning."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.ir import TensorType
from kiln.ops import GraphBuilder, verify
from kiln.passes.fuse import fuse
from kiln.passes.memory_plan import plan_memory
from kiln.pipeline import optimize

UNARY = ["relu", "sigmoid", "tanh", "neg", "abs"]


def _bound(b, outputs):
    mod = b.finish(outputs)
    return mod.bind(b.constants)


def test_fusion_puts_elementwise_chain_into_producer():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4, 8), "float32"))
    w = b.add_constant("w", np.ones((8,), np.float32))
    (s,) = b.emit("exp", [x])
    (y,) = b.emit("add", [s, w])
    (z,) = b.emit("relu", [y])
    mod = optimize(_bound(b, [z]), check=True)
    groups = fuse(mod)
    assert len(groups) == 1
    assert groups[0].label == "exp+add+relu"
    assert [v.name for v in groups[0].extras] == [w.name]


def test_fusion_takes_diamonds_whose_branches_rejoin():
    """x * sigmoid(x) style: the value read twice stays inside one kernel."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((16,), "float32"))
    (a,) = b.emit("exp", [x])
    (r1,) = b.emit("relu", [a])
    (r2,) = b.emit("neg", [a])
    (s,) = b.emit("add", [r1, r2])
    (y,) = b.emit("mul", [s, a])
    groups = fuse(optimize(_bound(b, [y])))
    assert [g.label for g in groups] == ["exp+relu+neg+add+mul"]
    assert groups[0].extras == []


def test_fusion_stops_where_a_value_is_also_read_outside_the_chain():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4, 16), "float32"))
    (a,) = b.emit("exp", [x])
    (r,) = b.emit("relu", [a])
    (m,) = b.emit("softmax", [a], {"axis": 1})  # not elementwise: a must be materialized
    (s,) = b.emit("add", [r, m])
    groups = fuse(optimize(_bound(b, [s])))
    # add runs where it stood, after softmax, which made its other operand.
    assert [g.label for g in groups] == ["exp", "softmax", "relu+add"]


def test_batch_norm_without_conv_becomes_mul_add_and_matches_reference():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3, 4, 4), "float32"))
    stats = [b.add_constant(n, rng.random(3).astype(np.float32) + 0.5)
             for n in ("g", "beta", "mean", "var")]
    (y,) = b.emit("batch_norm", [x, *stats], {"epsilon": 1e-5})
    mod = optimize(_bound(b, [y]), check=True)
    assert [n.op for n in mod.graph.nodes] == ["mul", "add"]


def test_dead_code_and_constants_are_removed():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4,), "float32"))
    c = b.add_constant("c", np.arange(4, dtype=np.float32))
    b.emit("exp", [x])  # unused
    (y,) = b.emit("add", [x, c])
    mod = optimize(_bound(b, [y]), check=True)
    assert [n.op for n in mod.graph.nodes] == ["add"]


@st.composite
def _random_graph(draw):
    """A random DAG of elementwise ops over a few shapes of one broadcastable family."""
    b = GraphBuilder()
    values = [b.add_input("x", TensorType((draw(st.integers(1, 64)),), "float32"))]
    n = draw(st.integers(1, 25))
    for _ in range(n):
        if draw(st.booleans()):
            src = draw(st.sampled_from(values))
            values.append(b.emit(draw(st.sampled_from(UNARY)), [src])[0])
        else:
            a, c = draw(st.sampled_from(values)), draw(st.sampled_from(values))
            values.append(b.emit("add", [a, c])[0])
    k = draw(st.integers(1, min(3, len(values))))
    return _bound(b, values[-k:])


@settings(max_examples=200, deadline=None)
@given(_random_graph())
def test_memory_plan_never_overlaps_live_buffers(mod):
    mod = optimize(mod, check=True)
    groups = fuse(mod)
    assert sorted(id(n) for g in groups for n in g.nodes) == sorted(id(n) for n in mod.graph.nodes)
    plan = plan_memory(mod, groups)
    bufs = plan.buffers
    for i, a in enumerate(bufs):
        for c in bufs[i + 1:]:
            if a.first <= c.last and c.first <= a.last:
                assert a.offset + a.size <= c.offset or c.offset + c.size <= a.offset
    assert plan.arena_bytes <= plan.unplanned_bytes
    # Every value a kernel touches has a home.
    for g in groups:
        for v in [*g.inputs, *g.outputs]:
            assert plan.owner(v) in plan.offsets or plan.owner(v) in mod.graph.params
    # Groups run in an order where every input is produced before use.
    produced = {id(v) for v in mod.graph.inputs} | {id(v) for v in mod.graph.params}
    for g in groups:
        assert all(id(plan.owner(v)) in produced for v in g.inputs)
        produced.update(id(v) for v in g.outputs)
    verify(mod)
