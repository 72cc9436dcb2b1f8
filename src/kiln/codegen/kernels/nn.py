"""C kernels of the nn ops (semantics: kiln/ops/nn.py).

Tensors are row-major (N, C, *spatial). Every inner loop has a trip count known when
compiling, so that gcc -O2 vectorizes it. conv picks one of three kernels:
- im2col (8+ output channels per group): tiles of a matrix product weights x im2col(x);
- depthwise (one input channel per group): over a padded local copy of the input plane;
- rows (the rest, and conv_transpose): a tile of one output row for a few output channels
  in a local accumulator, each kernel tap over the row range it reaches.
Pools also read a padded local copy of the plane (or check bounds for planes too large for
the stack); normalizations take two passes over each group (mean, variance), then store.
Threads split the outer loops (batch, channels, output rows or tiles), never a reduction;
local arrays are declared inside the split loops, so each thread has its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...ops.nn import MVN_EPSILON, lrn_window
from .registry import (
    ALIGNED,
    SERIAL_WORK,
    KernelContext,
    broadcast_index,
    expression_work,
    is_float,
    kernel,
    lit,
    parallel_for,
    strides,
    worth_threads,
)

GEMM_MIN_CHANNELS = 8  # output channels per group from which conv takes the im2col kernel
ACC_BYTES = 32 * 1024  # im2col conv: accumulator tile (output channels x positions)
COL_BYTES = 16 * 1024  # im2col conv: input tile (reduction rows x positions)
ROW_TILE = 256  # row kernel: output elements of one row kept in the accumulator at a time
CHANNEL_BLOCKS = (4, 2, 1)  # row kernel: output channels computed together (first divisor)
PLANE_BYTES = 256 * 1024  # depthwise conv, pools: largest padded plane copied to the stack
LANES = 8  # normalizations: partial sums of a reduction
# im2col conv, for threads: a kernel worth threads gets narrower tiles (down to TILE_MIN_SPLIT
# positions) until it has TILE_SPLIT_TRIPS; then, with fewer tiles than threads, its groups
# are cut in parts of at least PART_MIN_CHANNELS output channels, if it has PART_MIN_WORK
# multiply-adds (each part fills the im2col tile again: below, 2 threads were slower than 1).
TILE_MIN_SPLIT = 64
TILE_SPLIT_TRIPS = 2
PART_MIN_CHANNELS = 8
PART_MIN_WORK = 1 << 18


def _for(var: str, count: int | str, body: str, *, start: int | str = 0) -> str:
    return f"for (int64_t {var} = {start}; {var} < {count}; ++{var}) {{\n{_indent(body)}\n}}"


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else line for line in text.splitlines())


def _nest(loops: list[tuple[str, int]], body: str) -> str:
    """Nested for loops over (variable, count) pairs, outermost first."""
    for var, count in reversed(loops):
        body = _for(var, count, body)
    return body


def _flat(coords: list[str], shape: tuple[int, ...] | list[int]) -> str:
    """C expression: the row-major flat index of coords in shape."""
    st = strides(tuple(shape))
    terms = [f"{c} * {s}" if s != 1 else c for c, s in zip(coords, st, strict=True)]
    return " + ".join(terms) if terms else "0"


def _ceil_div(a: str, b: int) -> str:
    """C expression: ceil(a / b) for any int64 a and a positive constant b."""
    if b == 1:
        return f"({a})"
    return f"(({a}) > 0 ? (({a}) + {b - 1}) / {b} : -((-({a})) / {b}))"


def _lowest(dtype: str) -> str:
    """C literal: the identity of max in dtype."""
    return "(-INFINITY)" if is_float(dtype) else lit(np.iinfo(dtype).min, dtype)


# ---- conv / conv_transpose


def _conv_geometry(ctx: KernelContext, transposed: bool) -> dict:
    """Shapes and window attrs as plain ints; a pointwise conv becomes one long 1-D row."""
    x, w, y = ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_types[0].shape
    nd = len(x) - 2
    a = ctx.attrs
    geo = {"I": list(x[2:]), "K": list(w[2:]), "O": list(y[2:]), "s": list(a["strides"]),
           "d": list(a["dilations"]), "pb": list(a["pads"][:nd]), "N": x[0], "C": x[1],
           "M": y[1], "G": a["group"]}
    pointwise = all(k == 1 for k in geo["K"]) and all(s == 1 for s in geo["s"]) \
        and all(p == 0 for p in a["pads"])
    if pointwise and nd > 1 and not transposed:
        size = math.prod(geo["I"])
        geo.update(I=[size], K=[1], O=[size], s=[1], d=[1], pb=[0])
    return geo


def _channel_block(per_group: int) -> int:
    return next(b for b in CHANNEL_BLOCKS if per_group % b == 0)


def _row_kernel(ctx: KernelContext, transposed: bool) -> str:
    """conv / conv_transpose, a row tile at a time: the weight tap sits in a register and
    the contiguous output row is innermost; the taps differ (gather vs scatter)."""
    g = _conv_geometry(ctx, transposed)
    t = ctx.t(0)
    I, K, O = g["I"], g["K"], g["O"]  # noqa: E741
    nd = len(I)
    cg, mg = g["C"] // g["G"], g["M"] // g["G"]
    mb = _channel_block(mg)
    tile = min(ROW_TILE, O[-1])
    i_size, k_size, o_size = math.prod(I), math.prod(K), math.prod(O)
    outer = [(f"o{j}", O[j]) for j in range(nd - 1)]
    # The weight of tap kk for block channel j, and the channel's first weight.
    if transposed:  # w: (C, M/group, *K)
        w_base = f"((g * {cg} + c) * {mg} + m0) * {k_size}"
        w_step = k_size
    else:  # w: (M, C/group, *K)
        w_base = f"((g * {mg} + m0) * {cg} + c) * {k_size}"
        w_step = cg * k_size

    # Inner: the taps of the last kernel dim over the current row tile.
    sl, dl, pl = g["s"][-1], g["d"][-1], g["pb"][-1]
    weights = "\n".join(f"const {t} w{j} = wr[kl + {j * w_step}];" for j in range(mb))
    if transposed:  # output ol = il * s + off
        bounds = (f"int64_t lo = {_ceil_div('t0 - off', sl)};\nif (lo < 0) lo = 0;\n"
                  f"int64_t hi = {_ceil_div('t0 + tn - off', sl)};\n"
                  f"if (hi > {I[-1]}) hi = {I[-1]};")
        update = "\n".join(f"acc[{j}][il * {sl} + off - t0] += w{j} * xv;" for j in range(mb))
        inner = _for("il", "hi", f"const {t} xv = xr[il];\n{update}", start="lo")
    else:  # input il = ol * s + off
        bounds = (f"int64_t lo = off >= 0 ? 0 : {_ceil_div('-off', sl)};\n"
                  f"if (lo < t0) lo = t0;\n"
                  f"int64_t hi = {I[-1]} - off <= 0 ? 0 : {_ceil_div(f'{I[-1]} - off', sl)};\n"
                  f"if (hi > t0 + tn) hi = t0 + tn;")
        update = "\n".join(f"acc[{j}][ol - t0] += w{j} * xv;" for j in range(mb))
        inner = _for("ol", "hi", f"const {t} xv = xr[ol * {sl} + off];\n{update}", start="lo")
    taps = _for("kl", K[-1], f"const int64_t off = kl * {dl} - {pl};\n{bounds}\n"
                             f"{weights}\n{inner}")

    # Outer kernel dims: skip taps whose input row is outside (or, transposed, off-stride).
    body = (f"const {t}* restrict xr = xc + ({_flat([f'i{j}' for j in range(nd - 1)], I[:-1])})"
            f" * {I[-1]};\nconst {t}* restrict wr = wc + "
            f"({_flat([f'k{j}' for j in range(nd - 1)], K[:-1])}) * {K[-1]};\n{taps}")
    for j in reversed(range(nd - 1)):
        s, d, p = g["s"][j], g["d"][j], g["pb"][j]
        if transposed:
            check = f"const int64_t q{j} = o{j} + {p} - k{j} * {d};\n"
            check += f"if (q{j} < 0 || q{j} % {s} != 0) continue;\n" if s > 1 else \
                f"if (q{j} < 0) continue;\n"
            check += f"const int64_t i{j} = q{j} / {s};\nif (i{j} >= {I[j]}) continue;"
        else:
            check = (f"const int64_t i{j} = o{j} * {s} + k{j} * {d} - {p};\n"
                     f"if (i{j} < 0 || i{j} >= {I[j]}) continue;")
        body = _for(f"k{j}", K[j], f"{check}\n{body}")
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {g['C']} + g * {cg} + c) * "
               f"{i_size};\nconst {t}* restrict wc = {ctx.ins[1]} + {w_base};\n{body}")

    bias = lit(0, ctx.in_types[0].dtype)
    if len(ctx.ins) == 3:
        bias = f"{ctx.ins[2]}[g * {mg} + m0 + j]"
    o_flat = _flat([v for v, _ in outer], O[:-1])
    store = ctx.store(f"(n * {g['M']} + g * {mg} + m0 + j) * {o_size} + ({o_flat}) * {O[-1]}"
                      " + t0 + ol", "acc[j][ol]")
    row = (f"const int64_t tn = {O[-1]} - t0 < {tile} ? {O[-1]} - t0 : {tile};\n"
           f"{t} acc[{mb}][{tile}] {ALIGNED};\n"
           + _nest([("j", mb)], _for("ol", "tn", f"acc[j][ol] = {bias};")) + "\n"
           + _for("c", cg, channel) + "\n"
           + _nest([("j", mb)], _for("ol", "tn", store)))
    tiles = f"for (int64_t t0 = 0; t0 < {O[-1]}; t0 += {tile}) {{\n{_indent(row)}\n}}"
    blocks = f"for (int64_t m0 = 0; m0 < {mg}; m0 += {mb}) {{\n" \
             f"{_indent(_nest(outer, tiles))}\n}}"
    # Every loop down to the row tiles is split among the threads: all write apart.
    work = g["N"] * g["G"] * mg * cg * k_size * (i_size if transposed else o_size)
    trips = g["N"] * g["G"] * mg // mb * math.prod(O[:-1]) * -(-O[-1] // tile)
    return parallel_for(work, trips, collapse=nd + 3) \
        + _nest([("n", g["N"]), ("g", g["G"])], blocks)


def _gemm_tiles(mg: int, r: int, positions: int, itemsize: int, images: int,
                work: int) -> tuple[int, int]:
    """(P, RC): output positions per tile and reduction rows per im2col chunk. The accumulator
    (channels x P) fits ACC_BYTES. Tiles are as even as multiples of 8 allow, and narrower
    (down to TILE_MIN_SPLIT) for a kernel worth threads with few tiles."""
    p = max(8, min(256, ACC_BYTES // (mg * itemsize) // 8 * 8))
    if worth_threads(work, 2):
        while images * -(-positions // p) < TILE_SPLIT_TRIPS and p >= 2 * TILE_MIN_SPLIT:
            p = p // 2 // 8 * 8
    p = -(-positions // -(-positions // p))
    p += -p % 8
    rc = COL_BYTES // (p * itemsize)
    return p, max(1, min(r, rc - rc % 4))


def _tile_loops(x: tuple[int, ...], group: int, positions: int, tile: int, body: str,
                work: int, mg: int) -> str:
    """im2col conv: loops over (image, group, position tile) around body, which computes the
    output channels m0 .. m0 + mn of a tile; threads split them. With fewer tiles than threads,
    each tile's channels are cut in as many parts as the run-time thread count asks for (each
    part fills the im2col tile on its own), so one thread still runs whole groups."""
    tiles = x[0] * group * -(-positions // tile)
    loops = (f"for (int64_t n = 0; n < {x[0]}; ++n)\nfor (int64_t g = 0; g < {group}; ++g)\n"
             f"for (int64_t p0 = 0; p0 < {positions}; p0 += {tile})")
    max_parts = mg // PART_MIN_CHANNELS
    if max_parts < 2 or work < PART_MIN_WORK:
        return (parallel_for(work, tiles, collapse=3)
                + f"{loops} {{\nconst int64_t m0 = 0, mn = {mg};\n{_indent(body)}\n}}")
    part = ("for (int64_t part = 0; part < parts; ++part) {\n"
            f"    const int64_t m0 = part * {mg} / parts, mn = (part + 1) * {mg} / parts - m0;\n"
            f"{_indent(body)}\n}}")
    return ("#pragma omp parallel\n{\n"
            f"const int64_t want = (omp_get_num_threads() + {tiles - 1}) / {tiles};\n"
            f"const int64_t parts = want < {max_parts} ? want : {max_parts};\n"
            f"#pragma omp for schedule(static) collapse(4)\n{loops}\n{part}\n}}")


def _im2col_conv(ctx: KernelContext) -> str:
    """conv as tiles of a matrix product: out[m, p] += w[m, r] * col[r, p] (col = im2col).

    For each tile of P flat output positions and each chunk of RC rows r = (c, kernel tap),
    col holds the input values (0 in the padding); every output channel of the group (or of
    its part, see _tile_loops) then takes the chunk with r unrolled by 4 and a fixed-length
    p loop, which gcc vectorizes.
    """
    x, w, y = ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_types[0].shape
    a, t = ctx.attrs, ctx.t(0)
    nd, group = len(x) - 2, a["group"]
    I, K, O = x[2:], w[2:], y[2:]  # noqa: E741
    cg, mg = x[1] // group, y[1] // group
    k_size, positions = math.prod(K), math.prod(O)
    r_size = cg * k_size
    work = x[0] * y[1] * positions * r_size
    tile, chunk = _gemm_tiles(mg, r_size, positions, ctx.in_types[0].itemsize,
                              x[0] * group, work)
    o_st, k_st = strides(O), strides(K)

    starts = "\n".join(f"ib{j}[p] = ((o / {o_st[j]}) % {O[j]}) * {a['strides'][j]} - "
                        f"{a['pads'][j]};" for j in range(nd))
    past_end = "ib0[p] = -(INT64_C(1) << 40);" + "".join(f" ib{j}[p] = 0;" for j in range(1, nd))
    windows = ("".join(f"int64_t ib{j}[{tile}];\n" for j in range(nd))
               + _for("p", tile, f"const int64_t o = p0 + p;\nif (o < {positions}) {{\n"
                      f"{_indent(starts)}\n}} else {{\n    {past_end}\n}}"))
    taps = "\n".join(f"const int64_t k{j} = (kf / {k_st[j]}) % {K[j]} * {a['dilations'][j]};"
                      for j in range(nd))
    coords = "\n".join(f"const int64_t i{j} = ib{j}[p] + k{j};" for j in range(nd))
    inside = " && ".join(f"i{j} >= 0 && i{j} < {I[j]}" for j in range(nd))
    fill = _for("rr", "rn", (
        f"const int64_t r = r0 + rr, c = r / {k_size}, kf = r % {k_size};\n{taps}\n"
        f"const {t}* restrict xc = {ctx.ins[0]} + (n * {x[1]} + g * {cg} + c) * {math.prod(I)};\n"
        + _for("p", tile, f"{coords}\ncol[rr][p] = ({inside}) ? "
                          f"xc[{_flat([f'i{j}' for j in range(nd)], I)}] : 0;")))
    sum4 = " + ".join(f"w{q} * col[rr + {q}][p]" for q in range(4))
    product = _for("m", "mn", (
        f"const {t}* restrict wm = {ctx.ins[1]} + (g * {mg} + m0 + m) * {r_size} + r0;\n"
        "int64_t rr = 0;\n"
        "for (; rr + 4 <= rn; rr += 4) {\n"
        + _indent("".join(f"const {t} w{q} = wm[rr + {q}];\n" for q in range(4))
                  + _for("p", tile, f"acc[m][p] += {sum4};")) + "\n}\n"
        "for (; rr < rn; ++rr) {\n"
        + _indent(f"const {t} w0 = wm[rr];\n" + _for("p", tile, "acc[m][p] += w0 * col[rr][p];"))
        + "\n}"))
    bias = f"{ctx.ins[2]}[g * {mg} + m0 + m]" if len(ctx.ins) == 3 \
        else lit(0, ctx.in_types[0].dtype)
    store = ctx.store(f"(n * {y[1]} + g * {mg} + m0 + m) * {positions} + p0 + p", "acc[m][p]")
    body = (f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
            f"{windows}\n{t} acc[{mg}][{tile}] {ALIGNED};\n"
            + _nest([("m", "mn"), ("p", tile)], f"acc[m][p] = {bias};") + "\n"
            f"for (int64_t r0 = 0; r0 < {r_size}; r0 += {chunk}) {{\n"
            + _indent(f"const int64_t rn = {r_size} - r0 < {chunk} ? {r_size} - r0 : {chunk};\n"
                      f"{t} col[{chunk}][{tile}] {ALIGNED};\n{fill}\n{product}") + "\n}\n"
            + _for("m", "mn", _for("p", "pn", store)))
    return _tile_loops(x, group, positions, tile, body, work, mg)


@dataclass(frozen=True)
class _Plane:
    """One input plane copied into a local array `xp` with its padding filled in, so that
    every window reads it without bounds checks (the ceil_mode overhang included).

    Each row is stored as `split` (the last stride) interleaved sub-rows, column c at
    sub-row c % split, offset c / split: a tap then reads consecutive output columns from
    consecutive addresses, and gcc vectorizes the row loop for any stride.
    """

    shape: tuple[int, ...]  # the input plane's spatial shape
    padded: tuple[int, ...]
    begins: tuple[int, ...]
    split: int

    @classmethod
    def of(cls, ctx: KernelContext, kernel: tuple[int, ...]) -> _Plane:
        shape, out = ctx.in_types[0].shape[2:], ctx.out_types[0].shape[2:]
        a, nd = ctx.attrs, len(kernel)
        padded = tuple(max(shape[j] + a["pads"][j] + a["pads"][nd + j],
                           (out[j] - 1) * a["strides"][j] + (kernel[j] - 1) * a["dilations"][j]
                           + 1) for j in range(nd))
        return cls(tuple(shape), padded, tuple(a["pads"][:nd]), a["strides"][-1])

    @property
    def width(self) -> int:
        """Elements in one sub-row."""
        return -(-self.padded[-1] // self.split)

    @property
    def size(self) -> int:
        return math.prod(self.padded[:-1]) * self.split * self.width

    def fits(self, ctx: KernelContext) -> bool:
        return self.size * ctx.in_types[0].itemsize <= PLANE_BYTES

    def declare(self, t: str) -> str:
        return f"{t} xp[{self.size}] {ALIGNED};"

    def _at(self, row: str, col: str) -> str:
        """C: the offset of padded column `col` of padded row `row` (flat over outer dims)."""
        if self.split == 1:
            return f"({row}) * {self.width} + {col}"
        return f"(({row}) * {self.split} + ({col}) % {self.split}) * {self.width} + " \
               f"({col}) / {self.split}"

    def fill(self, fill: str) -> str:
        """C: xp = the plane at `xc`, surrounded by fill."""
        nd = len(self.shape)
        row = _flat([f"(i{j} + {self.begins[j]})" for j in range(nd - 1)], self.padded[:-1])
        at = self._at(row, f"i{nd - 1} + {self.begins[-1]}")
        copy = _nest([(f"i{j}", self.shape[j]) for j in range(nd)],
                     f"xp[{at}] = xc[{_flat([f'i{j}' for j in range(nd)], self.shape)}];")
        return _for("q", self.size, f"xp[q] = {fill};") + "\n" + copy

    def rows(self, ctx: KernelContext, kernel: tuple[int, ...], init: str, tap: str,
             store: str) -> str:
        """C: for each output row (o0, o1, ...): acc[ol] = init; run tap for each kernel tap
        (`xr[ol]`: the value it reads for output column ol, `kidx`: its flat index); store."""
        a, t = ctx.attrs, ctx.t(0)
        out = ctx.out_types[0].shape[2:]
        nd = len(out)
        row = _flat([f"(o{j} * {a['strides'][j]} + k{j} * {a['dilations'][j]})"
                     for j in range(nd - 1)], self.padded[:-1])
        kidx = _flat([f"k{j}" for j in range(nd)], kernel)
        start = self._at(row, f"k{nd - 1} * {a['dilations'][-1]}")
        taps = _nest([(f"k{j}", kernel[j]) for j in range(nd)],
                     f"const int64_t kidx = {kidx};\n"
                     f"const {t}* restrict xr = xp + {start};\n{tap}")
        body = (f"{t} acc[{out[-1]}] {ALIGNED};\n" + _for("ol", out[-1], f"acc[ol] = {init};")
                + f"\n{taps}\n" + _for("ol", out[-1], store))
        return _nest([(f"o{j}", out[j]) for j in range(nd - 1)], body)


def _out_index(ctx: KernelContext, plane: str) -> str:
    """C: the flat output index of (o0, ..., ol) in output plane `plane`."""
    out = ctx.out_types[0].shape[2:]
    coords = [f"o{j}" for j in range(len(out) - 1)] + ["ol"]
    return f"({plane}) * {math.prod(out)} + {_flat(coords, out)}"


def _depthwise_conv(ctx: KernelContext, plane: _Plane) -> str:
    """conv with one input channel per group, over its zero-padded local copy."""
    x, w, y = ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_types[0].shape
    t, group = ctx.t(0), ctx.attrs["group"]
    mg = y[1] // group
    tap = (f"const {t} wv = wc[kidx];\n"
           + _for("ol", y[-1], "acc[ol] += wv * xr[ol];"))
    bias = f"{ctx.ins[2]}[g * {mg} + m]" if len(ctx.ins) == 3 else lit(0, ctx.in_types[0].dtype)
    store = ctx.store(_out_index(ctx, f"n * {y[1]} + g * {mg} + m"), "acc[ol]")
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {x[1]} + g) * {math.prod(x[2:])};\n"
               + plane.fill(lit(0, ctx.in_types[0].dtype)) + "\n"
               + _for("m", mg, f"const {t}* restrict wc = {ctx.ins[1]} + (g * {mg} + m) * "
                               f"{math.prod(w[2:])};\n"
                      + plane.rows(ctx, w[2:], bias, tap, store)))
    work = y[0] * y[1] * math.prod(y[2:]) * math.prod(w[2:]) + x[0] * group * plane.size
    return parallel_for(work, x[0] * group, collapse=2) \
        + _nest([("n", x[0]), ("g", group)], plane.declare(t) + "\n" + channel)


@kernel("conv")
def _conv(ctx: KernelContext) -> str:
    per_group = ctx.out_types[0].shape[1] // ctx.attrs["group"]
    if per_group >= GEMM_MIN_CHANNELS:
        return _im2col_conv(ctx)
    plane = _Plane.of(ctx, ctx.in_types[1].shape[2:])
    if ctx.in_types[1].shape[1] == 1 and plane.fits(ctx):
        return _depthwise_conv(ctx, plane)
    return _row_kernel(ctx, transposed=False)


@kernel("conv_transpose")
def _conv_transpose(ctx: KernelContext) -> str:
    return _row_kernel(ctx, transposed=True)


# ---- pools


def _window_loops(ctx: KernelContext, visit: str, *, include_pad: bool = False) -> str:
    """Loops over the kernel window of output position (o0, o1, ...) of plane `xc`.

    visit runs for each tap with `v` (the value) in range; with include_pad, taps in the
    padding run `cnt += 1` too (they count in an average) and skip visit.
    """
    a = ctx.attrs
    shape = ctx.in_types[0].shape[2:]
    nd = len(shape)
    pads = a["pads"]
    inside = " && ".join(f"i{j} >= 0 && i{j} < {shape[j]}" for j in range(nd))
    body = f"const {ctx.t(0)} v = xc[{_flat([f'i{j}' for j in range(nd)], shape)}];\n{visit}"
    if include_pad:
        body = f"cnt += 1;\nif ({inside}) {{\n{_indent(body)}\n}}"
    for j in reversed(range(nd)):
        lo, hi = (-pads[j], shape[j] + pads[nd + j]) if include_pad else (0, shape[j])
        start = f"o{j} * {a['strides'][j]} - {pads[j]}"
        step = (f"const int64_t i{j} = {start} + k{j} * {a['dilations'][j]};\n"
                f"if (i{j} < {lo}) continue;\nif (i{j} >= {hi}) break;\n")
        body = _for(f"k{j}", a["kernel_shape"][j], step + body)
    return body


def _pool(ctx: KernelContext, init: str, visit: str, result: str, *,
          include_pad: bool = False) -> str:
    x, y = ctx.in_types[0].shape, ctx.out_types[0].shape
    out = y[2:]
    loops = [(f"o{j}", n) for j, n in enumerate(out)]
    window = _window_loops(ctx, visit, include_pad=include_pad)
    store = ctx.store(f"nc * {math.prod(out)} + {_flat([v for v, _ in loops], out)}", result)
    plane = f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {math.prod(x[2:])};\n"
    body = plane + _nest(loops[1:], f"{init}\n{window}\n{store}")
    work = SERIAL_WORK * math.prod(y) * math.prod(ctx.attrs["kernel_shape"])
    return parallel_for(work, x[0] * x[1] * out[0], collapse=2) \
        + _nest([("nc", x[0] * x[1]), loops[0]], body)


def _max_of(acc: str, v: str, dtype: str) -> str:
    """C: the larger of acc and v; a NaN v wins, and a NaN acc stays (as in NumPy). The
    comparisons are combined with | so that gcc emits selects, not branches."""
    nan = f" | ({v} != {v})" if is_float(dtype) else ""
    return f"(({v} > {acc}){nan}) ? {v} : {acc}"


def _max_update(dtype: str) -> str:
    """C: fold `v` into `acc` keeping the maximum."""
    return f"acc = {_max_of('acc', 'v', dtype)};"


def _plane_pool(ctx: KernelContext, plane: _Plane, fill: str, tap: str, result: str,
                prologue: str = "") -> str:
    x = ctx.in_types[0].shape
    store = ctx.store(_out_index(ctx, "nc"), result)
    body = (f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {math.prod(x[2:])};\n"
            + plane.fill(fill) + "\n"
            + plane.rows(ctx, tuple(ctx.attrs["kernel_shape"]), fill, tap, store))
    work = SERIAL_WORK * ctx.out_types[0].numel * math.prod(ctx.attrs["kernel_shape"])
    return prologue + parallel_for(work, x[0] * x[1]) \
        + _for("nc", x[0] * x[1], f"{plane.declare(ctx.t(0))}\n{body}")


@kernel("max_pool")
def _max_pool(ctx: KernelContext) -> str:
    dtype = ctx.in_types[0].dtype
    plane = _Plane.of(ctx, tuple(ctx.attrs["kernel_shape"]))
    if not plane.fits(ctx):
        return _pool(ctx, f"{ctx.t(0)} acc = {_lowest(dtype)};", _max_update(dtype), "acc")
    tap = _for("ol", ctx.out_types[0].shape[-1],
               f"const {ctx.t(0)} v = xr[ol];\nacc[ol] = {_max_of('acc[ol]', 'v', dtype)};")
    return _plane_pool(ctx, plane, _lowest(dtype), tap, "acc[ol]")


@kernel("max_pool_argmax")
def _max_pool_argmax(ctx: KernelContext) -> str:
    x = ctx.in_types[0].shape
    spatial = x[2:]
    if ctx.attrs["storage_order"]:  # column-major over the spatial dims
        st = [math.prod(spatial[:j]) for j in range(len(spatial))]
        flat = " + ".join(f"i{j} * {s}" for j, s in enumerate(st))
    else:
        flat = _flat([f"i{j}" for j in range(len(spatial))], spatial)
    init = f"{ctx.t(0)} acc = {_lowest(ctx.in_types[0].dtype)};\nint64_t arg = -1;"
    visit = f"if (v > acc || arg < 0) {{ acc = v; arg = nc * {math.prod(spatial)} + {flat}; }}"
    return _pool(ctx, init, visit, "arg")


def _window_counts(ctx: KernelContext, j: int) -> list[int]:
    """Per output position along dim j: the window taps that count in an average."""
    a, size = ctx.attrs, ctx.in_types[0].shape[2 + j]
    nd = len(a["kernel_shape"])
    lo, hi = (-a["pads"][j], size + a["pads"][nd + j]) if a["count_include_pad"] else (0, size)
    counts = []
    for o in range(ctx.out_types[0].shape[2 + j]):
        start = o * a["strides"][j] - a["pads"][j]
        taps = (start + k * a["dilations"][j] for k in range(a["kernel_shape"][j]))
        counts.append(sum(lo <= i < hi for i in taps))
    return counts


@kernel("avg_pool")
def _avg_pool(ctx: KernelContext) -> str:
    t = ctx.t(0)
    include = ctx.attrs["count_include_pad"]
    plane = _Plane.of(ctx, tuple(ctx.attrs["kernel_shape"]))
    if not plane.fits(ctx):
        visit = "acc += v;" if include else "acc += v;\ncnt += 1;"
        return _pool(ctx, f"{t} acc = 0;\nint64_t cnt = 0;", visit, f"acc / ({t})cnt",
                     include_pad=include)
    nd = len(ctx.attrs["kernel_shape"])
    tables = "".join(f"static const {t} counts{j}[] = {{"
                     f"{', '.join(map(str, _window_counts(ctx, j)))}}};\n" for j in range(nd))
    divisor = " * ".join(f"counts{j}[o{j}]" for j in range(nd - 1)) or "1"
    tap = _for("ol", ctx.out_types[0].shape[-1], "acc[ol] += xr[ol];")
    result = f"acc[ol] / ({divisor} * counts{nd - 1}[ol])"
    return _plane_pool(ctx, plane, lit(0, ctx.in_types[0].dtype), tap, result, tables)


def _global_pool(ctx: KernelContext, init: str, update: str, result: str) -> str:
    x = ctx.in_types[0].shape
    size = math.prod(x[2:])
    body = (f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {size};\n{init}\n"
            + _for("s", size, f"const {ctx.t(0)} v = xc[s];\n{update}") + "\n"
            + ctx.store("nc", result))
    return parallel_for(SERIAL_WORK * math.prod(x), x[0] * x[1]) + _for("nc", x[0] * x[1], body)


@kernel("global_avg_pool")
def _global_avg_pool(ctx: KernelContext) -> str:
    size = math.prod(ctx.in_types[0].shape[2:])
    return _global_pool(ctx, f"{ctx.t(0)} acc = 0;", "acc += v;", f"acc / ({ctx.t(0)}){size}")


@kernel("global_max_pool")
def _global_max_pool(ctx: KernelContext) -> str:
    dtype = ctx.in_types[0].dtype
    return _global_pool(ctx, f"{ctx.t(0)} acc = {_lowest(dtype)};", _max_update(dtype), "acc")


# ---- lrn


@kernel("lrn")
def _lrn(ctx: KernelContext) -> str:
    x = ctx.in_types[0].shape
    t, dtype = ctx.t(0), ctx.in_types[0].dtype
    n, c, size = x[0], x[1], math.prod(x[2:])
    tile = min(ROW_TILE, size)
    before, after = lrn_window(ctx.attrs["size"])
    a = ctx.attrs
    coef = lit(a["alpha"] / a["size"], dtype)
    pw = "powf" if dtype == "float32" else "pow"
    value = (f"xp[s] / {pw}({lit(a['bias'], dtype)} + {coef} * sums[s - t0], "
             f"{lit(a['beta'], dtype)})")
    plane = f"{ctx.ins[0]} + (n * {c} + c) * {size}"
    body = (f"const int64_t tn = {size} - t0 < {tile} ? {size} - t0 : {tile};\n"
            f"{t} sums[{tile}] {ALIGNED};\n" + _for("s", "tn", "sums[s] = 0;") + "\n"
            f"const int64_t c_lo = c - {before} < 0 ? 0 : c - {before};\n"
            f"const int64_t c_hi = c + {after} >= {c} ? {c - 1} : c + {after};\n"
            + _for("cc", "c_hi + 1", f"const {t}* restrict xq = {ctx.ins[0]} + "
                   f"(n * {c} + cc) * {size} + t0;\n"
                   + _for("s", "tn", "sums[s] += xq[s] * xq[s];"), start="c_lo") + "\n"
            f"const {t}* restrict xp = {plane};\n"
            + _for("s", "t0 + tn", ctx.store(f"(n * {c} + c) * {size} + s", value), start="t0"))
    tiles = f"for (int64_t t0 = 0; t0 < {size}; t0 += {tile}) {{\n{_indent(body)}\n}}"
    work = n * c * size * (before + after + 1 + expression_work(value))
    return parallel_for(work, n * c * -(-size // tile), collapse=3) \
        + _nest([("n", n), ("c", c)], tiles)


# ---- normalizations


def _lane_sum(total: str, term: Callable[[str], str], size: int) -> str:
    """C: double `total` = the sum of term(r) for r < size, in LANES independent partial sums
    (a reduction gcc vectorizes without reassociating floating-point math)."""
    main = size - size % LANES
    body = (f"double lane[{LANES}] {ALIGNED};\n" + _for("u", LANES, "lane[u] = 0.0;") + "\n"
            f"for (int64_t r = 0; r < {main}; r += {LANES}) {{\n"
            + _indent(_for("u", LANES, f"lane[u] += {term('r + u')};")) + "\n}\n"
            + _for("r", size, f"lane[0] += {term('r')};", start=main) + "\n"
            f"{total} = " + " + ".join(f"lane[{u}]" for u in range(LANES)) + ";")
    return f"double {total};\n{{\n{_indent(body)}\n}}"


def _moments(x: str, index: Callable[[str], str], size: int) -> str:
    """C: `mean` and biased `var` (double) of x[index(r)] for r < size."""
    def dev(r: str) -> str:
        return f"(({x}[{index(r)}] - mean) * ({x}[{index(r)}] - mean))"

    return (_lane_sum("mean", lambda r: f"{x}[{index(r)}]", size) + f"\nmean /= {size};\n"
            + _lane_sum("var", dev, size) + f"\nvar /= {size};")


def _rows(ctx: KernelContext, groups: int, size: int, setup: str, value: str,
          index: Callable[[str], str] | None = None) -> str:
    """Normalize each group g of `size` elements: moments, then setup, then store value(v).

    index: C expression of x's flat index of element r of group g (default: contiguous).
    """
    index = index or (lambda r: f"g * {size} + {r}")
    x = ctx.ins[0]
    body = (_moments(x, index, size) + f"\n{setup}\n"
            + _for("r", size, f"const {ctx.t(0)} v = {x}[{index('r')}];\n"
                   + ctx.store(index("r"), value)))
    return parallel_for(3 * groups * size, groups) + _for("g", groups, body)


def _inv_std(ctx: KernelContext, var: str = "var") -> str:
    eps = lit(ctx.attrs["epsilon"], "float64")
    return f"const {ctx.t(0)} inv = ({ctx.t(0)})(1.0 / sqrt({var} + {eps}));"


@kernel("batch_norm")
def _batch_norm(ctx: KernelContext) -> str:
    x = ctx.in_types[0].shape
    n, c, size = x[0], x[1], math.prod(x[2:])
    t = ctx.t(0)
    scale, bias, mean, var = ctx.ins[1:5]
    eps = lit(ctx.attrs["epsilon"], "float64")
    setup = (f"const {t} a = ({t})({scale}[c] / sqrt((double){var}[c] + {eps}));\n"
             f"const {t} mu = {mean}[c], b = {bias}[c];\n")
    body = setup + _for("s", size, ctx.store(f"(n * {c} + c) * {size} + s",
                                             f"({ctx.ins[0]}[(n * {c} + c) * {size} + s] - mu)"
                                             " * a + b"))
    return parallel_for(n * c * size, n * c, collapse=2) + _nest([("n", n), ("c", c)], body)


@kernel("instance_norm")
def _instance_norm(ctx: KernelContext) -> str:
    x = ctx.in_types[0].shape
    t = ctx.t(0)
    setup = (f"{_inv_std(ctx)}\nconst {t} mu = ({t})mean, a = inv * {ctx.ins[1]}[g % {x[1]}];\n"
             f"const {t} b = {ctx.ins[2]}[g % {x[1]}];")
    return _rows(ctx, x[0] * x[1], math.prod(x[2:]), setup, "(v - mu) * a + b")


def _layer_groups(ctx: KernelContext) -> tuple[int, int]:
    shape, axis = ctx.in_types[0].shape, ctx.attrs["axis"]
    return math.prod(shape[:axis]), math.prod(shape[axis:])


@kernel("layer_norm")
def _layer_norm(ctx: KernelContext) -> str:
    groups, size = _layer_groups(ctx)
    inner = ctx.in_types[0].shape[ctx.attrs["axis"]:]
    t = ctx.t(0)
    scale = f"{ctx.ins[1]}[{broadcast_index(ctx.in_types[1].shape, inner, 'r')}]"
    value = f"(v - mu) * inv * {scale}"
    if len(ctx.ins) == 3:
        value += f" + {ctx.ins[2]}[{broadcast_index(ctx.in_types[2].shape, inner, 'r')}]"
    return _rows(ctx, groups, size, f"{_inv_std(ctx)}\nconst {t} mu = ({t})mean;", value)


@kernel("rms_norm")
def _rms_norm(ctx: KernelContext) -> str:
    groups, size = _layer_groups(ctx)
    inner = ctx.in_types[0].shape[ctx.attrs["axis"]:]
    x = ctx.ins[0]
    scale = f"{ctx.ins[1]}[{broadcast_index(ctx.in_types[1].shape, inner, 'r')}]"

    def square(r: str) -> str:
        return f"((double){x}[g * {size} + {r}] * {x}[g * {size} + {r}])"

    store = ctx.store(f"g * {size} + r", f"{x}[g * {size} + r] * inv * {scale}")
    body = (_lane_sum("total", square, size) + f"\n{_inv_std(ctx, f'total / {size}')}\n"
            + _for("r", size, store))
    return parallel_for(2 * groups * size, groups) + _for("g", groups, body)


@kernel("layer_norm_stats", epilogue=False)
def _layer_norm_stats(ctx: KernelContext) -> str:
    groups, size = _layer_groups(ctx)
    t = ctx.t(0)
    body = (_moments(ctx.ins[0], lambda r: f"g * {size} + {r}", size) + "\n" + _inv_std(ctx)
            + "\n"
            f"{ctx.outs[0]}[g] = ({t})mean;\n{ctx.outs[1]}[g] = inv;")
    return parallel_for(2 * groups * size, groups) + _for("g", groups, body)


@kernel("mean_variance_norm")
def _mean_variance_norm(ctx: KernelContext) -> str:
    shape = ctx.in_types[0].shape
    axes = set(ctx.attrs["axes"])
    st = strides(shape)
    kept = [d for d in range(len(shape)) if d not in axes]
    reduced = [d for d in range(len(shape)) if d in axes]

    def offset(var: str, dims: list[int]) -> str:
        sub = [shape[d] for d in dims]
        sub_st = strides(tuple(sub))
        terms = [f"(({var} / {s}) % {n}) * {st[d]}" for d, n, s in zip(dims, sub, sub_st,
                                                                        strict=True)]
        return " + ".join(terms) if terms else "0"

    t = ctx.t(0)
    def index(r: str) -> str:
        return f"{offset('g', kept)} + {offset(f'({r})', reduced)}"

    setup = (f"const {t} mu = ({t})mean;\n"
             f"const {t} inv = ({t})(1.0 / (sqrt(var) + {lit(MVN_EPSILON, 'float64')}));")
    groups = math.prod(shape[d] for d in kept)
    return _rows(ctx, groups, math.prod(shape[d] for d in reduced), setup, "(v - mu) * inv",
                 index)


@kernel("lp_norm")
def _lp_norm(ctx: KernelContext) -> str:
    shape, axis = ctx.in_types[0].shape, ctx.attrs["axis"]
    outer, k, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    t, x = ctx.t(0), ctx.ins[0]
    index = f"(a * {k} + kk) * {inner} + b"
    term = f"fabs((double){x}[{index}])" if ctx.attrs["p"] == 1 else \
        f"(double){x}[{index}] * {x}[{index}]"
    norm = "total" if ctx.attrs["p"] == 1 else "sqrt(total)"
    body = ("double total = 0.0;\n" + _for("kk", k, f"total += {term};") + "\n"
            f"const {t} norm = ({t}){norm};\n"
            + _for("kk", k, ctx.store(index, f"norm == 0 ? 0 : {x}[{index}] / norm")))
    return parallel_for(2 * outer * inner * k, outer * inner, collapse=2) \
        + _nest([("a", outer), ("b", inner)], body)
