"""C kernels of the pools (semantics: kiln/ops/pool.py).

Tensors are row-major (N, C, *spatial). A pool reads a padded local copy of each input plane
(kiln/codegen/kernels/loops.py), or checks bounds for planes too large for the stack.
Threads split the outer loops (planes, output rows), never a reduction; local arrays are
declared inside the split loops (the task each thread runs), so each thread has its own;
the avg pools' tables of window counts are static, at file scope.
"""

from __future__ import annotations

import math

import numpy as np

from .loops import Plane, flat_index, indent, loop, nest, out_index
from .reduce import LANES
from .registry import (
    ALIGNED,
    SERIAL_WORK,
    KernelContext,
    is_float,
    kernel,
    lit,
    parallel,
    worth_threads,
)


def _lowest(dtype: str) -> str:
    """C literal: the identity of max in dtype."""
    return "(-INFINITY)" if is_float(dtype) else lit(np.iinfo(dtype).min, dtype)


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
    body = f"const {ctx.t(0)} v = xc[{flat_index([f'i{j}' for j in range(nd)], shape)}];\n{visit}"
    if include_pad:
        body = f"cnt += 1;\nif ({inside}) {{\n{indent(body)}\n}}"
    for j in reversed(range(nd)):
        lo, hi = (-pads[j], shape[j] + pads[nd + j]) if include_pad else (0, shape[j])
        start = f"o{j} * {a['strides'][j]} - {pads[j]}"
        step = (f"const int64_t i{j} = {start} + k{j} * {a['dilations'][j]};\n"
                f"if (i{j} < {lo}) continue;\nif (i{j} >= {hi}) break;\n")
        body = loop(f"k{j}", a["kernel_shape"][j], step + body)
    return body


def _pool(ctx: KernelContext, init: str, visit: str, result: str, *,
          include_pad: bool = False) -> str:
    x, y = ctx.in_types[0].shape, ctx.out_types[0].shape
    out = y[2:]
    loops = [(f"o{j}", n) for j, n in enumerate(out)]
    window = _window_loops(ctx, visit, include_pad=include_pad)
    store = ctx.store(f"nc * {math.prod(out)} + {flat_index([v for v, _ in loops], out)}", result)
    plane = f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {math.prod(x[2:])};\n"
    body = plane + nest(loops[1:], f"{init}\n{window}\n{store}")
    work = SERIAL_WORK * math.prod(y) * math.prod(ctx.attrs["kernel_shape"])
    return parallel(ctx, [("nc", x[0] * x[1]), loops[0]], body,
                    threads=worth_threads(work, x[0] * x[1] * out[0]))


def _max_of(acc: str, v: str, dtype: str) -> str:
    """C: the larger of acc and v; a NaN v wins, and a NaN acc stays (as in NumPy). The
    comparisons are combined with | so that gcc emits selects, not branches."""
    nan = f" | ({v} != {v})" if is_float(dtype) else ""
    return f"(({v} > {acc}){nan}) ? {v} : {acc}"


def _max_update(dtype: str) -> str:
    """C: fold `v` into `acc` keeping the maximum."""
    return f"acc = {_max_of('acc', 'v', dtype)};"


def _plane_pool(ctx: KernelContext, plane: Plane, fill: str, tap: str, result: str) -> str:
    x = ctx.in_types[0].shape
    store = ctx.store(out_index(ctx, "nc"), result)
    body = (f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {math.prod(x[2:])};\n"
            + plane.fill(fill) + "\n"
            + plane.rows(ctx, tuple(ctx.attrs["kernel_shape"]), fill, tap, store))
    work = SERIAL_WORK * ctx.out_types[0].numel * math.prod(ctx.attrs["kernel_shape"])
    return parallel(ctx, [("nc", x[0] * x[1])], f"{plane.declare(ctx.t(0))}\n{body}",
                    threads=worth_threads(work, x[0] * x[1]))


@kernel("max_pool")
def _max_pool(ctx: KernelContext) -> str:
    dtype = ctx.in_types[0].dtype
    plane = Plane.of(ctx, tuple(ctx.attrs["kernel_shape"]))
    if not plane.fits(ctx):
        return _pool(ctx, f"{ctx.t(0)} acc = {_lowest(dtype)};", _max_update(dtype), "acc")
    tap = loop("ol", ctx.out_types[0].shape[-1],
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
        flat = flat_index([f"i{j}" for j in range(len(spatial))], spatial)
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
    plane = Plane.of(ctx, tuple(ctx.attrs["kernel_shape"]))
    if not plane.fits(ctx):
        visit = "acc += v;" if include else "acc += v;\ncnt += 1;"
        return _pool(ctx, f"{t} acc = 0;\nint64_t cnt = 0;", visit, f"acc / ({t})cnt",
                     include_pad=include)
    nd = len(ctx.attrs["kernel_shape"])
    ctx.helpers += [f"static const {t} kiln_counts{j}[] = {{"
                    f"{', '.join(map(str, _window_counts(ctx, j)))}}};" for j in range(nd)]
    divisor = " * ".join(f"kiln_counts{j}[o{j}]" for j in range(nd - 1)) or "1"
    tap = loop("ol", ctx.out_types[0].shape[-1], "acc[ol] += xr[ol];")
    result = f"acc[ol] / ({divisor} * kiln_counts{nd - 1}[ol])"
    return _plane_pool(ctx, plane, lit(0, ctx.in_types[0].dtype), tap, result)


def _global_pool(ctx: KernelContext, init: str, update: str, result: str) -> str:
    x = ctx.in_types[0].shape
    size = math.prod(x[2:])
    body = (f"const {ctx.t(0)}* restrict xc = {ctx.ins[0]} + nc * {size};\n{init}\n"
            + loop("s", size, f"const {ctx.t(0)} v = xc[s];\n{update}") + "\n"
            + ctx.store("nc", result))
    return parallel(ctx, [("nc", x[0] * x[1])], body,
                    threads=worth_threads(SERIAL_WORK * math.prod(x), x[0] * x[1]))


@kernel("global_avg_pool")
def _global_avg_pool(ctx: KernelContext) -> str:
    """Each plane summed in LANES interleaved partial sums (a loop that vectorizes), then
    those in order: the same order at any thread count."""
    x = ctx.in_types[0].shape
    size, t = math.prod(x[2:]), ctx.t(0)
    full = size - size % LANES
    body = (f"const {t}* restrict xc = {ctx.ins[0]} + nc * {size};\n"
            f"{t} part[{LANES}] {ALIGNED} = {{0}};\n"
            + loop("s", full, loop("l", LANES, "part[l] += xc[s + l];"), step=LANES) + "\n"
            + f"{t} acc = 0;\n" + loop("l", LANES, "acc += part[l];") + "\n"
            + loop("s", size, "acc += xc[s];", start=full) + "\n"
            + ctx.store("nc", f"acc / ({t}){size}"))
    return parallel(ctx, [("nc", x[0] * x[1])], body,
                    threads=worth_threads(math.prod(x), x[0] * x[1]))


@kernel("global_max_pool")
def _global_max_pool(ctx: KernelContext) -> str:
    dtype = ctx.in_types[0].dtype
    return _global_pool(ctx, f"{ctx.t(0)} acc = {_lowest(dtype)};", _max_update(dtype), "acc")
