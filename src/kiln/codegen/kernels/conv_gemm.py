"""float32 conv on the GEMM driver (kiln/codegen/gemm.py): per image and group,
out[m][p] = sum over r of w[m][r] * col[r][p], r = (input channel, kernel tap), p a position.

The weights are A in place (a row of r per output channel). A pointwise conv (1x1 kernel,
stride 1, no padding) needs no im2col: its input rows are B as they are (row stride = the
positions) and the driver packs them. Any other conv takes TILE positions at a time and, for
each slice of KC reduction rows, writes their im2col values (0 in the padding) straight into
column panels, the layout the driver reads, in a per-thread buffer; the tile's output stays
in the output tensor between slices (accumulate). Bias and the fused chain run per finished
tile (kernels/sgemm.py).
Threads split (image, group, position tile) and, with fewer of those than threads, each
tile's output channels in parts of whole ROW_STEPs, as many as the run-time thread count
asks for (each part fills its own im2col: one thread never does that twice).
A conv over few positions (a 7x7 plane fills 64 vector lanes with 49) whose weight the
packing pass stored as column panels of W^T (ops/layout.py's conv_panels_worth) runs
transposed instead, output channels along the vectors: see _sgemm_conv_t.
"""

from __future__ import annotations

import math

from ...ops.layout import PANEL, sgemm_worth
from ..gemm import KC, NC, ROW_STEP
from .geometry import ConvGeometry, ceil_div, tile_loops
from .loops import flat_index, indent, loop
from .registry import (
    ALIGNED,
    PARALLEL_TRIPS,
    KernelContext,
    parallel,
    strides,
    worth_threads,
)
from .sgemm import (
    Call,
    driver_work,
    round_up,
    split,
    tile_epilogue,
    tile_epilogue_t,
    writes_raw,
)

TILE_MIN = 128  # positions: tiles are not made narrower than this to give threads more
# ... and a single tile (threads then split its channels) when two threads would get shares
# more uneven than this
TILE_MAX_SHARE = 1.15
PART_MIN_ROWS = 2 * ROW_STEP  # output channels of the smallest part of a tile


def sgemm_worth_conv(ctx: KernelContext, g: ConvGeometry) -> bool:
    """Whether conv runs on the GEMM driver: float32 (stored as float32), and a product per
    group worth it."""
    reduction = g.in_per_group * math.prod(g.kernel)
    if g.packed:
        return True  # packed for it (any stored dtype: its products go through a buffer)
    return writes_raw(ctx) and sgemm_worth(ctx.in_types[0].dtype, g.out_per_group, reduction,
                                           math.prod(g.out_size))


def _two_thread_share(positions: int, outer: int, tile: int) -> float:
    """The bigger of two threads' shares of the positions when a static schedule gives each
    half of the (outer x tile) iterations, relative to an even split (1.0 is even)."""
    sizes = [min(tile, positions - p) for p in range(0, positions, tile)] * outer
    half = -(-len(sizes) // 2)
    return max(sum(sizes[:half]), sum(sizes[half:])) * 2 / sum(sizes)


def _tile(positions: int, outer: int, work: int) -> int:
    """Positions per tile: at most NC, in whole panels, as even as panels allow. A conv worth
    threads takes, of the tiles from TILE_MIN up giving PARALLEL_TRIPS tiles or more (any if
    none does), the one that splits most evenly between two threads, then the widest."""
    whole = min(NC, round_up(positions, PANEL))
    if not worth_threads(work, 2) or whole <= TILE_MIN:
        return round_up(-(-positions // -(-positions // whole)), PANEL)
    tiles = range(TILE_MIN, whole + 1, PANEL)
    many = [t for t in tiles if outer * -(-positions // t) >= PARALLEL_TRIPS] or list(tiles)
    best = min(many, key=lambda t: (round(_two_thread_share(positions, outer, t), 2), -t))
    if _two_thread_share(positions, outer, best) > TILE_MAX_SHARE:
        return whole if positions <= whole else best  # one tile: threads take channel parts
    return best


def _line(ctx: KernelContext, g: ConvGeometry) -> str:
    """C: line[0 .. pn) = row r of image n's im2col (group g) at positions p0 .. p0 + pn: for
    r = (channel c, tap), the input value each position's window meets there, 0 in the padding.

    Runs along the last output dim: a run's window along the last input dim is zeros, a
    copy (strided by the stride), then zeros.
    """
    nd, out, size, kernel = g.rank, g.out_size, g.in_size, g.kernel
    k_st, o_st = strides(kernel), strides(out[:-1])
    last, il, s = out[-1], size[-1], g.strides[-1]
    taps = "".join(f"const int64_t k{j} = (kf / {k_st[j]}) % {kernel[j]} * {g.dilations[j]};\n"
                   for j in range(nd))
    outer = "".join(f"const int64_t i{j} = (row / {o_st[j]}) % {out[j]} * {g.strides[j]} + "
                    f"k{j} - {g.pad_begins[j]};\n" for j in range(nd - 1))
    inside = " && ".join(f"i{j} >= 0 && i{j} < {size[j]}" for j in range(nd - 1)) or "1"
    row_at = flat_index([f"i{j}" for j in range(nd - 1)], size[:-1])
    run = (f"const int64_t ol = q % {last}, row = q / {last};\n"
           "(void)row; /* a 1-D conv has no outer dims */\n"
           f"const int64_t run = {last} - ol < pn - p ? {last} - ol : pn - p;\n"
           f"{outer}const int inside = {inside};\n"
           f"const float* restrict xr = inside ? xc + ({row_at}) * {il} + off : xc;\n"
           "float* restrict d = line + p;\n"
           "int64_t a = inside ? lo - ol : run, b = inside ? hi - ol : run;\n"
           "a = a < 0 ? 0 : (a > run ? run : a);\n"
           "b = b < a ? a : (b > run ? run : b);\n"
           "for (int64_t u = 0; u < a; ++u) d[u] = 0;\n"
           f"for (int64_t u = a; u < b; ++u) d[u] = xr[(ol + u) * {s}];\n"
           "for (int64_t u = b; u < run; ++u) d[u] = 0;\n"
           "p += run;\nq += run;")
    plane = f"(n * {g.in_channels} + g * {g.in_per_group} + c) * {math.prod(size)}"
    return (f"const int64_t c = r / {math.prod(kernel)}, kf = r % {math.prod(kernel)};\n{taps}"
            f"const float* restrict xc = {ctx.ins[0]} + {plane};\n"
            f"const int64_t off = k{nd - 1} - {g.pad_begins[-1]};\n"
            f"int64_t lo = {ceil_div('-off', s)}, hi = {ceil_div(f'{il} - off', s)};\n"
            f"lo = lo < 0 ? 0 : (lo > {last} ? {last} : lo);\n"
            f"hi = hi < lo ? lo : (hi > {last} ? {last} : hi);\n"
            f"for (int64_t p = 0, q = p0; p < pn;) {{\n{indent(run)}\n}}")


def _offset_type(g: ConvGeometry) -> str:
    """C type of a gather table entry: int32_t unless a plane has 2^31 values or more."""
    return "int32_t" if math.prod(g.in_size) < 2**31 else "int64_t"


def _gather_table(g: ConvGeometry) -> str:
    """C: tab[t][p] = the offset in its channel's plane of the input value kernel tap t meets
    at output position p, or -1 in the padding (a plane's im2col row is then a gather)."""
    nd, out, size, kernel = g.rank, g.out_size, g.in_size, g.kernel
    k_st, o_st = strides(kernel), strides(out)
    coords = "".join(
        f"const int64_t i{j} = (p / {o_st[j]}) % {out[j]} * {g.strides[j]} + "
        f"(t / {k_st[j]}) % {kernel[j]} * {g.dilations[j]} - {g.pad_begins[j]};\n"
        for j in range(nd))
    inside = " && ".join(f"i{j} >= 0 && i{j} < {size[j]}" for j in range(nd))
    at = flat_index([f"i{j}" for j in range(nd)], size)
    return (f"for (int64_t t = 0; t < {math.prod(kernel)}; ++t)\n"
            f"for (int64_t p = 0; p < {math.prod(out)}; ++p) {{\n"
            + indent(f"{coords}tab[t * {math.prod(out)} + p] = "
                     f"{inside} ? ({_offset_type(g)})({at}) : -1;") + "\n}")


def _fill(ctx: KernelContext, g: ConvGeometry) -> str:
    """C: col = im2col rows pc .. pc + kc at positions p0 .. p0 + pn as column panels
    [.][kc][PANEL]: each row written whole into `line` (zero past pn), then a PANEL at a time
    into the panels."""
    return ("for (int64_t rr = 0; rr < kc; ++rr) {\n" + indent(
        f"const int64_t r = pc + rr;\n{_line(ctx, g)}\n"
        f"for (int64_t j0 = 0; j0 < pn; j0 += {PANEL})\n"
        f"    memcpy(col + j0 / {PANEL} * kc * {PANEL} + rr * {PANEL}, line + j0, "
        f"{PANEL} * sizeof(float));") + "\n}")


def _loops(ctx: KernelContext, g: ConvGeometry, positions: int, tile: int, body: str,
           work: int) -> str:
    """geometry.tile_loops with channel parts at multiples of the micro-kernels' rows."""
    mg, units = g.out_per_group, -(-g.out_per_group // ROW_STEP)
    bounds = (f"const int64_t m0 = part * {units} / parts * {ROW_STEP};\n"
              f"const int64_t m1 = (part + 1) * {units} / parts * {ROW_STEP};\n"
              f"const int64_t mn = (m1 < {mg} ? m1 : {mg}) - m0;")
    return tile_loops(ctx, g, positions, tile, body, work=work, split=worth_threads(work, 2),
                      max_parts=mg // PART_MIN_ROWS, part_bounds=bounds)


def _sgemm_conv_t(ctx: KernelContext, g: ConvGeometry) -> str:
    """The kernel body of a conv whose weight is packed (ops/layout.py's conv_panels_worth:
    few positions): per image, out^T[p][m] = sum over r of col^T[p][r] * w^T[r][m], output
    channels along the vectors. Threads fill the image's im2col (K x positions, shared;
    a pointwise conv reads its input instead), then split the product's parts, each into a
    buffer of its own that the tile epilogue writes transposed into the output."""
    channels, positions = g.out_channels, math.prod(g.out_size)
    reduction = g.in_channels * math.prod(g.kernel)
    # few positions: streaming the weight costs more than the multiply-adds (a float loaded
    # is one work unit), and threads split it, each its own channels (each part of the
    # positions would stream all weights)
    work = driver_work(g.batch * channels * positions * reduction) + channels * reduction
    rows, cols = split(g.batch, positions, channels, work, min_columns=PANEL, rows_too=False)
    bias = f"{ctx.ins[2]}" if len(ctx.ins) == 3 else None
    epilogue = tile_epilogue_t(ctx, positions,
                               (lambda raw, row, col: f"{raw} + {bias}[{col}]") if bias else None)
    source = (f"{ctx.ins[0]} + n * {g.in_channels * positions}" if g.pointwise else "col")
    call = Call(m="mn", n="nn", k=str(reduction), a=f"{source} + i0", a_rs="1",
                a_cs=str(positions), b_panels=f"{ctx.ins[1]} + j0 / {PANEL} * {reduction * PANEL}",
                panel_stride=str(reduction * PANEL), c="part", ldc=str(cols), epilogue=epilogue,
                origin=f"n * {channels}", row="i0", col="j0")
    threads = worth_threads(work, 2)
    # per image, the im2col's rows, then the product's parts, split among the threads (the
    # first call returns when the im2col is whole); both read the master's buffers
    taps, size, offset = math.prod(g.kernel), math.prod(g.in_size), _offset_type(g)
    buffers, fill, shared = "", "", ["const int64_t n"]
    if not g.pointwise:
        # one buffer: the im2col (floats), then (64-byte aligned) the gather table
        table = round_up(reduction * positions, 16)
        buffers = (f"float* restrict col = kiln_scratch(1, {table + 2 * taps * positions});\n"
                   f"{offset}* restrict tab = ({offset}*)(col + {table});\n"
                   f"{_gather_table(g)}\n")
        fill = parallel(ctx, [("r", reduction)], indent(
            f"const float* restrict xc = {ctx.ins[0]} + (n * {g.in_channels} + r / {taps})"
            f" * {size};\n"
            f"const {offset}* restrict tr = tab + r % {taps} * {positions};\n"
            f"float* restrict line = col + r * {positions};\n"
            + loop("p", positions, "line[p] = tr[p] >= 0 ? xc[tr[p]] : 0.0f;")),
            threads=threads, shared=[*shared, "float* restrict col",
                                     f"const {offset}* restrict tab"]) + "\n"
        shared.append("const float* restrict col")
    product = parallel(ctx, [("i0", positions, rows), ("j0", channels, cols)], indent(
        f"const int64_t mn = {positions} - i0 < {rows} ? {positions} - i0 : {rows};\n"
        f"const int64_t nn = {channels} - j0 < {cols} ? {channels} - j0 : {cols};\n"
        f"float* restrict part = kiln_scratch(2, {rows * cols});\n"
        + call.render()), threads=threads, shared=shared)
    return buffers + f"for (int64_t n = 0; n < {g.batch}; ++n) {{\n{indent(fill + product)}\n}}"


def sgemm_conv(ctx: KernelContext, g: ConvGeometry) -> str:
    """The kernel body of a float32 conv on the GEMM driver."""
    if g.packed:
        return _sgemm_conv_t(ctx, g)
    mg, cg, positions = g.out_per_group, g.in_per_group, math.prod(g.out_size)
    reduction = cg * math.prod(g.kernel)
    # the multiply-adds, plus the plain work around them: each output written raw, then read
    # and written by the tile epilogue (3 units), and B packed from the input (pointwise)
    # or filled as im2col tiles (a unit per float)
    outputs = g.batch * g.out_channels * positions
    b_floats = g.batch * g.group * reduction * positions
    work = driver_work(outputs * reduction) + 3 * outputs + b_floats
    tile = _tile(positions, g.batch * g.group, work)
    bias = f"{ctx.ins[2]}" if len(ctx.ins) == 3 else None
    epilogue = tile_epilogue(ctx, positions,
                             (lambda raw, row, col: f"{raw} + {bias}[{row}]") if bias else None)
    first = f"(n * {g.out_channels} + g * {mg} + m0) * {positions} + p0"
    where = {"c": f"{ctx.outs[0]} + {first}", "ldc": str(positions), "origin": first,
             "row": f"g * {mg} + m0", "col": "p0"}
    head = f"const int64_t pn = {positions} - p0 < {tile} ? {positions} - p0 : {tile};\n"
    if g.pointwise:
        call = Call(m="mn", n="pn", k=str(cg), a=f"{ctx.ins[1]} + (g * {mg} + m0) * {cg}",
                    a_rs=str(cg), a_cs="1", epilogue=epilogue,
                    b=f"{ctx.ins[0]} + (n * {g.in_channels} + g * {cg}) * {positions} + p0",
                    b_rs=str(positions), b_cs="1", k_max=cg, n_max=tile, **where)
        return _loops(ctx, g, positions, tile, head + call.render(), work)
    last = "NULL" if epilogue == "NULL" else f"pc + kc == {reduction} ? {epilogue} : NULL"
    call = Call(m="mn", n="pn", k="kc", a=f"{ctx.ins[1]} + (g * {mg} + m0) * {reduction} + pc",
                a_rs=str(reduction), a_cs="1", b_panels="col",
                panel_stride=f"kc * {PANEL}", accumulate="pc > 0", epilogue=last, **where)
    slices = (f"for (int64_t pc = 0; pc < {reduction}; pc += {KC}) {{\n"
              + indent(f"const int64_t kc = {reduction} - pc < {KC} ? {reduction} - pc : {KC};\n"
                       f"{_fill(ctx, g)}\n{call.render()}") + "\n}")
    body = (head + f"float* restrict col = kiln_scratch(1, {min(KC, reduction) * tile});\n"
            f"float line[{tile}] {ALIGNED};\n"
            f"for (int64_t p = pn; p < {tile}; ++p) line[p] = 0;\n" + slices)
    return _loops(ctx, g, positions, tile, body, work)
