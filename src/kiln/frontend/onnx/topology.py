"""The structure of an ONNX graph, checked before any node is converted.

Every value has exactly one producer (a graph input, an initializer or a node output; an input
that is also an initializer, as IR < 4 writes them, counts once), every node input names one,
and the nodes form no cycle. ONNX requires nodes in topological order; a graph listed out of
order but acyclic is sorted (stably), a cycle is reported with the nodes and values in it.
"""

from __future__ import annotations

import difflib
import heapq

import onnx

from ...errors import ModelImportError
from .registry import describe


def _producers(graph: onnx.GraphProto) -> dict[str, str]:
    """Map each value name to what produces it (as messages name it); raise on duplicates."""
    producers: dict[str, str] = {}

    def add(name: str, what: str) -> None:
        if name in producers:
            raise ModelImportError(f"value '{name}' has two producers: {producers[name]} and "
                                   f"{what}; each value must be produced once")
        producers[name] = what

    for init in graph.initializer:
        add(init.name, f"initializer '{init.name}'")
    initializers = set(producers)
    for vi in graph.input:
        if vi.name not in initializers:
            add(vi.name, f"graph input '{vi.name}'")
    for k, node in enumerate(graph.node):
        if not any(node.output):
            raise ModelImportError(f"{describe(node)} (node #{k}) has no outputs")
        for name in node.output:
            if name:
                add(name, describe(node))
    return producers


def _unknown_input(node: onnx.NodeProto, index: int, name: str, known: dict[str, str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; similar names: {close}" if close else ""
    return (f"{describe(node)}: input {index} names value '{name}', which no node, initializer "
            f"or graph input produces{hint}")


def _cycle(nodes: list[onnx.NodeProto], deps: list[dict[int, str]], left: set[int]) -> str:
    """A cycle among the nodes left unsorted, as `node A uses 'v' from node B, which ...`."""
    path, seen = [min(left)], {min(left): 0}
    while True:  # every node left has a dependency left (else it would have been sorted)
        dep, value = next((d, v) for d, v in sorted(deps[path[-1]].items()) if d in left)
        if dep in seen:
            loop = path[seen[dep]:] + [dep]
            break
        seen[dep] = len(path)
        path.append(dep)
    links = [f"uses '{deps[a][b]}' from {describe(nodes[b])}"
             for a, b in zip(loop, loop[1:], strict=False)]
    return f"the graph has a cycle: {describe(nodes[loop[0]])} " + ", which ".join(links)


def ordered_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """graph's nodes, each after the producers of its inputs; ModelImportError if impossible."""
    producers = _producers(graph)
    nodes = list(graph.node)
    made_by = {name: k for k, node in enumerate(nodes) for name in node.output if name}
    deps: list[dict[int, str]] = []  # per node: producing node -> a value it reads from it
    for node in nodes:
        mine: dict[int, str] = {}
        for i, name in enumerate(node.input):
            if name and name not in producers:
                raise ModelImportError(_unknown_input(node, i, name, producers))
            if name in made_by:
                mine.setdefault(made_by[name], name)
        deps.append(mine)
    users: list[list[int]] = [[] for _ in nodes]
    for k, mine in enumerate(deps):
        for d in mine:
            users[d].append(k)
    waiting = [len(mine) for mine in deps]
    ready = [k for k, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:  # Kahn's algorithm, lowest index first: a sorted graph keeps its order
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        raise ModelImportError(_cycle(nodes, deps, set(range(len(nodes))) - set(order)))
    return [nodes[k] for k in order]
