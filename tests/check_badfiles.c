/* check_badfiles.c - hostile files where a model directory expects plain
 * ones (issue 17): a FIFO or a device as config.json, tokenizer.json,
 * tokenizer_config.json or a safetensors shard must be refused by name at
 * once (opening a FIFO used to block forever; /dev/zero was read until
 * memory ran out), files over the size limit are refused, and a
 * tokenizer.json naming ids that are not token ids (negative, fractional,
 * past the vocabulary) in its post-processor is refused at load. Every test
 * runs with a timeout (Check's default), so a blocking open fails it. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capmoe/chat.h"
#include "capmoe/common.h"
#include "capmoe/hfconfig.h"
#include "capmoe/safetensors.h"
#include "capmoe/tokenizer.h"

static char dir[256];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/capmoe-bad-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static const char *path_of(const char *name) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *name, const char *text) {
    FILE *f = fopen(path_of(name), "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void fifo(const char *name) { ck_assert_int_eq(mkfifo(path_of(name), 0600), 0); }

static void link_to(const char *name, const char *target) {
    ck_assert_int_eq(symlink(target, path_of(name)), 0);
}

#define HAS(msg, want) ck_assert_msg(strstr((msg), (want)) != NULL, "'%s' lacks '%s'", (msg), (want))

START_TEST(test_read_file_kinds) {
    capmoe_error err = {{0}};
    fifo("pipe");
    ck_assert_ptr_null(capmoe_read_file(path_of("pipe"), NULL, &err));
    HAS(err.msg, "pipe: is a FIFO, not a regular file");
    link_to("zero", "/dev/zero");
    ck_assert_ptr_null(capmoe_read_file(path_of("zero"), NULL, &err));
    HAS(err.msg, "zero: is a character device, not a regular file");
    ck_assert_ptr_null(capmoe_read_file(dir, NULL, &err));
    HAS(err.msg, "is a directory, not a regular file");
    write_file("big", "0123456789");
    ck_assert_ptr_null(capmoe_read_file_max(path_of("big"), NULL, 9, &err));
    HAS(err.msg, "big: 10 bytes, over the limit of 9 bytes for this file");
    size_t len = 0;
    char *t = capmoe_read_file_max(path_of("big"), &len, 10, &err);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(len, 10);
    ck_assert_str_eq(t, "0123456789");
    free(t);
    /* a file whose size stat does not tell (procfs) is still bounded */
    ck_assert_ptr_null(capmoe_read_file_max("/proc/self/maps", NULL, 16, &err));
    HAS(err.msg, "over the limit of 16 bytes");
    t = capmoe_read_file("/proc/self/stat", &len, &err);
    ck_assert_msg(t != NULL && len > 0, "%s", err.msg);
    free(t);
}
END_TEST

START_TEST(test_model_files_fifo) {
    capmoe_error err = {{0}};
    capmoe_hfconfig hc;
    fifo("config.json");
    ck_assert_int_eq(capmoe_hfconfig_load(&hc, dir, &err), -1);
    HAS(err.msg, "config.json: is a FIFO, not a regular file");
    capmoe_tokenizer *tok = NULL;
    fifo("tokenizer.json");
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, dir, &err), -1);
    HAS(err.msg, "tokenizer.json: is a FIFO, not a regular file");
    capmoe_st *st = NULL;
    fifo("model.safetensors");
    ck_assert_int_eq(capmoe_st_open_dir(&st, dir, &err), -1);
    HAS(err.msg, "model.safetensors: not a regular file");
    unlink(path_of("model.safetensors"));
    write_file("model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"model-00001-of-00001.safetensors\"}}");
    fifo("model-00001-of-00001.safetensors");
    ck_assert_int_eq(capmoe_st_open_dir(&st, dir, &err), -1);
    HAS(err.msg, "model-00001-of-00001.safetensors: not a regular file");
    /* a good tokenizer.json, a FIFO as tokenizer_config.json */
    unlink(path_of("tokenizer.json"));
    write_file("tokenizer.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}");
    fifo("tokenizer_config.json");
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, dir, &err), -1);
    HAS(err.msg, "tokenizer_config.json: is a FIFO, not a regular file");
    /* the chat loader does not block on it either (it reads only regular files) */
    capmoe_chat *chat = NULL;
    if (capmoe_chat_load(&chat, dir, NULL, &err) == 0) capmoe_chat_free(chat);
}
END_TEST

START_TEST(test_model_files_dev_zero) {
    capmoe_error err = {{0}};
    capmoe_hfconfig hc;
    link_to("config.json", "/dev/zero");
    ck_assert_int_eq(capmoe_hfconfig_load(&hc, dir, &err), -1);
    HAS(err.msg, "config.json: is a character device, not a regular file");
    link_to("tokenizer.json", "/dev/urandom");
    capmoe_tokenizer *tok = NULL;
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, dir, &err), -1);
    HAS(err.msg, "tokenizer.json: is a character device, not a regular file");
    link_to("model.safetensors", "/dev/zero");
    capmoe_st *st = NULL;
    ck_assert_int_eq(capmoe_st_open_dir(&st, dir, &err), -1);
    HAS(err.msg, "model.safetensors: not a regular file");
}
END_TEST

/* tokenizer.json with a post-processor: BERT-style pairs or a template. */
static int load_with_post(const char *post, capmoe_error *err) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<s>\":3},"
             "\"merges\":[\"a b\"]},\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}],"
             "\"post_processor\":%s}", post);
    write_file("tokenizer.json", text);
    capmoe_tokenizer *tok = NULL;
    int rc = capmoe_tokenizer_load_file(&tok, path_of("tokenizer.json"), err);
    if (rc == 0) {
        int32_t *ids = NULL;
        int n = 0;
        ck_assert_int_eq(capmoe_tokenizer_encode(tok, "ab", 2, 1, &ids, &n, err), 0);
        for (int i = 0; i < n; i++) ck_assert_int_ge(ids[i], 0);
        free(ids);
        capmoe_tokenizer_free(tok);
    }
    return rc;
}

START_TEST(test_tokenizer_ids_validated) {
    capmoe_error err = {{0}};
    ck_assert_int_eq(load_with_post("{\"type\":\"BertProcessing\",\"cls\":[\"\",-7],\"sep\":[\"<s>\",3]}",
                                    &err), -1);
    HAS(err.msg, "BertProcessing: the id of \"cls\" (-7) is not a token id");
    ck_assert_int_eq(load_with_post("{\"type\":\"RobertaProcessing\",\"cls\":[\"<s>\",3],\"sep\":[\"\",1.5]}",
                                    &err), -1);
    HAS(err.msg, "RobertaProcessing: the id of \"sep\" (1.5) is not a token id");
    ck_assert_int_eq(load_with_post("{\"type\":\"BertProcessing\",\"cls\":[\"<s>\",3],\"sep\":[\"\",1e20]}",
                                    &err), -1);
    HAS(err.msg, "the id of \"sep\" (1e+20) is not a token id");
    ck_assert_int_eq(load_with_post("{\"type\":\"BertProcessing\",\"cls\":[\"<s>\",3],\"sep\":[\"x\",4]}",
                                    &err), -1);
    HAS(err.msg, "post_processor id 4 is not in the vocabulary (ids 0..3)");
    const char *tmpl = "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
                       "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
                       "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[%s],\"tokens\":[\"<s>\"]}}}";
    char buf[512];
    snprintf(buf, sizeof buf, tmpl, "-7");
    ck_assert_int_eq(load_with_post(buf, &err), -1);
    HAS(err.msg, "post_processor special token \"<s>\": id -7 is not a token id");
    snprintf(buf, sizeof buf, tmpl, "2.5");
    ck_assert_int_eq(load_with_post(buf, &err), -1);
    HAS(err.msg, "id 2.5 is not a token id");
    snprintf(buf, sizeof buf, tmpl, "3");
    ck_assert_msg(load_with_post(buf, &err) == 0, "%s", err.msg);
    ck_assert_msg(load_with_post("{\"type\":\"BertProcessing\",\"cls\":[\"<s>\",3],\"sep\":[\"a\",0]}",
                                 &err) == 0, "%s", err.msg);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("badfiles");
    TCase *tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_read_file_kinds);
    tcase_add_test(tc, test_model_files_fifo);
    tcase_add_test(tc, test_model_files_dev_zero);
    tcase_add_test(tc, test_tokenizer_ids_validated);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
