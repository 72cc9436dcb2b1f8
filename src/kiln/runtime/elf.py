"""A minimal ELF64 reader: finds a named section without trusting any size or offset."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError

# e_machine -> architecture name as in target triples.
MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64", 3: "i386"}


@dataclass(frozen=True)
class Section:
    offset: int
    size: int


@dataclass(frozen=True)
class ElfInfo:
    machine: str
    sections: dict[str, Section]


def _u(fmt: str, buf, offset: int, what: str):
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(buf):
        raise FormatError(f"ELF {what} at offset {offset} lies outside the file ({len(buf)} bytes)")
    return struct.unpack_from(fmt, buf, offset)


def read_elf(buf, where: str) -> ElfInfo:
    """Parse the section table of a little-endian ELF64 file held in buf."""
    if len(buf) < 64 or bytes(buf[:4]) != b"\x7fELF":
        raise FormatError(f"{where}: not a kiln library (not an ELF file)")
    if buf[4] != 2 or buf[5] != 1:
        raise FormatError(f"{where}: only 64-bit little-endian ELF libraries are supported")
    (machine,) = _u("<H", buf, 18, "header")
    (shoff,) = _u("<Q", buf, 40, "header")
    shentsize, shnum, shstrndx = _u("<HHH", buf, 58, "header")
    if shentsize != 64 or shnum == 0 or shnum > 65280 or shstrndx >= shnum:
        raise FormatError(f"{where}: damaged ELF section table")
    if shoff + shnum * 64 > len(buf):
        raise FormatError(f"{where}: ELF section table at {shoff} runs past the end of the file "
                          f"({len(buf)} bytes): the file is truncated")
    raw = [_u("<IIQQQQ", buf, shoff + k * 64, "section header") for k in range(shnum)]
    str_off, str_size = raw[shstrndx][4], raw[shstrndx][5]
    if str_off + str_size > len(buf):
        raise FormatError(f"{where}: ELF section names lie outside the file")
    names = bytes(buf[str_off:str_off + str_size])
    sections = {}
    for name_off, sh_type, _flags, _addr, offset, size in raw:
        end = names.find(b"\0", name_off)
        if name_off >= len(names) or end < 0:
            continue
        if sh_type != 8 and offset + size > len(buf):  # 8 = NOBITS: occupies no file bytes
            raise FormatError(f"{where}: an ELF section lies outside the file (truncated?)")
        sections[names[name_off:end].decode("latin-1")] = Section(offset, size)
    return ElfInfo(MACHINES.get(machine, f"machine-{machine}"), sections)
