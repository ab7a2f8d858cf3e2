/* check_sample.c - tests of core/sample.c: the RNG against known answers of
 * an independent splitmix64 / xoshiro256** implementation, greedy ties,
 * each filter against a direct reference computation of the filtered
 * distribution, sampled frequencies against it (chi-square with a fixed seed,
 * so the test is deterministic), log-probabilities against a direct double
 * computation, and NaN / inf logits. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/sample.h"

/* ---- reference: the filtered distribution, computed the obvious way -------- */

static const float *g_ref_logits;
static double ref_lg(int i) {
    float v = g_ref_logits[i];
    return isnan(v) ? -INFINITY : v;
}
static int ref_cmp(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    double la = ref_lg(ia), lb = ref_lg(ib);
    if (la > lb) return -1;
    if (la < lb) return 1;
    return ia < ib ? -1 : ia > ib;
}

/* Fills probs[n] for a row with finite logits: sort everything, softmax of
 * logits / T over the top-k prefix, top-p on that, min-p, renormalise. */
static void ref_probs(const float *logits, int n, const capmoe_sampling *s, double *probs) {
    int *ord = malloc(sizeof(int) * n);
    double *p = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) ord[i] = i;
    g_ref_logits = logits;
    qsort(ord, n, sizeof(int), ref_cmp);
    int m = n;
    if (s->top_k > 0 && s->top_k < m) m = s->top_k;
    double lmax = ref_lg(ord[0]), z = 0;
    for (int j = 0; j < m; j++) {
        p[j] = exp((ref_lg(ord[j]) - lmax) / s->temperature);
        z += p[j];
    }
    for (int j = 0; j < m; j++) p[j] /= z;
    if (s->top_p < 1.0f) {
        double cum = 0;
        for (int j = 0; j < m; j++) {
            cum += p[j];
            if (cum >= s->top_p) {
                m = j + 1;
                break;
            }
        }
    }
    int keep = m;
    if (s->min_p > 0) {
        keep = 0;
        for (int j = 0; j < m; j++)
            if (p[j] >= s->min_p * p[0]) p[keep++] = p[j];
            else break; /* sorted: the rest are smaller */
    }
    z = 0;
    for (int j = 0; j < keep; j++) z += p[j];
    for (int i = 0; i < n; i++) probs[i] = 0;
    for (int j = 0; j < keep; j++) probs[ord[j]] = p[j] / z;
    free(ord);
    free(p);
}

static capmoe_sampling mk(float t, int k, float p, float minp) {
    capmoe_sampling s = {.temperature = t, .top_p = p, .top_k = k, .min_p = minp};
    return s;
}

/* Random logits; with `ties`, values are quantised so ties are common. */
static void fill_logits(float *l, int n, capmoe_rng *r, double scale, int ties) {
    for (int i = 0; i < n; i++) {
        double v = (capmoe_rng_uniform(r) * 2 - 1) * scale;
        l[i] = ties ? (float)(floor(v * 4) / 4) : (float)v;
    }
}

/* ---- RNG -------------------------------------------------------------------- */

START_TEST(test_rng_known_answers) {
    capmoe_rng r;
    /* splitmix64 from 0: e220a8397b1dcdaf 6e789e6aa1b965f4 (the published
     * sequence); the xoshiro256** outputs come from a separate Python
     * implementation. */
    capmoe_rng_seed(&r, 0);
    ck_assert_uint_eq(r.s[0], 0xe220a8397b1dcdafULL);
    ck_assert_uint_eq(r.s[1], 0x6e789e6aa1b965f4ULL);
    ck_assert_uint_eq(r.s[2], 0x06c45d188009454fULL);
    ck_assert_uint_eq(r.s[3], 0xf88bb8a8724c81ecULL);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0x99ec5f36cb75f2b4ULL);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0xbf6e1f784956452aULL);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0x1a5f849d4933e6e0ULL);
    capmoe_rng_seed(&r, 42);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0x15780b2e0c2ec716ULL);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0x6104d9866d113a7eULL);
    ck_assert_uint_eq(capmoe_rng_next(&r), 0xae17533239e499a1ULL);
}
END_TEST

START_TEST(test_rng_uniform) {
    capmoe_rng r;
    capmoe_rng_seed(&r, 7);
    double sum = 0, mn = 1, mx = 0;
    int bins[10] = {0};
    for (int i = 0; i < 100000; i++) {
        double u = capmoe_rng_uniform(&r);
        if (!(u >= 0.0 && u < 1.0)) ck_abort_msg("uniform out of range: %g", u);
        sum += u;
        if (u < mn) mn = u;
        if (u > mx) mx = u;
        bins[(int)(u * 10)]++;
    }
    ck_assert(fabs(sum / 100000 - 0.5) < 0.005);
    ck_assert(mn < 0.001 && mx > 0.999);
    for (int b = 0; b < 10; b++) ck_assert(abs(bins[b] - 10000) < 600);
}
END_TEST

/* ---- greedy ------------------------------------------------------------------- */

START_TEST(test_argmax_ties_nan) {
    float a[] = {1, 3, 2, 3, 3};
    ck_assert_int_eq(capmoe_argmax(a, 5), 1);
    float b[] = {NAN, -1, NAN, 5, 5, NAN};
    ck_assert_int_eq(capmoe_argmax(b, 6), 3);
    float c[] = {NAN, NAN};
    ck_assert_int_eq(capmoe_argmax(c, 2), 0);
    float d[] = {-INFINITY, NAN, -INFINITY};
    ck_assert_int_eq(capmoe_argmax(d, 3), 0);
    float e[] = {1e30f, INFINITY, 2, INFINITY};
    ck_assert_int_eq(capmoe_argmax(e, 4), 1);
    float f[] = {-INFINITY, -3e38f};
    ck_assert_int_eq(capmoe_argmax(f, 2), 1);
    ck_assert_int_eq(capmoe_argmax(a, 0), 0);
}
END_TEST

START_TEST(test_greedy_no_rng) {
    float l[] = {0.5f, 2.0f, -1.0f, 2.0f};
    int scratch[8];
    capmoe_rng r, r0;
    capmoe_rng_seed(&r, 1);
    r0 = r;
    capmoe_sampling s = mk(0.0f, 0, 1.0f, 0.0f);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(capmoe_sample(l, 4, &s, &r, scratch), 1);
    s.temperature = -1.0f;
    ck_assert_int_eq(capmoe_sample(l, 4, &s, &r, scratch), 1);
    s.temperature = NAN;
    ck_assert_int_eq(capmoe_sample(l, 4, &s, &r, scratch), 1);
    ck_assert(memcmp(&r, &r0, sizeof r) == 0); /* greedy draws nothing */
    s.temperature = 1.0f;
    capmoe_sample(l, 4, &s, &r, scratch);
    capmoe_rng_next(&r0);
    ck_assert(memcmp(&r, &r0, sizeof r) == 0); /* temperature > 0: exactly one */
}
END_TEST

START_TEST(test_top_k1_and_tiny_top_p_are_argmax) {
    capmoe_rng gen, r;
    capmoe_rng_seed(&gen, 99);
    capmoe_rng_seed(&r, 5);
    enum { N = 300 };
    float l[N];
    int scratch[2 * N];
    for (int t = 0; t < 200; t++) {
        fill_logits(l, N, &gen, 3.0, t & 1);
        int am = capmoe_argmax(l, N);
        capmoe_sampling s1 = mk(1.5f, 1, 1.0f, 0.0f);
        ck_assert_int_eq(capmoe_sample(l, N, &s1, &r, scratch), am);
        capmoe_sampling s2 = mk(1.5f, 0, 1e-7f, 0.0f);
        ck_assert_int_eq(capmoe_sample(l, N, &s2, &r, scratch), am);
        capmoe_sampling s3 = mk(1.0f, 0, 0.0f, 0.0f);
        ck_assert_int_eq(capmoe_sample(l, N, &s3, &r, scratch), am);
        capmoe_sampling s4 = mk(1.0f, 0, 1.0f, 1.0f); /* min_p 1: only p_max */
        if (t & 1) continue; /* quantised rows may tie with the max */
        ck_assert_int_eq(capmoe_sample(l, N, &s4, &r, scratch), am);
    }
}
END_TEST

/* ---- the filtered distribution -------------------------------------------------- */

START_TEST(test_probs_match_reference) {
    static const int sizes[] = {5, 100, 3000, 5000};
    /* Small spread on 3000 tokens: top-p then needs thousands of tokens; a
     * wide one on 5000: most of the mass in a few (the two paths of top-p). */
    static const double spread[] = {4.0, 4.0, 1.0, 12.0};
    static const float temps[] = {0.5f, 1.0f, 1.7f};
    static const int ks[] = {0, 1, 3, 50};
    static const float ps[] = {1.0f, 0.9f, 0.5f, 0.3f};
    static const float mps[] = {0.0f, 0.05f, 0.2f};
    capmoe_rng gen;
    capmoe_rng_seed(&gen, 2024);
    int cases = 0;
    for (int si = 0; si < 4; si++) {
        int n = sizes[si];
        float *l = malloc(sizeof(float) * n);
        int *scratch = malloc(sizeof(int) * 2 * n);
        double *got = malloc(sizeof(double) * n), *want = malloc(sizeof(double) * n);
        for (int ties = 0; ties < 2; ties++) {
            fill_logits(l, n, &gen, spread[si], ties);
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 4; b++)
                    for (int c = 0; c < 4; c++)
                        for (int d = 0; d < 3; d++) {
                            capmoe_sampling s = mk(temps[a], ks[b], ps[c], mps[d]);
                            int kept = capmoe_sample_probs(l, n, &s, scratch, got);
                            ref_probs(l, n, &s, want);
                            int want_kept = 0;
                            double sum = 0;
                            /* Check logs every passing assertion, so the
                             * per-token comparison only asserts on failure. */
                            for (int i = 0; i < n; i++) {
                                if (fabs(got[i] - want[i]) >= 1e-12 || (got[i] > 0) != (want[i] > 0))
                                    ck_abort_msg("n=%d T=%g k=%d p=%g minp=%g id %d: %.17g vs %.17g",
                                                 n, temps[a], ks[b], ps[c], mps[d], i, got[i],
                                                 want[i]);
                                want_kept += want[i] > 0;
                                sum += got[i];
                            }
                            ck_assert_int_eq(kept, want_kept);
                            ck_assert(fabs(sum - 1) < 1e-12);
                            cases++;
                        }
        }
        free(l);
        free(scratch);
        free(got);
        free(want);
    }
    ck_assert_int_eq(cases, 4 * 2 * 3 * 4 * 4 * 3);
}
END_TEST

START_TEST(test_top_p_and_min_p_sets) {
    /* p = 0.5, 0.3, 0.15, 0.04, 0.01 */
    float l[5];
    const double p[5] = {0.5, 0.3, 0.15, 0.04, 0.01};
    for (int i = 0; i < 5; i++) l[i] = (float)log(p[i]);
    int scratch[10];
    double q[5];
    capmoe_sampling s = mk(1.0f, 0, 0.7f, 0.0f);
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 2);
    ck_assert(fabs(q[0] - 0.625) < 1e-6 && fabs(q[1] - 0.375) < 1e-6 && q[2] == 0);
    s.top_p = 0.85f;
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 3);
    s.top_p = 0.97f;
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 4);
    s = mk(1.0f, 0, 1.0f, 0.1f); /* threshold 0.05: drops 0.04 and 0.01 */
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 3);
    ck_assert(fabs(q[2] - 0.15 / 0.95) < 1e-6 && q[3] == 0 && q[4] == 0);
    s.min_p = 0.7f; /* threshold 0.35: only token 0 */
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 1);
    ck_assert(q[0] == 1.0);
    s = mk(1.0f, 2, 1.0f, 0.0f);
    ck_assert_int_eq(capmoe_sample_probs(l, 5, &s, scratch, q), 2);

    /* Sampling with min_p 0.1 never yields the dropped tokens. */
    capmoe_rng r;
    capmoe_rng_seed(&r, 3);
    s = mk(1.0f, 0, 1.0f, 0.1f);
    int cnt[5] = {0};
    for (int i = 0; i < 5000; i++) cnt[capmoe_sample(l, 5, &s, &r, scratch)]++;
    ck_assert(cnt[0] > 0 && cnt[1] > 0 && cnt[2] > 0);
    ck_assert_int_eq(cnt[3] + cnt[4], 0);
}
END_TEST

/* Sampled frequencies vs the distribution: Pearson chi-square over the kept
 * tokens. Fixed seeds, so deterministic; the bound is loose (p ~ 1e-6 for
 * the degrees of freedom used) yet far below what a wrong filter or a biased
 * draw produces. */
static double chi_square(const float *l, int n, const capmoe_sampling *s, uint64_t seed,
                         int draws, int *df, int *outside) {
    int *scratch = malloc(sizeof(int) * 2 * n);
    double *p = malloc(sizeof(double) * n);
    int *cnt = calloc((size_t)n, sizeof(int));
    ref_probs(l, n, s, p);
    capmoe_rng r;
    capmoe_rng_seed(&r, seed);
    for (int i = 0; i < draws; i++) cnt[capmoe_sample(l, n, s, &r, scratch)]++;
    double chi = 0;
    *df = -1;
    *outside = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] > 0) {
            double e = p[i] * draws;
            chi += (cnt[i] - e) * (cnt[i] - e) / e;
            (*df)++;
        } else {
            *outside += cnt[i];
        }
    }
    free(scratch);
    free(p);
    free(cnt);
    return chi;
}

START_TEST(test_distribution_chi_square) {
    float l[12];
    capmoe_rng gen;
    capmoe_rng_seed(&gen, 11);
    fill_logits(l, 12, &gen, 2.0, 0);
    struct {
        capmoe_sampling s;
        double bound;
    } cases[] = {
        {{1.0f, 1.0f, 0, 0.0f}, 45},   /* plain softmax, df 11 */
        {{0.7f, 1.0f, 6, 0.0f}, 35},   /* top-k */
        {{1.3f, 0.8f, 0, 0.0f}, 45},   /* top-p */
        {{1.0f, 1.0f, 0, 0.15f}, 45},  /* min-p */
        {{0.9f, 0.95f, 8, 0.05f}, 40}, /* all together */
    };
    for (unsigned c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int df, outside;
        double chi = chi_square(l, 12, &cases[c].s, 1000 + c, 40000, &df, &outside);
        ck_assert_int_eq(outside, 0);
        ck_assert_msg(df >= 1, "case %u keeps one token", c);
        ck_assert_msg(chi < cases[c].bound, "case %u: chi2 %.2f with df %d", c, chi, df);
    }
    /* The same check detects a wrong distribution: counts drawn at T=1 are
     * far from the T=0.5 distribution. */
    capmoe_sampling hot = {1.0f, 1.0f, 0, 0.0f}, cold = {0.5f, 1.0f, 0, 0.0f};
    int scratch[24], cnt[12] = {0};
    double p[12], chi = 0;
    capmoe_rng r;
    capmoe_rng_seed(&r, 5);
    for (int i = 0; i < 40000; i++) cnt[capmoe_sample(l, 12, &hot, &r, scratch)]++;
    ref_probs(l, 12, &cold, p);
    for (int i = 0; i < 12; i++) chi += (cnt[i] - p[i] * 40000) * (cnt[i] - p[i] * 40000) / (p[i] * 40000);
    ck_assert(chi > 1000);
}
END_TEST

START_TEST(test_determinism_per_seed) {
    enum { N = 1000 };
    float l[N];
    int scratch[2 * N];
    capmoe_rng gen;
    capmoe_rng_seed(&gen, 8);
    fill_logits(l, N, &gen, 2.0, 0);
    capmoe_sampling s = mk(0.8f, 40, 0.9f, 0.01f);
    int a[64], b[64], c[64];
    capmoe_rng r1, r2, r3;
    capmoe_rng_seed(&r1, 1234);
    capmoe_rng_seed(&r2, 1234);
    capmoe_rng_seed(&r3, 1235);
    int differ = 0, distinct = 0;
    for (int i = 0; i < 64; i++) {
        a[i] = capmoe_sample(l, N, &s, &r1, scratch);
        b[i] = capmoe_sample(l, N, &s, &r2, scratch);
        c[i] = capmoe_sample(l, N, &s, &r3, scratch);
        ck_assert_int_eq(a[i], b[i]);
        differ += a[i] != c[i];
        distinct += i > 0 && a[i] != a[i - 1];
    }
    ck_assert(differ > 10);
    ck_assert(distinct > 10);
}
END_TEST

/* ---- log-probabilities -------------------------------------------------------- */

START_TEST(test_logprobs_vs_direct) {
    enum { N = 500 };
    float l[N];
    capmoe_rng gen;
    capmoe_rng_seed(&gen, 77);
    fill_logits(l, N, &gen, 10.0, 0);
    double sum = 0;
    for (int i = 0; i < N; i++) sum += exp((double)l[i]);
    for (int i = 0; i < N; i++) {
        double want = log(exp((double)l[i]) / sum);
        ck_assert(fabs(capmoe_logprob(l, N, i) - want) < 1e-12);
    }
    int ids[8];
    double lps[8];
    ck_assert_int_eq(capmoe_top_logprobs(l, N, 5, ids, lps), 5);
    int *ord = malloc(sizeof(int) * N);
    for (int i = 0; i < N; i++) ord[i] = i;
    g_ref_logits = l;
    qsort(ord, N, sizeof(int), ref_cmp);
    for (int j = 0; j < 5; j++) {
        ck_assert_int_eq(ids[j], ord[j]);
        ck_assert(lps[j] == capmoe_logprob(l, N, ids[j]));
        if (j) ck_assert(lps[j] <= lps[j - 1]);
    }
    free(ord);

    /* Large logits: a naive exp overflows; log-sum-exp does not. */
    float big[] = {1000.0f, 1000.0f, 999.0f};
    double z = log(2 + exp(-1.0));
    ck_assert(fabs(capmoe_logprob(big, 3, 0) + z) < 1e-14);
    ck_assert(fabs(capmoe_logprob(big, 3, 2) - (-1 - z)) < 1e-14);
    float small[] = {-1e4f, -1e4f - 3.0f};
    ck_assert(fabs(capmoe_logprob(small, 2, 1) - (-3 - log(1 + exp(-3.0)))) < 1e-12);

    /* Ties rank the lower id first; n_top above n is clipped. */
    float t[] = {1, 2, 2, 0};
    ck_assert_int_eq(capmoe_top_logprobs(t, 4, 10, ids, lps), 4);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], 2);
    ck_assert_int_eq(ids[2], 0);
    ck_assert_int_eq(ids[3], 3);
    ck_assert(lps[0] == lps[1]);
    ck_assert_int_eq(capmoe_top_logprobs(t, 4, 0, ids, lps), 0);
    ck_assert(isnan(capmoe_logprob(t, 4, 4)));
    ck_assert(isnan(capmoe_logprob(t, 4, -1)));
}
END_TEST

/* ---- non-finite logits -------------------------------------------------------- */

START_TEST(test_nonfinite_logits) {
    int scratch[16], cnt[8] = {0};
    double q[8];
    capmoe_rng r;
    capmoe_rng_seed(&r, 17);
    capmoe_sampling s;
    capmoe_sampling_default(&s);

    /* NaN / -inf tokens are never drawn and have logprob -inf. */
    float a[] = {NAN, 0.0f, -INFINITY, 0.0f, NAN};
    for (int i = 0; i < 2000; i++) cnt[capmoe_sample(a, 5, &s, &r, scratch)]++;
    ck_assert_int_eq(cnt[0] + cnt[2] + cnt[4], 0);
    ck_assert(cnt[1] > 800 && cnt[3] > 800);
    ck_assert(isinf(capmoe_logprob(a, 5, 0)) && capmoe_logprob(a, 5, 0) < 0);
    ck_assert(fabs(capmoe_logprob(a, 5, 1) + log(2.0)) < 1e-15);
    ck_assert_int_eq(capmoe_sample_probs(a, 5, &s, scratch, q), 2);

    /* +inf: uniform over the +inf tokens. */
    float b[] = {5.0f, INFINITY, 1e38f, INFINITY, NAN, INFINITY};
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < 3000; i++) cnt[capmoe_sample(b, 6, &s, &r, scratch)]++;
    ck_assert_int_eq(cnt[0] + cnt[2] + cnt[4], 0);
    ck_assert(cnt[1] > 800 && cnt[3] > 800 && cnt[5] > 800);
    ck_assert(fabs(capmoe_logprob(b, 6, 3) + log(3.0)) < 1e-15);
    ck_assert(isinf(capmoe_logprob(b, 6, 2)));
    s.top_k = 2;
    ck_assert_int_eq(capmoe_sample_probs(b, 6, &s, scratch, q), 2);
    ck_assert(q[1] == 0.5 && q[3] == 0.5 && q[5] == 0);
    s.top_k = 0;
    s.top_p = 0.5f; /* 3 equal tokens: the first ceil(1.5) = 2 reach half the mass */
    ck_assert_int_eq(capmoe_sample_probs(b, 6, &s, scratch, q), 2);
    ck_assert(q[1] == 0.5 && q[3] == 0.5);
    s.top_p = 1.0f;

    /* All -inf / NaN: every token equal, so uniform; logprobs stay finite. */
    float c[] = {-INFINITY, NAN, -INFINITY, -INFINITY};
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < 4000; i++) {
        int t = capmoe_sample(c, 4, &s, &r, scratch);
        ck_assert(t >= 0 && t < 4);
        cnt[t]++;
    }
    for (int i = 0; i < 4; i++) ck_assert(cnt[i] > 800);
    ck_assert(fabs(capmoe_logprob(c, 4, 1) + log(4.0)) < 1e-15);
    ck_assert_int_eq(capmoe_sample_probs(c, 4, &s, scratch, q), 4);
    ck_assert(q[0] == 0.25 && q[3] == 0.25);
    s.temperature = 0.0f; /* greedy: all the mass on the argmax */
    ck_assert_int_eq(capmoe_sample_probs(c, 4, &s, scratch, q), 1);
    ck_assert(q[0] == 1.0 && q[1] == 0.0);
    ck_assert_int_eq(capmoe_sample_probs(c, 4, NULL, scratch, q), 4);
    s.temperature = 1.0f;
    int ids[4];
    double lps[4];
    ck_assert_int_eq(capmoe_top_logprobs(c, 4, 4, ids, lps), 4);
    for (int j = 0; j < 4; j++) ck_assert(isfinite(lps[j]));

    /* Extreme temperatures stay finite and well-defined. */
    float d[] = {1.0f, 3.0f, 2.0f};
    s.temperature = 1e-30f;
    for (int i = 0; i < 50; i++) ck_assert_int_eq(capmoe_sample(d, 3, &s, &r, scratch), 1);
    s.temperature = 1e30f;
    ck_assert_int_eq(capmoe_sample_probs(d, 3, &s, scratch, q), 3);
    ck_assert(fabs(q[0] - 1.0 / 3) < 1e-9);
    /* NULL sampling params = defaults; n <= 0 does not crash. */
    ck_assert(capmoe_sample(d, 3, NULL, &r, scratch) >= 0);
    ck_assert_int_eq(capmoe_sample(d, 0, &s, &r, scratch), 0);
}
END_TEST

static Suite *sample_suite(void) {
    Suite *s = suite_create("sample");
    TCase *rng = tcase_create("rng");
    tcase_add_test(rng, test_rng_known_answers);
    tcase_add_test(rng, test_rng_uniform);
    tcase_add_test(rng, test_determinism_per_seed);
    TCase *greedy = tcase_create("greedy");
    tcase_add_test(greedy, test_argmax_ties_nan);
    tcase_add_test(greedy, test_greedy_no_rng);
    tcase_add_test(greedy, test_top_k1_and_tiny_top_p_are_argmax);
    TCase *dist = tcase_create("distribution");
    tcase_add_test(dist, test_probs_match_reference);
    tcase_add_test(dist, test_top_p_and_min_p_sets);
    tcase_add_test(dist, test_distribution_chi_square);
    TCase *lp = tcase_create("logprobs");
    tcase_add_test(lp, test_logprobs_vs_direct);
    tcase_add_test(lp, test_nonfinite_logits);
    TCase *all[] = {rng, greedy, dist, lp};
    for (int i = 0; i < 4; i++) {
        tcase_set_timeout(all[i], 60); /* ASan makes the sampling loops slower */
        suite_add_tcase(s, all[i]);
    }
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(sample_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
