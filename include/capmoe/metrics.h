/* metrics.h - the server's Prometheus registry (text exposition format 0.0.4).
 *
 * One capmoe_metrics object lives in the server object. Every call below is
 * thread-safe (the loop thread records request metrics, the scheduler thread
 * records batch / MoE metrics); capmoe_metrics_render produces the text for
 * GET /metrics. All names carry the capmoe_ prefix and base units, except
 * the standard process_* family (CPU, memory, descriptors, start time of
 * the process, read at scrape time). Fractions in 0..1 end in _ratio. */
#ifndef CAPMOE_METRICS_H
#define CAPMOE_METRICS_H

#include "capmoe/common.h"
#include "capmoe/stats.h"

typedef struct capmoe_metrics capmoe_metrics;

typedef struct capmoe_metrics_opts {
    const char *model_name;   /* for capmoe_model_info{model=...} */
    int n_layers;             /* model layers (for per-layer series) */
    int n_experts;            /* routed experts per MoE layer */
    int per_layer_expert;     /* 1: expert-token counters labelled {layer,expert}; 0: {expert} only */
    const char *policy;       /* configured dispatch policy name (info metric) */
    int min_tokens;           /* dispatches of fewer tokens: load imbalance below_min_tokens="true" */
    /* capmoe_build_info labels: NULL-terminated name, value pairs (version,
     * revision, ...; more can be added without changing this module). Names
     * must be valid label names (others are skipped); at most 16 pairs. */
    const char *const *build_labels;
} capmoe_metrics_opts;

/* The Content-Type GET /metrics must answer with. */
#define CAPMOE_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* NULL on out-of-memory. opts NULL: model "unknown", policy "none", no layers
 * known (experts then rendered as they are seen). Every function below accepts
 * m == NULL as a no-op. */
capmoe_metrics *capmoe_metrics_new(const capmoe_metrics_opts *opts);
void capmoe_metrics_free(capmoe_metrics *m);
/* Live changes (SIGHUP): the policy label of capmoe_model_info, and the
 * min_tokens that splits the load-imbalance histogram. */
void capmoe_metrics_set_policy(capmoe_metrics *m, const char *policy);
void capmoe_metrics_set_min_tokens(capmoe_metrics *m, int min_tokens);
/* A sequence (choice) finished: reason "stop", "length" or "abort" (others
 * are not counted), with its prompt and generated token counts. */
void capmoe_metrics_request_finished(capmoe_metrics *m, const char *reason, long prompt_tokens,
                                     long generation_tokens);
/* Experts per token (k). With it, capmoe_moe_routed_pairs_total counts T*k
 * per dispatch exactly; without it (0), T*k is taken as computed + dropped
 * pairs, which is exact for every policy but "expanded". */
void capmoe_metrics_set_top_k(capmoe_metrics *m, int top_k);
/* The measured memory/compute crossover (capmoe_sched_regime_tokens), shown
 * as capmoe_moe_regime_crossover_tokens. */
void capmoe_metrics_set_regime_crossover(capmoe_metrics *m, int tokens);

/* A finished HTTP request: endpoint label (e.g. "/v1/completions"), status code.
 * Pass the route name, never the raw URL ("other" for unknown routes): labels
 * are bounded to 32 distinct printable-ASCII endpoints, the rest count as
 * "other". */
void capmoe_metrics_request(capmoe_metrics *m, const char *endpoint, int status);
/* Token counters. */
void capmoe_metrics_prompt_tokens(capmoe_metrics *m, long n);
void capmoe_metrics_generated_tokens(capmoe_metrics *m, long n);
/* Latency histograms, seconds. */
void capmoe_metrics_time_to_first_token(capmoe_metrics *m, double s);
void capmoe_metrics_inter_token_latency(capmoe_metrics *m, double s);
void capmoe_metrics_e2e_latency(capmoe_metrics *m, double s);
void capmoe_metrics_queue_time(capmoe_metrics *m, double s);
/* Gauges. */
void capmoe_metrics_set_requests(capmoe_metrics *m, int running, int waiting);
/* KV cache bytes per token of the served model: what its cache holds, and
 * what a cache of every head's keys and values would (they differ for
 * latent attention, DeepSeek). */
void capmoe_metrics_set_kv_token_bytes(capmoe_metrics *m, double bytes, double expanded_bytes);
void capmoe_metrics_set_kv_cache(capmoe_metrics *m, double used_tokens, double capacity_tokens,
                                 double bytes);
/* One scheduler step: batch size in tokens plus what every MoE layer did
 * (expert loads, max/mean load, straggler ratio, dropped / rerouted pairs,
 * chosen capacity factor, MoE layer time). st may be NULL. */
void capmoe_metrics_batch(capmoe_metrics *m, int batch_tokens, const capmoe_forward_stats *st);

/* Renders the exposition text (ends with a newline). malloc'd; caller frees. */
char *capmoe_metrics_render(capmoe_metrics *m, size_t *len);

#endif
