"""C text helpers shared by the conv, pool, norm, movement and resize kernels: loops (a nest
whose outer loops threads split), flat indices, and the padded local copy of an input plane
that depthwise conv and the pools read.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ...ops.window import window_extent
from .registry import ALIGNED, KernelContext, nest_depth, parallel, strides, worth_threads

ROW_TILE = 256  # conv row kernel, lrn: elements of one row kept in a local array at a time
PLANE_BYTES = 256 * 1024  # depthwise conv, pools: largest padded plane copied to the stack


def loop(var: str, count: int | str, body: str, *, start: int | str = 0,
         step: int = 1) -> str:
    """C: a for loop of int64_t var from start up to count (by step), around body."""
    advance = f"++{var}" if step == 1 else f"{var} += {step}"
    return (f"for (int64_t {var} = {start}; {var} < {count}; {advance}) {{\n{indent(body)}\n}}")


def indent(text: str) -> str:
    """text with each non-empty line indented by four spaces (the one indent of all C text)."""
    return "\n".join("    " + line if line else line for line in text.splitlines())


def nest(loops: list[tuple[str, int]], body: str) -> str:
    """Nested for loops over (variable, count) pairs, outermost first."""
    for var, count in reversed(loops):
        body = loop(var, count, body)
    return body


def split_nest(ctx: KernelContext, loops: list[tuple[str, int]], body: str, work: int) -> str:
    """C: body inside the nest of loops over (variable, count) pairs, outermost first, its
    first nest_depth loops split among threads when `work` in all is worth it (a task of
    ctx: body may read the kernel's arguments and the nest's counters only)."""
    depth = nest_depth([n for _, n in loops])
    trips = math.prod(n for _, n in loops[:depth])
    return parallel(ctx, loops[:depth], nest(loops[depth:], body),
                    threads=worth_threads(work, trips))


def flat_index(coords: list[str], shape: tuple[int, ...] | list[int]) -> str:
    """C expression: the row-major flat index of coords in shape."""
    st = strides(tuple(shape))
    terms = [f"{c} * {s}" if s != 1 else c for c, s in zip(coords, st, strict=True)]
    return " + ".join(terms) if terms else "0"


@dataclass(frozen=True)
class Plane:
    """One input plane copied into a local array `xp` with its padding filled in, so that
    every window reads it without bounds checks (the ceil_mode overhang included).

    Each row is stored as `split` (the last stride) interleaved sub-rows, column c at
    sub-row c % split, offset c / split: a tap then reads consecutive output columns from
    consecutive addresses, and gcc vectorizes the row loop for any stride.
    `slack` zeros follow the plane, for loops rounded up to whole vectors that read past it.
    """

    shape: tuple[int, ...]  # the input plane's spatial shape
    padded: tuple[int, ...]
    begins: tuple[int, ...]
    split: int
    slack: int = 0

    @classmethod
    def of(cls, ctx: KernelContext, kernel: tuple[int, ...], *, split: bool = True) -> Plane:
        """The plane of ctx's input for a window of kernel; split=False keeps rows whole
        (a tap then reads its columns `stride` apart)."""
        shape, out = ctx.in_types[0].shape[2:], ctx.out_types[0].shape[2:]
        a, nd = ctx.attrs, len(kernel)
        padded = tuple(max(shape[j] + a["pads"][j] + a["pads"][nd + j],
                           window_extent(out[j], kernel[j], a["strides"][j], a["dilations"][j]))
                       for j in range(nd))
        return cls(tuple(shape), padded, tuple(a["pads"][:nd]), a["strides"][-1] if split else 1)

    @property
    def width(self) -> int:
        """Elements in one sub-row."""
        return -(-self.padded[-1] // self.split)

    @property
    def size(self) -> int:
        return math.prod(self.padded[:-1]) * self.split * self.width

    def fits(self, ctx: KernelContext) -> bool:
        return self.size * ctx.in_types[0].itemsize <= PLANE_BYTES

    def declare(self, t: str) -> str:
        return f"{t} xp[{self.size + self.slack}] {ALIGNED};"

    def _at(self, row: str, col: str) -> str:
        """C: the offset of padded column `col` of padded row `row` (flat over outer dims)."""
        if self.split == 1:
            return f"({row}) * {self.width} + {col}"
        return f"(({row}) * {self.split} + ({col}) % {self.split}) * {self.width} + " \
               f"({col}) / {self.split}"

    def fill(self, fill: str) -> str:
        """C: xp = the plane at `xc`, surrounded by fill. A split plane is written a sub-row
        at a time (contiguous stores, loads `split` apart: the copy vectorizes)."""
        nd = len(self.shape)
        row = flat_index([f"(i{j} + {self.begins[j]})" for j in range(nd - 1)], self.padded[:-1])
        src = flat_index([f"i{j}" for j in range(nd - 1)], self.shape[:-1])
        if self.split == 1:
            at = self._at(row, f"i{nd - 1} + {self.begins[-1]}")
            inner = loop(f"i{nd - 1}", self.shape[-1],
                         f"xp[{at}] = xc[({src}) * {self.shape[-1]} + i{nd - 1}];")
        else:
            inner = "\n".join(self._sub_row_copy(row, src, part) for part in range(self.split))
        copy = nest([(f"i{j}", self.shape[j]) for j in range(nd - 1)], inner)
        return loop("q", self.size + self.slack, f"xp[q] = {fill};") + "\n" + copy

    def _sub_row_copy(self, row: str, src: str, part: int) -> str:
        """C: sub-row `part` of padded row `row`: offset j holds input column j * split + part
        - begin, for the j (known here) that put it inside the input row `src`."""
        split, begin, width = self.split, self.begins[-1], self.shape[-1]
        first, end = -(-(begin - part) // split), -(-(width + begin - part) // split)
        if end <= first:
            return ""
        return loop("j", end, f"xp[(({row}) * {split} + {part}) * {self.width} + j] = "
                              f"xc[({src}) * {width} + j * {split} + {part - begin}];",
                    start=max(first, 0))

    def rows(self, ctx: KernelContext, kernel: tuple[int, ...], init: str, tap: str,
             store: str) -> str:
        """C: for each output row (o0, o1, ...): acc[ol] = init; run tap for each kernel tap
        (`xr[ol]`: the value it reads for output column ol, `kidx`: its flat index); store."""
        a, t = ctx.attrs, ctx.t(0)
        out = ctx.out_types[0].shape[2:]
        nd = len(out)
        row = flat_index([f"(o{j} * {a['strides'][j]} + k{j} * {a['dilations'][j]})"
                          for j in range(nd - 1)], self.padded[:-1])
        kidx = flat_index([f"k{j}" for j in range(nd)], kernel)
        start = self._at(row, f"k{nd - 1} * {a['dilations'][-1]}")
        taps = nest([(f"k{j}", kernel[j]) for j in range(nd)],
                    f"const int64_t kidx = {kidx};\n"
                    "(void)kidx; /* a max pool's tap does not need it */\n"
                    f"const {t}* restrict xr = xp + {start};\n{tap}")
        body = (f"{t} acc[{out[-1]}] {ALIGNED};\n" + loop("ol", out[-1], f"acc[ol] = {init};")
                + f"\n{taps}\n" + loop("ol", out[-1], store))
        return nest([(f"o{j}", out[j]) for j in range(nd - 1)], body)


    def tap_offsets(self, ctx: KernelContext, kernel: tuple[int, ...]) -> tuple[str, list[int]]:
        """(C: the offset in xp of output row (o0, ...), each kernel tap's constant offset from
        it, flat index order): tap t reads xp[row + offset_t + ol] for output column ol
        (ol * stride in a plane that is not split). One base and constant displacements keep
        every tap in one register, however many taps there are."""
        a, nd = ctx.attrs, len(kernel)
        row = flat_index([f"o{j} * {a['strides'][j]}" for j in range(nd - 1)], self.padded[:-1])
        start = f"({row}) * {self.split * self.width}"
        offsets = []
        for tap in itertools.product(*map(range, kernel)):
            tap_row = sum(tap[j] * a["dilations"][j] * st
                          for j, st in enumerate(strides(self.padded[:-1])))
            col = tap[-1] * a["dilations"][-1]
            offsets.append((tap_row * self.split + col % self.split) * self.width
                           + col // self.split)
        return start, offsets


def out_index(ctx: KernelContext, plane: str) -> str:
    """C: the flat output index of (o0, ..., ol) in output plane `plane`."""
    out = ctx.out_types[0].shape[2:]
    coords = [f"o{j}" for j in range(len(out) - 1)] + ["ol"]
    return f"({plane}) * {math.prod(out)} + {flat_index(coords, out)}"

