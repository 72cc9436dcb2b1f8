"""C kernels of the movement ops (semantics: kiln/ops/movement.py).

Most are one nest of loops over the output (counters i0, i1, ...) reading the input at
per-axis source coordinates; all sizes are baked in. Indices read from data are wrapped and
clamped into range before use, so no kernel reads out of bounds. Threads split the outer
loops of large kernels (a task of kiln's thread pool).
"""

from __future__ import annotations

import numpy as np

from .loops import indent, split_nest
from .registry import (
    SERIAL_WORK,
    KernelContext,
    expression_work,
    kernel,
    lit,
    parallel,
    strides,
    worth_threads,
)

# concat / split: elements of a row that one thread copies at a time.
COPY_CHUNK = 4096


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _counters(rank: int) -> list[str]:
    return [f"i{d}" for d in range(rank)]


def _flat(coords: list[str], shape: tuple[int, ...]) -> str:
    """C expression: the row-major flat index of coords in shape (dims of size 1 add 0)."""
    terms = [c if st == 1 else f"{c if c.isidentifier() else f'({c})'} * {st}"
             for c, n, st in zip(coords, shape, strides(shape), strict=True) if n != 1]
    return " + ".join(terms) or "0"


def _nest(ctx: KernelContext, shape: tuple[int, ...], body: str, work: int = 1) -> str:
    """body inside loops i0..i{r-1} over shape (just body for a scalar), the outer loops
    split among threads when the nest is large (`work` per element)."""
    return split_nest(ctx, [(c, n) for c, n in zip(_counters(len(shape)), shape, strict=True)],
                      body, work * _numel(shape))


def _copy(ctx: KernelContext, coords: list[str]) -> str:
    """Each output element gets in0 at source coordinates coords (expressions of i0, ...)."""
    out = ctx.out_types[0].shape
    src = f"{ctx.ins[0]}[{_flat(coords, ctx.in_types[0].shape)}]"
    # A copy whose innermost loop does not read consecutive elements does not vectorize.
    inner = f"i{len(out) - 1}"
    unit_stride = not coords or coords[-1].split(" + ")[-1] == inner
    return _nest(ctx, out, ctx.store(_flat(_counters(len(out)), out), src),
                 1 if unit_stride else SERIAL_WORK)


def _index(name: str, expr: str, n: int) -> str:
    """C statements declaring int64 `name` = expr wrapped once if negative, clamped to [0,n)."""
    return (f"int64_t {name} = (int64_t)({expr}); if ({name} < 0) {name} += {n}; "
            f"if ({name} < 0) {name} = 0; if ({name} > {n - 1}) {name} = {n - 1};")


@kernel("transpose")
def _transpose(ctx: KernelContext) -> str:
    perm, i = ctx.attrs["perm"], _counters(len(ctx.attrs["perm"]))
    coords = [""] * len(perm)
    for d, p in enumerate(perm):
        coords[p] = i[d]
    return _copy(ctx, coords)


@kernel("slice")
def _slice(ctx: KernelContext) -> str:
    coords = []
    for i, s, st in zip(_counters(len(ctx.attrs["starts"])), ctx.attrs["starts"],
                        ctx.attrs["steps"], strict=True):
        step = i if st == 1 else f"{i} * {st}"
        coords.append(step if s == 0 else f"{s} + {step}")
    return _copy(ctx, coords)


@kernel("expand")
def _expand(ctx: KernelContext) -> str:
    in_shape, i = ctx.in_types[0].shape, _counters(ctx.out_types[0].rank)
    lead = len(i) - len(in_shape)
    return _copy(ctx, ["0" if n == 1 else i[lead + d] for d, n in enumerate(in_shape)])


@kernel("tile")
def _tile(ctx: KernelContext) -> str:
    in_shape, reps = ctx.in_types[0].shape, ctx.attrs["repeats"]
    coords = [c if r == 1 else f"{c} % {n}"
              for c, n, r in zip(_counters(len(in_shape)), in_shape, reps, strict=True)]
    return _copy(ctx, coords)


def _row_copies(ctx: KernelContext, outer: int, rows: list[tuple[int, str]]) -> str:
    """concat / split: for each (row, statement), the statement copies element j < row of
    slice o < outer, a chunk of j at a time. Threads split the (copy, o, chunk) iterations
    of all the copies as one loop (one task: the copies write apart)."""
    chunks = [(row, min(row, COPY_CHUNK), statement) for row, statement in rows]
    trips = sum(outer * -(-row // chunk) for row, chunk, _ in chunks)
    if not worth_threads(outer * sum(row for row, _ in rows), trips):
        return "\n".join(
            f"for (int64_t o = 0; o < {outer}; ++o)\n"
            f"for (int64_t j0 = 0; j0 < {row}; j0 += {chunk}) {{\n"
            f"    const int64_t j1 = j0 + {chunk} < {row} ? j0 + {chunk} : {row};\n"
            f"    for (int64_t j = j0; j < j1; ++j) {statement}\n}}"
            for row, chunk, statement in chunks)
    # iteration f: copy k's chunk (f - first) % count of slice (f - first) / count, with
    # first the iterations of the copies before k and count its chunks per slice
    cases, first = [], 0
    for k, (row, chunk, statement) in enumerate(chunks):
        count = -(-row // chunk)
        at = f"f - {first}" if first else "f"
        if count == 1:  # a whole row
            copy = f"const int64_t o = {at};\nfor (int64_t j = 0; j < {row}; ++j) {statement}"
        else:
            copy = (f"const int64_t o = ({at}) / {count}, j0 = ({at}) % {count} * {chunk};\n"
                    f"const int64_t j1 = j0 + {chunk} < {row} ? j0 + {chunk} : {row};\n"
                    f"for (int64_t j = j0; j < j1; ++j) {statement}")
        first += outer * count
        test = "" if k == len(chunks) - 1 else f"if (f < {first}) "
        cases.append(f"{test}{{\n{indent(copy)}\n}}")
    return parallel(ctx, [("f", trips)], " else ".join(cases), threads=True)


@kernel("concat")
def _concat(ctx: KernelContext) -> str:
    axis, out = ctx.attrs["axis"], ctx.out_types[0].shape
    inner = _numel(out[axis + 1:])
    rows, offset = [], 0
    for name, t in zip(ctx.ins, ctx.in_types, strict=True):
        row = t.shape[axis] * inner
        if row:
            dst = f"o * {out[axis] * inner} + {offset} + j"
            rows.append((row, ctx.store(dst, f"{name}[o * {row} + j]")))
        offset += row
    return _row_copies(ctx, _numel(out[:axis]), rows)


@kernel("split")
def _split(ctx: KernelContext) -> str:
    axis, shape = ctx.attrs["axis"], ctx.in_types[0].shape
    inner = _numel(shape[axis + 1:])
    rows, offset = [], 0
    for k, size in enumerate(ctx.attrs["sizes"]):
        row = size * inner
        if row:
            src = f"{ctx.ins[0]}[o * {shape[axis] * inner} + {offset} + j]"
            rows.append((row, ctx.store(f"o * {row} + j", src, out=k)))
        offset += row
    return _row_copies(ctx, _numel(shape[:axis]), rows)


@kernel("gather")
def _gather(ctx: KernelContext) -> str:
    axis, shape = ctx.attrs["axis"], ctx.in_types[0].shape
    n, count, inner = shape[axis], ctx.in_types[1].numel, _numel(shape[axis + 1:])
    src = f"{ctx.ins[0]}[(o * {n} + q) * {inner} + k]"
    store = ctx.store(f"(o * {count} + j) * {inner} + k", src)
    outer = _numel(shape[:axis])
    return parallel(ctx, [("o", outer), ("j", count)],
                    f"{_index('q', f'{ctx.ins[1]}[j]', n)}\n"
                    f"for (int64_t k = 0; k < {inner}; ++k) {store}",
                    threads=worth_threads(outer * count * inner, outer * count))


@kernel("gather_elements")
def _gather_elements(ctx: KernelContext) -> str:
    axis, data, out = ctx.attrs["axis"], ctx.in_types[0].shape, ctx.out_types[0].shape
    i = _counters(len(out))
    flat = _flat(i, out)
    src = _flat(["q" if d == axis else c for d, c in enumerate(i)], data)
    body = (f"{_index('q', f'{ctx.ins[1]}[{flat}]', data[axis])}\n"
            f"{ctx.store(flat, f'{ctx.ins[0]}[{src}]')}")
    return _nest(ctx, out, body, SERIAL_WORK)


@kernel("gather_nd")
def _gather_nd(ctx: KernelContext) -> str:
    data, idx = ctx.in_types[0].shape, ctx.in_types[1].shape
    b, k = ctx.attrs["batch_dims"], idx[-1]
    rows, inner, st = _numel(idx[b:-1]), _numel(data[b + k:]), strides(data)
    picks = [f"{{ {_index('q', f'{ctx.ins[1]}[row * {k} + {j}]', data[b + j])} "
             f"src += q * {st[b + j]}; }}" for j in range(k)]
    store = ctx.store(f"row * {inner} + m", f"{ctx.ins[0]}[src + m]")
    body = "\n        ".join(picks)
    return (
        f"for (int64_t bi = 0; bi < {_numel(data[:b])}; ++bi) {{\n"
        f"    for (int64_t r = 0; r < {rows}; ++r) {{\n"
        f"        const int64_t row = bi * {rows} + r;\n"
        f"        int64_t src = bi * {_numel(data[b:])};\n"
        f"        {body}\n"
        f"        for (int64_t m = 0; m < {inner}; ++m) {store}\n"
        f"    }}\n}}"
    )


def _pad_coord(name: str, c: str, n: int, mode: str) -> str:
    """C statements declaring `name`: the input position of padded position c (axis size n)."""
    if mode == "edge":
        return f"const int64_t {name} = {c} < 0 ? 0 : ({c} > {n - 1} ? {n - 1} : {c});"
    if mode == "wrap":
        return f"const int64_t {name} = kiln_imod_floor({c}, {n});"
    if mode == "reflect" and n == 1:
        return f"const int64_t {name} = 0;"
    if mode == "reflect":
        period = 2 * (n - 1)
        return (f"int64_t {name} = kiln_imod_floor({c}, {period}); "
                f"if ({name} >= {n}) {name} = {period} - {name};")
    return f"const int64_t {name} = {c};"


@kernel("pad")
def _pad(ctx: KernelContext) -> str:
    shape, out = ctx.in_types[0].shape, ctx.out_types[0].shape
    pads, mode, rank = ctx.attrs["pads"], ctx.attrs["mode"], len(shape)
    lines, coords, guards = [], [], []
    for d, (i, n) in enumerate(zip(_counters(rank), shape, strict=True)):
        begin, end = pads[d], pads[rank + d]
        c = i if begin == 0 else f"({i} - {begin})"
        if begin <= 0 and end <= 0:  # a crop at most: every position is inside
            coords.append(c)
            continue
        lines.append(_pad_coord(f"c{d}", c, n, mode))
        coords.append(f"c{d}")
        if mode == "constant":
            guards += [f"c{d} >= 0"] * (begin > 0) + [f"c{d} < {n}"] * (end > 0)
    value = f"{ctx.ins[0]}[{_flat(coords, shape)}]"
    if guards:
        fill = lit(ctx.attrs["value"], ctx.out_types[0].dtype)
        value = f"({' && '.join(guards)}) ? {value} : {fill}"
    lines.append(ctx.store(_flat(_counters(rank), out), value))
    return _nest(ctx, out, "\n".join(lines), expression_work("\n".join(lines)))


@kernel("one_hot")
def _one_hot(ctx: KernelContext) -> str:
    depth, axis, shape = ctx.attrs["depth"], ctx.attrs["axis"], ctx.in_types[0].shape
    inner = _numel(shape[axis:])
    store = ctx.store(f"(o * {depth} + d) * {inner} + k",
                      f"q == d ? {ctx.ins[1]}[1] : {ctx.ins[1]}[0]")
    return (
        f"for (int64_t o = 0; o < {_numel(shape[:axis])}; ++o) {{\n"
        f"    for (int64_t k = 0; k < {inner}; ++k) {{\n"
        f"        int64_t q = (int64_t){ctx.ins[0]}[o * {inner} + k];  /* ONNX: cast */\n"
        f"        if (q < 0) q += {depth};\n"
        f"        for (int64_t d = 0; d < {depth}; ++d) {store}\n"
        f"    }}\n}}"
    )
