"""load_module: open a kiln library, check everything, then map its code and weights.

Order matters: the ELF section table, blob header, manifest, digests and machine
compatibility are all checked on the mapped file BEFORE the dynamic loader sees it, so a
damaged or foreign file is refused with a FormatError instead of crashing the process.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tarfile
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
            from .executor import EXECUTORS

            kind = self.manifest["models"][name].get("executor")
            if kind not in EXECUTORS:
                raise FormatError(f"{self.path}: model '{name}' needs executor {kind!r}, which "
                                  f"this kiln does not have (it has {sorted(EXECUTORS)})")
            return EXECUTORS[kind](self, name, device(dev))

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


def _load_from_memory(data: bytes, where: str, verify: str) -> Library:
    """Load library bytes through an anonymous in-memory file (Linux memfd): no visible file.

    The descriptor is closed once loaded: the mapping and the dynamic loader hold their own.
    """
    if not hasattr(os, "memfd_create"):
        raise FormatError("loading a library from memory needs Linux memfd support")
    fd = os.memfd_create("kiln-library", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:  # one write may be partial for large data
            view = view[os.write(fd, view):]
        return _load(f"/proc/self/fd/{fd}", where, verify)
    finally:
        os.close(fd)


MAX_TAR_MEMBER = 1 << 36


def _library_from_tar(path: str) -> bytes:
    """The linked library inside a .tar export (member lib.so), size-checked."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.getmember("lib.so")
            if not member.isfile() or member.size > min(MAX_TAR_MEMBER, os.path.getsize(path)):
                raise FormatError(f"{path}: member lib.so is not a plain file of sane size")
            return tar.extractfile(member).read()
    except KeyError:
        raise FormatError(f"{path}: a .tar export must hold lib.so; this one does not") from None
    except (tarfile.TarError, OSError) as e:
        raise FormatError(f"{path} is not a readable kiln .tar export: {e}") from None


VERIFY_MODES = ("full", "header")


def load_module(source: str | os.PathLike | bytes | bytearray | memoryview, *,
                verify: str = "full") -> Library:
    """Load a kiln library: a .so path, a .tar export, or the library's bytes (no file made).

    The header, manifest and native code are always checked against their digests before
    the dynamic loader sees the code; verify="full" (default) also hashes the weights,
    verify="header" skips that for the fastest load of large libraries.
    """
    if verify not in VERIFY_MODES:
        raise KilnError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from_memory(bytes(source), "<library in memory>", verify)
    path = os.fspath(source)
    if path.endswith(".tar") and os.path.isfile(path):
        return _load_from_memory(_library_from_tar(path), path, verify)
    return _load(path, path, verify)


def _load(path: str, where: str, verify: str) -> Library:
    mapped = _map_file(path)
    view = memoryview(mapped)
    elf = read_elf(view, where)
    section = elf.sections.get(SECTION)
    if section is None:
        raise FormatError(f"{where} is a shared library but not a kiln library "
                          f"(no {SECTION} section)")
    blob = read_blob(view[section.offset:section.offset + section.size], where,
                     verify_weights=verify == "full")
    if code_digest(view, section.offset, section.size) != blob.code_digest:
        raise FormatError(f"{where}: native code digest mismatch: the file is damaged")
    check_compatible(blob.manifest.get("target"), elf.machine, where)
    try:
        native = ctypes.CDLL(path if path.startswith("/proc/") else str(Path(path).absolute()))
    except OSError as e:
        raise FormatError(f"{where}: the dynamic loader refused the library: {e}") from None
    return Library(where, mapped, blob, native)
