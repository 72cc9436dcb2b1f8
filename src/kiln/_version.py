"""kiln's version, read by the runtime (recorded in every artifact) and by packaging."""

__version__ = "0.1.0"
