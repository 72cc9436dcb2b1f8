"""kiln.build: modules in, a factory module (compiled kernels + graph + weights) out.

Each model's weights are bound, then kiln/pipeline.py compiles it (the IR passes, fusion,
memory planning, rendering, compiling); its manifest entry and objects go to a FactoryModule,
exported with export_library.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .codegen.target import resolve_target
from .dump import root_folder
from .errors import CompileError, InputError, LimitError
from .export.factory import CompiledModel, FactoryModule
from .ir import Module, Value
from .pipeline import STEPS, Options, State, location, run_pipeline, verify_between_passes
from .runtime.compat import physical_memory
from .runtime.executor import EXECUTORS
from .runtime.external.registry import get_backend
from .runtime.offload import build_engine, engine_key


def _tensor(name: str, v: Value, s: State, params: set[str]) -> dict[str, Any]:
    return {"name": name, "shape": list(v.type.shape), "dtype": v.type.dtype,
            "loc": location(v, s.plan, params)}


def model_spec(s: State) -> dict[str, Any]:
    """A compiled model's manifest entry (docs/format.md), from the pipeline's final state."""
    g = s.mod.graph
    params = {p.name for p in g.params}
    spec = {
        "executor": s.options.executor,
        "inputs": [_tensor(v.name, v, s, params) for v in g.inputs],
        "outputs": [_tensor(n, v, s, params)
                    for n, v in zip(g.output_names, g.outputs, strict=True)],
        "arena_bytes": s.plan.arena_bytes,
        "memory": {
            "unplanned_bytes": s.plan.unplanned_bytes,
            "buffers": [{"tensor": b.value.name, "offset": b.offset, "size": b.size,
                         "first": b.first, "last": b.last} for b in s.plan.buffers],
        },
        "kernels": s.calls,
        "ir": str(s.mod),
        "source": s.mod.source,
        "build": {"passes": [step.name for step in STEPS]},
    }
    if s.externals:
        spec["externals"] = s.externals
    if s.entries and not s.externals:
        spec["entry"] = s.entries[0].name
    elif s.entries or s.aot:
        spec["aot"] = s.aot
    return spec


def compile_model(mod: Module, options: Options) -> CompiledModel:
    """Compile one bound module: its manifest entry, weights and objects."""
    s = run_pipeline(mod, options)
    weights = {p.name: np.asarray(s.mod.params[p.name], order="C") for p in s.mod.graph.params}
    engines = _prebuild(s, weights) if options.prebuild else {}
    return CompiledModel(s.mod.name, model_spec(s), weights, s.objects,
                         {u.name: u.source for u in s.units}, engines)


def _prebuild(s: State, weights: dict[str, np.ndarray]) -> dict[str, tuple[bytes, str]]:
    """Each external function's engine built now, serialized, with its compatibility key
    ({function: (bytes, key)}), for the backends that can serialize one and are installed
    here (the others build theirs at load; a warning says so)."""
    engines = {}
    for function, ext in sorted(s.externals.items()):
        cls, graph = get_backend(ext["backend"]), ext["graph"]
        where = f"model '{s.mod.name}' function '{function}'"
        if not cls.available():
            warnings.warn(f"{where}: cannot prebuild its {cls.name} engine: the backend is not "
                          f"installed here (pip install {cls.package}); it is built at load",
                          stacklevel=4)
            continue
        constants = {str(graph["nodes"][i]["name"]): weights[str(graph["nodes"][i]["name"])]
                     for i in graph["constants"]}
        data = build_engine(cls, graph, constants, where).export_engine()
        if data is not None:
            engines[function] = (data, engine_key(cls, graph, constants))
    return engines


def _model_params(mods: dict[str, Module], params: dict[str, np.ndarray],
                  model_params: dict[str, dict[str, np.ndarray]],
                  ) -> dict[str, dict[str, np.ndarray]]:
    """Each model's weights: the names it has from params, plus model_params[model]."""
    unknown = sorted(set(model_params) - set(mods))
    if unknown:
        raise InputError(f"model_params names models {unknown} that are not built; the models "
                         f"are {sorted(mods)}")
    names = {name: {p.name for p in m.graph.params} for name, m in mods.items()}
    unused = sorted(set(params).difference(*names.values()))
    if unused:
        known = {name: sorted(own) for name, own in names.items()}
        raise InputError(f"no model has params {unused}; the models' params are {known} "
                         "(weights of one model go in model_params={model: {name: array}})")
    per_model = {}
    for name, own in names.items():
        extra = model_params.get(name, {})
        twice = sorted(own & set(params) & set(extra))
        if twice:
            raise InputError(f"model '{name}': params {twice} are given both in params and in "
                             "model_params; give each once")
        per_model[name] = {**{k: v for k, v in params.items() if k in own}, **extra}
    return per_model


def build(
    mod: Module | dict[str, Module],
    *,
    target: str | dict[str, Any] | None = None,
    params: dict[str, np.ndarray] | None = None,
    model_params: dict[str, dict[str, np.ndarray]] | None = None,
    executor: str = "graph",
    progress: bool | None = None,
    max_memory: int | None = None,
    dump: str | os.PathLike | None = None,
    offload: Sequence[str] = (),
    offload_min_nodes: int = 1,
    prebuild: bool = False,
) -> FactoryModule:
    """Compile a module, or several ({model name: module}), for target into one factory.

    params: weights by name, {name: array}. With several models each takes the names it
    has (a name shared by two models binds both); a name no model has is an InputError.
    model_params: {model name: {name: array}}, weights of one model only (when two models
    have a param of the same name but different values); a name may not be in both.

    executor: "graph" (Python steps through the kernels; can profile them) or "aot" (one
    generated C entry point runs the whole model in a single native call).

    max_memory: the largest arena (peak intermediate memory, in bytes) a model may plan; a
    bigger plan is refused with LimitError. Default: this machine's physical memory.

    dump: a folder to write every compilation step's result into (kiln/dump.py has the
    layout). Default: $KILN_DUMP, else none.

    offload: external backends ("onnxruntime", "openvino", "reference", or one registered by
    a package), in priority order: each region of nodes a backend supports runs on its
    engine (docs/byoc.md); regions under offload_min_nodes nodes stay on kiln's kernels.
    prebuild: build those engines now and store them in the library (where the backend can
    serialize its engine), instead of at load.
    """
    if executor not in EXECUTORS:
        raise CompileError(f"unknown executor {executor!r}; choose one of {list(EXECUTORS)}")
    if max_memory is None:
        max_memory = physical_memory()
    elif isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0:
        raise LimitError(f"max_memory must be a byte count (an int >= 0), got {max_memory!r}")
    for name in offload:
        get_backend(name)  # an unknown name is refused now, listing the known ones
    options = Options(resolve_target(target), executor=executor, max_memory=max_memory,
                      progress=progress, verify=verify_between_passes(),
                      dump=root_folder(dump), offload=tuple(offload),
                      offload_min_nodes=offload_min_nodes, prebuild=prebuild)
    mods = mod if isinstance(mod, dict) else {"default": mod}
    weights = _model_params(mods, params or {}, model_params or {})
    compiled = {name: compile_model(replace(m, name=name).bind(weights[name]), options)
                for name, m in mods.items()}
    return FactoryModule(compiled, options.target)
