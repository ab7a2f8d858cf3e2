/* panel.c - weight matrices in panel layout (see panel.h): packing,
 * unpacking for sgemm, and the small-M products, in AVX-512 intrinsics and
 * in portable GCC vector extensions computing the same sums in the same
 * order. */
#include "capmoe/panel.h"

#include "capmoe/quant.h"

#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PANEL_AVX512 1
#include <immintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define PANEL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PANEL_CLONES
#endif

#define PW CAPMOE_PANEL_COLS
/* The weights are read PF_BYTES ahead into L2 by software prefetch: the
 * hardware prefetcher alone left the cores computing and the memory idle in
 * turns (measured: a 16-sequence decode step of a 0.5 GB BF16 model 26 ms
 * without, 19 ms with; 2 KB ahead into L1, 23 ms). */
#define PF_BYTES 8192
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- layout ----------------------------------------------------------------- */

static size_t n_steps(int K) { return ((size_t)K + 1) / 2; }

size_t capmoe_panel_bytes(capmoe_dtype t, int K) {
    if (t >= CAPMOE_DTYPE_F8E4M3) return capmoe_quant_panel_bytes(t, K);
    return n_steps(K) * 2 * PW * capmoe_dtype_size(t);
}

size_t capmoe_panel_matrix_bytes(capmoe_dtype t, int N, int K) {
    return (size_t)((N + PW - 1) / PW) * capmoe_panel_bytes(t, K);
}

/* Element offset of W[n][k] in the packed matrix (panel.h's layout). */
static inline size_t packed_index(capmoe_dtype t, size_t panel_elems, int n, int k) {
    size_t base = (size_t)(n / PW) * panel_elems + (size_t)(k / 2) * 2 * PW;
    size_t c = (size_t)(n % PW);
    return t == CAPMOE_DTYPE_BF16 ? base + 2 * c + (size_t)(k & 1) : base + (size_t)(k & 1) * PW + c;
}

void capmoe_panel_pack_rows(void *dst, capmoe_dtype t, int K, int n0, const void *W,
                            size_t ldw, int N) {
    size_t es = capmoe_dtype_size(t), panel_elems = capmoe_panel_bytes(t, K) / es;
    for (int n = 0; n < N; n++) {
        if (es == 2) {
            const uint16_t *w = (const uint16_t *)W + (size_t)n * ldw;
            uint16_t *d = dst;
            for (int k = 0; k < K; k++) d[packed_index(t, panel_elems, n0 + n, k)] = w[k];
        } else {
            const uint32_t *w = (const uint32_t *)W + (size_t)n * ldw;
            uint32_t *d = dst;
            for (int k = 0; k < K; k++) d[packed_index(t, panel_elems, n0 + n, k)] = w[k];
        }
    }
}

void capmoe_panel_pack(void *dst, const void *W, capmoe_dtype t, size_t ldw, int N, int K) {
    memset(dst, 0, capmoe_panel_matrix_bytes(t, N, K));
    capmoe_panel_pack_rows(dst, t, K, 0, W, ldw, N);
}

/* ---- portable vector code ---------------------------------------------------- */

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef unsigned int u32x8u __attribute__((vector_size(32), aligned(2), may_alias));
typedef _Float16 h8 __attribute__((vector_size(16), aligned(2), may_alias));

static inline v8 splat8(float x) { return (v8){x, x, x, x, x, x, x, x}; }

/* Outputs 8*half .. 8*half + 7 of step j as float32: *w0 for input 2j,
 * *w1 for input 2j + 1. */
ALWAYS_INLINE void step_widen(capmoe_dtype t, const void *P, size_t j, int half, v8 *w0, v8 *w1) {
    if (t == CAPMOE_DTYPE_BF16) {
        u32x8u x = *(const u32x8u *)((const unsigned short *)P + j * 2 * PW + 16 * half);
        *w0 = (v8)(x << 16);
        *w1 = (v8)(x & 0xffff0000u);
    } else if (t == CAPMOE_DTYPE_F16) {
        const _Float16 *p = (const _Float16 *)P + j * 2 * PW + 8 * half;
        *w0 = __builtin_convertvector(*(const h8 *)p, v8);
        *w1 = __builtin_convertvector(*(const h8 *)(p + PW), v8);
    } else {
        const float *p = (const float *)P + j * 2 * PW + 8 * half;
        *w0 = *(const v8u *)p;
        *w1 = *(const v8u *)(p + PW);
    }
}

ALWAYS_INLINE void unpack_typed(float *dst, size_t ldd, const void *P, capmoe_dtype t, int K,
                                int n_panels) {
    size_t pe = capmoe_panel_bytes(t, K) / capmoe_dtype_size(t);
    for (int i = 0; i < n_panels; i++) {
        const char *pp = (const char *)P + (size_t)i * pe * capmoe_dtype_size(t);
        for (size_t j = 0; j < n_steps(K); j++) {
            for (int half = 0; half < 2; half++) {
                v8 w[2];
                step_widen(t, pp, j, half, &w[0], &w[1]);
                for (int h = 0; h < 2 && 2 * (int)j + h < K; h++)
                    *(v8u *)(dst + (2 * j + (size_t)h) * ldd + (size_t)PW * i + 8 * half) = w[h];
            }
        }
    }
}

PANEL_CLONES
void capmoe_panel_unpack(float *dst, size_t ldd, const void *P, capmoe_dtype t, int K,
                         int n_panels) {
    switch (t) {
    case CAPMOE_DTYPE_F8E4M3: capmoe_f8_unpack(dst, ldd, P, K, n_panels); break;
    case CAPMOE_DTYPE_BF16: unpack_typed(dst, ldd, P, CAPMOE_DTYPE_BF16, K, n_panels); break;
    case CAPMOE_DTYPE_F16: unpack_typed(dst, ldd, P, CAPMOE_DTYPE_F16, K, n_panels); break;
    default: unpack_typed(dst, ldd, P, CAPMOE_DTYPE_F32, K, n_panels); break;
    }
}

/* Writes the finished sums of 8 outputs of one row: only the first n. */
static inline void store8(float *c, v8 s, int n, float alpha, float beta) {
    float v[8];
    memcpy(v, &s, sizeof v);
    for (int x = 0; x < n; x++) {
        float r = alpha * v[x];
        c[x] = beta == 0.0f ? r : r + beta * c[x];
    }
}

/* Rows of one block in the portable code: per row and 8-output half, four
 * accumulators (q = the input's position mod 4; tail steps go to q = 0, 1
 * and the odd last input to q = 0, as in the AVX-512 code), plus the four
 * weight vectors of two steps: 12 of AVX2's 16 registers. */
#define PORT_ROWS 2

ALWAYS_INLINE void port_rows(capmoe_dtype t, int R, float *C, int ldc, const float *A, int lda,
                             const void *pp, int K, int ncols, float alpha, float beta) {
    for (int half = 0; half < 2 && 8 * half < ncols; half++) {
        v8 acc[PORT_ROWS][4];
        #pragma GCC unroll 8
        for (int r = 0; r < PORT_ROWS; r++)
            #pragma GCC unroll 8
            for (int q = 0; q < 4; q++) acc[r][q] = splat8(0);
        size_t J = (size_t)K / 2, j = 0;
        size_t sb = (size_t)2 * PW * capmoe_dtype_size(t); /* bytes per step */
        for (; j + 2 <= J; j += 2) {
            v8 w[4];
            if (half == 0)
                for (size_t b = 0; b < 2 * sb; b += 64)
                    __builtin_prefetch((const char *)pp + j * sb + PF_BYTES + b, 0, 2);
            step_widen(t, pp, j, half, &w[0], &w[1]);
            step_widen(t, pp, j + 1, half, &w[2], &w[3]);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const float *a = A + (size_t)r * lda + 2 * j;
                #pragma GCC unroll 8
                for (int q = 0; q < 4; q++) acc[r][q] += splat8(a[q]) * w[q];
            }
        }
        if (j < J) {
            v8 w[2];
            step_widen(t, pp, j, half, &w[0], &w[1]);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const float *a = A + (size_t)r * lda + 2 * j;
                #pragma GCC unroll 8
                for (int q = 0; q < 2; q++) acc[r][q] += splat8(a[q]) * w[q];
            }
        }
        if (K & 1) {
            v8 w[2];
            step_widen(t, pp, J, half, &w[0], &w[1]);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][0] += splat8(A[(size_t)r * lda + 2 * J]) * w[0];
        }
        int n = ncols - 8 * half < 8 ? ncols - 8 * half : 8;
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            store8(C + (size_t)r * ldc + 8 * half,
                   (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]), n, alpha, beta);
    }
}

ALWAYS_INLINE void port_gemm(capmoe_dtype t, float *C, int ldc, const float *A, int lda,
                             const void *P, int M, int N, int K, float alpha, float beta) {
    size_t pb = capmoe_panel_bytes(t, K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + (size_t)p * pb;
        int ncols = N - p * PW < PW ? N - p * PW : PW, m0 = 0;
        for (; m0 + PORT_ROWS <= M; m0 += PORT_ROWS)
            port_rows(t, PORT_ROWS, C + (size_t)m0 * ldc + p * PW, ldc, A + (size_t)m0 * lda, lda,
                      pp, K, ncols, alpha, beta);
        if (m0 < M)
            port_rows(t, M - m0, C + (size_t)m0 * ldc + p * PW, ldc, A + (size_t)m0 * lda, lda, pp,
                      K, ncols, alpha, beta);
    }
}

PANEL_CLONES
void capmoe_panel_gemm_portable(float *C, int ldc, const float *A, int lda, const void *P,
                                capmoe_dtype t, int M, int N, int K, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    switch (t) {
    case CAPMOE_DTYPE_BF16:
        port_gemm(CAPMOE_DTYPE_BF16, C, ldc, A, lda, P, M, N, K, alpha, beta);
        break;
    case CAPMOE_DTYPE_F16:
        port_gemm(CAPMOE_DTYPE_F16, C, ldc, A, lda, P, M, N, K, alpha, beta);
        break;
    default: port_gemm(CAPMOE_DTYPE_F32, C, ldc, A, lda, P, M, N, K, alpha, beta); break;
    }
}

/* ---- AVX-512 ------------------------------------------------------------------ */

#ifdef PANEL_AVX512
#define AVX512 __attribute__((target("avx512f")))
/* Rows per block: 4 accumulators each, 24 of the 32 registers. */
#define AVX_ROWS 6

AVX512 ALWAYS_INLINE void avx_step(capmoe_dtype t, const char *pp, size_t j, __m512 *w0,
                                   __m512 *w1) {
    if (t == CAPMOE_DTYPE_BF16) {
        __m512i x = _mm512_loadu_si512((const void *)(pp + j * 64));
        *w0 = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
        *w1 = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (t == CAPMOE_DTYPE_F16) {
        *w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pp + j * 64)));
        *w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pp + j * 64 + 32)));
    } else {
        *w0 = _mm512_loadu_ps(pp + j * 128);
        *w1 = _mm512_loadu_ps(pp + j * 128 + 64);
    }
}

/* Step j of the R rows: acc[r][q] += A[r][2j] * w0, acc[r][q + 1] += A[r][2j + 1] * w1. */
AVX512 ALWAYS_INLINE void avx_fma_step(__m512 acc[][4], int R, const float *A, int lda, size_t j,
                                       int q, __m512 w0, __m512 w1) {
#pragma GCC unroll 8
    for (int r = 0; r < AVX_ROWS; r++) {
        if (r >= R) break;
        const float *a = A + (size_t)r * lda + 2 * j;
        acc[r][q] = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), w0, acc[r][q]);
        acc[r][q + 1] = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), w1, acc[r][q + 1]);
    }
}

AVX512 ALWAYS_INLINE void avx_rows(capmoe_dtype t, int R, float *C, int ldc, const float *A,
                                   int lda, const char *pp, int K, int ncols, float alpha,
                                   float beta) {
    __m512 acc[AVX_ROWS][4];
#pragma GCC unroll 8
    for (int r = 0; r < AVX_ROWS; r++)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    size_t J = (size_t)K / 2, j = 0;
    size_t sb = (size_t)2 * PW * capmoe_dtype_size(t); /* bytes per step */
    for (; j + 2 <= J; j += 2) {
        __m512 w0, w1, w2, w3;
        for (size_t b = 0; b < 2 * sb; b += 64) _mm_prefetch(pp + j * sb + PF_BYTES + b, _MM_HINT_T1);
        avx_step(t, pp, j, &w0, &w1);
        avx_step(t, pp, j + 1, &w2, &w3);
        avx_fma_step(acc, R, A, lda, j, 0, w0, w1);
        avx_fma_step(acc, R, A, lda, j + 1, 2, w2, w3);
    }
    if (j < J) {
        __m512 w0, w1;
        avx_step(t, pp, j, &w0, &w1);
        avx_fma_step(acc, R, A, lda, j, 0, w0, w1);
    }
    if (K & 1) {
        __m512 w0, w1;
        avx_step(t, pp, J, &w0, &w1);
#pragma GCC unroll 8
        for (int r = 0; r < AVX_ROWS; r++) {
            if (r >= R) break;
            acc[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(A[(size_t)r * lda + 2 * J]), w0, acc[r][0]);
        }
    }
    __mmask16 mk = (__mmask16)(ncols >= PW ? 0xffffu : (1u << ncols) - 1u);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < AVX_ROWS; r++) {
        if (r >= R) break;
        __m512 s = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]),
                                 _mm512_add_ps(acc[r][2], acc[r][3]));
        float *c = C + (size_t)r * ldc;
        s = _mm512_mul_ps(va, s);
        if (beta != 0.0f) s = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, c), s);
        _mm512_mask_storeu_ps(c, mk, s);
    }
}

AVX512 ALWAYS_INLINE void avx_gemm(capmoe_dtype t, float *C, int ldc, const float *A, int lda,
                                   const void *P, int M, int N, int K, float alpha, float beta) {
    size_t pb = capmoe_panel_bytes(t, K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + (size_t)p * pb;
        int ncols = N - p * PW < PW ? N - p * PW : PW;
        for (int m0 = 0; m0 < M; m0 += AVX_ROWS) {
            float *c = C + (size_t)m0 * ldc + p * PW;
            const float *a = A + (size_t)m0 * lda;
            switch (M - m0 < AVX_ROWS ? M - m0 : AVX_ROWS) {
            case 1: avx_rows(t, 1, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 2: avx_rows(t, 2, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 3: avx_rows(t, 3, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 4: avx_rows(t, 4, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 5: avx_rows(t, 5, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            default: avx_rows(t, 6, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            }
        }
    }
}

AVX512 static void avx_gemm_bf16(float *C, int ldc, const float *A, int lda, const void *P, int M,
                                 int N, int K, float alpha, float beta) {
    avx_gemm(CAPMOE_DTYPE_BF16, C, ldc, A, lda, P, M, N, K, alpha, beta);
}
AVX512 static void avx_gemm_f16(float *C, int ldc, const float *A, int lda, const void *P, int M,
                                int N, int K, float alpha, float beta) {
    avx_gemm(CAPMOE_DTYPE_F16, C, ldc, A, lda, P, M, N, K, alpha, beta);
}
AVX512 static void avx_gemm_f32(float *C, int ldc, const float *A, int lda, const void *P, int M,
                                int N, int K, float alpha, float beta) {
    avx_gemm(CAPMOE_DTYPE_F32, C, ldc, A, lda, P, M, N, K, alpha, beta);
}
#endif

/* Q8/Q4 without a caller's activation buffer: rows quantized a few at a
 * time into one on the stack (ops.c gives its products a whole one); a row
 * longer than that buffer takes a malloc'd one (C is NaN if none can be had). */
static void q_gemm_stack(float *C, int ldc, const float *A, int lda, const void *P, capmoe_dtype t,
                         int M, int N, int K, float alpha, float beta) {
    _Alignas(64) unsigned char sbuf[32768];
    size_t row = capmoe_qact_bytes(1, K);
    unsigned char *buf = sbuf, *heap = NULL;
    int rows = (int)(sizeof sbuf / row);
    if (rows < 1) {
        if (!(buf = heap = malloc(row))) {
            for (int r = 0; r < M; r++)
                for (int j = 0; j < N; j++) C[(size_t)r * ldc + j] = NAN;
            return;
        }
        rows = 1;
    }
    for (int m0 = 0; m0 < M; m0 += rows) {
        int n = M - m0 < rows ? M - m0 : rows;
        capmoe_qact_quantize(buf, A + (size_t)m0 * lda, lda, n, K);
        capmoe_quant_gemm(C + (size_t)m0 * ldc, ldc, buf, P, t, n, N, K, alpha, beta);
    }
    free(heap);
}

void capmoe_panel_gemm(float *C, int ldc, const float *A, int lda, const void *P, capmoe_dtype t,
                       int M, int N, int K, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    if (t == CAPMOE_DTYPE_F8E4M3) {
        capmoe_f8_gemm(C, ldc, A, lda, P, M, N, K, alpha, beta);
        return;
    }
    if (capmoe_dtype_is_q(t)) {
        q_gemm_stack(C, ldc, A, lda, P, t, M, N, K, alpha, beta);
        return;
    }
#ifdef PANEL_AVX512
    if (__builtin_cpu_supports("avx512f")) {
        switch (t) {
        case CAPMOE_DTYPE_BF16: avx_gemm_bf16(C, ldc, A, lda, P, M, N, K, alpha, beta); return;
        case CAPMOE_DTYPE_F16: avx_gemm_f16(C, ldc, A, lda, P, M, N, K, alpha, beta); return;
        default: avx_gemm_f32(C, ldc, A, lda, P, M, N, K, alpha, beta); return;
        }
    }
#endif
    capmoe_panel_gemm_portable(C, ldc, A, lda, P, t, M, N, K, alpha, beta);
}
