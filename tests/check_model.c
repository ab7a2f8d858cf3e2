/* check_model.c - engine behaviour that parity fixtures do not cover:
 * KV-cache decoding equals a full pass, batching does not change a
 * sequence's logits under policy none, expert-parallel ranks do not change
 * results, and bad input (ids, context, ranks, model files) is refused with
 * a clear error and leaves the caches untouched, and q/k/v projections
 * stored in different dtypes (stacked into one float32 panel matrix at load)
 * give the same logits bit for bit as the all-float32 checkpoint of the same
 * values. Uses tests/fixtures and checkpoints written to temporary
 * directories. */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/model.h"
#include "capmoe/safetensors.h"

#define FIX "tests/fixtures/"

static const char *const FIXTURES[] = {"mixtral-tiny",         "qwen2moe-tiny",
                                       "olmoe-tiny",           "qwen3moe-tiny",
                                       "deepseekv2-tiny",      "deepseekv2-group-tiny",
                                       "deepseekv3-tiny",      "deepseekv3-halfrope-tiny"};
#define N_FIXTURES ((int)(sizeof FIXTURES / sizeof FIXTURES[0]))

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

/* ---- q, k, v stored in different dtypes ------------------------------------ */

/* A checkpoint in memory: tensors as float32 values ("base"), written out with
 * each tensor in a chosen dtype. */
typedef struct ck_tensor {
    char name[128];
    int ndim;
    int64_t shape[CAPMOE_ST_MAX_DIMS];
    size_t n;
    float *v;
} ck_tensor;

typedef struct ckpt {
    ck_tensor *t;
    int n, cap;
    char *config; /* config.json text */
} ckpt;

static void ckpt_free(ckpt *c) {
    for (int i = 0; i < c->n; i++) free(c->t[i].v);
    free(c->t);
    free(c->config);
    memset(c, 0, sizeof *c);
}

static ck_tensor *ckpt_add(ckpt *c, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->t = realloc(c->t, (size_t)c->cap * sizeof *c->t);
        ck_assert_ptr_nonnull(c->t);
    }
    ck_tensor *t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->n = 1;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i], t->n *= (size_t)shape[i];
    t->v = malloc(t->n * sizeof(float));
    ck_assert_ptr_nonnull(t->v);
    return t;
}

static uint64_t ck_rng(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* center + scale * uniform(-1, 1), full float32 precision; in a matrix a
 * few values of every kind a conversion could get wrong: -0, and values that
 * are subnormal in F16 (two exact, one rounded). */
static void ck_rand(uint64_t *rs, const char *name, int ndim, int64_t d0, int64_t d1, double scale,
                    double center, ckpt *c) {
    int64_t shape[2] = {d0, d1};
    ck_tensor *t = ckpt_add(c, ndim, shape, "%s", name);
    for (size_t i = 0; i < t->n; i++) {
        double u = (double)(ck_rng(rs) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
        t->v[i] = (float)(center + scale * u);
    }
    if (ndim == 2 && t->n >= 8) {
        t->v[1] = -0.0f;
        t->v[3] = 0x1p-20f;
        t->v[5] = -0x1.8p-22f;
        t->v[7] = 1.2345e-6f;
    }
}

#define CKR(c, rs, ndim, d0, d1, scale, center, ...)                       \
    do {                                                                   \
        char nm_[128];                                                     \
        snprintf(nm_, sizeof nm_, __VA_ARGS__);                            \
        ck_rand(rs, nm_, ndim, d0, d1, scale, center, c);                  \
    } while (0)

/* A random Mixtral (qwen2 = 0) or Qwen2-MoE (qwen2 = 1, with q/k/v biases,
 * a shared expert and its gate, layer 1 dense) of shapes where the stacked
 * q/k/v rows do not start on panel boundaries, and for Mixtral an odd
 * hidden size (an odd K for the stacked product). */
static void ckpt_synth(ckpt *c, int qwen2) {
    memset(c, 0, sizeof *c);
    uint64_t rs = qwen2 ? 0x0ddba11u : 0xfee1deadu;
    /* Mixtral: H 37, 3 heads of 6, 1 KV head: q 18 + k 6 + v 6 rows.
     * Qwen2-MoE: H 36, 6 heads of 6, 2 KV heads: q 36 + k 12 + v 12 rows. */
    int H = qwen2 ? 36 : 37, nh = qwen2 ? 6 : 3, nkv = qwen2 ? 2 : 1, d = 6;
    int E = 4, top_k = 2, I = qwen2 ? 20 : 24, V = 50, L = qwen2 ? 3 : 2, Is = 28, Id = 30;
    int qd = nh * d, kd = nkv * d;
    char cfg[1024];
    if (qwen2)
        snprintf(cfg, sizeof cfg,
                 "{\"architectures\":[\"Qwen2MoeForCausalLM\"],\"model_type\":\"qwen2_moe\","
                 "\"hidden_size\":%d,\"intermediate_size\":%d,\"moe_intermediate_size\":%d,"
                 "\"shared_expert_intermediate_size\":%d,\"num_hidden_layers\":%d,"
                 "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"num_experts\":%d,"
                 "\"num_experts_per_tok\":%d,\"vocab_size\":%d,\"max_position_embeddings\":64,"
                 "\"rms_norm_eps\":1e-6,\"rope_theta\":10000.0,\"qkv_bias\":true,"
                 "\"mlp_only_layers\":[1],\"decoder_sparse_step\":1,\"norm_topk_prob\":false,"
                 "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\"}",
                 H, Id, I, Is, L, nh, nkv, E, top_k, V);
    else
        snprintf(cfg, sizeof cfg,
                 "{\"architectures\":[\"MixtralForCausalLM\"],\"model_type\":\"mixtral\","
                 "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
                 "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"head_dim\":%d,"
                 "\"num_local_experts\":%d,\"num_experts_per_tok\":%d,\"vocab_size\":%d,"
                 "\"max_position_embeddings\":64,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
                 "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\"}",
                 H, I, L, nh, nkv, d, E, top_k, V);
    c->config = strdup(cfg);
    ck_assert_ptr_nonnull(c->config);
    double sH = sqrt(3.0 / H), sq = sqrt(3.0 / qd), sI = sqrt(3.0 / I);
    CKR(c, &rs, 2, V, H, 1.0, 0.0, "model.embed_tokens.weight");
    CKR(c, &rs, 1, H, 0, 0.1, 1.0, "model.norm.weight");
    CKR(c, &rs, 2, V, H, sH, 0.0, "lm_head.weight");
    for (int l = 0; l < L; l++) {
        CKR(c, &rs, 1, H, 0, 0.1, 1.0, "model.layers.%d.input_layernorm.weight", l);
        CKR(c, &rs, 1, H, 0, 0.1, 1.0, "model.layers.%d.post_attention_layernorm.weight", l);
        CKR(c, &rs, 2, qd, H, sH, 0.0, "model.layers.%d.self_attn.q_proj.weight", l);
        CKR(c, &rs, 2, kd, H, sH, 0.0, "model.layers.%d.self_attn.k_proj.weight", l);
        CKR(c, &rs, 2, kd, H, sH, 0.0, "model.layers.%d.self_attn.v_proj.weight", l);
        CKR(c, &rs, 2, H, qd, sq, 0.0, "model.layers.%d.self_attn.o_proj.weight", l);
        if (!qwen2) {
            CKR(c, &rs, 2, E, H, sH, 0.0, "model.layers.%d.block_sparse_moe.gate.weight", l);
            for (int e = 0; e < E; e++) {
                CKR(c, &rs, 2, I, H, sH, 0.0,
                    "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
                CKR(c, &rs, 2, H, I, sI, 0.0,
                    "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
                CKR(c, &rs, 2, I, H, sH, 0.0,
                    "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
            }
            continue;
        }
        CKR(c, &rs, 1, qd, 0, 0.2, 0.0, "model.layers.%d.self_attn.q_proj.bias", l);
        CKR(c, &rs, 1, kd, 0, 0.2, 0.0, "model.layers.%d.self_attn.k_proj.bias", l);
        CKR(c, &rs, 1, kd, 0, 0.2, 0.0, "model.layers.%d.self_attn.v_proj.bias", l);
        if (l == 1) { /* mlp_only_layers */
            CKR(c, &rs, 2, Id, H, sH, 0.0, "model.layers.%d.mlp.gate_proj.weight", l);
            CKR(c, &rs, 2, Id, H, sH, 0.0, "model.layers.%d.mlp.up_proj.weight", l);
            CKR(c, &rs, 2, H, Id, sqrt(3.0 / Id), 0.0, "model.layers.%d.mlp.down_proj.weight", l);
            continue;
        }
        CKR(c, &rs, 2, E, H, sH, 0.0, "model.layers.%d.mlp.gate.weight", l);
        for (int e = 0; e < E; e++) {
            CKR(c, &rs, 2, I, H, sH, 0.0, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
            CKR(c, &rs, 2, I, H, sH, 0.0, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
            CKR(c, &rs, 2, H, I, sI, 0.0, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
        }
        CKR(c, &rs, 2, Is, H, sH, 0.0, "model.layers.%d.mlp.shared_expert.gate_proj.weight", l);
        CKR(c, &rs, 2, Is, H, sH, 0.0, "model.layers.%d.mlp.shared_expert.up_proj.weight", l);
        CKR(c, &rs, 2, H, Is, sqrt(3.0 / Is), 0.0,
            "model.layers.%d.mlp.shared_expert.down_proj.weight", l);
        CKR(c, &rs, 2, 1, H, sH, 0.0, "model.layers.%d.mlp.shared_expert_gate.weight", l);
    }
}

/* A fixture's tensors as float32 (its BF16 widened exactly) and its config. */
static void ckpt_fixture(ckpt *c, const char *name) {
    memset(c, 0, sizeof *c);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    capmoe_error err = {{0}};
    capmoe_st *st = NULL;
    ck_assert_msg(capmoe_st_open_dir(&st, dir, &err) == 0, "%s", err.msg);
    for (int i = 0; i < capmoe_st_count(st); i++) {
        const capmoe_st_tensor *t = capmoe_st_at(st, i);
        const float *data = NULL;
        float *owned = NULL;
        ck_assert_msg(capmoe_st_get_f32(st, t->name, t->ndim, t->shape, &data, &owned, &err) == 0,
                      "%s", err.msg);
        ck_tensor *x = ckpt_add(c, t->ndim, t->shape, "%s", t->name);
        memcpy(x->v, data, x->n * sizeof(float));
        free(owned);
    }
    capmoe_st_close(st);
    char *path = capmoe_path_join(dir, "config.json");
    size_t len = 0;
    c->config = capmoe_read_file(path, &len, &err);
    ck_assert_msg(c->config != NULL, "%s", err.msg);
    free(path);
}

/* Which dtype each tensor is stored in. */
typedef struct dtype_mix {
    const char *name;
    capmoe_dtype q, k, v, rest;
} dtype_mix;

static capmoe_dtype mix_dtype(const dtype_mix *x, const char *name) {
    if (strstr(name, "self_attn.q_proj.weight")) return x->q;
    if (strstr(name, "self_attn.k_proj.weight")) return x->k;
    if (strstr(name, "self_attn.v_proj.weight")) return x->v;
    return x->rest;
}

/* v as stored in dtype t (*bits), and the value that represents, exactly. */
static float round_to(capmoe_dtype t, float v, uint16_t *bits) {
    if (t == CAPMOE_DTYPE_BF16) return capmoe_bf16_to_f32(*bits = capmoe_f32_to_bf16(v));
    if (t == CAPMOE_DTYPE_F16) return capmoe_f16_to_f32(*bits = capmoe_f32_to_f16(v));
    return v;
}

/* Writes c into a new temporary directory (returned, to rm_ckpt): every
 * tensor rounded to the dtype x gives it, stored in that dtype (as_f32 = 0)
 * or as the float32 values the stored elements represent (as_f32 = 1). */
static char *write_ckpt(const ckpt *c, const dtype_mix *x, int as_f32) {
    char tmpl[] = "/tmp/capmoe-mix-XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    dir = strdup(dir);
    ck_assert_ptr_nonnull(dir);
    capmoe_st_write_tensor *wt = calloc((size_t)c->n, sizeof *wt);
    void **bufs = calloc((size_t)c->n, sizeof *bufs);
    ck_assert(wt && bufs);
    for (int i = 0; i < c->n; i++) {
        const ck_tensor *t = &c->t[i];
        capmoe_dtype dt = mix_dtype(x, t->name);
        capmoe_dtype st = as_f32 ? CAPMOE_DTYPE_F32 : dt;
        bufs[i] = malloc(t->n * capmoe_dtype_size(st) + 1);
        ck_assert_ptr_nonnull(bufs[i]);
        for (size_t e = 0; e < t->n; e++) {
            uint16_t h = 0;
            float r = round_to(dt, t->v[e], &h);
            if (st == CAPMOE_DTYPE_F32) ((float *)bufs[i])[e] = r;
            else memcpy((char *)bufs[i] + 2 * e, &h, 2);
        }
        wt[i] = (capmoe_st_write_tensor){.name = t->name, .dtype = st, .ndim = t->ndim,
                                         .data = bufs[i]};
        memcpy(wt[i].shape, t->shape, sizeof t->shape);
    }
    char path[512];
    capmoe_error err = {{0}};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_msg(capmoe_st_write_file(path, wt, c->n, &err) == 0, "%s", err.msg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(c->config, f);
    fclose(f);
    for (int i = 0; i < c->n; i++) free(bufs[i]);
    free(bufs);
    free(wt);
    return dir;
}

static void rm_ckpt(char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    free(dir);
}

/* Loads dir (NULL and err set on failure). */
static capmoe_model *mix_load(const char *dir, capmoe_error *err) {
    capmoe_model *m = NULL;
    capmoe_model_opts o = {.max_ranks = 2, .threads = 2};
    return capmoe_model_load(&m, dir, &o, err) == 0 ? m : NULL;
}

/* Logits of a fixed little run, in out (MIX_ROWS * V floats): a batch of two
 * sequences (6 and 3 tokens, every position), then a decode step of both. */
#define MIX_ROWS 11
static void mix_run(capmoe_model *m, float *out, const char *what) {
    capmoe_error err = {{0}};
    int V = capmoe_model_config(m)->vocab_size;
    int32_t a[7], b[4];
    for (int i = 0; i < 7; i++) a[i] = PROMPT[i] % V;
    for (int i = 0; i < 4; i++) b[i] = PROMPT[7 + i] % V;
    capmoe_kv *ka = capmoe_kv_new(m, 0), *kb = capmoe_kv_new(m, 0);
    capmoe_batch_seq s[2] = {
        {.kv = ka, .tokens = a, .n_tokens = 6, .want = CAPMOE_LOGITS_ALL},
        {.kv = kb, .tokens = b, .n_tokens = 3, .want = CAPMOE_LOGITS_ALL}};
    ck_assert_msg(capmoe_model_forward(m, s, 2, NULL, out, NULL, &err) == 0, "%s: %s", what,
                  err.msg);
    s[0] = (capmoe_batch_seq){.kv = ka, .tokens = a + 6, .n_tokens = 1, .want = CAPMOE_LOGITS_LAST};
    s[1] = (capmoe_batch_seq){.kv = kb, .tokens = b + 3, .n_tokens = 1, .want = CAPMOE_LOGITS_LAST};
    ck_assert_msg(capmoe_model_forward(m, s, 2, NULL, out + (size_t)9 * V, NULL, &err) == 0,
                  "%s: %s", what, err.msg);
    for (size_t i = 0; i < (size_t)MIX_ROWS * V; i++)
        ck_assert_msg(isfinite(out[i]), "%s: logit %zu is not finite", what, i);
    capmoe_kv_free(ka);
    capmoe_kv_free(kb);
}

static const dtype_mix MIXES[] = {
    {"q BF16, k F32, v BF16", CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_F32, CAPMOE_DTYPE_BF16,
     CAPMOE_DTYPE_F32},
    {"q F16, k BF16, v F32", CAPMOE_DTYPE_F16, CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_F32,
     CAPMOE_DTYPE_F32},
    {"q F32, k F16, v BF16, the rest BF16", CAPMOE_DTYPE_F32, CAPMOE_DTYPE_F16,
     CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_BF16},
    {"q, k, v BF16 (stacked as BF16)", CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_BF16,
     CAPMOE_DTYPE_F32},
};
#define N_MIXES ((int)(sizeof MIXES / sizeof MIXES[0]))

/* _i = source * N_MIXES + mix; sources: a random Mixtral with odd shapes, a
 * random Qwen2-MoE (biases, shared expert, a dense layer), mixtral-tiny,
 * qwen2moe-tiny. The checkpoint with q/k/v (and the rest) in the mix's
 * dtypes against the all-F32 one of the same values: the same logits, bit
 * for bit (the stacked q/k/v matrix is F32 in both, or BF16 against F32,
 * whose products are the same sums of the same values in the same order). */
START_TEST(test_mixed_qkv_dtypes_match_f32) {
    static const char *const SRC[] = {"synthetic Mixtral", "synthetic Qwen2-MoE",
                                      "mixtral-tiny", "qwen2moe-tiny"};
    int src = _i / N_MIXES;
    const dtype_mix *x = &MIXES[_i % N_MIXES];
    ckpt c;
    if (src < 2) ckpt_synth(&c, src);
    else ckpt_fixture(&c, SRC[src]);
    char *dmix = write_ckpt(&c, x, 0), *dref = write_ckpt(&c, x, 1);
    /* the files go before anything can fail (the models keep their mappings) */
    capmoe_error em = {{0}}, er = {{0}};
    capmoe_model *mm = mix_load(dmix, &em), *mr = mix_load(dref, &er);
    rm_ckpt(dmix);
    rm_ckpt(dref);
    ck_assert_msg(mm != NULL, "%s, %s: load: %s", SRC[src], x->name, em.msg);
    ck_assert_msg(mr != NULL, "%s, all F32: load: %s", SRC[src], er.msg);
    int V = capmoe_model_config(mr)->vocab_size;
    ck_assert_int_eq(capmoe_model_config(mm)->vocab_size, V);
    size_t cap = (size_t)MIX_ROWS * V;
    float *lm = malloc(cap * sizeof(float)), *lr = malloc(cap * sizeof(float));
    float *lr2 = malloc(cap * sizeof(float));
    ck_assert(lm && lr && lr2);
    mix_run(mr, lr, "all-F32 checkpoint");
    mix_run(mr, lr2, "all-F32 checkpoint");
    ck_assert_msg(memcmp(lr, lr2, cap * sizeof(float)) == 0,
                  "%s: two runs of the all-F32 checkpoint differ (not deterministic)", SRC[src]);
    mix_run(mm, lm, x->name);
    for (size_t i = 0; i < cap; i++)
        ck_assert_msg(memcmp(&lm[i], &lr[i], sizeof(float)) == 0,
                      "%s, %s: logits row %zu, token %zu: %a, all-F32 checkpoint %a", SRC[src],
                      x->name, i / (size_t)V, i % (size_t)V, (double)lm[i], (double)lr[i]);
    free(lm), free(lr), free(lr2);
    capmoe_model_free(mm);
    capmoe_model_free(mr);
    ckpt_free(&c);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_decode_matches_full_pass, 0, N_FIXTURES);
    tcase_add_loop_test(tc, test_batching_and_ranks_do_not_change_none, 0, N_FIXTURES);
    tcase_add_test(tc, test_bad_input_leaves_cache_untouched);
    tcase_add_test(tc, test_bad_model_dirs);
    tcase_add_loop_test(tc, test_mixed_qkv_dtypes_match_f32, 0, 4 * N_MIXES);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
