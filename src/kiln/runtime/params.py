"""Weights apart from the library, in safetensors: the ecosystem's safe, zero-copy format.

Keys are param names; a file holding several models' weights prefixes them "<model>/".
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FormatError
from .files import atomic_path


def save_params(params: dict[str, np.ndarray], path: str | os.PathLike) -> str:
    """Write params to a .safetensors file atomically; returns the path."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(tmp))
    return os.fspath(path)


def load_params(path: str | os.PathLike, *, model: str | None = None) -> dict[str, np.ndarray]:
    """Read a .safetensors file; with model, keep its "<model>/" entries (prefix removed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        params = load_file(os.fspath(path))
    except FileNotFoundError:
        raise FormatError(f"params file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path} is not a readable safetensors file: {e}") from None
    if model is not None and any(k.startswith(f"{model}/") for k in params):
        prefix = f"{model}/"
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    return params
