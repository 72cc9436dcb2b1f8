"""C kernels of conv and conv_transpose (semantics: kiln/ops/conv.py).

Tensors are row-major (N, C, *spatial). Every inner loop has a trip count known when
compiling, so that gcc -O2 vectorizes it. conv picks one of three kernels:
- im2col (8+ output channels per group): tiles of a matrix product weights x im2col(x);
- depthwise (one input channel per group): over a padded local copy of the input plane;
- rows (the rest, and conv_transpose): a tile of one output row for a few output channels
  in a local accumulator, each kernel tap over the row range it reaches.
Threads split the outer loops (batch, channels, output rows or tiles), never a reduction;
local arrays are declared inside the split loops, so each thread has its own.
"""

from __future__ import annotations

import math

from .loops import ROW_TILE, Plane, flat_index, indent, loop, nest, out_index
from .registry import (
    ALIGNED,
    KernelContext,
    kernel,
    lit,
    parallel_for,
    strides,
    worth_threads,
)

GEMM_MIN_CHANNELS = 8  # output channels per group from which conv takes the im2col kernel
ACC_BYTES = 32 * 1024  # im2col conv: accumulator tile (output channels x positions)
COL_BYTES = 16 * 1024  # im2col conv: input tile (reduction rows x positions)
CHANNEL_BLOCKS = (4, 2, 1)  # row kernel: output channels computed together (first divisor)
# im2col conv, for threads: a kernel worth threads gets narrower tiles (down to TILE_MIN_SPLIT
# positions) until it has TILE_SPLIT_TRIPS; then, with fewer tiles than threads, its groups
# are cut in parts of at least PART_MIN_CHANNELS output channels, if it has PART_MIN_WORK
# multiply-adds (each part fills the im2col tile again: below, 2 threads were slower than 1).
TILE_MIN_SPLIT = 64
TILE_SPLIT_TRIPS = 2
PART_MIN_CHANNELS = 8
PART_MIN_WORK = 1 << 18


def _ceil_div(a: str, b: int) -> str:
    """C expression: ceil(a / b) for any int64 a and a positive constant b."""
    if b == 1:
        return f"({a})"
    return f"(({a}) > 0 ? (({a}) + {b - 1}) / {b} : -((-({a})) / {b}))"


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
        inner = loop("il", "hi", f"const {t} xv = xr[il];\n{update}", start="lo")
    else:  # input il = ol * s + off
        bounds = (f"int64_t lo = off >= 0 ? 0 : {_ceil_div('-off', sl)};\n"
                  f"if (lo < t0) lo = t0;\n"
                  f"int64_t hi = {I[-1]} - off <= 0 ? 0 : {_ceil_div(f'{I[-1]} - off', sl)};\n"
                  f"if (hi > t0 + tn) hi = t0 + tn;")
        update = "\n".join(f"acc[{j}][ol - t0] += w{j} * xv;" for j in range(mb))
        inner = loop("ol", "hi", f"const {t} xv = xr[ol * {sl} + off];\n{update}", start="lo")
    taps = loop("kl", K[-1], f"const int64_t off = kl * {dl} - {pl};\n{bounds}\n"
                             f"{weights}\n{inner}")

    # Outer kernel dims: skip taps whose input row is outside (or, transposed, off-stride).
    body = (f"const {t}* restrict xr = xc + "
            f"({flat_index([f'i{j}' for j in range(nd - 1)], I[:-1])}) * {I[-1]};\n"
            f"const {t}* restrict wr = wc + "
            f"({flat_index([f'k{j}' for j in range(nd - 1)], K[:-1])}) * {K[-1]};\n{taps}")
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
        body = loop(f"k{j}", K[j], f"{check}\n{body}")
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {g['C']} + g * {cg} + c) * "
               f"{i_size};\nconst {t}* restrict wc = {ctx.ins[1]} + {w_base};\n{body}")

    bias = lit(0, ctx.in_types[0].dtype)
    if len(ctx.ins) == 3:
        bias = f"{ctx.ins[2]}[g * {mg} + m0 + j]"
    o_flat = flat_index([v for v, _ in outer], O[:-1])
    store = ctx.store(f"(n * {g['M']} + g * {mg} + m0 + j) * {o_size} + ({o_flat}) * {O[-1]}"
                      " + t0 + ol", "acc[j][ol]")
    row = (f"const int64_t tn = {O[-1]} - t0 < {tile} ? {O[-1]} - t0 : {tile};\n"
           f"{t} acc[{mb}][{tile}] {ALIGNED};\n"
           + nest([("j", mb)], loop("ol", "tn", f"acc[j][ol] = {bias};")) + "\n"
           + loop("c", cg, channel) + "\n"
           + nest([("j", mb)], loop("ol", "tn", store)))
    tiles = f"for (int64_t t0 = 0; t0 < {O[-1]}; t0 += {tile}) {{\n{indent(row)}\n}}"
    blocks = f"for (int64_t m0 = 0; m0 < {mg}; m0 += {mb}) {{\n" \
             f"{indent(nest(outer, tiles))}\n}}"
    # Every loop down to the row tiles is split among the threads: all write apart.
    work = g["N"] * g["G"] * mg * cg * k_size * (i_size if transposed else o_size)
    trips = g["N"] * g["G"] * mg // mb * math.prod(O[:-1]) * -(-O[-1] // tile)
    return parallel_for(work, trips, collapse=nd + 3) \
        + nest([("n", g["N"]), ("g", g["G"])], blocks)


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
                + f"{loops} {{\nconst int64_t m0 = 0, mn = {mg};\n{indent(body)}\n}}")
    part = ("for (int64_t part = 0; part < parts; ++part) {\n"
            f"    const int64_t m0 = part * {mg} / parts, mn = (part + 1) * {mg} / parts - m0;\n"
            f"{indent(body)}\n}}")
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
               + loop("p", tile, f"const int64_t o = p0 + p;\nif (o < {positions}) {{\n"
                      f"{indent(starts)}\n}} else {{\n    {past_end}\n}}"))
    taps = "\n".join(f"const int64_t k{j} = (kf / {k_st[j]}) % {K[j]} * {a['dilations'][j]};"
                      for j in range(nd))
    coords = "\n".join(f"const int64_t i{j} = ib{j}[p] + k{j};" for j in range(nd))
    inside = " && ".join(f"i{j} >= 0 && i{j} < {I[j]}" for j in range(nd))
    fill = loop("rr", "rn", (
        f"const int64_t r = r0 + rr, c = r / {k_size}, kf = r % {k_size};\n{taps}\n"
        f"const {t}* restrict xc = {ctx.ins[0]} + (n * {x[1]} + g * {cg} + c) * {math.prod(I)};\n"
        + loop("p", tile, f"{coords}\ncol[rr][p] = ({inside}) ? "
                          f"xc[{flat_index([f'i{j}' for j in range(nd)], I)}] : 0;")))
    sum4 = " + ".join(f"w{q} * col[rr + {q}][p]" for q in range(4))
    product = loop("m", "mn", (
        f"const {t}* restrict wm = {ctx.ins[1]} + (g * {mg} + m0 + m) * {r_size} + r0;\n"
        "int64_t rr = 0;\n"
        "for (; rr + 4 <= rn; rr += 4) {\n"
        + indent("".join(f"const {t} w{q} = wm[rr + {q}];\n" for q in range(4))
                 + loop("p", tile, f"acc[m][p] += {sum4};")) + "\n}\n"
        "for (; rr < rn; ++rr) {\n"
        + indent(f"const {t} w0 = wm[rr];\n" + loop("p", tile, "acc[m][p] += w0 * col[rr][p];"))
        + "\n}"))
    bias = f"{ctx.ins[2]}[g * {mg} + m0 + m]" if len(ctx.ins) == 3 \
        else lit(0, ctx.in_types[0].dtype)
    store = ctx.store(f"(n * {y[1]} + g * {mg} + m0 + m) * {positions} + p0 + p", "acc[m][p]")
    body = (f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
            f"{windows}\n{t} acc[{mg}][{tile}] {ALIGNED};\n"
            + nest([("m", "mn"), ("p", tile)], f"acc[m][p] = {bias};") + "\n"
            f"for (int64_t r0 = 0; r0 < {r_size}; r0 += {chunk}) {{\n"
            + indent(f"const int64_t rn = {r_size} - r0 < {chunk} ? {r_size} - r0 : {chunk};\n"
                     f"{t} col[{chunk}][{tile}] {ALIGNED};\n{fill}\n{product}") + "\n}\n"
            + loop("m", "mn", loop("p", "pn", store)))
    return _tile_loops(x, group, positions, tile, body, work, mg)


def _depthwise_conv(ctx: KernelContext, plane: Plane) -> str:
    """conv with one input channel per group, over its zero-padded local copy."""
    x, w, y = ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_types[0].shape
    t, group = ctx.t(0), ctx.attrs["group"]
    mg = y[1] // group
    tap = (f"const {t} wv = wc[kidx];\n"
           + loop("ol", y[-1], "acc[ol] += wv * xr[ol];"))
    bias = f"{ctx.ins[2]}[g * {mg} + m]" if len(ctx.ins) == 3 else lit(0, ctx.in_types[0].dtype)
    store = ctx.store(out_index(ctx, f"n * {y[1]} + g * {mg} + m"), "acc[ol]")
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {x[1]} + g) * {math.prod(x[2:])};\n"
               + plane.fill(lit(0, ctx.in_types[0].dtype)) + "\n"
               + loop("m", mg, f"const {t}* restrict wc = {ctx.ins[1]} + (g * {mg} + m) * "
                               f"{math.prod(w[2:])};\n"
                      + plane.rows(ctx, w[2:], bias, tap, store)))
    work = y[0] * y[1] * math.prod(y[2:]) * math.prod(w[2:]) + x[0] * group * plane.size
    return parallel_for(work, x[0] * group, collapse=2) \
        + nest([("n", x[0]), ("g", group)], plane.declare(t) + "\n" + channel)


@kernel("conv")
def _conv(ctx: KernelContext) -> str:
    per_group = ctx.out_types[0].shape[1] // ctx.attrs["group"]
    if per_group >= GEMM_MIN_CHANNELS:
        return _im2col_conv(ctx)
    plane = Plane.of(ctx, ctx.in_types[1].shape[2:])
    if ctx.in_types[1].shape[1] == 1 and plane.fits(ctx):
        return _depthwise_conv(ctx, plane)
    return _row_kernel(ctx, transposed=False)


@kernel("conv_transpose")
def _conv_transpose(ctx: KernelContext) -> str:
    return _row_kernel(ctx, transposed=True)
