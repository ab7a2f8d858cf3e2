/* forward.c - the batched forward pass: embeddings, attention with per-sequence
 * KV caches (GQA, RoPE, q/k norms, sliding window; or DeepSeek's latent
 * attention, mla.c), MoE or dense MLP, logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/dnnl_matmul.h"
#include "capmoe/kern.h"
#include "capmoe/ops.h"
#include "model_internal.h"

int capmoe_kv_reserve(capmoe_kv *kv, int n);

/* Query rows per attention block: bounds the score scratch to
 * ATTN_QBLOCK x context floats whatever the prompt length. */
#define ATTN_QBLOCK 256
/* Query rows per attention item of a prompt (at most ATTN_QBLOCK). */
#define ATTN_QROWS 64
/* ints per attention item (attn_job.items) */
#define ATTN_ITEM 5

/* Score scratch per thread: a block of query rows of one head, or every
 * head of one decode row, against the longest context of the batch. */
static size_t attn_scratch(const capmoe_hfconfig *c, int max_q, int max_ctx) {
    size_t rows = (size_t)(max_q < ATTN_QBLOCK ? max_q : ATTN_QBLOCK);
    if (rows < (size_t)c->n_heads) rows = (size_t)c->n_heads;
    return rows * (size_t)max_ctx;
}

static int reserve_all(struct capmoe_model *m, int T, int n_seqs, int max_q, int max_ctx,
                       capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    size_t H = (size_t)c->hidden_size, qd = (size_t)c->n_heads * c->head_dim;
    size_t kd = (size_t)c->n_kv_heads * c->head_dim;
    size_t wide = H > qd + 2 * kd ? H : qd + 2 * kd; /* tmp: the o_proj output or q|k|v */
    if (capmoe_buf_reserve(&m->x, (size_t)T * H) || capmoe_buf_reserve(&m->h, (size_t)T * H) ||
        capmoe_buf_reserve(&m->q, (size_t)T * qd) || capmoe_buf_reserve(&m->k, (size_t)T * kd) ||
        capmoe_buf_reserve(&m->v, (size_t)T * kd) || capmoe_buf_reserve(&m->att, (size_t)T * qd) ||
        capmoe_buf_reserve(&m->tmp, (size_t)T * wide) ||
        capmoe_buf_reserve(&m->rope, (size_t)T * (size_t)c->head_dim) ||
        capmoe_buf_reserve(&m->scores, (size_t)capmoe_par_threads(m->par) *
                                           attn_scratch(c, max_q, max_ctx)))
        return capmoe_set_error(err, "out of memory for a batch of %d tokens", T);
    m->kvf_ctx = max_ctx; /* a BF16 cache's rows, converted per attention item */
    if (m->kv_bf16 && c->kv_lora_rank == 0 &&
        capmoe_buf_reserve(&m->kvf, (size_t)capmoe_par_threads(m->par) * 2 * (size_t)max_ctx * kd))
        return capmoe_set_error(err, "out of memory for a batch of %d tokens", T);
    if ((size_t)T > m->cap_tok) {
        int *a = realloc(m->tok_rank, (size_t)T * sizeof(int));
        if (a) m->tok_rank = a;
        int *b = realloc(m->tok_pos, (size_t)T * sizeof(int));
        if (b) m->tok_pos = b;
        if (!a || !b) return capmoe_set_error(err, "out of memory");
        m->cap_tok = (size_t)T;
    }
    if ((size_t)n_seqs > m->cap_seq) {
        int *a = realloc(m->seq_t0, (size_t)n_seqs * sizeof(int));
        if (a) m->seq_t0 = a;
        if (!a) return capmoe_set_error(err, "out of memory");
        m->cap_seq = (size_t)n_seqs;
    }
    return 0;
}

/* Decode steps have one or a few query rows per sequence: the heads
 * [h0, h1) of a row (whole GQA groups) go at once, reading each cache row
 * once (kern.h) instead of two tiny BLAS calls per head. Row i sits at
 * position p0 + i and sees keys [0, p0 + i]; S holds n_heads x (p0 + nq)
 * floats. */
#define ATTN_DIRECT_ROWS 4
/* The first cache position row i of a step from p0 sees. */
static int first_pos(int sw, int last) { return sw > 0 && last - sw + 1 > 0 ? last - sw + 1 : 0; }

/* K and V: the first group's slice of cache position kpos0 (row stride
 * ldk), covering positions kpos0 .. p0 + nq - 1. */
static void attend_direct(struct capmoe_model *m, const float *K, const float *V, size_t ldk,
                          int kpos0, int t0, int nq, int p0, int h0, int h1, float *S) {
    const capmoe_hfconfig *c = &m->cfg;
    int d = c->head_dim, nH = c->n_heads, kd = (int)ldk, qd = nH * d;
    int grp = nH / c->n_kv_heads, sw = c->sliding_window;
    float scale = 1.0f / sqrtf((float)d);
    for (int i = 0; i < nq; i++) {
        int last = p0 + i, first = first_pos(sw, last);
        int n = last + 1 - first;
        const float *Kf = K + (size_t)(first - kpos0) * ldk;
        const float *Vf = V + (size_t)(first - kpos0) * ldk;
        const float *q = m->q.p + (size_t)(t0 + i) * qd + (size_t)h0 * d;
        float *o = m->att.p + (size_t)(t0 + i) * qd + (size_t)h0 * d;
        capmoe_kern_attn_scores(S, n, q, h1 - h0, grp, d, Kf, kd, n, scale);
        for (int h = 0; h < h1 - h0; h++) {
            capmoe_softmax_row(S + (size_t)h * n, n);
            capmoe_kern_weighted_sum(o + (size_t)h * d, S + (size_t)h * n,
                                     Vf + (size_t)(h / grp) * d, kd, n, d);
        }
    }
}

/* Causal attention of one head of one sequence: its n new tokens (rows
 * t0..t0+n-1 of q) against its cache of L = p0 + n positions. S is this
 * thread's score scratch (ATTN_QBLOCK x L floats at most). */
static void attend_head(struct capmoe_model *m, const float *K, const float *V, int kd, int t0,
                        int q0, int q1, int p0, int hh, float *S) {
    const capmoe_hfconfig *c = &m->cfg;
    int d = c->head_dim, nH = c->n_heads;
    int qd = nH * d;
    int sw = c->sliding_window;
    float scale = 1.0f / sqrtf((float)d);
    /* Query rows [q0, q1) in blocks; block rows i0.. see keys [0, p0 + i0 + nb). */
    for (int i0 = q0; i0 < q1; i0 += ATTN_QBLOCK) {
        int nb = q1 - i0 < ATTN_QBLOCK ? q1 - i0 : ATTN_QBLOCK;
        int Lb = p0 + i0 + nb;
        const float *Q = m->q.p + (size_t)(t0 + i0) * qd + (size_t)hh * d;
        float *O = m->att.p + (size_t)(t0 + i0) * qd + (size_t)hh * d;
        capmoe_gemm_nt(NULL, S, Lb, Q, qd, capmoe_wmat_f32(K), kd, nb, Lb, d, scale, 0.0f);
        float inv[ATTN_QBLOCK];
        for (int i = 0; i < nb; i++) {
            /* row i sees keys [first, qpos]: exp(s - max) over those only,
             * the rest of the row zero (not exp(-inf)); the division by the
             * sum is applied to the output row (d values, not Lb) */
            float *row = S + (size_t)i * Lb;
            int qpos = p0 + i0 + i, first = first_pos(sw, qpos), n = qpos + 1 - first;
            float mx = -INFINITY;
            for (int j = first; j <= qpos; j++) mx = row[j] > mx ? row[j] : mx;
            float sum = mx == -INFINITY ? 0.0f : capmoe_kern_exp_sum(row + first, n, mx);
            if (sum == 0.0f) memset(row + first, 0, (size_t)n * sizeof(float));
            inv[i] = sum > 0.0f ? 1.0f / sum : 0.0f;
            if (first > 0) memset(row, 0, (size_t)first * sizeof(float));
            if (qpos + 1 < Lb) memset(row + qpos + 1, 0, (size_t)(Lb - qpos - 1) * sizeof(float));
        }
        capmoe_gemm_nn(O, qd, S, Lb, V, kd, nb, d, Lb);
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < d; j++) O[(size_t)i * qd + j] *= inv[i];
    }
}

/* Attention of the whole batch as items over the pool (capmoe_par_for): one
 * per decode-like sequence (a run of heads), one per head of a longer one,
 * so a long prompt's heads and many short decode rows balance alike. */
struct attn_job {
    struct capmoe_model *m;
    const capmoe_batch_seq *seqs;
    int l;
    const int *items;    /* (sequence, first head, end head, query rows begin, end) */
    size_t scratch;      /* score floats per thread */
    size_t kv_scratch;   /* BF16 cache: float32 K and V rows per thread (m->kvf) */
};

/* A BF16 cache's columns [c0, c0 + w) of positions [p0, p1) as float32
 * rows of w into dst. */
static void kv_rows_f32(float *dst, const uint16_t *src, size_t ld, int c0, int w, int p0, int p1) {
    for (int p = p0; p < p1; p++) {
        const uint16_t *r = src + (size_t)p * ld + c0;
        float *o = dst + (size_t)(p - p0) * w;
        for (int i = 0; i < w; i++) o[i] = capmoe_bf16_to_f32(r[i]);
    }
}

static void attn_item(void *arg, int it, int slot) {
    const struct attn_job *j = arg;
    struct capmoe_model *m = j->m;
    const capmoe_hfconfig *c = &m->cfg;
    float *S = m->scores.p + (size_t)slot * j->scratch;
    const int *item = j->items + ATTN_ITEM * (size_t)it;
    const capmoe_batch_seq *q = &j->seqs[item[0]];
    const capmoe_kv *kv = q->kv;
    int t0 = m->seq_t0[item[0]], n = q->n_tokens, p0 = kv->len, l = j->l;
    int d = c->head_dim, kd = c->n_kv_heads * d, grp = c->n_heads / c->n_kv_heads;
    int g0 = item[1] / grp, end = p0 + (n <= ATTN_DIRECT_ROWS ? n : item[4]);
    if (!kv->bf16) {
        const float *K = kv->k[l] + (size_t)g0 * d, *V = kv->v[l] + (size_t)g0 * d;
        if (n <= ATTN_DIRECT_ROWS)
            attend_direct(m, K, V, (size_t)kd, 0, t0, n, p0, item[1], item[2], S);
        else
            attend_head(m, K, V, kd, t0, item[3], item[4], p0, item[1], S);
        return;
    }
    /* BF16 cache: the positions and groups the item reads, as float32 rows
     * in this thread's scratch (2 x positions x kd floats at most) */
    float *Kf = m->kvf.p + (size_t)slot * j->kv_scratch;
    const uint16_t *Kb = (const uint16_t *)kv->k[l], *Vb = (const uint16_t *)kv->v[l];
    if (n <= ATTN_DIRECT_ROWS) {
        int w = (item[2] - item[1]) / grp * d, first = first_pos(c->sliding_window, p0);
        float *Vf = Kf + (size_t)(end - first) * w;
        kv_rows_f32(Kf, Kb, (size_t)kd, g0 * d, w, first, end);
        kv_rows_f32(Vf, Vb, (size_t)kd, g0 * d, w, first, end);
        attend_direct(m, Kf, Vf, (size_t)w, first, t0, n, p0, item[1], item[2], S);
    } else {
        float *Vf = Kf + (size_t)end * d;
        kv_rows_f32(Kf, Kb, (size_t)kd, g0 * d, d, 0, end);
        kv_rows_f32(Vf, Vb, (size_t)kd, g0 * d, d, 0, end);
        attend_head(m, Kf, Vf, d, t0, item[3], item[4], p0, item[1], S);
    }
}

static void dense_mlp(struct capmoe_model *m, const struct capmoe_layer *L, const float *h,
                      float *out, int T, capmoe_error *err, int *rc) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, I = c->intermediate_size;
    if (capmoe_buf_reserve(&m->sh1, (size_t)T * I) || capmoe_buf_reserve(&m->sh2, (size_t)T * I)) {
        *rc = capmoe_set_error(err, "out of memory");
        return;
    }
    capmoe_linear(m->par, m->sh1.p, h, L->d_gate, NULL, T, I, H);
    capmoe_linear(m->par, m->sh2.p, h, L->d_up, NULL, T, I, H);
    capmoe_silu_mul(m->sh1.p, m->sh2.p, (size_t)T * I);
    capmoe_linear(m->par, out, m->sh1.p, L->d_down, NULL, T, H, I);
}

/* Rows [t0, t1) of the stacked q|k|v product (m->tmp) apart into q, k and v,
 * with biases, q/k norms and RoPE. */
struct qkv_job {
    struct capmoe_model *m;
    const struct capmoe_layer *L;
    int qkvd;
};

static void qkv_rows(void *arg, int t0, int t1) {
    const struct qkv_job *j = arg;
    struct capmoe_model *m = j->m;
    const struct capmoe_layer *L = j->L;
    const capmoe_hfconfig *c = &m->cfg;
    int d = c->head_dim, qd = c->n_heads * d, kd = c->n_kv_heads * d, n = t1 - t0;
    float eps = c->rms_norm_eps;
    for (int t = t0; t < t1; t++) {
        const float *r = m->tmp.p + (size_t)t * j->qkvd;
        float *q = m->q.p + (size_t)t * qd, *k = m->k.p + (size_t)t * kd;
        float *v = m->v.p + (size_t)t * kd;
        memcpy(q, r, (size_t)qd * sizeof(float));
        memcpy(k, r + qd, (size_t)kd * sizeof(float));
        memcpy(v, r + qd + kd, (size_t)kd * sizeof(float));
        if (L->bq) {
            for (int i = 0; i < qd; i++) q[i] += L->bq[i];
            for (int i = 0; i < kd; i++) k[i] += L->bk[i], v[i] += L->bv[i];
        }
    }
    float *q = m->q.p + (size_t)t0 * qd, *k = m->k.p + (size_t)t0 * kd;
    if (c->qk_norm == CAPMOE_QK_NORM_FULL) {
        capmoe_rmsnorm(q, qd, q, qd, L->q_norm, n, qd, eps);
        capmoe_rmsnorm(k, kd, k, kd, L->k_norm, n, kd, eps);
    } else if (c->qk_norm == CAPMOE_QK_NORM_HEAD) {
        capmoe_rmsnorm(q, d, q, d, L->q_norm, n * c->n_heads, d, eps);
        capmoe_rmsnorm(k, d, k, d, L->k_norm, n * c->n_kv_heads, d, eps);
    }
    for (int t = t0; t < t1; t++) {
        const float *cs = m->rope.p + (size_t)t * d;
        for (int hh = 0; hh < c->n_heads; hh++)
            capmoe_rope_apply(m->q.p + (size_t)t * qd + (size_t)hh * d, d, cs);
        for (int hh = 0; hh < c->n_kv_heads; hh++)
            capmoe_rope_apply(m->k.p + (size_t)t * kd + (size_t)hh * d, d, cs);
    }
}

/* Attention of one layer (GQA; RoPE, q/k norms, sliding window) over the
 * batch: h [T, H] normed, q, k and v of the new tokens appended to their
 * sequences' caches at kv->len .., the o_proj output into m->tmp. */
static void attention(struct capmoe_model *m, const struct capmoe_layer *L, int l,
                      const capmoe_batch_seq *seqs, int n_seqs, int T, int n_items,
                      size_t scratch, capmoe_forward_stats *stats) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, d = c->head_dim, qd = c->n_heads * d, kd = c->n_kv_heads * d;
    const float *h = m->h.p;
    /* q, k and v in one product (their weights stacked), then apart */
    int qkvd = qd + 2 * kd;
    /* --compute bf16: a prompt's projections through oneDNN */
    int bf = m->dnnl && L->bf_q && L->bf_k && L->bf_v && L->bf_o && T >= m->bf16_min_rows;
    struct capmoe_dnnl_mat *qkv[3] = {L->bf_q, L->bf_k, L->bf_v};
    int qkv0[3] = {0, qd, qd + kd};
    double t0 = capmoe_now();
    if (!bf || capmoe_bf16_linear(m, m->tmp.p, qkvd, h, H, T, H, qkv, qkv0, 3) != 0)
        capmoe_linear(m->par, m->tmp.p, h, L->wqkv, NULL, T, qkvd, H);
    double t1 = capmoe_now();
    struct qkv_job qj = {m, L, qkvd};
    capmoe_par_rows(m->par, T, 8, qkv_rows, &qj);
    for (int s = 0; s < n_seqs; s++) {
        capmoe_kv *kv = seqs[s].kv;
        int n = seqs[s].n_tokens, t0 = m->seq_t0[s];
        if (kv->bf16) { /* rounded to nearest even */
            capmoe_bf16_from_f32((uint16_t *)kv->k[l] + (size_t)kv->len * kd,
                                 m->k.p + (size_t)t0 * kd, (size_t)n * kd);
            capmoe_bf16_from_f32((uint16_t *)kv->v[l] + (size_t)kv->len * kd,
                                 m->v.p + (size_t)t0 * kd, (size_t)n * kd);
            continue;
        }
        memcpy(kv->k[l] + (size_t)kv->len * kd, m->k.p + (size_t)t0 * kd,
               (size_t)n * kd * sizeof(float));
        memcpy(kv->v[l] + (size_t)kv->len * kd, m->v.p + (size_t)t0 * kd,
               (size_t)n * kd * sizeof(float));
    }
    struct attn_job aj = {.m = m, .seqs = seqs, .l = l, .items = m->attn_items,
                          .scratch = scratch, .kv_scratch = 2 * (size_t)m->kvf_ctx * kd};
    double t2 = capmoe_now();
    capmoe_par_for(m->par, n_items, attn_item, &aj);
    double t3 = capmoe_now();
    int o0 = 0;
    if (bf && capmoe_bf16_linear(m, m->tmp.p, H, m->att.p, qd, T, qd, &L->bf_o, &o0, 1) == 0) {
        if (L->bo)
            for (int t = 0; t < T; t++)
                for (int i = 0; i < H; i++) m->tmp.p[(size_t)t * H + i] += L->bo[i];
    } else {
        capmoe_linear(m->par, m->tmp.p, m->att.p, L->wo, L->bo, T, H, qd);
    }
    if (stats) {
        stats->attn_proj_time += t1 - t0 + capmoe_now() - t3;
        stats->attn_core_time += t3 - t2;
    }
}

static int forward(capmoe_model *m, const capmoe_batch_seq *seqs, int n_seqs,
                   const capmoe_dispatch_cfg *cfg, float *logits, capmoe_forward_stats *stats,
                   capmoe_error *err);

int capmoe_model_forward(capmoe_model *m, const capmoe_batch_seq *seqs, int n_seqs,
                         const capmoe_dispatch_cfg *cfg, float *logits,
                         capmoe_forward_stats *stats, capmoe_error *err) {
    if (m->comm && m->comm_broken)
        return capmoe_set_error(err, "the expert-parallel group failed earlier: %s",
                                m->comm_broken_msg);
    m->mpi_last_layer = -1;
    int rc = forward(m, seqs, n_seqs, cfg, logits, stats, err);
    if (rc != 0 && m->comm && !m->comm_broken) {
        /* This rank failed on its own: the others are on their way to the
         * next MoE layer's exchange, where they learn it and stop too. */
        for (int l = m->mpi_last_layer + 1; l < m->cfg.n_layers; l++)
            if (m->layers[l].is_moe) {
                capmoe_moe_mpi_fail(m);
                break;
            }
    }
    return rc;
}

void capmoe_model_forward_abandon(capmoe_model *m) {
    if (!m || !m->comm || m->comm_broken) return;
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (m->layers[l].is_moe) {
            capmoe_moe_mpi_fail(m);
            return;
        }
}

int capmoe_model_comm_broken(const capmoe_model *m) { return m && m->comm_broken; }

static int forward(capmoe_model *m, const capmoe_batch_seq *seqs, int n_seqs,
                   const capmoe_dispatch_cfg *cfg, float *logits, capmoe_forward_stats *stats,
                   capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    double t_start = capmoe_now();
    int H = c->hidden_size, V = c->vocab_size, d = c->head_dim;
    /* Under --ep mpi a rank with no sequence still takes part in every
     * MoE layer's exchange. */
    if (n_seqs < 0 || (n_seqs == 0 && !m->comm)) return capmoe_set_error(err, "forward: empty batch");
    capmoe_dispatch_cfg defcfg;
    if (!cfg) {
        capmoe_dispatch_cfg_default(&defcfg);
        cfg = &defcfg;
    }
    if (c->n_moe_layers > 0 && capmoe_dispatch_cfg_check(cfg, c->n_experts, err) != 0) return -1;
    if (m->comm) {
        if (c->n_moe_layers > 0 && cfg->ep_ranks != capmoe_comm_size(m->comm))
            return capmoe_set_error(err, "--ep mpi: ep_ranks %d differs from the %d MPI ranks",
                                    cfg->ep_ranks, capmoe_comm_size(m->comm));
    } else if (cfg->ep_ranks > capmoe_ep_max_ranks(m->ep)) {
        return capmoe_set_error(err, "ep_ranks %d exceeds the %d rank workers started",
                                cfg->ep_ranks, capmoe_ep_max_ranks(m->ep));
    }
    int T = 0, max_ctx = 1, max_q = 1;
    for (int s = 0; s < n_seqs; s++) {
        const capmoe_batch_seq *q = &seqs[s];
        if (!q->kv || q->n_tokens < 0 || (q->n_tokens > 0 && !q->tokens))
            return capmoe_set_error(err, "forward: sequence %d is malformed", s);
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= V)
                return capmoe_set_error(err, "token id %d out of range (vocab_size %d)",
                                        q->tokens[i], V);
        int need = q->kv->len + q->n_tokens;
        if (need > q->kv->max)
            return capmoe_set_error(err,
                                    "sequence %d: %d tokens exceed the context length %d", s,
                                    need, q->kv->max);
        if (capmoe_kv_reserve(q->kv, need) != 0)
            return capmoe_set_error(err, "out of memory for the KV cache");
        T += q->n_tokens;
        if (need > max_ctx) max_ctx = need;
        if (q->n_tokens > max_q) max_q = q->n_tokens;
        for (int t = s + 1; t < n_seqs; t++)
            if (seqs[t].kv == q->kv)
                return capmoe_set_error(err, "forward: sequences %d and %d share a cache", s, t);
    }
    if (T == 0 && !m->comm) return capmoe_set_error(err, "forward: no tokens in the batch");
    if (reserve_all(m, T, n_seqs, max_q, max_ctx, err) != 0) return -1;
    size_t scratch = attn_scratch(c, max_q, max_ctx);
    /* Attention items: a longer sequence's heads, each in blocks of query
     * rows (enough blocks that heads x blocks keep every thread busy: 12
     * heads alone would leave 4 of 16 threads idle), the last (costliest,
     * causal) blocks first; a decode-like sequence in as many runs of whole
     * GQA groups as keep every thread busy when there are fewer such
     * sequences than threads. */
    int n_items = 0, n_direct = 0, grp = c->n_heads / c->n_kv_heads, nt = capmoe_par_threads(m->par);
    for (int s = 0; s < n_seqs; s++) n_direct += seqs[s].n_tokens <= ATTN_DIRECT_ROWS;
    int splits = n_direct > 0 ? (nt + n_direct - 1) / n_direct : 1;
    if (splits > c->n_kv_heads) splits = c->n_kv_heads;
    size_t need = 0;
    for (int s = 0; s < n_seqs; s++) {
        int n = seqs[s].n_tokens;
        need += n == 0 ? 0 : n <= ATTN_DIRECT_ROWS ? (size_t)splits
                                                   : (size_t)c->n_heads * (size_t)n; /* >= blocks */
    }
    if (need > m->cap_attn_items) {
        int *b = realloc(m->attn_items, need * ATTN_ITEM * sizeof(int));
        if (!b) return capmoe_set_error(err, "out of memory");
        m->attn_items = b;
        m->cap_attn_items = need;
    }
    for (int s = 0; s < n_seqs; s++) {
        int n = seqs[s].n_tokens, *it = m->attn_items + ATTN_ITEM * (size_t)n_items;
        if (n == 0) continue;
        if (n <= ATTN_DIRECT_ROWS) {
            for (int p = 0; p < splits; p++, n_items++, it += ATTN_ITEM) {
                it[0] = s;
                it[1] = c->n_kv_heads * p / splits * grp;
                it[2] = c->n_kv_heads * (p + 1) / splits * grp;
                it[3] = 0;
                it[4] = n;
            }
        } else {
            /* blocks of ATTN_QROWS query rows: causal, a block computes its
             * rows against every key up to its last row, so smaller blocks
             * waste less of the upper triangle (12% at 512 rows) and give
             * items enough for every thread; more blocks where heads x
             * blocks would still leave threads idle */
            int per_head = (4 * nt + c->n_heads - 1) / c->n_heads; /* blocks wanted per head */
            int qb = (n + per_head - 1) / per_head;
            qb = (qb + 15) & ~15;
            if (qb < 32) qb = 32;
            if (qb > ATTN_QROWS) qb = ATTN_QROWS;
            int nb = (n + qb - 1) / qb;
            for (int b = nb - 1; b >= 0; b--)
                for (int hh = 0; hh < c->n_heads; hh++, n_items++, it += ATTN_ITEM) {
                    it[0] = s;
                    it[1] = hh;
                    it[2] = hh + 1;
                    it[3] = b * qb;
                    it[4] = (b + 1) * qb < n ? (b + 1) * qb : n;
                }
        }
    }
    if (stats) {
        stats->n_moe = 0;
        stats->tokens = T;
        stats->attn_time = stats->moe_time = 0.0;
        stats->attn_proj_time = stats->attn_core_time = 0.0;
    }

    float *x = m->x.p, *h = m->h.p;
    for (int s = 0, t = 0; s < n_seqs; s++) {
        m->seq_t0[s] = t;
        for (int i = 0; i < seqs[s].n_tokens; i++, t++) {
            capmoe_wmat row = capmoe_wmat_offset(m->embed, (size_t)seqs[s].tokens[i] * H);
            capmoe_kern_to_f32(x + (size_t)t * H, row.p, row.dtype, (size_t)H);
            m->tok_rank[t] = m->comm ? capmoe_comm_rank(m->comm) : seqs[s].rank;
            m->tok_pos[t] = seqs[s].kv->len + i;
            float *cs = m->rope.p + (size_t)t * d;
            capmoe_rope_table(cs, d, m->tok_pos[t], m->inv_freq);
            if (m->rope_af != 1.0f) /* YaRN: cos and sin times the attention factor */
                for (int j = 0; j < d; j++) cs[j] *= m->rope_af;
        }
    }

    int rc = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        const struct capmoe_layer *L = &m->layers[l];
        if (T == 0) { /* --ep mpi, a rank without tokens: the exchanges only */
            if (L->is_moe) {
                capmoe_layer_stats *ls = NULL;
                if (stats && stats->n_moe < stats->cap_layers) ls = &stats->layers[stats->n_moe++];
                rc = capmoe_moe_forward(m, L, l, NULL, NULL, 0, cfg, NULL, ls, err);
            }
            continue;
        }
        double ta = capmoe_now();
        capmoe_residual_norm(m->par, x, NULL, h, L->attn_norm, T, H, c->rms_norm_eps);
        if (c->kv_lora_rank > 0) {
            if ((rc = capmoe_mla_attention(m, L, l, seqs, n_seqs, h, m->tmp.p, err)) != 0) break;
        } else {
            attention(m, L, l, seqs, n_seqs, T, n_items, scratch, stats);
        }
        double tm = capmoe_now();
        if (stats) stats->attn_time += tm - ta;

        capmoe_residual_norm(m->par, x, m->tmp.p, h, L->ffn_norm, T, H, c->rms_norm_eps);
        if (L->is_moe) {
            capmoe_layer_stats *ls = NULL;
            if (stats && stats->n_moe < stats->cap_layers) ls = &stats->layers[stats->n_moe++];
            rc = capmoe_moe_forward(m, L, l, h, m->tmp.p, T, cfg, m->tok_rank, ls, err);
        } else {
            dense_mlp(m, L, h, m->tmp.p, T, err, &rc);
        }
        if (rc == 0) capmoe_residual_norm(m->par, x, m->tmp.p, NULL, NULL, T, H, 0.0f);
        if (stats) stats->moe_time += capmoe_now() - tm;
    }
    if (rc == 0 && capmoe_dnnl_failed(m->dnnl, err)) rc = -1; /* a --compute bf16 product */
    if (rc != 0) return rc;
    for (int s = 0; s < n_seqs; s++) seqs[s].kv->len += seqs[s].n_tokens;

    if (logits) {
        int nrows = 0;
        for (int s = 0, t = 0; s < n_seqs; s++) {
            int n = seqs[s].n_tokens;
            if (seqs[s].want == CAPMOE_LOGITS_ALL) {
                for (int i = 0; i < n; i++)
                    memcpy(h + (size_t)(nrows++) * H, x + (size_t)(t + i) * H,
                           (size_t)H * sizeof(float));
            } else if (seqs[s].want == CAPMOE_LOGITS_LAST && n > 0) {
                memcpy(h + (size_t)(nrows++) * H, x + (size_t)(t + n - 1) * H,
                       (size_t)H * sizeof(float));
            }
            t += n;
        }
        if (nrows > 0) {
            capmoe_rmsnorm(h, H, h, H, m->final_norm, nrows, H, c->rms_norm_eps);
            capmoe_linear(m->par, logits, h, m->lm_head, NULL, nrows, V, H);
        }
    }
    if (stats) stats->total_time = capmoe_now() - t_start;
    return 0;
}
