"""Atomic file writes and private work folders, leaving nothing behind even when killed.

An atomic write goes to a temp file beside the target, then a rename: a failed or
interrupted write leaves nothing at the target path. The file gets the usual permissions
(0666 less the umask) unless a mode is given, e.g. 0600 for a private key.

Temp files (`.<name>.kiln-<host>-<pid>-<hex>.tmp`) and work folders
(`$TMPDIR/kiln-<uid>/<purpose>.kiln-<host>-<pid>-<hex>`) are removed when their block ends,
whatever happens in it. A process killed meanwhile cannot remove them, so the first atomic
write of a process into a folder (and its first work folder) removes those whose process is
gone: no longer alive on this host, or (a reused pid, another host) untouched for an hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ExportError

STALE_AFTER_S = 3600  # a temp entry untouched this long is abandoned, whatever its pid
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_MARK = r"kiln-(?P<host>[0-9a-f]{8})-(?P<pid>[1-9][0-9]{0,6})-[0-9a-f]{12}"
_TEMP_FILE = re.compile(rf"\..+\.{_MARK}\.tmp")
_WORK_FOLDER = re.compile(rf"\w+\.{_MARK}")
_swept: set[str] = set()  # folders this process has swept already (a sweep lists a folder)


def _mark() -> str:
    """This process's mark on a temp file or folder: host, pid and a random part."""
    return f"kiln-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}"


def _abandoned(entry: os.DirEntry, host: str, pid: int) -> bool:
    """Whether the process that made entry is gone: dead on this host, or (its pid reused,
    or another host's) nothing has touched entry for STALE_AFTER_S."""
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
            return True
    except FileNotFoundError:
        return False
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def _sweep(folder: Path, pattern: re.Pattern[str]) -> None:
    """Remove the entries of folder named by pattern whose process is gone (once a process)."""
    if str(folder) in _swept:
        return
    _swept.add(str(folder))
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not _abandoned(entry, match["host"], int(match["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temp path beside path; rename it onto path if the block succeeds."""
    target = Path(path)
    _sweep(target.parent.absolute(), _TEMP_FILE)
    tmp = target.with_name(f".{target.name}.{_mark()}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o666) -> None:
    """Write data to path atomically."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _work_root() -> Path:
    """$TMPDIR/kiln-<uid>, made private (0700); refused when it is anything else (another
    user's, a link, open to others), since the files linked into a library pass through it."""
    root = Path(tempfile.gettempdir()) / f"kiln-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = root.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ExportError(f"{root} is not a private folder of this user (expected a directory "
                          f"owned by uid {os.getuid()} with mode 0700, found mode "
                          f"{stat.filemode(st.st_mode)}, uid {st.st_uid}): remove it")
    return root


@contextlib.contextmanager
def work_folder(purpose: str) -> Iterator[Path]:
    """Yield a new private folder for a build step's files; removed when the block ends."""
    root = _work_root()
    _sweep(root, _WORK_FOLDER)
    folder = root / f"{purpose}.{_mark()}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
