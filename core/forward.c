/* forward.c - the batched forward pass: embeddings, attention with per-sequence
 * KV caches (GQA, RoPE, q/k norms, sliding window), MoE or dense MLP, logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/ops.h"
#include "model_internal.h"

int capmoe_kv_reserve(capmoe_kv *kv, int n);

/* Query rows per attention block: bounds the score scratch to
 * ATTN_QBLOCK x context floats whatever the prompt length. */
#define ATTN_QBLOCK 256

static int reserve_all(struct capmoe_model *m, int T, int max_ctx, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    size_t H = (size_t)c->hidden_size, qd = (size_t)c->n_heads * c->head_dim;
    size_t kd = (size_t)c->n_kv_heads * c->head_dim;
    size_t wide = H > qd ? H : qd;
    if (capmoe_buf_reserve(&m->x, (size_t)T * H) || capmoe_buf_reserve(&m->h, (size_t)T * H) ||
        capmoe_buf_reserve(&m->q, (size_t)T * qd) || capmoe_buf_reserve(&m->k, (size_t)T * kd) ||
        capmoe_buf_reserve(&m->v, (size_t)T * kd) || capmoe_buf_reserve(&m->att, (size_t)T * qd) ||
        capmoe_buf_reserve(&m->tmp, (size_t)T * wide) ||
        capmoe_buf_reserve(&m->rope, (size_t)T * (size_t)c->head_dim) ||
        capmoe_buf_reserve(&m->scores, (size_t)ATTN_QBLOCK * (size_t)max_ctx))
        return capmoe_set_error(err, "out of memory for a batch of %d tokens", T);
    if ((size_t)T > m->cap_tok) {
        int *a = realloc(m->tok_rank, (size_t)T * sizeof(int));
        if (a) m->tok_rank = a;
        int *b = realloc(m->tok_pos, (size_t)T * sizeof(int));
        if (b) m->tok_pos = b;
        if (!a || !b) return capmoe_set_error(err, "out of memory");
        m->cap_tok = (size_t)T;
    }
    return 0;
}

/* Decode steps have one or a few query rows per sequence and head: a plain
 * loop over the cache beats two tiny BLAS calls (and their thread wake-ups)
 * per head. Row i sits at position qpos0 + i and sees keys [0, qpos0 + i]. */
#define ATTN_DIRECT_ROWS 4
static void attend_direct(float *out, int ldo, const float *Q, int ldq, const float *K,
                          const float *V, int ldkv, int nq, int qpos0, int d, int sw, float scale,
                          float *S) {
    for (int i = 0; i < nq; i++) {
        int last = qpos0 + i, first = sw > 0 && last - sw + 1 > 0 ? last - sw + 1 : 0;
        int n = last + 1 - first;
        const float *Kf = K + (size_t)first * ldkv, *Vf = V + (size_t)first * ldkv;
        capmoe_gemv(S, Kf, ldkv, Q + (size_t)i * ldq, n, d, 0); /* S = K q */
        for (int j = 0; j < n; j++) S[j] *= scale;
        capmoe_softmax_row(S, n);
        capmoe_gemv(out + (size_t)i * ldo, Vf, ldkv, S, n, d, 1); /* o = V^T p */
    }
}

/* Causal attention of one sequence's n new tokens (rows t0..t0+n-1 of q)
 * against its cache of L = p0 + n positions, all heads. */
static void attend(struct capmoe_model *m, const capmoe_kv *kv, int l, int t0, int n, int p0) {
    const capmoe_hfconfig *c = &m->cfg;
    int d = c->head_dim, nH = c->n_heads, nKV = c->n_kv_heads;
    int qd = nH * d, kd = nKV * d, grp = nH / nKV;
    int sw = c->sliding_window;
    float scale = 1.0f / sqrtf((float)d);
    float *S = m->scores.p;
    for (int hh = 0; hh < nH; hh++) {
        int g = hh / grp;
        const float *K = kv->k[l] + (size_t)g * d;
        const float *V = kv->v[l] + (size_t)g * d;
        /* Query rows in blocks; block rows i0.. see keys [0, p0 + i0 + nb). */
        for (int i0 = 0; i0 < n; i0 += ATTN_QBLOCK) {
            int nb = n - i0 < ATTN_QBLOCK ? n - i0 : ATTN_QBLOCK;
            int Lb = p0 + i0 + nb;
            const float *Q = m->q.p + (size_t)(t0 + i0) * qd + (size_t)hh * d;
            if (nb <= ATTN_DIRECT_ROWS) {
                attend_direct(m->att.p + (size_t)(t0 + i0) * qd + (size_t)hh * d, qd, Q, qd, K, V,
                              kd, nb, p0 + i0, d, sw, scale, S);
                continue;
            }
            capmoe_gemm_nt(S, Lb, Q, qd, K, kd, nb, Lb, d, scale, 0.0f);
            for (int i = 0; i < nb; i++) {
                float *row = S + (size_t)i * Lb;
                int qpos = p0 + i0 + i;
                for (int j = qpos + 1; j < Lb; j++) row[j] = -INFINITY;
                if (sw > 0)
                    for (int j = 0; j <= qpos - sw && j < Lb; j++) row[j] = -INFINITY;
                capmoe_softmax_row(row, Lb);
            }
            capmoe_gemm_nn(m->att.p + (size_t)(t0 + i0) * qd + (size_t)hh * d, qd, S, Lb, V, kd,
                           nb, d, Lb);
        }
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
    capmoe_linear(m->sh1.p, h, L->d_gate, NULL, T, I, H);
    capmoe_linear(m->sh2.p, h, L->d_up, NULL, T, I, H);
    capmoe_silu_mul(m->sh1.p, m->sh2.p, (size_t)T * I);
    capmoe_linear(out, m->sh1.p, L->d_down, NULL, T, H, I);
}

int capmoe_model_forward(capmoe_model *m, const capmoe_batch_seq *seqs, int n_seqs,
                         const capmoe_dispatch_cfg *cfg, float *logits,
                         capmoe_forward_stats *stats, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    double t_start = capmoe_now();
    int H = c->hidden_size, V = c->vocab_size, d = c->head_dim;
    int qd = c->n_heads * d, kd = c->n_kv_heads * d;
    if (n_seqs <= 0) return capmoe_set_error(err, "forward: empty batch");
    capmoe_dispatch_cfg defcfg;
    if (!cfg) {
        capmoe_dispatch_cfg_default(&defcfg);
        cfg = &defcfg;
    }
    if (c->n_moe_layers > 0 && capmoe_dispatch_cfg_check(cfg, c->n_experts, err) != 0) return -1;
    if (cfg->ep_ranks > capmoe_ep_max_ranks(m->ep))
        return capmoe_set_error(err, "ep_ranks %d exceeds the %d rank workers started",
                                cfg->ep_ranks, capmoe_ep_max_ranks(m->ep));
    int T = 0, max_ctx = 1;
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
        for (int t = s + 1; t < n_seqs; t++)
            if (seqs[t].kv == q->kv)
                return capmoe_set_error(err, "forward: sequences %d and %d share a cache", s, t);
    }
    if (T == 0) return capmoe_set_error(err, "forward: no tokens in the batch");
    if (reserve_all(m, T, max_ctx, err) != 0) return -1;
    if (stats) {
        stats->n_moe = 0;
        stats->tokens = T;
        stats->attn_time = stats->moe_time = 0.0;
    }

    float *x = m->x.p, *h = m->h.p;
    for (int s = 0, t = 0; s < n_seqs; s++)
        for (int i = 0; i < seqs[s].n_tokens; i++, t++) {
            memcpy(x + (size_t)t * H, m->embed + (size_t)seqs[s].tokens[i] * H,
                   (size_t)H * sizeof(float));
            m->tok_rank[t] = seqs[s].rank;
            m->tok_pos[t] = seqs[s].kv->len + i;
            capmoe_rope_table(m->rope.p + (size_t)t * d, d, m->tok_pos[t], m->inv_freq);
        }

    int rc = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        const struct capmoe_layer *L = &m->layers[l];
        double ta = capmoe_now();
        capmoe_rmsnorm(h, H, x, H, L->attn_norm, T, H, c->rms_norm_eps);
        capmoe_linear(m->q.p, h, L->wq, L->bq, T, qd, H);
        capmoe_linear(m->k.p, h, L->wk, L->bk, T, kd, H);
        capmoe_linear(m->v.p, h, L->wv, L->bv, T, kd, H);
        if (c->qk_norm == CAPMOE_QK_NORM_FULL) {
            capmoe_rmsnorm(m->q.p, qd, m->q.p, qd, L->q_norm, T, qd, c->rms_norm_eps);
            capmoe_rmsnorm(m->k.p, kd, m->k.p, kd, L->k_norm, T, kd, c->rms_norm_eps);
        } else if (c->qk_norm == CAPMOE_QK_NORM_HEAD) {
            capmoe_rmsnorm(m->q.p, d, m->q.p, d, L->q_norm, T * c->n_heads, d, c->rms_norm_eps);
            capmoe_rmsnorm(m->k.p, d, m->k.p, d, L->k_norm, T * c->n_kv_heads, d,
                           c->rms_norm_eps);
        }
        for (int t = 0; t < T; t++) {
            const float *cs = m->rope.p + (size_t)t * d;
            for (int hh = 0; hh < c->n_heads; hh++)
                capmoe_rope_apply(m->q.p + (size_t)t * qd + (size_t)hh * d, d, cs);
            for (int hh = 0; hh < c->n_kv_heads; hh++)
                capmoe_rope_apply(m->k.p + (size_t)t * kd + (size_t)hh * d, d, cs);
        }
        for (int s = 0, t0 = 0; s < n_seqs; s++) {
            capmoe_kv *kv = seqs[s].kv;
            int n = seqs[s].n_tokens;
            if (n == 0) continue;
            memcpy(kv->k[l] + (size_t)kv->len * kd, m->k.p + (size_t)t0 * kd,
                   (size_t)n * kd * sizeof(float));
            memcpy(kv->v[l] + (size_t)kv->len * kd, m->v.p + (size_t)t0 * kd,
                   (size_t)n * kd * sizeof(float));
            attend(m, kv, l, t0, n, kv->len);
            t0 += n;
        }
        capmoe_linear(m->tmp.p, m->att.p, L->wo, L->bo, T, H, qd);
        for (size_t i = 0; i < (size_t)T * H; i++) x[i] += m->tmp.p[i];
        double tm = capmoe_now();
        if (stats) stats->attn_time += tm - ta;

        capmoe_rmsnorm(h, H, x, H, L->ffn_norm, T, H, c->rms_norm_eps);
        if (L->is_moe) {
            capmoe_layer_stats *ls = NULL;
            if (stats && stats->n_moe < stats->cap_layers) ls = &stats->layers[stats->n_moe++];
            rc = capmoe_moe_forward(m, L, l, h, m->tmp.p, T, cfg, m->tok_rank, ls, err);
        } else {
            dense_mlp(m, L, h, m->tmp.p, T, err, &rc);
        }
        if (rc == 0)
            for (size_t i = 0; i < (size_t)T * H; i++) x[i] += m->tmp.p[i];
        if (stats) stats->moe_time += capmoe_now() - tm;
    }
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
            capmoe_linear(logits, h, m->lm_head, NULL, nrows, V, H);
        }
    }
    if (stats) stats->total_time = capmoe_now() - t_start;
    return 0;
}
