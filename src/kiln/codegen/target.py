"""Compilation targets: which C compiler, which flags, and what the code will need to run.

The default target is the host CPU (-march=native where the compiler supports it); the
features the code may use are read back from the compiler's predefined macros, so they
are exact for any compiler and flag set, cross compilers included. A digest of all those
macros is what the flags resolve to, and keys the object cache (toolchain.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import CompileError

# Compiler macro -> the CPU feature name Linux reports in /proc/cpuinfo.
FEATURE_MACROS = {
    "__SSE4_2__": "sse4_2", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma",
    "__F16C__": "f16c", "__BMI2__": "bmi2", "__AVX512F__": "avx512f",
    "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl",
    "__AVX512CD__": "avx512cd", "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16",
    "__AVX512VBMI__": "avx512vbmi", "__AVX512VBMI2__": "avx512_vbmi2",
    "__AVX512IFMA__": "avx512ifma", "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq", "__AVXVNNI__": "avx_vnni",
    "__ARM_NEON": "asimd", "__ARM_FEATURE_FMA": "asimd", "__ARM_FEATURE_DOTPROD": "asimddp",
    "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC": "asimdhp", "__ARM_FEATURE_SVE": "sve",
}

# -fvect-cost-model=dynamic: at -O2, gcc 12 otherwise skips vectorizing loops with
# run-time trip counts.
# -pthread: kiln's thread pool (threadpool.py) splits the kernels' loops.
# -falign-functions=64: kernel speed does not depend on where the linker happens to place it.
BASE_FLAGS = ("-O2", "-fPIC", "-std=gnu11", "-fno-math-errno", "-fvect-cost-model=dynamic",
              "-pthread", "-falign-functions=64")
# gcc 12 tuned for AVX-512 machines can place small stack arrays of leaf functions in the red
# zone misaligned and then read them with aligned vector loads (a crash seen in conv kernels);
# not using the red zone avoids it at no measurable cost.
X86_FLAGS = ("-mno-red-zone",)


@dataclass(frozen=True)
class Target:
    """A resolved C target: compiler, flags, triple and the CPU features the code needs."""

    cc: str
    cflags: tuple[str, ...]
    triple: str
    features: tuple[str, ...]
    compiler_id: str  # the compiler's version banner: part of every cache key
    # A digest of the compiler's predefined macros for cflags: what they resolve to on this
    # machine (-march=native differs per CPU), part of every cache key.
    macros_digest: str

    @property
    def arch(self) -> str:
        return self.triple.split("-")[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "c", "triple": self.triple, "features": list(self.features),
                "cflags": list(self.cflags), "compiler": self.compiler_id}


def _run(cmd: list[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise CompileError(f"C compiler not found: {cmd[0]}") from None
    except subprocess.CalledProcessError as e:
        raise CompileError(f"{' '.join(cmd)} failed:\n{e.stderr.strip()}") from None
    return done.stdout


@cache
def _probe(cc: str, cflags: tuple[str, ...]) -> tuple[str, tuple[str, ...], str, str]:
    """cc's triple, the CPU features cflags enable, its version banner and a digest of its
    predefined macros for cflags; asked once per process for each cc and flag set."""
    triple = _run([cc, "-dumpmachine"]).strip()
    banner = _run([cc, "--version"]).splitlines()[0].strip()
    macros = _run([cc, *cflags, "-dM", "-E", "-x", "c", "-"], "")
    defined = set(re.findall(r"#define (\w+)", macros))
    features = tuple(sorted({f for m, f in FEATURE_MACROS.items() if m in defined}))
    digest = hashlib.sha256("\n".join(sorted(macros.splitlines())).encode()).hexdigest()
    return triple, features, banner, digest


def _default_cc() -> str:
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise CompileError("no C compiler found: install gcc or set CC")
    return cc


def resolve_target(spec: str | dict[str, Any] | Target | None = None) -> Target:
    """Resolve "c" or {"kind": "c", "cc": ..., "mcpu": ..., "cflags": [...]} to a Target."""
    if isinstance(spec, Target):
        return spec
    spec = {"kind": "c"} if spec in (None, "c") else spec
    if isinstance(spec, str) or spec.get("kind", "c") != "c":
        raise CompileError(f"unknown target {spec!r}; use 'c' or a dict with kind 'c'")
    unknown = set(spec) - {"kind", "cc", "mcpu", "cflags"}
    if unknown:
        raise CompileError(f"unknown target options {sorted(unknown)}; known: cc, mcpu, cflags")
    cc = spec.get("cc") or _default_cc()
    cc_triple = _probe(cc, ())[0]
    mcpu = spec.get("mcpu")
    is_x86 = cc_triple.startswith(("x86_64", "i686", "i386"))
    if mcpu:
        arch_flags = (f"-march={mcpu}",) if is_x86 else (f"-mcpu={mcpu}",)
    elif _native_ok(cc):
        arch_flags = ("-march=native",) if is_x86 else ("-mcpu=native",)
    else:
        arch_flags = ()
    if is_x86:
        arch_flags += X86_FLAGS
    cflags = BASE_FLAGS + arch_flags + tuple(spec.get("cflags", ()))
    return Target(cc, cflags, *_probe(cc, cflags))


def _native_ok(cc: str) -> bool:
    """Whether cc compiles for this very machine (not a cross compiler)."""
    import platform

    return _probe(cc, ())[0].split("-")[0] == platform.machine()
