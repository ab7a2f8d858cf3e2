/* model_internal.h - the model's private layout, shared by model.c (load),
 * forward.c (attention + forward), mla.c (DeepSeek's latent attention) and
 * moe.c (the MoE block). */
#ifndef CAPMOE_MODEL_INTERNAL_H
#define CAPMOE_MODEL_INTERNAL_H

#include "capmoe/comm.h"
#include "capmoe/dispatch.h"
#include "capmoe/ep.h"
#include "capmoe/ops.h"
#include "capmoe/par.h"
#include "capmoe/hfconfig.h"
#include "capmoe/model.h"
#include "capmoe/safetensors.h"

/* Weights of one decoder layer; every pointer is either into the mmap or into
 * a buffer listed in capmoe_model.owned. Shapes as [out, in]. */
struct capmoe_layer {
    const float *attn_norm, *ffn_norm;       /* [H] */
    capmoe_wmat wq, wk, wv, wo;              /* [nH*d, H] [nKV*d, H] [nKV*d, H] [H, nH*d] */
    capmoe_wmat wqkv;                        /* [nH*d + 2*nKV*d, H]: wq, wk, wv stacked
                                              * (panels; once stacked, wq, wk, wv are
                                              * NULL and no longer read) */
    const float *bq, *bk, *bv, *bo;          /* biases or NULL */
    const float *q_norm, *k_norm;            /* [nH*d] / [nKV*d] (FULL) or [d] (HEAD) */
    /* Multi-head Latent Attention (cfg.kv_lora_rank > 0; dn, dr, dv the
     * qk_nope / qk_rope / v head dims, kvl the latent, ql the query latent).
     * wqkv then stacks [q_a_proj (or q_proj, in wq); kv_a_proj_with_mqa]. */
    capmoe_wmat wq_a;                        /* [ql, H] (q_lora_rank > 0) */
    capmoe_wmat wkv_a;                       /* [kvl + dr, H] */
    capmoe_wmat wq_b;                        /* [nH*(dn+dr), ql] */
    const float *bq_a, *bkv_a;               /* attention_bias: [ql], [kvl + dr] */
    const float *q_a_norm, *kv_a_norm;       /* [ql], [kvl] */
    capmoe_wmat wkv_b;                       /* [nH*(dn+dv), kvl]: keys and values of the
                                              * expanded form */
    capmoe_wmat *w_uk_t;                     /* per head [kvl, dn] (kv_b's key rows,
                                              * transposed): queries into the latent */
    capmoe_wmat *w_uv;                       /* per head [dv, kvl] (kv_b's value rows):
                                              * attention outputs out of the latent */
    int is_moe;
    const float *router;                     /* [E, H] */
    const float *router_bias;                /* DeepSeek-V3 e_score_correction_bias [E] */
    capmoe_wmat *w_gate, *w_up, *w_down;     /* per expert: [I, H] [I, H] [H, I] */
    capmoe_wmat sh_gate, sh_up, sh_down;     /* shared expert(s) [Is, H] [Is, H] [H, Is] */
    const float *sh_gate_w;                  /* Qwen2-MoE shared_expert_gate [1, H], or NULL
                                              * (DeepSeek: no gate) */
    capmoe_wmat d_gate, d_up, d_down;        /* dense MLP [Id, H] [Id, H] [H, Id] */
    struct capmoe_dnnl_mat **bf_gu, **bf_dn; /* --compute bf16: per expert, gate and up
                                              * packed together, down (moe_bf16.c) */
    struct capmoe_dnnl_mat *bf_q, *bf_k, *bf_v, *bf_o; /* --compute bf16: attention
                                              * projections, GQA only (linear_bf16.c) */
};

struct capmoe_model;

/* Rows of a set of experts [e0, e1) gathered for their products: expert e
 * owns rows [off[e - e0], off[e - e0 + 1]) of x, g, u (I wide) and y (H
 * wide). When h is set, row i is a copy of h's row tok[i], made by the
 * runner just before the expert's products (the thread transport); when h
 * is NULL, x is already filled (the MPI transport). */
typedef struct capmoe_expert_set {
    const struct capmoe_layer *L;
    int e0, e1;
    const int *off;
    const float *h;
    const int *tok;
    float *x, *g, *u, *y;
} capmoe_expert_set;

/* Runs a set of experts on par (m->par: the whole pool, in column items when
 * the batches are small; another pool: one expert after another). */
void capmoe_moe_run_set(struct capmoe_model *m, const capmoe_expert_set *s, capmoe_par *par);

/* Where the experts of a dispatch run: run() fills m->ye with the output
 * row of every pair of m->plan, in plan order, and adds its per-rank
 * figures to ls (may be NULL). */
typedef struct capmoe_moe_transport {
    const char *name;
    int (*run)(struct capmoe_model *m, const struct capmoe_layer *L, const float *h,
               const capmoe_dispatch_cfg *cfg, capmoe_layer_stats *ls, capmoe_error *err);
} capmoe_moe_transport;

extern const capmoe_moe_transport capmoe_moe_threads; /* moe.c: rank worker threads */

/* --compute bf16 (moe_bf16.c): packs every local expert for oneDNN (at
 * load, before the panel repacking, from the row-major weights), frees
 * them, and runs a set of experts (order: its n_active experts with rows,
 * largest first) on the whole pool; -1 when it cannot (then float32). */
int capmoe_moe_bf16_load(struct capmoe_model *m, capmoe_error *err);
void capmoe_moe_bf16_free(struct capmoe_model *m);
int capmoe_moe_run_set_bf16(struct capmoe_model *m, const capmoe_expert_set *s, const int *order,
                            int n_active);
/* --compute bf16 for the attention projections (linear_bf16.c): packs q, k,
 * v, o of every layer (GQA; latent attention keeps float32), frees them;
 * y [M, *] (ldy) columns col0[i].. = x [M, K] (ldx) times w[i]^T for the
 * n_w <= 4 matrices, on the pool. 0, or -1 when it cannot (then float32). */
int capmoe_attn_bf16_load(struct capmoe_model *m, capmoe_error *err);
void capmoe_attn_bf16_free(struct capmoe_model *m);
int capmoe_bf16_linear(struct capmoe_model *m, float *y, int ldy, const float *x, int ldx, int M,
                       int K, struct capmoe_dnnl_mat *const *w, const int *col0, int n_w);
extern const capmoe_moe_transport capmoe_moe_mpi;     /* moe_mpi.c: MPI ranks */

/* --ep mpi: this rank failed before reaching an MoE layer of the step; the
 * other ranks learn it in that layer's count exchange, and every rank stops
 * there (moe_mpi.c). */
void capmoe_moe_mpi_fail(struct capmoe_model *m);

/* CPU seconds of the calling thread. */
double capmoe_thread_cpu_seconds(void);

/* Grow-only scratch buffer. */
struct capmoe_buf {
    float *p;
    size_t cap; /* floats */
};

struct capmoe_model {
    capmoe_hfconfig cfg;
    capmoe_st *st;
    void **owned;            /* converted or realigned weights we allocated */
    int n_owned, cap_owned;
    size_t alloc_bytes, mapped_bytes;
    capmoe_wmat embed;       /* [V, H] */
    const float *final_norm; /* [H] */
    capmoe_wmat lm_head;     /* [V, H] (== embed when tied) */
    struct capmoe_layer *layers;
    float *inv_freq;         /* [d/2] */
    const capmoe_moe_transport *xport; /* threads, or MPI under --ep mpi */
    capmoe_comm *comm;       /* borrowed; NULL without --ep mpi */
    int e0, e1;              /* experts whose weights this process holds (all without MPI) */
    struct capmoe_buf xr;    /* MPI: rows received for this process's experts */
    long long *a2a;          /* MPI: counts and displacements (8 x R) */
    int *a2a_cnt;            /* MPI: pair counts sent / received per (rank, local expert),
                              * with a status word each, then local expert offsets */
    int cur_layer;           /* MoE layer being run (moe.c) */
    int mpi_last_layer;      /* MPI: last layer whose exchange was attempted this forward */
    int comm_broken;         /* MPI: an exchange failed (a rank failed, MPI error, timeout):
                              * the group cannot be used again */
    char comm_broken_msg[CAPMOE_ERR_MSG];
    float rope_af;           /* YaRN's attention factor on cos and sin (1: none) */
    capmoe_router route;     /* the model's router (bias: per layer, set by moe.c) */
    int mla_form;            /* capmoe_model_opts.mla_form */
    capmoe_weights weights;  /* capmoe_model_opts.weights */
    capmoe_quant_scope quantize; /* capmoe_model_opts.quantize */
    double pack_seconds;     /* time repacking (and quantizing) the weights at load */
    float mla_scale;         /* softmax scale of latent attention */
    capmoe_ep_pool *ep;
    capmoe_par *par;         /* splits small products across cores (ops.h) */
    capmoe_par **rank_par;   /* per EP rank: a single-thread pool (its scratch) */
    capmoe_dispatch_plan plan;
    /* scratch, grown per forward */
    struct capmoe_buf x, h, q, k, v, att, tmp, scores, rope;
    struct capmoe_buf router, xe, ge, ue, ye, sh1, sh2;
    struct capmoe_buf qx, qg; /* Q8/Q4 experts: their rows of xe / ge quantized (quant.h) */
    int *tok_rank, *tok_pos;
    size_t cap_tok;
    int *seq_t0;             /* first batch row of each sequence */
    int *expert_order;       /* [E] experts by decreasing load (moe.c) */
    /* --compute bf16 (moe_bf16.c) */
    int compute;             /* capmoe_compute */
    int bf16_min_rows;       /* BF16 products when an expert has at least this many rows */
    struct capmoe_dnnl *dnnl;
    struct capmoe_buf bx, bg; /* BF16 rows of the experts' inputs and of g (2 per float) */
    int *bf_row;             /* per active expert: first padded row, padded rows */
    size_t cap_bf_row;
    int kv_bf16;             /* --kv-dtype bf16: new caches store BF16 */
    struct capmoe_buf kvf;   /* per thread: a BF16 cache's K and V rows as float32 */
    int kvf_ctx;             /* positions per thread in kvf this forward */
    int *attn_items;         /* attention items (forward.c: sequence, head range, query rows) */
    size_t cap_attn_items;
    size_t cap_seq;
    /* latent attention scratch (mla.c) */
    struct capmoe_buf mla_a, mla_q, mla_qa, mla_lat, mla_ctx, mla_att, mla_out, mla_kv, mla_k;
    int *mla_rows;           /* batch rows of the sequences in the absorbed form */
    size_t cap_mla_rows;
    int *mla_items;          /* (sequence, head range, first row) of the absorbed attention */
    size_t cap_mla_items;
};

struct capmoe_kv {
    int n_layers, row;       /* row = nKV * d floats per token (MLA: kvl + dr) */
    int n_mats;              /* 2: keys and values; 1: latent attention's
                              * [latent | rotated rope key] rows, in k */
    int len, cap, max;
    int bf16;                /* --kv-dtype bf16: k[l], v[l] hold BF16 (uint16_t) elements */
    float **k, **v;          /* per layer [cap, row] (v[l] NULL when n_mats == 1) */
};

int capmoe_buf_reserve(struct capmoe_buf *b, size_t n);
void capmoe_buf_free(struct capmoe_buf *b);

/* Multi-head Latent Attention of one layer over the batch: h [T, H] (the
 * normed hidden states), each sequence's new latents written to its cache
 * rows kv->len .. (the caller advances len after the last layer), the
 * o_proj output to out [T, H]. Uses m->seq_t0, m->tok_pos and the cos/sin
 * table m->rope of the forward pass. */
int capmoe_mla_attention(struct capmoe_model *m, const struct capmoe_layer *L, int l,
                         const capmoe_batch_seq *seqs, int n_seqs, const float *h, float *out,
                         capmoe_error *err);

/* The MoE block (router, dispatch, experts on ranks, combine, shared expert)
 * over T rows of h, written to out [T, H]. */
int capmoe_moe_forward(struct capmoe_model *m, const struct capmoe_layer *L, int layer_idx,
                       const float *h, float *out, int T, const capmoe_dispatch_cfg *cfg,
                       const int *tok_rank, capmoe_layer_stats *ls, capmoe_error *err);

#endif
