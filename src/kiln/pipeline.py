"""The whole compilation of one model as one list of named steps, in order (STEPS).

Import comes first (kiln.from_onnx): the graph builder folds each node whose inputs are all
constant as it is added, and import drops what that left unread. kiln.build then binds the
weights and runs STEPS over a State, each step filling in its part. The IR steps are passes
(Module -> Module), checked by the IR verifier after each when $KILN_VERIFY is on. With a
dump folder (build(dump=...), `kiln compile --dump`, $KILN_DUMP) every step's result is
written there as text (layout: kiln/dump.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dump
from .codegen.aot import render_entry
from .codegen.render import KernelSource, render_kernel
from .codegen.target import Target
from .codegen.toolchain import compile_kernels
from .errors import KilnError
from .ir import Module, Value
from .ops import verify
from .passes.dce import eliminate_dead_code
from .passes.fold import fold_constants
from .passes.fuse import KernelGroup, fuse
from .passes.layout import pack_conv_weights, pack_gemm_weights, transform_winograd_weights
from .passes.memory_plan import MemoryPlan, check_arena, plan_memory
from .passes.simplify import fold_batch_norm, pretranspose_gemm_weights


@dataclass(frozen=True)
class Options:
    """What build was asked for, the same for every model it compiles."""

    target: Target
    executor: str = "graph"  # a kind of kiln.runtime.executor.EXECUTORS
    max_memory: int | None = None  # the largest arena a plan may need, in bytes
    progress: bool | None = None  # a progress bar while compiling (None: on a terminal)
    verify: bool = False  # run the IR verifier after every IR step
    dump: Path | None = None  # write every step's result under this folder


@dataclass
class State:
    """One model's compilation so far: each step fills in its field."""

    mod: Module  # the IR, replaced by each IR step
    options: Options
    groups: list[KernelGroup] = field(default_factory=list)  # fuse
    plan: MemoryPlan = field(default_factory=MemoryPlan)  # plan_memory
    sources: list[KernelSource] = field(default_factory=list)  # render: one per group
    calls: list[dict[str, Any]] = field(default_factory=list)  # render: the manifest's kernels
    entry: KernelSource | None = None  # render, for executor="aot": the entry point
    objects: dict[str, bytes] = field(default_factory=dict)  # compile: name -> object code

    @property
    def units(self) -> list[KernelSource]:
        """Every C unit to compile: the kernels, then the entry point if there is one."""
        return [*self.sources, *([self.entry] if self.entry else [])]


def location(v: Value, plan: MemoryPlan, params: set[str]) -> dict[str, Any]:
    """Where v lives, as the manifest records it: a param by name, or a span of the arena."""
    owner = plan.owner(v)
    if owner.name in params and owner not in plan.offsets:
        return {"param": owner.name}
    return {"arena": plan.offsets[owner], "nbytes": v.type.nbytes}


# --- the steps: each fills in its part of the State -------------------------------------------

def _pass(run: Callable[[Module], Module]) -> Callable[[State], None]:
    """An IR pass as a step."""
    def step(s: State) -> None:
        s.mod = run(s.mod)
        if s.options.verify:
            verify(s.mod)
    return step


def _fuse(s: State) -> None:
    s.groups = fuse(s.mod)


def _plan_memory(s: State) -> None:
    s.plan = plan_memory(s.mod, s.groups)
    check_arena(s.plan, s.options.max_memory, s.mod.name)


def _render(s: State) -> None:
    s.sources = [render_kernel(g) for g in s.groups]
    params = {p.name for p in s.mod.graph.params}
    s.calls = [{"func": k.name, "label": g.label, "node": g.anchor.name,
                "shapes": [list(v.type.shape) for v in g.outputs],
                "inputs": [v.name for v in g.inputs], "outputs": [v.name for v in g.outputs],
                "args": [location(v, s.plan, params) for v in [*g.inputs, *g.outputs]]}
               for g, k in zip(s.groups, s.sources, strict=True)]
    if s.options.executor == "aot":
        s.entry = render_entry(s.calls, sorted(params))


def _compile(s: State) -> None:
    s.objects = compile_kernels(s.units, s.options.target, progress=s.options.progress)


# --- what each step shows in the dump folder: {path under the model's folder: text} ----------

def _show_ir(s: State, stem: str) -> dict[str, str]:
    return {f"{stem}.ir": str(s.mod)}


def _show_groups(s: State, stem: str) -> dict[str, str]:
    return {f"{stem}.txt": dump.groups_text(s.groups)}


def _show_plan(s: State, stem: str) -> dict[str, str]:
    return {f"{stem}.txt": dump.plan_text(s.plan)}


def _show_sources(s: State, stem: str) -> dict[str, str]:
    entry = s.entry.name if s.entry else None
    return {f"{stem}.txt": dump.calls_text(s.calls, entry),
            **{f"c/{k.name}.c": k.source for k in s.units}}


def _show_objects(s: State, stem: str) -> dict[str, str]:
    return {f"{stem}.txt": dump.objects_text(s.objects, s.options.target)}


@dataclass(frozen=True)
class Step:
    """A named step: run fills in the State; show gives the files a dump writes of it."""

    name: str
    run: Callable[[State], None]
    show: Callable[[State, str], dict[str, str]]


# The IR passes, in order (each Module -> Module).
PASSES: list[tuple[str, Callable[[Module], Module]]] = [
    ("fold_constants", fold_constants),  # evaluate what depends only on weights
    ("fold_batch_norm", fold_batch_norm),  # BN into conv weights, or a per-channel mul+add
    ("fold_constants_again", fold_constants),  # fold what BN folding made constant
    ("pretranspose_gemm_weights", pretranspose_gemm_weights),  # constant B^T stored as B
    ("pack_gemm_weights", pack_gemm_weights),  # constant float32 B in the GEMM's column panels
    ("transform_winograd_weights", transform_winograd_weights),  # 3x3 convs as Winograd
    ("pack_conv_weights", pack_conv_weights),  # small-plane conv weights as panels of W^T
    ("eliminate_dead_code", eliminate_dead_code),  # drop nodes and weights no output needs
]

# The whole compilation, in order: the IR passes, then the lowering to object code.
STEPS: list[Step] = [
    *(Step(name, _pass(run), _show_ir) for name, run in PASSES),  # IR -> IR
    Step("fuse", _fuse, _show_groups),  # IR -> kernel groups (anchor + elementwise epilogue)
    Step("plan_memory", _plan_memory, _show_plan),  # -> arena offsets; refused over max_memory
    Step("render", _render, _show_sources),  # -> one C function per group (+ the AOT entry)
    Step("compile", _compile, _show_objects),  # C -> objects, cached by a hash of their inputs
]


def run_pipeline(mod: Module, options: Options) -> State:
    """Compile the bound module mod (left unchanged) through STEPS; the final State."""
    state = State(mod.copy(), options)
    folder = dump.start(options.dump, mod.name) if options.dump else None
    if folder:
        dump.write(folder, _show_ir(state, "00-import"))
    for k, step in enumerate(STEPS, start=1):
        step.run(state)
        if folder:
            dump.write(folder, step.show(state, f"{k:02d}-{step.name}"))
    return state


def optimize(mod: Module, *, check: bool = False) -> Module:
    """The IR passes alone on a copy of mod (for tests and tools); check=True verifies the
    IR after each."""
    mod = mod.copy()
    for _name, run in PASSES:
        mod = run(mod)
        if check:
            verify(mod)
    return mod


def verify_between_passes() -> bool:
    """Whether $KILN_VERIFY asks for the IR verifier after every pass (the tests set it)."""
    value = os.environ.get("KILN_VERIFY", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise KilnError(f"KILN_VERIFY={value!r}: use 1, true, yes or on to verify the IR after "
                    "every pass; 0, false, no, off or empty not to")
