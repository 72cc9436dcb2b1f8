"""Backends by name: kiln's built-ins, and those other packages register.

A package adds a backend through the entry-point group `kiln.backends`
(`[project.entry-points."kiln.backends"] mybackend = "mypkg.kiln_backend:MyBackend"`).
Nothing is imported until a backend is asked for by name, so listing the names costs no
engine import. A built-in name cannot be taken over by an entry point.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable

from ...errors import BackendError
from .base import Backend

ENTRY_POINT_GROUP = "kiln.backends"

# name -> "module:class" of the backends kiln ships.
BUILTIN = {
    "reference": "kiln.runtime.external.reference:ReferenceBackend",
    "onnxruntime": "kiln.runtime.external.onnxruntime:OnnxRuntimeBackend",
    "openvino": "kiln.runtime.external.openvino:OpenVinoBackend",
}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' backends by name (built-in names left out)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in BUILTIN}


def backend_names() -> list[str]:
    """Every backend name known here: the built-ins, then the installed ones, sorted."""
    return sorted(BUILTIN) + sorted(_entry_points())


def _load(name: str, target: str, load: Callable[[], object]) -> type[Backend]:
    """The class `load()` returns for backend name (found at target), checked."""
    try:
        cls = load()
    except Exception as e:  # an installed package failing to import: say which
        raise BackendError(f"backend {name!r} ({target}) failed to load: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r} ({target}) is {cls!r}, not a subclass of "
                           f"kiln.runtime.external.Backend")
    return cls


def _import_builtin(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under name; BackendError listing the known names if
    there is none. The class is returned even if its engine is not installed here (see
    `Backend.available`)."""
    if name in BUILTIN:
        return _load(name, BUILTIN[name], lambda: _import_builtin(BUILTIN[name]))
    entry_points = _entry_points()
    if name in entry_points:
        ep = entry_points[name]
        return _load(name, f"entry point {ep.value}", ep.load)
    raise BackendError(f"unknown backend {name!r}; known backends: {backend_names()} (others "
                       f"register through the entry-point group {ENTRY_POINT_GROUP!r})")
