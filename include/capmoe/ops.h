/* ops.h - the few float32 kernels the forward pass needs. All matrix products
 * of the engine go through capmoe_linear / capmoe_gemm_nt, which split the
 * output columns across the pool `par` (NULL: the calling thread only) and
 * run, for few rows, the small-M kernels (panel.h for weights in panel
 * layout, kern.h for row-major ones), single-threaded OpenBLAS sgemm for
 * more.
 * Buffers are caller-owned; rows are contiguous unless a leading dimension is
 * given. */
#ifndef CAPMOE_OPS_H
#define CAPMOE_OPS_H

#include <stddef.h>

#include "capmoe/panel.h"
#include "capmoe/par.h"
#include "capmoe/safetensors.h" /* capmoe_dtype */

/* A weight matrix of elements of dtype F32, BF16 or F16, converted to
 * float32 exactly when used: row-major as stored in the checkpoint (panels
 * == 0), or repacked in the panel layout of panel.h (panels == 1; its
 * leading dimension is then its K). Borrowed: the model (or the caller) owns
 * the memory. */
typedef struct capmoe_wmat {
    const void *p;
    capmoe_dtype dtype;
    int panels;
    const float *scale; /* F8E4M3 row-major (not yet packed) only: the checkpoint's
                         * weight_scale_inv [ceil(N/bn), ceil(K/bk)] (hfconfig.h) */
} capmoe_wmat;

static inline capmoe_wmat capmoe_wmat_f32(const float *p) {
    capmoe_wmat w = {p, CAPMOE_DTYPE_F32, 0, NULL};
    return w;
}
/* The same row-major matrix from element `elems` on (a row offset times the
 * row length). Not for panel layout. */
static inline capmoe_wmat capmoe_wmat_offset(capmoe_wmat w, size_t elems) {
    w.p = (const char *)w.p + elems * capmoe_dtype_size(w.dtype);
    return w;
}

/* Rows (outputs) [n0, ..) of W, a matrix of K inputs with row stride ldw:
 * in panel layout n0 must be a multiple of CAPMOE_PANEL_COLS. */
static inline capmoe_wmat capmoe_wmat_rows(capmoe_wmat w, int K, size_t ldw, int n0) {
    if (!w.panels) return capmoe_wmat_offset(w, (size_t)n0 * ldw);
    w.p = (const char *)w.p + (size_t)(n0 / CAPMOE_PANEL_COLS) * capmoe_panel_bytes(w.dtype, K);
    return w;
}
/* Whether a product of M rows (of K elements) with W runs the small-M
 * kernels, which stream W once, rather than sgemm. */
int capmoe_gemm_small(capmoe_wmat W, int M, int K);

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
/* Row by row over the pool (capmoe_par_rows), M rows of n (contiguous):
 * x += add (add may be NULL), then, when out is non-NULL, out = RMSNorm(x)
 * with weights w. Per row the same arithmetic as capmoe_rmsnorm. */
void capmoe_residual_norm(capmoe_par *par, float *x, const float *add, float *out, const float *w,
                          int M, int n, float eps);
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
