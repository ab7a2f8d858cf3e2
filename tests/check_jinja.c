/* check_jinja.c - the Jinja interpreter's API (core/jinja.c): compile errors
 * that name the construct and its line and column, render errors, the limits
 * of one render, hostile input, JSON variables, concurrent renders of one
 * template. What each construct renders is checked against Jinja2 itself by
 * tests/t_jinja_parity.sh; the expectations written here are the few that
 * need no reference (errors, limits) or are Jinja2's documented behaviour. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/jinja.h"

static capmoe_jinja *compile_ok(const char *src) {
    capmoe_jinja *t = NULL;
    capmoe_error err;
    err.msg[0] = '\0';
    ck_assert_msg(capmoe_jinja_compile(&t, src, strlen(src), "t", &err) == 0, "%s: %s", src, err.msg);
    return t;
}

/* Renders src with vars; returns the malloc'd output or NULL (error in *err). */
static char *render(const char *src, const char *vars, const capmoe_jinja_opts *opts, capmoe_error *err) {
    capmoe_jinja *t = compile_ok(src);
    char *out = NULL;
    err->msg[0] = '\0';
    int rc = capmoe_jinja_render(t, vars, opts, &out, NULL, err);
    capmoe_jinja_free(t);
    if (rc != 0) ck_assert_ptr_null(out);
    return rc == 0 ? out : NULL;
}

static void expect(const char *src, const char *vars, const char *want) {
    capmoe_error err;
    char *out = render(src, vars, NULL, &err);
    ck_assert_msg(out != NULL, "%s: %s", src, err.msg);
    ck_assert_msg(!strcmp(out, want), "%s:\n got  \"%s\"\n want \"%s\"", src, out, want);
    free(out);
}

/* The render fails and its message holds every one of the needles. */
static void expect_fail(const char *src, const char *vars, const char *n1, const char *n2) {
    capmoe_error err;
    char *out = render(src, vars, NULL, &err);
    ck_assert_msg(out == NULL, "%s: rendered \"%s\"", src, out ? out : "");
    ck_assert_msg(strstr(err.msg, n1) && (!n2 || strstr(err.msg, n2)), "%s: %s", src, err.msg);
}

static void expect_compile_fail(const char *src, const char *n1, const char *n2) {
    capmoe_jinja *t = (capmoe_jinja *)1;
    capmoe_error err;
    ck_assert_int_eq(capmoe_jinja_compile(&t, src, strlen(src), "tmpl.jinja", &err), -1);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "tmpl.jinja") && strstr(err.msg, n1) && (!n2 || strstr(err.msg, n2)), "%s: %s",
                  src, err.msg);
}

START_TEST(test_basics) {
    expect("Hello {{ name }}!", "{\"name\": \"w\\u00f6rld\"}", "Hello w\xc3\xb6rld!");
    expect("{{ x }}|{{ y }}", "{\"x\": 1, \"y\": 1.0}", "1|1.0"); /* json.loads: int and float */
    expect("{{ missing }}", NULL, "");
    expect("{{ missing }}", "", "");
    expect("{% for m in messages %}{{ loop.index }}{{ m.role }}{% endfor %}",
           "{\"messages\": [{\"role\": \"a\"}, {\"role\": \"b\"}]}", "1a2b");
    /* trim_blocks and lstrip_blocks, as transformers configures Jinja2 */
    expect("a\n  {% if true %}\n  b\n  {% endif %}\nc", NULL, "a\n  b\nc");
    /* one trailing newline of the template is dropped */
    expect("x\n", NULL, "x");
    expect("{{ {'k': 'é'}|tojson }}", NULL, "{\"k\": \"\xc3\xa9\"}");
}
END_TEST

START_TEST(test_compile_errors) {
    expect_compile_fail("{% if x %}", "line 1", "endif");
    expect_compile_fail("line1\n  {{ x | nosuch }}", "line 2, column 10", "no filter named 'nosuch'");
    expect_compile_fail("{{ x is nosuch }}", "no test named 'nosuch'", NULL);
    expect_compile_fail("{% include 'a' %}", "line 1, column 4", "include");
    expect_compile_fail("{% extends 'a' %}", "extends", NULL);
    expect_compile_fail("{% for x in y recursive %}{% endfor %}", "recursive", NULL);
    expect_compile_fail("{{ x|groupby('a') }}", "groupby", "not supported");
    expect_compile_fail("{{ x|random }}", "random", "not supported");
    expect_compile_fail("{% break %}", "break", "outside");
    expect_compile_fail("{{ 'abc }}", "unterminated string", NULL);
    expect_compile_fail("{# never closed", "comment", NULL);
    expect_compile_fail("{% raw %}x", "endraw", NULL);
    expect_compile_fail("{{ f(*a) }}", "*args", NULL);
    expect_compile_fail("{{ 99999999999999999999 }}", "64-bit", NULL);
    expect_compile_fail("{{ '\\x00' }}", "NUL", NULL);
    expect_compile_fail("{{ x @ y }}", "unexpected character '@'", NULL);
    expect_compile_fail("{% endfor %}", "endfor", NULL);
    expect_compile_fail("{{ (1 ]}}", "unexpected ']'", NULL);
    /* bytes that are not UTF-8, and NUL bytes */
    capmoe_jinja *t;
    capmoe_error err;
    ck_assert_int_eq(capmoe_jinja_compile(&t, "ab\xff", 3, "bad", &err), -1);
    ck_assert_msg(strstr(err.msg, "byte 2") && strstr(err.msg, "UTF-8"), "%s", err.msg);
    ck_assert_int_eq(capmoe_jinja_compile(&t, "a\0b", 3, "bad", &err), -1);
    ck_assert_msg(strstr(err.msg, "NUL"), "%s", err.msg);
    ck_assert_int_eq(capmoe_jinja_compile(&t, NULL, 0, "bad", &err), -1);
    /* deep nesting is refused, not a stack overflow */
    size_t n = 5000;
    char *deep = malloc(2 * n + 8);
    char *p = deep;
    p += sprintf(p, "{{ ");
    for (size_t i = 0; i < n; i++) *p++ = '(';
    *p++ = '1';
    for (size_t i = 0; i < n; i++) *p++ = ')';
    sprintf(p, " }}");
    ck_assert_int_eq(capmoe_jinja_compile(&t, deep, strlen(deep), "deep", &err), -1);
    ck_assert_msg(strstr(err.msg, "nested"), "%s", err.msg);
    free(deep);
}
END_TEST

START_TEST(test_render_errors) {
    expect_fail("x\n{{ raise_exception('roles must alternate') }}", NULL, "line 2, column",
                "raise_exception: roles must alternate");
    expect_fail("{{ a.b }}", NULL, "'a' is undefined", NULL);
    expect_fail("{{ m.c.d }}", "{\"m\": {}}", "'dict object' has no attribute 'c'", NULL);
    expect_fail("{{ 1 + 'a' }}", NULL, "unsupported operand type(s) for +: 'int' and 'str'", NULL);
    expect_fail("{{ xs.append(1) }}", "{\"xs\": []}", "unsafe", NULL);
    expect_fail("{{ 9223372036854775807 + 1 }}", NULL, "integer overflow", "64-bit");
    expect_fail("{{ xs|map('string') }}", "{\"xs\": [1]}", "generator", NULL);
    expect_fail("{{ 1 // 0 }}", NULL, "division or modulo by zero", NULL);
    expect_fail("{{ x|tojson }}", NULL, "not JSON serializable", NULL);
    expect_fail("{{ x }}", "[1, 2]", "must be a JSON object", NULL);
    expect_fail("{{ x }}", "{\"x\": }", "invalid JSON at byte 6", NULL);
    expect_fail("{{ x }}", "{\"x\": \"\\u0000\"}", "NUL", NULL);
    expect_fail("{{ x }}", "{\"x\": 123456789012345678901234567890}", "64-bit", NULL);
}
END_TEST

START_TEST(test_limits) {
    capmoe_error err;
    capmoe_jinja_limits lim = {0};
    capmoe_jinja_opts opts = {&lim, 0};
    lim.max_output = 100;
    char *out = render("{% for i in range(50) %}xyz{% endfor %}", NULL, &opts, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "output exceeds 100 bytes"), "%s", err.msg);
    lim.max_output = 0;
    lim.max_steps = 1000;
    out = render("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", NULL, &opts, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "too many steps"), "%s", err.msg);
    lim.max_steps = 0;
    lim.max_depth = 10;
    out = render("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", NULL, &opts, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "nested deeper than 10"), "%s", err.msg);
    lim.max_depth = 0;
    lim.max_memory = 1 << 20;
    out = render("{% set ns = namespace(s='x') %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 NULL, &opts, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "memory") || strstr(err.msg, "output limit"), "%s", err.msg);
    /* the defaults stop a runaway template too */
    out = render("{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}", NULL, NULL, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "nested deeper"), "%s", err.msg);
    out = render("{{ 'x' * 100000000000 }}", NULL, NULL, &err);
    ck_assert_ptr_null(out);
    out = render("{{ range(1000000)|list|length }}", NULL, NULL, &err);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "MAX_RANGE"), "%s", err.msg);
}
END_TEST

START_TEST(test_strftime_and_uses) {
    capmoe_error err;
    capmoe_jinja_opts opts = {NULL, 86400LL * 365}; /* 1971-01-01 */
    setenv("TZ", "UTC", 1);
    char *out = render("{{ strftime_now('%Y-%m-%d') }}", NULL, &opts, &err);
    ck_assert_msg(out != NULL, "%s", err.msg);
    ck_assert_str_eq(out, "1971-01-01");
    free(out);
    capmoe_jinja *t = compile_ok("{% if tools %}{{ tools|length }}{% endif %}{{ messages[0].content }}");
    ck_assert(capmoe_jinja_uses(t, "tools"));
    ck_assert(capmoe_jinja_uses(t, "messages"));
    ck_assert(!capmoe_jinja_uses(t, "documents"));
    capmoe_jinja_free(t);
    capmoe_jinja_free(NULL);
}
END_TEST

typedef struct job {
    const capmoe_jinja *t;
    int ok;
} job;

static void *worker(void *arg) {
    job *j = arg;
    j->ok = 1;
    for (int i = 0; i < 200; i++) {
        char vars[128], want[256], *out = NULL;
        capmoe_error err;
        snprintf(vars, sizeof vars, "{\"n\": %d, \"name\": \"\\u00e9t\\u00e9 %d\"}", i, i);
        int digits = i < 10 ? 1 : i < 100 ? 2 : 3;
        snprintf(want, sizeof want, "%d:\xc3\xa9t\xc3\xa9 %d|%d|\xc3\x89T\xc3\x89 %d", i, i, 4 + digits + 4, i);
        if (capmoe_jinja_render(j->t, vars, NULL, &out, NULL, &err) != 0 || strcmp(out, want) != 0) j->ok = 0;
        free(out);
    }
    return NULL;
}

/* One compiled template rendered by several threads at once. */
START_TEST(test_concurrent_renders) {
    capmoe_jinja *t = compile_ok("{{ n }}:{{ name }}|{{ name|length + 4 }}|{{ name|upper }}");
    pthread_t th[4];
    job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i].t = t;
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert(jobs[i].ok);
    }
    capmoe_jinja_free(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("jinja");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_basics);
    tcase_add_test(tc, test_compile_errors);
    tcase_add_test(tc, test_render_errors);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_strftime_and_uses);
    tcase_add_test(tc, test_concurrent_renders);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
