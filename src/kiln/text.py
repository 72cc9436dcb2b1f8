"""Small text helpers shared by the CLI and the visualizer."""

from __future__ import annotations


def size_text(n: float) -> str:
    """Bytes for people: 812 B, 1.5 KiB, 23.4 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
