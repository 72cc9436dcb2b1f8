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
from .kernels.registry import broadcast_index, ctype
from .prelude import PRELUDE

PLACEHOLDER = "KILN_KERNEL_NAME"


@dataclass(frozen=True)
class KernelSource:
    """A rendered kernel: its C function name and complete C source."""

    name: str
    source: str


def _epilogue(group: KernelGroup) -> tuple[str, list[str]]:
    """C function applying the chain to one anchor value; returns (text, extra params).

    Values made inside the group are locals (v0 is the anchor's); each operand from outside
    is loaded once per element, broadcast to the output shape.
    """
    anchor_out = group.anchor.outputs[0]
    out_type = group.outputs[0].type
    params = [f"{ctype(anchor_out.type.dtype)} v0", "int64_t i"]
    names = {id(anchor_out): "v0"}
    lines = []
    for k, v in enumerate(group.extras):
        params.append(f"const {ctype(v.type.dtype)}* restrict e{k}")
        names[id(v)] = f"x{k}"
        idx = broadcast_index(v.type.shape, out_type.shape, "i")
        lines.append(f"    const {ctype(v.type.dtype)} x{k} = e{k}[{idx}];")
    for k, node in enumerate(group.chain, start=1):
        out = node.outputs[0]
        expr = get_expression(node.op)([names[id(v)] for v in node.inputs], node.attrs,
                                       [v.type.dtype for v in node.inputs], out.type.dtype)
        lines.append(f"    const {ctype(out.type.dtype)} v{k} = {expr};")
        names[id(out)] = f"v{k}"
    text = (f"static inline {ctype(out_type.dtype)} kiln_epilogue({', '.join(params)}) {{\n"
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
    if group.chain:
        epilogue, extra_names = _epilogue(group)
        for j, v in enumerate(group.extras):
            t = ctype(v.type.dtype)
            unpack.append(f"    const {t}* restrict ex{j} = (const {t}*)args[{len(ins) + j}];")
        ctx.epilogue = lambda i, val: f"kiln_epilogue({', '.join([val, i, *extra_names])})"
    base = len(group.inputs)
    for k, v in enumerate(group.outputs):
        t = ctype(v.type.dtype)
        unpack.append(f"    {t}* restrict out{k} = ({t}*)args[{base + k}];")
    body = indent(get_kernel(anchor.op).template(ctx))
    source = (f"{PRELUDE}\n/* {group.label} */\n{epilogue}\n"
              f"void {PLACEHOLDER}(void* const* args) {{\n" + "\n".join(unpack)
              + f"\n{body}\n}}\n")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"kiln_{anchor.op}_{digest}"
    return KernelSource(name, source.replace(PLACEHOLDER, name))
