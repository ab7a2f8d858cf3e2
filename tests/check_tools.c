/* check_tools.c - tests of function calling's template forms
 * (server/api/api_tools.c, server/api/api_toolcalls.c):
 *   - the form probed from real templates (tests/jinja/templates: Qwen3,
 *     Hermes, Mistral v0.3, Llama 3.2, DeepSeek-V3, and ones without tools);
 *   - tool calls read back from texts in every form, including the text the
 *     real template itself writes for an assistant's calls (the messages
 *     adapted to the template where it needs it), and malformed ones (which
 *     stay content);
 *   - tool_choice required / named per form: random walks over the default
 *     model's vocabulary under the call grammar (random tokens, several seeds),
 *     every finished text read back as calls whose arguments validate. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "api_json.h"
#include "capmoe/chat.h"
#include "capmoe/grammar.h"
#include "capmoe/sample.h"

#define WEATHER "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":" \
    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":12}," \
    "\"unit\":{\"type\":\"string\",\"enum\":[\"c\",\"f\"]}},\"required\":[\"city\",\"unit\"]," \
    "\"additionalProperties\":false}}}"
#define TIME "{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":" \
    "{\"type\":\"object\",\"properties\":{\"zone\":{\"type\":[\"string\",\"null\"]}}," \
    "\"required\":[\"zone\"],\"additionalProperties\":false}}}"
#define TOOLS "[" WEATHER "," TIME "]"

static capmoe_chat *load_chat(const char *file) {
    capmoe_chat *c = NULL;
    capmoe_error err;
    char path[256];
    snprintf(path, sizeof path, "tests/jinja/templates/%s", file);
    ck_assert_msg(capmoe_chat_load(&c, "config/model", path, &err) == 0, "%s: %s", file, err.msg);
    return c;
}

START_TEST(test_detect) {
    static const struct { const char *file; capmoe_api_tool_form form; } cases[] = {
        {"npm_qwen3.jinja", CAPMOE_TOOL_FORM_HERMES},
        {"card_hermes_tool_use.jinja", CAPMOE_TOOL_FORM_HERMES},
        {"card_mistral_v3_tools.jinja", CAPMOE_TOOL_FORM_MISTRAL},
        {"card_llama3_2_tools.jinja", CAPMOE_TOOL_FORM_LLAMA3},
        {"npm_deepseek_v3.jinja", CAPMOE_TOOL_FORM_DEEPSEEK},
        {"npm_llama3.jinja", CAPMOE_TOOL_FORM_UNKNOWN},
        {"card_phi35_moe.jinja", CAPMOE_TOOL_FORM_UNKNOWN},
        {"npm_gemma3.jinja", CAPMOE_TOOL_FORM_UNKNOWN},
        {"card_gpt_oss_style.jinja", CAPMOE_TOOL_FORM_UNKNOWN}, /* harmony: not parsed */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_api api;
        memset(&api, 0, sizeof api);
        api.chat = load_chat(cases[i].file);
        capmoe_api_tool_form f = capmoe_api_tools_form(&api);
        ck_assert_msg(f == cases[i].form, "%s: form %s, want %s", cases[i].file,
                      capmoe_api_tool_form_name(f), capmoe_api_tool_form_name(cases[i].form));
        ck_assert_int_eq(capmoe_api_tools_hermes(&api), cases[i].form == CAPMOE_TOOL_FORM_HERMES);
        capmoe_chat_free(api.chat);
    }
    ck_assert_int_eq(capmoe_api_tool_form_of(NULL), CAPMOE_TOOL_FORM_UNKNOWN);
    ck_assert_int_eq(capmoe_api_tool_form_of("no probe here <tool_call>"), CAPMOE_TOOL_FORM_UNKNOWN);
}
END_TEST

static void req_init(capmoe_api_request *r, capmoe_api_tool_form form) {
    memset(r, 0, sizeof *r);
    r->tools_json = strdup(TOOLS);
    r->n_tools = 2;
    r->tool_form = form;
    r->parallel_tool_calls = 1;
}

static void req_done(capmoe_api_request *r) {
    free(r->tools_json);
    free(r->tool_name);
    capmoe_grammar_free(r->grammar);
}

/* Streamed in pieces of `step` bytes (capmoe_api_tool_stream_step), text
 * assembles (content concatenated, calls by index) into what
 * capmoe_api_tool_calls reads from it whole (content: the text when there
 * are no calls); *early: the bytes of content sent before the end, *early_calls
 * the calls. */
static void stream_pieces(const capmoe_api_request *r, const char *text, size_t step, size_t *early,
                          int *early_calls) {
    char *content = NULL;
    cJSON *want = capmoe_api_tool_calls(r, text, "s", &content);
    const char *want_c = want ? (content ? content : "") : text;
    capmoe_api_tool_stream st = {0};
    buf got = {0};
    buf_add(&got, "", 0);
    cJSON *calls = cJSON_CreateArray();
    size_t n = strlen(text);
    *early = 0;
    *early_calls = 0;
    for (size_t i = step; ; i += step) {
        int final = i >= n;
        char *pre = strndup(text, final ? n : i);
        cJSON *nc = NULL;
        size_t before = got.len;
        ck_assert_int_eq(capmoe_api_tool_stream_step(r, pre, "s", final, &st, &got, &nc), 0);
        int k = 0;
        while (nc && nc->child) {
            cJSON_AddItemToArray(calls, cJSON_DetachItemFromArray(nc, 0));
            k++;
        }
        cJSON_Delete(nc);
        if (!final) {
            *early += got.len - before;
            *early_calls += k;
        }
        free(pre);
        if (final) break;
    }
    ck_assert_msg(!strcmp(got.p, want_c), "%s step %zu: content '%s', want '%s'",
                  capmoe_api_tool_form_name(r->tool_form), step, got.p, want_c);
    ck_assert_int_eq(st.has_calls, want != NULL);
    ck_assert_int_eq(cJSON_GetArraySize(calls), want ? cJSON_GetArraySize(want) : 0);
    if (want) ck_assert_msg(cJSON_Compare(calls, want, 1), "%s step %zu: the calls of '%s' differ",
                            capmoe_api_tool_form_name(r->tool_form), step, text);
    cJSON_Delete(calls);
    cJSON_Delete(want);
    free(content);
    buf_free(&got);
}

static void stream_matches(const capmoe_api_request *r, const char *text) {
    static const size_t steps[] = {1, 2, 3, 5, 8, 13, 100000};
    size_t early;
    int early_calls;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        stream_pieces(r, text, steps[i], &early, &early_calls);
}

/* calls read from text in form: want "name args;name args" (compact JSON),
 * want_content the content (NULL: none); want NULL: no calls. */
static void expect(capmoe_api_tool_form form, const char *text, const char *want,
                   const char *want_content) {
    capmoe_api_request r;
    req_init(&r, form);
    char *content = NULL;
    stream_matches(&r, text);
    cJSON *calls = capmoe_api_tool_calls(&r, text, "abc", &content);
    const char *fname = capmoe_api_tool_form_name(form);
    if (!want) {
        ck_assert_msg(!calls, "%s: '%s' gave calls", fname, text);
        ck_assert_ptr_null(content);
        req_done(&r);
        return;
    }
    ck_assert_msg(calls, "%s: '%s' gave no calls", fname, text);
    char got[1024] = "";
    size_t gl = 0;
    int k = 0;
    for (const cJSON *c = calls->child; c; c = c->next, k++) {
        const cJSON *fn = cJSON_GetObjectItem(c, "function");
        const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
        if (form == CAPMOE_TOOL_FORM_MISTRAL) {
            ck_assert_msg(strlen(id) == 9, "mistral id '%s'", id);
            for (const char *p = id; *p; p++)
                ck_assert(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", *p));
        } else {
            char w[32];
            snprintf(w, sizeof w, "call_abc_%d", k);
            ck_assert_str_eq(id, w);
        }
        ck_assert_str_eq(cJSON_GetObjectItem(c, "type")->valuestring, "function");
        gl += (size_t)snprintf(got + gl, sizeof got - gl, "%s%s %s", k ? ";" : "",
                               cJSON_GetObjectItem(fn, "name")->valuestring,
                               cJSON_GetObjectItem(fn, "arguments")->valuestring);
    }
    ck_assert_msg(!strcmp(got, want), "%s: '%s' gave '%s', want '%s'", fname, text, got, want);
    if (want_content) ck_assert_msg(content && !strcmp(content, want_content), "%s: content '%s'",
                                    fname, content ? content : "(null)");
    else ck_assert_msg(!content, "%s: content '%s'", fname, content);
    free(content);
    cJSON_Delete(calls);
    req_done(&r);
}

START_TEST(test_parse_forms) {
    const capmoe_api_tool_form H = CAPMOE_TOOL_FORM_HERMES, M = CAPMOE_TOOL_FORM_MISTRAL,
                               L = CAPMOE_TOOL_FORM_LLAMA3, D = CAPMOE_TOOL_FORM_DEEPSEEK,
                               U = CAPMOE_TOOL_FORM_UNKNOWN;
    /* Hermes / Qwen (and unknown templates, which are read the same way) */
    expect(H, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": null}}\n</tool_call>",
           "get_time {\"zone\":null}", NULL);
    expect(U, "ok <tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",
           "get_time {}", "ok");
    expect(H, "<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>", NULL, NULL);
    expect(H, "<tool_call>{\"name\": \"get_time\", \"arguments\": {", NULL, NULL);
    /* Mistral: a list, several calls, text before, one object, [ARGS] spelling */
    expect(M, "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}]",
           "get_weather {\"city\":\"Oslo\",\"unit\":\"c\"}", NULL);
    expect(M, "Let me check. [TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}, "
              "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\", \\\"unit\\\": \\\"f\\\"}\"}]",
           "get_time {\"zone\":\"UTC\"};get_weather {\"city\":\"Rome\",\"unit\":\"f\"}", "Let me check.");
    expect(M, "[TOOL_CALLS] {\"name\": \"get_time\", \"arguments\": {}}", "get_time {}", NULL);
    expect(M, "[TOOL_CALLS]get_time[ARGS]{\"zone\": \"CET\"}", "get_time {\"zone\":\"CET\"}", NULL);
    expect(M, "[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {\"zone\": ", NULL, NULL);
    expect(M, "[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"rm\", \"arguments\": {}}]",
           NULL, NULL);
    expect(M, "[TOOL_CALLS] []", NULL, NULL);
    expect(M, "[TOOL_CALLS]", NULL, NULL);
    expect(M, "[TOOL_CALLS]get_time[ARGS]", NULL, NULL);
    expect(M, "no calls", NULL, NULL);
    /* Llama 3.x: the whole answer is the JSON, python_tag optional */
    expect(L, "{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}", "get_time {\"zone\":\"UTC\"}", NULL);
    expect(L, "<|python_tag|>{\"name\": \"get_time\", \"arguments\": {}}", "get_time {}", NULL);
    expect(L, " {\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": "
              "{\"city\": \"x\", \"unit\": \"c\"}}\n",
           "get_time {};get_weather {\"city\":\"x\",\"unit\":\"c\"}", NULL);
    expect(L, "Sure: {\"name\": \"get_time\", \"parameters\": {}}", NULL, NULL);
    expect(L, "{\"name\": \"get_time\", \"parameters\": {}} and more", NULL, NULL);
    expect(L, "{\"name\": \"get_time\", \"parameters\": [1]}", NULL, NULL);
    expect(L, "{\"name\": \"get_time\", \"parameters\": {", NULL, NULL);
    expect(L, "<|python_tag|>brave_search.call(query=\"x\")", NULL, NULL);
    expect(L, "{\"city\": \"Oslo\"}", NULL, NULL);
    /* DeepSeek-V3 (and V3.1's spelling) */
    expect(D, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n"
              "{\"zone\": \"UTC\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
           "get_time {\"zone\":\"UTC\"}", NULL);
    expect(D, "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
              "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"a\", \"unit\": \"f\"}"
              "<｜tool▁call▁end｜>",
           "get_time {};get_weather {\"city\":\"a\",\"unit\":\"f\"}", "Checking.");
    expect(D, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"zone\"",
           NULL, NULL);
    expect(D, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
              "<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>nope\n```json\n{}\n```<｜tool▁call▁end｜>",
           NULL, NULL);
    expect(D, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time {}<｜tool▁call▁end｜>",
           NULL, NULL);
    expect(D, "<｜tool▁calls▁begin｜>", NULL, NULL);
    /* tool_choice none: no calls are read */
    capmoe_api_request r;
    req_init(&r, M);
    r.tool_choice = CAPMOE_TOOLS_NONE;
    char *content = NULL;
    ck_assert_ptr_null(capmoe_api_tool_calls(&r, "[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {}}]",
                                             "x", &content));
    req_done(&r);
}
END_TEST

/* The text a real template writes for an assistant's calls (the rendering
 * with the assistant turn minus the one that ends at the generation prompt)
 * reads back as those calls. */
START_TEST(test_template_roundtrip) {
    static const struct { const char *file; capmoe_api_tool_form form; int adapted; } cases[] = {
        {"npm_qwen3.jinja", CAPMOE_TOOL_FORM_HERMES, 0},
        {"card_mistral_v3_tools.jinja", CAPMOE_TOOL_FORM_MISTRAL, 0},
        {"card_llama3_2_tools.jinja", CAPMOE_TOOL_FORM_LLAMA3, 0},
        {"npm_deepseek_v3.jinja", CAPMOE_TOOL_FORM_DEEPSEEK, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_chat *chat = load_chat(cases[i].file);
        /* as the request parser keeps a call: content "", arguments an object;
         * then as the form's template wants it */
        const char *with0 =
            "[{\"role\":\"user\",\"content\":\"time?\"},{\"role\":\"assistant\",\"content\":\"\","
            "\"tool_calls\":[{\"id\":\"abcDEF123\",\"type\":\"function\",\"function\":{\"name\":"
            "\"get_time\",\"arguments\":{\"zone\":\"UTC\"}}}]}]";
        char *adapted = capmoe_api_tools_history(with0, cases[i].form);
        ck_assert_int_eq(!!adapted, cases[i].adapted);
        const char *with = adapted ? adapted : with0;
        const char *without = "[{\"role\":\"user\",\"content\":\"time?\"}]";
        char *a = NULL, *b = NULL;
        capmoe_error err;
        ck_assert_msg(capmoe_chat_apply(chat, with, TOOLS, 0, NULL, &a, &err) == 0, "%s: %s",
                      cases[i].file, err.msg);
        ck_assert_msg(capmoe_chat_apply(chat, without, TOOLS, 1, NULL, &b, &err) == 0, "%s: %s",
                      cases[i].file, err.msg);
        size_t bl = strlen(b);
        /* templates that put the tools elsewhere still share the prompt's start */
        size_t common = 0;
        while (a[common] && a[common] == b[common]) common++;
        const char *gen = strlen(a) >= bl && common == bl ? a + bl : a + common;
        /* the end-of-turn marker is a stop token, not text */
        char *t = strdup(gen);
        static const char *eos[] = {"<|im_end|>", "</s>", "<|eot_id|>", "<｜end▁of▁sentence｜>",
                                    "<|endoftext|>"};
        for (size_t k = 0; k < 5; k++) {
            char *e = strstr(t, eos[k]);
            if (e) *e = 0;
        }
        capmoe_api_request r;
        req_init(&r, cases[i].form);
        char *content = NULL;
        cJSON *calls = capmoe_api_tool_calls(&r, t, "q", &content);
        ck_assert_msg(calls && cJSON_GetArraySize(calls) == 1, "%s: '%s' gave no call", cases[i].file, t);
        const cJSON *fn = cJSON_GetObjectItem(calls->child, "function");
        ck_assert_str_eq(cJSON_GetObjectItem(fn, "name")->valuestring, "get_time");
        ck_assert_str_eq(cJSON_GetObjectItem(fn, "arguments")->valuestring, "{\"zone\":\"UTC\"}");
        ck_assert_msg(!content || cases[i].form == CAPMOE_TOOL_FORM_HERMES, "%s: content '%s'",
                      cases[i].file, content);
        free(content);
        cJSON_Delete(calls);
        req_done(&r);
        free(t);
        free(a);
        free(b);
        free(adapted);
        capmoe_chat_free(chat);
    }
}
END_TEST

/* Mistral templates accept only 9-character ids: other ids (another
 * server's) are mapped, the same way in a call and its result. */
START_TEST(test_mistral_ids) {
    capmoe_chat *chat = load_chat("card_mistral_v3_tools.jinja");
    const char *msgs =
        "[{\"role\":\"user\",\"content\":\"time?\"},{\"role\":\"assistant\",\"content\":\"\","
        "\"tool_calls\":[{\"id\":\"call_8f2a7\",\"type\":\"function\",\"function\":{\"name\":"
        "\"get_time\",\"arguments\":{}}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_8f2a7\","
        "\"content\":\"12\"}]";
    char *text = NULL;
    capmoe_error err;
    ck_assert_int_ne(capmoe_chat_apply(chat, msgs, TOOLS, 1, NULL, &text, &err), 0);
    ck_assert_msg(strstr(err.msg, "length 9"), "%s", err.msg);
    char *adapted = capmoe_api_tools_history(msgs, CAPMOE_TOOL_FORM_MISTRAL);
    ck_assert_ptr_nonnull(adapted);
    ck_assert_msg(capmoe_chat_apply(chat, adapted, TOOLS, 1, NULL, &text, &err) == 0, "%s", err.msg);
    char id[10];
    capmoe_api_tool_id9("call_8f2a7", 0, id);
    char want_call[64], want_result[64];
    snprintf(want_call, sizeof want_call, "\"id\": \"%s\"}]", id);
    snprintf(want_result, sizeof want_result, "\"call_id\": \"%s\"}[/TOOL_RESULTS]", id);
    ck_assert_msg(strstr(text, want_call) && strstr(text, want_result), "%s", text);
    free(text);
    free(adapted);
    /* the other forms keep the ids */
    ck_assert_ptr_null(capmoe_api_tools_history(msgs, CAPMOE_TOOL_FORM_LLAMA3));
    ck_assert_ptr_null(capmoe_api_tools_history(msgs, CAPMOE_TOOL_FORM_HERMES));
    capmoe_chat_free(chat);
}
END_TEST

/* The two tools' schemas, checked by hand. */
static int args_valid(const char *name, const char *args) {
    cJSON *v = cJSON_Parse(args);
    int ok = cJSON_IsObject(v);
    if (ok && !strcmp(name, "get_weather")) {
        const cJSON *c = cJSON_GetObjectItem(v, "city"), *u = cJSON_GetObjectItem(v, "unit");
        ok = cJSON_GetArraySize(v) == 2 && cJSON_IsString(c) && cJSON_IsString(u) &&
             (!strcmp(u->valuestring, "c") || !strcmp(u->valuestring, "f"));
        if (ok) { /* maxLength counts code points */
            int cps = 0;
            for (const unsigned char *p = (const unsigned char *)c->valuestring; *p; p++)
                cps += (*p & 0xC0) != 0x80;
            ok = cps <= 12;
        }
    } else if (ok && !strcmp(name, "get_time")) {
        const cJSON *z = cJSON_GetObjectItem(v, "zone");
        ok = cJSON_GetArraySize(v) == 1 && (cJSON_IsString(z) || cJSON_IsNull(z));
    } else {
        ok = 0;
    }
    cJSON_Delete(v);
    return ok;
}

START_TEST(test_required_walks) {
    capmoe_tokenizer *tok = NULL;
    capmoe_grammar_vocab *voc = NULL;
    capmoe_error err;
    ck_assert_msg(capmoe_tokenizer_load(&tok, "config/model", &err) == 0, "%s", err.msg);
    ck_assert_msg(capmoe_grammar_vocab_new(&voc, tok, &err) == 0, "%s", err.msg);
    int V = capmoe_grammar_vocab_size(voc);
    int32_t END = capmoe_tokenizer_eos_id(tok);
    uint8_t *allow = malloc((size_t)(V + 7) / 8);
    capmoe_rng rng;
    capmoe_rng_seed(&rng, 15);
    static const capmoe_api_tool_form forms[] = {CAPMOE_TOOL_FORM_HERMES, CAPMOE_TOOL_FORM_MISTRAL,
                                                 CAPMOE_TOOL_FORM_LLAMA3, CAPMOE_TOOL_FORM_DEEPSEEK};
    int finished = 0;
    for (size_t fi = 0; fi < 4; fi++) {
        for (int choice = 0; choice < 3; choice++) { /* required, required serial, named */
            capmoe_api_request r;
            req_init(&r, CAPMOE_TOOL_FORM_HERMES);
            r.tool_choice = choice == 2 ? CAPMOE_TOOLS_NAMED : CAPMOE_TOOLS_REQUIRED;
            r.parallel_tool_calls = choice == 0;
            if (choice == 2) r.tool_name = strdup("get_weather");
            capmoe_api_error e;
            /* from Hermes (what the request parser compiles) to the form */
            r.tool_form = CAPMOE_TOOL_FORM_UNKNOWN;
            ck_assert_int_eq(capmoe_api_tools_set_form(&r, forms[fi], &e), 0);
            ck_assert_ptr_nonnull(r.grammar);
            ck_assert_int_eq(r.tool_form, forms[fi]);
            ck_assert_int_eq(!!r.tool_prefill, forms[fi] == CAPMOE_TOOL_FORM_MISTRAL ||
                                                   forms[fi] == CAPMOE_TOOL_FORM_DEEPSEEK);
            for (int w = 0; w < 8; w++) {
                int budget = 150;
                capmoe_grammar_state *s;
                ck_assert_int_eq(capmoe_grammar_state_new(&s, r.grammar, &err), 0);
                char text[8192];
                size_t tl = 0;
                int ended = 0;
                for (int step = 0; step < budget && !ended; step++) {
                    int n = capmoe_grammar_mask(s, voc, &END, 1, budget - step, allow);
                    ck_assert_msg(n > 0, "empty mask after '%.*s'", (int)tl, text);
                    int pick = (int)(capmoe_rng_next(&rng) % (uint64_t)n), id = -1;
                    for (int t = 0; t < V; t++)
                        if (allow[t / 8] >> (t % 8) & 1)
                            if (pick-- == 0) {
                                id = t;
                                break;
                            }
                    if (id == END) {
                        ended = 1;
                        break;
                    }
                    ck_assert_int_eq(capmoe_grammar_accept(s, voc, id), 0);
                    const char *b;
                    int bl = capmoe_grammar_vocab_token(voc, id, &b);
                    ck_assert(bl > 0 && tl + (size_t)bl < sizeof text);
                    memcpy(text + tl, b, (size_t)bl);
                    tl += (size_t)bl;
                }
                text[tl] = 0;
                ck_assert_msg(ended || capmoe_grammar_complete(s), "%s: unfinished '%s'",
                              capmoe_api_tool_form_name(forms[fi]), text);
                capmoe_grammar_state_free(s);
                finished++;
                char *content = NULL;
                stream_matches(&r, text);
                cJSON *calls = capmoe_api_tool_calls(&r, text, "w", &content);
                ck_assert_msg(calls, "%s: '%s%s' does not read back", capmoe_api_tool_form_name(forms[fi]),
                              r.tool_prefill ? r.tool_prefill : "", text);
                ck_assert_msg(!content, "%s: content '%s'", capmoe_api_tool_form_name(forms[fi]), content);
                int nc = cJSON_GetArraySize(calls);
                ck_assert(nc >= 1);
                ck_assert(nc == 1 || choice == 0);
                for (const cJSON *c = calls->child; c; c = c->next) {
                    const cJSON *fn = cJSON_GetObjectItem(c, "function");
                    const char *name = cJSON_GetObjectItem(fn, "name")->valuestring;
                    const char *args = cJSON_GetObjectItem(fn, "arguments")->valuestring;
                    if (choice == 2) ck_assert_str_eq(name, "get_weather");
                    ck_assert_msg(args_valid(name, args), "%s: %s(%s) from '%s'",
                                  capmoe_api_tool_form_name(forms[fi]), name, args, text);
                }
                cJSON_Delete(calls);
            }
            req_done(&r);
        }
    }
    ck_assert_int_eq(finished, 4 * 3 * 8);
    /* an unknown form cannot be enforced: a 400 naming tool_choice */
    capmoe_api_request r;
    req_init(&r, CAPMOE_TOOL_FORM_HERMES);
    r.tool_choice = CAPMOE_TOOLS_REQUIRED;
    capmoe_api_error e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(capmoe_api_tools_set_form(&r, CAPMOE_TOOL_FORM_UNKNOWN, &e), -1);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "tool_choice");
    req_done(&r);
    /* auto needs no grammar: any form is fine */
    req_init(&r, CAPMOE_TOOL_FORM_HERMES);
    ck_assert_int_eq(capmoe_api_tools_set_form(&r, CAPMOE_TOOL_FORM_UNKNOWN, &e), 0);
    ck_assert_ptr_null(r.grammar);
    req_done(&r);
    free(allow);
    capmoe_grammar_vocab_free(voc);
    capmoe_tokenizer_free(tok);
}
END_TEST

/* Streamed a byte at a time: what goes out before the text ends (content that
 * cannot begin a call, calls whose text is complete), and it assembles into
 * the whole text's reading (stream_pieces). */
START_TEST(test_stream_early) {
    static const struct {
        capmoe_api_tool_form form;
        const char *text;
        size_t early;    /* content bytes sent before the end */
        int early_calls; /* calls sent before the end */
    } cases[] = {
        {CAPMOE_TOOL_FORM_HERMES, "Hello world", 10, 0},
        {CAPMOE_TOOL_FORM_HERMES, "Sure.  <tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n"
                                  "</tool_call>\n\nDone", 12, 1},
        {CAPMOE_TOOL_FORM_HERMES, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n"
                                  "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", "
                                  "\"unit\": \"c\"}}\n</tool_call>", 0, 1},
        {CAPMOE_TOOL_FORM_HERMES, "\nHi <tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>!",
         2, 1},
        {CAPMOE_TOOL_FORM_HERMES, "\nHi there", 0, 0},        /* trimmed only if a call follows */
        {CAPMOE_TOOL_FORM_HERMES, "a <tool_call>{\"name\": \"nope\"}</tool_call> b", 41, 0},
        {CAPMOE_TOOL_FORM_HERMES, "x <tool_call>{\"name\": \"get_time\"", 1, 0},
        {CAPMOE_TOOL_FORM_LLAMA3, " Hello", 5, 0},
        {CAPMOE_TOOL_FORM_LLAMA3, "{\"name\": \"get_time\", \"parameters\": {}}", 0, 0},
        {CAPMOE_TOOL_FORM_LLAMA3, "<|python_tag|>x()", 16, 0},
        {CAPMOE_TOOL_FORM_MISTRAL, "Check. [TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}] ok", 9, 1},
        {CAPMOE_TOOL_FORM_MISTRAL, "[TOOL_CALLS]get_time[ARGS]{\"zone\": \"CET\"}", 0, 0},
        {CAPMOE_TOOL_FORM_DEEPSEEK, "Hm.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}"
                                    "<｜tool▁call▁end｜><｜tool▁calls▁end｜> ok", 5, 1},
        {CAPMOE_TOOL_FORM_DEEPSEEK, "Hm.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}",
         3, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_api_request r;
        req_init(&r, cases[i].form);
        stream_matches(&r, cases[i].text);
        size_t early;
        int early_calls;
        stream_pieces(&r, cases[i].text, 1, &early, &early_calls);
        ck_assert_msg(early == cases[i].early && early_calls == cases[i].early_calls,
                      "%s '%s': %zu bytes and %d calls early, want %zu and %d",
                      capmoe_api_tool_form_name(cases[i].form), cases[i].text, early, early_calls,
                      cases[i].early, cases[i].early_calls);
        req_done(&r);
    }
}
END_TEST

static Suite *tools_suite(void) {
    Suite *s = suite_create("tools");
    TCase *tc = tcase_create("forms");
    tcase_add_test(tc, test_detect);
    tcase_add_test(tc, test_parse_forms);
    tcase_add_test(tc, test_stream_early);
    tcase_add_test(tc, test_template_roundtrip);
    tcase_add_test(tc, test_mistral_ids);
    tcase_add_test(tc, test_required_walks);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(tools_suite());
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
