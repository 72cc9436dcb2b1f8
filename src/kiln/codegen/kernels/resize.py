"""C kernel of `resize` (semantics: kiln/ops/resize.py).

The taps of each resized axis (`axis_taps`) become static tables (at file scope): source
offsets (index times input stride) and weights per output position. The kernel loops over
the output, sums the weighted taps in double (the precision of ONNX's reference) and stores
each element once; nearest copies one source element, so it works for every dtype. Threads
split the outer output loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ...ops.resize import AxisTaps, axis_taps, is_identity_axis, saturate
from .registry import (
    SERIAL_WORK,
    KernelContext,
    kernel,
    lit,
    nest_depth,
    parallel,
    strides,
    worth_threads,
)


def _table(name: str, ctype: str, rows: np.ndarray, fmt: Callable[[object], str]) -> str:
    """A static const C array holding rows (1-D or 2-D)."""
    dims = "".join(f"[{n}]" for n in rows.shape)
    if rows.ndim == 1:
        body = ", ".join(fmt(v) for v in rows)
    else:
        body = ",\n    ".join("{" + ", ".join(fmt(v) for v in row) + "}" for row in rows)
    return f"static const {ctype} {name}{dims} = {{\n    {body}\n}};"


def _tables(taps: dict[int, AxisTaps], in_strides: list[int], nearest: bool) -> list[str]:
    out = []
    for d, t in taps.items():
        offsets = t.index * in_strides[d]
        out.append(_table(f"kiln_rs_off{d}", "int64_t", offsets[:, 0] if nearest else offsets,
                          str))
        if not nearest:
            out.append(_table(f"kiln_rs_w{d}", "double", t.weight, lambda v: lit(v, "float64")))
        if t.outside.any():
            out.append(_table(f"kiln_rs_out{d}", "uint8_t", t.outside.astype(np.uint8), str))
    return out


def _weighted_sum(ctx: KernelContext, taps: dict[int, AxisTaps], base: str) -> list[str]:
    """Statements accumulating the weighted taps of the current output element into acc."""
    lines, close = ["double acc = 0.0;"], []
    offset, weight = base, ""
    for d, t in taps.items():
        w = f"kiln_rs_w{d}[o{d}][t{d}]"
        lines += [f"for (int64_t t{d} = 0; t{d} < {t.index.shape[1]}; ++t{d}) {{",
                  f"const int64_t a{d} = {offset} + kiln_rs_off{d}[o{d}][t{d}];",
                  f"const double w{d} = {weight}{w};"]
        offset, weight = f"a{d}", f"w{d} * "
        close.append("}")
    last = next(reversed(taps))
    return lines + [f"acc += w{last} * (double){ctx.ins[0]}[a{last}];"] + close


def _convert(acc: str, dtype: str, ct: str) -> str:
    """The statement turning the double acc into `value` of dtype (ints truncate, saturate)."""
    if dtype in ("float32", "float64"):
        return f"const {ct} value = ({ct}){acc};"
    info = np.iinfo(dtype)
    lo, hi = lit(info.min, dtype), lit(info.max, dtype)
    return (f"const {ct} value = {acc} != {acc} ? 0 : ({acc} <= (double){lo} ? {lo} : "
            f"({acc} >= (double){hi} ? {hi} : ({ct}){acc}));")


@kernel("resize")
def _resize(ctx: KernelContext) -> str:
    x, out, attrs = ctx.in_types[0], ctx.out_types[0], ctx.attrs
    if out.numel == 0:
        return ""
    nearest = attrs["mode"] == "nearest"
    taps = {d: axis_taps(d, n, attrs) for d, n in enumerate(x.shape)
            if not is_identity_axis(d, n, attrs)}
    in_st = strides(x.shape)
    ctx.helpers += _tables(taps, in_st, nearest)
    per_element = 1 if nearest else math.prod(t.index.shape[1] for t in taps.values())
    depth = nest_depth(out.shape)
    # Threads split the `depth` outer loops, nested perfectly; then for each loop level, p:
    # the flat output index, b: the input offset of the taps.
    lines = []
    for d, n in enumerate(out.shape):
        terms = [f"b{d - 1}"] if d else []
        if d not in taps:
            terms.append(f"o{d} * {in_st[d]}")
        elif nearest:
            terms.append(f"kiln_rs_off{d}[o{d}]")
        if d >= depth:
            lines.append(f"for (int64_t o{d} = 0; o{d} < {n}; ++o{d}) {{")
        lines += [f"const int64_t p{d} = " + (f"p{d - 1} * {n} + o{d};" if d else "o0;"),
                  f"const int64_t b{d} = {' + '.join(terms) or '0'};"]
    base = f"b{out.rank - 1}"
    if nearest or not taps:
        lines.append(f"const {ctx.ot()} value = {ctx.ins[0]}[{base}];")
    else:
        lines += [*_weighted_sum(ctx, taps, base), _convert("acc", out.dtype, ctx.ot())]
    outside = [f"kiln_rs_out{d}[o{d}]" for d, t in taps.items() if t.outside.any()]
    value = "value"
    if outside:
        fill = saturate(np.array(attrs["extrapolation_value"]), out.dtype)
        value = f"({' || '.join(outside)} ? {lit(fill.item(), out.dtype)} : value)"
    lines.append(ctx.store(f"p{out.rank - 1}", value))
    lines += ["}"] * (out.rank - depth)
    threads = worth_threads(SERIAL_WORK * out.numel * per_element,
                            math.prod(out.shape[:depth]))
    return parallel(ctx, [(f"o{d}", n) for d, n in enumerate(out.shape[:depth])],
                    "\n".join(lines), threads=threads)
