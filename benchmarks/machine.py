"""The machine a benchmark ran on: CPU model, vector features, clock, and its fp32 peak.

The peak is measured, not assumed: a tiny C program (gcc -O3 -march=native) runs independent
FMA chains held in registers on every thread at once, once with 256-bit and (where the CPU
has AVX-512) once with 512-bit vectors; the faster is the peak. Nominal figures (cores x
clock x 2 FMA units x lanes x 2) are reported beside it, because a nominal clock (the
"cpu MHz" of /proc/cpuinfo, often the base or TSC clock in a VM) and the FMA width a core
really executes (Zen 4 splits a 512-bit FMA in two 256-bit halves; Zen 5 does not) both
make the nominal figure wrong in either direction.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

FMA_UNITS = 2  # assumed for the nominal figure: every recent x86 core has two FMA pipes

_FMA_LOOP = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHAINS 16
static long iters;
volatile float sink[256];
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
static void* chains(void* arg) {
  VEC acc[CHAINS]; VEC m = SET1(0.999999f), c = SET1(1e-7f);
  for (int i = 0; i < CHAINS; i++) acc[i] = SET1((float)i);
  for (long n = 0; n < iters; n++) {
    #pragma GCC unroll 16
    for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], m, c);
  }
  VEC s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = ADD(s, acc[i]);
  sink[(long)arg] = s[0];
  return 0;
}
int main(int argc, char** argv) {
  int threads = atoi(argv[1]); iters = atol(argv[2]);
  pthread_t t[256]; double t0 = now();
  for (long i = 0; i < threads; i++) pthread_create(&t[i], 0, chains, (void*)i);
  for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
  printf("%f\n", 2.0 * LANES * CHAINS * (double)iters * threads / (now() - t0) / 1e9);
  return 0;
}
"""
_VARIANTS = {  # lanes -> the macros that pick the vector type
    8: "-DVEC=__m256 -DSET1=_mm256_set1_ps -DFMA=_mm256_fmadd_ps -DADD=_mm256_add_ps -DLANES=8",
    16: "-DVEC=__m512 -DSET1=_mm512_set1_ps -DFMA=_mm512_fmadd_ps -DADD=_mm512_add_ps "
        "-DLANES=16",
}


@dataclass
class Machine:
    """What the report says about the host; peaks in GFLOP/s keyed by thread count."""

    cpu: str
    cpu_id: str  # vendor, family and model numbers: what names the microarchitecture
    cores: int
    vector_flags: list[str]
    clock_mhz: float  # from /proc/cpuinfo "cpu MHz"
    nominal_lanes: int  # 16 with avx512f, else 8 with avx2, else 4
    nominal_peak_per_core: float  # clock x FMA_UNITS x lanes x 2
    measured: dict[int, dict[int, float]]  # threads -> {lanes: GFLOP/s}
    peak: dict[int, float]  # threads -> the best measured figure (the report's denominator)

    def as_dict(self) -> dict:
        return {**asdict(self), "implied_clock_ghz": self.implied_clock_ghz(min(self.peak))}

    def implied_clock_ghz(self, threads: int = 1) -> float:
        """The clock the measured peak implies at FMA_UNITS x the fastest lanes x 2 per cycle."""
        lanes = max(self.measured[threads], key=self.measured[threads].get)
        return self.peak[threads] / threads / (FMA_UNITS * lanes * 2)


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _measure(lanes: int, threads: int, workdir: Path) -> float | None:
    """Best of three runs of the FMA loop, or None when gcc cannot build it."""
    exe = workdir / f"fma{lanes}"
    if not exe.exists():
        src = workdir / "fma.c"
        src.write_text(_FMA_LOOP)
        cmd = ["gcc", "-O3", "-march=native", "-pthread", *_VARIANTS[lanes].split(),
               str(src), "-o", str(exe)]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
    runs = [subprocess.run([str(exe), str(threads), "30000000"], capture_output=True,
                           text=True, check=True) for _ in range(3)]
    return max(float(r.stdout) for r in runs)


def best_of(a: Machine, b: Machine) -> Machine:
    """a with each measured figure the better of a's and b's (another process sharing the
    cores during one probe lowers it; nothing raises it)."""
    measured = {t: {w: max(v, b.measured.get(t, {}).get(w, 0.0)) for w, v in m.items()}
                for t, m in a.measured.items()}
    peak = {t: max(a.peak[t], b.peak.get(t, 0.0)) for t in a.peak}
    return replace(a, measured=measured, peak=peak)


def probe(thread_counts: list[int]) -> Machine:
    """Describe this machine and measure its fp32 FMA peak at each thread count."""
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    vector = [f for f in flags if re.fullmatch(r"avx\w*|fma|sse4_2", f)]
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    clock = float(info.get("cpu MHz", "0"))
    measured: dict[int, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-peak-") as tmp:
        for threads in thread_counts:
            measured[threads] = {}
            for width in [8, 16] if lanes == 16 else [8]:
                gflops = _measure(width, threads, Path(tmp))
                if gflops is not None:
                    measured[threads][width] = gflops
    nominal = clock / 1e3 * FMA_UNITS * lanes * 2
    peak = {t: max(m.values(), default=nominal * t) for t, m in measured.items()}
    cpu_id = (f"{info.get('vendor_id', '?')} family {info.get('cpu family', '?')} "
              f"model {info.get('model', '?')}")
    return Machine(cpu=info.get("model name", "unknown"), cpu_id=cpu_id, cores=os.cpu_count() or 1,
                   vector_flags=vector, clock_mhz=clock, nominal_lanes=lanes,
                   nominal_peak_per_core=nominal, measured=measured, peak=peak)
