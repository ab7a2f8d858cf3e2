/* moe_bf16.c - the experts' products in BF16 through oneDNN (--compute
 * bf16): gate and up packed together per expert, down separately, each in
 * chunks of output columns (dnnl_matmul.h), loaded once.
 *
 * A set of experts runs in three passes over the engine's pool, largest
 * expert first within each:
 *  1. gather: each expert's token rows, rounded to BF16, into a block padded
 *     with zero rows to capmoe_dnnl_pad_rows (hand-written: no library does
 *     the indexed gather and the rounding in one pass), in items of
 *     GATHER_ROWS rows;
 *  2. items (expert, gate/up chunk): one oneDNN product on one thread, then
 *     SiLU(gate) * up, rounded to BF16, into the expert's block of g;
 *  3. items (expert, down chunk): one product, the expert's real rows copied
 *     into the set's y.
 * Accumulation and outputs are float32; only the products' operands are
 * BF16. Router, attention, norms and the combine stay float32. */
#include <stdlib.h>
#include <string.h>

#include "capmoe/dnnl_matmul.h"
#include "capmoe/ops.h"
#include "model_internal.h"

/* Output columns per chunk: gate/up 128 each (256 outputs per item), down
 * 128, so a layer of 8 experts gives the pool 64 to 300 items. */
#define CW_GU 128
#define CW_DN 128

int capmoe_moe_bf16_load(struct capmoe_model *m, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int E = c->n_experts, H = c->hidden_size, I = c->moe_intermediate_size;
    if (capmoe_dnnl_new(&m->dnnl, err) != 0) return -1;
    for (int l = 0; l < c->n_layers; l++) {
        struct capmoe_layer *L = &m->layers[l];
        if (!L->is_moe) continue;
        L->bf_gu = calloc((size_t)E, sizeof *L->bf_gu);
        L->bf_dn = calloc((size_t)E, sizeof *L->bf_dn);
        if (!L->bf_gu || !L->bf_dn) return capmoe_set_error(err, "out of memory");
        for (int e = m->e0; e < m->e1; e++) {
            if (!L->w_gate[e].p) continue;
            capmoe_wmat gu[2] = {L->w_gate[e], L->w_up[e]};
            if (capmoe_dnnl_pack(m->dnnl, m->par, &L->bf_gu[e], gu, 2, I, H, CW_GU, err) != 0 ||
                capmoe_dnnl_pack(m->dnnl, m->par, &L->bf_dn[e], &L->w_down[e], 1, H, I, CW_DN,
                                 err) != 0)
                return capmoe_set_error(err, "--compute bf16: layer %d expert %d: %s", l, e,
                                        err->msg);
            m->alloc_bytes += capmoe_dnnl_mat_bytes(L->bf_gu[e]) + capmoe_dnnl_mat_bytes(L->bf_dn[e]);
        }
    }
    return 0;
}

void capmoe_moe_bf16_free(struct capmoe_model *m) {
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
        struct capmoe_layer *L = &m->layers[l];
        for (int e = 0; e < m->cfg.n_experts; e++) {
            if (L->bf_gu) capmoe_dnnl_mat_free(L->bf_gu[e]);
            if (L->bf_dn) capmoe_dnnl_mat_free(L->bf_dn[e]);
        }
        free(L->bf_gu);
        free(L->bf_dn);
        L->bf_gu = L->bf_dn = NULL;
    }
    capmoe_buf_free(&m->bx);
    capmoe_buf_free(&m->bg);
    free(m->bf_row);
    m->bf_row = NULL;
    m->cap_bf_row = 0;
    capmoe_dnnl_free(m->dnnl);
    m->dnnl = NULL;
}

struct bf_job {
    struct capmoe_model *m;
    const capmoe_expert_set *s;
    const int *order; /* active experts, largest first */
    const int *prow;  /* per active index: first padded row, then padded rows */
    int n_gu, n_dn;   /* chunks per expert */
    int n_gb;         /* gather blocks of the largest expert (items per expert) */
};

static int rows_of(const capmoe_expert_set *s, int e) {
    return s->off[e - s->e0 + 1] - s->off[e - s->e0];
}

/* Rows per gather item: an expert's rows in blocks, so a layer of few
 * experts still spreads its gather (and the rounding) over every thread. */
#define GATHER_ROWS 32

static void gather_item(void *arg, int it, int slot) {
    (void)slot;
    const struct bf_job *j = arg;
    const capmoe_expert_set *s = j->s;
    int a = it / j->n_gb, b = it % j->n_gb;
    int H = j->m->cfg.hidden_size, e = j->order[a], n = rows_of(s, e), off = s->off[e - s->e0];
    int pad = j->prow[2 * a + 1], r0 = b * GATHER_ROWS;
    if (r0 >= pad) return;
    int r1 = r0 + GATHER_ROWS < pad ? r0 + GATHER_ROWS : pad, real = r1 < n ? r1 : n;
    uint16_t *x = (uint16_t *)j->m->bx.p + (size_t)j->prow[2 * a] * H;
    for (int i = r0; i < real; i++) {
        const float *src = s->h ? s->h + (size_t)s->tok[off + i] * H : s->x + (size_t)(off + i) * H;
        capmoe_bf16_from_f32(x + (size_t)i * H, src, (size_t)H);
    }
    if (real < r1) {
        int z0 = real > r0 ? real : r0;
        memset(x + (size_t)z0 * H, 0, (size_t)(r1 - z0) * H * sizeof *x);
    }
}

static void gate_up_item(void *arg, int it, int slot) {
    const struct bf_job *j = arg;
    struct capmoe_model *m = j->m;
    int H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size;
    int a = it / j->n_gu, ch = it % j->n_gu, e = j->order[a], Mp = j->prow[2 * a + 1];
    const capmoe_dnnl_mat *w = j->s->L->bf_gu[e];
    int cols = capmoe_dnnl_mat_chunk_cols(w, ch), c0 = ch * capmoe_dnnl_mat_cw(w);
    float *y = capmoe_par_scratch(m->par, slot, (size_t)Mp * 2 * cols);
    if (!y) { /* recorded like a oneDNN failure: the forward fails */
        capmoe_dnnl_set_failed(m->dnnl, "--compute bf16: out of memory for a product's output");
        return;
    }
    const uint16_t *x = (const uint16_t *)m->bx.p + (size_t)j->prow[2 * a] * H;
    if (capmoe_dnnl_run_chunk(m->dnnl, slot, w, ch, x, Mp, y) != 0) return;
    uint16_t *g = (uint16_t *)m->bg.p + (size_t)j->prow[2 * a] * I + c0;
    for (int i = 0; i < Mp; i++) {
        float *row = y + (size_t)i * 2 * cols;
        capmoe_silu_mul(row, row + cols, (size_t)cols);
        capmoe_bf16_from_f32(g + (size_t)i * I, row, (size_t)cols);
    }
}

static void down_item(void *arg, int it, int slot) {
    const struct bf_job *j = arg;
    struct capmoe_model *m = j->m;
    const capmoe_expert_set *s = j->s;
    int H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size;
    int a = it / j->n_dn, ch = it % j->n_dn, e = j->order[a], Mp = j->prow[2 * a + 1];
    const capmoe_dnnl_mat *w = s->L->bf_dn[e];
    int cols = capmoe_dnnl_mat_chunk_cols(w, ch), c0 = ch * capmoe_dnnl_mat_cw(w);
    float *y = capmoe_par_scratch(m->par, slot, (size_t)Mp * cols);
    if (!y) {
        capmoe_dnnl_set_failed(m->dnnl, "--compute bf16: out of memory for a product's output");
        return;
    }
    const uint16_t *g = (const uint16_t *)m->bg.p + (size_t)j->prow[2 * a] * I;
    if (capmoe_dnnl_run_chunk(m->dnnl, slot, w, ch, g, Mp, y) != 0) return;
    int n = rows_of(s, e), off = s->off[e - s->e0];
    for (int i = 0; i < n; i++)
        memcpy(s->y + (size_t)(off + i) * H + c0, y + (size_t)i * cols, (size_t)cols * sizeof(float));
}

int capmoe_moe_run_set_bf16(struct capmoe_model *m, const capmoe_expert_set *s, const int *order,
                            int n_active) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, I = c->moe_intermediate_size, nt = capmoe_par_threads(m->par);
    if (!m->dnnl || n_active <= 0 || !s->L->bf_gu) return -1;
    if ((size_t)n_active * 2 > m->cap_bf_row) {
        int *p = realloc(m->bf_row, (size_t)n_active * 2 * sizeof *p);
        if (!p) return -1;
        m->bf_row = p;
        m->cap_bf_row = (size_t)n_active * 2;
    }
    size_t rows = 0;
    capmoe_error err;
    for (int a = 0; a < n_active; a++) {
        int e = order[a], Mp = capmoe_dnnl_pad_rows(rows_of(s, e));
        if (!s->L->bf_gu[e] || !s->L->bf_dn[e] ||
            capmoe_dnnl_prepare(m->dnnl, s->L->bf_gu[e], Mp, nt, &err) != 0 ||
            capmoe_dnnl_prepare(m->dnnl, s->L->bf_dn[e], Mp, nt, &err) != 0)
            return -1; /* float32 then */
        m->bf_row[2 * a] = (int)rows;
        m->bf_row[2 * a + 1] = Mp;
        rows += (size_t)Mp;
    }
    /* BF16 blocks, in a float buffer (two per float) */
    if (capmoe_buf_reserve(&m->bx, rows * H / 2 + 1) || capmoe_buf_reserve(&m->bg, rows * I / 2 + 1))
        return -1;
    const capmoe_dnnl_mat *w0 = s->L->bf_gu[order[0]], *d0 = s->L->bf_dn[order[0]];
    struct bf_job j = {m, s, order, m->bf_row, capmoe_dnnl_mat_chunks(w0), capmoe_dnnl_mat_chunks(d0),
                       (m->bf_row[1] + GATHER_ROWS - 1) / GATHER_ROWS};
    capmoe_par_for(m->par, n_active * j.n_gb, gather_item, &j);
    capmoe_par_for(m->par, n_active * j.n_gu, gate_up_item, &j);
    capmoe_par_for(m->par, n_active * j.n_dn, down_item, &j);
    return 0;
}
