"""Devices: where an executor runs and with how many threads, chosen when it is created.

Nothing about the device is baked into a library: the same library runs on any core count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import KilnError


@dataclass(frozen=True)
class Device:
    """A device kind and index (e.g. cpu:0), and for the CPU the thread count to use."""

    kind: str
    index: int = 0
    num_threads: int | None = None  # None: $KILN_NUM_THREADS, else all cores

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"

    def threads(self) -> int:
        """The thread count an executor on this device uses."""
        if self.num_threads is not None:
            return self.num_threads
        env = os.environ.get("KILN_NUM_THREADS", "").strip()
        if not env:
            return max(1, len(os.sched_getaffinity(0)))
        if not env.isdigit() or int(env) < 1:
            raise KilnError(f"KILN_NUM_THREADS={env!r} is not a positive integer")
        return int(env)


def cpu(index: int = 0, *, num_threads: int | None = None) -> Device:
    """The host CPU; num_threads overrides $KILN_NUM_THREADS (default: all cores)."""
    if num_threads is not None and num_threads < 1:
        raise KilnError(f"num_threads must be at least 1, got {num_threads}")
    return Device("cpu", index, num_threads)


def device(spec: str | Device, *, num_threads: int | None = None) -> Device:
    """Parse "cpu", "cpu:0", "cuda:1" into a Device."""
    if isinstance(spec, Device):
        if num_threads is None or spec.kind != "cpu":
            return spec
        return cpu(spec.index, num_threads=num_threads)
    kind, _, index = str(spec).partition(":")
    try:
        dev = Device(kind.strip().lower(), int(index) if index else 0)
    except ValueError:
        raise KilnError(f"bad device '{spec}': expected 'kind' or 'kind:index', e.g. 'cpu:0'") \
            from None
    return cpu(dev.index, num_threads=num_threads) if dev.kind == "cpu" else dev
