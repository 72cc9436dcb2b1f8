"""SVG for the viz page: the laid-out graph and the memory-plan timeline.

Every string that came from the manifest goes through esc(). Elements the page's script
highlights together carry data-id and data-links (ids such as k3, b5, e7: never names).
"""

from __future__ import annotations

import html
from typing import Any

from ..text import size_text
from .graph import LINE_H, PAD, Graph, Node, arena_span

MEM_W, MEM_H, MEM_LEFT, MEM_RIGHT, MEM_BOTTOM, MEM_TOP = 520, 330, 62, 10, 34, 8
X_TICKS = 10
Links = dict[str, set[str]]


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def _attrs(**values: Any) -> str:
    """Escaped attributes: class_ -> class, data_id -> data-id; None values are left out."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in values.items()
                   if v is not None)


def link(links: Links, a: str, b: str) -> None:
    links.setdefault(a, set()).add(b)
    links.setdefault(b, set()).add(a)


def graph_links(g: Graph) -> Links:
    """Hovering a node lights its edges and neighbours; hovering an edge, its two ends."""
    links: Links = {}
    for j, e in enumerate(g.edges):
        link(links, e.src, e.dst)
        link(links, e.src, f"e{j}")
        link(links, e.dst, f"e{j}")
    return links


def buffer_links(spec: dict, links: Links) -> None:
    """Link each buffer to the nodes that touch its bytes while it is live."""
    buffers = spec.get("memory", {}).get("buffers", [])
    n = len(spec["kernels"])
    touches = [(f"i{i}", -1, t.get("loc")) for i, t in enumerate(spec["inputs"])]
    touches += [(f"k{k}", k, loc) for k, kern in enumerate(spec["kernels"])
                for loc in kern.get("args", [])]
    touches += [(f"o{i}", n, t.get("loc")) for i, t in enumerate(spec["outputs"])]
    for node_id, step, loc in touches:
        span = arena_span(loc)
        for j, b in enumerate(buffers):
            lo, hi = int(b["offset"]), int(b["offset"]) + int(b["size"])
            if span and span[0] < hi and lo < span[1] and b["first"] <= step <= b["last"]:
                link(links, node_id, f"b{j}")


def _path(points: list[tuple[float, float]]) -> str:
    """Straight down a lane; a smooth S-curve between layers."""
    (x, y), d = points[0], [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for nx, ny in points[1:]:
        if abs(nx - x) < 0.5:
            d.append(f"L{nx:.1f},{ny:.1f}")
        else:
            mid = (y + ny) / 2
            d.append(f"C{x:.1f},{mid:.1f} {nx:.1f},{mid:.1f} {nx:.1f},{ny:.1f}")
        x, y = nx, ny
    return " ".join(d)


def _line_class(node: Node, i: int) -> str:
    if node.kind == "kernel":
        return "title" if i == 0 else "shape" if i == 1 else "weight"
    return "kind" if i == 0 else "title" if i == 1 else "shape"


def _node_svg(node: Node, links: Links) -> str:
    kernel = node.kind == "kernel"
    attrs = _attrs(class_=f"node {node.kind}", data_id=node.id, data_tip=node.tip,
                   data_links=" ".join(sorted(links.get(node.id, ()))),
                   data_kernel=node.id[1:] if kernel else None,
                   style=f"--h:{node.hue}" if kernel else None,
                   transform=f"translate({node.x:.1f},{node.y:.1f})")
    out = [f"<g{attrs}>",
           f'<rect class="box" width="{node.w}" height="{node.h}" rx="{6 if kernel else 14}"/>']
    if kernel:
        out.append(f'<rect class="stripe" width="5" height="{node.h}" rx="2"/>')
    for i, line in enumerate(node.lines):
        css = _line_class(node, i)
        out.append(f'<text class="{css}" x="{12 if kernel else 14}" y="{PAD + LINE_H * i + 11}">'
                   f'{esc(_clip(line, 27 if css == "title" else 30))}</text>')
    out.append("</g>")
    return "".join(out)


def graph_svg(g: Graph, links: Links, m: int) -> str:
    """The laid-out graph: edges first (under the boxes), then one group per node."""
    out = [f'<svg class="graph" width="{g.width:.0f}" height="{g.height:.0f}" '
           f'viewBox="0 0 {g.width:.0f} {g.height:.0f}"><defs><marker id="arrow{m}" '
           f'viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           f'orient="auto"><path d="M0,0L8,4L0,8z"/></marker></defs>']
    for j, e in enumerate(g.edges):
        d = _path(e.points)
        attrs = _attrs(class_="edge", data_id=f"e{j}", data_tip=e.tip,
                       data_links=f"{e.src} {e.dst}")
        out.append(f'<g{attrs}><path class="hit" d="{d}"/>'
                   f'<path class="line" d="{d}" marker-end="url(#arrow{m})"/></g>')
    out += [_node_svg(n, links) for n in g.nodes.values()]
    out.append("</svg>")
    return "".join(out)


def _step_name(step: int, n: int) -> str:
    return "input" if step < 0 else "output" if step >= n else f"#{step}"


def _memory_axes(top: int, n: int, x, y) -> list[str]:
    plot_w, plot_h = MEM_W - MEM_LEFT - MEM_RIGHT, MEM_H - MEM_BOTTOM - MEM_TOP
    out = [f'<rect class="plot" x="{MEM_LEFT}" y="{MEM_TOP}" width="{plot_w}" '
           f'height="{plot_h}"/>']
    for q in range(5):
        off = y(top * q / 4)
        out.append(f'<line class="grid" x1="{MEM_LEFT}" x2="{MEM_LEFT + plot_w}" y1="{off:.1f}" '
                   f'y2="{off:.1f}"/><text class="axis" text-anchor="end" x="{MEM_LEFT - 6}" '
                   f'y="{off + 4:.1f}">{esc(size_text(top * q / 4))}</text>')
    stride = max(1, -(-n // X_TICKS))
    cw = x(0) - x(-1)
    steps = [s for s in range(0, n, stride) if x(s) - x(-1) > 20 and x(n) - x(s) > 24]
    for step in [-1, *steps, n]:
        label = "in" if step < 0 else "out" if step >= n else str(step)
        out.append(f'<text class="axis" text-anchor="middle" x="{x(step) + cw / 2:.1f}" '
                   f'y="{MEM_TOP + plot_h + 15}">{label}</text>')
    out.append(f'<text class="axis" x="{MEM_LEFT + plot_w / 2:.1f}" y="{MEM_H - 3}" '
               'text-anchor="middle">kernel step</text>')
    return out


def memory_svg(spec: dict, links: Links) -> str:
    """The plan as a timeline: one rect per buffer, [first, last] x [offset, offset+size]."""
    memory, n = spec.get("memory", {}), len(spec["kernels"])
    buffers = memory.get("buffers", [])
    top = max([int(spec.get("arena_bytes", 0))] +
              [int(b["offset"]) + int(b["size"]) for b in buffers]) or 1
    plot_w, plot_h = MEM_W - MEM_LEFT - MEM_RIGHT, MEM_H - MEM_BOTTOM - MEM_TOP

    def x(step: float) -> float:  # steps run from -1 (inputs) to n (outputs)
        return MEM_LEFT + (step + 1) * plot_w / (n + 2)

    def y(offset: float) -> float:
        return MEM_TOP + plot_h * (1 - offset / top)

    out = [f'<svg class="memory" viewBox="0 0 {MEM_W} {MEM_H}">', *_memory_axes(top, n, x, y)]
    for j, b in enumerate(buffers):
        first, last = int(b["first"]), int(b["last"])
        lo, size = int(b["offset"]), int(b["size"])
        kind = "in" if first < 0 else "out" if last >= n else "mid"
        tip = (f"{b['tensor']}\n{size_text(size)} at offset {lo}\n"
               f"live {_step_name(first, n)} .. {_step_name(last, n)}")
        attrs = _attrs(class_=f"buf {kind}", data_buffer=j, data_id=f"b{j}", data_tip=tip,
                       data_links=" ".join(sorted(links.get(f"b{j}", ()))),
                       style=f"--h:{j * 137.508 % 360:.0f}")
        out.append(f'<rect{attrs} x="{x(first):.1f}" y="{y(lo + size):.1f}" '
                   f'width="{x(last + 1) - x(first):.1f}" '
                   f'height="{max(y(lo) - y(lo + size), 1.5):.1f}"/>')
    out.append("</svg>")
    return "".join(out)
