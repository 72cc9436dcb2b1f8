"""Algebraic cleanup with constant weights: fold inference BatchNormalization into the preceding
conv's weights, and store a gemm's constant B the way its kernel reads fastest.

A batch_norm that does not follow a conv becomes a per-channel mul + add, which fuses into
whatever produced its input. The BatchNorm math itself is ops/norm.py's.
"""

from __future__ import annotations

import numpy as np

from ..ir import Module, Node, TensorType, Value, unique_name
from ..ops.norm import batch_norm_scale_shift


def new_param(mod: Module, hint: str, array: np.ndarray) -> Value:
    """A new bound param holding array, named after hint."""
    name = unique_name(hint, {v.name for v in mod.graph.values()})
    value = Value(name, TensorType.of(array))
    mod.graph.params.append(value)
    mod.params[name] = np.asarray(array, order="C")
    return value


def _bn_scale_shift(mod: Module, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) with bn(x) = x * scale + shift, if its params are constant."""
    names = [v.name for v in bn.inputs[1:]]
    if not all(n in mod.params for n in names):
        return None
    gamma, beta, mean, var = (mod.params[n] for n in names)
    return batch_norm_scale_shift(gamma, beta, mean, var, bn.attrs["epsilon"])


def _fold_into_conv(mod: Module, bn: Node, scale: np.ndarray, shift: np.ndarray,
                    users: dict[Value, list[Node]]) -> bool:
    """Scale the weights (and bias) of the conv bn alone reads, dropping bn; False if bn does
    not follow such a conv with constant weights."""
    g = mod.graph
    x = bn.inputs[0]
    conv = x.producer
    if (conv is None or conv.op != "conv" or len(users.get(x, [])) != 1
            or x in g.outputs or conv.inputs[1].name not in mod.params):
        return False
    bias = (mod.params[conv.inputs[2].name].astype(np.float64)
            if len(conv.inputs) > 2 and conv.inputs[2].name in mod.params else None)
    if len(conv.inputs) > 2 and bias is None:
        return False
    dtype = x.type.dtype
    w = mod.params[conv.inputs[1].name].astype(np.float64)
    w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b = shift if bias is None else bias * scale + shift
    conv.inputs = [conv.inputs[0],
                   new_param(mod, f"{conv.inputs[1].name}_bn", w.astype(dtype)),
                   new_param(mod, f"{bn.outputs[0].name}_bias", b.astype(dtype))]
    g.replace_uses(bn.outputs[0], x)
    return True


def fold_batch_norm(mod: Module) -> Module:
    """Fold batch_norm into a conv it follows, or lower it to mul + add."""
    g = mod.graph
    users = g.consumers()
    kept = []
    for node in g.nodes:
        ss = _bn_scale_shift(mod, node) if node.op == "batch_norm" else None
        if ss is None:
            kept.append(node)
            continue
        scale, shift = ss
        if _fold_into_conv(mod, node, scale, shift, users):
            continue
        x, dtype = node.inputs[0], node.inputs[0].type.dtype
        channel_shape = (-1,) + (1,) * (x.type.rank - 2)
        out = node.outputs[0].name
        s = new_param(mod, f"{out}_scale", scale.reshape(channel_shape).astype(dtype))
        t = new_param(mod, f"{out}_shift", shift.reshape(channel_shape).astype(dtype))
        mul = Node("mul", [x, s], [], {}, node.name)
        mid = Value(f"{node.outputs[0].name}_scaled", x.type, mul)
        mul.outputs = [mid]
        node.op, node.inputs, node.attrs = "add", [mid, t], {}
        kept.extend([mul, node])
    g.nodes = kept
    return mod


def pretranspose_gemm_weights(mod: Module) -> Module:
    """Store a gemm's constant 2-D B transposed when the node reads B^T, so that the kernel
    reads rows of B fastest: a layout choice, made once here rather than by the frontend."""
    for node in mod.graph.nodes:
        if node.op != "gemm" or not node.attrs["trans_b"]:
            continue
        b = node.inputs[1]
        weight = mod.params.get(b.name)
        if weight is None or weight.ndim != 2:
            continue
        node.inputs[1] = new_param(mod, f"{node.name or b.name}_weight_t", weight.T)
        node.attrs["trans_b"] = False
    return mod
