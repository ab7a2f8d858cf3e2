/* hfconfig.c - config.json of the supported Hugging Face MoE architectures.
 *
 * Defaults for absent keys follow the transformers configuration classes
 * (MixtralConfig, Qwen2MoeConfig, OlmoeConfig, Qwen3MoeConfig,
 * DeepseekV2Config, DeepseekV3Config of transformers 5.x); JSON null is
 * treated as absent, except num_key_value_heads: null means
 * num_attention_heads (absent means the class default: 8 / 16 / heads / 4),
 * and DeepSeek's q_lora_rank: null means no query compression (a plain
 * q_proj, as in DeepSeek-V2-Lite), absent means the class default 1536.
 * The basic sizes (vocab_size, hidden_size, num_hidden_layers,
 * num_attention_heads, expert count / width, top-k) are required: a
 * checkpoint whose config omits them is refused rather than guessed.
 * tests/check_hfconfig.c compares the result with what transformers 5.17
 * derives from the same files (tests/data/reference/configs.json). */
#include "capmoe/hfconfig.h"

#include "capmoe/stats.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct arch_defaults {
    capmoe_arch arch;
    const char *arch_name;
    const char *model_type;
    double rope_theta;
    float rms_norm_eps;
    int max_position_embeddings;
    int bos_token_id; /* -1: None */
    int eos_token_id; /* -1: None */
    int intermediate_size;               /* Qwen dense layers */
    int shared_expert_intermediate_size; /* Qwen2-MoE */
    int n_kv_heads;                      /* 0: num_attention_heads */
} arch_defaults;

/* From the transformers configuration classes. */
static const arch_defaults ARCHS[] = {
    {CAPMOE_ARCH_MIXTRAL, "MixtralForCausalLM", "mixtral", 1e6, 1e-5f, 4096 * 32, 1, 2, 0, 0, 8},
    {CAPMOE_ARCH_QWEN2_MOE, "Qwen2MoeForCausalLM", "qwen2_moe", 10000.0, 1e-6f, 32768, -1, -1,
     5632, 5632, 16},
    {CAPMOE_ARCH_OLMOE, "OlmoeForCausalLM", "olmoe", 10000.0, 1e-5f, 4096, -1, 50279, 0, 0, 0},
    {CAPMOE_ARCH_QWEN3_MOE, "Qwen3MoeForCausalLM", "qwen3_moe", 10000.0, 1e-6f, 32768, -1, -1,
     6144, 0, 4},
    {CAPMOE_ARCH_DEEPSEEK_V2, "DeepseekV2ForCausalLM", "deepseek_v2", 10000.0, 1e-6f, 2048, 1, 2,
     11008, 0, 0},
    {CAPMOE_ARCH_DEEPSEEK_V3, "DeepseekV3ForCausalLM", "deepseek_v3", 10000.0, 1e-6f, 4096, 0, 1,
     18432, 0, 0},
};

/* The DeepSeek classes' other defaults (DeepseekV2Config, DeepseekV3Config). */
typedef struct deepseek_defaults {
    int q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head;
    int n_shared, first_k_dense, n_group, topk_group, norm_topk;
    double routed_scaling_factor;
} deepseek_defaults;

static const deepseek_defaults DS_V2 = {1536, 512, 128, 64, 128, 2, 0, 1, 1, 0, 1.0};
static const deepseek_defaults DS_V3 = {1536, 512, 128, 64, 128, 1, 3, 8, 4, 1, 2.5};
#define N_ARCHS ((int)(sizeof ARCHS / sizeof ARCHS[0]))

const char *capmoe_arch_name(capmoe_arch a) {
    for (int i = 0; i < N_ARCHS; i++)
        if (ARCHS[i].arch == a) return ARCHS[i].arch_name;
    return "unknown";
}

/* ---------- typed getters (null = absent) ---------- */

typedef struct ctx {
    const cJSON *root;
    const char *path;
    capmoe_error *err;
} ctx;

static const cJSON *get(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Integer key: returns 1 if present (stored in *out), 0 if absent, -1 on error. */
static int get_int(ctx *c, const char *key, int *out) {
    const cJSON *v = get(c->root, key);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < INT_MIN || v->valuedouble > INT_MAX) {
        capmoe_set_error(c->err, "%s: %s must be an integer", c->path, key);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 1;
}

/* Required positive integer. */
static int need_pos(ctx *c, const char *key, int *out) {
    int r = get_int(c, key, out);
    if (r < 0) return -1;
    if (r == 0) return capmoe_set_error(c->err, "%s: missing required key %s", c->path, key);
    if (*out <= 0)
        return capmoe_set_error(c->err, "%s: %s must be positive (got %d)", c->path, key, *out);
    return 0;
}

/* Optional integer >= min with a default. */
static int opt_int(ctx *c, const char *key, int def, int min, int *out) {
    int r = get_int(c, key, out);
    if (r < 0) return -1;
    if (r == 0) *out = def;
    else if (*out < min)
        return capmoe_set_error(c->err, "%s: %s must be at least %d (got %d)", c->path, key, min,
                                *out);
    return 0;
}

static int opt_bool(ctx *c, const char *key, int def, int *out) {
    const cJSON *v = get(c->root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return capmoe_set_error(c->err, "%s: %s must be true or false", c->path, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

/* Optional positive number. */
static int opt_num(ctx *c, const cJSON *obj, const char *key, const char *label, double def,
                   double *out) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble))
        return capmoe_set_error(c->err, "%s: %s must be a positive number", c->path, label);
    *out = v->valuedouble;
    return 0;
}

/* ---------- plausibility of sizes ---------- */

/* The loader, the engine and the KV cache compute with these dimensions in
 * int (shape products, rows). Every dimension must lie within a bound no
 * real checkpoint comes near, and every weight's element count within int:
 * checked here in 64 bits, before anything multiplies them, so a crafted
 * config.json (head_dim 1073741824) is refused with the key named instead
 * of wrapping into a shape that a file of empty tensors would then match. */
#define HF_MAX_VOCAB (1 << 24)
#define HF_MAX_HIDDEN (1 << 17)
#define HF_MAX_HEADS 4096
#define HF_MAX_HEAD_DIM 4096
#define HF_MAX_FFN (1 << 20)
#define HF_MAX_LORA (1 << 16)
#define HF_MAX_POSITIONS (1 << 24)

static int dim_ok(ctx *c, const char *key, int v, int max) {
    if (v > max)
        return capmoe_set_error(c->err, "%s: %s (%d) is implausible: the largest supported is %d",
                                c->path, key, v, max);
    return 0;
}

static int elems_ok(ctx *c, const char *what, long long n) {
    if (n > INT_MAX)
        return capmoe_set_error(c->err, "%s: %s = %lld elements in one weight is implausible "
                                "(more than 2^31-1)", c->path, what, n);
    return 0;
}

static int check_sizes(ctx *c, const capmoe_hfconfig *f) {
    long long H = f->hidden_size, nH = f->n_heads;
    if (dim_ok(c, "vocab_size", f->vocab_size, HF_MAX_VOCAB) ||
        dim_ok(c, "hidden_size", f->hidden_size, HF_MAX_HIDDEN) ||
        dim_ok(c, "num_attention_heads", f->n_heads, HF_MAX_HEADS) ||
        dim_ok(c, "head_dim", f->head_dim, HF_MAX_HEAD_DIM) ||
        dim_ok(c, "intermediate_size", f->intermediate_size, HF_MAX_FFN) ||
        dim_ok(c, "moe_intermediate_size", f->moe_intermediate_size, HF_MAX_FFN) ||
        dim_ok(c, "shared_expert_intermediate_size", f->shared_expert_intermediate_size,
               HF_MAX_FFN) ||
        dim_ok(c, "max_position_embeddings", f->max_position_embeddings, HF_MAX_POSITIONS))
        return -1;
    if (elems_ok(c, "vocab_size x hidden_size", f->vocab_size * H) ||
        elems_ok(c, "intermediate_size x hidden_size", f->intermediate_size * H) ||
        elems_ok(c, "moe_intermediate_size x hidden_size", f->moe_intermediate_size * H) ||
        elems_ok(c, "shared_expert_intermediate_size x hidden_size",
                 f->shared_expert_intermediate_size * H))
        return -1;
    if (f->kv_lora_rank > 0) { /* latent attention */
        long long qk = (long long)f->qk_nope_head_dim + f->qk_rope_head_dim;
        if (dim_ok(c, "kv_lora_rank", f->kv_lora_rank, HF_MAX_LORA) ||
            dim_ok(c, "q_lora_rank", f->q_lora_rank, HF_MAX_LORA) ||
            dim_ok(c, "qk_nope_head_dim", f->qk_nope_head_dim, HF_MAX_HEAD_DIM) ||
            dim_ok(c, "qk_rope_head_dim", f->qk_rope_head_dim, HF_MAX_HEAD_DIM) ||
            dim_ok(c, "v_head_dim", f->v_head_dim, HF_MAX_HEAD_DIM) ||
            elems_ok(c, "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim) x "
                     "(q_lora_rank or hidden_size)", nH * qk * (f->q_lora_rank ? f->q_lora_rank : H)) ||
            elems_ok(c, "num_attention_heads x (qk_nope_head_dim + v_head_dim) x kv_lora_rank",
                     nH * ((long long)f->qk_nope_head_dim + f->v_head_dim) * f->kv_lora_rank) ||
            elems_ok(c, "num_attention_heads x v_head_dim x hidden_size", nH * f->v_head_dim * H) ||
            elems_ok(c, "(kv_lora_rank + qk_rope_head_dim) x hidden_size",
                     ((long long)f->kv_lora_rank + f->qk_rope_head_dim) * H))
            return -1;
    } else if (elems_ok(c, "num_attention_heads x head_dim x hidden_size",
                        nH * f->head_dim * H)) {
        return -1;
    }
    return 0;
}

/* ---------- pieces ---------- */

static int find_arch(ctx *c, const arch_defaults **out) {
    const cJSON *archs = get(c->root, "architectures");
    if (archs) {
        const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
        if (!cJSON_IsString(a0))
            return capmoe_set_error(c->err, "%s: architectures must be a non-empty list of "
                                    "strings", c->path);
        for (int i = 0; i < N_ARCHS; i++) {
            if (strcmp(a0->valuestring, ARCHS[i].arch_name) == 0) {
                *out = &ARCHS[i];
                return 0;
            }
        }
        return capmoe_set_error(c->err, "%s: architecture '%.100s' is not supported (supported: "
                                "MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM, "
                                "Qwen3MoeForCausalLM, DeepseekV2ForCausalLM, "
                                "DeepseekV3ForCausalLM)", c->path, a0->valuestring);
    }
    const cJSON *mt = get(c->root, "model_type");
    if (!mt)
        return capmoe_set_error(c->err, "%s: neither architectures nor model_type is set",
                                c->path);
    if (!cJSON_IsString(mt))
        return capmoe_set_error(c->err, "%s: model_type must be a string", c->path);
    for (int i = 0; i < N_ARCHS; i++) {
        if (strcmp(mt->valuestring, ARCHS[i].model_type) == 0) {
            *out = &ARCHS[i];
            return 0;
        }
    }
    return capmoe_set_error(c->err, "%s: model_type '%.100s' is not supported (supported: "
                            "mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v2, deepseek_v3)",
                            c->path, mt->valuestring);
}

/* The rope type of a rope_scaling or rope_parameters object ("rope_type", or
 * the older "type"): "default", or "yarn" where the architecture has it
 * (DeepSeek); any other type is refused by name. */
static int rope_type_of(ctx *c, const cJSON *obj, const char *key, int yarn_ok,
                        capmoe_rope_type *out) {
    const cJSON *t = get(obj, "rope_type");
    const char *tk = "rope_type";
    if (!t) {
        t = get(obj, "type"); /* older spelling */
        tk = "type";
    }
    if (t && !cJSON_IsString(t))
        return capmoe_set_error(c->err, "%s: %s.%s must be a string", c->path, key, tk);
    *out = CAPMOE_ROPE_DEFAULT;
    if (t && strcmp(t->valuestring, "yarn") == 0 && yarn_ok) *out = CAPMOE_ROPE_YARN;
    else if (t && strcmp(t->valuestring, "default") != 0)
        return capmoe_set_error(c->err, "%s: %s: rope type '%.64s' not supported (only "
                                "'default'%s)", c->path, key, t->valuestring,
                                yarn_ok ? " and 'yarn'" : "");
    if (!t && strcmp(key, "rope_scaling") == 0 && obj->child)
        return capmoe_set_error(c->err, "%s: rope_scaling is set but names no rope type; only "
                                "the default rotary embedding%s is supported", c->path,
                                yarn_ok ? " and yarn" : "");
    const cJSON *prf = get(obj, "partial_rotary_factor");
    if (prf && (!cJSON_IsNumber(prf) || prf->valuedouble != 1.0))
        return capmoe_set_error(c->err, "%s: %s.partial_rotary_factor other than 1 is not "
                                "supported", c->path, key);
    return 0;
}

/* A number of a rope object that may be any finite value >= min (or > 0
 * when strict): 0 when absent. */
static int rope_num(ctx *c, const cJSON *obj, const char *key, const char *name, double min,
                    int strict, double *out) {
    const cJSON *v = get(obj, name);
    *out = 0;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min ||
        (strict && !(v->valuedouble > min)))
        return capmoe_set_error(c->err, "%s: %s.%s must be a number %s %g", c->path, key, name,
                                strict ? ">" : ">=", min);
    *out = v->valuedouble;
    return 0;
}

/* The YaRN parameters of a rope object (transformers' _compute_yarn_parameters
 * reads factor, original_max_position_embeddings, beta_fast, beta_slow,
 * mscale, mscale_all_dim, attention_factor, truncate). */
static int parse_yarn(ctx *c, const cJSON *obj, const char *key, capmoe_rope_cfg *r) {
    if (rope_num(c, obj, key, "factor", 0, 1, &r->factor) != 0) return -1;
    const cJSON *fk = cJSON_GetObjectItemCaseSensitive(obj, "factor");
    if (!fk) /* null: derived from the context lengths (parse_rope's caller) */
        return capmoe_set_error(c->err, "%s: %s: yarn needs a factor", c->path, key);
    double omax = 0;
    /* a top-level original_max_position_embeddings wins, as in transformers */
    const cJSON *top = get(c->root, "original_max_position_embeddings");
    if (top ? rope_num(c, c->root, "the config", "original_max_position_embeddings", 1, 0, &omax)
            : rope_num(c, obj, key, "original_max_position_embeddings", 1, 0, &omax))
        return -1;
    if (omax != floor(omax) || omax > INT_MAX)
        return capmoe_set_error(c->err, "%s: %s.original_max_position_embeddings must be an "
                                "integer", c->path, key);
    r->original_max_position = (int)omax;
    if (rope_num(c, obj, key, "beta_fast", 0, 0, &r->beta_fast) != 0 ||
        rope_num(c, obj, key, "beta_slow", 0, 0, &r->beta_slow) != 0 ||
        rope_num(c, obj, key, "mscale", 0, 0, &r->mscale) != 0 ||
        rope_num(c, obj, key, "mscale_all_dim", 0, 0, &r->mscale_all_dim) != 0 ||
        rope_num(c, obj, key, "attention_factor", 0, 1, &r->attention_factor) != 0)
        return -1;
    if (r->beta_fast == 0) r->beta_fast = 32; /* absent, null or 0 (Python's "or 32") */
    if (r->beta_slow == 0) r->beta_slow = 1;
    const cJSON *tr = get(obj, "truncate");
    if (tr && !cJSON_IsBool(tr))
        return capmoe_set_error(c->err, "%s: %s.truncate must be true or false", c->path, key);
    r->truncate = !tr || cJSON_IsTrue(tr);
    return 0;
}

static int parse_rope(ctx *c, const arch_defaults *ad, int yarn_ok, capmoe_rope_cfg *r) {
    memset(r, 0, sizeof *r);
    const cJSON *rs = get(c->root, "rope_scaling");
    const cJSON *rp = get(c->root, "rope_parameters");
    capmoe_rope_type ts = CAPMOE_ROPE_DEFAULT, tp = CAPMOE_ROPE_DEFAULT;
    if (rs) {
        if (!cJSON_IsObject(rs))
            return capmoe_set_error(c->err, "%s: rope_scaling must be an object or null",
                                    c->path);
        if (rope_type_of(c, rs, "rope_scaling", yarn_ok, &ts) != 0) return -1;
    }
    double top = 0;
    if (opt_num(c, c->root, "rope_theta", "rope_theta", ad->rope_theta, &top) != 0) return -1;
    r->theta = top;
    if (rp) {
        if (!cJSON_IsObject(rp))
            return capmoe_set_error(c->err, "%s: rope_parameters must be an object or null",
                                    c->path);
        for (const cJSON *e = rp->child; e; e = e->next)
            if (cJSON_IsObject(e))
                return capmoe_set_error(c->err, "%s: rope_parameters.%s: per-layer-type rope "
                                        "parameters are not supported", c->path, e->string);
        if (rope_type_of(c, rp, "rope_parameters", yarn_ok, &tp) != 0) return -1;
        if (opt_num(c, rp, "rope_theta", "rope_parameters.rope_theta", top, &r->theta) != 0)
            return -1;
    }
    /* theta < 1 makes the rotation frequencies grow with the dimension
     * instead of falling: no model is trained so (1e-300 underflows them) */
    if (r->theta < 1.0)
        return capmoe_set_error(c->err, "%s: rope_theta (%g) is implausible: it must be at "
                                "least 1", c->path, r->theta);
    /* rope_parameters (the newer layout) wins over rope_scaling when both
     * are given, as transformers' conversion of the older one only fills
     * what rope_parameters lacks */
    if (rp && (tp == CAPMOE_ROPE_YARN || !rs)) {
        r->type = tp;
        if (tp == CAPMOE_ROPE_YARN) return parse_yarn(c, rp, "rope_parameters", r);
    } else if (rs) {
        r->type = ts;
        if (ts == CAPMOE_ROPE_YARN) return parse_yarn(c, rs, "rope_scaling", r);
    }
    return 0;
}

static int parse_dtype(ctx *c, capmoe_dtype *out) {
    const char *key = "dtype";
    const cJSON *v = get(c->root, key);
    if (!v) {
        key = "torch_dtype";
        v = get(c->root, key);
    }
    *out = CAPMOE_DTYPE_F32; /* transformers' default when unset */
    if (!v) return 0;
    if (!cJSON_IsString(v))
        return capmoe_set_error(c->err, "%s: %s must be a string", c->path, key);
    const char *s = v->valuestring;
    if (strncmp(s, "torch.", 6) == 0) s += 6;
    if (strcmp(s, "float32") == 0 || strcmp(s, "float") == 0) *out = CAPMOE_DTYPE_F32;
    else if (strcmp(s, "bfloat16") == 0) *out = CAPMOE_DTYPE_BF16;
    else if (strcmp(s, "float16") == 0 || strcmp(s, "half") == 0) *out = CAPMOE_DTYPE_F16;
    else *out = CAPMOE_DTYPE_OTHER; /* informational only; tensors carry their own dtype */
    return 0;
}

static int parse_token_ids(ctx *c, capmoe_hfconfig *cfg, const arch_defaults *ad) {
    const cJSON *b = get(c->root, "bos_token_id");
    const cJSON *bk = cJSON_GetObjectItemCaseSensitive(c->root, "bos_token_id");
    if (b) {
        int v = 0;
        if (get_int(c, "bos_token_id", &v) < 0) return -1;
        if (v < 0) return capmoe_set_error(c->err, "%s: bos_token_id must be >= 0", c->path);
        if (v >= cfg->vocab_size)
            return capmoe_set_error(c->err, "%s: bos_token_id (%d) is not below vocab_size (%d)",
                                    c->path, v, cfg->vocab_size);
        cfg->bos_token_id = v;
    } else {
        cfg->bos_token_id = bk ? -1 : ad->bos_token_id; /* explicit null = none */
    }
    const cJSON *e = get(c->root, "eos_token_id");
    const cJSON *ek = cJSON_GetObjectItemCaseSensitive(c->root, "eos_token_id");
    cfg->n_eos = 0;
    if (!e) {
        if (!ek && ad->eos_token_id >= 0) cfg->eos_token_id[cfg->n_eos++] = ad->eos_token_id;
        return 0;
    }
    if (cJSON_IsNumber(e)) {
        int v = 0;
        if (get_int(c, "eos_token_id", &v) < 0) return -1;
        if (v < 0) return capmoe_set_error(c->err, "%s: eos_token_id must be >= 0", c->path);
        if (v >= cfg->vocab_size)
            return capmoe_set_error(c->err, "%s: eos_token_id %d is not below vocab_size (%d)",
                                    c->path, v, cfg->vocab_size);
        cfg->eos_token_id[cfg->n_eos++] = v;
        return 0;
    }
    if (!cJSON_IsArray(e))
        return capmoe_set_error(c->err, "%s: eos_token_id must be an integer or a list of "
                                "integers", c->path);
    int max = (int)(sizeof cfg->eos_token_id / sizeof cfg->eos_token_id[0]);
    for (const cJSON *x = e->child; x; x = x->next) {
        double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (d < 0 || d != floor(d) || d > INT_MAX)
            return capmoe_set_error(c->err, "%s: eos_token_id list entries must be "
                                    "non-negative integers", c->path);
        if (d >= cfg->vocab_size)
            return capmoe_set_error(c->err, "%s: eos_token_id %d is not below vocab_size (%d)",
                                    c->path, (int)d, cfg->vocab_size);
        int dup = 0;
        for (int i = 0; i < cfg->n_eos; i++) dup |= cfg->eos_token_id[i] == (int)d;
        if (dup) continue;
        if (cfg->n_eos == max)
            return capmoe_set_error(c->err, "%s: eos_token_id lists more than %d ids", c->path,
                                    max);
        cfg->eos_token_id[cfg->n_eos++] = (int)d;
    }
    return 0;
}

static int refuse_if_true(ctx *c, const char *key, const char *why) {
    int v = 0;
    if (opt_bool(c, key, 0, &v) != 0) return -1;
    if (v) return capmoe_set_error(c->err, "%s: %s is true: %s", c->path, key, why);
    return 0;
}

static int parse_moe_layers(ctx *c, capmoe_hfconfig *cfg) {
    int step = 1;
    if (opt_int(c, "decoder_sparse_step", 1, 1, &step) != 0) return -1;
    unsigned char dense[CAPMOE_MAX_LAYERS];
    memset(dense, 0, sizeof dense);
    const cJSON *mol = get(c->root, "mlp_only_layers");
    if (mol) {
        if (!cJSON_IsArray(mol))
            return capmoe_set_error(c->err, "%s: mlp_only_layers must be a list of layer "
                                    "indices", c->path);
        for (const cJSON *x = mol->child; x; x = x->next) {
            double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
            if (d < 0 || d != floor(d) || d >= cfg->n_layers)
                return capmoe_set_error(c->err, "%s: mlp_only_layers entries must be layer "
                                        "indices in [0, %d)", c->path, cfg->n_layers);
            dense[(int)d] = 1;
        }
    }
    for (int l = 0; l < cfg->n_layers; l++)
        cfg->layer_is_moe[l] = !dense[l] && cfg->n_experts > 0 && (l + 1) % step == 0;
    return 0;
}

/* An optional integer that may be null in the file with a meaning of its
 * own: *out = null_value when null, def when absent. */
static int opt_int_null(ctx *c, const char *key, int def, int null_value, int min, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (v && cJSON_IsNull(v)) {
        *out = null_value;
        return 0;
    }
    return opt_int(c, key, def, min, out);
}

static int opt_str(ctx *c, const char *key, const char *def, const char **out) {
    const cJSON *v = get(c->root, key);
    *out = def;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return capmoe_set_error(c->err, "%s: %s must be a string", c->path, key);
    *out = v->valuestring;
    return 0;
}

/* DeepseekV2ForCausalLM / DeepseekV3ForCausalLM: experts, shared experts,
 * dense first layers, the router, Multi-head Latent Attention. What
 * transformers reads (and what it ignores: V2 never normalises its top-k
 * weights whatever norm_topk_prob says; V3 always scores with a sigmoid,
 * whatever topk_method and scoring_func say). */
static int parse_deepseek(ctx *c, capmoe_hfconfig *cfg, const deepseek_defaults *dd,
                          int dense_default) {
    int v3 = dd == &DS_V3;
    if (need_pos(c, "n_routed_experts", &cfg->n_experts) ||
        need_pos(c, "num_experts_per_tok", &cfg->top_k) ||
        need_pos(c, "moe_intermediate_size", &cfg->moe_intermediate_size) ||
        opt_int(c, "intermediate_size", dense_default, 1, &cfg->intermediate_size) ||
        opt_int(c, "n_shared_experts", dd->n_shared, 0, &cfg->n_shared_experts) ||
        opt_int(c, "first_k_dense_replace", dd->first_k_dense, 0, &cfg->first_k_dense_replace) ||
        opt_int(c, "moe_layer_freq", 1, 1, &cfg->moe_layer_freq))
        return -1;
    if ((long long)cfg->n_shared_experts * cfg->moe_intermediate_size > INT_MAX)
        return capmoe_set_error(c->err, "%s: n_shared_experts x moe_intermediate_size is too "
                                "large", c->path);
    cfg->shared_expert_intermediate_size = cfg->n_shared_experts * cfg->moe_intermediate_size;
    if (opt_num(c, c->root, "routed_scaling_factor", "routed_scaling_factor",
                dd->routed_scaling_factor, &cfg->routed_scaling_factor) != 0)
        return -1;
    int mlp_bias = 0;
    if (opt_bool(c, "mlp_bias", 0, &mlp_bias) != 0) return -1;
    if (mlp_bias)
        return capmoe_set_error(c->err, "%s: mlp_bias is true: biases in the MLPs are not "
                                "supported", c->path);
    /* the router */
    int ng = 1, tg = 1;
    if (v3) {
        cfg->router = CAPMOE_ROUTER_DEEPSEEK_V3;
        if (opt_int(c, "n_group", dd->n_group, 1, &ng) || opt_int(c, "topk_group", dd->topk_group,
                                                                   1, &tg) ||
            opt_bool(c, "norm_topk_prob", dd->norm_topk, &cfg->norm_topk_prob))
            return -1;
    } else {
        cfg->router = CAPMOE_ROUTER_DEEPSEEK_V2;
        const char *tm = NULL;
        if (opt_str(c, "topk_method", "greedy", &tm) != 0) return -1;
        if (strcmp(tm, "group_limited_greedy") == 0) {
            if (need_pos(c, "n_group", &ng) || need_pos(c, "topk_group", &tg)) return -1;
        } else if (strcmp(tm, "greedy") != 0) {
            return capmoe_set_error(c->err, "%s: topk_method '%.64s' is not one DeepSeek-V2 has "
                                    "(greedy, group_limited_greedy)", c->path, tm);
        }
        int ignored = 0; /* read for its type only: transformers does not use it */
        if (opt_bool(c, "norm_topk_prob", 0, &ignored) != 0) return -1;
        cfg->norm_topk_prob = 0;
    }
    if (cfg->n_experts % ng != 0)
        return capmoe_set_error(c->err, "%s: n_routed_experts (%d) is not a multiple of n_group "
                                "(%d)", c->path, cfg->n_experts, ng);
    if (tg > ng)
        return capmoe_set_error(c->err, "%s: topk_group (%d) exceeds n_group (%d)", c->path, tg,
                                ng);
    if (v3 && cfg->n_experts / ng < 2)
        return capmoe_set_error(c->err, "%s: groups of %d expert: DeepSeek-V3 scores a group by "
                                "its two best experts (n_routed_experts %d, n_group %d)", c->path,
                                cfg->n_experts / ng, cfg->n_experts, ng);
    if ((long long)tg * (cfg->n_experts / ng) < cfg->top_k)
        return capmoe_set_error(c->err, "%s: num_experts_per_tok (%d) exceeds the experts of the "
                                "topk_group (%d) groups kept (%d)", c->path, cfg->top_k, tg,
                                tg * (cfg->n_experts / ng));
    cfg->n_group = ng;
    cfg->topk_group = tg;
    /* Multi-head Latent Attention */
    if (opt_int_null(c, "q_lora_rank", dd->q_lora_rank, 0, 1, &cfg->q_lora_rank) ||
        opt_int(c, "kv_lora_rank", dd->kv_lora_rank, 1, &cfg->kv_lora_rank) ||
        opt_int(c, "qk_nope_head_dim", dd->qk_nope, 1, &cfg->qk_nope_head_dim) ||
        opt_int(c, "qk_rope_head_dim", dd->qk_rope, 1, &cfg->qk_rope_head_dim) ||
        opt_int(c, "v_head_dim", dd->v_head, 1, &cfg->v_head_dim))
        return -1;
    if (cfg->qk_rope_head_dim % 2 != 0)
        return capmoe_set_error(c->err, "%s: qk_rope_head_dim (%d) must be even for rotary "
                                "embeddings", c->path, cfg->qk_rope_head_dim);
    if (!v3 && cfg->hidden_size % cfg->n_heads != 0) /* DeepseekV2Config refuses it */
        return capmoe_set_error(c->err, "%s: hidden_size (%d) is not a multiple of "
                                "num_attention_heads (%d)", c->path, cfg->hidden_size, cfg->n_heads);
    if (cfg->n_kv_heads != cfg->n_heads)
        return capmoe_set_error(c->err, "%s: num_key_value_heads (%d) differs from "
                                "num_attention_heads (%d): latent attention has one key and "
                                "value per query head", c->path, cfg->n_kv_heads, cfg->n_heads);
    cfg->head_dim = cfg->qk_rope_head_dim;
    int bias = 0;
    if (opt_bool(c, "attention_bias", 0, &bias) != 0) return -1;
    cfg->qkv_bias = cfg->o_bias = bias;
    cfg->qk_norm = CAPMOE_QK_NORM_NONE;
    cfg->rope.interleave = 1; /* V2: complex rotation of pairs; V3: rope_interleave */
    if (v3 && opt_bool(c, "rope_interleave", 1, &cfg->rope.interleave) != 0) return -1;
    /* layers: dense before first_k_dense_replace, MoE from there on (transformers
     * 5.17 does not use moe_layer_freq, whose other values DeepSeek's own code
     * reads as "every n-th layer": such a checkpoint's dense layers lack the
     * experts' tensors, and loading it fails naming them) */
    for (int l = 0; l < cfg->n_layers; l++) cfg->layer_is_moe[l] = l >= cfg->first_k_dense_replace;
    return 0;
}

/* ---------- main ---------- */

int capmoe_hfconfig_parse(capmoe_hfconfig *cfg, const char *json, size_t len, const char *path,
                          capmoe_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!path) path = "config.json";
    /* NUL-terminated copy: the parser never reads past it. */
    char *text = malloc(len + 1);
    if (!text) return capmoe_set_error(err, "%s: out of memory", path);
    if (len) memcpy(text, json, len);
    text[len] = '\0';
    cJSON *root = cJSON_ParseWithLength(text, len + 1);
    free(text);
    if (!root) return capmoe_set_error(err, "%s: not valid JSON", path);
    ctx cx = {root, path, err}, *c = &cx;
    int rc = -1;
    const arch_defaults *ad = NULL;
    if (!cJSON_IsObject(root)) {
        capmoe_set_error(err, "%s: not a JSON object", path);
        goto out;
    }
    if (find_arch(c, &ad) != 0) goto out;
    cfg->arch = ad->arch;
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", ad->arch_name);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", ad->model_type);

    const cJSON *qc = get(root, "quantization_config");
    if (qc) {
        const cJSON *qm = cJSON_IsObject(qc) ? get(qc, "quant_method") : NULL;
        capmoe_set_error(err, "%s: quantization_config (%.64s) is not supported: only "
                         "unquantized F32/F16/BF16 checkpoints", path,
                         cJSON_IsString(qm) ? qm->valuestring : "unknown method");
        goto out;
    }
    const cJSON *act = get(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
        capmoe_set_error(err, "%s: hidden_act '%.64s' is not supported (only 'silu')", path,
                         cJSON_IsString(act) ? act->valuestring : "(not a string)");
        goto out;
    }

    if (need_pos(c, "vocab_size", &cfg->vocab_size) || need_pos(c, "hidden_size",
        &cfg->hidden_size) || need_pos(c, "num_hidden_layers", &cfg->n_layers) ||
        need_pos(c, "num_attention_heads", &cfg->n_heads))
        goto out;
    if (cfg->n_layers > CAPMOE_MAX_LAYERS) {
        capmoe_set_error(err, "%s: num_hidden_layers (%d) exceeds the supported maximum of %d",
                         path, cfg->n_layers, CAPMOE_MAX_LAYERS);
        goto out;
    }
    /* Absent: the class default (as transformers); null: num_attention_heads. */
    int kv_def = ad->n_kv_heads ? ad->n_kv_heads : cfg->n_heads;
    if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "num_key_value_heads")))
        kv_def = cfg->n_heads;
    if (opt_int(c, "num_key_value_heads", kv_def, 1, &cfg->n_kv_heads) != 0) goto out;
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        capmoe_set_error(err, "%s: num_attention_heads (%d) is not a multiple of "
                         "num_key_value_heads (%d)", path, cfg->n_heads, cfg->n_kv_heads);
        goto out;
    }
    /* DeepSeek: head_dim is qk_rope_head_dim whatever the file says (set
     * below), as DeepseekV2Config / DeepseekV3Config set it */
    int deepseek = ad->arch == CAPMOE_ARCH_DEEPSEEK_V2 || ad->arch == CAPMOE_ARCH_DEEPSEEK_V3;
    int hd = 2;
    int r = deepseek ? 1 : get_int(c, "head_dim", &hd);
    if (r < 0) goto out;
    if (r == 0) {
        if (cfg->hidden_size % cfg->n_heads != 0) {
            capmoe_set_error(err, "%s: hidden_size (%d) is not a multiple of "
                             "num_attention_heads (%d) and head_dim is not given", path,
                             cfg->hidden_size, cfg->n_heads);
            goto out;
        }
        hd = cfg->hidden_size / cfg->n_heads;
    } else if (hd <= 0) {
        capmoe_set_error(err, "%s: head_dim must be positive (got %d)", path, hd);
        goto out;
    }
    if (hd % 2 != 0) {
        capmoe_set_error(err, "%s: head_dim (%d) must be even for rotary embeddings", path, hd);
        goto out;
    }
    cfg->head_dim = hd;
    if (opt_int(c, "max_position_embeddings", ad->max_position_embeddings, 1,
                &cfg->max_position_embeddings) != 0)
        goto out;
    double eps = 0;
    if (opt_num(c, root, "rms_norm_eps", "rms_norm_eps", ad->rms_norm_eps, &eps) != 0) goto out;
    cfg->rms_norm_eps = (float)eps;
    if (parse_rope(c, ad, deepseek, &cfg->rope) != 0) goto out;
    cfg->rope_theta = cfg->rope.theta;
    if (cfg->rope.type == CAPMOE_ROPE_YARN && cfg->rope.original_max_position == 0)
        cfg->rope.original_max_position = cfg->max_position_embeddings;
    if (cfg->rope.type == CAPMOE_ROPE_YARN && cfg->rope.factor == 0)
        cfg->rope.factor = (double)cfg->max_position_embeddings / cfg->rope.original_max_position;
    cfg->n_group = cfg->topk_group = 1;
    cfg->routed_scaling_factor = 1.0;
    cfg->moe_layer_freq = 1;
    if (parse_dtype(c, &cfg->dtype) != 0) goto out;
    if (opt_bool(c, "tie_word_embeddings", 0, &cfg->tie_word_embeddings) != 0) goto out;
    if (parse_token_ids(c, cfg, ad) != 0) goto out;

    const char *n_exp_key = "num_experts";
    switch (ad->arch) {
    case CAPMOE_ARCH_MIXTRAL:
        n_exp_key = "num_local_experts";
        if (need_pos(c, "num_local_experts", &cfg->n_experts) ||
            need_pos(c, "num_experts_per_tok", &cfg->top_k) ||
            need_pos(c, "intermediate_size", &cfg->moe_intermediate_size))
            goto out;
        cfg->intermediate_size = cfg->moe_intermediate_size;
        cfg->norm_topk_prob = 1;
        if (opt_int(c, "sliding_window", 0, 0, &cfg->sliding_window) != 0) goto out;
        for (int l = 0; l < cfg->n_layers; l++) cfg->layer_is_moe[l] = 1;
        break;
    case CAPMOE_ARCH_OLMOE: {
        if (need_pos(c, "num_experts", &cfg->n_experts) ||
            need_pos(c, "num_experts_per_tok", &cfg->top_k) ||
            need_pos(c, "intermediate_size", &cfg->moe_intermediate_size))
            goto out;
        cfg->intermediate_size = cfg->moe_intermediate_size;
        if (opt_bool(c, "norm_topk_prob", 0, &cfg->norm_topk_prob) != 0) goto out;
        const cJSON *clip = get(root, "clip_qkv");
        if (clip) {
            capmoe_set_error(err, "%s: clip_qkv is set: clipping of q/k/v is not supported",
                             path);
            goto out;
        }
        int bias = 0;
        if (opt_bool(c, "attention_bias", 0, &bias) != 0) goto out;
        cfg->qkv_bias = cfg->o_bias = bias;
        cfg->qk_norm = CAPMOE_QK_NORM_FULL;
        for (int l = 0; l < cfg->n_layers; l++) cfg->layer_is_moe[l] = 1;
        break;
    }
    case CAPMOE_ARCH_QWEN2_MOE:
    case CAPMOE_ARCH_QWEN3_MOE: {
        int qwen2 = ad->arch == CAPMOE_ARCH_QWEN2_MOE;
        if (refuse_if_true(c, "use_sliding_window", "sliding-window attention is not "
                           "supported for this architecture") != 0)
            goto out;
        if (opt_int(c, "num_experts", 0, 0, &cfg->n_experts) != 0) goto out;
        if (!get(root, "num_experts")) {
            /* Qwen3-MoE maps num_local_experts onto num_experts. */
            int r2 = get_int(c, "num_local_experts", &cfg->n_experts);
            if (r2 < 0) goto out;
            if (r2 == 0) {
                capmoe_set_error(err, "%s: missing required key num_experts", path);
                goto out;
            }
            if (cfg->n_experts < 0) {
                capmoe_set_error(err, "%s: num_local_experts must be >= 0", path);
                goto out;
            }
            n_exp_key = "num_local_experts";
        }
        if (cfg->n_experts > 0 && (need_pos(c, "num_experts_per_tok", &cfg->top_k) ||
                                   need_pos(c, "moe_intermediate_size",
                                            &cfg->moe_intermediate_size)))
            goto out;
        if (opt_int(c, "intermediate_size", ad->intermediate_size, 1,
                    &cfg->intermediate_size) != 0)
            goto out;
        if (opt_bool(c, "norm_topk_prob", 0, &cfg->norm_topk_prob) != 0) goto out;
        if (qwen2) {
            if (opt_int(c, "shared_expert_intermediate_size",
                        ad->shared_expert_intermediate_size, 0,
                        &cfg->shared_expert_intermediate_size) != 0 ||
                opt_bool(c, "qkv_bias", 1, &cfg->qkv_bias) != 0)
                goto out;
            cfg->o_bias = 0;
            cfg->qk_norm = CAPMOE_QK_NORM_NONE;
        } else {
            int bias = 0;
            if (opt_bool(c, "attention_bias", 0, &bias) != 0) goto out;
            cfg->qkv_bias = cfg->o_bias = bias;
            cfg->qk_norm = CAPMOE_QK_NORM_HEAD;
        }
        cfg->sliding_window = 0;
        if (parse_moe_layers(c, cfg) != 0) goto out;
        cfg->shared_expert_gate = qwen2 && cfg->shared_expert_intermediate_size > 0;
        break;
    }
    case CAPMOE_ARCH_DEEPSEEK_V2:
    case CAPMOE_ARCH_DEEPSEEK_V3:
        n_exp_key = "n_routed_experts";
        if (parse_deepseek(c, cfg, ad->arch == CAPMOE_ARCH_DEEPSEEK_V3 ? &DS_V3 : &DS_V2,
                           ad->intermediate_size) != 0)
            goto out;
        break;
    }
    if (cfg->n_experts > CAPMOE_MAX_EXPERTS) {
        capmoe_set_error(err, "%s: %s (%d) exceeds the supported maximum of %d", path, n_exp_key,
                         cfg->n_experts, CAPMOE_MAX_EXPERTS);
        goto out;
    }
    if (cfg->n_experts > 0 && cfg->top_k > cfg->n_experts) {
        capmoe_set_error(err, "%s: num_experts_per_tok (%d) exceeds %s (%d)", path, cfg->top_k,
                         n_exp_key, cfg->n_experts);
        goto out;
    }
    if (check_sizes(c, cfg) != 0) goto out;
    cfg->n_moe_layers = 0;
    for (int l = 0; l < cfg->n_layers; l++) cfg->n_moe_layers += cfg->layer_is_moe[l];
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int capmoe_hfconfig_load(capmoe_hfconfig *cfg, const char *dir, capmoe_error *err) {
    char *path = capmoe_path_join(dir, "config.json");
    if (!path) return capmoe_set_error(err, "%s: out of memory", dir);
    size_t len = 0;
    char *text = capmoe_read_file(path, &len, err);
    int rc = -1;
    if (text) rc = capmoe_hfconfig_parse(cfg, text, len, path, err);
    free(text);
    free(path);
    return rc;
}
