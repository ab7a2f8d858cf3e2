/* kern.c - small-M matrix products and attention dot products in GCC vector
 * extensions, multiversioned per x86-64 level (see kern.h). Each weight row
 * is streamed from memory once per call and used against every row of A
 * while it sits in L1: a decode step over B <= 16 sequences is bound by
 * reading the weights, so the access pattern matters more than the FLOPs. */
#include "capmoe/kern.h"

#include <stddef.h>

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

/* dot(a, b) over k in [k0, K) in scalar, for the K % 16 tail. */
static inline float dot_tail(const float *a, const float *b, int k0, int K) {
    float s = 0.0f;
    for (int k = k0; k < K; k++) s += a[k] * b[k];
    return s;
}

/* One row of B against up to four rows of A. B's rows are read one after the
 * other, a single sequential stream the hardware prefetcher follows at full
 * bandwidth (interleaving several rows of B measured 2-3x slower from DRAM);
 * the rows of A stay in L1. Two accumulators per row of A over alternate
 * 8-float halves of each 16-float step keep eight FMA chains in flight. */
KERN_CLONES
void capmoe_kern_gemm_nt(float *C, int ldc, const float *A, int lda, const float *B, int ldb,
                         int M, int N, int K, float alpha, float beta) {
    int K16 = K & ~15;
    for (int n = 0; n < N; n++) {
        const float *b = B + (size_t)n * ldb;
        int m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) {
            const float *a0 = A + (size_t)m0 * lda, *a1 = a0 + lda, *a2 = a1 + lda;
            const float *a3 = a2 + lda;
            v8 c0 = splat8(0), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
            for (int k = 0; k < K16; k += 16) {
                v8 w = ld8(b + k), u = ld8(b + k + 8);
                c0 += ld8(a0 + k) * w, c1 += ld8(a1 + k) * w;
                c2 += ld8(a2 + k) * w, c3 += ld8(a3 + k) * w;
                d0 += ld8(a0 + k + 8) * u, d1 += ld8(a1 + k + 8) * u;
                d2 += ld8(a2 + k + 8) * u, d3 += ld8(a3 + k + 8) * u;
            }
            float *c = C + (size_t)m0 * ldc + n;
            store_c(c, hsum8(c0 + d0) + dot_tail(a0, b, K16, K), alpha, beta);
            store_c(c + ldc, hsum8(c1 + d1) + dot_tail(a1, b, K16, K), alpha, beta);
            store_c(c + 2 * (size_t)ldc, hsum8(c2 + d2) + dot_tail(a2, b, K16, K), alpha, beta);
            store_c(c + 3 * (size_t)ldc, hsum8(c3 + d3) + dot_tail(a3, b, K16, K), alpha, beta);
        }
        for (; m0 < M; m0++) {
            const float *a0 = A + (size_t)m0 * lda;
            v8 c0 = splat8(0), d0 = c0;
            for (int k = 0; k < K16; k += 16) {
                c0 += ld8(a0 + k) * ld8(b + k);
                d0 += ld8(a0 + k + 8) * ld8(b + k + 8);
            }
            store_c(C + (size_t)m0 * ldc + n, hsum8(c0 + d0) + dot_tail(a0, b, K16, K), alpha,
                    beta);
        }
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
