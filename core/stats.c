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
