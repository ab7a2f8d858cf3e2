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
    int piggybacked;        /* pairs used outside S_t (policy piggyback) */
    int activated;          /* experts with load > 0 (of the summed loads under --ep mpi) */
    int policy;             /* capmoe_policy the dispatch ran (the source's under --ep mpi) */
    int regime;             /* 1: the decode policy ran (T < regime_tokens) */
    int n_ranks;
    int rank_load[CAPMOE_MAX_RANKS];   /* pairs per rank */
    double rank_time[CAPMOE_MAX_RANKS];/* seconds each rank was busy on experts */
    double rank_cpu_time[CAPMOE_MAX_RANKS]; /* CPU seconds of each rank's thread on
                                                experts (excludes waiting for a core
                                                when ranks outnumber cores; with R = 1
                                                the caller's thread only) */
    /* --ep mpi (n_src = R; 0 otherwise). Every rank r dispatches its own T_r
     * tokens (a source, the src_* fields) and hosts experts [r*E/R,
     * (r+1)*E/R) (rank_load / rank_time / rank_cpu_time above, and the
     * fields below). One process fills only its own index; the step
     * protocol gathers every rank's figures at rank 0. loads, dropped,
     * rerouted and tokens are then sums over the sources. */
    int n_src;
    int src_tokens[CAPMOE_MAX_RANKS];      /* T_r */
    int src_limited[CAPMOE_MAX_RANKS];
    int src_capacity[CAPMOE_MAX_RANKS];    /* C_r */
    double src_gamma[CAPMOE_MAX_RANKS];    /* gamma chosen for the source */
    double src_dropped_mass[CAPMOE_MAX_RANKS];
    int src_activated[CAPMOE_MAX_RANKS];   /* experts the source's own dispatch activated */
    int src_regime[CAPMOE_MAX_RANKS];
    double rank_wait_dispatch[CAPMOE_MAX_RANKS]; /* seconds inside the dispatch all-to-all
                                                    (counts + rows): waiting for the others */
    double rank_wait_combine[CAPMOE_MAX_RANKS];  /* seconds inside the combine all-to-all:
                                                    the straggler shows up here */
    long long rank_bytes_sent[CAPMOE_MAX_RANKS]; /* rows sent in both all-to-alls, to other ranks */
    long long rank_bytes_recv[CAPMOE_MAX_RANKS];
    int rank_pairs_sent[CAPMOE_MAX_RANKS];       /* kept pairs sent to other ranks' experts */
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
    double attn_proj_time;              /* of attn_time: the q|k|v and o products */
    double attn_core_time;              /* of attn_time: scores, softmax, weighted sums */
} capmoe_forward_stats;

/* max load / mean load over experts (1.0 when all equal; 0 when no pairs).
 * NULL or n_experts <= 0 -> 0; n_experts is clamped to CAPMOE_MAX_EXPERTS. */
double capmoe_layer_load_imbalance(const capmoe_layer_stats *ls);
/* slowest rank time / mean rank time (1.0 with one rank, and when every rank
 * time is 0). NULL or n_ranks <= 0 -> 0; n_ranks clamped to CAPMOE_MAX_RANKS. */
double capmoe_layer_straggler_ratio(const capmoe_layer_stats *ls);
/* max over ranks of rank load (0 for NULL or n_ranks <= 0). */
int capmoe_layer_max_rank_load(const capmoe_layer_stats *ls);
/* --ep mpi: one layer's figures as R processes measured them (per_rank[r]
 * filled by rank r: its own source and host indexes) into one: sums of
 * tokens, loads, dropped and rerouted; every rank's src_* / rank_* entry;
 * the slowest rank's times; dropped_mass weighted by tokens; capacity and
 * gamma when all sources agree (else 0). */
void capmoe_layer_stats_merge_ranks(capmoe_layer_stats *dst, const capmoe_layer_stats *per_rank,
                                    int R);

#endif
