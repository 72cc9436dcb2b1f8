"""The kernel contract: one C template function per IR op, registered under the op's name.

The op itself (attrs, type rule, reference, kind, epilogue flag) is defined once in
kiln/ops/<family>.py; its template is in kiln/codegen/kernels/<family>.py. Every op but the
views has exactly one template (tests/test_op_contract.py checks it).
A template receives a KernelContext and returns the C statements of the kernel body. Inputs
are `in0, in1, ...` and outputs `out0, ...` (typed, restrict pointers, all shapes static).
A template of an op declaring `epilogue=True` writes each element of its single output
exactly once through `ctx.store(i, v)`; that lets the fusion pass append an elementwise
chain (the epilogue) to it.
Kernels run on any thread count: templates split with `parallel` (a task for kiln's thread
pool) outer loops whose iterations write disjoint outputs and never split a reduction, so
the results do not depend on the thread count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import UnsupportedOpError
from ...ir.types import TensorType

C_TYPES = {
    "float16": "_Float16",  # storage type; arithmetic is promoted to float
    "float32": "float",
    "float64": "double",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "uint16": "uint16_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
    "bool": "uint8_t",
}

# Attribute for kernel-local arrays: gcc 12 with -march=native on AVX-512 hosts can place a
# small local array misaligned in the red zone, then use aligned vector moves on it (a
# crash); an explicit alignment makes it realign the frame.
ALIGNED = "__attribute__((aligned(64)))"


# Kernels with less work than this stay serial. Work counts inner-loop element operations (one
# vectorized multiply-add, or one element loaded and stored: about 0.2 ns). Under OpenMP a
# parallel region cost 1-2 us and 2 threads broke even at about 16K units (measured on add,
# conv, matmul, softmax, pools and norms); kiln's pool costs ~0.5 us a job
# (benchmarks/bench_forkjoin.py), and halving the threshold from 64K took 5-7% off the small
# e2e CNNs at 2 threads (resnet18_like 0.130 -> 0.121 ms, mobilenetv2_like 0.068 -> 0.063)
# while 16K gained nothing more: small kernels also lose most when another process holds a
# core, hence the margin.
PARALLEL_WORK = 1 << 15
# Work of one call to a math function (tanhf, erf...) in an element's expression.
CALL_WORK = 32
# Work of an element step that does not vectorize: a running sum kept in order, a strided or
# table-driven gather, a branchy window.
SERIAL_WORK = 4
# Iterations a parallel loop should have, where a kernel can split its work at little cost,
# so that up to that many threads get equal shares.
PARALLEL_TRIPS = 8
# A call: a lower-case name and "(" (not a C keyword; macros like INT64_C are upper case).
_CALL = re.compile(r"\b(?!(?:if|for|while|switch|return|sizeof)\b)[a-z_]\w*\s*\(")


def worth_threads(work: int, trips: int) -> bool:
    """Whether a kernel with this much work, split in `trips` iterations, forks threads: a
    compile-time choice (the thread count is a run-time one)."""
    return work >= PARALLEL_WORK and trips >= 2


Loop = tuple[str, int | str] | tuple[str, int | str, int]  # (variable, end[, step]) from 0


def parallel(ctx: KernelContext, loops: Sequence[Loop], body: str, *, threads: bool,
             shared: Sequence[str] = ()) -> str:
    """C: the perfect nest `loops` (outermost first; each from 0 below its end, by its step)
    around body, whose iterations write apart. With `threads`, the nest becomes a task that
    kiln_parallel (threadpool.py) splits among the threads: a static function of its own
    running a range of the nest's flat iterations, so body can read only the kernel's
    arguments and the enclosing locals that `shared` declares (e.g. "float* restrict col",
    passed by value); a C end may name those too."""
    steps = [(var, end, step[0] if step else 1) for var, end, *step in loops]
    if not threads or not steps:
        for var, end, step in reversed(steps):
            advance = f"++{var}" if step == 1 else f"{var} += {step}"
            body = f"for (int64_t {var} = 0; {var} < {end}; {advance}) {{\n{body}\n}}"
        return body
    name = f"kiln_task{ctx.tasks}"
    ctx.tasks += 1
    counts = [str(-(-end // step)) if isinstance(end, int) else f"(({end}) + {step - 1}) / {step}"
              for _, end, step in steps]
    if len(steps) == 1:
        var, _, step = steps[0]
        advance = f"++{var}" if step == 1 else f"{var} += {step}"
        scale = "" if step == 1 else f" * {step}"
        nest = (f"for (int64_t {var} = kiln_lo{scale}; {var} < kiln_hi{scale}; {advance}) "
                f"{{\n{body}\n}}")
    else:
        # the nest's counters from kiln_lo, then advanced like an odometer (no division per
        # iteration); the advance sits in the for's increment, so a `continue` in body works
        digits = [f"kiln_c{j}" for j in range(len(steps))]
        start = ", ".join(
            f"{d} = kiln_lo{''.join(f' / ({c})' for c in counts[j + 1:])}"
            + (f" % ({counts[j]})" if j else "") for j, d in enumerate(digits))
        carry = f"++{digits[0]}"
        for j in range(1, len(steps)):
            carry = f"(++{digits[j]} == ({counts[j]}) ? ({digits[j]} = 0, {carry}) : 0)"
        values = ", ".join(f"{var} = {d}" + ("" if step == 1 else f" * {step}")
                           for (var, _, step), d in zip(steps, digits, strict=True))
        nest = (f"int64_t {start};\n"
                f"for (int64_t kiln_f = kiln_lo; kiln_f < kiln_hi; ++kiln_f, (void){carry}) {{\n"
                f"const int64_t {values};\n{body}\n}}")
    names = [decl.split()[-1] for decl in shared]
    ctx.helpers.append(
        f"struct {name}_ctx {{ void* const* args;{''.join(f' {d};' for d in shared)} }};\n"
        f"static void {name}(const void* kiln_ctx, int64_t kiln_lo, int64_t kiln_hi) {{\n"
        f"const struct {name}_ctx* kiln_c = (const struct {name}_ctx*)kiln_ctx;\n"
        f"void* const* args = kiln_c->args;\n{ctx.unpack}\n"
        + "".join(f"{d} = kiln_c->{n}; (void){n};\n" for d, n in zip(shared, names, strict=True))
        + f"{nest}\n}}\n")
    trips = " * ".join(counts)
    return (f"{{\nconst struct {name}_ctx kiln_c = {{{', '.join(['args', *names])}}};\n"
            f"kiln_parallel({name}, &kiln_c, {trips});\n}}")


def nest_depth(dims: Sequence[int]) -> int:
    """How many outer loops of a perfect nest over dims threads split: as few as give
    PARALLEL_TRIPS iterations, the innermost loop (which vectorizes) kept whole if others."""
    depth = 1
    while depth < len(dims) - 1 and math.prod(dims[:depth]) < PARALLEL_TRIPS:
        depth += 1
    return depth


def expression_work(expr: str) -> int:
    """Work per element of C code: 1, plus CALL_WORK per function call in it."""
    return 1 + CALL_WORK * len(_CALL.findall(expr))


def ctype(dtype: str) -> str:
    """The C type that stores one element of dtype."""
    try:
        return C_TYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"dtype {dtype} has no C kernel type") from None


def is_float(dtype: str) -> bool:
    return np.dtype(dtype).kind == "f"


def lit(value: Any, dtype: str) -> str:
    """A C literal for value in dtype (inf/nan included)."""
    if dtype == "bool":
        return "1" if value else "0"
    if is_float(dtype):
        v = float(value)
        suffix = "f" if dtype == "float32" else ""
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "(-INFINITY)"
        return f"{v!r}{suffix}" if "e" in repr(v) or "." in repr(v) else f"{v!r}.0{suffix}"
    v = int(value)
    if dtype in ("int64", "uint64"):
        if v == -(2**63):
            return "INT64_MIN"
        return f"INT64_C({v})" if dtype == "int64" else f"UINT64_C({v})"
    return str(v)


def mathfn(name: str, dtype: str) -> str:
    """The libm function for dtype: expf for float32, exp for float64."""
    return name + "f" if dtype == "float32" else name


def strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major element strides of shape."""
    out, acc = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = acc
        acc *= shape[i]
    return out


def broadcast_index(in_shape: tuple[int, ...], out_shape: tuple[int, ...], i: str) -> str:
    """C expression: the flat index into an input broadcast (numpy rules) to out_shape."""
    if tuple(in_shape) == tuple(out_shape):
        return i
    if int(np.prod(in_shape, dtype=np.int64)) == 1:
        return "0"
    pad = len(out_shape) - len(in_shape)
    full = (1,) * pad + tuple(in_shape)
    in_st, out_st = strides(full), strides(tuple(out_shape))
    terms = []
    for d, (n_in, n_out) in enumerate(zip(full, out_shape, strict=True)):
        if n_in == 1 or n_out == 1:
            continue
        coord = f"({i} / {out_st[d]})"
        if d > 0:
            coord = f"({coord} % {n_out})"
        terms.append(f"{coord} * {in_st[d]}" if in_st[d] != 1 else coord)
    return " + ".join(terms) if terms else "0"


def row_index(in_shape: tuple[int, ...], out_shape: tuple[int, ...], ld: int, outer: str,
              inner: str, i: str) -> str:
    """C expression: broadcast_index of the output element at row `outer`, column `inner` of
    out_shape seen as rows of ld elements, from those two without dividing, when ld is the
    size of a suffix of out_shape's dims; else broadcast_index from the flat index i."""
    split = next((d for d in range(len(out_shape) + 1)
                  if math.prod(out_shape[d:]) == ld), None)
    if split is None:
        return broadcast_index(in_shape, out_shape, i)
    full = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    lead = broadcast_index(full[:split], tuple(out_shape[:split]), outer)
    trail = broadcast_index(full[split:], tuple(out_shape[split:]), inner)
    width = math.prod(full[split:])
    terms = []
    if lead != "0":
        terms.append(f"({lead}) * {width}" if width != 1 else f"({lead})")
    if trail != "0":
        terms.append(f"({trail})")
    return " + ".join(terms) or "0"


@dataclass
class KernelContext:
    """What a template needs: the anchor's types and attrs, names, and the store hook."""

    in_types: list[TensorType]
    out_types: list[TensorType]
    attrs: dict[str, Any]
    ins: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    # Set by the renderer: wraps a computed value with the fused epilogue.
    epilogue: Callable[[str, str], str] | None = None
    # Set by the renderer: (ld, index, outer, inner, value) -> the epilogue applied to value,
    # its operands indexed by row and column of rows of ld elements (see store_row).
    row_epilogue: Callable[[int, str, str, str, str], str] | None = None
    # Set by the renderer: the types the outputs are stored as (out0 is the epilogue's result:
    # its dtype may differ from the anchor's); empty means out_types.
    stored_types: list[TensorType] = field(default_factory=list)
    # Set by the renderer: the C lines declaring in*, ex* and out* from `args`, for helper
    # functions that need the kernel's arguments (a GEMM tile epilogue gets `args` back).
    unpack: str = ""
    # Filled by the template: C definitions placed before the kernel function (static helpers).
    helpers: list[str] = field(default_factory=list)
    # Tasks (parallel loop nests, see `parallel`) the template has made so far.
    tasks: int = 0

    def store_row(self, ld: int, index: str, outer: str, inner: str, value: str) -> str:
        """ctx.store(index, value) for the element at row `outer`, column `inner` of the output
        seen as rows of ld elements: the chain's operands are indexed from those without a
        division per element (so the loop over inner vectorizes)."""
        if self.row_epilogue is not None:
            return f"{self.outs[0]}[{index}] = {self.row_epilogue(ld, index, outer, inner, value)};"
        return self.store(index, value)

    def store(self, index: str, value: str, out: int = 0) -> str:
        """C statement writing value at flat index of output `out` (through the epilogue)."""
        if out == 0 and self.epilogue is not None:
            return f"{{ const int64_t kiln_i = (int64_t)({index}); " \
                   f"{self.outs[0]}[kiln_i] = {self.epilogue('kiln_i', value)}; }}"
        return f"{self.outs[out]}[{index}] = ({value});"

    def t(self, i: int = 0) -> str:
        """C type of input i."""
        return ctype(self.in_types[i].dtype)

    def ot(self, i: int = 0) -> str:
        """C type of the anchor's output i (before any epilogue)."""
        return ctype(self.out_types[i].dtype)


TemplateFn = Callable[[KernelContext], str]


@dataclass(frozen=True)
class KernelDef:
    """The C template of one IR op (whether it takes an epilogue is the op's OpDef.epilogue)."""

    op: str
    template: TemplateFn


_KERNELS: dict[str, KernelDef] = {}


def kernel(op: str) -> Callable[[TemplateFn], TemplateFn]:
    """Decorator registering the C template of IR op `op`."""

    def wrap(fn: TemplateFn) -> TemplateFn:
        if op in _KERNELS:
            raise ValueError(f"kernel for {op} registered twice")
        _KERNELS[op] = KernelDef(op, fn)
        return fn

    return wrap


def get_kernel(op: str) -> KernelDef:
    """The C template of IR op `op`."""
    try:
        return _KERNELS[op]
    except KeyError:
        raise UnsupportedOpError(f"no C kernel for IR op '{op}'") from None


def all_kernels() -> dict[str, KernelDef]:
    """Every registered template by op name (the op-contract test pairs them with the ops)."""
    return dict(_KERNELS)


# Elementwise ops also register a C expression: (operand C names, attrs, operand dtypes,
# output dtype) -> C expression. Fusion uses it to build epilogues and elementwise kernels.
ExprFn = Callable[[list[str], dict[str, Any], list[str], str], str]
_EXPRS: dict[str, ExprFn] = {}


def expression(op: str) -> Callable[[ExprFn], ExprFn]:
    """Decorator registering the C expression of an elementwise IR op (and so its kernel)."""

    def wrap(fn: ExprFn) -> ExprFn:
        if op in _EXPRS:
            raise ValueError(f"expression for {op} registered twice")
        _EXPRS[op] = fn
        kernel(op)(_elementwise_template(op))
        return fn

    return wrap


def broadcast_rows(in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...]) -> int:
    """The longest run of out_shape's last dims that every input either has whole or not at
    all (all 1), as a count of elements: over a row of that many, each input is read
    contiguously or is one value. 1 if there is none (or every input is whole: no rows)."""
    for length in range(len(out_shape) - 1, 0, -1):
        tail = tuple(out_shape[-length:])
        ins = [(1,) * (len(out_shape) - len(s)) + tuple(s) for s in in_shapes]
        if all(s[-length:] in (tail, (1,) * length) for s in ins):
            return math.prod(tail)
    return 1


def _elementwise_template(op: str) -> TemplateFn:
    """The kernel of a lone elementwise op: one loop over the output, broadcast loads; by rows
    when an input is broadcast along the leading dims only (a per-channel scale), so the
    loop over a row vectorizes (no division per element)."""

    def template(ctx: KernelContext) -> str:
        out = ctx.out_types[0]
        shapes = [t.shape for t in ctx.in_types]
        expr = get_expression(op)(
            [f"x{k}" for k in range(len(ctx.ins))], ctx.attrs,
            [t.dtype for t in ctx.in_types], out.dtype,
        )
        ld = broadcast_rows(shapes, out.shape)
        if ld == 1 or all(tuple(s) == tuple(out.shape) or math.prod(s) == 1 for s in shapes):
            loads = [f"const {ctx.t(k)} x{k} = {name}[{broadcast_index(s, out.shape, 'i')}];"
                     for k, (name, s) in enumerate(zip(ctx.ins, shapes, strict=True))]
            body = "\n    ".join(loads + [ctx.store("i", expr)])
            threads = worth_threads(out.numel * expression_work(expr), out.numel)
            return parallel(ctx, [("i", out.numel)], f"    {body}", threads=threads)
        loads = [f"const {ctx.t(k)} x{k} = "
                 f"{name}[{row_index(s, out.shape, ld, 'outer', 'inner', 'i')}];"
                 for k, (name, s) in enumerate(zip(ctx.ins, shapes, strict=True))]
        body = "\n        ".join([f"const int64_t i = outer * {ld} + inner;", *loads,
                                  ctx.store_row(ld, "i", "outer", "inner", expr)])
        rows = out.numel // ld
        threads = worth_threads(out.numel * expression_work(expr), rows)
        return parallel(ctx, [("outer", rows)],
                        f"    for (int64_t inner = 0; inner < {ld}; ++inner) {{\n        {body}\n"
                        "    }", threads=threads)

    return template


def get_expression(op: str) -> ExprFn:
    try:
        return _EXPRS[op]
    except KeyError:
        raise UnsupportedOpError(f"no C expression for elementwise IR op '{op}'") from None

