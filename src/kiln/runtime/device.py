"""Devices: where an executor runs, chosen when it is created (not when compiling)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KilnError


@dataclass(frozen=True)
class Device:
    """A device kind and index, e.g. cpu:0."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


def cpu(index: int = 0) -> Device:
    """The host CPU."""
    return Device("cpu", index)


def device(spec: str | Device) -> Device:
    """Parse "cpu", "cpu:0", "cuda:1" into a Device."""
    if isinstance(spec, Device):
        return spec
    kind, _, index = str(spec).partition(":")
    try:
        return Device(kind.strip().lower(), int(index) if index else 0)
    except ValueError:
        raise KilnError(f"bad device '{spec}': expected 'kind' or 'kind:index', e.g. 'cpu:0'") \
            from None
