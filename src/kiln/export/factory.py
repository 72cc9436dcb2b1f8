"""FactoryModule: what kiln.build returns; exports one native library holding everything."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..codegen.target import Target
from ..codegen.toolchain import cache_dir, link_shared_library
from ..errors import ExportError
from ..runtime.blob import CODE_DIGEST_OFFSET, code_digest, write_blob
from ..runtime.elf import read_elf
from ..runtime.library import SECTION, Library, load_module


@dataclass
class CompiledModel:
    """One compiled model: its manifest entry, its weights and its kernels' object code."""

    name: str
    spec: dict[str, Any]
    weights: dict[str, np.ndarray]
    objects: dict[str, bytes]


class FactoryModule:
    """Compiled models for one target, ready to export or to run directly."""

    def __init__(self, models: dict[str, CompiledModel], target: Target) -> None:
        self.compiled = models
        self.target = target
        self._loaded: Library | None = None

    @property
    def models(self) -> list[str]:
        return sorted(self.compiled)

    def ir(self, name: str = "default") -> str:
        """The optimized IR text of a model: what was compiled."""
        return self.compiled[name].spec["ir"]

    def _blob(self) -> bytes:
        arrays: list[np.ndarray] = []
        index: dict[bytes, int] = {}
        models = {}
        for name, m in sorted(self.compiled.items()):
            params = []
            for pname, array in sorted(m.weights.items()):
                key = hashlib.blake2b(array.tobytes(), digest_size=32).digest()
                if key not in index:  # byte-identical weights are stored once
                    index[key] = len(arrays)
                    arrays.append(array)
                params.append({"name": pname, "shape": list(array.shape),
                               "dtype": array.dtype.name, "weight": index[key]})
            models[name] = dict(m.spec, params=params)
        manifest = {"kiln_version": __version__, "target": self.target.describe(),
                    "models": models}
        return write_blob(manifest, arrays)

    def _objects(self) -> dict[str, bytes]:
        objects: dict[str, bytes] = {}
        for m in self.compiled.values():
            objects.update(m.objects)
        return objects

    def export_library(self, path: str | os.PathLike) -> str:
        """Write the library to path (suffix .so); atomic: no partial file on failure."""
        out = Path(path)
        if out.suffix != ".so":
            raise ExportError(f"cannot export to '{out}': unknown suffix '{out.suffix}'; "
                              "use .so (a native shared library)")
        if not out.parent.is_dir():
            raise ExportError(f"cannot export to '{out}': folder {out.parent} does not exist")
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            link_shared_library(self._objects(), self._blob(), self.target, tmp)
            _seal(tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return str(out)

    def _library(self) -> Library:
        """This factory exported to the cache and loaded (to run without exporting by hand)."""
        if self._loaded is None:
            blob = self._blob()
            h = hashlib.sha256(blob)
            for name, obj in sorted(self._objects().items()):
                h.update(name.encode() + obj)
            path = cache_dir() / "lib" / f"{h.hexdigest()[:32]}.so"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                self.export_library(path)
            self._loaded = load_module(path)
        return self._loaded

    def __getitem__(self, name: str):
        """The factory of model `name`; call it with a device to create an executor."""
        return self._library()[name]


def _seal(path: Path) -> None:
    """Record the digest of the linked code in the blob header, in place."""
    with open(path, "r+b") as f:
        data = f.read()
        section = read_elf(memoryview(data), str(path)).sections[SECTION]
        f.seek(section.offset + CODE_DIGEST_OFFSET)
        f.write(code_digest(data, section.offset, section.size))
