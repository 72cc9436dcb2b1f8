"""A conv's geometry as plain ints, computed once per node from its types and attrs (shared
by the conv kernels: kernels/conv.py and the GEMM-driver conv, kernels/conv_gemm.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ...ops.conv import weight_type
from .loops import indent
from .registry import KernelContext, parallel, worth_threads


def ceil_div(a: str, b: int) -> str:
    """C expression: ceil(a / b) for any int64 a and a positive constant b."""
    if b == 1:
        return f"({a})"
    return f"(({a}) > 0 ? (({a}) + {b - 1}) / {b} : -((-({a})) / {b}))"


@dataclass(frozen=True)
class ConvGeometry:
    """A conv's shapes and window as plain ints, computed once from the node's types and attrs
    (for conv_transpose, in_size is the input's and out_size the output's, as for conv)."""

    batch: int
    in_channels: int
    out_channels: int
    group: int
    in_size: tuple[int, ...]  # the input's spatial shape
    kernel: tuple[int, ...]  # the weight's spatial shape
    out_size: tuple[int, ...]  # the output's spatial shape
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pad_begins: tuple[int, ...]
    pad_ends: tuple[int, ...]
    packed: bool = False  # the weight is stored as column panels of W^T (ops/layout.py)
    winograd: bool = False  # the weight is stored transformed (ops/winograd.py)

    @classmethod
    def of(cls, ctx: KernelContext) -> ConvGeometry:
        x, w, y = ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_types[0].shape
        packed = "packed_weight" in ctx.attrs and bool(ctx.attrs["packed_weight"])  # conv only
        winograd = "winograd_weight" in ctx.attrs and bool(ctx.attrs["winograd_weight"])
        if packed or winograd:
            w = weight_type(ctx.in_types[1], ctx.attrs).shape
        a, nd = ctx.attrs, len(x) - 2
        return cls(x[0], x[1], y[1], a["group"], tuple(x[2:]), tuple(w[2:]), tuple(y[2:]),
                   tuple(a["strides"]), tuple(a["dilations"]), tuple(a["pads"][:nd]),
                   tuple(a["pads"][nd:]), packed, winograd)

    @property
    def rank(self) -> int:
        """Number of spatial dims."""
        return len(self.in_size)

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.group

    @property
    def pointwise(self) -> bool:
        """1x1 kernel, stride 1, no padding: each output position reads its own input one."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) \
            and not any(self.pad_begins + self.pad_ends)

    def as_row(self) -> ConvGeometry:
        """A pointwise conv seen as one long 1-D row, so the row kernel's tile spans whole
        planes; any other conv unchanged."""
        if not self.pointwise or self.rank < 2:
            return self
        size = math.prod(self.in_size)
        return replace(self, in_size=(size,), kernel=(1,), out_size=(size,), strides=(1,),
                       dilations=(1,), pad_begins=(0,), pad_ends=(0,))


def tile_loops(ctx: KernelContext, g: ConvGeometry, positions: int, tile: int, body: str, *,
               work: int, split: bool, max_parts: int, part_bounds: str) -> str:
    """C: loops over (image, group, position tile p0) around body, which computes the output
    channels m0 .. m0 + mn of a tile; threads split the tiles. With `split` and max_parts >= 2,
    each tile's channels are also cut in as many parts (up to max_parts) as the run-time
    thread count asks for when there are fewer tiles than threads; part_bounds is the C that
    sets m0 and mn of part `part` of `parts`."""
    mg = g.out_per_group
    tiles = g.batch * g.group * -(-positions // tile)
    loops = [("n", g.batch), ("g", g.group), ("p0", positions, tile)]
    if max_parts < 2 or not split:
        return parallel(ctx, loops, indent(f"const int64_t m0 = 0, mn = {mg};\n{body}"),
                        threads=worth_threads(work, tiles))
    # the parts are counted once per call, from the thread count the pool splits it among
    return ("{\n"
            f"const int64_t want = (kiln_threads() + {tiles - 1}) / {tiles};\n"
            f"const int64_t parts = want < {max_parts} ? want : {max_parts};\n"
            + parallel(ctx, [*loops, ("part", "parts")], indent(f"{part_bounds}\n{body}"),
                       threads=True, shared=["const int64_t parts"])
            + "\n}")
