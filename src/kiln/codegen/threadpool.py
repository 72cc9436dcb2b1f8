"""kiln's thread pool (C, linked into every library): how kernels split their loops.

A kernel hands `kiln_parallel(task, ctx, trips)` a task (a static function of its own that
runs the iterations [lo, hi) of its loop nest) and the nest's trip count. The trips are cut
into one equal part per thread; the caller claims parts too, and keeps claiming while any
are left, so it never waits for a worker that has not started: a worker that is asleep, or
whose virtual CPU the hypervisor has parked (measured here: ~8 ms to wake an idle vCPU),
finds the parts taken when it arrives. The call returns when every part is done, having
waited only for parts that a worker is running. OpenMP's fork/join, which this replaced,
waits for every thread of the team at each region's end: a small model's run after 0.2 s
idle took 12 ms instead of 0.4 ms at two threads (benchmarks/bench_small.py --idle 0.2).

Workers spin on the job counter for SPIN_NS after their last part (kernels follow each other
within microseconds), then sleep on a futex; every wait loop yields the CPU now and then.
One caller at a time owns the pool; a second caller (another Python thread running another
model) or a nested call runs its loop alone.
Parts are claimed by compare-and-swap on one word holding (job epoch, next part): a worker
that read a finished job's description can never claim a part of the next one.
"""

THREADPOOL_API = r"""/* kiln's thread pool (kiln/codegen/threadpool.py): task(ctx, lo, hi) runs
   iterations [lo, hi) of a loop of `trips`; kiln_parallel returns when all have run. */
typedef void (*kiln_task)(const void* ctx, int64_t lo, int64_t hi);
void kiln_parallel(kiln_task task, const void* ctx, int64_t trips);
int kiln_threads(void); /* the threads this thread's kiln_parallel calls split work among */
"""

# How long a worker spins waiting for the next job before it sleeps.
SPIN_NS = 2_000_000

THREADPOOL_SOURCE = r"""#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
@API@
#define KILN_MAX_THREADS 256
#define KILN_SPIN_NS @SPIN@LL
#define KILN_YIELD_EVERY 64

#if defined(__x86_64__) || defined(__i386__)
#define kiln_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define kiln_relax() __asm__ __volatile__("yield")
#else
#define kiln_relax() ((void)0)
#endif

static struct {
    /* the job: written by its caller before the epoch names it */
    _Atomic(kiln_task) task;
    _Atomic(const void*) ctx;
    _Atomic int64_t trips;
    _Atomic int parts;
    _Atomic uint64_t claim;  /* epoch << 32 | next unclaimed part */
    _Atomic int done;        /* parts finished */
    _Atomic uint32_t epoch;  /* the futex sleepers wait on: bumped for each job */
    _Atomic int sleepers;
    _Atomic int team;        /* the job's threads: workers 1 .. team - 1 take part */
    _Atomic int owned;       /* a caller holds the pool */
    _Atomic int started;     /* workers created (created under start_lock) */
} pool;
/* Each calling thread's team size (kiln_set_num_threads): two executors with their own
   thread counts can run at once in two threads. */
static _Thread_local int team = 1;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

/* One step of a wait loop: a pause, and every KILN_YIELD_EVERY steps the CPU to any other
   thread that wants it (a worker and its caller put on one CPU by the scheduler would
   otherwise wait for the other's time slice to end: ~2 ms stalls, seen here). */
static inline void kiln_pause(int spins) {
    kiln_relax();
    if (spins % KILN_YIELD_EVERY == 0) sched_yield();
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Claim and run parts of the job of `epoch` until none is left. */
static void run_parts(uint32_t epoch) {
    for (;;) {
        uint64_t seen = atomic_load_explicit(&pool.claim, memory_order_acquire);
        if ((uint32_t)(seen >> 32) != epoch) return;
        const kiln_task task = atomic_load_explicit(&pool.task, memory_order_relaxed);
        const void* ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        const int64_t trips = atomic_load_explicit(&pool.trips, memory_order_relaxed);
        const int parts = atomic_load_explicit(&pool.parts, memory_order_relaxed);
        const int64_t part = (int64_t)(seen & 0xffffffffu);
        if (part >= parts) return;
        /* success proves the claim word did not move since it was read, so the job read
           above is this epoch's (a caller rewrites it only after every part is done) */
        if (!atomic_compare_exchange_weak_explicit(&pool.claim, &seen, seen + 1,
                                                   memory_order_acq_rel, memory_order_acquire))
            continue;
        task(ctx, trips * part / parts, trips * (part + 1) / parts);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static void* worker(void* arg) {
    const int index = (int)(intptr_t)arg; /* 1 .. KILN_MAX_THREADS - 1; the caller is 0 */
    uint32_t seen = atomic_load(&pool.epoch);
    for (;;) {
        uint32_t epoch = atomic_load_explicit(&pool.epoch, memory_order_acquire);
        const int64_t until = now_ns() + KILN_SPIN_NS;
        for (int spins = 1; epoch == seen; spins++) {
            kiln_pause(spins);
            epoch = atomic_load_explicit(&pool.epoch, memory_order_acquire);
            if ((spins & 255) == 0 && now_ns() > until) break;
        }
        if (epoch == seen) {
            atomic_fetch_add(&pool.sleepers, 1);
            if (atomic_load(&pool.epoch) == seen)
                syscall(SYS_futex, &pool.epoch, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_fetch_sub(&pool.sleepers, 1);
            continue;
        }
        seen = epoch;
        if (index < atomic_load_explicit(&pool.team, memory_order_relaxed)) run_parts(epoch);
    }
    return NULL;
}

/* A child of fork() has none of its parent's workers: it starts its own when it asks. */
static void forget_workers(void) {
    pthread_mutex_init(&start_lock, NULL);
    pool.started = 0;
    atomic_store(&pool.owned, 0);
    atomic_store(&pool.sleepers, 0);
}

void kiln_set_num_threads(int n) {
    static int forks_watched;
    n = n < 1 ? 1 : (n > KILN_MAX_THREADS ? KILN_MAX_THREADS : n);
    if (n - 1 > pool.started) { /* start the workers now, not inside the first run */
        pthread_mutex_lock(&start_lock);
        if (!forks_watched) forks_watched = pthread_atfork(NULL, NULL, forget_workers) == 0;
        while (pool.started < n - 1) {
            pthread_t thread;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            const int failed = pthread_create(&thread, &attr, worker,
                                              (void*)(intptr_t)(pool.started + 1));
            pthread_attr_destroy(&attr);
            if (failed) break; /* run on the threads there are */
            pool.started++;
        }
        pthread_mutex_unlock(&start_lock);
    }
    team = n < pool.started + 1 ? n : pool.started + 1;
}

int kiln_threads(void) { return team; }

void kiln_parallel(kiln_task task, const void* ctx, int64_t trips) {
    const int threads = team;
    if (trips <= 0) return;
    if (threads <= 1 || trips == 1 || atomic_exchange_explicit(&pool.owned, 1,
                                                                memory_order_acquire)) {
        task(ctx, 0, trips);
        return;
    }
    const int parts = trips < threads ? (int)trips : threads;
    atomic_store_explicit(&pool.task, task, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.trips, trips, memory_order_relaxed);
    atomic_store_explicit(&pool.parts, parts, memory_order_relaxed);
    atomic_store_explicit(&pool.team, threads, memory_order_relaxed);
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    const uint32_t epoch = atomic_load_explicit(&pool.epoch, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool.claim, (uint64_t)epoch << 32, memory_order_release);
    atomic_store(&pool.epoch, epoch);
    if (atomic_load(&pool.sleepers) > 0)
        syscall(SYS_futex, &pool.epoch, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    run_parts(epoch);
    for (int spins = 1; atomic_load_explicit(&pool.done, memory_order_acquire) < parts; spins++)
        kiln_pause(spins);
    atomic_store_explicit(&pool.owned, 0, memory_order_release);
}
"""

THREADPOOL_SOURCE = (THREADPOOL_SOURCE.replace("@API@", THREADPOOL_API)
                     .replace("@SPIN@", str(SPIN_NS)))

# The pool of a build without threads (a Model Library Format archive, kiln/export/mlf.py):
# every loop runs whole in the caller.
SERIAL_POOL_SOURCE = r"""#include <stdint.h>
""" + THREADPOOL_API + r"""
void kiln_parallel(kiln_task task, const void* ctx, int64_t trips) {
    if (trips > 0) task(ctx, 0, trips);
}
int kiln_threads(void) { return 1; }
"""
