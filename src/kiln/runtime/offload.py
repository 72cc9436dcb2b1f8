"""The external functions of a loaded library (docs/byoc.md): checked at load, their
engines built once per loaded library and shared by its executors, run as steps.

A model's manifest entry lists its external functions under "externals" (backend name,
JSON graph, optionally a prebuilt engine); a kernel entry {"external": name} is a step of
the model that runs that function on its backend (kiln/runtime/external) instead of a
native kernel.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from blake3 import blake3

from ..errors import BackendError
from .external.base import Backend
from .external.registry import get_backend


def backend_class(name: str, where: str) -> type[Backend]:
    """The backend called name, refused with BackendError when this machine cannot run it."""
    cls = get_backend(name)
    if not cls.available():
        raise BackendError(f"{where} needs the external backend '{name}', which is not "
                           f"installed here: pip install {cls.package}")
    return cls


def check_backends(manifest: dict[str, Any], where: str) -> None:
    """Every backend a library's models offload to is known and installed (at load time)."""
    for model, spec in sorted(manifest["models"].items()):
        for function, ext in sorted(spec.get("externals", {}).items()):
            backend_class(str(ext["backend"]), f"{where}: model '{model}' function '{function}'")


def engine_key(cls: type[Backend], graph: dict[str, Any],
               constants: dict[str, np.ndarray]) -> str:
    """What a prebuilt engine must match to be used: the backend's version and options, and
    a digest of the JSON graph and its constants."""
    h = blake3(json.dumps(graph, sort_keys=True).encode())
    for name in sorted(constants):
        array = np.ascontiguousarray(constants[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return f"{cls.engine_key()}|{h.hexdigest()[:32]}"


def build_engine(cls: type[Backend], graph: dict[str, Any], constants: dict[str, np.ndarray],
                 where: str, prebuilt: tuple[bytes, str] | None = None) -> Backend:
    """An engine of cls for graph: from the prebuilt (engine bytes, key) when its key matches,
    else built (with a warning when a prebuilt one was refused)."""
    engine = cls()
    try:
        if prebuilt is not None:
            data, key = prebuilt
            if key == engine_key(cls, graph, constants) and engine.import_engine(data):
                return engine
            warnings.warn(f"{where}: its prebuilt {cls.name} engine does not match this "
                          "machine's backend or weights; building it again", stacklevel=3)
        engine.init(graph, constants)
    except BackendError:
        raise
    except Exception as e:  # a backend's own failure, named
        raise BackendError(f"{where}: the {cls.name} backend could not build its engine: "
                           f"{type(e).__name__}: {e}") from e
    return engine


class EngineCache:
    """A loaded library's engines, built once (per model, function and weights) and shared by
    every executor of the library; safe to use from several threads."""

    def __init__(self) -> None:
        self._engines: dict[tuple, Backend] = {}
        self._lock = threading.Lock()
        self.builds = 0  # engines built, for tests

    def get(self, key: tuple | None, build: Callable[[], Backend]) -> Backend:
        """The engine cached under key, built by build() the first time; key None: not
        shareable (weights loaded by one executor), built every time."""
        if key is None:
            self.builds += 1
            return build()
        with self._lock:
            if key not in self._engines:
                self._engines[key] = build()
                self.builds += 1
            return self._engines[key]


def external_step(executor: Any, kernel: dict[str, Any]) -> Callable[[], None]:
    """A callable running one external step of executor's model: its engine on views of the
    executor's arena (outputs) and of the arena and weights (inputs)."""
    spec, lib, model = executor.spec, executor.lib, executor.name
    function = str(kernel["external"])
    where = f"{lib.path}: model '{model}' function '{function}'"
    ext = spec.get("externals", {}).get(function)
    if ext is None:
        raise BackendError(f"{where} is not among the model's external functions")
    graph, cls = ext["graph"], backend_class(str(ext["backend"]), where)
    nodes = graph["nodes"]
    entries = [nodes[i] for i in [*graph["inputs"], *graph["constants"]]]
    outs = [nodes[i]["outputs"][k] for i, k in graph["outputs"]]
    args = kernel["args"]
    if len(args) != len(entries) + len(outs):
        raise BackendError(f"{where}: {len(args)} arguments for a graph of {len(entries)} "
                           f"inputs and constants and {len(outs)} outputs")
    views = [executor._view(loc, tuple(t["shape"]), np.dtype(t["dtype"]))
             for loc, t in zip(args, [*entries, *outs], strict=True)]
    inputs = [v.view() for v in views[:len(graph["inputs"])]]
    for v in inputs:
        v.flags.writeable = False
    constants = {str(nodes[i]["name"]): views[len(graph["inputs"]) + j]
                 for j, i in enumerate(graph["constants"])}
    outputs = views[len(entries):]
    engine = lib.engines.get(_cache_key(executor, model, function, graph, args),
                             lambda: build_engine(cls, graph, constants, where,
                                                  _prebuilt(executor, ext)))

    def run() -> None:
        engine.run(inputs, outputs)

    return run


def _cache_key(executor: Any, model: str, function: str, graph: dict[str, Any],
               args: list[dict[str, Any]]) -> tuple | None:
    """The engine's cache key: model, function and the weight regions of its constants; None
    when a constant is a weight this executor loaded itself (load_params)."""
    first = len(graph["inputs"])
    regions = []
    for loc in args[first:first + len(graph["constants"])]:
        spec = executor.param_specs.get(str(loc.get("param")))
        if spec is None or spec.get("weight") is None:
            return None
        regions.append(int(spec["weight"]))
    return (model, function, tuple(regions))


def _prebuilt(executor: Any, ext: dict[str, Any]) -> tuple[bytes, str] | None:
    """The prebuilt engine's (bytes, key) the export stored as a weight region, if any."""
    stored = ext.get("engine")
    if not stored:
        return None
    return bytes(executor.lib.blob.weight(int(stored["weight"]))), str(stored["key"])
