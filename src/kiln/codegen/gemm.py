"""The GEMM support unit: float32 C (+)= A B with register-blocked micro-kernels, compiled once
per target and linked into every library (like the support unit of prelude.py).

Micro-kernels, chosen by the preprocessor from the target's flags (never at run time):
- AVX-512F: 12 rows x 32 columns (24 zmm accumulators; A broadcast, B two vector loads);
  the column edge with masked loads and stores, 16 columns or fewer with one vector.
- AVX2 + FMA: 6 rows x 16 columns (12 ymm accumulators); the column edge through a small
  buffer (masked stores are slow on AMD).
- plain C: 4 rows x 16 columns in loops the compiler vectorizes (any other CPU, aarch64).
Every element of C is one chain of multiply-adds over k in order, the same in full and edge
tiles, so results do not depend on how a kernel splits C among threads.

Driver `kiln_sgemm(m, n, k, g)` (a serial call: kernels split C among threads and call it
per part). Loops: NC columns, then KC-deep slices of k, then MR-row strips, then NR-column
tiles. B is read from column panels (kiln/ops/layout.py): packed at compile time (a
constant weight), written by the kernel (conv's im2col tiles), or packed here from a
strided B into a per-thread buffer, one KC x NC block at a time (it stays in L2 while every
row strip of A passes over it). A is read in place through its strides (a strip of MR rows x
KC stays in L1 across the column tiles); a strip of fewer rows has a micro-kernel of its own.
Prefetches: the next tile's C (C is often bigger than L2) and, while the first row strip
passes over a slice of a B packed at compile time (a weight read from memory), the next
slice. After the last slice of k, each finished tile goes to `epilogue` while it is in
cache: the kernel's bias, activation and residual chain (rendered per kernel,
kernels/sgemm.py). Buffers are per thread (kiln_scratch), kept between calls.
Measured on Zen 5 (one thread): 1024^3 at ~230 GFLOP/s, 1.9x NumPy's OpenBLAS sgemm.
"""

from __future__ import annotations

from ..ops.layout import PANEL

GEMM_NAME = "kiln_gemm"

KC = 256  # depth of a k slice: a 12 x KC strip of A is 12 KiB (L1)
NC = 512  # columns of a B block: KC x NC floats are 512 KiB (L2)
ROW_STEP = 12  # every micro-kernel's row count divides this: split C's rows at multiples of it

# The interface kernels call (the prelude includes it, so the unit and kernels agree).
GEMM_API = r"""/* The GEMM support unit (kiln/codegen/gemm.py): C[m x n] (+)= A[m x k] B[k x n]
   in float32. */
/* A finished tile: C[m0 .. m0 + rows][n0 .. n0 + cols] (at most 12 x 32), its first element
   at c. */
typedef void (*kiln_tile_fn)(void* ctx, const float* c, int64_t ldc, int64_t m0, int64_t n0,
                             int64_t rows, int64_t cols);
struct kiln_gemm {
    const float* a; int64_t a_rs, a_cs; /* A[i][p] = a[i * a_rs + p * a_cs] */
    const float* b; int64_t b_rs, b_cs; /* B[p][j] = b[p * b_rs + j * b_cs] (b_panels NULL) */
    const float* b_panels;              /* or B in column panels: panel q at b_panels + */
    int64_t b_panel_stride;             /* q * b_panel_stride, B[p][q * PANEL + j] at its */
                                        /* [p * PANEL + j] */
    float* c; int64_t ldc;              /* C[i][j] = c[i * ldc + j] */
    int accumulate;                     /* add to C instead of overwriting it */
    kiln_tile_fn epilogue;              /* called on each finished tile, or NULL */
    void* epilogue_ctx;
};
void kiln_sgemm(int64_t m, int64_t n, int64_t k, const struct kiln_gemm* g);
/* A per-thread buffer of count floats, 64-byte aligned (slot 0: the driver's; 1 and 2:
   kernels'), kept for the thread's next call. */
float* kiln_scratch(int slot, size_t count);
/* What a kernel's tile epilogue needs: its arguments and where the call's C starts. */
struct kiln_tile { void* const* args; int64_t origin, row, col; };
"""

# The driver and micro-kernels: plain C11 plus, on x86, the intrinsics the target's flags
# allow (the Model Library Format ships it as it is: kiln/export/mlf.py).
_DRIVER = r"""#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
@API@
#define PANEL @PANEL@
#define KC @KC@
#define NC @NC@

/* ukernel: C[rows x cols] (+)= A[rows x kc] B[kc x NR] for rows <= MR, cols <= NR;
   A[r][p] = a[r * a_rs + p * a_ks]; B rows PANEL apart (zero-padded past cols). Each row
   count has its own copy (R a constant: full unrolling, only R rows of A read), which
   changes no element's arithmetic. */
#if defined(__AVX512F__)
#define MR 12
#define NR 32
static inline __attribute__((always_inline)) void ukernel_tile(
        const int R, const int V, int64_t kc, const float* restrict a, int64_t a_rs,
        int64_t a_ks, const float* restrict b, const float* pf, float* restrict c, int64_t ldc,
        int64_t cols, int load) {
    __mmask16 mask[2];
    mask[0] = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    mask[1] = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v)
            acc[r][v] = load ? _mm512_maskz_loadu_ps(mask[v], c + r * ldc + 16 * v)
                             : _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        __m512 bv[2];
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
        if (pf) {
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) __builtin_prefetch(pf + 16 * v, 0, 3);
            pf += PANEL;
        }
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            const __m512 av = _mm512_set1_ps(a[r * a_rs]);
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += a_ks;
        b += PANEL;
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
}
/* 16 columns or fewer take one vector (V = 1): half the work of an edge tile */
static inline __attribute__((always_inline)) void ukernel_rows(
        const int R, int64_t kc, const float* restrict a, int64_t a_rs, int64_t a_ks,
        const float* restrict b, const float* pf, float* restrict c, int64_t ldc,
        int64_t cols, int load) {
    if (cols > 16) ukernel_tile(R, 2, kc, a, a_rs, a_ks, b, pf, c, ldc, cols, load);
    else ukernel_tile(R, 1, kc, a, a_rs, a_ks, b, pf, c, ldc, cols, load);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define MR 6
#define NR 16
static inline __attribute__((always_inline)) void ukernel_rows(
        const int R, int64_t kc, const float* restrict a, int64_t a_rs, int64_t a_ks,
        const float* restrict b, const float* pf, float* restrict c, int64_t ldc,
        int64_t cols, int load) {
    float edge[MR][NR] __attribute__((aligned(32)));
    float* restrict out = c;
    int64_t ld = ldc;
    if (cols < NR) { /* through a buffer: masked stores are slow on AMD */
        memset(edge, 0, sizeof edge);
        for (int r = 0; load && r < R; ++r)
            for (int j = 0; j < cols; ++j) edge[r][j] = c[r * ldc + j];
        out = &edge[0][0];
        ld = NR;
    }
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        acc[r][0] = load ? _mm256_loadu_ps(out + r * ld) : _mm256_setzero_ps();
        acc[r][1] = load ? _mm256_loadu_ps(out + r * ld + 8) : _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < kc; ++p) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        if (pf) {
            __builtin_prefetch(pf, 0, 3);
            pf += PANEL;
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
            const __m256 av = _mm256_broadcast_ss(a + r * a_rs);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
        a += a_ks;
        b += PANEL;
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(out + r * ld, acc[r][0]);
        _mm256_storeu_ps(out + r * ld + 8, acc[r][1]);
    }
    if (cols < NR) {
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < cols; ++j) c[r * ldc + j] = edge[r][j];
    }
}
#else
#define MR 4
#define NR 16
static inline __attribute__((always_inline)) void ukernel_rows(
        const int R, int64_t kc, const float* restrict a, int64_t a_rs, int64_t a_ks,
        const float* restrict b, const float* pf, float* restrict c, int64_t ldc,
        int64_t cols, int load) {
    (void)pf;
    float acc[MR][NR];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < NR; ++j) acc[r][j] = load && j < cols ? c[r * ldc + j] : 0;
    for (int64_t p = 0; p < kc; ++p) {
        for (int r = 0; r < R; ++r) {
            const float av = a[r * a_rs];
            for (int j = 0; j < NR; ++j) acc[r][j] += av * b[j];
        }
        a += a_ks;
        b += PANEL;
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < cols; ++j) c[r * ldc + j] = acc[r][j];
}
#endif

#define ROWS(R) case R: ukernel_rows(R, kc, a, a_rs, a_ks, b, pf, c, ldc, cols, load); break;
/* pf: where to prefetch B from as the k loop goes (the next k slice of a panel read from
   memory), or NULL */
static void ukernel(int64_t kc, const float* restrict a, int64_t a_rs, int64_t a_ks,
                    const float* restrict b, const float* pf, float* restrict c, int64_t ldc,
                    int64_t rows, int64_t cols, int load) {
    switch (rows) {
#if MR > 6
    ROWS(12) ROWS(11) ROWS(10) ROWS(9) ROWS(8) ROWS(7)
#endif
#if MR > 4
    ROWS(6) ROWS(5)
#endif
    ROWS(4) ROWS(3) ROWS(2) ROWS(1)
    }
}

/* B[pc .. pc + kc][jc .. jc + nc] as column panels [nc / PANEL][kc][PANEL], zero-padded. */
static void pack_b(const struct kiln_gemm* g, int64_t pc, int64_t jc, int64_t kc, int64_t nc,
                   float* restrict bp) {
    for (int64_t j0 = 0; j0 < nc; j0 += PANEL) {
        float* restrict panel = bp + j0 / PANEL * kc * PANEL;
        const int64_t w = nc - j0 < PANEL ? nc - j0 : PANEL;
        const float* src = g->b + pc * g->b_rs + (jc + j0) * g->b_cs;
        for (int64_t p = 0; p < kc; ++p, src += g->b_rs) {
            float* restrict dst = panel + p * PANEL;
            if (g->b_cs == 1) {
                memcpy(dst, src, (size_t)w * sizeof(float));
            } else {
                for (int64_t j = 0; j < w; ++j) dst[j] = src[j * g->b_cs];
            }
            for (int64_t j = w; j < PANEL; ++j) dst[j] = 0;
        }
    }
}

void kiln_sgemm(int64_t m, int64_t n, int64_t k, const struct kiln_gemm* g) {
    /* a run-time B: one KC x NC block at most, in whole panels (kernels/sgemm.py's
       pack_floats states the same) */
    const int64_t bk = k < 1 ? 1 : (k < KC ? k : KC), bn = n < 1 ? 1 : (n < NC ? n : NC);
    float* bbuf = g->b_panels ? NULL
                              : kiln_scratch(0, (size_t)(bk * ((bn + PANEL - 1) / PANEL * PANEL)));
    const int64_t slices = k > 0 ? (k + KC - 1) / KC : 1; /* k = 0: one empty slice, C = 0 */
    for (int64_t jc = 0; jc < n; jc += NC) {
        const int64_t nc = n - jc < NC ? n - jc : NC;
        for (int64_t s = 0; s < slices; ++s) {
            const int64_t pc = s * KC, kc = k - pc < KC ? k - pc : KC;
            const float* bp = bbuf;
            int64_t b_stride = kc * PANEL;
            if (bbuf) {
                pack_b(g, pc, jc, kc, nc, bbuf);
            } else {
                bp = g->b_panels + jc / PANEL * g->b_panel_stride + pc * PANEL;
                b_stride = g->b_panel_stride;
            }
            const int load = g->accumulate || s > 0, last = s == slices - 1;
            for (int64_t ic = 0; ic < m; ic += MR) {
                const int64_t rows = m - ic < MR ? m - ic : MR;
                const float* a = g->a + ic * g->a_rs + pc * g->a_cs;
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t cols = nc - jr < NR ? nc - jr : NR;
                    float* c = g->c + ic * g->ldc + jc + jr;
                    /* the next tile's C, so that it arrives while this one is computed
                       (C is often bigger than L2: 1.08x on a 1024^3 product) */
                    const int more = jr + NR < nc;
                    const float* next = more ? c + NR : c - jr + MR * g->ldc;
                    const int64_t next_rows = more ? rows : (m - ic - MR < MR ? m - ic - MR : MR);
                    for (int64_t r = 0; r < next_rows; ++r) {
                        __builtin_prefetch(next + r * g->ldc, 1, 3);
                        __builtin_prefetch(next + r * g->ldc + 16, 1, 3);
                    }
                    const float* b = bp + jr / PANEL * b_stride + jr % PANEL;
                    /* a packed B comes from memory: while the first row strip passes over
                       this slice, fetch the next one (the other strips find it in cache) */
                    const float* pf = !bbuf && ic == 0 && s + 1 < slices ? b + KC * PANEL : NULL;
                    ukernel(kc, a, g->a_rs, g->a_cs, b, pf, c, g->ldc, rows, cols, load);
                    if (last && g->epilogue)
                        g->epilogue(g->epilogue_ctx, c, g->ldc, ic, jc + jr, rows, cols);
                }
            }
        }
    }
}
"""

# kiln_scratch for libraries: per-thread buffers from the heap, kept between calls.
_SCRATCH = r"""#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* Per-thread buffers, freed when their thread ends (the key is deleted if the library is
   unloaded first, so no destructor runs in unmapped code). */
#define SLOTS 3
struct scratch { float* buf[SLOTS]; size_t size[SLOTS]; };
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_ready;

static void scratch_free(void* p) {
    struct scratch* s = p;
    for (int i = 0; i < SLOTS; ++i) free(s->buf[i]);
    free(s);
}
static void scratch_init(void) {
    scratch_ready = pthread_key_create(&scratch_key, scratch_free) == 0;
}
static void __attribute__((destructor)) scratch_fini(void) {
    if (scratch_ready) pthread_key_delete(scratch_key);
}

float* kiln_scratch(int slot, size_t count) {
    pthread_once(&scratch_once, scratch_init);
    struct scratch* s = scratch_ready ? pthread_getspecific(scratch_key) : NULL;
    if (scratch_ready && s == NULL) {
        s = calloc(1, sizeof *s);
        if (s != NULL && pthread_setspecific(scratch_key, s) != 0) { free(s); s = NULL; }
    }
    if (s != NULL && s->size[slot] < count) {
        free(s->buf[slot]);
        s->buf[slot] = aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64);
        s->size[slot] = s->buf[slot] ? count : 0;
    }
    if (s == NULL || s->buf[slot] == NULL) {
        fprintf(stderr, "kiln: cannot allocate a %zu-byte GEMM buffer\n", count * sizeof(float));
        abort();
    }
    return s->buf[slot];
}
"""

GEMM_DRIVER_SOURCE = (_DRIVER.replace("@API@", GEMM_API).replace("@PANEL@", str(PANEL))
                      .replace("@KC@", str(KC)).replace("@NC@", str(NC)))
GEMM_SOURCE = GEMM_DRIVER_SOURCE + _SCRATCH
