/* mla.c - Multi-head Latent Attention (DeepSeek-V2 / DeepSeek-V3), as
 * transformers computes it, with a cache of the compressed latent.
 *
 * Per token, the keys and values of all heads come from one latent
 * c = RMSNorm(kv_a_proj(h)[:kvl]) (kv_lora_rank values) and one rotary key
 * k_pe = RoPE(kv_a_proj(h)[kvl:]) (qk_rope_head_dim values) shared by every
 * head: head h's key is [W_uk_h c | k_pe] and its value W_uv_h c, where
 * W_uk_h (dn rows) and W_uv_h (dv rows) are head h's rows of kv_b_proj. The
 * cache holds only [c | k_pe] per token and layer: kvl + dr floats (576 for
 * DeepSeek-V2-Lite and V3) instead of 2 x heads x head_dim.
 *
 * Two ways to attend, the same sums in exact arithmetic:
 *   expanded  keys and values of every head rebuilt from the cached latents
 *             (one product with kv_b_proj over the sequence), then ordinary
 *             attention per head: cheaper for prompts, where many queries
 *             share the rebuilt keys;
 *   absorbed  each query projected into the latent space once,
 *             q_lat = W_uk_h^T q_nope, so that the score is [q_lat | q_pe] .
 *             [c | k_pe] against the cached rows themselves, the context is
 *             the weighted sum of the cached latents, and W_uv_h is applied
 *             once per head to it: what decode uses (one query per
 *             sequence, nothing rebuilt).
 * Per sequence and step the cheaper is chosen by counting multiply-adds
 * (capmoe_model_opts.mla_form can force either).
 *
 * Queries: q_proj(h), or q_b_proj(RMSNorm(q_a_proj(h))); per head [q_nope
 * (dn) | q_pe (dr)], q_pe rotated like k_pe. The softmax scale is
 * 1/sqrt(dn + dr), for DeepSeek-V3 with YaRN times mscale^2 (rope.h). The
 * latent RMSNorms use epsilon 1e-6 (transformers builds them with the
 * RMSNorm default, not rms_norm_eps). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/kern.h"
#include "capmoe/ops.h"
#include "capmoe/rope.h"
#include "model_internal.h"

#define MLA_NORM_EPS 1e-6f
/* Query rows per block of the expanded form (bounds the score scratch). */
#define MLA_QBLOCK 256
/* The expanded form's rebuilt keys and values of one sequence may take at
 * most this much memory; longer contexts attend in the absorbed form. */
#define MLA_EXPANDED_MAX_BYTES ((size_t)256 << 20)

typedef struct dims {
    int H, nH, dn, dr, dv, kvl, ql, qk, qd, row, Nq, Ns;
} dims;

static dims dims_of(const capmoe_hfconfig *c) {
    dims d;
    d.H = c->hidden_size;
    d.nH = c->n_heads;
    d.dn = c->qk_nope_head_dim;
    d.dr = c->qk_rope_head_dim;
    d.dv = c->v_head_dim;
    d.kvl = c->kv_lora_rank;
    d.ql = c->q_lora_rank;
    d.qk = d.dn + d.dr;
    d.qd = d.nH * d.qk;
    d.row = d.kvl + d.dr;                 /* a cache row: [latent | rope key] */
    d.Nq = d.ql > 0 ? d.ql : d.qd;        /* query part of the stacked product */
    d.Ns = d.Nq + d.row;
    return d;
}

/* Whether a sequence of n new tokens after p0 cached ones attends in the
 * expanded form: fewer multiply-adds (rebuilding L = p0 + n keys and values
 * per head, then attention over dn + dr and dv, against projecting n
 * queries into and out of the latent and attending over 2 kvl + dr) and its
 * buffers within MLA_EXPANDED_MAX_BYTES. */
static int use_expanded(const struct capmoe_model *m, const dims *d, int n, int p0) {
    if (m->mla_form == CAPMOE_MLA_EXPANDED) return 1;
    if (m->mla_form == CAPMOE_MLA_ABSORBED) return 0;
    double L = (double)p0 + n, nH = d->nH;
    double expanded = L * nH * (d->dn + d->dv) * d->kvl + n * L * nH * (d->qk + d->dv) / 2;
    double absorbed = n * nH * (double)(d->dn + d->dv) * d->kvl + n * L * nH * (2 * d->kvl + d->dr) / 2;
    size_t bytes = (size_t)L * (size_t)d->nH * (size_t)(d->dn + d->dv + d->qk) * sizeof(float);
    return expanded < absorbed && bytes <= MLA_EXPANDED_MAX_BYTES;
}

/* ---- the absorbed form --------------------------------------------------- */

struct absorb_job {
    struct capmoe_model *m;
    const struct capmoe_layer *L;
    const dims *d;
    int Ta;                /* rows in the absorbed form */
};

/* Head h of every absorbed row: q_lat = W_uk_h^T q_nope, then [q_lat | q_pe]
 * into the row's slot of mla_lat ([Ta, nH * row]). */
static void absorb_query(void *arg, int h, int slot) {
    (void)slot;
    const struct absorb_job *j = arg;
    const dims *d = j->d;
    struct capmoe_model *m = j->m;
    float *lat = m->mla_lat.p + (size_t)h * d->row;
    const float *q = m->mla_qa.p + (size_t)h * d->qk; /* gathered query rows */
    size_t ldl = (size_t)d->nH * d->row;
    capmoe_gemm_nt(NULL, lat, (int)ldl, q, d->qd, j->L->w_uk_t[h], d->dn, j->Ta, d->kvl, d->dn,
                   1.0f, 0.0f);
    for (int i = 0; i < j->Ta; i++)
        memcpy(lat + (size_t)i * ldl + d->kvl, q + (size_t)i * d->qd + d->dn,
               (size_t)d->dr * sizeof(float));
}

/* Head h of every absorbed row: out_h = W_uv_h ctx_h into mla_out ([Ta,
 * nH * dv], gathered order). */
static void absorb_output(void *arg, int h, int slot) {
    (void)slot;
    const struct absorb_job *j = arg;
    const dims *d = j->d;
    struct capmoe_model *m = j->m;
    capmoe_gemm_nt(NULL, m->mla_out.p + (size_t)h * d->dv, d->nH * d->dv,
                   m->mla_ctx.p + (size_t)h * d->kvl, d->nH * d->kvl, j->L->w_uv[h], d->kvl, j->Ta,
                   d->dv, d->kvl, 1.0f, 0.0f);
}

struct absorb_attn_job {
    struct capmoe_model *m;
    const capmoe_batch_seq *seqs;
    const dims *d;
    int l;
    const int *items;      /* (sequence, first head, end head, first gathered row) */
    size_t scratch;        /* score floats per thread */
};

/* One item: heads [h0, h1) of every new token of one sequence, against its
 * cached rows: scores [q_lat | q_pe] . [c | k_pe], context = sum of p c. */
static void absorb_attend(void *arg, int it, int slot) {
    const struct absorb_attn_job *j = arg;
    const dims *d = j->d;
    struct capmoe_model *m = j->m;
    const int *item = j->items + 4 * (size_t)it;
    const capmoe_batch_seq *q = &j->seqs[item[0]];
    int h0 = item[1], h1 = item[2], r0 = item[3], p0 = q->kv->len;
    const float *K = q->kv->k[j->l];
    float *S = m->scores.p + (size_t)slot * j->scratch;
    for (int i = 0; i < q->n_tokens; i++) {
        int n = p0 + i + 1; /* causal: the token sees itself and what came before */
        const float *ql = m->mla_lat.p + (size_t)(r0 + i) * d->nH * d->row + (size_t)h0 * d->row;
        float *ctx = m->mla_ctx.p + (size_t)(r0 + i) * d->nH * d->kvl + (size_t)h0 * d->kvl;
        capmoe_kern_attn_scores(S, n, ql, h1 - h0, d->nH, d->row, K, d->row, n, m->mla_scale);
        for (int h = 0; h < h1 - h0; h++) {
            capmoe_softmax_row(S + (size_t)h * n, n);
            capmoe_kern_weighted_sum(ctx + (size_t)h * d->kvl, S + (size_t)h * n, K, d->row, n,
                                     d->kvl);
        }
    }
}

/* ---- the expanded form --------------------------------------------------- */

struct expand_job {
    struct capmoe_model *m;
    const dims *d;
    int t0, n, p0;         /* batch rows of the sequence, its cached length before */
    size_t scratch;
};

/* Head h of one sequence: causal attention of its n queries over the L =
 * p0 + n rebuilt keys (mla_k: [L, nH * qk]) and values (mla_kv: [L, nH *
 * (dn + dv)], the value after the dn key columns of each head). */
static void expand_head(void *arg, int h, int slot) {
    const struct expand_job *j = arg;
    const dims *d = j->d;
    struct capmoe_model *m = j->m;
    float *S = m->scores.p + (size_t)slot * j->scratch;
    const float *K = m->mla_k.p + (size_t)h * d->qk;
    const float *V = m->mla_kv.p + (size_t)h * (d->dn + d->dv) + d->dn;
    int ldk = d->nH * d->qk, ldv = d->nH * (d->dn + d->dv);
    for (int i0 = 0; i0 < j->n; i0 += MLA_QBLOCK) {
        int nb = j->n - i0 < MLA_QBLOCK ? j->n - i0 : MLA_QBLOCK;
        int Lb = j->p0 + i0 + nb;
        const float *Q = m->mla_q.p + (size_t)(j->t0 + i0) * d->qd + (size_t)h * d->qk;
        float *O = m->mla_att.p + (size_t)(j->t0 + i0) * d->nH * d->dv + (size_t)h * d->dv;
        capmoe_gemm_nt(NULL, S, Lb, Q, d->qd, capmoe_wmat_f32(K), ldk, nb, Lb, d->qk, m->mla_scale,
                       0.0f);
        for (int i = 0; i < nb; i++) {
            float *r = S + (size_t)i * Lb;
            for (int t = j->p0 + i0 + i + 1; t < Lb; t++) r[t] = -INFINITY;
            capmoe_softmax_row(r, Lb);
        }
        capmoe_gemm_nn(O, d->nH * d->dv, S, Lb, V, ldv, nb, d->dv, Lb);
    }
}

/* One sequence in the expanded form: keys and values of every head from
 * its L cached latents, then attention per head. */
static int expanded(struct capmoe_model *m, const struct capmoe_layer *L, const dims *d,
                    const float *cache, int t0, int n, int p0, size_t scratch) {
    int Lc = p0 + n, ldkv = d->nH * (d->dn + d->dv);
    if (capmoe_buf_reserve(&m->mla_kv, (size_t)Lc * ldkv) ||
        capmoe_buf_reserve(&m->mla_k, (size_t)Lc * d->qd))
        return -1;
    capmoe_gemm_nt(m->par, m->mla_kv.p, ldkv, cache, d->row, L->wkv_b, d->kvl, Lc, ldkv, d->kvl,
                   1.0f, 0.0f);
    for (int t = 0; t < Lc; t++) {
        const float *kv = m->mla_kv.p + (size_t)t * ldkv, *pe = cache + (size_t)t * d->row + d->kvl;
        float *k = m->mla_k.p + (size_t)t * d->qd;
        for (int h = 0; h < d->nH; h++) {
            memcpy(k + (size_t)h * d->qk, kv + (size_t)h * (d->dn + d->dv),
                   (size_t)d->dn * sizeof(float));
            memcpy(k + (size_t)h * d->qk + d->dn, pe, (size_t)d->dr * sizeof(float));
        }
    }
    struct expand_job j = {m, d, t0, n, p0, scratch};
    capmoe_par_for(m->par, d->nH, expand_head, &j);
    return 0;
}

/* ---- the layer ----------------------------------------------------------- */

int capmoe_mla_attention(struct capmoe_model *m, const struct capmoe_layer *L, int l,
                         const capmoe_batch_seq *seqs, int n_seqs, const float *h, float *out,
                         capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    dims d = dims_of(c);
    int T = 0, max_q = 1, max_ctx = 1;
    for (int s = 0; s < n_seqs; s++) {
        T += seqs[s].n_tokens;
        if (seqs[s].n_tokens > max_q) max_q = seqs[s].n_tokens;
        if (seqs[s].kv->len + seqs[s].n_tokens > max_ctx) max_ctx = seqs[s].kv->len + seqs[s].n_tokens;
    }
    /* score scratch per thread: a block of queries of one head (expanded) or
     * every head of one query (absorbed), against the longest context */
    size_t rows = (size_t)(max_q < MLA_QBLOCK ? max_q : MLA_QBLOCK);
    if (rows < (size_t)d.nH) rows = (size_t)d.nH;
    size_t scratch = rows * (size_t)max_ctx;
    if (capmoe_buf_reserve(&m->mla_a, (size_t)T * d.Ns) ||
        capmoe_buf_reserve(&m->mla_q, (size_t)T * d.qd) ||
        capmoe_buf_reserve(&m->mla_qa, (size_t)T * (d.ql > d.qd ? d.ql : d.qd)) ||
        capmoe_buf_reserve(&m->mla_lat, (size_t)T * d.nH * d.row) ||
        capmoe_buf_reserve(&m->mla_ctx, (size_t)T * d.nH * d.kvl) ||
        capmoe_buf_reserve(&m->mla_att, (size_t)T * d.nH * d.dv) ||
        capmoe_buf_reserve(&m->mla_out, (size_t)T * d.nH * d.dv) ||
        capmoe_buf_reserve(&m->scores, (size_t)capmoe_par_threads(m->par) * scratch))
        return capmoe_set_error(err, "out of memory for a batch of %d tokens", T);
    if ((size_t)T > m->cap_mla_rows) {
        int *r = realloc(m->mla_rows, (size_t)T * sizeof(int));
        if (!r) return capmoe_set_error(err, "out of memory");
        m->mla_rows = r;
        m->cap_mla_rows = (size_t)T;
    }

    /* the queries' (or q_a's) and kv_a's products in one */
    float *A = m->mla_a.p;
    capmoe_linear(m->par, A, h, L->wqkv, NULL, T, d.Ns, d.H);
    for (int t = 0; t < T; t++) {
        float *a = A + (size_t)t * d.Ns;
        if (L->bq_a)
            for (int i = 0; i < d.ql; i++) a[i] += L->bq_a[i];
        if (L->bkv_a)
            for (int i = 0; i < d.row; i++) a[d.Nq + i] += L->bkv_a[i];
    }
    float *q = m->mla_q.p;
    if (d.ql > 0) {
        capmoe_rmsnorm(m->mla_qa.p, d.ql, A, d.Ns, L->q_a_norm, T, d.ql, MLA_NORM_EPS);
        capmoe_linear(m->par, q, m->mla_qa.p, L->wq_b, NULL, T, d.qd, d.ql);
    } else {
        for (int t = 0; t < T; t++)
            memcpy(q + (size_t)t * d.qd, A + (size_t)t * d.Ns, (size_t)d.qd * sizeof(float));
    }
    /* rotary part of every query head, and each token's cache row */
    int il = c->rope.interleave;
    for (int s = 0; s < n_seqs; s++) {
        capmoe_kv *kv = seqs[s].kv;
        int t0 = m->seq_t0[s];
        for (int i = 0; i < seqs[s].n_tokens; i++) {
            int t = t0 + i;
            const float *cs = m->rope.p + (size_t)t * d.dr;
            for (int hh = 0; hh < d.nH; hh++)
                capmoe_rope_rotate(q + (size_t)t * d.qd + (size_t)hh * d.qk + d.dn, d.dr, cs, il);
            float *row = kv->k[l] + (size_t)(kv->len + i) * d.row;
            const float *a = A + (size_t)t * d.Ns + d.Nq;
            capmoe_rmsnorm(row, d.kvl, a, d.kvl, L->kv_a_norm, 1, d.kvl, MLA_NORM_EPS);
            memcpy(row + d.kvl, a + d.kvl, (size_t)d.dr * sizeof(float));
            capmoe_rope_rotate(row + d.kvl, d.dr, cs, il);
        }
    }

    /* sequences in the expanded form, one at a time (products across the
     * pool); the others gathered for the absorbed form */
    int Ta = 0;
    for (int s = 0; s < n_seqs; s++) {
        int n = seqs[s].n_tokens, p0 = seqs[s].kv->len, t0 = m->seq_t0[s];
        if (n == 0) continue;
        if (use_expanded(m, &d, n, p0)) {
            if (expanded(m, L, &d, seqs[s].kv->k[l], t0, n, p0, scratch) != 0)
                return capmoe_set_error(err, "out of memory for latent attention over %d tokens",
                                        p0 + n);
        } else {
            for (int i = 0; i < n; i++) m->mla_rows[Ta++] = t0 + i;
        }
    }
    if (Ta > 0) {
        for (int i = 0; i < Ta; i++) /* gathered query rows */
            memcpy(m->mla_qa.p + (size_t)i * d.qd, q + (size_t)m->mla_rows[i] * d.qd,
                   (size_t)d.qd * sizeof(float));
        struct absorb_job aj = {m, L, &d, Ta};
        capmoe_par_for(m->par, d.nH, absorb_query, &aj);
        /* attention items: (sequence, head range, first gathered row); a
         * sequence's heads in as many runs as keep the threads busy */
        int n_abs = 0;
        for (int s = 0; s < n_seqs; s++)
            n_abs += seqs[s].n_tokens > 0 && !use_expanded(m, &d, seqs[s].n_tokens, seqs[s].kv->len);
        int nt = capmoe_par_threads(m->par);
        int splits = n_abs > 0 ? (nt + n_abs - 1) / n_abs : 1;
        if (splits > d.nH) splits = d.nH;
        size_t need = (size_t)n_abs * (size_t)splits * 4;
        if (need > m->cap_mla_items) {
            int *p = realloc(m->mla_items, need * sizeof(int));
            if (!p) return capmoe_set_error(err, "out of memory");
            m->mla_items = p;
            m->cap_mla_items = need;
        }
        int *items = m->mla_items, n_items = 0, r0 = 0;
        for (int s = 0; s < n_seqs; s++) {
            if (seqs[s].n_tokens == 0 || use_expanded(m, &d, seqs[s].n_tokens, seqs[s].kv->len))
                continue;
            for (int p = 0; p < splits; p++, n_items++) {
                int *it = items + 4 * (size_t)n_items;
                it[0] = s;
                it[1] = d.nH * p / splits;
                it[2] = d.nH * (p + 1) / splits;
                it[3] = r0;
            }
            r0 += seqs[s].n_tokens;
        }
        struct absorb_attn_job jj = {m, seqs, &d, l, items, scratch};
        capmoe_par_for(m->par, n_items, absorb_attend, &jj);
        /* outputs, computed in gathered order, then put in their rows */
        capmoe_par_for(m->par, d.nH, absorb_output, &aj);
        size_t w = (size_t)d.nH * d.dv;
        for (int i = 0; i < Ta; i++)
            memcpy(m->mla_att.p + (size_t)m->mla_rows[i] * w, m->mla_out.p + (size_t)i * w,
                   w * sizeof(float));
    }
    capmoe_linear(m->par, out, m->mla_att.p, L->wo, L->bo, T, d.H, d.nH * d.dv);
    return 0;
}
