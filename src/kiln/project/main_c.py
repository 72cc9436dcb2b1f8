"""main.c of a generated project: runs one model once on self-test vector 0 and checks it.

The program prints each output's first values as `output <i>: v0 v1 ...` (floats `%.9g`),
then `max abs error: <e>`, and returns 0 only when every element of every output is within
the archive's tolerance (|got - want| <= atol + rtol * |want|, NaN equal to NaN, integers
exactly), 1 when one is not, 2 when the run function fails. Without self-test vectors the
inputs are zeros and nothing is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ExportError

PRINTED = 64  # values printed per output
PER_LINE = 8  # values per line of a C initializer

# dtype -> (C type of the model's API, printf format, cast for printf)
C_TYPES: dict[str, tuple[str, str, str]] = {
    "float32": ("float", "%.9g", "double"),
    "float64": ("double", "%.17g", "double"),
    "int8": ("int8_t", "%d", "int"),
    "int16": ("int16_t", "%d", "int"),
    "int32": ("int32_t", "%ld", "long"),
    "int64": ("int64_t", "%lld", "long long"),
    "uint8": ("uint8_t", "%u", "unsigned"),
    "uint16": ("uint16_t", "%u", "unsigned"),
    "uint32": ("uint32_t", "%lu", "unsigned long"),
    "uint64": ("uint64_t", "%llu", "unsigned long long"),
    "bool": ("uint8_t", "%u", "unsigned"),
}


@dataclass
class Tensor:
    """One input or output of the model as main.c declares it."""

    c_name: str
    dtype: str
    size: int  # elements
    values: np.ndarray | None  # the vector's values; None: zeros


def c_literal(value: Any, dtype: str) -> str:
    """value as a C literal of dtype that reads back to the same value (NaN, inf too)."""
    if dtype in ("float32", "float64"):
        v = float(value)
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "-INFINITY"
        text = f"{v:.9g}" if dtype == "float32" else repr(v)
        if not any(c in text for c in ".en"):
            text += ".0"
        return text + ("f" if dtype == "float32" else "")
    v = int(value)
    if dtype == "int64":
        return f"INT64_C({v})" if v > -(1 << 63) else "(-INT64_C(9223372036854775807) - 1)"
    if dtype == "uint64":
        return f"UINT64_C({v})"
    return str(v) + ("u" if dtype.startswith("uint") else "")


def _array(name: str, t: Tensor, *, const: bool) -> str:
    """The C definition of a static array holding t's values (zeros without values)."""
    ctype = C_TYPES[t.dtype][0]
    size = max(t.size, 1)
    if t.values is None:
        return f"static {'const ' if const else ''}{ctype} {name}[{size}];\n"
    flat = t.values.reshape(-1)
    items = [c_literal(v, t.dtype) for v in flat.tolist()] or ["0"]
    lines = ",\n".join("    " + ", ".join(items[i:i + PER_LINE])
                       for i in range(0, len(items), PER_LINE))
    return f"static {'const ' if const else ''}{ctype} {name}[{size}] = {{\n{lines}\n}};\n"


def _check_fn() -> str:
    """The C that compares one element with its expected value."""
    return """\
/* worst, or |got - want| when larger; ++*bad when got is out of tolerance (integers and
   bools: when it differs) */
static double check(double got, double want, int exact, double worst, size_t* bad) {
    if ((isnan(got) && isnan(want)) || got == want) return worst;
    double err = fabs(got - want);
    if (exact || isnan(err) || !(err <= KILN_ATOL + KILN_RTOL * fabs(want))) ++*bad;
    if (isnan(err)) err = INFINITY;
    return err > worst ? err : worst;
}
"""


def _output_block(k: int, t: Tensor, check: bool) -> str:
    """main's lines printing output k and, with a check, comparing it."""
    fmt, cast = C_TYPES[t.dtype][1], C_TYPES[t.dtype][2]
    shown = min(t.size, PRINTED)
    lines = [f'    printf("output {k}:");',
             f"    for (size_t i = 0; i < {shown}u; ++i) "
             f'printf(" {fmt}", ({cast})output_{k}[i]);',
             '    printf("\\n");']
    if check:
        exact = 0 if t.dtype.startswith("float") else 1
        lines += [f"    for (size_t i = 0; i < {t.size}u; ++i) {{",
                  f"        max_err = check((double)output_{k}[i], (double)expected_{k}[i], "
                  f"{exact}, max_err, &bad);",
                  "    }"]
    return "\n".join(lines)


def render_main(prefix: str, header: str, inputs: list[Tensor], outputs: list[Tensor],
                tolerance: dict[str, float] | None) -> str:
    """The whole main.c for model prefix (kiln_<model>); tolerance None: no self-test."""
    for t in inputs + outputs:
        if t.dtype not in C_TYPES:
            raise ExportError(f"cannot generate main.c: tensor '{t.c_name}' has dtype "
                              f"{t.dtype}; supported: {', '.join(C_TYPES)}")
    macro, check = prefix.upper(), tolerance is not None
    parts = [_HEAD.format(header=header, vector="vector 0 of the archive's self-test"
                          if check else "zero inputs (the archive has no self-test)")]
    if check:
        parts.append(f"#define KILN_RTOL {float(tolerance['rtol'])!r}\n"
                     f"#define KILN_ATOL {float(tolerance['atol'])!r}\n\n")
    parts.append(f"static _Alignas({macro}_WORKSPACE_ALIGN) uint8_t workspace["
                 f"{macro}_WORKSPACE_SIZE > 0 ? {macro}_WORKSPACE_SIZE : 1];\n")
    parts += [_array(f"input_{k}", t, const=True) for k, t in enumerate(inputs)]
    parts += [_array(f"output_{k}", Tensor(t.c_name, t.dtype, t.size, None), const=False)
              for k, t in enumerate(outputs)]
    if check:
        parts += [_array(f"expected_{k}", t, const=True) for k, t in enumerate(outputs)]
        parts.append(_check_fn())
    parts.append(_main_fn(prefix, inputs, outputs, check))
    return "\n".join(parts)


def _main_fn(prefix: str, inputs: list[Tensor], outputs: list[Tensor], check: bool) -> str:
    """int main(void): run, print, compare."""
    ins = "".join(f"    in.{t.c_name} = input_{k};\n" for k, t in enumerate(inputs))
    outs = "".join(f"    out.{t.c_name} = output_{k};\n" for k, t in enumerate(outputs))
    blocks = "\n".join(_output_block(k, t, check) for k, t in enumerate(outputs))
    tail = ('    printf("max abs error: %.9g\\n", max_err);\n'
            '    if (bad) printf("FAIL: %lu values out of tolerance (rtol %g, atol %g)\\n",\n'
            "                    (unsigned long)bad, KILN_RTOL, KILN_ATOL);\n"
            "    return bad ? 1 : 0;\n") if check else \
        ('    printf("max abs error: n/a (no self-test vectors: outputs not checked)\\n");\n'
         "    return 0;\n")
    locals_ = "    double max_err = 0.0;\n    size_t bad = 0;\n" if check else ""
    return (f"int main(void) {{\n    struct {prefix}_inputs in;\n"
            f"    struct {prefix}_outputs out;\n{locals_}{ins}{outs}"
            f"    int status = {prefix}_run(&in, &out, workspace);\n"
            "    if (status != 0) {\n"
            f'        printf("{prefix}_run failed: %d\\n", status);\n'
            "        return 2;\n    }\n"
            f"{blocks}\n{tail}}}\n")


_HEAD = """\
/* Generated by kiln project generate: runs the model once on {vector},
   prints its outputs (`output <i>: ...`, the first values) and `max abs error: <e>`,
   and exits 0 only when every output is within the archive's tolerance. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "{header}"
"""
