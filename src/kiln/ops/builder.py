"""GraphBuilder: adds nodes with their attributes resolved and their types inferred by the op
definitions, folding those whose inputs are all constant (and whose results are within the
folding limit of ops/evaluate.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import KilnError, ShapeError
from ..ir.graph import Graph, Module, Node, Value, unique_name
from ..ir.types import TensorType
from .evaluate import evaluate, fold_refusal
from .registry import get_op


class GraphBuilder:
    """Builds a Graph incrementally; the frontend and the passes both use it."""

    def __init__(self) -> None:
        self.graph = Graph()
        self.constants: dict[str, np.ndarray] = {}
        # Values computable from constants alone but left to run time, with the reason (their
        # size, or an input's): a converter needing one at compile time names it.
        self.unfolded: dict[str, str] = {}
        self._names: set[str] = set()

    def fresh_name(self, hint: str) -> str:
        """A value name not used yet, derived from hint."""
        name = unique_name(hint or "v", self._names)
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type)
        self.graph.inputs.append(value)
        return value

    def add_constant(self, name: str, array: np.ndarray) -> Value:
        """A param whose value is known now (a weight or a folded constant)."""
        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes scalars 1-d
        value = Value(self.fresh_name(name), TensorType.of(array))
        self.graph.params.append(value)
        self.constants[value.name] = array
        return value

    def constant_of(self, value: Value) -> np.ndarray | None:
        """The array behind value if it is known at compile time, else None."""
        return self.constants.get(value.name)

    def emit(
        self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, *,
        name: str = "", out_names: list[str] | None = None, fold: bool = True,
    ) -> list[Value]:
        """Add `op(inputs)`, its undeclared attrs set to the op's defaults; if every input is
        constant, evaluate it now and return constants, unless a result is over the folding
        limit (then the node stays, in self.unfolded)."""
        opdef = get_op(op)
        where = f"node '{name}' ({op})" if name else f"op {op}"
        attrs = opdef.resolve_attrs(attrs or {}, where)
        try:
            out_types = opdef.infer([v.type for v in inputs], attrs)
        except KilnError as e:
            raise type(e)(f"{where}: {e}") from e
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise ShapeError(f"{where}: {e}") from e
        names = out_names or [f"{name or op}_out{i}" for i in range(len(out_types))]
        computable = fold and all(v.name in self.constants or v.name in self.unfolded
                                  for v in inputs)
        refusal = self._refusal(inputs, out_types, where) if computable else None
        if computable and refusal is None:
            arrays = [self.constants[v.name] for v in inputs]
            results = evaluate(opdef.reference, arrays, attrs, out_types, where)
            return [self.add_constant(n, r) for n, r in zip(names, results, strict=True)]
        outputs = [Value(self.fresh_name(n), t) for n, t in zip(names, out_types, strict=True)]
        node = Node(op, list(inputs), outputs, attrs, name)
        for v in outputs:
            v.producer = node
            if refusal:
                self.unfolded[v.name] = refusal
        self.graph.nodes.append(node)
        return outputs

    def _refusal(self, inputs: list[Value], types: list[TensorType], where: str) -> str | None:
        """Why a node computable from constants is not folded (an input's reason, or a result's
        size), or None when it is folded."""
        inherited = [self.unfolded[v.name] for v in inputs if v.name in self.unfolded]
        return inherited[0] if inherited else fold_refusal(where, types)

    def finish(self, outputs: list[Value], output_names: list[str] | None = None,
               name: str = "default") -> Module:
        """Close the graph with its outputs; return the module (params unbound)."""
        self.graph.outputs = list(outputs)
        self.graph.output_names = list(output_names or [v.name for v in outputs])
        return Module(self.graph, {}, name)
