/* api_tools.c - function calling on the chat path.
 *   - tools / tool_choice / parallel_tool_calls checked; the tools go to the
 *     model's own chat template as the `tools` variable (OpenAI's format,
 *     as vLLM passes them), tool_choice none leaves them out;
 *   - the messages of a tool conversation (assistant tool_calls with their
 *     arguments, role "tool" results with tool_call_id) go to the template
 *     with the arguments as objects (as transformers' templates expect);
 *   - the form in which the template writes tool calls (Hermes / Qwen
 *     <tool_call>, Mistral [TOOL_CALLS], Llama-3 JSON, DeepSeek-V3 markers)
 *     is probed once by rendering a conversation with a call; the calls are
 *     read back from the text in that form (api_toolcalls.c);
 *   - tool_choice required / a named function constrain decoding to that
 *     form with the tool's parameters schema (grammar.h), so the call always
 *     parses and validates; a form's opening special token (Mistral's
 *     [TOOL_CALLS], DeepSeek's <｜tool▁calls▁begin｜>) ends the prompt instead
 *     of being spelled by the grammar. A template with none of these forms
 *     gets tools rendered and its text back, and required / named is refused. */
#include "api_internal.h"
#include "api_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALL_OPEN "<tool_call>\n"
#define CALL_CLOSE "\n</tool_call>"
#define MISTRAL_MARK "[TOOL_CALLS]"
#define DS_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define DS_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define DS_SEP "<｜tool▁sep｜>"

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

/* The text before the arguments of a call of `name` in form f. malloc'd. */
static char *call_prefix(capmoe_api_tool_form f, const char *name) {
    cJSON *s = cJSON_CreateString(name);
    char *q = s ? cJSON_PrintUnformatted(s) : NULL;
    cJSON_Delete(s);
    if (!q) return NULL;
    size_t n = strlen(q) + 128;
    char *p = malloc(n);
    if (p) {
        switch (f) {
        case CAPMOE_TOOL_FORM_MISTRAL:
            snprintf(p, n, " [{\"name\": %s, \"arguments\": ", q);
            break;
        case CAPMOE_TOOL_FORM_LLAMA3:
            snprintf(p, n, "{\"name\": %s, \"parameters\": ", q);
            break;
        case CAPMOE_TOOL_FORM_DEEPSEEK: /* after the prefill; the name as it is */
            snprintf(p, n, "%s\n```json\n", name);
            break;
        default:
            snprintf(p, n, CALL_OPEN "{\"name\": %s, \"arguments\": ", q);
            break;
        }
    }
    free(q);
    return p;
}

/* The grammar of the required / named call(s) of r in r->tool_form (r->grammar,
 * r->tool_prefill). tools: r's tools. */
static int compile_calls(capmoe_api_request *r, const cJSON *tools, capmoe_api_error *e) {
    char *pre[64];
    const cJSON *sch[64];
    int m = 0;
    for (const cJSON *t = tools ? tools->child : NULL; t && m < 64; t = t->next) {
        const cJSON *fn = capmoe_api_field(t, "function");
        const char *name = capmoe_api_field(fn, "name")->valuestring;
        if (r->tool_choice == CAPMOE_TOOLS_NAMED && strcmp(name, r->tool_name) != 0) continue;
        pre[m] = call_prefix(r->tool_form, name);
        sch[m] = capmoe_api_field(fn, "parameters");
        if (!pre[m]) {
            for (int i = 0; i < m; i++) free(pre[i]);
            return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        }
        m++;
    }
    /* the other forms hold one call here: the grammar's calls are separated
     * by "\n", which Mistral's list and DeepSeek's markers do not use, and
     * Llama 3.x templates refuse several calls */
    int several = r->tool_choice == CAPMOE_TOOLS_REQUIRED && r->parallel_tool_calls &&
                  r->tool_form == CAPMOE_TOOL_FORM_HERMES;
    const char *suffix = "}" CALL_CLOSE;
    r->tool_prefill = NULL;
    switch (r->tool_form) {
    case CAPMOE_TOOL_FORM_MISTRAL:
        suffix = "}]";
        r->tool_prefill = MISTRAL_MARK;
        break;
    case CAPMOE_TOOL_FORM_LLAMA3:
        suffix = "}";
        break;
    case CAPMOE_TOOL_FORM_DEEPSEEK:
        /* the markers are added tokens, which the grammar never spells: the
         * prompt ends with them up to the name, the text ends after the
         * fence (the end markers are read as optional) */
        suffix = "\n```";
        r->tool_prefill = DS_CALLS_BEGIN DS_CALL_BEGIN "function" DS_SEP;
        break;
    default:
        break;
    }
    capmoe_grammar_free(r->grammar);
    r->grammar = NULL;
    capmoe_error err;
    int rc = capmoe_grammar_compile_calls(&r->grammar, (const char *const *)pre, sch, m, suffix,
                                          several, &err);
    for (int i = 0; i < m; i++) free(pre[i]);
    if (rc != 0) return E400(e, "tools", "a tool's parameters: unsupported JSON schema: %s", err.msg);
    return 0;
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
    return compile_calls(r, tools, e);
}

int capmoe_api_tools_set_form(capmoe_api_request *r, capmoe_api_tool_form form,
                              capmoe_api_error *e) {
    if (r->tool_form == form) return 0;
    r->tool_form = form;
    if (!r->tools_json ||
        (r->tool_choice != CAPMOE_TOOLS_REQUIRED && r->tool_choice != CAPMOE_TOOLS_NAMED))
        return 0;
    if (form == CAPMOE_TOOL_FORM_UNKNOWN)
        return E400(e, "tool_choice",
                    "'tool_choice' required / a named function is enforced only for chat "
                    "templates that write tool calls in a form capmoe parses (Hermes / Qwen "
                    "<tool_call>, Mistral [TOOL_CALLS], Llama-3 JSON, DeepSeek-V3); this "
                    "model's template writes none of them");
    cJSON *tools = cJSON_Parse(r->tools_json);
    if (!tools) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int rc = compile_calls(r, tools, e);
    cJSON_Delete(tools);
    return rc;
}

/* 1 when id is 9 letters / digits (what Mistral templates accept). */
static int id9(const char *id) {
    size_t n = 0;
    for (; id[n]; n++)
        if (!((id[n] >= 'a' && id[n] <= 'z') || (id[n] >= 'A' && id[n] <= 'Z') ||
              (id[n] >= '0' && id[n] <= '9')))
            return 0;
    return n == 9;
}

/* Mistral: an id of another shape replaced by 9 letters / digits derived
 * from it (the same for a call and its result). */
static int mistral_id(cJSON *o, const char *key) {
    cJSON *id = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(id) || id9(id->valuestring)) return 0;
    char out[10];
    capmoe_api_tool_id9(id->valuestring, 0, out);
    cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateString(out));
    return 1;
}

char *capmoe_api_tools_history(const char *messages_json, capmoe_api_tool_form form) {
    if ((form != CAPMOE_TOOL_FORM_DEEPSEEK && form != CAPMOE_TOOL_FORM_MISTRAL) || !messages_json)
        return NULL;
    cJSON *arr = cJSON_Parse(messages_json);
    int changed = 0;
    for (cJSON *m = arr ? arr->child : NULL; m; m = m->next) {
        if (form == CAPMOE_TOOL_FORM_MISTRAL) changed |= mistral_id(m, "tool_call_id");
        cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (!cJSON_IsArray(calls)) continue;
        if (form == CAPMOE_TOOL_FORM_MISTRAL) {
            /* its templates refuse ids other than 9 letters / digits (the
             * ids capmoe returns for it), which other servers' ids are not */
            for (cJSON *c = calls->child; c; c = c->next) changed |= mistral_id(c, "id");
            continue;
        }
        /* DeepSeek-V3's template writes an assistant's calls only when its
         * content is null, and concatenates the arguments as a string (the
         * form DeepSeek's own API sends) */
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(content) && !content->valuestring[0]) {
            cJSON_ReplaceItemInObjectCaseSensitive(m, "content", cJSON_CreateNull());
            changed = 1;
        }
        for (cJSON *c = calls->child; c; c = c->next) {
            cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
            cJSON *args = fn ? cJSON_GetObjectItemCaseSensitive(fn, "arguments") : NULL;
            if (!args || cJSON_IsString(args)) continue;
            char *t = cJSON_PrintUnformatted(args);
            if (t) {
                cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", cJSON_CreateString(t));
                changed = 1;
            }
            free(t);
        }
    }
    char *out = changed ? cJSON_PrintUnformatted(arr) : NULL;
    cJSON_Delete(arr);
    return out;
}

capmoe_api_tool_form capmoe_api_tools_form(capmoe_api *api) {
    if (api->tool_form == 0) {
        /* render a conversation holding one call and look for the form:
         * content null (DeepSeek-V3 writes calls only then) or "", the
         * arguments an object (as transformers passes them) or a string
         * (DeepSeek-V3 concatenates them); a 9-character id (Mistral
         * checks it) */
        static const char *const msgs[] = {
            "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":null,"
            "\"tool_calls\":[{\"id\":\"probe0001\",\"type\":\"function\",\"function\":{\"name\":"
            "\"probe_fn\",\"arguments\":{}}}]}]",
            "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"\","
            "\"tool_calls\":[{\"id\":\"probe0001\",\"type\":\"function\",\"function\":{\"name\":"
            "\"probe_fn\",\"arguments\":{}}}]}]",
            "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":null,"
            "\"tool_calls\":[{\"id\":\"probe0001\",\"type\":\"function\",\"function\":{\"name\":"
            "\"probe_fn\",\"arguments\":\"{}\"}}]}]",
        };
        static const char tools[] =
            "[{\"type\":\"function\",\"function\":{\"name\":\"probe_fn\",\"description\":"
            "\"probe\",\"parameters\":"
            "{\"type\":\"object\",\"properties\":{}}}}]";
        capmoe_api_tool_form f = CAPMOE_TOOL_FORM_UNKNOWN;
        for (size_t i = 0; api->chat && i < sizeof msgs / sizeof msgs[0] &&
                           f == CAPMOE_TOOL_FORM_UNKNOWN; i++) {
            char *text = NULL;
            capmoe_error err;
            if (capmoe_chat_apply(api->chat, msgs[i], tools, 0, NULL, &text, &err) == 0)
                f = capmoe_api_tool_form_of(text);
            free(text);
        }
        api->tool_form = (int)f + 1;
    }
    return (capmoe_api_tool_form)(api->tool_form - 1);
}

int capmoe_api_tools_hermes(capmoe_api *api) {
    return capmoe_api_tools_form(api) == CAPMOE_TOOL_FORM_HERMES;
}
