/* model.h - a loaded MoE checkpoint and its batched forward pass.
 *
 * The model owns its weights (mmap'd F32 used in place, F16/BF16 converted to
 * float32 once at load), its scratch buffers and its expert-parallel rank
 * workers. One thread at a time may call capmoe_model_forward (the scheduler
 * thread in the server, main in the CLI). KV caches are per sequence and owned
 * by the caller. */
#ifndef CAPMOE_MODEL_H
#define CAPMOE_MODEL_H

#include "capmoe/comm.h"
#include "capmoe/common.h"
#include "capmoe/hfconfig.h"
#include "capmoe/dispatch.h"
#include "capmoe/quant.h"
#include "capmoe/stats.h"

typedef struct capmoe_model capmoe_model;

/* How latent attention (DeepSeek) attends: AUTO picks, per sequence and
 * step, the cheaper of the expanded form (keys and values of every head
 * rebuilt from the cached latents: prompts) and the absorbed form (queries
 * projected into the latent space: decode); the other two force one (tests). */
typedef enum capmoe_mla_form {
    CAPMOE_MLA_AUTO = 0,
    CAPMOE_MLA_EXPANDED,
    CAPMOE_MLA_ABSORBED
} capmoe_mla_form;

/* Precision of the experts' large products (--compute). */
typedef enum capmoe_compute { CAPMOE_COMPUTE_F32 = 0, CAPMOE_COMPUTE_BF16 } capmoe_compute;
/* "f32" / "bf16"; parse: -1 when neither. */
const char *capmoe_compute_name(capmoe_compute c);
int capmoe_compute_parse(const char *s);
/* The compute precision a loaded model runs. */
capmoe_compute capmoe_model_compute(const capmoe_model *m);
/* Element type of the KV cache (--kv-dtype): float32 (exact, the default)
 * or BF16 (half the memory; keys and values rounded to nearest even when
 * stored, attention computed in float32). Names as capmoe_compute's. */
typedef enum capmoe_kv_dtype { CAPMOE_KV_F32 = 0, CAPMOE_KV_BF16 } capmoe_kv_dtype;
capmoe_kv_dtype capmoe_model_kv_dtype(const capmoe_model *m);

typedef struct capmoe_model_opts {
    int max_ranks;     /* rank worker threads to create (>= any ep_ranks used); 0 = 8 */
    int threads;       /* threads for small matrix products (decode); 0 = cores */
    capmoe_comm *comm; /* --ep mpi: this process is rank r of R; it loads experts
                          [r*E/R, (r+1)*E/R) only, forwards its own sequences, and
                          every MoE layer exchanges pairs with the other ranks (all
                          ranks call capmoe_model_forward in lockstep, a rank without
                          sequences too; dispatch cfg.ep_ranks must be R). Borrowed.
                          NULL: one process, experts on rank worker threads. */
    capmoe_mla_form mla_form; /* latent attention (DeepSeek) only */
    capmoe_weights weights;   /* --weights: the routed experts' matrices quantized at
                                 load to Q8 or Q4 (quant.h), in parallel on the
                                 model's threads; STORED keeps the checkpoint's dtype.
                                 Attention, router, shared experts, dense layers and
                                 lm_head keep theirs unless quantize is ALL. */
    capmoe_quant_scope quantize; /* --quantize: EXPERTS (the default) or ALL (quant.h);
                                 only with weights Q8/Q4 */
    capmoe_compute compute;   /* F32 (exact, the default) or BF16: the experts'
                                 prefill-sized products in BF16 through oneDNN
                                 (float32 accumulation), their weights packed a
                                 second time at load */
    int bf16_min_rows;        /* BF16: products when an expert has at least this
                                 many rows (0: 16); fewer stay on the float32
                                 small-M kernels (decode) */
    capmoe_kv_dtype kv_dtype; /* of the caches capmoe_kv_new makes for this model;
                                 BF16 is refused for latent attention (DeepSeek) */
} capmoe_model_opts;

int capmoe_model_load(capmoe_model **out, const char *dir, const capmoe_model_opts *opts,
                      capmoe_error *err);
void capmoe_model_free(capmoe_model *m);
const capmoe_hfconfig *capmoe_model_config(const capmoe_model *m);
/* Bytes of weight memory the model allocated: the weight matrices repacked
 * into panel layout (panel.h; their arena, rounded to 2 MiB), small tensors
 * converted to float32, matrices whose file data was not aligned to their
 * element size (copied before repacking, and kept). */
size_t capmoe_model_alloc_bytes(const capmoe_model *m);
/* Bytes of weights still used in place from the mapped files, in their
 * stored dtype: the embedding table and small float32 tensors (the repacked
 * matrices' mapped pages are handed back after loading). */
size_t capmoe_model_mapped_bytes(const capmoe_model *m);
/* --weights of the loaded model, and the wall-clock seconds the load spent
 * repacking its weight matrices into panels, in parallel (with q8 / q4 the
 * experts' quantization included). */
capmoe_weights capmoe_model_weights(const capmoe_model *m);
capmoe_quant_scope capmoe_model_quantize(const capmoe_model *m);
double capmoe_model_pack_seconds(const capmoe_model *m);
/* Bytes of weights read per token: attention, router, top-k experts, shared
 * expert, lm_head, each at its stored element size. */
size_t capmoe_model_active_bytes_per_token(const capmoe_model *m);
/* Bytes of one routed expert's weights (gate, up, down) as the engine reads
 * them: what a dispatch streams per activated expert and MoE layer (0 for a
 * dense model). */
size_t capmoe_model_expert_bytes(const capmoe_model *m);

/* KV cache bytes per token of a sequence, all layers: what the cache holds
 * (latent attention: the kv_lora_rank latent and the rope key, float32), or
 * with expanded = 1 what a cache of every head's keys and values would hold
 * (the same for the other architectures). */
size_t capmoe_model_kv_bytes_per_token(const capmoe_model *m, int expanded);

/* Per-sequence KV cache. Grows on demand up to max_tokens (the model's
 * context length when 0). */
typedef struct capmoe_kv capmoe_kv;
capmoe_kv *capmoe_kv_new(const capmoe_model *m, int max_tokens);
void capmoe_kv_free(capmoe_kv *kv);
int capmoe_kv_len(const capmoe_kv *kv);
int capmoe_kv_max(const capmoe_kv *kv);
void capmoe_kv_clear(capmoe_kv *kv);
size_t capmoe_kv_bytes(const capmoe_kv *kv); /* memory currently allocated */

/* One sequence's share of a batch. */
typedef enum capmoe_logits_want {
    CAPMOE_LOGITS_NONE = 0,
    CAPMOE_LOGITS_LAST,   /* one row: the sequence's last new token */
    CAPMOE_LOGITS_ALL     /* one row per new token */
} capmoe_logits_want;

typedef struct capmoe_batch_seq {
    capmoe_kv *kv;            /* appended to: kv_len grows by n_tokens */
    const int32_t *tokens;    /* new tokens of this step */
    int n_tokens;
    capmoe_logits_want want;
    int rank;                 /* expert-parallel rank the sequence lives on */
} capmoe_batch_seq;

/* One forward pass over all new tokens of all sequences (batch order =
 * sequence order). Every MoE layer dispatches all T tokens at once with cfg.
 * logits receives the requested rows in batch order, vocab_size floats each
 * (caller-allocated). stats may be NULL. On error nothing is appended to any
 * cache. */
int capmoe_model_forward(capmoe_model *m, const capmoe_batch_seq *seqs, int n_seqs,
                         const capmoe_dispatch_cfg *cfg, float *logits,
                         capmoe_forward_stats *stats, capmoe_error *err);

/* Where a dispatch stops being memory-bound, measured on this machine
 * (dispatch-spec.md section 1 "Memory-bound dispatch", --regime-tokens auto).
 * Every MoE layer's block runs on T random hidden states (policy none;
 * T = 1, 2, 3, 4, 6, 8, 11, 16, ...: powers of sqrt 2 up to max_tokens),
 * best of `reps` passes. A pass costs reading every expert it activates
 * plus work proportional to T: a fit over every point, t(T) = ce *
 * activated(T) + b * T, least squares on the relative error (weights
 * 1/t^2), gives a = ce * E (reading every expert) and the crossover
 * T* = a / b, where the per-token work equals the cost of reading the
 * experts. Below T* a dispatch is memory-bound (its time follows the
 * experts it activates); above it, compute-bound (its time follows the
 * largest load). crossover = round(T*), clamped to [1, max_tokens];
 * max_tokens when the time does not grow with T (b <= 0), 1 when it does
 * not grow with the activated experts (a <= 0). Not available under --ep
 * mpi (experts live on other processes). Uses the model's scratch: call it
 * where a forward could run. */
#define CAPMOE_PROBE_MAX 16
typedef struct capmoe_regime_probe {
    int n;                               /* points measured */
    int tokens[CAPMOE_PROBE_MAX];        /* T of each point */
    double seconds[CAPMOE_PROBE_MAX];    /* best time of one pass over every MoE layer */
    double activated[CAPMOE_PROBE_MAX];  /* mean experts activated per MoE layer */
    int n_experts, moe_layers;
    double fixed_seconds;                /* a of the fit: reading every expert */
    double per_token_seconds;            /* b of the fit */
    int crossover;                       /* regime_tokens to use */
} capmoe_regime_probe;
int capmoe_model_regime_probe(capmoe_model *m, int max_tokens, int reps, capmoe_regime_probe *out,
                              capmoe_error *err);

/* --ep mpi. This rank cannot run the step it was asked to (an unreadable
 * plan, no memory): it tells the others at the first MoE layer's exchange,
 * where every rank's forward then fails. */
void capmoe_model_forward_abandon(capmoe_model *m);
/* --ep mpi: 1 once an exchange failed (a rank failed or died, an MPI error,
 * a timeout): the process group cannot be used again. */
int capmoe_model_comm_broken(const capmoe_model *m);

#endif
