"""Partitioning for external engines (docs/byoc.md): annotate nodes, group them into regions,
replace each region by one `external` node.

1. **Annotation.** Each node is described as JSON (`describe_node`) and offered to the
   backends in priority order; the first whose `supports` says yes takes it. Nodes that are
   already `external` stay as they are.
2. **Grouping**, one node at a time in graph (topological) order. A node kiln keeps is a
   group of its own. A node n taken by backend B joins every group of B that feeds it
   directly, except the groups that also reach n through another of its producers' groups;
   the groups it joins become one. Kept up to date for every group g is anc(g), the set of
   groups with a path to g in the graph of groups (an edge g -> h when a node of g feeds a
   node of h); when groups merge, every group they reach gets the merged group's ancestors
   (through the merged group, they now reach it too).
   *Why this never makes a cycle.* Before n the graph of groups is acyclic, and n has no
   readers yet. Let P be the groups of n's producers and S the ones it joins, M = S + {n}.
   A cycle through M would leave M from some g in S by an edge g -> x (x outside M) and
   come back into M: into n, only through a producer group p in P outside S that x is or
   reaches, so g would be in anc(p); or into another g' of S, so g would be in anc(g').
   Both are what the rule refuses (g is in anc(p) of no other producer group p of n).
   *Greedy.* A node joins each neighbouring region of its backend unless that would close
   a cycle, in graph order (not a search for the largest regions); the diamond a -> b,
   a -> c, b -> d, c -> d with a, b, d offloaded and c not gives the regions {a, b} and {d}
   (c needs a's result and d needs c's).
3. **Small regions** (fewer than `min_nodes` nodes) go back to kiln, and so do dead ones
   (nothing reads a value they make; dead-code elimination removes them): splitting a group
   into its nodes cannot make a cycle (the nodes themselves form a DAG).
4. **Replacement.** The regions and the remaining nodes are put in a topological order of
   the graph of groups (Kahn's algorithm, the group whose first node comes first goes
   first, so the order is deterministic and nothing moves that need not). Each region
   becomes one `external` node named `ext0`, `ext1`... in that order, reading the values it
   needs from outside (activations, then params, each in order of first use) and writing
   the values read outside it or returned by the graph: the same Value objects as before,
   so every reader and the graph's output names are untouched. Params stay in mod.params;
   the JSON graph names them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError, KilnError, VerificationError
from ..ir import Graph, Module, Node, Value
from ..ops.external import GRAPH_FORMAT, GRAPH_VERSION, attrs_to_json, write_graph

Supports = Callable[[dict[str, Any]], bool]


def _type_json(v: Value) -> dict[str, Any]:
    return {"shape": list(v.type.shape), "dtype": v.type.dtype}


def describe_node(node: Node, params: Container[str]) -> dict[str, Any]:
    """The JSON description of node that backends' `supports` sees (docs/byoc.md); params
    holds the names of the module's constants (mod.params, or the graph's param names)."""
    where = f"node '{node.name or node.op}' ({node.op})"
    return {"op": node.op, "attrs": attrs_to_json(node.attrs, where),
            "inputs": [{**_type_json(v), "constant": v.name in params} for v in node.inputs],
            "outputs": [_type_json(v) for v in node.outputs]}


def _annotate(g: Graph, backends: Sequence[tuple[str, Supports]],
              constants: Container[str]) -> list[str | None]:
    """Each node's backend: the first in backends that supports it, or None (kiln)."""
    chosen: list[str | None] = []
    for node in g.nodes:
        pick = None
        if node.op != "external":
            description = describe_node(node, constants)
            for name, supports in backends:
                try:
                    taken = supports(description)
                except KilnError:
                    raise
                except Exception as e:
                    raise BackendError(f"backend '{name}': supports() failed on node "
                                       f"'{node.name or node.op}' ({node.op}): {e}") from e
                if taken:
                    pick = name
                    break
        chosen.append(pick)
    return chosen


def _producers(g: Graph) -> list[list[int]]:
    """For each node, the indices of the nodes producing its inputs (once each, in order)."""
    index = {id(v): i for i, node in enumerate(g.nodes) for v in node.outputs}
    return [list(dict.fromkeys(index[id(v)] for v in node.inputs if id(v) in index))
            for node in g.nodes]


@dataclass(eq=False)
class _Group:
    """Nodes (indices, ascending) that run as one unit; a group's id is its first node's."""

    members: list[int]
    backend: str | None
    anc: int = 0  # bit k set: group k has a path to this group


def _merge(groups: dict[int, _Group], owner: list[int], joined: list[int], node: int,
           anc: int) -> None:
    """Make node and the groups joined one group (the earliest id), whose ancestors are anc,
    and give its ancestors to every group it reaches."""
    target = min(joined)
    merged = groups[target]
    mask = 0
    owner.append(target)
    for k in joined:
        mask |= 1 << k
        if k != target:
            for j in groups[k].members:
                owner[j] = target
            merged.members += groups.pop(k).members
    merged.members = sorted([*merged.members, node])
    unchanged = len(joined) == 1 and anc == merged.anc
    merged.anc = anc
    if unchanged:
        return
    for group in groups.values():
        if group is not merged and group.anc & mask:
            group.anc = (group.anc & ~mask) | (1 << target) | anc


def _group(producers: list[list[int]], backend_of: list[str | None]) -> list[_Group]:
    """The groups of step 2 (module docstring), in the order of their first nodes."""
    groups: dict[int, _Group] = {}
    owner: list[int] = []  # node index -> its group's id
    for i, backend in enumerate(backend_of):
        around = list(dict.fromkeys(owner[j] for j in producers[i]))
        joined = [] if backend is None else [
            k for k in around if groups[k].backend == backend
            and not any(groups[p].anc >> k & 1 for p in around if p != k)]
        anc = 0
        for k in around:
            anc |= groups[k].anc if k in joined else (1 << k) | groups[k].anc
        if joined:
            _merge(groups, owner, joined, i, anc)
        else:
            groups[i] = _Group([i], backend, anc)
            owner.append(i)
    return sorted(groups.values(), key=lambda grp: grp.members[0])


def _order(units: list[list[int]], producers: list[list[int]]) -> list[list[int]]:
    """units (node index lists, sorted by first node) in a topological order: Kahn's
    algorithm taking the ready unit whose first node comes first."""
    unit_of = {j: u for u, members in enumerate(units) for j in members}
    after: list[set[int]] = [set() for _ in units]
    waiting = [0] * len(units)
    for u, members in enumerate(units):
        for q in {unit_of[p] for j in members for p in producers[j]} - {u}:
            after[q].add(u)
            waiting[u] += 1
    ready = [u for u in range(len(units)) if not waiting[u]]
    heapq.heapify(ready)
    order = []
    while ready:
        u = heapq.heappop(ready)
        order.append(units[u])
        for v in after[u]:
            waiting[v] -= 1
            if not waiting[v]:
                heapq.heappush(ready, v)
    if len(order) != len(units):
        raise VerificationError("partition: its regions form a cycle (a kiln bug)")
    return order


def _external(members: list[Node], backend: str, function: str, param_ids: set[int],
              read_outside: set[int]) -> Node:
    """The external node replacing members (in execution order), with its JSON graph;
    read_outside holds the ids of the values it returns."""
    inside = {id(v) for n in members for v in n.outputs}
    outside = list({id(v): v for n in members for v in n.inputs if id(v) not in inside}.values())
    activations = [v for v in outside if id(v) not in param_ids]
    constants = [v for v in outside if id(v) in param_ids]
    nodes: list[dict[str, Any]] = []
    refs: dict[int, list[int]] = {}
    for kind, values in (("input", activations), ("constant", constants)):
        for v in values:
            refs[id(v)] = [len(nodes), 0]
            nodes.append({"op": kind, "name": v.name, **_type_json(v)})
    outputs: list[Value] = []
    for n in members:
        where = f"node '{n.name or n.op}' ({n.op})"
        nodes.append({"op": n.op, "attrs": attrs_to_json(n.attrs, where),
                      "inputs": [refs[id(v)] for v in n.inputs],
                      "outputs": [_type_json(v) for v in n.outputs]})
        for k, v in enumerate(n.outputs):
            refs[id(v)] = [len(nodes) - 1, k]
            if id(v) in read_outside:
                outputs.append(v)
    graph = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "function": function,
             "backend": backend, "nodes": nodes,
             "inputs": list(range(len(activations))),
             "constants": list(range(len(activations), len(outside))),
             "outputs": [refs[id(v)] for v in outputs]}
    node = Node("external", [*activations, *constants], outputs,
                {"backend": backend, "function": function, "graph": write_graph(graph)},
                function)
    for v in outputs:
        v.producer = node
    return node


def _function_names(g: Graph) -> Callable[[], str]:
    """A source of function names ext0, ext1..., skipping those the module already uses."""
    taken = {n.attrs["function"] for n in g.nodes if n.op == "external"}
    count = 0

    def next_name() -> str:
        nonlocal count
        while f"ext{count}" in taken:
            count += 1
        count += 1
        return f"ext{count - 1}"

    return next_name


def _units(groups: list[_Group], min_nodes: int) -> tuple[list[list[int]], dict[int, str]]:
    """The units to order (node index lists, by first node): the regions kept, and every
    other node alone; and each region's backend, by its first node."""
    units: list[list[int]] = []
    regions: dict[int, str] = {}
    for group in groups:
        if group.backend is not None and len(group.members) >= min_nodes:
            regions[group.members[0]] = group.backend
            units.append(group.members)
        else:
            units.extend([j] for j in group.members)
    return sorted(units, key=lambda members: members[0]), regions


def partition(mod: Module, backends: Sequence[tuple[str, Supports]], *,
              min_nodes: int = 1) -> Module:
    """Replace the regions of mod that backends (name, supports) take, in priority order, by
    external nodes; regions of fewer than min_nodes nodes, or whose values nothing reads,
    stay with kiln. Changes mod in place and returns it, like the other passes."""
    g = mod.graph
    backend_of = _annotate(g, backends, {p.name for p in g.params})
    producers = _producers(g)
    units, regions = _units(_group(producers, backend_of), min_nodes)
    readers: dict[int, set[int]] = {}
    for i, node in enumerate(g.nodes):
        for v in node.inputs:
            readers.setdefault(id(v), set()).add(i)
    returned = {id(v) for v in g.outputs}
    param_ids = {id(p) for p in g.params}
    next_name = _function_names(g)
    nodes = []
    for members in _order(units, producers):
        region = [g.nodes[j] for j in members]
        read_outside = {id(v) for n in region for v in n.outputs
                        if id(v) in returned or readers.get(id(v), set()) - set(members)}
        if members[0] in regions and read_outside:
            nodes.append(_external(region, regions[members[0]], next_name(), param_ids,
                                   read_outside))
        else:
            nodes.extend(region)
    g.nodes = nodes
    return mod
