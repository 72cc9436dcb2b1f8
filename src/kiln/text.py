"""Small text helpers shared by the CLI and the visualizer."""

from __future__ import annotations


def size_text(n: float) -> str:
    """Bytes for people: 812 B, 1.5 KiB, 23.4 MiB."""
    if n < 1024:
        return f"{int(n)} B"
    n /= 1024
    return f"{n:.1f} KiB" if n < 1024 else f"{n / 1024:.1f} MiB"
