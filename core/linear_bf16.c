/* linear_bf16.c - --compute bf16 for the attention projections of a prompt
 * (GQA models): q, k, v and o packed for oneDNN at load (dnnl_matmul.h), and
 * a product of T rows run as items (row block of up to 256 rows, weight
 * chunk of 128 outputs) over the engine's pool, so short prompts with few
 * chunks still use every thread. Accumulation and outputs are float32. */
#include <stdlib.h>
#include <string.h>

#include "capmoe/dnnl_matmul.h"
#include "model_internal.h"

#define CW 128
#define ROW_BLOCK 256

int capmoe_attn_bf16_load(struct capmoe_model *m, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    if (c->kv_lora_rank > 0) return 0; /* latent attention keeps float32 */
    int H = c->hidden_size, qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        struct capmoe_layer *L = &m->layers[l];
        struct capmoe_dnnl_mat **dst[4] = {&L->bf_q, &L->bf_k, &L->bf_v, &L->bf_o};
        const capmoe_wmat *src[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
        int N[4] = {qd, kd, kd, H}, K[4] = {H, H, H, qd};
        for (int i = 0; i < 4; i++) {
            if (!src[i]->p || src[i]->panels) continue;
            if (capmoe_dnnl_pack(m->dnnl, m->par, dst[i], src[i], 1, N[i], K[i], CW, err) != 0)
                return capmoe_set_error(err, "--compute bf16: layer %d attention: %s", l, err->msg);
            m->alloc_bytes += capmoe_dnnl_mat_bytes(*dst[i]);
        }
    }
    return 0;
}

void capmoe_attn_bf16_free(struct capmoe_model *m) {
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
        struct capmoe_layer *L = &m->layers[l];
        capmoe_dnnl_mat_free(L->bf_q);
        capmoe_dnnl_mat_free(L->bf_k);
        capmoe_dnnl_mat_free(L->bf_v);
        capmoe_dnnl_mat_free(L->bf_o);
        L->bf_q = L->bf_k = L->bf_v = L->bf_o = NULL;
    }
}

struct lin_job {
    struct capmoe_model *m;
    float *y;
    int ldy;
    const float *x;
    int ldx, M, K, n_w, n_rb;
    struct capmoe_dnnl_mat *const *w;
    const int *col0;
    int chunks[4], first[5]; /* items of each matrix: row blocks x chunks */
};

static int block_rows(const struct lin_job *j, int rb) {
    return j->M - rb * ROW_BLOCK < ROW_BLOCK ? j->M - rb * ROW_BLOCK : ROW_BLOCK;
}

static void convert_item(void *arg, int rb, int slot) {
    (void)slot;
    const struct lin_job *j = arg;
    int n = block_rows(j, rb), pad = capmoe_dnnl_pad_rows(n);
    uint16_t *xb = (uint16_t *)j->m->bx.p + (size_t)rb * ROW_BLOCK * j->K;
    for (int i = 0; i < n; i++)
        capmoe_bf16_from_f32(xb + (size_t)i * j->K, j->x + (size_t)(rb * ROW_BLOCK + i) * j->ldx,
                             (size_t)j->K);
    memset(xb + (size_t)n * j->K, 0, (size_t)(pad - n) * j->K * sizeof *xb);
}

static void lin_item(void *arg, int it, int slot) {
    const struct lin_job *j = arg;
    struct capmoe_model *m = j->m;
    int wi = 0;
    while (it >= j->first[wi + 1]) wi++;
    int local = it - j->first[wi], ch = local % j->chunks[wi], rb = local / j->chunks[wi];
    const capmoe_dnnl_mat *w = j->w[wi];
    int n = block_rows(j, rb), pad = capmoe_dnnl_pad_rows(n);
    int cols = capmoe_dnnl_mat_chunk_cols(w, ch), c0 = j->col0[wi] + ch * capmoe_dnnl_mat_cw(w);
    float *out = capmoe_par_scratch(m->par, slot, (size_t)pad * cols);
    if (!out) {
        capmoe_dnnl_set_failed(m->dnnl, "--compute bf16: out of memory for a product's output");
        return;
    }
    /* row blocks start at multiples of ROW_BLOCK in the padded BF16 rows */
    const uint16_t *xb = (const uint16_t *)m->bx.p + (size_t)rb * ROW_BLOCK * j->K;
    if (capmoe_dnnl_run_chunk(m->dnnl, slot, w, ch, xb, pad, out) != 0) return;
    for (int i = 0; i < n; i++)
        memcpy(j->y + (size_t)(rb * ROW_BLOCK + i) * j->ldy + c0, out + (size_t)i * cols,
               (size_t)cols * sizeof(float));
}

int capmoe_bf16_linear(struct capmoe_model *m, float *y, int ldy, const float *x, int ldx, int M,
                       int K, struct capmoe_dnnl_mat *const *w, const int *col0, int n_w) {
    if (!m->dnnl || M <= 0 || n_w < 1 || n_w > 4) return -1;
    for (int i = 0; i < n_w; i++)
        if (!w[i]) return -1;
    int nt = capmoe_par_threads(m->par), n_rb = (M + ROW_BLOCK - 1) / ROW_BLOCK;
    int full = capmoe_dnnl_pad_rows(ROW_BLOCK), tail = capmoe_dnnl_pad_rows(M - (n_rb - 1) * ROW_BLOCK);
    capmoe_error err;
    for (int i = 0; i < n_w; i++)
        if ((n_rb > 1 && capmoe_dnnl_prepare(m->dnnl, w[i], full, nt, &err) != 0) ||
            capmoe_dnnl_prepare(m->dnnl, w[i], tail, nt, &err) != 0)
            return -1;
    /* rows: whole blocks, the last padded (it may exceed M by less than 16) */
    size_t rows = (size_t)(n_rb - 1) * ROW_BLOCK + (size_t)tail;
    if (capmoe_buf_reserve(&m->bx, rows * K / 2 + 1)) return -1;
    struct lin_job j = {.m = m, .y = y, .ldy = ldy, .x = x, .ldx = ldx, .M = M, .K = K,
                        .n_w = n_w, .n_rb = n_rb, .w = w, .col0 = col0};
    j.first[0] = 0;
    for (int i = 0; i < n_w; i++) {
        j.chunks[i] = capmoe_dnnl_mat_chunks(w[i]);
        j.first[i + 1] = j.first[i] + j.chunks[i] * n_rb;
    }
    capmoe_par_for(m->par, n_rb, convert_item, &j);
    capmoe_par_for(m->par, j.first[n_w], lin_item, &j);
    return 0;
}
