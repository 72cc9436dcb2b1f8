"""float32 3x3 conv as Winograd F(4x4, 3x3) (the math: kiln/ops/winograd.py), on the GEMM
driver (kiln/codegen/gemm.py).

The images' 4x4 output tiles are taken TB at a time (a block: its buffers stay in L2), in
three phases, each split among the threads:
1. input transform: for each tile u and input channel c, V[xi][u][c] = (B^T d B)[xi] of its
   6x6 input window d (0 in the padding), 16 channels at a time (the loop over them
   vectorizes: the window's loads are gathers, the stores contiguous);
2. 36 products, one per transform point xi: M[xi] (TB x M) = V[xi] (TB x C) U[xi] (C x M),
   with U the weight transformed at compile time, in column panels (output channels along
   the vectors);
3. output transform: for each tile and 16 output channels at a time, the 4x4 outputs
   A^T M A, plus bias, stored through the fused chain (each element once).
The transforms' coefficients are generated from the matrices of ops/winograd.py, so the C
and the compile-time weight transform cannot disagree.
"""

from __future__ import annotations

import numpy as np

from ...ops.layout import PANEL
from ...ops.winograd import ALPHA, AT, BT, POINTS, TILE, tiles
from .geometry import ConvGeometry
from .loops import indent
from .registry import ALIGNED, KernelContext, parallel, worth_threads
from .sgemm import Call, driver_work

LANES = 16  # channels per step of the transforms' loops (one AVX-512 vector)
BLOCK_BYTES = 1 << 20  # a block's transformed input and products together, at most


def _combination(row: np.ndarray, term: list[str]) -> str:
    """C: sum over j of row[j] * term[j], zero coefficients skipped, +-1 without a product."""
    parts = []
    for coef, t in zip(row, term, strict=True):
        if coef == 0:
            continue
        sign = "-" if coef < 0 else "+"
        mag = abs(float(coef))
        parts.append(f"{sign} {t}" if mag == 1 else f"{sign} {mag!r}f * {t}")
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else text


def _transform_2d(mat: np.ndarray, src: str, dst: str, kind: str) -> str:
    """C: dst = mat src mat^T for a square src (ALPHA x ALPHA scalars named src<i>_<j>),
    as scalars dst<a>_<b> of `kind` (e.g. "const float"): rows first, then columns."""
    out, size = mat.shape
    lines = []
    for i in range(size):  # r[i][b] = sum over j of mat[b][j] * src[i][j]
        terms = [f"{src}{i}_{j}" for j in range(size)]
        lines += [f"{kind} r{i}_{b} = {_combination(mat[b], terms)};" for b in range(out)]
    for a in range(out):  # dst[a][b] = sum over i of mat[a][i] * r[i][b]
        for b in range(out):
            terms = [f"r{i}_{b}" for i in range(size)]
            lines.append(f"{kind} {dst}{a}_{b} = {_combination(mat[a], terms)};")
    return "\n".join(lines)


def _block_rows(g: ConvGeometry) -> tuple[int, int]:
    """(RB, all): tile rows per block and tile rows in all (over the batch). A block fits
    BLOCK_BYTES when one row does; blocks are as even as whole rows allow."""
    total = g.batch * tiles(g.out_size[0])
    per_row = POINTS * tiles(g.out_size[1]) * (g.in_channels + g.out_channels) * 4
    count = -(-total // max(1, BLOCK_BYTES // per_row))
    return -(-total // count), total


def _point_stride(rows: int) -> int:
    """Floats between consecutive points' matrices of `rows` floats: whole cache lines, an
    odd count of them, so the 36 matrices' elements a transform reads or writes together
    fall in different L1 sets (a multiple of 4 KiB put them all in one: 6x slower)."""
    lines = -(-rows // 16)
    return (lines + 1 - lines % 2) * 16


def _lanes_loop(count: int, body: str) -> str:
    """C: body for cc in 0 .. cn, a constant trip count when count is whole LANES."""
    bound = LANES if count % LANES == 0 else "cn"
    return f"for (int64_t cc = 0; cc < {bound}; ++cc) {{\n{indent(body)}\n}}"


def _window_rows(ctx: KernelContext, g: ConvGeometry, width: int) -> str:
    """C: win[i][xx][cc] = input channel c0 + cc at row iy + i, column xx - pad (0 in the
    padding) for the ALPHA rows of tile row `row`, channels interleaved so that the
    transform's loads are vectors."""
    (hi, wi), (pt, pl) = g.in_size, g.pad_begins
    ty = tiles(g.out_size[0])
    lo, hi_x = min(pl, width), min(width, wi + pl)
    copy = (f"float* restrict line = win + i * {width * LANES} + cc;\n"
            f"const float* restrict xr = {ctx.ins[0]} + ((n * {g.in_channels} + c0 + cc) * "
            f"{hi} + y) * {wi} - {pl};\n"
            f"for (int64_t xx = 0; xx < {lo}; ++xx) line[xx * {LANES}] = 0.0f;\n"
            f"for (int64_t xx = {lo}; xx < {hi_x}; ++xx) line[xx * {LANES}] = xr[xx];\n"
            f"for (int64_t xx = {hi_x}; xx < {width}; ++xx) line[xx * {LANES}] = 0.0f;")
    zero = (f"for (int64_t xx = 0; xx < {width * LANES}; ++xx) "
            f"win[i * {width * LANES} + xx] = 0.0f;")
    return (f"const int64_t n = row / {ty}, iy = row % {ty} * {TILE} - {pt};\n"
            f"for (int64_t i = 0; i < {ALPHA}; ++i) {{\n"
            f"    const int64_t y = iy + i;\n"
            f"    if (y < 0 || y >= {hi}) {{\n{indent(indent(zero))}\n        continue;\n    }}\n"
            f"    for (int64_t cc = 0; cc < cn; ++cc) {{\n{indent(indent(copy))}\n    }}\n}}")


def _input_phase(ctx: KernelContext, g: ConvGeometry, tb: int, threads: bool) -> str:
    """C: phase 1, V[xi][u][c] for the block's tiles; threads split (channel block, tile
    row) pairs, each copying the rows its tiles read into `win` first."""
    c, tx = g.in_channels, tiles(g.out_size[1])
    width = tx * TILE + 2
    loads = [f"const float d{i}_{j} = w[{(i * width + j) * LANES}];"
             for i in range(ALPHA) for j in range(ALPHA)]
    stores = [f"dst[{a * ALPHA + b} * {_point_stride(tb * c)}] = v{a}_{b};"
              for a in range(ALPHA) for b in range(ALPHA)]
    # a function of its own: gcc 12 does not vectorize the loop inside the kernel's body
    ctx.helpers.append(
        "static __attribute__((noinline)) void kiln_winograd_input(\n"
        "        const float* restrict win, float* restrict vt, int64_t cn) {\n"
        + indent(_lanes_loop(c, "const float* restrict w = win + cc;\n"
                             "float* restrict dst = vt + cc;\n" + "\n".join(loads) + "\n"
                             + _transform_2d(BT, "d", "v", "const float") + "\n"
                             + "\n".join(stores))) + "\n}\n")
    body = (f"const int64_t cn = {c} - c0 < {LANES} ? {c} - c0 : {LANES}, row = r0 + rr;\n"
            f"float* restrict win = kiln_scratch(2, {ALPHA * width * LANES});\n"
            f"{_window_rows(ctx, g, width)}\n"
            f"for (int64_t t = 0; t < {tx}; ++t) {{\n"
            f"    kiln_winograd_input(win + t * {TILE * LANES}, "
            f"vbuf + (rr * {tx} + t) * {c} + c0, cn);\n}}")
    return parallel(ctx, [("c0", c, LANES), ("rr", "rn")], indent(body), threads=threads,
                    shared=["float* restrict vbuf", "const int64_t r0", "const int64_t rn"])


def _product_phase(ctx: KernelContext, g: ConvGeometry, tb: int, threads: bool) -> str:
    """C: phase 2, M[xi] = V[xi] U[xi] for each of the 36 points, threads splitting them."""
    c, m = g.in_channels, g.out_channels
    panels = -(-m // PANEL)
    call = Call(m="un", n=str(m), k=str(c), a=f"vbuf + xi * {_point_stride(tb * c)}",
                a_rs=str(c), a_cs="1", b_panels=f"{ctx.ins[1]} + xi * {panels * c * PANEL}",
                panel_stride=str(c * PANEL), c=f"mbuf + xi * {_point_stride(tb * m)}",
                ldc=str(m))
    return parallel(ctx, [("xi", POINTS)], indent(call.render()), threads=threads,
                    shared=["const float* restrict vbuf", "float* restrict mbuf",
                            "const int64_t un"])


def _output_phase(ctx: KernelContext, g: ConvGeometry, tb: int, threads: bool) -> str:
    """C: phase 3, each block tile's outputs A^T M A + bias through the fused chain; threads
    split (output channel block, tile) pairs."""
    m, (h, w) = g.out_channels, g.out_size
    ty, tx = tiles(h), tiles(w)
    loads = [f"const float s{a}_{b} = src[{a * ALPHA + b} * {_point_stride(tb * m)}];"
             for a in range(ALPHA) for b in range(ALPHA)]
    results = [f"y[{p * TILE + q}][cc] = o{p}_{q};" for p in range(TILE) for q in range(TILE)]
    compute = _lanes_loop(m, "const float* restrict src = mbuf + u * " + str(m) + " + m0 + cc;\n"
                          + "\n".join(loads) + "\n" + _transform_2d(AT, "s", "o", "const float")
                          + "\n" + "\n".join(results))
    bias = f" + {ctx.ins[2]}[m0 + cc]" if len(ctx.ins) == 3 else ""
    index = f"((n * {m} + m0 + cc) * {h} + y0 + p) * {w} + x0 + q"
    store = (f"for (int64_t p = 0; p < {TILE}; ++p)\n"
             f"for (int64_t q = 0; q < {TILE}; ++q) {{\n"
             f"    if (y0 + p >= {h} || x0 + q >= {w}) continue;\n"
             f"    for (int64_t cc = 0; cc < cn; ++cc)\n"
             f"        {ctx.store(index, f'y[p * {TILE} + q][cc]{bias}')}\n}}")
    body = (f"const int64_t cn = {m} - m0 < {LANES} ? {m} - m0 : {LANES};\n"
            f"const int64_t row = r0 + u / {tx}, n = row / {ty};\n"
            f"const int64_t y0 = row % {ty} * {TILE}, x0 = u % {tx} * {TILE};\n"
            f"float y[{TILE * TILE}][{LANES}] {ALIGNED};\n{compute}\n{store}")
    return parallel(ctx, [("m0", m, LANES), ("u", "un")], indent(body), threads=threads,
                    shared=["const float* restrict mbuf", "const int64_t r0", "const int64_t un"])


def winograd_conv(ctx: KernelContext, g: ConvGeometry) -> str:
    """The kernel body of a conv whose weight the packing pass stored Winograd-transformed."""
    rb, total = _block_rows(g)
    c, m, tx = g.in_channels, g.out_channels, tiles(g.out_size[1])
    tb = rb * tx
    # the 36 products split among threads, each streaming its points' transformed weights
    threads = worth_threads(driver_work(total * tx * POINTS * c * m) + POINTS * c * m, 2)
    # each phase a call of its own (it returns when the phase is done: the next one reads
    # its results) on the master's buffers
    phases = "\n".join(phase(ctx, g, tb, threads)
                       for phase in (_input_phase, _product_phase, _output_phase))
    block = (f"for (int64_t r0 = 0; r0 < {total}; r0 += {rb}) {{\n"
             + indent(f"const int64_t rn = {total} - r0 < {rb} ? {total} - r0 : {rb}, "
                      f"un = rn * {tx};\n{phases}") + "\n}")
    v_size, m_size = POINTS * _point_stride(tb * c), POINTS * _point_stride(tb * m)
    return (f"float* restrict vbuf = kiln_scratch(1, {v_size + m_size});\n"
            f"float* restrict mbuf = vbuf + {v_size};\n{block}")
