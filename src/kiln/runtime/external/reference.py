"""The reference backend: a kiln-external graph evaluated node by node with NumPy.

This is the worked example for backend authors (docs/byoc.md, "Writing a backend"). It shows
the three things every backend does:

1. `supports(node)`: say yes only to what it computes exactly as kiln's IR defines it. Every
   attribute the node carries must be one this backend knows, with a value it handles
   (`matmul` with `packed_n` 0, not a B stored in kiln's column panels). Saying no is
   always safe: the node then stays with kiln.
2. `init(graph, constants)`: check the graph, then build whatever runs it (here a list of
   steps: a NumPy function, its attributes and where its inputs come from).
3. `run(inputs, outputs)`: compute, and write the results into the given arrays.

It lives in the runtime, so it implements the ops itself instead of reusing the compiler's
references (kiln/ops), which a deployed library does not ship.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...errors import BackendError
from .base import Backend
from .graph import Ref, check_for, graph_outputs, input_refs, op_nodes, output_specs_of

Kernel = Callable[[list[np.ndarray], dict], np.ndarray]
FLOATS = ("float32", "float64")


# ---- the ops, each as kernel(inputs, attrs) -> one array -----------------------------------

def _clip(x: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """x limited to [lo, hi]; None leaves that side unbounded (NaN stays NaN)."""
    if lo is not None:
        x = np.where(x < lo, np.asarray(lo, x.dtype), x)
    if hi is not None:
        x = np.where(x > hi, np.asarray(hi, x.dtype), x)
    return x


def _softmax(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    """softmax (or its log) along axis, computed in float64 as kiln's reference is."""
    shifted = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
    total = np.exp(shifted).sum(axis=axis, keepdims=True)
    return shifted - np.log(total) if log else np.exp(shifted) / total


def _gemm(arrs: list[np.ndarray], a: dict) -> np.ndarray:
    """alpha * op(A) @ op(B) + beta * C, op transposing when trans_a / trans_b say so."""
    x = arrs[0].T if a["trans_a"] else arrs[0]
    w = arrs[1].T if a["trans_b"] else arrs[1]
    y = a["alpha"] * (x @ w)
    return y + a["beta"] * arrs[2] if len(arrs) == 3 else y


def _windows(x: np.ndarray, a: dict, kernel: tuple[int, ...], fill: float) -> np.ndarray:
    """im2col: every tap of every window of x, as (N, C, taps, *out).

    x is padded with `fill` (pads: all begins, then all ends), then for each kernel offset
    the strided slice it reads is taken; stacking them on axis 2 gives the column matrix.
    """
    nd = len(kernel)
    strides, dilations, pads = a["strides"], a["dilations"], a["pads"]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)],
                constant_values=fill)
    out = [(xp.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
           for i in range(nd)]
    taps = []
    for k in itertools.product(*map(range, kernel)):
        start = [k[i] * dilations[i] for i in range(nd)]
        index = tuple(slice(start[i], start[i] + (out[i] - 1) * strides[i] + 1, strides[i])
                      for i in range(nd))
        taps.append(xp[(slice(None), slice(None)) + index])
    return np.stack(taps, axis=2)


def _conv(arrs: list[np.ndarray], a: dict) -> np.ndarray:
    """conv as one matrix product per group over the im2col columns, plus the bias."""
    x, w = arrs[0], arrs[1]
    n, c, m, g = x.shape[0], x.shape[1], w.shape[0], a["group"]
    cols = _windows(x, a, w.shape[2:], 0.0)
    out = cols.shape[3:]
    cols = cols.reshape(n, g, c // g, -1, math.prod(out))  # (N, G, C/G, taps, P)
    wg = w.reshape(g, m // g, c // g, -1)  # (G, M/G, C/G, taps)
    y = np.einsum("ngctp,gmct->ngmp", cols, wg, optimize=True).reshape((n, m) + out)
    if len(arrs) == 3:
        y = y + arrs[2].reshape((m,) + (1,) * len(out))
    return y


def _max_pool(arrs: list[np.ndarray], a: dict) -> np.ndarray:
    return _windows(arrs[0], a, a["kernel_shape"], -np.inf).max(axis=2)


def _avg_pool(arrs: list[np.ndarray], a: dict) -> np.ndarray:
    """The window sums over the number of taps counted: all of them with count_include_pad,
    else those inside the input (the same windows over a plane of ones padded with 0)."""
    x = arrs[0]
    total = _windows(x, a, a["kernel_shape"], 0.0).sum(axis=2)
    ones = np.ones((1, 1) + x.shape[2:], x.dtype)
    count = _windows(ones, a, a["kernel_shape"], float(a["count_include_pad"])).sum(axis=2)
    return total / count


# ---- what this backend supports ------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """How this backend runs one IR op: its kernel, the attributes it understands, a test of
    their values, and whether it works for any dtype (data movement) or floats only."""

    kernel: Kernel
    attrs: frozenset[str] = field(default_factory=frozenset)
    accepts: Callable[[dict], bool] = lambda a: True
    any_dtype: bool = False


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Op:
    return Op(lambda arrs, a: fn(arrs[0]))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Op:
    return Op(lambda arrs, a: fn(arrs[0], arrs[1]))  # NumPy broadcasting, as the IR's


def _all_ones(name: str) -> Callable[[dict], bool]:
    return lambda a: all(v == 1 for v in a[name])


_POOL = frozenset({"kernel_shape", "strides", "dilations", "pads", "ceil_mode"})

OPS: dict[str, Op] = {
    "relu": _unary(lambda x: np.where(x < 0, 0, x)),
    "sigmoid": _unary(lambda x: 1 / (1 + np.exp(-x))),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "sqrt": _unary(np.sqrt),
    "reciprocal": _unary(lambda x: 1 / x),
    "neg": _unary(np.negative),
    "abs": _unary(np.abs),
    "leaky_relu": Op(lambda arrs, a: np.where(arrs[0] < 0, arrs[0] * a["alpha"], arrs[0]),
                     frozenset({"alpha"})),
    "clip": Op(lambda arrs, a: _clip(arrs[0], a["min"], a["max"]), frozenset({"min", "max"})),
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _binary(np.divide),  # floats only: kiln's integer division truncates, NumPy's floors
    "max": _binary(np.maximum),
    "min": _binary(np.minimum),
    # packed_n != 0: B is stored in kiln's GEMM panels, a layout only kiln's kernels read.
    "matmul": Op(lambda arrs, a: arrs[0] @ arrs[1], frozenset({"packed_n"}),
                 lambda a: a["packed_n"] == 0),
    "gemm": Op(_gemm, frozenset({"alpha", "beta", "trans_a", "trans_b", "packed_n"}),
               lambda a: a["packed_n"] == 0),
    # packed_weight / winograd_weight: the weight is stored in a layout of kiln's kernels.
    "conv": Op(_conv, frozenset({"strides", "dilations", "pads", "group", "packed_weight",
                                 "winograd_weight"}),
               lambda a: not a["packed_weight"] and not a["winograd_weight"]),
    # ceil_mode windows hanging past the end are left to kiln, to keep the example short.
    "max_pool": Op(_max_pool, _POOL, lambda a: not a["ceil_mode"]),
    "avg_pool": Op(_avg_pool, _POOL | {"count_include_pad"}, lambda a: not a["ceil_mode"]),
    "global_avg_pool": _unary(lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)),
    "global_max_pool": _unary(lambda x: x.max(axis=tuple(range(2, x.ndim)), keepdims=True)),
    "softmax": Op(lambda arrs, a: _softmax(arrs[0], a["axis"], False), frozenset({"axis"})),
    "log_softmax": Op(lambda arrs, a: _softmax(arrs[0], a["axis"], True), frozenset({"axis"})),
    "concat": Op(lambda arrs, a: np.concatenate(arrs, axis=a["axis"]), frozenset({"axis"}),
                 any_dtype=True),
    "reshape": Op(lambda arrs, a: arrs[0].reshape(a["shape"]), frozenset({"shape"}),
                  any_dtype=True),
    "transpose": Op(lambda arrs, a: arrs[0].transpose(a["perm"]), frozenset({"perm"}),
                    any_dtype=True),
}


@dataclass(frozen=True)
class Step:
    """One op node of the graph, ready to run: outputs go to (node_id, 0)."""

    node_id: int
    op: str
    kernel: Kernel
    attrs: dict
    inputs: list[Ref]
    shape: tuple[int, ...]
    dtype: np.dtype


class ReferenceBackend(Backend):
    """Runs kiln-external graphs with NumPy: slow, exact to kiln's IR, and always there."""

    name = "reference"
    package = "numpy"  # already a dependency of kiln's runtime

    @classmethod
    def supports(cls, node: dict) -> bool:
        """Yes for an op of OPS with one output, exactly the attributes it knows with values it
        handles, and float32/float64 tensors (any one dtype for the ops that only move data)."""
        op = OPS.get(node["op"])
        if op is None or len(node["outputs"]) != 1:
            return False
        if set(node["attrs"]) != op.attrs or not op.accepts(node["attrs"]):
            return False
        dtypes = {t["dtype"] for t in node["inputs"] + node["outputs"]}
        return (op.any_dtype and len(dtypes) == 1) or dtypes <= set(FLOATS)

    def init(self, graph: dict, constants: dict[str, np.ndarray]) -> None:
        """Check the graph, then list its steps; constants are kept as given (not copied)."""
        check_for(type(self), graph, constants)
        nodes = graph["nodes"]
        self._function = graph["function"]
        self._constants = {(i, 0): constants[nodes[i]["name"]] for i in graph["constants"]}
        self._inputs = [(i, 0) for i in graph["inputs"]]
        self._outputs = graph_outputs(graph)
        self._steps = []
        for i, node in op_nodes(graph):
            out = output_specs_of(node)[0]
            self._steps.append(Step(i, node["op"], OPS[node["op"]].kernel, node["attrs"],
                                    input_refs(node), out.shape, np.dtype(out.dtype)))

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """Evaluate the steps in order, each result checked against the type the graph
        declares (a mismatch is a bug in a kernel above, named with its node)."""
        if len(inputs) != len(self._inputs) or len(outputs) != len(self._outputs):
            raise BackendError(f"external function {self._function!r} takes "
                               f"{len(self._inputs)} inputs and {len(self._outputs)} outputs, "
                               f"got {len(inputs)} and {len(outputs)}")
        values: dict[Ref, np.ndarray] = dict(self._constants)
        values.update(zip(self._inputs, inputs, strict=True))
        for step in self._steps:
            result = np.asarray(step.kernel([values[r] for r in step.inputs], step.attrs))
            if result.shape != step.shape:
                raise BackendError(f"reference backend: node {step.node_id} ({step.op}) of "
                                   f"{self._function!r} computed shape {list(result.shape)}, "
                                   f"the graph says {list(step.shape)}")
            values[(step.node_id, 0)] = result.astype(step.dtype, copy=False)
        for out, ref in zip(outputs, self._outputs, strict=True):
            np.copyto(out, values[ref])
