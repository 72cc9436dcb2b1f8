"""The whole compilation of one model as one list of named steps, in order (STEPS).

Import comes first (kiln.from_onnx): the graph builder folds each node whose inputs are all
constant as it is added, and import drops what that left unread. kiln.build then binds the
weights and runs STEPS over a State, each step filling in its part. The IR steps are passes
(Module -> Module), checked by the IR verifier after each when $KILN_VERIFY is on. With a
dump folder (build(dump=...), `kiln compile --dump`, $KILN_DUMP) every step's result is
written there as text (layout: kiln/dump.py).
"""

from __future__ import annotations

import json
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
from .ops import EXTERNAL, get_op, verify
from .passes.dce import eliminate_dead_code
from .passes.fold import fold_constants
from .passes.fuse import KernelGroup, fuse
from .passes.layout import pack_conv_weights, pack_gemm_weights, transform_winograd_weights
from .passes.memory_plan import MemoryPlan, check_arena, plan_memory
from .passes.partition import partition
from .passes.simplify import fold_batch_norm, pretranspose_gemm_weights
from .runtime.external.registry import get_backend


@dataclass(frozen=True)
class Options:
    """What build was asked for, the same for every model it compiles."""

    target: Target
    executor: str = "graph"  # a kind of kiln.runtime.executor.EXECUTORS
    max_memory: int | None = None  # the largest arena a plan may need, in bytes
    progress: bool | None = None  # a progress bar while compiling (None: on a terminal)
    verify: bool = False  # run the IR verifier after every IR step
    dump: Path | None = None  # write every step's result under this folder
    offload: tuple[str, ...] = ()  # external backends, in priority order (docs/byoc.md)
    offload_min_nodes: int = 1  # smaller regions stay on kiln's kernels
    prebuild: bool = False  # build the external engines now and store them


@dataclass
class State:
    """One model's compilation so far: each step fills in its field."""

    mod: Module  # the IR, replaced by each IR step
    options: Options
    groups: list[KernelGroup] = field(default_factory=list)  # fuse
    plan: MemoryPlan = field(default_factory=MemoryPlan)  # plan_memory
    sources: list[KernelSource] = field(default_factory=list)  # render: one per group
    calls: list[dict[str, Any]] = field(default_factory=list)  # render: the manifest's kernels
    # render, for executor="aot": the entry points, one per run of native kernels between
    # external steps (one in all without externals)
    entries: list[KernelSource] = field(default_factory=list)
    aot: list[dict[str, str]] = field(default_factory=list)  # render: the aot steps, in order
    externals: dict[str, dict[str, Any]] = field(default_factory=dict)  # render: by function
    objects: dict[str, bytes] = field(default_factory=dict)  # compile: name -> object code

    @property
    def units(self) -> list[KernelSource]:
        """Every C unit to compile: the kernels, then the entry points (each once)."""
        entries = {e.name: e for e in self.entries}
        return [*self.sources, *entries.values()]


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


def _partition(s: State) -> None:
    """Hand each region of nodes an offload backend supports to it (docs/byoc.md)."""
    if not s.options.offload:
        return
    backends = [(name, get_backend(name).supports) for name in s.options.offload]
    s.mod = partition(s.mod, backends, min_nodes=s.options.offload_min_nodes)
    if s.options.verify:
        verify(s.mod)


def _fuse(s: State) -> None:
    s.groups = fuse(s.mod)


def _plan_memory(s: State) -> None:
    s.plan = plan_memory(s.mod, s.groups)
    check_arena(s.plan, s.options.max_memory, s.mod.name)


def _render(s: State) -> None:
    native = [g for g in s.groups if get_op(g.anchor.op).kind != EXTERNAL]
    s.sources = [render_kernel(g) for g in native]
    names = {id(g): k.name for g, k in zip(native, s.sources, strict=True)}
    params = {p.name for p in s.mod.graph.params}
    s.calls = []
    for g in s.groups:
        call = {"label": g.label, "node": g.anchor.name,
                "shapes": [list(v.type.shape) for v in g.outputs],
                "inputs": [v.name for v in g.inputs], "outputs": [v.name for v in g.outputs],
                "args": [location(v, s.plan, params) for v in [*g.inputs, *g.outputs]]}
        if id(g) in names:
            s.calls.append({"func": names[id(g)], **call})
            continue
        attrs = g.anchor.attrs
        s.externals[attrs["function"]] = {"backend": attrs["backend"],
                                          "graph": json.loads(attrs["graph"])}
        s.calls.append({"external": attrs["function"], **call,
                        "label": f"external:{attrs['backend']}"})
    if s.options.executor == "aot":
        _render_entries(s, sorted(params))


def _render_entries(s: State, params: list[str]) -> None:
    """The aot entry points: one per run of native kernels between external steps (one in
    all, even for no kernels, without externals)."""
    if not s.externals:
        s.entries = [render_entry(s.calls, params)]
        s.aot = [{"entry": s.entries[0].name}]
        return
    run: list[dict[str, Any]] = []
    for call in [*s.calls, None]:
        if call is not None and "func" in call:
            run.append(call)
            continue
        if run:
            s.entries.append(render_entry(run, params))
            s.aot.append({"entry": s.entries[-1].name})
            run = []
        if call is not None:
            s.aot.append({"external": call["external"]})


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
    return {f"{stem}.txt": dump.calls_text(s.calls, s.aot),
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
_SPLIT = [name for name, _ in PASSES].index("fold_constants_again") + 1
STEPS: list[Step] = [
    *(Step(name, _pass(run), _show_ir) for name, run in PASSES[:_SPLIT]),  # IR -> IR
    Step("partition", _partition, _show_ir),  # regions an offload backend takes (byoc.md)
    *(Step(name, _pass(run), _show_ir) for name, run in PASSES[_SPLIT:]),  # IR -> IR
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
