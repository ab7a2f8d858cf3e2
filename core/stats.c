/* stats.c - summary numbers of one MoE layer's dispatch (include/capmoe/stats.h).
 *
 * Counts beyond the array bounds (n_experts > CAPMOE_MAX_EXPERTS, n_ranks >
 * CAPMOE_MAX_RANKS) are clamped to them; a NULL or empty layer gives 0. */
#include "capmoe/stats.h"

static int clamp_n(int n, int max) {
    return n < 0 ? 0 : n > max ? max : n;
}

double capmoe_layer_load_imbalance(const capmoe_layer_stats *ls) {
    if (!ls) return 0.0;
    int n = clamp_n(ls->n_experts, CAPMOE_MAX_EXPERTS);
    if (n == 0) return 0.0;
    long long sum = 0;
    int max = 0;
    for (int e = 0; e < n; e++) {
        sum += ls->loads[e];
        if (ls->loads[e] > max) max = ls->loads[e];
    }
    if (sum <= 0) return 0.0;
    return (double)max / ((double)sum / (double)n);
}

double capmoe_layer_straggler_ratio(const capmoe_layer_stats *ls) {
    if (!ls) return 0.0;
    int n = clamp_n(ls->n_ranks, CAPMOE_MAX_RANKS);
    if (n == 0) return 0.0;
    if (n == 1) return 1.0;
    double sum = 0.0, max = 0.0;
    for (int r = 0; r < n; r++) {
        sum += ls->rank_time[r];
        if (ls->rank_time[r] > max) max = ls->rank_time[r];
    }
    /* all ranks idle: they are equal */
    if (!(sum > 0.0)) return 1.0;
    return max / (sum / (double)n);
}

int capmoe_layer_max_rank_load(const capmoe_layer_stats *ls) {
    if (!ls) return 0;
    int n = clamp_n(ls->n_ranks, CAPMOE_MAX_RANKS);
    int max = 0;
    for (int r = 0; r < n; r++)
        if (ls->rank_load[r] > max) max = ls->rank_load[r];
    return max;
}

void capmoe_layer_stats_merge_ranks(capmoe_layer_stats *dst, const capmoe_layer_stats *per_rank,
                                    int R) {
    R = clamp_n(R, CAPMOE_MAX_RANKS);
    capmoe_layer_stats out = per_rank[0];
    out.tokens = out.dropped = out.rerouted = out.piggybacked = out.activated = 0;
    for (int e = 0; e < CAPMOE_MAX_EXPERTS; e++) out.loads[e] = 0;
    double mass = 0.0;
    out.router_time = out.expert_time = out.layer_time = 0.0;
    out.limited = 0;
    for (int r = 0; r < R; r++) {
        const capmoe_layer_stats *s = &per_rank[r];
        out.tokens += s->tokens;
        out.dropped += s->dropped;
        out.rerouted += s->rerouted;
        out.piggybacked += s->piggybacked;
        out.limited |= s->limited;
        out.regime |= s->regime;
        out.src_activated[r] = s->src_activated[r];
        out.src_regime[r] = s->src_regime[r];
        mass += s->dropped_mass * s->tokens;
        int n = clamp_n(s->n_experts, CAPMOE_MAX_EXPERTS);
        for (int e = 0; e < n; e++) out.loads[e] += s->loads[e];
        out.src_tokens[r] = s->src_tokens[r];
        out.src_limited[r] = s->src_limited[r];
        out.src_capacity[r] = s->src_capacity[r];
        out.src_gamma[r] = s->src_gamma[r];
        out.src_dropped_mass[r] = s->src_dropped_mass[r];
        out.rank_load[r] = s->rank_load[r];
        out.rank_time[r] = s->rank_time[r];
        out.rank_cpu_time[r] = s->rank_cpu_time[r];
        out.rank_wait_dispatch[r] = s->rank_wait_dispatch[r];
        out.rank_wait_combine[r] = s->rank_wait_combine[r];
        out.rank_bytes_sent[r] = s->rank_bytes_sent[r];
        out.rank_bytes_recv[r] = s->rank_bytes_recv[r];
        out.rank_pairs_sent[r] = s->rank_pairs_sent[r];
        /* the layer takes as long as its slowest rank */
        if (s->router_time > out.router_time) out.router_time = s->router_time;
        if (s->expert_time > out.expert_time) out.expert_time = s->expert_time;
        if (s->layer_time > out.layer_time) out.layer_time = s->layer_time;
    }
    out.dropped_mass = out.tokens > 0 ? mass / out.tokens : 0.0;
    for (int e = 0; e < CAPMOE_MAX_EXPERTS; e++) out.activated += out.loads[e] > 0;
    /* one capacity for the layer when every source had the same one */
    out.capacity = out.src_capacity[0];
    out.gamma = out.src_gamma[0];
    for (int r = 1; r < R; r++)
        if (out.src_capacity[r] != out.capacity || out.src_gamma[r] != out.gamma) {
            out.capacity = 0;
            out.gamma = 0.0;
        }
    out.n_src = out.n_ranks = R;
    *dst = out;
}
