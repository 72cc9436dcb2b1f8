"""The IR: a typed dataflow graph of operator nodes over named tensor values."""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, ShapeError
from .printer import print_module
from .types import TensorType


def unique_name(hint: str, taken: Container[str]) -> str:
    """hint, or the first of hint_1, hint_2... not in taken: a name for a new value."""
    name, i = hint, 0
    while name in taken:
        i += 1
        name = f"{hint}_{i}"
    return name


class Value:
    """A tensor in the graph: a model input, a param (weight) or a node output."""

    __slots__ = ("name", "type", "producer")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One operator application: op name, input and output values, attributes."""

    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(eq=False)
class Graph:
    """A function from inputs (and params) to outputs; nodes are kept in topological order."""

    inputs: list[Value] = field(default_factory=list)
    params: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    # The names the outputs are known by (a graph output may be an input or a param value).
    output_names: list[str] = field(default_factory=list)

    def consumers(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it (in graph order)."""
        users: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                users.setdefault(v, []).append(node)
        return users

    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every reader of old (nodes and graph outputs) read new instead."""
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield from node.outputs


@dataclass(eq=False)
class Module:
    """A compilation unit: the main graph plus the param values bound to it (name -> array)."""

    graph: Graph
    params: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "default"
    # Where the model came from (format, producer, digest of the source file): recorded in
    # the library as provenance.
    source: dict[str, str] = field(default_factory=dict)

    def bind(self, params: dict[str, np.ndarray] | None) -> Module:
        """Return a module whose params are bound to arrays, checking names, shapes and dtypes
        (a name the module has no param of is an InputError: a misspelt weight is never lost)."""
        bound = dict(self.params)
        known = {p.name: p for p in self.graph.params}
        unknown = sorted(set(params or {}) - set(known))
        if unknown:
            raise InputError(f"module '{self.name}' has no params {unknown}; its params are "
                             f"{sorted(known)}")
        for name, array in (params or {}).items():
            array = np.asarray(array)
            want = known[name].type
            if TensorType.of(array) != want:
                raise ShapeError(f"param '{name}': got {TensorType.of(array)}, expected {want}")
            bound[name] = array
        missing = [p.name for p in self.graph.params if p.name not in bound]
        if missing:
            raise ShapeError(f"params without a value: {missing}")
        return Module(self.graph, bound, self.name, dict(self.source))

    def copy(self) -> Module:
        """A copy whose graph can be changed without touching this one (arrays are shared)."""
        g = self.graph
        new: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            if id(v) not in new:
                new[id(v)] = Value(v.name, v.type)
            return new[id(v)]

        graph = Graph([clone(v) for v in g.inputs], [clone(v) for v in g.params])
        for node in g.nodes:
            copy = Node(node.op, [clone(v) for v in node.inputs], [clone(v) for v in node.outputs],
                        dict(node.attrs), node.name)
            for v in copy.outputs:
                v.producer = copy
            graph.nodes.append(copy)
        graph.outputs = [clone(v) for v in g.outputs]
        graph.output_names = list(g.output_names)
        return Module(graph, dict(self.params), self.name, dict(self.source))

    def __str__(self) -> str:
        return print_module(self)
