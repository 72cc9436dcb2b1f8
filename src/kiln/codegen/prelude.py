"""The C prelude every kernel source starts with: headers and small shared helpers."""

from .gemm import GEMM_API
from .threadpool import THREADPOOL_API, THREADPOOL_SOURCE

PRELUDE = r"""#include <math.h>
#include <stdint.h>
#include <string.h>
#include <float.h>

static inline int64_t kiln_imod_floor(int64_t a, int64_t b) {
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline float kiln_fmod_floor_float(float a, float b) {
    float r = fmodf(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline double kiln_fmod_floor_double(double a, double b) {
    double r = fmod(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t kiln_ipow(int64_t base, int64_t exp) {
    if (exp < 0) return base == 1 ? 1 : (base == -1 ? (exp % 2 ? -1 : 1) : 0);
    int64_t r = 1;
    while (exp) { if (exp & 1) r *= base; base *= base; exp >>= 1; }
    return r;
}
/* expf without libm, so loops calling it vectorize: <= 2 ulp for normal results (Cephes
   polynomial), inf above 88.72, subnormal or 0 below -87.3, NaN for NaN. */
static inline float kiln_expf(float x) {
    float c = x > 89.0f ? 89.0f : x;
    c = c < -105.0f ? -105.0f : c;
    const float t = c * 1.44269504088896341f + 12582912.0f; /* round(c / ln 2) + 1.5 * 2^23 */
    const float k = t - 12582912.0f;
    int32_t ki;
    memcpy(&ki, &t, sizeof ki);
    ki -= 0x4B400000;
    const float r = (c - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t h = ki >> 1; /* 2^k as 2^h * 2^(k-h): both factors stay normal */
    const uint32_t b1 = (uint32_t)(h + 127) << 23, b2 = (uint32_t)(ki - h + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}
/* erff and tanhf without libm, so loops calling them vectorize (a GEMM's GELU epilogue):
   x P(x^2) / Q(x^2), rational fits made for kiln (least squares on the relative error),
   <= 7 ulp (4e-7 absolute) on the clamped ranges, +-1 beyond, NaN for NaN. */
static inline float kiln_erff(float x) {
    const float c = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
    const float t = c * c;
    float p = 1.98648969e-06f;
    p = p * t + 2.84495311e-04f;
    p = p * t + 3.88195620e-03f;
    p = p * t + 5.30973743e-02f;
    p = p * t + 1.93518345e-01f;
    p = p * t + 1.12837914f;
    float q = 3.74133977e-05f;
    q = q * t + 1.18515983e-03f;
    q = q * t + 1.52045184e-02f;
    q = q * t + 1.15338195e-01f;
    q = q * t + 5.04833734e-01f;
    q = q * t + 1.0f;
    const float r = c * p / q;
    return r > 1.0f ? 1.0f : (r < -1.0f ? -1.0f : r);
}
static inline float kiln_tanhf(float x) {
    const float c = x > 9.0f ? 9.0f : (x < -9.0f ? -9.0f : x);
    const float t = c * c;
    float p = 1.33546019e-08f;
    p = p * t + 2.06092853e-05f;
    p = p * t + 3.49561224e-03f;
    p = p * t + 1.33810502e-01f;
    p = p * t + 9.99999980e-01f;
    float q = 7.77660478e-07f;
    q = q * t + 3.28566573e-04f;
    q = q * t + 2.58770870e-02f;
    q = q * t + 4.67143660e-01f;
    q = q * t + 1.0f;
    const float r = c * p / q;
    return r > 1.0f ? 1.0f : (r < -1.0f ? -1.0f : r);
}
""" + THREADPOOL_API + GEMM_API


# Linked into every library: the thread pool (threadpool.py: the runtime sets the thread
# count before each run, so it is a run-time choice, not a property of the library) and the
# weights guard. The guard keeps a truncated file from killing the process: weights read in
# place from a library file (verify="header") are a mapping of that file, and touching a page
# past a shortened file's end raises SIGBUS. The guard maps a zero page there instead and
# marks the range's slot in kiln_guard_lost, which the runtime reports after the run; a fault
# anywhere else goes to the previous handler.
SUPPORT_NAME = "kiln_support"
SUPPORT_SOURCE = THREADPOOL_SOURCE + r"""#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>

#define KILN_GUARD_SLOTS 64
static volatile uintptr_t guard_lo[KILN_GUARD_SLOTS], guard_hi[KILN_GUARD_SLOTS];
static struct sigaction guard_previous;
static uintptr_t guard_page;
volatile sig_atomic_t kiln_guard_lost[KILN_GUARD_SLOTS];

static void guard_handler(int sig, siginfo_t *info, void *context) {
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int k = 0; k < KILN_GUARD_SLOTS; k++) {
        if (at >= guard_lo[k] && at < guard_hi[k]) {
            void *page = (void *)(at & ~(guard_page - 1));
            if (mmap(page, guard_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                     0) != MAP_FAILED) {
                kiln_guard_lost[k] = 1;
                return;
            }
        }
    }
    if (guard_previous.sa_flags & SA_SIGINFO) {
        guard_previous.sa_sigaction(sig, info, context);
    } else if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
        guard_previous.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL); /* the fault repeats on return and takes its default action */
    }
}

/* Guard [start, start + size); returns its slot (to read in kiln_guard_lost and to release),
   or -1 when none is free. */
int kiln_guard_weights(void *start, size_t size) {
    if (guard_page == 0) {
        struct sigaction action = {0};
        action.sa_sigaction = guard_handler;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &guard_previous) != 0) return -1;
        guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
    }
    for (int k = 0; k < KILN_GUARD_SLOTS; k++) {
        if (guard_hi[k] == 0) {
            kiln_guard_lost[k] = 0;
            guard_lo[k] = (uintptr_t)start;
            guard_hi[k] = (uintptr_t)start + size;
            return k;
        }
    }
    return -1;
}

void kiln_guard_release(int slot) {
    if (slot < 0 || slot >= KILN_GUARD_SLOTS) return;
    guard_hi[slot] = 0; /* first: an empty range matches nothing */
    guard_lo[slot] = 0;
}
"""
