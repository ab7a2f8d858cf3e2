/* check_openai.c - tests of the pure parts of the HTTP API (api_request.c,
 * api_error.c, utf8.c, api_stream.c): UTF-8
 * validation, SSE framing, the OpenAI error body, and request parsing /
 * validation of /v1/completions and /v1/chat/completions (types, ranges,
 * limits, unsupported fields, unknown fields ignored, nesting limit), and the
 * translation of a /v1/responses body with function tools into a chat one
 * (api_responses.c). The
 * HTTP behaviour around them is covered by tests/t_server_*.sh. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/openai.h"
#include "api_internal.h"
#include "api_json.h"

static const capmoe_api_limits k_lim = {512, 576, 16};

/* Parses body (NUL-terminated) as kind; returns the rc, r / e filled. */
static int parse(capmoe_api_kind kind, const char *body, capmoe_api_request *r,
                 capmoe_api_error *e) {
    memset(e, 0, sizeof *e);
    return capmoe_api_parse_request(kind, body, strlen(body), &k_lim, r, e);
}

static void expect_400(capmoe_api_kind kind, const char *body, const char *param,
                       const char *needle) {
    capmoe_api_request r;
    capmoe_api_error e;
    int rc = parse(kind, body, &r, &e);
    ck_assert_msg(rc == -1, "accepted: %s", body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.type, "invalid_request_error");
    ck_assert_msg(strcmp(e.param, param ? param : "") == 0, "%s: param '%s', want '%s'", body,
                  e.param, param ? param : "");
    if (needle) ck_assert_msg(strstr(e.message, needle), "%s: message '%s' lacks '%s'", body,
                              e.message, needle);
}

START_TEST(test_utf8) {
    static const struct {
        const char *s;
        int ok;
    } cases[] = {
        {"plain ascii", 1},
        {"caf\xc3\xa9", 1},
        {"\xe2\x82\xac euro", 1},
        {"\xf0\x9f\x98\x80 emoji", 1},
        {"\xf4\x8f\xbf\xbf", 1},          /* U+10FFFF */
        {"\x80", 0},                      /* lone continuation */
        {"\xc0\x80", 0},                  /* overlong NUL */
        {"\xc1\xbf", 0},                  /* overlong */
        {"\xe0\x80\x80", 0},              /* overlong 3-byte */
        {"\xed\xa0\x80", 0},              /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 0},          /* > U+10FFFF */
        {"\xf0\x80\x80\x80", 0},          /* overlong 4-byte */
        {"\xe2\x82", 0},                  /* truncated */
        {"abc\xff", 0},
        {"\xc3\x28", 0},                  /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(capmoe_utf8_valid(cases[i].s, strlen(cases[i].s)) == cases[i].ok,
                      "case %zu", i);
    ck_assert_int_eq(capmoe_utf8_complete("ab\xe2\x82", 4), 2);
    ck_assert_int_eq(capmoe_utf8_complete("ab\xe2\x82\xac", 5), 5);
    ck_assert_int_eq(capmoe_utf8_complete("ab\xf0\x9f\x98", 5), 2);
    ck_assert_int_eq(capmoe_utf8_complete("abc", 3), 3);
    ck_assert_int_eq(capmoe_utf8_complete("a\xc3", 2), 1);
}
END_TEST

START_TEST(test_error_body_and_sse) {
    capmoe_api_error e;
    ck_assert_int_eq(capmoe_api_fail(&e, 400, "invalid_request_error", NULL, "temperature",
                                     "bad \"value\" %d", 3),
                     -1);
    size_t len;
    char *s = capmoe_api_error_json(&e, &len);
    ck_assert_int_eq(len, strlen(s));
    cJSON *j = cJSON_Parse(s);
    cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(o, "message")->valuestring, "bad \"value\" 3");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(o, "type")->valuestring,
                     "invalid_request_error");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(o, "param")->valuestring, "temperature");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "code")));
    ck_assert_int_eq(cJSON_GetArraySize(o), 4);
    cJSON_Delete(j);
    free(s);
    capmoe_api_fail(&e, 401, "invalid_request_error", "invalid_api_key", NULL, "no");
    s = capmoe_api_error_json(&e, NULL);
    j = cJSON_Parse(s);
    o = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "param")));
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(o, "code")->valuestring, "invalid_api_key");
    cJSON_Delete(j);
    free(s);

    s = capmoe_sse_frame("{\"a\":1}", &len);
    ck_assert_str_eq(s, "data: {\"a\":1}\n\n");
    ck_assert_int_eq(len, strlen(s));
    free(s);
}
END_TEST

START_TEST(test_completion_prompts) {
    capmoe_api_request r;
    capmoe_api_error e;
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"Hello\"}", &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 1);
    ck_assert_str_eq(r.prompts[0].text, "Hello");
    ck_assert_ptr_null(r.model);
    ck_assert_int_eq(r.max_tokens, -1);
    ck_assert_int_eq(r.n, 1);
    ck_assert_int_eq(r.logprobs, -1);
    ck_assert(r.sampling.temperature == 1.0f && r.sampling.top_p == 1.0f);
    ck_assert_int_eq(r.skip_special, 1);
    ck_assert_int_eq(r.add_special, 1);
    capmoe_api_request_free(&r);

    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":[5,9,12],\"model\":\"m\"}", &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 1);
    ck_assert_ptr_null(r.prompts[0].text);
    ck_assert_int_eq(r.prompts[0].n_ids, 3);
    ck_assert_int_eq(r.prompts[0].ids[2], 12);
    ck_assert_str_eq(r.model, "m");
    capmoe_api_request_free(&r);

    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":[\"a\",[1,2],\"b\"]}", &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 3);
    ck_assert_str_eq(r.prompts[0].text, "a");
    ck_assert_int_eq(r.prompts[1].n_ids, 2);
    ck_assert_str_eq(r.prompts[2].text, "b");
    capmoe_api_request_free(&r);

    expect_400(CAPMOE_API_COMPLETIONS, "{}", "prompt", "required");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":null}", "prompt", "required");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":5}", "prompt", NULL);
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[]}", "prompt", "empty");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[1,\"a\"]}", "prompt", "integers");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[1,2.5]}", "prompt", "integers");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[576]}", "prompt", "out of range 0..575");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[-1]}", "prompt", "out of range");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[1e300]}", "prompt", "out of range");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[\"a\",{}]}", "prompt", "item 1");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[\"a\",[]]}", "prompt", "empty");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[[[1]]]}", "prompt", NULL);
    /* too many prompts */
    char big[1024] = "{\"prompt\":[";
    for (int i = 0; i < 65; i++) strcat(big, i ? ",\"x\"" : "\"x\"");
    strcat(big, "]}");
    expect_400(CAPMOE_API_COMPLETIONS, big, "prompt", "at most 64");
}
END_TEST

START_TEST(test_completion_fields) {
    capmoe_api_request r;
    capmoe_api_error e;
    const char *body =
        "{\"prompt\":\"x\",\"max_tokens\":512,\"temperature\":0,\"top_p\":0.9,\"top_k\":40,"
        "\"min_p\":0.05,\"seed\":-7,\"stop\":[\"a\",\"bc\"],\"n\":3,\"logprobs\":5,\"echo\":true,"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u1\","
        "\"presence_penalty\":0,\"frequency_penalty\":0.0,\"logit_bias\":{},\"best_of\":3,"
        "\"suffix\":\"\",\"ignore_eos\":true,\"stop_token_ids\":[2,3],\"some_future_field\":"
        "{\"x\":[1,2,{\"y\":null}]},\"metadata\":null}";
    int rc = parse(CAPMOE_API_COMPLETIONS, body, &r, &e);
    ck_assert_msg(rc == 0, "%s", e.message);
    ck_assert_int_eq(r.max_tokens, 512);
    ck_assert(r.sampling.temperature == 0.0f);
    ck_assert(fabsf(r.sampling.top_p - 0.9f) < 1e-7f);
    ck_assert_int_eq(r.sampling.top_k, 40);
    ck_assert(fabsf(r.sampling.min_p - 0.05f) < 1e-7f);
    ck_assert_int_eq(r.has_seed, 1);
    ck_assert(r.seed == (uint64_t)(int64_t)-7);
    ck_assert_int_eq(r.n_stop, 2);
    ck_assert_str_eq(r.stop[1], "bc");
    ck_assert_int_eq(r.n, 3);
    ck_assert_int_eq(r.logprobs, 5);
    ck_assert_int_eq(r.echo, 1);
    ck_assert_int_eq(r.stream, 1);
    ck_assert_int_eq(r.include_usage, 1);
    ck_assert_str_eq(r.user, "u1");
    ck_assert_int_eq(r.ignore_eos, 1);
    ck_assert_int_eq(r.n_stop_ids, 2);
    ck_assert(r.penalties.presence == 0 && r.penalties.frequency == 0);
    ck_assert(r.penalties.repetition == 1.0f);
    ck_assert_int_eq(r.n_logit_bias, 0);
    capmoe_api_request_free(&r);

    /* penalties and logit_bias are read into the request */
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS,
                           "{\"prompt\":\"x\",\"presence_penalty\":0.5,\"frequency_penalty\":-1.25,"
                           "\"repetition_penalty\":1.3,\"logit_bias\":{\"5\":10,\"575\":-100}}",
                           &r, &e), 0);
    ck_assert(r.penalties.presence == 0.5f && r.penalties.frequency == -1.25f);
    ck_assert(r.penalties.repetition == 1.3f);
    ck_assert_int_eq(r.n_logit_bias, 2);
    ck_assert_int_eq(r.logit_bias[0].id, 5);
    ck_assert(r.logit_bias[0].bias == 10.0f);
    ck_assert_int_eq(r.logit_bias[1].id, 575);
    ck_assert(r.logit_bias[1].bias == -100.0f);
    capmoe_api_request_free(&r);

    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"END\",\"top_k\":-1}", &r, &e), 0);
    ck_assert_int_eq(r.n_stop, 1);
    ck_assert_str_eq(r.stop[0], "END");
    ck_assert_int_eq(r.sampling.top_k, 0);
    capmoe_api_request_free(&r);
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"\",\"temperature\":2}", &r, &e), 0);
    ck_assert_int_eq(r.n_stop, 0);
    ck_assert(r.sampling.temperature == 2.0f);
    capmoe_api_request_free(&r);
    /* null is "not given" */
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS,
                           "{\"prompt\":\"x\",\"max_tokens\":null,\"temperature\":null,\"stop\":null,"
                           "\"n\":null,\"stream\":null}", &r, &e), 0);
    ck_assert_int_eq(r.max_tokens, -1);
    capmoe_api_request_free(&r);
}
END_TEST

START_TEST(test_completion_refusals) {
    const capmoe_api_kind C = CAPMOE_API_COMPLETIONS;
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens", "between 1 and 512");
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":513}", "max_tokens", "between 1 and 512");
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":1e308}", "max_tokens", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":-1e308}", "max_tokens", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens", "integer");
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":\"16\"}", "max_tokens", "integer");
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":true}", "max_tokens", "integer");
    expect_400(C, "{\"prompt\":\"x\",\"temperature\":2.0001}", "temperature", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"temperature\":-0.1}", "temperature", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature", "number");
    expect_400(C, "{\"prompt\":\"x\",\"top_p\":0}", "top_p", "> 0");
    expect_400(C, "{\"prompt\":\"x\",\"top_p\":1.01}", "top_p", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"min_p\":1.5}", "min_p", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"n\":0}", "n", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"n\":17}", "n", "between 1 and 16");
    expect_400(C, "{\"prompt\":\"x\",\"logprobs\":6}", "logprobs", "between 0 and 5");
    expect_400(C, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs", "integer");
    expect_400(C, "{\"prompt\":\"x\",\"echo\":1}", "echo", "boolean");
    expect_400(C, "{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream", "boolean");
    expect_400(C, "{\"prompt\":\"x\",\"stream_options\":[]}", "stream_options", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":1}}",
               "stream_options.include_usage", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"seed\":1.5}", "seed", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"seed\":1e19}", "seed", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop", "at most 4");
    expect_400(C, "{\"prompt\":\"x\",\"stop\":[1]}", "stop", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"stop\":[\"\"]}", "stop", "empty");
    expect_400(C, "{\"prompt\":\"x\",\"stop\":7}", "stop", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"model\":7}", "model", "string");
    expect_400(C, "{\"prompt\":\"x\",\"user\":[]}", "user", "string");
    expect_400(C, "{\"prompt\":\"x\",\"presence_penalty\":2.5}", "presence_penalty", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"frequency_penalty\":3}", "frequency_penalty", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"frequency_penalty\":\"1\"}", "frequency_penalty", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"repetition_penalty\":2.5}", "repetition_penalty", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", "logit_bias", "-100..100");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"1\"}}", "logit_bias", "-100..100");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"576\":1}}", "logit_bias", "0..575");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", "logit_bias", "token ids");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", "logit_bias", "token ids");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"1.5\":1}}", "logit_bias", "token ids");
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":3}", "logit_bias", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"best_of\":2}", "best_of", NULL);
    /* issue 17: numbers past int are range-checked before any conversion
     * (the ASan build traps float-cast-overflow) */
    expect_400(C, "{\"prompt\":\"x\",\"best_of\":6666666666}", "best_of", "not supported");
    expect_400(C, "{\"prompt\":\"x\",\"best_of\":-1e300}", "best_of", "not supported");
    expect_400(C, "{\"prompt\":\"x\",\"n\":6666666666}", "n", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"max_tokens\":1e300}", "max_tokens", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"top_k\":-2147483649}", "top_k", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"seed\":1e19}", "seed", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"logprobs\":4294967297}", "logprobs", NULL);
    expect_400(C, "{\"prompt\":[4294967296]}", "prompt", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"stop_token_ids\":[1e20]}", "stop_token_ids", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"logit_bias\":{\"99999999999999999999\":1}}", "logit_bias", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"suffix\":\"end\"}", "suffix", "not supported");
    expect_400(C, "{\"prompt\":\"x\",\"stop_token_ids\":[600]}", "stop_token_ids", NULL);
    expect_400(C, "{\"prompt\":\"x\",\"ignore_eos\":\"no\"}", "ignore_eos", NULL);
    /* body-level problems: no param */
    expect_400(C, "", NULL, "empty");
    expect_400(C, "{\"prompt\":\"x\"", NULL, "malformed JSON");
    expect_400(C, "[1,2]", NULL, "JSON object");
    expect_400(C, "\"prompt\"", NULL, "JSON object");
    expect_400(C, "{\"prompt\":\"\xff\"}", NULL, "UTF-8");
    expect_400(C, "{\"prompt\":\"\xed\xa0\x80\"}", NULL, "UTF-8");
    expect_400(C, "{\"prompt\":\"\\ud800\"}", NULL, "malformed JSON"); /* lone surrogate escape */
    expect_400(C, "{\"prompt\":\"x\"} trailing", NULL, "malformed JSON");
}
END_TEST

/* cJSON refuses documents nested deeper than CJSON_NESTING_LIMIT: a clean
 * 400, never a crash; nesting within the limit in an unknown field is fine. */
START_TEST(test_nesting) {
    int depth = CJSON_NESTING_LIMIT + 10;
    char *deep = malloc((size_t)depth * 2 + 64);
    strcpy(deep, "{\"prompt\":\"x\",\"extra\":");
    size_t o = strlen(deep);
    for (int i = 0; i < depth; i++) deep[o++] = '[';
    for (int i = 0; i < depth; i++) deep[o++] = ']';
    deep[o++] = '}';
    deep[o] = '\0';
    expect_400(CAPMOE_API_COMPLETIONS, deep, NULL, "nested deeper");
    /* within the limit: ignored unknown field */
    strcpy(deep, "{\"prompt\":\"x\",\"extra\":");
    o = strlen(deep);
    for (int i = 0; i < 500; i++) deep[o++] = '[';
    for (int i = 0; i < 500; i++) deep[o++] = ']';
    deep[o++] = '}';
    deep[o] = '\0';
    capmoe_api_request r;
    capmoe_api_error e;
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, deep, &r, &e), 0);
    capmoe_api_request_free(&r);
    free(deep);
}
END_TEST

/* A NUL escape would silently cut a string in cJSON: refused, naming the
 * field; an escaped backslash followed by "u0000" is not a NUL. */
/* A Responses body translated and parsed as chat; rc of the pair, e named
 * in Responses terms. */
static int responses(const char *body, capmoe_api_request *r, capmoe_api_error *e) {
    char *chat = NULL, *ins = NULL;
    memset(e, 0, sizeof *e);
    memset(r, 0, sizeof *r);
    int rc = capmoe_api_responses_translate(body, strlen(body), &chat, &ins, e);
    free(ins);
    if (rc != 0) return rc;
    rc = capmoe_api_parse_request(CAPMOE_API_CHAT, chat, strlen(chat), &k_lim, r, e);
    free(chat);
    if (rc != 0) capmoe_api_responses_param(e);
    return rc;
}

static void responses_400(const char *body, const char *param, const char *needle) {
    capmoe_api_request r;
    capmoe_api_error e;
    ck_assert_msg(responses(body, &r, &e) == -1, "accepted: %s", body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_msg(strcmp(e.param, param) == 0, "%s: param '%s', want '%s'", body, e.param, param);
    if (needle) ck_assert_msg(strstr(e.message, needle), "%s: message '%s' lacks '%s'", body,
                              e.message, needle);
}

#define FN_TOOL "{\"type\":\"function\",\"name\":\"f\",\"description\":\"d\",\"strict\":true," \
                "\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}"
#define FC(id) "{\"type\":\"function_call\",\"call_id\":\"" id "\",\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}"

START_TEST(test_responses_tools) {
    capmoe_api_request r;
    capmoe_api_error e;
    /* flat tools, a named choice; a text answer and two calls form one
     * assistant turn, each output a tool message */
    ck_assert_int_eq(responses("{\"input\":[{\"role\":\"user\",\"content\":\"a\"},"
                               "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":"
                               "\"output_text\",\"text\":\"let me see\"}]}," FC("c1") "," FC("c2") ","
                               "{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"2\"},"
                               "{\"type\":\"function_call_output\",\"call_id\":\"c2\",\"output\":"
                               "[{\"type\":\"input_text\",\"text\":\"3\"}]}],"
                               "\"tools\":[" FN_TOOL "],\"tool_choice\":{\"type\":\"function\","
                               "\"name\":\"f\"},\"parallel_tool_calls\":false,\"max_tool_calls\":2}",
                               &r, &e), 0);
    ck_assert_int_eq(r.n_tools, 1);
    ck_assert_int_eq(r.tool_choice, CAPMOE_TOOLS_NAMED);
    ck_assert_str_eq(r.tool_name, "f");
    ck_assert_int_eq(r.parallel_tool_calls, 0);
    ck_assert_ptr_nonnull(r.grammar);
    ck_assert_int_eq(r.n_messages, 4);
    ck_assert_str_eq(r.messages[1].role, "assistant");
    ck_assert_str_eq(r.messages[1].content, "let me see");
    ck_assert_str_eq(r.messages[2].role, "tool");
    ck_assert_str_eq(r.messages[3].content, "3");
    cJSON *m = cJSON_Parse(r.messages_json);
    cJSON *calls = cJSON_GetObjectItem(cJSON_GetArrayItem(m, 1), "tool_calls");
    ck_assert_int_eq(cJSON_GetArraySize(calls), 2);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(calls, 1), "id")->valuestring, "c2");
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 3), "tool_call_id")->valuestring, "c2");
    cJSON_Delete(m);
    ck_assert_msg(strstr(r.tools_json, "\"function\":{\"name\":\"f\",\"description\":\"d\""), "%s",
                  r.tools_json);
    capmoe_api_request_free(&r);
    /* a call with no message before it opens its own assistant turn */
    ck_assert_int_eq(responses("{\"input\":[{\"role\":\"user\",\"content\":\"a\"}," FC("c1") "],"
                               "\"tools\":[" FN_TOOL "],\"tool_choice\":\"none\"}", &r, &e), 0);
    ck_assert_int_eq(r.n_messages, 2);
    ck_assert_str_eq(r.messages[1].role, "assistant");
    ck_assert_str_eq(r.messages[1].content, "");
    ck_assert_int_eq(r.tool_choice, CAPMOE_TOOLS_NONE);
    capmoe_api_request_free(&r);
    /* empty arguments: a call without any */
    ck_assert_int_eq(responses("{\"input\":[{\"type\":\"function_call\",\"call_id\":\"c1\","
                               "\"name\":\"f\",\"arguments\":\"\"}]}", &r, &e), 0);
    ck_assert_msg(strstr(r.messages_json, "\"arguments\":{}"), "%s", r.messages_json);
    capmoe_api_request_free(&r);
    /* refused, named in Responses terms */
    responses_400("{\"input\":\"a\",\"tools\":[{\"type\":\"web_search_preview\"}]}", "tools[0].type",
                  "web_search_preview");
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL ",{\"type\":\"code_interpreter\"}]}",
                  "tools[1].type", "code_interpreter");
    responses_400("{\"input\":\"a\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
                  "tools[0].name", "flat");
    responses_400("{\"input\":\"a\",\"tools\":[{\"type\":\"function\",\"name\":\"\"}]}", "tools[0].name",
                  NULL);
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "," FN_TOOL "]}", "tools[1]", "twice");
    responses_400("{\"input\":\"a\",\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":3}]}",
                  "tools[0].parameters", NULL);
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "],\"tool_choice\":\"any\"}", "tool_choice",
                  "'any'");
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "],\"tool_choice\":{\"type\":\"function\","
                  "\"name\":\"g\"}}", "tool_choice", "'g'");
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "],\"tool_choice\":{\"type\":\"allowed_tools\","
                  "\"mode\":\"auto\",\"tools\":[]}}", "tool_choice", "allowed_tools");
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "],\"tool_choice\":7}", "tool_choice", NULL);
    responses_400("{\"input\":\"a\",\"tools\":[" FN_TOOL "],\"max_tool_calls\":0}", "max_tool_calls", NULL);
    responses_400("{\"input\":[{\"role\":\"user\",\"content\":\"a\"},{\"type\":\"function_call_output\","
                  "\"call_id\":\"c9\",\"output\":\"x\"}]}", "input[1].call_id", "function_call");
    responses_400("{\"input\":[" FC("c1") ",{\"type\":\"function_call_output\",\"call_id\":\"c2\","
                  "\"output\":\"x\"}]}", "input[1].call_id", NULL);
    responses_400("{\"input\":[" FC("c1") ",{\"type\":\"function_call_output\",\"call_id\":\"c1\"}]}",
                  "input[1].output", NULL);
    responses_400("{\"input\":[{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\","
                  "\"arguments\":\"[1]\"}]}", "input[0].arguments", "object");
    responses_400("{\"input\":[{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\"}]}",
                  "input[0].arguments", NULL);
    responses_400("{\"input\":[{\"type\":\"function_call\",\"name\":\"f\",\"arguments\":\"{}\"}]}",
                  "input[0].call_id", NULL);
    responses_400("{\"input\":[{\"type\":\"item_reference\",\"id\":\"fc_1\"}]}", "input[0]",
                  "store");
}
END_TEST

START_TEST(test_nul_in_strings) {
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"hello\\u0000 world and more\"}", "prompt",
               "NUL");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":[\"ok\",\"x\\u0000\"]}", "prompt[1]",
               "NUL");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"a\",\"stop\":\"\\u0000\"}", "stop",
               "NUL");
    expect_400(CAPMOE_API_CHAT,
               "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
               "{\"role\":\"user\\u0000garbage\",\"content\":\"hi\"}]}",
               "messages[1].role", "NUL");
    expect_400(CAPMOE_API_CHAT,
               "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
               "\"text\":\"a\\u0000\"}]}]}",
               "messages[0].content[0].text", "NUL");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prom\\u0000pt\":\"x\",\"prompt\":\"y\"}",
               "key 'prom\\u0000pt' of the request body", "NUL");
    /* nested containers before the culprit: indices and keys stay right */
    expect_400(CAPMOE_API_COMPLETIONS,
               "{\"a\":{\"b\":[1,{\"c\":\"]\"}],\"d\":\"}\"},\"prompt\":\"p\",\"user\":\"\\u0000\"}",
               "user", "NUL");
    capmoe_api_request r;
    capmoe_api_error e;
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"a\\\\u0000b\"}", &r, &e), 0);
    ck_assert_str_eq(r.prompts[0].text, "a\\u0000b");
    capmoe_api_request_free(&r);
    ck_assert_int_eq(parse(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"a\\u0001b\"}", &r, &e), 0);
    capmoe_api_request_free(&r);
}
END_TEST

START_TEST(test_chat) {
    capmoe_api_request r;
    capmoe_api_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":\"text\","
        "\"text\":\"there\"}],\"name\":\"bob\"},{\"role\":\"assistant\",\"content\":null},"
        "{\"role\":\"user\",\"content\":\"?\"}],\"max_tokens\":10,\"max_completion_tokens\":20,"
        "\"logprobs\":true,\"top_logprobs\":3,\"tools\":[],\"response_format\":{\"type\":\"text\"}}";
    int rc = parse(CAPMOE_API_CHAT, body, &r, &e);
    ck_assert_msg(rc == 0, "%s", e.message);
    ck_assert_int_eq(r.n_messages, 4);
    ck_assert_str_eq(r.messages[0].role, "system");
    ck_assert_str_eq(r.messages[0].content, "Be brief.");
    ck_assert_str_eq(r.messages[1].content, "Hi there");
    ck_assert_str_eq(r.messages[2].role, "assistant");
    ck_assert_str_eq(r.messages[2].content, "");
    ck_assert_int_eq(r.max_tokens, 20); /* max_completion_tokens wins */
    ck_assert_int_eq(r.logprobs, 3);
    capmoe_api_request_free(&r);

    ck_assert_int_eq(parse(CAPMOE_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                            "\"logprobs\":true}", &r, &e), 0);
    ck_assert_int_eq(r.logprobs, 0);
    capmoe_api_request_free(&r);
    ck_assert_int_eq(parse(CAPMOE_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                                            "\"logprobs\":false}", &r, &e), 0);
    ck_assert_int_eq(r.logprobs, -1);
    capmoe_api_request_free(&r);

    const capmoe_api_kind H = CAPMOE_API_CHAT;
    expect_400(H, "{}", "messages", "required");
    expect_400(H, "{\"messages\":{}}", "messages", "list");
    expect_400(H, "{\"messages\":[]}", "messages", "empty");
    expect_400(H, "{\"messages\":[\"hi\"]}", "messages[0]", "object");
    expect_400(H, "{\"messages\":[{\"content\":\"a\"}]}", "messages[0]", "role");
    expect_400(H, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"a\"}]}", "messages[0]", "wizard");
    expect_400(H, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0]", "content");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", NULL);
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
               "messages[0].content", "text");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}],"
                  "\"top_logprobs\":2}", "top_logprobs", "logprobs");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":true,"
                  "\"top_logprobs\":21}", "top_logprobs", NULL);
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":1}", "logprobs",
               "boolean");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_completion_tokens\":0}",
               "max_completion_tokens", NULL);
    /* function calling: tools, tool_choice, tool messages */
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":\"function\"}]}", "tools[0]", "name");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":\"web_search\"}]}", "tools[0]", "function");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":{}}", "tools", "list");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
               "tool_choice", "'g'");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}],\"tool_choice\":\"always\"}", "tool_choice", NULL);
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tool_choice\":\"required\"}", "tool_choice", "needs 'tools'");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}],\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"}}",
               "tool_choice", "response_format");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"functions\":[{\"name\":\"f\"}]}", "functions", NULL);
    expect_400(H, "{\"messages\":[{\"role\":\"tool\",\"content\":\"1\"}]}",
               "messages[0].tool_call_id", "tool_call_id");
    expect_400(H, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{"
                  "\"name\":\"f\",\"arguments\":\"{nope\"}}]}]}", "messages[0].tool_calls[0]", "valid JSON");
    expect_400(H, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\"}}]}]}",
               "messages[0].tool_calls[0]", NULL);
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\",\"tool_calls\":[]}]}",
               "messages[0].tool_calls", "assistant");
    expect_400(CAPMOE_API_COMPLETIONS, "{\"prompt\":\"x\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}]}", "tools", "chat");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                  "\"response_format\":{\"type\":\"xml\"}}", "response_format", "json_schema");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                  "\"response_format\":{\"type\":\"json_schema\"}}", "response_format", "json_schema");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                  "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
                  "\"schema\":{\"type\":\"string\",\"pattern\":\"^a\"}}}}", "response_format", "'pattern'");
    expect_400(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                  "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\","
                  "\"schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\","
                  "\"minimum\":3}}}}}}", "response_format", "'minimum'");
    /* json_object and a supported schema compile into a grammar */
    ck_assert_int_eq(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                              "\"response_format\":{\"type\":\"json_object\"}}", &r, &e), 0);
    ck_assert_ptr_nonnull(r.grammar);
    capmoe_api_request_free(&r);
    ck_assert_int_eq(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                              "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{"
                              "\"name\":\"p\",\"strict\":true,\"schema\":{\"type\":\"object\","
                              "\"properties\":{\"n\":{\"type\":\"string\"}},\"required\":[\"n\"],"
                              "\"additionalProperties\":false}}}}", &r, &e), 0);
    ck_assert_ptr_nonnull(r.grammar);
    capmoe_api_request_free(&r);
    ck_assert_int_eq(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                              "\"response_format\":{\"type\":\"text\"}}", &r, &e), 0);
    ck_assert_ptr_null(r.grammar);
    capmoe_api_request_free(&r);
    /* a tool conversation: kept for the template with arguments as objects */
    ck_assert_int_eq(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
                              "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\","
                              "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]},"
                              "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"2\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}],"
                              "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
                              "\"parallel_tool_calls\":false}", &r, &e), 0);
    ck_assert_int_eq(r.n_tools, 1);
    ck_assert_int_eq(r.tool_choice, CAPMOE_TOOLS_NAMED);
    ck_assert_str_eq(r.tool_name, "f");
    ck_assert_int_eq(r.parallel_tool_calls, 0);
    ck_assert_ptr_nonnull(r.grammar); /* the named call is constrained */
    ck_assert_ptr_nonnull(r.messages_json);
    ck_assert_msg(strstr(r.messages_json, "\"arguments\":{\"x\":1}"), "%s", r.messages_json);
    ck_assert_msg(strstr(r.messages_json, "\"tool_call_id\":\"c1\""), "%s", r.messages_json);
    /* tool calls read back from text */
    char *content = NULL;
    cJSON *calls = capmoe_api_tool_calls(&r, "hi <tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\":3}}\n</tool_call>"
                                            "<tool_call>{\"name\": \"zz\", \"arguments\": {}}</tool_call>", "id", &content);
    ck_assert_ptr_nonnull(calls);
    ck_assert_int_eq(cJSON_GetArraySize(calls), 1);
    cJSON *fn = cJSON_GetObjectItem(cJSON_GetArrayItem(calls, 0), "function");
    ck_assert_str_eq(cJSON_GetObjectItem(fn, "name")->valuestring, "f");
    ck_assert_str_eq(cJSON_GetObjectItem(fn, "arguments")->valuestring, "{\"x\":3}");
    /* an undeclared tool's block stays in the content */
    ck_assert_msg(content && strstr(content, "hi") && strstr(content, "zz"), "%s", content ? content : "(null)");
    free(content);
    cJSON_Delete(calls);
    ck_assert_ptr_null(capmoe_api_tool_calls(&r, "no calls here", "id", &content));
    capmoe_api_request_free(&r);
}
END_TEST

static Suite *openai_suite(void) {
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_utf8);
    tcase_add_test(tc, test_error_body_and_sse);
    tcase_add_test(tc, test_completion_prompts);
    tcase_add_test(tc, test_completion_fields);
    tcase_add_test(tc, test_completion_refusals);
    tcase_add_test(tc, test_nesting);
    tcase_add_test(tc, test_chat);
    tcase_add_test(tc, test_nul_in_strings);
    tcase_add_test(tc, test_responses_tools);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(openai_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
