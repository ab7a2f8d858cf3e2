/* check_logitproc.c - tests of core/logitproc.c against a direct dense
 * computation of vLLM's formulas (logit_bias added by a logits processor,
 * then apply_penalties: repetition on prompt|output tokens, frequency *
 * output counts, presence * output mask), on random logits, prompts and
 * outputs; and the allowed-token mask. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/logitproc.h"
#include "capmoe/sample.h"

/* The reference, written from vLLM's model_executor/layers/utils.py
 * apply_penalties, one token at a time over the whole vocabulary. */
static void ref_apply(float *l, int V, const capmoe_penalties *p, const capmoe_logit_bias *b,
                      int nb, const int32_t *prompt, int np, const int32_t *out, int no) {
    for (int i = 0; i < nb; i++) l[b[i].id] += b[i].bias;
    for (int t = 0; t < V; t++) {
        int in_prompt = 0, count = 0;
        for (int i = 0; i < np; i++) in_prompt |= prompt[i] == t;
        for (int i = 0; i < no; i++) count += out[i] == t;
        double r = p->repetition > 0 ? p->repetition : 1;
        double x = l[t];
        if (in_prompt || count) x = x > 0 ? x / r : x * r;
        x -= p->frequency * count;
        x -= p->presence * (count > 0);
        l[t] = (float)x;
    }
}

START_TEST(test_vs_reference) {
    enum { V = 97 };
    capmoe_rng rng;
    capmoe_rng_seed(&rng, 1234);
    for (int trial = 0; trial < 40; trial++) {
        capmoe_penalties p = {(float)(capmoe_rng_uniform(&rng) * 4 - 2),
                              (float)(capmoe_rng_uniform(&rng) * 4 - 2),
                              trial % 5 == 0 ? 1.0f : (float)(0.05 + capmoe_rng_uniform(&rng) * 1.95)};
        if (trial % 7 == 0) p.presence = p.frequency = 0;
        capmoe_logit_bias b[6];
        int nb = trial % 4 == 0 ? 0 : 6;
        for (int i = 0; i < nb; i++)
            b[i] = (capmoe_logit_bias){(int32_t)(capmoe_rng_next(&rng) % V),
                                       (float)(capmoe_rng_uniform(&rng) * 200 - 100)};
        /* distinct bias ids (a repeated id: the last wins in both) */
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < i; j++)
                if (b[j].id == b[i].id) b[i].id = (b[i].id + 1 + j) % V;
        int dup = 0;
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < i; j++) dup |= b[j].id == b[i].id;
        if (dup) nb = 1;
        int32_t prompt[20], out[40];
        int np = 1 + (int)(capmoe_rng_next(&rng) % 20), no = (int)(capmoe_rng_next(&rng) % 40);
        for (int i = 0; i < np; i++) prompt[i] = (int32_t)(capmoe_rng_next(&rng) % 30);
        for (int i = 0; i < no; i++) out[i] = (int32_t)(capmoe_rng_next(&rng) % 40 + 10);
        capmoe_logitproc *lp;
        capmoe_error err;
        ck_assert_int_eq(capmoe_logitproc_new(&lp, V, &p, b, nb, prompt, np, &err), 0);
        for (int k = 0; k <= no; k++) {
            float got[V], want[V];
            for (int t = 0; t < V; t++)
                got[t] = want[t] = (float)(capmoe_rng_uniform(&rng) * 20 - 10);
            capmoe_logit_adj_apply(capmoe_logitproc_adj(lp), got, V);
            ref_apply(want, V, &p, b, nb, prompt, np, out, k);
            for (int t = 0; t < V; t++)
                ck_assert_msg(fabsf(got[t] - want[t]) <= 1e-4f * (1 + fabsf(want[t])),
                              "trial %d step %d token %d: %g, want %g", trial, k, t, got[t],
                              want[t]);
            if (k < no) ck_assert_int_eq(capmoe_logitproc_accept(lp, out[k]), 0);
        }
        capmoe_logitproc_free(lp);
    }
}
END_TEST

START_TEST(test_mask_and_sampling) {
    enum { V = 20 };
    capmoe_penalties off = {0, 0, 1};
    capmoe_logitproc *lp;
    capmoe_error err;
    ck_assert_int_eq(capmoe_logitproc_new(&lp, V, &off, NULL, 0, NULL, 0, &err), 0);
    uint8_t allow[3] = {0};
    allow[13 / 8] |= 1u << (13 % 8);
    allow[2 / 8] |= 1u << (2 % 8);
    capmoe_logitproc_set_allow(lp, allow, 3);
    float l[V];
    for (int t = 0; t < V; t++) l[t] = (float)t; /* greedy would pick 19 */
    capmoe_logit_adj_apply(capmoe_logitproc_adj(lp), l, V);
    for (int t = 0; t < V; t++)
        ck_assert_msg((t == 2 || t == 13) ? l[t] == (float)t : isinf(l[t]) && l[t] < 0, "%d", t);
    ck_assert_int_eq(capmoe_argmax(l, V), 13);
    /* sampling never leaves the mask */
    capmoe_rng rng;
    capmoe_rng_seed(&rng, 9);
    capmoe_sampling s;
    capmoe_sampling_default(&s);
    s.temperature = 5;
    float scratch[2 * V];
    for (int i = 0; i < 200; i++) {
        int t = capmoe_sample(l, V, &s, &rng, scratch);
        ck_assert(t == 2 || t == 13);
    }
    /* a short mask forbids what lies past it */
    capmoe_logitproc_set_allow(lp, allow, 1);
    for (int t = 0; t < V; t++) l[t] = 1;
    capmoe_logit_adj_apply(capmoe_logitproc_adj(lp), l, V);
    ck_assert(l[2] == 1 && isinf(l[13]));
    /* whole bytes allowed, a vocabulary ending inside a byte */
    uint8_t most[3] = {0xFF, 0x01, 0xFF};
    capmoe_logitproc_set_allow(lp, most, 3);
    for (int t = 0; t < V; t++) l[t] = 1;
    capmoe_logit_adj_apply(capmoe_logitproc_adj(lp), l, V);
    for (int t = 0; t < V; t++)
        ck_assert_msg((t <= 8 || t >= 16) ? l[t] == 1 : isinf(l[t]) && l[t] < 0, "%d", t);
    capmoe_logitproc_free(lp);
    /* bias +100 wins greedy decoding */
    capmoe_logit_bias b = {4, 100};
    ck_assert_int_eq(capmoe_logitproc_new(&lp, V, &off, &b, 1, NULL, 0, &err), 0);
    for (int t = 0; t < V; t++) l[t] = (float)t;
    capmoe_logit_adj_apply(capmoe_logitproc_adj(lp), l, V);
    ck_assert_int_eq(capmoe_argmax(l, V), 4);
    ck_assert_int_eq(capmoe_penalties_off(&off), 1);
    capmoe_logitproc_free(lp);
}
END_TEST

int main(void) {
    Suite *s = suite_create("logitproc");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120); /* the machine is shared; ASan is slow */
    tcase_add_test(tc, test_vs_reference);
    tcase_add_test(tc, test_mask_and_sampling);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
