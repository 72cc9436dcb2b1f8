"""The graph as compiled, read from a manifest model entry, and its layered layout.

Nodes are the model inputs, the kernels (in execution order) and the model outputs. An edge
joins the node that produced a tensor to each kernel or output that reads it; a tensor with
no producer by name (a view such as a reshape, which has no kernel) is traced to whoever
last wrote its arena bytes. Layout: layer = longest path from the inputs; within a layer,
first appearance; an edge spanning layers runs down a vertical lane beside the boxes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text import size_text

BOX_W, H_GAP, V_GAP, LINE_H, PAD, LANE_GAP = 216, 18, 40, 15, 8, 12
MAX_WEIGHT_ROWS = 3
PLACEMENT_PASSES = 6
# The IR printer's short dtype names back to NumPy names: kiln.ir.types.DTYPE_SHORT inverted
# (a test keeps them equal; the viz reads manifests and imports nothing of the compiler).
_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i8": "int8", "i16": "int16",
           "i32": "int32", "i64": "int64", "u8": "uint8", "u16": "uint16", "u32": "uint32",
           "u64": "uint64", "bool": "bool"}
_IR_TYPE = re.compile(r"(\w+)\[[\d,]*\]")


def tensor_text(dtype: str, shape: list) -> str:
    """`float32 1x16x32x32` (with a real times sign); `scalar` for rank 0."""
    return f"{dtype} {chr(0xd7).join(str(d) for d in shape) if shape else 'scalar'}"


def param_bytes(p: dict, regions: list[dict]) -> int:
    """A weight's stored size (its region), or what it will take when supplied apart."""
    w = p.get("weight")
    if isinstance(w, int) and 0 <= w < len(regions):
        return int(regions[w].get("nbytes", 0))
    return int(np.prod(p.get("shape", []), dtype=np.int64)) * np.dtype(p["dtype"]).itemsize


def arena_span(loc: Any) -> tuple[int, int] | None:
    """The arena bytes [lo, hi) of a location, or None for a weight."""
    if isinstance(loc, dict) and "arena" in loc:
        return int(loc["arena"]), int(loc["arena"]) + int(loc.get("nbytes", 0))
    return None


@dataclass
class Node:
    id: str  # i<n> (model input), k<n> (kernel), o<n> (model output)
    kind: str  # input, kernel, output
    order: int  # first appearance: inputs, then kernels, then outputs
    lines: list[str] = field(default_factory=list)
    tip: str = ""
    hue: int = 0
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = BOX_W
    h: float = 0.0


@dataclass
class Edge:
    src: str
    dst: str
    tip: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Graph:
    nodes: dict[str, Node]
    edges: list[Edge]
    width: float = 0.0
    height: float = 0.0


def _ir_dtypes(ir: str) -> dict[str, str]:
    """Tensor name -> dtype, from the IR text's node lines (`%a = op(...) : f32[1,2]`)."""
    dtypes = {}
    for line in ir.splitlines():
        if not line.startswith("  %"):
            continue
        lhs, sep, rhs = line[2:].partition(" = ")
        types = _IR_TYPE.findall(rhs.rpartition(" : ")[2].split("  # ")[0])
        names = [n.removeprefix("%") for n in lhs.split(", %")]
        if sep and len(names) == len(types):
            dtypes.update({n: _DTYPES.get(t, t) for n, t in zip(names, types, strict=True)})
    return dtypes


def _covering_writers(lo: int, hi: int, writers: list[tuple[str, int, int]]) -> list[str]:
    """The latest writers of the bytes [lo, hi); writers are (id, lo, hi) in execution order."""
    uncovered, found = [(lo, hi)], []
    for wid, wlo, whi in reversed(writers):
        rest = []
        for a, b in uncovered:
            if whi <= a or wlo >= b:
                rest.append((a, b))
                continue
            if wid not in found:
                found.append(wid)
            rest += [(a, wlo)] * (a < wlo) + [(whi, b)] * (whi < b)
        uncovered = rest
        if not uncovered:
            break
    return found


class _Producers:
    """Who produced a tensor: by name, else whoever last wrote its arena bytes."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}
        self.writers: list[tuple[str, int, int]] = []

    def wrote(self, node_id: str, name: str, loc: Any) -> None:
        if name:
            self.by_name[name] = node_id
        if span := arena_span(loc):
            self.writers.append((node_id, *span))

    def of(self, name: str, loc: Any) -> list[str]:
        if name in self.by_name:
            return [self.by_name[name]]
        span = arena_span(loc)
        return _covering_writers(*span, self.writers) if span else []


def _weight_rows(sizes: list[tuple[dict, int]]) -> list[str]:
    rows = [f"w {tensor_text('', p.get('shape', [])).strip()} \u00b7 {size_text(n)}"
            for p, n in sizes]
    if len(rows) > MAX_WEIGHT_ROWS:
        rest = sizes[MAX_WEIGHT_ROWS - 1:]
        rows = rows[:MAX_WEIGHT_ROWS - 1] + [
            f"+{len(rest)} more \u00b7 {size_text(sum(n for _, n in rest))}"]
    return rows


def _kernel_node(k: int, kern: dict, outs: list[str], weights: list[tuple[dict, int]]) -> Node:
    names = kern.get("outputs", [])
    tip = [f"kernel #{k}: {kern['label']}", f"node {kern.get('node', '')}",
           f"func {kern.get('func', '')}", *(f"out {n}: {t}" for n, t in
                                                 zip(names, outs, strict=False))]
    tip += [f"weight {p['name']}: {tensor_text(p['dtype'], p['shape'])}, {size_text(n)}"
            for p, n in weights]
    lines = [f"#{k} {kern['label']}", ", ".join(outs) or "-", *_weight_rows(weights)]
    hue = zlib.crc32(kern["label"].split("+")[0].encode()) % 360
    return Node(f"k{k}", "kernel", 0, lines, "\n".join(tip), hue)


def _tensor_node(node_id: str, kind: str, t: dict) -> Node:
    text = tensor_text(t["dtype"], t["shape"])
    return Node(node_id, kind, 0, [kind, t["name"], text], f"model {kind} {t['name']}\n{text}")


def _kernel_io(kern: dict) -> tuple[list[str], list[str], list[Any]]:
    """A kernel's input and output tensor names and its arg locations (inputs first). Without
    the names (older manifests), a weight is named by its location and the rest stay unnamed,
    to be traced by arena bytes; the outputs are the last len(shapes) args."""
    args = list(kern.get("args", []))
    if "inputs" in kern and "outputs" in kern:
        ins, outs = list(kern["inputs"]), list(kern["outputs"])
    else:
        n_out = min(len(kern.get("shapes", [])), len(args))
        ins = [a.get("param", "") if isinstance(a, dict) else "" for a in args[:len(args) - n_out]]
        outs = [""] * n_out
    return ins, outs, args + [None] * (len(ins) + len(outs) - len(args))


def read_graph(spec: dict, regions: list[dict]) -> Graph:
    """The nodes (inputs, kernels, outputs) of a manifest model entry and the edges between."""
    params = {p["name"]: p for p in spec.get("params", [])}
    dtypes = {**_ir_dtypes(spec.get("ir", "")),
              **{t["name"]: t["dtype"] for t in spec["inputs"] + spec["outputs"]}}
    texts = {t["name"]: tensor_text(t["dtype"], t["shape"])
             for t in spec["inputs"] + spec["outputs"]}
    nodes, edges, producers = {}, [], _Producers()

    def add(node: Node) -> None:
        node.order = len(nodes)
        nodes[node.id] = node

    def connect(dst: str, name: str, loc: Any) -> None:
        for src in producers.of(name, loc):
            if not any(e.src == src and e.dst == dst for e in edges):
                text = texts.get(name, "(a view)") if name else "(unnamed)"
                edges.append(Edge(src, dst, f"tensor {name}\n{text}"))

    for i, t in enumerate(spec["inputs"]):
        add(_tensor_node(f"i{i}", "input", t))
        producers.wrote(f"i{i}", t["name"], t.get("loc"))
    for k, kern in enumerate(spec["kernels"]):
        ins, outs, args = _kernel_io(kern)
        weights = [(params[n], param_bytes(params[n], regions)) for n in ins if n in params]
        shapes = kern.get("shapes", [])
        out_texts = [tensor_text(dtypes.get(n, "?"), shapes[j]) if j < len(shapes) else "?"
                     for j, n in enumerate(outs)]
        add(_kernel_node(k, kern, out_texts, weights))
        for name, loc in zip(ins, args, strict=False):
            if name not in params:
                connect(f"k{k}", name, loc)
        for name, loc, text in zip(outs, args[len(ins):], out_texts, strict=False):
            producers.wrote(f"k{k}", name, loc)
            texts[name] = text
    for i, t in enumerate(spec["outputs"]):
        add(_tensor_node(f"o{i}", "output", t))
        connect(f"o{i}", t["name"], t.get("loc"))
    return Graph(nodes, edges)


# --- layout --------------------------------------------------------------------------------

def _assign_layers(g: Graph) -> None:
    """Layer = longest path from the inputs; an unconnected output goes to the bottom."""
    preds: dict[str, list[str]] = {}
    for e in g.edges:
        preds.setdefault(e.dst, []).append(e.src)
    for node in g.nodes.values():  # in a topological order: inputs, kernels, outputs
        if node.kind != "input":
            node.layer = 1 + max((g.nodes[p].layer for p in preds.get(node.id, [])), default=0)
    bottom = max(n.layer for n in g.nodes.values())
    for node in g.nodes.values():
        if node.kind == "output" and node.id not in preds:
            node.layer = bottom


def _fit(row: list[Node], want: list[float]) -> None:
    """Move a layer's nodes as near their wanted x as the order and gaps allow (the mean of
    packing from the left and from the right: both keep the gaps, so their mean does)."""
    left, right = [], [0.0] * len(row)
    for i in range(len(row)):
        left.append(want[i] if i == 0 else max(want[i], left[-1] + row[i - 1].w + H_GAP))
    for i in reversed(range(len(row))):
        right[i] = want[i] if i == len(row) - 1 else min(want[i], right[i + 1] - H_GAP - row[i].w)
    for node, a, b in zip(row, left, right, strict=True):
        node.x = (a + b) / 2


def _place(rows: list[list[Node]], edges: list[tuple[Node, Node]]) -> None:
    """x: start packed, then pull each node toward the centre of its neighbours in earlier
    layers (down passes) or later ones (up passes); the last pass uses both."""
    up: dict[str, list[Node]] = {}
    down: dict[str, list[Node]] = {}
    for a, b in edges:
        up.setdefault(b.id, []).append(a)
        down.setdefault(a.id, []).append(b)
    for row in rows:
        _fit(row, [i * (BOX_W + H_GAP) for i in range(len(row))])
    for p in range(PLACEMENT_PASSES + 1):
        last = p == PLACEMENT_PASSES
        for row in (rows if p % 2 == 0 else rows[::-1]):
            want = []
            for node in row:
                near = up.get(node.id, []) + down.get(node.id, []) if last else \
                    (up if p % 2 == 0 else down).get(node.id, [])
                centre = sum(n.x + n.w / 2 for n in near) / len(near) if near else None
                want.append(node.x if centre is None else centre - node.w / 2)
            _fit(row, want)


def _lanes(g: Graph, rows: list[list[Node]]) -> dict[str, float]:
    """x of the vertical lane each source's long edges (spanning layers) run down: right of
    the boxes they pass, apart from lanes beside them; shorter spans nearer the boxes."""
    spans: dict[str, tuple[int, int]] = {}
    for e in g.edges:
        lo, hi = g.nodes[e.src].layer, g.nodes[e.dst].layer
        if hi - lo > 1:
            spans[e.src] = (lo, max(hi, spans.get(e.src, (lo, hi))[1]))
    placed: list[tuple[int, int, float]] = []
    lanes = {}
    for src, (lo, hi) in sorted(spans.items(), key=lambda kv: (kv[1][1] - kv[1][0], kv[1])):
        x = max(n.x + n.w for row in rows[lo + 1:hi] for n in row) + H_GAP
        while any(plo < hi and lo < phi and abs(px - x) < LANE_GAP for plo, phi, px in placed):
            x += LANE_GAP
        placed.append((lo, hi, x))
        lanes[src] = x
    return lanes


def layout(g: Graph) -> None:
    """Place the nodes top to bottom by layer, route the edges, set the drawing's size."""
    if not g.nodes:
        return
    _assign_layers(g)
    layers: dict[int, list[Node]] = {}
    for node in g.nodes.values():
        node.h = PAD * 2 + LINE_H * len(node.lines)
        layers.setdefault(node.layer, []).append(node)
    rows = [sorted(layers.get(k, []), key=lambda n: n.order) for k in range(max(layers) + 1)]
    _place([row for row in rows if row], [(g.nodes[e.src], g.nodes[e.dst]) for e in g.edges])
    shift = H_GAP - min(n.x for n in g.nodes.values())
    y = V_GAP / 2
    for row in rows:
        for node in row:
            node.x += shift
            node.y = y
        y += max((n.h for n in row), default=0) + V_GAP
    lanes = _lanes(g, rows)
    g.width = max([n.x + n.w for n in g.nodes.values()] + list(lanes.values())) + H_GAP
    g.height = y - V_GAP / 2
    _route(g, lanes)


def _route(g: Graph, lanes: dict[str, float]) -> None:
    """An edge leaves its source's bottom and enters its target's top; one spanning layers
    runs down its source's lane between. A target's inputs enter side by side, ordered by
    where they come from."""
    into: dict[str, list[Edge]] = {}
    for e in g.edges:
        src, dst = g.nodes[e.src], g.nodes[e.dst]
        e.points = [(src.x + src.w / 2, src.y + src.h)]
        if dst.layer - src.layer > 1:
            x = lanes[e.src]
            e.points += [(x, src.y + src.h + V_GAP / 2), (x, dst.y - V_GAP / 2)]
        into.setdefault(e.dst, []).append(e)
    for dst_id, incoming in into.items():
        dst = g.nodes[dst_id]
        incoming.sort(key=lambda e: e.points[-1][0])
        for j, e in enumerate(incoming):
            e.points.append((dst.x + dst.w * (j + 1) / (len(incoming) + 1), dst.y))
