/* check_hfconfig.c - config.json parsing: the sample hub configs under
 * tests/data/configs (older and transformers-5 layouts) and every refusal. */
#include "capmoe/hfconfig.h"

#include "capmoe/rope.h"
#include "capmoe/stats.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIGS "tests/data/configs/"
#define XPATH "tests/x/config.json"

static void load(capmoe_hfconfig *c, const char *name) {
    capmoe_error err;
    char dir[256];
    snprintf(dir, sizeof dir, CONFIGS "%s", name);
    ck_assert_msg(capmoe_hfconfig_load(c, dir, &err) == 0, "%s: %s", name, err.msg);
}

/* Both layouts of one model give the same description. */
static void same_both_layouts(const char *name) {
    capmoe_hfconfig a, b;
    char tf5[128];
    snprintf(tf5, sizeof tf5, "%s-tf5", name);
    load(&a, name);
    load(&b, tf5);
    ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "%s and %s differ", name, tf5);
}

static void check_eos(const capmoe_hfconfig *c, int n, const int *ids) {
    ck_assert_int_eq(c->n_eos, n);
    for (int i = 0; i < n; i++) ck_assert_int_eq(c->eos_token_id[i], ids[i]);
}

START_TEST(test_mixtral) {
    capmoe_hfconfig c;
    load(&c, "mixtral-8x7b-v0.1");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_MIXTRAL);
    ck_assert_str_eq(c.arch_name, "MixtralForCausalLM");
    ck_assert_str_eq(c.model_type, "mixtral");
    ck_assert_int_eq(c.vocab_size, 32000);
    ck_assert_int_eq(c.hidden_size, 4096);
    ck_assert_int_eq(c.n_layers, 32);
    ck_assert_int_eq(c.n_heads, 32);
    ck_assert_int_eq(c.n_kv_heads, 8);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.max_position_embeddings, 32768);
    ck_assert_int_eq(c.intermediate_size, 14336);
    ck_assert_int_eq(c.moe_intermediate_size, 14336);
    ck_assert_int_eq(c.n_experts, 8);
    ck_assert_int_eq(c.top_k, 2);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 0);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_float_eq(c.rms_norm_eps, 1e-5f);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.qkv_bias, 0);
    ck_assert_int_eq(c.o_bias, 0);
    ck_assert_int_eq(c.qk_norm, CAPMOE_QK_NORM_NONE);
    ck_assert_int_eq(c.n_moe_layers, 32);
    for (int l = 0; l < 32; l++) ck_assert_int_eq(c.layer_is_moe[l], 1);
    ck_assert_int_eq(c.layer_is_moe[32], 0);
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, 1);
    check_eos(&c, 1, (int[]){2});
    same_both_layouts("mixtral-8x7b-v0.1");
}
END_TEST

START_TEST(test_qwen2_moe) {
    capmoe_hfconfig c;
    load(&c, "qwen1.5-moe-a2.7b");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_QWEN2_MOE);
    ck_assert_str_eq(c.arch_name, "Qwen2MoeForCausalLM");
    ck_assert_str_eq(c.model_type, "qwen2_moe");
    ck_assert_int_eq(c.vocab_size, 151936);
    ck_assert_int_eq(c.hidden_size, 2048);
    ck_assert_int_eq(c.n_layers, 24);
    ck_assert_int_eq(c.n_heads, 16);
    ck_assert_int_eq(c.n_kv_heads, 16);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.max_position_embeddings, 8192);
    ck_assert_int_eq(c.intermediate_size, 5632);
    ck_assert_int_eq(c.moe_intermediate_size, 1408);
    ck_assert_int_eq(c.n_experts, 60);
    ck_assert_int_eq(c.top_k, 4);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 5632);
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_int_eq(c.sliding_window, 0); /* use_sliding_window false */
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.qkv_bias, 1);
    ck_assert_int_eq(c.o_bias, 0);
    ck_assert_int_eq(c.qk_norm, CAPMOE_QK_NORM_NONE);
    ck_assert_int_eq(c.n_moe_layers, 24);
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, 151643);
    check_eos(&c, 1, (int[]){151643});
    same_both_layouts("qwen1.5-moe-a2.7b");
}
END_TEST

START_TEST(test_olmoe) {
    capmoe_hfconfig c;
    load(&c, "olmoe-1b-7b-0924");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_OLMOE);
    ck_assert_str_eq(c.arch_name, "OlmoeForCausalLM");
    ck_assert_str_eq(c.model_type, "olmoe");
    ck_assert_int_eq(c.vocab_size, 50304);
    ck_assert_int_eq(c.hidden_size, 2048);
    ck_assert_int_eq(c.n_layers, 16);
    ck_assert_int_eq(c.n_heads, 16);
    ck_assert_int_eq(c.n_kv_heads, 16);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.max_position_embeddings, 4096);
    ck_assert_int_eq(c.intermediate_size, 1024);
    ck_assert_int_eq(c.moe_intermediate_size, 1024);
    ck_assert_int_eq(c.n_experts, 64);
    ck_assert_int_eq(c.top_k, 8);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 0);
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ck_assert_float_eq(c.rms_norm_eps, 1e-5f);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.qkv_bias, 0);
    ck_assert_int_eq(c.o_bias, 0);
    ck_assert_int_eq(c.qk_norm, CAPMOE_QK_NORM_FULL);
    ck_assert_int_eq(c.n_moe_layers, 16);
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, -1);
    check_eos(&c, 1, (int[]){50279});
    same_both_layouts("olmoe-1b-7b-0924");
}
END_TEST

START_TEST(test_qwen3_moe) {
    capmoe_hfconfig c;
    load(&c, "qwen3-30b-a3b");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_QWEN3_MOE);
    ck_assert_str_eq(c.arch_name, "Qwen3MoeForCausalLM");
    ck_assert_str_eq(c.model_type, "qwen3_moe");
    ck_assert_int_eq(c.vocab_size, 151936);
    ck_assert_int_eq(c.hidden_size, 2048);
    ck_assert_int_eq(c.n_layers, 48);
    ck_assert_int_eq(c.n_heads, 32);
    ck_assert_int_eq(c.n_kv_heads, 4);
    ck_assert_int_eq(c.head_dim, 128); /* explicit, not 2048 / 32 */
    ck_assert_int_eq(c.max_position_embeddings, 40960);
    ck_assert_int_eq(c.intermediate_size, 6144);
    ck_assert_int_eq(c.moe_intermediate_size, 768);
    ck_assert_int_eq(c.n_experts, 128);
    ck_assert_int_eq(c.top_k, 8);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 0);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.qkv_bias, 0);
    ck_assert_int_eq(c.o_bias, 0);
    ck_assert_int_eq(c.qk_norm, CAPMOE_QK_NORM_HEAD);
    ck_assert_int_eq(c.n_moe_layers, 48);
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_BF16);
    ck_assert_int_eq(c.bos_token_id, 151643);
    check_eos(&c, 1, (int[]){151645});
    same_both_layouts("qwen3-30b-a3b");
}
END_TEST

/* ---------- inline configs ---------- */

static const char *TINY_MIXTRAL =
    "{\"architectures\":[\"MixtralForCausalLM\"],\"model_type\":\"mixtral\","
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":96,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"num_local_experts\":8,\"num_experts_per_tok\":2,\"hidden_act\":\"silu\"}";
static const char *TINY_QWEN2 =
    "{\"architectures\":[\"Qwen2MoeForCausalLM\"],\"model_type\":\"qwen2_moe\","
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":128,"
    "\"num_hidden_layers\":6,\"num_attention_heads\":4,\"num_key_value_heads\":4,"
    "\"num_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":32,"
    "\"shared_expert_intermediate_size\":48}";
static const char *TINY_OLMOE =
    "{\"architectures\":[\"OlmoeForCausalLM\"],\"model_type\":\"olmoe\","
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":32,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_experts\":8,\"num_experts_per_tok\":2}";
static const char *TINY_QWEN3 =
    "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\","
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":128,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"head_dim\":32,\"num_experts\":8,\"num_experts_per_tok\":2,"
    "\"moe_intermediate_size\":32}";

static const char *TINY_DSV2 =
    "{\"architectures\":[\"DeepseekV2ForCausalLM\"],\"model_type\":\"deepseek_v2\","
    "\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":128,"
    "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"n_routed_experts\":8,"
    "\"num_experts_per_tok\":2,\"moe_intermediate_size\":16,\"q_lora_rank\":null,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":8,"
    "\"v_head_dim\":16,\"first_k_dense_replace\":1}";
static const char *TINY_DSV3 =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"model_type\":\"deepseek_v3\","
    "\"vocab_size\":100,\"hidden_size\":64,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"n_routed_experts\":16,\"num_experts_per_tok\":4,"
    "\"moe_intermediate_size\":16,\"q_lora_rank\":24,\"kv_lora_rank\":32,"
    "\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":8,\"v_head_dim\":16,"
    "\"n_group\":4,\"topk_group\":2}";

/* BASE with key set to the JSON text VALUE (NULL: key removed). */
static int parse_with(capmoe_hfconfig *c, const char *base, const char *key, const char *value,
                      capmoe_error *err) {
    cJSON *root = cJSON_Parse(base);
    ck_assert_ptr_nonnull(root);
    if (key) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
        if (value) {
            cJSON *v = cJSON_Parse(value);
            ck_assert_msg(v != NULL, "bad test value %s", value);
            cJSON_AddItemToObject(root, key, v);
        }
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    int rc = capmoe_hfconfig_parse(c, text, strlen(text), XPATH, err);
    free(text);
    return rc;
}

static void ok_with(capmoe_hfconfig *c, const char *base, const char *key, const char *value) {
    capmoe_error err;
    ck_assert_msg(parse_with(c, base, key, value, &err) == 0, "%s=%s: %s", key ? key : "-",
                  value ? value : "(removed)", err.msg);
}

static void fail_with(const char *base, const char *key, const char *value, const char *want) {
    capmoe_hfconfig c;
    capmoe_error err = {{0}};
    ck_assert_msg(parse_with(&c, base, key, value, &err) == -1, "%s=%s accepted", key, value);
    ck_assert_msg(strncmp(err.msg, XPATH ": ", strlen(XPATH) + 2) == 0, "no path: %s", err.msg);
    ck_assert_msg(strstr(err.msg, want) != NULL, "'%s' lacks '%s'", err.msg, want);
}

static void fail_exact(const char *base, const char *key, const char *value, const char *want) {
    capmoe_hfconfig c;
    capmoe_error err = {{0}};
    ck_assert_int_eq(parse_with(&c, base, key, value, &err), -1);
    ck_assert_str_eq(err.msg, want);
}

START_TEST(test_defaults) {
    capmoe_hfconfig c;
    /* absent keys take the transformers class defaults */
    ok_with(&c, TINY_MIXTRAL, NULL, NULL);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_float_eq(c.rms_norm_eps, 1e-5f);
    ck_assert_int_eq(c.max_position_embeddings, 131072);
    ck_assert_int_eq(c.bos_token_id, 1);
    check_eos(&c, 1, (int[]){2});
    ck_assert_int_eq(c.head_dim, 16);
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_F32);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ok_with(&c, TINY_QWEN2, NULL, NULL);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
    ck_assert_int_eq(c.max_position_embeddings, 32768);
    ck_assert_int_eq(c.bos_token_id, -1);
    ck_assert_int_eq(c.n_eos, 0);
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ck_assert_int_eq(c.qkv_bias, 1);
    ok_with(&c, TINY_QWEN2, "shared_expert_intermediate_size", NULL);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 5632);
    ok_with(&c, TINY_QWEN2, "shared_expert_intermediate_size", "0");
    ck_assert_int_eq(c.shared_expert_intermediate_size, 0);
    ok_with(&c, TINY_QWEN2, "qkv_bias", "false");
    ck_assert_int_eq(c.qkv_bias, 0);
    ok_with(&c, TINY_OLMOE, NULL, NULL);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.n_kv_heads, 4);
    ck_assert_int_eq(c.max_position_embeddings, 4096);
    check_eos(&c, 1, (int[]){50279});
    ok_with(&c, TINY_OLMOE, "attention_bias", "true");
    ck_assert_int_eq(c.qkv_bias, 1);
    ck_assert_int_eq(c.o_bias, 1);
    ok_with(&c, TINY_OLMOE, "norm_topk_prob", "true");
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ok_with(&c, TINY_QWEN3, NULL, NULL);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.head_dim, 32);
    ck_assert_int_eq(c.qk_norm, CAPMOE_QK_NORM_HEAD);
    ck_assert_int_eq(c.intermediate_size, 128);
    ok_with(&c, TINY_QWEN3, "intermediate_size", NULL);
    ck_assert_int_eq(c.intermediate_size, 6144);
    ok_with(&c, TINY_QWEN3, "attention_bias", "true");
    ck_assert_int_eq(c.qkv_bias + c.o_bias, 2);
    /* Qwen3 configs may spell the expert count num_local_experts */
    cJSON *r = cJSON_Parse(TINY_QWEN3);
    cJSON_DeleteItemFromObjectCaseSensitive(r, "num_experts");
    cJSON_AddNumberToObject(r, "num_local_experts", 16);
    char *t = cJSON_PrintUnformatted(r);
    ok_with(&c, t, NULL, NULL);
    ck_assert_int_eq(c.n_experts, 16);
    free(t);
    cJSON_Delete(r);
    /* null is absent */
    ok_with(&c, TINY_QWEN3, "head_dim", "null");
    ck_assert_int_eq(c.head_dim, 16);
    ok_with(&c, TINY_QWEN3, "num_key_value_heads", "null");
    ck_assert_int_eq(c.n_kv_heads, 4);
    /* absent num_key_value_heads: the transformers class default, not the head count */
    ok_with(&c, TINY_QWEN3, "num_key_value_heads", NULL);
    ck_assert_int_eq(c.n_kv_heads, 4);
    fail_with(TINY_MIXTRAL, "num_key_value_heads", NULL,
              "num_attention_heads (4) is not a multiple of num_key_value_heads (8)");
    ok_with(&c, TINY_MIXTRAL, "num_key_value_heads", "null");
    ck_assert_int_eq(c.n_kv_heads, 4);
    ok_with(&c, TINY_MIXTRAL, "rope_theta", "null");
    ck_assert_double_eq(c.rope_theta, 1e6);
    ok_with(&c, TINY_MIXTRAL, "bos_token_id", "null");
    ck_assert_int_eq(c.bos_token_id, -1);
    ok_with(&c, TINY_MIXTRAL, "eos_token_id", "null");
    ck_assert_int_eq(c.n_eos, 0);
    ok_with(&c, TINY_MIXTRAL, "sliding_window", "4096");
    ck_assert_int_eq(c.sliding_window, 4096);
    ok_with(&c, TINY_MIXTRAL, "tie_word_embeddings", "true");
    ck_assert_int_eq(c.tie_word_embeddings, 1);
    ok_with(&c, TINY_MIXTRAL, "norm_topk_prob", "false"); /* Mixtral always renormalises */
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_str_eq(capmoe_arch_name(CAPMOE_ARCH_OLMOE), "OlmoeForCausalLM");
    ck_assert_str_eq(capmoe_arch_name(CAPMOE_ARCH_QWEN3_MOE), "Qwen3MoeForCausalLM");
}
END_TEST

START_TEST(test_rope_and_dtype) {
    capmoe_hfconfig c;
    ok_with(&c, TINY_QWEN3, "rope_theta", "500000");
    ck_assert_double_eq(c.rope_theta, 500000.0);
    ok_with(&c, TINY_QWEN3, "rope_parameters", "{\"rope_type\":\"default\",\"rope_theta\":123.5}");
    ck_assert_double_eq(c.rope_theta, 123.5);
    ok_with(&c, TINY_QWEN3, "rope_parameters", "{\"rope_type\":\"default\"}");
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ok_with(&c, TINY_QWEN3, "rope_scaling", "null");
    ok_with(&c, TINY_QWEN3, "rope_scaling", "{\"rope_type\":\"default\"}");
    ok_with(&c, TINY_QWEN3, "rope_parameters", "null");
    ck_assert_double_eq(c.rope_theta, 10000.0);
    fail_with(TINY_QWEN3, "rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":4.0}",
              "rope type 'yarn' not supported");
    fail_with(TINY_QWEN3, "rope_scaling", "{\"type\":\"dynamic\",\"factor\":2.0}",
              "rope type 'dynamic' not supported");
    fail_with(TINY_QWEN3, "rope_scaling", "{\"factor\":2.0}", "rope_scaling");
    fail_with(TINY_QWEN3, "rope_parameters", "{\"rope_type\":\"linear\",\"factor\":2.0}",
              "rope_parameters: rope type 'linear' not supported");
    fail_with(TINY_QWEN3, "rope_parameters",
              "{\"rope_type\":\"default\",\"partial_rotary_factor\":0.5}",
              "partial_rotary_factor");
    fail_with(TINY_QWEN3, "rope_parameters",
              "{\"full_attention\":{\"rope_type\":\"default\",\"rope_theta\":1e6}}",
              "per-layer-type");
    fail_with(TINY_QWEN3, "rope_parameters", "[1]", "rope_parameters must be an object");
    fail_with(TINY_QWEN3, "rope_theta", "-1", "rope_theta must be a positive number");
    fail_with(TINY_QWEN3, "rope_theta", "\"1e6\"", "rope_theta must be a positive number");
    ok_with(&c, TINY_QWEN3, "torch_dtype", "\"float16\"");
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_F16);
    ok_with(&c, TINY_QWEN3, "dtype", "\"float32\"");
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_F32);
    ok_with(&c, TINY_QWEN3, "dtype", "\"bfloat16\"");
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_BF16);
    ok_with(&c, TINY_QWEN3, "dtype", "\"float8_e4m3fn\"");
    ck_assert_int_eq(c.dtype, CAPMOE_DTYPE_OTHER);
    fail_with(TINY_QWEN3, "dtype", "16", "dtype must be a string");
}
END_TEST

START_TEST(test_layers_and_tokens) {
    capmoe_hfconfig c;
    ok_with(&c, TINY_QWEN2, "decoder_sparse_step", "2");
    static const unsigned char step2[6] = {0, 1, 0, 1, 0, 1};
    ck_assert_mem_eq(c.layer_is_moe, step2, 6);
    ck_assert_int_eq(c.n_moe_layers, 3);
    ok_with(&c, TINY_QWEN2, "mlp_only_layers", "[0, 3]");
    static const unsigned char mol[6] = {0, 1, 1, 0, 1, 1};
    ck_assert_mem_eq(c.layer_is_moe, mol, 6);
    ck_assert_int_eq(c.n_moe_layers, 4);
    ck_assert_int_eq(c.layer_is_moe[6], 0);
    ok_with(&c, TINY_QWEN2, "num_experts", "0"); /* a dense model */
    ck_assert_int_eq(c.n_moe_layers, 0);
    fail_with(TINY_QWEN2, "mlp_only_layers", "[6]", "mlp_only_layers entries");
    fail_with(TINY_QWEN2, "mlp_only_layers", "[-1]", "mlp_only_layers entries");
    fail_with(TINY_QWEN2, "mlp_only_layers", "3", "mlp_only_layers must be a list");
    fail_with(TINY_QWEN2, "decoder_sparse_step", "0", "decoder_sparse_step must be at least 1");

    ok_with(&c, TINY_QWEN3, "eos_token_id", "[95, 93]");
    check_eos(&c, 2, (int[]){95, 93});
    ok_with(&c, TINY_QWEN3, "eos_token_id", "[7, 7, 8]");
    check_eos(&c, 2, (int[]){7, 8});
    ok_with(&c, TINY_QWEN3, "eos_token_id", "[]");
    ck_assert_int_eq(c.n_eos, 0);
    fail_with(TINY_QWEN3, "eos_token_id", "[1,2,3,4,5,6,7,8,9]", "more than 8");
    fail_with(TINY_QWEN3, "eos_token_id", "[1, \"2\"]", "eos_token_id list entries");
    fail_with(TINY_QWEN3, "eos_token_id", "-3", "eos_token_id must be >= 0");
    fail_with(TINY_QWEN3, "eos_token_id", "\"</s>\"", "eos_token_id must be an integer");
    fail_with(TINY_QWEN3, "bos_token_id", "1.5", "bos_token_id must be an integer");
    ok_with(&c, TINY_QWEN3, "bos_token_id", "0");
    ck_assert_int_eq(c.bos_token_id, 0);
}
END_TEST

START_TEST(test_refusals) {
    fail_exact(TINY_MIXTRAL, "architectures", "[\"LlamaForCausalLM\"]",
               XPATH ": architecture 'LlamaForCausalLM' is not supported (supported: "
               "MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM, "
               "Qwen3MoeForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)");
    fail_exact(TINY_MIXTRAL, "num_experts_per_tok", "12",
               XPATH ": num_experts_per_tok (12) exceeds num_local_experts (8)");
    fail_exact(TINY_QWEN3, "num_experts_per_tok", "9",
               XPATH ": num_experts_per_tok (9) exceeds num_experts (8)");
    fail_with(TINY_MIXTRAL, "architectures", "[]", "architectures must be");
    fail_with(TINY_MIXTRAL, "architectures", "\"MixtralForCausalLM\"", "architectures must be");
    /* model_type fallback */
    capmoe_hfconfig c;
    ok_with(&c, TINY_OLMOE, "architectures", NULL);
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_OLMOE);
    ok_with(&c, TINY_QWEN3, "architectures", "null");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_QWEN3_MOE);
    {
        cJSON *r = cJSON_Parse(TINY_QWEN3);
        cJSON_DeleteItemFromObjectCaseSensitive(r, "architectures");
        char *t = cJSON_PrintUnformatted(r);
        fail_with(t, "model_type", "\"llama\"", "model_type 'llama' is not supported");
        fail_with(t, "model_type", NULL, "neither architectures nor model_type");
        free(t);
        cJSON_Delete(r);
    }
    fail_with(TINY_MIXTRAL, "hidden_act", "\"gelu\"", "hidden_act 'gelu' is not supported");
    fail_with(TINY_MIXTRAL, "num_local_experts", "512", "num_local_experts (512) exceeds the "
              "supported maximum of 256");
    fail_with(TINY_QWEN3, "num_experts", "257", "num_experts (257) exceeds");
    fail_with(TINY_MIXTRAL, "num_hidden_layers", "300", "num_hidden_layers (300) exceeds");
    fail_with(TINY_MIXTRAL, "num_key_value_heads", "3",
              "num_attention_heads (4) is not a multiple of num_key_value_heads (3)");
    fail_with(TINY_MIXTRAL, "num_key_value_heads", "0", "num_key_value_heads must be at least 1");
    fail_with(TINY_MIXTRAL, "hidden_size", "66", "hidden_size (66) is not a multiple");
    fail_with(TINY_QWEN3, "head_dim", "0", "head_dim must be positive");
    fail_with(TINY_QWEN3, "head_dim", "7", "head_dim (7) must be even");
    fail_with(TINY_QWEN2, "use_sliding_window", "true", "use_sliding_window is true");
    fail_with(TINY_QWEN3, "use_sliding_window", "true", "use_sliding_window is true");
    fail_with(TINY_QWEN3, "use_sliding_window", "1", "use_sliding_window must be true or false");
    ok_with(&c, TINY_QWEN3, "use_sliding_window", "false");
    fail_with(TINY_OLMOE, "clip_qkv", "8.0", "clip_qkv is set");
    ok_with(&c, TINY_OLMOE, "clip_qkv", "null");
    fail_with(TINY_QWEN3, "quantization_config", "{\"quant_method\":\"fp8\"}",
              "quantization_config (fp8) is not supported");
    fail_with(TINY_MIXTRAL, "vocab_size", NULL, "missing required key vocab_size");
    fail_with(TINY_MIXTRAL, "vocab_size", "null", "missing required key vocab_size");
    fail_with(TINY_MIXTRAL, "vocab_size", "\"100\"", "vocab_size must be an integer");
    fail_with(TINY_MIXTRAL, "vocab_size", "100.5", "vocab_size must be an integer");
    fail_with(TINY_MIXTRAL, "vocab_size", "1e30", "vocab_size must be an integer");
    fail_with(TINY_MIXTRAL, "hidden_size", "-64", "hidden_size must be positive");
    fail_with(TINY_MIXTRAL, "num_local_experts", NULL, "missing required key num_local_experts");
    fail_with(TINY_MIXTRAL, "intermediate_size", NULL, "missing required key intermediate_size");
    fail_with(TINY_QWEN2, "moe_intermediate_size", NULL, "moe_intermediate_size");
    fail_with(TINY_QWEN2, "num_experts_per_tok", "0", "num_experts_per_tok must be positive");
    fail_with(TINY_QWEN2, "norm_topk_prob", "\"yes\"", "norm_topk_prob must be true or false");
    fail_with(TINY_MIXTRAL, "sliding_window", "-1", "sliding_window must be at least 0");
    fail_with(TINY_MIXTRAL, "rms_norm_eps", "0", "rms_norm_eps must be a positive number");

    capmoe_error err;
    const char *bad[] = {"", "{", "[1,2]", "{\"a\":}", "null", "\"x\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(capmoe_hfconfig_parse(&c, bad[i], strlen(bad[i]), XPATH, &err), -1);
        ck_assert_msg(strncmp(err.msg, XPATH ": ", strlen(XPATH) + 2) == 0, "%s", err.msg);
    }
    /* not NUL-terminated input is read only up to len */
    char buf[64];
    memset(buf, '{', sizeof buf);
    ck_assert_int_eq(capmoe_hfconfig_parse(&c, buf, sizeof buf, XPATH, &err), -1);
    ck_assert_int_eq(capmoe_hfconfig_load(&c, "tests/data/configs/no-such-model", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "tests/data/configs/no-such-model/config.json"));
}
END_TEST

/* Byte flips and truncations of a real config: never a crash. */
/* Issue 17: sizes from config.json are checked in 64 bits before use; the
 * key is named. head_dim 2^30 used to wrap num_attention_heads x head_dim in
 * int, so a file of empty tensors matched the wrapped shapes. */
START_TEST(test_implausible_sizes) {
    fail_exact(TINY_QWEN3, "head_dim", "1073741824",
               XPATH ": head_dim (1073741824) is implausible: the largest supported is 4096");
    fail_exact(TINY_QWEN3, "max_position_embeddings", "2147483647",
               XPATH ": max_position_embeddings (2147483647) is implausible: the largest "
               "supported is 16777216");
    fail_exact(TINY_DSV3, "kv_lora_rank", "70000",
               XPATH ": kv_lora_rank (70000) is implausible: the largest supported is 65536");
    fail_exact(TINY_MIXTRAL, "rope_theta", "1e-300",
               XPATH ": rope_theta (1e-300) is implausible: it must be at least 1");
    fail_exact(TINY_MIXTRAL, "eos_token_id", "100",
               XPATH ": eos_token_id 100 is not below vocab_size (100)");
    fail_exact(TINY_MIXTRAL, "eos_token_id", "[2, 5000]",
               XPATH ": eos_token_id 5000 is not below vocab_size (100)");
    fail_exact(TINY_MIXTRAL, "bos_token_id", "1000",
               XPATH ": bos_token_id (1000) is not below vocab_size (100)");
    /* every dimension in bounds, their product over int: refused by the product */
    static const char *WIDE =
        "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":100,\"hidden_size\":131072,"
        "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"num_key_value_heads\":2,\"head_dim\":4096,\"num_experts\":8,"
        "\"num_experts_per_tok\":2,\"moe_intermediate_size\":32}";
    fail_exact(WIDE, NULL, NULL,
               XPATH ": num_attention_heads x head_dim x hidden_size = 2147483648 elements in one "
               "weight is implausible (more than 2^31-1)");
    static const char *BIGVOCAB =
        "{\"architectures\":[\"MixtralForCausalLM\"],\"vocab_size\":16777216,\"hidden_size\":256,"
        "\"intermediate_size\":96,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"num_key_value_heads\":4,\"num_local_experts\":8,\"num_experts_per_tok\":2}";
    fail_exact(BIGVOCAB, NULL, NULL,
               XPATH ": vocab_size x hidden_size = 4294967296 elements in one weight is "
               "implausible (more than 2^31-1)");
    /* the bounds themselves are accepted */
    capmoe_hfconfig c;
    ok_with(&c, TINY_MIXTRAL, "rope_theta", "1");
    ok_with(&c, TINY_MIXTRAL, "eos_token_id", "99");
    ok_with(&c, TINY_QWEN3, "max_position_embeddings", "16777216");
    ok_with(&c, TINY_QWEN3, "head_dim", "4096");
}
END_TEST

START_TEST(test_fuzz) {
    capmoe_error err;
    size_t len;
    char *orig = capmoe_read_file(CONFIGS "qwen3-30b-a3b/config.json", &len, &err);
    ck_assert_ptr_nonnull(orig);
    char *buf = malloc(len);
    capmoe_hfconfig c;
    for (size_t cut = 0; cut < len; cut += 7) capmoe_hfconfig_parse(&c, orig, cut, XPATH, &err);
    uint32_t x = 99;
    int ok = 0;
    const char *fi = getenv("CAPMOE_FUZZ_ITERS"); /* longer campaigns by hand */
    int iters = fi && atoi(fi) > 0 ? atoi(fi) : 2000;
    for (int it = 0; it < iters; it++) {
        memcpy(buf, orig, len);
        for (int k = 0; k < 1 + it % 3; k++) {
            x = x * 1664525u + 1013904223u;
            size_t pos = (x >> 8) % len;
            x = x * 1664525u + 1013904223u;
            buf[pos] = (it & 1) ? (char)(x >> 24) : "0123456789-.e,:[]{}\"ntf "[(x >> 24) % 24];
        }
        if (capmoe_hfconfig_parse(&c, buf, len, XPATH, &err) == 0) {
            ok++;
            if (c.n_layers < 1 || c.n_layers > CAPMOE_MAX_LAYERS || c.n_heads % c.n_kv_heads ||
                c.top_k > c.n_experts || c.n_experts > CAPMOE_MAX_EXPERTS || c.head_dim <= 0)
                ck_abort_msg("accepted an inconsistent config (iteration %d)", it);
        } else if (strncmp(err.msg, XPATH, strlen(XPATH)) != 0) {
            ck_abort_msg("message without path: %s", err.msg);
        }
    }
    ck_assert_int_gt(ok, 0);
    free(buf);
    free(orig);
}
END_TEST


/* ---------- against transformers 5.17 itself ----------
 * tests/data/reference/configs.json holds, for each config directory, what
 * transformers derives from it (config object + modules of a meta-device
 * model): see tests/data/gen_reference.py. */

static int jint(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "expected.%s missing", k);
    return (int)v->valuedouble;
}

static const char *arch_of(const char *name) { /* configs saved from a bare *Config */
    if (!strcmp(name, "MixtralConfig")) return "MixtralForCausalLM";
    if (!strcmp(name, "Qwen2MoeConfig")) return "Qwen2MoeForCausalLM";
    if (!strcmp(name, "OlmoeConfig")) return "OlmoeForCausalLM";
    if (!strcmp(name, "Qwen3MoeConfig")) return "Qwen3MoeForCausalLM";
    return name;
}

START_TEST(test_against_transformers) {
    capmoe_error err;
    size_t len;
    char *text = capmoe_read_file("tests/data/reference/configs.json", &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    cJSON *all = cJSON_ParseWithLength(text, len);
    free(text);
    ck_assert_ptr_nonnull(all);
    int n = 0;
    for (const cJSON *e = all->child; e; e = e->next, n++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/data/%s", e->string);
        capmoe_hfconfig c;
        ck_assert_msg(capmoe_hfconfig_load(&c, dir, &err) == 0, "%s", err.msg);
        const char *d = e->string;
        ck_assert_str_eq(c.arch_name,
                         arch_of(cJSON_GetObjectItemCaseSensitive(e, "arch")->valuestring));
#define EQ(field, key) ck_assert_msg(c.field == jint(e, key), "%s: %s = %d, transformers %d", \
                                     d, key, (int)c.field, jint(e, key))
        EQ(vocab_size, "vocab_size");
        EQ(hidden_size, "hidden_size");
        EQ(n_layers, "n_layers");
        EQ(n_heads, "n_heads");
        EQ(n_kv_heads, "n_kv_heads");
        EQ(head_dim, "head_dim");
        EQ(max_position_embeddings, "max_position_embeddings");
        EQ(intermediate_size, "intermediate_size");
        EQ(moe_intermediate_size, "moe_intermediate_size");
        EQ(n_experts, "n_experts");
        EQ(top_k, "top_k");
        EQ(shared_expert_intermediate_size, "shared_expert_intermediate_size");
        EQ(norm_topk_prob, "norm_topk_prob");
        EQ(sliding_window, "sliding_window");
        EQ(tie_word_embeddings, "tie_word_embeddings");
        EQ(qkv_bias, "qkv_bias");
        EQ(qkv_bias, "k_bias");
        EQ(o_bias, "o_bias");
        EQ(bos_token_id, "bos_token_id");
#undef EQ
        ck_assert_float_eq(c.rms_norm_eps,
                           (float)cJSON_GetObjectItemCaseSensitive(e, "rms_norm_eps")->valuedouble);
        ck_assert_double_eq(c.rope_theta,
                            cJSON_GetObjectItemCaseSensitive(e, "rope_theta")->valuedouble);
        ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "rope_type")->valuestring, "default");
        const char *qk = cJSON_GetObjectItemCaseSensitive(e, "qk_norm")->valuestring;
        ck_assert_int_eq(c.qk_norm, !strcmp(qk, "full")   ? CAPMOE_QK_NORM_FULL
                                    : !strcmp(qk, "head") ? CAPMOE_QK_NORM_HEAD
                                                          : CAPMOE_QK_NORM_NONE);
        const cJSON *moe = cJSON_GetObjectItemCaseSensitive(e, "layer_is_moe");
        ck_assert_int_eq(cJSON_GetArraySize(moe), c.n_layers);
        int l = 0, nm = 0;
        for (const cJSON *x = moe->child; x; x = x->next, l++) {
            ck_assert_msg(c.layer_is_moe[l] == (int)x->valuedouble, "%s: layer %d", d, l);
            nm += (int)x->valuedouble;
        }
        ck_assert_int_eq(c.n_moe_layers, nm);
        const cJSON *eos = cJSON_GetObjectItemCaseSensitive(e, "eos_token_id");
        ck_assert_int_eq(c.n_eos, cJSON_GetArraySize(eos));
        l = 0;
        for (const cJSON *x = eos->child; x; x = x->next, l++)
            ck_assert_int_eq(c.eos_token_id[l], (int)x->valuedouble);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        if (cJSON_IsString(dt))
            ck_assert_int_eq(c.dtype, !strcmp(dt->valuestring, "bfloat16")  ? CAPMOE_DTYPE_BF16
                                      : !strcmp(dt->valuestring, "float16") ? CAPMOE_DTYPE_F16
                                      : !strcmp(dt->valuestring, "float32") ? CAPMOE_DTYPE_F32
                                                                            : CAPMOE_DTYPE_OTHER);
    }
    ck_assert_int_ge(n, 18);
    cJSON_Delete(all);
}
END_TEST

/* ---------- DeepSeek-V2 / DeepSeek-V3 ---------- */

START_TEST(test_deepseek_hub) {
    capmoe_hfconfig c;
    load(&c, "deepseek-v2-lite");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_DEEPSEEK_V2);
    ck_assert_str_eq(c.arch_name, "DeepseekV2ForCausalLM");
    ck_assert_int_eq(c.hidden_size, 2048);
    ck_assert_int_eq(c.n_layers, 27);
    ck_assert_int_eq(c.n_heads, 16);
    ck_assert_int_eq(c.q_lora_rank, 0); /* null: a plain q_proj */
    ck_assert_int_eq(c.kv_lora_rank, 512);
    ck_assert_int_eq(c.qk_nope_head_dim, 128);
    ck_assert_int_eq(c.qk_rope_head_dim, 64);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.v_head_dim, 128);
    ck_assert_int_eq(c.n_experts, 64);
    ck_assert_int_eq(c.top_k, 6);
    ck_assert_int_eq(c.moe_intermediate_size, 1408);
    ck_assert_int_eq(c.intermediate_size, 10944);
    ck_assert_int_eq(c.n_shared_experts, 2);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 2816);
    ck_assert_int_eq(c.shared_expert_gate, 0);
    ck_assert_int_eq(c.first_k_dense_replace, 1);
    ck_assert_int_eq(c.n_moe_layers, 26);
    ck_assert_int_eq(c.layer_is_moe[0], 0);
    ck_assert_int_eq(c.layer_is_moe[1], 1);
    ck_assert_int_eq(c.router, CAPMOE_ROUTER_DEEPSEEK_V2);
    ck_assert_int_eq(c.n_group, 1); /* greedy */
    ck_assert_int_eq(c.topk_group, 1);
    ck_assert_double_eq(c.routed_scaling_factor, 1.0);
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ck_assert_int_eq(c.rope.type, CAPMOE_ROPE_YARN);
    ck_assert_double_eq(c.rope.theta, 10000.0);
    ck_assert_double_eq(c.rope.factor, 40.0);
    ck_assert_int_eq(c.rope.original_max_position, 4096);
    ck_assert_double_eq(c.rope.mscale, 0.707);
    ck_assert_double_eq(c.rope.mscale_all_dim, 0.707);
    ck_assert_double_eq(c.rope.beta_fast, 32.0);
    ck_assert_double_eq(c.rope.beta_slow, 1.0);
    ck_assert_int_eq(c.rope.truncate, 1);
    ck_assert_int_eq(c.rope.interleave, 1);
    ck_assert_int_eq(c.bos_token_id, 100000);
    check_eos(&c, 1, (int[]){100001});
    ck_assert_int_eq(c.max_position_embeddings, 163840);

    load(&c, "deepseek-v2");
    ck_assert_int_eq(c.q_lora_rank, 1536);
    ck_assert_int_eq(c.n_group, 8); /* group_limited_greedy */
    ck_assert_int_eq(c.topk_group, 3);
    ck_assert_double_eq(c.routed_scaling_factor, 16.0);
    ck_assert_int_eq(c.n_experts, 160);

    load(&c, "deepseek-v3");
    ck_assert_int_eq(c.arch, CAPMOE_ARCH_DEEPSEEK_V3);
    ck_assert_int_eq(c.router, CAPMOE_ROUTER_DEEPSEEK_V3);
    ck_assert_int_eq(c.n_experts, 256);
    ck_assert_int_eq(c.top_k, 8);
    ck_assert_int_eq(c.n_group, 8);
    ck_assert_int_eq(c.topk_group, 4);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_double_eq(c.routed_scaling_factor, 2.5);
    ck_assert_int_eq(c.first_k_dense_replace, 3);
    ck_assert_int_eq(c.n_moe_layers, 58);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 2048);
    ck_assert_int_eq(c.q_lora_rank, 1536);
    ck_assert_int_eq(c.rope.interleave, 1); /* rope_interleave absent: true */
    ck_assert_int_eq(c.bos_token_id, 0);
    check_eos(&c, 1, (int[]){1});
    same_both_layouts("deepseek-v2-lite");
    same_both_layouts("deepseek-v2");
    same_both_layouts("deepseek-v3");
}
END_TEST

START_TEST(test_deepseek_inline) {
    capmoe_hfconfig c;
    ok_with(&c, TINY_DSV2, NULL, NULL);
    static const unsigned char l1[4] = {0, 1, 1, 1};
    ck_assert_mem_eq(c.layer_is_moe, l1, 4);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 32); /* default 2 shared experts */
    ck_assert_double_eq(c.rope.theta, 10000.0);
    ck_assert_int_eq(c.rope.type, CAPMOE_ROPE_DEFAULT);
    ck_assert_int_eq(c.bos_token_id, 1);
    check_eos(&c, 1, (int[]){2});
    ok_with(&c, TINY_DSV2, "q_lora_rank", NULL); /* absent: the class default */
    ck_assert_int_eq(c.q_lora_rank, 1536);
    ok_with(&c, TINY_DSV2, "norm_topk_prob", "true"); /* DeepSeek-V2 does not read it */
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ok_with(&c, TINY_DSV2, "moe_layer_freq", "2"); /* not used, as in transformers 5.17 */
    ck_assert_mem_eq(c.layer_is_moe, l1, 4);
    ck_assert_int_eq(c.moe_layer_freq, 2);
    fail_with(TINY_DSV2, "moe_layer_freq", "0", "moe_layer_freq must be at least 1");
    fail_with(TINY_DSV2, "num_attention_heads", "5", "hidden_size (64) is not a multiple of "
              "num_attention_heads (5)");
    ok_with(&c, TINY_DSV3, "num_attention_heads", "5"); /* DeepseekV3Config has no such check */
    ok_with(&c, TINY_DSV2, "first_k_dense_replace", NULL);
    ck_assert_int_eq(c.n_moe_layers, 4);
    ok_with(&c, TINY_DSV2, "attention_bias", "true");
    ck_assert_int_eq(c.qkv_bias + c.o_bias, 2);
    ok_with(&c, TINY_DSV2, "num_key_value_heads", "4");
    ok_with(&c, TINY_DSV2, "head_dim", "99"); /* head_dim is qk_rope_head_dim */
    ck_assert_int_eq(c.head_dim, 8);
    fail_with(TINY_DSV2, "num_key_value_heads", "2", "one key and value per query head");
    fail_with(TINY_DSV2, "topk_method", "\"noaux_tc\"", "topk_method 'noaux_tc'");
    fail_with(TINY_DSV2, "topk_method", "\"group_limited_greedy\"", "missing required key n_group");
    fail_with(TINY_DSV2, "mlp_bias", "true", "mlp_bias");
    fail_with(TINY_DSV2, "qk_rope_head_dim", "7", "qk_rope_head_dim (7) must be even");
    fail_with(TINY_DSV2, "kv_lora_rank", "0", "kv_lora_rank must be at least 1");
    fail_with(TINY_DSV2, "n_routed_experts", NULL, "missing required key n_routed_experts");
    fail_with(TINY_DSV2, "routed_scaling_factor", "-1", "routed_scaling_factor must be a positive");
    {
        cJSON *r = cJSON_Parse(TINY_DSV2);
        cJSON_AddStringToObject(r, "topk_method", "group_limited_greedy");
        cJSON_AddNumberToObject(r, "n_group", 4);
        cJSON_AddNumberToObject(r, "topk_group", 2);
        char *t = cJSON_PrintUnformatted(r);
        ok_with(&c, t, NULL, NULL);
        ck_assert_int_eq(c.n_group, 4);
        ck_assert_int_eq(c.topk_group, 2);
        fail_with(t, "n_group", "3", "n_routed_experts (8) is not a multiple of n_group (3)");
        fail_with(t, "topk_group", "5", "topk_group (5) exceeds n_group (4)");
        fail_with(t, "topk_group", "null", "missing required key topk_group");
        free(t);
        cJSON_Delete(r);
    }
    /* YaRN in both layouts; null as absent */
    ok_with(&c, TINY_DSV2, "rope_scaling",
            "{\"type\":\"yarn\",\"factor\":40,\"original_max_position_embeddings\":4096,"
            "\"mscale\":0.707,\"mscale_all_dim\":null,\"beta_fast\":null}");
    ck_assert_int_eq(c.rope.type, CAPMOE_ROPE_YARN);
    ck_assert_double_eq(c.rope.factor, 40.0);
    ck_assert_double_eq(c.rope.mscale, 0.707);
    ck_assert_double_eq(c.rope.mscale_all_dim, 0.0);
    ck_assert_double_eq(c.rope.beta_fast, 32.0);
    ok_with(&c, TINY_DSV3, "rope_parameters",
            "{\"rope_type\":\"yarn\",\"rope_theta\":50000,\"factor\":8,\"truncate\":false,"
            "\"attention_factor\":1.25}");
    ck_assert_int_eq(c.rope.type, CAPMOE_ROPE_YARN);
    ck_assert_double_eq(c.rope.theta, 50000.0);
    ck_assert_double_eq(c.rope_theta, 50000.0);
    ck_assert_int_eq(c.rope.truncate, 0);
    ck_assert_double_eq(c.rope.attention_factor, 1.25);
    ck_assert_int_eq(c.rope.original_max_position, 4096); /* max_position_embeddings */
    fail_with(TINY_DSV3, "rope_parameters", "{\"rope_type\":\"yarn\"}", "yarn needs a factor");
    /* factor null: max_position_embeddings / original_max_position_embeddings; beta 0: default */
    ok_with(&c, TINY_DSV3, "rope_parameters",
            "{\"rope_type\":\"yarn\",\"factor\":null,\"original_max_position_embeddings\":1024,"
            "\"beta_fast\":0}");
    ck_assert_double_eq(c.rope.factor, 4.0);
    ck_assert_double_eq(c.rope.beta_fast, 32.0);
    fail_with(TINY_DSV3, "rope_scaling", "{\"type\":\"yarn\",\"factor\":-2}",
              "rope_scaling.factor must be a number > 0");
    fail_with(TINY_DSV3, "rope_scaling", "{\"type\":\"yarn\",\"factor\":2,\"truncate\":1}",
              "truncate must be true or false");
    fail_with(TINY_DSV3, "rope_scaling", "{\"type\":\"longrope\",\"factor\":2}",
              "rope type 'longrope' not supported (only 'default' and 'yarn')");
    /* DeepSeek-V3 */
    ok_with(&c, TINY_DSV3, NULL, NULL);
    static const unsigned char l3[4] = {0, 0, 0, 1}; /* first_k_dense_replace: 3 */
    ck_assert_mem_eq(c.layer_is_moe, l3, 4);
    ck_assert_int_eq(c.intermediate_size, 18432);
    ck_assert_int_eq(c.shared_expert_intermediate_size, 16);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert_int_eq(c.rope.interleave, 1);
    ok_with(&c, TINY_DSV3, "rope_interleave", "false");
    ck_assert_int_eq(c.rope.interleave, 0);
    ok_with(&c, TINY_DSV3, "norm_topk_prob", "false");
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ok_with(&c, TINY_DSV3, "n_shared_experts", "0");
    ck_assert_int_eq(c.shared_expert_intermediate_size, 0);
    ok_with(&c, TINY_DSV3, "topk_method", "\"greedy\""); /* V3 does not read it */
    ck_assert_int_eq(c.n_group, 4);
    fail_with(TINY_DSV3, "n_group", "16", "DeepSeek-V3 scores a group by its two best experts");
    {
        cJSON *r = cJSON_Parse(TINY_DSV3);
        cJSON_ReplaceItemInObjectCaseSensitive(r, "n_group", cJSON_CreateNumber(8));
        char *t = cJSON_PrintUnformatted(r);
        fail_with(t, "topk_group", "1", "num_experts_per_tok (4) exceeds the experts of the "
                  "topk_group (1) groups kept (2)");
        free(t);
        cJSON_Delete(r);
    }
    fail_with(TINY_DSV3, "num_experts_per_tok", "9", "num_experts_per_tok (9) exceeds");
    fail_with(TINY_DSV3, "q_lora_rank", "0", "q_lora_rank must be at least 1");
    ck_assert_str_eq(capmoe_arch_name(CAPMOE_ARCH_DEEPSEEK_V3), "DeepseekV3ForCausalLM");
}
END_TEST

/* tests/data/reference/deepseek_configs.json: what transformers 5.17 derives
 * from the DeepSeek configs of tests/data/configs (the hub files, the same
 * re-saved by transformers, and a synthetic one with moe_layer_freq 2): see
 * tests/data/gen_deepseek_reference.py. Sizes, layers, router settings, the
 * rotary frequencies (float32, exactly), YaRN's attention factor and the
 * softmax scale of latent attention. */
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "expected.%s missing", k);
    return v->valuedouble;
}

static int jbool(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsBool(v), "expected.%s missing", k);
    return cJSON_IsTrue(v);
}

START_TEST(test_deepseek_against_transformers) {
    capmoe_error err;
    size_t len;
    char *text = capmoe_read_file("tests/data/reference/deepseek_configs.json", &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    cJSON *all = cJSON_ParseWithLength(text, len);
    free(text);
    ck_assert_ptr_nonnull(all);
    int n = 0;
    for (const cJSON *e = all->child; e; e = e->next, n++) {
        const char *d = e->string;
        char dir[256];
        snprintf(dir, sizeof dir, "tests/data/%s", d);
        capmoe_hfconfig c;
        ck_assert_msg(capmoe_hfconfig_load(&c, dir, &err) == 0, "%s", err.msg);
        int v3 = c.arch == CAPMOE_ARCH_DEEPSEEK_V3;
        ck_assert_str_eq(c.arch_name, cJSON_GetObjectItemCaseSensitive(e, "arch")->valuestring);
#define EQ(field, key) ck_assert_msg(c.field == (int)jnum(e, key), "%s: %s = %d, transformers %d", \
                                     d, key, (int)c.field, (int)jnum(e, key))
        EQ(vocab_size, "vocab_size");
        EQ(hidden_size, "hidden_size");
        EQ(n_layers, "num_hidden_layers");
        EQ(n_heads, "num_attention_heads");
        EQ(n_kv_heads, "num_key_value_heads");
        EQ(max_position_embeddings, "max_position_embeddings");
        EQ(intermediate_size, "dense_width");
        EQ(moe_intermediate_size, "expert_width");
        EQ(n_experts, "n_routed_experts");
        EQ(top_k, "num_experts_per_tok");
        EQ(shared_expert_intermediate_size, "shared_width");
        EQ(first_k_dense_replace, "first_k_dense_replace");
        EQ(kv_lora_rank, "kv_lora_rank");
        EQ(qk_nope_head_dim, "qk_nope_head_dim");
        EQ(qk_rope_head_dim, "qk_rope_head_dim");
        EQ(v_head_dim, "v_head_dim");
        EQ(head_dim, "head_dim");
        EQ(bos_token_id, "bos_token_id");
#undef EQ
        const cJSON *ql = cJSON_GetObjectItemCaseSensitive(e, "q_lora_rank");
        ck_assert_int_eq(c.q_lora_rank, cJSON_IsNull(ql) ? 0 : (int)ql->valuedouble);
        ck_assert_int_eq(c.n_eos, 1);
        ck_assert_int_eq(c.eos_token_id[0], (int)jnum(e, "eos_token_id"));
        ck_assert_float_eq(c.rms_norm_eps, (float)jnum(e, "rms_norm_eps"));
        ck_assert_double_eq(c.routed_scaling_factor, jnum(e, "routed_scaling_factor"));
        const cJSON *at = cJSON_GetObjectItemCaseSensitive(e, "attn");
        const cJSON *kva = cJSON_GetObjectItemCaseSensitive(at, "kv_a_proj_with_mqa");
        ck_assert_int_eq(c.qkv_bias, jbool(kva, "bias"));
        ck_assert_int_eq(c.o_bias, jbool(cJSON_GetObjectItemCaseSensitive(at, "o_proj"), "bias"));
        ck_assert_int_eq(c.kv_lora_rank + c.qk_rope_head_dim, (int)jnum(kva, "out"));
        /* the latent RMSNorms: transformers' default epsilon, mla.c's */
        ck_assert_double_eq(jnum(e, "kv_a_layernorm_eps"), 1e-6);
        /* layers */
        const cJSON *moe = cJSON_GetObjectItemCaseSensitive(e, "layer_is_moe");
        ck_assert_int_eq(cJSON_GetArraySize(moe), c.n_layers);
        int l = 0;
        for (const cJSON *x = moe->child; x; x = x->next, l++)
            ck_assert_msg(c.layer_is_moe[l] == (int)x->valuedouble, "%s: layer %d", d, l);
        /* router */
        const char *tm = cJSON_GetObjectItemCaseSensitive(e, "topk_method")->valuestring;
        if (v3 || !strcmp(tm, "group_limited_greedy")) {
            ck_assert_int_eq(c.n_group, (int)jnum(e, "n_group"));
            ck_assert_int_eq(c.topk_group, (int)jnum(e, "topk_group"));
        } else {
            ck_assert_int_eq(c.n_group, 1);
        }
        if (v3) ck_assert_int_eq(c.norm_topk_prob, jbool(e, "norm_topk_prob"));
        else ck_assert_int_eq(c.norm_topk_prob, 0);
        ck_assert_int_eq(c.router, v3 ? CAPMOE_ROUTER_DEEPSEEK_V3 : CAPMOE_ROUTER_DEEPSEEK_V2);
        ck_assert_int_eq(!cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "router_bias")), v3);
        /* rotary embedding and softmax scale */
        const char *rt = cJSON_GetObjectItemCaseSensitive(e, "rope_type")->valuestring;
        ck_assert_int_eq(c.rope.type, !strcmp(rt, "yarn") ? CAPMOE_ROPE_YARN : CAPMOE_ROPE_DEFAULT);
        if (v3) ck_assert_int_eq(c.rope.interleave, jbool(e, "rope_interleave"));
        float inv[512];
        double af = 0;
        ck_assert_int_le(c.head_dim / 2, 512);
        capmoe_rope_inv_freq(&c, inv, &af);
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(e, "inv_freq");
        ck_assert_int_eq(cJSON_GetArraySize(ref), c.head_dim / 2);
        l = 0;
        for (const cJSON *x = ref->child; x; x = x->next, l++) {
            float want = (float)strtod(x->valuestring, NULL);
            ck_assert_msg(inv[l] == want, "%s: inv_freq[%d] = %a, transformers %a", d, l,
                          (double)inv[l], (double)want);
        }
        ck_assert_double_eq_tol(af, jnum(e, "attention_scaling"), 1e-15);
        ck_assert_double_eq_tol(capmoe_rope_mla_softmax_scale(&c), jnum(e, "attn_scaling"), 1e-15);
    }
    ck_assert_int_ge(n, 8);
    cJSON_Delete(all);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("hfconfig");
    TCase *tc = tcase_create("samples");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_mixtral);
    tcase_add_test(tc, test_qwen2_moe);
    tcase_add_test(tc, test_olmoe);
    tcase_add_test(tc, test_qwen3_moe);
    tcase_add_test(tc, test_against_transformers);
    tcase_add_test(tc, test_deepseek_hub);
    tcase_add_test(tc, test_deepseek_against_transformers);
    suite_add_tcase(s, tc);
    tc = tcase_create("inline");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_rope_and_dtype);
    tcase_add_test(tc, test_layers_and_tokens);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_fuzz);
    tcase_add_test(tc, test_implausible_sizes);
    tcase_add_test(tc, test_deepseek_inline);
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
