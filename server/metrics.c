/* metrics.c - the server's Prometheus registry and its text exposition
 * (format 0.0.4; include/capmoe/metrics.h).
 *
 * The set of families is fixed: every family is a field of struct
 * metrics_state, updated under one mutex. Updates are a few additions each;
 * capmoe_metrics_batch takes the mutex once per scheduler step and does
 * O(layers * experts) additions. Rendering copies the state under the mutex
 * and formats the copy without it, so a scrape never stalls the scheduler for
 * longer than a memcpy.
 *
 * Exposition rules followed (../shared/docs/ecosystem-notes.md §3): one
 * contiguous group per family, "# HELP" then "# TYPE" before its samples,
 * counters end in _total, base units, cumulative histogram buckets ending in
 * le="+Inf" equal to _count, label values escaped (\\ \" \n) and made valid
 * UTF-8, no timestamps, a final newline.
 *
 * Label cardinality is bounded: endpoint labels are limited to
 * METRICS_MAX_ENDPOINTS distinct printable-ASCII strings (anything else, or
 * anything beyond, is counted as endpoint="other"); per-(layer, expert) series
 * exist only when opts.per_layer_expert is set. */
#include "capmoe/metrics.h"
#include "capmoe/procstat.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METRICS_MAX_ENDPOINTS 32
#define METRICS_MAX_SERIES_REQ 512 /* distinct (endpoint, code) pairs */
#define METRICS_ENDPOINT_LEN 64
#define METRICS_MAX_LAYERS 4096
#define HIST_MAX_BUCKETS 32

/* ---- bucket layouts (upper bounds, ascending; +Inf is implicit) ----------- */

static const double B_TTFT[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                                0.75,  1,     1.5,  2,     3,    5,     7.5, 10,   20,  40,  80};
static const double B_ITL[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
                               0.15,  0.2,    0.3,   0.5,  0.75, 1,    2.5,  5,     10};
static const double B_E2E[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5, 5,   10,
                               15,   20,    30,   45,  60,   90,  120, 300, 600, 1800};
static const double B_QUEUE[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,   0.5,   1,      2.5,   5,    10,    30,   60,  300};
static const double B_BATCH[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
static const double B_STEP[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                0.25,   0.5,   1,      2.5,   5,    10,    30};
/* max/mean expert load: 1 = perfectly even, E = everything on one expert. */
static const double B_IMBAL[] = {1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 12, 16, 32, 64, 128, 256};
/* slowest / mean rank time: 1 = no straggler, R = one rank did everything. */
static const double B_STRAG[] = {1, 1.05, 1.1, 1.2, 1.3, 1.5, 1.75, 2, 2.5, 3, 4, 6, 8, 16, 32, 64};
static const double B_ACTIVE[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};
static const double B_GAMMA[] = {0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 6, 8, 16};
static const double B_LAYER[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                 0.005,   0.01,     0.025,   0.05,   0.1,     0.25,   0.5,   1,
                                 2.5};
static const double B_MASS[] = {0, 0.0001, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1};
/* tokens per request (prompt / generated), as vLLM's request_*_tokens */
static const double B_REQ_TOKENS[] = {1,    2,    5,     10,    20,    50,     100,    200,
                                      500,  1000, 2000,  5000,  10000, 20000,  50000,  100000,
                                      200000, 500000, 1000000};

/* finished_reason values of capmoe_request_success_total */
static const char *const k_reasons[] = {"stop", "length", "abort"};
#define N_REASONS 3
#define METRICS_MAX_BUILD_LABELS 16

#define NB(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct hist {
    const double *bounds;
    int nb;
    unsigned long long bucket[HIST_MAX_BUCKETS + 1]; /* per bucket, last = +Inf */
    unsigned long long count;
    double sum;
} hist;

static void hist_init(hist *h, const double *bounds, int nb) {
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->nb = nb;
}

/* Non-finite observations are ignored (they would poison _sum). */
static void hist_observe(hist *h, double v) {
    if (!isfinite(v)) return;
    int i = 0;
    while (i < h->nb && v > h->bounds[i]) i++; /* le is inclusive */
    h->bucket[i]++;
    h->count++;
    h->sum += v;
}

typedef struct req_series {
    char endpoint[METRICS_ENDPOINT_LEN];
    int code;
    unsigned long long count;
} req_series;

/* Everything that renders; copied as a whole for a scrape. */
typedef struct metrics_state {
    int n_req;
    int n_endpoints;
    req_series req[METRICS_MAX_SERIES_REQ];
    unsigned long long req_overflow;
    unsigned long long prompt_tokens, generation_tokens;
    hist ttft, itl, e2e, queue;
    int running, waiting;
    double kv_used, kv_capacity, kv_bytes, kv_token_bytes, kv_token_bytes_expanded;
    hist batch_tokens, forward_seconds;
    unsigned long long expert_tokens[CAPMOE_MAX_EXPERTS]; /* aggregated over layers */
    int n_experts_seen;
    hist imbalance, imbalance_small; /* dispatches of >= min_tokens tokens / fewer */
    hist straggler, gamma, layer_seconds, dropped_mass;
    unsigned long long success[N_REASONS];
    hist req_prompt_tokens, req_generation_tokens;
    int min_tokens;       /* live: capmoe_metrics_set_min_tokens */
    char policy[32];      /* live: capmoe_metrics_set_policy */
    unsigned long long dropped, rerouted, routed;
    unsigned long long dispatches[2][2]; /* [limited][regime: 0 main policy, 1 decode policy] */
    unsigned long long piggybacked;
    hist activated;                      /* experts with a load per dispatch */
    int regime_crossover;                /* capmoe_metrics_set_regime_crossover */
    /* --ep mpi: per rank (as the source of its tokens and the host of its experts) */
    int ep_ranks;                                    /* R; 0 without MPI */
    hist ep_wait_dispatch[CAPMOE_MAX_RANKS], ep_wait_combine[CAPMOE_MAX_RANKS];
    hist ep_expert[CAPMOE_MAX_RANKS];
    unsigned long long ep_bytes_sent[CAPMOE_MAX_RANKS], ep_bytes_recv[CAPMOE_MAX_RANKS];
    unsigned long long ep_pairs[CAPMOE_MAX_RANKS], ep_tokens[CAPMOE_MAX_RANKS];
} metrics_state;

struct capmoe_metrics {
    pthread_mutex_t mu;
    metrics_state st;
    /* per-(layer, expert) counters when per_layer_expert: n_layers * n_experts */
    unsigned long long *layer_expert;
    unsigned char *layer_seen;
    /* constant after creation */
    int n_layers, n_experts, per_layer_expert, top_k;
    char *model_name;
    int n_build;                                   /* build_info label pairs */
    char *build[2 * METRICS_MAX_BUILD_LABELS];     /* name, value, ... */
    double start_time; /* unix seconds */
};

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, not starting with __ (reserved) */
static int label_name_ok(const char *n) {
    if (!n[0] || (n[0] == '_' && n[1] == '_')) return 0;
    for (const char *p = n; *p; p++) {
        int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_';
        if (!alpha && !(p > n && *p >= '0' && *p <= '9')) return 0;
    }
    return 1;
}

capmoe_metrics *capmoe_metrics_new(const capmoe_metrics_opts *opts) {
    capmoe_metrics_opts def = {.model_name = "unknown", .policy = "none", .min_tokens = 16};
    if (!opts) opts = &def;
    capmoe_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    m->n_experts = opts->n_experts < 0                    ? 0
                   : opts->n_experts > CAPMOE_MAX_EXPERTS ? CAPMOE_MAX_EXPERTS
                                                          : opts->n_experts;
    m->n_layers = opts->n_layers < 0                    ? 0
                  : opts->n_layers > METRICS_MAX_LAYERS ? METRICS_MAX_LAYERS
                                                        : opts->n_layers;
    m->per_layer_expert = opts->per_layer_expert != 0;
    m->model_name = dup_str(opts->model_name ? opts->model_name : "unknown");
    int ok = m->model_name != NULL;
    for (int i = 0; ok && opts->build_labels && opts->build_labels[i] && opts->build_labels[i + 1] &&
                    m->n_build < METRICS_MAX_BUILD_LABELS;
         i += 2) {
        if (!label_name_ok(opts->build_labels[i])) continue;
        m->build[2 * m->n_build] = dup_str(opts->build_labels[i]);
        m->build[2 * m->n_build + 1] = dup_str(opts->build_labels[i + 1]);
        m->n_build++;
        ok = m->build[2 * m->n_build - 2] && m->build[2 * m->n_build - 1];
    }
    if (ok && m->per_layer_expert && m->n_layers > 0) {
        /* Without a known expert count, size rows for the maximum. */
        int stride = m->n_experts > 0 ? m->n_experts : CAPMOE_MAX_EXPERTS;
        m->layer_expert = calloc((size_t)m->n_layers * (size_t)stride, sizeof *m->layer_expert);
        m->layer_seen = calloc((size_t)m->n_layers, 1);
        ok = m->layer_expert && m->layer_seen;
    }
    if (!ok) {
        capmoe_metrics_free(m);
        return NULL;
    }
    metrics_state *s = &m->st;
    hist_init(&s->ttft, B_TTFT, NB(B_TTFT));
    hist_init(&s->itl, B_ITL, NB(B_ITL));
    hist_init(&s->e2e, B_E2E, NB(B_E2E));
    hist_init(&s->queue, B_QUEUE, NB(B_QUEUE));
    hist_init(&s->batch_tokens, B_BATCH, NB(B_BATCH));
    hist_init(&s->forward_seconds, B_STEP, NB(B_STEP));
    hist_init(&s->imbalance, B_IMBAL, NB(B_IMBAL));
    hist_init(&s->imbalance_small, B_IMBAL, NB(B_IMBAL));
    hist_init(&s->req_prompt_tokens, B_REQ_TOKENS, NB(B_REQ_TOKENS));
    hist_init(&s->req_generation_tokens, B_REQ_TOKENS, NB(B_REQ_TOKENS));
    s->min_tokens = opts->min_tokens;
    snprintf(s->policy, sizeof s->policy, "%s", opts->policy ? opts->policy : "none");
    hist_init(&s->straggler, B_STRAG, NB(B_STRAG));
    hist_init(&s->gamma, B_GAMMA, NB(B_GAMMA));
    hist_init(&s->activated, B_ACTIVE, NB(B_ACTIVE));
    hist_init(&s->layer_seconds, B_LAYER, NB(B_LAYER));
    hist_init(&s->dropped_mass, B_MASS, NB(B_MASS));
    for (int r = 0; r < CAPMOE_MAX_RANKS; r++) {
        hist_init(&s->ep_wait_dispatch[r], B_LAYER, NB(B_LAYER));
        hist_init(&s->ep_wait_combine[r], B_LAYER, NB(B_LAYER));
        hist_init(&s->ep_expert[r], B_LAYER, NB(B_LAYER));
    }
    s->n_experts_seen = m->n_experts;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    return m;
}

void capmoe_metrics_free(capmoe_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->layer_expert);
    free(m->layer_seen);
    free(m->model_name);
    for (int i = 0; i < 2 * m->n_build; i++) free(m->build[i]);
    free(m);
}

void capmoe_metrics_set_policy(capmoe_metrics *m, const char *policy) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    snprintf(m->st.policy, sizeof m->st.policy, "%s", policy ? policy : "none");
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_set_min_tokens(capmoe_metrics *m, int min_tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->st.min_tokens = min_tokens;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_request_finished(capmoe_metrics *m, const char *reason, long prompt_tokens,
                                     long generation_tokens) {
    if (!m || !reason) return;
    int r = -1;
    for (int i = 0; i < N_REASONS; i++)
        if (strcmp(reason, k_reasons[i]) == 0) r = i;
    if (r < 0) return;
    pthread_mutex_lock(&m->mu);
    m->st.success[r]++;
    hist_observe(&m->st.req_prompt_tokens, (double)(prompt_tokens > 0 ? prompt_tokens : 0));
    hist_observe(&m->st.req_generation_tokens,
                 (double)(generation_tokens > 0 ? generation_tokens : 0));
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_set_regime_crossover(capmoe_metrics *m, int tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->st.regime_crossover = tokens > 0 ? tokens : 0;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_set_top_k(capmoe_metrics *m, int top_k) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->top_k = top_k > 0 ? top_k : 0;
    pthread_mutex_unlock(&m->mu);
}

/* ---- updates ---------------------------------------------------------------- */

/* An endpoint label value is accepted as is when it is 1..63 printable ASCII
 * characters; anything else is "other" (the label never carries raw bytes
 * a client chose beyond what the server passed as a route name). */
static int endpoint_ok(const char *e) {
    if (!e || !*e) return 0;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)e; *p; p++, n++)
        if (*p < 0x20 || *p > 0x7e || n + 1 >= METRICS_ENDPOINT_LEN) return 0;
    return 1;
}

static req_series *req_find(metrics_state *s, const char *endpoint, int code) {
    for (int i = 0; i < s->n_req; i++)
        if (s->req[i].code == code && strcmp(s->req[i].endpoint, endpoint) == 0) return &s->req[i];
    return NULL;
}

static int endpoint_known(const metrics_state *s, const char *endpoint) {
    for (int i = 0; i < s->n_req; i++)
        if (strcmp(s->req[i].endpoint, endpoint) == 0) return 1;
    return 0;
}

void capmoe_metrics_request(capmoe_metrics *m, const char *endpoint, int status) {
    if (!m) return;
    if (status < 0 || status > 999) status = 0;
    if (!endpoint_ok(endpoint)) endpoint = "other";
    pthread_mutex_lock(&m->mu);
    metrics_state *s = &m->st;
    req_series *r = req_find(s, endpoint, status);
    if (!r) {
        int is_other = strcmp(endpoint, "other") == 0;
        if (!is_other && !endpoint_known(s, endpoint) && s->n_endpoints >= METRICS_MAX_ENDPOINTS) {
            endpoint = "other";
            is_other = 1;
            r = req_find(s, endpoint, status);
        }
        if (!r && s->n_req < METRICS_MAX_SERIES_REQ) {
            if (!is_other && !endpoint_known(s, endpoint)) s->n_endpoints++;
            r = &s->req[s->n_req++];
            snprintf(r->endpoint, sizeof r->endpoint, "%s", endpoint);
            r->code = status;
            r->count = 0;
        }
    }
    if (r) r->count++;
    else s->req_overflow++; /* rendered as {endpoint="other",code="other"} */
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_prompt_tokens(capmoe_metrics *m, long n) {
    if (!m || n <= 0) return;
    pthread_mutex_lock(&m->mu);
    m->st.prompt_tokens += (unsigned long long)n;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_generated_tokens(capmoe_metrics *m, long n) {
    if (!m || n <= 0) return;
    pthread_mutex_lock(&m->mu);
    m->st.generation_tokens += (unsigned long long)n;
    pthread_mutex_unlock(&m->mu);
}

static void observe(capmoe_metrics *m, hist *h, double v) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(h, v);
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_time_to_first_token(capmoe_metrics *m, double s) {
    if (m) observe(m, &m->st.ttft, s);
}
void capmoe_metrics_inter_token_latency(capmoe_metrics *m, double s) {
    if (m) observe(m, &m->st.itl, s);
}
void capmoe_metrics_e2e_latency(capmoe_metrics *m, double s) {
    if (m) observe(m, &m->st.e2e, s);
}
void capmoe_metrics_queue_time(capmoe_metrics *m, double s) {
    if (m) observe(m, &m->st.queue, s);
}

void capmoe_metrics_set_requests(capmoe_metrics *m, int running, int waiting) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->st.running = running;
    m->st.waiting = waiting;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_set_kv_token_bytes(capmoe_metrics *m, double bytes, double expanded_bytes) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->st.kv_token_bytes = isfinite(bytes) ? bytes : 0;
    m->st.kv_token_bytes_expanded = isfinite(expanded_bytes) ? expanded_bytes : 0;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_set_kv_cache(capmoe_metrics *m, double used_tokens, double capacity_tokens,
                                 double bytes) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->st.kv_used = isfinite(used_tokens) ? used_tokens : 0;
    m->st.kv_capacity = isfinite(capacity_tokens) ? capacity_tokens : 0;
    m->st.kv_bytes = isfinite(bytes) ? bytes : 0;
    pthread_mutex_unlock(&m->mu);
}

void capmoe_metrics_batch(capmoe_metrics *m, int batch_tokens, const capmoe_forward_stats *st) {
    if (!m) return;
    int n_moe = 0;
    if (st && st->layers && st->n_moe > 0) {
        n_moe = st->n_moe;
        if (st->cap_layers > 0 && n_moe > st->cap_layers) n_moe = st->cap_layers;
    }
    pthread_mutex_lock(&m->mu);
    metrics_state *s = &m->st;
    if (batch_tokens >= 0) hist_observe(&s->batch_tokens, batch_tokens);
    if (st && st->total_time > 0) hist_observe(&s->forward_seconds, st->total_time);
    for (int i = 0; i < n_moe; i++) {
        const capmoe_layer_stats *ls = &st->layers[i];
        int ne = ls->n_experts < 0 ? 0 : ls->n_experts > CAPMOE_MAX_EXPERTS ? CAPMOE_MAX_EXPERTS
                                                                            : ls->n_experts;
        if (m->n_experts > 0 && ne > m->n_experts) ne = m->n_experts;
        long long computed = 0;
        for (int e = 0; e < ne; e++) {
            int l = ls->loads[e] > 0 ? ls->loads[e] : 0;
            computed += l;
            s->expert_tokens[e] += (unsigned long long)l;
        }
        if (ne > s->n_experts_seen) s->n_experts_seen = ne;
        if (m->layer_expert && ls->layer >= 0 && ls->layer < m->n_layers) {
            int stride = m->n_experts > 0 ? m->n_experts : CAPMOE_MAX_EXPERTS;
            unsigned long long *row = m->layer_expert + (size_t)ls->layer * (size_t)stride;
            for (int e = 0; e < ne; e++) row[e] += (unsigned long long)(ls->loads[e] > 0 ? ls->loads[e] : 0);
            m->layer_seen[ls->layer] = 1;
        }
        double imb = capmoe_layer_load_imbalance(ls);
        if (imb > 0) hist_observe(ls->tokens < s->min_tokens ? &s->imbalance_small : &s->imbalance, imb);
        if (ls->n_ranks > 1) hist_observe(&s->straggler, capmoe_layer_straggler_ratio(ls));
        int dropped = ls->dropped > 0 ? ls->dropped : 0;
        int rerouted = ls->rerouted > 0 ? ls->rerouted : 0;
        s->dropped += (unsigned long long)dropped;
        s->rerouted += (unsigned long long)rerouted;
        s->piggybacked += (unsigned long long)(ls->piggybacked > 0 ? ls->piggybacked : 0);
        /* Routed pairs = the T*k top-k pairs; without k, every policy but
         * "expanded" computes T*k - dropped pairs. */
        if (m->top_k > 0)
            s->routed += (unsigned long long)(ls->tokens > 0 ? ls->tokens : 0) * (unsigned long long)m->top_k;
        else
            s->routed += (unsigned long long)(computed + dropped);
        if (ls->n_src > 0) {
            /* --ep mpi: every source rank made its own dispatch */
            int R = ls->n_src > CAPMOE_MAX_RANKS ? CAPMOE_MAX_RANKS : ls->n_src;
            s->ep_ranks = R;
            for (int r = 0; r < R; r++) {
                s->dispatches[ls->src_limited[r] != 0][ls->src_regime[r] != 0]++;
                if (ls->src_tokens[r] > 0) hist_observe(&s->activated, ls->src_activated[r]);
                if (ls->src_limited[r]) {
                    if (ls->src_gamma[r] > 0) hist_observe(&s->gamma, ls->src_gamma[r]);
                    hist_observe(&s->dropped_mass, ls->src_dropped_mass[r]);
                }
                hist_observe(&s->ep_wait_dispatch[r], ls->rank_wait_dispatch[r]);
                hist_observe(&s->ep_wait_combine[r], ls->rank_wait_combine[r]);
                hist_observe(&s->ep_expert[r], ls->rank_time[r]);
                s->ep_bytes_sent[r] += (unsigned long long)ls->rank_bytes_sent[r];
                s->ep_bytes_recv[r] += (unsigned long long)ls->rank_bytes_recv[r];
                s->ep_pairs[r] += (unsigned long long)(ls->rank_load[r] > 0 ? ls->rank_load[r] : 0);
                s->ep_tokens[r] += (unsigned long long)(ls->src_tokens[r] > 0 ? ls->src_tokens[r] : 0);
            }
        } else {
            s->dispatches[ls->limited != 0][ls->regime != 0]++;
            int act = 0; /* the experts this dispatch read */
            for (int e = 0; e < ne; e++) act += ls->loads[e] > 0;
            if (ls->tokens > 0) hist_observe(&s->activated, act);
            if (ls->limited) {
                if (ls->gamma > 0) hist_observe(&s->gamma, ls->gamma);
                hist_observe(&s->dropped_mass, ls->dropped_mass);
            }
        }
        if (ls->layer_time > 0) hist_observe(&s->layer_seconds, ls->layer_time);
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---- exposition --------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->oom || b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}

static void sb_put(sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    sb_reserve(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s (max n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned min;
    if ((c & 0xE0) == 0xC0) len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Appends s escaped for the exposition: backslash and newline always, the
 * double quote too inside label values; invalid UTF-8 bytes become U+FFFD. */
static void sb_escaped(sbuf *b, const char *str, int label_value) {
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '\\') sb_puts(b, "\\\\"), i++;
        else if (c == '\n') sb_puts(b, "\\n"), i++;
        else if (c == '"' && label_value) sb_puts(b, "\\\""), i++;
        else {
            size_t l = utf8_len(s + i, n - i);
            if (l == 0) {
                sb_puts(b, "\xEF\xBF\xBD");
                i++;
            } else {
                sb_put(b, (const char *)s + i, l);
                i += l;
            }
        }
    }
}

/* A float in Prometheus' text form: shortest round-trip decimal, +Inf/-Inf/NaN. */
static void fmt_double(char *out, size_t cap, double v) {
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) { /* integers as integers: "10", not "1e+01" */
        snprintf(out, cap, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

static void sb_double(sbuf *b, double v) {
    char tmp[64];
    fmt_double(tmp, sizeof tmp, v);
    sb_puts(b, tmp);
}

static void family(sbuf *b, const char *name, const char *type, const char *help) {
    sb_puts(b, "# HELP ");
    sb_puts(b, name);
    sb_puts(b, " ");
    sb_escaped(b, help, 0);
    sb_puts(b, "\n# TYPE ");
    sb_puts(b, name);
    sb_puts(b, " ");
    sb_puts(b, type);
    sb_puts(b, "\n");
}

static void sample_u64(sbuf *b, const char *name, unsigned long long v) {
    sb_printf(b, "%s %llu\n", name, v);
}

static void sample_double(sbuf *b, const char *name, double v) {
    sb_puts(b, name);
    sb_puts(b, " ");
    sb_double(b, v);
    sb_puts(b, "\n");
}

static void counter(sbuf *b, const char *name, const char *help, unsigned long long v) {
    family(b, name, "counter", help);
    sample_u64(b, name, v);
}

static void gauge(sbuf *b, const char *name, const char *help, double v) {
    family(b, name, "gauge", help);
    sample_double(b, name, v);
}

/* One histogram's samples; labels ("rank=\"0\"", or NULL) go before le. */
static void hist_series(sbuf *b, const char *name, const char *labels, const hist *h) {
    const char *sep = labels ? "," : "";
    labels = labels ? labels : "";
    unsigned long long cum = 0;
    for (int i = 0; i <= h->nb; i++) {
        cum += h->bucket[i];
        sb_printf(b, "%s_bucket{%s%sle=\"", name, labels, sep);
        if (i < h->nb) sb_double(b, h->bounds[i]);
        else sb_puts(b, "+Inf");
        sb_printf(b, "\"} %llu\n", cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    sb_printf(b, "%s_sum%s%s%s ", name, open, labels, close);
    sb_double(b, h->sum);
    sb_printf(b, "\n%s_count%s%s%s %llu\n", name, open, labels, close, h->count);
}

static void histogram(sbuf *b, const char *name, const char *help, const hist *h) {
    family(b, name, "histogram", help);
    hist_series(b, name, NULL, h);
}

/* The per-rank series of --ep mpi (nothing without MPI). */
static void render_ep(sbuf *b, const metrics_state *s) {
    int R = s->ep_ranks;
    if (R <= 0) return;
    char lab[64];
    gauge(b, "capmoe_ep_ranks", "MPI ranks (processes) of expert parallelism (--ep mpi).", R);
    family(b, "capmoe_ep_wait_seconds", "histogram",
           "Seconds a rank spent inside an MoE layer's all-to-all, per dispatch: phase dispatch "
           "(counts and rows out, waiting for the others to route) and combine (results back: "
           "the fastest rank waits here for the slowest, the straggler).");
    for (int r = 0; r < R; r++) {
        snprintf(lab, sizeof lab, "rank=\"%d\",phase=\"dispatch\"", r);
        hist_series(b, "capmoe_ep_wait_seconds", lab, &s->ep_wait_dispatch[r]);
        snprintf(lab, sizeof lab, "rank=\"%d\",phase=\"combine\"", r);
        hist_series(b, "capmoe_ep_wait_seconds", lab, &s->ep_wait_combine[r]);
    }
    family(b, "capmoe_ep_expert_seconds", "histogram",
           "Seconds a rank spent computing its experts' GEMMs per MoE layer dispatch.");
    for (int r = 0; r < R; r++) {
        snprintf(lab, sizeof lab, "rank=\"%d\"", r);
        hist_series(b, "capmoe_ep_expert_seconds", lab, &s->ep_expert[r]);
    }
    family(b, "capmoe_ep_alltoall_bytes_total", "counter",
           "Bytes of hidden rows a rank sent to, and received from, the other ranks in the "
           "MoE all-to-alls (both directions of both exchanges).");
    for (int r = 0; r < R; r++) {
        sb_printf(b, "capmoe_ep_alltoall_bytes_total{rank=\"%d\",direction=\"sent\"} %llu\n", r,
                  s->ep_bytes_sent[r]);
        sb_printf(b, "capmoe_ep_alltoall_bytes_total{rank=\"%d\",direction=\"received\"} %llu\n",
                  r, s->ep_bytes_recv[r]);
    }
    family(b, "capmoe_ep_expert_pairs_total", "counter",
           "Token-expert pairs computed by a rank's experts (its expert load), all sources.");
    for (int r = 0; r < R; r++)
        sb_printf(b, "capmoe_ep_expert_pairs_total{rank=\"%d\"} %llu\n", r, s->ep_pairs[r]);
    family(b, "capmoe_ep_tokens_total", "counter",
           "Tokens a rank dispatched (its own sequences' tokens, summed over MoE layers).");
    for (int r = 0; r < R; r++)
        sb_printf(b, "capmoe_ep_tokens_total{rank=\"%d\"} %llu\n", r, s->ep_tokens[r]);
}

/* process_* of the Prometheus client libraries' process collector. */
static void process_metrics(sbuf *b, double fallback_start) {
    capmoe_procstat ps;
    capmoe_procstat_read(&ps);
    if (ps.start_time_seconds < 0) ps.start_time_seconds = fallback_start;
    if (ps.cpu_seconds >= 0) {
        family(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        sample_double(b, "process_cpu_seconds_total", ps.cpu_seconds);
    }
    if (ps.resident_bytes >= 0)
        gauge(b, "process_resident_memory_bytes", "Resident memory size in bytes.", ps.resident_bytes);
    if (ps.virtual_bytes >= 0)
        gauge(b, "process_virtual_memory_bytes", "Virtual memory size in bytes.", ps.virtual_bytes);
    if (ps.open_fds >= 0) gauge(b, "process_open_fds", "Number of open file descriptors.", ps.open_fds);
    if (ps.max_fds >= 0)
        gauge(b, "process_max_fds", "Maximum number of open file descriptors.", ps.max_fds);
    if (ps.start_time_seconds >= 0)
        gauge(b, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
              ps.start_time_seconds);
}

static int req_cmp(const void *a, const void *b) {
    const req_series *x = a, *y = b;
    int c = strcmp(x->endpoint, y->endpoint);
    return c ? c : (x->code > y->code) - (x->code < y->code);
}

char *capmoe_metrics_render(capmoe_metrics *m, size_t *len) {
    if (len) *len = 0;
    if (!m) return NULL;
    /* Snapshot under the lock, format without it. */
    metrics_state *s = malloc(sizeof *s);
    unsigned long long *le = NULL;
    unsigned char *seen = NULL;
    int stride = m->n_experts > 0 ? m->n_experts : CAPMOE_MAX_EXPERTS;
    size_t le_n = m->layer_expert ? (size_t)m->n_layers * (size_t)stride : 0;
    if (le_n) {
        le = malloc(le_n * sizeof *le);
        seen = malloc((size_t)m->n_layers);
    }
    if (!s || (le_n && (!le || !seen))) {
        free(s);
        free(le);
        free(seen);
        return NULL;
    }
    pthread_mutex_lock(&m->mu);
    *s = m->st;
    if (le_n) {
        memcpy(le, m->layer_expert, le_n * sizeof *le);
        memcpy(seen, m->layer_seen, (size_t)m->n_layers);
    }
    pthread_mutex_unlock(&m->mu);

    sbuf b = {0};
    sb_reserve(&b, 16384);

    family(&b, "capmoe_requests_total", "counter",
           "HTTP requests finished, by endpoint and status code.");
    qsort(s->req, (size_t)s->n_req, sizeof s->req[0], req_cmp);
    for (int i = 0; i < s->n_req; i++) {
        sb_puts(&b, "capmoe_requests_total{endpoint=\"");
        sb_escaped(&b, s->req[i].endpoint, 1);
        sb_printf(&b, "\",code=\"%d\"} %llu\n", s->req[i].code, s->req[i].count);
    }
    if (s->req_overflow)
        sb_printf(&b, "capmoe_requests_total{endpoint=\"other\",code=\"other\"} %llu\n",
                  s->req_overflow);
    counter(&b, "capmoe_prompt_tokens_total", "Prompt tokens processed (prefill).",
            s->prompt_tokens);
    counter(&b, "capmoe_generation_tokens_total", "Tokens generated.", s->generation_tokens);
    family(&b, "capmoe_request_success_total", "counter",
           "Sequences (choices) finished, by finish reason: stop (EOS, stop token or string), "
           "length (max_tokens, context or request timeout), abort (cancelled or client gone).");
    for (int i = 0; i < N_REASONS; i++)
        sb_printf(&b, "capmoe_request_success_total{finished_reason=\"%s\"} %llu\n", k_reasons[i],
                  s->success[i]);
    histogram(&b, "capmoe_request_prompt_tokens", "Prompt tokens of each finished sequence.",
              &s->req_prompt_tokens);
    histogram(&b, "capmoe_request_generation_tokens", "Tokens generated by each finished sequence.",
              &s->req_generation_tokens);
    histogram(&b, "capmoe_time_to_first_token_seconds",
              "Time from request arrival to its first generated token.", &s->ttft);
    histogram(&b, "capmoe_inter_token_latency_seconds",
              "Time between consecutive generated tokens of a sequence.", &s->itl);
    histogram(&b, "capmoe_e2e_request_latency_seconds",
              "Time from request arrival to its last token.", &s->e2e);
    histogram(&b, "capmoe_request_queue_time_seconds",
              "Time a request waited before its first scheduler step.", &s->queue);
    gauge(&b, "capmoe_requests_running", "Sequences in the running batch.", s->running);
    gauge(&b, "capmoe_requests_waiting", "Requests queued, not yet scheduled.", s->waiting);
    gauge(&b, "capmoe_kv_cache_usage_ratio", "Fraction of KV cache token slots in use (0-1).",
          s->kv_capacity > 0 ? s->kv_used / s->kv_capacity : 0.0);
    gauge(&b, "capmoe_kv_cache_tokens", "KV cache token slots in use.", s->kv_used);
    gauge(&b, "capmoe_kv_cache_capacity_tokens", "KV cache token slots in all.", s->kv_capacity);
    gauge(&b, "capmoe_kv_cache_bytes", "Memory held by the KV cache, in bytes.", s->kv_bytes);
    gauge(&b, "capmoe_kv_cache_token_bytes",
          "KV cache bytes per token of a sequence, all layers (latent attention: the "
          "compressed latent and the rope key).", s->kv_token_bytes);
    gauge(&b, "capmoe_kv_cache_expanded_token_bytes",
          "KV cache bytes per token that every head's keys and values would take (equal to "
          "capmoe_kv_cache_token_bytes except for latent attention).",
          s->kv_token_bytes_expanded);
    histogram(&b, "capmoe_batch_tokens", "Tokens per scheduler step (forward pass batch size).",
              &s->batch_tokens);
    histogram(&b, "capmoe_forward_seconds", "Wall time of one batched forward pass.",
              &s->forward_seconds);

    if (m->per_layer_expert) {
        family(&b, "capmoe_expert_tokens_total", "counter",
               "Token-expert pairs computed, by MoE layer and routed expert.");
        for (int l = 0; l < m->n_layers; l++) {
            if (!seen[l]) continue;
            int ne = m->n_experts > 0 ? m->n_experts : s->n_experts_seen;
            for (int e = 0; e < ne; e++)
                sb_printf(&b, "capmoe_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %llu\n", l, e,
                          le[(size_t)l * (size_t)stride + (size_t)e]);
        }
    } else {
        family(&b, "capmoe_expert_tokens_total", "counter",
               "Token-expert pairs computed, by routed expert, summed over MoE layers.");
        for (int e = 0; e < s->n_experts_seen; e++)
            sb_printf(&b, "capmoe_expert_tokens_total{expert=\"%d\"} %llu\n", e, s->expert_tokens[e]);
    }
    family(&b, "capmoe_moe_load_imbalance", "histogram",
           "Max over mean expert load (pairs) per MoE layer dispatch: 1 is perfectly even, E "
           "(experts) is everything on one expert; not a 0-1 ratio. below_min_tokens=\"true\": "
           "dispatches of fewer than min_tokens tokens, where a lone decode token always reads E/k.");
    hist_series(&b, "capmoe_moe_load_imbalance", "below_min_tokens=\"false\"", &s->imbalance);
    hist_series(&b, "capmoe_moe_load_imbalance", "below_min_tokens=\"true\"", &s->imbalance_small);
    histogram(&b, "capmoe_moe_straggler_ratio",
              "Slowest over mean expert-parallel rank time per MoE layer dispatch (only with "
              "more than one rank).",
              &s->straggler);
    counter(&b, "capmoe_moe_routed_pairs_total",
            "Top-k token-expert pairs the routers selected (T*k per dispatch).", s->routed);
    counter(&b, "capmoe_moe_dropped_pairs_total",
            "Routed pairs not computed because of expert capacity (and not rerouted).",
            s->dropped);
    counter(&b, "capmoe_moe_rerouted_pairs_total",
            "Substitute pairs computed on another expert for pairs over capacity.", s->rerouted);
    counter(&b, "capmoe_moe_piggybacked_pairs_total",
            "Pairs computed on an expert outside the token's top-k because the batch activated it "
            "anyway (policy piggyback).",
            s->piggybacked);
    gauge(&b, "capmoe_moe_regime_crossover_tokens",
          "Dispatch size (tokens) where an MoE layer stops being memory-bound, measured when the "
          "model loaded; regime_tokens \"auto\" uses it (0: not measured yet).",
          (double)s->regime_crossover);
    histogram(&b, "capmoe_moe_activated_experts",
              "Experts with at least one token per MoE layer dispatch: what a memory-bound "
              "(decode) dispatch reads.",
              &s->activated);
    family(&b, "capmoe_moe_dispatches_total", "counter",
           "MoE layer dispatches, by whether a capacity limit was applied and by regime: "
           "decode = the decode_policy ran (fewer than regime_tokens tokens), main = the policy.");
    for (int lim = 0; lim < 2; lim++)
        for (int reg = 0; reg < 2; reg++)
            sb_printf(&b, "capmoe_moe_dispatches_total{limited=\"%s\",regime=\"%s\"} %llu\n",
                      lim ? "true" : "false", reg ? "decode" : "main", s->dispatches[lim][reg]);
    histogram(&b, "capmoe_moe_capacity_factor",
              "Capacity factor gamma applied per limited MoE layer dispatch.", &s->gamma);
    histogram(&b, "capmoe_moe_dropped_mass_ratio",
              "Fraction of routing weight dropped per limited MoE layer dispatch (0-1).",
              &s->dropped_mass);
    histogram(&b, "capmoe_moe_layer_seconds", "Wall time of one MoE block (router, experts, combine).",
              &s->layer_seconds);

    render_ep(&b, s);

    family(&b, "capmoe_model_info", "gauge", "The served model and dispatch policy; value 1.");
    sb_puts(&b, "capmoe_model_info{model=\"");
    sb_escaped(&b, m->model_name, 1);
    sb_puts(&b, "\",policy=\"");
    sb_escaped(&b, s->policy, 1);
    sb_puts(&b, "\"} 1\n");
    family(&b, "capmoe_build_info", "gauge", "The build of capmoe-server; value 1.");
    sb_puts(&b, "capmoe_build_info{");
    for (int i = 0; i < m->n_build; i++) {
        sb_printf(&b, "%s%s=\"", i ? "," : "", m->build[2 * i]);
        sb_escaped(&b, m->build[2 * i + 1], 1);
        sb_puts(&b, "\"");
    }
    sb_puts(&b, "} 1\n");
    process_metrics(&b, m->start_time);

    free(s);
    free(le);
    free(seen);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}
