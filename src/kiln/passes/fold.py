"""Constant folding: evaluate nodes whose inputs are all bound params, using the op reference."""

from __future__ import annotations

import numpy as np

from ..ir import Module
from ..ops import get_op


def fold_constants(mod: Module) -> Module:
    """Replace every node with all-constant inputs by params holding its results."""
    g = mod.graph
    kept = []
    for node in g.nodes:
        if not node.inputs or not all(v.name in mod.params for v in node.inputs):
            kept.append(node)
            continue
        results = get_op(node.op).reference([mod.params[v.name] for v in node.inputs], node.attrs)
        for value, result in zip(node.outputs, results, strict=True):
            value.producer = None
            g.params.append(value)
            mod.params[value.name] = np.asarray(result, order="C")
    g.nodes = kept
    return mod
