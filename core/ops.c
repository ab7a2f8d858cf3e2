/* ops.c - float32 kernels: BLAS wrappers, RMSNorm, RoPE, SiLU, softmax. */
#include "capmoe/ops.h"

#include <cblas.h>
#include <math.h>

/* Up to GEMV_MAX_ROWS rows run as matrix-vector products: no packing of B,
 * which dominates small sgemm calls (measured with `capmoe bench --decode`). */
#ifndef GEMV_MAX_ROWS
#define GEMV_MAX_ROWS 4
#endif

void capmoe_gemm_nt(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    if (M <= GEMV_MAX_ROWS) {
        /* A few rows (decode steps, an expert with few tokens): matrix-vector
         * products read B in place, where sgemm would first pack all of it. */
        for (int i = 0; i < M; i++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A + (size_t)i * lda, 1,
                        beta, C + (size_t)i * ldc, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

void capmoe_gemm_nn(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                    int N, int K) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
                ldc);
}

void capmoe_linear(float *y, const float *x, const float *W, const float *bias, int M, int N,
                   int K) {
    capmoe_gemm_nt(y, N, x, K, W, K, M, N, K, 1.0f, 0.0f);
    if (bias) {
        for (int i = 0; i < M; i++) {
            float *row = y + (size_t)i * N;
            for (int j = 0; j < N; j++) row[j] += bias[j];
        }
    }
}

void capmoe_gemv(float *y, const float *A, int lda, const float *x, int M, int N, int trans) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, M, N, 1.0f, A, lda, x, 1, 0.0f,
                y, 1);
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

void capmoe_silu_mul(float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = a[i];
        a[i] = (x / (1.0f + expf(-x))) * b[i];
    }
}

void capmoe_softmax_row(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    if (mx == -INFINITY) {
        for (int i = 0; i < n; i++) x[i] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        float e = (x[i] == -INFINITY) ? 0.0f : expf(x[i] - mx);
        x[i] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void capmoe_axpy(float *restrict y, const float *restrict x, float w, int n) {
    for (int i = 0; i < n; i++) y[i] += w * x[i];
}

int capmoe_blas_threads(void) { return openblas_get_num_threads(); }
void capmoe_blas_set_threads(int n) { openblas_set_num_threads(n); }
