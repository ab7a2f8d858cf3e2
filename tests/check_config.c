/* check_config.c - tests of server/config.c: the defaults, the shipped
 * config/capmoe.json (it must equal the defaults), the precedence file < env
 * < flags, every value form (bool spellings, "auto", kebab flags, --no-x,
 * --x=v), refusals that name the option and its source, --help coverage of
 * every option, the served model id, and the dispatch configuration; the
 * logging, TLS and CORS options; which options a reload applies live and
 * the diff / copy a reload uses; the configuration checked against a
 * model's config.json (ep_ranks must divide the experts). */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/config.h"
#include "capmoe/cors.h"
#include "capmoe/http.h"
#include "capmoe/log.h"

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
    expect_error(NULL, "--max-running: '99999999999999999999' is not an integer", "--max-running",
                 "99999999999999999999", NULL);
    expect_error(NULL, "--max-running: 4294967296 is out of range", "--max-running", "4294967296",
                 NULL);
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
        /* issue 17: range before conversion, for every size of number */
        {"{\"threads\": 6666666666}", "\"threads\": 6666666666 is out of range"},
        {"{\"max_connections\": 1e300}", "\"max_connections\": '1.0000000000000001e+300' is not an integer"},
        {"{\"port\": -9223372036854775809}", "\"port\": '-9.2233720368547758e+18' is not an integer"},
        {"{\"grace_period_s\": 1e309}", "\"grace_period_s\": 'inf' is not a finite number"},
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
    int st = capmoe_http_probe("127.0.0.1", 1, "/health", 1.0, 0, &e);
    ck_assert_int_eq(st, -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "127.0.0.1:1"));
}
END_TEST

START_TEST(test_log_tls_cors_options) {
    capmoe_config c;
    capmoe_config_action act;
    capmoe_error e;
    ck_assert_int_eq(load(&c, NULL, &act, &e, NULL), 0);
    ck_assert_int_eq(c.log_level, CAPMOE_LOG_INFO);
    ck_assert_int_eq(c.log_format, CAPMOE_LOG_TEXT);
    ck_assert_int_eq(c.access_log, 1);
    ck_assert_str_eq(c.tls_cert, "");
    ck_assert_str_eq(c.cors_origins, "");
    capmoe_config_free(&c);
    char *env[] = {"CAPMOE_LOG_FORMAT=json", NULL};
    ck_assert_int_eq(load(&c, env, &act, &e, "--log-level", "debug", "--no-access-log",
                          "--cors-origins", "https://a.example, http://localhost:5173", NULL),
                     0);
    ck_assert_int_eq(c.log_level, CAPMOE_LOG_DEBUG);
    ck_assert_int_eq(c.log_format, CAPMOE_LOG_JSON);
    ck_assert_int_eq(c.access_log, 0);
    char *js = capmoe_config_to_json(&c);
    ck_assert_ptr_nonnull(strstr(js, "\"log_level\":\t\"debug\""));
    ck_assert_ptr_nonnull(strstr(js, "\"log_format\":\t\"json\""));
    free(js);
    capmoe_config_free(&c);
    expect_error(NULL, "--log-level: unknown value 'loud' (debug,info,warn,error)", "--log-level",
                 "loud", NULL);
    expect_error(NULL, "--log-format: unknown value 'xml' (text,json)", "--log-format", "xml",
                 NULL);
    expect_error(NULL, "tls_key: HTTPS needs both tls_cert and tls_key", "--tls-cert", "c.pem",
                 NULL);
    expect_error(NULL, "tls_cert: HTTPS needs both", "--tls-key", "k.pem", NULL);
    expect_error(NULL, "cors_origins: origin 'example.com' must start with http:// or https://",
                 "--cors-origins", "example.com", NULL);
    expect_error(NULL, "cors_origins: origin 'https://a.example/' must be scheme://host[:port] only",
                 "--cors-origins", "https://a.example/", NULL);
    expect_error(NULL, "cors_origins: origin 'http://a:99999' has an invalid port",
                 "--cors-origins", "http://a:99999", NULL);
    char *path = write_tmp("{\"log_level\": 3}");
    expect_error(NULL, "\"log_level\": must be a string", "--config", path, NULL);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_cors_policy) {
    capmoe_cors *c;
    capmoe_error e;
    ck_assert_int_eq(capmoe_cors_new(&c, "", &e), 0);
    ck_assert(!capmoe_cors_enabled(c));
    ck_assert_ptr_null(capmoe_cors_allow(c, "http://x.example"));
    capmoe_cors_free(c);
    ck_assert_int_eq(capmoe_cors_new(&c, " HTTPS://App.Example , http://127.0.0.1:8000,http://[::1]:9", &e), 0);
    ck_assert(capmoe_cors_enabled(c));
    ck_assert_str_eq(capmoe_cors_allow(c, "https://app.example"), "https://app.example");
    ck_assert_ptr_nonnull(capmoe_cors_allow(c, "http://127.0.0.1:8000"));
    ck_assert_ptr_nonnull(capmoe_cors_allow(c, "http://[::1]:9"));
    ck_assert_ptr_null(capmoe_cors_allow(c, "http://127.0.0.1:8001"));
    ck_assert_ptr_null(capmoe_cors_allow(c, "https://app.example.evil"));
    ck_assert_ptr_null(capmoe_cors_allow(c, "null"));
    ck_assert_ptr_null(capmoe_cors_allow(c, NULL));
    capmoe_cors_free(c);
    ck_assert_int_eq(capmoe_cors_new(&c, "*", &e), 0);
    ck_assert_str_eq(capmoe_cors_allow(c, "http://anything:1"), "*");
    ck_assert_ptr_null(capmoe_cors_allow(c, NULL)); /* no Origin: no CORS headers */
    capmoe_cors_free(c);
    ck_assert_int_eq(capmoe_cors_new(&c, "http://a.example,ftp://b", &e), -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "'ftp://b'"));
    ck_assert_int_eq(capmoe_cors_new(&c, "http://", &e), -1);
    ck_assert_int_eq(capmoe_cors_new(&c, "http://u@host", &e), -1);
}
END_TEST

typedef struct diff_rec {
    int n;
    char line[32][256];
} diff_rec;

static void record_diff(void *user, const char *name, int live, const char *a, const char *b) {
    diff_rec *r = user;
    if (r->n < 32) snprintf(r->line[r->n++], 256, "%s %s %s->%s", live ? "live" : "restart", name, a, b);
}

/* What a SIGHUP reload sees: the differing options, which are live, the
 * values as logged (secrets hidden), and the copy of a live option. */
START_TEST(test_reload_diff) {
    const char *live[] = {"policy", "capacity_factor", "drop_budget", "renormalize", "min_tokens",
                          "api_key", "log_level", "access_log", "cors_origins"};
    for (unsigned i = 0; i < sizeof live / sizeof live[0]; i++)
        ck_assert_msg(capmoe_config_is_live(live[i]), "%s should be live", live[i]);
    const char *restart[] = {"model", "host", "port", "ep_ranks", "max_running", "threads",
                             "log_format", "tls_cert", "grace_period_s", "max_batch_tokens"};
    for (unsigned i = 0; i < sizeof restart / sizeof restart[0]; i++)
        ck_assert_msg(!capmoe_config_is_live(restart[i]), "%s should need a restart", restart[i]);
    ck_assert(!capmoe_config_is_live("no_such_option"));

    capmoe_config a, b;
    capmoe_config_action act;
    capmoe_error e;
    ck_assert_int_eq(load(&a, NULL, &act, &e, "--api-key", "old-secret", NULL), 0);
    ck_assert_int_eq(load(&b, NULL, &act, &e, "--api-key", "new-secret", "--policy", "reroute",
                          "--capacity-factor", "auto", "--drop-budget", "0.05", "--ep-ranks",
                          "2", "--log-level", "warn", NULL),
                     0);
    diff_rec r = {0};
    ck_assert_int_eq(capmoe_config_diff(&a, &a, record_diff, &r), 0);
    ck_assert_int_eq(r.n, 0);
    ck_assert_int_eq(capmoe_config_diff(&a, &b, record_diff, &r), 6);
    ck_assert_str_eq(r.line[0], "live api_key (set)->(set)");
    ck_assert_str_eq(r.line[1], "live policy none->reroute");
    ck_assert_str_eq(r.line[2], "live capacity_factor 1->auto");
    ck_assert_str_eq(r.line[3], "restart ep_ranks 1->2");
    ck_assert_str_eq(r.line[4], "live drop_budget 0.01->0.05");
    ck_assert_str_eq(r.line[5], "live log_level info->warn");
    for (int i = 0; i < r.n; i++) ck_assert_ptr_null(strstr(r.line[i], "secret"));
    ck_assert_int_eq(capmoe_config_copy_option(&a, &b, "capacity_factor"), 0);
    ck_assert(a.capacity_auto == 1);
    ck_assert_int_eq(capmoe_config_copy_option(&a, &b, "api_key"), 0);
    ck_assert_str_eq(a.api_key, "new-secret");
    ck_assert_int_eq(capmoe_config_copy_option(&a, &b, "log_level"), 0);
    ck_assert_int_eq(a.log_level, CAPMOE_LOG_WARN);
    ck_assert_int_eq(capmoe_config_copy_option(&a, &b, "bogus"), -1);
    ck_assert_int_eq(capmoe_config_diff(&a, &b, NULL, NULL), 3);
    capmoe_config_free(&a);
    capmoe_config_free(&b);
}
END_TEST

/* The whole configuration against a model, before the server listens. */
START_TEST(test_check_model) {
    capmoe_hfconfig hc;
    memset(&hc, 0, sizeof hc);
    hc.n_experts = 8;
    hc.n_moe_layers = 2;
    hc.max_position_embeddings = 512;
    capmoe_config c;
    capmoe_config_defaults(&c);
    capmoe_error e;
    int ok_ranks[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++) {
        c.ep_ranks = ok_ranks[i];
        ck_assert_msg(capmoe_config_check_model(&c, &hc, &e) == 0, "R=%d: %s", ok_ranks[i], e.msg);
    }
    int bad_ranks[] = {3, 5, 6, 16};
    for (int i = 0; i < 4; i++) {
        c.ep_ranks = bad_ranks[i];
        ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), -1);
        char want[64];
        snprintf(want, sizeof want, "R=%d ranks cannot split the model's E=8 experts", bad_ranks[i]);
        ck_assert_msg(strstr(e.msg, want), "%s", e.msg);
        ck_assert_ptr_nonnull(strstr(e.msg, "possible: 1, 2, 4, 8"));
    }
    c.ep_ranks = 2;
    c.context = 513;
    ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "context: 513 exceeds the model's max_position_embeddings (512)"));
    c.context = 512;
    ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), 0);
    /* a dense model has no experts to split */
    hc.n_moe_layers = 0;
    c.ep_ranks = 3;
    ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), 0);
    capmoe_config_free(&c);
}
END_TEST

/* The memory-bound dispatch options: flags, environment, file; live on SIGHUP. */
START_TEST(test_regime_options) {
    capmoe_config c;
    capmoe_config_action act;
    capmoe_error e;
    capmoe_dispatch_cfg d;
    ck_assert_int_eq(load(&c, NULL, &act, &e, NULL), 0);
    capmoe_config_dispatch(&c, &d);
    ck_assert_int_eq(d.decode_policy, -1); /* default: off */
    ck_assert_int_eq(d.regime_auto, 1);
    ck_assert_int_eq(d.piggyback_k0, 0);
    capmoe_config_free(&c);
    char *env[] = {"CAPMOE_DECODE_POLICY=piggyback", "CAPMOE_PIGGYBACK_K0=3", NULL};
    int rc = load(&c, env, &act, &e, "--policy", "drop", "--regime-tokens", "24", NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    capmoe_config_dispatch(&c, &d);
    ck_assert_int_eq(d.policy, CAPMOE_POLICY_DROP);
    ck_assert_int_eq(d.decode_policy, CAPMOE_POLICY_PIGGYBACK);
    ck_assert_int_eq(d.regime_tokens, 24);
    ck_assert_int_eq(d.regime_auto, 0);
    ck_assert_int_eq(d.piggyback_k0, 3);
    capmoe_config_free(&c);
    char *path = write_tmp("{\"decode_policy\": \"none\", \"regime_tokens\": 8, \"policy\": \"piggyback\"}");
    rc = load(&c, NULL, &act, &e, "--config", path, NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    capmoe_config_dispatch(&c, &d);
    ck_assert_int_eq(d.decode_policy, CAPMOE_POLICY_NONE);
    ck_assert_int_eq(d.policy, CAPMOE_POLICY_PIGGYBACK);
    ck_assert_int_eq(d.regime_tokens, 8);
    char *js = capmoe_config_to_json(&c);
    ck_assert_ptr_nonnull(strstr(js, "\"regime_tokens\":\t8"));
    free(js);
    capmoe_config_free(&c);
    unlink(path);
    free(path);
    expect_error(NULL, "--regime-tokens", "--regime-tokens", "-1", NULL);
    expect_error(NULL, "--regime-tokens", "--regime-tokens", "often", NULL);
    expect_error(NULL, "--decode-policy", "--decode-policy", "fast", NULL);
    expect_error(NULL, "--piggyback-k0", "--piggyback-k0", "65", NULL);
    ck_assert(capmoe_config_is_live("decode_policy"));
    ck_assert(capmoe_config_is_live("regime_tokens"));
    ck_assert(capmoe_config_is_live("piggyback_k0"));
    /* against the model: k0 above its k */
    capmoe_hfconfig hc;
    memset(&hc, 0, sizeof hc);
    hc.n_experts = 8;
    hc.n_moe_layers = 2;
    hc.top_k = 2;
    hc.max_position_embeddings = 512;
    capmoe_config_defaults(&c);
    c.decode_policy = 1 + CAPMOE_POLICY_PIGGYBACK;
    c.piggyback_k0 = 2;
    ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), 0);
    c.piggyback_k0 = 3;
    ck_assert_int_eq(capmoe_config_check_model(&c, &hc, &e), -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "piggyback_k0: 3"));
    capmoe_config_free(&c);
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
    tcase_add_test(tc, test_log_tls_cors_options);
    tcase_add_test(tc, test_cors_policy);
    tcase_add_test(tc, test_reload_diff);
    tcase_add_test(tc, test_check_model);
    tcase_add_test(tc, test_regime_options);
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
