"""Tensor types of the IR: a static shape and a NumPy dtype name."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

# The largest byte size of a tensor: sizes are int64 in NumPy and in the generated C.
MAX_TENSOR_BYTES = 2**63 - 1

# The dtypes kiln compiles, mapped to their short printed names.
DTYPE_SHORT = {
    "float32": "f32",
    "float64": "f64",
    "float16": "f16",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "uint16": "u16",
    "uint32": "u32",
    "uint64": "u64",
    "bool": "bool",
}


def check_dtype(dtype: str | np.dtype) -> str:
    """Return the canonical dtype name, or raise ShapeError for one kiln does not support."""
    name = np.dtype(dtype).name
    if name not in DTYPE_SHORT:
        raise ShapeError(f"dtype {name} is not supported; supported: {sorted(DTYPE_SHORT)}")
    return name


@dataclass(frozen=True)
class TensorType:
    """The static type of a tensor: its shape (all dims known) and dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        if any(d < 0 for d in self.shape):
            raise ShapeError(f"negative dimension in shape {self.shape}")
        if self.nbytes > MAX_TENSOR_BYTES:
            raise ShapeError(f"shape {self.shape} of {self.dtype} is {self.nbytes} bytes, over "
                             f"the int64 limit of {MAX_TENSOR_BYTES}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # exact: np.prod would wrap around past int64

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        return cls(array.shape, array.dtype.name)

    def __str__(self) -> str:
        return f"{DTYPE_SHORT[self.dtype]}[{','.join(map(str, self.shape))}]"
