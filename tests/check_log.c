/* check_log.c - tests of server/log.c: the text and JSON record formats
 * (timestamp, level, message, fields, quoting and escaping, one line per
 * record whatever the message holds), level filtering and live level
 * changes, whole records under concurrent writers, NULL logger. */
#include <check.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/log.h"

/* 2026-11-01T09:30:12.345Z */
static const double T0 = 1793525412.345;

START_TEST(test_text_format) {
    char buf[512];
    capmoe_log_field f[] = {CAPMOE_LOG_STR("path", "/v1/completions"), CAPMOE_LOG_INT("status", 200),
                            CAPMOE_LOG_NUM("duration_ms", 1.5), CAPMOE_LOG_STR("empty", ""),
                            CAPMOE_LOG_STR("agent", "curl/8 \"x\"=y"), CAPMOE_LOG_STR("none", NULL)};
    int n = capmoe_log_format_record(buf, sizeof buf, CAPMOE_LOG_TEXT, CAPMOE_LOG_INFO, T0,
                                     "request", f, 6);
    ck_assert_int_eq(n, (int)strlen(buf));
    ck_assert_str_eq(buf, "2026-11-01T09:30:12.345Z info  request path=/v1/completions status=200 "
                          "duration_ms=1.5 empty=\"\" agent=\"curl/8 \\\"x\\\"=y\" none=-");
    capmoe_log_format_record(buf, sizeof buf, CAPMOE_LOG_TEXT, CAPMOE_LOG_ERROR, T0,
                             "two\nlines\r\n\n", NULL, 0);
    ck_assert_str_eq(buf, "2026-11-01T09:30:12.345Z error two\\nlines");
    ck_assert_ptr_null(strchr(buf, '\n'));
}
END_TEST

START_TEST(test_json_format) {
    char buf[512];
    capmoe_log_field f[] = {CAPMOE_LOG_STR("id", "a\"b\\c\x01"), CAPMOE_LOG_INT("n", -3),
                            CAPMOE_LOG_NUM("r", 0.25), CAPMOE_LOG_STR("x", NULL),
                            CAPMOE_LOG_STR("u", "caf\xC3\xA9")};
    capmoe_log_format_record(buf, sizeof buf, CAPMOE_LOG_JSON, CAPMOE_LOG_WARN, T0,
                             "libmicrohttpd said \"no\"\n", f, 5);
    ck_assert_ptr_null(strchr(buf, '\n'));
    cJSON *o = cJSON_Parse(buf);
    ck_assert_msg(o != NULL, "not JSON: %s", buf);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "time")->valuestring, "2026-11-01T09:30:12.345Z");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "level")->valuestring, "warn");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "msg")->valuestring, "libmicrohttpd said \"no\"");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "id")->valuestring, "a\"b\\c\x01");
    ck_assert(cJSON_GetObjectItem(o, "n")->valuedouble == -3);
    ck_assert(cJSON_GetObjectItem(o, "r")->valuedouble == 0.25);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "x")));
    ck_assert_str_eq(cJSON_GetObjectItem(o, "u")->valuestring, "caf\xC3\xA9");
    cJSON_Delete(o);
}
END_TEST

/* A record longer than the buffer reports the length it needs. */
START_TEST(test_truncation) {
    char small[16];
    char big[4096];
    int need = capmoe_log_format_record(small, sizeof small, CAPMOE_LOG_TEXT, CAPMOE_LOG_INFO, T0,
                                        "a message longer than sixteen bytes", NULL, 0);
    ck_assert_int_eq(strlen(small), 15);
    ck_assert_int_eq(capmoe_log_format_record(big, sizeof big, CAPMOE_LOG_TEXT, CAPMOE_LOG_INFO, T0,
                                              "a message longer than sixteen bytes", NULL, 0),
                     need);
    ck_assert_int_eq((int)strlen(big), need);
}
END_TEST

static char *read_all(FILE *f) {
    fflush(f);
    long n = ftell(f);
    rewind(f);
    char *s = calloc(1, (size_t)n + 1);
    ck_assert_int_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    return s;
}

START_TEST(test_levels) {
    FILE *f = tmpfile();
    capmoe_log *log = capmoe_log_new(f, CAPMOE_LOG_TEXT, CAPMOE_LOG_WARN);
    ck_assert(!capmoe_log_enabled(log, CAPMOE_LOG_INFO));
    ck_assert(capmoe_log_enabled(log, CAPMOE_LOG_ERROR));
    capmoe_log_info(log, "hidden %d", 1);
    capmoe_log_warn(log, "shown %d", 2);
    capmoe_log_set_level(log, CAPMOE_LOG_DEBUG); /* a reload */
    ck_assert_int_eq(capmoe_log_get_level(log), CAPMOE_LOG_DEBUG);
    capmoe_log_debug(log, "now shown %d", 3);
    /* a message longer than the stack buffers */
    char *longmsg = malloc(10000);
    memset(longmsg, 'x', 9999);
    longmsg[9999] = '\0';
    capmoe_log_error(log, "%s", longmsg);
    char *s = read_all(f);
    ck_assert_ptr_null(strstr(s, "hidden"));
    ck_assert_ptr_nonnull(strstr(s, "warn  shown 2\n"));
    ck_assert_ptr_nonnull(strstr(s, "debug now shown 3\n"));
    ck_assert_ptr_nonnull(strstr(s, longmsg));
    int lines = 0;
    for (char *p = s; *p; p++) lines += *p == '\n';
    ck_assert_int_eq(lines, 3);
    free(s);
    free(longmsg);
    capmoe_log_free(log);
    fclose(f);
    /* NULL logger: nothing, no crash */
    capmoe_log_info(NULL, "x");
    capmoe_log_set_level(NULL, CAPMOE_LOG_INFO);
    ck_assert(!capmoe_log_enabled(NULL, CAPMOE_LOG_ERROR));
    capmoe_log_free(NULL);
}
END_TEST

#define WRITERS 4
#define RECORDS 2000

static void *writer(void *arg) {
    capmoe_log *log = arg;
    capmoe_log_field f = CAPMOE_LOG_STR("pad", "0123456789012345678901234567890123456789");
    for (int i = 0; i < RECORDS; i++) capmoe_log_fields(log, CAPMOE_LOG_INFO, &f, 1, "record %d", i);
    return NULL;
}

/* Records of several threads never interleave: every line parses. */
START_TEST(test_concurrent_records) {
    FILE *f = tmpfile();
    capmoe_log *log = capmoe_log_new(f, CAPMOE_LOG_JSON, CAPMOE_LOG_INFO);
    pthread_t t[WRITERS];
    for (int i = 0; i < WRITERS; i++) pthread_create(&t[i], NULL, writer, log);
    for (int i = 0; i < WRITERS; i++) pthread_join(t[i], NULL);
    char *s = read_all(f);
    int n = 0;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n"), n++) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o != NULL, "line %d is not a whole record: %s", n, line);
        cJSON_Delete(o);
    }
    ck_assert_int_eq(n, WRITERS * RECORDS);
    free(s);
    capmoe_log_free(log);
    fclose(f);
}
END_TEST

int main(void) {
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, test_text_format);
    tcase_add_test(tc, test_json_format);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_levels);
    tcase_add_test(tc, test_concurrent_records);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
