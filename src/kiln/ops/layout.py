"""Weight layouts chosen at compile time: what a packed operand holds and how to undo it.

A matmul's or gemm's constant right-hand matrix B (k x n), or a conv's weight seen as the
matrix W^T (C/group * prod(K) x M), may be stored in column panels:
PANEL columns at a time, each panel k rows of PANEL contiguous floats, the last one padded
with zeros, so the GEMM micro-kernels (kiln/codegen/gemm.py) stream it without gathering.
The layout is the same for every target (the AVX-512, AVX2 and plain-C kernels all read it),
so a library's weights do not depend on the CPU it was built for. The packing pass
(kiln/passes/layout.py) stores B this way and sets the node's `packed_n` attribute to n (a
conv's `packed_weight` to the weight's shape); the ops' type rules and NumPy references read
the packed form through the unpack functions here.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError

PANEL = 32  # columns per panel: the AVX-512 micro-kernel's width (two 16-float vectors)

# float32 products with at least this many multiply-adds run on the GEMM driver; smaller ones
# stay plain C loops. Measured on Zen 5 (graph executor, one thread): the driver is as fast
# at 16^3 and faster above (1.9x at 64^3, 1.2x for a 1 x 2048 x 1000 matrix-vector product).
SGEMM_MIN_WORK = 1 << 12
# Packing pads B to whole panels: a B whose padding would add more than half its size is
# packed at run time instead (the driver does it per call; it is small then).
PACK_MAX_GROWTH = 1.5


def sgemm_worth(dtype: str, m: int, k: int, n: int) -> bool:
    """Whether an m x k x n product of dtype runs on the GEMM driver."""
    return dtype == "float32" and m > 0 and k > 0 and n > 0 and m * k * n >= SGEMM_MIN_WORK


def pack_worth(dtype: str, m: int, k: int, n: int) -> bool:
    """Whether a constant B of an m x k x n product is stored as panels at compile time."""
    padded = panels_shape(k, n)[0] * PANEL
    return sgemm_worth(dtype, m, k, n) and padded <= PACK_MAX_GROWTH * n


def panels_shape(k: int, n: int) -> tuple[int, int, int]:
    """The shape of a k x n matrix stored in column panels."""
    return (-(-n // PANEL), k, PANEL)


def pack_panels(b: np.ndarray) -> np.ndarray:
    """A 2-D (k, n) matrix as column panels (panels, k, PANEL), zero-padded."""
    k, n = b.shape
    padded = np.zeros((k, panels_shape(k, n)[0] * PANEL), dtype=b.dtype)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, -1, PANEL).transpose(1, 0, 2))


def unpack_panels(panels: np.ndarray, n: int) -> np.ndarray:
    """The (k, n) matrix that pack_panels stored as panels."""
    count, k, width = panels.shape
    return panels.transpose(1, 0, 2).reshape(k, count * width)[:, :n]


def unpacked_shape(shape: tuple[int, ...], n: int) -> tuple[int, int]:
    """The (k, n) shape of a matrix stored as panels of `shape`; ShapeError if it cannot be."""
    if len(shape) != 3 or shape[2] != PANEL or n <= 0 or shape[0] != -(-n // PANEL):
        raise ShapeError(f"packed operand of shape {list(shape)} does not hold {n} columns in "
                         f"panels of {PANEL}: expected [{-(-n // PANEL)}, k, {PANEL}]")
    return shape[1], n


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """A conv weight (M, C/group, *K) as column panels of its matrix transposed."""
    return pack_panels(w.reshape(w.shape[0], -1).T)


def unpack_conv_weight(panels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The conv weight of `shape` that pack_conv_weight stored as panels."""
    return np.ascontiguousarray(unpack_panels(panels, shape[0]).T).reshape(shape)


def column_use(n: int) -> float:
    """The share of the columns a micro-kernel computes that n columns use (a 16-column edge
    takes one vector on AVX-512)."""
    edge = n % PANEL
    return n / (n - edge + (0 if edge == 0 else PANEL // 2 if edge <= PANEL // 2 else PANEL))


# A conv with this many output positions or fewer per image may run with its output channels
# along the vectors (the weight packed as panels of W^T): its im2col, K x positions floats,
# then stays in L2.
CONV_PANEL_MAX_POSITIONS = 256


def conv_panels_worth(dtype: str, group: int, out_channels: int, reduction: int,
                      positions: int) -> bool:
    """Whether a conv (per image: out_channels x reduction x positions) runs with its output
    channels along the vectors: when those fill the micro-kernel's columns clearly better
    than its positions do (a 7x7 plane: 49 positions use 77% of 64 columns)."""
    return (group == 1 and positions <= CONV_PANEL_MAX_POSITIONS
            and sgemm_worth(dtype, positions, reduction, out_channels)
            and column_use(out_channels) > column_use(positions) + 0.1)
