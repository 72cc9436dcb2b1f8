"""Compression for shipping: a library as one zstd-compressed file (.so.zst).

Lossless; the frame records its content size, which the loader checks before
decompressing. kiln.load_module accepts the .so.zst directly.
"""

from __future__ import annotations

import os
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
