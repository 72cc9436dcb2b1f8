"""kiln's thread pool (kiln/codegen/threadpool.py) in a C program of its own: every iteration
runs exactly once over many jobs and team sizes, two callers at once, a nested call, a forked
child; a caller never waits for a worker that has not started; ThreadSanitizer-clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.codegen.threadpool import SERIAL_POOL_SOURCE, THREADPOOL_SOURCE

HARNESS = r"""
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
void kiln_set_num_threads(int n);

#define MAX_TRIPS 4096
struct marks { _Atomic int hits[MAX_TRIPS]; };

static void mark(const void* ctx, int64_t lo, int64_t hi) {
    struct marks* m = (struct marks*)ctx;
    for (int64_t i = lo; i < hi; ++i) atomic_fetch_add(&m->hits[i], 1);
}

/* every iteration of `jobs` jobs of 1..MAX_TRIPS trips ran exactly once */
static int check_jobs(int jobs, unsigned seed) {
    static _Thread_local struct marks m; /* each caller its own */
    for (int j = 0; j < jobs; ++j) {
        const int64_t trips = 1 + (int64_t)(rand_r(&seed) % MAX_TRIPS);
        for (int64_t i = 0; i < trips; ++i) atomic_store(&m.hits[i], 0);
        kiln_parallel(mark, &m, trips);
        for (int64_t i = 0; i < trips; ++i)
            if (atomic_load(&m.hits[i]) != 1) {
                printf("job %d: iteration %ld of %ld ran %d times\n", j, (long)i, (long)trips,
                       atomic_load(&m.hits[i]));
                return 1;
            }
    }
    return 0;
}

static void* other_caller(void* arg) {
    kiln_set_num_threads(2);
    return (void*)(intptr_t)check_jobs(2000, (unsigned)(intptr_t)arg);
}

static _Atomic int nested_ok;
static void nested(const void* ctx, int64_t lo, int64_t hi) {
    (void)ctx;
    for (int64_t i = lo; i < hi; ++i) nested_ok += check_jobs(1, (unsigned)i) == 0;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void wait_a_while(const void* ctx, int64_t lo, int64_t hi) {
    (void)ctx; (void)lo; (void)hi;
}

int main(void) {
    for (int threads = 1; threads <= 4; ++threads) {
        kiln_set_num_threads(threads);
        if (kiln_threads() != threads) {
            printf("team %d != %d\n", kiln_threads(), threads);
            return 1;
        }
        if (check_jobs(3000, 7u + threads)) return 1;
    }
    /* two callers at once: one holds the pool, the other runs its loops alone */
    pthread_t t;
    kiln_set_num_threads(3);
    pthread_create(&t, NULL, other_caller, (void*)5);
    const int mine = check_jobs(2000, 11u);
    void* theirs;
    pthread_join(t, &theirs);
    if (mine || theirs) { printf("concurrent callers failed\n"); return 1; }
    /* a task that calls kiln_parallel runs that loop itself */
    kiln_parallel(nested, NULL, 6);
    if (nested_ok != 6) { printf("nested: %d of 6\n", nested_ok); return 1; }
    /* a forked child starts workers of its own */
    pid_t pid = fork();
    if (pid == 0) { kiln_set_num_threads(2); _exit(check_jobs(500, 3u)); }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { printf("child failed\n"); return 1; }
    /* after the workers went to sleep, a job does not wait for them to wake */
    kiln_set_num_threads(2);
    struct timespec idle = {0, 50 * 1000 * 1000};
    nanosleep(&idle, NULL);
    const double start = seconds();
    kiln_parallel(wait_a_while, NULL, 2);
    printf("after idle: %.1f us\n", (seconds() - start) * 1e6);
    if (check_jobs(100, 1u)) return 1;
    printf("ok\n");
    return 0;
}
"""


def _build(tmp_path: Path, pool: str, *flags: str) -> Path:
    source = tmp_path / "pool_test.c"
    source.write_text(pool + "#include <pthread.h>\n" + HARNESS)
    program = tmp_path / "pool_test"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                    *flags, str(source), "-o", str(program)], check=True, capture_output=True)
    return program


def test_every_iteration_runs_once_on_any_team(tmp_path):
    done = subprocess.run([str(_build(tmp_path, THREADPOOL_SOURCE))], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stdout + done.stderr


def test_thread_sanitizer_finds_no_race(tmp_path):
    try:
        program = _build(tmp_path, THREADPOOL_SOURCE, "-fsanitize=thread", "-g")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no ThreadSanitizer here: {e.stderr.decode()[:200]}")
    # (the child of a multi-threaded fork may start threads: the pool's own case)
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=300,
                          env={"TSAN_OPTIONS": "die_after_fork=0"})
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stdout + done.stderr
    assert "WARNING: ThreadSanitizer" not in done.stderr, done.stderr[:4000]


def test_the_serial_pool_runs_every_loop_whole(tmp_path):
    # the Model Library Format's pool: the same contract in the caller alone
    stub = SERIAL_POOL_SOURCE + "void kiln_set_num_threads(int n) { (void)n; }\n"
    harness_main = HARNESS.replace("if (kiln_threads() != threads)", "if (kiln_threads() != 1)")
    source = tmp_path / "serial.c"
    source.write_text(stub + "#include <pthread.h>\n#include <unistd.h>\n" + harness_main)
    program = tmp_path / "serial"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                    str(source), "-o", str(program)], check=True, capture_output=True)
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stdout + done.stderr


pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
