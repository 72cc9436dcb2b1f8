"""The direct depthwise conv kernel (float32 2-D, one output channel per group), which reads
each input plane in place, and the C pieces every depthwise kernel shares (the tap sum,
the band store; kernels/depthwise.py holds the other kernels and picks one).

On large planes the other kernels' zero-padded local copy of each plane costs about as
much as the arithmetic. This one pads nothing: an output row reads its taps straight from
the kernel-height input rows it covers (a row outside the input is a static row of zeros,
so the border rows need no code of their own); its interior columns (whose window lies
inside the row) are loops of whole vectors along the row without bounds checks; its few
border columns sums of just the taps inside the row, or, for wide kernels, the first and
last DIRECT_TAIL columns whole vectors over short zero-padded copies of the input columns
they read (edge lines). With stride 2 the input rows a band reads are first split into
their even and odd columns in a small local array (gcc would otherwise gather each tap's
loads two apart with permutes, twice as slow). Rows are computed a band at a time into a
local array (kiln_dw_direct, a helper gcc vectorizes), then stored through the fused chain.
Threads split the channels.
"""

from __future__ import annotations

import math

from .geometry import ConvGeometry
from .loops import indent, loop
from .registry import ALIGNED, KernelContext, parallel, worth_threads

# each sum of taps is split in this many interleaved partial sums: float adds are not
# reassociated, so one chain of 25 dependent multiply-adds would wait on their latency
DEPTHWISE_CHAINS = 4
# direct: kernels with at most this many taps (each sum one expression, kept in registers)
DIRECT_MAX_TAPS = 25
# ... rows computed into a local band of at most this many bytes, stored in one loop after
DIRECT_BAND_BYTES = 16 * 1024
# ... taken by convs whose output rows have at least this many columns (and that do not take
# the kernel across channels, kernels/depthwise.py). Measured against the padded copy,
# float32, one thread, with a fused clip (median us): 3x3 96x112x112 stride 2 192 -> 133,
# 32x112x112 141 -> 74, 144x56x56 143 -> 112, 144x56x56 stride 2 70 -> 53, 96x56x56 stride
# 2 47 -> 36, 384x28x28 86 -> 86, 192x28x28 43 -> 43; 5x5 stride 2 144x56x56 107 -> 83,
# 32x112x112 98 -> 78; but 14-column rows lose: 576x14x14 3x3 36 -> 57.
DIRECT_MIN_WIDTH = 28
# ... interior columns computed a whole vector (16 float32 with AVX-512) at a time
DIRECT_TAIL = 16
# ... border columns (whose window crosses the row's ends) each summed from its own taps
# inside the row, when a row has at most this many (else one loop checking every tap)
DIRECT_BORDER = 8
# ... stride 2: each input row a band reads split into its even and odd columns first (in a
# local array of at most DIRECT_LINES_BYTES), so that every tap reads consecutive columns;
# measured against loads two apart (us): 144x56x56 3x3 53 vs 91, 32x112x112 5x5 78 vs 180
DIRECT_SPLIT = True
DIRECT_LINES_BYTES = 32 * 1024
# ... kernels at least this wide (whose border columns sum many taps) compute the first and
# last DIRECT_TAIL columns of a row as whole vectors from padded copies of the input
# columns they read; narrower ones sum each border column apart (see _row_sums). Measured
# (us): 144x56x56 5x5 stride 2 111 -> 83, 240x28x28 5x5 208 -> 100; 3x3 loses:
# 32x112x112 73 -> 84, 96x112x112 stride 2 133 -> 145.
DIRECT_EDGE_WIDTH = 5


def band_store(ctx: KernelContext, g: ConvGeometry, first: str, count: int | str,
               buffer: str) -> str:
    """C: store buffer[q] at element first + q of channel m's output plane, for q below
    count, in one loop (the fused chain vectorizes over it, however short the rows)."""
    plane = f"n * {g.out_channels} + g * {g.out_per_group} + m"
    ld = math.prod(g.out_size)
    store = ctx.store_row(ld, f"({plane}) * {ld} + {first} + q", f"({plane})", f"{first} + q",
                          f"{buffer}[q]")
    return loop("q", count, store)


def tap_sum(bias: str, products: list[str]) -> str:
    """C: bias plus the products, as DEPTHWISE_CHAINS independent partial sums added last."""
    chains = [products[j::DEPTHWISE_CHAINS] for j in range(DEPTHWISE_CHAINS)]
    chains[0] = [bias, *chains[0]]
    return " + ".join(f"({' + '.join(chain)})" for chain in chains if chain)


def direct_fit(ctx: KernelContext, g: ConvGeometry) -> bool:
    """Whether a depthwise conv takes the direct kernel: float32, 2-D, one output channel
    per group, taps few enough to sum in one expression, and output rows of at least
    DIRECT_MIN_WIDTH columns (where skipping the copy was measured to pay)."""
    return (ctx.in_types[0].dtype == "float32" and g.rank == 2 and g.out_per_group == 1
            and math.prod(g.kernel) <= DIRECT_MAX_TAPS and g.out_size[1] >= DIRECT_MIN_WIDTH)


def _interior(g: ConvGeometry) -> tuple[int, int]:
    """The output columns [a, b) whose whole window lies inside the input row."""
    w, ow, kw = g.in_size[1], g.out_size[1], g.kernel[1]
    sw, dw, pl = g.strides[1], g.dilations[1], g.pad_begins[1]
    a = min(ow, -(-pl // sw))
    last = w - 1 + pl - (kw - 1) * dw  # ox * sw may reach this
    b = last // sw + 1 if last >= 0 else 0
    return a, max(a, min(ow, b))


def _column(sw: int, offset: int, var: str = "ox") -> str:
    """C: var * sw + offset, without the trivial terms."""
    base = var if sw == 1 else f"{var} * {sw}"
    return base if offset == 0 else f"{base} + {offset}" if offset > 0 else f"{base} - {-offset}"


def _split(g: ConvGeometry) -> bool:
    """Whether the input rows are read split into their even and odd columns."""
    return DIRECT_SPLIT and g.strides[1] == 2


def _middle(g: ConvGeometry) -> tuple[int, int]:
    """The output columns [lo, hi) each row computes from its input rows (the others from
    edge lines): the interior, or with edges what they leave of it (maybe none)."""
    ow = g.out_size[1]
    return (DIRECT_TAIL, ow - DIRECT_TAIL) if _edges_fit(g) else _interior(g)


def _split_width(g: ConvGeometry) -> int:
    """Columns in each half of an input row split into even and odd columns (where _split
    and the rows compute a middle), or 0: rows read in place, or not at all."""
    lo, hi = _middle(g)
    return -(-g.in_size[1] // 2) if _split(g) and hi > lo else 0


def _at(hw: int, col: int | str) -> str:
    """C: where input column col (a constant, or a C expression that is not negative) is
    read in its row: in place, or at its offset in the row's split halves of hw."""
    if not hw:
        return str(col)
    if isinstance(col, int):
        return str(col % 2 * hw + col // 2)
    return f"({col}) % 2 * {hw} + ({col}) / 2"


def _row_sums(g: ConvGeometry) -> str:
    """C: o[ox] for one output row from the row pointers x0.. (one per kernel row): the
    interior columns unchecked, as whole vectors; each border column (up to DIRECT_BORDER of
    them) a sum of just the taps inside the row, else a loop checking every tap."""
    (kh, kw), w, ow = g.kernel, g.in_size[1], g.out_size[1]
    sw, dw, pl = g.strides[1], g.dilations[1], g.pad_begins[1]
    a, b, hw = *_interior(g), _split_width(g)
    taps = [(ky * kw + kx, ky, kx * dw - pl) for ky in range(kh) for kx in range(kw)]
    # tap column ox * sw + off: in place, or (split) in the half of off's parity
    inner = tap_sum("bias", [
        f"w{k} * x{ky}[{_column(1, off % 2 * hw + off // 2) if hw else _column(sw, off)}]"
        for k, ky, off in taps])
    # the interior, or with edges what they leave of it: whole vectors, then the last
    # DIRECT_TAIL columns again as whole vectors (overlapping the first loop's: the same
    # sums stored twice) rather than a scalar remainder
    edges, (lo, hi) = _edges_fit(g), _middle(g)
    whole = lo + max(0, hi - lo) // DIRECT_TAIL * DIRECT_TAIL
    parts = [loop("ox", whole, f"o[ox] = {inner};", start=lo)] if whole > lo else []
    if whole < hi:
        parts.append(loop("ox", hi, f"o[ox] = {inner};", start=max(a, hi - DIRECT_TAIL)))
    if edges:
        return "\n".join(parts + [_edge_sums(g, side) for side in (0, 1)])
    border = [*range(a), *range(b, ow)]
    if len(border) <= DIRECT_BORDER:
        for ox in border:
            inside = [(k, ky, ox * sw + off) for k, ky, off in taps if 0 <= ox * sw + off < w]
            total = tap_sum("bias", [f"w{k} * x{ky}[{_at(hw, ix)}]" for k, ky, ix in inside])
            parts.append(f"o[{ox}] = {total};")
        return "\n".join(parts)
    checked = [f"w{k} * ({_column(1, off, 'ix')} >= 0 && {_column(1, off, 'ix')} < {w} ? "
               f"x{ky}[{_at(hw, _column(1, off, 'ix'))}] : 0.0f)" for k, ky, off in taps]
    edge = f"const int64_t ix = {_column(sw, 0)};\no[ox] = {tap_sum('bias', checked)};"
    if a > 0:
        parts.append(loop("ox", a, edge))
    if b < ow:
        parts.append(loop("ox", ow, edge, start=b))
    return "\n".join(parts)


def _edges_fit(g: ConvGeometry) -> bool:
    """Whether the kernel is DIRECT_EDGE_WIDTH wide or more and a row's border columns
    (some) all lie in its first and last DIRECT_TAIL columns, which are then computed as
    whole vectors from padded copies of the input they read."""
    a, b = _interior(g)
    ow = g.out_size[1]
    return (g.kernel[1] >= DIRECT_EDGE_WIDTH and (a > 0 or b < ow) and ow >= DIRECT_TAIL
            and a <= DIRECT_TAIL and ow - b <= DIRECT_TAIL)


def _edge_shape(g: ConvGeometry) -> tuple[int, int, int]:
    """(input columns an edge of DIRECT_TAIL outputs reads, the columns in each half of an
    edge line split by parity (0: not split), the edge line's length in the buffer)."""
    ew = (DIRECT_TAIL - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilations[1] + 1
    eh = -(-ew // 2) if _split(g) else 0
    return ew, eh, -(-max(ew, 2 * eh) // 16) * 16


def _edge_fill(g: ConvGeometry, side: int) -> str:
    """C: edge line `e` (side 0: the first DIRECT_TAIL outputs', 1: the last's) of input
    row `r`: the input columns they read, zeros in the padding (each piece one loop of
    known bounds, so that they vectorize); split by parity where rows are."""
    (ew, eh, _), w, sw, pl = _edge_shape(g), g.in_size[1], g.strides[1], g.pad_begins[1]
    s0 = -pl if side == 0 else (g.out_size[1] - DIRECT_TAIL) * sw - pl
    pieces = []
    for p, step in ((0, 2), (1, 2)) if eh else ((0, 1),):
        count = -(-(ew - p) // step)  # positions j = t * step + p, column s0 + j
        lo = min(count, max(0, -(-(-s0 - p) // step)))
        hi = max(lo, min(count, -(-(w - s0 - p) // step)))
        dst = f"e[{_column(1, p * eh, 't')}]"
        pieces += [loop("t", lo, f"{dst} = 0.0f;") if lo else "",
                   loop("t", hi, f"{dst} = r[{_column(step, s0 + p, 't')}];", start=lo),
                   loop("t", count, f"{dst} = 0.0f;", start=hi) if hi < count else ""]
    return "\n".join(piece for piece in pieces if piece)


def _edge_sums(g: ConvGeometry, side: int) -> str:
    """C: the first (side 0) or last DIRECT_TAIL outputs of the row from the edge lines of
    its input rows (a zero line outside the plane), as whole vectors."""
    (kh, kw), dh, ow = g.kernel, g.dilations[0], g.out_size[1]
    sw, dw = g.strides[1], g.dilations[1]
    _, eh, stride = _edge_shape(g)
    lines = "".join(f"const float* restrict e{ky} = iy + {ky * dh} >= 0 && iy + {ky * dh} < "
                    f"{g.in_size[0]} ? edges + ((iy - y0 + {ky * dh}) * 2 + {side}) * {stride}"
                    " : kiln_dw_zero;\n" for ky in range(kh))
    reads = [_column(1, kx * dw % 2 * eh + kx * dw // 2, "u") if eh
             else _column(sw, kx * dw, "u") for kx in range(kw)]
    total = tap_sum("bias", [f"w{ky * kw + kx} * e{ky}[{reads[kx]}]"
                             for ky in range(kh) for kx in range(kw)])
    base = 0 if side == 0 else ow - DIRECT_TAIL
    store = loop("u", DIRECT_TAIL, f"o[{_column(1, base, 'u')}] = {total};")
    return "{\n" + indent(lines + store) + "\n}"


def _band_rows(g: ConvGeometry) -> int:
    """Output rows of one band: its sums within DIRECT_BAND_BYTES, and the copies of the
    input rows it reads (split rows, edge lines) within DIRECT_LINES_BYTES."""
    (oh, ow), hw = g.out_size, _split_width(g)
    band = DIRECT_BAND_BYTES // (ow * 4)
    per_row = 4 * (2 * hw + (2 * _edge_shape(g)[2] if _edges_fit(g) else 0))
    if per_row:
        reach = (g.kernel[0] - 1) * g.dilations[0] + 1
        band = min(band, (DIRECT_LINES_BYTES // per_row - reach) // g.strides[0] + 1)
    return max(1, min(oh, band))


def _band_lines(g: ConvGeometry, band: int) -> str:
    """C: y0, the first input row that output rows r0 .. r0 + rn read, and each of those
    rows inside the plane split into its even columns then its odd ones in `lines` (where
    rows are split) and copied with its padding into two edge lines in `edges` (where
    _edges_fit)."""
    hw, edges = _split_width(g), _edges_fit(g)
    (h, w), (kh, _), (sh, dh) = g.in_size, g.kernel, (g.strides[0], g.dilations[0])
    count = (band - 1) * sh + (kh - 1) * dh + 1
    head = f"const int64_t y0 = r0 * {sh} - {g.pad_begins[0]};\n"
    if not hw and not edges:
        return head + "(void)y0;\n"
    row = (f"const int64_t iy = y0 + i;\nif (iy < 0 || iy >= {h}) continue;\n"
           f"const float* restrict r = x + iy * {w};\n")
    if hw:
        split = loop("j", w // 2, f"s[j] = r[2 * j];\ns[{hw} + j] = r[2 * j + 1];")
        split += f"\ns[{hw - 1}] = r[{w - 1}];" if w % 2 else ""
        head += f"float lines[{count * 2 * hw}] {ALIGNED};\n"
        row += "{\n" + indent(f"float* restrict s = lines + i * {2 * hw};\n" + split) + "\n}\n"
    if edges:
        stride = _edge_shape(g)[2]
        head += f"float edges[{count * 2 * stride}] {ALIGNED};\n"
        row += "".join("{\n" + indent(f"float* restrict e = edges + (i * 2 + {side}) * "
                                      f"{stride};\n" + _edge_fill(g, side)) + "\n}\n"
                       for side in (0, 1))
    return head + loop("i", f"(rn - 1) * {sh} + {(kh - 1) * dh + 1}", row) + "\n"


def _rows_helper(g: ConvGeometry, band: int) -> str:
    """C helper kiln_dw_direct: output rows r0 .. r0 + rn (at most band) of one channel
    into `band` (rows of its width), from the channel's input plane x and its weights wc.
    A function of its own, so that gcc 12 vectorizes its row loop (it does not always
    inside a big kernel)."""
    (h, w), (kh, kw), ow = g.in_size, g.kernel, g.out_size[1]
    sh, dh, pt, hw = g.strides[0], g.dilations[0], g.pad_begins[0], _split_width(g)
    weights = "".join(f"const float w{k} = wc[{k}];\n" for k in range(kh * kw))
    src = (lambda ky: f"lines + (iy - y0 + {ky * dh}) * {2 * hw}") if hw else \
        (lambda ky: f"x + (iy + {ky * dh}) * {w}")
    rows = "".join(f"const float* restrict x{ky} = iy + {ky * dh} >= 0 && iy + {ky * dh} < {h}"
                   f" ? {src(ky)} : kiln_dw_zero;\n" for ky in range(kh))
    lo, hi = _middle(g)
    row = (f"const int64_t iy = (r0 + r) * {sh} - {pt};\n" + (rows if hi > lo else "")
           + f"float* restrict o = band + r * {ow};\n" + _row_sums(g))
    zeros = max(w, 2 * hw, _edge_shape(g)[2])
    return (f"static const float kiln_dw_zero[{zeros}] {ALIGNED};\n"
            "static __attribute__((noinline)) void kiln_dw_direct(\n"
            "        float* restrict band, const float* restrict x, const float* restrict wc,\n"
            "        float bias, int64_t r0, int64_t rn) {\n"
            + indent(weights + _band_lines(g, band) + loop("r", "rn", row)) + "\n}\n")


def direct_conv(ctx: KernelContext, g: ConvGeometry) -> str:
    """conv with one channel per group (direct_fit), reading each plane in place: threads
    split the channels; each runs its output rows a band at a time through kiln_dw_direct,
    then stores the band through the fused chain."""
    (oh, ow), c, band = g.out_size, g.in_channels, _band_rows(g)
    ctx.helpers.append(_rows_helper(g, band))
    bias = f"{ctx.ins[2]}[g]" if len(ctx.ins) == 3 else "0.0f"
    rows = (f"const int64_t rn = {oh} - r0 < {band} ? {oh} - r0 : {band};\n"
            f"kiln_dw_direct(band, xc, wc, {bias}, r0, rn);\n"
            + band_store(ctx, g, f"r0 * {ow}", f"rn * {ow}", "band"))
    body = ("const int64_t m = 0;  /* the one output channel of group g */\n"
            f"float band[{band * ow}] {ALIGNED};\n"
            f"const float* restrict xc = {ctx.ins[0]} + (n * {c} + g) * {math.prod(g.in_size)};\n"
            f"const float* restrict wc = {ctx.ins[1]} + g * {math.prod(g.kernel)};\n"
            + loop("r0", oh, rows, step=band))
    work = g.batch * c * math.prod(g.out_size) * math.prod(g.kernel)
    return parallel(ctx, [("n", g.batch), ("g", c)], body,
                    threads=worth_threads(work, g.batch * c))
