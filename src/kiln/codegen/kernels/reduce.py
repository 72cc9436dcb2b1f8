"""C kernels of the reduce ops (semantics: kiln/ops/reduce.py).

Reductions, arg reductions and the softmax family share one loop generator, `_walk`: an
outer loop over the kept positions, then passes over the reduced elements that update
accumulators (locals) and may store per element; a reduction stores each output once at
the end. When the innermost (contiguous) dimension is kept, up to TILE positions of it are
reduced side by side in local arrays, so the inner loop is contiguous and vectorizable.
Floats accumulate sums in double; integers in uint64_t (wrap-around, no signed overflow).
Softmax over contiguous rows (attention scores) has its own fully vectorizable kernel using
the prelude's `kiln_expf`; top-k keeps a heap in its outputs. Threads split the kept
positions (rows, slices), never the elements of one reduction, so results do not depend on
the thread count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from string import Template

import numpy as np

from ...ops.reduce import REDUCTIONS
from .registry import (
    ALIGNED,
    SERIAL_WORK,
    KernelContext,
    ctype,
    expression_work,
    is_float,
    kernel,
    lit,
    mathfn,
    parallel,
    strides,
    worth_threads,
)

# Most kept contiguous positions reduced side by side (local accumulator arrays).
TILE = 256
# Longest softmax row kept in a local array (each exp computed once).
SCRATCH = 8192
# Independent partial results of a row reduction: one vector of floats.
LANES = 8
# Work per element of a softmax row (four passes, one with an exp; measured).
SOFTMAX_WORK = 8


@dataclass(frozen=True)
class Acc:
    """A local of the walk, one per kept position: name, C type and initial value."""

    name: str
    ctype: str
    init: str | None = None


@dataclass(frozen=True)
class Step:
    """C code run once per reduced element (`each`) or once per kept position.

    The code may name `x` (the element), `$r` (its flat index among the reduced elements),
    `$i` (its flat index in the input) and `$<acc>` (an accumulator).
    """

    code: str
    each: bool = True


def _merged_dims(shape: tuple[int, ...], axes: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """(size, input stride, reduced) of shape without its size-1 dims, runs of a kind merged."""
    dims: list[list] = []
    for d, (n, s) in enumerate(zip(shape, strides(shape), strict=True)):
        if n == 1:
            continue
        if dims and dims[-1][2] == (d in axes):
            dims[-1][0] *= n
            dims[-1][1] = s
        else:
            dims.append([n, s, d in axes])
    return [(n, s, r) for n, s, r in dims]


def _times(var: str, n: int) -> str:
    return var if n == 1 else f"{var} * {n}"


def _flat_offset(var: str, dims: list[tuple[int, int]]) -> str:
    """C expression: the input offset of row-major position `var` over dims (size, stride)."""
    terms, inner = [], 1
    for n, s in reversed(dims):
        coord = f"{var} / {inner}" if inner > 1 else var
        if inner * n < math.prod(n for n, _ in dims):
            coord = f"({coord}) % {n}"
        terms.append(_times(f"({coord})", s))
        inner *= n
    return " + ".join(reversed(terms)) or "0"


def _walk(ctx: KernelContext, axes: tuple[int, ...], accs: list[Acc], steps: list[Step],
          final: str | None = None) -> str:
    """The kernel body: accumulate over `axes` of input 0; `final` is stored per kept position."""
    if ctx.out_types[0].numel == 0:
        return ""
    t_in = ctx.t(0)
    dims = _merged_dims(ctx.in_types[0].shape, axes)
    kept = [(n, s) for n, s, r in dims if not r]
    red = [(n, s) for n, s, r in dims if r]
    inner = kept.pop()[0] if red and not dims[-1][2] else 1
    width = min(inner, TILE)
    tiled = width > 1

    sub = {a.name: f"{a.name}[t]" if tiled else a.name for a in accs}
    r_flat = " + ".join(_times(f"r{j}", math.prod(n for n, _ in red[j + 1:]))
                        for j in range(len(red))) or "0"
    index = " + ".join(["ob"] + [_times(f"r{j}", s) for j, (_, s) in enumerate(red)]
                       + (["t0 + t"] if tiled else []))
    sub.update(r=f"({r_flat})", i=f"({index})")

    def fill(code: str) -> str:
        return Template(code).substitute(sub)

    def per_t(code: str) -> str:
        return f"for (int64_t t = 0; t < nt; ++t) {{ {code} }}" if tiled else code

    lines = [f"const int64_t ob = {_flat_offset('o', kept)};"]
    if tiled:
        rest = f"({inner} - t0 < {width} ? {inner} - t0 : {width})"
        lines.append(f"const int64_t nt = {width if inner % width == 0 else rest};")
    for a in accs:
        if tiled:
            lines.append(f"{a.ctype} {a.name}[{width}] {ALIGNED};")
            if a.init is not None:
                lines.append(per_t(f"{a.name}[t] = {a.init};"))
        else:
            lines.append(f"{a.ctype} {a.name}" + (";" if a.init is None else f" = {a.init};"))
    load = f"const {t_in} x = {ctx.ins[0]}[{index}];"
    for step in steps:
        if not step.each:
            lines.append(per_t(fill(step.code)))
            continue
        code = fill(step.code)
        body = per_t(f"{{ {load} {code} }}" if re.search(r"\bx\b", code) else code)
        for j in reversed(range(len(red))):
            body = f"for (int64_t r{j} = 0; r{j} < {red[j][0]}; ++r{j}) {{\n{body}\n}}"
        lines.append(body)
    if final is not None:
        out = f"o * {inner} + t0 + t" if tiled else "o"
        lines.append(per_t(ctx.store(out, fill(final))))
    body = "\n".join(line for line in lines if line)
    n_outer = math.prod(n for n, _ in kept)
    # Threads split the kept positions (and tiles), each reduced whole in one thread.
    work = ctx.in_types[0].numel * sum(expression_work(s.code) for s in steps if s.each)
    work *= 1 if tiled else SERIAL_WORK  # a lone accumulator is a dependent chain
    trips = n_outer * -(-inner // width)
    loops = [("o", n_outer), ("t0", inner, width)] if tiled else [("o", n_outer)]
    return parallel(ctx, loops, body, threads=worth_threads(work, trips))


# ---- reductions -------------------------------------------------------------------------------


def _wide(dtype: str) -> str:
    """The accumulator type of sums and products: double for floats, wrapping uint64_t else."""
    return "double" if is_float(dtype) else "uint64_t"


def _as_double(acc: str, dtype: str) -> str:
    """The value of a `_wide` accumulator as a double (signed integers through int64_t)."""
    signed = np.dtype(dtype).kind == "i"
    return f"(double)(int64_t){acc}" if signed else f"(double){acc}"


def _magnitude(dtype: str) -> str:
    """C expression: |x| in the `_wide` type (no overflow for the most negative integer)."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return "fabs((double)x)"
    if kind == "i":
        return "(x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x)"
    return "(uint64_t)x"


def _mean(dtype: str, count: int) -> str:
    t = ctype(dtype)
    if count == 0:
        return lit(0, dtype)
    if is_float(dtype):
        return f"({t})($s / {float(count)!r})"
    if np.dtype(dtype).kind == "i":
        return f"({t})((int64_t)$s / INT64_C({count}))"
    return f"({t})($s / UINT64_C({count}))"


def _worst(dtype: str, largest: bool) -> str:
    """C literal that every value beats in a max (largest) or min search."""
    if dtype == "bool":
        return lit(not largest, dtype)
    if is_float(dtype):
        return lit(-math.inf if largest else math.inf, dtype)
    info = np.iinfo(dtype)
    return lit(info.min if largest else info.max, dtype)


def _extreme(dtype: str, largest: bool) -> str:
    """The update of $m in a max (largest) or min reduction; NaN propagates."""
    cmp = ">" if largest else "<"
    if is_float(dtype):
        return f"$m = (x {cmp} $m || x != x) ? x : $m;"
    return f"$m = x {cmp} $m ? x : $m;"


def _reduction_body(op: str, ctx: KernelContext) -> tuple[list[Acc], list[Step], str]:
    """Accumulators, passes and final value of reduction `op`."""
    dtype = ctx.in_types[0].dtype
    t, wide = ctype(dtype), _wide(dtype)
    shape = ctx.in_types[0].shape
    count = math.prod(shape[a] for a in ctx.attrs["axes"])
    if op in ("reduce_max", "reduce_min"):
        largest = op == "reduce_max"
        return [Acc("m", t, _worst(dtype, largest))], [Step(_extreme(dtype, largest))], "$m"
    if op == "reduce_log_sum_exp":
        accs = [Acc("m", "double", "(-INFINITY)"), Acc("s", "double", "0.0")]
        steps = [Step("$m = ((double)x > $m || x != x) ? (double)x : $m;"),
                 Step("$m = isinf($m) ? 0.0 : $m;", each=False),  # shift by 0 if inf
                 Step("$s += exp((double)x - $m);")]
        return accs, steps, f"({t})(log($s) + $m)"
    if op == "reduce_prod":
        return [Acc("s", wide, "1")], [Step(f"$s *= ({wide})x;")], f"({t})$s"
    if op == "reduce_l2":
        accs = [Acc("s", "double", "0.0")]
        return accs, [Step("$s += (double)x * (double)x;")], f"({t})sqrt($s)"
    updates = {
        "reduce_sum": f"$s += ({wide})x;",
        "reduce_mean": f"$s += ({wide})x;",
        "reduce_log_sum": f"$s += ({wide})x;",
        "reduce_l1": f"$s += {_magnitude(dtype)};",
        "reduce_sum_square": f"$s += ({wide})x * ({wide})x;",
    }
    finals = {
        "reduce_mean": _mean(dtype, count),
        "reduce_log_sum": f"({t})log({_as_double('$s', dtype)})",
    }
    return [Acc("s", wide, "0")], [Step(updates[op])], finals.get(op, f"({t})$s")


def _reduction_kernel(op: str) -> None:
    def template(ctx: KernelContext) -> str:
        accs, steps, final = _reduction_body(op, ctx)
        return _walk(ctx, tuple(ctx.attrs["axes"]), accs, steps, final)

    kernel(op)(template)


for _op in REDUCTIONS:
    _reduction_kernel(_op)


# ---- argmax / argmin / softmax family -----------------------------------------------------------


def _arg_update(dtype: str, largest: bool, last: bool) -> tuple[str, str]:
    """(initial $v, step) keeping in $v, $k the best element so far and its index; NaN wins."""
    cmp = ">" if largest else "<"
    if is_float(dtype):
        cond = f"x {cmp}= $v || x != x" if last else f"x {cmp} $v || (x != x && $v == $v)"
    else:
        cond = f"x {cmp}= $v" if last else f"x {cmp} $v"
    return _worst(dtype, largest), f"if ({cond}) {{ $v = x; $k = $r; }}"


def _arg_kernel(op: str, largest: bool) -> None:
    def template(ctx: KernelContext) -> str:
        dtype = ctx.in_types[0].dtype
        init, step = _arg_update(dtype, largest, bool(ctx.attrs["select_last_index"]))
        accs = [Acc("v", ctype(dtype), init), Acc("k", "int64_t", "0")]
        return _walk(ctx, (ctx.attrs["axis"],), accs, [Step(step)], "$k")

    kernel(op)(template)


_arg_kernel("argmax", True)
_arg_kernel("argmin", False)


def _exp(dtype: str) -> str:
    """The exp of softmax-like kernels: the vectorizable prelude expf for float32."""
    return "kiln_expf" if dtype == "float32" else mathfn("exp", dtype)


def _softmax_rows(ctx: KernelContext, log: bool) -> str:
    """(Log-)softmax of contiguous rows that fit SCRATCH: every loop vectorizes at -O2 (max
    and sum in LANES independent partials, exps into a local row), one exp per element."""
    t, dtype = ctx.t(0), ctx.in_types[0].dtype
    n = ctx.in_types[0].shape[ctx.attrs["axis"]]
    full, lanes = n - n % LANES, LANES
    if log:
        finish = f"const {t} ls = ({t})log(s);", "(xr[r] - m) - ls"
    else:
        finish = f"const {t} inv = ({t})(1.0 / s);", "ex[r] * inv"
    rows = ctx.out_types[0].numel // n
    return parallel(ctx, [("o", rows)], f"""\
const {t}* xr = {ctx.ins[0]} + o * {n};
{t} mv[{lanes}] {ALIGNED};
for (int l = 0; l < {lanes}; ++l) mv[l] = {lit(-math.inf, dtype)};
for (int64_t r = 0; r < {full}; r += {lanes})
  for (int l = 0; l < {lanes}; ++l) mv[l] = xr[r + l] > mv[l] ? xr[r + l] : mv[l];
for (int w = {lanes // 2}; w > 0; w /= 2)
  for (int l = 0; l < w; ++l) mv[l] = mv[l + w] > mv[l] ? mv[l + w] : mv[l];
{t} m = mv[0];
for (int64_t r = {full}; r < {n}; ++r) m = xr[r] > m ? xr[r] : m;
{t} ex[{n}] {ALIGNED};
for (int64_t r = 0; r < {n}; ++r) ex[r] = {_exp(dtype)}(xr[r] - m);
double sv[{lanes}] {ALIGNED};
for (int l = 0; l < {lanes}; ++l) sv[l] = 0.0;
for (int64_t r = 0; r < {full}; r += {lanes})
  for (int l = 0; l < {lanes}; ++l) sv[l] += ex[r + l];
for (int w = {lanes // 2}; w > 0; w /= 2)
  for (int l = 0; l < w; ++l) sv[l] += sv[l + w];
double s = sv[0];
for (int64_t r = {full}; r < {n}; ++r) s += ex[r];
{finish[0]}
for (int64_t r = 0; r < {n}; ++r) {ctx.store(f"o * {n} + r", finish[1])}""",
                    threads=worth_threads(SOFTMAX_WORK * rows * n, rows))


def _softmax_walk(ctx: KernelContext, log: bool) -> str:
    """(Log-)softmax along any axis with the walker (exps computed again when storing)."""
    t, dtype = ctx.t(0), ctx.in_types[0].dtype
    exp = _exp(dtype)
    if log:
        last, once, value = "ls", f"$ls = ({t})log($s);", "(x - $m) - $ls"
    else:
        last, once, value = "inv", f"$inv = ({t})(1.0 / $s);", f"{exp}(x - $m) * $inv"
    accs = [Acc("m", t, lit(-math.inf, dtype)), Acc("s", "double", "0.0"), Acc(last, t)]
    steps = [Step("$m = x > $m ? x : $m;"), Step(f"$s += {exp}(x - $m);"),
             Step(once, each=False), Step(ctx.store("$i", value))]
    return _walk(ctx, (ctx.attrs["axis"],), accs, steps)


def _softmax_kernel(op: str, log: bool) -> None:
    def template(ctx: KernelContext) -> str:
        shape, axis = ctx.in_types[0].shape, ctx.attrs["axis"]
        rows = math.prod(shape[axis + 1:]) == 1 and 0 < shape[axis] <= SCRATCH
        if rows and ctx.out_types[0].numel:
            return _softmax_rows(ctx, log)
        return _softmax_walk(ctx, log)

    kernel(op)(template)


_softmax_kernel("softmax", False)
_softmax_kernel("log_softmax", True)


@kernel("hardmax")
def _hardmax(ctx: KernelContext) -> str:
    dtype = ctx.in_types[0].dtype
    init, step = _arg_update(dtype, True, False)
    accs = [Acc("v", ctype(dtype), init), Acc("k", "int64_t", "0")]
    store = ctx.store("$i", f"$r == $k ? {lit(1, dtype)} : {lit(0, dtype)}")
    return _walk(ctx, (ctx.attrs["axis"],), accs, [Step(step), Step(store)])


# ---- topk ---------------------------------------------------------------------------------------


def _less(a: str, b: str, dtype: str) -> str:
    """C condition a < b in the order NumPy sorts by (NaN above every number)."""
    if is_float(dtype):
        return f"({a} < {b} || ({a} == {a} && {b} != {b}))"
    return f"({a} < {b})"


@kernel("topk")
def _topk(ctx: KernelContext) -> str:
    """Per slice along axis: a heap of the k best (root = worst) in the outputs, then heapsort.

    The result is always sorted best first, equal values in index order.
    """
    shape, axis, k = ctx.in_types[0].shape, ctx.attrs["axis"], ctx.attrs["k"]
    if ctx.out_types[0].numel == 0:
        return ""
    dtype, t = ctx.in_types[0].dtype, ctx.t(0)
    n, inner = shape[axis], math.prod(shape[axis + 1:])
    outer = math.prod(shape[:axis])

    def at(j: str) -> str:
        return f"({j}) * {inner}" if inner > 1 else j

    def entry(p: str) -> tuple[str, str]:  # heap entry p: (value, index)
        return f"hv[{at(p)}]", f"hi[{at(p)}]"

    def worse(p: str, q: str) -> str:  # heap entry p ranks below entry q
        (vp, ip), (vq, iq) = entry(p), entry(q)
        lo, hi = (vp, vq) if ctx.attrs["largest"] else (vq, vp)
        return f"({_less(lo, hi, dtype)} || (!{_less(hi, lo, dtype)} && {ip} > {iq}))"

    def swap(p: str, q: str) -> str:
        (vp, ip), (vq, iq) = entry(p), entry(q)
        return (f"{{ const {t} tv = {vp}; {vp} = {vq}; {vq} = tv;\n"
                f"  const int64_t ti = {ip}; {ip} = {iq}; {iq} = ti; }}")

    def sift(start: str, size: str) -> str:  # move entry `start` down to its place
        return (
            f"{{ int64_t p = {start};\n"
            f"  for (int64_t c = 2 * p + 1; c < {size}; c = 2 * p + 1) {{\n"
            f"    if (c + 1 < {size} && {worse('c + 1', 'c')}) c += 1;\n"
            f"    if (!{worse('c', 'p')}) break;\n"
            f"    {swap('p', 'c')}\n"
            f"    p = c;\n  }} }}"
        )

    better = _less("hv[0]", "v", dtype) if ctx.attrs["largest"] else _less("v", "hv[0]", dtype)
    return parallel(ctx, [("a", outer * inner)], f"""\
const int64_t q = a / {inner}, b = a % {inner};
const {t}* xs = {ctx.ins[0]} + q * {n * inner} + b;
{t}* hv = {ctx.outs[0]} + q * {k * inner} + b;
int64_t* hi = {ctx.outs[1]} + q * {k * inner} + b;
for (int64_t j = 0; j < {k}; ++j) {{ hv[{at('j')}] = xs[{at('j')}]; hi[{at('j')}] = j; }}
for (int64_t j = {k // 2 - 1}; j >= 0; --j) {sift('j', str(k))}
for (int64_t j = {k}; j < {n}; ++j) {{
  const {t} v = xs[{at('j')}];
  if ({better}) {{ hv[0] = v; hi[0] = j; {sift('0', str(k))} }}
}}
for (int64_t e = {k - 1}; e > 0; --e) {{
  {swap('0', 'e')}
  {sift('0', 'e')}
}}""", threads=worth_threads(SERIAL_WORK * outer * inner * n, outer * inner))
