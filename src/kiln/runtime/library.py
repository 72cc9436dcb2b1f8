"""load_module: open a kiln library, check everything, then map its code and weights.

Order matters: the ELF section table, blob header, signature (when keys are given),
digests, format version, architecture and CPU features are all checked on the mapped file
BEFORE the dynamic loader sees it, so a damaged, tampered or foreign file is refused with a
kiln error instead of running its code or crashing the process.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError, KilnError, VerificationError
from .blob import Blob, code_digest, read_blob
from .compat import check_compatible
from .device import Device, device
from .elf import read_elf

SECTION = ".kiln"
VERIFY_MODES = ("full", "header")
MAX_TAR_MEMBER = 1 << 36
MAX_UNPACKED = 1 << 36


class Library:
    """A loaded kiln library: its manifest, weights (mapped in place) and native kernels."""

    def __init__(self, path: str, checked: CheckedFile, native: ctypes.CDLL) -> None:
        self.path = path
        self._mapped = checked.mapped
        self.blob = checked.blob
        self.signer_id = checked.signer_id
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

    def selftest(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Run the test vectors embedded at export; see kiln.runtime.selftest."""
        from .selftest import run_selftest

        return run_selftest(self, **kwargs)

    def __repr__(self) -> str:
        return f"<kiln.Library {self.path} models={self.models}>"


@dataclass
class CheckedFile:
    """A library file mapped and fully checked, its native code not yet loaded."""

    path: str  # what the dynamic loader opens
    mapped: mmap.mmap
    blob: Blob
    machine: str
    signer_id: str | None  # the trusted key that signed it, when keys were given
    file_size: int
    packed_size: int | None = None  # size of the .zst it came from
    fd: int | None = None  # the memfd holding an unpacked or in-memory library

    def release(self) -> None:
        """Close the memfd, if any (the mapping and a loaded library keep their own refs)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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


def _check(path: str, where: str, verify: str, trusted_keys: list | None,
           compat: bool = True) -> CheckedFile:
    if verify not in VERIFY_MODES:
        raise KilnError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    mapped = _map_file(path)
    view = memoryview(mapped)
    elf = read_elf(view, where)
    section = elf.sections.get(SECTION)
    if section is None:
        raise FormatError(f"{where} is a shared library but not a kiln library "
                          f"(no {SECTION} section)")
    region = view[section.offset:section.offset + section.size]
    blob = read_blob(region, where, verify_weights=False)
    signer_id = None
    if trusted_keys is not None:
        from .signing import check_signature

        signer_id = check_signature(blob.header, blob.signer, blob.signature, trusted_keys, where)
    elif verify == "full" and blob.signed:  # integrity only: the key is the file's own
        from .signing import check_signature

        try:
            check_signature(blob.header, blob.signer, blob.signature, [blob.signer], where)
        except VerificationError:
            raise FormatError(f"{where}: the embedded signature does not match the header: "
                              "the file is damaged or was altered after signing") from None
    if code_digest(view, section.offset, section.size) != blob.code_digest:
        raise FormatError(f"{where}: native code digest mismatch: the file is damaged")
    if verify == "full" or trusted_keys is not None:
        blob.verify_weights(where)
    if compat:
        check_compatible(blob.manifest.get("target"), elf.machine, where)
    return CheckedFile(path, mapped, blob, elf.machine, signer_id, len(mapped))


def _memfd(data: bytes) -> int:
    """An anonymous in-memory file (Linux memfd) holding data; returns its descriptor."""
    if not hasattr(os, "memfd_create"):
        raise FormatError("loading a library from memory needs Linux memfd support")
    fd = os.memfd_create("kiln-library", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:  # one write may be partial for large data
        view = view[os.write(fd, view):]
    return fd


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


def _unpack_zst(path: str) -> bytes:
    """Decompress a .zst library, refusing frames that claim or grow past a sane size."""
    import zstandard

    try:
        with open(path, "rb") as f:
            packed = f.read()
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e}") from None
    try:
        params = zstandard.get_frame_parameters(packed)
        if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) \
                or params.content_size > MAX_UNPACKED:
            raise FormatError(f"{path}: zstd frame has no sane content size")
        data = zstandard.ZstdDecompressor().decompress(packed, max_output_size=MAX_UNPACKED)
    except zstandard.ZstdError as e:
        raise FormatError(f"{path} is not a valid zstd-compressed library: {e}") from None
    if len(data) != params.content_size:
        raise FormatError(f"{path}: decompressed to {len(data)} bytes, frame claims "
                          f"{params.content_size}")
    return data


def _source_bytes(path: str) -> tuple[bytes | None, int | None]:
    """(library bytes, packed size) for sources that are not a plain .so file."""
    if path.endswith(".tar") and os.path.isfile(path):
        return _library_from_tar(path), None
    if path.endswith(".zst") and os.path.isfile(path):
        return _unpack_zst(path), os.path.getsize(path)
    return None, None


def inspect_file(source: str | os.PathLike | bytes, *, verify: str = "full",
                 trusted_keys: Iterable[Any] | None = None, compat: bool = True) -> CheckedFile:
    """Map and check a library (any accepted form) without loading its native code.

    compat=False skips the machine check, to inspect a library built for another machine.
    """
    keys = list(trusted_keys) if trusted_keys is not None else None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where, packed = bytes(source), "<library in memory>", None
    else:
        where = os.fspath(source)
        data, packed = _source_bytes(where)
    if data is None:
        return _check(where, where, verify, keys, compat)
    fd = _memfd(data)
    try:
        checked = _check(f"/proc/self/fd/{fd}", where, verify, keys, compat)
    except BaseException:
        os.close(fd)
        raise
    checked.packed_size, checked.fd = packed, fd
    return checked


def load_module(source: str | os.PathLike | bytes | bytearray | memoryview, *,
                verify: str = "full", trusted_keys: Iterable[Any] | None = None) -> Library:
    """Load a kiln library: a .so path, a .tar or .so.zst export, or the library's bytes.

    Everything is checked before the dynamic loader sees the code. verify="full" (default)
    hashes the weights too; verify="header" skips that for the fastest load. trusted_keys
    (Ed25519 public keys or PEM paths) demands a valid signature by one of them and always
    checks everything.
    """
    checked = inspect_file(source, verify=verify, trusted_keys=trusted_keys)
    where = "<library in memory>" if isinstance(source, (bytes, bytearray, memoryview)) \
        else os.fspath(source)
    try:
        target = checked.path if checked.fd is not None else str(Path(checked.path).absolute())
        native = ctypes.CDLL(target)
    except OSError as e:
        raise FormatError(f"{where}: the dynamic loader refused the library: {e}") from None
    finally:
        checked.release()
    return Library(where, checked, native)
