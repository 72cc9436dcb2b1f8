"""ONNX -> IR converters of the linalg ops: MatMul, Gemm, CumSum, Trilu and Einsum.

Einsum is lowered to IR ops, contracting operands left to right as numpy does: each pair
becomes transposes and reshapes around one batched `matmul` (or a broadcast `mul` when no
index is contracted); indices used nowhere else are summed first with `reduce_sum`, and a
repeated index in one operand (a diagonal) is masked with `where` and summed.
"""

from __future__ import annotations

import math
import string

import numpy as np

from ....errors import ShapeError
from ....ir import Value
from ..registry import ConvertContext, converter


@converter("MatMul")
def _matmul(cx: ConvertContext) -> list[Value]:
    return [cx.emit1("matmul", [cx.input(0), cx.input(1)])]


@converter("Gemm")
def _gemm(cx: ConvertContext) -> list[Value]:
    inputs = [cx.input(0), cx.input(1)] + ([cx.input(2)] if cx.has_input(2) else [])
    attrs = cx.given(alpha=float, beta=float)
    for onnx_name, ir_name in (("transA", "trans_a"), ("transB", "trans_b")):
        if onnx_name in cx.attrs:
            attrs[ir_name] = bool(cx.attrs[onnx_name])
    return [cx.emit1("gemm", inputs, attrs)]


def _const_int(cx: ConvertContext, i: int, what: str, default: int) -> int:
    """A compile-time integer input holding one value (default if absent)."""
    value = cx.const_input(i)
    if value is None:
        return default
    if value.size != 1 or value.dtype.kind not in "iu":
        raise ShapeError(f"{cx.where()}: {what} must be one integer, got {value.dtype.name} "
                         f"of shape {list(value.shape)}")
    return int(value.reshape(()))


@converter("CumSum")
def _cumsum(cx: ConvertContext) -> list[Value]:
    x = cx.input(0)
    axis = _const_int(cx, 1, "axis", 0)
    if not -x.type.rank <= axis < x.type.rank:
        raise ShapeError(f"{cx.where()}: axis {axis} out of range for input {x.type}")
    attrs = {"axis": axis % x.type.rank, **cx.given(exclusive=bool, reverse=bool)}
    return [cx.emit1("cumsum", [x], attrs)]


@converter("Trilu")
def _trilu(cx: ConvertContext) -> list[Value]:
    attrs = cx.given(upper=bool)
    if cx.has_input(1):
        attrs["k"] = _const_int(cx, 1, "k", 0)
    return [cx.emit1("trilu", [cx.input(0)], attrs)]


# Einsum -------------------------------------------------------------------------------------

Labels = list[str]  # one label per axis; '0', '1'... stand for the dims an ellipsis covers


def _parse_einsum(equation: str, ranks: list[int]) -> tuple[list[Labels], Labels]:
    """The labels of each operand and of the output, with ellipses expanded (numpy rules)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"einsum equation '{equation}' has {len(terms)} operands, "
                         f"the node {len(ranks)} inputs")
    spans = [rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks, strict=True)]
    ell = max([s for t, s in zip(terms, spans, strict=True) if "..." in t], default=0)
    ell_labels = [str(d) for d in range(ell)]
    for term in terms + [rhs]:
        if any(c not in string.ascii_letters for c in term.replace("...", "")):
            raise ShapeError(f"einsum equation '{equation}': term '{term}' has characters "
                             "other than letters and '...'")
    inputs = []
    for term, span, rank in zip(terms, spans, ranks, strict=True):
        labels = _expand(term, ell_labels[ell - span:] if span >= 0 else [])
        if len(labels) != rank:
            raise ShapeError(f"einsum term '{term}' of equation '{equation}' does not fit an "
                             f"operand of rank {rank}")
        inputs.append(labels)
    if arrow:
        output = _expand(rhs, ell_labels)
    else:
        counts = [lab for labels in inputs for lab in labels]
        output = ell_labels + sorted(c for c in set(counts) - set(ell_labels)
                                     if counts.count(c) == 1)
    known = {lab for labels in inputs for lab in labels}
    if len(set(output)) != len(output) or not set(output) <= known:
        raise ShapeError(f"einsum output '{rhs}' of equation '{equation}' repeats an index or "
                         "uses one no operand has")
    return inputs, output


def _expand(term: str, ell_labels: Labels) -> Labels:
    head, dots, tail = term.partition("...")
    return list(head) + (ell_labels if dots else []) + list(tail)


class _Einsum:
    """Emits the IR of one Einsum node: operands are (value, labels) pairs."""

    def __init__(self, cx: ConvertContext) -> None:
        self.cx = cx

    def emit(self, op: str, x: Value, attrs: dict) -> Value:
        return self.cx.emit1(op, [x], attrs)

    def transpose(self, x: Value, labels: Labels, order: Labels) -> Value:
        perm = tuple(labels.index(lab) for lab in order)
        return x if perm == tuple(range(len(perm))) else self.emit("transpose", x, {"perm": perm})

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        return x if x.type.shape == shape else self.emit("reshape", x, {"shape": shape})

    def sum_out(self, x: Value, labels: Labels, drop: set[str]) -> tuple[Value, Labels]:
        """Sum over the axes whose label is in drop."""
        axes = tuple(k for k, lab in enumerate(labels) if lab in drop)
        if not axes:
            return x, labels
        x = self.emit("reduce_sum", x, {"axes": axes, "keepdims": False})
        return x, [lab for lab in labels if lab not in drop]

    def diagonals(self, x: Value, labels: Labels) -> tuple[Value, Labels]:
        """Take the diagonal of each repeated label: mask off-diagonal entries, then sum."""
        for q, lab in enumerate(labels):
            p = labels.index(lab)
            if p == q:
                continue
            n = x.type.shape[p]
            if x.type.shape[q] != n:
                raise ShapeError(f"{self.cx.where()}: einsum index '{lab}' has dims "
                                 f"{x.type.shape[p]} and {x.type.shape[q]} in one operand")
            shape = [1] * x.type.rank
            shape[p] = shape[q] = n
            mask = self.cx.constant(np.eye(n, dtype=bool).reshape(shape), "diag_mask")
            zero = self.cx.constant(np.zeros((), x.type.dtype), "zero")
            x = self.cx.emit1("where", [mask, x, zero])
            x = self.emit("reduce_sum", x, {"axes": (q,), "keepdims": False})
            return self.diagonals(x, labels[:q] + labels[q + 1:])
        return x, labels

    def contract(self, a: tuple[Value, Labels], b: tuple[Value, Labels],
                 keep: set[str]) -> tuple[Value, Labels]:
        """The product of two operands, summing shared labels not in keep."""
        (x, la), (y, lb) = self.unbroadcast(a, b), self.unbroadcast(b, a)
        x, la = self.sum_out(x, la, set(la) - set(lb) - keep)
        y, lb = self.sum_out(y, lb, set(lb) - set(la) - keep)
        batch = [lab for lab in la if lab in lb and lab in keep]
        inner = [lab for lab in la if lab in lb and lab not in keep]
        left = [lab for lab in la if lab not in lb]
        right = [lab for lab in lb if lab not in la]
        dims = dict(zip(la, x.type.shape, strict=True)) | dict(zip(lb, y.type.shape, strict=True))
        size = [math.prod(dims[lab] for lab in group) for group in (batch, left, inner, right)]
        out_shape = tuple(dims[lab] for lab in batch + left + right)
        x = self.transpose(x, la, batch + left + inner)
        y = self.transpose(y, lb, batch + inner + right)
        if inner:
            lead = (size[0],) if batch else ()
            x = self.reshape(x, lead + (size[1], size[2]))
            y = self.reshape(y, lead + (size[2], size[3]))
            out = self.cx.emit1("matmul", [x, y])
        else:  # an outer product per batch index: broadcast multiply
            ones = (1,) * len(right), (1,) * len(left)
            x = self.reshape(x, x.type.shape + ones[0])
            y = self.reshape(y, tuple(dims[lab] for lab in batch) + ones[1] +
                             tuple(dims[lab] for lab in right))
            out = self.cx.emit1("mul", [x, y])
        return self.reshape(out, out_shape), batch + left + right

    def unbroadcast(self, a: tuple[Value, Labels], b: tuple[Value, Labels]) -> tuple[Value, Labels]:
        """Drop from a the size-1 axes whose label b has at a larger size (numpy broadcasting)."""
        (x, la), (y, lb) = a, b
        other = dict(zip(lb, y.type.shape, strict=True))
        drop = [k for k, lab in enumerate(la) if x.type.shape[k] == 1 and other.get(lab, 1) > 1]
        for k, lab in enumerate(la):
            if k not in drop and lab in other and other[lab] not in (1, x.type.shape[k]):
                raise ShapeError(f"{self.cx.where()}: einsum index '{lab}' has dims "
                                 f"{x.type.shape[k]} and {other[lab]}")
        if not drop:
            return x, la
        shape = tuple(d for k, d in enumerate(x.type.shape) if k not in drop)
        return self.reshape(x, shape), [lab for k, lab in enumerate(la) if k not in drop]


@converter("Einsum")
def _einsum(cx: ConvertContext) -> list[Value]:
    values = [cx.input(i) for i in range(cx.num_inputs)]
    equation = cx.attr("equation")
    if not isinstance(equation, str):
        raise ShapeError(f"{cx.where()}: attribute 'equation' is required")
    terms, output = _parse_einsum(equation, [v.type.rank for v in values])
    e = _Einsum(cx)
    operands = [e.diagonals(v, labels) for v, labels in zip(values, terms, strict=True)]
    x, labels = operands[0]
    for k, nxt in enumerate(operands[1:], start=2):
        keep = set(output).union(*(lab for _, lab in operands[k:]))
        x, labels = e.contract((x, labels), nxt, keep)
    x, labels = e.sum_out(x, labels, set(labels) - set(output))
    return [e.transpose(x, labels, output)]
