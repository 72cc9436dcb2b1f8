"""C kernels of the normalizations (semantics: kiln/ops/norm.py).

Tensors are row-major. A normalization takes two passes over each group (mean, variance),
then stores; lrn sums the squares of a channel window a row tile at a time. Threads split
the outer loops (groups, planes), never a reduction; local arrays are declared inside the
split loops (the task each thread runs), so each thread has its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ...ops.norm import MVN_EPSILON, lrn_window
from .loops import ROW_TILE, indent, loop
from .registry import (
    ALIGNED,
    KernelContext,
    broadcast_index,
    expression_work,
    kernel,
    lit,
    parallel,
    strides,
    worth_threads,
)

LANES = 8  # normalizations: partial sums of a reduction


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
            f"{t} sums[{tile}] {ALIGNED};\n" + loop("s", "tn", "sums[s] = 0;") + "\n"
            f"const int64_t c_lo = c - {before} < 0 ? 0 : c - {before};\n"
            f"const int64_t c_hi = c + {after} >= {c} ? {c - 1} : c + {after};\n"
            + loop("cc", "c_hi + 1", f"const {t}* restrict xq = {ctx.ins[0]} + "
                   f"(n * {c} + cc) * {size} + t0;\n"
                   + loop("s", "tn", "sums[s] += xq[s] * xq[s];"), start="c_lo") + "\n"
            f"const {t}* restrict xp = {plane};\n"
            + loop("s", "t0 + tn", ctx.store(f"(n * {c} + c) * {size} + s", value), start="t0"))
    work = n * c * size * (before + after + 1 + expression_work(value))
    return parallel(ctx, [("n", n), ("c", c), ("t0", size, tile)], body,
                    threads=worth_threads(work, n * c * -(-size // tile)))


# ---- normalizations


def _lane_sum(total: str, term: Callable[[str], str], size: int) -> str:
    """C: double `total` = the sum of term(r) for r < size, in LANES independent partial sums
    (a reduction gcc vectorizes without reassociating floating-point math)."""
    main = size - size % LANES
    body = (f"double lane[{LANES}] {ALIGNED};\n" + loop("u", LANES, "lane[u] = 0.0;") + "\n"
            f"for (int64_t r = 0; r < {main}; r += {LANES}) {{\n"
            + indent(loop("u", LANES, f"lane[u] += {term('r + u')};")) + "\n}\n"
            + loop("r", size, f"lane[0] += {term('r')};", start=main) + "\n"
            f"{total} = " + " + ".join(f"lane[{u}]" for u in range(LANES)) + ";")
    return f"double {total};\n{{\n{indent(body)}\n}}"


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
            + loop("r", size, f"const {ctx.t(0)} v = {x}[{index('r')}];\n"
                   + ctx.store(index("r"), value)))
    return parallel(ctx, [("g", groups)], body, threads=worth_threads(3 * groups * size, groups))


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
    body = setup + loop("s", size, ctx.store(f"(n * {c} + c) * {size} + s",
                                             f"({ctx.ins[0]}[(n * {c} + c) * {size} + s] - mu)"
                                             " * a + b"))
    return parallel(ctx, [("n", n), ("c", c)], body, threads=worth_threads(n * c * size, n * c))


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
            + loop("r", size, store))
    return parallel(ctx, [("g", groups)], body, threads=worth_threads(2 * groups * size, groups))


@kernel("layer_norm_stats")
def _layer_norm_stats(ctx: KernelContext) -> str:
    groups, size = _layer_groups(ctx)
    t = ctx.t(0)
    body = (_moments(ctx.ins[0], lambda r: f"g * {size} + {r}", size) + "\n" + _inv_std(ctx)
            + "\n"
            f"{ctx.outs[0]}[g] = ({t})mean;\n{ctx.outs[1]}[g] = inv;")
    return parallel(ctx, [("g", groups)], body, threads=worth_threads(2 * groups * size, groups))


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
    body = ("double total = 0.0;\n" + loop("kk", k, f"total += {term};") + "\n"
            f"const {t} norm = ({t}){norm};\n"
            + loop("kk", k, ctx.store(index, f"norm == 0 ? 0 : {x}[{index}] / norm")))
    return parallel(ctx, [("a", outer), ("b", inner)], body,
                    threads=worth_threads(2 * outer * inner * k, outer * inner))
