"""Layout passes: store constant weights the way their kernels read fastest.

pack_gemm_weights stores the constant right-hand matrix of a float32 matmul or gemm that runs
on the GEMM driver in column panels (kiln/ops/layout.py), so its micro-kernel streams B
without packing it at run time; the node's `packed_n` records the layout. pack_conv_weights
does the same for the weights of convs over few positions, which then run with their output
channels along the vectors (`packed_weight`). transform_winograd_weights stores the weights
of 3x3 convs that run as Winograd F(4x4, 3x3) transformed (`winograd_weight`,
kiln/ops/winograd.py). A packed array is an ordinary param (hashed,
de-duplicated and exported like any weight).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Module, Node
from ..ops import winograd
from ..ops.layout import conv_panels_worth, pack_conv_weight, pack_panels, pack_worth
from .simplify import new_param


def _packable(mod: Module, node: Node) -> np.ndarray | None:
    """node's constant 2-D B, if node is a float32 product worth the GEMM driver."""
    if node.op not in ("matmul", "gemm") or node.attrs["packed_n"]:
        return None
    if node.op == "gemm" and node.attrs["trans_b"]:
        return None  # pretranspose_gemm_weights runs first; a run-time B^T stays as it is
    b = mod.params.get(node.inputs[1].name)
    a = node.inputs[0].type
    if b is None or b.ndim != 2 or a.rank < 2:
        return None
    k, n = b.shape
    m = math.prod(a.shape[:-1]) if node.op == "matmul" else a.shape[1 - node.attrs["trans_a"]]
    return b if pack_worth(a.dtype, m, k, n) else None


def pack_gemm_weights(mod: Module) -> Module:
    """Store each constant B of a float32 matmul/gemm worth the GEMM driver as column panels
    (unless padding would make it much bigger: ops/layout.py's pack_worth)."""
    for node in mod.graph.nodes:
        b = _packable(mod, node)
        if b is None:
            continue
        hint = f"{node.name or node.inputs[1].name}_panels"
        node.inputs[1] = new_param(mod, hint, pack_panels(b))
        node.attrs["packed_n"] = b.shape[1]
    return mod


def pack_conv_weights(mod: Module) -> Module:
    """Store the constant weight of each float32 conv that conv_panels_worth as column panels
    of W^T, its output channels then going along the GEMM's vectors."""
    for node in mod.graph.nodes:
        if node.op != "conv" or node.attrs["packed_weight"] or node.attrs["winograd_weight"]:
            continue
        w = mod.params.get(node.inputs[1].name)
        out = node.outputs[0].type
        if w is None or not conv_panels_worth(out.dtype, node.attrs["group"], w.shape[0],
                                              math.prod(w.shape[1:]), math.prod(out.shape[2:])):
            continue
        hint = f"{node.name or node.inputs[1].name}_panels"
        node.inputs[1] = new_param(mod, hint, pack_conv_weight(w))
        node.attrs["packed_weight"] = tuple(w.shape)
    return mod


def transform_winograd_weights(mod: Module) -> Module:
    """Store the constant weight of each conv that winograd_worth transformed (G w G^T per
    channel pair, in the GEMM's column panels): the conv then runs as Winograd F(4x4, 3x3)."""
    for node in mod.graph.nodes:
        if node.op != "conv" or node.attrs["packed_weight"] or node.attrs["winograd_weight"]:
            continue
        w = mod.params.get(node.inputs[1].name)
        x, out = node.inputs[0].type, node.outputs[0].type
        if w is None or not winograd.winograd_worth(out.dtype, x.shape, w.shape, out.shape,
                                                    node.attrs):
            continue
        hint = f"{node.name or node.inputs[1].name}_winograd"
        node.inputs[1] = new_param(mod, hint, winograd.transform_weight(w))
        node.attrs["winograd_weight"] = tuple(w.shape)
    return mod
