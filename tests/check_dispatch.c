/* check_dispatch.c - capacity-aware dispatch (core/dispatch.c) against
 * ../shared/docs/dispatch-spec.md §1: the spec's worked example for every
 * policy, every tie rule, the no-limit conditions, auto tuning, the report
 * numbers, error handling, and randomized invariants. */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <stdio.h>

#include "capmoe/dispatch.h"

#define NA (-1.0f) /* "pair not computed" in expected tables */

/* Check records every passing ck_assert (its location travels through a pipe),
 * which makes assertions in hot loops slow; REQUIRE only reports failures. */
#define REQUIRE(c)                                                                 \
    do {                                                                           \
        if (!(c)) ck_abort_msg("%s:%d: failed: %s", __FILE__, __LINE__, #c);      \
    } while (0)

/* The worked example: T = 6, E = 4, k = 2, normalised top-k. */
static const float EX[6 * 4] = {
    .50f, .30f, .15f, .05f, /* t0 */
    .60f, .25f, .10f, .05f, /* t1 */
    .40f, .35f, .20f, .05f, /* t2 */
    .10f, .45f, .40f, .05f, /* t3 */
    .55f, .05f, .30f, .10f, /* t4 */
    .35f, .05f, .10f, .50f, /* t5 */
};
static const int EX_RANKS[6] = {0, 1, 0, 1, 0, 1};

/* ---- helpers ------------------------------------------------------------ */

static capmoe_dispatch_cfg cfg_of(capmoe_policy pol, double gamma, int ranks) {
    capmoe_dispatch_cfg c;
    capmoe_dispatch_cfg_default(&c);
    c.policy = pol;
    c.capacity_factor = gamma;
    c.ep_ranks = ranks;
    c.min_tokens = 0;
    return c;
}

/* Weight of pair (t,e) in the plan, or NA when not computed. */
static float wt(const capmoe_dispatch_plan *pl, int t, int e) {
    for (int i = pl->expert_off[e]; i < pl->expert_off[e + 1]; i++)
        if (pl->tok[i] == t) return pl->weight[i];
    return NA;
}

/* Structural checks every plan must pass. */
static void check_structure(const capmoe_dispatch_plan *pl, int T, int E) {
    REQUIRE((pl->T) == (T));
    REQUIRE((pl->E) == (E));
    REQUIRE((pl->expert_off[0]) == (0));
    int sum = 0;
    for (int e = 0; e < E; e++) {
        REQUIRE((pl->loads[e]) == (pl->expert_off[e + 1] - pl->expert_off[e]));
        sum += pl->loads[e];
        for (int i = pl->expert_off[e]; i < pl->expert_off[e + 1]; i++) {
            REQUIRE((pl->tok[i]) >= (0));
            REQUIRE((pl->tok[i]) < (T));
            if (i > pl->expert_off[e]) REQUIRE((pl->tok[i - 1]) < (pl->tok[i]));
            REQUIRE(isfinite(pl->weight[i]));
            REQUIRE(pl->weight[i] >= 0.0f);
        }
    }
    REQUIRE((sum) == (pl->n_pairs));
    REQUIRE((pl->expert_off[E]) == (pl->n_pairs));
}

/* Exact expert sets, weights to 1e-4, loads. want: T x E, NA = not computed. */
static void expect_plan(const capmoe_dispatch_plan *pl, const float *want, const int *loads,
                        int T, int E) {
    check_structure(pl, T, E);
    for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++) {
            float w = wt(pl, t, e), x = want[t * E + e];
            if (x == NA)
                ck_assert_msg(w == NA, "t%d e%d computed (%g) but should not be", t, e,
                              (double)w);
            else
                ck_assert_msg(w != NA && fabsf(w - x) < 1e-4f, "t%d e%d: got %g want %g", t,
                              e, (double)w, (double)x);
        }
    for (int e = 0; e < E; e++)
        ck_assert_msg(pl->loads[e] == loads[e], "load of expert %d: got %d want %d", e,
                      pl->loads[e], loads[e]);
}

static void run_probs(capmoe_dispatch_plan *pl, const capmoe_dispatch_cfg *c, const float *p,
                      int T, int E, int k, int norm, const int *ranks) {
    capmoe_error err = {{0}};
    int rc = capmoe_dispatch_compute_probs(pl, c, p, T, E, k, norm, ranks, &err);
    ck_assert_msg(rc == 0, "dispatch failed: %s", err.msg);
}

static capmoe_dispatch_plan ex_plan(capmoe_policy pol, double gamma, int ranks, int renorm,
                                    const int *token_rank) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(pol, gamma, ranks);
    c.renormalize = renorm;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, token_rank);
    return pl;
}

/* baseline weights of the example */
#define W00 .625f
#define W01 .375f
#define W10 (.60f / .85f)
#define W11 (.25f / .85f)
#define W20 (.40f / .75f)
#define W21 (.35f / .75f)
#define W31 (.45f / .85f)
#define W32 (.40f / .85f)
#define W40 (.55f / .85f)
#define W42 (.30f / .85f)
#define W50 (.35f / .85f)
#define W53 (.50f / .85f)

/* ---- the worked example -------------------------------------------------- */

START_TEST(test_example_none) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_NONE, 1.0, 1, 0, NULL);
    const float want[] = {.625f, .375f, NA, NA, .7059f, .2941f, NA, NA, .5333f, .4667f, NA, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, .4118f, NA, NA, .5882f};
    const int loads[] = {5, 4, 2, 1};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.limited, 0);
    ck_assert_int_eq(pl.capacity, 0);
    ck_assert(pl.gamma == 0.0);
    ck_assert_int_eq(pl.dropped, 0);
    ck_assert_int_eq(pl.rerouted, 0);
    ck_assert(pl.dropped_mass == 0.0);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

static const float WANT_DROP[] = {.625f, .375f, NA,     NA,     .7059f, NA, NA,     NA,
                                  NA,    .4667f, NA,    NA,     NA,     .5294f, .4706f, NA,
                                  .6471f, NA,    .3529f, NA,    NA,     NA, NA,     .5882f};

START_TEST(test_example_drop) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_DROP, 1.0, 1, 0, NULL);
    const int loads[] = {3, 3, 2, 1};
    expect_plan(&pl, WANT_DROP, loads, 6, 4);
    ck_assert_int_eq(pl.limited, 1);
    ck_assert_int_eq(pl.capacity, 3);
    ck_assert(pl.gamma == 1.0);
    /* dropped: (t1,e1), (t2,e0), (t5,e0) */
    ck_assert_int_eq(pl.dropped, 3);
    ck_assert_int_eq(pl.rerouted, 0);
    ck_assert_int_eq(pl.extra, 0);
    ck_assert_double_eq_tol(pl.dropped_mass, (double)(W11 + W20 + W50) / 6.0, 1e-6);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_drop_renormalize) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_DROP, 1.0, 1, 1, NULL);
    const float want[] = {.625f, .375f, NA, NA, 1.0f, NA, NA, NA, NA, 1.0f, NA, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, NA, NA, NA, 1.0f};
    const int loads[] = {3, 3, 2, 1};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.dropped, 3);
    /* dropped mass uses the baseline weights, renormalize or not */
    ck_assert_double_eq_tol(pl.dropped_mass, (double)(W11 + W20 + W50) / 6.0, 1e-6);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_reroute) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_REROUTE, 1.0, 1, 0, NULL);
    const float want[] = {.625f, .375f, NA, NA, .7059f, NA, NA, .0588f, NA, .4667f, .2667f, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, NA, NA, NA, .5882f};
    const int loads[] = {3, 3, 3, 2};
    expect_plan(&pl, want, loads, 6, 4);
    /* t2->e2 and t1->e3 replace dropped pairs; t5's stays dropped */
    ck_assert_int_eq(pl.rerouted, 2);
    ck_assert_int_eq(pl.extra, 2);
    ck_assert_int_eq(pl.dropped, 1);
    ck_assert_double_eq_tol(pl.dropped_mass, (double)W50 / 6.0, 1e-6);
    ck_assert_int_eq(pl.capacity, 3);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_expanded_r1) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_EXPANDED, 1.0, 1, 0, NULL);
    const float want[] = {.625f, .375f, NA, .0625f, .7059f, NA, NA, NA, NA, .4667f, .2667f, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, .1176f, NA, NA, NA, .5882f};
    const int loads[] = {3, 3, 3, 3};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.dropped, 3); /* (t1,e1) (t2,e0) (t5,e0) */
    ck_assert_int_eq(pl.rerouted, 0);
    ck_assert_int_eq(pl.extra, 3); /* (t0,e3) (t2,e2) (t4,e3) */
    ck_assert_double_eq_tol(pl.dropped_mass, (double)(W11 + W20 + W50) / 6.0, 1e-6);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_expanded_r2) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_EXPANDED, 1.0, 2, 0, EX_RANKS);
    const float want[] = {.625f, .375f, NA, NA, .7059f, NA, .1176f, .0588f, NA, .4667f, NA, NA,
                          NA, .5294f, .4706f, .0588f, .6471f, NA, .3529f, NA, NA, NA, NA, .5882f};
    const int loads[] = {3, 3, 3, 3};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.dropped, 3);
    ck_assert_int_eq(pl.extra, 3);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_rank_drop) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_RANK_DROP, 1.0, 2, 0, NULL);
    const float want[] = {.625f, NA, NA, NA, .7059f, NA, NA, NA, .5333f, .4667f, NA, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, NA, NA, NA, .5882f};
    const int loads[] = {4, 2, 2, 1};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.capacity, 3);
    /* dropped: (t0,e1) (t1,e1) (t5,e0) */
    ck_assert_int_eq(pl.dropped, 3);
    ck_assert_double_eq_tol(pl.dropped_mass, (double)(W01 + W11 + W50) / 6.0, 1e-6);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_example_rank_drop_half) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_RANK_DROP, 0.5, 2, 0, NULL);
    /* rank cap 4: keeps t1e0 .6, t4e0 .55, t0e0 .5, t3e1 .45; t2 keeps nothing */
    const float want[] = {.625f, NA, NA, NA, .7059f, NA, NA, NA, NA, NA, NA, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, NA, NA, NA, .5882f};
    const int loads[] = {3, 1, 2, 1};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_int_eq(pl.dropped, 5);
    capmoe_dispatch_plan_free(&pl);
    /* with renormalize: t2 still gets nothing and nothing is NaN */
    pl = ex_plan(CAPMOE_POLICY_RANK_DROP, 0.5, 2, 1, NULL);
    check_structure(&pl, 6, 4);
    ck_assert(wt(&pl, 2, 0) == NA && wt(&pl, 2, 1) == NA);
    ck_assert_float_eq_tol(wt(&pl, 0, 0), 1.0f, 1e-6f);
    ck_assert_float_eq_tol(wt(&pl, 3, 1), .5294f, 1e-4f);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- tie rules ----------------------------------------------------------- */

START_TEST(test_tie_tokens_drop) {
    /* expert 0: t3 .8, then a three-way tie at .6: the lower token wins */
    const float p[] = {.6f, .4f, .6f, .4f, .6f, .4f, .8f, .2f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1); /* C = ceil(4/2) = 2 */
    run_probs(&pl, &c, p, 4, 2, 1, 0, NULL);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_int_eq(pl.loads[0], 2);
    ck_assert_int_eq(pl.tok[0], 0);
    ck_assert_int_eq(pl.tok[1], 3);
    ck_assert_int_eq(pl.dropped, 2);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_tie_experts_topk) {
    /* equal p across experts: S_t takes the lower expert indices */
    const float p[] = {.3f, .3f, .3f, .1f, .1f, .3f, .3f, .3f, .25f, .25f, .25f, .25f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_probs(&pl, &c, p, 3, 4, 2, 1, NULL);
    ck_assert(wt(&pl, 0, 0) != NA && wt(&pl, 0, 1) != NA && wt(&pl, 0, 2) == NA);
    ck_assert(wt(&pl, 1, 1) != NA && wt(&pl, 1, 2) != NA && wt(&pl, 1, 3) == NA);
    ck_assert(wt(&pl, 2, 0) != NA && wt(&pl, 2, 1) != NA && wt(&pl, 2, 2) == NA);
    ck_assert_float_eq_tol(wt(&pl, 1, 1), .5f, 1e-6f);
    run_probs(&pl, &c, p, 3, 4, 1, 1, NULL); /* k = 1: expert 0 for t0 and t2 */
    ck_assert(wt(&pl, 0, 0) == 1.0f && wt(&pl, 1, 1) == 1.0f && wt(&pl, 2, 0) == 1.0f);
    ck_assert_int_eq(pl.n_pairs, 3);
    /* a tie, then a larger p: the larger one and the lower of the tie */
    const float q[] = {.3f, .3f, .4f, .0f, .2f, .3f, .3f, .2f, .1f, .2f, .2f, .5f};
    run_probs(&pl, &c, q, 3, 4, 2, 1, NULL);
    ck_assert(wt(&pl, 0, 0) != NA && wt(&pl, 0, 2) != NA && wt(&pl, 0, 1) == NA);
    ck_assert(wt(&pl, 1, 1) != NA && wt(&pl, 1, 2) != NA);
    ck_assert(wt(&pl, 2, 3) != NA && wt(&pl, 2, 1) != NA && wt(&pl, 2, 2) == NA);
    run_probs(&pl, &c, q, 3, 4, 3, 1, NULL); /* k = 3 */
    ck_assert(wt(&pl, 0, 3) == NA && wt(&pl, 1, 3) == NA && wt(&pl, 2, 0) == NA);
    ck_assert(wt(&pl, 1, 0) != NA);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_tie_reroute_order) {
    /* T=6, E=3, k=1, C=2. Expert 0: t0 .9, t1 .8 kept; t2 and t3 dropped with
     * equal p .5. Experts 1 and 2 have one free slot each. The lower token
     * (t2) is rerouted first and takes expert 1 (.3); t3 then gets expert 2. */
    const float p[] = {.9f,  .05f, .05f, .8f, .1f, .1f, .5f, .3f, .2f,
                       .5f,  .3f,  .2f,  .1f, .8f, .1f, .1f, .1f, .8f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_probs(&pl, &c, p, 6, 3, 1, 0, NULL);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_float_eq_tol(wt(&pl, 2, 1), .3f, 1e-7f);
    ck_assert(wt(&pl, 2, 2) == NA);
    ck_assert_float_eq_tol(wt(&pl, 3, 2), .2f, 1e-7f);
    ck_assert(wt(&pl, 3, 1) == NA);
    ck_assert_int_eq(pl.rerouted, 2);
    ck_assert_int_eq(pl.dropped, 0);
    ck_assert(pl.dropped_mass == 0.0);
    const int loads[] = {2, 2, 2};
    for (int e = 0; e < 3; e++) ck_assert_int_eq(pl.loads[e], loads[e]);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_tie_reroute_substitute) {
    /* T=5, E=3, k=1, C=2: t2 is dropped from expert 0 and experts 1 and 2 tie
     * at .25 with room on both: the lower index (1) is chosen. */
    const float p[] = {.9f, .05f, .05f, .8f, .1f, .1f, .5f, .25f, .25f,
                       .1f, .8f,  .1f,  .1f, .1f, .8f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_probs(&pl, &c, p, 5, 3, 1, 0, NULL);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_float_eq_tol(wt(&pl, 2, 1), .25f, 1e-7f);
    ck_assert(wt(&pl, 2, 2) == NA && wt(&pl, 2, 0) == NA);
    ck_assert_int_eq(pl.rerouted, 1);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_tie_reroute_skips_full_and_given) {
    /* k=2, E=4, T=4, gamma 0.5 -> C=1. Every token routes to {0,1}; t0 wins
     * both experts (ties at .45 to the lower token). Dropped pairs in order:
     * t2e0 .45, t3e0 .45 (token tie), t1e0 .40, t2e1 .35, t3e1 .35, t1e1 .30.
     * t2 takes e2 (tie .10 with e3 -> lower index), t3 takes e3 (e2 full),
     * every later pair finds all experts full and stays dropped. */
    const float p[] = {.45f, .45f, .05f, .05f, /* t0 */
                       .40f, .30f, .18f, .12f, /* t1 */
                       .45f, .35f, .10f, .10f, /* t2 */
                       .45f, .35f, .10f, .10f}; /* t3 */
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 0.5, 1);
    run_probs(&pl, &c, p, 4, 4, 2, 0, NULL);
    ck_assert_int_eq(pl.capacity, 1);
    /* expert 0: t0 .45, t2 .45, t3 .45 -> t0 (ties to the lower token);
     * expert 1: t0 .45 wins */
    ck_assert(wt(&pl, 0, 0) != NA && wt(&pl, 0, 1) != NA);
    ck_assert_float_eq_tol(wt(&pl, 2, 2), .10f, 1e-7f);
    ck_assert_float_eq_tol(wt(&pl, 3, 3), .10f, 1e-7f);
    ck_assert(wt(&pl, 1, 0) == NA && wt(&pl, 1, 1) == NA && wt(&pl, 1, 2) == NA &&
              wt(&pl, 1, 3) == NA);
    ck_assert_int_eq(pl.rerouted, 2);
    ck_assert_int_eq(pl.dropped, 4);
    for (int e = 0; e < 4; e++) ck_assert_int_eq(pl.loads[e], 1);
    /* C = 2 (gamma 1): expert 0 keeps t0, t2 (.45, lower tokens first) and
     * drops t3 .45, t1 .40; expert 1 keeps t0 .45, t2 .35 (tie with t3) and
     * drops t3 .35, t1 .30. Dropped order: t3e0, t1e0, t3e1, t1e1. t3 -> e2
     * (.10, lower of the tie), t1 -> e2 (.18), t3 -> e3 (e2 given to t3),
     * t1 -> e3 (.12). Loads 2,2,2,2. */
    c.capacity_factor = 1.0;
    run_probs(&pl, &c, p, 4, 4, 2, 0, NULL);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_float_eq_tol(wt(&pl, 3, 2), .10f, 1e-7f);
    ck_assert_float_eq_tol(wt(&pl, 3, 3), .10f, 1e-7f);
    ck_assert_float_eq_tol(wt(&pl, 1, 2), .18f, 1e-7f);
    ck_assert_float_eq_tol(wt(&pl, 1, 3), .12f, 1e-7f);
    ck_assert_int_eq(pl.rerouted, 4);
    ck_assert_int_eq(pl.dropped, 0);
    for (int e = 0; e < 4; e++) ck_assert_int_eq(pl.loads[e], 2);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_reroute_not_given_twice) {
    /* k=2, E=5, T=5, C=2. t2 loses both its pairs (e0, e1, p .3 each). The
     * first takes e2 (.25, room for 2); the second may not take e2 again
     * (already given to t2) and finds e3, e4 full: it stays dropped. */
    const float p[] = {.45f, .45f, .04f, .03f, .03f, .45f, .45f, .04f, .03f, .03f,
                       .30f, .30f, .25f, .10f, .05f, .02f, .02f, .02f, .47f, .47f,
                       .02f, .02f, .02f, .47f, .47f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_probs(&pl, &c, p, 5, 5, 2, 1, NULL);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_float_eq_tol(wt(&pl, 2, 2), .25f / .6f, 1e-6f);
    for (int e = 0; e < 5; e++)
        if (e != 2) ck_assert(wt(&pl, 2, e) == NA);
    ck_assert_int_eq(pl.rerouted, 1);
    ck_assert_int_eq(pl.dropped, 1);
    ck_assert_double_eq_tol(pl.dropped_mass, .5 / 5.0, 1e-6);
    const int loads[] = {2, 2, 1, 2, 2};
    for (int e = 0; e < 5; e++) ck_assert_int_eq(pl.loads[e], loads[e]);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_tie_rank_drop_expert) {
    /* E=4, R=2, k=2, T=4, gamma .5 -> C=1, rank cap 2. Rank 0 pairs: t1e0 .6,
     * t0e0 .4, t0e1 .4: the tie inside t0 goes to the lower expert (e0). */
    const float p[] = {.4f,  .4f,  .1f, .1f, .6f,  .1f,  .2f, .1f,
                       .05f, .05f, .5f, .4f, .05f, .05f, .5f, .4f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_RANK_DROP, 0.5, 2);
    run_probs(&pl, &c, p, 4, 4, 2, 0, NULL);
    ck_assert_int_eq(pl.capacity, 1);
    const float want[] = {.4f, NA, NA, NA, .6f, NA, NA, NA, NA, NA, .5f, NA, NA, NA, .5f, NA};
    const int loads[] = {2, 0, 2, 0};
    expect_plan(&pl, want, loads, 4, 4);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- limits -------------------------------------------------------------- */

START_TEST(test_no_limit_t1) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    for (int pol = CAPMOE_POLICY_DROP; pol <= CAPMOE_POLICY_RANK_DROP; pol++) {
        capmoe_dispatch_cfg c = cfg_of((capmoe_policy)pol, 0.01, 2);
        c.renormalize = 1;
        run_probs(&pl, &c, EX + 4, 1, 4, 2, 0, NULL); /* t1 alone, raw weights */
        ck_assert_int_eq(pl.limited, 0);
        ck_assert_int_eq(pl.capacity, 0);
        ck_assert(pl.gamma == 0.0);
        ck_assert_int_eq(pl.n_pairs, 2);
        /* baseline: renormalize does not apply to an unlimited dispatch */
        ck_assert_float_eq(wt(&pl, 0, 0), .60f);
        ck_assert_float_eq(wt(&pl, 0, 1), .25f);
    }
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_min_tokens) {
    const float none_w[] = {.625f, .375f, NA, NA, .7059f, .2941f, NA, NA, .5333f, .4667f, NA, NA,
                            NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, .4118f, NA, NA, .5882f};
    const int none_loads[] = {5, 4, 2, 1}, drop_loads[] = {3, 3, 2, 1};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c;
    capmoe_dispatch_cfg_default(&c); /* min_tokens 16 */
    ck_assert_int_eq(c.min_tokens, 16);
    c.policy = CAPMOE_POLICY_DROP;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 0);
    expect_plan(&pl, none_w, none_loads, 6, 4);
    c.min_tokens = 7; /* T < 7: not limited */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 0);
    c.min_tokens = 6; /* T == min_tokens: limited */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 1);
    expect_plan(&pl, WANT_DROP, drop_loads, 6, 4);
    c.min_tokens = 0; /* disabled: T = 2 is limited, C = ceil(1*2*2/4) = 1 */
    run_probs(&pl, &c, EX, 2, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 1);
    ck_assert_int_eq(pl.capacity, 1);
    /* t0 and t1 both route to {0,1}: t1 keeps e0 (.6), t0 keeps e1 (.3) */
    ck_assert(wt(&pl, 1, 0) != NA && wt(&pl, 0, 0) == NA);
    ck_assert(wt(&pl, 0, 1) != NA && wt(&pl, 1, 1) == NA);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_gamma_below_one) {
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_DROP, 0.5, 1, 0, NULL);
    /* C = 2: e0 keeps t1 .6, t4 .55; e1 keeps t3 .45, t2 .35 */
    const float want[] = {NA, NA, NA, NA, .7059f, NA, NA, NA, NA, .4667f, NA, NA,
                          NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, NA, NA, NA, .5882f};
    const int loads[] = {2, 2, 2, 1};
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.capacity, 2);
    ck_assert_int_eq(pl.dropped, 5);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_capacity_above_t) {
    const float none_w[] = {.625f, .375f, NA, NA, .7059f, .2941f, NA, NA, .5333f, .4667f, NA, NA,
                            NA, .5294f, .4706f, NA, .6471f, NA, .3529f, NA, .4118f, NA, NA, .5882f};
    const int none_loads[] = {5, 4, 2, 1};
    for (int pol = CAPMOE_POLICY_DROP; pol <= CAPMOE_POLICY_RANK_DROP; pol++) {
        if (pol == CAPMOE_POLICY_EXPANDED) continue;
        capmoe_dispatch_plan pl = ex_plan((capmoe_policy)pol, 10.0, 2, 0, NULL);
        ck_assert_int_eq(pl.limited, 1);
        ck_assert_int_eq(pl.capacity, 30);
        expect_plan(&pl, none_w, none_loads, 6, 4);
        ck_assert_int_eq(pl.dropped, 0);
        ck_assert_int_eq(pl.rerouted, 0);
        capmoe_dispatch_plan_free(&pl);
    }
    /* expanded R=1 with C > T: every expert takes every token */
    capmoe_dispatch_plan pl = ex_plan(CAPMOE_POLICY_EXPANDED, 10.0, 1, 0, NULL);
    const int loads[] = {6, 6, 6, 6};
    float want[24];
    const float Z[6] = {.8f, .85f, .75f, .85f, .85f, .85f};
    for (int t = 0; t < 6; t++)
        for (int e = 0; e < 4; e++) want[t * 4 + e] = EX[t * 4 + e] / Z[t];
    expect_plan(&pl, want, loads, 6, 4);
    ck_assert_int_eq(pl.extra, 12);
    ck_assert_int_eq(pl.dropped, 0);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_all_pairs_dropped) {
    /* E=4, k=2, T=4, gamma .5 -> C=1: t1 wins e0,e1 over t0; t3 wins e2,e3 over t2 */
    const float p[] = {.4f, .4f, .1f, .1f, .45f, .45f, .05f, .05f,
                       .1f, .1f, .4f, .4f, .05f, .05f, .45f, .45f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    for (int renorm = 0; renorm <= 1; renorm++)
        for (int norm = 0; norm <= 1; norm++) {
            capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_DROP, 0.5, 1);
            c.renormalize = renorm;
            run_probs(&pl, &c, p, 4, 4, 2, norm, NULL);
            check_structure(&pl, 4, 4);
            for (int e = 0; e < 4; e++) {
                ck_assert(wt(&pl, 0, e) == NA);
                ck_assert(wt(&pl, 2, e) == NA);
            }
            float w = renorm || norm ? .5f : .45f;
            ck_assert_float_eq_tol(wt(&pl, 1, 0), w, 1e-6f);
            ck_assert_float_eq_tol(wt(&pl, 3, 3), w, 1e-6f);
            ck_assert_int_eq(pl.dropped, 4);
            ck_assert(isfinite(pl.dropped_mass));
            /* all of t0 and t2: 2 of 4 (norm), or (.8 + .8) / (.8+.9+.8+.9) */
            ck_assert_double_eq_tol(pl.dropped_mass, norm ? .5 : 1.6 / 3.4, 1e-6);
        }
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_norm_topk) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_probs(&pl, &c, EX, 6, 4, 2, 0, NULL);
    for (int t = 0; t < 6; t++)
        for (int e = 0; e < 4; e++) {
            float w = wt(&pl, t, e);
            if (w != NA) ck_assert_float_eq(w, EX[t * 4 + e]); /* Z_t = 1 */
        }
    /* renormalize is not applied to the unlimited baseline */
    c.renormalize = 1;
    run_probs(&pl, &c, EX, 6, 4, 2, 0, NULL);
    ck_assert_float_eq(wt(&pl, 0, 0), .5f);
    /* drop, norm 0: kept weights are raw p */
    c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1);
    run_probs(&pl, &c, EX, 6, 4, 2, 0, NULL);
    ck_assert_float_eq(wt(&pl, 1, 0), .6f);
    ck_assert_float_eq(wt(&pl, 3, 1), .45f);
    /* w = p with Z_t = 1: dropped mass = (.25 + .40 + .35) / sum of top-2 p */
    ck_assert_double_eq_tol(pl.dropped_mass, 1.0 / (.8 + .85 + .75 + .85 + .85 + .85), 1e-6);
    /* drop + renormalize, norm 0: rescaled over the kept p */
    c.renormalize = 1;
    run_probs(&pl, &c, EX, 6, 4, 2, 0, NULL);
    ck_assert_float_eq_tol(wt(&pl, 1, 0), 1.0f, 1e-6f);
    ck_assert_float_eq_tol(wt(&pl, 0, 0), .625f, 1e-6f);
    ck_assert_float_eq_tol(wt(&pl, 3, 2), .4f / .85f, 1e-6f);
    /* reroute, norm 0: a substitute's weight is its raw p */
    c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_probs(&pl, &c, EX, 6, 4, 2, 0, NULL);
    ck_assert_float_eq(wt(&pl, 2, 2), .2f);
    ck_assert_float_eq(wt(&pl, 1, 3), .05f);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- auto ---------------------------------------------------------------- */

static capmoe_dispatch_cfg auto_cfg(capmoe_policy pol, double budget) {
    capmoe_dispatch_cfg c = cfg_of(pol, 1.0, 1);
    c.auto_gamma = 1;
    c.drop_budget = budget;
    return c;
}

START_TEST(test_auto_smallest_gamma) {
    /* policy drop on the example: C=3 (1.0) drops t1e1,t2e0,t5e0 (mass .2065),
     * C=4 (1.25) drops t5e0 (.0686), C=5 (1.5) drops nothing. */
    struct {
        double budget, gamma;
        int cap;
    } cases[] = {{0.01, 1.5, 5}, {0.0, 1.5, 5}, {0.07, 1.25, 4}, {0.0686, 1.5, 5},
                 {0.21, 1.0, 3}, {1.0, 1.0, 3}};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_dispatch_cfg c = auto_cfg(CAPMOE_POLICY_DROP, cases[i].budget);
        run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
        ck_assert_msg(pl.limited == 1 && pl.gamma == cases[i].gamma &&
                          pl.capacity == cases[i].cap,
                      "budget %g: limited %d gamma %g C %d", cases[i].budget, pl.limited,
                      pl.gamma, pl.capacity);
        ck_assert(pl.dropped_mass <= cases[i].budget);
    }
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_auto_null) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = auto_cfg(CAPMOE_POLICY_REROUTE, 0.01);
    c.n_grid = 2; /* 1.0, 1.25: neither meets 0.01 */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 0);
    ck_assert_int_eq(pl.capacity, 0);
    ck_assert(pl.gamma == 0.0);
    const int loads[] = {5, 4, 2, 1};
    for (int e = 0; e < 4; e++) ck_assert_int_eq(pl.loads[e], loads[e]);
    ck_assert_int_eq(pl.dropped, 0);
    /* a custom grid whose last value works */
    c.n_grid = 3;
    c.grid[0] = 0.5;
    c.grid[1] = 1.0;
    c.grid[2] = 7.0;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 1);
    ck_assert(pl.gamma == 7.0);
    /* below min_tokens: never limited; policy none: never limited */
    c = auto_cfg(CAPMOE_POLICY_DROP, 1.0);
    c.min_tokens = 16;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 0);
    c = auto_cfg(CAPMOE_POLICY_NONE, 1.0);
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.limited, 0);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_auto_each_policy) {
    /* budget .07 -> gamma 1.25 (C=4) whatever the policy (the choice uses
     * drop), then the configured policy is applied at C=4. */
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    struct {
        capmoe_policy pol;
        int ranks;
        int loads[4];
        int dropped, rerouted;
    } cases[] = {
        {CAPMOE_POLICY_DROP, 1, {4, 4, 2, 1}, 1, 0},
        /* t5's dropped e0 pair: e1 is full (4), e2 (.10) has room */
        {CAPMOE_POLICY_REROUTE, 1, {4, 4, 3, 1}, 0, 1},
        /* expanded R=1 at C=4: expert 0 drops t5 (.35) and t3 (.1, not in
         * S_t); expert 2 keeps t3 .4, t4 .3, t2 .2, t0 .15; expert 3 keeps
         * t5 .5, t4 .1, then t0/t1 win the four-way tie at .05 */
        {CAPMOE_POLICY_EXPANDED, 1, {4, 4, 4, 4}, 1, 0},
        /* rank 0 cap 8 of 9 pairs: drops t1e1 .25 */
        {CAPMOE_POLICY_RANK_DROP, 2, {5, 3, 2, 1}, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_dispatch_cfg c = auto_cfg(cases[i].pol, 0.07);
        c.ep_ranks = cases[i].ranks;
        run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
        check_structure(&pl, 6, 4);
        ck_assert_int_eq(pl.limited, 1);
        ck_assert(pl.gamma == 1.25);
        ck_assert_int_eq(pl.capacity, 4);
        for (int e = 0; e < 4; e++)
            ck_assert_msg(pl.loads[e] == cases[i].loads[e], "%s: load %d = %d want %d",
                          capmoe_policy_name(cases[i].pol), e, pl.loads[e],
                          cases[i].loads[e]);
        ck_assert_int_eq(pl.dropped, cases[i].dropped);
        ck_assert_int_eq(pl.rerouted, cases[i].rerouted);
    }
    capmoe_dispatch_cfg c = auto_cfg(CAPMOE_POLICY_REROUTE, 0.07);
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_float_eq_tol(wt(&pl, 5, 2), .10f / .85f, 1e-6f);
    c = auto_cfg(CAPMOE_POLICY_EXPANDED, 0.07);
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert(wt(&pl, 0, 2) != NA && wt(&pl, 1, 2) == NA && wt(&pl, 5, 2) == NA);
    ck_assert(wt(&pl, 0, 3) != NA && wt(&pl, 1, 3) != NA && wt(&pl, 2, 3) == NA);
    ck_assert(wt(&pl, 5, 0) == NA);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- configuration and errors -------------------------------------------- */

START_TEST(test_cfg_and_names) {
    capmoe_dispatch_cfg c;
    capmoe_dispatch_cfg_default(&c);
    ck_assert_int_eq(c.policy, CAPMOE_POLICY_NONE);
    ck_assert(c.capacity_factor == 1.0);
    ck_assert_int_eq(c.auto_gamma, 0);
    ck_assert_int_eq(c.ep_ranks, 1);
    ck_assert_int_eq(c.renormalize, 0);
    ck_assert_int_eq(c.min_tokens, 16);
    ck_assert(c.drop_budget == 0.01);
    ck_assert_int_eq(c.n_grid, 5);
    const double g[] = {1.0, 1.25, 1.5, 2.0, 3.0};
    for (int i = 0; i < 5; i++) ck_assert(c.grid[i] == g[i]);
    ck_assert_int_eq(c.piggyback_k0, 0);
    ck_assert_int_eq(c.decode_policy, -1);
    const char *names[] = {"none", "drop", "reroute", "expanded", "rank_drop", "piggyback"};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(capmoe_policy_parse(names[i]), i);
        ck_assert_str_eq(capmoe_policy_name((capmoe_policy)i), names[i]);
    }
    ck_assert_int_eq(capmoe_policy_parse("Drop"), -1);
    ck_assert_int_eq(capmoe_policy_parse("rank-drop"), -1);
    ck_assert_int_eq(capmoe_policy_parse(""), -1);
    ck_assert_int_eq(capmoe_policy_parse(NULL), -1);
    ck_assert_str_eq(capmoe_policy_name((capmoe_policy)9), "unknown");
    capmoe_error err = {{0}};
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 8, &err), 0);
}
END_TEST

START_TEST(test_cfg_errors) {
    capmoe_error err = {{0}};
    capmoe_dispatch_cfg c;
    /* E % R for expanded and rank_drop */
    c = cfg_of(CAPMOE_POLICY_EXPANDED, 1.0, 3);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert_msg(strstr(err.msg, "E=4") && strstr(err.msg, "R=3") && strstr(err.msg, "expanded"),
                  "%s", err.msg);
    c.policy = CAPMOE_POLICY_RANK_DROP;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert_msg(strstr(err.msg, "E=4") && strstr(err.msg, "R=3"), "%s", err.msg);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 6, &err), 0);
    c.policy = CAPMOE_POLICY_DROP; /* R is irrelevant to drop */
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), 0);
    /* compute refuses too, with the same message */
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    c = cfg_of(CAPMOE_POLICY_EXPANDED, 1.0, 3);
    err.msg[0] = 0;
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert(strstr(err.msg, "E=4") && strstr(err.msg, "R=3"));
    /* bad values */
    c = cfg_of(CAPMOE_POLICY_DROP, 0.0, 1);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert(strstr(err.msg, "gamma"));
    c.capacity_factor = NAN;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c.capacity_factor = -1;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 0);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1);
    c.min_tokens = -1;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c = cfg_of((capmoe_policy)7, 1.0, 1);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c = auto_cfg(CAPMOE_POLICY_DROP, -0.1);
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert(strstr(err.msg, "budget"));
    c = auto_cfg(CAPMOE_POLICY_DROP, 0.01);
    c.capacity_factor = 0; /* ignored under auto */
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), 0);
    c.grid[2] = 1.0; /* not increasing */
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert(strstr(err.msg, "increasing"));
    c = auto_cfg(CAPMOE_POLICY_DROP, 0.01);
    c.n_grid = 0;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c.n_grid = CAPMOE_GRID_MAX + 1;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    /* call errors */
    c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1);
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 4, 5, 1, NULL, &err), -1);
    ck_assert(strstr(err.msg, "k=5"));
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 4, 0, 1, NULL, &err), -1);
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, -1, 4, 2, 1, NULL, &err), -1);
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, NULL, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 0, 1, 1, NULL, &err), -1);
    float bad[24];
    memcpy(bad, EX, sizeof bad);
    bad[9] = -0.1f;
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert(strstr(err.msg, "token 2") && strstr(err.msg, "expert 1"));
    bad[9] = NAN;
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert(strstr(err.msg, "token 2") && strstr(err.msg, "not finite"));
    bad[9] = INFINITY;
    ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), -1);
    for (int e = 0; e < 4; e++) bad[e] = -INFINITY;
    bad[9] = 0;
    ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert(strstr(err.msg, "token 0"));
    /* a -inf logit among finite ones is fine (p = 0) */
    bad[0] = 0;
    ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, bad, 6, 4, 2, 1, NULL, &err), 0);
    /* token ranks out of range */
    c = cfg_of(CAPMOE_POLICY_EXPANDED, 1.0, 2);
    const int ranks[6] = {0, 1, 2, 0, 0, 0};
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 4, 2, 1, ranks, &err), -1);
    ck_assert(strstr(err.msg, "token 2") && strstr(err.msg, "rank 2"));
    /* the plan still works after errors */
    c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1);
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    const int loads[] = {3, 3, 2, 1};
    expect_plan(&pl, WANT_DROP, loads, 6, 4);
    capmoe_dispatch_plan_free(&pl);
    capmoe_dispatch_plan_free(&pl); /* free twice / of a freed plan is safe */
    capmoe_dispatch_plan_free(NULL);
}
END_TEST

START_TEST(test_capacity_formula) {
    ck_assert_int_eq(capmoe_dispatch_capacity(1.0, 2, 6, 4), 3);
    ck_assert_int_eq(capmoe_dispatch_capacity(0.5, 2, 6, 4), 2);   /* ceil(1.5) */
    ck_assert_int_eq(capmoe_dispatch_capacity(1.25, 2, 6, 4), 4);  /* ceil(3.75) */
    ck_assert_int_eq(capmoe_dispatch_capacity(0.01, 2, 6, 4), 1);  /* max(1, .) */
    ck_assert_int_eq(capmoe_dispatch_capacity(1.0, 8, 16384, 256), 512);
    ck_assert_int_eq(capmoe_dispatch_capacity(1.5, 8, 8, 64), 2);  /* ceil(1.5) */
    /* 1.1*2*100/4 is 55.00000000000001 in double: still 55 */
    ck_assert_int_eq(capmoe_dispatch_capacity(1.1, 2, 100, 4), 55);
    ck_assert_int_eq(capmoe_dispatch_capacity(1.1, 4, 170, 4), 187);
    ck_assert_int_eq(capmoe_dispatch_capacity(1.1, 2, 101, 4), 56); /* 55.55 */
    ck_assert_int_eq(capmoe_dispatch_capacity(1e300, 8, 100, 4), INT_MAX);
}
END_TEST

START_TEST(test_empty_batch) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_probs(&pl, &c, NULL, 0, 4, 2, 1, NULL);
    check_structure(&pl, 0, 4);
    ck_assert_int_eq(pl.n_pairs, 0);
    ck_assert_int_eq(pl.limited, 0);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- logits entry point -------------------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}
static float rndf(void) { return (float)rnd() / 2147483648.0f; } /* [0, 1) */

static void random_logits(float *x, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] = (rndf() * 2.0f - 1.0f) * scale;
}

static void same_plan(const capmoe_dispatch_plan *a, const capmoe_dispatch_plan *b) {
    ck_assert_int_eq(a->n_pairs, b->n_pairs);
    ck_assert_int_eq(a->limited, b->limited);
    ck_assert_int_eq(a->capacity, b->capacity);
    ck_assert(a->gamma == b->gamma);
    ck_assert_int_eq(a->dropped, b->dropped);
    ck_assert_int_eq(a->rerouted, b->rerouted);
    ck_assert(a->dropped_mass == b->dropped_mass);
    ck_assert(memcmp(a->expert_off, b->expert_off, sizeof(int) * (size_t)(a->E + 1)) == 0);
    ck_assert(memcmp(a->loads, b->loads, sizeof(int) * (size_t)a->E) == 0);
    ck_assert(memcmp(a->tok, b->tok, sizeof(int) * (size_t)a->n_pairs) == 0);
    ck_assert(memcmp(a->weight, b->weight, sizeof(float) * (size_t)a->n_pairs) == 0);
}

START_TEST(test_logits_equals_probs) {
    enum { T = 50, E = 8, K = 2 };
    static float logits[T * E], probs[T * E];
    rng_state = 42;
    random_logits(logits, T * E, 4.0f);
    capmoe_error err = {{0}};
    ck_assert_int_eq(capmoe_dispatch_softmax(logits, T, E, probs, &err), 0);
    for (int t = 0; t < T; t++) {
        double mx = -1e30, s = 0, sp = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, logits[t * E + e]);
        for (int e = 0; e < E; e++) s += exp((double)logits[t * E + e] - mx);
        for (int e = 0; e < E; e++) {
            double ref = exp((double)logits[t * E + e] - mx) / s;
            ck_assert_double_eq_tol(probs[t * E + e], ref, 1e-6);
            sp += probs[t * E + e];
        }
        ck_assert_double_eq_tol(sp, 1.0, 1e-5);
    }
    /* large logits do not overflow (max subtracted) */
    float big[4] = {1000.0f, 999.0f, -1000.0f, 1000.0f}, pb[4];
    ck_assert_int_eq(capmoe_dispatch_softmax(big, 1, 4, pb, &err), 0);
    ck_assert(pb[0] == pb[3]);
    ck_assert(pb[2] == 0.0f && pb[0] > pb[1]);
    static const int ranks[T] = {0};
    for (int pol = 0; pol <= CAPMOE_POLICY_RANK_DROP; pol++)
        for (int aut = 0; aut <= 1; aut++) {
            capmoe_dispatch_plan a, b;
            capmoe_dispatch_plan_init(&a);
            capmoe_dispatch_plan_init(&b);
            capmoe_dispatch_cfg c = cfg_of((capmoe_policy)pol, 0.8, 2);
            c.auto_gamma = aut;
            c.drop_budget = 0.05;
            ck_assert_int_eq(capmoe_dispatch_compute(&a, &c, logits, T, E, K, 1, ranks, &err), 0);
            ck_assert_int_eq(
                capmoe_dispatch_compute_probs(&b, &c, probs, T, E, K, 1, ranks, &err), 0);
            same_plan(&a, &b);
            capmoe_dispatch_plan_free(&a);
            capmoe_dispatch_plan_free(&b);
        }
}
END_TEST

/* ---- randomized invariants ----------------------------------------------- */

/* S_t recomputed the plain way (for the checks): best first, ties lower index */
static void topk_ref(const float *p, int E, int k, int *out) {
    unsigned char used[256] = {0};
    for (int j = 0; j < k; j++) {
        int b = -1;
        for (int e = 0; e < E; e++)
            if (!used[e] && (b < 0 || p[e] > p[b])) b = e;
        used[b] = 1;
        out[j] = b;
    }
}

static int in_set(const int *s, int n, int x) {
    for (int i = 0; i < n; i++)
        if (s[i] == x) return 1;
    return 0;
}

static void check_invariants(const capmoe_dispatch_plan *pl, const capmoe_dispatch_cfg *c,
                             const float *p, int T, int E, int k, const int *trank) {
    check_structure(pl, T, E);
    int C = pl->capacity, R = c->ep_ranks, epr = E / R;
    static int S[4096 * 8];
    static float Z[4096];
    for (int t = 0; t < T; t++) {
        topk_ref(p + t * E, E, k, S + t * k);
        Z[t] = 0;
        for (int j = 0; j < k; j++) Z[t] += p[t * E + S[t * k + j]];
    }
    REQUIRE((pl->limited) == (1));
    REQUIRE((C) == (capmoe_dispatch_capacity(pl->gamma, k, T, E)));
    int kept_topk = 0, outside = 0;
    for (int e = 0; e < E; e++)
        for (int i = pl->expert_off[e]; i < pl->expert_off[e + 1]; i++) {
            int t = pl->tok[i];
            int ins = in_set(S + t * k, k, e);
            kept_topk += ins;
            outside += !ins;
            if (c->policy == CAPMOE_POLICY_DROP || c->policy == CAPMOE_POLICY_RANK_DROP)
                REQUIRE(ins);
            if (c->policy == CAPMOE_POLICY_EXPANDED)
                REQUIRE(ins || e / epr == (trank ? trank[t] : 0));
            if (!c->renormalize)
                REQUIRE(fabsf((pl->weight[i]) - (p[t * E + e] / Z[t])) < (1e-6f));
        }
    REQUIRE((pl->extra) == (outside));
    REQUIRE((kept_topk + pl->rerouted + pl->dropped) == (T * k));
    if (c->policy != CAPMOE_POLICY_REROUTE) REQUIRE((pl->rerouted) == (0));
    if (c->policy == CAPMOE_POLICY_REROUTE) REQUIRE((outside) == (pl->rerouted));
    /* capacity guarantees */
    if (c->policy == CAPMOE_POLICY_RANK_DROP) {
        for (int r = 0; r < R; r++) {
            int l = 0;
            for (int e = r * epr; e < (r + 1) * epr; e++) l += pl->loads[e];
            REQUIRE((l) <= (epr * C));
        }
    } else {
        for (int e = 0; e < E; e++) REQUIRE((pl->loads[e]) <= (C));
    }
    /* per token: reroute keeps at most k pairs; drop/rank_drop at most k */
    static int per_tok[4096];
    memset(per_tok, 0, sizeof(int) * (size_t)T);
    for (int i = 0; i < pl->n_pairs; i++) per_tok[pl->tok[i]]++;
    for (int t = 0; t < T; t++) {
        if (c->policy != CAPMOE_POLICY_EXPANDED) REQUIRE((per_tok[t]) <= (k));
        else REQUIRE((per_tok[t]) <= (k + epr));
        if (c->renormalize && per_tok[t] > 0) {
            float s = 0;
            for (int e = 0; e < E; e++) {
                float w = wt(pl, t, e);
                if (w != NA) s += w;
            }
            REQUIRE(fabsf((s) - (1.0f)) < (1e-5f));
        }
    }
    /* score policies: within an expert (drop, expanded) every kept candidate
     * beats every rejected one */
    if (c->policy == CAPMOE_POLICY_DROP || c->policy == CAPMOE_POLICY_EXPANDED) {
        for (int e = 0; e < E; e++) {
            float worst_kept = 2.0f, best_rej = -1.0f;
            int n_cand = 0;
            for (int t = 0; t < T; t++) {
                int cand = in_set(S + t * k, k, e) ||
                           (c->policy == CAPMOE_POLICY_EXPANDED &&
                            e / epr == (trank ? trank[t] : 0));
                if (!cand) continue;
                n_cand++;
                float v = p[t * E + e];
                if (wt(pl, t, e) != NA) worst_kept = fminf(worst_kept, v);
                else best_rej = fmaxf(best_rej, v);
            }
            REQUIRE(best_rej <= worst_kept);
            REQUIRE((pl->loads[e]) == (n_cand < C ? n_cand : C));
        }
    }
    /* reroute: the S_t pairs it computes are exactly those drop keeps */
    if (c->policy == CAPMOE_POLICY_REROUTE) {
        capmoe_dispatch_plan d;
        capmoe_dispatch_plan_init(&d);
        capmoe_dispatch_cfg dc = *c;
        dc.policy = CAPMOE_POLICY_DROP;
        dc.auto_gamma = 0;
        dc.capacity_factor = pl->gamma;
        run_probs(&d, &dc, p, T, E, k, 1, NULL);
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++) {
                int e = S[t * k + j];
                REQUIRE((wt(pl, t, e) != NA) == (wt(&d, t, e) != NA));
            }
        REQUIRE((d.dropped) == (pl->dropped + pl->rerouted));
        capmoe_dispatch_plan_free(&d);
    }
}

START_TEST(test_random_invariants) {
    enum { T = 200, E = 16, K = 2 };
    static float logits[T * E], probs[T * E];
    static int trank[T];
    capmoe_error err = {{0}};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    const double gammas[] = {0.5, 1.0, 1.5, 3.0};
    const int ranks[] = {1, 2, 4};
    int n_checked = 0;
    for (int seed = 1; seed <= 3; seed++) {
        rng_state = (uint64_t)seed;
        random_logits(logits, T * E, 3.0f);
        /* skew: experts 0 and 1 are popular, so capacities bind */
        for (int t = 0; t < T; t++) {
            logits[t * E] += 1.5f;
            logits[t * E + 1] += 1.0f;
        }
        ck_assert_int_eq(capmoe_dispatch_softmax(logits, T, E, probs, &err), 0);
        for (int pol = CAPMOE_POLICY_DROP; pol <= CAPMOE_POLICY_RANK_DROP; pol++)
            for (size_t g = 0; g < sizeof gammas / sizeof gammas[0]; g++)
                for (size_t r = 0; r < 3; r++)
                    for (int renorm = 0; renorm <= 1; renorm++) {
                        int R = ranks[r];
                        for (int t = 0; t < T; t++) trank[t] = (t / 7) % R;
                        capmoe_dispatch_cfg c = cfg_of((capmoe_policy)pol, gammas[g], R);
                        c.renormalize = renorm;
                        c.min_tokens = 16;
                        ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, logits, T, E, K, 1,
                                                                 trank, &err),
                                         0);
                        check_invariants(&pl, &c, probs, T, E, K, trank);
                        n_checked++;
                    }
        /* auto with each policy: chosen gamma meets the budget under drop */
        for (int t = 0; t < T; t++) trank[t] = (t / 5) % 2;
        for (int pol = CAPMOE_POLICY_DROP; pol <= CAPMOE_POLICY_RANK_DROP; pol++) {
            capmoe_dispatch_cfg c = cfg_of((capmoe_policy)pol, 1.0, 2);
            c.auto_gamma = 1;
            c.drop_budget = 0.02;
            ck_assert_int_eq(
                capmoe_dispatch_compute(&pl, &c, logits, T, E, K, 1, trank, &err), 0);
            if (pl.limited) {
                check_invariants(&pl, &c, probs, T, E, K, trank);
                capmoe_dispatch_plan d;
                capmoe_dispatch_plan_init(&d);
                capmoe_dispatch_cfg dc = cfg_of(CAPMOE_POLICY_DROP, pl.gamma, 1);
                run_probs(&d, &dc, probs, T, E, K, 1, NULL);
                ck_assert(d.dropped_mass <= 0.02);
                /* and no smaller grid value does */
                for (int i = 0; i < c.n_grid && c.grid[i] < pl.gamma; i++) {
                    dc.capacity_factor = c.grid[i];
                    run_probs(&d, &dc, probs, T, E, K, 1, NULL);
                    ck_assert(d.dropped_mass > 0.02);
                }
                capmoe_dispatch_plan_free(&d);
            }
            n_checked++;
        }
    }
    ck_assert_int_eq(n_checked, 3 * (4 * 4 * 3 * 2 + 4));
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

START_TEST(test_plan_reuse_and_size) {
    /* One plan over growing and shrinking shapes gives what a fresh plan gives. */
    enum { TMAX = 2048, EMAX = 64 };
    static float logits[TMAX * EMAX];
    static int trank[TMAX];
    const int shapes[][3] = {{2048, 64, 8}, {37, 8, 2}, {1024, 64, 6}, {300, 60, 4}, {2048, 64, 8}};
    capmoe_error err = {{0}};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    rng_state = 7;
    random_logits(logits, TMAX * EMAX, 2.0f);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], E = shapes[s][1], k = shapes[s][2];
        for (int t = 0; t < T; t++) trank[t] = t % 4;
        for (int pol = 0; pol <= CAPMOE_POLICY_RANK_DROP; pol++) {
            capmoe_dispatch_cfg c = cfg_of((capmoe_policy)pol, 1.0, 4);
            capmoe_dispatch_plan fresh;
            capmoe_dispatch_plan_init(&fresh);
            ck_assert_int_eq(capmoe_dispatch_compute(&pl, &c, logits, T, E, k, 1, trank, &err), 0);
            ck_assert_int_eq(
                capmoe_dispatch_compute(&fresh, &c, logits, T, E, k, 1, trank, &err), 0);
            same_plan(&pl, &fresh);
            check_structure(&pl, T, E);
            capmoe_dispatch_plan_free(&fresh);
        }
    }
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* ---- routers other than softmax top-k (spec: DeepSeek-V2, DeepSeek-V3) ---- */

static void run_router(capmoe_dispatch_plan *pl, const capmoe_dispatch_cfg *c,
                       const capmoe_router *r, const float *p, int T, int E, int k) {
    capmoe_error err = {{0}};
    int rc = capmoe_dispatch_compute_router_probs(pl, c, r, p, T, E, k, NULL, &err);
    ck_assert_msg(rc == 0, "dispatch failed: %s", err.msg);
}

/* DeepSeek-V2 group_limited_greedy: groups {0,1} {2,3} scored by their best
 * p, one kept; weights p * 2 (not normalised). t1's top-2 over all experts
 * would be {1, 2}; its kept group gives {1, 0}. Scored by the sum of the two
 * best (V3's rule) t1 would keep the other group. */
static const float V2G[2 * 4] = {.45f, .10f, .25f, .20f, /* t0 */
                                 .10f, .35f, .30f, .25f}; /* t1 */

static capmoe_router v2_router(void) {
    capmoe_router r;
    capmoe_router_default(&r, 0);
    r.n_group = 2;
    r.topk_group = 1;
    r.scale = 2.0f;
    return r;
}

START_TEST(test_router_v2_groups) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r = v2_router();
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_router(&pl, &c, &r, V2G, 2, 4, 2);
    const float want[] = {.9f, .2f, NA, NA, .2f, .7f, NA, NA};
    expect_plan(&pl, want, (const int[]){2, 2, 0, 0}, 2, 4);
    r.group_top2 = 1; /* the sum of the two best: t1 keeps {2, 3} */
    run_router(&pl, &c, &r, V2G, 2, 4, 2);
    const float want2[] = {.9f, .2f, NA, NA, NA, NA, .6f, .5f};
    expect_plan(&pl, want2, (const int[]){1, 1, 1, 1}, 2, 4);
    /* drop at C = 1: capacity competition by p; renormalize keeps the scale */
    r = v2_router();
    c = cfg_of(CAPMOE_POLICY_DROP, 0.5, 1);
    run_router(&pl, &c, &r, V2G, 2, 4, 2);
    ck_assert_int_eq(pl.capacity, 1);
    const float want3[] = {.9f, NA, NA, NA, NA, .7f, NA, NA};
    expect_plan(&pl, want3, (const int[]){1, 1, 0, 0}, 2, 4);
    ck_assert_int_eq(pl.dropped, 2);
    ck_assert(fabs(pl.dropped_mass - .2 / 1.0) < 1e-6); /* the scale cancels */
    c.renormalize = 1;
    run_router(&pl, &c, &r, V2G, 2, 4, 2);
    const float want4[] = {2.0f, NA, NA, NA, NA, 2.0f, NA, NA};
    expect_plan(&pl, want4, (const int[]){1, 1, 0, 0}, 2, 4);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* DeepSeek-V3: sigmoid scores p, selection s = p + bias (bias .5 on expert
 * 5), groups {0,1,2} {3,4,5} scored by the sum of their two best s, one kept,
 * weights p / (sum of p over S_t) * 2.5. t0, t1 keep group 0 (S = {0,1});
 * t2 keeps group 1, S = {3, 5} by s (.6, .55) though p5 = .05 < p4 = .3. At
 * gamma 1 (C = 1) t1 loses experts 0 and 1 to t0 (larger p); reroute gives
 * (t1,0) expert 2, the only expert of t1's kept group with room; (t1,1)
 * finds none there (expert 4 has room but is in a group t1 did not keep). */
static const float V3G[3 * 6] = {.90f, .80f, .10f, .20f, .20f, .20f,  /* t0 */
                                 .85f, .70f, .30f, .10f, .10f, .10f,  /* t1 */
                                 .20f, .10f, .10f, .60f, .30f, .05f}; /* t2 */
static const float V3G_BIAS[6] = {0, 0, 0, 0, 0, .5f};

static capmoe_router v3_router(void) {
    capmoe_router r;
    capmoe_router_default(&r, 1);
    r.sigmoid = 1;
    r.norm_eps = 1e-20f;
    r.n_group = 2;
    r.topk_group = 1;
    r.group_top2 = 1;
    r.group_exclusive = 1;
    r.bias = V3G_BIAS;
    r.scale = 2.5f;
    return r;
}

START_TEST(test_router_v3_groups_bias) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r = v3_router();
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_router(&pl, &c, &r, V3G, 3, 6, 2);
    const float w00 = .9f / 1.7f * 2.5f, w01 = .8f / 1.7f * 2.5f;
    const float want[] = {w00, w01, NA, NA, NA, NA,
                          .85f / 1.55f * 2.5f, .7f / 1.55f * 2.5f, NA, NA, NA, NA,
                          NA, NA, NA, .6f / .65f * 2.5f, NA, .05f / .65f * 2.5f};
    expect_plan(&pl, want, (const int[]){2, 2, 0, 1, 0, 1}, 3, 6);
    c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_router(&pl, &c, &r, V3G, 3, 6, 2);
    ck_assert_int_eq(pl.capacity, 1);
    const float want2[] = {w00, w01, NA, NA, NA, NA,
                           NA, NA, .3f / 1.55f * 2.5f, NA, NA, NA,
                           NA, NA, NA, .6f / .65f * 2.5f, NA, .05f / .65f * 2.5f};
    expect_plan(&pl, want2, (const int[]){1, 1, 1, 1, 0, 1}, 3, 6);
    ck_assert_int_eq(pl.rerouted, 1);
    ck_assert_int_eq(pl.dropped, 1);
    /* without groups, (t1,1) would go to expert 4 */
    r.n_group = r.topk_group = 1;
    run_router(&pl, &c, &r, V3G, 3, 6, 2);
    ck_assert_int_eq(pl.rerouted, 2);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* Reroute's next best follows the selection scores s (V3), not p: with bias
 * .5 on expert 1, t1's substitute is expert 1 (s .6) rather than expert 2
 * (p .3, the larger p). */
START_TEST(test_router_reroute_selection_order) {
    static const float P[2 * 4] = {.9f, .1f, .3f, .2f, .8f, .1f, .3f, .25f};
    static const float B[4] = {0, .5f, 0, 0};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r;
    capmoe_router_default(&r, 1);
    r.sigmoid = 1;
    r.bias = B;
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_REROUTE, 1.0, 1);
    run_router(&pl, &c, &r, P, 2, 4, 1);
    const float want[] = {1.0f, NA, NA, NA, NA, .1f / .8f, NA, NA};
    expect_plan(&pl, want, (const int[]){1, 1, 0, 0}, 2, 4);
    r.bias = NULL; /* by p: expert 2 */
    run_router(&pl, &c, &r, P, 2, 4, 1);
    const float want2[] = {1.0f, NA, NA, NA, NA, NA, .3f / .8f, NA};
    expect_plan(&pl, want2, (const int[]){1, 0, 1, 0}, 2, 4);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* Experts of the groups not kept: V3 cannot choose them (transformers masks
 * them to -inf), V2 counts them as 0. With every selection score negative
 * (bias -.9), the kept group {0, 1} gives S = {0, 1}, or {2, 3} (0 > -.1)
 * when the others count as 0. */
START_TEST(test_router_group_exclusive) {
    static const float P[4] = {.8f, .7f, .1f, .05f};
    static const float B[4] = {-.9f, -.9f, -.9f, -.9f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r = v3_router();
    r.bias = B;
    r.scale = 1.0f;
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_router(&pl, &c, &r, P, 1, 4, 2);
    const float want[] = {.8f / 1.5f, .7f / 1.5f, NA, NA};
    expect_plan(&pl, want, (const int[]){1, 1, 0, 0}, 1, 4);
    r.group_exclusive = 0;
    run_router(&pl, &c, &r, P, 1, 4, 2);
    const float want2[] = {NA, NA, .1f / .15f, .05f / .15f};
    expect_plan(&pl, want2, (const int[]){0, 0, 1, 1}, 1, 4);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* From logits: the router's sigmoid (V3) or softmax (V2) gives the same plan
 * as its probabilities. */
START_TEST(test_router_logits) {
    float lg[3 * 6];
    for (int i = 0; i < 18; i++) lg[i] = logf(V3G[i] / (1.0f - V3G[i]));
    capmoe_dispatch_plan a, b;
    capmoe_dispatch_plan_init(&a);
    capmoe_dispatch_plan_init(&b);
    capmoe_router r = v3_router();
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    capmoe_error err;
    ck_assert_int_eq(capmoe_dispatch_compute_router(&a, &c, &r, lg, 3, 6, 2, NULL, &err), 0);
    run_router(&b, &c, &r, V3G, 3, 6, 2);
    ck_assert_int_eq(a.n_pairs, b.n_pairs);
    for (int e = 0; e < 6; e++) ck_assert_int_eq(a.loads[e], b.loads[e]);
    for (int i = 0; i < a.n_pairs; i++) {
        ck_assert_int_eq(a.tok[i], b.tok[i]);
        ck_assert(fabsf(a.weight[i] - b.weight[i]) < 1e-5f);
    }
    lg[4] = NAN;
    ck_assert_int_eq(capmoe_dispatch_compute_router(&a, &c, &r, lg, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "not finite"), "%s", err.msg);
    capmoe_dispatch_plan_free(&a);
    capmoe_dispatch_plan_free(&b);
}
END_TEST

START_TEST(test_router_errors) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    capmoe_error err;
    capmoe_router r = v3_router();
    r.n_group = 4; /* does not divide 6 */
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "n_group=4") && strstr(err.msg, "E=6"), "%s", err.msg);
    r = v3_router();
    r.topk_group = 3;
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "topk_group=3"), "%s", err.msg);
    r = v3_router();
    r.n_group = 6; /* groups of one expert with a top-2 score */
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "two best"), "%s", err.msg);
    r = v3_router(); /* k = 4 > the 3 experts of one kept group */
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 4, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "k=4"), "%s", err.msg);
    r = v3_router();
    r.scale = 0;
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "scale"), "%s", err.msg);
    float bad_bias[6] = {0, 0, NAN, 0, 0, 0};
    r = v3_router();
    r.bias = bad_bias;
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, V3G, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "bias of expert 2"), "%s", err.msg);
    float big[3 * 6];
    memcpy(big, V3G, sizeof big);
    big[7] = 1.5f; /* a sigmoid never gives more than 1 */
    r = v3_router();
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, &r, big, 3, 6, 2, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "token 1, expert 1"), "%s", err.msg);
    ck_assert_int_eq(capmoe_dispatch_compute_router_probs(&pl, &c, NULL, V3G, 3, 6, 2, NULL, &err), -1);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST


/* ---- piggyback and the regime split (spec §1 "Memory-bound dispatch") ---- */

/* The worked example under piggyback, k0 = 1, worked by hand:
 * B = t0{0} t1{0} t2{0} t3{1} t4{0} t5{3}, A = {0, 1, 3}.
 * t0, t1, t2: A \ B = {1, 3}, p .30/.25/.35 on 1 beats 3 -> their S_t.
 * t3: A \ B = {0, 3}, p .10 > .05 -> {1, 0}: expert 2 (in S_t) not used, 0 rides.
 * t4: A \ B = {1, 3}, p .05 < .10 -> {0, 3}: expert 2 not used, 3 rides.
 * t5: A \ B = {0, 1} -> 0 (.35): its S_t. Weights p / Z_t of the baseline. */
START_TEST(test_piggyback_example) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_PIGGYBACK, 1.0, 1);
    c.piggyback_k0 = 1;
    c.min_tokens = 16; /* does not apply to piggyback */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    const float want[] = {W00, W01, NA, NA,         W10, W11, NA, NA, W20, W21, NA, NA,
                          .10f / .85f, W31, NA, NA, W40, NA, NA, .10f / .85f,
                          W50, NA, NA, W53};
    expect_plan(&pl, want, (const int[]){6, 4, 0, 2}, 6, 4);
    ck_assert_int_eq(pl.activated, 3);
    ck_assert_int_eq(pl.dropped, 2);
    ck_assert_int_eq(pl.piggybacked, 2);
    ck_assert_int_eq(pl.rerouted, 0);
    ck_assert_int_eq(pl.limited, 0);
    ck_assert_int_eq(pl.capacity, 0);
    ck_assert_int_eq(pl.applied, 1);
    ck_assert_int_eq(pl.policy, CAPMOE_POLICY_PIGGYBACK);
    ck_assert(fabs(pl.dropped_mass - (.40 / .85 + .30 / .85) / 6.0) < 1e-6);
    /* renormalize: t3 {1: .45/.55, 0: .10/.55}, t4 {0: .55/.65, 3: .10/.65} */
    c.renormalize = 1;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert(fabsf(wt(&pl, 3, 1) - .45f / .55f) < 1e-5f);
    ck_assert(fabsf(wt(&pl, 3, 0) - .10f / .55f) < 1e-5f);
    ck_assert(fabsf(wt(&pl, 4, 3) - .10f / .65f) < 1e-5f);
    ck_assert(fabsf(wt(&pl, 0, 0) - W00) < 1e-5f);
    /* default k0 = max(1, k/2) = 1 for k = 2: the same plan */
    c.renormalize = 0;
    c.piggyback_k0 = 0;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    expect_plan(&pl, want, (const int[]){6, 4, 0, 2}, 6, 4);
    /* k0 = k: every token keeps S_t, the baseline (4 experts activated) */
    c.piggyback_k0 = 2;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    const float base[] = {W00, W01, NA, NA, W10, W11, NA, NA, W20, W21, NA, NA,
                          NA, W31, W32, NA, W40, NA, W42, NA, W50, NA, NA, W53};
    expect_plan(&pl, base, (const int[]){5, 4, 2, 1}, 6, 4);
    ck_assert_int_eq(pl.activated, 4);
    ck_assert_int_eq(pl.dropped + pl.piggybacked, 0);
    /* k0 > k fails, naming both */
    c.piggyback_k0 = 3;
    capmoe_error err = {{0}};
    ck_assert_int_eq(capmoe_dispatch_compute_probs(&pl, &c, EX, 6, 4, 2, 1, NULL, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "k0=3"));
    /* a lone token has no one to ride with: the baseline, renormalize off */
    c.piggyback_k0 = 1;
    c.renormalize = 1;
    run_probs(&pl, &c, EX + 8, 1, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.applied, 0);
    ck_assert_int_eq(pl.activated, 2);
    ck_assert(fabsf(wt(&pl, 0, 0) - W20) < 1e-6f);
    ck_assert(fabsf(wt(&pl, 0, 1) - W21) < 1e-6f);
    /* policy none reports its activated experts too */
    c = cfg_of(CAPMOE_POLICY_NONE, 1.0, 1);
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.activated, 4);
    ck_assert_int_eq(pl.piggybacked, 0);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* Ties: candidates of A \ B_t with equal p go to the lower expert index, and
 * a token fills from A only (it may end with fewer than k experts). E = 4,
 * k = 3, k0 = 1. t0 p .4 .2 .2 .2: B {0}; t1 p .1 .1 .1 .7: B {3}; A = {0, 3}.
 * t0 uses {0, 3} (only two experts: A has two), t1 {3, 0}. */
START_TEST(test_piggyback_ties) {
    static const float P[2 * 4] = {.4f, .2f, .2f, .2f, .1f, .1f, .1f, .7f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_PIGGYBACK, 1.0, 1);
    c.piggyback_k0 = 1;
    run_probs(&pl, &c, P, 2, 4, 3, 0, NULL);
    const float want[] = {.4f, NA, NA, .2f, .1f, NA, NA, .7f};
    expect_plan(&pl, want, (const int[]){2, 0, 0, 2}, 2, 4);
    /* S_t: t0 {0,1,2} (ties to the lower), t1 {3,0,1}: t0 keeps 0, 3 rides,
     * 1 and 2 unused; t1 keeps 3 and 0, 1 unused */
    ck_assert_int_eq(pl.dropped, 3);
    ck_assert_int_eq(pl.piggybacked, 1);
    ck_assert_int_eq(pl.activated, 2);
    /* three tokens whose B_t cover {0, 1, 2}: t0's tie between 1 and 2 (both
     * .2, both in A) goes to 1; t1 (B {1}) takes 2 (.2) over 0 (.1), t2
     * (B {2}) takes 1 */
    static const float Q[3 * 4] = {.4f, .2f, .2f, .2f, .1f, .6f, .2f, .1f, .1f, .2f, .6f, .1f};
    c.piggyback_k0 = 1;
    run_probs(&pl, &c, Q, 3, 4, 2, 0, NULL);
    const float want2[] = {.4f, .2f, NA, NA, NA, .6f, .2f, NA, NA, .2f, .6f, NA};
    expect_plan(&pl, want2, (const int[]){1, 3, 2, 0}, 3, 4);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* Grouped sigmoid router (V3 layout, V3G above: groups {0,1,2} {3,4,5}, one
 * kept, bias .5 on expert 5), k = 2, k0 = 1. S: t0 [0,1], t1 [0,1], t2 [3,5];
 * B: {0}, {0}, {3}; A = {0, 3}. Only the token's kept group qualifies: t0
 * and t1 cannot take 3, t2 cannot take 0, so each keeps B_t alone. Without
 * groups all three take the other expert of A. */
START_TEST(test_piggyback_router_groups) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r = v3_router();
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_PIGGYBACK, 1.0, 1);
    c.piggyback_k0 = 1;
    run_router(&pl, &c, &r, V3G, 3, 6, 2);
    const float want[] = {.9f / 1.7f * 2.5f, NA, NA, NA, NA, NA,
                          .85f / 1.55f * 2.5f, NA, NA, NA, NA, NA,
                          NA, NA, NA, .6f / .65f * 2.5f, NA, NA};
    expect_plan(&pl, want, (const int[]){2, 0, 0, 1, 0, 0}, 3, 6);
    ck_assert_int_eq(pl.dropped, 3);
    ck_assert_int_eq(pl.piggybacked, 0);
    ck_assert_int_eq(pl.activated, 2);
    r.n_group = r.topk_group = 1;
    run_router(&pl, &c, &r, V3G, 3, 6, 2);
    const float want2[] = {.9f / 1.7f * 2.5f, NA, NA, .2f / 1.7f * 2.5f, NA, NA,
                           .85f / 1.55f * 2.5f, NA, NA, .1f / 1.55f * 2.5f, NA, NA,
                           .2f / .65f * 2.5f, NA, NA, .6f / .65f * 2.5f, NA, NA};
    expect_plan(&pl, want2, (const int[]){3, 0, 0, 3, 0, 0}, 3, 6);
    ck_assert_int_eq(pl.piggybacked, 3);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* The fill follows the selection score s = p + bias, not p: bias .5 on
 * expert 3. t0 p .9 .1 .3 .2 (s .9 .1 .3 .7), t1 p .1 .2 .9 .1, t2 p .1 .1
 * .1 .9; B {0} {2} {3}, A = {0, 2, 3}. t0 takes 3 (s .7) over 2 (p .3). */
START_TEST(test_piggyback_selection_order) {
    static const float P[3 * 4] = {.9f, .1f, .3f, .2f, .1f, .2f, .9f, .1f, .1f, .1f, .1f, .9f};
    static const float B[4] = {0, 0, 0, .5f};
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_router r;
    capmoe_router_default(&r, 1);
    r.sigmoid = 1;
    r.bias = B;
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_PIGGYBACK, 1.0, 1);
    c.piggyback_k0 = 1;
    run_router(&pl, &c, &r, P, 3, 4, 2);
    ck_assert(wt(&pl, 0, 3) != NA && wt(&pl, 0, 2) == NA);
    ck_assert(fabsf(wt(&pl, 0, 3) - .2f / 1.1f) < 1e-5f);
    r.bias = NULL; /* by p: 2 */
    run_router(&pl, &c, &r, P, 3, 4, 2);
    ck_assert(wt(&pl, 0, 2) != NA && wt(&pl, 0, 3) == NA);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* --decode-policy P --regime-tokens N: P below N tokens, --policy from N on. */
START_TEST(test_regime_split) {
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    capmoe_dispatch_cfg c = cfg_of(CAPMOE_POLICY_DROP, 1.0, 1);
    c.decode_policy = CAPMOE_POLICY_PIGGYBACK;
    c.piggyback_k0 = 1;
    c.regime_tokens = 7; /* T = 6 < 7: piggyback */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.regime, 1);
    ck_assert_int_eq(pl.policy, CAPMOE_POLICY_PIGGYBACK);
    ck_assert_int_eq(pl.loads[0], 6);
    ck_assert_int_eq(pl.activated, 3);
    c.regime_tokens = 6; /* T = 6 is not below 6: drop, the spec's loads */
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.regime, 0);
    ck_assert_int_eq(pl.policy, CAPMOE_POLICY_DROP);
    ck_assert_int_eq(pl.capacity, 3);
    const int dl[] = {3, 3, 2, 1};
    for (int e = 0; e < 4; e++) ck_assert_int_eq(pl.loads[e], dl[e]);
    /* no decode policy: regime_tokens alone changes nothing */
    c.decode_policy = -1;
    c.regime_tokens = 100;
    run_probs(&pl, &c, EX, 6, 4, 2, 1, NULL);
    ck_assert_int_eq(pl.regime, 0);
    ck_assert_int_eq(pl.capacity, 3);
    /* a decode policy needing E % R: checked like the main one */
    c.decode_policy = CAPMOE_POLICY_RANK_DROP;
    c.ep_ranks = 3;
    capmoe_error err = {{0}};
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "decode policy rank_drop"));
    c.ep_ranks = 1;
    c.decode_policy = 6;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    c.decode_policy = -1;
    c.regime_tokens = -1;
    ck_assert_int_eq(capmoe_dispatch_cfg_check(&c, 4, &err), -1);
    capmoe_dispatch_plan_free(&pl);
}
END_TEST

/* Random routing answered by the independent Python reference
 * (tests/fixtures/gen/piggyback_cases.py over dispatch_ref.py): softmax and
 * grouped / biased routers, every k0, renormalize, T = 1, and the regime
 * split over policy drop. Expert sets, weights, loads and counts. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = '\0';
    fclose(f);
    return b;
}

START_TEST(test_piggyback_reference) {
    char *txt = slurp("tests/data/piggyback_cases.json");
    ck_assert_msg(txt != NULL, "tests/data/piggyback_cases.json: cannot read (run from the repo root)");
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    ck_assert_ptr_nonnull(root);
    cJSON *cases = cJSON_GetObjectItem(root, "cases"), *cs;
    int n = 0;
    capmoe_dispatch_plan pl;
    capmoe_dispatch_plan_init(&pl);
    cJSON_ArrayForEach(cs, cases) {
        const char *name = cJSON_GetObjectItem(cs, "name")->valuestring;
        int T = cJSON_GetObjectItem(cs, "T")->valueint, E = cJSON_GetObjectItem(cs, "E")->valueint;
        int k = cJSON_GetObjectItem(cs, "k")->valueint;
        capmoe_dispatch_cfg c = cfg_of(
            (capmoe_policy)capmoe_policy_parse(cJSON_GetObjectItem(cs, "policy")->valuestring), 1.0, 1);
        c.piggyback_k0 = cJSON_GetObjectItem(cs, "k0")->valueint;
        c.renormalize = cJSON_GetObjectItem(cs, "renormalize")->valueint;
        cJSON *dp = cJSON_GetObjectItem(cs, "decode_policy");
        if (cJSON_IsString(dp)) c.decode_policy = capmoe_policy_parse(dp->valuestring);
        c.regime_tokens = cJSON_GetObjectItem(cs, "regime_tokens")->valueint;
        cJSON *rj = cJSON_GetObjectItem(cs, "router");
        capmoe_router r;
        capmoe_router_default(&r, cJSON_GetObjectItem(rj, "norm")->valueint);
        r.sigmoid = cJSON_GetObjectItem(rj, "sigmoid")->valueint;
        r.n_group = cJSON_GetObjectItem(rj, "groups")->valueint;
        r.topk_group = cJSON_GetObjectItem(rj, "topk_group")->valueint;
        r.group_top2 = cJSON_GetObjectItem(rj, "top2")->valueint;
        r.group_exclusive = cJSON_GetObjectItem(rj, "exclusive")->valueint;
        r.scale = (float)cJSON_GetObjectItem(rj, "scale")->valuedouble;
        if (r.sigmoid) r.norm_eps = 1e-20f;
        float bias[64], probs[13 * 64];
        cJSON *bj = cJSON_GetObjectItem(rj, "bias");
        if (cJSON_IsArray(bj)) {
            for (int e = 0; e < E; e++) bias[e] = (float)cJSON_GetArrayItem(bj, e)->valuedouble;
            r.bias = bias;
        }
        ck_assert(T <= 13 && E <= 64);
        cJSON *pj = cJSON_GetObjectItem(cs, "probs");
        for (int t = 0; t < T; t++)
            for (int e = 0; e < E; e++)
                probs[t * E + e] =
                    (float)cJSON_GetArrayItem(cJSON_GetArrayItem(pj, t), e)->valuedouble;
        run_router(&pl, &c, &r, probs, T, E, k);
        check_structure(&pl, T, E);
        cJSON *prs = cJSON_GetObjectItem(cs, "pairs");
        int want_pairs = 0;
        for (int t = 0; t < T; t++) {
            cJSON *row = cJSON_GetArrayItem(prs, t), *pr;
            cJSON_ArrayForEach(pr, row) {
                int e = cJSON_GetArrayItem(pr, 0)->valueint;
                double w = cJSON_GetArrayItem(pr, 1)->valuedouble;
                float got = wt(&pl, t, e);
                ck_assert_msg(got != NA, "%s: t%d e%d not computed", name, t, e);
                ck_assert_msg(fabs(got - w) <= 1e-5 * fmax(1.0, fabs(w)), "%s: t%d e%d %g vs %g",
                              name, t, e, (double)got, w);
                want_pairs++;
            }
        }
        ck_assert_msg(pl.n_pairs == want_pairs, "%s: %d pairs, reference %d", name, pl.n_pairs,
                      want_pairs);
        cJSON *lj = cJSON_GetObjectItem(cs, "loads");
        for (int e = 0; e < E; e++)
            ck_assert_msg(pl.loads[e] == cJSON_GetArrayItem(lj, e)->valueint, "%s: load %d", name, e);
        ck_assert_msg(pl.dropped == cJSON_GetObjectItem(cs, "dropped")->valueint, "%s dropped", name);
        ck_assert_msg(pl.piggybacked == cJSON_GetObjectItem(cs, "piggybacked")->valueint,
                      "%s piggybacked", name);
        ck_assert_msg(pl.activated == cJSON_GetObjectItem(cs, "activated")->valueint, "%s activated",
                      name);
        ck_assert_str_eq(capmoe_policy_name((capmoe_policy)pl.policy),
                         cJSON_GetObjectItem(cs, "ran")->valuestring);
        n++;
    }
    ck_assert_int_ge(n, 100);
    capmoe_dispatch_plan_free(&pl);
    cJSON_Delete(root);
}
END_TEST

static Suite *dispatch_suite(void) {
    Suite *s = suite_create("dispatch");
    TCase *tc = tcase_create("example");
    tcase_add_test(tc, test_example_none);
    tcase_add_test(tc, test_example_drop);
    tcase_add_test(tc, test_example_drop_renormalize);
    tcase_add_test(tc, test_example_reroute);
    tcase_add_test(tc, test_example_expanded_r1);
    tcase_add_test(tc, test_example_expanded_r2);
    tcase_add_test(tc, test_example_rank_drop);
    tcase_add_test(tc, test_example_rank_drop_half);
    suite_add_tcase(s, tc);
    tc = tcase_create("ties");
    tcase_add_test(tc, test_tie_tokens_drop);
    tcase_add_test(tc, test_tie_experts_topk);
    tcase_add_test(tc, test_tie_reroute_order);
    tcase_add_test(tc, test_tie_reroute_substitute);
    tcase_add_test(tc, test_tie_reroute_skips_full_and_given);
    tcase_add_test(tc, test_reroute_not_given_twice);
    tcase_add_test(tc, test_tie_rank_drop_expert);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_test(tc, test_no_limit_t1);
    tcase_add_test(tc, test_min_tokens);
    tcase_add_test(tc, test_gamma_below_one);
    tcase_add_test(tc, test_capacity_above_t);
    tcase_add_test(tc, test_all_pairs_dropped);
    tcase_add_test(tc, test_norm_topk);
    tcase_add_test(tc, test_capacity_formula);
    tcase_add_test(tc, test_empty_batch);
    suite_add_tcase(s, tc);
    tc = tcase_create("auto");
    tcase_add_test(tc, test_auto_smallest_gamma);
    tcase_add_test(tc, test_auto_null);
    tcase_add_test(tc, test_auto_each_policy);
    suite_add_tcase(s, tc);
    tc = tcase_create("routers");
    tcase_add_test(tc, test_router_v2_groups);
    tcase_add_test(tc, test_router_v3_groups_bias);
    tcase_add_test(tc, test_router_reroute_selection_order);
    tcase_add_test(tc, test_router_group_exclusive);
    tcase_add_test(tc, test_router_logits);
    tcase_add_test(tc, test_router_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("piggyback");
    tcase_add_test(tc, test_piggyback_example);
    tcase_add_test(tc, test_piggyback_ties);
    tcase_add_test(tc, test_piggyback_router_groups);
    tcase_add_test(tc, test_piggyback_selection_order);
    tcase_add_test(tc, test_regime_split);
    tcase_add_test(tc, test_piggyback_reference);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_test(tc, test_cfg_and_names);
    tcase_add_test(tc, test_cfg_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("random");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_logits_equals_probs);
    tcase_add_test(tc, test_random_invariants);
    tcase_add_test(tc, test_plan_reuse_and_size);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(dispatch_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
