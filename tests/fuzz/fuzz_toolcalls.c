/* fuzz_toolcalls.c - tool calls read back from generated text
 * (capmoe_api_tool_calls, server/api/api_toolcalls.c) in every template form.
 * Input: byte 0 selects the form (value % 5: Hermes, Mistral, Llama 3,
 * DeepSeek-V3, unknown) and, bit 3, the prefill a required / named call puts
 * at the prompt's end (Mistral, DeepSeek); the rest is the text (up to its
 * first NUL, as generated text holds none).
 * Invariants: no calls, or a non-empty list of calls of the declared tools,
 * each with an id (9 letters and digits for Mistral), type "function" and
 * arguments that are a JSON object; the content is NULL or non-empty,
 * trimmed, and valid UTF-8 when the text is. The text is also given as a
 * conversation to capmoe_api_tools_history (the messages as Mistral's and
 * DeepSeek's templates want them): NULL or a JSON list whose call ids are 9
 * letters / digits (Mistral). */
#include "api_internal.h"
#include "api_json.h"
#include "capmoe/utf8.h"
#include "fuzz.h"

static const char k_tools[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *text = fuzz_strndup(data + 1, size - 1);
    if (!text) return 0;
    capmoe_api_request r;
    memset(&r, 0, sizeof r);
    r.tools_json = (char *)k_tools;
    r.n_tools = 2;
    r.tool_form = (capmoe_api_tool_form)(data[0] % 5);
    if (data[0] & 8) {
        if (r.tool_form == CAPMOE_TOOL_FORM_MISTRAL) r.tool_prefill = "[TOOL_CALLS]";
        if (r.tool_form == CAPMOE_TOOL_FORM_DEEPSEEK)
            r.tool_prefill = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>";
    }
    char *content = NULL;
    cJSON *calls = capmoe_api_tool_calls(&r, text, "fz", &content);
    if (!calls) {
        FUZZ_CHECK(content == NULL, "content without calls");
    } else {
        FUZZ_CHECK(cJSON_IsArray(calls) && calls->child, "empty calls");
        for (const cJSON *c = calls->child; c; c = c->next) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
            const cJSON *name = fn ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            const cJSON *args = fn ? cJSON_GetObjectItemCaseSensitive(fn, "arguments") : NULL;
            FUZZ_CHECK(cJSON_IsString(id) && id->valuestring[0], "id");
            if (r.tool_form == CAPMOE_TOOL_FORM_MISTRAL)
                FUZZ_CHECK(strlen(id->valuestring) == 9, "mistral id '%s'", id->valuestring);
            FUZZ_CHECK(cJSON_IsString(type) && !strcmp(type->valuestring, "function"), "type");
            FUZZ_CHECK(cJSON_IsString(name) && (!strcmp(name->valuestring, "get_weather") ||
                                                !strcmp(name->valuestring, "get_time")),
                       "name");
            FUZZ_CHECK(cJSON_IsString(args), "arguments");
            cJSON *a = cJSON_Parse(args->valuestring);
            FUZZ_CHECK(cJSON_IsObject(a), "arguments '%s'", args->valuestring);
            cJSON_Delete(a);
        }
        if (content) {
            size_t n = strlen(content);
            FUZZ_CHECK(n > 0 && !strchr(" \t\r\n", content[0]) && !strchr(" \t\r\n", content[n - 1]),
                       "content not trimmed");
            if (capmoe_utf8_valid(text, strlen(text)))
                FUZZ_CHECK(capmoe_utf8_valid(content, n), "content not UTF-8");
        }
    }
    free(content);
    cJSON_Delete(calls);
    for (int form = CAPMOE_TOOL_FORM_MISTRAL; form <= CAPMOE_TOOL_FORM_DEEPSEEK; form += 2) {
        char *h = capmoe_api_tools_history(text, (capmoe_api_tool_form)form);
        if (!h) continue;
        cJSON *v = cJSON_Parse(h);
        FUZZ_CHECK(cJSON_IsArray(v), "history '%s'", h);
        for (const cJSON *m = v->child; m && form == CAPMOE_TOOL_FORM_MISTRAL; m = m->next) {
            const cJSON *calls2 = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
            for (const cJSON *c = cJSON_IsArray(calls2) ? calls2->child : NULL; c; c = c->next) {
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
                FUZZ_CHECK(!cJSON_IsString(id) || strlen(id->valuestring) == 9, "id");
            }
        }
        cJSON_Delete(v);
        free(h);
    }
    free(text);
    return 0;
}
