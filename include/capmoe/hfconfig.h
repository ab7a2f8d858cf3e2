/* hfconfig.h - config.json of supported Hugging Face MoE architectures.
 *
 * Accepts both the older layout (top-level rope_theta, torch_dtype) and the
 * newer one (rope_parameters, dtype); JSON null is treated as absent.
 * Unsupported architectures or features are refused with a message naming
 * the key. */
#ifndef CAPMOE_HFCONFIG_H
#define CAPMOE_HFCONFIG_H

#include "capmoe/common.h"
#include "capmoe/safetensors.h"

typedef enum capmoe_arch {
    CAPMOE_ARCH_MIXTRAL = 0,   /* MixtralForCausalLM */
    CAPMOE_ARCH_QWEN2_MOE,     /* Qwen2MoeForCausalLM */
    CAPMOE_ARCH_OLMOE,         /* OlmoeForCausalLM */
    CAPMOE_ARCH_QWEN3_MOE      /* Qwen3MoeForCausalLM */
} capmoe_arch;

typedef enum capmoe_qk_norm {
    CAPMOE_QK_NORM_NONE = 0,
    CAPMOE_QK_NORM_FULL,  /* OLMoE: RMSNorm over the whole q / k projection */
    CAPMOE_QK_NORM_HEAD   /* Qwen3-MoE: RMSNorm over each head (head_dim) */
} capmoe_qk_norm;

#define CAPMOE_MAX_LAYERS 256

typedef struct capmoe_hfconfig {
    capmoe_arch arch;
    char arch_name[64];        /* e.g. "MixtralForCausalLM" */
    char model_type[32];       /* e.g. "mixtral" */
    int vocab_size;
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    int intermediate_size;        /* dense MLP layers (Qwen2/3 mlp_only_layers) */
    int moe_intermediate_size;    /* each routed expert (Mixtral: intermediate_size) */
    int n_experts;
    int top_k;
    int shared_expert_intermediate_size; /* Qwen2-MoE; 0 = no shared expert */
    int norm_topk_prob;          /* 1: top-k weights renormalised (Mixtral always) */
    float rms_norm_eps;
    double rope_theta;
    int sliding_window;          /* 0 = none */
    int tie_word_embeddings;
    int qkv_bias;                /* q/k/v projections have a bias */
    int o_bias;                  /* o projection has a bias */
    capmoe_qk_norm qk_norm;
    unsigned char layer_is_moe[CAPMOE_MAX_LAYERS];
    int n_moe_layers;
    capmoe_dtype dtype;          /* torch_dtype / dtype: informational */
    int bos_token_id;            /* -1 when absent */
    int eos_token_id[8];         /* eos ids (config may give a list) */
    int n_eos;
} capmoe_hfconfig;

/* Parses DIR/config.json. */
int capmoe_hfconfig_load(capmoe_hfconfig *cfg, const char *dir, capmoe_error *err);
/* Parses a config.json text (used by tests). path is only used in messages. */
int capmoe_hfconfig_parse(capmoe_hfconfig *cfg, const char *json, size_t len,
                          const char *path, capmoe_error *err);
const char *capmoe_arch_name(capmoe_arch a);

#endif
