/* check_config.c - tests of server/config.c: the defaults, the shipped
 * config/capmoe.json (it must equal the defaults), the precedence file < env
 * < flags, every value form (bool spellings, "auto", kebab flags, --no-x,
 * --x=v), refusals that name the option and its source, --help coverage of
 * every option, the served model id, and the dispatch configuration. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/config.h"
#include "capmoe/http.h"

/* Loads from argv (NULL-terminated list after the program name) and env. */
static int load(capmoe_config *cfg, char *const *env, capmoe_config_action *act,
                capmoe_error *err, ...) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "capmoe-server";
    va_list ap;
    va_start(ap, err);
    const char *a;
    while ((a = va_arg(ap, const char *)) && argc < 63) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return capmoe_config_load(cfg, argc, argv, env, act, err);
}

static char *write_tmp(const char *text) {
    char *path = strdup("/tmp/capmoe_cfg_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

START_TEST(test_defaults) {
    capmoe_config c;
    capmoe_config_defaults(&c);
    ck_assert_str_eq(c.model, "config/model");
    ck_assert_str_eq(c.host, "127.0.0.1");
    ck_assert_int_eq(c.port, 8080);
    ck_assert_str_eq(c.api_key, "");
    ck_assert_int_eq(c.policy, CAPMOE_POLICY_NONE);
    ck_assert(c.capacity_factor == 1.0 && !c.capacity_auto);
    ck_assert_int_eq(c.ep_ranks, 1);
    ck_assert_int_eq(c.renormalize, 0);
    ck_assert_int_eq(c.min_tokens, 16);
    ck_assert(c.drop_budget == 0.01);
    ck_assert_int_eq(c.max_batch_tokens, 512);
    ck_assert_int_eq(c.max_running, 16);
    ck_assert_int_eq(c.max_queue, 256);
    ck_assert_int_eq(c.context, 0);
    ck_assert(c.max_body_bytes == 1048576);
    ck_assert(c.grace_period_s == 30);
    ck_assert_int_eq(c.metrics_per_layer_expert, 0);
    capmoe_error e;
    ck_assert_int_eq(capmoe_config_check(&c, &e), 0);
    capmoe_config_free(&c);
}
END_TEST

/* The shipped file documents the defaults: loading it changes nothing, and
 * it lists every option. */
START_TEST(test_shipped_file_equals_defaults) {
    capmoe_config d, f;
    capmoe_config_defaults(&d);
    capmoe_config_action act;
    capmoe_error e;
    int rc = load(&f, NULL, &act, &e, "--config", "config/capmoe.json", NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    char *a = capmoe_config_to_json(&d), *b = capmoe_config_to_json(&f);
    ck_assert_str_eq(a, b);
    cJSON *ja = cJSON_Parse(a);
    size_t len;
    char *text = capmoe_read_file("config/capmoe.json", &len, &e);
    ck_assert_ptr_nonnull(text);
    cJSON *jf = cJSON_Parse(text);
    ck_assert_int_eq(cJSON_GetArraySize(ja), cJSON_GetArraySize(jf));
    for (cJSON *it = ja->child; it; it = it->next)
        ck_assert_msg(cJSON_GetObjectItemCaseSensitive(jf, it->string),
                      "config/capmoe.json lacks \"%s\"", it->string);
    cJSON_Delete(ja);
    cJSON_Delete(jf);
    free(text);
    free(a);
    free(b);
    capmoe_config_free(&d);
    capmoe_config_free(&f);
}
END_TEST

START_TEST(test_precedence) {
    char *path = write_tmp("{\"port\": 9000, \"max_running\": 4, \"policy\": \"drop\", "
                           "\"host\": \"0.0.0.0\"}");
    char *env[] = {"CAPMOE_PORT=9100", "CAPMOE_MAX_RUNNING=5", "CAPMOE_BUILD=build",
                   "UNRELATED=1", NULL};
    capmoe_config c;
    capmoe_config_action act;
    capmoe_error e;
    int rc = load(&c, env, &act, &e, "--config", path, "--port", "9200", NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_eq(act, CAPMOE_CONFIG_RUN);
    ck_assert_int_eq(c.port, 9200);        /* flag beats env and file */
    ck_assert_int_eq(c.max_running, 5);    /* env beats file */
    ck_assert_int_eq(c.policy, CAPMOE_POLICY_DROP); /* file beats default */
    ck_assert_str_eq(c.host, "0.0.0.0");
    ck_assert_str_eq(c.config_file, path);
    capmoe_config_free(&c);
    /* CAPMOE_CONFIG names the file too */
    char envf[512];
    snprintf(envf, sizeof envf, "CAPMOE_CONFIG=%s", path);
    char *env2[] = {envf, NULL};
    rc = load(&c, env2, &act, &e, NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_eq(c.port, 9000);
    capmoe_config_free(&c);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_value_forms) {
    capmoe_config c;
    capmoe_config_action act;
    capmoe_error e;
    int rc = load(&c, NULL, &act, &e, "--renormalize", "--capacity-factor", "auto",
                  "--max-batch-tokens=64", "--ep-ranks", "4", "--metrics-per-layer-expert=yes",
                  "--api-key", "k", "--policy", "reroute", "--drop-budget", "0.05", NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_eq(c.renormalize, 1);
    ck_assert_int_eq(c.capacity_auto, 1);
    ck_assert_int_eq(c.max_batch_tokens, 64);
    ck_assert_int_eq(c.metrics_per_layer_expert, 1);
    capmoe_dispatch_cfg d;
    capmoe_config_dispatch(&c, &d);
    ck_assert_int_eq(d.policy, CAPMOE_POLICY_REROUTE);
    ck_assert_int_eq(d.auto_gamma, 1);
    ck_assert_int_eq(d.ep_ranks, 4);
    ck_assert_int_eq(d.renormalize, 1);
    ck_assert_int_eq(d.min_tokens, 16);
    ck_assert(d.drop_budget == 0.05);
    capmoe_config_free(&c);

    rc = load(&c, NULL, &act, &e, "--renormalize=true", "--no-renormalize", "--capacity-factor",
              "1.5", NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_eq(c.renormalize, 0);
    ck_assert(c.capacity_factor == 1.5 && !c.capacity_auto);
    capmoe_config_free(&c);

    char *path = write_tmp("{\"capacity_factor\": \"auto\", \"renormalize\": true}");
    rc = load(&c, NULL, &act, &e, "--config", path, NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_eq(c.capacity_auto, 1);
    ck_assert_int_eq(c.renormalize, 1);
    capmoe_config_free(&c);
    unlink(path);
    free(path);

    rc = load(&c, NULL, &act, &e, "--healthcheck", "--port", "1234", NULL);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(act, CAPMOE_CONFIG_HEALTHCHECK);
    ck_assert_int_eq(c.port, 1234);
    capmoe_config_free(&c);
    rc = load(&c, NULL, &act, &e, "--port", "bogus", "--help", NULL);
    ck_assert_int_eq(rc, 0); /* --help wins over anything else */
    ck_assert_int_eq(act, CAPMOE_CONFIG_HELP);
    capmoe_config_free(&c);
}
END_TEST

/* Each refusal names the option (as the source spelled it). */
static void expect_error(char *const *env, const char *needle, ...) {
    char *argv[16];
    int argc = 0;
    argv[argc++] = "capmoe-server";
    va_list ap;
    va_start(ap, needle);
    const char *a;
    while ((a = va_arg(ap, const char *)) && argc < 15) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    capmoe_config c;
    capmoe_config_action act;
    capmoe_error e;
    e.msg[0] = '\0';
    int rc = capmoe_config_load(&c, argc, argv, env, &act, &e);
    ck_assert_msg(rc == -1, "expected a refusal containing '%s'", needle);
    ck_assert_msg(strstr(e.msg, needle), "message '%s' lacks '%s'", e.msg, needle);
    capmoe_config_free(&c);
}

START_TEST(test_refusals) {
    expect_error(NULL, "--port: 70000 is out of range", "--port", "70000", NULL);
    expect_error(NULL, "--port: '80x' is not an integer", "--port", "80x", NULL);
    expect_error(NULL, "--port: missing value", "--port", NULL);
    expect_error(NULL, "unknown option '--bogus'", "--bogus", "1", NULL);
    expect_error(NULL, "unexpected argument 'stray'", "stray", NULL);
    expect_error(NULL, "--policy: unknown policy 'fastest'", "--policy", "fastest", NULL);
    expect_error(NULL, "--capacity-factor: 0 is out of range", "--capacity-factor", "0", NULL);
    expect_error(NULL, "--capacity-factor: 'many' is neither", "--capacity-factor", "many", NULL);
    expect_error(NULL, "--renormalize: 'maybe' is not a boolean", "--renormalize=maybe", NULL);
    expect_error(NULL, "--drop-budget: 2 is out of range", "--drop-budget", "2", NULL);
    expect_error(NULL, "--ep-ranks: 0 is out of range", "--ep-ranks", "0", NULL);
    expect_error(NULL, "--grace-period-s: 'nan' is not a finite number", "--grace-period-s",
                 "nan", NULL);
    expect_error(NULL, "max_batch_tokens (8) must be at least max_running (16)",
                 "--max-batch-tokens", "8", NULL);
    expect_error(NULL, "--config: /nonexistent/capmoe.json: cannot open", "--config",
                 "/nonexistent/capmoe.json", NULL);
    char *env[] = {"CAPMOE_MAX_QUEUE=-3", NULL};
    expect_error(env, "CAPMOE_MAX_QUEUE: -3 is out of range", NULL);
    char *env2[] = {"CAPMOE_RENORMALIZE=sometimes", NULL};
    expect_error(env2, "CAPMOE_RENORMALIZE", NULL);

    static const struct {
        const char *json, *needle;
    } files[] = {
        {"{\"port\": \"8080\"}", "\"port\": must be a number"},
        {"{\"port\": 80.5}", "\"port\": '80.5' is not an integer"},
        {"{\"renormalize\": 1}", "\"renormalize\": must be true or false"},
        {"{\"capacity_factor\": \"fast\"}", "\"capacity_factor\": must be a number or \"auto\""},
        {"{\"max_runing\": 4}", "\"max_runing\": unknown option"},
        {"{\"host\": null}", "\"host\": must be a string"},
        {"[1, 2]", "the top level must be a JSON object"},
        {"{\"port\": 1,", "invalid JSON"},
        {"{\"max_body_bytes\": 1e12}", "\"max_body_bytes\": 1000000000000 is out of range"},
        {"{\"model\": \"config/model\\u0000/x\"}", "model: a string holds a NUL character"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *path = write_tmp(files[i].json);
        expect_error(NULL, files[i].needle, "--config", path, NULL);
        expect_error(NULL, path, "--config", path, NULL); /* the file is named too */
        unlink(path);
        free(path);
    }
}
END_TEST

/* --help lists every option of the table: its flag, variable and default. */
START_TEST(test_help_covers_every_option) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    capmoe_config_help(f, "capmoe-server");
    fclose(f);
    capmoe_config d;
    capmoe_config_defaults(&d);
    char *json = capmoe_config_to_json(&d);
    cJSON *j = cJSON_Parse(json);
    int n = 0;
    for (cJSON *it = j->child; it; it = it->next, n++) {
        char flag[96], env[96];
        size_t k = 0;
        flag[k++] = '-';
        flag[k++] = '-';
        for (const char *p = it->string; *p; p++) flag[k++] = *p == '_' ? '-' : *p;
        flag[k] = '\0';
        k = (size_t)snprintf(env, sizeof env, "CAPMOE_");
        for (const char *p = it->string; *p; p++) env[k++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        env[k] = '\0';
        char flagsp[100];
        snprintf(flagsp, sizeof flagsp, "%s ", flag);
        char flageq[100];
        snprintf(flageq, sizeof flageq, "%s[", flag);
        ck_assert_msg(strstr(buf, flagsp) || strstr(buf, flageq), "--help lacks %s", flag);
        ck_assert_msg(strstr(buf, env), "--help lacks %s", env);
    }
    ck_assert_int_ge(n, 20);
    ck_assert_ptr_nonnull(strstr(buf, "(default: 8080; env CAPMOE_PORT)"));
    ck_assert_ptr_nonnull(strstr(buf, "(default: config/model; env CAPMOE_MODEL)"));
    ck_assert_ptr_nonnull(strstr(buf, "--healthcheck"));
    ck_assert_ptr_nonnull(strstr(buf, "--config FILE"));
    cJSON_Delete(j);
    free(json);
    free(buf);
    capmoe_config_free(&d);
}
END_TEST

START_TEST(test_model_id) {
    capmoe_config c;
    capmoe_config_defaults(&c);
    char *id = capmoe_config_model_id(&c);
    ck_assert_str_eq(id, "model");
    free(id);
    capmoe_error e;
    ck_assert_int_eq(capmoe_config_set(&c, "model", "/models/Qwen3-30B-A3B//", "t", &e), 0);
    id = capmoe_config_model_id(&c);
    ck_assert_str_eq(id, "Qwen3-30B-A3B");
    free(id);
    ck_assert_int_eq(capmoe_config_set(&c, "model_name", "my-moe", "t", &e), 0);
    id = capmoe_config_model_id(&c);
    ck_assert_str_eq(id, "my-moe");
    free(id);
    capmoe_config_free(&c);
}
END_TEST

/* The --healthcheck client: nothing listens on a fresh closed port. */
START_TEST(test_probe_refused) {
    capmoe_error e;
    e.msg[0] = '\0';
    int st = capmoe_http_probe("127.0.0.1", 1, "/health", 1.0, &e);
    ck_assert_int_eq(st, -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "127.0.0.1:1"));
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_shipped_file_equals_defaults);
    tcase_add_test(tc, test_precedence);
    tcase_add_test(tc, test_value_forms);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_help_covers_every_option);
    tcase_add_test(tc, test_model_id);
    tcase_add_test(tc, test_probe_refused);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
