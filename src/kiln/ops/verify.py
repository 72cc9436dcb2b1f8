"""The IR verifier: checks graph invariants against the op definitions; tests run it after
every pass."""

from __future__ import annotations

from ..errors import VerificationError
from ..ir.graph import Module, Node
from .registry import get_op


def _check_attrs(node: Node, where: str) -> None:
    """A node carries exactly the attributes its op declares (the builder fills defaults)."""
    declared = set(get_op(node.op).attrs)
    if set(node.attrs) != declared:
        raise VerificationError(f"{where}: attributes {sorted(node.attrs)}, but op {node.op} "
                                f"declares {sorted(declared)}")


def verify(mod: Module) -> None:
    """Raise VerificationError if the graph is not well formed and correctly typed."""
    g = mod.graph
    defined: set[int] = set()
    names: set[str] = set()
    for v in list(g.inputs) + list(g.params):
        if v.producer is not None:
            raise VerificationError(f"input/param %{v.name} has a producer")
        defined.add(id(v))
        if v.name in names:
            raise VerificationError(f"value name %{v.name} defined twice")
        names.add(v.name)
    for node in g.nodes:
        where = f"node {node.name or node.op} ({node.op})"
        for v in node.inputs:
            if id(v) not in defined:
                raise VerificationError(f"{where}: input %{v.name} used before definition")
        _check_attrs(node, where)
        want = get_op(node.op).infer([v.type for v in node.inputs], node.attrs)
        got = [v.type for v in node.outputs]
        if want != got:
            raise VerificationError(f"{where}: output types {got}, inferred {want}")
        for v in node.outputs:
            if v.producer is not node:
                raise VerificationError(f"{where}: output %{v.name} has the wrong producer")
            if v.name in names:
                raise VerificationError(f"value name %{v.name} defined twice")
            names.add(v.name)
            defined.add(id(v))
    for v in g.outputs:
        if id(v) not in defined:
            raise VerificationError(f"graph output %{v.name} is never defined")
