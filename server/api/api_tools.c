/* api_tools.c - function calling on the chat path.
 *   - tools / tool_choice / parallel_tool_calls checked; the tools go to the
 *     model's own chat template as the `tools` variable (OpenAI's format,
 *     as vLLM passes them), tool_choice none leaves them out;
 *   - the messages of a tool conversation (assistant tool_calls with their
 *     arguments, role "tool" results with tool_call_id) go to the template
 *     with the arguments as objects (as transformers' templates expect);
 *   - tool calls are read back from the generated text in the Hermes / Qwen
 *     form the templates teach (<tool_call>\n{"name": ..., "arguments": ...}
 *     \n</tool_call>); tool_choice required / a named function constrain
 *     decoding to that form with the tool's parameters schema (grammar.h),
 *     so the call always parses and validates. Templates that use another
 *     form (Mistral's [TOOL_CALLS], Llama-3's bare JSON) get tools rendered
 *     and their text back, and required / named is refused for them. */
#include "api_internal.h"
#include "api_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALL_OPEN "<tool_call>\n"
#define CALL_CLOSE "\n</tool_call>"

static int bad_call(capmoe_api_error *e, const char *param, const char *what) {
    return E400(e, param, "'%s': %s", param, what);
}

int capmoe_api_tool_message(const cJSON *it, int idx, const char *role, cJSON *out,
                            capmoe_api_error *e) {
    char param[64];
    if (strcmp(role, "tool") == 0) {
        snprintf(param, sizeof param, "messages[%d].tool_call_id", idx);
        const cJSON *id = capmoe_api_field(it, "tool_call_id");
        if (!id || !cJSON_IsString(id))
            return bad_call(e, param, "a tool message needs the string 'tool_call_id' of the call "
                                      "it answers");
        cJSON_AddStringToObject(out, "tool_call_id", id->valuestring);
        const cJSON *name = capmoe_api_field(it, "name");
        if (name && cJSON_IsString(name)) cJSON_AddStringToObject(out, "name", name->valuestring);
        return 0;
    }
    snprintf(param, sizeof param, "messages[%d].tool_calls", idx);
    const cJSON *calls = capmoe_api_field(it, "tool_calls");
    if (strcmp(role, "assistant") != 0)
        return bad_call(e, param, "only assistant messages have tool calls");
    if (!cJSON_IsArray(calls) || !calls->child)
        return bad_call(e, param, "must be a non-empty list of calls");
    cJSON *arr = cJSON_AddArrayToObject(out, "tool_calls");
    int k = 0;
    for (const cJSON *c = calls->child; c; c = c->next, k++) {
        snprintf(param, sizeof param, "messages[%d].tool_calls[%d]", idx, k);
        const cJSON *type = cJSON_IsObject(c) ? capmoe_api_field(c, "type") : NULL;
        const cJSON *id = cJSON_IsObject(c) ? capmoe_api_field(c, "id") : NULL;
        const cJSON *fn = cJSON_IsObject(c) ? capmoe_api_field(c, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? capmoe_api_field(fn, "name") : NULL;
        const cJSON *args = cJSON_IsObject(fn) ? capmoe_api_field(fn, "arguments") : NULL;
        if ((type && (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0)) ||
            !id || !cJSON_IsString(id) || !name || !cJSON_IsString(name) ||
            (args && !cJSON_IsString(args)))
            return bad_call(e, param, "a call is {\"id\", \"type\": \"function\", \"function\": "
                                      "{\"name\", \"arguments\": a JSON string}}");
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "id", id->valuestring);
        cJSON_AddStringToObject(x, "type", "function");
        cJSON *f = cJSON_AddObjectToObject(x, "function");
        cJSON_AddStringToObject(f, "name", name->valuestring);
        cJSON *parsed = args ? cJSON_Parse(args->valuestring) : cJSON_CreateObject();
        if (!parsed) {
            cJSON_Delete(x);
            return bad_call(e, param, "'function.arguments' is not valid JSON");
        }
        cJSON_AddItemToObject(f, "arguments", parsed);
        cJSON_AddItemToArray(arr, x);
    }
    return 0;
}

/* The text before the arguments of a call of `name`. malloc'd. */
static char *call_prefix(const char *name) {
    cJSON *s = cJSON_CreateString(name);
    char *q = s ? cJSON_PrintUnformatted(s) : NULL;
    cJSON_Delete(s);
    if (!q) return NULL;
    size_t n = strlen(q) + 64;
    char *p = malloc(n);
    if (p) snprintf(p, n, CALL_OPEN "{\"name\": %s, \"arguments\": ", q);
    free(q);
    return p;
}

int capmoe_api_parse_tools(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    r->parallel_tool_calls = 1;
    if (capmoe_api_get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e) != 0) return -1;
    if (capmoe_api_field(root, "functions"))
        return E400(e, "functions", "'functions' (the deprecated form) is not supported: use 'tools'");
    const cJSON *tools = capmoe_api_field(root, "tools");
    const cJSON *tc = capmoe_api_field(root, "tool_choice");
    if (tools && !cJSON_IsArray(tools)) return E400(e, "tools", "'tools' must be a list");
    int n = tools ? cJSON_GetArraySize(tools) : 0;
    if (n > 64) return E400(e, "tools", "at most 64 tools");
    const char *names[64];
    const cJSON *schemas[64];
    int k = 0;
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next, k++) {
        char param[32];
        snprintf(param, sizeof param, "tools[%d]", k);
        const cJSON *type = cJSON_IsObject(t) ? capmoe_api_field(t, "type") : NULL;
        const cJSON *fn = cJSON_IsObject(t) ? capmoe_api_field(t, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? capmoe_api_field(fn, "name") : NULL;
        if (!type || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0)
            return E400(e, param, "'%s': only tools of type \"function\" are supported", param);
        if (!name || !cJSON_IsString(name) || !name->valuestring[0] || strlen(name->valuestring) > 64)
            return E400(e, param, "'%s.function.name' must be a string of 1 to 64 characters", param);
        for (int j = 0; j < k; j++)
            if (!strcmp(names[j], name->valuestring))
                return E400(e, param, "'%s': the tool name '%s' is given twice", param, name->valuestring);
        const cJSON *params = capmoe_api_field(fn, "parameters");
        if (params && !cJSON_IsObject(params))
            return E400(e, param, "'%s.function.parameters' must be a JSON schema object", param);
        names[k] = name->valuestring;
        schemas[k] = params;
    }
    r->n_tools = n;
    r->tool_choice = CAPMOE_TOOLS_AUTO;
    if (tc) {
        if (cJSON_IsString(tc)) {
            if (!strcmp(tc->valuestring, "none")) r->tool_choice = CAPMOE_TOOLS_NONE;
            else if (!strcmp(tc->valuestring, "auto")) r->tool_choice = CAPMOE_TOOLS_AUTO;
            else if (!strcmp(tc->valuestring, "required")) r->tool_choice = CAPMOE_TOOLS_REQUIRED;
            else
                return E400(e, "tool_choice", "'tool_choice' must be none, auto, required or "
                                              "{\"type\": \"function\", \"function\": {\"name\"}}");
        } else {
            const cJSON *fn = cJSON_IsObject(tc) ? capmoe_api_field(tc, "function") : NULL;
            const cJSON *name = cJSON_IsObject(fn) ? capmoe_api_field(fn, "name") : NULL;
            if (!name || !cJSON_IsString(name))
                return E400(e, "tool_choice", "'tool_choice' must be none, auto, required or "
                                              "{\"type\": \"function\", \"function\": {\"name\"}}");
            int found = -1;
            for (int j = 0; j < n; j++)
                if (!strcmp(names[j], name->valuestring)) found = j;
            if (found < 0)
                return E400(e, "tool_choice", "'tool_choice' names the function '%.64s', which is "
                                              "not in 'tools'", name->valuestring);
            r->tool_choice = CAPMOE_TOOLS_NAMED;
            if (!(r->tool_name = strdup(name->valuestring)))
                return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        }
        if (n == 0 && (r->tool_choice == CAPMOE_TOOLS_REQUIRED || r->tool_choice == CAPMOE_TOOLS_NAMED))
            return E400(e, "tool_choice", "'tool_choice' %s needs 'tools'",
                        r->tool_choice == CAPMOE_TOOLS_NAMED ? "naming a function" : "required");
    }
    if (n == 0) return 0;
    if (!(r->tools_json = cJSON_PrintUnformatted(tools)))
        return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    if (r->tool_choice != CAPMOE_TOOLS_REQUIRED && r->tool_choice != CAPMOE_TOOLS_NAMED) return 0;
    if (r->grammar)
        return E400(e, "tool_choice", "'tool_choice' %s cannot be combined with a JSON "
                                      "'response_format'", r->tool_choice == CAPMOE_TOOLS_NAMED ? "naming a function" : "required");
    /* the call(s) the model must write */
    char *pre[64];
    const cJSON *sch[64];
    int m = 0;
    for (int j = 0; j < n; j++) {
        if (r->tool_choice == CAPMOE_TOOLS_NAMED && strcmp(names[j], r->tool_name) != 0) continue;
        pre[m] = call_prefix(names[j]);
        sch[m] = schemas[j];
        if (!pre[m]) {
            for (int i = 0; i < m; i++) free(pre[i]);
            return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        }
        m++;
    }
    capmoe_error err;
    int several = r->tool_choice == CAPMOE_TOOLS_REQUIRED && r->parallel_tool_calls;
    int rc = capmoe_grammar_compile_calls(&r->grammar, (const char *const *)pre, sch, m,
                                          "}" CALL_CLOSE, several, &err);
    for (int i = 0; i < m; i++) free(pre[i]);
    if (rc != 0) return E400(e, "tools", "a tool's parameters: unsupported JSON schema: %s", err.msg);
    return 0;
}

cJSON *capmoe_api_tool_calls(const capmoe_api_request *r, const char *text, const char *id_base,
                             char **content) {
    *content = NULL;
    if (!r->tools_json || r->tool_choice == CAPMOE_TOOLS_NONE || !text) return NULL;
    cJSON *tools = cJSON_Parse(r->tools_json);
    cJSON *calls = cJSON_CreateArray();
    size_t tl = strlen(text);
    char *rest = malloc(tl + 1);
    size_t rl = 0;
    const char *p = text;
    int k = 0;
    while (rest) {
        const char *o = strstr(p, "<tool_call>");
        const char *c = o ? strstr(o, "</tool_call>") : NULL;
        if (!o || !c) {
            memcpy(rest + rl, p, strlen(p));
            rl += strlen(p);
            break;
        }
        memcpy(rest + rl, p, (size_t)(o - p));
        rl += (size_t)(o - p);
        const char *body = o + strlen("<tool_call>");
        cJSON *v = cJSON_ParseWithLength(body, (size_t)(c - body));
        const cJSON *name = v ? cJSON_GetObjectItemCaseSensitive(v, "name") : NULL;
        const cJSON *args = v ? cJSON_GetObjectItemCaseSensitive(v, "arguments") : NULL;
        int known = 0;
        for (const cJSON *t = tools ? tools->child : NULL; t && cJSON_IsString(name); t = t->next) {
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
            const cJSON *tn = fn ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            known |= cJSON_IsString(tn) && !strcmp(tn->valuestring, name->valuestring);
        }
        if (known && (!args || cJSON_IsObject(args))) {
            cJSON *x = cJSON_CreateObject();
            char id[96];
            snprintf(id, sizeof id, "call_%s_%d", id_base, k++);
            cJSON_AddStringToObject(x, "id", id);
            cJSON_AddStringToObject(x, "type", "function");
            cJSON *f = cJSON_AddObjectToObject(x, "function");
            cJSON_AddStringToObject(f, "name", name->valuestring);
            char *a = args ? cJSON_PrintUnformatted(args) : strdup("{}");
            cJSON_AddStringToObject(f, "arguments", a ? a : "{}");
            free(a);
            cJSON_AddItemToArray(calls, x);
        } else { /* not a call of a declared tool: stays text */
            size_t L = (size_t)(c + strlen("</tool_call>") - o);
            memcpy(rest + rl, o, L);
            rl += L;
        }
        cJSON_Delete(v);
        p = c + strlen("</tool_call>");
    }
    cJSON_Delete(tools);
    if (!rest || cJSON_GetArraySize(calls) == 0) {
        free(rest);
        cJSON_Delete(calls);
        return NULL;
    }
    rest[rl] = 0;
    /* the text around the calls: content (null when only whitespace) */
    size_t a = 0, b = rl;
    while (a < b && strchr(" \t\r\n", rest[a])) a++;
    while (b > a && strchr(" \t\r\n", rest[b - 1])) b--;
    if (b > a) {
        memmove(rest, rest + a, b - a);
        rest[b - a] = 0;
        *content = rest;
    } else {
        free(rest);
    }
    return calls;
}

int capmoe_api_tools_hermes(capmoe_api *api) {
    if (api->tool_form == 0) {
        /* render a conversation holding one call and look for the form */
        static const char msgs[] =
            "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"\","
            "\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":"
            "\"probe_fn\",\"arguments\":{}}}]}]";
        static const char tools[] =
            "[{\"type\":\"function\",\"function\":{\"name\":\"probe_fn\",\"parameters\":"
            "{\"type\":\"object\",\"properties\":{}}}}]";
        char *text = NULL;
        capmoe_error err;
        int ok = capmoe_chat_apply(api->chat, msgs, tools, 0, NULL, &text, &err) == 0 && text &&
                 strstr(text, "<tool_call>") && strstr(text, "probe_fn");
        free(text);
        api->tool_form = ok ? 1 : -1;
    }
    return api->tool_form == 1;
}
