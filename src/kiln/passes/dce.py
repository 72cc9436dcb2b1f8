"""Dead-code elimination: drop nodes and params that no graph output depends on."""

from __future__ import annotations

from ..ir import Module


def eliminate_dead_code(mod: Module) -> Module:
    """Remove unused nodes and params in place; return the module for chaining."""
    g = mod.graph
    live = {id(v) for v in g.outputs}
    kept = []
    for node in reversed(g.nodes):
        if any(id(v) in live for v in node.outputs):
            kept.append(node)
            live.update(id(v) for v in node.inputs)
    g.nodes = kept[::-1]
    g.params = [p for p in g.params if id(p) in live]
    names = {p.name for p in g.params}
    mod.params = {k: v for k, v in mod.params.items() if k in names}
    return mod
