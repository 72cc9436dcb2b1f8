"""load_module: read a kiln library once, check what was read, load exactly that.

The library's bytes are read from ONE open descriptor (or taken from memory) into a sealed
in-memory image: an anonymous file (memfd) that nobody can write, grow or shrink. The ELF
section table, blob header, signature, digests, format version, architecture and CPU
features are all checked on that image, and the dynamic loader maps the image, never the
path: replacing, rewriting or truncating the file afterwards cannot change what runs.
The weights are kept out of the image (it only ever holds code and tables) and are held
apart: a private copy, hashed as it is read, when they are verified (verify="full",
trusted_keys); for verify="header", a read-only mapping of the file, guarded so that a
truncated file is reported as an error instead of killing the process (SIGBUS).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, KilnError, VerificationError
from .blob import (
    HEADER_SIZE,
    SECTION,
    SIGNATURE_OFFSET,
    SIGNATURE_SIZE,
    SIGNER_OFFSET,
    Blob,
    code_digest,
    read_blob,
    signed_message,
    weights_span,
)
from .compat import check_compatible
from .device import Device, device
from .elf import Reader, read_elf_at
from .executor import EXECUTORS
from .files import atomic_write
from .offload import EngineCache, check_backends
from .selftest import run_selftest
from .signing import KeyLike, check_signature, fingerprint, load_private_key, raw_public
from .source import CHUNK, FileSource, Source, default_max_size, open_source

VERIFY_MODES = ("full", "header")


GUARD_SLOTS = 64  # KILN_GUARD_SLOTS of the support unit (codegen/prelude.py)

# Native code loaded in this process, by code digest (which covers every byte of a library
# outside its blob). A library whose code was loaded before shares it: the bytes are the
# ones checked. Each entry keeps its image's descriptor open for the life of the process:
# the dynamic loader never unloads code loaded through ctypes and knows it by the name it
# was opened under (/proc/self/fd/N); were N closed and reused, a later load under that
# name would get this library's code.
_LOADED: dict[bytes, ctypes.CDLL] = {}
_LOADING = threading.Lock()


class Library:
    """A loaded kiln library: its manifest, weights and native kernels."""

    def __init__(self, path: str, checked: CheckedFile, native: ctypes.CDLL) -> None:
        self.path = path
        self.checked = checked
        self.blob = checked.blob
        self.signer_id = checked.signer_id
        self.native = native
        # Weights mapped from a file can vanish if it is truncated: see _guard_weights.
        self._guard = _guard_weights(checked, native)
        # External engines (docs/byoc.md), built once and shared by this library's executors.
        self.engines = EngineCache()

    @property
    def manifest(self) -> dict[str, Any]:
        return self.blob.manifest

    @property
    def models(self) -> list[str]:
        """Names of the models this library holds."""
        return sorted(self.manifest["models"])

    def check_weights(self) -> None:
        """Raise FormatError if the file the weights are read from was truncated under us."""
        if self._guard is not None and self._guard[0][self._guard[1]]:
            raise FormatError(f"{self.path} was truncated while loaded: weights past its new "
                              "end read as zeros, so results are wrong. It was loaded with "
                              "verify='header', which reads weights in place; reload it (the "
                              "default verify='full' keeps a private, checked copy)")

    def __getitem__(self, name: str):
        """The factory of model `name`: call it with a device to create an executor."""
        if name not in self.manifest["models"]:
            raise KilnError(f"no model named '{name}' in {self.path}; it holds {self.models}")

        def create(dev: Device | str) -> Any:
            kind = self.manifest["models"][name].get("executor")
            if kind not in EXECUTORS:
                raise FormatError(f"{self.path}: model '{name}' needs executor {kind!r}, which "
                                  f"this kiln does not have (it has {sorted(EXECUTORS)})")
            return EXECUTORS[kind](self, name, device(dev))

        return create

    def selftest(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Run the test vectors embedded at export; see kiln.runtime.selftest."""
        return run_selftest(self, **kwargs)

    def __repr__(self) -> str:
        return f"<kiln.Library {self.path} models={self.models}>"


@dataclass
class CheckedFile:
    """A library read once and fully checked, its native code not yet loaded."""

    where: str  # the path, or "<library in memory>", for messages
    image_fd: int | None  # the sealed memfd holding the code and tables
    blob: Blob
    machine: str
    signer_id: str | None  # the trusted key that signed it, when keys were given
    file_size: int
    blob_offset: int = 0  # where the blob starts in the library file
    packed_size: int | None = None  # size of the .zst it came from
    weights_in_place: bool = False  # weights are a mapping of the file (verify="header")
    weights_owner: Any = None  # the buffer or mapping blob.weights points into

    def release(self) -> None:
        """Close the image's descriptor (for a library that is inspected, not loaded)."""
        if self.image_fd is not None:
            os.close(self.image_fd)
            self.image_fd = None


# -- the sealed image ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Where the blob and its weights lie in the library file."""

    blob_offset: int
    blob_size: int
    weights_offset: int  # absolute, in the file
    weights_size: int


def _locate(read: Reader, size: int, where: str) -> tuple[str, _Layout]:
    """The machine a library is for, and where its blob and weights lie."""
    elf = read_elf_at(read, size, where)
    section = elf.sections.get(SECTION)
    if section is None:
        raise FormatError(f"{where} is a shared library but not a kiln library "
                          f"(no {SECTION} section)")
    span = weights_span(read(section.offset, HEADER_SIZE)) \
        if section.size >= HEADER_SIZE else None
    w_off, w_size = span if span and span[0] + span[1] <= section.size else (section.size, 0)
    return elf.machine, _Layout(section.offset, section.size, section.offset + w_off, w_size)


def _seal_image(source: Source, layout: _Layout) -> int:
    """A memfd holding the library's bytes with the weights region left as a hole, then
    sealed: from here on nobody, this process included, can change or truncate it."""
    fd = os.memfd_create("kiln-library", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, source.size)
        end = layout.weights_offset + layout.weights_size
        for start, stop in ((0, layout.weights_offset), (end, source.size)):
            for at in range(start, stop, CHUNK):
                data = memoryview(source.read(at, min(CHUNK, stop - at)))
                while data:
                    written = os.pwrite(fd, data, at)
                    data, at = data[written:], at + written
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_image(fd: int, size: int, layout: _Layout, weights: memoryview,
                 where: str, full: bool,
                 trusted_keys: list | None, compat: bool) -> tuple[Blob, str, str | None]:
    """Check everything on the sealed image (and the weights held apart); nothing runs."""
    view = memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_READ))  # unmapped when collected
    machine, found = _locate(lambda offset, n: bytes(view[offset:offset + n]), size, where)
    if found != layout:  # the weights were taken from where the file said before
        raise FormatError(f"{where} changed while it was being loaded")
    start, end = layout.blob_offset, layout.blob_offset + layout.blob_size
    blob = read_blob(view[start:end], where, verify_weights=False, weights=weights)
    signer_id = None
    if trusted_keys is not None:
        signer_id = check_signature(blob.header, blob.signer, blob.signature, trusted_keys,
                                    where)
    elif full and blob.signed:  # integrity only: the key is the file's own
        try:
            check_signature(blob.header, blob.signer, blob.signature, [blob.signer], where)
        except VerificationError:
            raise FormatError(f"{where}: the embedded signature does not match the header: "
                              "the file is damaged or was altered after signing") from None
    if code_digest(view, layout.blob_offset, layout.blob_size) != blob.code_digest:
        raise FormatError(f"{where}: native code digest mismatch: the file is damaged")
    if full:
        blob.verify_weights(where)
    if compat:
        check_compatible(blob.manifest.get("target"), machine, where)
    return blob, machine, signer_id


def inspect_file(source: str | os.PathLike | bytes | bytearray | memoryview, *,
                 verify: str = "full", trusted_keys: Iterable[Any] | None = None,
                 compat: bool = True, max_size: int | None = None,
                 name: str | None = None) -> CheckedFile:
    """Read a library (any accepted form) once and check it, without loading its code.

    compat=False skips the machine check, to inspect a library built for another machine.
    max_size caps the bytes a load copies into memory (default_max_size()). name: what
    messages call a library given as bytes.
    """
    if verify not in VERIFY_MODES:
        raise KilnError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    keys = list(trusted_keys) if trusted_keys is not None else None
    full = verify == "full" or keys is not None
    limit = default_max_size() if max_size is None else max_size
    source_ = open_source(source, limit, name)
    try:
        _, layout = _locate(source_.read, source_.size, source_.where)
        weights, owner = source_.weights(layout.weights_offset, layout.weights_size,
                                                  copy=full)
        fd = _seal_image(source_, layout)
        try:
            blob, machine, signer_id = _check_image(fd, source_.size, layout, weights,
                                                    source_.where, full, keys, compat)
        except BaseException:
            os.close(fd)
            raise
    finally:
        if isinstance(source_, FileSource):
            os.close(source_.fd)
    return CheckedFile(source_.where, fd, blob, machine, signer_id, source_.size,
                       layout.blob_offset, source_.packed,
                       isinstance(source_, FileSource) and not full, owner)


def _guard_weights(checked: CheckedFile, native: ctypes.CDLL) -> tuple[Any, int] | None:
    """Guard weights mapped from a file against its truncation (the library's support unit
    turns the SIGBUS into a flag); returns (the flags, this mapping's slot), or None when
    nothing needs guarding."""
    if not checked.weights_in_place or not checked.blob.weights:
        return None
    guard = getattr(native, "kiln_guard_weights", None)
    if guard is None:  # built by an older kiln, without the guard: copy the weights instead
        checked.blob.weights = memoryview(bytes(checked.blob.weights))
        return None
    mapped = checked.weights_owner
    start = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    slot = guard(ctypes.c_void_p(start), ctypes.c_size_t(len(mapped)))
    if slot < 0:
        raise FormatError(f"{checked.where}: cannot guard its weights against truncation "
                          f"({GUARD_SLOTS} libraries with this code are loaded with "
                          "verify='header'); load it with verify='full'")
    weakref.finalize(mapped, native.kiln_guard_release, slot)
    return (ctypes.c_int * GUARD_SLOTS).in_dll(native, "kiln_guard_lost"), slot


def load_module(source: str | os.PathLike | bytes | bytearray | memoryview, *,
                verify: str = "full", trusted_keys: Iterable[Any] | None = None,
                max_size: int | None = None) -> Library:
    """Load a kiln library: a .so path, a .tar or .so.zst export, or the library's bytes.

    Everything is checked before the dynamic loader sees the code, and what it loads is the
    checked copy. verify="full" (default) hashes the weights into a private copy;
    verify="header" skips that for the fastest load and reads weights in place from the
    file. trusted_keys (Ed25519 public keys or PEM paths) demands a valid signature by one
    of them and always checks everything. max_size caps the bytes copied into memory.
    """
    checked = inspect_file(source, verify=verify, trusted_keys=trusted_keys, max_size=max_size)
    try:
        check_backends(checked.blob.manifest, checked.where)  # before any code is loaded
    except KilnError:
        checked.release()
        raise
    with _LOADING:
        native = _LOADED.get(checked.blob.code_digest)
        if native is not None:
            checked.release()
        else:
            try:
                native = ctypes.CDLL(f"/proc/self/fd/{checked.image_fd}")
            except OSError as e:
                checked.release()
                raise FormatError(f"{checked.where}: the dynamic loader refused the library: "
                                  f"{e}") from None
            _LOADED[checked.blob.code_digest] = native
    return Library(checked.where, checked, native)


def sign(path: str | os.PathLike, key: KeyLike) -> str:
    """Sign a library in place (atomically); returns the signer's key fingerprint. What is
    signed is the bytes that were read and checked."""
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from None
    private = load_private_key(key)
    checked = inspect_file(bytes(data), compat=False, name=os.fspath(path))
    checked.release()
    base, public = checked.blob_offset, raw_public(private.public_key())
    data[base + SIGNER_OFFSET:base + SIGNER_OFFSET + 32] = public
    signature = private.sign(signed_message(bytes(data[base:base + HEADER_SIZE])))
    data[base + SIGNATURE_OFFSET:base + SIGNATURE_OFFSET + SIGNATURE_SIZE] = signature
    atomic_write(path, bytes(data))
    return fingerprint(public)


def verify(path: str | os.PathLike, trusted_keys: Iterable[KeyLike] | KeyLike) -> str:
    """Check a library's signature and every digest without loading its code; returns key id."""
    if not isinstance(trusted_keys, (list, tuple, set)):
        trusted_keys = [trusted_keys]
    checked = inspect_file(path, trusted_keys=trusted_keys)
    checked.release()
    return checked.signer_id
