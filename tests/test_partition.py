"""Partitioning for external engines (kiln/passes/partition.py) and the `external` op
(kiln/ops/external.py): regions never make a cycle, the result verifies and computes what
the original did, and the JSON graphs follow docs/byoc.md."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import BackendError, ShapeError
from kiln.ir import Module, TensorType, Value
from kiln.ops import EXTERNAL, GraphBuilder, get_op, register, verify
from kiln.ops.external import read_graph
from kiln.passes.fold import fold_constants
from kiln.passes.partition import describe_node, partition
from tests.util import ir_reference

F = "float32"
SHAPE = (2, 3)
UNARY_OPS = ["relu", "sigmoid", "tanh", "neg", "abs", "reshape"]
BINARY_OPS = ["add", "mul", "sub", "max"]
ALL_OPS = [*UNARY_OPS, *BINARY_OPS, "concat", "split"]


def _supports(ops: set[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda node: node["op"] in ops


def _module(b: GraphBuilder, outputs: Sequence[Value], names: Sequence[str] | None = None
            ) -> Module:
    mod = b.finish(list(outputs), list(names) if names else None)
    mod.params = dict(b.constants)
    return mod


def _externals(mod: Module) -> list[tuple[str, list[str]]]:
    """(backend, inner ops in order) of each external node, in graph order."""
    return [(n.attrs["backend"], [m["op"] for m in read_graph(n.attrs["graph"]).nodes
                                  if m["op"] not in ("input", "constant")])
            for n in mod.graph.nodes if n.op == "external"]


def _steps(mod: Module) -> list[str]:
    """The graph's nodes in order: an op, or backend:[ops] for an external node."""
    return [f"{n.attrs['backend']}:{'+'.join(ops)}" if n.op == "external" else n.op
            for n, ops in zip(mod.graph.nodes, _inner_ops(mod), strict=True)]


def _inner_ops(mod: Module) -> list[list[str]]:
    return [[m["op"] for m in read_graph(n.attrs["graph"]).nodes
             if m["op"] not in ("input", "constant")] if n.op == "external" else []
            for n in mod.graph.nodes]


def _partitioned(mod: Module, backends, **options) -> Module:
    """partition of a copy of mod, checked: verifies, same outputs and output names."""
    original = mod.copy()
    result = partition(mod.copy(), backends, **options)
    verify(result)
    assert result.graph.output_names == original.graph.output_names
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(v.type.dtype)
             for v in original.graph.inputs}
    for got, want in zip(ir_reference(result, feeds), ir_reference(original, feeds),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    return result


# --- the property: random DAGs, random backends -------------------------------------------

def _emit_random(draw, b: GraphBuilder, values: list[Value]) -> None:
    """One random node (or a concat+split pair) reading random earlier values, recent ones
    more often (long paths that fork and rejoin are where cycles hide)."""
    op = draw(st.sampled_from(ALL_OPS))
    pick = st.one_of(st.sampled_from(values[-3:]), st.sampled_from(values))
    if op == "reshape":
        values += b.emit(op, [draw(pick)], {"shape": SHAPE})
    elif op in UNARY_OPS:
        values += b.emit(op, [draw(pick)])
    elif op in BINARY_OPS:
        values += b.emit(op, [draw(pick), draw(pick)])
    else:  # two values joined and split again: a node with two outputs
        (joined,) = b.emit("concat", [draw(pick), draw(pick)], {"axis": 1})
        values += b.emit("split", [joined], {"axis": 1, "sizes": (3, 3)})


@st.composite
def _random_case(draw):
    """A random DAG over (2, 3) float32 values, one or two backends supporting random op
    sets, and min_nodes."""
    b = GraphBuilder()
    values = [b.add_input(f"x{k}", TensorType(SHAPE, F)) for k in range(draw(st.integers(1, 2)))]
    for k in range(draw(st.integers(0, 2))):
        values.append(b.add_constant(f"w{k}", np.full(SHAPE, k + 0.5, np.float32)))
    for _ in range(draw(st.integers(2, 20))):
        _emit_random(draw, b, values)
    outputs = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
    mod = _module(b, outputs, [f"y{k}" for k in range(len(outputs))])
    op_sets = st.sets(st.sampled_from(ALL_OPS))
    backends = [(f"be{k}", draw(op_sets)) for k in range(draw(st.integers(1, 2)))]
    return mod, backends, draw(st.integers(1, 3))


def _connected(ops: list[dict[str, Any]], sources: int) -> bool:
    """Whether the op nodes of a JSON graph (after `sources` input/constant nodes) are
    connected by their edges, directions ignored."""
    parent = list(range(len(ops) + sources))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, node in enumerate(ops, start=sources):
        for j, _ in node["inputs"]:
            if j >= sources:
                parent[root(j)] = root(i)
    return len({root(i) for i in range(sources, sources + len(ops))}) <= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_random_case())
def test_random_dags_partition_into_acyclic_regions_that_compute_the_same(case):
    mod, backends, min_nodes = case
    result = _partitioned(mod, [(name, _supports(ops)) for name, ops in backends],
                          min_nodes=min_nodes)
    kept = [n for n in result.graph.nodes if n.op != "external"]
    inner = [ops for n, ops in zip(result.graph.nodes, _inner_ops(result), strict=True)
             if n.op == "external"]
    assert len(kept) + sum(map(len, inner)) == len(mod.graph.nodes)
    taken = {op: name for name, ops in reversed(backends) for op in ops}  # first one wins
    for node in result.graph.nodes:
        if node.op != "external":
            continue
        graph = read_graph(node.attrs["graph"])
        ops = graph.nodes[len(graph.inputs) + len(graph.constants):]
        assert len(ops) >= min_nodes
        assert all(taken.get(m["op"]) == node.attrs["backend"] for m in ops)
        assert _connected(list(ops), len(graph.inputs) + len(graph.constants))
    names = [n.attrs["function"] for n in result.graph.nodes if n.op == "external"]
    assert names == [f"ext{k}" for k in range(len(names))]
    again = partition(mod.copy(), [(name, _supports(ops)) for name, ops in backends],
                      min_nodes=min_nodes)
    assert str(again) == str(result)  # deterministic


def _recent(rng: random.Random, values: list[Value]) -> Value:
    """One of values, the last ones most often."""
    return values[-1 - min(int(rng.expovariate(1 / 3)), len(values) - 1)]


def _deep_random_module(rng: random.Random, size: int) -> tuple[Module, set[str]]:
    """A DAG of size unary/binary nodes reading mostly recent values, and a random op set."""
    b = GraphBuilder()
    values = [b.add_input("x", TensorType(SHAPE, F))]
    for _ in range(size):
        if rng.random() < 0.5:
            values += b.emit(rng.choice(UNARY_OPS[:-1]), [_recent(rng, values)])
        else:
            values += b.emit(rng.choice(BINARY_OPS), [_recent(rng, values), _recent(rng, values)])
    ops = [*UNARY_OPS[:-1], *BINARY_OPS]
    return _module(b, values[-2:]), set(rng.sample(ops, rng.randint(3, len(ops) - 1)))


def test_a_fixed_corpus_of_deep_random_dags_partitions_without_cycles():
    """Hypothesis favours small graphs; the patterns where a merge must pass its ancestors on
    need about 20 nodes (one graph in fifty of these has one)."""
    rng = random.Random(12)
    for _ in range(250):
        mod, ops = _deep_random_module(rng, 20)
        _partitioned(mod, [("eng", _supports(ops))])


# --- regions -------------------------------------------------------------------------------

def _chain(ops: Sequence[str]) -> Module:
    b = GraphBuilder()
    (v,) = [b.add_input("x", TensorType(SHAPE, F))]
    for k, op in enumerate(ops):
        (v,) = b.emit(op, [v], name=f"n{k}")
    return _module(b, [v], ["y"])


def test_a_fully_supported_chain_becomes_one_external_node():
    result = _partitioned(_chain(["relu", "sigmoid", "tanh"]),
                          [("eng", _supports({"relu", "sigmoid", "tanh"}))])
    assert _steps(result) == ["eng:relu+sigmoid+tanh"]
    (node,) = result.graph.nodes
    assert (node.name, node.attrs["function"], node.attrs["backend"]) == ("ext0", "ext0", "eng")
    assert [v.name for v in node.inputs] == ["x"]
    assert node.outputs == result.graph.outputs


def test_an_unsupported_node_splits_a_chain_into_two_regions():
    result = _partitioned(_chain(["relu", "neg", "tanh"]),
                          [("eng", _supports({"relu", "tanh"}))])
    assert _steps(result) == ["eng:relu", "neg", "eng:tanh"]
    assert [n.attrs["function"] for n in result.graph.nodes if n.op == "external"] == \
        ["ext0", "ext1"]


def _diamond(a_op: str) -> Module:
    """a -> b, a -> c, (b, c) -> d, with b sigmoid, c neg, d add."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, F))
    (a,) = b.emit(a_op, [x], name="a")
    (bb,) = b.emit("sigmoid", [a], name="b")
    (c,) = b.emit("neg", [a], name="c")
    (d,) = b.emit("add", [bb, c], name="d")
    return _module(b, [d], ["y"])


def test_a_diamond_around_an_unsupported_node_is_not_merged_into_a_cycle():
    # {a, b, d} would need c, which needs a, in its middle.
    result = _partitioned(_diamond("relu"), [("eng", _supports({"relu", "sigmoid", "add"}))])
    assert _steps(result) == ["eng:relu+sigmoid", "neg", "eng:add"]


def test_a_diamond_whose_top_stays_with_kiln_is_one_region():
    # a is kiln's: no path leaves {b, d} and comes back, so they merge.
    result = _partitioned(_diamond("abs"), [("eng", _supports({"sigmoid", "add"}))])
    assert _steps(result) == ["abs", "neg", "eng:sigmoid+add"]


def test_a_node_joins_two_regions_into_one():
    b = GraphBuilder()
    x, y = (b.add_input(n, TensorType(SHAPE, F)) for n in ("x", "y"))
    (r,) = b.emit("relu", [x])
    (s,) = b.emit("sigmoid", [y])
    (z,) = b.emit("add", [r, s])
    result = _partitioned(_module(b, [z]), [("eng", _supports({"relu", "sigmoid", "add"}))])
    assert _steps(result) == ["eng:relu+sigmoid+add"]
    assert [v.name for v in result.graph.nodes[0].inputs] == ["x", "y"]


def test_a_merge_passes_its_ancestors_to_the_groups_it_reaches():
    # g+n merge through n, which reads kx, which reads X: X now reaches h (X -> kx -> n/g
    # -> h), so n2 = mul(h, X) must not join X's region (X -> ... -> h -> n2 would be a cycle).
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, F))
    (g,) = b.emit("relu", [x])
    (h,) = b.emit("neg", [g])
    (big_x,) = b.emit("sigmoid", [x])
    (kx,) = b.emit("abs", [big_x])
    (n,) = b.emit("add", [g, kx])
    (n2,) = b.emit("mul", [h, big_x])
    result = _partitioned(_module(b, [n, n2]),
                          [("eng", _supports({"relu", "sigmoid", "add", "mul"}))])
    assert sorted(_externals(result)) == [("eng", ["mul"]), ("eng", ["relu", "add"]),
                                          ("eng", ["sigmoid"])]


def test_regions_under_min_nodes_stay_with_kiln():
    mod = _chain(["relu", "sigmoid", "neg", "tanh"])
    backends = [("eng", _supports({"relu", "sigmoid", "tanh"}))]
    assert _steps(_partitioned(mod, backends, min_nodes=2)) == ["eng:relu+sigmoid", "neg", "tanh"]
    assert _steps(_partitioned(mod, backends, min_nodes=3)) == ["relu", "sigmoid", "neg", "tanh"]


def test_the_first_backend_that_supports_a_node_takes_it():
    mod = _chain(["relu", "sigmoid", "tanh"])
    a, b = ("a", _supports({"relu", "sigmoid"})), ("b", _supports({"sigmoid", "tanh"}))
    assert _steps(_partitioned(mod, [a, b])) == ["a:relu+sigmoid", "b:tanh"]
    assert _steps(_partitioned(mod, [b, a])) == ["a:relu", "b:sigmoid+tanh"]


def test_constants_are_referenced_by_name_and_stay_params():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, F))
    w = b.add_constant("conv.w", np.full(SHAPE, 12345.5, np.float32))
    (y,) = b.emit("relu", [b.emit("mul", [x, w])[0]])
    result = _partitioned(_module(b, [y], ["y"]), [("eng", _supports({"mul", "relu"}))])
    (node,) = result.graph.nodes
    assert [v.name for v in node.inputs] == ["x", "conv.w"]
    assert "conv.w" in result.params and [p.name for p in result.graph.params] == ["conv.w"]
    doc = json.loads(node.attrs["graph"])
    assert doc["nodes"][:2] == [
        {"op": "input", "name": "x", "shape": [2, 3], "dtype": F},
        {"op": "constant", "name": "conv.w", "shape": [2, 3], "dtype": F}]
    assert (doc["inputs"], doc["constants"], doc["outputs"]) == ([0], [1], [[3, 0]])
    assert "12345" not in node.attrs["graph"]  # the weights' data is never in the JSON


def test_graph_outputs_made_inside_a_region_stay_outputs_with_their_names():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, F))
    (r,) = b.emit("relu", [x])
    (s,) = b.emit("sigmoid", [r])
    result = _partitioned(_module(b, [s, r, s], ["s", "r", "s2"]),
                          [("eng", _supports({"relu", "sigmoid"}))])
    (node,) = result.graph.nodes
    assert [v.name for v in node.outputs] == [r.name, s.name]
    assert result.graph.output_names == ["s", "r", "s2"]


def test_existing_external_nodes_stay_and_their_function_names_are_not_reused():
    once = partition(_chain(["relu", "neg", "tanh"]), [("eng", _supports({"relu", "tanh"}))])
    once.graph.nodes[2:] = []  # drop ext1 and the tanh it took, keep ext0 and neg
    once.graph.outputs = [once.graph.nodes[-1].outputs[0]]
    twice = partition(once, [("eng", _supports({"neg", "relu", "tanh"}))])
    verify(twice)
    assert [n.attrs["function"] for n in twice.graph.nodes] == ["ext0", "ext1"]
    assert _steps(twice) == ["eng:relu", "eng:neg"]


def test_a_failing_supports_is_a_backend_error_naming_backend_and_node():
    def broken(node: dict[str, Any]) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(BackendError, match=r"backend 'bad'.*'n0' \(relu\): boom"):
        partition(_chain(["relu"]), [("bad", broken)])


def test_describe_node_of_a_conv():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 2, 5, 5), F))
    w = b.add_constant("w", np.zeros((3, 2, 3, 3), np.float32))
    bias = b.add_constant("bias", np.zeros(3, np.float32))
    b.emit("conv", [x, w, bias], {"strides": (1, 1), "dilations": (1, 1),
                                  "pads": (1, 1, 1, 1)}, name="conv0")
    description = describe_node(b.graph.nodes[0], b.constants)
    assert description == {
        "op": "conv",
        "attrs": {"dilations": [1, 1], "group": 1, "packed_weight": [], "pads": [1, 1, 1, 1],
                  "strides": [1, 1], "winograd_weight": []},
        "inputs": [{"shape": [1, 2, 5, 5], "dtype": F, "constant": False},
                   {"shape": [3, 2, 3, 3], "dtype": F, "constant": True},
                   {"shape": [3], "dtype": F, "constant": True}],
        "outputs": [{"shape": [1, 3, 5, 5], "dtype": F}]}
    assert json.loads(json.dumps(description)) == description


# --- the external op -----------------------------------------------------------------------

def _offloaded_chain() -> Module:
    return partition(_chain(["relu", "tanh"]), [("eng", _supports({"relu", "tanh"}))])


def test_the_external_type_rule_checks_inputs_and_attributes_against_the_graph():
    node = _offloaded_chain().graph.nodes[0]
    rule = get_op("external").infer
    assert rule([TensorType(SHAPE, F)], node.attrs) == [TensorType(SHAPE, F)]
    with pytest.raises(ShapeError, match=r"input 0 \('x'\): got f32\[3,2\]"):
        rule([TensorType((3, 2), F)], node.attrs)
    with pytest.raises(ShapeError, match="expected 1 inputs"):
        rule([], node.attrs)
    with pytest.raises(ShapeError, match="function='ext9', but the graph says 'ext0'"):
        rule([TensorType(SHAPE, F)], {**node.attrs, "function": "ext9"})


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["nodes"][1].update(inputs=[[5, 0]]), r"node 1 \(relu\).*earlier node"),
    (lambda d: d["nodes"][2]["outputs"][0].update(shape=[6]), r"node 2 \(tanh\).*infers"),
    (lambda d: d["nodes"][1].update(attrs={"alpha": 1.0}), "declares"),
    (lambda d: d.update(version=2), "version 1"),
    (lambda d: d.update(inputs=[]), "'inputs' is"),
])
def test_a_malformed_external_graph_is_a_shape_error(edit, message):
    node = _offloaded_chain().graph.nodes[0]
    doc = json.loads(node.attrs["graph"])
    edit(doc)
    with pytest.raises(ShapeError, match=message):
        get_op("external").infer([TensorType(SHAPE, F)], {**node.attrs, "graph": json.dumps(doc)})


def test_an_external_node_folds_with_the_references_of_its_ops():
    mod = _offloaded_chain()
    x = mod.graph.inputs.pop()
    mod.graph.params.append(x)
    mod.params["x"] = np.linspace(-2, 2, 6, dtype=np.float32).reshape(SHAPE)
    folded = fold_constants(mod)
    assert folded.graph.nodes == []
    np.testing.assert_array_equal(folded.params[folded.graph.outputs[0].name],
                                  np.tanh(np.maximum(mod.params["x"], 0)))


def test_the_printed_ir_holds_the_graph_escaped():
    mod = _offloaded_chain()
    text = str(mod)
    start = text.index("graph=") + len("graph=")
    printed, _ = json.JSONDecoder().raw_decode(text, start)
    assert printed == mod.graph.nodes[0].attrs["graph"]


def test_an_external_kind_op_has_no_epilogue():
    with pytest.raises(ValueError, match="external op .* cannot take an epilogue"):
        register("external_with_epilogue", infer=lambda t, a: t, reference=lambda x, a: x,
                 kind=EXTERNAL, epilogue=True)
