/* check_model.c - engine behaviour that parity fixtures do not cover:
 * KV-cache decoding equals a full pass, batching does not change a
 * sequence's logits under policy none, expert-parallel ranks do not change
 * results, and bad input (ids, context, ranks, model files) is refused with
 * a clear error and leaves the caches untouched. Uses tests/fixtures. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/model.h"

#define FIX "tests/fixtures/"

static const char *const FIXTURES[] = {"mixtral-tiny", "qwen2moe-tiny", "olmoe-tiny",
                                       "qwen3moe-tiny"};

static capmoe_model *load(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    capmoe_model *m = NULL;
    capmoe_error err = {{0}};
    capmoe_model_opts o = {.max_ranks = 4};
    ck_assert_msg(capmoe_model_load(&m, dir, &o, &err) == 0, "load %s: %s", dir, err.msg);
    return m;
}

static double rel_err(const float *a, const float *b, size_t n) {
    double mx = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
        if (fabs(a[i] - b[i]) > md) md = fabs(a[i] - b[i]);
    }
    return md / (mx > 0 ? mx : 1);
}

static const int32_t PROMPT[] = {5, 17, 42, 99, 7, 3, 64, 12, 150, 33, 8, 21};
#define PLEN ((int)(sizeof PROMPT / sizeof PROMPT[0]))

START_TEST(test_decode_matches_full_pass) {
    capmoe_model *m = load(FIXTURES[_i]);
    int V = capmoe_model_config(m)->vocab_size;
    float *full = malloc((size_t)PLEN * V * sizeof(float));
    float *inc = malloc((size_t)V * sizeof(float));
    capmoe_error err = {{0}};
    capmoe_kv *a = capmoe_kv_new(m, 0), *b = capmoe_kv_new(m, 0);
    capmoe_batch_seq s = {.kv = a, .tokens = PROMPT, .n_tokens = PLEN, .want = CAPMOE_LOGITS_ALL};
    ck_assert_msg(capmoe_model_forward(m, &s, 1, NULL, full, NULL, &err) == 0, "%s", err.msg);
    /* prefill 5 tokens, then one token at a time */
    s = (capmoe_batch_seq){.kv = b, .tokens = PROMPT, .n_tokens = 5, .want = CAPMOE_LOGITS_LAST};
    ck_assert(capmoe_model_forward(m, &s, 1, NULL, inc, NULL, &err) == 0);
    ck_assert_double_lt(rel_err(inc, full + (size_t)4 * V, (size_t)V), 1e-5);
    for (int t = 5; t < PLEN; t++) {
        s = (capmoe_batch_seq){.kv = b, .tokens = PROMPT + t, .n_tokens = 1,
                               .want = CAPMOE_LOGITS_LAST};
        ck_assert(capmoe_model_forward(m, &s, 1, NULL, inc, NULL, &err) == 0);
        ck_assert_double_lt(rel_err(inc, full + (size_t)t * V, (size_t)V), 1e-5);
    }
    ck_assert_int_eq(capmoe_kv_len(b), PLEN);
    capmoe_kv_free(a);
    capmoe_kv_free(b);
    free(full);
    free(inc);
    capmoe_model_free(m);
}
END_TEST

START_TEST(test_batching_and_ranks_do_not_change_none) {
    capmoe_model *m = load(FIXTURES[_i]);
    int V = capmoe_model_config(m)->vocab_size;
    capmoe_error err = {{0}};
    float *alone = malloc((size_t)V * sizeof(float));
    float *batched = malloc((size_t)3 * V * sizeof(float));
    capmoe_kv *k0 = capmoe_kv_new(m, 0);
    capmoe_batch_seq s = {.kv = k0, .tokens = PROMPT, .n_tokens = 7, .want = CAPMOE_LOGITS_LAST};
    ck_assert(capmoe_model_forward(m, &s, 1, NULL, alone, NULL, &err) == 0);
    capmoe_kv *k1 = capmoe_kv_new(m, 0), *k2 = capmoe_kv_new(m, 0), *k3 = capmoe_kv_new(m, 0);
    capmoe_batch_seq b[3] = {
        {.kv = k1, .tokens = PROMPT + 3, .n_tokens = 9, .want = CAPMOE_LOGITS_LAST, .rank = 0},
        {.kv = k2, .tokens = PROMPT, .n_tokens = 7, .want = CAPMOE_LOGITS_LAST, .rank = 1},
        {.kv = k3, .tokens = PROMPT + 1, .n_tokens = 4, .want = CAPMOE_LOGITS_LAST, .rank = 0}};
    capmoe_dispatch_cfg cfg;
    capmoe_dispatch_cfg_default(&cfg);
    cfg.ep_ranks = 2;
    capmoe_layer_stats ls[8];
    capmoe_forward_stats st = {.layers = ls, .cap_layers = 8};
    ck_assert_msg(capmoe_model_forward(m, b, 3, &cfg, batched, &st, &err) == 0, "%s", err.msg);
    ck_assert_double_lt(rel_err(batched + V, alone, (size_t)V), 1e-5);
    ck_assert_int_eq(st.tokens, 20);
    ck_assert_int_eq(st.n_moe, capmoe_model_config(m)->n_moe_layers);
    for (int l = 0; l < st.n_moe; l++) {
        int total = 0, rtotal = 0;
        for (int e = 0; e < ls[l].n_experts; e++) total += ls[l].loads[e];
        for (int r = 0; r < ls[l].n_ranks; r++) rtotal += ls[l].rank_load[r];
        ck_assert_int_eq(total, 20 * capmoe_model_config(m)->top_k);
        ck_assert_int_eq(rtotal, total);
        ck_assert_int_eq(ls[l].n_ranks, 2);
    }
    capmoe_kv_free(k0);
    capmoe_kv_free(k1);
    capmoe_kv_free(k2);
    capmoe_kv_free(k3);
    free(alone);
    free(batched);
    capmoe_model_free(m);
}
END_TEST

START_TEST(test_bad_input_leaves_cache_untouched) {
    capmoe_model *m = load("mixtral-tiny");
    int V = capmoe_model_config(m)->vocab_size;
    capmoe_error err = {{0}};
    float *lg = malloc((size_t)V * sizeof(float));
    capmoe_kv *kv = capmoe_kv_new(m, 8);
    int32_t bad[2] = {3, V};
    capmoe_batch_seq s = {.kv = kv, .tokens = bad, .n_tokens = 2, .want = CAPMOE_LOGITS_LAST};
    ck_assert_int_eq(capmoe_model_forward(m, &s, 1, NULL, lg, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "out of range") != NULL, "%s", err.msg);
    ck_assert_int_eq(capmoe_kv_len(kv), 0);
    bad[1] = -1;
    ck_assert_int_eq(capmoe_model_forward(m, &s, 1, NULL, lg, NULL, &err), -1);
    /* context overflow: 8 max */
    s.tokens = PROMPT;
    s.n_tokens = 9;
    ck_assert_int_eq(capmoe_model_forward(m, &s, 1, NULL, lg, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "context") != NULL, "%s", err.msg);
    ck_assert_int_eq(capmoe_kv_len(kv), 0);
    /* ranks not dividing E (8 experts, 3 ranks) with an expert-parallel policy */
    capmoe_dispatch_cfg cfg;
    capmoe_dispatch_cfg_default(&cfg);
    cfg.policy = CAPMOE_POLICY_EXPANDED;
    cfg.ep_ranks = 3;
    s.n_tokens = 4;
    ck_assert_int_eq(capmoe_model_forward(m, &s, 1, &cfg, lg, NULL, &err), -1);
    ck_assert_int_eq(capmoe_kv_len(kv), 0);
    /* more ranks than workers */
    cfg.policy = CAPMOE_POLICY_NONE;
    cfg.ep_ranks = 8;
    ck_assert_int_eq(capmoe_model_forward(m, &s, 1, &cfg, lg, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "ep_ranks") != NULL, "%s", err.msg);
    /* the same cache twice in one batch */
    capmoe_batch_seq two[2] = {s, s};
    ck_assert_int_eq(capmoe_model_forward(m, two, 2, NULL, lg, NULL, &err), -1);
    /* empty batch */
    ck_assert_int_eq(capmoe_model_forward(m, &s, 0, NULL, lg, NULL, &err), -1);
    ck_assert_int_eq(capmoe_kv_len(kv), 0);
    capmoe_kv_free(kv);
    free(lg);
    capmoe_model_free(m);
}
END_TEST

static int copy_file(const char *src, const char *dst, long truncate_to) {
    FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
    if (!a || !b) return -1;
    char buf[65536];
    long total = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) {
        if (truncate_to >= 0 && total + (long)n > truncate_to) n = (size_t)(truncate_to - total);
        fwrite(buf, 1, n, b);
        total += (long)n;
        if (truncate_to >= 0 && total >= truncate_to) break;
    }
    fclose(a);
    fclose(b);
    return 0;
}

START_TEST(test_bad_model_dirs) {
    capmoe_error err = {{0}};
    capmoe_model *m = NULL;
    ck_assert_int_eq(capmoe_model_load(&m, "tests/fixtures/does-not-exist", NULL, &err), -1);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err.msg, "does-not-exist") != NULL, "%s", err.msg);
    /* a copy of olmoe-tiny whose weights file is truncated */
    char tmpl[] = "/tmp/capmoe-model-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    const char *files[] = {"config.json", "tokenizer.json", "tokenizer_config.json"};
    char a[512], b[512];
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, FIX "olmoe-tiny/%s", files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        ck_assert_int_eq(copy_file(a, b, -1), 0);
    }
    snprintf(a, sizeof a, FIX "olmoe-tiny/model.safetensors");
    snprintf(b, sizeof b, "%s/model.safetensors", dir);
    ck_assert_int_eq(copy_file(a, b, 100000), 0);
    ck_assert_int_eq(capmoe_model_load(&m, dir, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "model.safetensors") != NULL, "%s", err.msg);
    /* a config whose sizes do not match the weights */
    FILE *f = fopen(b, "wb");
    fclose(f);
    copy_file(FIX "olmoe-tiny/model.safetensors", b, -1);
    snprintf(a, sizeof a, "%s/config.json", dir);
    f = fopen(a, "wb");
    fputs("{\"architectures\":[\"OlmoeForCausalLM\"],\"model_type\":\"olmoe\",\"hidden_size\":32,"
          "\"intermediate_size\":48,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
          "\"num_key_value_heads\":4,\"num_experts\":16,\"num_experts_per_tok\":4,"
          "\"vocab_size\":576,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5,"
          "\"tie_word_embeddings\":true,\"hidden_act\":\"silu\"}",
          f);
    fclose(f);
    ck_assert_int_eq(capmoe_model_load(&m, dir, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "shape") != NULL, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        unlink(b);
    }
    snprintf(b, sizeof b, "%s/model.safetensors", dir);
    unlink(b);
    rmdir(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_decode_matches_full_pass, 0, 4);
    tcase_add_loop_test(tc, test_batching_and_ranks_do_not_change_none, 0, 4);
    tcase_add_test(tc, test_bad_input_leaves_cache_untouched);
    tcase_add_test(tc, test_bad_model_dirs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
