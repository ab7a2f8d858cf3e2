/* check_mla.c - DeepSeek's Multi-head Latent Attention (core/mla.c) against
 * transformers 5.17: the four DeepSeek parity fixtures' batch of prompts,
 * decoded with the latent KV cache (the first two tokens of every prompt as
 * one batch, then one token per sequence per step, the sequences decoding
 * together), must give transformers' full-pass logits (parity/none.f32) to a
 * relative error below 1e-4, in either form of attention (expanded,
 * absorbed) and with the form chosen per step; and the cache holds
 * kv_lora_rank + qk_rope_head_dim floats per token and layer. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/model.h"

#define FIX "tests/fixtures/"

static const char *const FIXTURES[] = {"deepseekv2-tiny", "deepseekv2-group-tiny",
                                       "deepseekv3-tiny", "deepseekv3-halfrope-tiny"};
#define N_FIXTURES ((int)(sizeof FIXTURES / sizeof FIXTURES[0]))
static const capmoe_mla_form FORMS[] = {CAPMOE_MLA_AUTO, CAPMOE_MLA_EXPANDED,
                                        CAPMOE_MLA_ABSORBED};
#define N_FORMS ((int)(sizeof FORMS / sizeof FORMS[0]))
#define MAX_SEQS 8
#define PREFILL 2

typedef struct fixture {
    int n_seqs, len[MAX_SEQS], total;
    int32_t *ids[MAX_SEQS];
    float *ref; /* total x vocab, transformers' full pass */
    size_t n_ref;
} fixture;

static void fixture_load(fixture *f, const char *name) {
    char path[256];
    capmoe_error err;
    memset(f, 0, sizeof *f);
    snprintf(path, sizeof path, FIX "%s/parity/cases.json", name);
    char *text = capmoe_read_file(path, NULL, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    cJSON *root = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(root);
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
        ck_assert_int_lt(f->n_seqs, MAX_SEQS);
        int n = cJSON_GetArraySize(p), s = f->n_seqs++;
        f->len[s] = n;
        f->ids[s] = malloc((size_t)n * sizeof(int32_t));
        for (int i = 0; i < n; i++) f->ids[s][i] = cJSON_GetArrayItem(p, i)->valueint;
        f->total += n;
    }
    cJSON_Delete(root);
    snprintf(path, sizeof path, FIX "%s/parity/none.f32", name);
    size_t len = 0;
    f->ref = (float *)capmoe_read_file(path, &len, &err);
    ck_assert_msg(f->ref != NULL, "%s", err.msg);
    f->n_ref = len / sizeof(float);
}

static void fixture_free(fixture *f) {
    for (int s = 0; s < f->n_seqs; s++) free(f->ids[s]);
    free(f->ref);
}

static double rel_err(const float *a, const float *b, size_t n, double scale) {
    double md = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > md) md = fabs(a[i] - b[i]);
    return md / scale;
}

START_TEST(test_cached_decoding_matches_transformers) {
    const char *name = FIXTURES[_i / N_FORMS];
    capmoe_mla_form form = FORMS[_i % N_FORMS];
    fixture f;
    fixture_load(&f, name);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    capmoe_model *m = NULL;
    capmoe_error err = {{0}};
    capmoe_model_opts o = {.max_ranks = 1, .mla_form = form};
    ck_assert_msg(capmoe_model_load(&m, dir, &o, &err) == 0, "%s: %s", dir, err.msg);
    const capmoe_hfconfig *c = capmoe_model_config(m);
    int V = c->vocab_size;
    ck_assert_uint_eq(f.n_ref, (size_t)f.total * V);
    double scale = 0;
    for (size_t i = 0; i < f.n_ref; i++)
        if (fabs(f.ref[i]) > scale) scale = fabs(f.ref[i]);
    /* the reference rows of each sequence start here */
    int row0[MAX_SEQS];
    for (int s = 0, r = 0; s < f.n_seqs; r += f.len[s++]) row0[s] = r;
    capmoe_kv *kv[MAX_SEQS];
    capmoe_batch_seq seqs[MAX_SEQS];
    float *lg = malloc((size_t)f.total * V * sizeof(float));
    ck_assert_ptr_nonnull(lg);
    int done[MAX_SEQS] = {0};
    for (int s = 0; s < f.n_seqs; s++) kv[s] = capmoe_kv_new(m, 0);
    double worst = 0;
    for (int step = 0;; step++) {
        int n = 0;
        for (int s = 0; s < f.n_seqs; s++) {
            int take = step == 0 ? PREFILL : 1;
            if (done[s] + take > f.len[s]) take = f.len[s] - done[s];
            seqs[n++] = (capmoe_batch_seq){.kv = kv[s], .tokens = f.ids[s] + done[s],
                                           .n_tokens = take, .want = CAPMOE_LOGITS_ALL};
        }
        int rows = 0;
        for (int s = 0; s < n; s++) rows += seqs[s].n_tokens;
        if (rows == 0) break;
        ck_assert_msg(capmoe_model_forward(m, seqs, n, NULL, lg, NULL, &err) == 0, "%s: %s",
                      name, err.msg);
        for (int s = 0, r = 0; s < n; s++) {
            for (int i = 0; i < seqs[s].n_tokens; i++, r++) {
                const float *want = f.ref + (size_t)(row0[s] + done[s] + i) * V;
                double e = rel_err(lg + (size_t)r * V, want, (size_t)V, scale);
                if (e > worst) worst = e;
            }
            done[s] += seqs[s].n_tokens;
        }
    }
    ck_assert_msg(worst < 1e-4, "%s, form %d: relative error %g", name, (int)form, worst);
    /* the latent cache: kv_lora_rank + qk_rope_head_dim floats per token and layer */
    size_t per_token = (size_t)c->n_layers * (size_t)(c->kv_lora_rank + c->qk_rope_head_dim) *
                       sizeof(float);
    ck_assert_uint_eq(capmoe_model_kv_bytes_per_token(m, 0), per_token);
    ck_assert_uint_eq(capmoe_model_kv_bytes_per_token(m, 1),
                      (size_t)c->n_layers * (size_t)c->n_heads *
                          (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim) *
                          sizeof(float));
    for (int s = 0; s < f.n_seqs; s++) {
        ck_assert_int_eq(capmoe_kv_len(kv[s]), f.len[s]);
        ck_assert_uint_eq(capmoe_kv_bytes(kv[s]) % per_token, 0);
        capmoe_kv_free(kv[s]);
    }
    free(lg);
    capmoe_model_free(m);
    fixture_free(&f);
}
END_TEST

/* DeepSeek-V2-Lite's and V3's sizes: 576 floats per token and layer. */
START_TEST(test_latent_bytes_of_hub_models) {
    capmoe_hfconfig c;
    capmoe_error err;
    ck_assert_msg(capmoe_hfconfig_load(&c, "tests/data/configs/deepseek-v2-lite", &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(c.kv_lora_rank + c.qk_rope_head_dim, 576);
    ck_assert_msg(capmoe_hfconfig_load(&c, "tests/data/configs/deepseek-v3", &err) == 0, "%s",
                  err.msg);
    ck_assert_int_eq(c.kv_lora_rank + c.qk_rope_head_dim, 576);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("mla");
    TCase *tc = tcase_create("fixtures");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_cached_decoding_matches_transformers, 0, N_FIXTURES * N_FORMS);
    tcase_add_test(tc, test_latent_bytes_of_hub_models);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
