"""The C prelude every kernel source starts with: headers and small shared helpers."""

PRELUDE = r"""#include <math.h>
#include <omp.h>
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
"""


# Linked into every library: the runtime sets the thread count before each run, so it is a
# run-time choice, not a property of the library.
SUPPORT_NAME = "kiln_support"
SUPPORT_SOURCE = r"""#include <omp.h>
void kiln_set_num_threads(int n) { omp_set_num_threads(n > 0 ? n : 1); }
int kiln_max_threads(void) { return omp_get_max_threads(); }
"""
