/* dispatch.c - capacity-aware expert dispatch (../shared/docs/dispatch-spec.md §1).
 *
 * One call turns the router output of one MoE layer for the T tokens of a batch
 * into a dispatch plan: for every expert the ascending list of tokens it computes
 * and their weights, plus the report (loads, capacity, gamma, dropped, rerouted,
 * dropped routing mass).
 *
 * Ordering. Every "largest p, ties to the lower token index (then the lower
 * expert index)" rule of the spec is one total order on pairs (t,e), encoded in
 * a 64-bit key: the IEEE bits of p (monotonic for p >= 0) in the high word and
 * 0xFFFFFFFF - (t*E + e) in the low word. A larger key is a better pair, keys
 * are unique, so "keep the C best" = "keep the keys >= the C-th largest key",
 * which a selection (introselect, O(n) on average) finds without a full sort.
 *
 * Routers (capmoe_router): the softmax top-k router of the spec's steps 1-3,
 * or DeepSeek's (groups, a sigmoid, a selection bias, a scale). Everything
 * after the choice of S_t works on p (the gate value) as the spec says; the
 * selection scores and the kept groups only steer reroute's next best.
 *
 * Memory-bound dispatch (policy piggyback, spec §1): B_t = the first k0
 * experts of S_t, A = their union; each token fills up to k experts from A in
 * its selection order (piggyback()). With cfg->decode_policy set, a dispatch
 * of fewer than cfg->regime_tokens tokens runs that policy instead of
 * cfg->policy (capmoe_dispatch_policy_for); the plan reports which.
 *
 * Memory: the plan owns every buffer (output and scratch) and only grows them,
 * so a warm plan does not allocate. */
#include "capmoe/dispatch.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration ------------------------------------------------------ */

static const double default_grid[] = {1.0, 1.25, 1.5, 2.0, 3.0};

void capmoe_dispatch_cfg_default(capmoe_dispatch_cfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->policy = CAPMOE_POLICY_NONE;
    cfg->capacity_factor = 1.0;
    cfg->auto_gamma = 0;
    cfg->ep_ranks = 1;
    cfg->renormalize = 0;
    cfg->min_tokens = 16;
    cfg->drop_budget = 0.01;
    cfg->n_grid = (int)(sizeof default_grid / sizeof default_grid[0]);
    for (int i = 0; i < cfg->n_grid; i++) cfg->grid[i] = default_grid[i];
    cfg->piggyback_k0 = 0;
    cfg->decode_policy = -1;
    cfg->regime_tokens = 0;
}

capmoe_policy capmoe_dispatch_policy_for(const capmoe_dispatch_cfg *cfg, int T, int *regime) {
    int dec = cfg->decode_policy >= 0 && T < cfg->regime_tokens;
    if (regime) *regime = dec;
    return dec ? (capmoe_policy)cfg->decode_policy : cfg->policy;
}

int capmoe_dispatch_k0(const capmoe_dispatch_cfg *cfg, int k) {
    if (cfg->piggyback_k0 > 0) return cfg->piggyback_k0;
    return k / 2 > 1 ? k / 2 : 1;
}

static const char *const policy_names[] = {"none",     "drop",      "reroute",
                                           "expanded", "rank_drop", "piggyback"};
#define N_POLICIES ((int)(sizeof policy_names / sizeof policy_names[0]))

int capmoe_policy_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < N_POLICIES; i++)
        if (strcmp(s, policy_names[i]) == 0) return i;
    return -1;
}

const char *capmoe_policy_name(capmoe_policy p) {
    if ((int)p < 0 || (int)p >= N_POLICIES) return "unknown";
    return policy_names[p];
}

int capmoe_dispatch_cfg_check(const capmoe_dispatch_cfg *cfg, int n_experts,
                              capmoe_error *err) {
    if (!cfg) return capmoe_set_error(err, "dispatch: no configuration");
    if ((int)cfg->policy < 0 || (int)cfg->policy >= N_POLICIES)
        return capmoe_set_error(err, "dispatch: unknown policy %d", (int)cfg->policy);
    if (cfg->decode_policy < -1 || cfg->decode_policy >= N_POLICIES)
        return capmoe_set_error(err, "dispatch: unknown decode policy %d", cfg->decode_policy);
    if (cfg->regime_tokens < 0)
        return capmoe_set_error(err, "dispatch: regime_tokens %d must be >= 0",
                                cfg->regime_tokens);
    if (cfg->piggyback_k0 < 0)
        return capmoe_set_error(err, "dispatch: piggyback k0 %d must be >= 1 (0: default k/2)",
                                cfg->piggyback_k0);
    if (n_experts < 1)
        return capmoe_set_error(err, "dispatch: n_experts E=%d must be >= 1", n_experts);
    if (cfg->ep_ranks < 1)
        return capmoe_set_error(err, "dispatch: ep_ranks R=%d must be >= 1", cfg->ep_ranks);
    for (int which = 0; which < 2; which++) {
        int pol = which ? cfg->decode_policy : (int)cfg->policy;
        if ((pol == CAPMOE_POLICY_EXPANDED || pol == CAPMOE_POLICY_RANK_DROP) &&
            n_experts % cfg->ep_ranks != 0)
            return capmoe_set_error(err,
                                    "dispatch: %spolicy %s needs the number of experts E=%d to "
                                    "be divisible by the number of ep ranks R=%d",
                                    which ? "decode " : "", policy_names[pol], n_experts,
                                    cfg->ep_ranks);
    }
    if (cfg->min_tokens < 0)
        return capmoe_set_error(err, "dispatch: min_tokens %d must be >= 0 (0 disables it)",
                                cfg->min_tokens);
    if (!cfg->auto_gamma) {
        if (!isfinite(cfg->capacity_factor) || !(cfg->capacity_factor > 0))
            return capmoe_set_error(err,
                                    "dispatch: capacity factor gamma=%g must be a finite "
                                    "number > 0",
                                    cfg->capacity_factor);
    } else {
        if (!isfinite(cfg->drop_budget) || cfg->drop_budget < 0 || cfg->drop_budget > 1)
            return capmoe_set_error(err, "dispatch: drop budget %g must be in [0, 1]",
                                    cfg->drop_budget);
        if (cfg->n_grid < 1 || cfg->n_grid > CAPMOE_GRID_MAX)
            return capmoe_set_error(err, "dispatch: auto grid needs 1..%d values, got %d",
                                    CAPMOE_GRID_MAX, cfg->n_grid);
        for (int i = 0; i < cfg->n_grid; i++) {
            double g = cfg->grid[i];
            if (!isfinite(g) || !(g > 0))
                return capmoe_set_error(err,
                                        "dispatch: auto grid value %d (%g) must be a finite "
                                        "number > 0",
                                        i, g);
            if (i > 0 && !(g > cfg->grid[i - 1]))
                return capmoe_set_error(err,
                                        "dispatch: auto grid must be strictly increasing "
                                        "(value %d: %g after %g)",
                                        i, g, cfg->grid[i - 1]);
        }
    }
    return 0;
}

/* C = max(1, ceil(gamma * k * T / E)), evaluated in double left to right.
 * ceil is robust to representation error: when gamma*k*T/E lies within a
 * relative 1e-9 of an integer n it is taken to be n (so 1.1*2*100/4, which
 * evaluates to 55.00000000000001, gives 55, not 56). */
int capmoe_dispatch_capacity(double gamma, int k, int T, int E) {
    if (E < 1) return 1;
    double x = gamma * (double)k * (double)T / (double)E;
    if (!(x == x)) return 1;
    double r = nearbyint(x);
    double c = fabs(x - r) <= 1e-9 * fmax(1.0, fabs(x)) ? r : ceil(x);
    if (c < 1) c = 1;
    if (c > (double)INT_MAX) c = (double)INT_MAX;
    return (int)c;
}

/* ---- plan and scratch ---------------------------------------------------- */

typedef struct scratch {
    float *probs;       /* T*E   softmax of the logits (logits entry point) */
    int *topk;          /* T*k   S_t, best first */
    float *z;           /* T     Z_t (float: the weights) */
    double *zd;         /* T     Z_t in double (routing mass) */
    float *ksum;        /* T     kept p per token (renormalize) */
    unsigned char *keep;/* T*k   S_t slot computed */
    int *sub;           /* T*k   reroute substitute of a dropped slot, or -1 */
    uint64_t *keys;     /* per-expert (or per-rank) candidate keys, grouped */
    uint64_t *sel;      /* T*k   selection copy of one group */
    uint64_t *thr;      /* E     per-expert (or per-rank) keep threshold */
    int *off;           /* E+1   group offsets into keys */
    int *cur;           /* E     fill cursors / running loads */
    int *stamp;         /* E     membership stamps for reroute */
    float *score;       /* T*E   selection scores s = p + bias (routers with a bias) */
    unsigned char *okgrp; /* T*n_group kept groups (routers with groups) */
    size_t c_loads, c_weight; /* capacities of plan->loads and plan->weight */
    size_t c_probs, c_topk, c_z, c_zd, c_ksum, c_keep, c_sub, c_keys, c_sel, c_thr, c_off, c_cur,
        c_stamp, c_score, c_okgrp;
} scratch;

void capmoe_dispatch_plan_init(capmoe_dispatch_plan *plan) {
    memset(plan, 0, sizeof *plan);
}

void capmoe_dispatch_plan_free(capmoe_dispatch_plan *plan) {
    if (!plan) return;
    scratch *s = plan->scratch;
    if (s) {
        free(s->probs);
        free(s->topk);
        free(s->z);
        free(s->zd);
        free(s->ksum);
        free(s->keep);
        free(s->sub);
        free(s->keys);
        free(s->sel);
        free(s->thr);
        free(s->off);
        free(s->cur);
        free(s->stamp);
        free(s->score);
        free(s->okgrp);
        free(s);
    }
    free(plan->expert_off);
    free(plan->tok);
    free(plan->weight);
    free(plan->loads);
    memset(plan, 0, sizeof *plan);
}

/* Grows *p to at least n elements of size sz. 0 or -1 (out of memory). */
static int grow(void *pp, size_t *cap, size_t n, size_t sz) {
    void **p = pp;
    if (n == 0) n = 1;
    if (*p && *cap >= n) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < n) {
        if (nc > SIZE_MAX / 2) {
            nc = n;
            break;
        }
        nc *= 2;
    }
    if (sz && nc > SIZE_MAX / sz) return -1;
    void *q = realloc(*p, nc * sz);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

#define GROW(ptr, cap, n) grow(&(ptr), &(cap), (size_t)(n), sizeof *(ptr))

/* ---- ordering keys and selection ---------------------------------------- */

static inline uint32_t pbits(float p) {
    uint32_t u;
    memcpy(&u, &p, sizeof u);
    return u & 0x7fffffffu; /* p >= 0 (checked); maps -0.0 to +0.0 */
}

static inline uint64_t pair_key(float p, int t, int e, int E) {
    uint32_t idx = (uint32_t)t * (uint32_t)E + (uint32_t)e;
    return ((uint64_t)pbits(p) << 32) | (uint64_t)(0xffffffffu - idx);
}

static inline uint32_t key_idx(uint64_t key) {
    return 0xffffffffu - (uint32_t)(key & 0xffffffffu);
}

static int cmp_key_desc(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The value at position kth (0-based) of a[0..n) sorted in descending order.
 * Reorders a. Keys are unique. Quickselect with a median-of-three pivot; after
 * 2*log2(n) rounds it falls back to sorting the remaining range. */
static uint64_t select_desc(uint64_t *a, size_t n, size_t kth) {
    size_t lo = 0, hi = n - 1;
    int depth = 8;
    for (size_t m = n; m > 1; m >>= 1) depth += 2;
    while (hi > lo) {
        if (depth-- <= 0) {
            qsort(a + lo, hi - lo + 1, sizeof *a, cmp_key_desc);
            return a[kth];
        }
        size_t mid = lo + (hi - lo) / 2;
        uint64_t x = a[lo], y = a[mid], z = a[hi], piv;
        if ((x >= y) == (y >= z)) piv = y;
        else if ((y >= x) == (x >= z)) piv = x;
        else piv = z;
        /* Hoare partition, descending: [lo..j] >= piv, [i..hi] <= piv. */
        ptrdiff_t i = (ptrdiff_t)lo, j = (ptrdiff_t)hi;
        while (i <= j) {
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) {
                uint64_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if ((ptrdiff_t)kth <= j) hi = (size_t)j;
        else if ((ptrdiff_t)kth >= i) lo = (size_t)i;
        else return a[kth];
    }
    return a[lo];
}

/* ---- softmax ------------------------------------------------------------ */

int capmoe_dispatch_softmax(const float *logits, int T, int E, float *probs,
                            capmoe_error *err) {
    for (int t = 0; t < T; t++) {
        const float *x = logits + (size_t)t * E;
        float *p = probs + (size_t)t * E;
        float m = -INFINITY;
        for (int e = 0; e < E; e++) {
            if (isnan(x[e]) || x[e] == INFINITY)
                return capmoe_set_error(err,
                                        "dispatch: router logit of token %d, expert %d is "
                                        "not finite (%g)",
                                        t, e, (double)x[e]);
            if (x[e] > m) m = x[e];
        }
        if (m == -INFINITY)
            return capmoe_set_error(err, "dispatch: all router logits of token %d are -inf",
                                    t);
        float sum = 0.0f;
        for (int e = 0; e < E; e++) {
            p[e] = expf(x[e] - m);
            sum += p[e];
        }
        for (int e = 0; e < E; e++) p[e] = p[e] / sum;
    }
    return 0;
}

/* p = sigmoid(logit) in float32 (DeepSeek-V3's router). */
static int sigmoid_rows(const float *logits, int T, int E, float *probs, capmoe_error *err) {
    for (size_t i = 0; i < (size_t)T * E; i++) {
        float x = logits[i];
        if (!isfinite(x))
            return capmoe_set_error(err,
                                    "dispatch: router logit of token %d, expert %d is not "
                                    "finite (%g)",
                                    (int)(i / (size_t)E), (int)(i % (size_t)E), (double)x);
        probs[i] = 1.0f / (1.0f + expf(-x));
    }
    return 0;
}

/* ---- routers -------------------------------------------------------------- */

void capmoe_router_default(capmoe_router *r, int norm_topk) {
    memset(r, 0, sizeof *r);
    r->norm_topk = norm_topk ? 1 : 0;
    r->n_group = r->topk_group = 1;
    r->scale = 1.0f;
}

int capmoe_router_check(const capmoe_router *r, int E, int k, capmoe_error *err) {
    if (!r) return capmoe_set_error(err, "dispatch: no router");
    if (r->n_group < 1 || E % r->n_group != 0)
        return capmoe_set_error(err, "dispatch: router groups n_group=%d must divide E=%d",
                                r->n_group, E);
    if (r->topk_group < 1 || r->topk_group > r->n_group)
        return capmoe_set_error(err, "dispatch: router topk_group=%d must be in [1, n_group=%d]",
                                r->topk_group, r->n_group);
    int per = E / r->n_group;
    if (r->group_top2 && r->n_group > 1 && per < 2)
        return capmoe_set_error(err, "dispatch: a group score of its two best experts needs "
                                "groups of at least 2 experts (E=%d, n_group=%d)", E, r->n_group);
    if ((long long)r->topk_group * per < k)
        return capmoe_set_error(err, "dispatch: k=%d experts per token exceed the %d experts of "
                                "the %d groups kept", k, r->topk_group * per, r->topk_group);
    if (!isfinite(r->scale) || !(r->scale > 0))
        return capmoe_set_error(err, "dispatch: router scale %g must be a finite number > 0",
                                (double)r->scale);
    if (!isfinite(r->norm_eps) || r->norm_eps < 0)
        return capmoe_set_error(err, "dispatch: router norm_eps %g must be finite and >= 0",
                                (double)r->norm_eps);
    for (int e = 0; r->bias && e < E; e++)
        if (!isfinite(r->bias[e]))
            return capmoe_set_error(err, "dispatch: router bias of expert %d is not finite (%g)",
                                    e, (double)r->bias[e]);
    return 0;
}

/* ---- the dispatch ------------------------------------------------------- */

typedef struct ctx {
    capmoe_dispatch_plan *plan;
    const capmoe_dispatch_cfg *cfg;
    scratch *s;
    const float *p;  /* T x E */
    int T, E, k;
    const capmoe_router *r;
    const float *sc; /* T x E selection scores: p, or s->score (p + bias) */
} ctx;

/* Whether expert e is in one of token t's kept groups. */
static inline int allowed(const ctx *c, int t, int e) {
    int ng = c->r->n_group;
    return ng <= 1 || c->s->okgrp[(size_t)t * ng + e / (c->E / ng)];
}

/* Groups the keys of all S_t pairs into s->keys with offsets s->off; group =
 * e / experts_per_group (1: per expert; E/R: per rank); within a group the
 * pairs are in ascending token order. */
static void group_topk(ctx *c, int n_groups, int experts_per_group) {
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k;
    memset(s->off, 0, sizeof(int) * (size_t)(n_groups + 1));
    for (size_t i = 0; i < (size_t)T * k; i++) s->off[s->topk[i] / experts_per_group + 1]++;
    for (int g = 0; g < n_groups; g++) s->off[g + 1] += s->off[g];
    memcpy(s->cur, s->off, sizeof(int) * (size_t)n_groups);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int e = s->topk[(size_t)t * k + j];
            s->keys[s->cur[e / experts_per_group]++] =
                pair_key(c->p[(size_t)t * E + e], t, e, E);
        }
}

/* For every group with more than cap[g] keys: thr[g] = the cap-th largest key,
 * else thr[g] = 0 (keep all). */
static void thresholds(ctx *c, int n_groups, long long cap) {
    scratch *s = c->s;
    for (int g = 0; g < n_groups; g++) {
        size_t n = (size_t)(s->off[g + 1] - s->off[g]);
        if ((long long)n <= cap) {
            s->thr[g] = 0;
            continue;
        }
        memcpy(s->sel, s->keys + s->off[g], n * sizeof *s->sel);
        s->thr[g] = select_desc(s->sel, n, (size_t)cap - 1);
    }
}

/* Keep flags of S_t slots from per-group thresholds. */
static void keep_from_thr(ctx *c, int experts_per_group) {
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            size_t slot = (size_t)t * k + j;
            int e = s->topk[slot];
            s->keep[slot] = pair_key(c->p[(size_t)t * E + e], t, e, E) >=
                            s->thr[e / experts_per_group];
        }
}

static inline float base_w(const ctx *c, int t, int e) {
    float z = c->s->z[t];
    return z > 0 ? c->p[(size_t)t * c->E + e] / z * c->r->scale : 0.0f;
}

/* The baseline weight in double, for routing mass: sums of many weights and
 * the budget comparison should not carry float rounding. */
static inline double base_wd(const ctx *c, int t, int e) {
    double z = c->s->zd[t];
    return z > 0 ? (double)c->p[(size_t)t * c->E + e] / z * (double)c->r->scale : 0.0;
}

/* Auto tuning compares mass <= budget + MASS_EPS: a mass that equals the
 * budget in exact arithmetic meets it despite summation-order noise. */
#define MASS_EPS 1e-9

/* Dropped routing mass of policy drop at capacity C (auto tuning). The S_t
 * keys must be grouped per expert and sorted descending within each group. */
static double drop_mass_sorted(ctx *c, int C, double total) {
    scratch *s = c->s;
    double dropped = 0;
    for (int e = 0; e < c->E; e++) {
        if (s->off[e + 1] - s->off[e] <= C) continue;
        for (int i = s->off[e] + C; i < s->off[e + 1]; i++) {
            uint32_t idx = key_idx(s->keys[i]);
            dropped += base_wd(c, (int)(idx / (uint32_t)c->E), (int)(idx % (uint32_t)c->E));
        }
    }
    return total > 0 ? dropped / total : 0.0;
}

static double total_mass(ctx *c) {
    double total = 0;
    for (int t = 0; t < c->T; t++)
        for (int j = 0; j < c->k; j++) total += base_wd(c, t, c->s->topk[(size_t)t * c->k + j]);
    return total;
}

/* Per-batch tuning: the smallest grid gamma whose drop-policy dropped mass is
 * within the budget, or 0 when none is. */
static double choose_gamma(ctx *c) {
    scratch *s = c->s;
    const capmoe_dispatch_cfg *cfg = c->cfg;
    group_topk(c, c->E, 1);
    for (int e = 0; e < c->E; e++)
        qsort(s->keys + s->off[e], (size_t)(s->off[e + 1] - s->off[e]), sizeof *s->keys,
              cmp_key_desc);
    double total = total_mass(c);
    for (int i = 0; i < cfg->n_grid; i++) {
        int C = capmoe_dispatch_capacity(cfg->grid[i], c->k, c->T, c->E);
        if (drop_mass_sorted(c, C, total) <= cfg->drop_budget + MASS_EPS) return cfg->grid[i];
    }
    return 0.0;
}

/* Policy reroute, after the drop keep flags and with s->cur = loads. */
static void reroute(ctx *c, int C) {
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k;
    size_t nd = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            size_t slot = (size_t)t * k + j;
            if (!s->keep[slot]) {
                int e = s->topk[slot];
                s->keys[nd++] = pair_key(c->p[(size_t)t * E + e], t, e, E);
            }
        }
    /* decreasing p, ties lower token, then lower expert: descending key */
    qsort(s->keys, nd, sizeof *s->keys, cmp_key_desc);
    for (int e = 0; e < E; e++) s->stamp[e] = -1;
    for (size_t d = 0; d < nd; d++) {
        uint32_t idx = key_idx(s->keys[d]);
        int t = (int)(idx / (uint32_t)E), e = (int)(idx % (uint32_t)E);
        const int *st = s->topk + (size_t)t * k;
        int stamp = (int)d, slot = -1;
        for (int j = 0; j < k; j++) {
            s->stamp[st[j]] = stamp;
            if (st[j] == e) slot = j;
            if (s->sub[(size_t)t * k + j] >= 0) s->stamp[s->sub[(size_t)t * k + j]] = stamp;
        }
        /* the next best in the token's own selection order, kept groups only */
        const float *st_sc = c->sc + (size_t)t * E;
        int best = -1;
        for (int x = 0; x < E; x++) {
            if (s->stamp[x] == stamp || s->cur[x] >= C || !allowed(c, t, x)) continue;
            if (best < 0 || st_sc[x] > st_sc[best]) best = x;
        }
        if (best >= 0) {
            s->sub[(size_t)t * k + slot] = best;
            s->cur[best]++;
        }
    }
}

/* Output CSR from S_t keep flags and reroute substitutes (tokens ascending). */
static void csr_from_slots(ctx *c) {
    capmoe_dispatch_plan *pl = c->plan;
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k;
    memset(pl->loads, 0, sizeof(int) * (size_t)E);
    for (size_t slot = 0; slot < (size_t)T * k; slot++) {
        if (s->keep[slot]) pl->loads[s->topk[slot]]++;
        else if (s->sub[slot] >= 0) pl->loads[s->sub[slot]]++;
    }
    pl->expert_off[0] = 0;
    for (int e = 0; e < E; e++) pl->expert_off[e + 1] = pl->expert_off[e] + pl->loads[e];
    memcpy(s->cur, pl->expert_off, sizeof(int) * (size_t)E);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            size_t slot = (size_t)t * k + j;
            int e = s->keep[slot] ? s->topk[slot] : s->sub[slot];
            if (e >= 0) pl->tok[s->cur[e]++] = t;
        }
    pl->n_pairs = pl->expert_off[E];
}

/* Policy expanded: candidates S_t ∪ experts of t's rank, top C per expert.
 * Writes the output CSR and the S_t keep flags. */
static void expanded(ctx *c, int C, const int *token_rank) {
    capmoe_dispatch_plan *pl = c->plan;
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k, R = c->cfg->ep_ranks, epr = E / R;
    /* candidate counts */
    memset(s->off, 0, sizeof(int) * (size_t)(E + 1));
    for (int t = 0; t < T; t++) {
        int r = token_rank ? token_rank[t] : 0;
        for (int e = r * epr; e < (r + 1) * epr; e++) s->off[e + 1]++;
        for (int j = 0; j < k; j++) {
            int e = s->topk[(size_t)t * k + j];
            if (e / epr != r) s->off[e + 1]++;
        }
    }
    for (int e = 0; e < E; e++) s->off[e + 1] += s->off[e];
    memcpy(s->cur, s->off, sizeof(int) * (size_t)E);
    for (int t = 0; t < T; t++) {
        int r = token_rank ? token_rank[t] : 0;
        const float *pt = c->p + (size_t)t * E;
        for (int e = r * epr; e < (r + 1) * epr; e++)
            s->keys[s->cur[e]++] = pair_key(pt[e], t, e, E);
        for (int j = 0; j < k; j++) {
            int e = s->topk[(size_t)t * k + j];
            if (e / epr != r) s->keys[s->cur[e]++] = pair_key(pt[e], t, e, E);
        }
    }
    thresholds(c, E, C);
    pl->expert_off[0] = 0;
    int n = 0;
    for (int e = 0; e < E; e++) {
        for (int i = s->off[e]; i < s->off[e + 1]; i++)
            if (s->keys[i] >= s->thr[e]) pl->tok[n++] = (int)(key_idx(s->keys[i]) / (uint32_t)E);
        pl->expert_off[e + 1] = n;
        pl->loads[e] = n - pl->expert_off[e];
    }
    pl->n_pairs = n;
    keep_from_thr(c, 1);
}

/* Policy piggyback (spec §1 "Memory-bound dispatch"): B_t = the first k0
 * slots of S_t, A = their union; each token keeps B_t and fills up to k
 * experts from A \ B_t in its selection order (largest s, ties to the lower
 * expert; kept groups only). A chosen expert of S_t keeps its slot; one
 * outside S_t rides in a slot of S_t that is not used (s->sub), so the
 * CSR and the report treat it like a substitute. */
static void piggyback(ctx *c, int k0) {
    scratch *s = c->s;
    int T = c->T, E = c->E, k = c->k;
    int *inA = s->stamp; /* E: 1 when in A */
    for (int e = 0; e < E; e++) inA[e] = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k0; j++) inA[s->topk[(size_t)t * k + j]] = 1;
    for (int t = 0; t < T; t++) {
        const int *st = s->topk + (size_t)t * k;
        unsigned char *keep = s->keep + (size_t)t * k;
        int *sub = s->sub + (size_t)t * k;
        for (int j = k0; j < k; j++) keep[j] = 0;
        /* the (k - k0) best experts of A \ B_t, best first */
        const float *sct = c->sc + (size_t)t * E;
        int best[CAPMOE_TOPK_MAX];
        float bv[CAPMOE_TOPK_MAX];
        int n = 0, want = k - k0;
        for (int e = 0; e < E && want > 0; e++) {
            if (!inA[e] || !allowed(c, t, e)) continue;
            int inB = 0;
            for (int j = 0; j < k0; j++) inB |= st[j] == e;
            if (inB) continue;
            float v = sct[e];
            if (n == want && !(v > bv[want - 1])) continue;
            int pos = n < want ? n : want - 1;
            while (pos > 0 && v > bv[pos - 1]) { /* strict >: ties to the lower index */
                best[pos] = best[pos - 1];
                bv[pos] = bv[pos - 1];
                pos--;
            }
            best[pos] = e;
            bv[pos] = v;
            if (n < want) n++;
        }
        /* experts of S_t keep their slot; the others go to free slots */
        for (int i = 0; i < n; i++)
            for (int j = k0; j < k; j++)
                if (st[j] == best[i]) {
                    keep[j] = 1;
                    best[i] = -1;
                    break;
                }
        int j = k0;
        for (int i = 0; i < n; i++) {
            if (best[i] < 0) continue;
            while (keep[j] || sub[j] >= 0) j++;
            sub[j] = best[i];
        }
    }
}

/* The kept groups of every token (s->okgrp) and the selection scores
 * (s->score when the router has a bias). */
static int route_groups(ctx *c) {
    scratch *s = c->s;
    const capmoe_router *r = c->r;
    int T = c->T, E = c->E, ng = r->n_group, per = E / ng;
    if (r->bias) {
        if (GROW(s->score, s->c_score, (size_t)T * E)) return -1;
        for (int t = 0; t < T; t++)
            for (int e = 0; e < E; e++)
                s->score[(size_t)t * E + e] = c->p[(size_t)t * E + e] + r->bias[e];
        c->sc = s->score;
    }
    if (ng <= 1) return 0;
    if (GROW(s->okgrp, s->c_okgrp, (size_t)T * ng)) return -1;
    for (int t = 0; t < T; t++) {
        const float *st = c->sc + (size_t)t * E;
        unsigned char *ok = s->okgrp + (size_t)t * ng;
        memset(ok, 0, (size_t)ng);
        for (int j = 0; j < r->topk_group; j++) {
            /* the best group not yet kept (strict >: ties to the lower group) */
            int bg = -1;
            float bv = 0;
            for (int g = 0; g < ng; g++) {
                if (ok[g]) continue;
                float a = -INFINITY, b = -INFINITY; /* the two best of the group */
                for (int e = g * per; e < (g + 1) * per; e++) {
                    if (st[e] > a) {
                        b = a;
                        a = st[e];
                    } else if (st[e] > b) {
                        b = st[e];
                    }
                }
                float v = r->group_top2 ? a + b : a;
                if (bg < 0 || v > bv) {
                    bg = g;
                    bv = v;
                }
            }
            ok[bg] = 1;
        }
    }
    return 0;
}

static int core(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg_in,
                const capmoe_router *router, const float *p, int T, int E, int k,
                const int *token_rank, capmoe_error *err) {
    scratch *s = plan->scratch;
    /* the regime: the policy this dispatch runs (cfg_in->decode_policy for
     * T < regime_tokens), in a copy every step below reads */
    capmoe_dispatch_cfg ecfg = *cfg_in;
    int regime = 0;
    ecfg.policy = capmoe_dispatch_policy_for(cfg_in, T, &regime);
    const capmoe_dispatch_cfg *cfg = &ecfg;
    ctx c = {plan, cfg, s, p, T, E, k, router, p};
    size_t Tk = (size_t)T * (size_t)k;
    int norm_topk = router->norm_topk;

    /* output and slot buffers */
    if (GROW(plan->expert_off, plan->cap_E, E + 1) || GROW(plan->loads, s->c_loads, E) ||
        GROW(s->topk, s->c_topk, Tk) || GROW(s->z, s->c_z, T) || GROW(s->zd, s->c_zd, T) ||
        GROW(s->ksum, s->c_ksum, T) || GROW(s->sel, s->c_sel, Tk) ||
        GROW(s->keep, s->c_keep, Tk) || GROW(s->sub, s->c_sub, Tk) ||
        GROW(s->thr, s->c_thr, E) || GROW(s->off, s->c_off, E + 1) ||
        GROW(s->cur, s->c_cur, E) || GROW(s->stamp, s->c_stamp, E))
        return capmoe_set_error(err, "dispatch: out of memory (T=%d, E=%d, k=%d)", T, E, k);
    if (route_groups(&c) != 0)
        return capmoe_set_error(err, "dispatch: out of memory (T=%d, E=%d, k=%d)", T, E, k);

    /* S_t (best first, ties to the lower expert) and Z_t: the k best
     * selection scores, experts of groups not kept counting as 0 */
    for (int t = 0; t < T; t++) {
        const float *pt = p + (size_t)t * E, *sct = c.sc + (size_t)t * E;
        int *st = s->topk + (size_t)t * k;
        /* insertion into a sorted list; strict > keeps the lower index first */
        float sv[CAPMOE_TOPK_MAX];
        int n = 0;
        for (int e = 0; e < E; e++) {
            float v = allowed(&c, t, e) ? sct[e] : router->group_exclusive ? -INFINITY : 0.0f;
            if (n == k && !(v > sv[k - 1])) continue;
            int pos = n < k ? n : k - 1;
            while (pos > 0 && v > sv[pos - 1]) {
                st[pos] = st[pos - 1];
                sv[pos] = sv[pos - 1];
                pos--;
            }
            st[pos] = e;
            sv[pos] = v;
            if (n < k) n++;
        }
        float z = 0.0f;
        double zd = 0.0;
        for (int j = 0; j < k; j++) {
            z += pt[st[j]];
            zd += (double)pt[st[j]];
        }
        s->z[t] = norm_topk ? z + router->norm_eps : 1.0f;
        s->zd[t] = norm_topk ? zd + (double)router->norm_eps : 1.0;
    }
    for (size_t i = 0; i < Tk; i++) {
        s->keep[i] = 1;
        s->sub[i] = -1;
    }

    /* limit? */
    double gamma = 0.0;
    int pig = cfg->policy == CAPMOE_POLICY_PIGGYBACK && T >= 2;
    int limited = !(cfg->policy == CAPMOE_POLICY_NONE ||
                    cfg->policy == CAPMOE_POLICY_PIGGYBACK || T <= 1 ||
                    (cfg->min_tokens > 0 && T < cfg->min_tokens));
    size_t need_keys = Tk;
    if (limited && cfg->policy == CAPMOE_POLICY_EXPANDED)
        need_keys = (size_t)T * (size_t)(E / cfg->ep_ranks) + Tk;
    /* s->sel holds one group at a time: <= T (an expert) or <= T*k (a rank) */
    if (GROW(s->keys, s->c_keys, need_keys))
        return capmoe_set_error(err, "dispatch: out of memory (T=%d, E=%d, k=%d)", T, E, k);
    if (limited) {
        gamma = cfg->auto_gamma ? choose_gamma(&c) : cfg->capacity_factor;
        if (gamma == 0.0) limited = 0;
    }
    int C = limited ? capmoe_dispatch_capacity(gamma, k, T, E) : 0;
    int R = cfg->ep_ranks;

    size_t need_pairs = Tk;
    if (limited && cfg->policy == CAPMOE_POLICY_EXPANDED) {
        size_t cap_all = (size_t)C * (size_t)E;
        need_pairs = need_keys < cap_all ? need_keys : cap_all;
    }
    if (GROW(plan->tok, plan->cap_pairs, need_pairs) ||
        GROW(plan->weight, s->c_weight, need_pairs))
        goto oom;

    if (pig) {
        piggyback(&c, capmoe_dispatch_k0(cfg, k));
        csr_from_slots(&c);
    } else if (!limited) {
        csr_from_slots(&c);
    } else {
        switch (cfg->policy) {
        case CAPMOE_POLICY_DROP:
        case CAPMOE_POLICY_REROUTE:
            group_topk(&c, E, 1);
            thresholds(&c, E, C);
            keep_from_thr(&c, 1);
            if (cfg->policy == CAPMOE_POLICY_REROUTE) {
                for (int e = 0; e < E; e++) {
                    int n = s->off[e + 1] - s->off[e];
                    s->cur[e] = n < C ? n : C;
                }
                reroute(&c, C);
            }
            csr_from_slots(&c);
            break;
        case CAPMOE_POLICY_RANK_DROP:
            group_topk(&c, R, E / R);
            thresholds(&c, R, (long long)(E / R) * C);
            keep_from_thr(&c, E / R);
            csr_from_slots(&c);
            break;
        case CAPMOE_POLICY_EXPANDED:
            expanded(&c, C, token_rank);
            break;
        default:
            csr_from_slots(&c);
            break;
        }
    }

    /* weights */
    int applied = limited || pig;
    if (applied && cfg->renormalize) {
        for (int t = 0; t < T; t++) s->ksum[t] = 0.0f;
        for (int e = 0; e < E; e++)
            for (int i = plan->expert_off[e]; i < plan->expert_off[e + 1]; i++)
                s->ksum[plan->tok[i]] += p[(size_t)plan->tok[i] * E + e];
        for (int e = 0; e < E; e++)
            for (int i = plan->expert_off[e]; i < plan->expert_off[e + 1]; i++) {
                int t = plan->tok[i];
                float ks = s->ksum[t];
                plan->weight[i] = ks > 0 ? p[(size_t)t * E + e] / ks * router->scale : 0.0f;
            }
    } else {
        for (int e = 0; e < E; e++)
            for (int i = plan->expert_off[e]; i < plan->expert_off[e + 1]; i++)
                plan->weight[i] = base_w(&c, plan->tok[i], e);
    }

    /* report */
    plan->T = T;
    plan->E = E;
    plan->k = k;
    plan->limited = limited;
    plan->capacity = C;
    plan->gamma = limited ? gamma : 0.0;
    int dropped = 0, rerouted = 0, kept_topk = 0, piggybacked = 0;
    double dmass = 0, tmass = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            size_t slot = (size_t)t * k + j;
            double w = base_wd(&c, t, s->topk[slot]);
            tmass += w;
            if (s->keep[slot]) {
                kept_topk++;
                continue;
            }
            if (s->sub[slot] >= 0) {
                if (!pig) {
                    rerouted++;
                    continue;
                }
                piggybacked++; /* a pair outside S_t rides in this slot */
            }
            dropped++; /* piggyback: every S_t pair not used */
            dmass += w;
        }
    plan->dropped = dropped;
    plan->rerouted = rerouted;
    plan->piggybacked = piggybacked;
    plan->policy = (int)cfg->policy;
    plan->regime = regime;
    plan->applied = applied;
    plan->activated = 0;
    for (int e = 0; e < E; e++) plan->activated += plan->loads[e] > 0;
    plan->extra = plan->n_pairs - kept_topk;
    plan->dropped_mass = tmass > 0 ? dmass / tmass : 0.0;
    return 0;
oom:
    return capmoe_set_error(err, "dispatch: out of memory (T=%d, E=%d, k=%d)", T, E, k);
}

/* Validates the call, makes sure the scratch exists. */
static int prepare(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                   const capmoe_router *router, const void *in, int T, int E, int k,
                   const int *token_rank, capmoe_error *err) {
    if (!plan) return capmoe_set_error(err, "dispatch: no plan");
    if (capmoe_dispatch_cfg_check(cfg, E, err)) return -1;
    if (T < 0) return capmoe_set_error(err, "dispatch: number of tokens T=%d must be >= 0", T);
    if (k < 1 || k > E || k > CAPMOE_TOPK_MAX)
        return capmoe_set_error(err,
                                "dispatch: experts per token k=%d must be in [1, E=%d] and at "
                                "most %d",
                                k, E, CAPMOE_TOPK_MAX);
    if (capmoe_router_check(router, E, k, err)) return -1;
    if ((long long)T * ((long long)E + k) > (long long)INT_MAX)
        return capmoe_set_error(err, "dispatch: batch too large (T=%d tokens x E=%d experts)",
                                T, E);
    if (T > 0 && !in) return capmoe_set_error(err, "dispatch: no router scores");
    capmoe_policy pol = capmoe_dispatch_policy_for(cfg, T, NULL);
    if (pol == CAPMOE_POLICY_PIGGYBACK && capmoe_dispatch_k0(cfg, k) > k)
        return capmoe_set_error(err,
                                "dispatch: piggyback k0=%d must be at most the model's k=%d "
                                "experts per token",
                                capmoe_dispatch_k0(cfg, k), k);
    if (token_rank && pol == CAPMOE_POLICY_EXPANDED)
        for (int t = 0; t < T; t++)
            if (token_rank[t] < 0 || token_rank[t] >= cfg->ep_ranks)
                return capmoe_set_error(err,
                                        "dispatch: token %d lives on rank %d, outside "
                                        "[0, R=%d)",
                                        t, token_rank[t], cfg->ep_ranks);
    if (!plan->scratch) {
        plan->scratch = calloc(1, sizeof(scratch));
        if (!plan->scratch) return capmoe_set_error(err, "dispatch: out of memory");
        plan->scratch_size = sizeof(scratch);
    }
    return 0;
}

int capmoe_dispatch_compute_router(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                                   const capmoe_router *router, const float *logits, int T,
                                   int E, int k, const int *token_rank, capmoe_error *err) {
    if (prepare(plan, cfg, router, logits, T, E, k, token_rank, err)) return -1;
    scratch *s = plan->scratch;
    if (GROW(s->probs, s->c_probs, (size_t)T * E))
        return capmoe_set_error(err, "dispatch: out of memory (T=%d, E=%d)", T, E);
    if ((router->sigmoid ? sigmoid_rows : capmoe_dispatch_softmax)(logits, T, E, s->probs, err))
        return -1;
    return core(plan, cfg, router, s->probs, T, E, k, token_rank, err);
}

int capmoe_dispatch_compute_router_probs(capmoe_dispatch_plan *plan,
                                         const capmoe_dispatch_cfg *cfg,
                                         const capmoe_router *router, const float *probs, int T,
                                         int E, int k, const int *token_rank, capmoe_error *err) {
    if (prepare(plan, cfg, router, probs, T, E, k, token_rank, err)) return -1;
    for (size_t i = 0; i < (size_t)T * E; i++)
        if (!(probs[i] >= 0.0f) || probs[i] == INFINITY || (router->sigmoid && probs[i] > 1.0f))
            return capmoe_set_error(err,
                                    "dispatch: probability of token %d, expert %d is not a "
                                    "finite number in [0, %s] (%g)",
                                    (int)(i / (size_t)E), (int)(i % (size_t)E),
                                    router->sigmoid ? "1" : "inf", (double)probs[i]);
    return core(plan, cfg, router, probs, T, E, k, token_rank, err);
}

int capmoe_dispatch_compute(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                            const float *logits, int T, int E, int k, int norm_topk,
                            const int *token_rank, capmoe_error *err) {
    capmoe_router r;
    capmoe_router_default(&r, norm_topk);
    return capmoe_dispatch_compute_router(plan, cfg, &r, logits, T, E, k, token_rank, err);
}

int capmoe_dispatch_compute_probs(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                                  const float *probs, int T, int E, int k, int norm_topk,
                                  const int *token_rank, capmoe_error *err) {
    capmoe_router r;
    capmoe_router_default(&r, norm_topk);
    return capmoe_dispatch_compute_router_probs(plan, cfg, &r, probs, T, E, k, token_rank, err);
}
