"""`kiln footprint`: the flash and RAM a model takes on a Cortex-M board, measured by
building the generated cortex-m project and sizing its ELF (arm-none-eabi-size).

flash = text + data (code, read-only data and the initial values of data), RAM = data +
bss (the workspace is in bss); the stack and heap are not counted. The model alone is the
model's and the runtime's object files (before the link drops unused sections, so an upper
bound), without main.c (which holds the workspace and the test vectors) or the C library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CompileError
from .archive import read_archive
from .boards import DEFAULT_BOARD
from .generate import describe, generate, pick_model

SIZE = "arm-none-eabi-size"
BUILD_TIMEOUT_S = 600


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CompileError(f"{name} not found on PATH: install the Arm GNU toolchain "
                           "(Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    return path


def _size(paths: list[Path]) -> dict[str, int]:
    """text, data, bss summed over ELF or object files (Berkeley format), flash and RAM."""
    out = subprocess.run([_tool(SIZE), "-B", "-t", *map(str, paths)], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise CompileError(f"{SIZE} failed: {out.stderr.strip()}")
    total = out.stdout.strip().splitlines()[-1].split()
    text, data, bss = (int(v) for v in total[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}


def _build(project: Path) -> None:
    """make all in project; CompileError with the compiler's output when it fails."""
    _tool("arm-none-eabi-gcc")
    out = subprocess.run(["make", "-C", str(project), f"-j{os.cpu_count() or 1}", "all"],
                         capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if out.returncode != 0:
        raise CompileError(f"building the cortex-m project failed:\n{out.stdout[-4000:]}"
                           f"{out.stderr[-4000:]}")


def footprint(archive: str | os.PathLike, *, board: str | None = None,
              model: str | None = None) -> dict[str, Any]:
    """Build model's cortex-m project for board (default mps2-an386) in a temp folder and
    return its sizes in bytes: "program" (the whole ELF) and "model" (the model's and
    runtime's objects), each text/data/bss/flash/ram, and "metadata" (workspace, constant,
    io as the archive states them)."""
    mlf = read_archive(archive)
    ident = pick_model(mlf, model)
    with tempfile.TemporaryDirectory(prefix="kiln-footprint-") as tmp:
        project = generate(archive, Path(tmp) / "project", template="cortex-m", board=board,
                           model=ident)
        _build(project)
        build = project / "build"
        objects = sorted((build / "codegen").rglob("*.o")) + sorted((build / "runtime")
                                                                   .rglob("*.o"))
        result = {"board": board or DEFAULT_BOARD, "model_name": ident,
                  "program": _size([build / ident]), "model": _size(objects),
                  "metadata": describe(mlf.models()[ident])}
    return result


def footprint_text(sizes: dict[str, Any], archive: str) -> str:
    """footprint's result as a small table for people (`kiln footprint`)."""
    keys = ("flash", "ram", "text", "data", "bss")
    rows = [("bytes", "flash", "RAM", "text", "data", "bss")]
    for label, key in (("program (ELF)", "program"), ("model + runtime", "model")):
        rows.append((label, *(str(sizes[key][k]) for k in keys)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(keys) + 1)]
    lines = [f"{archive}: model {sizes['model_name']} on {sizes['board']}"]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w)
                        in enumerate(zip(r, widths, strict=True))) for r in rows]
    meta = sizes["metadata"]
    lines.append(f"metadata: workspace {meta['workspace']}, constants {meta['constant']}, "
                 f"inputs + outputs {meta['io']} bytes")
    lines.append("flash = text + data, RAM = data + bss (stack and heap not counted)")
    return "\n".join(lines)
