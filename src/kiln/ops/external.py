"""The `external` op: a region of the model run by an external engine (docs/byoc.md).

A node `external(inputs...) {backend, function, graph}` stands for a region the partition
pass (kiln/passes/partition.py) handed to a backend. `graph` is the region as JSON text in
the `kiln-external` format (version 1); this module is that format's reader and writer, and
the JSON form of kiln's attributes (`attrs_to_json`, `attrs_from_json`). The node's inputs
are the graph's `input` nodes then its `constant` nodes, in the order of the graph's
"inputs" and "constants" lists; its outputs are the graph's "outputs". The type rule reads
them from the graph (checking every inner node against its op's own rule, once per graph
text); the reference runs the inner nodes with kiln's references, so constant folding and
tests can evaluate an external node like any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import KilnError, ShapeError, UnsupportedOpError
from ..ir.types import TensorType
from .evaluate import evaluate
from .registry import EXTERNAL, REQUIRED, Attrs, get_op, register

GRAPH_FORMAT = "kiln-external"
GRAPH_VERSION = 1
# The ops of the nodes that bring values into the graph (one output each, no attributes).
SOURCE_OPS = ("input", "constant")

Ref = tuple[int, int]  # (node id, output index)


def _to_json(value: Any, where: str) -> Any:
    """value (an attribute or part of one) as JSON data: tuples become lists, NumPy
    scalars and arrays Python numbers and lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(v, where) for v in value]
    raise UnsupportedOpError(f"{where}: a {type(value).__name__} has no JSON form")


def attrs_to_json(attrs: Mapping[str, Any], where: str = "attributes") -> dict[str, Any]:
    """A node's attributes as JSON data, keys sorted (what backends and the JSON graph see)."""
    return {k: _to_json(attrs[k], f"{where}: attribute '{k}'") for k in sorted(attrs)}


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def attrs_from_json(attrs: Mapping[str, Any]) -> Attrs:
    """JSON attributes back in kiln's form (lists become tuples), for the ops' rules."""
    return {k: _from_json(v) for k, v in attrs.items()}


def write_graph(graph: Mapping[str, Any]) -> str:
    """The JSON text of a `kiln-external` graph: compact, keys in the order given."""
    return json.dumps(graph, separators=(",", ":"), allow_nan=True)


@dataclass(frozen=True, eq=False)
class ExternalGraph:
    """A checked `kiln-external` graph: its JSON nodes, and what the rules need of them."""

    function: str
    backend: str
    nodes: tuple[dict[str, Any], ...]
    inputs: tuple[int, ...]  # the ids of the "input" nodes, in argument order
    constants: tuple[int, ...]  # the ids of the "constant" nodes
    outputs: tuple[Ref, ...]
    types: tuple[tuple[TensorType, ...], ...]  # each node's output types
    attrs: tuple[Attrs, ...]  # each node's attributes in kiln's form ({} for sources)

    @property
    def argument_types(self) -> list[TensorType]:
        """The types of the external node's inputs: the input nodes', then the constants'."""
        return [self.types[i][0] for i in (*self.inputs, *self.constants)]

    @property
    def output_types(self) -> list[TensorType]:
        return [self.types[i][k] for i, k in self.outputs]


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    """obj[key], checked to be of kind, or ShapeError naming where and the key."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, kind):
        raise ShapeError(f"{where}: field '{key}' missing or not a {kind.__name__}")
    return value


def _tensor_type(entry: Any, where: str) -> TensorType:
    shape = _field(entry, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ShapeError(f"{where}: shape {shape} is not a list of integers")
    return TensorType(tuple(shape), _field(entry, "dtype", str, where))


def _ref(ref: Any, types: Sequence[tuple[TensorType, ...]], where: str) -> Ref:
    """A checked [id, k] reference to output k of an earlier node."""
    if (not isinstance(ref, list) or len(ref) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ref)
            or not 0 <= ref[0] < len(types) or not 0 <= ref[1] < len(types[ref[0]])):
        raise ShapeError(f"{where}: {ref!r} is not [id, k] of an earlier node's output")
    return ref[0], ref[1]


def _op_node(node: dict[str, Any], types: Sequence[tuple[TensorType, ...]],
             where: str) -> tuple[tuple[TensorType, ...], Attrs]:
    """An op node's output types and kiln attributes, checked against its op's rule."""
    opdef = get_op(_field(node, "op", str, where))
    attrs = attrs_from_json(_field(node, "attrs", dict, where))
    if set(attrs) != set(opdef.attrs):
        raise ShapeError(f"{where}: attributes {sorted(attrs)}, but op {opdef.name} declares "
                         f"{sorted(opdef.attrs)}")
    ins = [types[i][k] for i, k in (_ref(r, types, where)
                                    for r in _field(node, "inputs", list, where))]
    outs = tuple(_tensor_type(e, where) for e in _field(node, "outputs", list, where))
    try:
        want = opdef.infer(ins, attrs)
    except KilnError as e:
        raise ShapeError(f"{where}: {e}") from e
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise ShapeError(f"{where}: {e}") from e
    if list(outs) != list(want):
        raise ShapeError(f"{where}: outputs {[str(t) for t in outs]}, but op {opdef.name} "
                         f"infers {[str(t) for t in want]}")
    return outs, attrs


def _source_ids(doc: dict[str, Any], key: str, nodes: Sequence[Any]) -> tuple[int, ...]:
    """The ids listed under key ("inputs" or "constants"): each node of that kind, once."""
    op = key[:-1]  # "input" / "constant"
    ids = _field(doc, key, list, "external graph")
    want = [i for i, n in enumerate(nodes) if n.get("op") == op]
    if sorted(i for i in ids if isinstance(i, int)) != want or len(ids) != len(want):
        raise ShapeError(f"external graph: '{key}' is {ids}, but its {op} nodes are {want}")
    return tuple(ids)


@lru_cache(maxsize=256)
def read_graph(text: str) -> ExternalGraph:
    """The checked graph of JSON text (cached: the verifier reads it after every pass);
    ShapeError names what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShapeError(f"external graph is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != GRAPH_FORMAT \
            or doc.get("version") != GRAPH_VERSION:
        raise ShapeError(f"external graph: not format '{GRAPH_FORMAT}' version {GRAPH_VERSION}")
    nodes = _field(doc, "nodes", list, "external graph")
    types: list[tuple[TensorType, ...]] = []
    attrs: list[Attrs] = []
    names: set[str] = set()
    for i, node in enumerate(nodes):
        where = f"external graph: node {i}"
        if _field(node, "op", str, where) in SOURCE_OPS:
            name = _field(node, "name", str, where)
            if name in names:
                raise ShapeError(f"{where}: name '{name}' used twice")
            names.add(name)
            types.append((_tensor_type(node, where),))
            attrs.append({})
        else:
            outs, node_attrs = _op_node(node, types, f"{where} ({node['op']})")
            types.append(outs)
            attrs.append(node_attrs)
    outputs = tuple(_ref(r, types, "external graph: outputs")
                    for r in _field(doc, "outputs", list, "external graph"))
    return ExternalGraph(
        _field(doc, "function", str, "external graph"),
        _field(doc, "backend", str, "external graph"), tuple(nodes),
        _source_ids(doc, "inputs", nodes), _source_ids(doc, "constants", nodes), outputs,
        tuple(types), tuple(attrs))


def _infer(types: list[TensorType], attrs: Attrs) -> list[TensorType]:
    """The graph's output types, once the node's inputs match its input and constant nodes
    and its backend/function attributes match the graph's."""
    graph = read_graph(attrs["graph"])
    for key in ("backend", "function"):
        if attrs[key] != getattr(graph, key):
            raise ShapeError(f"attribute {key}='{attrs[key]}', but the graph says "
                             f"'{getattr(graph, key)}'")
    want = graph.argument_types
    if len(types) != len(want):
        raise ShapeError(f"expected {len(want)} inputs (the graph's inputs and constants), "
                         f"got {len(types)}")
    for k, (got, expected) in enumerate(zip(types, want, strict=True)):
        if got != expected:
            node = graph.nodes[(*graph.inputs, *graph.constants)[k]]
            raise ShapeError(f"input {k} ('{node['name']}'): got {got}, the graph says {expected}")
    return graph.output_types


def run_graph(graph: ExternalGraph, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs for arrays (its inputs, then its constants), node by node with
    kiln's references."""
    env: dict[int, list[np.ndarray]] = {
        i: [np.asarray(a)] for i, a in zip((*graph.inputs, *graph.constants), arrays, strict=True)}
    for i, node in enumerate(graph.nodes):
        if node["op"] in SOURCE_OPS:
            continue
        args = [env[j][k] for j, k in node["inputs"]]
        where = f"external {graph.function}: node {i} ({node['op']})"
        env[i] = evaluate(get_op(node["op"]).reference, args, graph.attrs[i], graph.types[i],
                          where)
    return [env[i][k] for i, k in graph.outputs]


register("external", infer=_infer,
         reference=lambda arrays, a: run_graph(read_graph(a["graph"]), arrays), kind=EXTERNAL,
         attrs={"backend": REQUIRED, "function": REQUIRED, "graph": REQUIRED})
