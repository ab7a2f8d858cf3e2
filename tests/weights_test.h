/* weights_test.h - helpers shared by the Check suites of the matrix kernels
 * (check_kern.c, check_panel.c): a deterministic generator of values whose
 * every product term matters, an assertion that only calls into Check on
 * failure, and storing values and NaN as F32 / BF16 / F16 weight elements.
 * Header-only (static inline): each suite is its own program. */
#ifndef CAPMOE_TESTS_WEIGHTS_TEST_H
#define CAPMOE_TESTS_WEIGHTS_TEST_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "capmoe/safetensors.h"

/* ---- deterministic random numbers (splitmix64) ------------------------------ */

static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }
/* A value in +-[0.25, 1): every product term matters to the sum, so a term
 * dropped or counted twice is far outside the tolerance. */
static inline float rng_val(uint64_t *s) {
    float v = (float)(0.25 + 0.75 * rng_unit(s));
    return (rng_next(s) & 1) ? -v : v;
}

/* Check records every passing ck_assert (a write per assertion): the
 * element-wise checks here only call into Check when they fail. */
#define EXPECT(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                               \
    } while (0)

static inline const char *dt_name(capmoe_dtype t) {
    return t == CAPMOE_DTYPE_F32 ? "F32" : t == CAPMOE_DTYPE_BF16 ? "BF16" : "F16";
}
static inline size_t dt_size(capmoe_dtype t) { return t == CAPMOE_DTYPE_F32 ? 4 : 2; }

/* Rounds v to dtype t, stores it at element i of buf, returns the value the
 * stored element represents (what an exact kernel must multiply with). */
static inline float store_elem(void *buf, capmoe_dtype t, size_t i, float v) {
    if (t == CAPMOE_DTYPE_F32) {
        ((float *)buf)[i] = v;
        return v;
    }
    uint16_t h = t == CAPMOE_DTYPE_BF16 ? capmoe_f32_to_bf16(v) : capmoe_f32_to_f16(v);
    memcpy((char *)buf + 2 * i, &h, 2);
    return t == CAPMOE_DTYPE_BF16 ? capmoe_bf16_to_f32(h) : capmoe_f16_to_f32(h);
}
static inline void store_nan(void *buf, capmoe_dtype t, size_t i) {
    if (t == CAPMOE_DTYPE_F32) {
        ((float *)buf)[i] = NAN;
        return;
    }
    uint16_t h = t == CAPMOE_DTYPE_BF16 ? 0x7fc0 : 0x7e00;
    memcpy((char *)buf + 2 * i, &h, 2);
}

/* The reference of C = alpha A W^T + beta C0 in double: ref[i*N + j] and
 * mag[i*N + j] = the sum of the terms' magnitudes (the tolerance's scale),
 * for A (M x K, stride lda), W's float32 values (N x K, stride K) and C0
 * (stride ldc; read only when beta != 0). */
static inline void ref_product(double *ref, double *mag, const float *A, int lda, const float *W,
                               const float *C0, int ldc, int M, int N, int K, float alpha,
                               float beta) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, m = 0;
            for (int k = 0; k < K; k++) {
                double t = (double)A[(size_t)i * lda + k] * W[(size_t)j * K + k];
                s += t;
                m += fabs(t);
            }
            s *= alpha, m *= fabs(alpha);
            if (beta != 0.0f) {
                s += (double)beta * C0[(size_t)i * ldc + j];
                m += fabs((double)beta * C0[(size_t)i * ldc + j]);
            }
            ref[(size_t)i * N + j] = s;
            mag[(size_t)i * N + j] = m;
        }
}

/* The result C of a product case: every C[i][j] (i < M, j < N; row stride
 * ldc, from element coff of the cn floats of cbuf) within 1e-5 of
 * max(1, mag[i*N + j]) of ref[i*N + j]; every other element of cbuf
 * bit-for-bit c0's (nothing written outside the matrix). `what` describes
 * the case in failure messages. */
static inline void check_product(const float *cbuf, const float *c0, size_t cn, size_t coff, int M,
                                 int N, int ldc, const double *ref, const double *mag,
                                 const char *what) {
    const float *C = cbuf + coff;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double r = ref[(size_t)i * N + j], m = mag[(size_t)i * N + j];
            double got = C[(size_t)i * ldc + j];
            double tol = 1e-5 * (m > 1 ? m : 1);
            EXPECT(isfinite(got) && fabs(got - r) <= tol,
                   "%s: C[%d][%d] = %.9g, expected %.9g (tol %.3g)", what, i, j, got, r, tol);
        }
    for (size_t x = 0; x < cn; x++) {
        int inside = 0;
        if (x >= coff) {
            size_t r = (x - coff) / (size_t)ldc, c = (x - coff) % (size_t)ldc;
            inside = r < (size_t)M && c < (size_t)N;
        }
        if (!inside)
            EXPECT(memcmp(&cbuf[x], &c0[x], sizeof(float)) == 0,
                   "%s: C buffer element %zu (outside the matrix) was written: %.9g, was %.9g",
                   what, x, (double)cbuf[x], (double)c0[x]);
    }
}

#endif
