/* hfconfig.c - config.json of the supported Hugging Face MoE architectures.
 *
 * Defaults for absent keys follow the transformers configuration classes
 * (MixtralConfig, Qwen2MoeConfig, OlmoeConfig, Qwen3MoeConfig of transformers
 * 5.x); JSON null is treated as absent, except num_key_value_heads: null means
 * num_attention_heads (absent means the class default: 8 / 16 / heads / 4).
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
};
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
                                "Qwen3MoeForCausalLM)", c->path, a0->valuestring);
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
                            "mixtral, qwen2_moe, olmoe, qwen3_moe)", c->path, mt->valuestring);
}

/* rope_type / type of a rope_scaling or rope_parameters object: only the
 * plain ("default") rotary embedding is implemented. */
static int check_rope_type(ctx *c, const cJSON *obj, const char *key) {
    const cJSON *t = get(obj, "rope_type");
    const char *tk = "rope_type";
    if (!t) {
        t = get(obj, "type"); /* older spelling */
        tk = "type";
    }
    if (t && !cJSON_IsString(t))
        return capmoe_set_error(c->err, "%s: %s.%s must be a string", c->path, key, tk);
    if (t && strcmp(t->valuestring, "default") != 0)
        return capmoe_set_error(c->err, "%s: %s: rope type '%.64s' not supported (only "
                                "'default')", c->path, key, t->valuestring);
    if (!t && strcmp(key, "rope_scaling") == 0 && obj->child)
        return capmoe_set_error(c->err, "%s: rope_scaling is set but names no rope type; only "
                                "the default rotary embedding is supported", c->path);
    const cJSON *prf = get(obj, "partial_rotary_factor");
    if (prf && (!cJSON_IsNumber(prf) || prf->valuedouble != 1.0))
        return capmoe_set_error(c->err, "%s: %s.partial_rotary_factor other than 1 is not "
                                "supported", c->path, key);
    return 0;
}

static int parse_rope(ctx *c, const arch_defaults *ad, double *theta) {
    const cJSON *rs = get(c->root, "rope_scaling");
    if (rs) {
        if (!cJSON_IsObject(rs))
            return capmoe_set_error(c->err, "%s: rope_scaling must be an object or null",
                                    c->path);
        if (check_rope_type(c, rs, "rope_scaling") != 0) return -1;
    }
    const cJSON *rp = get(c->root, "rope_parameters");
    double top = 0;
    if (opt_num(c, c->root, "rope_theta", "rope_theta", ad->rope_theta, &top) != 0) return -1;
    if (rp) {
        if (!cJSON_IsObject(rp))
            return capmoe_set_error(c->err, "%s: rope_parameters must be an object or null",
                                    c->path);
        for (const cJSON *e = rp->child; e; e = e->next)
            if (cJSON_IsObject(e))
                return capmoe_set_error(c->err, "%s: rope_parameters.%s: per-layer-type rope "
                                        "parameters are not supported", c->path, e->string);
        if (check_rope_type(c, rp, "rope_parameters") != 0) return -1;
        return opt_num(c, rp, "rope_theta", "rope_parameters.rope_theta", top, theta);
    }
    *theta = top;
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
    int hd = 0;
    int r = get_int(c, "head_dim", &hd);
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
    if (parse_rope(c, ad, &cfg->rope_theta) != 0) goto out;
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
        break;
    }
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
