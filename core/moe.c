/* moe.c - one MoE block: router GEMM, capacity-aware dispatch over the T
 * tokens this process holds, the experts' GEMMs, the weighted combine and
 * the shared expert(s) (Qwen2-MoE's with its sigmoid gate, DeepSeek's
 * without). The router is the model's (dispatch.h capmoe_router: softmax
 * top-k, or DeepSeek's). Each expert's tokens are gathered and run as one
 * GEMM per projection.
 *
 * Where the experts run is the transport's business (m->xport):
 *  - threads (this file): R rank worker threads in this process, rank r
 *    running experts [r*E/R, (r+1)*E/R) (R = --ep-ranks; with R = 1 the
 *    experts use every core of the engine's pool);
 *  - MPI (moe_mpi.c): the kept pairs travel to the processes hosting their
 *    experts and back (--ep mpi).
 * Both fill m->ye with one output row per pair of the plan, in plan order;
 * the combine below does not know which ran. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capmoe/dnnl_matmul.h"
#include "capmoe/ops.h"
#include "capmoe/quant.h"
#include "model_internal.h"

double capmoe_thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- running a set of experts ------------------------------------------------ */

/* Copies expert e's tokens (rows of s->h chosen by s->tok) into its rows of x. */
static void gather(const capmoe_expert_set *s, int e, int H) {
    for (int i = s->off[e - s->e0]; i < s->off[e - s->e0 + 1]; i++)
        memcpy(s->x + (size_t)i * H, s->h + (size_t)s->tok[i] * H, (size_t)H * sizeof(float));
}

static int rows_of(const capmoe_expert_set *s, int e) {
    return s->off[e - s->e0 + 1] - s->off[e - s->e0];
}

/* Expert e's rows through gate/up, SiLU, down, with the products split over
 * par (NULL: this thread only). */
static void run_expert(struct capmoe_model *m, const capmoe_expert_set *s, int e, capmoe_par *par) {
    const capmoe_hfconfig *c = &m->cfg;
    const struct capmoe_layer *L = s->L;
    int H = c->hidden_size, I = c->moe_intermediate_size;
    int off = s->off[e - s->e0], n = rows_of(s, e);
    if (n == 0) return; /* an expert without tokens is never read */
    float *xe = s->x + (size_t)off * H, *ge = s->g + (size_t)off * I;
    float *ue = s->u + (size_t)off * I, *ye = s->y + (size_t)off * H;
    if (s->h) gather(s, e, H);
    capmoe_linear(par, ge, xe, L->w_gate[e], NULL, n, I, H);
    capmoe_linear(par, ue, xe, L->w_up[e], NULL, n, I, H);
    capmoe_silu_mul(ge, ue, (size_t)n * I);
    capmoe_linear(par, ye, ge, L->w_down[e], NULL, n, H, I);
}

/* When every expert's batch is small enough for the small-M kernels (decode,
 * short prompts), the experts' products go to the pool in items of
 * EXPERT_COLS output columns, gate and up (with the SiLU) in one pass, down
 * in the next, largest expert first. Items are claimed as threads free up,
 * so the threads finish together however uneven the experts' loads; each
 * item streams its slice of the weights once. */
#define EXPERT_COLS 64

static int col_blocks(int n) { return (n + EXPERT_COLS - 1) / EXPERT_COLS; }

struct items_job {
    struct capmoe_model *m;
    const capmoe_expert_set *s;
    const int *order;  /* active experts, largest first */
    capmoe_dtype qt;   /* Q8/Q4 experts: their activations are quantized once per
                        * expert (qx: x's rows, qg: g's rows, at row offset off
                        * times the bytes of one row), not once per item */
    char *qx, *qg;
};

/* Bytes of `rows` quantized activation rows of K (capmoe_qact_bytes is
 * linear in the rows: an expert's rows start at its row offset times this). */
static size_t qrow_bytes(int rows, int K) { return capmoe_qact_bytes(rows, K); }

/* Item e of a pass quantizing each active expert's rows of x (pass 0, after
 * gathering them) or of g (pass 1, after SiLU). */
static void quant_x_item(void *arg, int it, int slot) {
    (void)slot;
    const struct items_job *j = arg;
    const capmoe_expert_set *s = j->s;
    int H = j->m->cfg.hidden_size, e = j->order[it], off = s->off[e - s->e0];
    if (s->h) gather(s, e, H);
    capmoe_qact_quantize(j->qx + qrow_bytes(off, H), s->x + (size_t)off * H, H, rows_of(s, e), H);
}
static void quant_g_item(void *arg, int it, int slot) {
    (void)slot;
    const struct items_job *j = arg;
    const capmoe_expert_set *s = j->s;
    int I = j->m->cfg.moe_intermediate_size, e = j->order[it], off = s->off[e - s->e0];
    capmoe_qact_quantize(j->qg + qrow_bytes(off, I), s->g + (size_t)off * I, I, rows_of(s, e), I);
}

/* Item `it` of a pass over outputs of width `width`: expert *e (its rows
 * [*off, *off + *n)), outputs [*c0, *c0 + *nc). */
static void expert_cols(const struct items_job *j, int it, int width, int *e, int *c0, int *nc,
                        int *off, int *n) {
    int nb = col_blocks(width);
    *e = j->order[it / nb];
    *c0 = it % nb * EXPERT_COLS;
    *nc = width - *c0 < EXPERT_COLS ? width - *c0 : EXPERT_COLS;
    *off = j->s->off[*e - j->s->e0];
    *n = rows_of(j->s, *e);
}

static void gate_up_item(void *arg, int it, int slot) {
    (void)slot;
    const struct items_job *j = arg;
    const capmoe_expert_set *s = j->s;
    int H = j->m->cfg.hidden_size, I = j->m->cfg.moe_intermediate_size, e, c0, nc, off, n;
    expert_cols(j, it, I, &e, &c0, &nc, &off, &n);
    const float *xe = s->x + (size_t)off * H;
    float *ge = s->g + (size_t)off * I + c0, *ue = s->u + (size_t)off * I + c0;
    if (j->qx) {
        const char *qa = j->qx + qrow_bytes(off, H);
        capmoe_quant_gemm(ge, I, qa, capmoe_wmat_rows(s->L->w_gate[e], H, (size_t)H, c0).p, j->qt,
                          n, nc, H, 1.0f, 0.0f);
        capmoe_quant_gemm(ue, I, qa, capmoe_wmat_rows(s->L->w_up[e], H, (size_t)H, c0).p, j->qt,
                          n, nc, H, 1.0f, 0.0f);
        for (int i = 0; i < n; i++) capmoe_silu_mul(ge + (size_t)i * I, ue + (size_t)i * I, (size_t)nc);
        return;
    }
    capmoe_gemm_nt(NULL, ge, I, xe, H, capmoe_wmat_rows(s->L->w_gate[e], H, (size_t)H, c0), H, n,
                   nc, H, 1.0f, 0.0f);
    capmoe_gemm_nt(NULL, ue, I, xe, H, capmoe_wmat_rows(s->L->w_up[e], H, (size_t)H, c0), H, n,
                   nc, H, 1.0f, 0.0f);
    for (int i = 0; i < n; i++) capmoe_silu_mul(ge + (size_t)i * I, ue + (size_t)i * I, (size_t)nc);
}

static void down_item(void *arg, int it, int slot) {
    (void)slot;
    const struct items_job *j = arg;
    const capmoe_expert_set *s = j->s;
    int H = j->m->cfg.hidden_size, I = j->m->cfg.moe_intermediate_size, e, c0, nc, off, n;
    expert_cols(j, it, H, &e, &c0, &nc, &off, &n);
    if (j->qg) {
        capmoe_quant_gemm(s->y + (size_t)off * H + c0, H, j->qg + qrow_bytes(off, I),
                          capmoe_wmat_rows(s->L->w_down[e], I, (size_t)I, c0).p, j->qt, n, nc, I,
                          1.0f, 0.0f);
        return;
    }
    capmoe_gemm_nt(NULL, s->y + (size_t)off * H + c0, H, s->g + (size_t)off * I, I,
                   capmoe_wmat_rows(s->L->w_down[e], I, (size_t)I, c0), I, n, nc, I, 1.0f, 0.0f);
}

void capmoe_moe_run_set(struct capmoe_model *m, const capmoe_expert_set *s, capmoe_par *par) {
    if (par != m->par) { /* a single-thread rank: one expert after another */
        for (int e = s->e0; e < s->e1; e++) run_expert(m, s, e, par);
        return;
    }
    /* The whole pool: in column items when every expert's products run the
     * small-M kernels, else each product split across the threads. */
    int big = 0, n_active = 0, *order = m->expert_order;
    for (int e = s->e0; e < s->e1; e++) {
        int n = rows_of(s, e);
        big |= !capmoe_gemm_small(s->L->w_gate[e], n, m->cfg.hidden_size) ||
               !capmoe_gemm_small(s->L->w_down[e], n, m->cfg.moe_intermediate_size);
        if (n > 0) {
            int i = n_active++;
            while (i > 0 && rows_of(s, order[i - 1]) < n) {
                order[i] = order[i - 1];
                i--;
            }
            order[i] = e;
        }
    }
    /* --compute bf16: the whole set through oneDNN once an expert has enough
     * rows (decode-sized sets keep the float32 small-M kernels) */
    if (m->dnnl && n_active > 0 && rows_of(s, order[0]) >= m->bf16_min_rows &&
        capmoe_moe_run_set_bf16(m, s, order, n_active) == 0)
        return;
    if (!big && n_active > 1 && capmoe_par_threads(par) > 1) {
        const capmoe_hfconfig *c = &m->cfg;
        struct items_job j = {m, s, order, s->L->w_gate[order[0]].dtype, NULL, NULL};
        int H = c->hidden_size, I = c->moe_intermediate_size, rows = s->off[s->e1 - s->e0];
        if (capmoe_dtype_is_q(j.qt) &&
            capmoe_buf_reserve(&m->qx, qrow_bytes(rows, H) / sizeof(float) + 1) == 0 &&
            capmoe_buf_reserve(&m->qg, qrow_bytes(rows, I) / sizeof(float) + 1) == 0) {
            j.qx = (char *)m->qx.p;
            j.qg = (char *)m->qg.p;
            capmoe_par_for(par, n_active, quant_x_item, &j); /* gathers too */
        } else if (s->h) {
            for (int i = 0; i < n_active; i++) gather(s, order[i], H);
        }
        capmoe_par_for(par, n_active * col_blocks(I), gate_up_item, &j);
        if (j.qg) capmoe_par_for(par, n_active, quant_g_item, &j);
        capmoe_par_for(par, n_active * col_blocks(H), down_item, &j);
    } else {
        for (int e = s->e0; e < s->e1; e++) run_expert(m, s, e, par);
    }
}

/* ---- the thread transport ------------------------------------------------------ */

struct rank_job {
    struct capmoe_model *m;
    const struct capmoe_layer *L;
    const float *h;
    int R;
    double rank_time[CAPMOE_MAX_RANKS];
    double rank_cpu[CAPMOE_MAX_RANKS];
};

static void run_rank(void *arg, int r) {
    struct rank_job *j = arg;
    struct capmoe_model *m = j->m;
    const capmoe_dispatch_plan *P = &m->plan;
    int E = m->cfg.n_experts;
    double t0 = capmoe_now(), c0 = capmoe_thread_cpu_seconds();
    int e0 = r * E / j->R, e1 = (r + 1) * E / j->R;
    capmoe_expert_set s = {.L = j->L, .e0 = e0, .e1 = e1, .off = P->expert_off + e0,
                           .h = j->h, .tok = P->tok, .x = m->xe.p, .g = m->ge.p,
                           .u = m->ue.p, .y = m->ye.p};
    /* Several ranks: each runs on one thread, as one device each would (its
     * own single-thread pool: scratch, no workers); one rank uses every core. */
    capmoe_moe_run_set(m, &s, j->R > 1 ? m->rank_par[r] : m->par);
    if (r < CAPMOE_MAX_RANKS) {
        j->rank_time[r] = capmoe_now() - t0;
        j->rank_cpu[r] = capmoe_thread_cpu_seconds() - c0;
    }
}

static int threads_run(struct capmoe_model *m, const struct capmoe_layer *L, const float *h,
                       const capmoe_dispatch_cfg *cfg, capmoe_layer_stats *ls,
                       capmoe_error *err) {
    const capmoe_dispatch_plan *P = &m->plan;
    int E = m->cfg.n_experts, R = cfg->ep_ranks > 0 ? cfg->ep_ranks : 1;
    struct rank_job job = {.m = m, .L = L, .h = h, .R = R};
    capmoe_ep_run(m->ep, R, run_rank, &job);
    if (capmoe_dnnl_failed(m->dnnl, err)) return -1;
    if (ls) {
        ls->n_ranks = R < CAPMOE_MAX_RANKS ? R : CAPMOE_MAX_RANKS;
        for (int r = 0; r < ls->n_ranks; r++) {
            int e0 = r * E / R, e1 = (r + 1) * E / R;
            for (int e = e0; e < e1; e++) ls->rank_load[r] += P->loads[e];
            ls->rank_time[r] = job.rank_time[r];
            ls->rank_cpu_time[r] = job.rank_cpu[r];
        }
    }
    return 0;
}

const capmoe_moe_transport capmoe_moe_threads = {"threads", threads_run};

/* ---- the block ------------------------------------------------------------------ */

static void shared_expert(struct capmoe_model *m, const struct capmoe_layer *L, const float *h,
                          float *out, int T) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, Is = c->shared_expert_intermediate_size;
    capmoe_linear(m->par, m->sh1.p, h, L->sh_gate, NULL, T, Is, H);
    capmoe_linear(m->par, m->sh2.p, h, L->sh_up, NULL, T, Is, H);
    capmoe_silu_mul(m->sh1.p, m->sh2.p, (size_t)T * Is);
    float *y = m->xe.p;
    capmoe_linear(m->par, y, m->sh1.p, L->sh_down, NULL, T, H, Is);
    for (int t = 0; t < T; t++) {
        const float *ht = h + (size_t)t * H;
        float gate = 1.0f; /* DeepSeek's shared experts have no gate */
        if (L->sh_gate_w) {
            double g = 0.0;
            for (int i = 0; i < H; i++) g += (double)ht[i] * L->sh_gate_w[i];
            gate = (float)(1.0 / (1.0 + exp(-g)));
        }
        capmoe_axpy(out + (size_t)t * H, y + (size_t)t * H, gate, H);
    }
}

/* The weighted combine, over the pool by columns: part of columns [16 c0,
 * 16 c1) zeroes them in every token's row, then adds every pair's slice in
 * plan order (the same order, hence the same sums, as one thread). */
struct combine_job {
    float *out;
    const float *ye;
    const capmoe_dispatch_plan *P;
    int T, H, E;
};

static void combine_cols(void *arg, int c0, int c1) {
    const struct combine_job *j = arg;
    int H = j->H, lo = c0 * 16, n = (c1 * 16 < H ? c1 * 16 : H) - lo;
    for (int t = 0; t < j->T; t++) memset(j->out + (size_t)t * H + lo, 0, (size_t)n * sizeof(float));
    for (int i = 0; i < j->P->expert_off[j->E]; i++)
        capmoe_axpy(j->out + (size_t)j->P->tok[i] * H + lo, j->ye + (size_t)i * H + lo,
                    j->P->weight[i], n);
}

int capmoe_moe_forward(struct capmoe_model *m, const struct capmoe_layer *L, int layer_idx,
                       const float *h, float *out, int T, const capmoe_dispatch_cfg *cfg,
                       const int *tok_rank, capmoe_layer_stats *ls, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, I = c->moe_intermediate_size, E = c->n_experts;
    double t0 = capmoe_now();
    if (ls) {
        memset(ls, 0, sizeof *ls);
        ls->layer = layer_idx;
    }
    if (capmoe_buf_reserve(&m->router, (size_t)T * E + 1) != 0)
        return capmoe_set_error(err, "out of memory");
    if (!m->expert_order && !(m->expert_order = calloc((size_t)E, sizeof(int))))
        return capmoe_set_error(err, "out of memory");
    if (T > 0) capmoe_linear(m->par, m->router.p, h, capmoe_wmat_f32(L->router), NULL, T, E, H);
    capmoe_dispatch_plan *P = &m->plan;
    capmoe_router route = m->route; /* the model's router, this layer's bias */
    route.bias = L->router_bias;
    if (capmoe_dispatch_compute_router(P, cfg, &route, m->router.p, T, E, c->top_k, tok_rank,
                                       err) != 0)
        return -1;
    double t1 = capmoe_now();
    size_t np = (size_t)P->n_pairs;
    if (capmoe_buf_reserve(&m->xe, np * H + 1) || capmoe_buf_reserve(&m->ge, np * I + 1) ||
        capmoe_buf_reserve(&m->ue, np * I + 1) || capmoe_buf_reserve(&m->ye, np * H + 1))
        return capmoe_set_error(err, "out of memory for %zu expert pairs", np);
    if (ls) { /* the dispatch's figures; the transport adds its ranks' */
        ls->tokens = T;
        ls->limited = P->limited;
        ls->capacity = P->capacity;
        ls->gamma = P->gamma;
        ls->n_experts = E < CAPMOE_MAX_EXPERTS ? E : CAPMOE_MAX_EXPERTS;
        for (int e = 0; e < ls->n_experts; e++) ls->loads[e] = P->loads[e];
        ls->dropped = P->dropped;
        ls->rerouted = P->rerouted;
        ls->dropped_mass = P->dropped_mass;
        ls->piggybacked = P->piggybacked;
        ls->activated = P->activated;
        ls->policy = P->policy;
        ls->regime = P->regime;
    }

    m->cur_layer = layer_idx;
    if (m->xport->run(m, L, h, cfg, ls, err) != 0) return -1;
    double t2 = capmoe_now();

    if (T > 0) {
        struct combine_job cj = {out, m->ye.p, P, T, H, E};
        /* a decode step's few pairs: on this thread (a fork costs more) */
        capmoe_par_rows((size_t)P->n_pairs * H < 65536 ? NULL : m->par, (H + 15) / 16, 4,
                        combine_cols, &cj);
    }

    if (L->sh_gate.p && T > 0) {
        int Is = c->shared_expert_intermediate_size;
        if (capmoe_buf_reserve(&m->sh1, (size_t)T * Is) ||
            capmoe_buf_reserve(&m->sh2, (size_t)T * Is) ||
            capmoe_buf_reserve(&m->xe, (size_t)T * H))
            return capmoe_set_error(err, "out of memory");
        shared_expert(m, L, h, out, T);
    }
    if (ls) {
        ls->router_time = t1 - t0;
        ls->expert_time = t2 - t1;
        ls->layer_time = capmoe_now() - t0;
    }
    return 0;
}

/* ---- where a dispatch stops being memory-bound (model.h) ------------------------ */

int capmoe_model_regime_probe(capmoe_model *m, int max_tokens, int reps, capmoe_regime_probe *out,
                              capmoe_error *err) {
    memset(out, 0, sizeof *out);
    if (m->comm) return capmoe_set_error(err, "regime probe: not available under --ep mpi");
    if (max_tokens < 2 || reps < 1)
        return capmoe_set_error(err, "regime probe: max_tokens %d must be >= 2, reps %d >= 1",
                                max_tokens, reps);
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, E = c->n_experts;
    out->n_experts = E;
    for (int l = 0; l < c->n_layers; l++) out->moe_layers += m->layers[l].is_moe;
    if (out->moe_layers == 0) return capmoe_set_error(err, "regime probe: the model has no MoE layer");
    float *h = malloc((size_t)max_tokens * H * sizeof(float));
    float *y = malloc((size_t)max_tokens * H * sizeof(float));
    if (!h || !y) {
        free(h);
        free(y);
        return capmoe_set_error(err, "regime probe: out of memory");
    }
    /* hidden states of unit RMS from a fixed LCG: routes spread as real ones do */
    uint64_t st = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < (size_t)max_tokens * H; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = ((float)(st >> 40) / 16777216.0f * 2.0f - 1.0f) * 1.7320508f;
    }
    capmoe_dispatch_cfg cfg;
    capmoe_dispatch_cfg_default(&cfg);
    capmoe_layer_stats ls;
    int rc = 0;
    /* T = 1, 2, 3, 4, 6, 8, 11, 16, ...: powers of sqrt(2), so the compute-bound
     * end, where the fit lives, has several points */
    for (int i = 0, T = 1; T <= max_tokens && out->n < CAPMOE_PROBE_MAX;
         i++, T = (int)lround(pow(2.0, i / 2.0))) {
        if (out->n > 0 && T == out->tokens[out->n - 1]) continue;
        double best = -1, act = 0;
        for (int r = 0; r < reps && rc == 0; r++) {
            double t0 = capmoe_now();
            int na = 0;
            for (int l = 0; l < c->n_layers && rc == 0; l++) {
                if (!m->layers[l].is_moe) continue;
                rc = capmoe_moe_forward(m, &m->layers[l], l, h, y, T, &cfg, NULL, &ls, err);
                na += ls.activated;
            }
            double dt = capmoe_now() - t0;
            if (best < 0 || dt < best) best = dt;
            act = (double)na / out->moe_layers;
        }
        if (rc) break;
        out->tokens[out->n] = T;
        out->seconds[out->n] = best;
        out->activated[out->n] = act;
        out->n++;
    }
    free(h);
    free(y);
    if (rc) return -1;
    /* The fit, over every point: t(T) = ce * activated(T) + b * T, a read cost
     * per activated expert and a work per token, least squares on the
     * relative error (weights 1 / t^2: a busy machine's noise is a factor on
     * the time, not an offset). The points below full activation pin ce;
     * fitting only the fully activated ones (3 or 4 points) swung the
     * crossover from 1 to 256 on a loaded machine, this fit stays within a
     * few tokens. a = ce * E is the cost of reading every expert. */
    double s_aa = 0, s_at = 0, s_tt = 0, s_ay = 0, s_ty = 0;
    for (int i = 0; i < out->n; i++) {
        double y = out->seconds[i], w = y > 0 ? 1.0 / (y * y) : 0.0;
        double xa = out->activated[i], xt = out->tokens[i];
        s_aa += w * xa * xa;
        s_at += w * xa * xt;
        s_tt += w * xt * xt;
        s_ay += w * xa * y;
        s_ty += w * xt * y;
    }
    double det = s_aa * s_tt - s_at * s_at;
    double ce = det > 0 ? (s_ay * s_tt - s_ty * s_at) / det : 0.0;
    double b = det > 0 ? (s_aa * s_ty - s_at * s_ay) / det : 0.0;
    double a = ce * E;
    out->fixed_seconds = a;
    out->per_token_seconds = b;
    int last = out->tokens[out->n - 1];
    if (!(b > 0) || !(a > 0)) {
        out->crossover = !(b > 0) ? last : 1;
    } else {
        double x = a / b;
        out->crossover = x >= last ? last : x < 1 ? 1 : (int)lround(x);
    }
    return 0;
}
