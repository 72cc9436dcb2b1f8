"""The renderer: a kernel group (anchor + fused elementwise chain) to one C function.

Every kernel has the signature `void name(void* const* args)`: args holds the group's
inputs then its outputs. The function name is derived from a hash of its source, so equal
kernels (same op, shapes and attrs) are compiled once and shared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..passes.fuse import KernelGroup
from .kernels import KernelContext, get_expression, get_kernel
from .kernels.loops import indent
from .kernels.registry import broadcast_index, ctype, row_index
from .prelude import PRELUDE

PLACEHOLDER = "KILN_KERNEL_NAME"


@dataclass(frozen=True)
class KernelSource:
    """A rendered kernel: its C function name and complete C source."""

    name: str
    source: str


def _epilogue(group: KernelGroup, ld: int | None = None) -> tuple[str, list[str]]:
    """C function applying the chain to one anchor value; returns (text, extra params).

    Values made inside the group are locals (v0 is the anchor's); each operand from outside
    is loaded once per element, broadcast to the output shape: from the flat index i, or with
    ld (kiln_epilogue_rows<ld>) from the row `outer` and column `inner` of rows of ld elements.
    """
    anchor_out = group.anchor.outputs[0]
    out_type = group.outputs[0].type
    params = [f"{ctype(anchor_out.type.dtype)} v0", "int64_t i"]
    if ld is not None:
        params += ["int64_t outer", "int64_t inner"]
    names = {id(anchor_out): "v0"}
    lines = []
    for k, v in enumerate(group.extras):
        params.append(f"const {ctype(v.type.dtype)}* restrict e{k}")
        names[id(v)] = f"x{k}"
        idx = (broadcast_index(v.type.shape, out_type.shape, "i") if ld is None else
               row_index(v.type.shape, out_type.shape, ld, "outer", "inner", "i"))
        lines.append(f"    const {ctype(v.type.dtype)} x{k} = e{k}[{idx}];")
    for k, node in enumerate(group.chain, start=1):
        out = node.outputs[0]
        expr = get_expression(node.op)([names[id(v)] for v in node.inputs], node.attrs,
                                       [v.type.dtype for v in node.inputs], out.type.dtype)
        lines.append(f"    const {ctype(out.type.dtype)} v{k} = {expr};")
        names[id(out)] = f"v{k}"
    name = "kiln_epilogue" if ld is None else f"kiln_epilogue_rows{ld}"
    text = (f"static inline {ctype(out_type.dtype)} {name}({', '.join(params)}) {{\n"
            + "\n".join(lines) + f"\n    return v{len(group.chain)};\n}}\n")
    return text, [f"ex{j}" for j in range(len(group.extras))]


def render_kernel(group: KernelGroup) -> KernelSource:
    """Render one kernel group to C."""
    anchor = group.anchor
    ins = [v for v in anchor.inputs]
    ctx = KernelContext(
        in_types=[v.type for v in ins], out_types=[v.type for v in anchor.outputs],
        attrs=dict(anchor.attrs), ins=[f"in{k}" for k in range(len(ins))],
        outs=[f"out{k}" for k in range(len(group.outputs))],
    )
    unpack = [f"    const {ctype(v.type.dtype)}* restrict in{k} = "
              f"(const {ctype(v.type.dtype)}*)args[{k}];" for k, v in enumerate(ins)]
    epilogue = ""
    row_lengths: set[int] = set()
    if group.chain:
        epilogue, extra_names = _epilogue(group)
        for j, v in enumerate(group.extras):
            t = ctype(v.type.dtype)
            unpack.append(f"    const {t}* restrict ex{j} = (const {t}*)args[{len(ins) + j}];")
        ctx.epilogue = lambda i, val: f"kiln_epilogue({', '.join([val, i, *extra_names])})"

        def by_rows(ld: int, i: str, outer: str, inner: str, val: str) -> str:
            row_lengths.add(ld)
            return f"kiln_epilogue_rows{ld}({', '.join([val, i, outer, inner, *extra_names])})"

        ctx.row_epilogue = by_rows
    base = len(group.inputs)
    for k, v in enumerate(group.outputs):
        t = ctype(v.type.dtype)
        unpack.append(f"    {t}* restrict out{k} = ({t}*)args[{base + k}];")
    ctx.stored_types = [v.type for v in group.outputs]
    # a template or helper need not read every argument (-Wall -Werror builds, docs/mlf.md)
    names = [line.split("=")[0].split()[-1] for line in unpack]
    unpack.append("    " + " ".join(f"(void){n};" for n in names))
    ctx.unpack = "\n".join(line.strip() for line in unpack)
    body = indent(get_kernel(anchor.op).template(ctx))
    for ld in sorted(row_lengths):
        epilogue += _epilogue(group, ld)[0]
    helpers = "".join(f"{h}\n" for h in ctx.helpers)
    source = (f"{PRELUDE}\n/* {group.label} */\n{epilogue}\n{helpers}"
              f"void {PLACEHOLDER}(void* const* args) {{\n" + "\n".join(unpack)
              + f"\n{body}\n}}\n")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"kiln_{anchor.op}_{digest}"
    return KernelSource(name, source.replace(PLACEHOLDER, name))
