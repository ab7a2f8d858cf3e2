/* dispatch.h - capacity-aware expert dispatch (../shared/docs/dispatch-spec.md §1).
 *
 * Pure functions: router logits of one MoE layer for the T tokens of a batch in,
 * a dispatch plan out (per expert: the tokens it computes and their weights),
 * plus the numbers the report and the metrics need. No threads, no I/O. */
#ifndef CAPMOE_DISPATCH_H
#define CAPMOE_DISPATCH_H

#include "capmoe/common.h"

typedef enum capmoe_policy {
    CAPMOE_POLICY_NONE = 0,
    CAPMOE_POLICY_DROP,
    CAPMOE_POLICY_REROUTE,
    CAPMOE_POLICY_EXPANDED,
    CAPMOE_POLICY_RANK_DROP,
    CAPMOE_POLICY_PIGGYBACK   /* memory-bound dispatch (spec §1 "piggyback") */
} capmoe_policy;

#define CAPMOE_GRID_MAX 16
#define CAPMOE_TOPK_MAX 64   /* largest k (experts per token) a dispatch accepts */

typedef struct capmoe_dispatch_cfg {
    capmoe_policy policy;
    double capacity_factor;   /* gamma; used when auto_gamma == 0 */
    int auto_gamma;           /* 1: capacity_factor = auto (per-dispatch tuning) */
    int ep_ranks;             /* R >= 1; E must be divisible by R for expanded/rank_drop */
    int renormalize;          /* spec option `renormalize` */
    int min_tokens;           /* default 16; 0 disables */
    double drop_budget;       /* default 0.01 */
    int n_grid;               /* auto grid; default 1.0,1.25,1.5,2.0,3.0 (then unlimited) */
    double grid[CAPMOE_GRID_MAX];
    int piggyback_k0;         /* piggyback's k0; 0 = the default max(1, k / 2) */
    int decode_policy;        /* -1: none (every dispatch uses `policy`); else the
                                 capmoe_policy of dispatches of T < regime_tokens */
    int regime_tokens;        /* N of --regime-tokens (used with a decode policy) */
    int regime_auto;          /* --regime-tokens auto: the caller replaces regime_tokens by
                                 the measured crossover (capmoe_model_regime_probe) before
                                 any dispatch; the dispatch itself reads regime_tokens only */
} capmoe_dispatch_cfg;

/* Fills the spec defaults: policy none, gamma 1.0, R 1, min_tokens 16,
 * drop_budget 0.01, the default grid, piggyback_k0 0 (default), no decode
 * policy (decode_policy -1, regime_tokens 0). */
void capmoe_dispatch_cfg_default(capmoe_dispatch_cfg *cfg);
/* "none","drop","reroute","expanded","rank_drop","piggyback" -> policy; -1 if unknown. */
int capmoe_policy_parse(const char *s);
const char *capmoe_policy_name(capmoe_policy p);
/* Validates cfg against E: policy known, R >= 1, E % R == 0 for expanded and
 * rank_drop (the message names E and R), min_tokens >= 0, gamma finite > 0
 * (fixed gamma), or under auto: drop budget in [0, 1] and 1..CAPMOE_GRID_MAX
 * finite grid values > 0, strictly increasing. */
int capmoe_dispatch_cfg_check(const capmoe_dispatch_cfg *cfg, int n_experts,
                              capmoe_error *err);
/* The policy a dispatch of T tokens runs under cfg: the decode policy when
 * one is set and T < regime_tokens, else cfg->policy. *regime (may be NULL)
 * gets 1 for the decode regime, 0 for the main one. */
capmoe_policy capmoe_dispatch_policy_for(const capmoe_dispatch_cfg *cfg, int T, int *regime);
/* piggyback's k0 for k experts per token: cfg->piggyback_k0, or max(1, k / 2)
 * when it is 0. A dispatch under piggyback fails when it exceeds k. */
int capmoe_dispatch_k0(const capmoe_dispatch_cfg *cfg, int k);

/* How a model's router turns logits into p, S_t and weights (spec section 1
 * and "Routers other than softmax top-k"). capmoe_router_default gives the
 * softmax top-k router of steps 1-3. For DeepSeek:
 *   V2: softmax; group_limited_greedy = n_group groups scored by their
 *       largest p, topk_group kept; weights p * scale (norm_topk 0).
 *   V3: sigmoid; selection score s = p + bias; groups scored by the sum of
 *       their two best s; weights p / (sum of p over S_t + 1e-20) * scale.
 * S_t = the k best selection scores among the experts of the kept groups,
 * ties to the lower index; the experts of the other groups count as 0 (V2,
 * as transformers masks them) or cannot be chosen (V3: masked to -inf). Capacity competition orders pairs by p; reroute's next-best expert
 * is the best selection score among the kept groups not yet used. */
typedef struct capmoe_router {
    int sigmoid;          /* p = sigmoid(logit) instead of the row softmax */
    int norm_topk;        /* Z_t = float sum of p over S_t (best first) + norm_eps; else 1 */
    float norm_eps;       /* 0, or 1e-20 (DeepSeek-V3) */
    int n_group;          /* experts in n_group equal groups (1: no groups) */
    int topk_group;       /* groups kept per token */
    int group_top2;       /* a group's score: sum of its two best s (else its best) */
    int group_exclusive;  /* experts of groups not kept cannot be chosen (else: score 0) */
    const float *bias;    /* E selection biases (s = p + bias), or NULL (s = p); borrowed */
    float scale;          /* routed_scaling_factor: every weight is multiplied by it */
} capmoe_router;

/* The softmax top-k router (norm_topk: whether the model normalises). */
void capmoe_router_default(capmoe_router *r, int norm_topk);
/* Checks a router against E and k: groups dividing E, 1 <= topk_group <=
 * n_group, at least two experts per group for group_top2, k experts within
 * the kept groups, scale finite > 0, bias entries finite. */
int capmoe_router_check(const capmoe_router *r, int E, int k, capmoe_error *err);

/* A dispatch plan. Buffers are owned by the plan and reused across calls
 * (grown as needed, never shrunk: a warm plan does not allocate); free with
 * capmoe_dispatch_plan_free. All fields are read-only for the caller.
 *
 * Definitions (S_t = the top-k set of token t, w[t,e] = p[t,e] / Z_t its
 * baseline weight; T*k pairs in all):
 *   loads[e]      pairs (t,e) computed, = expert_off[e+1] - expert_off[e].
 *   dropped       S_t pairs the policy does not compute and does not replace:
 *                   drop: pairs over capacity; reroute: dropped pairs that got
 *                   no substitute; expanded / rank_drop: S_t pairs not kept.
 *                   A dropped pair that got a reroute substitute counts in
 *                   rerouted, not here. 0 when not limited.
 *   rerouted      substitute pairs added by reroute (one per dropped pair that
 *                   found an expert); 0 for every other policy.
 *   extra         computed pairs outside S_t: reroute = rerouted; expanded =
 *                   local candidates kept that were not in S_t; else 0.
 *   dropped_mass  sum(w over the S_t pairs counted in `dropped`) /
 *                   sum(w over all T*k S_t pairs), computed in double (w and
 *                   Z_t in double); 0 when not limited. Under auto it is that
 *                   of the configured policy at the chosen gamma. The choice
 *                   itself uses the mass of policy drop at each grid gamma and
 *                   takes the first with mass <= drop_budget + 1e-9.
 *   weight        w[t,e] = p[t,e] / Z_t * scale for every computed pair (also
 *                   a reroute substitute or an expanded extra), Z_t = float sum
 *                   of p over S_t in best-first order (+ norm_eps; 1 when
 *                   !norm_topk), scale = the router's (1 for softmax top-k).
 *                   With cfg.renormalize on a limited dispatch: p[t,e] /
 *                   (float sum of p over the pairs t keeps, in ascending
 *                   expert order) * scale.
 *                   renormalize is not applied when the dispatch is not limited
 *                   (policy none, T <= 1, T < min_tokens, auto -> null): the
 *                   result is then the baseline (spec §1 step 4). A zero
 *                   denominator gives weight 0 (never NaN).
 *   limited/capacity/gamma  C = capmoe_dispatch_capacity(gamma, k, T, E) and
 *                   the gamma used (the chosen grid value under auto).
 *   policy/regime the policy this dispatch ran (capmoe_dispatch_policy_for)
 *                   and its regime (1: decode policy, T < regime_tokens).
 *   piggyback     (policy piggyback, T >= 2) B_t = the first k0 experts of
 *                   S_t, A = the union of the B_t; token t uses B_t and then
 *                   the experts of A \ B_t in its selection order (p, or s for
 *                   a biased router; only its kept groups) until it has k.
 *                   limited = 0 and capacity = 0 (no capacity), but
 *                   `applied` = 1: renormalize applies, and dropped /
 *                   dropped_mass count the S_t pairs not used.
 *   piggybacked   computed pairs not in S_t under piggyback (else 0).
 *   activated     experts with a load above 0 (every policy).
 *   applied       1 when the policy changed the baseline (limited, or
 *                   piggyback with T >= 2); renormalize only applies then. */
typedef struct capmoe_dispatch_plan {
    int T, E, k;
    int *expert_off;   /* E+1 offsets into tok/weight */
    int *tok;          /* token indices per expert, ascending within an expert */
    float *weight;     /* the weight of each (token, expert) pair */
    int n_pairs;       /* expert_off[E] */
    int *loads;        /* E: pairs computed per expert */
    int limited;       /* 0: no capacity applied (policy none, T<=1, T<min_tokens, auto -> null) */
    int capacity;      /* C when limited, else 0 */
    double gamma;      /* gamma applied when limited (chosen one under auto), else 0 */
    int dropped;       /* pairs of the top-k sets S_t not computed and not replaced */
    int rerouted;      /* pairs added by reroute */
    double dropped_mass; /* sum(w of dropped S_t pairs) / sum(w of all S_t pairs) */
    int extra;         /* computed pairs not in S_t (reroute substitutes, expanded extras,
                          piggybacked pairs) */
    int policy;        /* capmoe_policy this dispatch ran */
    int regime;        /* 1: the decode policy (T < regime_tokens), 0: the main policy */
    int applied;       /* the policy changed the baseline (limited or piggyback) */
    int piggybacked;   /* pairs used that are not in S_t (piggyback) */
    int activated;     /* experts with load > 0 */
    size_t cap_pairs, cap_T, cap_E; /* internal capacities */
    void *scratch;     /* internal */
    size_t scratch_size;
} capmoe_dispatch_plan;

void capmoe_dispatch_plan_init(capmoe_dispatch_plan *plan);
void capmoe_dispatch_plan_free(capmoe_dispatch_plan *plan);

/* C = max(1, ceil(gamma * k * T / E)), in double; a value within a relative
 * 1e-9 of an integer n counts as n (1.1*2*100/4 evaluates to
 * 55.00000000000001 and gives C = 55, not 56). */
int capmoe_dispatch_capacity(double gamma, int k, int T, int E);

/* Row softmax in float32 as the dispatch computes it: subtract the row max,
 * expf, float sum in expert order, divide. probs (T x E) is caller-owned.
 * Fails on NaN / +inf logits or a row of -inf. */
int capmoe_dispatch_softmax(const float *logits, int T, int E, float *probs,
                            capmoe_error *err);

/* Computes the plan for one dispatch.
 *   logits      T x E router logits (row-major, float32)
 *   norm_topk   1 when the model normalises its top-k weights (Z_t)
 *   token_rank  T entries: the rank each token lives on (expanded); NULL = all 0
 * Limits: 1 <= k <= min(E, CAPMOE_TOPK_MAX), T >= 0 (T = 0 gives an empty
 * plan), T*(E+k) <= INT_MAX.
 * Returns 0, or -1 with err set (bad cfg, E % R != 0, token rank out of range,
 * non-finite logits, allocation); the plan's contents are then unspecified but
 * it stays valid to reuse or free. */
int capmoe_dispatch_compute(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                            const float *logits, int T, int E, int k, int norm_topk,
                            const int *token_rank, capmoe_error *err);

/* Same from probabilities p (T x E, rows summing to 1): used by unit tests on
 * hand-made score matrices such as the spec's worked example. Entries must be
 * finite and >= 0 (row sums are not checked). */
int capmoe_dispatch_compute_probs(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                                  const float *probs, int T, int E, int k, int norm_topk,
                                  const int *token_rank, capmoe_error *err);

/* capmoe_dispatch_compute with a model's router (capmoe_router): logits in,
 * p by the router's softmax or sigmoid. Errors as above, plus a router that
 * fails capmoe_router_check. */
int capmoe_dispatch_compute_router(capmoe_dispatch_plan *plan, const capmoe_dispatch_cfg *cfg,
                                   const capmoe_router *router, const float *logits, int T,
                                   int E, int k, const int *token_rank, capmoe_error *err);
/* The same from p (finite, >= 0; for a sigmoid router at most 1), for tests. */
int capmoe_dispatch_compute_router_probs(capmoe_dispatch_plan *plan,
                                         const capmoe_dispatch_cfg *cfg,
                                         const capmoe_router *router, const float *probs, int T,
                                         int E, int k, const int *token_rank, capmoe_error *err);

#endif
