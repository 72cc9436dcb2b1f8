"""The contract every external engine implements (docs/byoc.md, "Writing a backend").

A backend is offered IR nodes one at a time (`supports`, a class method: no engine is built
to answer it), then, at load time, builds its engine once from a JSON graph and the
library's weights (`init`) and runs it as a step of the model (`run`). Engines that can
serialize what they built implement the optional `export_engine` / `import_engine` pair so
that `prebuild=True` libraries skip the build at load.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from types import ModuleType

import numpy as np

from ...errors import BackendError


class Backend(ABC):
    """An external execution engine for parts of a kiln model.

    Subclasses set `name` (what `offload=[...]` and the manifest call it) and `package`
    (what to pip install when it is missing), and implement `supports`, `init` and `run`.
    One instance holds one built engine; kiln shares it between executors, so `run` must
    allow concurrent calls.
    """

    name: str = ""
    package: str = ""

    @classmethod
    def available(cls) -> bool:
        """Whether the engine is importable here. True by default: a backend that needs an
        optional package overrides this, without importing the package if it can."""
        return True

    @classmethod
    @abstractmethod
    def supports(cls, node: dict) -> bool:
        """Whether this backend can run `node`, a node description (docs/byoc.md): the IR op,
        its attributes with defaults filled in, its inputs' and outputs' shapes and dtypes."""

    @abstractmethod
    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        """Build the engine for `graph` (format kiln-external), whose constants are the
        arrays of `constants` by name. Called once, before any `run`."""

    @abstractmethod
    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """Compute the graph's outputs from `inputs` (read-only, in the graph's input order)
        into `outputs` (preallocated C-contiguous arrays, in the graph's output order)."""

    def export_engine(self) -> bytes | None:
        """The built engine as bytes that `import_engine` accepts, or None when this backend
        cannot serialize its engine (the default): kiln then builds it at every load."""
        return None

    def import_engine(self, data: bytes) -> bool:
        """Take the engine from `data` (what `export_engine` returned, under the same
        `engine_key`) instead of building it in `init`; False when that is not possible (the
        default), and kiln calls `init` instead."""
        return False

    @classmethod
    def engine_key(cls) -> str:
        """What an exported engine depends on besides the graph and its constants: the
        engine's version and options. Empty by default (nothing is ever exported)."""
        return ""


def engine_module(module: str, backend: type[Backend]) -> ModuleType:
    """The engine's Python module, imported on first use (listing backends imports no
    engine); BackendError saying what to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"backend '{backend.name}' needs the package {module} (pip install "
                           f"{backend.package}): {e}") from e
