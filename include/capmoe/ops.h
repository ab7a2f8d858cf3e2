/* ops.h - the few float32 kernels the forward pass needs. All BLAS calls of
 * the engine go through capmoe_linear / capmoe_gemm_nt. Buffers are caller-owned;
 * rows are contiguous unless a leading dimension is given. */
#ifndef CAPMOE_OPS_H
#define CAPMOE_OPS_H

#include <stddef.h>

/* y[M,N] = x[M,K] * W[N,K]^T (+ bias[N] when non-NULL). */
void capmoe_linear(float *y, const float *x, const float *W, const float *bias, int M, int N,
                   int K);
/* C[M,N] (ldc) = alpha * A[M,K] (lda) * B[N,K]^T (ldb) + beta * C. */
void capmoe_gemm_nt(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K, float alpha, float beta);
/* C[M,N] (ldc) = A[M,K] (lda) * B[K,N] (ldb). */
void capmoe_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K);
/* y = A x (trans = 0: A is [M, N], x has N entries, y has M) or y = A^T x
 * (trans = 1: x has M entries, y has N); rows of A are lda floats apart. */
void capmoe_gemv(float *y, const float *A, int lda, const float *x, int M, int N, int trans);
/* RMSNorm of each of the M rows of length n (stride ld) into out (stride ldo). */
void capmoe_rmsnorm(float *out, int ldo, const float *x, int ld, const float *w, int M, int n,
                    float eps);
/* RoPE (rotate-half / NeoX layout, as Hugging Face). capmoe_rope_table fills
 * cs[0..d/2) with cos and cs[d/2..d) with sin of position pos (inv_freq has d/2
 * entries); capmoe_rope_apply rotates one head vector of length d in place. */
void capmoe_rope_table(float *cs, int d, int pos, const float *inv_freq);
void capmoe_rope_apply(float *v, int d, const float *cs);
/* a[i] = silu(a[i]) * b[i] */
void capmoe_silu_mul(float *a, const float *b, size_t n);
/* Softmax of a row in place; returns nothing. Entries equal to -INFINITY get 0. */
void capmoe_softmax_row(float *x, int n);
/* y[i] += w * x[i] (y and x must not overlap) */
void capmoe_axpy(float *restrict y, const float *restrict x, float w, int n);
/* Number of threads OpenBLAS uses; set it (1 while rank workers run GEMMs). */
int capmoe_blas_threads(void);
void capmoe_blas_set_threads(int n);

#endif
