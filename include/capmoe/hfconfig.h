/* hfconfig.h - config.json of supported Hugging Face MoE architectures.
 *
 * Accepts both the older layout (top-level rope_theta, rope_scaling,
 * torch_dtype) and the newer one (rope_parameters, dtype); JSON null is
 * treated as absent (except where transformers gives null a meaning of its
 * own: num_key_value_heads, DeepSeek's q_lora_rank). Unsupported
 * architectures or features are refused with a message naming the key. */
#ifndef CAPMOE_HFCONFIG_H
#define CAPMOE_HFCONFIG_H

#include "capmoe/common.h"
#include "capmoe/safetensors.h"

typedef enum capmoe_arch {
    CAPMOE_ARCH_MIXTRAL = 0,   /* MixtralForCausalLM */
    CAPMOE_ARCH_QWEN2_MOE,     /* Qwen2MoeForCausalLM */
    CAPMOE_ARCH_OLMOE,         /* OlmoeForCausalLM */
    CAPMOE_ARCH_QWEN3_MOE,     /* Qwen3MoeForCausalLM */
    CAPMOE_ARCH_DEEPSEEK_V2,   /* DeepseekV2ForCausalLM */
    CAPMOE_ARCH_DEEPSEEK_V3    /* DeepseekV3ForCausalLM (also Kimi-K2, Moonlight) */
} capmoe_arch;

/* How the router turns its logits into expert choices and weights
 * (dispatch-spec.md section 1, and "Routers other than softmax top-k"). */
typedef enum capmoe_router_kind {
    CAPMOE_ROUTER_SOFTMAX = 0,   /* softmax, top-k (Mixtral, OLMoE, Qwen) */
    CAPMOE_ROUTER_DEEPSEEK_V2,   /* softmax; greedy or group_limited_greedy (group = max p) */
    CAPMOE_ROUTER_DEEPSEEK_V3    /* sigmoid + e_score_correction_bias; group = sum of top-2 */
} capmoe_router_kind;

typedef enum capmoe_rope_type {
    CAPMOE_ROPE_DEFAULT = 0,
    CAPMOE_ROPE_YARN             /* DeepSeek-V2/V3 rope_scaling {"type": "yarn", ...} */
} capmoe_rope_type;

/* Rotary embedding parameters (rope_scaling / rope_parameters). The YaRN
 * fields are 0 when absent; core/rope.c derives the frequencies and the
 * scales from them as transformers does. */
typedef struct capmoe_rope_cfg {
    capmoe_rope_type type;
    double theta;
    double factor;               /* YaRN: scaling factor (> 0; null in the file:
                                  * max_position_embeddings / original) */
    int original_max_position;   /* YaRN: original_max_position_embeddings
                                  * (max_position_embeddings when absent) */
    double beta_fast, beta_slow; /* YaRN: 32 and 1 when absent */
    double mscale, mscale_all_dim; /* YaRN: 0 when absent */
    double attention_factor;     /* YaRN: 0 when absent (derived) */
    int truncate;                /* YaRN: 1 unless "truncate": false */
    int interleave;              /* rotate the pairs (2i, 2i+1) (DeepSeek's
                                  * layout) instead of (i, i + d/2) */
} capmoe_rope_cfg;

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
    int head_dim;                /* DeepSeek: qk_rope_head_dim (the rotary part) */
    int max_position_embeddings;
    int intermediate_size;        /* dense MLP layers (Qwen2/3 mlp_only_layers) */
    int moe_intermediate_size;    /* each routed expert (Mixtral: intermediate_size) */
    int n_experts;
    int top_k;
    int shared_expert_intermediate_size; /* Qwen2-MoE, DeepSeek (n_shared_experts x
                                          * moe_intermediate_size); 0 = none */
    int shared_expert_gate;      /* Qwen2-MoE: the shared expert has a sigmoid gate */
    int norm_topk_prob;          /* 1: top-k weights renormalised (Mixtral always;
                                  * DeepSeek-V2: 0 whatever the file says) */
    float rms_norm_eps;
    double rope_theta;           /* == rope.theta */
    capmoe_rope_cfg rope;
    /* Routers (DeepSeek; the others: SOFTMAX, groups 1, scale 1) */
    capmoe_router_kind router;
    int n_group, topk_group;     /* experts in n_group equal groups, topk_group kept per
                                  * token; 1 and 1 = no groups */
    double routed_scaling_factor;
    int n_shared_experts;        /* DeepSeek */
    int first_k_dense_replace;   /* DeepSeek: layers before it are dense */
    int moe_layer_freq;          /* DeepSeek: read, and (as transformers 5.17 does) not
                                  * used: every layer from first_k_dense_replace on is MoE */
    /* Multi-head Latent Attention (DeepSeek-V2/V3): kv_lora_rank > 0 */
    int q_lora_rank;             /* 0: plain q_proj (null in the config) */
    int kv_lora_rank;            /* the cached latent per token and layer */
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int sliding_window;          /* 0 = none */
    int tie_word_embeddings;
    /* quantization_config: only {"quant_method": "fp8", "weight_block_size":
     * [bn, bk]} is accepted (F8_E4M3 matrices with float32 weight_scale_inv of
     * [ceil(N/bn), ceil(K/bk)]; bn a multiple of 16, bk of 128); any other
     * quant_method is refused by name. fp8 = 0 without quantization_config. */
    int fp8;
    int fp8_block_n, fp8_block_k;
    int qkv_bias;                /* q/k/v projections have a bias (MLA: q_a_proj and
                                  * kv_a_proj_with_mqa, from attention_bias) */
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
