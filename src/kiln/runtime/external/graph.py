"""Reading a kiln-external JSON graph (docs/byoc.md): its checks and the views backends need.

A graph comes out of a library's manifest, so it is checked before a backend relies on it:
every reference points back to an earlier node, and each op node's description (what
`Backend.supports` judged when the model was split) can be rebuilt from the graph alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError, FormatError

FORMAT = "kiln-external"
VERSION = 1

Ref = tuple[int, int]  # (node id, output index)


@dataclass(frozen=True)
class TensorSpec:
    """The static type of one value of the graph."""

    shape: tuple[int, ...]
    dtype: str


def _where(graph: dict, node_id: int | None = None) -> str:
    """Where an error is, for messages: the function and, if given, the node."""
    where = f"external function {graph.get('function', '?')!r}"
    return where if node_id is None else f"{where}, node {node_id}"


def _ref(graph: dict, entry: object, before: int, what: str) -> Ref:
    """entry as a (node id, output index) pair naming an existing output of a node < before."""
    nodes = graph["nodes"]
    if (not isinstance(entry, (list, tuple)) or len(entry) != 2
            or not all(isinstance(v, int) for v in entry)):
        raise FormatError(f"{what} {entry!r} is not a [node id, output index] pair")
    node_id, k = entry
    if not 0 <= node_id < before:
        raise FormatError(f"{what} {entry!r} names node {node_id}, expected one of 0..{before - 1}")
    if not 0 <= k < len(output_specs_of(nodes[node_id])):
        raise FormatError(f"{what} {entry!r}: node {node_id} ({nodes[node_id]['op']}) has no "
                          f"output {k}")
    return node_id, k


def output_specs_of(node: dict) -> list[TensorSpec]:
    """The types of a node's outputs: one for an input or constant node, else as listed."""
    if node["op"] in ("input", "constant"):
        return [TensorSpec(tuple(node["shape"]), node["dtype"])]
    return [TensorSpec(tuple(o["shape"]), o["dtype"]) for o in node["outputs"]]


def check_graph(graph: dict) -> None:
    """Raise FormatError unless graph is a well-formed kiln-external graph of VERSION."""
    if graph.get("format") != FORMAT or graph.get("version") != VERSION:
        raise FormatError(f"{_where(graph)}: expected format {FORMAT!r} version {VERSION}, got "
                          f"{graph.get('format')!r} version {graph.get('version')!r}")
    try:
        nodes = graph["nodes"]
        for i, node in enumerate(nodes):
            output_specs_of(node)
            if node["op"] in ("input", "constant"):
                continue
            if not isinstance(node["attrs"], dict):
                raise FormatError(f"{_where(graph, i)}: attrs is not an object")
            for entry in node["inputs"]:
                _ref(graph, entry, i, f"{_where(graph, i)}: input")
        for key, op in (("inputs", "input"), ("constants", "constant")):
            for i in graph[key]:
                if not (isinstance(i, int) and 0 <= i < len(nodes) and nodes[i]["op"] == op
                        and isinstance(nodes[i].get("name"), str)):
                    raise FormatError(f"{_where(graph)}: {key} entry {i!r} is not a named "
                                      f"{op} node")
        for entry in graph["outputs"]:
            _ref(graph, entry, len(nodes), f"{_where(graph)}: output")
    except (KeyError, TypeError, IndexError) as e:
        raise FormatError(f"{_where(graph)} is malformed: {type(e).__name__} {e}") from e


def op_nodes(graph: dict) -> list[tuple[int, dict]]:
    """(id, node) of the nodes that compute something, in execution order."""
    return [(i, n) for i, n in enumerate(graph["nodes"]) if n["op"] not in ("input", "constant")]


def input_refs(node: dict) -> list[Ref]:
    """The (node id, output index) each input of an op node reads."""
    return [(i, k) for i, k in node["inputs"]]


def graph_outputs(graph: dict) -> list[Ref]:
    """The (node id, output index) of each result of the graph, in order."""
    return [(i, k) for i, k in graph["outputs"]]


def spec(graph: dict, ref: Ref) -> TensorSpec:
    """The type of the value ref names."""
    return output_specs_of(graph["nodes"][ref[0]])[ref[1]]


def describe(graph: dict, node_id: int) -> dict:
    """The node description of op node node_id (docs/byoc.md), as `supports` sees it."""
    nodes = graph["nodes"]
    node = nodes[node_id]
    inputs = []
    for ref in input_refs(node):
        s = spec(graph, ref)
        constant = nodes[ref[0]]["op"] == "constant"
        inputs.append({"shape": list(s.shape), "dtype": s.dtype, "constant": constant})
    outputs = [{"shape": list(o["shape"]), "dtype": o["dtype"]} for o in node["outputs"]]
    return {"op": node["op"], "attrs": node["attrs"], "inputs": inputs,
            "outputs": outputs}


def unsupported(graph: dict, supports: Callable[[dict], bool]) -> list[str]:
    """'node <id> (<op>)' for each op node that supports (a Backend.supports) refuses."""
    return [f"node {i} ({n['op']})" for i, n in op_nodes(graph)
            if not supports(describe(graph, i))]


def check_for(backend: type, graph: dict, constants: dict[str, np.ndarray]) -> None:
    """What a backend's init checks first: graph is well formed, backend supports every node,
    and constants holds every constant of the graph with the shape and dtype it declares."""
    check_graph(graph)
    refused = unsupported(graph, backend.supports)
    if refused:
        raise BackendError(f"backend {backend.name!r} cannot run {', '.join(refused)} of "
                           f"{_where(graph)}")
    for i in graph["constants"]:
        node = graph["nodes"][i]
        if node["name"] not in constants:
            raise FormatError(f"{_where(graph, i)}: constant {node['name']!r} is not among the "
                              f"weights given ({len(constants)} of them)")
        array, want = constants[node["name"]], output_specs_of(node)[0]
        if array.shape != want.shape or array.dtype.name != want.dtype:
            raise FormatError(f"{_where(graph, i)}: constant {node['name']!r} is "
                              f"{array.dtype.name}{list(array.shape)}, the graph says "
                              f"{want.dtype}{list(want.shape)}")
