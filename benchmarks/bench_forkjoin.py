"""Fork/join cost of kiln's thread pool next to OpenMP's (libgomp), in C programs of their own.

    python -m benchmarks.bench_forkjoin [--threads 2] [--part-us 2] [--jobs 100000]

Each job splits `threads` parts of `part-us` microseconds of busy work among the threads
(kiln: kiln_parallel; OpenMP: a `parallel for schedule(static)`); a job's time over the
ideal (one part's time) is what forking and joining cost.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from kiln.codegen.threadpool import THREADPOOL_SOURCE

COMMON = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static double part_s;
static void busy(void) { const double end = now() + part_s; while (now() < end) { } }
"""

KILN_MAIN = r"""
void kiln_set_num_threads(int n);
static void task(const void* ctx, int64_t lo, int64_t hi) {
    (void)ctx;
    for (int64_t i = lo; i < hi; ++i) busy();
}
static void job(int threads) { kiln_parallel(task, NULL, threads); }
static void start(int threads) { kiln_set_num_threads(threads); }
"""

OMP_MAIN = r"""
#include <omp.h>
static void job(int threads) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < threads; ++i) busy();
}
static void start(int threads) { omp_set_num_threads(threads); }
"""

DRIVER = r"""
int main(int argc, char** argv) {
    const int threads = atoi(argv[1]), jobs = atoi(argv[3]);
    part_s = atof(argv[2]) * 1e-6;
    start(threads);
    for (int i = 0; i < 1000; ++i) job(threads);
    const double begin = now();
    for (int i = 0; i < jobs; ++i) job(threads);
    printf("%.3f\n", (now() - begin) / jobs * 1e6);
    return 0;
}
"""


def _program(folder: Path, name: str, source: str, flag: str) -> Path:
    (folder / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-O2", flag, str(folder / f"{name}.c"), "-o", str(folder / name)],
                   check=True)
    return folder / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part-us", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-forkjoin-") as tmp:
        folder = Path(tmp)
        programs = {"kiln pool": _program(folder, "pool", THREADPOOL_SOURCE + COMMON + KILN_MAIN
                                          + DRIVER, "-pthread"),
                    "OpenMP": _program(folder, "omp", COMMON + OMP_MAIN + DRIVER, "-fopenmp")}
        for label, program in programs.items():
            run = [str(program), str(args.threads), str(args.part_us), str(args.jobs)]
            us = float(subprocess.run(run, check=True, capture_output=True,
                                      text=True).stdout)
            print(f"{label:9}: {us:.3f} us a job of {args.threads} parts of {args.part_us:g} us "
                  f"({us - args.part_us:.3f} us over the ideal)")


if __name__ == "__main__":
    main()
