"""C kernels of the linalg ops (semantics: kiln/ops/linalg.py).

matmul and gemm share two renderers. float32 products worth it (kiln/ops/layout.py) call the
GEMM driver (kiln/codegen/gemm.py) once per batch and part of the output, with B in column
panels when the packing pass stored it so (`packed_n`); bias, alpha, beta and the fused
chain run per finished tile (kernels/sgemm.py). Other products: for each batch and each block
of NB output columns, MR output rows accumulate in a local array with the k loop outside the
contiguous j loop (so gcc vectorizes j), then each element is stored once, through the
epilogue. Threads split the (batch, column block, row block) iterations; cumsum and trilu
split independent columns and rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ...ops.layout import PANEL, sgemm_worth
from ...ops.linalg import b_shape, gemm_dims, matmul_dims
from .loops import indent
from .registry import (
    PARALLEL_TRIPS,
    KernelContext,
    broadcast_index,
    is_float,
    kernel,
    lit,
    parallel,
    worth_threads,
)
from .sgemm import Call, Value, driver_work, split, tile_epilogue, writes_raw

MR = 8  # output rows per block
PANEL_BYTES = 256 * 1024  # the k x NB panel of B a column block reuses across row blocks
NB_MAX = 256  # widest column block (the accumulator is MR x NB elements)
NB_MIN_SPLIT = 128  # narrowest column block made to give threads more blocks


def _acc_type(dtype: str, c_type: str) -> str:
    """C accumulator type: the element type for floats, uint64_t (wrapping) for integers."""
    return c_type if is_float(dtype) else "uint64_t"


@dataclass(frozen=True)
class _Product:
    """out[b] = op(A[b]) @ op(B[b]) for b < batch, op transposing a (k x m) / (n x k) operand."""

    batch: int
    m: int
    k: int
    n: int
    a_offset: str  # C expression: element offset of A's matrix for output batch `b`
    b_offset: str
    trans_a: bool = False
    trans_b: bool = False
    packed: bool = False  # B (one for every batch) in column panels


def _column_block(p: _Product, itemsize: int) -> int:
    """Block width: the B panel (k x NB) fits in L2, at most NB_MAX; the blocks as even as
    multiples of 16 allow (threads get equal shares), and more of them (down to NB_MIN_SPLIT
    wide) while a product worth threads has fewer than PARALLEL_TRIPS blocks."""
    width = max(16, min(NB_MAX, PANEL_BYTES // (itemsize * max(p.k, 1))))
    blocks = -(-p.n // width)
    row_blocks = p.batch * -(-p.m // min(MR, p.m))
    while (worth_threads(p.batch * p.m * p.n * p.k, 2) and row_blocks * blocks < PARALLEL_TRIPS
           and p.n >= 2 * blocks * NB_MIN_SPLIT):
        blocks *= 2
    even = -(-p.n // blocks)
    return min(p.n, even + -even % 16)


def _block(ctx: KernelContext, p: _Product, nb: int, value: Callable[[str], str]) -> str:
    """C for the output rows i0 .. i0 + MR, columns j0 .. j0 + nb of batch b."""
    acc = _acc_type(ctx.in_types[0].dtype, ctx.t(0))
    a_elem = f"pa[k * {p.m} + i0 + r]" if p.trans_a else f"pa[(i0 + r) * {p.k} + k]"
    b_elem = f"pb[(j0 + j) * {p.k} + k]" if p.trans_b else f"pb[k * {p.n} + j0 + j]"
    if p.packed:  # column panels (kiln/ops/layout.py)
        b_elem = f"pb[(j0 + j) / {PANEL} * {p.k * PANEL} + k * {PANEL} + (j0 + j) % {PANEL}]"
    rows = min(MR, p.m)
    store = ctx.store("o", value("acc[r][j]"))
    return f"""{acc} acc[{rows}][{nb}];
for (int64_t r = 0; r < {rows}; ++r)
    for (int64_t j = 0; j < {nb}; ++j) acc[r][j] = 0;
for (int64_t k = 0; k < {p.k}; ++k) {{
    for (int64_t r = 0; r < mr; ++r) {{
        const {acc} av = ({acc}){a_elem};
        for (int64_t j = 0; j < {nb}; ++j) acc[r][j] += av * ({acc}){b_elem};
    }}
}}
for (int64_t r = 0; r < mr; ++r) {{
    for (int64_t j = 0; j < {nb}; ++j) {{
        const int64_t o = ob + (i0 + r) * {p.n} + j0 + j;
        {store}
    }}
}}"""


def _render_product(ctx: KernelContext, p: _Product, value: Callable[[str], str]) -> str:
    """The kernel body of a batched product; value maps the accumulator to the stored value.

    The (batch, column block, row block) iterations write apart: threads split all three.
    """
    if p.batch * p.m * p.n == 0:
        return "/* empty output */"
    nb = _column_block(p, ctx.in_types[0].itemsize)
    full, tail, rows = p.n - p.n % nb, p.n % nb, min(MR, p.m)
    block = _block(ctx, p, nb, value)
    if tail:
        block = (f"if (j0 < {full}) {{\n{indent(block)}\n}} else {{\n"
                 f"{indent(_block(ctx, p, tail, value))}\n}}")
    body = "\n".join([f"const {ctx.t(0)}* restrict pa = {ctx.ins[0]} + {p.a_offset};",
                      f"const {ctx.t(1)}* restrict pb = {ctx.ins[1]} + {p.b_offset};",
                      f"const int64_t ob = b * {p.m * p.n};",
                      f"const int64_t mr = {p.m} - i0 < {rows} ? {p.m} - i0 : {rows};", block])
    trips = p.batch * -(-p.n // nb) * -(-p.m // rows)
    return parallel(ctx, [("b", p.batch), ("j0", p.n, nb), ("i0", p.m, rows)], indent(body),
                    threads=worth_threads(p.batch * p.m * p.n * p.k, trips))


def _on_driver(ctx: KernelContext, p: _Product) -> bool:
    """Whether the product runs on the GEMM driver: float32 worth it or B packed for it, if
    the output stores float32 (else the C loops, which read packed B too)."""
    return (p.packed or sgemm_worth(ctx.in_types[0].dtype, p.m, p.k, p.n)) and writes_raw(ctx)


def _sgemm_product(ctx: KernelContext, p: _Product, value: Value | None) -> str:
    """The kernel body of a float32 batched product on the GEMM driver: one call per batch
    and part (rows x cols) of the output; threads split the parts."""
    work = driver_work(p.batch * p.m * p.n * p.k)
    rows, cols = split(p.batch, p.m, p.n, work)
    a_rs, a_cs = (1, p.m) if p.trans_a else (p.k, 1)
    b_rs, b_cs = (1, p.k) if p.trans_b else (p.n, 1)
    origin = f"b * {p.m * p.n} + i0 * {p.n} + j0"
    b = {"b_panels": f"{ctx.ins[1]} + j0 / {PANEL} * {p.k * PANEL}",
         "panel_stride": str(p.k * PANEL)} if p.packed else \
        {"b": f"{ctx.ins[1]} + {p.b_offset} + j0 * {b_cs}", "b_rs": str(b_rs), "b_cs": str(b_cs)}
    call = Call(m="mn", n="nn", k=str(p.k), a=f"{ctx.ins[0]} + {p.a_offset} + i0 * {a_rs}",
                a_rs=str(a_rs), a_cs=str(a_cs), c=f"{ctx.outs[0]} + {origin}", ldc=str(p.n),
                epilogue=tile_epilogue(ctx, p.n, value), origin=origin, row="i0", col="j0",
                k_max=p.k, n_max=cols, **b)
    body = (f"const int64_t mn = {p.m} - i0 < {rows} ? {p.m} - i0 : {rows};\n"
            f"const int64_t nn = {p.n} - j0 < {cols} ? {p.n} - j0 : {cols};\n{call.render()}")
    trips = p.batch * -(-p.m // rows) * -(-p.n // cols)
    return parallel(ctx, [("b", p.batch), ("i0", p.m, rows), ("j0", p.n, cols)], indent(body),
                    threads=worth_threads(work, trips))


@kernel("matmul")
def _matmul(ctx: KernelContext) -> str:
    d = matmul_dims(ctx.in_types[0].shape, b_shape(ctx.in_types[1].shape, ctx.attrs))
    batch = math.prod(d.batch)
    if math.prod(d.b_batch) == 1 and math.prod(d.a_batch) == batch:
        # One B for every batch: A's batches stack into one tall matrix, as the output's do.
        p = _Product(batch=1, m=batch * d.m, k=d.k, n=d.n, a_offset="0", b_offset="0",
                     packed=bool(ctx.attrs["packed_n"]))
    else:
        a_off = broadcast_index(d.a_batch, d.batch, "b")
        b_off = broadcast_index(d.b_batch, d.batch, "b")
        p = _Product(batch=batch, m=d.m, k=d.k, n=d.n, a_offset=f"({a_off}) * {d.m * d.k}",
                     b_offset=f"({b_off}) * {d.k * d.n}")
    if _on_driver(ctx, p):
        return _sgemm_product(ctx, p, None)
    return _render_product(ctx, p, lambda acc: _narrow(ctx, acc))


def _narrow(ctx: KernelContext, value: str) -> str:
    """value (of the accumulator type) as the output's C type."""
    t = ctx.ot(0)
    return value if _acc_type(ctx.out_types[0].dtype, t) == t else f"({t})({value})"


@kernel("gemm")
def _gemm(ctx: KernelContext) -> str:
    m, k, n = gemm_dims(ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.attrs)
    p = _Product(batch=1, m=m, k=k, n=n, a_offset="0", b_offset="0",
                 trans_a=bool(ctx.attrs["trans_a"]), trans_b=bool(ctx.attrs["trans_b"]),
                 packed=bool(ctx.attrs["packed_n"]))
    if _on_driver(ctx, p):
        return _sgemm_product(ctx, p, _gemm_tile_value(ctx, m, n))
    dtype = ctx.out_types[0].dtype
    acc = _acc_type(dtype, ctx.ot(0))
    alpha, beta = lit(ctx.attrs["alpha"], dtype), lit(ctx.attrs["beta"], dtype)

    def value(a: str) -> str:
        v = a if ctx.attrs["alpha"] == 1 else f"({acc}){alpha} * {a}"
        if len(ctx.ins) == 3:
            c = f"{ctx.ins[2]}[{broadcast_index(ctx.in_types[2].shape, (m, n), 'o')}]"
            v = f"{v} + ({acc}){beta} * ({acc}){c}"
        return _narrow(ctx, v)

    return _render_product(ctx, p, value)


def _gemm_tile_value(ctx: KernelContext, m: int, n: int) -> Value | None:
    """gemm's alpha * AB + beta * C on the driver's raw products (C broadcast by row and
    column), or None when that is AB itself."""
    alpha, beta = ctx.attrs["alpha"], ctx.attrs["beta"]
    if alpha == 1 and len(ctx.ins) < 3:
        return None
    c_shape = (1, 1, *ctx.in_types[2].shape)[-2:] if len(ctx.ins) == 3 else (1, 1)

    def value(raw: str, row: str, col: str) -> str:
        v = raw if alpha == 1 else f"{lit(alpha, 'float32')} * {raw}"
        if len(ctx.ins) == 3:
            at = [f"{row} * {c_shape[1]}" if c_shape[0] > 1 else "",
                  col if c_shape[1] > 1 else ""]
            c = f"{ctx.ins[2]}[{' + '.join(t for t in at if t) or '0'}]"
            v = f"{v} + {c}" if beta == 1 else f"{v} + {lit(beta, 'float32')} * {c}"
        return v

    return value


@kernel("cumsum")
def _cumsum(ctx: KernelContext) -> str:
    x = ctx.in_types[0]
    axis = ctx.attrs["axis"]
    outer, n, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
    if x.numel == 0:
        return "/* empty output */"
    acc = _acc_type(x.dtype, ctx.t(0))
    cb = min(inner, 1024)
    step = f"{n} - 1 - s" if ctx.attrs["reverse"] else "s"
    store = ctx.store("i", _narrow(ctx, "acc[c]"))
    add = "acc[c] += v;"
    update = f"{store}\n{' ' * 16}{add}" if ctx.attrs["exclusive"] else f"{add}\n{' ' * 16}{store}"
    return parallel(ctx, [("q", outer), ("c0", inner, cb)], f"""\
        const int64_t cn = {inner} - c0 < {cb} ? {inner} - c0 : {cb};
        {acc} acc[{cb}];
        for (int64_t c = 0; c < {cb}; ++c) acc[c] = 0;
        for (int64_t s = 0; s < {n}; ++s) {{
            const int64_t base = (q * {n} + ({step})) * {inner} + c0;
            for (int64_t c = 0; c < cn; ++c) {{
                const int64_t i = base + c;
                const {acc} v = ({acc}){ctx.ins[0]}[i];
                {update}
            }}
        }}""", threads=worth_threads(x.numel, outer * -(-inner // cb)))


@kernel("trilu")
def _trilu(ctx: KernelContext) -> str:
    x = ctx.in_types[0]
    rows, cols = x.shape[-2:]
    if x.numel == 0:
        return "/* empty output */"
    k = max(-rows, min(cols, ctx.attrs["k"]))  # beyond these bounds nothing changes
    # Row i keeps columns j >= i + k (upper) or j <= i + k (lower): j < edge vs j >= edge.
    edge = f"i + {k}" if ctx.attrs["upper"] else f"i + {k + 1}"
    zero = lit(0, x.dtype)
    below, above = (zero, "src[j]") if ctx.attrs["upper"] else ("src[j]", zero)
    return parallel(ctx, [("m", x.numel // (rows * cols)), ("i", rows)], f"""\
        const int64_t row = (m * {rows} + i) * {cols};
        const {ctx.t(0)}* restrict src = {ctx.ins[0]} + row;
        int64_t edge = {edge};
        edge = edge < 0 ? 0 : (edge > {cols} ? {cols} : edge);
        for (int64_t j = 0; j < edge; ++j) {ctx.store("row + j", below)}
        for (int64_t j = edge; j < {cols}; ++j) {ctx.store("row + j", above)}""",
                    threads=worth_threads(x.numel, x.numel // cols))
