"""The optimization pipeline, as one list of named passes (each Module -> Module)."""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Module, verify
from .dce import eliminate_dead_code
from .fold import fold_constants
from .simplify import fold_batch_norm

PASSES: list[tuple[str, Callable[[Module], Module]]] = [
    ("fold_constants", fold_constants),  # evaluate what depends only on weights
    ("fold_batch_norm", fold_batch_norm),  # BN into conv weights, or a per-channel mul+add
    ("fold_constants_again", fold_constants),  # fold what BN folding made constant
    ("eliminate_dead_code", eliminate_dead_code),  # drop nodes and weights no output needs
]


def optimize(mod: Module, *, check: bool = False) -> Module:
    """Run PASSES on a copy of mod; with check=True the verifier runs after each pass."""
    mod = mod.copy()
    for _name, run in PASSES:
        mod = run(mod)
        if check:
            verify(mod)
    return mod
