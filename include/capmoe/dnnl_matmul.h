/* dnnl_matmul.h - matrix products through oneDNN's matmul in BF16 (AMX tiles
 * on Sapphire Rapids, AVX512-BF16 where there is no AMX, AVX-512 below that;
 * oneDNN picks), float32 accumulation and output: the --compute bf16 path of
 * prefill-sized products.
 *
 * A weight matrix W [N, K] is packed once (at load) into oneDNN's preferred
 * layout, in chunks of `cw` output columns, so that one product is split
 * into items (chunk j of W times all rows of x) that the engine's own pool
 * runs, one oneDNN call per item on one thread: no OpenMP team competes with
 * the pool. The activations x are BF16 rows (capmoe_bf16_from_f32); the
 * number of rows M is padded by the caller to capmoe_dnnl_pad_rows(M) (zero
 * rows), so few distinct primitives are ever built.
 *
 * Threads: capmoe_dnnl_prepare runs on one thread at a time (the forward's);
 * capmoe_dnnl_run_chunk runs concurrently on the pool's threads, each with
 * its own slot (< CAPMOE_PAR_MAX_THREADS). */
#ifndef CAPMOE_DNNL_MATMUL_H
#define CAPMOE_DNNL_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"
#include "capmoe/ops.h"
#include "capmoe/par.h"

/* oneDNN's version, threading runtime and the instruction set its kernels
 * use here: "oneDNN 2.6.3 (OpenMP), ISA avx512_core_bf16". */
void capmoe_dnnl_describe(char *buf, size_t n);

/* Round-to-nearest-even float32 -> BF16 (NaN stays NaN). */
void capmoe_bf16_from_f32(uint16_t *dst, const float *src, size_t n);

/* The rows a product of M rows is run with (multiples of 16, of 64 above
 * 512): rows M .. pad-1 of x must be zero (their outputs are discarded). */
static inline int capmoe_dnnl_pad_rows(int M) {
    return M <= 512 ? (M + 15) & ~15 : (M + 63) & ~63;
}

/* A context: the oneDNN engine, the primitives built so far (by rows and
 * shape), per-slot streams and scratchpads. Owned by the model. */
typedef struct capmoe_dnnl capmoe_dnnl;
int capmoe_dnnl_new(capmoe_dnnl **out, capmoe_error *err);
void capmoe_dnnl_free(capmoe_dnnl *d);

/* A packed weight matrix. Chunk j covers output columns [j*cw, j*cw + w_j)
 * of each of the n_src stacked sources: its product writes w_j * n_src
 * columns, source 0's first. */
typedef struct capmoe_dnnl_mat capmoe_dnnl_mat;
/* Packs sources src[0..n_src) (row-major [N, K] each, F32/BF16/F16, not in
 * panel layout) on the pool par. *out owned by the caller
 * (capmoe_dnnl_mat_free). */
int capmoe_dnnl_pack(capmoe_dnnl *d, capmoe_par *par, capmoe_dnnl_mat **out,
                     const capmoe_wmat *src, int n_src, int N, int K, int cw, capmoe_error *err);
void capmoe_dnnl_mat_free(capmoe_dnnl_mat *w);
size_t capmoe_dnnl_mat_bytes(const capmoe_dnnl_mat *w);
int capmoe_dnnl_mat_chunks(const capmoe_dnnl_mat *w);
int capmoe_dnnl_mat_cw(const capmoe_dnnl_mat *w);
/* Output columns of chunk j per source (w_j). */
int capmoe_dnnl_mat_chunk_cols(const capmoe_dnnl_mat *w, int j);

/* Builds (once) what products of M rows (padded) with w need, and the
 * slots' scratchpads for threads slots. 0, or -1 with err set (out of
 * memory, no oneDNN implementation): the caller then takes another path. */
int capmoe_dnnl_prepare(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int M, int threads,
                        capmoe_error *err);
/* y [M, n_src * w_j] (contiguous rows: source 0's w_j columns, then source
 * 1's) = x [M, K] (BF16, contiguous rows) times chunk j of w transposed, on
 * the calling thread as slot `slot`. M must have been prepared. Returns 0,
 * or -1 (a oneDNN failure; recorded: capmoe_dnnl_failed). */
int capmoe_dnnl_run_chunk(capmoe_dnnl *d, int slot, const capmoe_dnnl_mat *w, int j,
                          const uint16_t *x, int M, float *y);
/* The same product as one call over an OpenMP team of nthr threads (built on
 * first use), from the calling thread while the pool is idle: one large
 * product per call instead of items. 0, or -1 with err set. */
int capmoe_dnnl_run_team(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int j, const uint16_t *x,
                         int M, float *y, int nthr, capmoe_error *err);
/* The name of the oneDNN implementation of w's full chunk at M rows for a
 * team of nthr (1: the pool's items), once built ("brg:avx512_core_amx_bf16"). */
const char *capmoe_dnnl_impl(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int M, int nthr);
/* Records a failure of the caller's (out of scratch memory in an item). */
void capmoe_dnnl_set_failed(capmoe_dnnl *d, const char *what);
/* Whether a run_chunk failed since the last call (then err names it and the
 * flag is cleared). */
int capmoe_dnnl_failed(capmoe_dnnl *d, capmoe_error *err);

#endif
