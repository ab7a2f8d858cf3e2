/* moe_mpi.c - the MPI transport of an MoE block (--ep mpi).
 *
 * Process r holds the weights of experts [r*E/R, (r+1)*E/R) only, and has
 * dispatched its own T_r tokens (capacity per source rank, as
 * ../shared/docs/dispatch-spec.md "Distributed expert parallelism" defines
 * it). Then, per MoE layer:
 *   1. MPI_Alltoall of the pair counts per destination expert, plus one
 *      status word (a rank that failed earlier in the step says so here,
 *      and every rank stops after this exchange, consistently);
 *   2. MPI_Alltoallv of the kept pairs' hidden rows (float32, exact) to the
 *      ranks hosting their experts; the plan is sorted by expert, so the
 *      rows for rank d are one contiguous run;
 *   3. each rank gathers the rows it received by local expert (all sources
 *      together) and runs ONE GEMM per expert and projection over them;
 *   4. MPI_Alltoallv of the output rows back, in the order they came, so
 *      the rows a source receives are its plan's pairs in plan order.
 * Ranks without tokens still take part (empty sends). The time inside the
 * exchanges is measured per rank: the fastest rank waits in step 4 for the
 * slowest (the straggler, measured rather than modelled). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* Pairs per (source, local expert) received, and where their rows sit. */
struct layout {
    int R, El;
    int *cnt;         /* [R * El]: rows from source s for local expert j */
    long long nrecv;  /* rows received in all */
};

static int fail_exchange(struct capmoe_model *m, int status, int *bad_rank, capmoe_error *err) {
    capmoe_comm *c = m->comm;
    int R = capmoe_comm_size(c), E = m->cfg.n_experts, El = E / R;
    int W = El + 1; /* words per destination: El counts + status */
    int *sc = m->a2a_cnt, *rc = m->a2a_cnt + (size_t)R * W;
    for (int d = 0; d < R; d++) {
        for (int j = 0; j < El; j++) {
            int e = d * El + j;
            sc[d * W + j] = status ? 0 : m->plan.expert_off[e + 1] - m->plan.expert_off[e];
        }
        sc[d * W + El] = status;
    }
    if (capmoe_comm_alltoall(c, sc, rc, (size_t)W * sizeof(int), err) != 0) return -1;
    *bad_rank = -1;
    for (int s = 0; s < R; s++)
        if (rc[s * W + El] && *bad_rank < 0) *bad_rank = s;
    return 0;
}

/* A collective failed (or told of a failed rank): the group is done. */
static int broken(struct capmoe_model *m, capmoe_error *err) {
    m->comm_broken = 1;
    snprintf(m->comm_broken_msg, sizeof m->comm_broken_msg, "%s", err->msg);
    return -1;
}

void capmoe_moe_mpi_fail(struct capmoe_model *m) {
    capmoe_error ignored; /* the caller keeps its own message */
    int bad;
    fail_exchange(m, 1, &bad, &ignored);
}

static int mpi_run(struct capmoe_model *m, const struct capmoe_layer *L, const float *h,
                   const capmoe_dispatch_cfg *cfg, capmoe_layer_stats *ls, capmoe_error *err) {
    (void)cfg;
    capmoe_comm *c = m->comm;
    const capmoe_dispatch_plan *P = &m->plan;
    const capmoe_hfconfig *hc = &m->cfg;
    int R = capmoe_comm_size(c), me = capmoe_comm_rank(c);
    int E = hc->n_experts, El = E / R, H = hc->hidden_size, I = hc->moe_intermediate_size;
    int W = El + 1;
    double t0 = capmoe_now();

    /* 1. counts (+ status) */
    int bad = -1;
    m->mpi_last_layer = m->cur_layer;
    if (fail_exchange(m, 0, &bad, err) != 0) return broken(m, err);
    double t_counts = capmoe_now() - t0;
    if (bad >= 0) {
        capmoe_set_error(err, "rank %d failed in this step (reported at layer %d)", bad,
                         m->cur_layer);
        return broken(m, err);
    }
    const int *rc = m->a2a_cnt + (size_t)R * W;
    long long *scount = m->a2a, *sdispl = scount + R, *rcount = sdispl + R, *rdispl = rcount + R;
    long long nrecv = 0;
    for (int s = 0; s < R; s++) {
        long long rows = 0;
        for (int j = 0; j < El; j++) rows += rc[s * W + j];
        rcount[s] = rows * H;
        rdispl[s] = nrecv * H;
        nrecv += rows;
    }
    for (int d = 0; d < R; d++) {
        int a = P->expert_off[d * El], b = P->expert_off[(d + 1) * El];
        scount[d] = (long long)(b - a) * H;
        sdispl[d] = (long long)a * H;
    }
    size_t np = (size_t)P->n_pairs, nr = (size_t)nrecv;
    size_t big = np > nr ? np : nr;
    if (capmoe_buf_reserve(&m->xe, big * H + 1) || capmoe_buf_reserve(&m->xr, nr * H + 1) ||
        capmoe_buf_reserve(&m->ge, nr * I + 1) || capmoe_buf_reserve(&m->ue, nr * I + 1) ||
        capmoe_buf_reserve(&m->ye, big * H + 1))
        return capmoe_set_error(err, "out of memory for %zu received expert rows", nr);

    /* 2. the kept pairs' rows, in plan order */
    for (size_t i = 0; i < np; i++)
        memcpy(m->xe.p + i * H, h + (size_t)P->tok[i] * H, (size_t)H * sizeof(float));
    double w1 = 0, w2 = 0;
    if (capmoe_comm_alltoallv_f32(c, m->xe.p, scount, sdispl, m->xr.p, rcount, rdispl, &w1,
                                  err) != 0)
        return broken(m, err);

    /* 3. source-major -> expert-major, then one GEMM per expert */
    int *eoff = m->a2a_cnt + 2 * (size_t)R * W; /* [El + 1] */
    eoff[0] = 0;
    for (int j = 0; j < El; j++) {
        int rows = 0;
        for (int s = 0; s < R; s++) rows += rc[s * W + j];
        eoff[j + 1] = eoff[j] + rows;
    }
    {
        long long so = 0; /* source-major row */
        for (int s = 0; s < R; s++) {
            for (int j = 0, at = 0; j < El; j++) {
                int n = rc[s * W + j];
                /* expert j's rows from sources before s come first */
                at = eoff[j];
                for (int s2 = 0; s2 < s; s2++) at += rc[s2 * W + j];
                memcpy(m->xe.p + (size_t)at * H, m->xr.p + (size_t)so * H,
                       (size_t)n * H * sizeof(float));
                so += n;
            }
        }
    }
    double te0 = capmoe_now(), tc0 = capmoe_thread_cpu_seconds();
    capmoe_expert_set set = {.L = L, .e0 = m->e0, .e1 = m->e1, .off = eoff, .h = NULL,
                             .tok = NULL, .x = m->xe.p, .g = m->ge.p, .u = m->ue.p,
                             .y = m->ye.p};
    capmoe_moe_run_set(m, &set, m->par);
    double t_exp = capmoe_now() - te0, c_exp = capmoe_thread_cpu_seconds() - tc0;

    /* 4. outputs back, source-major, in the order the rows came */
    {
        long long so = 0;
        for (int s = 0; s < R; s++) {
            for (int j = 0; j < El; j++) {
                int n = rc[s * W + j], at = eoff[j];
                for (int s2 = 0; s2 < s; s2++) at += rc[s2 * W + j];
                memcpy(m->xr.p + (size_t)so * H, m->ye.p + (size_t)at * H,
                       (size_t)n * H * sizeof(float));
                so += n;
            }
        }
    }
    if (capmoe_comm_alltoallv_f32(c, m->xr.p, rcount, rdispl, m->xe.p, scount, sdispl, &w2,
                                  err) != 0)
        return broken(m, err);
    struct capmoe_buf tmp = m->xe; /* the plan-order outputs become m->ye */
    m->xe = m->ye;
    m->ye = tmp;

    if (ls && me < CAPMOE_MAX_RANKS) {
        ls->n_src = ls->n_ranks = R < CAPMOE_MAX_RANKS ? R : CAPMOE_MAX_RANKS;
        ls->src_tokens[me] = ls->tokens;
        ls->src_limited[me] = ls->limited;
        ls->src_capacity[me] = ls->capacity;
        ls->src_gamma[me] = ls->gamma;
        ls->src_dropped_mass[me] = ls->dropped_mass;
        ls->src_activated[me] = ls->activated;
        ls->src_regime[me] = ls->regime;
        ls->rank_load[me] = (int)nrecv;
        ls->rank_time[me] = t_exp;
        ls->rank_cpu_time[me] = c_exp;
        ls->rank_wait_dispatch[me] = t_counts + w1;
        ls->rank_wait_combine[me] = w2;
        long long own = (long long)(P->expert_off[(me + 1) * El] - P->expert_off[me * El]);
        long long own_recv = 0;
        for (int j = 0; j < El; j++) own_recv += rc[me * W + j];
        ls->rank_pairs_sent[me] = (int)((long long)np - own);
        /* both directions, rows that left or reached this process */
        ls->rank_bytes_sent[me] = ((long long)np - own + (nrecv - own_recv)) * H * 4;
        ls->rank_bytes_recv[me] = ((nrecv - own_recv) + ((long long)np - own)) * H * 4;
    }
    return 0;
}

const capmoe_moe_transport capmoe_moe_mpi = {"mpi", mpi_run};
