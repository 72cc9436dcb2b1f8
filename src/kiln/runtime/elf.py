"""A minimal ELF64 reader: finds a named section without trusting any size or offset."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatError

# e_machine -> architecture name as in target triples.
MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64", 3: "i386"}

# read(offset, size) -> exactly those bytes of the file (the caller bounds-checks nothing).
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Section:
    offset: int
    size: int


@dataclass(frozen=True)
class ElfInfo:
    machine: str
    sections: dict[str, Section]


def read_elf(buf, where: str) -> ElfInfo:
    """Parse the section table of a little-endian ELF64 file held in buf."""
    return read_elf_at(lambda offset, size: bytes(buf[offset:offset + size]), len(buf), where)


def read_elf_at(read: Reader, file_size: int, where: str) -> ElfInfo:
    """Parse the section table of a little-endian ELF64 file of file_size bytes via read."""
    header = read(0, 64) if file_size >= 64 else b""
    if header[:4] != b"\x7fELF":
        raise FormatError(f"{where}: not a kiln library (not an ELF file)")
    if header[4] != 2 or header[5] != 1:
        raise FormatError(f"{where}: only 64-bit little-endian ELF libraries are supported")
    (machine,) = struct.unpack_from("<H", header, 18)
    (shoff,) = struct.unpack_from("<Q", header, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 58)
    if shentsize != 64 or shnum == 0 or shnum > 65280 or shstrndx >= shnum:
        raise FormatError(f"{where}: damaged ELF section table")
    if shoff + shnum * 64 > file_size:
        raise FormatError(f"{where}: ELF section table at {shoff} runs past the end of the file "
                          f"({file_size} bytes): the file is truncated")
    table = struct.unpack(f"<{shnum * 8}Q", read(shoff, shnum * 64))  # 8 quads per entry
    raw = [(table[8 * k] & 0xFFFFFFFF, table[8 * k] >> 32, *table[8 * k + 1:8 * k + 5])
           for k in range(shnum)]
    str_off, str_size = raw[shstrndx][4], raw[shstrndx][5]
    if str_off + str_size > file_size:
        raise FormatError(f"{where}: ELF section names lie outside the file")
    names = read(str_off, str_size)
    sections = {}
    for name_off, sh_type, _flags, _addr, offset, size in raw:
        end = names.find(b"\0", name_off)
        if name_off >= len(names) or end < 0:
            continue
        if sh_type != 8 and offset + size > file_size:  # 8 = NOBITS: occupies no file bytes
            raise FormatError(f"{where}: an ELF section lies outside the file (truncated?)")
        sections[names[name_off:end].decode("latin-1")] = Section(offset, size)
    return ElfInfo(MACHINES.get(machine, f"machine-{machine}"), sections)
