"""Weights apart from the library, in safetensors: the ecosystem's safe, zero-copy format.

Keys are param names; a file holding several models' weights prefixes them "<model>/".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

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
    return params if model is None else model_entries(params, model)


def model_entries(params: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Model `model`'s entries of params: its "<model>/" keys with the prefix removed, or all
    of params when no key has that prefix (a file of one model's weights)."""
    prefix = f"{model}/"
    if any(str(k).startswith(prefix) for k in params):
        return {k[len(prefix):]: v for k, v in params.items() if str(k).startswith(prefix)}
    return dict(params)
