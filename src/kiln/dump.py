"""The dump: what every compilation step made, as text files, to see what each step did.

`KILN_DUMP=DIR` (or `kiln.build(..., dump=DIR)`, or `kiln compile --dump DIR`) writes, for
each model (`default` for a single module), into DIR/<model>/, with NN numbering the steps
in the order of kiln/pipeline.py's STEPS (so `ls` lists them in the order they ran):

    00-import.ir          the IR as build received it (imported, weights bound)
    NN-<pass>.ir          the IR after each IR pass (PASSES), as the IR printer writes it
    NN-fuse.txt           the kernel groups: anchor node, epilogue chain, inputs, outputs
    NN-plan_memory.txt    the memory plan: the arena's peak size; each buffer's offset, size
                          and lifetime in kernel steps; the views that share a buffer
    NN-render.txt         the kernels in run order: C function, fused ops, arguments
    c/<kernel>.c          each kernel's C source (and the AOT entry point's, if any)
    NN-compile.txt        the C compiler and flags, each object's size

Each file is written atomically as soon as its step is done, so a build that fails still
shows what the steps before the failing one made. What an earlier dump of the model left
(numbered files, c/*.c) is removed first, so the folder shows one build. In a model name,
characters other than letters, digits, `_`, `.` and `-` become `_` (a folder name never
leaves DIR).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .codegen.target import Target
from .errors import ExportError
from .ir import Node
from .passes.fuse import KernelGroup
from .passes.memory_plan import MemoryPlan
from .runtime.files import atomic_write

ENV = "KILN_DUMP"


def root_folder(given: str | os.PathLike | None) -> Path | None:
    """The dump folder: given, else $KILN_DUMP, else None (no dump)."""
    value = os.fspath(given) if given is not None else os.environ.get(ENV, "")
    return Path(value) if value else None


def start(root: Path, model: str) -> Path:
    """Model's dump folder under root, made and cleared of an earlier dump's files."""
    path = root / (re.sub(r"[^\w.-]", "_", model, flags=re.ASCII).lstrip(".") or "_")
    try:
        (path / "c").mkdir(parents=True, exist_ok=True)
        for old in [*path.glob("[0-9][0-9]-*"), *(path / "c").glob("*.c")]:
            old.unlink(missing_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write the dump folder {path}: {e.strerror or e}") from e
    return path


def write(path: Path, files: dict[str, str]) -> None:
    """Write files ({path under the model's folder: text}) atomically."""
    for name, text in files.items():
        try:
            atomic_write(path / name, text.encode())
        except OSError as e:
            raise ExportError(f"cannot write {path / name}: {e.strerror or e}") from e


def _node(node: Node) -> str:
    return f"{node.op} (node '{node.name}')" if node.name else node.op


def groups_text(groups: list[KernelGroup]) -> str:
    """Each kernel group, in run order: anchor, epilogue chain, inputs and outputs."""
    lines = [f"{len(groups)} kernel groups, in run order"]
    for k, g in enumerate(groups):
        lines += ["", f"group {k}: {g.label}", f"  anchor    {_node(g.anchor)}",
                  *(f"  epilogue  {_node(n)}" for n in g.chain),
                  f"  inputs    {', '.join(map(repr, g.inputs))}",
                  f"  outputs   {', '.join(map(repr, g.outputs))}"]
    return "\n".join(lines) + "\n"


def plan_text(plan: MemoryPlan) -> str:
    """The arena's peak size, each buffer's place and lifetime, and the views sharing one."""
    lines = [f"arena {plan.arena_bytes} bytes at peak ({plan.unplanned_bytes} without reuse), "
             f"{len(plan.buffers)} buffers",
             "steps: kernel steps a buffer is live; -1 is before the first kernel (inputs), "
             "the kernel count after the last (outputs)", "",
             f"{'offset':>12} {'size':>12} {'steps':>11}  tensor"]
    lines += [f"{b.offset:>12} {b.size:>12} {f'{b.first}..{b.last}':>11}  {b.value!r}"
              for b in plan.buffers]
    if plan.alias:
        lines += ["", "views (no buffer of their own):"]
        lines += [f"  %{v.name} shares %{root.name}" for v, root in plan.alias.items()]
    return "\n".join(lines) + "\n"


def _arg(name: str, loc: dict[str, Any]) -> str:
    """A tensor and where it lives: `%x @arena 0+4096` (offset+bytes), or `%w (param)`."""
    if "arena" in loc:
        return f"%{name} @arena {loc['arena']}+{loc['nbytes']}"
    if loc["param"] == name:
        return f"%{name} (param)"
    return f"%{name} (param {loc['param']})"


def _args(names: list[str], locs: list[dict[str, Any]]) -> str:
    return ", ".join(_arg(n, loc) for n, loc in zip(names, locs, strict=True)) or "-"


def calls_text(calls: list[dict[str, Any]], aot: list[dict[str, str]]) -> str:
    """The kernels in run order (manifest entries): C function (or external function),
    fused ops, node, arguments; then the aot steps (entry points and external steps)."""
    lines = []
    for k, c in enumerate(calls):
        n = len(c["inputs"])
        what = c["func"] if "func" in c else f"external {c['external']}"
        lines += [f"{k:4d} {what}: {c['label']} (node '{c['node']}')",
                  f"       in  {_args(c['inputs'], c['args'][:n])}",
                  f"       out {_args(c['outputs'], c['args'][n:])}"]
    for step in aot:
        lines.append(f"entry point {step['entry']}: calls its run of the kernels above"
                     if "entry" in step else f"external step {step['external']}")
    return "\n".join(lines) + "\n"


def objects_text(objects: dict[str, bytes], target: Target) -> str:
    """The compiler and flags, and each object's size."""
    lines = [f"compiled with {target.cc} {' '.join(target.cflags)}", ""]
    lines += [f"{len(obj):>10} bytes  {name}.o" for name, obj in objects.items()]
    return "\n".join(lines) + "\n"
