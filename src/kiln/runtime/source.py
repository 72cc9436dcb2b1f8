"""Reading a library's bytes once: from one open descriptor, or from memory.

Every byte the loader uses comes through one Source: a regular file opened once (FIFOs,
devices and sockets are refused without blocking), a .tar export's lib.so or a .so.zst
unpacked into memory (streamed, capped, checked as it goes), or bytes given by the caller.
"""

from __future__ import annotations

import mmap
import os
import stat
import tarfile
from typing import Any

from ..errors import FormatError
from .compat import physical_memory

CHUNK = 8 << 20  # bytes read, hashed or decompressed at a time
ZSTD_FRAME_HEADER_MAX = 18  # the longest a zstd frame header can be

# (read-only view of the weights region, the object owning its memory)
Weights = tuple[memoryview, Any]


def default_max_size() -> int:
    """The most bytes a load copies into memory: 8 GiB or half this machine's memory."""
    return min(8 << 30, (physical_memory() or 16 << 30) // 2)


class Source:
    """A library's bytes as read from one place: read(offset, size) and its weights."""

    size: int
    where: str

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def weights(self, offset: int, size: int, *, copy: bool) -> Weights:
        """The weights region [offset, offset + size): a private copy, or read in place."""
        raise NotImplementedError


class MemorySource(Source):
    """A library already in memory that nothing else can change (bytes, or ours)."""

    def __init__(self, data: bytes | mmap.mmap, where: str, packed: int | None = None) -> None:
        self.data, self.where, self.size, self.packed = data, where, len(data), packed
        self.view = memoryview(data).toreadonly()

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.view[offset:offset + size])

    def weights(self, offset: int, size: int, *, copy: bool) -> Weights:
        return self.view[offset:offset + size], self.data


class FileSource(Source):
    """A regular file, opened once: every byte used comes through this descriptor."""

    def __init__(self, fd: int, where: str, size: int, max_size: int) -> None:
        self.fd, self.where, self.size, self.max_size, self.packed = fd, where, size, max_size, None

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise FormatError(f"{self.where} changed while it was being loaded (it ends at "
                              f"{offset + len(data)}, expected {offset + size} bytes)")
        return data

    def weights(self, offset: int, size: int, *, copy: bool) -> Weights:
        if size == 0:
            return memoryview(b""), None
        if not copy:  # read in place: a mapping starting at the page holding offset
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(self.fd, offset + size - start, access=mmap.ACCESS_READ,
                               offset=start)
            return memoryview(mapped)[offset - start:].toreadonly(), mapped
        buf = allocate(size, self.max_size, f"{self.where}'s weights", populate=True)
        view = memoryview(buf)
        for at in range(0, size, CHUNK):
            chunk = view[at:at + CHUNK]
            if os.preadv(self.fd, [chunk], offset + at) != len(chunk):
                raise FormatError(f"{self.where} changed while it was being loaded (shorter "
                                  "than its header says)")
        return view.toreadonly(), buf


def allocate(size: int, max_size: int, what: str, *, populate: bool = False) -> mmap.mmap:
    """Anonymous memory for size bytes, refused past max_size with the sizes named.

    populate: fault every page in at once (cheaper than one fault per page as it is first
    written), for memory that will be filled whole; never for data not yet checked.
    """
    if size > max_size:
        raise FormatError(f"{what} would take {size} bytes in memory, over the limit of "
                          f"{max_size} (max_size=; or verify='header' to read weights in place)")
    try:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (mmap.MAP_POPULATE if populate else 0)
        return mmap.mmap(-1, max(size, 1), flags=flags)
    except OSError as e:
        raise FormatError(f"cannot allocate {size} bytes for {what}: {e.strerror}") from None


def _open_regular(path: str) -> tuple[int, int]:
    """(descriptor, size) of a regular file; anything else is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(f"library file not found: {path}") from None
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise FormatError(f"{path} is {kind}, not a kiln library")
    if info.st_size == 0:
        os.close(fd)
        raise FormatError(f"{path} is empty, not a kiln library")
    return fd, info.st_size


def _library_from_tar(fd: int, where: str, size: int, max_size: int) -> mmap.mmap:
    """The linked library inside a .tar export (member lib.so), read into memory."""
    try:
        with os.fdopen(os.dup(fd), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            member = tar.getmember("lib.so")
            if not member.isfile() or member.size > size or member.size == 0:
                raise FormatError(f"{where}: member lib.so is not a plain file of sane size")
            buf = allocate(member.size, max_size, f"{where}'s lib.so")
            if tar.extractfile(member).readinto(buf) != member.size:
                raise FormatError(f"{where}: member lib.so is truncated")
            return buf
    except KeyError:
        raise FormatError(f"{where}: a .tar export must hold lib.so; this one does not") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError(f"{where} is not a readable kiln .tar export: {e}") from None


def _unpack_zst(fd: int, where: str, max_size: int) -> mmap.mmap:
    """Stream a .zst library into memory: one copy at most, refused as soon as the frame
    claims more than max_size, is not an ELF file, or does not hold what it claims."""
    import zstandard

    try:
        params = zstandard.get_frame_parameters(os.pread(fd, ZSTD_FRAME_HEADER_MAX, 0))
    except zstandard.ZstdError as e:
        raise FormatError(f"{where} is not a valid zstd-compressed library: {e}") from None
    claimed = params.content_size
    if claimed in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) or claimed == 0:
        raise FormatError(f"{where}: the zstd frame does not record its content size")
    buf = allocate(claimed, max_size, f"{where} unpacked")
    view, done = memoryview(buf), 0
    try:
        with os.fdopen(os.dup(fd), "rb") as f, \
                zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20) as reader:
            while done < claimed:
                n = reader.readinto(view[done:done + CHUNK])
                if n == 0:
                    break
                if done < 64 <= done + n or n == claimed:  # refuse a bomb at its first bytes
                    _check_elf_start(bytes(view[:64]), claimed, where)
                done += n
            extra = reader.read(1)
    except zstandard.ZstdError as e:
        raise FormatError(f"{where} is not a valid zstd-compressed library: {e}") from None
    if done != claimed or extra:
        raise FormatError(f"{where}: decompressed to {'more than ' if extra else ''}{done} "
                          f"bytes, the frame claims {claimed}")
    return buf


def _check_elf_start(header: bytes, size: int, where: str) -> None:
    """Refuse unpacking early: the first bytes must be an ELF header whose section table
    (which a linker writes last) ends within the claimed size."""
    if len(header) < 64 or header[:4] != b"\x7fELF":
        raise FormatError(f"{where}: the compressed data is not a library (not an ELF file)")
    shoff = int.from_bytes(header[40:48], "little")
    shnum = int.from_bytes(header[60:62], "little")
    if shoff + 64 * shnum > size:
        raise FormatError(f"{where}: its ELF section table ends past the {size} bytes the "
                          "frame claims")


def open_source(source: str | os.PathLike | bytes | bytearray | memoryview,
                 max_size: int, name: str | None) -> Source:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)  # no copy for bytes; a private copy of a mutable buffer
        where = name or "<library in memory>"
        if not data:
            raise FormatError(f"{where} is empty, not a kiln library")
        return MemorySource(data, where)
    where = os.fspath(source)
    fd, size = _open_regular(where)
    try:
        if where.endswith(".tar"):
            return MemorySource(_library_from_tar(fd, where, size, max_size), where)
        if where.endswith(".zst"):
            return MemorySource(_unpack_zst(fd, where, max_size), where, packed=size)
        return FileSource(os.dup(fd), where, size, max_size)
    finally:
        os.close(fd)
