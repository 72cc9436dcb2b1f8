"""C kernels of conv and conv_transpose (semantics: kiln/ops/conv.py).

Tensors are row-major (N, C, *spatial). Every inner loop has a trip count known when
compiling, so that gcc -O2 vectorizes it. conv picks one of five kernels:
- Winograd F(4x4, 3x3) (its weight stored transformed by the packing pass):
  kernels/winograd.py;
- the GEMM driver (float32, 8+ output channels per group, big enough): kernels/conv_gemm.py;
- im2col (other dtypes, 8+ output channels per group): tiles of a matrix product weights x
  im2col(x) in C loops;
- depthwise (one input channel per group): kernels/depthwise.py (a channel at a time over a
  padded local copy of its plane, or 16 channels along the vectors) and
  kernels/depthwise_direct.py (float32 rows of 28+ outputs read straight from the input);
- rows (the rest, and conv_transpose): a tile of one output row for a few output channels
  in a local accumulator, each kernel tap over the row range it reaches.
conv_transpose runs on the GEMM driver when worth it (kernels/conv_transpose_gemm.py), or rows.
Threads split the outer loops (batch, channels, output rows or tiles), never a reduction;
local arrays are declared inside the split loops, so each thread has its own.
"""

from __future__ import annotations

import math

from .conv_gemm import sgemm_conv, sgemm_worth_conv
from .conv_transpose_gemm import sgemm_conv_transpose, sgemm_worth_conv_transpose
from .depthwise import DEPTHWISE_UNROLLED_TAPS, depthwise_conv
from .geometry import ConvGeometry, ceil_div, tile_loops
from .loops import ROW_TILE, Plane, flat_index, indent, loop, nest
from .registry import (
    ALIGNED,
    KernelContext,
    kernel,
    lit,
    parallel,
    strides,
    worth_threads,
)
from .winograd import winograd_conv

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


def _channel_block(per_group: int) -> int:
    return next(b for b in CHANNEL_BLOCKS if per_group % b == 0)


def _weight_layout(g: ConvGeometry, transposed: bool) -> tuple[str, int]:
    """C: the offset of the first weight of channel c for block m0, and the step between the
    weights of consecutive block channels."""
    k_size = math.prod(g.kernel)
    cg, mg = g.in_per_group, g.out_per_group
    if transposed:  # w: (C, M/group, *K)
        return f"((g * {cg} + c) * {mg} + m0) * {k_size}", k_size
    return f"((g * {mg} + m0) * {cg} + c) * {k_size}", cg * k_size  # w: (M, C/group, *K)


def _last_dim_taps(t: str, g: ConvGeometry, mb: int, w_step: int, transposed: bool) -> str:
    """C: the taps of the last kernel dim over the row tile t0 .. t0 + tn: each weight in a
    register, the contiguous row innermost (gather for conv, scatter for conv_transpose)."""
    sl, dl, pl, il = g.strides[-1], g.dilations[-1], g.pad_begins[-1], g.in_size[-1]
    weights = "\n".join(f"const {t} w{j} = wr[kl + {j * w_step}];" for j in range(mb))
    if transposed:  # output ol = il * s + off
        bounds = (f"int64_t lo = {ceil_div('t0 - off', sl)};\nif (lo < 0) lo = 0;\n"
                  f"int64_t hi = {ceil_div('t0 + tn - off', sl)};\n"
                  f"if (hi > {il}) hi = {il};")
        update = "\n".join(f"acc[{j}][il * {sl} + off - t0] += w{j} * xv;" for j in range(mb))
        inner = loop("il", "hi", f"const {t} xv = xr[il];\n{update}", start="lo")
    else:  # input il = ol * s + off
        bounds = (f"int64_t lo = off >= 0 ? 0 : {ceil_div('-off', sl)};\n"
                  f"if (lo < t0) lo = t0;\n"
                  f"int64_t hi = {il} - off <= 0 ? 0 : {ceil_div(f'{il} - off', sl)};\n"
                  f"if (hi > t0 + tn) hi = t0 + tn;")
        update = "\n".join(f"acc[{j}][ol - t0] += w{j} * xv;" for j in range(mb))
        inner = loop("ol", "hi", f"const {t} xv = xr[ol * {sl} + off];\n{update}", start="lo")
    return loop("kl", g.kernel[-1], f"const int64_t off = kl * {dl} - {pl};\n{bounds}\n"
                                    f"{weights}\n{inner}")


def _outer_dim_taps(t: str, g: ConvGeometry, taps: str, transposed: bool) -> str:
    """C: loops over the outer kernel dims around taps, skipping taps whose input row is
    outside (or, transposed, off-stride); xr and wr point at the row and tap they reach."""
    nd, size, kernel = g.rank, g.in_size, g.kernel
    body = (f"const {t}* restrict xr = xc + "
            f"({flat_index([f'i{j}' for j in range(nd - 1)], size[:-1])}) * {size[-1]};\n"
            f"const {t}* restrict wr = wc + "
            f"({flat_index([f'k{j}' for j in range(nd - 1)], kernel[:-1])}) * {kernel[-1]};\n"
            f"{taps}")
    for j in reversed(range(nd - 1)):
        s, d, p = g.strides[j], g.dilations[j], g.pad_begins[j]
        if transposed:
            check = f"const int64_t q{j} = o{j} + {p} - k{j} * {d};\n"
            check += f"if (q{j} < 0 || q{j} % {s} != 0) continue;\n" if s > 1 else \
                f"if (q{j} < 0) continue;\n"
            check += f"const int64_t i{j} = q{j} / {s};\nif (i{j} >= {size[j]}) continue;"
        else:
            check = (f"const int64_t i{j} = o{j} * {s} + k{j} * {d} - {p};\n"
                     f"if (i{j} < 0 || i{j} >= {size[j]}) continue;")
        body = loop(f"k{j}", kernel[j], f"{check}\n{body}")
    return body


def _row_tile(ctx: KernelContext, g: ConvGeometry, mb: int, tile: int, channel: str) -> str:
    """C: one row tile of mb output channels: acc = bias, add each input channel's taps
    (channel), then store each element once."""
    t, mg, out = ctx.t(0), g.out_per_group, g.out_size
    bias = lit(0, ctx.in_types[0].dtype)
    if len(ctx.ins) == 3:
        bias = f"{ctx.ins[2]}[g * {mg} + m0 + j]"
    o_flat = flat_index([f"o{j}" for j in range(g.rank - 1)], out[:-1])
    store = ctx.store(f"(n * {g.out_channels} + g * {mg} + m0 + j) * {math.prod(out)} + "
                      f"({o_flat}) * {out[-1]} + t0 + ol", "acc[j][ol]")
    return (f"const int64_t tn = {out[-1]} - t0 < {tile} ? {out[-1]} - t0 : {tile};\n"
            f"{t} acc[{mb}][{tile}] {ALIGNED};\n"
            + nest([("j", mb)], loop("ol", "tn", f"acc[j][ol] = {bias};")) + "\n"
            + loop("c", g.in_per_group, channel) + "\n"
            + nest([("j", mb)], loop("ol", "tn", store)))


def _row_kernel(ctx: KernelContext, transposed: bool) -> str:
    """conv / conv_transpose, a row tile at a time: the weight tap sits in a register and
    the contiguous output row is innermost; the taps differ (gather vs scatter)."""
    g = ConvGeometry.of(ctx)
    if not transposed:
        g = g.as_row()
    t, out, mg = ctx.t(0), g.out_size, g.out_per_group
    mb = _channel_block(mg)
    tile = min(ROW_TILE, out[-1])
    w_base, w_step = _weight_layout(g, transposed)
    taps = _outer_dim_taps(t, g, _last_dim_taps(t, g, mb, w_step, transposed), transposed)
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {g.in_channels} + g * "
               f"{g.in_per_group} + c) * {math.prod(g.in_size)};\n"
               f"const {t}* restrict wc = {ctx.ins[1]} + {w_base};\n{taps}")
    row = _row_tile(ctx, g, mb, tile, channel)
    # Every loop down to the row tiles is split among the threads: all write apart.
    loops = [("n", g.batch), ("g", g.group), ("m0", mg, mb),
             *[(f"o{j}", out[j]) for j in range(g.rank - 1)], ("t0", out[-1], tile)]
    positions = math.prod(g.in_size if transposed else out)
    work = g.batch * g.group * mg * g.in_per_group * math.prod(g.kernel) * positions
    trips = g.batch * g.group * mg // mb * math.prod(out[:-1]) * -(-out[-1] // tile)
    return parallel(ctx, loops, indent(row), threads=worth_threads(work, trips))


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


def _tile_loops(ctx: KernelContext, g: ConvGeometry, positions: int, tile: int, body: str,
                work: int) -> str:
    """im2col conv: geometry.tile_loops, whose parts (when fewer tiles than threads) each
    fill the im2col tile on their own, so one thread still runs whole groups."""
    mg = g.out_per_group
    bounds = f"const int64_t m0 = part * {mg} / parts, mn = (part + 1) * {mg} / parts - m0;"
    return tile_loops(ctx, g, positions, tile, body, work=work, split=work >= PART_MIN_WORK,
                      max_parts=mg // PART_MIN_CHANNELS, part_bounds=bounds)


def _im2col_windows(g: ConvGeometry, tile: int) -> str:
    """C: ib<j>[p], the first input coordinate along dim j of the window of output position
    p0 + p (far outside for positions past the end, so they read only padding)."""
    nd, out, positions = g.rank, g.out_size, math.prod(g.out_size)
    o_st = strides(out)
    starts = "\n".join(f"ib{j}[p] = ((o / {o_st[j]}) % {out[j]}) * {g.strides[j]} - "
                        f"{g.pad_begins[j]};" for j in range(nd))
    past_end = "ib0[p] = -(INT64_C(1) << 40);" + "".join(f" ib{j}[p] = 0;" for j in range(1, nd))
    return ("".join(f"int64_t ib{j}[{tile}];\n" for j in range(nd))
            + loop("p", tile, f"const int64_t o = p0 + p;\nif (o < {positions}) {{\n"
                   f"{indent(starts)}\n}} else {{\n    {past_end}\n}}"))


def _im2col_fill(ctx: KernelContext, g: ConvGeometry, tile: int) -> str:
    """C: col[rr][p] = the input value that reduction row r0 + rr (channel c, kernel tap kf)
    meets at output position p0 + p, 0 in the padding."""
    nd, size, kernel = g.rank, g.in_size, g.kernel
    k_size, k_st = math.prod(kernel), strides(kernel)
    taps = "\n".join(f"const int64_t k{j} = (kf / {k_st[j]}) % {kernel[j]} * {g.dilations[j]};"
                      for j in range(nd))
    coords = "\n".join(f"const int64_t i{j} = ib{j}[p] + k{j};" for j in range(nd))
    inside = " && ".join(f"i{j} >= 0 && i{j} < {size[j]}" for j in range(nd))
    plane = f"(n * {g.in_channels} + g * {g.in_per_group} + c) * {math.prod(size)}"
    return loop("rr", "rn", (
        f"const int64_t r = r0 + rr, c = r / {k_size}, kf = r % {k_size};\n{taps}\n"
        f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + {plane};\n"
        + loop("p", tile, f"{coords}\ncol[rr][p] = ({inside}) ? "
                          f"xc[{flat_index([f'i{j}' for j in range(nd)], size)}] : 0;")))


def _im2col_product(ctx: KernelContext, g: ConvGeometry, tile: int, r_size: int) -> str:
    """C: acc[m][p] += w[m, r0 + rr] * col[rr][p] for the part's channels, rr unrolled by 4."""
    t = ctx.t(0)
    sum4 = " + ".join(f"w{q} * col[rr + {q}][p]" for q in range(4))
    return loop("m", "mn", (
        f"const {t}* restrict wm = {ctx.ins[1]} + (g * {g.out_per_group} + m0 + m) * {r_size}"
        " + r0;\n"
        "int64_t rr = 0;\n"
        "for (; rr + 4 <= rn; rr += 4) {\n"
        + indent("".join(f"const {t} w{q} = wm[rr + {q}];\n" for q in range(4))
                 + loop("p", tile, f"acc[m][p] += {sum4};")) + "\n}\n"
        "for (; rr < rn; ++rr) {\n"
        + indent(f"const {t} w0 = wm[rr];\n" + loop("p", tile, "acc[m][p] += w0 * col[rr][p];"))
        + "\n}"))


def _im2col_conv(ctx: KernelContext) -> str:
    """conv as tiles of a matrix product: out[m, p] += w[m, r] * col[r, p] (col = im2col).

    For each tile of P flat output positions and each chunk of RC rows r = (c, kernel tap),
    col holds the input values (0 in the padding); every output channel of the group (or of
    its part, see _tile_loops) then takes the chunk with r unrolled by 4 and a fixed-length
    p loop, which gcc vectorizes.
    """
    g, t = ConvGeometry.of(ctx), ctx.t(0)
    mg, positions = g.out_per_group, math.prod(g.out_size)
    r_size = g.in_per_group * math.prod(g.kernel)
    work = g.batch * g.out_channels * positions * r_size
    tile, chunk = _gemm_tiles(mg, r_size, positions, ctx.in_types[0].itemsize,
                              g.batch * g.group, work)
    bias = f"{ctx.ins[2]}[g * {mg} + m0 + m]" if len(ctx.ins) == 3 \
        else lit(0, ctx.in_types[0].dtype)
    store = ctx.store(f"(n * {g.out_channels} + g * {mg} + m0 + m) * {positions} + p0 + p",
                      "acc[m][p]")
    chunk_body = (f"const int64_t rn = {r_size} - r0 < {chunk} ? {r_size} - r0 : {chunk};\n"
                  f"{t} col[{chunk}][{tile}] {ALIGNED};\n{_im2col_fill(ctx, g, tile)}\n"
                  f"{_im2col_product(ctx, g, tile, r_size)}")
    body = (f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
            f"{_im2col_windows(g, tile)}\n{t} acc[{mg}][{tile}] {ALIGNED};\n"
            + nest([("m", "mn"), ("p", tile)], f"acc[m][p] = {bias};") + "\n"
            f"for (int64_t r0 = 0; r0 < {r_size}; r0 += {chunk}) {{\n"
            + indent(chunk_body) + "\n}\n"
            + loop("m", "mn", loop("p", "pn", store)))
    return _tile_loops(ctx, g, positions, tile, body, work)


@kernel("conv")
def _conv(ctx: KernelContext) -> str:
    g = ConvGeometry.of(ctx)
    if g.winograd:
        return winograd_conv(ctx, g)
    if g.packed or g.out_per_group >= GEMM_MIN_CHANNELS:
        return sgemm_conv(ctx, g) if sgemm_worth_conv(ctx, g) else _im2col_conv(ctx)
    # Unrolled taps read a whole padded row `stride` apart (filling a split plane costs more).
    plane = Plane.of(ctx, g.kernel, split=math.prod(g.kernel) > DEPTHWISE_UNROLLED_TAPS)
    if g.in_per_group == 1 and plane.fits(ctx):
        return depthwise_conv(ctx, g, plane)
    return _row_kernel(ctx, transposed=False)


@kernel("conv_transpose")
def _conv_transpose(ctx: KernelContext) -> str:
    g = ConvGeometry.of(ctx)
    if sgemm_worth_conv_transpose(ctx, g):
        return sgemm_conv_transpose(ctx, g)
    return _row_kernel(ctx, transposed=True)
