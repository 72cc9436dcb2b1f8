"""Constant folding: evaluate nodes whose inputs are all bound params, using the op reference.

Results over the folding limit (ops/evaluate.py) are not computed: their nodes stay kernels.
"""

from __future__ import annotations

from ..ir import Module
from ..ops import get_op
from ..ops.evaluate import evaluate, fold_refusal


def fold_constants(mod: Module) -> Module:
    """Replace every node with all-constant inputs (and results within the limit) by params."""
    g = mod.graph
    kept = []
    for node in g.nodes:
        where = f"node '{node.name or node.op}' ({node.op})"
        types = [v.type for v in node.outputs]
        if (not node.inputs or not all(v.name in mod.params for v in node.inputs)
                or fold_refusal(where, types)):
            kept.append(node)
            continue
        arrays = [mod.params[v.name] for v in node.inputs]
        results = evaluate(get_op(node.op).reference, arrays, node.attrs, types, where)
        for value, result in zip(node.outputs, results, strict=True):
            value.producer = None
            g.params.append(value)
            mod.params[value.name] = result
    g.nodes = kept
    return mod
