"""C kernels of depthwise conv (one input channel per group; semantics: kiln/ops/conv.py).

Three kernels, each output element stored once through the fused chain:
- in place (float32 2-D planes with wide rows, see direct_fit): kernels/depthwise_direct.py;
and two over a zero-padded local copy of the input (no bounds checks):
- by channel (any rank, stride, dtype): one channel's plane at a time, along its output
  rows (or, 2-D stride 1, the whole padded plane as one row), the vectors along the rows;
- across channels (float32 2-D planes with short rows or many taps, see lanes_fit): LANES
  channels at a time, interleaved in the local copy (buf[y][x][lane]), so every tap is one
  full vector of LANES channels however short the rows; the results are de-interleaved into
  one contiguous band per channel, which the fused chain then runs over as vectors too.
Threads split images and channels (by channel: each plane; across: each block of LANES).
"""

from __future__ import annotations

import dataclasses
import math

from .depthwise_direct import band_store, direct_conv, direct_fit, tap_sum
from .geometry import ConvGeometry
from .loops import Plane, indent, loop, nest, out_index
from .registry import ALIGNED, KernelContext, lit, parallel, strides, worth_threads

# depthwise conv: kernels with at most this many taps sum them all in one loop over a row
DEPTHWISE_UNROLLED_TAPS = 25
# ... and, with 2-D planes and stride 1, one loop over the whole padded plane (sums of at
# most this many bytes; the padding columns are the only waste); with a larger stride, rows
# of a split plane (Plane.split: the taps then read consecutive columns)
DEPTHWISE_FLAT_BYTES = 64 * 1024
# ... into a local band of output rows of at most this many bytes, stored in one loop after
DEPTHWISE_BAND_BYTES = 16 * 1024
# ... and its row (or flat) loops run to a multiple of this many elements, reading zeros past
# the plane, so that no scalar remainder is left (the columns past the row are dropped)
DEPTHWISE_ROUND = 8
# across channels: channels per vector (one AVX-512 register of float32)
LANES = 16
# ... taken by depthwise convs whose output rows have at most this many columns, or that
# have stride 1 and at least LANES_MIN_TAPS taps. Measured against by channel, float32, one
# thread (best of 400, us): 7-column rows 1152x7x7 5x5 76 -> 30, 960x7x7 3x3 31 -> 18,
# 672x14x14 5x5 stride 2 57 -> 30; 5x5 stride 1: 480x14x14 56 -> 43, 672x14x14 90 -> 60,
# 240x28x28 138 -> 102; but across channels loses where the interleaving costs more than
# the short rows: 576x14x14 3x3 32 -> 34, 192x28x28 3x3 48 -> 58, 240x28x28 5x5 stride 2
# 46 -> 50, 96x112x112 3x3 stride 2 183 -> 293.
LANES_MAX_WIDTH = 7
LANES_MIN_TAPS = 25
# ... whose interleaved padded plane (LANES channels) has at most this many bytes
LANES_PLANE_BYTES = 64 * 1024


def _round(count: int) -> int:
    return -(-count // DEPTHWISE_ROUND) * DEPTHWISE_ROUND


def _depthwise_rows(ctx: KernelContext, g: ConvGeometry, plane: Plane, bias: str) -> str:
    """C: the output plane of channel m, a band of rows at a time: each row one loop over
    its columns (rounded up: see DEPTHWISE_ROUND) summing every tap (few enough to unroll:
    the sum stays in a register, and the loop vectorizes) into `band`, then the band packed
    if rounded and stored in one loop."""
    t, out = ctx.t(0), g.out_size
    taps = math.prod(g.kernel)
    weights = "".join(f"const {t} w{k} = wc[{k}];\n" for k in range(taps))
    if _flat_fits(ctx, g, plane):
        return weights + _depthwise_flat(ctx, g, plane, bias)
    rows, width, wide = math.prod(out[:-1]), out[-1], _round(out[-1])
    band = max(1, min(rows, DEPTHWISE_BAND_BYTES // (wide * ctx.in_types[0].itemsize)))
    at = "ol" if plane.split > 1 else f"ol * {g.strides[-1]}"
    start, offsets = plane.tap_offsets(ctx, g.kernel)
    total = tap_sum(bias, [f"w{k} * xr[{at} + {off}]" for k, off in enumerate(offsets)])
    row_st = strides(tuple(out[:-1]))
    coords = "".join(f"const int64_t o{j} = (r / {row_st[j]}) % {out[j]};\n"
                     for j in range(g.rank - 1))
    row = (coords + f"const {t}* restrict xr = xp + {start};\n"
           + loop("ol", wide, f"band[(r - r0) * {wide} + ol] = {total};"))
    stored = "band"
    body = (f"const int64_t rn = {rows} - r0 < {band} ? {rows} - r0 : {band};\n"
            + loop("r", "r0 + rn", row, start="r0"))
    if wide != width:
        stored = "packed"
        body += "\n" + loop("r", "rn", loop("ol", width, f"packed[r * {width} + ol] = "
                                                       f"band[r * {wide} + ol];"))
    body += "\n" + band_store(ctx, g, f"r0 * {width}", f"rn * {width}", stored)
    buffers = "".join(f"{t} {name}[{band * w}] {ALIGNED};\n"
                      for name, w in [("band", wide), ("packed", width)] if name in body)
    return (weights + buffers
            + f"for (int64_t r0 = 0; r0 < {rows}; r0 += {band}) {{\n{indent(body)}\n}}")


def _depthwise_slack(ctx: KernelContext, g: ConvGeometry, plane: Plane) -> int:
    """Elements _depthwise_rows's rounded loops read past the plane."""
    if _flat_fits(ctx, g, plane):
        count = _flat_taps(g, plane)[0]
        return _round(count) - count
    return (_round(g.out_size[-1]) - g.out_size[-1]) * g.strides[-1]


def _flat_taps(g: ConvGeometry, plane: Plane) -> tuple[int, list[int]]:
    """_depthwise_flat's sum count and tap offsets in the padded plane."""
    pw = plane.width
    count = (g.out_size[0] - 1) * pw + g.out_size[1]
    offsets = [k0 * g.dilations[0] * pw + k1 * g.dilations[1]
               for k0 in range(g.kernel[0]) for k1 in range(g.kernel[1])]
    return count, offsets


def _flat_fits(ctx: KernelContext, g: ConvGeometry, plane: Plane) -> bool:
    """Whether a depthwise conv takes _depthwise_flat: 2-D, stride 1, its sums small, and
    every read in the plane."""
    if g.rank != 2 or plane.split != 1 or g.strides != (1, 1):
        return False
    count, offsets = _flat_taps(g, plane)
    return (count * ctx.in_types[0].itemsize <= DEPTHWISE_FLAT_BYTES
            and (count - 1) + max(offsets) < plane.size)


def _depthwise_flat(ctx: KernelContext, g: ConvGeometry, plane: Plane, bias: str) -> str:
    """C: a 2-D depthwise plane of stride 1 as one loop over q = o0 * PW + ol with PW the
    padded row: tap (k0, k1) reads xp[q + k0 * PW + k1] (a row's
    last columns wrap into the next: sums computed there are dropped, and every read stays
    in the plane, whose extent fits the window); then the rows packed and stored at once."""
    t, out, pw = ctx.t(0), g.out_size, plane.width
    count, offsets = _flat_taps(g, plane)
    total = tap_sum(bias, [f"w{k} * xp[q + {off}]" for k, off in enumerate(offsets)])
    pack = loop("o0", out[0], loop("ol", out[1], f"band[o0 * {out[1]} + ol] = "
                                                 f"sums[o0 * {pw} + ol];"))
    return (f"{t} sums[{_round(count)}] {ALIGNED};\n{t} band[{math.prod(out)}] {ALIGNED};\n"
            + loop("q", _round(count), f"sums[q] = {total};") + "\n" + pack + "\n"
            + band_store(ctx, g, "0", math.prod(out), "band"))


def _channel_conv(ctx: KernelContext, g: ConvGeometry, plane: Plane) -> str:
    """conv with one input channel per group, a channel at a time over its zero-padded
    local copy."""
    t, mg, zero = ctx.t(0), g.out_per_group, lit(0, ctx.in_types[0].dtype)
    bias = f"{ctx.ins[2]}[g * {mg} + m]" if len(ctx.ins) == 3 else zero
    weights = f"const {t}* restrict wc = {ctx.ins[1]} + (g * {mg} + m) * {math.prod(g.kernel)};\n"
    if math.prod(g.kernel) <= DEPTHWISE_UNROLLED_TAPS:
        split = Plane.of(ctx, g.kernel, split=True)
        if g.strides[-1] > 1 and split.fits(ctx):
            plane = split  # taps then read consecutive columns (no gathers)
        plane = dataclasses.replace(plane, slack=_depthwise_slack(ctx, g, plane))
        rows = _depthwise_rows(ctx, g, plane, bias)
    else:
        tap = (f"const {t} wv = wc[kidx];\n"
               + loop("ol", g.out_size[-1], "acc[ol] += wv * xr[ol];"))
        store = ctx.store(out_index(ctx, f"n * {g.out_channels} + g * {mg} + m"), "acc[ol]")
        rows = plane.rows(ctx, g.kernel, bias, tap, store)
    channel = (f"const {t}* restrict xc = {ctx.ins[0]} + (n * {g.in_channels} + g) * "
               f"{math.prod(g.in_size)};\n"
               + plane.fill(zero) + "\n"
               + loop("m", mg, weights + rows))
    work = (g.batch * g.out_channels * math.prod(g.out_size) * math.prod(g.kernel)
            + g.batch * g.group * plane.size)
    return parallel(ctx, [("n", g.batch), ("g", g.group)], plane.declare(t) + "\n" + channel,
                    threads=worth_threads(work, g.batch * g.group))


def _interleave(name: str, count: int) -> str:
    """C helper: dst[p][lane] = src[lane * ld + p] for p below count and the LANES lanes,
    lanes from cn on repeating the last channel (their sums are computed, never stored).
    A function of its own so that gcc 12 vectorizes it: the loop over p, one vector per
    lane, interleaved by permutes (a 16 x 16 transpose), stored whole."""
    lanes = "".join(f"const float* restrict s{j} = src + ({j} < cn ? {j} : cn - 1) * ld;\n"
                    for j in range(LANES))
    body = "\n".join(f"dst[p * {LANES} + {j}] = s{j}[p];" for j in range(LANES))
    return (f"static __attribute__((noinline)) void {name}(\n"
            "        float* restrict dst, const float* restrict src, int64_t ld, int64_t cn) {\n"
            + indent(lanes + loop("p", count, body)) + "\n}\n")


def _deinterleave(count: int) -> str:
    """C helper: dst[lane][q] = src[q][lane] for q below count (the transpose back)."""
    body = "\n".join(f"dst[{j * count} + q] = src[q * {LANES} + {j}];" for j in range(LANES))
    return ("static __attribute__((noinline)) void kiln_dw_deinterleave(\n"
            "        float* restrict dst, const float* restrict src) {\n"
            + indent(loop("q", count, body)) + "\n}\n")


def _lane_taps(g: ConvGeometry, plane: Plane) -> str:
    """C helper: res[q][lane] = bias + sum over taps of wt[tap][lane] * buf[window of q][lane]
    for every output position q: the lane loop innermost, one vector per tap."""
    taps, (oh, ow), pw = math.prod(g.kernel), g.out_size, plane.width
    offsets = [(k0 * g.dilations[0] * pw + k1 * g.dilations[1]) * LANES
               for k0 in range(g.kernel[0]) for k1 in range(g.kernel[1])]
    total = tap_sum(f"wt[{taps * LANES} + j]",
                     [f"wt[{k * LANES} + j] * xr[{off} + j]" for k, off in enumerate(offsets)])
    row = (f"const float* restrict xr = buf + (o0 * {g.strides[0] * pw} + ol * "
           f"{g.strides[1]}) * {LANES};\n"
           f"float* restrict r = res + (o0 * {ow} + ol) * {LANES};\n"
           + loop("j", LANES, f"r[j] = {total};"))
    return ("static __attribute__((noinline)) void kiln_dw_taps(\n"
            "        const float* restrict buf, const float* restrict wt, float* restrict res) {\n"
            + indent(nest([("o0", oh), ("ol", ow)], row)) + "\n}\n")


def lanes_fit(ctx: KernelContext, g: ConvGeometry) -> bool:
    """Whether a depthwise conv takes the kernel across channels: float32, 2-D, one output
    channel per group, at least LANES channels, taps few enough to sum in one expression,
    the interleaved plane within LANES_PLANE_BYTES, and where it was measured faster: rows
    of at most LANES_MAX_WIDTH, or stride 1 and LANES_MIN_TAPS taps or more."""
    if ctx.in_types[0].dtype != "float32" or g.rank != 2 or g.out_per_group != 1:
        return False
    taps = math.prod(g.kernel)
    faster = g.out_size[1] <= LANES_MAX_WIDTH or (g.strides == (1, 1) and taps >= LANES_MIN_TAPS)
    plane = Plane.of(ctx, g.kernel, split=False)
    return (faster and g.in_channels >= LANES and taps <= DEPTHWISE_UNROLLED_TAPS
            and plane.size * LANES * 4 <= LANES_PLANE_BYTES)


def _lanes_conv(ctx: KernelContext, g: ConvGeometry) -> str:
    """conv with one channel per group, LANES channels at a time interleaved (lanes_fit)."""
    plane = Plane.of(ctx, g.kernel, split=False)
    c, taps, (h, w), pw = g.in_channels, math.prod(g.kernel), g.in_size, plane.width
    area, out_area = h * w, math.prod(g.out_size)
    ctx.helpers += [_interleave("kiln_dw_planes", area), _interleave("kiln_dw_weights", taps),
                    _lane_taps(g, plane), _deinterleave(out_area)]
    top, left = plane.begins
    bias = f"{ctx.ins[2]}[c0 + (j < cn ? j : cn - 1)]" if len(ctx.ins) == 3 else "0.0f"
    rows = loop("y", h, loop("e", w * LANES, f"buf[((y + {top}) * {pw} + {left}) * {LANES} + e]"
                                             f" = tmp[y * {w * LANES} + e];"))
    store = ctx.store_row(out_area, f"(n * {c} + c0 + j) * {out_area} + q", f"n * {c} + c0 + j",
                          "q", f"buf[j * {out_area} + q]")
    body = (f"const int64_t c0 = b * {LANES}, cn = {c} - c0 < {LANES} ? {c} - c0 : {LANES};\n"
            f"float buf[{plane.size * LANES}] {ALIGNED};\n"
            f"float tmp[{max(area, out_area) * LANES}] {ALIGNED};\n"
            f"float wt[{(taps + 1) * LANES}] {ALIGNED};\n"
            f"kiln_dw_planes(tmp, {ctx.ins[0]} + (n * {c} + c0) * {area}, {area}, cn);\n"
            + loop("q", plane.size * LANES, "buf[q] = 0.0f;") + "\n" + rows + "\n"
            f"kiln_dw_weights(wt, {ctx.ins[1]} + c0 * {taps}, {taps}, cn);\n"
            + loop("j", LANES, f"wt[{taps * LANES} + j] = {bias};") + "\n"
            "kiln_dw_taps(buf, wt, tmp);\n"
            "kiln_dw_deinterleave(buf, tmp);  /* the plane is read: its bands replace it */\n"
            + loop("j", "cn", loop("q", out_area, store)))
    blocks = -(-c // LANES)
    work = g.batch * c * (out_area * taps + plane.size)
    return parallel(ctx, [("n", g.batch), ("b", blocks)], body,
                    threads=worth_threads(work, g.batch * blocks))


def depthwise_conv(ctx: KernelContext, g: ConvGeometry, plane: Plane) -> str:
    """conv with one input channel per group (plane: its padded copy, which fits): across
    channels where lanes_fit, else in place where direct_fit, else by channel."""
    if lanes_fit(ctx, g):
        return _lanes_conv(ctx, g)
    if direct_fit(ctx, g):
        return direct_conv(ctx, g)
    return _channel_conv(ctx, g, plane)
