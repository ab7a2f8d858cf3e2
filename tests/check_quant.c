/* check_quant.c - tests of core/quant.c (Q8 / Q4 / F8E4M3 panels, quant.h):
 *  - the e4m3 decoding of all 256 bytes against the format's definition;
 *  - Q8 and Q4 packing against a naive quantizer written here from the
 *    format's definition (llama.cpp's Q8_0 and Q4_1 rules), read back
 *    through the kernels: a product with a one-hot activation picks each
 *    dequantized weight, exactly;
 *  - capmoe_quant_gemm on every path the CPU has (AVX-512 VNNI, AVX2,
 *    portable) against a double-precision sum over the naively quantized
 *    weights and activations, over many shapes (partial panels, one to 20
 *    rows, alpha / beta, beta == 0 over NaN), and the paths bit for bit
 *    against one another; the quantization error against the float product
 *    within its bound;
 *  - the F8E4M3 product and unpacking against a double sum of byte times
 *    block scale (several block shapes, odd K, partial blocks);
 *  - capmoe_gemm_nt on Q8 / Q4 / F8 panels split over pools of 1-3 threads
 *    and with no pool (the stack path), equal to the single call. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/ops.h"
#include "capmoe/panel.h"
#include "capmoe/par.h"
#include "capmoe/quant.h"

#include "weights_test.h"

/* ---- naive references ----------------------------------------------------------- */

/* e4m3 (fn) by its definition: sign, 4 exponent bits (bias 7), 3 mantissa
 * bits, subnormals at exponent 0. */
static double e4m3_ref(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    double v = e == 0 ? (m / 8.0) * pow(2.0, -6) : (1.0 + m / 8.0) * pow(2.0, e - 7);
    return s ? -v : v;
}

/* Dequantized weights of W [N][K] under Q8_0 (d = f16(max|w| / 127),
 * q = round(w / d)) or Q4_1 (d = f16((max - min) / 15), m = f16(min),
 * q = round((w - m) / d) in [0, 15]). */
static void naive_quant_w(double *out, const float *W, int N, int K, capmoe_dtype t) {
    for (int n = 0; n < N; n++)
        for (int b = 0; b < K / 32; b++) {
            const float *w = W + (size_t)n * K + b * 32;
            double *o = out + (size_t)n * K + b * 32;
            if (t == CAPMOE_DTYPE_Q8) {
                float amax = 0;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(w[i]));
                float d = capmoe_f16_to_f32(capmoe_f32_to_f16(amax / 127.0f));
                for (int i = 0; i < 32; i++) {
                    float q = d > 0 ? nearbyintf(w[i] / d) : 0;
                    q = fminf(127, fmaxf(-127, q));
                    o[i] = (double)d * q;
                }
            } else {
                float lo = w[0], hi = w[0];
                for (int i = 0; i < 32; i++) lo = fminf(lo, w[i]), hi = fmaxf(hi, w[i]);
                float d = capmoe_f16_to_f32(capmoe_f32_to_f16((hi - lo) / 15.0f));
                float m = capmoe_f16_to_f32(capmoe_f32_to_f16(lo));
                for (int i = 0; i < 32; i++) {
                    float q = d > 0 ? nearbyintf((w[i] - m) / d) : 0;
                    q = fminf(15, fmaxf(0, q));
                    o[i] = (double)d * q + m;
                }
            }
        }
}

/* Activations quantized per block of 32: d = max|a| / 127, q = round(a * 127 / max|a|). */
static void naive_quant_a(double *out, const float *A, int M, int K) {
    for (int r = 0; r < M; r++)
        for (int b = 0; b < K / 32; b++) {
            const float *a = A + (size_t)r * K + b * 32;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(a[i]));
            float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0;
            for (int i = 0; i < 32; i++)
                out[(size_t)r * K + b * 32 + i] = (double)d * fminf(127, fmaxf(-127, nearbyintf(a[i] * id)));
        }
}

/* ---- Q8 / Q4 --------------------------------------------------------------------- */

static const capmoe_dtype QT[2] = {CAPMOE_DTYPE_Q8, CAPMOE_DTYPE_Q4};

static void *packed(capmoe_dtype t, const float *W, int N, int K) {
    size_t bytes = capmoe_panel_matrix_bytes(t, N, K);
    void *P = malloc(bytes);
    memset(P, 0xa5, bytes); /* every byte must be written */
    capmoe_quant_pack(P, t, W, (size_t)K, N, K);
    return P;
}

/* Weights with blocks of very different ranges, some constant, some zero. */
static void fill_w(float *W, int N, int K, uint64_t *rs) {
    for (int n = 0; n < N; n++)
        for (int b = 0; b < K / 32; b++) {
            int kind = (int)(rng_next(rs) % 8);
            float sc = (float)pow(2.0, (double)(rng_next(rs) % 12) - 6.0);
            float off = kind == 1 ? 0.5f * sc : 0.0f;
            for (int i = 0; i < 32; i++) {
                float v = kind == 0 ? 0.0f : kind == 2 ? sc * 0.3f : off + sc * rng_val(rs);
                W[(size_t)n * K + b * 32 + i] = v;
            }
        }
}

START_TEST(test_f8_decode_all_bytes) {
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue; /* NaN in e4m3fn */
        EXPECT((double)capmoe_f8_to_f32((uint8_t)b) == e4m3_ref((uint8_t)b), "byte 0x%02x: %g != %g",
               b, capmoe_f8_to_f32((uint8_t)b), e4m3_ref((uint8_t)b));
    }
    ck_assert_float_eq(capmoe_f8_to_f32(0x7e), 448.0f);
    ck_assert_float_eq(capmoe_f8_to_f32(0x01), 0x1p-9f);
}
END_TEST

/* One-hot activations read every dequantized weight back exactly. */
START_TEST(test_q_pack_reads_back) {
    capmoe_dtype t = QT[_i];
    uint64_t rs = 11 + (uint64_t)_i;
    int N = 37, K = 96;
    float *W = malloc(sizeof(float) * N * K), *A = calloc((size_t)K * K, sizeof(float));
    double *ref = malloc(sizeof(double) * N * K);
    fill_w(W, N, K, &rs);
    naive_quant_w(ref, W, N, K, t);
    void *P = packed(t, W, N, K);
    for (int k = 0; k < K; k++) A[(size_t)k * K + k] = 1.0f;
    float *C = malloc(sizeof(float) * K * N);
    capmoe_panel_gemm(C, N, A, K, P, t, K, N, K, 1.0f, 0.0f);
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++) {
            double want = ref[(size_t)n * K + k], bmax = 0;
            for (int i = k / 32 * 32; i < k / 32 * 32 + 32; i++)
                bmax = fmax(bmax, fabs(W[(size_t)n * K + i]));
            EXPECT(fabs(C[(size_t)k * N + n] - want) <= 2e-6 * (fabs(want) + bmax) + 1e-30,
                   "%s W[%d][%d] reads %.9g, naive quantizer %.9g (float %g)", _i ? "Q4" : "Q8", n, k,
                   C[(size_t)k * N + n], want, W[(size_t)n * K + k]);
        }
    free(W), free(A), free(ref), free(P), free(C);
}
END_TEST

static int run_path(int path, float *C, int ldc, const void *qa, const void *P, capmoe_dtype t, int M,
                    int N, int K, float alpha, float beta) {
    return capmoe_quant_gemm_path(path, C, ldc, qa, P, t, M, N, K, alpha, beta);
}

START_TEST(test_q_gemm_vs_reference) {
    capmoe_dtype t = QT[_i % 2];
    uint64_t rs = 1000 + (uint64_t)_i;
    static const int Ms[] = {1, 2, 3, 5, 8, 9, 16, 20};
    static const int Ns[] = {1, 15, 16, 17, 48, 70};
    static const int Ks[] = {32, 64, 160, 512};
    int cases = 0;
    for (int mi = 0; mi < 8; mi++)
        for (int ni = 0; ni < 6; ni++) {
            int M = Ms[mi], N = Ns[ni], K = Ks[(mi + ni + _i) % 4], ldc = N + 3;
            float alpha = (ni & 1) ? 0.5f : 1.0f, beta = (mi & 1) ? -0.75f : 0.0f;
            float *W = malloc(sizeof(float) * N * K), *A = malloc(sizeof(float) * M * K);
            double *wq = malloc(sizeof(double) * N * K), *aq = malloc(sizeof(double) * M * K);
            fill_w(W, N, K, &rs);
            for (int i = 0; i < M * K; i++) A[i] = rng_val(&rs) * (float)(1 + (i / 32) % 3);
            naive_quant_w(wq, W, N, K, t);
            naive_quant_a(aq, A, M, K);
            void *P = packed(t, W, N, K);
            void *qa = malloc(capmoe_qact_bytes(M, K));
            capmoe_qact_quantize(qa, A, K, M, K);
            size_t cn = (size_t)M * ldc;
            float *c0 = malloc(sizeof(float) * cn), *C[3];
            for (size_t i = 0; i < cn; i++) c0[i] = beta == 0.0f ? NAN : rng_val(&rs);
            int have[3];
            for (int p = 0; p < 3; p++) {
                C[p] = malloc(sizeof(float) * cn);
                memcpy(C[p], c0, sizeof(float) * cn);
                have[p] = run_path(p, C[p], ldc, qa, P, t, M, N, K, alpha, beta) == 0;
            }
            ck_assert(have[0]);
            for (int r = 0; r < M; r++)
                for (int n = 0; n < N; n++) {
                    double s = 0, mag = 0, f = 0;
                    for (int k = 0; k < K; k++) {
                        s += aq[(size_t)r * K + k] * wq[(size_t)n * K + k];
                        mag += fabs(aq[(size_t)r * K + k] * wq[(size_t)n * K + k]);
                        f += (double)A[(size_t)r * K + k] * W[(size_t)n * K + k];
                    }
                    size_t ci = (size_t)r * ldc + n;
                    double want = alpha * s + (beta == 0.0f ? 0.0 : beta * (double)c0[ci]);
                    double tol = 1e-5 * (fabs(alpha) * mag + (beta == 0.0f ? 0.0 : fabs(beta * c0[ci]))) + 1e-30;
                    for (int p = 0; p < 3; p++) {
                        if (!have[p]) continue;
                        EXPECT(fabs(C[p][ci] - want) <= tol,
                               "%s path %d M=%d N=%d K=%d [%d][%d]: %.9g, reference %.9g (tol %.3g)",
                               _i % 2 ? "Q4" : "Q8", p, M, N, K, r, n, C[p][ci], want, tol);
                        EXPECT(!memcmp(&C[p][ci], &C[0][ci], sizeof(float)),
                               "path %d differs from the portable code at [%d][%d]: %.9g vs %.9g", p,
                               r, n, C[p][ci], C[0][ci]);
                    }
                    /* the quantization error itself: a few % of the terms' size */
                    double fm = 0;
                    for (int k = 0; k < K; k++)
                        fm += fabs((double)A[(size_t)r * K + k] * W[(size_t)n * K + k]);
                    EXPECT(fabs(s - f) <= (t == CAPMOE_DTYPE_Q8 ? 0.02 : 0.15) * fm + 1e-30,
                           "quantization error %.3g of %.3g", fabs(s - f), fm);
                }
            for (int r = 0; r < M; r++) /* outside the M x N block: untouched */
                for (int n = N; n < ldc; n++)
                    EXPECT(isnan(c0[(size_t)r * ldc + n]) ? isnan(C[0][(size_t)r * ldc + n])
                                                            : C[0][(size_t)r * ldc + n] == c0[(size_t)r * ldc + n],
                           "wrote past N");
            for (int p = 0; p < 3; p++) free(C[p]);
            free(W), free(A), free(wq), free(aq), free(P), free(qa), free(c0);
            cases++;
        }
    ck_assert_int_eq(cases, 48);
}
END_TEST

/* ---- F8E4M3 -------------------------------------------------------------------- */

typedef struct f8m {
    int N, K, bn, bk;
    uint8_t *W;
    float *S;
    void *P;
} f8m;

static void f8m_make(f8m *m, int N, int K, int bn, int bk, uint64_t *rs) {
    m->N = N, m->K = K, m->bn = bn, m->bk = bk;
    int nb = (N + bn - 1) / bn, kb = (K + bk - 1) / bk;
    m->W = malloc((size_t)N * K);
    m->S = malloc(sizeof(float) * nb * kb);
    for (int i = 0; i < N * K; i++) {
        uint8_t b = (uint8_t)rng_next(rs);
        if ((b & 0x7f) == 0x7f) b ^= 1;
        m->W[i] = b;
    }
    for (int i = 0; i < nb * kb; i++) m->S[i] = (float)(rng_unit(rs) * 1e-3 + 1e-5);
    size_t bytes = capmoe_panel_matrix_bytes(CAPMOE_DTYPE_F8E4M3, N, K);
    m->P = malloc(bytes);
    capmoe_f8_pack(m->P, m->W, (size_t)K, m->S, bn, bk, N, K);
}
static void f8m_free(f8m *m) { free(m->W), free(m->S), free(m->P); }
static double f8m_w(const f8m *m, int n, int k) {
    int kb = (m->K + m->bk - 1) / m->bk;
    return e4m3_ref(m->W[(size_t)n * m->K + k]) * (double)m->S[(size_t)(n / m->bn) * kb + k / m->bk];
}

START_TEST(test_f8_gemm_vs_reference) {
    uint64_t rs = 77 + (uint64_t)_i;
    static const int shapes[][4] = {{40, 300, 128, 128}, {130, 129, 128, 128}, {17, 257, 16, 256},
                                    {256, 64, 128, 128}, {33, 1, 128, 128}, {64, 384, 32, 384}};
    const int *s = shapes[_i];
    f8m m;
    f8m_make(&m, s[0], s[1], s[2], s[3], &rs);
    int N = m.N, K = m.K;
    for (int M = 1; M <= 13; M += 4) {
        float *A = malloc(sizeof(float) * M * (K + 1)), *C = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * (K + 1); i++) A[i] = rng_val(&rs);
        for (int i = 0; i < M * N; i++) C[i] = NAN;
        capmoe_panel_gemm(C, N, A, K + 1, m.P, CAPMOE_DTYPE_F8E4M3, M, N, K, 1.0f, 0.0f);
        float *C2 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * N; i++) C2[i] = 1.0f;
        capmoe_panel_gemm(C2, N, A, K + 1, m.P, CAPMOE_DTYPE_F8E4M3, M, N, K, 2.0f, 0.5f);
        for (int r = 0; r < M; r++)
            for (int n = 0; n < N; n++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < K; k++) {
                    double term = (double)A[(size_t)r * (K + 1) + k] * f8m_w(&m, n, k);
                    ref += term, mag += fabs(term);
                }
                EXPECT(fabs(C[(size_t)r * N + n] - ref) <= 1e-5 * mag + 1e-30,
                       "F8 %dx%d blocks %dx%d M=%d [%d][%d]: %.9g vs %.9g", N, K, m.bn, m.bk, M, r,
                       n, C[(size_t)r * N + n], ref);
                EXPECT(fabs(C2[(size_t)r * N + n] - (2 * ref + 0.5)) <= 2e-5 * mag + 1e-6,
                       "F8 alpha/beta [%d][%d]", r, n);
            }
        free(A), free(C), free(C2);
    }
    /* the unpacked matrix (the sgemm path's input) */
    int np = (N + 15) / 16;
    float *U = malloc(sizeof(float) * K * np * 16);
    capmoe_panel_unpack(U, (size_t)np * 16, m.P, CAPMOE_DTYPE_F8E4M3, K, np);
    for (int k = 0; k < K; k++)
        for (int n = 0; n < np * 16; n++) {
            double want = n < N ? f8m_w(&m, n, k) : 0.0;
            EXPECT(fabs(U[(size_t)k * np * 16 + n] - want) <= 1e-7 * fabs(want),
                   "unpack [%d][%d] %.9g vs %.9g", k, n, U[(size_t)k * np * 16 + n], want);
        }
    /* the dequantized copy */
    float *D = malloc(sizeof(float) * N * K);
    int r0 = N > 20 ? 17 : 0; /* rows from r0 on: scales of their own block rows */
    capmoe_f8_dequant(D, m.W, (size_t)K, m.S, m.bn, m.bk, r0, N - r0, K);
    for (int n = r0; n < N; n++)
        for (int k = 0; k < K; k++)
            EXPECT(fabs(D[(size_t)(n - r0) * K + k] - f8m_w(&m, n, k)) <= 1e-7 * fabs(f8m_w(&m, n, k)),
                   "dequant [%d][%d]", n, k);
    free(U), free(D);
    f8m_free(&m);
}
END_TEST

/* ---- through ops.c -------------------------------------------------------------- */

START_TEST(test_gemm_nt_pools) {
    static const capmoe_dtype T[3] = {CAPMOE_DTYPE_Q8, CAPMOE_DTYPE_Q4, CAPMOE_DTYPE_F8E4M3};
    capmoe_dtype t = T[_i];
    uint64_t rs = 5 + (uint64_t)_i;
    int N = 200, K = 256;
    float *W = malloc(sizeof(float) * N * K);
    fill_w(W, N, K, &rs);
    void *P;
    f8m m = {0};
    if (t == CAPMOE_DTYPE_F8E4M3) {
        f8m_make(&m, N, K, 128, 128, &rs);
        P = m.P;
    } else {
        P = packed(t, W, N, K);
    }
    capmoe_wmat B = {P, t, 1, NULL};
    static const int Ms[] = {1, 4, 33, 300};
    for (int mi = 0; mi < 4; mi++) {
        int M = Ms[mi];
        float *A = malloc(sizeof(float) * M * K), *C0 = malloc(sizeof(float) * M * N);
        float *C = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) A[i] = rng_val(&rs);
        capmoe_gemm_nt(NULL, C0, N, A, K, B, K, M, N, K, 1.0f, 0.0f);
        for (int th = 1; th <= 3; th++) {
            capmoe_error err;
            capmoe_par *par = capmoe_par_new(th, &err);
            ck_assert_ptr_nonnull(par);
            capmoe_gemm_nt(par, C, N, A, K, B, K, M, N, K, 1.0f, 0.0f);
            for (int i = 0; i < M * N; i++) {
                /* sgemm (F8 with many rows) may sum in another order */
                double tol = t == CAPMOE_DTYPE_F8E4M3 ? 1e-4 * (fabs(C0[i]) + 1e-3) : 0.0;
                EXPECT(fabs(C[i] - C0[i]) <= tol, "%d threads M=%d: [%d] %.9g vs %.9g", th, M, i,
                       C[i], C0[i]);
            }
            capmoe_par_free(par);
        }
        free(A), free(C0), free(C);
    }
    if (t == CAPMOE_DTYPE_F8E4M3) f8m_free(&m);
    else free(P);
    free(W);
}
END_TEST

START_TEST(test_weights_parse) {
    capmoe_weights w;
    ck_assert_int_eq(capmoe_weights_parse("q8", &w), 0);
    ck_assert_int_eq(w, CAPMOE_WEIGHTS_Q8);
    ck_assert_int_eq(capmoe_weights_parse("q4", &w), 0);
    ck_assert_int_eq(w, CAPMOE_WEIGHTS_Q4);
    ck_assert_int_eq(capmoe_weights_parse("bf16", &w), 0);
    ck_assert_int_eq(w, CAPMOE_WEIGHTS_STORED);
    ck_assert_int_eq(capmoe_weights_parse("q5", &w), -1);
    ck_assert_int_eq(capmoe_weights_parse("", &w), -1);
    ck_assert_str_eq(capmoe_weights_name(CAPMOE_WEIGHTS_Q4), "q4");
}
END_TEST

static Suite *quant_suite(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("quant");
    tcase_add_test(tc, test_f8_decode_all_bytes);
    tcase_add_loop_test(tc, test_q_pack_reads_back, 0, 2);
    tcase_add_loop_test(tc, test_q_gemm_vs_reference, 0, 4);
    tcase_add_loop_test(tc, test_f8_gemm_vs_reference, 0, 6);
    tcase_add_loop_test(tc, test_gemm_nt_pools, 0, 3);
    tcase_add_test(tc, test_weights_parse);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(quant_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
