/* kern.c - small-M matrix products and attention dot products in GCC vector
 * extensions, multiversioned per x86-64 level (see kern.h). Each weight row
 * is streamed from memory once per call and used against every row of A
 * while it sits in L1: no packing, no copies, one pass over the weights. */
#include "capmoe/kern.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define KERN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERN_CLONES
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));

static inline v8 ld8(const float *p) { return *(const v8u *)p; }
static inline float hsum8(v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
static inline void st8(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 splat8(float x) { return (v8){x, x, x, x, x, x, x, x}; }

static inline void store_c(float *c, float v, float alpha, float beta) {
    *c = beta == 0.0f ? alpha * v : alpha * v + beta * *c;
}

/* Weight element loads: 8 lanes converted to float32 (exactly: BF16 is the
 * top half of a float32, and every F16 value is a float32 value), and one. */
typedef unsigned short u16x8 __attribute__((vector_size(16), aligned(2), may_alias));
typedef unsigned int u32x8 __attribute__((vector_size(32)));
typedef _Float16 h8 __attribute__((vector_size(16), aligned(2), may_alias));

static inline v8 ldw8_f32(const void *p, size_t i) { return ld8((const float *)p + i); }
static inline v8 ldw8_bf16(const void *p, size_t i) {
    u32x8 w = __builtin_convertvector(*(const u16x8 *)((const unsigned short *)p + i), u32x8);
    return (v8)(w << 16);
}
static inline v8 ldw8_f16(const void *p, size_t i) {
    return __builtin_convertvector(*(const h8 *)((const _Float16 *)p + i), v8);
}
static inline float ldw1_f32(const void *p, size_t i) { return ((const float *)p)[i]; }
static inline float ldw1_bf16(const void *p, size_t i) {
    union { unsigned int u; float f; } v = {(unsigned int)((const unsigned short *)p)[i] << 16};
    return v.f;
}
static inline float ldw1_f16(const void *p, size_t i) { return (float)((const _Float16 *)p)[i]; }

/* Rows of A against one row of B, C[i*ldc] for i < M. B's rows are read one
 * after the other, a single sequential stream the hardware prefetcher
 * follows at full bandwidth (interleaving several rows of B measured 2-3x
 * slower from DRAM); the rows of A stay in L1. Rows of A go four at a time,
 * then two, then one, with two accumulators per row over the two 8-float
 * halves of each 16-float step (four for a single row), so that several FMA
 * chains are always in flight. One instance per stored dtype of B: LDW8 and
 * LDW8H load the first and second 8 elements of a 16-element step as
 * float32 (given the index of each half), LDW1 one element. */
#define DEFINE_ROW_DOT(SUFFIX, LDW8, LDW8H, LDW1)                                                    \
    static inline __attribute__((always_inline)) void row_dot_##SUFFIX(                       \
        float *C, int ldc, const float *A, int lda,                                           \
                                        const void *B, size_t b, int M, int K, float alpha,   \
                                        float beta) {                                         \
        int K16 = K & ~15, m0 = 0;                                                            \
        for (; m0 + 4 <= M; m0 += 4) {                                                        \
            const float *a0 = A + (size_t)m0 * lda, *a1 = a0 + lda, *a2 = a1 + lda;           \
            const float *a3 = a2 + lda;                                                       \
            v8 c0 = splat8(0), c1 = c0, c2 = c0, c3 = c0;                                     \
            v8 d0 = c0, d1 = c0, d2 = c0, d3 = c0;                                            \
            for (int k = 0; k < K16; k += 16) {                                               \
                v8 w = LDW8(B, b + k), u = LDW8H(B, b + k + 8);                               \
                c0 += ld8(a0 + k) * w, c1 += ld8(a1 + k) * w;                                 \
                c2 += ld8(a2 + k) * w, c3 += ld8(a3 + k) * w;                                 \
                d0 += ld8(a0 + k + 8) * u, d1 += ld8(a1 + k + 8) * u;                         \
                d2 += ld8(a2 + k + 8) * u, d3 += ld8(a3 + k + 8) * u;                         \
            }                                                                                 \
            float s[4] = {hsum8(c0 + d0), hsum8(c1 + d1), hsum8(c2 + d2), hsum8(c3 + d3)};    \
            for (int k = K16; k < K; k++) {                                                   \
                float w = LDW1(B, b + k);                                                     \
                s[0] += a0[k] * w, s[1] += a1[k] * w, s[2] += a2[k] * w, s[3] += a3[k] * w;   \
            }                                                                                 \
            for (int i = 0; i < 4; i++) store_c(C + (size_t)(m0 + i) * ldc, s[i], alpha, beta); \
        }                                                                                     \
        if (m0 + 2 <= M) {                                                                    \
            const float *a0 = A + (size_t)m0 * lda, *a1 = a0 + lda;                           \
            v8 c0 = splat8(0), c1 = c0, d0 = c0, d1 = c0;                                     \
            for (int k = 0; k < K16; k += 16) {                                               \
                v8 w = LDW8(B, b + k), u = LDW8H(B, b + k + 8);                               \
                c0 += ld8(a0 + k) * w, c1 += ld8(a1 + k) * w;                                 \
                d0 += ld8(a0 + k + 8) * u, d1 += ld8(a1 + k + 8) * u;                         \
            }                                                                                 \
            float s0 = hsum8(c0 + d0), s1 = hsum8(c1 + d1);                                   \
            for (int k = K16; k < K; k++) {                                                   \
                float w = LDW1(B, b + k);                                                     \
                s0 += a0[k] * w, s1 += a1[k] * w;                                             \
            }                                                                                 \
            store_c(C + (size_t)m0 * ldc, s0, alpha, beta);                                   \
            store_c(C + (size_t)(m0 + 1) * ldc, s1, alpha, beta);                             \
            m0 += 2;                                                                          \
        }                                                                                     \
        if (m0 < M) {                                                                         \
            /* one row: four chains over 32-float steps */                                    \
            const float *a0 = A + (size_t)m0 * lda;                                           \
            v8 c0 = splat8(0), d0 = c0, e0 = c0, f0 = c0;                                     \
            int k = 0;                                                                        \
            for (; k + 32 <= K16; k += 32) {                                                  \
                c0 += ld8(a0 + k) * LDW8(B, b + k);                                           \
                d0 += ld8(a0 + k + 8) * LDW8H(B, b + k + 8);                                  \
                e0 += ld8(a0 + k + 16) * LDW8(B, b + k + 16);                                 \
                f0 += ld8(a0 + k + 24) * LDW8H(B, b + k + 24);                                 \
            }                                                                                 \
            for (; k < K16; k += 16) {                                                        \
                c0 += ld8(a0 + k) * LDW8(B, b + k);                                           \
                d0 += ld8(a0 + k + 8) * LDW8H(B, b + k + 8);                                  \
            }                                                                                 \
            float s = hsum8((c0 + e0) + (d0 + f0));                                           \
            for (k = K16; k < K; k++) s += a0[k] * LDW1(B, b + k);                            \
            store_c(C + (size_t)m0 * ldc, s, alpha, beta);                                    \
        }                                                                                     \
    }

DEFINE_ROW_DOT(f32, ldw8_f32, ldw8_f32, ldw1_f32)
DEFINE_ROW_DOT(bf16, ldw8_bf16, ldw8_bf16, ldw1_bf16)
DEFINE_ROW_DOT(f16, ldw8_f16, ldw8_f16, ldw1_f16)

/* With more than four rows of A a row of B takes long enough that the
 * hardware prefetcher falls behind (measured: 6% of a 16-sequence decode
 * step): the row PF_AHEAD rows on is prefetched a cache line at a time. */
#define PF_AHEAD 4
static inline void prefetch_row(const void *B, size_t elem, size_t n_elems, size_t es) {
    const char *p = (const char *)B + elem * es;
    for (size_t off = 0; off < n_elems * es; off += 64) __builtin_prefetch(p + off);
}

/* A BF16/F16 row of B used by more than four rows of A is converted once
 * into this many floats on the stack rather than once per four rows. */
#define ROW_BUF 8192

/* dst[0..n) = the n 16-bit elements of B from element i on, as float32. */
#define DEFINE_WIDEN(SUFFIX)                                                                  \
    static inline __attribute__((always_inline)) void widen_##SUFFIX(                         \
        float *dst, const void *B, size_t i, size_t n) {                                      \
        size_t k = 0;                                                                         \
        for (; k + 8 <= n; k += 8) st8(dst + k, ldw8_##SUFFIX(B, i + k));                     \
        for (; k < n; k++) dst[k] = ldw1_##SUFFIX(B, i + k);                                  \
    }
DEFINE_WIDEN(bf16)
DEFINE_WIDEN(f16)

KERN_CLONES
static void gemm_nt_f32(float *C, int ldc, const float *A, int lda, const void *B, int ldb, int M,
                        int N, int K, float alpha, float beta) {
    for (int n = 0; n < N; n++) {
        if (M > 4 && n + PF_AHEAD < N)
            prefetch_row(B, (size_t)(n + PF_AHEAD) * ldb, (size_t)K, sizeof(float));
        row_dot_f32(C + n, ldc, A, lda, B, (size_t)n * ldb, M, K, alpha, beta);
    }
}

#define DEFINE_GEMM_NT(SUFFIX)                                                                \
    KERN_CLONES                                                                               \
    static void gemm_nt_##SUFFIX(float *C, int ldc, const float *A, int lda, const void *B,   \
                                 int ldb, int M, int N, int K, float alpha, float beta) {     \
        float wrow[ROW_BUF] __attribute__((aligned(64)));                                     \
        int convert = M > 4 && K <= ROW_BUF;                                                  \
        for (int n = 0; n < N; n++) {                                                         \
            size_t b = (size_t)n * ldb;                                                       \
            if (M > 4 && n + PF_AHEAD < N)                                                    \
                prefetch_row(B, b + (size_t)PF_AHEAD * ldb, (size_t)K, sizeof(uint16_t));                    \
            if (convert) {                                                                    \
                widen_##SUFFIX(wrow, B, b, (size_t)K);                                        \
                row_dot_f32(C + n, ldc, A, lda, wrow, 0, M, K, alpha, beta);                  \
            } else {                                                                          \
                row_dot_##SUFFIX(C + n, ldc, A, lda, B, b, M, K, alpha, beta);                \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_GEMM_NT(f16)
DEFINE_GEMM_NT(bf16)

void capmoe_kern_gemm_nt(float *C, int ldc, const float *A, int lda, const void *B,
                         capmoe_dtype bt, int ldb, int M, int N, int K, float alpha, float beta) {
    switch (bt) {
    case CAPMOE_DTYPE_BF16: gemm_nt_bf16(C, ldc, A, lda, B, ldb, M, N, K, alpha, beta); break;
    case CAPMOE_DTYPE_F16: gemm_nt_f16(C, ldc, A, lda, B, ldb, M, N, K, alpha, beta); break;
    default: gemm_nt_f32(C, ldc, A, lda, B, ldb, M, N, K, alpha, beta); break;
    }
}

#define DEFINE_TO_F32(SUFFIX)                                                                 \
    KERN_CLONES                                                                               \
    static void to_f32_##SUFFIX(float *dst, const void *src, size_t n) {                      \
        widen_##SUFFIX(dst, src, 0, n);                                                       \
    }
DEFINE_TO_F32(bf16)
DEFINE_TO_F32(f16)

void capmoe_kern_to_f32(float *dst, const void *src, capmoe_dtype t, size_t n) {
    switch (t) {
    case CAPMOE_DTYPE_BF16: to_f32_bf16(dst, src, n); break;
    case CAPMOE_DTYPE_F16: to_f32_f16(dst, src, n); break;
    default: memcpy(dst, src, n * sizeof(float)); break;
    }
}

/* The eight sums of a[0..8) in one vector: a transpose-and-add tree of
 * 7 shuffle pairs where eight separate horizontal sums would take 24. */
static inline v8 hsum8x8(const v8 *a) {
    typedef int i8 __attribute__((vector_size(32)));
    const i8 ev = {0, 8, 2, 10, 4, 12, 6, 14}, od = {1, 9, 3, 11, 5, 13, 7, 15};
    const i8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const i8 lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
    v8 h[4], q[2];
    for (int i = 0; i < 4; i++)
        h[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], ev) +
               __builtin_shuffle(a[2 * i], a[2 * i + 1], od);
    for (int i = 0; i < 2; i++)
        q[i] = __builtin_shuffle(h[2 * i], h[2 * i + 1], lo2) +
               __builtin_shuffle(h[2 * i], h[2 * i + 1], hi2);
    /* q[0] = sums of a0..a3 as [a0 a1 a2 a3 | a0 a1 a2 a3] halves, q[1] of a4..a7 */
    return __builtin_shuffle(q[0], q[1], lo4) + __builtin_shuffle(q[0], q[1], hi4);
}

KERN_CLONES
void capmoe_kern_attn_scores(float *S, int lds, const float *q, int n_heads, int grp, int d,
                             const float *K, int ldk, int n, float scale) {
    int d8 = d & ~7, j = 0;
    /* Eight keys at a time: their rows stay in L1 while every head reads its
     * group's slice, and one reduction tree yields eight scores. */
    for (; j + 8 <= n && d8 == d; j += 8) {
        const float *kb = K + (size_t)j * ldk;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)h * d, *kg = kb + (size_t)(h / grp) * d;
            v8 acc[8];
            for (int t = 0; t < 8; t++) acc[t] = splat8(0);
            for (int i = 0; i < d; i += 8) {
                v8 x = ld8(qh + i);
                for (int t = 0; t < 8; t++) acc[t] += x * ld8(kg + (size_t)t * ldk + i);
            }
            st8(S + (size_t)h * lds + j, hsum8x8(acc) * splat8(scale));
        }
    }
    for (; j < n; j++) {
        const float *kr = K + (size_t)j * ldk;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)h * d, *kg = kr + (size_t)(h / grp) * d;
            v8 acc = splat8(0);
            for (int i = 0; i < d8; i += 8) acc += ld8(qh + i) * ld8(kg + i);
            float v = hsum8(acc);
            for (int i = d8; i < d; i++) v += qh[i] * kg[i];
            S[(size_t)h * lds + j] = scale * v;
        }
    }
}

KERN_CLONES
void capmoe_kern_weighted_sum(float *o, const float *p, const float *V, int ldv, int n, int d) {
    int i0 = 0;
    /* 32 output lanes at a time stay in registers over the whole cache. */
    for (; i0 + 32 <= d; i0 += 32) {
        v8 o0 = splat8(0), o1 = o0, o2 = o0, o3 = o0;
        for (int j = 0; j < n; j++) {
            const float *v = V + (size_t)j * ldv + i0;
            v8 w = splat8(p[j]);
            o0 += w * ld8(v), o1 += w * ld8(v + 8), o2 += w * ld8(v + 16), o3 += w * ld8(v + 24);
        }
        st8(o + i0, o0), st8(o + i0 + 8, o1), st8(o + i0 + 16, o2), st8(o + i0 + 24, o3);
    }
    for (; i0 + 8 <= d; i0 += 8) {
        v8 acc = splat8(0);
        for (int j = 0; j < n; j++) acc += splat8(p[j]) * ld8(V + (size_t)j * ldv + i0);
        st8(o + i0, acc);
    }
    for (; i0 < d; i0++) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc += p[j] * V[(size_t)j * ldv + i0];
        o[i0] = acc;
    }
}

/* ---- exp for softmax and SiLU ---------------------------------------------- */

typedef int i8v __attribute__((vector_size(32)));

static inline v8 select8(i8v mask, v8 a, v8 b) { return (v8)(((i8v)a & mask) | ((i8v)b & ~mask)); }

/* expf of 8 lanes: Cody-Waite reduction by ln 2 in two parts and Cephes'
 * degree-6 polynomial on [-ln2/2, ln2/2] (within 2 ulp of expf); 0 below
 * -87.3365 (-inf included; about where expf turns subnormal, and no sum of
 * exponentials here can tell those from 0) and +inf above 88.376 (expf:
 * above 88.72). */
static inline v8 exp8(v8 x) {
    const v8 hi = splat8(88.3762626647949f), lo = splat8(-87.3365478515625f);
    i8v over = x > hi, under = x < lo;
    v8 xc = select8(over, hi, select8(under, lo, x));
    v8 fx = xc * splat8(1.44269504088896341f);
    fx = (fx + splat8(12582912.0f)) - splat8(12582912.0f); /* round to nearest */
    v8 r = xc - fx * splat8(0.693359375f);
    r = r - fx * splat8(-2.12194440e-4f);
    v8 p = splat8(1.9875691500e-4f);
    p = p * r + splat8(1.3981999507e-3f);
    p = p * r + splat8(8.3334519073e-3f);
    p = p * r + splat8(4.1665795894e-2f);
    p = p * r + splat8(1.6666665459e-1f);
    p = p * r + splat8(5.0000001201e-1f);
    v8 y = p * (r * r) + r + splat8(1.0f);
    i8v n = __builtin_convertvector(fx, i8v);
    v8 res = y * (v8)((n + 127) << 23);
    return select8(over, splat8(__builtin_inff()), select8(under, splat8(0.0f), res));
}

/* Float lane sums are moved into a double every SUM_BLOCK elements, so the
 * sum's rounding error stays a few ulp however long the row. */
#define SUM_BLOCK 256

KERN_CLONES
float capmoe_kern_exp_sum(float *x, int n, float sub) {
    v8 acc = splat8(0);
    double total = 0.0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 e = exp8(ld8(x + i) - splat8(sub));
        st8(x + i, e);
        acc += e;
        if ((i + 8) % SUM_BLOCK == 0) {
            total += hsum8(acc);
            acc = splat8(0);
        }
    }
    if (i < n) {
        float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int k = i; k < n; k++) t[k - i] = x[k] - sub;
        v8 e = exp8(ld8(t));
        i8v keep = {0, 1, 2, 3, 4, 5, 6, 7};
        e = select8(keep < n - i, e, splat8(0));
        acc += e;
        for (int k = i; k < n; k++) x[k] = e[k - i];
    }
    return (float)(total + hsum8(acc));
}

KERN_CLONES
void capmoe_kern_silu_mul(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 x = ld8(a + i);
        st8(a + i, x / (splat8(1.0f) + exp8(-x)) * ld8(b + i));
    }
    if (i < n) {
        float t[8] = {0, 0, 0, 0, 0, 0, 0, 0}, u[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        memcpy(t, a + i, (n - i) * sizeof(float));
        memcpy(u, b + i, (n - i) * sizeof(float));
        v8 x = ld8(t);
        v8 y = x / (splat8(1.0f) + exp8(-x)) * ld8(u);
        memcpy(a + i, &y, (n - i) * sizeof(float));
    }
}
