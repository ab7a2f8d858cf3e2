/* kern.h - hand-written float32 kernels for the small products of decode
 * steps, where OpenBLAS spends more time packing and waking threads than
 * computing: C = alpha * A B^T + beta * C with few rows in A, and the dot
 * products of attention over a short cache. Every function reads its inputs
 * in place and writes only its output; nothing is allocated.
 *
 * The vector code is compiled for x86-64-v4, x86-64-v3 and baseline x86-64
 * and picked at run time by the CPU (GCC function multiversioning); other
 * architectures get the portable build of the same source. */
#ifndef CAPMOE_KERN_H
#define CAPMOE_KERN_H

#include <stddef.h>

#include "capmoe/safetensors.h" /* capmoe_dtype */

/* Rows of A up to which capmoe_kern_gemm_nt beats OpenBLAS sgemm: for
 * float32 weights; for BF16/F16 ones, which sgemm could only use after
 * converting them, twice as many (measured with the decode benchmark). */
#define CAPMOE_KERN_MAX_ROWS 16
#define CAPMOE_KERN_MAX_ROWS_16BIT 32
static inline int capmoe_kern_max_rows(capmoe_dtype bt) {
    return bt == CAPMOE_DTYPE_F32 ? CAPMOE_KERN_MAX_ROWS : CAPMOE_KERN_MAX_ROWS_16BIT;
}

/* C[i*ldc + j] = alpha * sum_k A[i*lda + k] * B[j*ldb + k] + beta * C[i*ldc + j]
 * for i < M, j < N, with B's elements stored as bt (F32, BF16 or F16; ldb in
 * elements) and converted to float32 exactly in registers. beta == 0
 * ignores C's previous contents (NaN included). The model's weights are in
 * panel layout (panel.h); this kernel serves row-major matrices (the KV
 * cache, and callers' own). */
void capmoe_kern_gemm_nt(float *C, int ldc, const float *A, int lda, const void *B,
                         capmoe_dtype bt, int ldb, int M, int N, int K, float alpha, float beta);

/* dst[i] = src[i] as float32 for i < n, src stored as t (F32, BF16, F16). */
void capmoe_kern_to_f32(float *dst, const void *src, capmoe_dtype t, size_t n);

/* Attention scores of one query row, all heads at once (GQA: head h reads
 * key slice h / grp of each cache row):
 * S[h*lds + j] = scale * dot(q[h*d .. h*d + d), K[j*ldk + (h/grp)*d ..] over d)
 * for h < n_heads, j < n. */
void capmoe_kern_attn_scores(float *S, int lds, const float *q, int n_heads, int grp, int d,
                             const float *K, int ldk, int n, float scale);

/* o[0..d) = sum_j p[j] * V[j*ldv .. j*ldv + d) for j < n. */
void capmoe_kern_weighted_sum(float *o, const float *p, const float *V, int ldv, int n, int d);

/* x[i] = exp(x[i] - sub) for i < n, vectorised: within 2 ulp of expf, 0
 * for arguments below -87.3365 (-inf included), +inf above 88.376, NaN for
 * NaN. Returns their sum (float lanes gathered into a double every 256
 * elements). */
float capmoe_kern_exp_sum(float *x, int n, float sub);

/* a[i] = silu(a[i]) * b[i] = a[i] / (1 + exp(-a[i])) * b[i], with the exp
 * of capmoe_kern_exp_sum. */
void capmoe_kern_silu_mul(float *a, const float *b, size_t n);

#endif
