"""load_module: open a kiln library, check everything, then map its code and weights.

Order matters: the ELF section table, blob header, manifest, digests and machine
compatibility are all checked on the mapped file BEFORE the dynamic loader sees it, so a
damaged or foreign file is refused with a FormatError instead of crashing the process.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Any

from ..errors import FormatError, KilnError
from .blob import Blob, code_digest, read_blob
from .compat import check_compatible
from .device import Device, device
from .elf import read_elf

SECTION = ".kiln"


class Library:
    """A loaded kiln library: its manifest, weights (mapped in place) and native kernels."""

    def __init__(self, path: str, mapped: mmap.mmap, blob: Blob, native: ctypes.CDLL) -> None:
        self.path = path
        self._mapped = mapped
        self.blob = blob
        self.native = native

    @property
    def manifest(self) -> dict[str, Any]:
        return self.blob.manifest

    @property
    def models(self) -> list[str]:
        """Names of the models this library holds."""
        return sorted(self.manifest["models"])

    def __getitem__(self, name: str):
        """The factory of model `name`: call it with a device to create an executor."""
        if name not in self.manifest["models"]:
            raise KilnError(f"no model named '{name}' in {self.path}; it holds {self.models}")

        def create(dev: Device | str) -> Any:
            from .executor import GraphExecutor

            return GraphExecutor(self, name, device(dev))

        return create

    def __repr__(self) -> str:
        return f"<kiln.Library {self.path} models={self.models}>"


def _map_file(path: str) -> mmap.mmap:
    try:
        if os.path.isdir(path):
            raise FormatError(f"{path} is a directory, not a kiln library")
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise FormatError(f"{path} is empty, not a kiln library")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise FormatError(f"library file not found: {path}") from None
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e}") from None


def load_module(path: str | os.PathLike) -> Library:
    """Load a kiln library (.so) exported by `export_library`."""
    path = os.fspath(path)
    mapped = _map_file(path)
    view = memoryview(mapped)
    elf = read_elf(view, path)
    section = elf.sections.get(SECTION)
    if section is None:
        raise FormatError(f"{path} is a shared library but not a kiln library "
                          f"(no {SECTION} section)")
    blob = read_blob(view[section.offset:section.offset + section.size], path)
    if code_digest(view, section.offset, section.size) != blob.code_digest:
        raise FormatError(f"{path}: native code digest mismatch: the file is damaged")
    check_compatible(blob.manifest.get("target"), elf.machine, path)
    try:
        native = ctypes.CDLL(str(Path(path).absolute()))
    except OSError as e:
        raise FormatError(f"{path}: the dynamic loader refused the library: {e}") from None
    return Library(path, mapped, blob, native)
