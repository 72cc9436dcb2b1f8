"""Reading a Model Library Format archive (docs/mlf.md) safely, for the project generator.

Only regular-file members under the known layout are read; a member that could write
outside a folder when extracted (absolute path, `..`, a link, a device) or that is larger
than the limits refuses the whole archive. Members under other names are skipped: the
format adds members without changing its version. Nothing is extracted: the members are
read into memory and the generator writes what it needs under names it chose.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from safetensors.numpy import load

from ..errors import FormatError

FORMAT = "kiln-mlf"
VERSIONS = (1,)  # the metadata versions this reader knows
MAX_MEMBER_BYTES = 1 << 30  # one member (a big model's weights as C text)
MAX_TOTAL_BYTES = 4 << 30  # all the members read

# The layout's members: folder -> the file suffix they carry.
LAYOUT = {
    "codegen/host/include": ".h", "codegen/host/src": ".c", "runtime/include": ".h",
    "runtime/src": ".c", "parameters": ".safetensors", "src": ".ir",
    "selftest": ".safetensors",
}
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass
class MlfArchive:
    """An archive's metadata and its known members (path in the archive -> bytes)."""

    path: str
    metadata: dict[str, Any]
    members: dict[str, bytes]

    def member(self, name: str) -> bytes:
        """The bytes of member name; FormatError naming it when the archive lacks it."""
        if name not in self.members:
            raise FormatError(f"{self.path}: member '{name}' is missing")
        return self.members[name]

    def models(self) -> dict[str, dict[str, Any]]:
        """metadata.json's models (C identifier -> entry)."""
        return self.metadata["models"]


def _known(name: str) -> bool:
    """Whether name is a member of the layout (metadata.json or a file in a known folder)."""
    if name == "metadata.json":
        return True
    folder, _, base = name.rpartition("/")
    suffix = LAYOUT.get(folder)
    return suffix is not None and base.endswith(suffix) and bool(_FILE_NAME.fullmatch(base))


def _check_member(info: tarfile.TarInfo, path: str) -> None:
    """Refuse a member that is unsafe to read or extract, whatever its name."""
    name = info.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or not parts:
        raise FormatError(f"{path}: member '{name}' has an unsafe path (absolute or with "
                          "'..'); an MLF archive holds only relative paths")
    if not (info.isfile() or info.isdir()):
        kind = "link" if info.issym() or info.islnk() else "special file"
        raise FormatError(f"{path}: member '{name}' is a {kind}; an MLF archive holds only "
                          "regular files")
    if info.size > MAX_MEMBER_BYTES:
        raise FormatError(f"{path}: member '{name}' is {info.size} bytes, over the "
                          f"{MAX_MEMBER_BYTES}-byte limit of one member")


def _read_members(tar: tarfile.TarFile, path: str) -> dict[str, bytes]:
    """The known members' bytes, every member checked first."""
    members: dict[str, bytes] = {}
    total = 0
    for info in tar:
        _check_member(info, path)
        name = info.name.removeprefix("./")
        if info.isdir() or not _known(name):
            continue
        if name in members:
            raise FormatError(f"{path}: member '{name}' appears twice")
        total += info.size
        if total > MAX_TOTAL_BYTES:
            raise FormatError(f"{path}: members add up to more than {MAX_TOTAL_BYTES} bytes")
        data = tar.extractfile(info).read()
        if len(data) != info.size:
            raise FormatError(f"{path}: member '{name}' is truncated")
        members[name] = data
    return members


def _check_metadata(metadata: Any, path: str) -> None:
    """FormatError unless metadata.json is a version this reader knows, with models."""
    where = f"{path}: metadata.json"
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise FormatError(f"{where}: format is {found!r}, expected '{FORMAT}'")
    version = metadata.get("version")
    if version not in VERSIONS:
        raise FormatError(f"{where}: MLF version {version!r} is not supported (this kiln "
                          f"reads version {', '.join(map(str, VERSIONS))})")
    models = metadata.get("models")
    if not isinstance(models, dict) or not models:
        raise FormatError(f"{where}: 'models' must be a non-empty object")
    for name, entry in models.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not isinstance(entry, dict):
            raise FormatError(f"{where}: model '{name}' is not a C identifier with an object")
        for key in ("prefix", "inputs", "outputs", "memory", "files"):
            if key not in entry:
                raise FormatError(f"{where}: model '{name}' lacks '{key}'")


def read_archive(path: str | os.PathLike) -> MlfArchive:
    """The archive at path, its members checked and its metadata's version known."""
    path = os.fspath(path)
    try:
        with tarfile.open(path, "r:") as tar:
            members = _read_members(tar, path)
    except tarfile.TarError as e:
        raise FormatError(f"{path}: not an uncompressed tar archive ({e})") from e
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    if "metadata.json" not in members:
        raise FormatError(f"{path}: no metadata.json: not a Model Library Format archive")
    try:
        metadata = json.loads(members["metadata.json"])
    except ValueError as e:
        raise FormatError(f"{path}: metadata.json is not JSON ({e})") from e
    _check_metadata(metadata, path)
    return MlfArchive(path, metadata, members)


def read_vectors(archive: MlfArchive, member: str) -> dict[str, np.ndarray]:
    """The arrays of a safetensors member (the self-test vectors)."""
    try:
        return load(archive.member(member))
    except FormatError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(f"{archive.path}: {member} is not a safetensors file ({e})") from e


__all__ = ["MlfArchive", "read_archive", "read_vectors"]
