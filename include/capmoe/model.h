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
                                 lm_head keep theirs. */
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
double capmoe_model_pack_seconds(const capmoe_model *m);
/* Bytes of weights read per token: attention, router, top-k experts, shared
 * expert, lm_head, each at its stored element size. */
size_t capmoe_model_active_bytes_per_token(const capmoe_model *m);

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

/* --ep mpi. This rank cannot run the step it was asked to (an unreadable
 * plan, no memory): it tells the others at the first MoE layer's exchange,
 * where every rank's forward then fails. */
void capmoe_model_forward_abandon(capmoe_model *m);
/* --ep mpi: 1 once an exchange failed (a rank failed or died, an MPI error,
 * a timeout): the process group cannot be used again. */
int capmoe_model_comm_broken(const capmoe_model *m);

#endif
