/* check_dnnl.c - tests of core/dnnl_matmul.c (the --compute bf16 products)
 * and core/cpu_features.c: capmoe_bf16_from_f32 bit for bit against
 * capmoe_f32_to_bf16 (round to nearest even, NaN kept NaN); weights of
 * F32 / BF16 / F16 packed in chunks (one source and gate/up stacked, odd K,
 * a narrow last chunk) and their products over padded row counts and row
 * strides against a naive double product of the BF16-rounded operands
 * (within float32 accumulation error), and against the exact float32
 * operands within the BF16 bound; concurrent chunks on a pool of 3 threads;
 * the BLAS report (the kernel levels, the warning naming the fix). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cpu_features.h"
#include "capmoe/dnnl_matmul.h"
#include "capmoe/safetensors.h"

static uint64_t rs = 88172645463325252ULL;
static float frand(void) { /* uniform [-1, 1) */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float bf(float x) { /* x rounded to BF16 and back */
    uint16_t h = capmoe_f32_to_bf16(x);
    return capmoe_bf16_to_f32(h);
}

START_TEST(test_bf16_round) {
    float v[] = {0.0f, -0.0f, 1.0f, 1.00390625f, 1.005859375f, 3.14159265f, -2.7182818f, 1e-40f,
                 65504.0f, 3.3895314e38f, INFINITY, -INFINITY, 1.0f + 1.0f / 256.0f};
    size_t n = sizeof v / sizeof v[0];
    uint16_t out[16];
    capmoe_bf16_from_f32(out, v, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(out[i] == capmoe_f32_to_bf16(v[i]), "%g: %04x vs %04x", (double)v[i], out[i],
                      capmoe_f32_to_bf16(v[i]));
    for (int i = 0; i < 100000; i++) {
        float x = frand() * powf(2.0f, (float)(i % 60 - 30));
        uint16_t h;
        capmoe_bf16_from_f32(&h, &x, 1);
        ck_assert_uint_eq(h, capmoe_f32_to_bf16(x));
    }
    float nan = NAN;
    capmoe_bf16_from_f32(out, &nan, 1);
    ck_assert(isnan(capmoe_bf16_to_f32(out[0])));
    /* long arrays (the 16-wide path where the CPU has AVX-512, then its
     * scalar tail): random bit patterns (NaNs with payloads, infinities,
     * denormals, ties) against the one-value reference, every length mod 16 */
    enum { LN = 4099 };
    static float bits[LN];
    static uint16_t got[LN];
    uint32_t st = 12345;
    for (int i = 0; i < LN; i++) {
        st = st * 1664525u + 1013904223u;
        uint32_t u = st;
        if (i % 7 == 0) u = (u & 0x807fffffu) | 0x7f800000u; /* exponent all ones */
        if (i % 11 == 0) u &= 0x807fffffu;                   /* denormal or zero */
        if (i % 13 == 0) u = (u & 0xffff0000u) | 0x8000u;    /* an exact tie */
        memcpy(&bits[i], &u, 4);
    }
    for (int n0 = LN - 17; n0 <= LN; n0++) {
        capmoe_bf16_from_f32(got, bits, (size_t)n0);
        for (int i = 0; i < n0; i++) {
            float x = bits[i];
            if (isnan(x)) ck_assert_msg(isnan(capmoe_bf16_to_f32(got[i])), "NaN %d lost", i);
            else ck_assert_msg(got[i] == capmoe_f32_to_bf16(x), "%d of %d: %04x vs %04x", i, n0,
                               got[i], capmoe_f32_to_bf16(x));
        }
    }
}
END_TEST

/* A weight matrix [N, K] of dtype dt from float values w (rounded to dt). */
static void *store(const float *w, size_t n, capmoe_dtype dt, float *rounded) {
    void *p = malloc(n * (dt == CAPMOE_DTYPE_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        if (dt == CAPMOE_DTYPE_F32) {
            ((float *)p)[i] = w[i];
            rounded[i] = w[i];
        } else if (dt == CAPMOE_DTYPE_BF16) {
            ((uint16_t *)p)[i] = capmoe_f32_to_bf16(w[i]);
            rounded[i] = capmoe_bf16_to_f32(((uint16_t *)p)[i]);
        } else {
            ((uint16_t *)p)[i] = capmoe_f32_to_f16(w[i]);
            rounded[i] = capmoe_f16_to_f32(((uint16_t *)p)[i]);
        }
    }
    return p;
}

struct run_job {
    capmoe_dnnl *d;
    capmoe_dnnl_mat *w;
    const uint16_t *x;
    int M;
    float *y;      /* chunk j's output at y + j * stride */
    size_t stride;
    int bad;
};

static void run_item(void *arg, int j, int slot) {
    struct run_job *r = arg;
    if (capmoe_dnnl_run_chunk(r->d, slot, r->w, j, r->x, r->M, r->y + (size_t)j * r->stride))
        r->bad = 1;
}

/* One shape: n_src sources of N x K as dt; M rows (run padded); the chunks
 * serially, then on a pool of `threads`. */
static void one_case(capmoe_dnnl *d, capmoe_dtype dt, int n_src, int N, int K, int cw, int M,
                     int threads) {
    size_t nk = (size_t)N * K;
    float *wv[2], *wr[2];
    void *wp[2];
    capmoe_wmat src[2];
    for (int s = 0; s < n_src; s++) {
        wv[s] = malloc(nk * sizeof(float));
        wr[s] = malloc(nk * sizeof(float));
        for (size_t i = 0; i < nk; i++) wv[s][i] = frand() * 0.5f;
        wp[s] = store(wv[s], nk, dt, wr[s]);
        src[s] = (capmoe_wmat){wp[s], dt, 0, NULL};
    }
    capmoe_par *par = capmoe_par_new(threads, NULL);
    capmoe_error err;
    capmoe_dnnl_mat *w;
    ck_assert_msg(capmoe_dnnl_pack(d, par, &w, src, n_src, N, K, cw, &err) == 0, "%s", err.msg);
    int cwv = capmoe_dnnl_mat_cw(w), nch = capmoe_dnnl_mat_chunks(w);
    ck_assert_int_eq(cwv, cw < N ? cw : N);
    ck_assert_int_eq(nch, (N + cwv - 1) / cwv);
    ck_assert(capmoe_dnnl_mat_bytes(w) >= (size_t)n_src * nk * 2);
    int Mp = capmoe_dnnl_pad_rows(M);
    ck_assert(Mp >= M && Mp % 16 == 0 && Mp - M < 64);
    float *x = malloc((size_t)M * K * sizeof(float));
    uint16_t *xb = calloc((size_t)Mp * K, sizeof(uint16_t)); /* rows M.. stay zero */
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand();
    capmoe_bf16_from_f32(xb, x, (size_t)M * K);
    size_t stride = (size_t)Mp * cwv * n_src;
    float *y = malloc(stride * nch * sizeof(float));
    ck_assert_msg(capmoe_dnnl_prepare(d, w, Mp, threads, &err) == 0, "%s", err.msg);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < stride * nch; i++) y[i] = NAN;
        struct run_job rj = {d, w, xb, Mp, y, stride, 0};
        if (pass == 0)
            for (int j = 0; j < nch; j++) run_item(&rj, j, 0);
        else
            capmoe_par_for(par, nch, run_item, &rj);
        ck_assert(!rj.bad);
        ck_assert(!capmoe_dnnl_failed(d, &err));
        double worst_b = 0, worst_x = 0;
        for (int j = 0; j < nch; j++) {
            int cols = capmoe_dnnl_mat_chunk_cols(w, j), width = cols * n_src;
            for (int i = 0; i < M; i++)
                for (int s = 0; s < n_src; s++)
                    for (int c = 0; c < cols; c++) {
                        int n = j * cwv + c;
                        double rb = 0, rx = 0, mag = 0;
                        for (int k = 0; k < K; k++) {
                            double a = x[(size_t)i * K + k], b = wr[s][(size_t)n * K + k];
                            rb += (double)bf((float)a) * (double)bf((float)b);
                            rx += a * b;
                            mag += fabs(a * b);
                        }
                        double got = y[(size_t)j * stride + (size_t)i * width + (size_t)s * cols + c];
                        ck_assert_msg(isfinite(got), "row %d col %d not written", i, n);
                        /* same BF16 operands: float32 accumulation error only */
                        double eb = fabs(got - rb) / (mag + 1e-30);
                        /* the exact operands: each BF16 rounding is 2^-9 relative */
                        double ex = fabs(got - rx) / (mag + 1e-30);
                        if (eb > worst_b) worst_b = eb;
                        if (ex > worst_x) worst_x = ex;
                    }
        }
        ck_assert_msg(worst_b < 1e-5, "dt %d N %d K %d M %d: %g vs the BF16 operands", (int)dt, N, K, M, worst_b);
        ck_assert_msg(worst_x < 2.0 * 0.00390625, "dt %d N %d K %d M %d: %g vs the exact operands", (int)dt, N, K, M, worst_x);
    }
    capmoe_dnnl_mat_free(w);
    capmoe_par_free(par);
    free(x);
    free(xb);
    free(y);
    for (int s = 0; s < n_src; s++) {
        free(wv[s]);
        free(wr[s]);
        free(wp[s]);
    }
}

START_TEST(test_products) {
    capmoe_dnnl *d;
    capmoe_error err;
    ck_assert_msg(capmoe_dnnl_new(&d, &err) == 0, "%s", err.msg);
    one_case(d, CAPMOE_DTYPE_F32, 1, 100, 64, 64, 1, 1);   /* narrow last chunk, one row */
    one_case(d, CAPMOE_DTYPE_BF16, 2, 96, 37, 32, 20, 3);  /* gate/up stacked, odd K */
    one_case(d, CAPMOE_DTYPE_F16, 1, 48, 128, 256, 70, 2); /* one chunk (cw > N) */
    one_case(d, CAPMOE_DTYPE_BF16, 2, 128, 96, 64, 530, 3); /* M padded to a multiple of 64 */
    one_case(d, CAPMOE_DTYPE_F32, 1, 100, 64, 64, 17, 2);  /* the same weights shape again:
                                                              cached primitives of other M */
    /* an unprepared row count is refused and recorded, not run */
    capmoe_wmat none = {NULL, CAPMOE_DTYPE_F32, 0, NULL};
    capmoe_dnnl_mat *w;
    ck_assert_int_eq(capmoe_dnnl_pack(d, NULL, &w, &none, 1, 16, 16, 16, &err), -1);
    capmoe_dnnl_free(d);
}
END_TEST

START_TEST(test_blas_report) {
    capmoe_cpu_features f;
    memset(&f, 0, sizeof f);
    f.avx2 = f.fma = f.avx512f = f.avx512bw = f.avx512vl = 1;
    capmoe_blas_info b;
    capmoe_blas_info_get(&b, &f);
    ck_assert(b.core[0] && b.config[0]);
    ck_assert_int_eq(b.cpu_isa, CAPMOE_ISA_AVX512);
    ck_assert_str_eq(b.fix, "SKYLAKEX");
    /* a Prescott core on this AVX-512 CPU: weak, one line naming all */
    snprintf(b.core, sizeof b.core, "Prescott");
    b.core_isa = CAPMOE_ISA_SSE;
    b.weak = 1;
    b.dynamic = 1;
    b.forced[0] = '\0';
    char msg[640];
    ck_assert_int_eq(capmoe_blas_warning(&b, &f, msg, sizeof msg), 1);
    ck_assert_ptr_nonnull(strstr(msg, "Prescott"));
    ck_assert_ptr_nonnull(strstr(msg, "avx512f"));
    ck_assert_ptr_nonnull(strstr(msg, "OPENBLAS_CORETYPE=SKYLAKEX"));
    ck_assert_ptr_null(strchr(msg, '\n'));
    b.weak = 0;
    ck_assert_int_eq(capmoe_blas_warning(&b, &f, msg, sizeof msg), 0);
    ck_assert_str_eq(msg, "");
    /* an AVX2 CPU with Haswell kernels is matched */
    capmoe_cpu_features g;
    memset(&g, 0, sizeof g);
    g.avx2 = g.fma = 1;
    capmoe_blas_info h;
    capmoe_blas_info_get(&h, &g);
    ck_assert_int_eq(h.cpu_isa, CAPMOE_ISA_AVX2);
    ck_assert_int_eq(h.weak, h.core_isa != CAPMOE_ISA_UNKNOWN && h.core_isa < CAPMOE_ISA_AVX2);
    ck_assert(capmoe_cpu_count() >= 1);
}
END_TEST

static Suite *dnnl_suite(void) {
    Suite *s = suite_create("dnnl");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_bf16_round);
    tcase_add_test(tc, test_products);
    tcase_add_test(tc, test_blas_report);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(dnnl_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
