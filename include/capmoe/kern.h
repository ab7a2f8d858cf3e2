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

/* Rows of A up to which capmoe_kern_gemm_nt beats OpenBLAS sgemm. */
#define CAPMOE_KERN_MAX_ROWS 16

/* C[i*ldc + j] = alpha * sum_k A[i*lda + k] * B[j*ldb + k] + beta * C[i*ldc + j]
 * for i < M, j < N. beta == 0 ignores C's previous contents (NaN included). */
void capmoe_kern_gemm_nt(float *C, int ldc, const float *A, int lda, const float *B, int ldb,
                         int M, int N, int K, float alpha, float beta);

/* Attention scores of one query row, all heads at once (GQA: head h reads
 * key slice h / grp of each cache row):
 * S[h*lds + j] = scale * dot(q[h*d .. h*d + d), K[j*ldk + (h/grp)*d ..] over d)
 * for h < n_heads, j < n. */
void capmoe_kern_attn_scores(float *S, int lds, const float *q, int n_heads, int grp, int d,
                             const float *K, int ldk, int n, float scale);

/* o[0..d) = sum_j p[j] * V[j*ldv .. j*ldv + d) for j < n. */
void capmoe_kern_weighted_sum(float *o, const float *p, const float *V, int ldv, int n, int d);

#endif
