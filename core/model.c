/* model.c - loading a Hugging Face MoE checkpoint into a capmoe_model, and
 * per-sequence KV caches. The forward pass is in forward.c and moe.c. */
#include "capmoe/kern.h"
#include "capmoe/ops.h"
#include "capmoe/panel.h"
#include "capmoe/quant.h"
#include "capmoe/rope.h"
#include "model_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int capmoe_buf_reserve(struct capmoe_buf *b, size_t n) {
    if (n <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 1024;
    while (nc < n) nc *= 2;
    float *p = realloc(b->p, nc * sizeof(float));
    if (!p) return -1;
    b->p = p;
    b->cap = nc;
    return 0;
}

void capmoe_buf_free(struct capmoe_buf *b) {
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* Takes ownership of a buffer the loader allocated. */
static int own(struct capmoe_model *m, void *buf, size_t bytes, const char *name,
               capmoe_error *err) {
    if (m->n_owned == m->cap_owned) {
        int nc = m->cap_owned ? m->cap_owned * 2 : 256;
        void **p = realloc(m->owned, (size_t)nc * sizeof *p);
        if (!p) {
            free(buf);
            return capmoe_set_error(err, "out of memory loading %s", name);
        }
        m->owned = p;
        m->cap_owned = nc;
    }
    m->owned[m->n_owned++] = buf;
    m->alloc_bytes += bytes;
    return 0;
}

/* An F8_E4M3 matrix of a checkpoint with quantization_config fp8: kept as
 * stored (1 byte per weight; the panels copy the bytes), with its
 * NAME_scale_inv block scales checked: present, F32, [ceil(N/bn), ceil(K/bk)]. */
static int get_f8(struct capmoe_model *m, capmoe_wmat *w, const capmoe_st_tensor *t, int ndim,
                  const int64_t *shape, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    if (!c->fp8)
        return capmoe_set_error(err, "%s: tensor %s is F8_E4M3 but config.json has no "
                                "quantization_config with quant_method fp8", t->file, t->name);
    if (ndim != 2)
        return capmoe_set_error(err, "%s: tensor %s: F8_E4M3 is supported for 2-D matrices only "
                                "(fused 3-D expert tensors are not)", t->file, t->name);
    if (t->ndim != 2 || t->shape[0] != shape[0] || t->shape[1] != shape[1])
        return capmoe_set_error(err, "%s: tensor %s has shape [%lld, %lld], expected [%lld, %lld]",
                                t->file, t->name, (long long)t->shape[0],
                                (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)shape[0],
                                (long long)shape[1]);
    char sname[300];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    const capmoe_st_tensor *s = capmoe_st_find(m->st, sname);
    int64_t sn = (shape[0] + c->fp8_block_n - 1) / c->fp8_block_n;
    int64_t sk = (shape[1] + c->fp8_block_k - 1) / c->fp8_block_k;
    if (!s)
        return capmoe_set_error(err, "%s: tensor %s is F8_E4M3 but its block scales %s are missing",
                                t->file, t->name, sname);
    if (s->dtype != CAPMOE_DTYPE_F32 || s->ndim != 2 || s->shape[0] != sn || s->shape[1] != sk)
        return capmoe_set_error(err, "%s: tensor %s (the block scales of %s) must be F32 of shape "
                                "[%lld, %lld] (blocks of %d x %d), found %s of %d dims [%lld, %lld]",
                                s->file, sname, t->name, (long long)sn, (long long)sk,
                                c->fp8_block_n, c->fp8_block_k, s->dtype_name, s->ndim,
                                (long long)s->shape[0], (long long)(s->ndim > 1 ? s->shape[1] : 0));
    w->dtype = CAPMOE_DTYPE_F8E4M3;
    w->p = t->data;
    w->panels = 0;
    w->scale = s->data;
    m->mapped_bytes += t->nbytes;
    if (((uintptr_t)s->data & 3u) != 0) { /* unaligned scales: copied */
        float *copy = malloc(s->nbytes ? s->nbytes : 1);
        if (!copy) return capmoe_set_error(err, "out of memory");
        memcpy(copy, s->data, s->nbytes);
        w->scale = copy;
        if (own(m, copy, s->nbytes, sname, err) != 0) return -1;
    }
    return 0;
}

/* Fetches tensor NAME with the given shape, into exactly one of:
 *  - *f32: a float32 view, for the small tensors (norms, biases, routers);
 *    converted buffers are recorded in m->owned;
 *  - *w: a weight matrix in its stored dtype (F32, BF16 or F16), mapped in
 *    place; only data not aligned to its element size is copied (safetensors
 *    does not promise alignment). */
static int get_weight(struct capmoe_model *m, const float **f32, capmoe_wmat *w,
                      capmoe_error *err, int ndim, int64_t d0, int64_t d1, int64_t d2,
                      const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t shape[3] = {d0, d1, d2};
    if (f32) {
        float *owned = NULL;
        if (capmoe_st_get_f32(m->st, name, ndim, shape, f32, &owned, err) != 0) return -1;
        size_t bytes = sizeof(float);
        for (int i = 0; i < ndim; i++) bytes *= (size_t)shape[i];
        if (!owned) m->mapped_bytes += bytes;
        return owned ? own(m, owned, bytes, name, err) : 0;
    }
    const capmoe_st_tensor *t = capmoe_st_find(m->st, name);
    if (t && t->dtype == CAPMOE_DTYPE_F8E4M3) return get_f8(m, w, t, ndim, shape, err);
    if (capmoe_st_get_float(m->st, name, ndim, shape, &t, err) != 0) return -1;
    w->dtype = t->dtype;
    w->p = t->data;
    w->scale = NULL;
    if (((uintptr_t)t->data & (capmoe_dtype_size(t->dtype) - 1)) == 0) {
        m->mapped_bytes += t->nbytes;
        return 0;
    }
    void *copy = malloc(t->nbytes ? t->nbytes : 1);
    if (!copy) return capmoe_set_error(err, "%s: tensor %s: out of memory", t->file, t->name);
    memcpy(copy, t->data, t->nbytes);
    w->p = copy;
    return own(m, copy, t->nbytes, name, err);
}

static int has_tensor(const struct capmoe_model *m, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return capmoe_st_find(m->st, name) != NULL;
}

#define GET1(dst, a, ...) \
    if (get_weight(m, &(dst), NULL, err, 1, (a), 0, 0, __VA_ARGS__)) return -1
#define GET2(dst, a, b, ...) \
    if (get_weight(m, &(dst), NULL, err, 2, (a), (b), 0, __VA_ARGS__)) return -1
#define GETW(dst, a, b, ...) \
    if (get_weight(m, NULL, &(dst), err, 2, (a), (b), 0, __VA_ARGS__)) return -1

static int load_experts(struct capmoe_model *m, struct capmoe_layer *L, int l,
                        capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int E = c->n_experts, H = c->hidden_size, I = c->moe_intermediate_size;
    int mixtral = c->arch == CAPMOE_ARCH_MIXTRAL;
    const char *blk = mixtral ? "block_sparse_moe" : "mlp";
    L->w_gate = calloc((size_t)E, sizeof *L->w_gate);
    L->w_up = calloc((size_t)E, sizeof *L->w_up);
    L->w_down = calloc((size_t)E, sizeof *L->w_down);
    if (!L->w_gate || !L->w_up || !L->w_down) return capmoe_set_error(err, "out of memory");
    GET2(L->router, E, H, "model.layers.%d.%s.gate.weight", l, blk);
    if (c->router == CAPMOE_ROUTER_DEEPSEEK_V3)
        GET1(L->router_bias, E, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    if (has_tensor(m, "model.layers.%d.%s.experts.gate_up_proj", l, blk)) {
        /* transformers 5 in-memory layout: fused [E, 2I, H] and [E, H, I]. */
        capmoe_wmat gu, dn;
        if (get_weight(m, NULL, &gu, err, 3, E, 2 * I, H, "model.layers.%d.%s.experts.gate_up_proj", l,
                       blk) ||
            get_weight(m, NULL, &dn, err, 3, E, H, I, "model.layers.%d.%s.experts.down_proj", l, blk))
            return -1;
        for (int e = m->e0; e < m->e1; e++) {
            L->w_gate[e] = capmoe_wmat_offset(gu, (size_t)e * 2 * I * H);
            L->w_up[e] = capmoe_wmat_offset(L->w_gate[e], (size_t)I * H);
            L->w_down[e] = capmoe_wmat_offset(dn, (size_t)e * H * I);
        }
    } else {
        for (int e = m->e0; e < m->e1; e++) { /* this process's experts only */
            if (mixtral) {
                GETW(L->w_gate[e], I, H, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l,
                     e);
                GETW(L->w_down[e], H, I, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l,
                     e);
                GETW(L->w_up[e], I, H, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l,
                     e);
            } else {
                GETW(L->w_gate[e], I, H, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
                GETW(L->w_up[e], I, H, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
                GETW(L->w_down[e], H, I, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
            }
        }
    }
    if (c->shared_expert_intermediate_size > 0) {
        /* Qwen2-MoE: one shared_expert with a sigmoid gate; DeepSeek:
         * shared_experts, n_shared_experts of them as one wider MLP, no gate */
        int Is = c->shared_expert_intermediate_size;
        const char *sh = c->shared_expert_gate ? "shared_expert" : "shared_experts";
        GETW(L->sh_gate, Is, H, "model.layers.%d.mlp.%s.gate_proj.weight", l, sh);
        GETW(L->sh_up, Is, H, "model.layers.%d.mlp.%s.up_proj.weight", l, sh);
        GETW(L->sh_down, H, Is, "model.layers.%d.mlp.%s.down_proj.weight", l, sh);
        if (c->shared_expert_gate)
            GET2(L->sh_gate_w, 1, H, "model.layers.%d.mlp.shared_expert_gate.weight", l);
    }
    return 0;
}

/* Multi-head Latent Attention (DeepSeek-V2/V3): the query path (q_proj, or
 * q_a_proj + q_a_layernorm + q_b_proj), kv_a_proj_with_mqa + kv_a_layernorm,
 * kv_b_proj (also seen per head, for the absorbed form), o_proj. */
static int load_mla(struct capmoe_model *m, struct capmoe_layer *L, int l, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, nH = c->n_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dv = c->v_head_dim, kvl = c->kv_lora_rank, ql = c->q_lora_rank, qd = nH * (dn + dr);
    if (ql > 0) {
        GETW(L->wq_a, ql, H, "model.layers.%d.self_attn.q_a_proj.weight", l);
        GET1(L->q_a_norm, ql, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        GETW(L->wq_b, qd, ql, "model.layers.%d.self_attn.q_b_proj.weight", l);
        if (c->qkv_bias) GET1(L->bq_a, ql, "model.layers.%d.self_attn.q_a_proj.bias", l);
    } else {
        GETW(L->wq, qd, H, "model.layers.%d.self_attn.q_proj.weight", l);
    }
    GETW(L->wkv_a, kvl + dr, H, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
    if (c->qkv_bias)
        GET1(L->bkv_a, kvl + dr, "model.layers.%d.self_attn.kv_a_proj_with_mqa.bias", l);
    GET1(L->kv_a_norm, kvl, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    GETW(L->wkv_b, nH * (dn + dv), kvl, "model.layers.%d.self_attn.kv_b_proj.weight", l);
    GETW(L->wo, H, nH * dv, "model.layers.%d.self_attn.o_proj.weight", l);
    if (c->o_bias) GET1(L->bo, H, "model.layers.%d.self_attn.o_proj.bias", l);
    L->w_uk_t = calloc((size_t)nH, sizeof *L->w_uk_t);
    L->w_uv = calloc((size_t)nH, sizeof *L->w_uv);
    if (!L->w_uk_t || !L->w_uv) return capmoe_set_error(err, "out of memory");
    for (int hh = 0; hh < nH; hh++) { /* views of kv_b's rows, repacked by pack_weights */
        L->w_uk_t[hh] = capmoe_wmat_offset(L->wkv_b, (size_t)hh * (dn + dv) * kvl);
        L->w_uv[hh] = capmoe_wmat_offset(L->wkv_b, ((size_t)hh * (dn + dv) + dn) * kvl);
    }
    return 0;
}

static int load_layer(struct capmoe_model *m, int l, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    struct capmoe_layer *L = &m->layers[l];
    int H = c->hidden_size, d = c->head_dim, qd = c->n_heads * d, kd = c->n_kv_heads * d;
    GET1(L->attn_norm, H, "model.layers.%d.input_layernorm.weight", l);
    GET1(L->ffn_norm, H, "model.layers.%d.post_attention_layernorm.weight", l);
    L->is_moe = c->layer_is_moe[l];
    if (c->kv_lora_rank > 0) {
        if (load_mla(m, L, l, err) != 0) return -1;
        goto mlp;
    }
    GETW(L->wq, qd, H, "model.layers.%d.self_attn.q_proj.weight", l);
    GETW(L->wk, kd, H, "model.layers.%d.self_attn.k_proj.weight", l);
    GETW(L->wv, kd, H, "model.layers.%d.self_attn.v_proj.weight", l);
    GETW(L->wo, H, qd, "model.layers.%d.self_attn.o_proj.weight", l);
    if (c->qkv_bias) {
        GET1(L->bq, qd, "model.layers.%d.self_attn.q_proj.bias", l);
        GET1(L->bk, kd, "model.layers.%d.self_attn.k_proj.bias", l);
        GET1(L->bv, kd, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    if (c->o_bias) GET1(L->bo, H, "model.layers.%d.self_attn.o_proj.bias", l);
    if (c->qk_norm == CAPMOE_QK_NORM_FULL) {
        GET1(L->q_norm, qd, "model.layers.%d.self_attn.q_norm.weight", l);
        GET1(L->k_norm, kd, "model.layers.%d.self_attn.k_norm.weight", l);
    } else if (c->qk_norm == CAPMOE_QK_NORM_HEAD) {
        GET1(L->q_norm, d, "model.layers.%d.self_attn.q_norm.weight", l);
        GET1(L->k_norm, d, "model.layers.%d.self_attn.k_norm.weight", l);
    }
mlp:
    if (L->is_moe) return load_experts(m, L, l, err);
    int Id = c->intermediate_size;
    GETW(L->d_gate, Id, H, "model.layers.%d.mlp.gate_proj.weight", l);
    GETW(L->d_up, Id, H, "model.layers.%d.mlp.up_proj.weight", l);
    GETW(L->d_down, H, Id, "model.layers.%d.mlp.down_proj.weight", l);
    return 0;
}

static void free_pools(capmoe_par **pools, int n) {
    for (int i = 0; i < n; i++) capmoe_par_free(pools[i]);
    free(pools);
}

/* n single-thread pools: no workers, only the scratch of part 0, one per
 * EP rank or per part of the main pool (moe.c). NULL with err set on failure. */
static capmoe_par **scratch_pools(int n, capmoe_error *err) {
    capmoe_par **pools = calloc((size_t)n, sizeof *pools);
    if (!pools) {
        capmoe_set_error(err, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (!(pools[i] = capmoe_par_new(1, err))) {
            free_pools(pools, i);
            return NULL;
        }
    return pools;
}

/* ---- repacking the weights into panel layout (panel.h) ---- */

/* The repacked weights' arena alignment (a transparent huge page). */
#define ARENA_ALIGN ((size_t)2 << 20)

/* One packed matrix: its sources (row-major) stacked in order. */
#define PACK_MAX_SRC 3
struct pack_job {
    capmoe_wmat *w;                /* destination, panels on return */
    capmoe_wmat src[PACK_MAX_SRC]; /* the sources, as loaded */
    capmoe_wmat *srcw[PACK_MAX_SRC]; /* where they are held (cleared when stacked) */
    int rows[PACK_MAX_SRC], n_src, N, K;
    capmoe_dtype dtype;            /* of the packed matrix */
    size_t off;                    /* of dst in the arena */
    void *dst;                     /* owned by the model */
    int failed;                    /* out of memory converting a source */
    int transposed;                /* the one source is W^T: K rows of N (ld N) */
    int part_of;                   /* the source is part of a matrix another job packs
                                    * whole: that job accounts for its pages */
    int bn, bk;                    /* F8E4M3 sources: their scale blocks */
};

/* Rows [n0, n0 + rows) of source s of job j as float32 into dst (exact for
 * F32/BF16/F16; F8E4M3 times its block scale). */
static void source_f32(const struct pack_job *j, int s, float *dst, int n0, int rows) {
    const capmoe_wmat *w = &j->src[s];
    size_t K = (size_t)j->K;
    if (w->dtype == CAPMOE_DTYPE_F8E4M3)
        capmoe_f8_dequant(dst, w->p, K, w->scale, j->bn, j->bk, n0, rows, j->K);
    else
        capmoe_kern_to_f32(dst, (const char *)w->p + (size_t)n0 * K * capmoe_dtype_size(w->dtype),
                           w->dtype, (size_t)rows * K);
}

/* A job whose one source is stored transposed: W^T copied to W (elements
 * moved, never converted), then packed. */
static void pack_transposed(struct pack_job *j) {
    size_t es = capmoe_dtype_size(j->dtype), N = (size_t)j->N, K = (size_t)j->K;
    char *tmp = capmoe_malloc_array(N * K, es);
    if (!tmp) {
        j->failed = 1;
        return;
    }
    const char *src = j->src[0].p;
    for (size_t n = 0; n < N; n++)
        for (size_t k = 0; k < K; k++) memcpy(tmp + (n * K + k) * es, src + (k * N + n) * es, es);
    capmoe_panel_pack_rows(j->dst, j->dtype, j->K, 0, tmp, K, j->N);
    free(tmp);
}

/* Rows [n0, n0 + rows) of job j's stacked sources as float32 into dst. */
static void stacked_f32(const struct pack_job *j, float *dst, int n0, int rows) {
    for (int s = 0, s0 = 0; s < j->n_src; s0 += j->rows[s++]) {
        int lo = n0 > s0 ? n0 : s0, hi = n0 + rows < s0 + j->rows[s] ? n0 + rows : s0 + j->rows[s];
        if (hi > lo) source_f32(j, s, dst + (size_t)(lo - n0) * j->K, lo - s0, hi - lo);
    }
}

/* A job quantized at load (--weights q8|q4): its sources, stacked, converted
 * to float32 a panel (16 rows) at a time, then quantized into the panel. */
static void pack_quantized(struct pack_job *j) {
    size_t K = (size_t)j->K, pb = capmoe_panel_bytes(j->dtype, j->K);
    float *tmp = capmoe_malloc_array((size_t)CAPMOE_PANEL_COLS * K, sizeof(float));
    if (!tmp) {
        j->failed = 1;
        return;
    }
    for (int p = 0; p * CAPMOE_PANEL_COLS < j->N; p++) {
        int n0 = p * CAPMOE_PANEL_COLS, rows = j->N - n0 < CAPMOE_PANEL_COLS ? j->N - n0 : CAPMOE_PANEL_COLS;
        stacked_f32(j, tmp, n0, rows);
        capmoe_quant_pack((char *)j->dst + (size_t)p * pb, j->dtype, tmp, K, rows, j->K);
    }
    free(tmp);
}

static void pack_one(void *arg, int item, int slot) {
    (void)slot;
    struct pack_job *j = (struct pack_job *)arg + item;
    if (capmoe_dtype_is_q(j->dtype)) {
        pack_quantized(j);
        return;
    }
    if (j->dtype == CAPMOE_DTYPE_F8E4M3) { /* bytes copied; sources start on whole panels */
        size_t pb = capmoe_panel_bytes(j->dtype, j->K);
        for (int s = 0, n0 = 0; s < j->n_src; n0 += j->rows[s++])
            capmoe_f8_pack((char *)j->dst + (size_t)(n0 / CAPMOE_PANEL_COLS) * pb, j->src[s].p,
                           (size_t)j->K, j->src[s].scale, j->bn, j->bk, j->rows[s], j->K);
        return;
    }
    memset(j->dst, 0, capmoe_panel_matrix_bytes(j->dtype, j->N, j->K));
    if (j->transposed) {
        pack_transposed(j);
        return;
    }
    for (int s = 0, n0 = 0; s < j->n_src; n0 += j->rows[s++]) {
        const capmoe_wmat *w = &j->src[s];
        if (w->dtype == j->dtype) {
            capmoe_panel_pack_rows(j->dst, j->dtype, j->K, n0, w->p, (size_t)j->K, j->rows[s]);
            continue;
        }
        /* sources of mixed dtypes are stacked as float32 (exact) */
        size_t elems = (size_t)j->rows[s] * j->K;
        float *tmp = capmoe_malloc_array(elems, sizeof(float));
        if (!tmp) {
            j->failed = 1;
            return;
        }
        source_f32(j, s, tmp, 0, j->rows[s]);
        capmoe_panel_pack_rows(j->dst, j->dtype, j->K, n0, tmp, (size_t)j->K, j->rows[s]);
        free(tmp);
    }
}

/* The mapped tensors' data ranges, sorted, to tell mapped weights from
 * buffers the loader allocated. */
struct range {
    const char *a, *b;
};

static int cmp_range(const void *x, const void *y) {
    const char *a = ((const struct range *)x)->a, *b = ((const struct range *)y)->a;
    return a < b ? -1 : a > b;
}

static int in_ranges(const struct range *r, int n, const void *p) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if ((const char *)p < r[mid].a) hi = mid - 1;
        else if ((const char *)p >= r[mid].b) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* Hands the whole pages of a mapped range back to the page cache: they are
 * never read again (their panel copy is), so the process's memory stays
 * about the checkpoint's size. The mapping is read-only: a later read would
 * only fault the file's bytes back in. */
static void drop_pages(const void *p, size_t bytes) {
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(pg - 1), b = ((uintptr_t)p + bytes) & ~(pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* A job packing `n_src` matrices of K inputs (w[0] .. w[n_src-1], with
 * rows[i] rows each), stacked, into *dst. */
static void add_job(struct pack_job *jobs, int *n, capmoe_wmat *dst, int n_src,
                    capmoe_wmat *const *w, const int *rows, int K, int bn, int bk) {
    struct pack_job j = {.w = dst, .n_src = n_src, .K = K, .dtype = w[0]->dtype, .bn = bn, .bk = bk};
    for (int s = 0; s < n_src; s++) {
        if (!w[s]->p || w[s]->panels) return;
        j.src[s] = *w[s];
        j.srcw[s] = w[s];
        j.rows[s] = rows[s];
        if (w[s]->dtype != j.dtype) j.dtype = CAPMOE_DTYPE_F32;
        /* F8E4M3 sources stack as F8E4M3 when each starts on a whole panel */
        if (j.dtype == CAPMOE_DTYPE_F8E4M3 && j.N % CAPMOE_PANEL_COLS) j.dtype = CAPMOE_DTYPE_F32;
        j.N += rows[s];
    }
    jobs[(*n)++] = j;
}

static void add_one(struct pack_job *jobs, int *n, capmoe_wmat *w, int N, int K) {
    add_job(jobs, n, w, 1, &w, &N, K, 0, 0);
}

/* A job for a view into a matrix that is also packed whole (*w: rows of
 * it, or with transposed its K x N block transposed). */
static void add_part(struct pack_job *jobs, int *n, capmoe_wmat *w, int N, int K, int transposed) {
    int before = *n;
    add_job(jobs, n, w, 1, &w, &N, K, 0, 0);
    if (*n > before) {
        jobs[*n - 1].transposed = transposed;
        jobs[*n - 1].part_of = 1;
    }
}

/* The jobs of one latent-attention layer: [q_a_proj or q_proj;
 * kv_a_proj_with_mqa] stacked, q_b_proj, kv_b_proj whole (the expanded form)
 * and per head (its key rows transposed, its value rows: the absorbed
 * form), o_proj. */
static void add_mla_jobs(const capmoe_hfconfig *c, struct capmoe_layer *L, struct pack_job *jobs,
                         int *n) {
    int H = c->hidden_size, nH = c->n_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dv = c->v_head_dim, kvl = c->kv_lora_rank, ql = c->q_lora_rank, qd = nH * (dn + dr);
    capmoe_wmat *qkv[2] = {ql > 0 ? &L->wq_a : &L->wq, &L->wkv_a};
    int rows[2] = {ql > 0 ? ql : qd, kvl + dr};
    add_job(jobs, n, &L->wqkv, 2, qkv, rows, H, c->fp8_block_n, c->fp8_block_k);
    if (ql > 0) add_one(jobs, n, &L->wq_b, qd, ql);
    add_one(jobs, n, &L->wkv_b, nH * (dn + dv), kvl);
    for (int hh = 0; hh < nH; hh++) {
        add_part(jobs, n, &L->w_uk_t[hh], kvl, dn, 1);
        add_part(jobs, n, &L->w_uv[hh], dv, kvl, 0);
    }
    add_one(jobs, n, &L->wo, H, nH * dv);
}

/* --quantize all: jobs [first, n) become Q8/Q4 (dtype t), each checked for
 * inputs in whole quantization blocks; -1 with err naming the matrix. t
 * CAPMOE_DTYPE_OTHER (not --quantize all) leaves them as they are. */
static int quantize_jobs(struct pack_job *jobs, int first, int n, capmoe_dtype t, int layer,
                         const char *what, capmoe_error *err) {
    for (int i = first; i < n && t != CAPMOE_DTYPE_OTHER; i++) {
        if (jobs[i].K % CAPMOE_QBLOCK) {
            char where[32] = "";
            if (layer >= 0) snprintf(where, sizeof where, "layer %d's ", layer);
            return capmoe_set_error(err,
                                    "--quantize all: %s%s has %d inputs, not a multiple of the "
                                    "quantization block (%d); use --quantize experts",
                                    where, what, jobs[i].K, CAPMOE_QBLOCK);
        }
        jobs[i].dtype = t;
    }
    return 0;
}

/* Every matrix the products read (attention, experts, shared expert, dense
 * MLP, lm_head) repacked, in parallel on the model's pool. The embedding
 * table stays row-major: lookups read single rows of it. */
static int pack_weights(struct capmoe_model *m, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, d = c->head_dim, qd = c->n_heads * d, kd = c->n_kv_heads * d;
    int I = c->moe_intermediate_size, Is = c->shared_expert_intermediate_size;
    int Id = c->intermediate_size;
    size_t cap = (size_t)c->n_layers * (7 + 3 * (size_t)c->n_experts + 3 + 2 * (size_t)c->n_heads) + 1;
    capmoe_dtype qt = m->weights == CAPMOE_WEIGHTS_Q8   ? CAPMOE_DTYPE_Q8
                      : m->weights == CAPMOE_WEIGHTS_Q4 ? CAPMOE_DTYPE_Q4
                                                        : CAPMOE_DTYPE_OTHER;
    if (qt != CAPMOE_DTYPE_OTHER && c->n_moe_layers > 0 && (H % CAPMOE_QBLOCK || I % CAPMOE_QBLOCK)) {
        int l0 = 0;
        while (l0 < c->n_layers && !m->layers[l0].is_moe) l0++;
        return capmoe_set_error(err,
                                "--weights %s: layer %d expert %d's %s has %d inputs, not a multiple "
                                "of the quantization block (%d): hidden_size %d, "
                                "moe_intermediate_size %d",
                                capmoe_weights_name(m->weights), l0, m->e0,
                                H % CAPMOE_QBLOCK ? "gate/up projection" : "down projection",
                                H % CAPMOE_QBLOCK ? H : I, CAPMOE_QBLOCK, H, I);
    }
    struct pack_job *jobs = calloc(cap, sizeof *jobs);
    if (!jobs) return capmoe_set_error(err, "out of memory");
    int n = 0, rc = 0;
    /* --quantize all: the other matrices' jobs too (quantize_jobs) */
    capmoe_dtype qa = m->quantize == CAPMOE_QUANTIZE_ALL ? qt : CAPMOE_DTYPE_OTHER;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        struct capmoe_layer *L = &m->layers[l];
        if (c->kv_lora_rank > 0) {
            add_mla_jobs(c, L, jobs, &n); /* latent attention keeps its dtype */
        } else {
            capmoe_wmat *qkv[3] = {&L->wq, &L->wk, &L->wv};
            int qkv_rows[3] = {qd, kd, kd};
            int first = n;
            add_job(jobs, &n, &L->wqkv, 3, qkv, qkv_rows, H, c->fp8_block_n, c->fp8_block_k);
            add_one(jobs, &n, &L->wo, H, qd);
            rc = quantize_jobs(jobs, first, n, qa, l, "attention projection", err);
        }
        if (L->is_moe) {
            for (int e = m->e0; e < m->e1; e++) {
                int first = n;
                add_one(jobs, &n, &L->w_gate[e], I, H);
                add_one(jobs, &n, &L->w_up[e], I, H);
                add_one(jobs, &n, &L->w_down[e], H, I);
                if (qt != CAPMOE_DTYPE_OTHER) /* --weights q8|q4 */
                    for (int i = first; i < n; i++) jobs[i].dtype = qt;
            }
            int first = n;
            add_one(jobs, &n, &L->sh_gate, Is, H);
            add_one(jobs, &n, &L->sh_up, Is, H);
            add_one(jobs, &n, &L->sh_down, H, Is);
            if (rc == 0) rc = quantize_jobs(jobs, first, n, qa, l, "shared expert projection", err);
        } else {
            int first = n;
            add_one(jobs, &n, &L->d_gate, Id, H);
            add_one(jobs, &n, &L->d_up, Id, H);
            add_one(jobs, &n, &L->d_down, H, Id);
            if (rc == 0) rc = quantize_jobs(jobs, first, n, qa, l, "dense MLP projection", err);
        }
    }
    if (rc == 0) {
        int first = n;
        add_one(jobs, &n, &m->lm_head, c->vocab_size, H);
        rc = quantize_jobs(jobs, first, n, qa, -1, "lm_head", err);
    }
    if (rc != 0) {
        free(jobs);
        return -1;
    }
    /* One arena for all of them, in the order of use (layer by layer), on
     * transparent huge pages where the kernel offers them: a decode step
     * reads every page of it, and 2 MiB pages spare the TLB. */
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        jobs[i].off = total;
        total += (capmoe_panel_matrix_bytes(jobs[i].dtype, jobs[i].N, jobs[i].K) + 63) & ~(size_t)63;
    }
    total = (total + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    char *arena = total ? aligned_alloc(ARENA_ALIGN, total) : NULL;
    if (total && !arena) {
        free(jobs);
        return capmoe_set_error(err, "out of memory repacking the weights (%zu bytes)", total);
    }
    if (arena) {
#ifdef MADV_HUGEPAGE
        madvise(arena, total, MADV_HUGEPAGE);
#endif
        if (own(m, arena, total, "the repacked weights", err) != 0) {
            free(jobs);
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        jobs[i].dst = arena + jobs[i].off;
        jobs[i].bn = c->fp8_block_n;
        jobs[i].bk = c->fp8_block_k;
    }
    double t0 = capmoe_now();
    capmoe_par_for(m->par, n, pack_one, jobs);
    m->pack_seconds = capmoe_now() - t0;
    int nr = capmoe_st_count(m->st);
    struct range *mapped = calloc((size_t)(nr > 0 ? nr : 1), sizeof *mapped);
    if (!mapped) {
        free(jobs);
        return capmoe_set_error(err, "out of memory");
    }
    for (int i = 0; i < nr; i++) {
        const capmoe_st_tensor *t = capmoe_st_at(m->st, i);
        mapped[i] = (struct range){t->data, (const char *)t->data + t->nbytes};
    }
    qsort(mapped, (size_t)nr, sizeof *mapped, cmp_range);
    int failed = 0;
    for (int i = 0; i < n; i++) {
        struct pack_job *j = &jobs[i];
        failed |= j->failed;
        for (int s = 0; s < j->n_src; s++) {
            size_t bytes = (size_t)j->rows[s] * j->K * capmoe_dtype_size(j->src[s].dtype);
            /* the embedding (a tied lm_head's source) is still read in place */
            if (!j->part_of && j->src[s].p != m->embed.p && in_ranges(mapped, nr, j->src[s].p)) {
                m->mapped_bytes -= bytes;
                drop_pages(j->src[s].p, bytes);
            }
            if (j->n_src > 1) j->srcw[s]->p = NULL;
        }
        *j->w = (capmoe_wmat){j->dst, j->dtype, 1, NULL};
    }
    free(mapped);
    free(jobs);
    if (failed) return capmoe_set_error(err, "out of memory repacking the weights");
    for (int l = 0; l < c->n_layers; l++)
        if (!m->layers[l].wqkv.p)
            return capmoe_set_error(err, "layer %d: q/k/v projections could not be stacked", l);
    return 0;
}

int capmoe_model_load(capmoe_model **out, const char *dir, const capmoe_model_opts *opts,
                      capmoe_error *err) {
    *out = NULL;
    struct capmoe_model *m = calloc(1, sizeof *m);
    if (!m) return capmoe_set_error(err, "out of memory");
    capmoe_dispatch_plan_init(&m->plan);
    if (capmoe_hfconfig_load(&m->cfg, dir, err) != 0) goto fail;
    const capmoe_hfconfig *c = &m->cfg;
    m->xport = &capmoe_moe_threads;
    m->e0 = 0;
    m->e1 = c->n_experts;
    if (opts && opts->comm) {
        /* --ep mpi: this process holds experts [r*E/R, (r+1)*E/R) only */
        int R = capmoe_comm_size(opts->comm), r = capmoe_comm_rank(opts->comm);
        if (c->n_moe_layers > 0 && (c->n_experts % R != 0 || c->n_experts < R)) {
            capmoe_set_error(err,
                             "--ep mpi: the model's %d experts cannot be split over %d ranks "
                             "(E must be a multiple of R, and every rank needs an expert)",
                             c->n_experts, R);
            goto fail;
        }
        m->comm = opts->comm;
        m->xport = &capmoe_moe_mpi;
        if (c->n_moe_layers > 0) {
            m->e0 = r * (c->n_experts / R);
            m->e1 = m->e0 + c->n_experts / R;
        }
        int El = c->n_experts / R;
        m->a2a = calloc(4 * (size_t)R, sizeof *m->a2a);
        m->a2a_cnt = calloc(2 * (size_t)R * (El + 1) + (size_t)El + 1, sizeof *m->a2a_cnt);
        if (!m->a2a || !m->a2a_cnt) {
            capmoe_set_error(err, "out of memory");
            goto fail;
        }
    }
    if (capmoe_st_open_dir(&m->st, dir, err) != 0) goto fail;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->inv_freq = calloc((size_t)(c->head_dim / 2 + 1), sizeof(float));
    m->mla_form = opts ? opts->mla_form : CAPMOE_MLA_AUTO;
    m->weights = opts ? opts->weights : CAPMOE_WEIGHTS_STORED;
    m->quantize = opts && m->weights != CAPMOE_WEIGHTS_STORED ? opts->quantize : CAPMOE_QUANTIZE_EXPERTS;
    if (!m->layers || !m->inv_freq) {
        capmoe_set_error(err, "out of memory");
        goto fail;
    }
    if (get_weight(m, NULL, &m->embed, err, 2, c->vocab_size, c->hidden_size, 0,
                   "model.embed_tokens.weight") ||
        get_weight(m, &m->final_norm, NULL, err, 1, c->hidden_size, 0, 0, "model.norm.weight"))
        goto fail;
    if (m->embed.dtype == CAPMOE_DTYPE_F8E4M3) {
        capmoe_set_error(err, "%s: model.embed_tokens.weight is F8_E4M3: FP8 embeddings are not "
                         "supported (published FP8 checkpoints keep them in BF16)", dir);
        goto fail;
    }
    if (c->fp8 && c->kv_lora_rank > 0) {
        capmoe_set_error(err, "%s: FP8 checkpoints of latent-attention models (DeepSeek-V2/V3) are "
                         "not supported yet (their kv_b_proj is read per head)", dir);
        goto fail;
    }
    if (capmoe_st_find(m->st, "lm_head.weight")) {
        if (get_weight(m, NULL, &m->lm_head, err, 2, c->vocab_size, c->hidden_size, 0,
                       "lm_head.weight"))
            goto fail;
    } else if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        capmoe_set_error(err,
                         "%s: tensor lm_head.weight is missing and tie_word_embeddings is false",
                         dir);
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(m, l, err) != 0) goto fail;
    /* RoPE inverse frequencies exactly as Hugging Face computes them (float32). */
    double af = 1.0;
    capmoe_rope_inv_freq(c, m->inv_freq, &af);
    m->rope_af = (float)af;
    if (c->kv_lora_rank > 0) m->mla_scale = (float)capmoe_rope_mla_softmax_scale(c);
    capmoe_router_default(&m->route, c->norm_topk_prob);
    if (c->router != CAPMOE_ROUTER_SOFTMAX) {
        m->route.sigmoid = c->router == CAPMOE_ROUTER_DEEPSEEK_V3;
        m->route.norm_eps = m->route.sigmoid && c->norm_topk_prob ? 1e-20f : 0.0f;
        m->route.n_group = c->n_group;
        m->route.topk_group = c->topk_group;
        m->route.group_top2 = c->router == CAPMOE_ROUTER_DEEPSEEK_V3;
        m->route.group_exclusive = c->router == CAPMOE_ROUTER_DEEPSEEK_V3;
        m->route.scale = (float)c->routed_scaling_factor;
    }
    int R = m->comm ? 1 : opts && opts->max_ranks > 0 ? opts->max_ranks : 8;
    m->ep = capmoe_ep_new(R, err);
    if (!m->ep) goto fail;
    /* default: one thread per core, the cores of a host shared by its ranks */
    int nt = opts && opts->threads > 0 ? opts->threads
                                       : capmoe_ep_cores() / capmoe_comm_local_size(m->comm);
    if (nt < 1) nt = 1;
    m->par = capmoe_par_new(nt, err);
    if (!m->par) goto fail;
    if (!(m->rank_par = scratch_pools(R, err))) goto fail;
    if (opts && opts->kv_dtype == CAPMOE_KV_BF16) {
        if (c->kv_lora_rank > 0) {
            capmoe_set_error(err, "--kv-dtype bf16: not for latent attention (%s caches its "
                                  "compressed latents in float32)", c->arch_name);
            goto fail;
        }
        m->kv_bf16 = 1;
    }
    if (opts && opts->compute == CAPMOE_COMPUTE_BF16 &&
        (m->weights != CAPMOE_WEIGHTS_STORED || c->fp8)) {
        capmoe_set_error(err, "--compute bf16 applies to BF16/F32 experts: not with --weights %s "
                         "or an FP8 checkpoint (their experts run their own kernels)",
                         m->weights != CAPMOE_WEIGHTS_STORED ? capmoe_weights_name(m->weights)
                                                             : "bf16 on FP8");
        goto fail;
    }
    if (opts && opts->compute == CAPMOE_COMPUTE_BF16) { /* from the row-major weights */
        m->compute = CAPMOE_COMPUTE_BF16;
        m->bf16_min_rows = opts->bf16_min_rows > 0 ? opts->bf16_min_rows : 16;
        if (capmoe_moe_bf16_load(m, err) != 0 || capmoe_attn_bf16_load(m, err) != 0) goto fail;
    }
    if (pack_weights(m, err) != 0) goto fail;
    capmoe_blas_single_threaded();
    *out = m;
    return 0;
fail:
    capmoe_model_free(m);
    return -1;
}

void capmoe_model_free(capmoe_model *m) {
    if (!m) return;
    /* the scratch pools number the ranks and the pool's threads: free them first */
    if (m->rank_par) free_pools(m->rank_par, capmoe_ep_max_ranks(m->ep));
    capmoe_attn_bf16_free(m);
    capmoe_moe_bf16_free(m);
    capmoe_ep_free(m->ep);
    capmoe_par_free(m->par);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            free(m->layers[l].w_gate);
            free(m->layers[l].w_up);
            free(m->layers[l].w_down);
            free(m->layers[l].w_uk_t);
            free(m->layers[l].w_uv);
        }
    }
    free(m->layers);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->inv_freq);
    capmoe_st_close(m->st);
    capmoe_dispatch_plan_free(&m->plan);
    struct capmoe_buf *bufs[] = {&m->x,      &m->h,      &m->q,  &m->k,  &m->v,  &m->att,
                                 &m->tmp,    &m->scores, &m->router, &m->xe,
                                 &m->ge,     &m->ue,     &m->ye, &m->sh1, &m->sh2, &m->rope,
                                 &m->mla_a,  &m->mla_q,  &m->mla_qa, &m->mla_lat, &m->mla_ctx,
                                 &m->mla_att, &m->mla_out, &m->mla_kv, &m->mla_k, &m->kvf, &m->qx, &m->qg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) capmoe_buf_free(bufs[i]);
    free(m->tok_rank);
    free(m->tok_pos);
    free(m->seq_t0);
    free(m->attn_items);
    free(m->expert_order);
    free(m->a2a);
    free(m->a2a_cnt);
    capmoe_buf_free(&m->xr);
    free(m->mla_rows);
    free(m->mla_items);
    free(m);
}

const capmoe_hfconfig *capmoe_model_config(const capmoe_model *m) { return &m->cfg; }
size_t capmoe_model_alloc_bytes(const capmoe_model *m) { return m->alloc_bytes; }

const char *capmoe_compute_name(capmoe_compute c) { return c == CAPMOE_COMPUTE_BF16 ? "bf16" : "f32"; }
int capmoe_compute_parse(const char *s) {
    if (!s) return -1;
    if (strcmp(s, "f32") == 0) return CAPMOE_COMPUTE_F32;
    if (strcmp(s, "bf16") == 0) return CAPMOE_COMPUTE_BF16;
    return -1;
}
capmoe_compute capmoe_model_compute(const capmoe_model *m) { return (capmoe_compute)m->compute; }
capmoe_kv_dtype capmoe_model_kv_dtype(const capmoe_model *m) {
    return m->kv_bf16 ? CAPMOE_KV_BF16 : CAPMOE_KV_F32;
}
size_t capmoe_model_mapped_bytes(const capmoe_model *m) { return m->mapped_bytes; }
capmoe_weights capmoe_model_weights(const capmoe_model *m) { return m->weights; }
capmoe_quant_scope capmoe_model_quantize(const capmoe_model *m) { return m->quantize; }
double capmoe_model_pack_seconds(const capmoe_model *m) { return m->pack_seconds; }

/* Bytes of an N x K matrix w as the products read it (Q8/Q4: its panels,
 * scales included). */
static size_t mat_bytes(capmoe_wmat w, size_t N, size_t K) {
    if (capmoe_dtype_is_q(w.dtype)) return capmoe_panel_matrix_bytes(w.dtype, (int)N, (int)K);
    return N * K * capmoe_dtype_size(w.dtype);
}

size_t capmoe_model_active_bytes_per_token(const capmoe_model *m) {
    const capmoe_hfconfig *c = &m->cfg;
    size_t H = (size_t)c->hidden_size, d = (size_t)c->head_dim;
    size_t qd = (size_t)c->n_heads * d, kd = (size_t)c->n_kv_heads * d;
    size_t bytes = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const struct capmoe_layer *L = &m->layers[l];
        if (c->kv_lora_rank > 0) {
            /* stacked q (or q_a) and kv_a, q_b, kv_b (per head, absorbed), o */
            size_t nH = (size_t)c->n_heads, qk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim);
            size_t kvl = (size_t)c->kv_lora_rank, ql = (size_t)c->q_lora_rank;
            size_t dv = (size_t)c->v_head_dim, dn = (size_t)c->qk_nope_head_dim;
            bytes += H * ((ql ? ql : nH * qk) + kvl + (size_t)c->qk_rope_head_dim) *
                     capmoe_dtype_size(L->wqkv.dtype);
            if (ql) bytes += ql * nH * qk * capmoe_dtype_size(L->wq_b.dtype);
            bytes += nH * (dn + dv) * kvl * capmoe_dtype_size(L->wkv_b.dtype);
            bytes += H * nH * dv * capmoe_dtype_size(L->wo.dtype);
        } else {
            bytes += mat_bytes(L->wqkv, qd + 2 * kd, H); /* q, k, v */
            bytes += mat_bytes(L->wo, H, qd);            /* o */
        }
        if (c->layer_is_moe[l]) {
            bytes += (size_t)c->n_experts * H * sizeof(float); /* router */
            size_t I = (size_t)c->moe_intermediate_size; /* k experts, Q8/Q4 scales included */
            bytes += (size_t)c->top_k * (2 * mat_bytes(L->w_gate[m->e0], I, H) +
                                         mat_bytes(L->w_down[m->e0], H, I));
            if (c->shared_expert_intermediate_size > 0)
                bytes += 2 * mat_bytes(L->sh_gate, c->shared_expert_intermediate_size, H) +
                         mat_bytes(L->sh_down, H, c->shared_expert_intermediate_size);
        } else {
            bytes += 2 * mat_bytes(L->d_gate, c->intermediate_size, H) +
                     mat_bytes(L->d_down, H, c->intermediate_size);
        }
    }
    bytes += mat_bytes(m->lm_head, c->vocab_size, H); /* lm_head */
    return bytes;
}

/* ---- KV cache ---------------------------------------------------------- */

capmoe_kv *capmoe_kv_new(const capmoe_model *m, int max_tokens) {
    const capmoe_hfconfig *c = &m->cfg;
    capmoe_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->n_layers = c->n_layers;
    kv->row = c->n_kv_heads * c->head_dim;
    kv->n_mats = 2;
    if (c->kv_lora_rank > 0) { /* latent attention: [latent | rope key] per token */
        kv->row = c->kv_lora_rank + c->qk_rope_head_dim;
        kv->n_mats = 1;
    }
    kv->max = max_tokens > 0 ? max_tokens : c->max_position_embeddings;
    kv->bf16 = m->kv_bf16 && kv->n_mats == 2;
    kv->k = calloc((size_t)c->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)c->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) {
        capmoe_kv_free(kv);
        return NULL;
    }
    return kv;
}

void capmoe_kv_free(capmoe_kv *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers && kv->k; l++) {
        free(kv->k[l]);
        if (kv->v) free(kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv);
}

int capmoe_kv_len(const capmoe_kv *kv) { return kv->len; }
int capmoe_kv_max(const capmoe_kv *kv) { return kv->max; }
void capmoe_kv_clear(capmoe_kv *kv) { kv->len = 0; }

size_t capmoe_kv_bytes(const capmoe_kv *kv) {
    return (size_t)kv->cap * (size_t)kv->row * (kv->bf16 ? 2 : sizeof(float)) *
           (size_t)kv->n_mats * (size_t)kv->n_layers;
}

size_t capmoe_model_kv_bytes_per_token(const capmoe_model *m, int expanded) {
    const capmoe_hfconfig *c = &m->cfg;
    size_t L = (size_t)c->n_layers;
    if (c->kv_lora_rank > 0) {
        if (expanded) /* every head's key (nope + rope part) and value */
            return L * (size_t)c->n_heads *
                   (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim) *
                   sizeof(float);
        return L * (size_t)(c->kv_lora_rank + c->qk_rope_head_dim) * sizeof(float);
    }
    return L * 2 * (size_t)c->n_kv_heads * (size_t)c->head_dim * (m->kv_bf16 ? 2 : sizeof(float));
}

/* Makes room for n tokens: 0, or -1 (over max / out of memory). Used by forward.c. */
int capmoe_kv_reserve(capmoe_kv *kv, int n);
int capmoe_kv_reserve(capmoe_kv *kv, int n) {
    if (n > kv->max) return -1;
    if (n <= kv->cap) return 0;
    int nc = kv->cap ? kv->cap : 64;
    while (nc < n) nc *= 2;
    if (nc > kv->max) nc = kv->max;
    size_t es = kv->bf16 ? 2 : sizeof(float);
    for (int l = 0; l < kv->n_layers; l++) {
        float *k = realloc(kv->k[l], (size_t)nc * kv->row * es);
        if (!k) return -1;
        kv->k[l] = k;
        if (kv->n_mats < 2) continue;
        float *v = realloc(kv->v[l], (size_t)nc * kv->row * es);
        if (!v) return -1;
        kv->v[l] = v;
    }
    kv->cap = nc;
    return 0;
}

size_t capmoe_model_expert_bytes(const capmoe_model *m) {
    const capmoe_hfconfig *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_is_moe[l])
            return 3 * (size_t)c->hidden_size * (size_t)c->moe_intermediate_size *
                   capmoe_dtype_size(m->layers[l].w_gate[m->e0].dtype);
    return 0;
}
