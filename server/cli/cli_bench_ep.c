/* cli_bench_ep.c - `mpirun -np R capmoe bench --ep mpi`: does capacity buy
 * real wall-clock time when the experts live in separate processes?
 *
 *   mpirun -np R capmoe bench --ep mpi --model DIR [--policies none,drop,...]
 *       [--gammas 1.0,1.5,2.0] [--tokens 4096] [--seq-len 512] [--repeat 3]
 *       [--seed 0] [--min-tokens 16] [--format json|table]
 *
 * Every rank holds E/R experts and its own batch: --tokens tokens per rank
 * in sequences of --seq-len (random ids, seeded per rank, so the ranks'
 * routing differs as real traffic's does), prefilled from empty caches (no
 * logits), one forward per run, all ranks in lockstep. For each policy and
 * gamma (none first), --repeat rounds round-robin over the configurations;
 * the run with the smallest MoE layer time is kept. Per MoE layer (means
 * over the model's MoE layers), measured on every rank and gathered at rank 0:
 *  - moe_layer_ms: the MoE block's wall time (router, dispatch, all-to-all
 *    out, experts, all-to-all back, combine), the slowest rank's;
 *  - expert_ms_max / expert_ms_mean: the ranks' expert GEMM times, and the
 *    measured straggler ratio (max / mean);
 *  - alltoall_ms: the time the straggler (the rank with the longest expert
 *    time) spent inside the two exchanges: the other ranks are already there
 *    when it arrives, so this is the exchanges' own cost; alltoall_share =
 *    alltoall_ms / moe_layer_ms; wait_ms_mean: the mean over ranks of the time
 *    inside the exchanges (waiting for the straggler included);
 *  - max_rank_load: pairs computed by the busiest rank's experts;
 *  - speedup_measured = moe_layer_ms(none) / moe_layer_ms; speedup_modelled =
 *    max_rank_load(none) / max_rank_load (the paper's latency model: a layer
 *    waits for its most loaded device); modelled_layer_ms = max_rank_load x
 *    the per-pair expert cost of the none run (sum of expert times / pairs).
 * Rank 0 prints. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cli.h"
#include "capmoe/model.h"
#include "capmoe/stats.h"

static const char *EP_USAGE =
    "usage: mpirun -np R capmoe bench --ep mpi --model DIR [options]\n"
    "  --policies LIST   none,drop,reroute,expanded,rank_drop (default none,drop,reroute,expanded)\n"
    "  --gammas LIST     capacity factors (default 1.0,1.5,2.0)\n"
    "  --tokens N        prefill tokens per rank per forward (default 4096)\n"
    "  --seq-len N       tokens per sequence (default 512)\n"
    "  --repeat N (3)  --seed S (0)  --min-tokens N (16)  --format json|table (json)\n";

#define MAX_RUNS 128

typedef struct ep_row {
    capmoe_policy pol;
    double gamma;
    int have;
    double forward_ms, moe_ms, expert_max, expert_mean, a2a_ms, wait_mean;
    double max_load, mean_load, pairs, bytes, pair_cost_ms;
    double dropped, routed;
} ep_row;

static uint64_t mix(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Means over the MoE layers of one (merged) forward. */
static void summarize(const capmoe_forward_stats *st, int R, int k, ep_row *o) {
    int L = st->n_moe > 0 ? st->n_moe : 1;
    for (int l = 0; l < st->n_moe; l++) {
        const capmoe_layer_stats *ls = &st->layers[l];
        double emax = 0, esum = 0, wsum = 0, lmax = 0, lsum = 0;
        int strag = 0;
        for (int r = 0; r < R; r++) {
            esum += ls->rank_time[r];
            if (ls->rank_time[r] > emax) emax = ls->rank_time[r], strag = r;
            wsum += ls->rank_wait_dispatch[r] + ls->rank_wait_combine[r];
            lsum += ls->rank_load[r];
            if (ls->rank_load[r] > lmax) lmax = ls->rank_load[r];
            o->bytes += (double)ls->rank_bytes_sent[r];
        }
        o->moe_ms += ls->layer_time * 1e3;
        o->expert_max += emax * 1e3;
        o->expert_mean += esum / R * 1e3;
        o->a2a_ms += (ls->rank_wait_dispatch[strag] + ls->rank_wait_combine[strag]) * 1e3;
        o->wait_mean += wsum / R * 1e3;
        o->max_load += lmax;
        o->mean_load += lsum / R;
        o->pairs += lsum;
        o->pair_cost_ms += lsum > 0 ? esum / lsum * 1e3 : 0;
        o->dropped += ls->dropped;
        o->routed += (double)ls->tokens * k;
    }
    double *f[] = {&o->moe_ms,   &o->expert_max, &o->expert_mean, &o->a2a_ms,
                   &o->wait_mean, &o->max_load,  &o->mean_load,   &o->bytes,
                   &o->pair_cost_ms};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) *f[i] /= L;
}

static cJSON *row_json(const ep_row *r, const ep_row *none) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "policy", capmoe_policy_name(r->pol));
    if (r->pol == CAPMOE_POLICY_NONE) cJSON_AddNullToObject(o, "gamma");
    else cJSON_AddNumberToObject(o, "gamma", r->gamma);
    cJSON_AddNumberToObject(o, "forward_ms", r->forward_ms);
    cJSON_AddNumberToObject(o, "moe_layer_ms", r->moe_ms);
    cJSON_AddNumberToObject(o, "expert_ms_max", r->expert_max);
    cJSON_AddNumberToObject(o, "expert_ms_mean", r->expert_mean);
    cJSON_AddNumberToObject(o, "straggler_ratio", r->expert_mean > 0 ? r->expert_max / r->expert_mean : 1.0);
    cJSON_AddNumberToObject(o, "alltoall_ms", r->a2a_ms);
    cJSON_AddNumberToObject(o, "alltoall_share", r->moe_ms > 0 ? r->a2a_ms / r->moe_ms : 0.0);
    cJSON_AddNumberToObject(o, "wait_ms_mean", r->wait_mean);
    cJSON_AddNumberToObject(o, "alltoall_bytes_per_layer", r->bytes);
    cJSON_AddNumberToObject(o, "max_rank_load", r->max_load);
    cJSON_AddNumberToObject(o, "mean_rank_load", r->mean_load);
    cJSON_AddNumberToObject(o, "dropped_fraction", r->routed > 0 ? r->dropped / r->routed : 0.0);
    double meas = r->moe_ms > 0 ? none->moe_ms / r->moe_ms : 0.0;
    double model = r->max_load > 0 ? none->max_load / r->max_load : 0.0;
    cJSON_AddNumberToObject(o, "speedup_measured", meas);
    cJSON_AddNumberToObject(o, "modelled_layer_ms", r->max_load * none->pair_cost_ms);
    cJSON_AddNumberToObject(o, "speedup_modelled", model);
    cJSON_AddNumberToObject(o, "measured_over_modelled", model > 0 ? meas / model : 0.0);
    return o;
}

static void print_table(const cJSON *out) {
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(out, "runs");
    printf("| policy | gamma | MoE ms/layer | speedup measured | speedup modelled | measured / "
           "modelled | straggler (expert max/mean) | all-to-all ms (share) | max rank load | "
           "dropped |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const cJSON *r = rows ? rows->child : NULL; r; r = r->next) {
#define N(k) cJSON_GetObjectItemCaseSensitive(r, k)->valuedouble
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(r, "gamma");
        char gs[32] = "-";
        if (cJSON_IsNumber(g)) snprintf(gs, sizeof gs, "%g", g->valuedouble);
        printf("| %s | %s | %.2f | %.2fx | %.2fx | %.0f%% | %.2f | %.2f (%.0f%%) | %.0f | %.3f |\n",
               cJSON_GetObjectItemCaseSensitive(r, "policy")->valuestring, gs, N("moe_layer_ms"),
               N("speedup_measured"), N("speedup_modelled"), 100 * N("measured_over_modelled"),
               N("straggler_ratio"), N("alltoall_ms"), 100 * N("alltoall_share"),
               N("max_rank_load"), N("dropped_fraction"));
#undef N
    }
}

int capmoe_cmd_bench_ep(int argc, char **argv) {
    static const char *const SW[] = {"renormalize", "help", NULL};
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SW, &err)) goto usage;
    if (capmoe_cli_has(&a, "help")) {
        fputs(EP_USAGE, stdout);
        return 0;
    }
    const char *dir = capmoe_cli_get(&a, "model");
    const char *pol_s = capmoe_cli_get(&a, "policies");
    const char *gam_s = capmoe_cli_get(&a, "gammas");
    const char *fmt = capmoe_cli_get(&a, "format");
    if (!dir || !*dir) {
        capmoe_set_error(&err, "--model DIR is required");
        goto usage;
    }
    if (!fmt) fmt = "json";
    if (strcmp(fmt, "json") != 0 && strcmp(fmt, "table") != 0) {
        capmoe_set_error(&err, "--format: '%s' is not json or table", fmt);
        goto usage;
    }
    capmoe_dispatch_cfg cfg;
    long tokens, seq_len, repeat, seed;
    double gammas[32];
    int n_gam = 0, n_runs = 0;
    capmoe_policy pols[MAX_RUNS];
    double gams[MAX_RUNS];
    if (capmoe_cli_dispatch(&a, &cfg, &err) ||
        capmoe_cli_int(&a, "tokens", 1, 1L << 22, 4096, &tokens, &err) ||
        capmoe_cli_int(&a, "seq-len", 1, 1L << 20, 512, &seq_len, &err) ||
        capmoe_cli_int(&a, "repeat", 1, 1000, 3, &repeat, &err) ||
        capmoe_cli_int(&a, "seed", 0, INT64_MAX, 0, &seed, &err) ||
        capmoe_cli_list_d("gammas", gam_s ? gam_s : "1.0,1.5,2.0", 1e-6, 1e6, gammas, &n_gam, 32,
                          &err) ||
        capmoe_cli_configs(pol_s ? pol_s : "none,drop,reroute,expanded", gammas, n_gam, pols, gams,
                           &n_runs, MAX_RUNS, &err) ||
        capmoe_cli_check_unused(&a, &err))
        goto usage;

    int rc = 1, n_seqs = 0;
    capmoe_comm *comm = NULL;
    capmoe_model *m = NULL;
    capmoe_batch_seq *seqs = NULL;
    int32_t *ids = NULL;
    capmoe_layer_stats *ls = NULL;
    ep_row *rows = calloc((size_t)n_runs, sizeof *rows);
    if (!rows) {
        capmoe_set_error(&err, "out of memory");
        goto end;
    }
    if (capmoe_cli_ep(&a, &cfg, &comm, &err)) goto end;
    if (!comm) {
        capmoe_set_error(&err, "this benchmark needs --ep mpi (under mpirun)");
        goto end;
    }
    int R = capmoe_comm_size(comm), me = capmoe_comm_rank(comm);
    capmoe_model_opts mo = {.comm = comm};
    int ok = capmoe_model_load(&m, dir, &mo, &err) == 0;
    if (!capmoe_cli_check_load(comm, dir, ok, &err)) goto end;
    const capmoe_hfconfig *c = capmoe_model_config(m);
    n_seqs = (int)((tokens + seq_len - 1) / seq_len);
    seqs = calloc((size_t)n_seqs, sizeof *seqs);
    ids = capmoe_malloc_array((size_t)tokens, sizeof *ids);
    ls = calloc((size_t)(c->n_moe_layers > 0 ? c->n_moe_layers : 1), sizeof *ls);
    ok = seqs && ids && ls;
    uint64_t rs = (uint64_t)seed * 1000003u + (uint64_t)me; /* every rank its own traffic */
    for (long i = 0; ok && i < tokens; i++) ids[i] = (int32_t)(mix(&rs) % (uint64_t)c->vocab_size);
    for (int s = 0; ok && s < n_seqs; s++) {
        long b = (long)s * seq_len, e = b + seq_len < tokens ? b + seq_len : tokens;
        seqs[s] = (capmoe_batch_seq){.kv = capmoe_kv_new(m, (int)seq_len), .tokens = ids + b,
                                     .n_tokens = (int)(e - b), .want = CAPMOE_LOGITS_NONE,
                                     .rank = me};
        if (!seqs[s].kv) ok = 0;
    }
    if (!ok) capmoe_set_error(&err, "out of memory for %ld tokens", tokens);
    if (!capmoe_cli_agree(comm, ok, &err)) goto end;
    capmoe_forward_stats st = {.layers = ls, .cap_layers = c->n_moe_layers};
    for (int round = -1; round < repeat; round++) { /* round -1: warm-up */
        for (int i = 0; i < n_runs; i++) {
            if (round < 0 && i > 0) break;
            capmoe_dispatch_cfg rc_cfg = cfg;
            rc_cfg.policy = pols[i];
            if (pols[i] != CAPMOE_POLICY_NONE) rc_cfg.capacity_factor = gams[i];
            for (int s = 0; s < n_seqs; s++) capmoe_kv_clear(seqs[s].kv);
            long long sync = 0; /* start together */
            if (capmoe_comm_max(comm, &sync, 1, &err)) goto end;
            double t0 = capmoe_now();
            ok = capmoe_model_forward(m, seqs, n_seqs, &rc_cfg, NULL, &st, &err) == 0;
            long long us = (long long)((capmoe_now() - t0) * 1e6);
            if (!capmoe_cli_agree(comm, ok, &err)) goto end;
            if (capmoe_comm_max(comm, &us, 1, &err) || capmoe_cli_gather_stats(comm, &st, &err))
                goto end;
            if (me != 0 || round < 0) continue;
            ep_row r = {.pol = pols[i], .gamma = gams[i], .have = 1};
            summarize(&st, R, c->top_k, &r);
            r.forward_ms = (double)us / 1e3;
            if (!rows[i].have || r.moe_ms < rows[i].moe_ms) rows[i] = r;
        }
    }
    if (me == 0) {
        cJSON *out = cJSON_CreateObject();
        cJSON *mj = cJSON_AddObjectToObject(out, "model");
        cJSON_AddStringToObject(mj, "dir", dir);
        cJSON_AddStringToObject(mj, "architecture", capmoe_arch_name(c->arch));
        cJSON_AddNumberToObject(mj, "hidden_size", c->hidden_size);
        cJSON_AddNumberToObject(mj, "moe_layers", c->n_moe_layers);
        cJSON_AddNumberToObject(mj, "experts", c->n_experts);
        cJSON_AddNumberToObject(mj, "top_k", c->top_k);
        cJSON_AddNumberToObject(mj, "expert_width", c->moe_intermediate_size);
        cJSON *sj = cJSON_AddObjectToObject(out, "settings");
        cJSON_AddNumberToObject(sj, "ranks", R);
        cJSON_AddNumberToObject(sj, "experts_per_rank", c->n_experts / R);
        cJSON_AddNumberToObject(sj, "ranks_per_host", capmoe_comm_local_size(comm));
        cJSON_AddNumberToObject(sj, "tokens_per_rank", (double)tokens);
        cJSON_AddNumberToObject(sj, "seq_len", (double)seq_len);
        cJSON_AddNumberToObject(sj, "repeat", (double)repeat);
        cJSON_AddNumberToObject(sj, "min_tokens", cfg.min_tokens);
        cJSON_AddStringToObject(sj, "host", capmoe_comm_host(comm));
        cJSON *arr = cJSON_AddArrayToObject(out, "runs");
        for (int i = 0; i < n_runs; i++) cJSON_AddItemToArray(arr, row_json(&rows[i], &rows[0]));
        if (strcmp(fmt, "table") == 0) {
            print_table(out);
        } else {
            char *s = cJSON_PrintUnformatted(out);
            if (s) puts(s);
            free(s);
        }
        cJSON_Delete(out);
    }
    rc = 0;
end:
    if (rc) capmoe_cli_fail_rank(comm, "bench", &err);
    for (int s = 0; seqs && s < n_seqs; s++) capmoe_kv_free(seqs[s].kv);
    free(seqs);
    free(ids);
    free(ls);
    free(rows);
    capmoe_model_free(m);
    capmoe_comm_finalize(comm);
    return rc;
usage:
    fprintf(stderr, "capmoe bench: %s\n%s", err.msg, EP_USAGE);
    return 2;
}
