/* check_kern.c - tests of core/kern.c, core/par.c and the matrix product of
 * core/ops.c: capmoe_kern_gemm_nt for B stored as F32 / BF16 / F16 against a
 * naive double-precision product of the same (converted-back) values, over
 * many shapes, padded leading dimensions, alpha / beta (beta == 0 over a C
 * full of NaN), unaligned pointers and NaN padding that must never be read;
 * capmoe_kern_to_f32 against the scalar conversions bit for bit; the
 * attention scores and weighted sum against direct sums; the vector exp
 * (capmoe_kern_exp_sum: every output within 2 ulp of expf over its range, 0
 * below and +inf above it, the sum, every tail length), capmoe_kern_silu_mul
 * and capmoe_softmax_row (masked entries) against double references;
 * capmoe_gemm_nt split over pools of 1-3 threads (kernel, sgemm and
 * converted-panel sgemm paths); and the pool itself: every part exactly once, clamped part
 * counts, many back-to-back runs, runs after the workers went to sleep
 * (a barrier that only completes when the sleeping workers wake), scratch. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "capmoe/kern.h"
#include "capmoe/ops.h"
#include "capmoe/par.h"
#include "capmoe/safetensors.h"

#include "weights_test.h"

/* ---- one C = alpha A B^T + beta C case with its reference -------------------- */

typedef struct gcase {
    capmoe_dtype dt;
    int M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *abuf, *A;   /* A = abuf + aoff; padding (k >= K) is NaN */
    void *bbuf;        /* B = bbuf + boff elements; padding is NaN */
    const void *B;
    size_t boff, coff;
    float *c0;         /* initial C buffer (coff + (M-1)*ldc + N floats) */
    size_t cn;
    double *ref, *mag; /* M*N: expected value, sum of |terms| */
} gcase;

/* Buffers are exactly as long as the last row needs, so ASan sees any read
 * past it; the gaps between rows hold NaN, which any read would propagate. */
static void gcase_init(gcase *g, uint64_t *rs, capmoe_dtype dt, int M, int N, int K, int lda,
                       int ldb, int ldc, size_t aoff, size_t boff, size_t coff, float alpha,
                       float beta, int c_nan) {
    memset(g, 0, sizeof *g);
    g->dt = dt, g->M = M, g->N = N, g->K = K, g->lda = lda, g->ldb = ldb, g->ldc = ldc;
    g->alpha = alpha, g->beta = beta, g->boff = boff, g->coff = coff;
    size_t an = aoff + (size_t)(M - 1) * lda + K, bn = boff + (size_t)(N - 1) * ldb + K;
    g->cn = coff + (size_t)(M - 1) * ldc + N;
    g->abuf = malloc(an * sizeof(float));
    g->bbuf = malloc(bn * dt_size(dt));
    g->c0 = malloc(g->cn * sizeof(float));
    float *bv = malloc((size_t)N * K * sizeof(float));
    g->ref = malloc((size_t)M * N * sizeof(double));
    g->mag = malloc((size_t)M * N * sizeof(double));
    EXPECT(g->abuf && g->bbuf && g->c0 && bv && g->ref && g->mag, "out of memory");
    for (size_t i = 0; i < an; i++) g->abuf[i] = NAN;
    for (size_t i = 0; i < bn; i++) store_nan(g->bbuf, dt, i);
    g->A = g->abuf + aoff;
    g->B = (const char *)g->bbuf + boff * dt_size(dt);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) g->A[(size_t)i * lda + k] = rng_val(rs);
    for (int j = 0; j < N; j++)
        for (int k = 0; k < K; k++)
            bv[(size_t)j * K + k] =
                store_elem(g->bbuf, dt, boff + (size_t)j * ldb + k, rng_val(rs));
    for (size_t i = 0; i < g->cn; i++) g->c0[i] = c_nan ? NAN : rng_val(rs);
    ref_product(g->ref, g->mag, g->A, lda, bv, g->c0 + coff, ldc, M, N, K, alpha, beta);
    free(bv);
}

static void gcase_free(gcase *g) {
    free(g->abuf), free(g->bbuf), free(g->c0), free(g->ref), free(g->mag);
}

/* A fresh copy of the initial C (exactly cn floats). */
static float *gcase_c(const gcase *g) {
    float *c = malloc(g->cn * sizeof(float));
    EXPECT(c, "out of memory");
    memcpy(c, g->c0, g->cn * sizeof(float));
    return c;
}

/* Every C[i][j] within 1e-5 of max(1, sum of |terms|); everything else in
 * the C buffer (row gaps, the offset) bit-for-bit untouched. */
static void gcase_check(const gcase *g, const float *cbuf, const char *what) {
    char desc[256];
    snprintf(desc, sizeof desc, "%s %s M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g beta=%g", what,
             dt_name(g->dt), g->M, g->N, g->K, g->lda, g->ldb, g->ldc, (double)g->alpha,
             (double)g->beta);
    check_product(cbuf, g->c0, g->cn, g->coff, g->M, g->N, g->ldc, g->ref, g->mag, desc);
}

/* ---- capmoe_kern_gemm_nt ----------------------------------------------------- */

static const capmoe_dtype DTYPES[3] = {CAPMOE_DTYPE_F32, CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_F16};

static void run_kern_case(uint64_t *rs, capmoe_dtype dt, int M, int N, int K, int variant) {
    gcase g;
    switch (variant) {
    case 0: /* contiguous, beta 0 over NaN */
        gcase_init(&g, rs, dt, M, N, K, K, K, N, 0, 0, 0, 1.0f, 0.0f, 1);
        break;
    case 1: /* padded rows, alpha != 1, beta 0 over NaN */
        gcase_init(&g, rs, dt, M, N, K, K + 3, K + 5, N + 2, 0, 0, 0, -0.75f, 0.0f, 1);
        break;
    case 2: /* padded rows, accumulate into C */
        gcase_init(&g, rs, dt, M, N, K, K + 8, K + 1, N + 7, 0, 0, 0, 1.5f, 0.5f, 0);
        break;
    default: /* A, B and C one element off their allocation's alignment */
        gcase_init(&g, rs, dt, M, N, K, K + 1, K + 2, N + 1, 1, 1, 1, 1.0f, -1.0f, 0);
        break;
    }
    float *c = gcase_c(&g);
    capmoe_kern_gemm_nt(c + g.coff, g.ldc, g.A, g.lda, g.B, dt, g.ldb, M, N, K, g.alpha, g.beta);
    char what[64];
    snprintf(what, sizeof what, "kern_gemm_nt variant %d", variant);
    gcase_check(&g, c, what);
    free(c);
    gcase_free(&g);
}

/* _i = dtype * 4 + variant */
START_TEST(test_kern_gemm_nt_vs_reference) {
    static const int Ms[] = {1, 2, 3, 4, 5, 7, 8, 16, 17, 33};
    static const int Ns[] = {1, 3, 16, 17, 40};
    static const int Ks[] = {1, 7, 8, 15, 16, 17, 31, 32, 33, 256, 300};
    capmoe_dtype dt = DTYPES[_i / 4];
    int variant = _i % 4;
    uint64_t rs = 0x1234u + (uint64_t)_i;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
                /* the full cross product for the plain variant, a spread for the others */
                if (variant != 0 && (mi + ni + ki) % 2 != (size_t)variant % 2) continue;
                run_kern_case(&rs, dt, Ms[mi], Ns[ni], Ks[ki], variant);
            }
}
END_TEST

/* K beyond the 8192-float row buffer of the BF16/F16 path (rows of B are
 * then read in place even for more than four rows of A), and just below. */
START_TEST(test_kern_gemm_nt_long_rows) {
    static const int Ms[] = {1, 3, 4, 5, 9};
    static const int Ks[] = {8192, 8200};
    uint64_t rs = 0x777u + (uint64_t)_i;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (int variant = 0; variant < 4; variant++)
                run_kern_case(&rs, DTYPES[_i], Ms[mi], 3, Ks[ki], variant);
}
END_TEST

/* M, N or K of zero: nothing is written (K = 0 with beta 0 gives zeros). */
START_TEST(test_kern_gemm_nt_empty) {
    for (int d = 0; d < 3; d++) {
        float A[4] = {1, 2, 3, 4}, C[4];
        uint16_t B16[4] = {0x3f80, 0x3f80, 0x3f80, 0x3f80};
        float B32[4] = {1, 1, 1, 1};
        const void *B = DTYPES[d] == CAPMOE_DTYPE_F32 ? (const void *)B32 : (const void *)B16;
        for (int i = 0; i < 4; i++) C[i] = 42.0f;
        capmoe_kern_gemm_nt(C, 2, A, 2, B, DTYPES[d], 2, 0, 2, 2, 1.0f, 0.0f);
        capmoe_kern_gemm_nt(C, 2, A, 2, B, DTYPES[d], 2, 2, 0, 2, 1.0f, 0.0f);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(C[i], 42.0f);
        capmoe_kern_gemm_nt(C, 2, A, 2, B, DTYPES[d], 2, 2, 2, 0, 1.0f, 0.0f);
        for (int i = 0; i < 4; i++)
            EXPECT(C[i] == 0.0f, "%s K=0: C[%d] = %g", dt_name(DTYPES[d]), i, (double)C[i]);
    }
}
END_TEST

/* ---- capmoe_kern_to_f32 ------------------------------------------------------ */

/* F16 NaNs only need to stay NaNs of the same sign: the F16C instruction
 * (and libgcc) quiet a signalling NaN (set the top fraction bit), while
 * capmoe_f16_to_f32 copies the payload as it is. Everything else, -0 and
 * subnormals included, must be bit-exact; BF16 and F32 are bit-exact always. */
static int same_value(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) && signbit(a) == signbit(b);
    return memcmp(&a, &b, sizeof a) == 0; /* bit-exact: -0 and 0 differ */
}

START_TEST(test_kern_to_f32_exact) {
    uint64_t rs = 0xabcdef;
    size_t lens[42];
    for (int i = 0; i <= 40; i++) lens[i] = (size_t)i;
    lens[41] = 1000;
    for (int d = 0; d < 3; d++) {
        capmoe_dtype t = DTYPES[d];
        for (int li = 0; li < 42; li++)
            for (size_t off = 0; off < 2; off++) {
                size_t n = lens[li], es = dt_size(t);
                /* exact length: ASan sees any read past the end */
                char *sbuf = malloc((off + n) * es + (n + off == 0));
                float *dst = malloc((n + 1) * sizeof(float));
                float *want = malloc((n + 1) * sizeof(float));
                EXPECT(sbuf && dst && want, "out of memory");
                char *src = sbuf + off * es;
                for (size_t i = 0; i < n; i++) {
                    uint64_t r = rng_next(&rs);
                    if (t == CAPMOE_DTYPE_F32) {
                        /* random bit patterns, NaN / inf / subnormals included */
                        uint32_t u = (uint32_t)r;
                        memcpy(src + 4 * i, &u, 4);
                        memcpy(&want[i], &u, 4);
                    } else {
                        uint16_t h = (uint16_t)r;
                        switch (i % 8) { /* make sure the special classes appear */
                        case 1: h &= 0x83ff; break; /* zero / subnormal */
                        case 3: h |= t == CAPMOE_DTYPE_F16 ? 0x7c00 : 0x7f80; break; /* inf/nan */
                        case 5: h = (uint16_t)(h & 0x8000); break; /* +-0 */
                        default: break;
                        }
                        memcpy(src + 2 * i, &h, 2);
                        want[i] = t == CAPMOE_DTYPE_BF16 ? capmoe_bf16_to_f32(h)
                                                         : capmoe_f16_to_f32(h);
                    }
                }
                dst[n] = 1234.5f;
                capmoe_kern_to_f32(dst, src, t, n);
                for (size_t i = 0; i < n; i++) {
                    int ok = t == CAPMOE_DTYPE_F16 ? same_value(dst[i], want[i])
                                                   : memcmp(&dst[i], &want[i], 4) == 0;
                    uint32_t gb, wb;
                    memcpy(&gb, &dst[i], 4), memcpy(&wb, &want[i], 4);
                    EXPECT(ok, "to_f32 %s n=%zu off=%zu: [%zu] = %08x, expected %08x",
                                  dt_name(t), n, off, i, gb, wb);
                }
                EXPECT(dst[n] == 1234.5f, "to_f32 %s n=%zu wrote past the end",
                              dt_name(t), n);
                free(sbuf), free(dst), free(want);
            }
    }
}
END_TEST

/* ---- attention kernels --------------------------------------------------------- */

START_TEST(test_kern_attn_scores_vs_reference) {
    static const int grps[] = {1, 2, 4}, ds[] = {8, 32, 64, 12, 4, 20},
                     ns[] = {1, 7, 8, 9, 16, 64, 67};
    const int n_heads = 8;
    uint64_t rs = 0x5151;
    for (size_t gi = 0; gi < sizeof grps / sizeof *grps; gi++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                int grp = grps[gi], d = ds[di], n = ns[ni], ldk = (n_heads / grp) * d;
                int lds = n + 3;
                float scale = (float)(1.0 / sqrt((double)d));
                size_t sn = (size_t)(n_heads - 1) * lds + n;
                float *q = malloc((size_t)n_heads * d * sizeof(float));
                float *K = malloc((size_t)n * ldk * sizeof(float));
                float *S = malloc(sn * sizeof(float));
                EXPECT(q && K && S, "out of memory");
                for (int i = 0; i < n_heads * d; i++) q[i] = rng_val(&rs);
                for (size_t i = 0; i < (size_t)n * ldk; i++) K[i] = rng_val(&rs);
                for (size_t i = 0; i < sn; i++) S[i] = NAN;
                capmoe_kern_attn_scores(S, lds, q, n_heads, grp, d, K, ldk, n, scale);
                for (int h = 0; h < n_heads; h++) {
                    for (int j = 0; j < n; j++) {
                        const float *kr = K + (size_t)j * ldk + (size_t)(h / grp) * d;
                        double s = 0, m = 0;
                        for (int i = 0; i < d; i++) {
                            s += (double)q[h * d + i] * kr[i];
                            m += fabs((double)q[h * d + i] * kr[i]);
                        }
                        s *= scale, m *= scale;
                        double got = S[(size_t)h * lds + j];
                        EXPECT(isfinite(got) && fabs(got - s) <= 1e-5 * (m > 1 ? m : 1),
                                      "attn_scores grp=%d d=%d n=%d: S[h=%d][%d] = %.9g, "
                                      "expected %.9g",
                                      grp, d, n, h, j, got, s);
                    }
                    if (h < n_heads - 1)
                        for (int j = n; j < lds; j++)
                            EXPECT(isnan(S[(size_t)h * lds + j]),
                                          "attn_scores grp=%d d=%d n=%d wrote S[%d][%d] past n",
                                          grp, d, n, h, j);
                }
                free(q), free(K), free(S);
            }
}
END_TEST

START_TEST(test_kern_weighted_sum_vs_reference) {
    static const int grps[] = {1, 2, 4}, ds[] = {8, 32, 64, 12, 4, 40, 76},
                     ns[] = {0, 1, 7, 8, 9, 64};
    const int n_heads = 8;
    uint64_t rs = 0x6161;
    for (size_t gi = 0; gi < sizeof grps / sizeof *grps; gi++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                int grp = grps[gi], d = ds[di], n = ns[ni], kvh = n_heads / grp, ldv = kvh * d;
                float *p = malloc(((size_t)n + 1) * sizeof(float));
                float *V = malloc(((size_t)n * ldv + 1) * sizeof(float));
                float *o = malloc(((size_t)d + 1) * sizeof(float));
                EXPECT(p && V && o, "out of memory");
                for (int j = 0; j < n; j++) p[j] = (float)rng_unit(&rs);
                for (size_t i = 0; i < (size_t)n * ldv; i++) V[i] = rng_val(&rs);
                /* each KV head's slice of the cache rows, as attention reads it */
                for (int g = 0; g < kvh; g++) {
                    for (int i = 0; i <= d; i++) o[i] = NAN;
                    const float *Vg = V + (size_t)g * d;
                    capmoe_kern_weighted_sum(o, p, Vg, ldv, n, d);
                    for (int i = 0; i < d; i++) {
                        double s = 0, m = 0;
                        for (int j = 0; j < n; j++) {
                            s += (double)p[j] * Vg[(size_t)j * ldv + i];
                            m += fabs((double)p[j] * Vg[(size_t)j * ldv + i]);
                        }
                        double got = o[i];
                        EXPECT(isfinite(got) && fabs(got - s) <= 1e-5 * (m > 1 ? m : 1),
                                      "weighted_sum grp=%d d=%d n=%d head %d: o[%d] = %.9g, "
                                      "expected %.9g",
                                      grp, d, n, g, i, got, s);
                    }
                    EXPECT(isnan(o[d]), "weighted_sum d=%d n=%d wrote o[d]", d, n);
                }
                free(p), free(V), free(o);
            }
}
END_TEST

/* ---- capmoe_kern_exp_sum, capmoe_kern_silu_mul, capmoe_softmax_row ------------ */

/* The range of the vector exp (kern.c): arguments below EXP_LO give exactly 0
 * (-inf included), above EXP_HI +inf (even up to 88.72, where expf is still
 * finite); in between, within 2 ulp of expf. */
#define EXP_LO (-87.3365478515625f)
#define EXP_HI 88.3762626647949f

/* Distance in ulps of two floats that are not NaN: how far apart they are in
 * the ordered list of all floats (+0 and -0 count as one). */
static int64_t ulp_dist(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
    int64_t oa = ia < 0 ? -(int64_t)(ia & 0x7fffffff) : ia;
    int64_t ob = ib < 0 ? -(int64_t)(ib & 0x7fffffff) : ib;
    return oa > ob ? oa - ob : ob - oa;
}

/* Whether got is a right exp of a (x - sub, rounded to float as the kernel
 * does) under that contract. A NaN argument gives NaN: kern.h does not say
 * so, but no range test catches a NaN and it goes through the polynomial,
 * which is what the code plainly does in every build. */
static int exp_ok(float got, float a) {
    if (isnan(a)) return isnan(got);
    if (a < EXP_LO) return got == 0.0f;
    if (a > EXP_HI) return got == INFINITY;
    return isfinite(got) && ulp_dist(got, expf(a)) <= 2;
}

/* Copies in[0..n) to x, runs capmoe_kern_exp_sum(x, n, sub) and checks every
 * output and the returned sum. The sum goes against a double sum of the
 * outputs: eight float lanes add ceil(n/8) outputs each, then three levels
 * of pairwise adds, so each output reaches the result through at most
 * ceil(n/8) + 2 roundings of 2^-24 relative, and all outputs are >= 0: that
 * many 2^-24 (at least 1e-6) is the tolerance. A NaN output makes the sum NaN,
 * an infinite one +inf; a finite total near FLT_MAX may round to either. */
static void run_exp_sum(float *x, const float *in, int n, float sub, const char *what) {
    if (n > 0) memcpy(x, in, (size_t)n * sizeof(float));
    float s = capmoe_kern_exp_sum(x, n, sub);
    double ds = 0;
    for (int i = 0; i < n; i++) {
        float a = in[i] - sub;
        EXPECT(exp_ok(x[i], a),
               "exp_sum %s n=%d sub=%a: x[%d] = %a (argument %a = %.9g) gave %a, expf %a", what,
               n, (double)sub, i, (double)in[i], (double)a, (double)a, (double)x[i],
               (double)expf(a));
        ds += x[i];
    }
    double tol = fmax(1e-6, ((n + 7) / 8 + 2) * 0x1p-24);
    if (isnan(ds))
        EXPECT(isnan(s), "exp_sum %s n=%d sub=%a: sum %a with a NaN output", what, n,
               (double)sub, (double)s);
    else if (isinf(ds))
        EXPECT(s == INFINITY, "exp_sum %s n=%d sub=%a: sum %a with an infinite output", what, n,
               (double)sub, (double)s);
    else if (s == INFINITY)
        EXPECT(ds * (1 + tol) >= FLT_MAX, "exp_sum %s n=%d sub=%a: sum +inf, outputs add to %.9g",
               what, n, (double)sub, ds);
    else
        EXPECT(fabs(s - ds) <= tol * ds, "exp_sum %s n=%d sub=%a: sum %.9g, outputs add to %.9g",
               what, n, (double)sub, (double)s, ds);
}

/* in[0..n) in calls of 57 to 64 elements (every tail length, pointers at
 * every alignment), so that the sums stay within 1e-6. */
static void run_exp_chunks(float *x, const float *in, int n, float sub, const char *what) {
    for (int i = 0, c = 0; i < n; c++) {
        int len = 57 + c % 8;
        if (len > n - i) len = n - i;
        run_exp_sum(x + i, in + i, len, sub, what);
        i += len;
    }
}

/* Every output within 2 ulp of expf over the whole finite range and past its
 * ends, with several subtrahends (outputs are exp(x - sub)). */
START_TEST(test_kern_exp_sum_accuracy) {
    static const float subs[] = {0.0f, 1.5f, -3.25f, 40.0f, -60.5f, 0.001f};
    const int N = 1 << 20, R = 1 << 17;
    float *in = malloc((size_t)N * sizeof(float)), *x = malloc((size_t)N * sizeof(float));
    EXPECT(in && x, "out of memory");
    uint64_t rs = 0xe4e4;
    for (size_t si = 0; si < sizeof subs / sizeof *subs; si++) {
        float sub = subs[si];
        /* 2^20 arguments evenly over [EXP_LO, EXP_HI] */
        for (int k = 0; k < N; k++)
            in[k] = (float)(EXP_LO + ((double)EXP_HI - EXP_LO) * k / (N - 1)) + sub;
        run_exp_chunks(x, in, N, sub, "sweep");
        /* random ones: over the range and 2 past either end, and small ones
         * (+-[0.25, 1) 2^-e, e < 40) around exp's fixed point 1 */
        for (int k = 0; k < R; k++) {
            float a = k & 1 ? (float)(EXP_LO - 2 + (EXP_HI - EXP_LO + 4) * rng_unit(&rs))
                            : ldexpf(rng_val(&rs), -(int)(rng_next(&rs) % 40));
            in[k] = a + sub;
        }
        run_exp_chunks(x, in, R, sub, "random");
    }
    /* the 4096 floats on either side of both ends of the range */
    const float ends[2] = {EXP_LO, EXP_HI};
    int m = 0;
    for (int e = 0; e < 2; e++) {
        float up = ends[e], down = ends[e];
        for (int k = 0; k < 4096; k++) {
            in[m++] = up, in[m++] = down;
            up = nextafterf(up, INFINITY), down = nextafterf(down, -INFINITY);
        }
    }
    run_exp_chunks(x, in, m, 0.0f, "range ends");
    /* one long call: args in [-30, 10], no overflow */
    for (int k = 0; k < R; k++) in[k] = (float)(-30 + 40 * rng_unit(&rs)) + 2.0f;
    run_exp_sum(x, in, R, 2.0f, "one call");
    free(in), free(x);
}
END_TEST

/* Each value alone (n = 1), in the vector body (lane 5 of 16) and in the
 * tail (element 10 of 13), among arguments of -1: x, its neighbours and the
 * sum all checked. */
static void exp_special_at(float v, float sub, float want_exact, int exact, const char *what) {
    static const int ns[3] = {1, 16, 13}, pos[3] = {0, 5, 10};
    for (int l = 0; l < 3; l++) {
        float in[16], x[16];
        for (int i = 0; i < 16; i++) in[i] = sub - 1.0f;
        in[pos[l]] = v;
        run_exp_sum(x, in, ns[l], sub, what);
        if (exact)
            EXPECT(x[pos[l]] == want_exact, "exp_sum %s: exp(%a - %a) = %a, expected exactly %a",
                   what, (double)v, (double)sub, (double)x[pos[l]], (double)want_exact);
    }
}

START_TEST(test_kern_exp_sum_special) {
    /* exactly 0: -inf and everything below EXP_LO */
    const float below[] = {-INFINITY, -FLT_MAX, -1e30f, -1000.0f, -100.0f, -88.0f, -87.34f,
                           nextafterf(EXP_LO, -INFINITY)};
    for (size_t i = 0; i < sizeof below / sizeof *below; i++)
        exp_special_at(below[i], 0.0f, 0.0f, 1, "below the range");
    /* +inf above EXP_HI (88.5 and 88.72 included, where expf is finite) */
    const float above[] = {nextafterf(EXP_HI, INFINITY), 88.5f, 88.72f, 89.0f, 1000.0f, FLT_MAX,
                           INFINITY};
    for (size_t i = 0; i < sizeof above / sizeof *above; i++)
        exp_special_at(above[i], 0.0f, INFINITY, 1, "above the range");
    /* finite up to and at both ends; exp(+-0) exactly 1 */
    const float inside[] = {EXP_HI, nextafterf(EXP_HI, 0), nextafterf(nextafterf(EXP_HI, 0), 0),
                            88.0f, EXP_LO, nextafterf(EXP_LO, 0), -87.0f, 1.0f, -1.0f, 1e-30f,
                            -1e-30f, FLT_TRUE_MIN, -FLT_TRUE_MIN};
    for (size_t i = 0; i < sizeof inside / sizeof *inside; i++)
        exp_special_at(inside[i], 0.0f, 0.0f, 0, "inside the range");
    exp_special_at(0.0f, 0.0f, 1.0f, 1, "zero");
    exp_special_at(-0.0f, 0.0f, 1.0f, 1, "minus zero");
    /* x == sub: exactly 1 (a softmax row's maximum), whatever sub */
    const float subs[] = {2.5f, -7.75f, 87.0f, -1e30f, 3e38f};
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) {
        exp_special_at(subs[i], subs[i], 1.0f, 1, "x == sub");
        exp_special_at(-INFINITY, subs[i], 0.0f, 1, "-inf - sub");
    }
    exp_special_at(5.0f, 200.0f, 0.0f, 1, "x - sub far below the range");
    /* NaN: NaN out (sum NaN), the other lanes unaffected */
    exp_special_at(NAN, 0.0f, 0.0f, 0, "NaN");
    exp_special_at(-NAN, 1.5f, 0.0f, 0, "-NaN");
}
END_TEST

/* n = 0..40 in exactly sized buffers (ASan sees any access past n) and in
 * guarded ones one float off the allocation's alignment (nothing outside
 * [0, n) written); the tails' padding lanes never count in the sum (an
 * all -inf input sums to exactly 0). */
START_TEST(test_kern_exp_sum_lengths) {
    static const float subs[] = {2.5f, 12.0f};
    const uint32_t guard_bits = 0x7fc0dead; /* a NaN no kernel makes */
    uint64_t rs = 0x7a11;
    for (int n = 0; n <= 40; n++) {
        float *in = malloc((size_t)n * sizeof(float) + (n == 0));
        float *x = malloc((size_t)n * sizeof(float) + (n == 0));
        float *g = malloc(((size_t)n + 17) * sizeof(float));
        EXPECT(in && x && g, "out of memory");
        for (size_t si = 0; si < 2; si++) {
            for (int i = 0; i < n; i++)
                in[i] = i % 7 == 3 ? -INFINITY : (float)(-30 + 40 * rng_unit(&rs));
            run_exp_sum(x, in, n, subs[si], "exact buffer");
            for (int i = 0; i < n + 17; i++) memcpy(&g[i], &guard_bits, 4);
            run_exp_sum(g + 1, in, n, subs[si], "guarded buffer");
            for (int i = 0; i < n + 17; i++)
                if (i == 0 || i > n)
                    EXPECT(memcmp(&g[i], &guard_bits, 4) == 0,
                           "exp_sum n=%d wrote element %d outside [0, n)", n, i - 1);
        }
        for (int i = 0; i < n; i++) in[i] = -INFINITY;
        memcpy(x, in, (size_t)n * sizeof(float));
        float s = capmoe_kern_exp_sum(x, n, 0.0f);
        EXPECT(s == 0.0f, "exp_sum n=%d of all -inf: sum %a", n, (double)s);
        for (int i = 0; i < n; i++)
            EXPECT(x[i] == 0.0f, "exp_sum n=%d of all -inf: x[%d] = %a", n, i, (double)x[i]);
        free(in), free(x), free(g);
    }
}
END_TEST

/* silu(x) * b against a double reference. exp8 is within 2 ulp (2^-22
 * relative); 1 + e, the division and the product add one rounding (2^-24)
 * each: under 4.2e-7 relative in all, so 1e-6. Below x = -87.3, exp(-x) is
 * huge or +inf in the kernel (x / inf = -0, where the exact value is
 * |x| e^x |b| < 4e-37 |b|): 1e-36 |b| absolute on top. From x = 17.5 on,
 * exp(-x) < 2^-24 vanishes next to 1: exactly x * b. -inf is left out: it
 * gives NaN (-inf / inf), as a[i] / (1 + expf(-a[i])) did before. */
static int silu_ok(float got, float x, float b) {
    if (isnan(x)) return isnan(got);
    if (x >= 17.5f) {
        float w = x * b;
        return got == w || (isnan(got) && isnan(w));
    }
    double r = (double)x / (1.0 + exp(-(double)x)) * b;
    return fabs((double)got - r) <= 1e-6 * fabs(r) + 1e-36 * fabs((double)b);
}

static void check_silu(const float *got, const float *x, const float *b, size_t n,
                       const char *what) {
    for (size_t i = 0; i < n; i++)
        EXPECT(silu_ok(got[i], x[i], b[i]),
               "silu_mul %s n=%zu: [%zu] x=%a (%.9g) b=%a gave %a (%.9g), expected %.9g", what,
               n, i, (double)x[i], (double)x[i], (double)b[i], (double)got[i], (double)got[i],
               (double)x[i] / (1.0 + exp(-(double)x[i])) * b[i]);
}

/* x: +-8, +-100, or +-[0.25, 1) 2^-e (e < 20); b: +-[1, 4) */
static float silu_x(uint64_t *rs, size_t i) {
    switch (i % 3) {
    case 0: return (float)(-8 + 16 * rng_unit(rs));
    case 1: return (float)(-100 + 200 * rng_unit(rs));
    default: return ldexpf(rng_val(rs), -(int)(rng_next(rs) % 20));
    }
}

/* n = 0..40: exact buffers and guarded unaligned ones; b never written. */
START_TEST(test_kern_silu_mul_lengths) {
    const uint32_t guard_bits = 0x7fc0dead;
    uint64_t rs = 0x5111;
    for (size_t n = 0; n <= 40; n++) {
        float *x = malloc(n * sizeof(float) + (n == 0)), *b = malloc(n * sizeof(float) + (n == 0));
        float *a = malloc(n * sizeof(float) + (n == 0)), *b0 = malloc(n * sizeof(float) + (n == 0));
        float *g = malloc((n + 17) * sizeof(float));
        EXPECT(x && b && a && b0 && g, "out of memory");
        for (size_t i = 0; i < n; i++) x[i] = silu_x(&rs, i), b[i] = 4 * rng_val(&rs);
        if (n) memcpy(a, x, n * sizeof(float)), memcpy(b0, b, n * sizeof(float));
        capmoe_kern_silu_mul(a, b, n);
        check_silu(a, x, b, n, "exact buffer");
        for (size_t i = 0; i < n + 17; i++) memcpy(&g[i], &guard_bits, 4);
        if (n) memcpy(g + 1, x, n * sizeof(float));
        capmoe_kern_silu_mul(g + 1, b, n);
        check_silu(g + 1, x, b, n, "guarded buffer");
        for (size_t i = 0; i < n + 17; i++)
            if (i == 0 || i > n)
                EXPECT(memcmp(&g[i], &guard_bits, 4) == 0,
                       "silu_mul n=%zu wrote element %ld outside [0, n)", n, (long)i - 1);
        EXPECT(n == 0 || memcmp(b, b0, n * sizeof(float)) == 0, "silu_mul n=%zu wrote b", n);
        free(x), free(b), free(a), free(b0), free(g);
    }
}
END_TEST

/* A long random array (plus a sweep of x over [-95, 95] and some b = 0)
 * through the kernel and through capmoe_silu_mul (bit-identical), and the
 * edges: huge negative x gives a zero, huge positive x exactly x * b. */
START_TEST(test_kern_silu_mul_values) {
    const size_t n = 50021;
    uint64_t rs = 0x5112;
    float *x = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float *a = malloc(n * sizeof(float)), *a2 = malloc(n * sizeof(float));
    EXPECT(x && b && a && a2, "out of memory");
    for (size_t i = 0; i < n; i++) {
        x[i] = i % 4 == 3 ? (float)(-95 + 190.0 * (double)i / (double)n) : silu_x(&rs, i);
        b[i] = i % 97 == 0 ? 0.0f : 4 * rng_val(&rs);
    }
    memcpy(a, x, n * sizeof(float)), memcpy(a2, x, n * sizeof(float));
    capmoe_kern_silu_mul(a, b, n);
    capmoe_silu_mul(a2, b, n);
    check_silu(a, x, b, n, "random");
    EXPECT(memcmp(a, a2, n * sizeof(float)) == 0, "capmoe_silu_mul differs from the kernel");

    const float xs[] = {INFINITY, INFINITY, FLT_MAX, FLT_MAX, 1e30f, 100.0f, 88.5f, 17.5f, 0.0f,
                        -0.0f, -87.0f, -87.5f, -88.5f, -89.0f, -1000.0f, -1e30f, -FLT_MAX, NAN};
    const float bs[] = {2.0f, -2.0f, 0.5f, 4.0f, -3.0f, 1.5f, -1.25f, 3.0f, 2.0f,
                        2.0f, 1.5f, -1.5f, 2.0f, -2.0f, 3.0f, -1.0f, 1.0f, 2.0f};
    const size_t ns = sizeof xs / sizeof *xs;
    float e[sizeof xs / sizeof *xs];
    for (int pass = 0; pass < 2; pass++) { /* all in one call, then one at a time */
        memcpy(e, xs, sizeof e);
        if (pass == 0)
            capmoe_kern_silu_mul(e, bs, ns);
        else
            for (size_t i = 0; i < ns; i++) capmoe_kern_silu_mul(e + i, bs + i, 1);
        check_silu(e, xs, bs, ns, pass ? "edges one at a time" : "edges");
        for (size_t i = 0; i < ns; i++)
            if (xs[i] <= -89.0f)
                EXPECT(e[i] == 0.0f, "silu_mul(%g) * %g = %a, expected a zero", (double)xs[i],
                       (double)bs[i], (double)e[i]);
    }
    EXPECT(e[0] == INFINITY && e[1] == -INFINITY && e[3] == INFINITY,
           "silu_mul(inf) * 2, * -2, silu(FLT_MAX) * 4: %g %g %g", (double)e[0], (double)e[1],
           (double)e[3]);
    free(x), free(b), free(a), free(a2);
}
END_TEST

/* capmoe_softmax_row on a copy of in[0..n) against a double softmax.
 * Relative error of an output: its exp (2 ulp = 4 * 2^-24), the sum (its
 * exps' 4 * 2^-24 and ceil(n/8) + 2 roundings, as in run_exp_sum), 1/sum
 * and the product (one rounding each): ceil(n/8) + 12 roundings of 2^-24,
 * 1e-6 up to n = 32. On top, where x - max is not exact in float, the
 * rounding of that argument (its absolute error is exp's relative one) for
 * the output and, weighted by the outputs, for the sum. Entries of -inf or
 * more than 87.3 below the maximum are exactly 0; an all -inf row is all
 * 0. */
static void check_softmax(const float *in, int n, const char *what) {
    float *x = malloc((size_t)n * sizeof(float) + (n == 0));
    double *p = malloc((size_t)n * sizeof(double) + (n == 0));
    EXPECT(x && p, "out of memory");
    if (n > 0) memcpy(x, in, (size_t)n * sizeof(float));
    capmoe_softmax_row(x, n);
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (in[i] > mx) mx = in[i];
    double S = 0, wdel = 0, sum = 0;
    for (int i = 0; i < n; i++) S += p[i] = in[i] == -INFINITY ? 0 : exp((double)in[i] - mx);
    for (int i = 0; i < n; i++) {
        p[i] = S > 0 ? p[i] / S : 0;
        if (p[i] > 0) wdel += p[i] * fabs((double)(in[i] - mx) - ((double)in[i] - mx));
    }
    double bound = fmax(1e-6, ((n + 7) / 8 + 12) * 0x1p-24);
    for (int i = 0; i < n; i++) {
        sum += x[i];
        if (mx == -INFINITY || in[i] - mx < EXP_LO) {
            EXPECT(x[i] == 0.0f, "softmax %s n=%d: x[%d] = %a (max %a) gave %a, expected 0", what,
                   n, i, (double)in[i], (double)mx, (double)x[i]);
            continue;
        }
        double del = fabs((double)(in[i] - mx) - ((double)in[i] - mx));
        double tol = p[i] * (bound + del + wdel) + 0x1p-147;
        EXPECT(fabs(x[i] - p[i]) <= tol,
               "softmax %s n=%d: x[%d] = %a (max %a) gave %.9g, expected %.9g (tol %.3g)", what,
               n, i, (double)in[i], (double)mx, (double)x[i], p[i], tol);
    }
    if (mx != -INFINITY)
        EXPECT(fabs(sum - 1) <= bound + 2 * wdel + n * 0x1p-147,
               "softmax %s n=%d: outputs add to 1 %+.3g", what, n, sum - 1);
    free(x), free(p);
}

/* Random rows (values on a 2^-10 grid, where x - max is exact, and
 * arbitrary ones), rows with masked (-inf) entries at random or as a causal
 * mask's suffix, spreads wider than exp's range, for n = 1..40 and longer. */
START_TEST(test_softmax_row_vs_reference) {
    static const int big[] = {63, 64, 65, 100, 1000, 4099};
    uint64_t rs = 0x50f7;
    float *in = malloc(4099 * sizeof(float));
    EXPECT(in, "out of memory");
    for (int t = 1; t <= 40 + 6; t++) {
        int n = t <= 40 ? t : big[t - 41];
        for (int v = 0; v < 6; v++) {
            for (int i = 0; i < n; i++) {
                double u = rng_unit(&rs);
                switch (v) {
                case 0: in[i] = (float)(round((-20 + 40 * u) * 1024) / 1024); break;
                case 1: in[i] = 30 * rng_val(&rs); break;
                case 2: /* a quarter masked */
                    in[i] = rng_next(&rs) % 4 == 0 ? -INFINITY
                                                  : (float)(round((-8 + 16 * u) * 1024) / 1024);
                    break;
                case 3: /* causal: the last (n - 1) / 2 masked */
                    in[i] = i > n / 2 ? -INFINITY : (float)(-10 + 20 * u);
                    break;
                case 4: /* beyond exp's range: many outputs exactly 0 */
                    in[i] = (float)(round((-120 + 125 * u) * 64) / 64);
                    break;
                default: /* large logits: x - max exact (Sterbenz) */
                    in[i] = (float)(1000 + 10 * u);
                    break;
                }
            }
            static const char *names[6] = {"grid", "random", "masked", "causal", "wide", "large"};
            check_softmax(in, n, names[v]);
        }
    }
    free(in);
}
END_TEST

/* Exact cases: all -inf gives zeros, one finite entry among -inf exactly 1,
 * n equal entries exactly 1.0f / n (the float sum of n ones is exact), n = 0
 * touches nothing. */
START_TEST(test_softmax_row_exact) {
    uint64_t rs = 0x50f8;
    float zero_len = 7.0f;
    capmoe_softmax_row(&zero_len, 0);
    ck_assert_float_eq(zero_len, 7.0f);
    for (int n = 1; n <= 40; n++) {
        float *x = malloc((size_t)n * sizeof(float));
        EXPECT(x, "out of memory");
        for (int i = 0; i < n; i++) x[i] = -INFINITY;
        capmoe_softmax_row(x, n);
        for (int i = 0; i < n; i++)
            EXPECT(x[i] == 0.0f, "softmax all -inf n=%d: x[%d] = %g", n, i, (double)x[i]);
        int k = (int)(rng_next(&rs) % (uint64_t)n);
        for (int i = 0; i < n; i++) x[i] = i == k ? 30 * rng_val(&rs) : -INFINITY;
        capmoe_softmax_row(x, n);
        for (int i = 0; i < n; i++)
            EXPECT(x[i] == (i == k ? 1.0f : 0.0f), "softmax one finite of n=%d at %d: x[%d] = %a",
                   n, k, i, (double)x[i]);
        float c = 30 * rng_val(&rs);
        for (int i = 0; i < n; i++) x[i] = c;
        capmoe_softmax_row(x, n);
        for (int i = 0; i < n; i++)
            EXPECT(x[i] == 1.0f / (float)n, "softmax %d equal entries: x[%d] = %a, expected %a", n,
                   i, (double)x[i], (double)(1.0f / (float)n));
        free(x);
    }
}
END_TEST

/* ---- capmoe_gemm_nt over a pool ------------------------------------------------ */

/* _i = dtype * 2 + variant (0: contiguous, beta 0 over NaN; 1: padded, alpha, beta) */
START_TEST(test_gemm_nt_pool_vs_reference) {
    static const int Ms[] = {1, 4, 16, 17, 32, 33, 64}, Ns[] = {8, 100, 1000}, Ks[] = {64, 256};
    capmoe_dtype dt = DTYPES[_i / 2];
    int variant = _i % 2;
    capmoe_blas_single_threaded(); /* as a model load does: the pool supplies the threads */
    capmoe_error err = {{0}};
    capmoe_par *pools[4] = {NULL};
    for (int t = 1; t <= 3; t++) {
        pools[t] = capmoe_par_new(t, &err);
        EXPECT(pools[t] != NULL, "par_new(%d): %s", t, err.msg);
        ck_assert_int_eq(capmoe_par_threads(pools[t]), t);
    }
    uint64_t rs = 0x9090u + (uint64_t)_i;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
                int M = Ms[mi], N = Ns[ni], K = Ks[ki];
                /* the biggest products only once per dtype: the suite stays fast */
                if (variant == 1 && N == 1000 && K == 256 && M > 17) continue;
                gcase g;
                if (variant == 0)
                    gcase_init(&g, &rs, dt, M, N, K, K, K, N, 0, 0, 0, 1.0f, 0.0f, 1);
                else
                    gcase_init(&g, &rs, dt, M, N, K, K + 4, K + 3, N + 5, 1, 1, 1, -0.5f, 1.25f, 0);
                capmoe_wmat B = {g.B, dt, 0, NULL}; /* row-major */
                for (int t = 0; t <= 3; t++) {
                    float *c = gcase_c(&g);
                    capmoe_gemm_nt(pools[t], c + g.coff, g.ldc, g.A, g.lda, B, g.ldb, M, N, K,
                                   g.alpha, g.beta);
                    char what[64];
                    snprintf(what, sizeof what, "gemm_nt pool=%d variant %d", t, variant);
                    gcase_check(&g, c, what);
                    free(c);
                }
                gcase_free(&g);
            }
    for (int t = 1; t <= 3; t++) capmoe_par_free(pools[t]);
}
END_TEST

/* capmoe_linear: y = x W^T + bias through the same path. */
START_TEST(test_linear_bias) {
    const int M = 3, N = 37, K = 45;
    uint64_t rs = 0x4242;
    float *x = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
    float *bias = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * M * N);
    EXPECT(x && W && bias && y, "out of memory");
    for (int i = 0; i < M * K; i++) x[i] = rng_val(&rs);
    for (int i = 0; i < N * K; i++) W[i] = rng_val(&rs);
    for (int i = 0; i < N; i++) bias[i] = rng_val(&rs);
    for (int i = 0; i < M * N; i++) y[i] = NAN;
    capmoe_linear(NULL, y, x, capmoe_wmat_f32(W), bias, M, N, K);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = bias[j], m = fabs(bias[j]);
            for (int k = 0; k < K; k++) {
                s += (double)x[i * K + k] * W[j * K + k];
                m += fabs((double)x[i * K + k] * W[j * K + k]);
            }
            EXPECT(fabs(y[i * N + j] - s) <= 1e-5 * (m > 1 ? m : 1),
                          "linear y[%d][%d] = %.9g, expected %.9g", i, j, (double)y[i * N + j], s);
        }
    free(x), free(W), free(bias), free(y);
}
END_TEST

/* ---- the pool ------------------------------------------------------------------ */

#define MAX_PARTS 8

typedef struct count_job {
    atomic_int calls[MAX_PARTS];
    atomic_int bad_np;     /* calls whose n_parts was not the expected one */
    atomic_int bad_part;   /* part index out of [0, n_parts) */
    int expect_np;
} count_job;

static void count_fn(void *arg, int part, int n_parts) {
    count_job *j = arg;
    if (n_parts != j->expect_np) atomic_fetch_add(&j->bad_np, 1);
    if (part < 0 || part >= n_parts || part >= MAX_PARTS) {
        atomic_fetch_add(&j->bad_part, 1);
        return;
    }
    atomic_fetch_add(&j->calls[part], 1);
}

static void count_job_reset(count_job *j, int expect_np) {
    for (int i = 0; i < MAX_PARTS; i++) atomic_store(&j->calls[i], 0);
    atomic_store(&j->bad_np, 0);
    atomic_store(&j->bad_part, 0);
    j->expect_np = expect_np;
}

/* One run of n_parts on p, checked: each part of the clamped count once. */
static void run_counted(capmoe_par *p, int n_parts, count_job *j, const char *what, int run) {
    int th = capmoe_par_threads(p);
    int np = n_parts < th ? n_parts : th;
    if (np < 1) np = 1;
    count_job_reset(j, np);
    capmoe_par_run(p, n_parts, count_fn, j);
    EXPECT(atomic_load(&j->bad_part) == 0, "%s run %d: part index out of range", what, run);
    EXPECT(atomic_load(&j->bad_np) == 0,
                  "%s run %d (threads %d, n_parts %d): fn did not get n_parts %d", what, run, th,
                  n_parts, np);
    for (int i = 0; i < MAX_PARTS; i++) {
        int c = atomic_load(&j->calls[i]);
        EXPECT(c == (i < np ? 1 : 0),
                      "%s run %d (threads %d, n_parts %d): part %d called %d times", what, run,
                      th, n_parts, i, c);
    }
}

START_TEST(test_par_parts_exactly_once) {
    count_job j;
    run_counted(NULL, 1, &j, "NULL pool", 0);
    run_counted(NULL, 4, &j, "NULL pool", 1);
    ck_assert_int_eq(capmoe_par_threads(NULL), 1);
    for (int t = 1; t <= 4; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = capmoe_par_new(t, &err);
        EXPECT(p != NULL, "par_new(%d): %s", t, err.msg);
        ck_assert_int_eq(capmoe_par_threads(p), t);
        for (int rep = 0; rep < 20; rep++)
            for (int np = 1; np <= 5; np++) run_counted(p, np, &j, "parts", rep);
        capmoe_par_free(p);
    }
}
END_TEST

/* capmoe_par_for: every item exactly once, on a slot below the thread count. */
typedef struct for_count {
    atomic_int calls[64];
    atomic_int bad_slot;
    int threads;
} for_count;

static void for_count_fn(void *arg, int item, int slot) {
    for_count *f = arg;
    if (slot < 0 || slot >= f->threads) atomic_fetch_add(&f->bad_slot, 1);
    if (item >= 0 && item < 64) atomic_fetch_add(&f->calls[item], 1);
}

START_TEST(test_par_for_items_once) {
    static const int ns[] = {0, 1, 2, 3, 7, 64};
    for (int t = 0; t <= 4; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = t ? capmoe_par_new(t, &err) : NULL;
        EXPECT(t == 0 || p != NULL, "par_new(%d): %s", t, err.msg);
        for (int rep = 0; rep < 200; rep++)
            for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
                for_count f = {.threads = capmoe_par_threads(p)};
                for (int i = 0; i < 64; i++) atomic_init(&f.calls[i], 0);
                atomic_init(&f.bad_slot, 0);
                capmoe_par_for(p, ns[k], for_count_fn, &f);
                EXPECT(atomic_load(&f.bad_slot) == 0, "par_for threads %d: slot out of range", t);
                for (int i = 0; i < 64; i++)
                    EXPECT(atomic_load(&f.calls[i]) == (i < ns[k] ? 1 : 0),
                           "par_for threads %d n %d: item %d run %d times", t, ns[k], i,
                           atomic_load(&f.calls[i]));
            }
        capmoe_par_free(p);
    }
}
END_TEST

START_TEST(test_par_many_runs) {
    count_job j;
    for (int t = 2; t <= 4; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = capmoe_par_new(t, &err);
        EXPECT(p != NULL, "par_new(%d): %s", t, err.msg);
        for (int r = 0; r < 10000; r++) run_counted(p, 1 + r % 5, &j, "many runs", r);
        capmoe_par_free(p); /* right after a run: workers still spinning */
    }
}
END_TEST

/* A barrier across all parts of a run: it can only be passed when every
 * part runs on its own thread at the same time, i.e. when the workers (which
 * went to sleep during the pause before the run) were woken. */
typedef struct barrier_job {
    atomic_int arrived;
    atomic_int timed_out;
    int n;
    count_job count;
} barrier_job;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void barrier_fn(void *arg, int part, int n_parts) {
    barrier_job *b = arg;
    count_fn(&b->count, part, n_parts);
    atomic_fetch_add(&b->arrived, 1);
    double t0 = now_s();
    while (atomic_load(&b->arrived) < b->n) {
        if (now_s() - t0 > 5.0) {
            atomic_store(&b->timed_out, 1);
            return;
        }
        sched_yield();
    }
}

START_TEST(test_par_runs_after_idle) {
    count_job j;
    for (int t = 2; t <= 4; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = capmoe_par_new(t, &err);
        EXPECT(p != NULL, "par_new(%d): %s", t, err.msg);
        for (int r = 0; r < 12; r++) {
            usleep(2000); /* longer than the workers' idle spin: they go to sleep */
            run_counted(p, 1 + r % 5, &j, "after idle", r);
            usleep(2000);
            barrier_job b;
            memset(&b, 0, sizeof b);
            b.n = t;
            count_job_reset(&b.count, t);
            capmoe_par_run(p, t, barrier_fn, &b);
            EXPECT(!atomic_load(&b.timed_out),
                          "threads %d run %d: the sleeping workers never took their parts", t, r);
            ck_assert_int_eq(atomic_load(&b.arrived), t);
            for (int i = 0; i < t; i++) ck_assert_int_eq(atomic_load(&b.count.calls[i]), 1);
        }
        capmoe_par_free(p); /* with the workers asleep */
    }
}
END_TEST

typedef struct scratch_job {
    capmoe_par *p;
    size_t n[MAX_PARTS];
    float *got[MAX_PARTS];
} scratch_job;

static void scratch_fn(void *arg, int part, int n_parts) {
    (void)n_parts;
    scratch_job *s = arg;
    float *b = capmoe_par_scratch(s->p, part, s->n[part]);
    s->got[part] = b;
    if (b)
        for (size_t i = 0; i < s->n[part]; i++) b[i] = (float)(part * 1000003 + (int)i);
}

START_TEST(test_par_scratch) {
    ck_assert_ptr_null(capmoe_par_scratch(NULL, 0, 16));
    for (int t = 1; t <= 4; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = capmoe_par_new(t, &err);
        EXPECT(p != NULL, "par_new(%d): %s", t, err.msg);
        static const size_t sizes[] = {1, 100, 50, 4096, 10, 70000};
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            scratch_job s;
            memset(&s, 0, sizeof s);
            s.p = p;
            for (int i = 0; i < t; i++) s.n[i] = sizes[si] + (size_t)i * 7;
            capmoe_par_run(p, t, scratch_fn, &s);
            /* every part wrote its whole buffer; no two parts share memory */
            for (int i = 0; i < t; i++) {
                EXPECT(s.got[i] != NULL, "threads %d: no scratch for part %d", t, i);
                for (size_t k = 0; k < s.n[i]; k++)
                    EXPECT(s.got[i][k] == (float)(i * 1000003 + (int)k),
                                  "threads %d size %zu: part %d scratch[%zu] overwritten", t,
                                  s.n[i], i, k);
            }
        }
        capmoe_par_free(p);
    }
}
END_TEST

START_TEST(test_par_free_unused) {
    for (int t = -1; t <= 5; t++) {
        capmoe_error err = {{0}};
        capmoe_par *p = capmoe_par_new(t, &err);
        EXPECT(p != NULL, "par_new(%d): %s", t, err.msg);
        ck_assert_int_eq(capmoe_par_threads(p), t < 1 ? 1 : t);
        capmoe_par_free(p);
    }
    capmoe_error err = {{0}};
    capmoe_par *p = capmoe_par_new(CAPMOE_PAR_MAX_THREADS + 10, &err);
    EXPECT(p != NULL, "par_new(max+10): %s", err.msg);
    ck_assert_int_eq(capmoe_par_threads(p), CAPMOE_PAR_MAX_THREADS);
    count_job j;
    run_counted(p, 5, &j, "max threads", 0);
    capmoe_par_free(p);
    capmoe_par_free(NULL);
}
END_TEST

static Suite *kern_suite(void) {
    Suite *s = suite_create("kern");
    TCase *gemm = tcase_create("kern_gemm_nt");
    tcase_add_loop_test(gemm, test_kern_gemm_nt_vs_reference, 0, 12);
    tcase_add_loop_test(gemm, test_kern_gemm_nt_long_rows, 0, 3);
    tcase_add_test(gemm, test_kern_gemm_nt_empty);
    TCase *conv = tcase_create("kern_to_f32");
    tcase_add_test(conv, test_kern_to_f32_exact);
    TCase *attn = tcase_create("kern_attention");
    tcase_add_test(attn, test_kern_attn_scores_vs_reference);
    tcase_add_test(attn, test_kern_weighted_sum_vs_reference);
    TCase *expk = tcase_create("kern_exp");
    tcase_add_test(expk, test_kern_exp_sum_accuracy);
    tcase_add_test(expk, test_kern_exp_sum_special);
    tcase_add_test(expk, test_kern_exp_sum_lengths);
    tcase_add_test(expk, test_kern_silu_mul_lengths);
    tcase_add_test(expk, test_kern_silu_mul_values);
    tcase_add_test(expk, test_softmax_row_vs_reference);
    tcase_add_test(expk, test_softmax_row_exact);
    TCase *ops = tcase_create("gemm_nt_pool");
    tcase_add_loop_test(ops, test_gemm_nt_pool_vs_reference, 0, 6);
    tcase_add_test(ops, test_linear_bias);
    TCase *par = tcase_create("par");
    tcase_add_test(par, test_par_parts_exactly_once);
    tcase_add_test(par, test_par_for_items_once);
    tcase_add_test(par, test_par_many_runs);
    tcase_add_test(par, test_par_runs_after_idle);
    tcase_add_test(par, test_par_scratch);
    tcase_add_test(par, test_par_free_unused);
    TCase *all[] = {gemm, conv, attn, expk, ops, par};
    for (int i = 0; i < 6; i++) {
        tcase_set_timeout(all[i], 60); /* ASan and busy CI machines are slower */
        suite_add_tcase(s, all[i]);
    }
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(kern_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
