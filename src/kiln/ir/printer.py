"""The IR's text form: what a user reads to see what was compiled."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # graph.py imports this module to print a Module
    from .graph import Module


def _fmt_attr(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt_attr(v) for v in value) + "]"
    if isinstance(value, str):  # quoted and escaped: an external node's graph is JSON text
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def print_module(mod: Module) -> str:
    """Render a module as text: inputs, params, one line per node, outputs."""
    g = mod.graph
    lines = [f"module @{mod.name} {{"]
    for v in g.inputs:
        lines.append(f"  input %{v.name}: {v.type}")
    for v in g.params:
        bound = "" if v.name in mod.params else "  (unbound)"
        lines.append(f"  param %{v.name}: {v.type}  # {v.type.nbytes} bytes{bound}")
    for node in g.nodes:
        outs = ", ".join(f"%{v.name}" for v in node.outputs)
        args = ", ".join(f"%{v.name}" for v in node.inputs)
        attrs = ", ".join(f"{k}={_fmt_attr(a)}" for k, a in sorted(node.attrs.items()))
        types = ", ".join(str(v.type) for v in node.outputs)
        text = f"  {outs} = {node.op}({args})"
        if attrs:
            text += f" {{{attrs}}}"
        text += f" : {types}"
        if node.name:
            text += f"  # {node.name}"
        lines.append(text)
    outs = [f"%{v.name}" if v.name == n else f"%{v.name} as {n}"
            for v, n in zip(g.outputs, g.output_names, strict=True)]
    lines.append("  return " + ", ".join(outs))
    lines.append("}")
    return "\n".join(lines)
