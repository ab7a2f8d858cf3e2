/* ops.h - the few float32 kernels the forward pass needs. All matrix products
 * of the engine go through capmoe_linear / capmoe_gemm_nt, which split the
 * output columns across the pool `par` (NULL: the calling thread only) and
 * run the small-M kernel of kern.h for up to CAPMOE_KERN_MAX_ROWS rows,
 * single-threaded OpenBLAS sgemm for more.
 * Buffers are caller-owned; rows are contiguous unless a leading dimension is
 * given. */
#ifndef CAPMOE_OPS_H
#define CAPMOE_OPS_H

#include <stddef.h>

#include "capmoe/par.h"
#include "capmoe/safetensors.h" /* capmoe_dtype */

/* A weight matrix as stored in the checkpoint (mapped in place): row-major
 * elements of dtype F32, BF16 or F16, converted to float32 exactly when
 * used. Borrowed: the model (or the caller) owns the memory. */
typedef struct capmoe_wmat {
    const void *p;
    capmoe_dtype dtype;
} capmoe_wmat;

static inline capmoe_wmat capmoe_wmat_f32(const float *p) {
    capmoe_wmat w = {p, CAPMOE_DTYPE_F32};
    return w;
}
/* The same matrix from element `elems` on (a row offset times the row length). */
static inline capmoe_wmat capmoe_wmat_offset(capmoe_wmat w, size_t elems) {
    w.p = (const char *)w.p + elems * capmoe_dtype_size(w.dtype);
    return w;
}

/* y[M,N] = x[M,K] * W[N,K]^T (+ bias[N] when non-NULL). */
void capmoe_linear(capmoe_par *par, float *y, const float *x, capmoe_wmat W, const float *bias,
                   int M, int N, int K);
/* C[M,N] (ldc) = alpha * A[M,K] (lda) * B[N,K]^T (ldb) + beta * C. */
void capmoe_gemm_nt(capmoe_par *par, float *C, int ldc, const float *A, int lda, capmoe_wmat B,
                    int ldb, int M, int N, int K, float alpha, float beta);
/* C[M,N] (ldc) = A[M,K] (lda) * B[K,N] (ldb). */
void capmoe_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K);
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
/* The engine runs its own threads (par.h, ep.h) and calls OpenBLAS from
 * each of them: OpenBLAS must not start threads of its own, which would spin
 * against the engine's on the same cores. Called when a model loads. */
void capmoe_blas_single_threaded(void);

#endif
