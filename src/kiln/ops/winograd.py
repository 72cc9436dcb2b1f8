"""Winograd F(4x4, 3x3): a 3x3 conv (stride 1, no dilation, one group) with 2.25 multiplies
per output and input channel instead of 9.

Each 4x4 output tile of a channel is A^T [sum over c of (G g_c G^T) * (B^T d_c B)] A, with
d_c the tile's 6x6 input window in channel c and g_c the 3x3 weight (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", interpolation points 0, +-1, +-2, inf). Per
transform point xi of the 6x6, the sum over c is a product (tiles x C) (C x M): 36 GEMMs
of a quarter of the direct conv's multiply-adds (kernels/winograd.py). The weight transform
G g G^T is done once, here, at compile time; the packing pass (kiln/passes/layout.py) stores
it in the GEMM's column panels: shape (36, panels of M, C, PANEL), xi = 6 * row + column.

Accuracy: the transforms' coefficients (up to 8 in A, 5 in B, 1/24 in G) cost a few
float32 roundings more than the direct sum; on ResNet-style nets the outputs stay within
1e-4 of the direct conv's relative to the outputs' scale (tests/ops/test_winograd.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .layout import pack_panels, panels_shape, unpack_panels

TILE = 4  # outputs per tile side
ALPHA = TILE + 2  # the transform's size: a tile's input window is ALPHA x ALPHA
POINTS = ALPHA * ALPHA

# input transform B^T, weight transform G, output transform A^T
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)

# A conv takes Winograd with at least this many tiles in all (images x tiles per image): the
# GEMMs' rows, one micro-kernel strip on AVX-512. With fewer, the transformed weight (4x the
# direct one) is read for too little work when it comes from memory: ResNet-50's 7x7x512
# layers (4 tiles, 38 MB transformed) took 1.4 ms against 1.2 direct. A small transformed
# weight stays in cache (a small model's whole set does): it takes Winograd on few tiles
# too, unless the tiles cover much more than the plane (a 2x2 plane: 16 outputs for 4).
# Measured on Zen 5, one thread: 64x4x4 0.010 ms against 0.018 direct, 128x7x7 0.037 against
# 0.090, 128x2x2 0.028 against 0.010.
MIN_TILES = 12
CACHED_WEIGHT_BYTES = 5 << 19  # 2.5 MiB: a 128 x 128 channel weight, transformed
MAX_WASTE = 2.0  # outputs computed per output kept, on few tiles
MIN_CHANNELS = 8  # input and output channels: below, the transforms cost more than they save


def tiles(size: int) -> int:
    """Tiles along a dim of `size` outputs."""
    return -(-size // TILE)


def winograd_worth(dtype: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                   out_shape: tuple[int, ...], attrs: dict) -> bool:
    """Whether a conv with these shapes and attrs runs as Winograd F(4x4, 3x3)."""
    if dtype != "float32" or len(w_shape) != 4 or tuple(w_shape[2:]) != (3, 3):
        return False
    if attrs["group"] != 1 or any(s != 1 for s in attrs["strides"]) \
            or any(d != 1 for d in attrs["dilations"]):
        return False
    if min(w_shape[0], w_shape[1]) < MIN_CHANNELS:
        return False
    per_image = tiles(out_shape[2]) * tiles(out_shape[3])
    if x_shape[0] * per_image >= MIN_TILES:
        return True
    waste = per_image * TILE * TILE / (out_shape[2] * out_shape[3])
    return waste <= MAX_WASTE and POINTS * w_shape[0] * w_shape[1] * 4 <= CACHED_WEIGHT_BYTES


def transform_weight(w: np.ndarray) -> np.ndarray:
    """A (M, C, 3, 3) weight as G w G^T per (m, c), in column panels per transform point:
    (36, panels of M, C, PANEL) float32 (computed in float64)."""
    u = np.einsum("ai,mcij,bj->abcm", G, w.astype(np.float64), G)  # (6, 6, C, M)
    return np.stack([pack_panels(u[a, b].astype(np.float32))
                     for a in range(ALPHA) for b in range(ALPHA)])


def weight_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape transform_weight gives a weight of `shape`."""
    return (POINTS, *panels_shape(shape[1], shape[0]))


def untransform_weight(u: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The (M, C, 3, 3) weight of `shape` that transform_weight stored (G has a left inverse:
    g = G+ u G+^T, exact up to rounding)."""
    if tuple(u.shape) != weight_shape(shape):
        raise ShapeError(f"Winograd weight of shape {list(u.shape)} does not hold a weight of "
                         f"shape {list(shape)}: expected {list(weight_shape(shape))}")
    m = shape[0]
    mats = np.stack([unpack_panels(u[p], m) for p in range(POINTS)])  # (36, C, M)
    mats = mats.astype(np.float64).reshape(ALPHA, ALPHA, shape[1], m)
    inverse = np.linalg.pinv(G)
    w = np.einsum("ia,abcm,jb->mcij", inverse, mats, inverse)
    return w.astype(u.dtype)

