/* moe.c - one MoE block: router GEMM, capacity-aware dispatch over all T tokens
 * of the batch, the experts' GEMMs on R rank workers (rank r hosts experts
 * [r*E/R, (r+1)*E/R)), the weighted combine and the shared expert(s) (Qwen2-MoE's
 * with its sigmoid gate, DeepSeek's without). The router is the model's
 * (dispatch.h capmoe_router: softmax top-k, or DeepSeek's).
 * Each expert's tokens are gathered and run as one GEMM per projection. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capmoe/ops.h"
#include "model_internal.h"

struct rank_job {
    struct capmoe_model *m;
    const struct capmoe_layer *L;
    const float *h;
    int R;
    double rank_time[CAPMOE_MAX_RANKS];
    double rank_cpu[CAPMOE_MAX_RANKS];
};

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Copies expert e's tokens (rows of h) into its rows of xe. */
static void gather(struct rank_job *j, int e) {
    const capmoe_dispatch_plan *P = &j->m->plan;
    int H = j->m->cfg.hidden_size;
    for (int i = P->expert_off[e]; i < P->expert_off[e + 1]; i++)
        memcpy(j->m->xe.p + (size_t)i * H, j->h + (size_t)P->tok[i] * H, (size_t)H * sizeof(float));
}

/* Expert e's tokens through gate/up, SiLU, down, with the products split over
 * par (NULL: this thread only). */
static void run_expert(struct rank_job *j, int e, capmoe_par *par) {
    struct capmoe_model *m = j->m;
    const capmoe_dispatch_plan *P = &m->plan;
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, I = c->moe_intermediate_size;
    int off = P->expert_off[e], n = P->expert_off[e + 1] - off;
    if (n == 0) return;
    float *xe = m->xe.p + (size_t)off * H;
    float *ge = m->ge.p + (size_t)off * I;
    float *ue = m->ue.p + (size_t)off * I;
    float *ye = m->ye.p + (size_t)off * H;
    gather(j, e);
    capmoe_linear(par, ge, xe, j->L->w_gate[e], NULL, n, I, H);
    capmoe_linear(par, ue, xe, j->L->w_up[e], NULL, n, I, H);
    capmoe_silu_mul(ge, ue, (size_t)n * I);
    capmoe_linear(par, ye, ge, j->L->w_down[e], NULL, n, H, I);
}

/* Every expert's batch small enough for the small-M kernels (decode, short
 * prompts): the experts' products go to the
 * pool in items of EXPERT_COLS output columns, gate and up (with the SiLU)
 * in one pass, down in the next, largest expert first. Items are claimed
 * as threads free up, so the threads finish together however uneven the
 * experts' loads; each item streams its slice of the weights once. */
#define EXPERT_COLS 64

static int col_blocks(int n) { return (n + EXPERT_COLS - 1) / EXPERT_COLS; }

/* Item `it` of a pass over outputs of width `width`: expert *e (its rows
 * [*off, *off + *n) of the gathered buffers), outputs [*c0, *c0 + *nc). */
static void expert_cols(const struct capmoe_model *m, int it, int width, int *e, int *c0, int *nc,
                        int *off, int *n) {
    int nb = col_blocks(width);
    *e = m->expert_order[it / nb];
    *c0 = it % nb * EXPERT_COLS;
    *nc = width - *c0 < EXPERT_COLS ? width - *c0 : EXPERT_COLS;
    *off = m->plan.expert_off[*e];
    *n = m->plan.expert_off[*e + 1] - *off;
}

static void gate_up_item(void *arg, int it, int slot) {
    (void)slot;
    struct rank_job *j = arg;
    struct capmoe_model *m = j->m;
    int H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size, e, c0, nc, off, n;
    expert_cols(m, it, I, &e, &c0, &nc, &off, &n);
    const float *xe = m->xe.p + (size_t)off * H;
    float *ge = m->ge.p + (size_t)off * I + c0, *ue = m->ue.p + (size_t)off * I + c0;
    capmoe_gemm_nt(NULL, ge, I, xe, H, capmoe_wmat_rows(j->L->w_gate[e], H, (size_t)H, c0), H, n,
                   nc, H, 1.0f, 0.0f);
    capmoe_gemm_nt(NULL, ue, I, xe, H, capmoe_wmat_rows(j->L->w_up[e], H, (size_t)H, c0), H, n,
                   nc, H, 1.0f, 0.0f);
    for (int i = 0; i < n; i++) capmoe_silu_mul(ge + (size_t)i * I, ue + (size_t)i * I, (size_t)nc);
}

static void down_item(void *arg, int it, int slot) {
    (void)slot;
    struct rank_job *j = arg;
    struct capmoe_model *m = j->m;
    int H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size, e, c0, nc, off, n;
    expert_cols(m, it, H, &e, &c0, &nc, &off, &n);
    capmoe_gemm_nt(NULL, m->ye.p + (size_t)off * H + c0, H, m->ge.p + (size_t)off * I, I,
                   capmoe_wmat_rows(j->L->w_down[e], I, (size_t)I, c0), I, n, nc, I, 1.0f, 0.0f);
}

static void run_rank(void *arg, int r) {
    struct rank_job *j = arg;
    struct capmoe_model *m = j->m;
    const capmoe_dispatch_plan *P = &m->plan;
    int E = m->cfg.n_experts;
    double t0 = capmoe_now(), c0 = thread_cpu_seconds();
    int e0 = r * E / j->R, e1 = (r + 1) * E / j->R;
    if (j->R > 1) {
        /* Several ranks: each runs on one thread, as one device each would
         * (its own single-thread pool: scratch, no workers). */
        for (int e = e0; e < e1; e++) run_expert(j, e, m->rank_par[r]);
    } else {
        /* One rank may use every core: in column items when every
         * expert's products run the small-M kernels, else each product split
         * across the threads. */
        int big = 0, n_active = 0, *order = m->expert_order;
        for (int e = e0; e < e1; e++) {
            int n = P->expert_off[e + 1] - P->expert_off[e];
            big |= !capmoe_gemm_small(j->L->w_gate[e], n, m->cfg.hidden_size) ||
                   !capmoe_gemm_small(j->L->w_down[e], n, m->cfg.moe_intermediate_size);
            if (n > 0) {
                int i = n_active++;
                while (i > 0 && P->expert_off[order[i - 1] + 1] - P->expert_off[order[i - 1]] < n) {
                    order[i] = order[i - 1];
                    i--;
                }
                order[i] = e;
            }
        }
        if (!big && n_active > 1 && capmoe_par_threads(m->par) > 1) {
            const capmoe_hfconfig *c = &m->cfg;
            for (int i = 0; i < n_active; i++) gather(j, order[i]);
            capmoe_par_for(m->par, n_active * col_blocks(c->moe_intermediate_size), gate_up_item, j);
            capmoe_par_for(m->par, n_active * col_blocks(c->hidden_size), down_item, j);
        } else {
            for (int e = e0; e < e1; e++) run_expert(j, e, m->par);
        }
    }
    if (r < CAPMOE_MAX_RANKS) {
        j->rank_time[r] = capmoe_now() - t0;
        j->rank_cpu[r] = thread_cpu_seconds() - c0;
    }
}

int capmoe_moe_forward(struct capmoe_model *m, const struct capmoe_layer *L, int layer_idx,
                       const float *h, float *out, int T, const capmoe_dispatch_cfg *cfg,
                       const int *tok_rank, capmoe_layer_stats *ls, capmoe_error *err) {
    const capmoe_hfconfig *c = &m->cfg;
    int H = c->hidden_size, I = c->moe_intermediate_size, E = c->n_experts;
    int R = cfg->ep_ranks > 0 ? cfg->ep_ranks : 1;
    double t0 = capmoe_now();
    if (capmoe_buf_reserve(&m->router, (size_t)T * E) != 0)
        return capmoe_set_error(err, "out of memory");
    if (!m->expert_order && !(m->expert_order = calloc((size_t)E, sizeof(int))))
        return capmoe_set_error(err, "out of memory");
    capmoe_linear(m->par, m->router.p, h, capmoe_wmat_f32(L->router), NULL, T, E, H);
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

    struct rank_job job = {.m = m, .L = L, .h = h, .R = R};
    capmoe_ep_run(m->ep, R, run_rank, &job);
    double t2 = capmoe_now();

    memset(out, 0, (size_t)T * H * sizeof(float));
    for (int e = 0; e < E; e++)
        for (int i = P->expert_off[e]; i < P->expert_off[e + 1]; i++)
            capmoe_axpy(out + (size_t)P->tok[i] * H, m->ye.p + (size_t)i * H, P->weight[i], H);

    if (L->sh_gate.p) {
        int Is = c->shared_expert_intermediate_size;
        if (capmoe_buf_reserve(&m->sh1, (size_t)T * Is) ||
            capmoe_buf_reserve(&m->sh2, (size_t)T * Is) ||
            capmoe_buf_reserve(&m->xe, (size_t)T * H))
            return capmoe_set_error(err, "out of memory");
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

    if (ls) {
        memset(ls, 0, sizeof *ls);
        ls->layer = layer_idx;
        ls->tokens = T;
        ls->limited = P->limited;
        ls->capacity = P->capacity;
        ls->gamma = P->gamma;
        ls->n_experts = E < CAPMOE_MAX_EXPERTS ? E : CAPMOE_MAX_EXPERTS;
        for (int e = 0; e < ls->n_experts; e++) ls->loads[e] = P->loads[e];
        ls->dropped = P->dropped;
        ls->rerouted = P->rerouted;
        ls->dropped_mass = P->dropped_mass;
        ls->n_ranks = R < CAPMOE_MAX_RANKS ? R : CAPMOE_MAX_RANKS;
        for (int r = 0; r < ls->n_ranks; r++) {
            int e0 = r * E / R, e1 = (r + 1) * E / R;
            for (int e = e0; e < e1; e++) ls->rank_load[r] += P->loads[e];
            ls->rank_time[r] = job.rank_time[r];
            ls->rank_cpu_time[r] = job.rank_cpu[r];
        }
        ls->router_time = t1 - t0;
        ls->expert_time = t2 - t1;
        ls->layer_time = capmoe_now() - t0;
    }
    return 0;
}
