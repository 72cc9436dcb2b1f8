"""The boards `kiln project generate --template cortex-m` knows: QEMU's MPS2 machines.

Each board is a CPU (its gcc flags) and two memories: code memory (vector table, code,
read-only data: the weights) and RAM (data, bss: the workspace, heap, stack). QEMU loads
the ELF directly, so nothing is copied from flash to RAM at reset (load = run address).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ExportError


@dataclass(frozen=True)
class Board:
    """A QEMU machine (`-M name`) and what a program for it is compiled and linked for."""

    name: str
    description: str
    cpu_flags: tuple[str, ...]  # -mcpu and the float ABI; -mthumb is always added
    fpu: bool  # the startup code enables the FPU (CPACR) before newlib's _start
    code_origin: int
    code_size: int
    ram_origin: int
    ram_size: int


MIB = 1 << 20

BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("mps2-an386", "Cortex-M4 with FPU (single precision), 4 MiB SSRAM code, 4 MiB RAM",
          ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"), True,
          0x00000000, 4 * MIB, 0x20000000, 4 * MIB),
    Board("mps2-an385", "Cortex-M3, soft float, 4 MiB SSRAM code, 4 MiB RAM",
          ("-mcpu=cortex-m3", "-mfloat-abi=soft"), False,
          0x00000000, 4 * MIB, 0x20000000, 4 * MIB),
    Board("mps2-an500", "Cortex-M7 with FPU (double precision), 4 MiB SSRAM code, 4 MiB RAM",
          ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"), True,
          0x00000000, 4 * MIB, 0x20000000, 4 * MIB),
    # Cortex-M33 with TrustZone: it boots secure, so code and RAM are linked at the secure
    # aliases of SSRAM1 (0x10000000) and SSRAM2/3 (0x38000000).
    Board("mps2-an505", "Cortex-M33 with FPU (secure state), 4 MiB SSRAM code, 4 MiB RAM",
          ("-mcpu=cortex-m33", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"), True,
          0x10000000, 4 * MIB, 0x38000000, 4 * MIB),
)}

DEFAULT_BOARD = "mps2-an386"


def get_board(name: str | None) -> Board:
    """The board called name (None: the default); ExportError listing the known ones."""
    key = DEFAULT_BOARD if name is None else name
    if key not in BOARDS:
        raise ExportError(f"unknown board '{name}': known boards are {', '.join(BOARDS)}")
    return BOARDS[key]
