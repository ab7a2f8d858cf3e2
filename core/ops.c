/* ops.c - float32 kernels: matrix products (kern.c or OpenBLAS, split across
 * the pool), RMSNorm, RoPE, SiLU, softmax. */
#include "capmoe/ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "capmoe/kern.h"
#include "capmoe/panel.h"
#include "capmoe/quant.h"

/* Products below this many multiply-adds run on one thread: handing half of
 * a smaller one to a worker costs more than it saves. */
#define PAR_MIN_MACS (64 * 1024)

struct nt_job {
    capmoe_par *par;
    float *C;
    const float *A;
    capmoe_wmat B;
    int ldc, lda, ldb, M, N, K;
    float alpha, beta;
    int kern; /* M small enough for the small-M kernels (else sgemm) */
};

/* Float32 copies of B made per sgemm call: panels of about 4 MiB, so each
 * conversion is paid once and stays in cache for sgemm. */
#define PANEL_FLOATS ((size_t)1 << 20)

/* The part's scratch for a converted piece of B of up to `cols` x K floats
 * (fewer columns when that much cannot be had): *tmp is set when it had to
 * be allocated here (par NULL), NULL returned when not even that could. */
static float *convert_buffer(const struct nt_job *j, int part, int cols, int *piece,
                             float **tmp) {
    size_t n = PANEL_FLOATS / (size_t)j->K;
    n = n < 16 ? 16 : n & ~(size_t)15;
    if (n > (size_t)cols) n = (size_t)cols;
    *piece = (int)n;
    *tmp = NULL;
    float *buf = j->par ? capmoe_par_scratch(j->par, part, n * j->K) : NULL;
    if (!buf) buf = *tmp = capmoe_malloc_array(n * (size_t)j->K, sizeof(float));
    return buf;
}

/* sgemm on rows [n0, n1) of a row-major B stored as BF16/F16: converted to
 * float32 a piece at a time. If no buffer can be had, the small-M kernel
 * (which needs none) does the work. */
static void sgemm_converted(const struct nt_job *j, int part, int n0, int n1) {
    int piece;
    float *tmp, *buf = convert_buffer(j, part, n1 - n0, &piece, &tmp);
    size_t es = capmoe_dtype_size(j->B.dtype);
    for (int n = n0; n < n1; n += piece) {
        int rows = n1 - n < piece ? n1 - n : piece;
        const char *src = (const char *)j->B.p + (size_t)n * j->ldb * es;
        float *C = j->C + n;
        if (!buf) {
            capmoe_kern_gemm_nt(C, j->ldc, j->A, j->lda, src, j->B.dtype, j->ldb, j->M, rows,
                                j->K, j->alpha, j->beta);
            continue;
        }
        for (int r = 0; r < rows; r++)
            capmoe_kern_to_f32(buf + (size_t)r * j->K, src + (size_t)r * j->ldb * es, j->B.dtype,
                               (size_t)j->K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, rows, j->K, j->alpha, j->A,
                    j->lda, buf, j->K, j->beta, C, j->ldc);
    }
    free(tmp);
}

/* sgemm on columns [n0, n1) (n0 a multiple of 16) of a B in panel layout:
 * unpacked to a K x cols float32 matrix a piece at a time. If no buffer can
 * be had, the panel kernel (which needs none) does the work. */
static void sgemm_unpacked(const struct nt_job *j, int part, int n0, int n1) {
    int piece; /* a multiple of 16: unpacking writes whole panels */
    float *tmp, *buf = convert_buffer(j, part, (n1 - n0 + 15) & ~15, &piece, &tmp);
    size_t pb = capmoe_panel_bytes(j->B.dtype, j->K);
    for (int n = n0; n < n1; n += piece) {
        int cols = n1 - n < piece ? n1 - n : piece, np = (cols + CAPMOE_PANEL_COLS - 1) / CAPMOE_PANEL_COLS;
        const char *src = (const char *)j->B.p + (size_t)(n / CAPMOE_PANEL_COLS) * pb;
        float *C = j->C + n;
        if (!buf) {
            capmoe_panel_gemm(C, j->ldc, j->A, j->lda, src, j->B.dtype, j->M, cols, j->K, j->alpha,
                              j->beta);
            continue;
        }
        size_t ldb = (size_t)np * CAPMOE_PANEL_COLS;
        capmoe_panel_unpack(buf, ldb, src, j->B.dtype, j->K, np);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->M, cols, j->K, j->alpha, j->A,
                    j->lda, buf, (int)ldb, j->beta, C, j->ldc);
    }
    free(tmp);
}

/* Q8/Q4 weights: the part quantizes A into its scratch (every part of a
 * split product does: M*K steps against the part's M*K*cols products), then
 * runs the int8 product; without a pool's scratch, the panel code quantizes
 * a few rows at a time on the stack. */
static void q_part(const struct nt_job *j, int part, float *C, const void *P, int N) {
    size_t bytes = capmoe_qact_bytes(j->M, j->K);
    void *buf = j->par ? capmoe_par_scratch(j->par, part, (bytes + 3) / 4) : NULL;
    if (!buf) {
        capmoe_panel_gemm(C, j->ldc, j->A, j->lda, P, j->B.dtype, j->M, N, j->K, j->alpha, j->beta);
        return;
    }
    capmoe_qact_quantize(buf, j->A, j->lda, j->M, j->K);
    capmoe_quant_gemm(C, j->ldc, buf, P, j->B.dtype, j->M, N, j->K, j->alpha, j->beta);
}

/* Part `part` of n_parts takes a contiguous range of B's rows (C's columns),
 * in multiples of 16 (whole panels, whole cache lines of C, whole sgemm
 * register tiles). */
static void nt_part(void *arg, int part, int n_parts) {
    const struct nt_job *j = arg;
    int blocks = (j->N + 15) / 16;
    int b0 = blocks * part / n_parts, b1 = blocks * (part + 1) / n_parts;
    int n0 = b0 * 16, n1 = b1 * 16 < j->N ? b1 * 16 : j->N;
    if (n1 <= n0) return;
    float *C = j->C + n0;
    capmoe_wmat B = capmoe_wmat_rows(j->B, j->K, (size_t)j->ldb, n0);
    if (capmoe_dtype_is_q(B.dtype)) {
        q_part(j, part, C, B.p, n1 - n0);
        return;
    }
    if (B.panels) {
        if (j->kern)
            capmoe_panel_gemm(C, j->ldc, j->A, j->lda, B.p, B.dtype, j->M, n1 - n0, j->K,
                              j->alpha, j->beta);
        else
            sgemm_unpacked(j, part, n0, n1);
        return;
    }
    if (j->kern)
        capmoe_kern_gemm_nt(C, j->ldc, j->A, j->lda, B.p, B.dtype, j->ldb, j->M, n1 - n0, j->K,
                            j->alpha, j->beta);
    else if (B.dtype == CAPMOE_DTYPE_F32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, n1 - n0, j->K, j->alpha, j->A,
                    j->lda, B.p, j->ldb, j->beta, C, j->ldc);
    else
        sgemm_converted(j, part, n0, n1);
}

int capmoe_gemm_small(capmoe_wmat W, int M, int K) {
    if (capmoe_dtype_is_q(W.dtype)) return 1; /* the int8 kernels at every M */
    return W.panels ? capmoe_panel_fits(M, K) : M <= capmoe_kern_max_rows(W.dtype);
}

void capmoe_gemm_nt(capmoe_par *par, float *C, int ldc, const float *A, int lda, capmoe_wmat B,
                    int ldb, int M, int N, int K, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    /* Few rows (decode steps, an expert with few tokens): B is streamed once
     * for all rows of A (panel.h, kern.h). More rows: OpenBLAS sgemm,
     * single-threaded, on each part's columns. */
    struct nt_job j = {par, C, A, B, ldc, lda, ldb, M, N, K, alpha, beta,
                       capmoe_gemm_small(B, M, K)};
    int parts = capmoe_par_threads(par);
    long long macs = (long long)M * N * K;
    if (macs < PAR_MIN_MACS * 2LL) parts = 1;
    else if (macs / parts < PAR_MIN_MACS) parts = (int)(macs / PAR_MIN_MACS);
    if (parts > (N + 15) / 16) parts = (N + 15) / 16;
    capmoe_par_run(par, parts, nt_part, &j); /* one part: inline, with part 0's scratch */
}

void capmoe_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
                ldc);
}

void capmoe_linear(capmoe_par *par, float *y, const float *x, capmoe_wmat W, const float *bias,
                   int M, int N, int K) {
    capmoe_gemm_nt(par, y, N, x, K, W, K, M, N, K, 1.0f, 0.0f);
    if (bias) {
        for (int i = 0; i < M; i++) {
            float *row = y + (size_t)i * N;
            for (int j = 0; j < N; j++) row[j] += bias[j];
        }
    }
}

void capmoe_rmsnorm(float *out, int ldo, const float *x, int ld, const float *w, int M, int n,
                    float eps) {
    for (int i = 0; i < M; i++) {
        const float *r = x + (size_t)i * ld;
        float *o = out + (size_t)i * ldo;
        double ss = 0.0;
        for (int j = 0; j < n; j++) ss += (double)r[j] * r[j];
        float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
        for (int j = 0; j < n; j++) o[j] = w[j] * (r[j] * inv);
    }
}

struct resnorm_job {
    float *x, *out;
    const float *add, *w;
    int n;
    float eps;
};

static void resnorm_rows(void *arg, int r0, int r1) {
    const struct resnorm_job *j = arg;
    size_t n = (size_t)j->n;
    if (j->add)
        for (size_t i = (size_t)r0 * n; i < (size_t)r1 * n; i++) j->x[i] += j->add[i];
    if (j->out)
        capmoe_rmsnorm(j->out + (size_t)r0 * n, j->n, j->x + (size_t)r0 * n, j->n, j->w, r1 - r0,
                       j->n, j->eps);
}

void capmoe_residual_norm(capmoe_par *par, float *x, const float *add, float *out, const float *w,
                          int M, int n, float eps) {
    struct resnorm_job j = {x, out, add, w, n, eps};
    /* rows of at least ~16K elements per part: below that a fork costs more */
    int min_rows = n > 0 ? (16384 + n - 1) / n : 1;
    capmoe_par_rows(par, M, min_rows, resnorm_rows, &j);
}

void capmoe_rope_table(float *cs, int d, int pos, const float *inv_freq) {
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        /* As Hugging Face: angle = float(pos) * inv_freq in float32. */
        float ang = (float)pos * inv_freq[i];
        cs[i] = cosf(ang);
        cs[h + i] = sinf(ang);
    }
}

void capmoe_rope_apply(float *v, int d, const float *cs) {
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float c = cs[i], s = cs[h + i];
        float a = v[i], b = v[i + h];
        v[i] = a * c - b * s;
        v[i + h] = b * c + a * s;
    }
}

void capmoe_silu_mul(float *a, const float *b, size_t n) { capmoe_kern_silu_mul(a, b, n); }

void capmoe_softmax_row(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    if (mx == -INFINITY) {
        for (int i = 0; i < n; i++) x[i] = 0.0f;
        return;
    }
    float inv = 1.0f / capmoe_kern_exp_sum(x, n, mx);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void capmoe_axpy(float *restrict y, const float *restrict x, float w, int n) {
    for (int i = 0; i < n; i++) y[i] += w * x[i];
}

void capmoe_blas_single_threaded(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}
