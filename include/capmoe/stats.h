/* stats.h - what one batched forward pass measured, per MoE layer.
 *
 * Filled by the model during capmoe_model_forward when the caller passes a
 * capmoe_forward_stats; read by the CLI report, `capmoe bench` and the server's
 * metrics. Plain data, owned by whoever allocated it. */
#ifndef CAPMOE_STATS_H
#define CAPMOE_STATS_H

#include "capmoe/common.h"

#define CAPMOE_MAX_EXPERTS 256
#define CAPMOE_MAX_RANKS 64

typedef struct capmoe_layer_stats {
    int layer;              /* model layer index */
    int tokens;             /* T of this dispatch */
    int limited;            /* capacity applied */
    int capacity;           /* C (0 when not limited) */
    double gamma;           /* gamma applied (0 when not limited) */
    int n_experts;
    int loads[CAPMOE_MAX_EXPERTS];   /* pairs computed per expert */
    int dropped;
    int rerouted;
    double dropped_mass;
    int n_ranks;
    int rank_load[CAPMOE_MAX_RANKS];   /* pairs per rank */
    double rank_time[CAPMOE_MAX_RANKS];/* seconds each rank was busy on experts */
    double rank_cpu_time[CAPMOE_MAX_RANKS]; /* CPU seconds of each rank's thread on
                                                experts (excludes waiting for a core
                                                when ranks outnumber cores; with R = 1
                                                the caller's thread only) */
    double router_time;     /* seconds: router GEMM + dispatch */
    double expert_time;     /* seconds: wall time of the expert phase (slowest rank) */
    double layer_time;      /* seconds: whole MoE block incl. combine / shared expert */
} capmoe_layer_stats;

typedef struct capmoe_forward_stats {
    int n_moe;                          /* MoE layers filled */
    capmoe_layer_stats *layers;         /* caller-owned array of capacity cap_layers */
    int cap_layers;
    int tokens;                         /* T of the batch */
    double total_time;                  /* seconds for the whole forward */
    double attn_time;                   /* seconds in attention (all layers) */
    double moe_time;                    /* seconds in MoE blocks (all layers) */
} capmoe_forward_stats;

/* max load / mean load over experts (1.0 when all equal; 0 when no pairs).
 * NULL or n_experts <= 0 -> 0; n_experts is clamped to CAPMOE_MAX_EXPERTS. */
double capmoe_layer_load_imbalance(const capmoe_layer_stats *ls);
/* slowest rank time / mean rank time (1.0 with one rank, and when every rank
 * time is 0). NULL or n_ranks <= 0 -> 0; n_ranks clamped to CAPMOE_MAX_RANKS. */
double capmoe_layer_straggler_ratio(const capmoe_layer_stats *ls);
/* max over ranks of rank load (0 for NULL or n_ranks <= 0). */
int capmoe_layer_max_rank_load(const capmoe_layer_stats *ls);

#endif
