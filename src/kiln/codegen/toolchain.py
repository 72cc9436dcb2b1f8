"""The toolchain: C source -> object files (cached by content hash) -> one shared library.

The object cache lives in $KILN_CACHE_DIR (default ~/.cache/kiln); its key covers the
source, the compiler's identity, every flag and what the flags resolve to on this machine
(the compiler's predefined macros: -march=native means another CPU on another host), so a
cached object is always the object the compiler would produce now, even in a shared cache.
Sources go to the compiler on stdin and objects straight into the cache (an atomic write);
linking works in a private work folder (kiln.runtime.files), so nothing is left behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import CompileError
from ..runtime.files import atomic_path, work_folder
from .render import KernelSource
from .target import Target


def cache_dir() -> Path:
    root = Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln")
    root.mkdir(parents=True, exist_ok=True)
    return root


def object_key(kernel: KernelSource, target: Target) -> str:
    """The object cache key of kernel on target: everything that decides the object's bytes."""
    parts = [kernel.source, target.cc, target.compiler_id, target.macros_digest, *target.cflags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _compile_one(kernel: KernelSource, target: Target) -> bytes:
    cached = cache_dir() / "obj" / f"{object_key(kernel, target)}.o"
    if cached.exists():
        return cached.read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as obj:
        cmd = [target.cc, *target.cflags, "-c", "-x", "c", "-", "-o", str(obj)]
        done = subprocess.run(cmd, input=kernel.source, capture_output=True, text=True)
        if done.returncode != 0:
            raise CompileError(f"compiling kernel {kernel.name} failed ({' '.join(cmd)}):\n"
                               f"{done.stderr.strip()[:4000]}")
        data = obj.read_bytes()
    return data


def compile_kernels(kernels: Sequence[KernelSource], target: Target,
                    *, progress: bool | None = None) -> dict[str, bytes]:
    """Compile each distinct kernel to an object file (in parallel); name -> object bytes."""
    unique = {k.name: k for k in kernels}
    show = sys.stderr.isatty() if progress is None else progress
    workers = max(1, min(len(unique), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(_compile_one, k, target) for name, k in unique.items()}
        if show and len(unique) > 4:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"compiling {len(unique)} kernels", total=len(unique))
                for future in futures.values():
                    future.result()
                    bar.advance(task)
        return {name: f.result() for name, f in futures.items()}


def blob_asm(blob_path: Path) -> str:
    """Assembler stub placing the blob file in the non-loaded section .kiln."""
    path = str(blob_path).replace("\\", "\\\\").replace('"', '\\"')
    return (f'.section .kiln,"",%progbits\n.balign 64\n.incbin "{path}"\n'
            '.section .note.GNU-stack,"",%progbits\n')


def link_command(target: Target, objects: Sequence[str]) -> list[str]:
    """The command that links objects/<name>.o and blob.s (beside blob.bin) into lib.so, run
    in the folder holding them: what export runs, and what a .tar export records."""
    return [target.cc, *target.cflags, "-shared", "-o", "lib.so",
            *(f"objects/{name}.o" for name in sorted(objects)), "blob.s", "-lm",
            "-Wl,-z,noexecstack"]


def link_shared_library(objects: dict[str, bytes], blob: bytes, target: Target) -> bytes:
    """The shared library linked from the kernel objects and the blob (as the non-loaded
    section .kiln), as bytes."""
    with work_folder("link") as work:
        (work / "objects").mkdir()
        for name, obj in objects.items():
            (work / "objects" / f"{name}.o").write_bytes(obj)
        (work / "blob.bin").write_bytes(blob)
        (work / "blob.s").write_text(blob_asm(Path("blob.bin")))
        cmd = link_command(target, list(objects))
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise CompileError(f"linking the library failed ({' '.join(cmd)}):\n"
                               f"{done.stderr.strip()[:4000]}")
        return (work / "lib.so").read_bytes()
