"""kiln.build: a module in, a factory module (compiled kernels + graph + weights) out.

    bind params -> optimize (passes/pipeline.py) -> fuse -> plan memory -> render C
    -> compile (cached) -> FactoryModule, exported with export_library.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .codegen.aot import render_entry
from .codegen.render import render_kernel
from .codegen.target import Target, resolve_target
from .codegen.toolchain import compile_kernels
from .errors import CompileError, KilnError, LimitError
from .export.factory import CompiledModel, FactoryModule
from .ir import Module, Value
from .passes.fuse import fuse
from .passes.memory_plan import MemoryPlan, check_arena, plan_memory
from .passes.pipeline import PASSES, optimize
from .runtime.compat import physical_memory


def _location(v: Value, plan: MemoryPlan, params: set[str]) -> dict[str, Any]:
    owner = plan.owner(v)
    if owner.name in params and owner not in plan.offsets:
        return {"param": owner.name}
    return {"arena": plan.offsets[owner], "nbytes": v.type.nbytes}


def _tensor(name: str, v: Value, plan: MemoryPlan, params: set[str]) -> dict[str, Any]:
    return {"name": name, "shape": list(v.type.shape), "dtype": v.type.dtype,
            "loc": _location(v, plan, params)}


EXECUTORS = ("graph", "aot")


def verify_between_passes() -> bool:
    """Whether $KILN_VERIFY asks for the IR verifier after every pass (the tests set it)."""
    value = os.environ.get("KILN_VERIFY", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise KilnError(f"KILN_VERIFY={value!r}: use 1, true, yes or on to verify the IR after "
                    "every pass; 0, false, no, off or empty not to")


def compile_model(mod: Module, target: Target, *, executor: str = "graph",
                  progress: bool | None = None, max_memory: int | None = None) -> CompiledModel:
    """Optimize, fuse, plan and compile one bound module for the given executor kind;
    a plan whose arena is over max_memory bytes is refused before compiling."""
    mod = optimize(mod, check=verify_between_passes())
    groups = fuse(mod)
    plan = plan_memory(mod, groups)
    check_arena(plan, max_memory, mod.name)
    kernels = [render_kernel(g) for g in groups]
    objects = compile_kernels(kernels, target, progress=progress)
    params = {p.name for p in mod.graph.params}
    spec = {
        "executor": executor,
        "inputs": [_tensor(v.name, v, plan, params) for v in mod.graph.inputs],
        "outputs": [_tensor(n, v, plan, params)
                    for n, v in zip(mod.graph.output_names, mod.graph.outputs, strict=True)],
        "arena_bytes": plan.arena_bytes,
        "memory": {
            "peak_bytes": plan.arena_bytes,
            "unplanned_bytes": plan.unplanned_bytes,
            "buffers": [{"tensor": b.value.name, "offset": b.offset, "size": b.size,
                         "first": b.first, "last": b.last} for b in plan.buffers],
        },
        "kernels": [
            {"func": k.name, "label": g.label, "node": g.anchor.name,
             "shapes": [list(v.type.shape) for v in g.outputs],
             "inputs": [v.name for v in g.inputs], "outputs": [v.name for v in g.outputs],
             "args": [_location(v, plan, params) for v in [*g.inputs, *g.outputs]]}
            for g, k in zip(groups, kernels, strict=True)
        ],
        "ir": str(mod),
        "source": mod.source,
        "build": {"executor": executor, "passes": [name for name, _ in PASSES]},
    }
    weights = {p.name: np.asarray(mod.params[p.name], order="C") for p in mod.graph.params}
    objects = {k.name: objects[k.name] for k in kernels}
    if executor == "aot":
        entry = render_entry(spec["kernels"], sorted(weights))
        objects.update(compile_kernels([entry], target, progress=False))
        spec["entry"] = entry.name
    return CompiledModel(mod.name, spec, weights, objects)


def build(
    mod: Module | dict[str, Module],
    *,
    target: str | dict[str, Any] | None = None,
    params: dict[str, np.ndarray] | None = None,
    executor: str = "graph",
    progress: bool | None = None,
    max_memory: int | None = None,
) -> FactoryModule:
    """Compile a module (or {name: module}) for target; params binds the weights by name.

    For several models, params is one dict for all, or {model name: that model's params}.

    executor: "graph" (Python steps through the kernels; can profile them) or "aot" (one
    generated C entry point runs the whole model in a single native call).

    max_memory: the largest arena (peak intermediate memory, in bytes) a model may plan; a
    bigger plan is refused with LimitError. Default: this machine's physical memory.
    """
    if executor not in EXECUTORS:
        raise CompileError(f"unknown executor {executor!r}; choose one of {list(EXECUTORS)}")
    if max_memory is None:
        max_memory = physical_memory()
    elif isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0:
        raise LimitError(f"max_memory must be a byte count (an int >= 0), got {max_memory!r}")
    tgt = resolve_target(target)
    mods = mod if isinstance(mod, dict) else {"default": mod}
    per_model = isinstance(mod, dict) and params is not None and set(params) == set(mods) \
        and all(isinstance(v, dict) for v in params.values())
    compiled = {}
    for name, m in mods.items():
        bound = m.bind(params[name] if per_model else params)
        bound.name = name
        compiled[name] = compile_model(bound, tgt, executor=executor, progress=progress,
                                       max_memory=max_memory)
    return FactoryModule(compiled, tgt)
