"""Algebraic cleanup: fold inference BatchNormalization into the preceding conv's weights.

A batch_norm that does not follow a conv becomes a per-channel mul + add, which fuses into
whatever produced its input.
"""

from __future__ import annotations

import numpy as np

from ..ir import Module, Node, Value


def _bn_scale_shift(mod: Module, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) with bn(x) = x * scale + shift, if its params are constant."""
    names = [v.name for v in bn.inputs[1:]]
    if not all(n in mod.params for n in names):
        return None
    gamma, beta, mean, var = (mod.params[n].astype(np.float64) for n in names)
    scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _new_param(mod: Module, hint: str, array: np.ndarray) -> Value:
    from ..ir import TensorType

    taken = {v.name for v in mod.graph.values()}
    name, k = hint, 0
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    value = Value(name, TensorType.of(array))
    mod.graph.params.append(value)
    mod.params[name] = np.asarray(array, order="C")
    return value


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
        x = node.inputs[0]
        conv = x.producer
        dtype = x.type.dtype
        if (conv is not None and conv.op == "conv" and len(users.get(x, [])) == 1
                and x not in g.outputs and conv.inputs[1].name in mod.params):
            w = mod.params[conv.inputs[1].name].astype(np.float64)
            bias = (mod.params[conv.inputs[2].name].astype(np.float64)
                    if len(conv.inputs) > 2 and conv.inputs[2].name in mod.params else None)
            if len(conv.inputs) == 2 or bias is not None:
                w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
                b = shift if bias is None else bias * scale + shift
                conv.inputs = [conv.inputs[0],
                               _new_param(mod, f"{conv.inputs[1].name}_bn", w.astype(dtype)),
                               _new_param(mod, f"{node.outputs[0].name}_bias", b.astype(dtype))]
                g.replace_uses(node.outputs[0], x)
                continue
        channel_shape = (-1,) + (1,) * (x.type.rank - 2)
        out = node.outputs[0].name
        s = _new_param(mod, f"{out}_scale", scale.reshape(channel_shape).astype(dtype))
        t = _new_param(mod, f"{out}_shift", shift.reshape(channel_shape).astype(dtype))
        mul = Node("mul", [x, s], [], {}, node.name)
        mid = Value(f"{node.outputs[0].name}_scaled", x.type, mul)
        mul.outputs = [mid]
        node.op, node.inputs, node.attrs = "add", [mid, t], {}
        kept.extend([mul, node])
    g.nodes = kept
    return mod
