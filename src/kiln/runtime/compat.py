"""Is a library built for this machine? Checked before any native code is loaded."""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Any

from ..errors import CompatibilityError

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


@cache
def host_features() -> frozenset[str]:
    """CPU feature flags of this machine, as Linux names them in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, None where the OS does not report it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def check_compatible(target: Any, elf_machine: str, where: str) -> None:
    """Raise CompatibilityError if the library's code cannot run on this machine."""
    if elf_machine != host_arch():
        raise CompatibilityError(f"{where} holds {elf_machine} code; this machine is "
                                 f"{host_arch()}: build it for this machine's target")
    features = target.get("features", []) if isinstance(target, dict) else []
    missing = sorted(set(features) - host_features())
    if missing and host_features():
        raise CompatibilityError(
            f"{where} was compiled for CPU features this machine lacks: {', '.join(missing)}; "
            "rebuild it here or with a target whose mcpu this machine supports"
        )
