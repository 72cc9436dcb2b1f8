"""The AOT entry point: one C function that runs a whole model over a static workspace.

    void kiln_aot_<hash>(uint8_t* workspace, const void* const* params)

The workspace is the memory plan's arena (inputs and outputs included, at the offsets the
manifest records); params lists the weights in the manifest's param order. One native
call per inference, no Python between kernels, and callable from a plain C program.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .render import PLACEHOLDER, KernelSource


def render_entry(kernels: list[dict[str, Any]], param_names: list[str]) -> KernelSource:
    """C source of the entry point calling kernels (manifest entries) in order."""
    index = {name: k for k, name in enumerate(param_names)}

    def arg(loc: dict[str, Any]) -> str:
        if "param" in loc:
            return f"(void*)params[{index[loc['param']]}]"
        return f"(void*)(workspace + {int(loc['arena'])})"

    decls = sorted({f"extern void {k['func']}(void* const* args);" for k in kernels})
    calls = [f"    {{ void* const a[] = {{{', '.join(arg(loc) for loc in k['args'])}}}; "
             f"{k['func']}(a); }}  /* {k['label']} */" for k in kernels]
    source = ("#include <stdint.h>\n" + "\n".join(decls)
              + f"\n\nvoid {PLACEHOLDER}(uint8_t* workspace, const void* const* params) {{\n"
              + "    (void)params;\n" + "\n".join(calls) + "\n}\n")
    name = f"kiln_aot_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    return KernelSource(name, source.replace(PLACEHOLDER, name))
