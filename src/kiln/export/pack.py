"""Packing for shipping: a library as one zstd-compressed file (.so.zst), and the
deterministic tars of the .tar and .mlf.tar exports.

Lossless; the frame records its content size, which the loader checks before
decompressing. kiln.load_module accepts the .so.zst directly.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from ..errors import ExportError, FormatError
from ..runtime.files import atomic_write
from ..runtime.library import inspect_file

LEVEL = 19  # shipping favours size; decompression speed does not depend on the level


def compress(data: bytes, level: int = LEVEL) -> bytes:
    """zstd-compress data into one frame that records its content size."""
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_content_size=True, threads=-1) \
        .compress(data)


def pack(path: str | os.PathLike, out: str | os.PathLike | None = None, *,
         level: int = LEVEL) -> str:
    """Compress the library at path into out (default: path + ".zst"); returns out."""
    src = Path(path)
    dest = Path(out) if out is not None else src.with_name(src.name + ".zst")
    if dest.suffix != ".zst":
        raise ExportError(f"cannot pack to '{dest}': the packed file's name must end in .zst")
    try:
        data = src.read_bytes()
    except OSError as e:
        raise FormatError(f"cannot read {src}: {e.strerror or e}") from None
    inspect_file(data, name=str(src)).release()  # ship what was checked: never a damaged file
    atomic_write(dest, compress(data, level))
    return str(dest)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed POSIX tar of members (path -> bytes), in name order, mode 0644, time 0:
    the same members always give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(members[name]))
    return buf.getvalue()
