"""C text for kernels that run on the GEMM driver (kiln/codegen/gemm.py): its call, the tile
epilogue, and how a kernel splits its output among threads.

A kernel calls `kiln_sgemm` once per part of its output (threads split the parts, each a
whole range of rows and columns, so no sum is ever split). The driver hands each finished
tile back to `kiln_tile`, a static function the template adds to the source: it reads the
tile's raw products from the output, adds what the op itself adds (bias, alpha, beta C) and
writes each element once through ctx.store, so the fused chain runs while the tile is hot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...ops.layout import PANEL
from ..gemm import KC, NC, ROW_STEP
from .loops import indent
from .registry import ALIGNED, PARALLEL_TRIPS, KernelContext, ctype, worth_threads

# The driver's micro-kernels do about this many multiply-adds in the time of one work unit
# of kernels/registry.py (~0.2 ns): ~115 G multiply-adds/s on one Zen 5 core. Kernels on the
# driver count their work in multiply-adds and pass driver_work(macs) when they ask for
# threads: a 16-channel 16x16 Winograd conv (147K multiply-adds, 7 us) took 12 us on 2.
DRIVER_MACS_PER_UNIT = 16

# Columns and rows below which a product is not cut further to give threads more parts.
SPLIT_MIN_COLUMNS = 128
SPLIT_MIN_ROWS = 2 * ROW_STEP

# value(raw, row, col): the C expression of an output element from its raw product `raw`,
# its row and its column in the product's coordinates (bias, alpha...).
Value = Callable[[str, str, str], str]


def driver_work(macs: int) -> int:
    """The work (registry.py's units, which worth_threads weighs) of macs multiply-adds on
    the GEMM driver."""
    return macs // DRIVER_MACS_PER_UNIT


def round_up(x: int, step: int) -> int:
    return -(-x // step) * step


def pack_floats(k: int, n: int) -> int:
    """The floats of scratch slot 0 the driver takes to pack a run-time B of k x n (what
    kiln_sgemm asks for: one KC x NC block at most, in whole panels)."""
    return max(1, min(k, KC)) * round_up(max(1, min(n, NC)), PANEL)


def writes_raw(ctx: KernelContext) -> bool:
    """Whether the driver may write raw float32 products into out0: out0 stores float32 (a
    fused chain may end in another dtype, e.g. a cast)."""
    return (ctx.stored_types or ctx.out_types)[0].dtype == "float32"


def tile_epilogue(ctx: KernelContext, ld: int, value: Value | None) -> str:
    """Add `kiln_tile` (the tile epilogue) to the kernel's helpers and return its name, or
    return "NULL" when the raw products are already the output (no value, no fused chain).

    Output element (r, j) of a call's C is out0[origin + r * ld + j]; it is row `row + r`
    and column `col + j` of the product, as a kiln_tile struct records them.
    """
    if value is None and ctx.epilogue is None:
        return "NULL"
    raw = f"{ctx.outs[0]}[o]"
    stored = value(raw, "row", "col") if value else raw
    store = ctx.store_row(ld, "o", "outer", "inner0 + j", stored)
    ctx.helpers.append(
        "static void kiln_tile(void* at_, const float* c, int64_t ldc, int64_t m0, int64_t n0,\n"
        "                      int64_t rows, int64_t cols) {\n"
        "    const struct kiln_tile* at = (const struct kiln_tile*)at_;\n"
        "    void* const* args = at->args;\n"
        f"{indent(ctx.unpack)}\n"
        "    for (int64_t r = 0; r < rows; ++r) {\n"
        "        const int64_t row = at->row + m0 + r;\n"
        f"        const int64_t first = at->origin + (m0 + r) * {ld} + n0;\n"
        f"        const int64_t outer = first / {ld}, inner0 = first % {ld};\n"
        "        (void)row; (void)outer; (void)inner0; /* the value may not need them */\n"
        "        for (int64_t j = 0; j < cols; ++j) {\n"
        "            const int64_t o = first + j, col = at->col + n0 + j;\n"
        "            (void)col;\n"
        f"            {store}\n"
        "        }\n"
        "    }\n"
        "}\n")
    return "kiln_tile"


def tile_epilogue_t(ctx: KernelContext, ld: int, value: Value | None) -> str:
    """Add `kiln_tile_t` to the kernel's helpers and return its name: the tile epilogue of a
    product computed transposed into a buffer (out0 holds its columns as rows of ld).

    Tile element (r, j), at c[r * ldc + j], is row `row + r` and column `col + j` of the
    product, and goes to out0[(origin + col + j) * ld + row + r]: origin counts rows of ld.
    The value and the fused chain run along the tile's rows (up to PANEL contiguous columns:
    the loop vectorizes, where an output run is at most ROW_STEP long) into `done`; then
    `done` is written out transposed.
    """
    t = ctype((ctx.stored_types or ctx.out_types)[0].dtype)
    raw = "c[r * ldc + j]"
    v = value(raw, "row", "col") if value else raw
    if ctx.row_epilogue is not None:
        v = ctx.row_epilogue(ld, "outer * " + str(ld) + " + row", "outer", "row", v)
    ctx.helpers.append(
        "static void kiln_tile_t(void* at_, const float* c, int64_t ldc, int64_t m0, "
        "int64_t n0,\n                        int64_t rows, int64_t cols) {\n"
        "    const struct kiln_tile* at = (const struct kiln_tile*)at_;\n"
        "    void* const* args = at->args;\n"
        f"{indent(ctx.unpack)}\n"
        f"    {t} done[{ROW_STEP * PANEL}] {ALIGNED};\n"
        "    for (int64_t r = 0; r < rows; ++r) {\n"
        "        const int64_t row = at->row + m0 + r;\n"
        "        (void)row; /* the value may not need it */\n"
        "        for (int64_t j = 0; j < cols; ++j) {\n"
        "            const int64_t col = at->col + n0 + j, outer = at->origin + col;\n"
        "            (void)outer;\n"
        f"            done[r * {PANEL} + j] = {v};\n"
        "        }\n"
        "    }\n"
        "    for (int64_t j = 0; j < cols; ++j) {\n"
        f"        {t}* restrict o = {ctx.outs[0]} + (at->origin + at->col + n0 + j) * {ld} "
        "+ at->row + m0;\n"
        f"        for (int64_t r = 0; r < rows; ++r) o[r] = done[r * {PANEL} + j];\n"
        "    }\n"
        "}\n")
    return "kiln_tile_t"


@dataclass(frozen=True)
class Call:
    """One kiln_sgemm call, as C expressions: C (m x n, row stride ldc) (+)= A B over k."""

    m: str
    n: str
    k: str
    a: str  # A[i][p] = a[i * a_rs + p * a_cs]
    a_rs: str
    a_cs: str
    c: str
    ldc: str
    b: str = "NULL"  # B[p][j] = b[p * b_rs + j * b_cs]
    b_rs: str = "0"
    b_cs: str = "0"
    b_panels: str = "NULL"  # or B in column panels, panel_stride apart
    panel_stride: str = "0"
    accumulate: str = "0"
    epilogue: str = "NULL"
    # The kiln_tile of the call: C's first output index, and its row and column in the product.
    origin: str = "0"
    row: str = "0"
    col: str = "0"
    # Upper bounds of k and n, where b is packed at run time: the rendered call states the
    # scratch it takes (kiln/export/mlf.py sizes a workspace from it).
    k_max: int = KC
    n_max: int = NC

    def render(self) -> str:
        tile = (f"    struct kiln_tile at = {{args, {self.origin}, {self.row}, {self.col}}};\n"
                if self.epilogue != "NULL" else "")
        ctx = "&at" if tile else "NULL"
        packs = (f"    /* B packed at run time: kiln_scratch(0, "
                 f"{pack_floats(self.k_max, self.n_max)}) */\n" if self.b_panels == "NULL" else "")
        return (f"{{\n{packs}{tile}"
                f"    const struct kiln_gemm call = {{{self.a}, {self.a_rs}, {self.a_cs}, "
                f"{self.b}, {self.b_rs}, {self.b_cs}, {self.b_panels}, {self.panel_stride}, "
                f"{self.c}, {self.ldc}, {self.accumulate}, {self.epilogue}, {ctx}}};\n"
                f"    kiln_sgemm({self.m}, {self.n}, {self.k}, &call);\n}}")


def split(batch: int, m: int, n: int, work: int, *,
          min_columns: int = SPLIT_MIN_COLUMNS, rows_too: bool = True) -> tuple[int, int]:
    """(rows, columns) of the parts threads split a batch of m x n products into: whole when
    not worth threads, else halved (the longer side first: columns in whole panels, down to
    min_columns; rows in ROW_STEPs, unless not rows_too) until there are PARALLEL_TRIPS
    parts or they would get too small. Each row part reads all of B: a product whose B is
    big and used little (a weight streamed from memory) splits its columns only."""
    rows, cols = m, n
    if not worth_threads(work, 2):
        return rows, cols
    while batch * -(-m // rows) * -(-n // cols) < PARALLEL_TRIPS:
        can_rows = rows_too and rows >= 2 * SPLIT_MIN_ROWS
        if cols >= 2 * min_columns and (cols >= rows or not can_rows):
            cols = round_up(-(-cols // 2), PANEL)
        elif can_rows:
            rows = round_up(-(-rows // 2), ROW_STEP)
        else:
            break
    return rows, cols
