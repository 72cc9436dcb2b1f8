"""kiln viz: one self-contained HTML page showing what a library holds.

For each model: a header (executor, inputs/outputs, kernels, weights, memory), the graph as
compiled (one box per kernel, laid out as a layered DAG; graph.py) and the memory plan as a
timeline (x = kernel step, y = arena offset; draw.py). It reads only the manifest, escapes
every string from it, and the page fetches nothing: inline CSS, SVG and a little JS for
tooltips and highlighting (assets.py), under a content security policy that forbids loads.
"""

from __future__ import annotations

from collections import Counter

from ..text import size_text
from .assets import CSP, CSS, JS, ONERROR
from .draw import buffer_links, esc, graph_links, graph_svg, memory_svg
from .graph import layout, param_bytes, read_graph, tensor_text

__all__ = ["render_html"]

WIDE_GRAPH = 840  # px; a graph wider than this gets the page's full width


def _tensor_list(tensors: list[dict]) -> str:
    return ", ".join(f"<code>{esc(t['name'])}</code> {esc(tensor_text(t['dtype'], t['shape']))}"
                     for t in tensors) or "-"


def _facts(spec: dict, regions: list[dict]) -> str:
    """The model's header: executor, inputs/outputs, kernels, weights, memory."""
    params, kernels = spec.get("params", []), spec["kernels"]
    memory = spec.get("memory", {})
    peak, unplanned = int(spec.get("arena_bytes", 0)), int(memory.get("unplanned_bytes", 0))
    saved = f" ({100 * (1 - peak / unplanned):.0f}% less)" if unplanned else ""
    apart = " (supplied at run time)" if any(p.get("weight") is None for p in params) else ""
    weight_bytes = sum(param_bytes(p, regions) for p in params)
    ops = Counter(k["label"] for k in kernels).most_common()
    chips = " ".join(f'<span class="chip">{esc(label)} \u00d7{n}</span>' for label, n in ops)
    rows = [("executor", esc(spec.get("executor", "?"))),
            ("inputs", _tensor_list(spec["inputs"])),
            ("outputs", _tensor_list(spec["outputs"])),
            ("kernels", f"{len(kernels)} {chips}"),
            ("weights", f"{len(params)} tensors, {esc(size_text(weight_bytes))}{apart}"),
            ("memory", f"peak {esc(size_text(peak))} vs {esc(size_text(unplanned))} without "
                       f"reuse{saved}, {len(memory.get('buffers', []))} buffers")]
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _model_section(m: int, name: str, spec: dict, regions: list[dict]) -> str:
    graph = read_graph(spec, regions)
    layout(graph)
    links = graph_links(graph)
    buffer_links(spec, links)
    n_buffers = len(spec.get("memory", {}).get("buffers", []))
    wide = " wide" if graph.width > WIDE_GRAPH else ""  # then the plan goes above the graph
    return (f'<section class="model" data-model="{esc(name)}" '
            f'data-kernels="{len(spec["kernels"])}" data-buffers="{n_buffers}">'
            f"<h2>model <code>{esc(name)}</code></h2>{_facts(spec, regions)}"
            f'<div class="panes{wide}"><div class="pane"><h3>Graph as compiled</h3>'
            '<p class="hint">one box per kernel (its fused ops), its weights inside; hover '
            f'for details</p><div class="scroll">{graph_svg(graph, links, m)}</div></div>'
            '<div class="pane mem"><h3>Memory plan</h3><p class="hint">x: kernel step, y: '
            "arena offset; one rect per buffer while it is live</p>"
            f"{memory_svg(spec, links)}</div></div></section>")


def render_html(manifest: dict, title: str) -> str:
    """One self-contained HTML page (inline CSS, SVG and JS; no network) for a manifest."""
    regions = manifest.get("weights", [])
    models = manifest.get("models", {})
    target = manifest.get("target", {})
    sub = (f"kiln {manifest.get('kiln_version', '?')} \u00b7 {target.get('triple', '?')} "
           f"({', '.join(target.get('features', [])) or '-'})")
    sections = [_model_section(m, name, models[name], regions)
                for m, name in enumerate(sorted(models))]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f'<body data-models="{len(sections)}"><script>{ONERROR}</script>'
            f"<header><h1>{esc(title)}</h1><p>{esc(sub)}</p></header>{''.join(sections)}"
            f'<div id="tip" hidden></div><script>{JS}</script></body></html>\n')
