"""`kiln project generate`: an MLF archive (docs/mlf.md) -> a standalone C project.

The project holds one model's C sources and the runtime as the archive has them (same
paths), a main.c that runs the model on the archive's self-test vector 0 and checks its
outputs (main_c.py), and a Makefile: for the host's cc, or for a Cortex-M board under QEMU
with its own startup code and linker script (boards.py, templates.py). It builds and runs
with no kiln and no Python. This package reads archives only: it imports nothing of the
compiler.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, FormatError
from .archive import MlfArchive, read_archive, read_vectors
from .boards import Board, get_board
from .main_c import Tensor, render_main
from .templates import LINKER_SCRIPT, MAKEFILE_CORTEX_M, MAKEFILE_HOST, STACK_SIZE, STARTUP_C

TEMPLATES = ("host", "cortex-m")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def pick_model(archive: MlfArchive, model: str | None) -> str:
    """The C identifier of the model to use: the archive's only one, or model (its C
    identifier or its name as built); ExportError listing the archive's models."""
    models = archive.models()
    if model is None:
        if len(models) == 1:
            return next(iter(models))
        raise ExportError(f"{archive.path} holds {len(models)} models "
                          f"({', '.join(sorted(models))}): choose one with model=/--model")
    for ident, entry in models.items():
        if model in (ident, entry.get("name")):
            return ident
    raise ExportError(f"{archive.path} has no model '{model}': it holds "
                      f"{', '.join(sorted(models))}")


def model_files(archive: MlfArchive, ident: str) -> list[str]:
    """The members a project of model ident needs: its header and sources, its kernels, the
    runtime; FormatError naming a missing one."""
    entry = archive.models()[ident]
    files = entry["files"]
    names = [files.get(k) for k in ("header", "source", "params", "entry")]
    names += [f"codegen/host/src/{k}.c" for k in entry.get("kernels", [])]
    runtime = archive.metadata.get("runtime")
    if runtime is None:
        runtime = sorted(n for n in archive.members if n.startswith("runtime/"))
    names += list(runtime)
    for name in names:
        if not isinstance(name, str):
            raise FormatError(f"{archive.path}: metadata.json: model '{ident}' names a file "
                              f"that is not a string ({name!r})")
        archive.member(name)  # present, and a known member (safe to write as is)
    return list(dict.fromkeys(names))


def _tensors(archive: MlfArchive, ident: str, kind: str,
             vectors: dict[str, np.ndarray] | None) -> list[Tensor]:
    """The model's inputs or outputs, with vector 0's values when there are vectors."""
    rows = []
    for k, t in enumerate(archive.models()[ident][kind]):
        where = f"{archive.path}: metadata.json: model '{ident}' {kind}[{k}]"
        c_name = t.get("c_name", "")
        if not isinstance(c_name, str) or not _IDENT.fullmatch(c_name):
            raise FormatError(f"{where}: c_name {c_name!r} is not a C identifier")
        size = math.prod(int(d) for d in t["shape"])
        values = None
        if vectors is not None:
            key = f"input.0.{t['name']}" if kind == "inputs" else f"output.0.{k}"
            values = vectors.get(key)
            if values is None or values.size != size or values.dtype.name != t["dtype"]:
                found = "missing" if values is None else f"{values.dtype}{list(values.shape)}"
                raise FormatError(f"{archive.path}: self-test array '{key}' is {found}, "
                                  f"expected {t['dtype']}{t['shape']}")
        rows.append(Tensor(c_name, t["dtype"], size, values))
    return rows


def render_main_c(archive: MlfArchive, ident: str) -> str:
    """main.c of model ident: vector 0 of its self-test, or zeros without one."""
    entry = archive.models()[ident]
    selftest, member = entry.get("selftest"), entry["files"].get("selftest")
    vectors = read_vectors(archive, member) if selftest and member else None
    tolerance = selftest.get("tolerance") if vectors is not None else None
    if vectors is not None and not (isinstance(tolerance, dict)
                                    and {"rtol", "atol"} <= set(tolerance)):
        raise FormatError(f"{archive.path}: metadata.json: model '{ident}' selftest lacks "
                          "tolerance rtol/atol")
    prefix = entry["prefix"]
    if not _IDENT.fullmatch(str(prefix)):
        raise FormatError(f"{archive.path}: metadata.json: model '{ident}' prefix {prefix!r} "
                          "is not a C identifier")
    return render_main(prefix, Path(entry["files"]["header"]).name,
                       _tensors(archive, ident, "inputs", vectors),
                       _tensors(archive, ident, "outputs", vectors), tolerance)


def _board_files(board: Board) -> dict[str, str]:
    """The startup code and linker script of board."""
    fields = {"board": board.name, "description": board.description,
              "code_origin": board.code_origin, "code_size": board.code_size,
              "ram_origin": board.ram_origin, "ram_size": board.ram_size,
              "stack_size": STACK_SIZE}
    return {"board/startup.c": STARTUP_C.format(**fields),
            f"board/{board.name}.ld": LINKER_SCRIPT.format(**fields)}


def project_files(archive: MlfArchive, ident: str, template: str,
                  board: Board | None) -> dict[str, bytes]:
    """Every file of the project (path under the project -> bytes)."""
    files = {name: archive.member(name) for name in model_files(archive, ident)}
    files["main.c"] = render_main_c(archive, ident).encode()
    if board is not None:
        files.update({k: v.encode() for k, v in _board_files(board).items()})
    sources = " \\\n\t".join(sorted(n for n in files if n.endswith(".c")))
    fields = {"archive": re.sub(r"[^\w.+\-]", "_", Path(archive.path).name),
              "model": ident, "program": ident, "sources": sources}
    if template == "host":
        files["Makefile"] = MAKEFILE_HOST.format(**fields).encode()
    else:
        files["Makefile"] = MAKEFILE_CORTEX_M.format(
            **fields, board=board.name, cpu_flags=" ".join(board.cpu_flags)).encode()
    return files


def _check_out_dir(out: Path) -> None:
    """ExportError unless out is absent or an empty folder."""
    if out.is_dir():
        if any(out.iterdir()):
            raise ExportError(f"{out} exists and is not empty: give a new or empty folder")
    elif out.exists() or out.is_symlink():
        raise ExportError(f"{out} exists and is not a folder")


def _write_tree(files: dict[str, bytes], out: Path) -> None:
    """Write files into a temp folder beside out, then rename it to out (no half project)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in sorted(files.items()):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)  # onto an empty folder, or a new name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate(archive: str | os.PathLike, out_dir: str | os.PathLike, *,
             template: str = "host", board: str | None = None,
             model: str | None = None) -> Path:
    """Write a standalone C project for one model of the MLF archive into out_dir (new or
    empty); returns out_dir. template: "host" (cc) or "cortex-m" (board, default
    mps2-an386, run under qemu-system-arm)."""
    if template not in TEMPLATES:
        raise ExportError(f"unknown template '{template}': known templates are "
                          f"{', '.join(TEMPLATES)}")
    if board is not None and template != "cortex-m":
        raise ExportError(f"board '{board}' given for template '{template}': boards apply "
                          "to the cortex-m template")
    chosen = get_board(board) if template == "cortex-m" else None
    out = Path(out_dir)
    _check_out_dir(out)
    mlf = read_archive(archive)
    ident = pick_model(mlf, model)
    _write_tree(project_files(mlf, ident, template, chosen), out)
    return out


def describe(entry: dict[str, Any]) -> dict[str, int]:
    """The metadata's memory figures of a model entry (bytes)."""
    memory = entry.get("memory", {})
    return {k: int(memory.get(f"{k}_bytes", 0)) for k in ("workspace", "constant", "io")}
