/* check_stats.c - the summary helpers of include/capmoe/stats.h. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/stats.h"

static capmoe_layer_stats ls0(void) {
    capmoe_layer_stats ls;
    memset(&ls, 0, sizeof ls);
    return ls;
}

START_TEST(test_load_imbalance) {
    capmoe_layer_stats ls = ls0();
    ls.n_experts = 4;
    int a[4] = {5, 4, 2, 1}; /* mean 3, max 5 */
    memcpy(ls.loads, a, sizeof a);
    ck_assert_double_eq_tol(capmoe_layer_load_imbalance(&ls), 5.0 / 3.0, 1e-12);
    int b[4] = {3, 3, 3, 3};
    memcpy(ls.loads, b, sizeof b);
    ck_assert_double_eq(capmoe_layer_load_imbalance(&ls), 1.0);
    int c[4] = {0, 0, 8, 0}; /* everything on one expert: E */
    memcpy(ls.loads, c, sizeof c);
    ck_assert_double_eq(capmoe_layer_load_imbalance(&ls), 4.0);
    int d[4] = {0, 0, 0, 0};
    memcpy(ls.loads, d, sizeof d);
    ck_assert_double_eq(capmoe_layer_load_imbalance(&ls), 0.0);
    /* only the first n_experts entries count */
    ls.loads[5] = 100;
    ls.loads[0] = 2;
    ls.loads[1] = 2;
    ck_assert_double_eq(capmoe_layer_load_imbalance(&ls), 2.0);
    ls.n_experts = 0;
    ck_assert_double_eq(capmoe_layer_load_imbalance(&ls), 0.0);
    ck_assert_double_eq(capmoe_layer_load_imbalance(NULL), 0.0);
    /* a count beyond the array is clamped, not read past the end */
    ls = ls0();
    ls.n_experts = CAPMOE_MAX_EXPERTS + 10;
    for (int e = 0; e < CAPMOE_MAX_EXPERTS; e++) ls.loads[e] = 1;
    ls.loads[0] = 2;
    ck_assert_double_eq_tol(capmoe_layer_load_imbalance(&ls),
                            2.0 / ((CAPMOE_MAX_EXPERTS + 1.0) / CAPMOE_MAX_EXPERTS), 1e-12);
}
END_TEST

START_TEST(test_straggler_ratio) {
    capmoe_layer_stats ls = ls0();
    ls.n_ranks = 1;
    ls.rank_time[0] = 0.5;
    ck_assert_double_eq(capmoe_layer_straggler_ratio(&ls), 1.0);
    ls.n_ranks = 4;
    double t[4] = {1.0, 2.0, 3.0, 6.0}; /* mean 3, max 6 */
    memcpy(ls.rank_time, t, sizeof t);
    ck_assert_double_eq_tol(capmoe_layer_straggler_ratio(&ls), 2.0, 1e-12);
    double u[4] = {0.25, 0.25, 0.25, 0.25};
    memcpy(ls.rank_time, u, sizeof u);
    ck_assert_double_eq(capmoe_layer_straggler_ratio(&ls), 1.0);
    double z[4] = {0, 0, 0, 0};
    memcpy(ls.rank_time, z, sizeof z);
    ck_assert_double_eq(capmoe_layer_straggler_ratio(&ls), 1.0);
    ls.n_ranks = 2;
    ls.rank_time[0] = 3.0;
    ls.rank_time[1] = 1.0;
    ls.rank_time[2] = 100.0; /* not a rank */
    ck_assert_double_eq_tol(capmoe_layer_straggler_ratio(&ls), 1.5, 1e-12);
    ls.n_ranks = 0;
    ck_assert_double_eq(capmoe_layer_straggler_ratio(&ls), 0.0);
    ck_assert_double_eq(capmoe_layer_straggler_ratio(NULL), 0.0);
}
END_TEST

START_TEST(test_max_rank_load) {
    capmoe_layer_stats ls = ls0();
    ls.n_ranks = 3;
    ls.rank_load[0] = 7;
    ls.rank_load[1] = 12;
    ls.rank_load[2] = 3;
    ls.rank_load[3] = 50; /* not a rank */
    ck_assert_int_eq(capmoe_layer_max_rank_load(&ls), 12);
    ls.n_ranks = 1;
    ck_assert_int_eq(capmoe_layer_max_rank_load(&ls), 7);
    ls.n_ranks = 0;
    ck_assert_int_eq(capmoe_layer_max_rank_load(&ls), 0);
    ls.n_ranks = CAPMOE_MAX_RANKS + 5;
    ls.rank_load[CAPMOE_MAX_RANKS - 1] = 99;
    ck_assert_int_eq(capmoe_layer_max_rank_load(&ls), 99);
    ck_assert_int_eq(capmoe_layer_max_rank_load(NULL), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("helpers");
    tcase_add_test(tc, test_load_imbalance);
    tcase_add_test(tc, test_straggler_ratio);
    tcase_add_test(tc, test_max_rank_load);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
