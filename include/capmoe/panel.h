/* panel.h - weight matrices in panel layout, and the products that read them.
 *
 * A weight W[N][K] (N outputs, K inputs; F32, BF16 or F16) is repacked once,
 * when the model loads, into panels of CAPMOE_PANEL_COLS consecutive outputs.
 * Panel p holds outputs 16p .. 16p+15 for every input k, in steps of two
 * inputs: step j (k = 2j, 2j+1) is 32 elements, contiguous, so a decode
 * product reads the whole matrix as one sequential stream and multiplies
 * every element it loads by every row of A, with no reductions across lanes
 * (the outer-product form BLAS kernels use, here for 1 to 32 rows). Within a
 * step:
 *   - F32, F16: the 16 elements of input 2j, then the 16 of input 2j+1;
 *   - BF16: 16 32-bit words, word c = W[16p+c][2j] | W[16p+c][2j+1] << 16,
 *     so that a shift and a mask widen both halves to float32 exactly.
 * Outputs past N and the input past an odd K are zero. A panel is
 * capmoe_panel_bytes(t, K) bytes; panels follow one another.
 *
 * Every row of C is computed the same way whatever M and however the columns
 * are split across threads: four accumulators per output (input k goes to
 * accumulator k mod 4, except that an odd K's last input goes to 0), summed
 * as (acc0 + acc1) + (acc2 + acc3). So a sequence's logits do not
 * depend on what else is in its batch (as long as the batch stays on these
 * kernels: capmoe_panel_fits).
 *
 * The vector code is AVX-512 where the CPU has it, else the portable build
 * (GCC vector extensions, multiversioned for x86-64-v3 and baseline); both
 * give the same bits when both fuse multiply-adds (the portable build does
 * from x86-64-v3 on, not in its baseline or sanitizer builds). */
#ifndef CAPMOE_PANEL_H
#define CAPMOE_PANEL_H

#include <stddef.h>

#include "capmoe/safetensors.h" /* capmoe_dtype */

#define CAPMOE_PANEL_COLS 16
/* capmoe_panel_gemm beats unpacking the panels for OpenBLAS sgemm up to
 * this many rows of A, and beyond while A (re-read once per panel) takes at
 * most CAPMOE_PANEL_MAX_A_BYTES: measured on Zen 4 with BF16 weights, 2x
 * sgemm's speed at 16 rows, ahead to 512 rows of 256 or 1024 inputs, level
 * at 2048 rows of 256. */
#define CAPMOE_PANEL_MAX_ROWS 32
#define CAPMOE_PANEL_MAX_A_BYTES ((size_t)1 << 20)
static inline int capmoe_panel_fits(int M, int K) {
    return M <= CAPMOE_PANEL_MAX_ROWS || (size_t)M * (size_t)K * sizeof(float) <= CAPMOE_PANEL_MAX_A_BYTES;
}

/* Bytes of one panel of a matrix with K inputs stored as t. */
size_t capmoe_panel_bytes(capmoe_dtype t, int K);
/* Bytes of the whole packed N x K matrix. */
size_t capmoe_panel_matrix_bytes(capmoe_dtype t, int N, int K);

/* dst (capmoe_panel_matrix_bytes(t, N, K) bytes, caller-owned) = W[N][K]
 * (row stride ldw elements, stored as t) in panel layout. The elements are
 * copied, never converted. */
void capmoe_panel_pack(void *dst, const void *W, capmoe_dtype t, size_t ldw, int N, int K);

/* Rows [n0, n0 + N) of a packed matrix of K inputs = W[N][K] (stride ldw),
 * for matrices stacked from several sources: dst must have been zeroed
 * whole first (its padding stays zero). */
void capmoe_panel_pack_rows(void *dst, capmoe_dtype t, int K, int n0, const void *W,
                            size_t ldw, int N);

/* dst[k*ldd + 16*i + c] = float32 value of output 16*i + c, input k, of the
 * n_panels panels starting at P, for k < K: the panels as a K x (16*n_panels)
 * row-major matrix (the B of an sgemm without transposition). */
void capmoe_panel_unpack(float *dst, size_t ldd, const void *P, capmoe_dtype t, int K,
                         int n_panels);

/* C[i*ldc + j] = alpha * sum_k A[i*lda + k] * W[j][k] + beta * C[i*ldc + j]
 * for i < M, j < N, where P is W's first panel (outputs from 16*p on: pass
 * P + p * capmoe_panel_bytes). beta == 0 ignores C's previous contents (NaN
 * included). Nothing outside the M x N block of C is written. */
void capmoe_panel_gemm(float *C, int ldc, const float *A, int lda, const void *P, capmoe_dtype t,
                       int M, int N, int K, float alpha, float beta);
/* The same with the portable vector code whatever the CPU (for tests). */
void capmoe_panel_gemm_portable(float *C, int ldc, const float *A, int lda, const void *P,
                                capmoe_dtype t, int M, int N, int K, float alpha, float beta);

#endif
