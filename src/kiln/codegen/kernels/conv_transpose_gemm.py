"""float32 conv_transpose on the GEMM driver (kiln/codegen/gemm.py): per image and group,
col[(m, k)][p] = sum over c of w[c][m][k] * x[c][p], then col2im: product element (m, k, p)
goes to output position p * stride + k * dilation - pad_begin (skipped outside).

A is the weight in place (row (m, k) is a column of w viewed as C/group x M/group * taps). B
is the input: a tile of positions at a time copied into column panels (the driver's layout)
in a per-thread buffer, so the driver calls for the tile's row chunks pack nothing. The
driver writes each chunk's product into a per-thread buffer and hands every finished tile
to `kiln_scatter`, which sends each row's run of positions along the last input dim to its
output row (strided by the stride), while the tile is in cache:
- kernel == stride with no padding (U-Net's 2x2 stride 2 upsampling): every output has
  exactly one contribution, so kiln_scatter stores it at once through the bias and the
  fused chain; the taps along the last dim are consecutive rows, which it takes together
  (their run is one contiguous output span, a vectorized interleave). Threads split
  (image, group, position tile) and, with fewer tiles than threads, each tile's channels
  (geometry.tile_loops).
- any other: taps overlap (or miss outputs, with negative pads), so kiln_scatter adds into
  the output, which holds the bias first; a last pass over the planes applies the fused
  chain. Threads split (image, group, channel part) only, so no two write one output, and
  the parts are fixed when compiling, so the sums do not depend on the thread count.
"""

from __future__ import annotations

import math

from ...ops.layout import PANEL, sgemm_worth
from ..gemm import NC, ROW_STEP
from .geometry import ConvGeometry, ceil_div, tile_loops
from .loops import flat_index, indent, loop
from .registry import PARALLEL_TRIPS, KernelContext, parallel, strides, worth_threads
from .sgemm import Call, driver_work, round_up, writes_raw

CHUNK_ROWS = 8 * ROW_STEP  # product rows per driver call (its C buffer: CHUNK_ROWS x tile)
TILE_MIN = 128  # positions: tiles are not made narrower than this to give threads even shares
PART_MIN_ROWS = 2 * ROW_STEP  # product rows of the smallest thread part of a tile
PART_MIN_CHANNELS = 4  # overlapping taps: output channels of the smallest thread part
# Input channels per group from which the product beats the row kernel: each product element
# costs one scattered store (or add), which needs a few multiply-adds per element to pay
# off. Measured on Zen 5 (one thread, 64x64 input planes, 16 output channels): one tap per
# output 2x faster from 2 channels; 3x3 taps even at 8 (2x at 16), stride 2 from 4.
EXACT_MIN_CHANNELS = 2
OVERLAP_MIN_CHANNELS = 8


def sgemm_worth_conv_transpose(ctx: KernelContext, g: ConvGeometry) -> bool:
    """Whether conv_transpose runs on the GEMM driver: float32 stored as float32, enough
    input channels per group, and a product per group worth it."""
    dtypes = {t.dtype for t in ctx.in_types}
    least = EXACT_MIN_CHANNELS if _one_to_one(g) else OVERLAP_MIN_CHANNELS
    return dtypes == {"float32"} and writes_raw(ctx) and g.in_per_group >= least and sgemm_worth(
        "float32", g.out_per_group * math.prod(g.kernel), g.in_per_group, math.prod(g.in_size))


def _one_to_one(g: ConvGeometry) -> bool:
    """Whether every output position gets exactly one tap: kernel == stride along each dim
    (the dilation then matters only for 1-tap dims), no padding."""
    return not any(g.pad_begins + g.pad_ends) and all(
        k == s and (k == 1 or d == 1) for k, s, d in zip(g.kernel, g.strides, g.dilations,
                                                           strict=True))


def _tile(positions: int, outer: int = 1, threads: bool = False) -> int:
    """Input positions per tile: at most NC, in whole panels, as even as panels allow; with
    threads, an even count of (outer x tiles) when it is odd and more than 1 (two threads
    then get equal shares), unless tiles would get narrower than TILE_MIN."""
    count = -(-positions // min(NC, round_up(positions, PANEL)))
    if threads and outer * count % 2 and outer * count > 1 and positions >= TILE_MIN * (count + 1):
        count += 1
    return round_up(-(-positions // count), PANEL)


def _fill(ctx: KernelContext, g: ConvGeometry) -> str:
    """C: col = image n's input channels of group g at positions p0 .. p0 + pn as column
    panels [.][C/group][PANEL], zero past pn."""
    cg, positions = g.in_per_group, math.prod(g.in_size)
    row = (f"const float* restrict xc = {ctx.ins[0]} + (n * {g.in_channels} + g * {cg} + c)"
           f" * {positions} + p0;\n"
           f"for (int64_t j0 = 0; j0 < pn; j0 += {PANEL}) {{\n" + indent(
               f"float* restrict d = col + j0 / {PANEL} * {cg * PANEL} + c * {PANEL};\n"
               f"const int64_t w = pn - j0 < {PANEL} ? pn - j0 : {PANEL};\n"
               "memcpy(d, xc + j0, w * sizeof(float));\n"
               f"for (int64_t j = w; j < {PANEL}; ++j) d[j] = 0;") + "\n}")
    return loop("c", cg, row)


def _product(ctx: KernelContext, g: ConvGeometry, tile: int, epilogue: str) -> str:
    """C: the product rows of channels m0 .. m0 + mn (group g) at positions p0 .. p0 + pn,
    CHUNK_ROWS at a time into buf, each finished tile handed to epilogue."""
    taps, cg = math.prod(g.kernel), g.in_per_group
    rows = g.out_per_group * taps
    call = Call(m="rn", n="pn", k=str(cg), a=f"{ctx.ins[1]} + g * {cg * rows} + r0", a_rs="1",
                a_cs=str(rows), b_panels="col", panel_stride=str(cg * PANEL), c="buf",
                ldc=str(tile), epilogue=epilogue, origin="n", row=f"g * {rows} + r0", col="p0")
    return (f"float* restrict buf = kiln_scratch(2, {CHUNK_ROWS * tile});\n"
            f"for (int64_t r0 = m0 * {taps}; r0 < (m0 + mn) * {taps}; r0 += {CHUNK_ROWS}) {{\n"
            + indent(f"const int64_t end = (m0 + mn) * {taps};\n"
                     f"const int64_t rn = end - r0 < {CHUNK_ROWS} ? end - r0 : {CHUNK_ROWS};\n"
                     + call.render()) + "\n}")


def _row_taps(g: ConvGeometry, exact: bool) -> tuple[list[str], str]:
    """(the per-row arrays of a tile, C filling them for row r): its output channel chan, its
    tap's output offset tap<j> along each dim and, unless exact, the input columns
    [ilo, ihi) whose tap lands inside along the last dim."""
    nd, kernel, taps = g.rank, g.kernel, math.prod(g.kernel)
    k_st, ol_size, s = strides(kernel), g.out_size[-1], g.strides[-1]
    arrays = ["chan"] + [f"tap{j}" for j in range(nd)] + ([] if exact else ["ilo", "ihi"])
    fill = (f"const int64_t row = at->row + m0 + r, kf = row % {taps};\nchan[r] = row / {taps};\n"
            + "".join(f"tap{j}[r] = (kf / {k_st[j]}) % {kernel[j]} * {g.dilations[j]} - "
                      f"{g.pad_begins[j]};\n" for j in range(nd)))
    if not exact:
        fill += (f"ilo[r] = {ceil_div(f'-tap{nd - 1}[r]', s)};\n"
                 f"ihi[r] = {ceil_div(f'{ol_size} - tap{nd - 1}[r]', s)};")
    return arrays, fill.rstrip("\n")


def _row_start(g: ConvGeometry, exact: bool) -> str:
    """C: for row r at the run's input row (i<j>), its output row `outer` (or continue when
    it is outside) and cr, the row's values from column j."""
    nd, out = g.rank, g.out_size
    text = "".join(f"const int64_t o{j} = i{j} + tap{j}[r];\n" for j in range(nd - 1))
    if not exact and nd > 1:
        inside = " || ".join(f"o{j} < 0 || o{j} >= {out[j]}" for j in range(nd - 1))
        text += f"if ({inside}) continue;\n"
    return text + (f"const int64_t m = chan[r], outer = (n * {g.out_channels} + m) * "
                   f"{math.prod(out[:-1])} + "
                   f"{flat_index([f'o{j}' for j in range(nd - 1)], out[:-1])};\n"
                   "const float* restrict cr = c + r * ldc + j;\n")


def _runs(g: ConvGeometry, each: str, step: int) -> str:
    """C: the tile's columns a run along the last input dim at a time (its input row's
    coordinates i<j> scaled by the strides), `each` for rows 0, step, 2 * step..."""
    nd, size, il_size = g.rank, g.in_size, g.in_size[-1]
    i_st = strides(size[:-1])
    coords = "".join(f"const int64_t i{j} = (irow / {i_st[j]}) % {size[j]} * {g.strides[j]};\n"
                     for j in range(nd - 1))
    if nd > 1:
        coords = f"const int64_t irow = q / {il_size};\n{coords}"
    columns = (f"const int64_t q = at->col + n0 + j, il = q % {il_size};\n"
               f"const int64_t run = {il_size} - il < cols - j ? {il_size} - il : cols - j;\n"
               f"{coords}" + loop("r", "rows", each, step=step) + "\nj += run;")
    return f"for (int64_t j = 0; j < cols;) {{\n{indent(columns)}\n}}"


def _scatter(ctx: KernelContext, g: ConvGeometry, store: str, exact: bool) -> str:
    """Add the tile epilogue `kiln_scatter` to the kernel's helpers and return its name: tile
    element (r, j), `v`, is product row at->row + m0 + r (channel m, tap) and input position
    at->col + n0 + j of image at->origin; the C statement store puts it at output index o
    (row `outer`, column `inner` of rows of the last output dim). Unless exact (every tap
    lands inside), taps outside the output are skipped. Each row's channel and tap offsets,
    and each run's input coordinates, are computed once per tile."""
    nd, ol_size, s, last = g.rank, g.out_size[-1], g.strides[-1], g.kernel[-1]
    arrays, fill = _row_taps(g, exact)
    value = (f"const int64_t inner = (il + u) * {s} + tap{nd - 1}[r], o = outer * {ol_size} + "
             f"inner;\nconst float v = cr[u];\n{store}")
    if exact:
        body = _runs(g, _row_start(g, exact) + loop("u", "run", value), 1)
    else:
        body = _runs(g, _row_start(g, exact)
                     + "const int64_t lo = ilo[r] > il ? ilo[r] - il : 0;\n"
                     "const int64_t hi = ihi[r] - il < run ? ihi[r] - il : run;\n"
                     + loop("u", "hi", value, start="lo"), 1)
    if exact and last > 1:
        # a tile of whole groups of `last` rows (the last dim's taps, consecutive): each run
        # of the group fills one contiguous output span, its taps interleaved (vectorizes)
        taps = "\n".join(f"{{\n    const int64_t inner = (il + u) * {s} + {t}, o = outer * "
                         f"{ol_size} + inner;\n    const float v = cr[{t} * ldc + u];\n"
                         f"{indent(store)}\n}}" for t in range(last))
        grouped = _runs(g, _row_start(g, exact) + loop("u", "run", taps), last)
        body = (f"if ((at->row + m0) % {last} == 0 && rows % {last} == 0) {{\n{indent(grouped)}"
                f"\n}} else {{\n{indent(body)}\n}}")
    # a tile has at most ROW_STEP rows (gemm.py: every micro-kernel's row count divides it)
    ctx.helpers.append(
        "static void kiln_scatter(void* at_, const float* c, int64_t ldc, int64_t m0, "
        "int64_t n0,\n                         int64_t rows, int64_t cols) {\n"
        + indent("const struct kiln_tile* at = (const struct kiln_tile*)at_;\n"
                 "void* const* args = at->args;\n"
                 f"{ctx.unpack}\nconst int64_t n = at->origin;\n"
                 + "".join(f"int64_t {a}[{ROW_STEP}];\n" for a in arrays)
                 + loop("r", "rows", fill) + f"\n{body}")
        + "\n}\n")
    return "kiln_scatter"


def _channel_parts(g: ConvGeometry) -> tuple[int, str]:
    """(most parts, C setting m0 and mn of part `part` of `parts`): channel parts whose
    product rows start at multiples of ROW_STEP (the micro-kernels' row strips)."""
    taps, mg = math.prod(g.kernel), g.out_per_group
    unit = ROW_STEP // math.gcd(ROW_STEP, taps)  # channels of a whole number of ROW_STEPs
    units = -(-mg // unit)
    bounds = (f"const int64_t m0 = part * {units} / parts * {unit};\n"
              f"const int64_t m1 = (part + 1) * {units} / parts * {unit};\n"
              f"const int64_t mn = (m1 < {mg} ? m1 : {mg}) - m0;")
    return min(units, mg * taps // PART_MIN_ROWS), bounds


def _exact(ctx: KernelContext, g: ConvGeometry, work: int) -> str:
    """The kernel body when each output gets one tap: product tiles stored straight through
    the bias and the fused chain."""
    positions = math.prod(g.in_size)
    tile = _tile(positions, g.batch * g.group, worth_threads(work, 2))
    value = f"v + {ctx.ins[2]}[m]" if len(ctx.ins) == 3 else "v"
    store = ctx.store_row(g.out_size[-1], "o", "outer", "inner", value)
    epilogue = _scatter(ctx, g, store, exact=True)
    body = (f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
            f"float* restrict col = kiln_scratch(1, {g.in_per_group * tile});\n"
            f"{_fill(ctx, g)}\n{_product(ctx, g, tile, epilogue)}")
    max_parts, bounds = _channel_parts(g)
    return tile_loops(ctx, g, positions, tile, body, work=work, split=worth_threads(work, 2),
                      max_parts=max_parts, part_bounds=bounds)


def _overlapping(ctx: KernelContext, g: ConvGeometry, work: int) -> str:
    """The kernel body when taps overlap or miss outputs: per (image, group, channel part),
    its output planes set to the bias, every product tile added in, then the chain."""
    positions, planes = math.prod(g.in_size), math.prod(g.out_size)
    tile, mg, ol_size = _tile(positions), g.out_per_group, g.out_size[-1]
    bias = f"{ctx.ins[2]}[plane % {g.out_channels}]" if len(ctx.ins) == 3 else "0.0f"
    first = f"(n * {g.out_channels} + g * {mg} + m0) * {planes}"
    init = loop("m", "mn", f"const int64_t plane = n * {g.out_channels} + g * {mg} + m0 + m;\n"
                + loop("i", planes, f"{ctx.outs[0]}[plane * {planes} + i] = {bias};"))
    tiles = (f"for (int64_t p0 = 0; p0 < {positions}; p0 += {tile}) {{\n" + indent(
        f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
        f"{_fill(ctx, g)}\n"
        f"{_product(ctx, g, tile, _scatter(ctx, g, f'{ctx.outs[0]}[o] += v;', exact=False))}")
        + "\n}")
    chain = ""
    if ctx.epilogue is not None:
        rows = f"mn * {planes // ol_size}"
        store = ctx.store_row(ol_size, "o", "outer", "ol", f"{ctx.outs[0]}[o]")
        chain = "\n" + loop("rr", rows, f"const int64_t outer = {first} / {ol_size} + rr;\n"
                            + loop("ol", ol_size, f"const int64_t o = outer * {ol_size} + ol;\n"
                                   + store))
    most = max(1, min(-(-PARALLEL_TRIPS // (g.batch * g.group)), mg // PART_MIN_CHANNELS))
    parts = most if worth_threads(work, 2) else 1  # channel parts: PARALLEL_TRIPS in all
    body = (f"const int64_t m0 = part * {mg} / {parts}, mn = (part + 1) * {mg} / {parts} - m0;\n"
            f"float* restrict col = kiln_scratch(1, {g.in_per_group * tile});\n"
            f"{init}\n{tiles}{chain}")
    return parallel(ctx, [("n", g.batch), ("g", g.group), ("part", parts)], indent(body),
                    threads=worth_threads(work, g.batch * g.group * parts))


def sgemm_conv_transpose(ctx: KernelContext, g: ConvGeometry) -> str:
    """The kernel body of a float32 conv_transpose on the GEMM driver."""
    work = g.batch * g.out_channels * math.prod(g.kernel) * g.in_per_group \
        * math.prod(g.in_size)
    # the overlapping path's scalar scatter-adds cost like plain work; the exact one's is GEMM
    return _exact(ctx, g, driver_work(work)) if _one_to_one(g) else _overlapping(ctx, g, work)
