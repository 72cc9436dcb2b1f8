"""C kernels of the reduce ops (semantics: kiln/ops/reduce.py).

Reductions, arg reductions and the softmax family share one loop generator, `_walk`: an
outer loop over the kept positions, then passes over the reduced elements that update
accumulators (locals) and may store per element; a reduction stores each output once at
the end. When the innermost (contiguous) dimension is kept, up to TILE positions of it are
reduced side by side in local arrays, so the inner loop is contiguous and vectorizable.
Floats accumulate sums in double; integers in uint64_t (wrap-around, no signed overflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from string import Template

import numpy as np

from .registry import KernelContext, ctype, is_float, kernel, lit, mathfn, strides

# Most kept contiguous positions reduced side by side (local accumulator arrays).
TILE = 256
# Most elements of the per-row scratch that lets softmax compute each exp once.
SCRATCH = 8192


@dataclass(frozen=True)
class Acc:
    """A local of the walk: one per kept position, or one per element (`per_element`)."""

    name: str
    ctype: str
    init: str | None = None
    per_element: bool = False


@dataclass(frozen=True)
class Step:
    """C code run once per reduced element (`each`) or once per kept position.

    The code may name `$x` (the element), `$r` (its flat index among the reduced elements),
    `$i` (its flat index in the input) and `$<acc>` (an accumulator).
    """

    code: str
    each: bool = True


def _merged_dims(shape: tuple[int, ...], axes: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """(size, input stride, reduced) of shape without its size-1 dims, runs of a kind merged."""
    dims: list[list] = []
    for d, (n, s) in enumerate(zip(shape, strides(shape), strict=True)):
        if n == 1:
            continue
        if dims and dims[-1][2] == (d in axes):
            dims[-1][0] *= n
            dims[-1][1] = s
        else:
            dims.append([n, s, d in axes])
    return [(n, s, r) for n, s, r in dims]


def _flat_offset(var: str, dims: list[tuple[int, int]]) -> str:
    """C expression: the input offset of row-major position `var` over dims (size, stride)."""
    terms, inner = [], 1
    for n, s in reversed(dims):
        coord = f"{var} / {inner}" if inner > 1 else var
        if inner * n < math.prod(n for n, _ in dims):
            coord = f"({coord}) % {n}"
        terms.append(f"({coord}) * {s}")
        inner *= n
    return " + ".join(reversed(terms)) or "0"


def _walk(ctx: KernelContext, axes: tuple[int, ...], accs: list[Acc], steps: list[Step],
          final: str | None = None, tile: int = TILE) -> str:
    """The kernel body: accumulate over `axes` of input 0; `final` is stored per kept position."""
    t_in = ctx.t(0)
    dims = _merged_dims(ctx.in_types[0].shape, axes)
    kept = [(n, s) for n, s, r in dims if not r]
    red = [(n, s) for n, s, r in dims if r]
    inner = kept.pop()[0] if red and not dims[-1][2] else 1
    width = min(inner, tile)
    tiled = width > 1
    n_red = math.prod(n for n, _ in red)

    sub = {a.name: f"{a.name}[t]" if tiled else a.name for a in accs if not a.per_element}
    pos = "t0 + t" if tiled else "0"
    r_flat = " + ".join(f"r{j} * {math.prod(n for n, _ in red[j + 1:])}"
                        for j in range(len(red))) or "0"
    sub.update({a.name: f"{a.name}[({r_flat}) * {width} + t]" if tiled else f"{a.name}[{r_flat}]"
                for a in accs if a.per_element})
    roff = " + ".join(f"r{j} * {s}" for j, (_, s) in enumerate(red)) or "0"
    sub.update(x="x", r=f"({r_flat})", i=f"(ob + {roff} + {pos})")

    def fill(code: str) -> str:
        return Template(code).substitute(sub)

    def per_t(code: str) -> str:
        return f"for (int64_t t = 0; t < nt; ++t) {{ {code} }}" if tiled else code

    lines = [f"const int64_t ob = {_flat_offset('o', kept)};"]
    if tiled:
        full = inner % width == 0
        lines.append(f"const int64_t nt = {width if full else f'({inner} - t0 < {width} ? {inner} - t0 : {width})'};")
    for a in accs:
        size = n_red * width if a.per_element else width
        if tiled or a.per_element:
            lines.append(f"{a.ctype} {a.name}[{size}];")
            if a.init is not None:
                lines.append(per_t(f"{a.name}[t] = {a.init};" if tiled else ""))
        else:
            lines.append(f"{a.ctype} {a.name}" + (f" = {a.init};" if a.init else ";"))
    load = f"const {t_in} x = {ctx.ins[0]}[ob + {roff} + {pos}];"
    for step in steps:
        if not step.each:
            lines.append(per_t(fill(step.code)))
            continue
        body = per_t(f"{load} {fill(step.code)}")
        for j in reversed(range(len(red))):
            body = f"for (int64_t r{j} = 0; r{j} < {red[j][0]}; ++r{j}) {{\n{body}\n}}"
        lines.append(body)
    if final is not None:
        out = f"o * {inner} + t0 + t" if tiled else "o"
        lines.append(per_t(ctx.store(out, fill(final))))
    body = "\n".join(line for line in lines if line)
    if tiled:
        body = f"for (int64_t t0 = 0; t0 < {inner}; t0 += {width}) {{\n{body}\n}}"
    n_outer = math.prod(n for n, _ in kept)
    return f"for (int64_t o = 0; o < {n_outer}; ++o) {{\n{body}\n}}"
