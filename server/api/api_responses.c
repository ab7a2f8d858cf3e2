/* api_responses.c - POST /v1/responses, the OpenAI Responses API, on top of
 * the chat path:
 *   - the request is checked and translated into a chat-completions body
 *     (instructions + input items -> messages, function_call items ->
 *     assistant tool_calls, function_call_output items -> role "tool"
 *     messages, max_output_tokens -> max_completion_tokens, text.format ->
 *     response_format, flat function tools -> chat tools, tool_choice), which
 *     the chat parser then validates; its error params are named back in
 *     Responses terms; hosted tools are refused by type;
 *   - the answer is a "response" object: output is one assistant message
 *     with one output_text part, or, when the model called tools (parsed by
 *     api_tools.c), the text around the calls as a message (when not blank)
 *     and one function_call item per call;
 *   - a stream is the Responses event stream: response.created,
 *     response.in_progress, then per output item response.output_item.added,
 *     (message) response.content_part.added, response.output_text.delta...,
 *     response.output_text.done, response.content_part.done, (function_call)
 *     response.function_call_arguments.delta, ...arguments.done, then
 *     response.output_item.done; last response.completed (or .incomplete),
 *     each "event: <type>\ndata: {...,\"sequence_number\":k}\n\n". With
 *     tools on, the text is held until it ends (it may be a call), as on the
 *     chat stream.
 * Nothing is stored: previous_response_id, conversation and item_reference
 * items are refused. */
#include "capmoe/utf8.h"
#include "api_internal.h"
#include "api_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request translation ------------------------------------------------------------ */

/* A content value of an input item: a string, or parts of type input_text /
 * output_text / text; returned as a chat content (string or text parts). */
static cJSON *item_content(const cJSON *c, const char *param, capmoe_api_error *e) {
    if (cJSON_IsString(c)) return cJSON_CreateString(c->valuestring);
    if (!cJSON_IsArray(c)) {
        E400(e, param, "'%s' must be a string or a list of content parts", param);
        return NULL;
    }
    cJSON *parts = cJSON_CreateArray();
    int k = 0;
    for (const cJSON *p = c->child; p; p = p->next, k++) {
        const cJSON *type = cJSON_IsObject(p) ? capmoe_api_field(p, "type") : NULL;
        const cJSON *text = cJSON_IsObject(p) ? capmoe_api_field(p, "text") : NULL;
        const char *ts = type && cJSON_IsString(type) ? type->valuestring : "";
        if (strcmp(ts, "input_text") != 0 && strcmp(ts, "output_text") != 0 &&
            strcmp(ts, "text") != 0) {
            cJSON_Delete(parts);
            E400(e, param, "'%s[%d]': only text parts (input_text, output_text) are supported, got "
                           "'%.40s'", param, k, ts);
            return NULL;
        }
        if (!text || !cJSON_IsString(text)) {
            cJSON_Delete(parts);
            E400(e, param, "'%s[%d]' needs a string 'text'", param, k);
            return NULL;
        }
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "type", "text");
        cJSON_AddStringToObject(x, "text", text->valuestring);
        cJSON_AddItemToArray(parts, x);
    }
    return parts;
}

static int add_message(cJSON *msgs, const char *role, cJSON *content) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddItemToObject(m, "content", content);
    cJSON_AddItemToArray(msgs, m);
    return 0;
}

static int call_seen(const cJSON *seen, const char *id) {
    for (const cJSON *s = seen->child; s; s = s->next)
        if (strcmp(s->valuestring, id) == 0) return 1;
    return 0;
}

/* A 400 for field `name` of item `param`: "'<param>.<name>' <what>". */
static int field_error(capmoe_api_error *e, const char *param, const char *name,
                       const char *what) {
    char p[80];
    snprintf(p, sizeof p, "%s.%s", param, name);
    return E400(e, p, "'%s' %s", p, what);
}

/* A string field of item `param` that must be present and non-empty. */
static const char *item_string(const cJSON *it, const char *name, const char *param,
                               capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(it, name);
    if (f && cJSON_IsString(f) && f->valuestring[0]) return f->valuestring;
    field_error(e, param, name, "must be a non-empty string");
    return NULL;
}

/* A function_call item {call_id, name, arguments} -> one call in the
 * tool_calls of an assistant message: the message just before it when that
 * is an assistant one (a text answer followed by its calls, or parallel
 * calls), else a new one. */
static int add_function_call(const cJSON *it, const char *param, cJSON *msgs, cJSON *seen,
                             capmoe_api_error *e) {
    const char *id = item_string(it, "call_id", param, e);
    const char *name = id ? item_string(it, "name", param, e) : NULL;
    if (!name) return -1;
    const cJSON *args = capmoe_api_field(it, "arguments");
    if (!args || !cJSON_IsString(args))
        return field_error(e, param, "arguments", "must be a string (the arguments as JSON)");
    const char *as = args->valuestring[0] ? args->valuestring : "{}"; /* "": no arguments */
    cJSON *parsed = cJSON_Parse(as);
    int obj = cJSON_IsObject(parsed);
    cJSON_Delete(parsed);
    if (!obj) return field_error(e, param, "arguments", "must hold a JSON object");
    cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
    const cJSON *lr = last ? cJSON_GetObjectItemCaseSensitive(last, "role") : NULL;
    cJSON *m = last;
    if (!lr || strcmp(lr->valuestring, "assistant") != 0) {
        m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", "");
        cJSON_AddItemToArray(msgs, m);
    }
    cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (!calls) calls = cJSON_AddArrayToObject(m, "tool_calls");
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "id", id);
    cJSON_AddStringToObject(x, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(x, "function");
    cJSON_AddStringToObject(fn, "name", name);
    cJSON_AddStringToObject(fn, "arguments", as);
    cJSON_AddItemToArray(calls, x);
    cJSON_AddItemToArray(seen, cJSON_CreateString(id));
    return 0;
}

/* A function_call_output item {call_id, output} -> a role "tool" message;
 * its call_id must be that of a function_call item before it. */
static int add_function_output(const cJSON *it, const char *param, cJSON *msgs,
                               const cJSON *seen, capmoe_api_error *e) {
    const char *id = item_string(it, "call_id", param, e);
    if (!id) return -1;
    if (!call_seen(seen, id))
        return field_error(e, param, "call_id",
                           "answers no function_call item before it in 'input' (this server "
                           "stores nothing: send the function_call item with its output)");
    const cJSON *out = capmoe_api_field(it, "output");
    char oparam[64];
    snprintf(oparam, sizeof oparam, "%s.output", param);
    if (!out) return E400(e, oparam, "'%s' is required", oparam);
    cJSON *c = item_content(out, oparam, e);
    if (!c) return -1;
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "tool");
    cJSON_AddStringToObject(m, "tool_call_id", id);
    cJSON_AddItemToObject(m, "content", c);
    cJSON_AddItemToArray(msgs, m);
    return 0;
}

static int translate_input(const cJSON *root, cJSON *msgs, capmoe_api_error *e) {
    const cJSON *in = capmoe_api_field(root, "input");
    if (!in) return E400(e, "input", "'input' is required");
    if (cJSON_IsString(in)) return add_message(msgs, "user", cJSON_CreateString(in->valuestring));
    if (!cJSON_IsArray(in)) return E400(e, "input", "'input' must be a string or a list of items");
    if (!in->child) return E400(e, "input", "'input' must not be empty");
    cJSON *seen = cJSON_CreateArray(); /* call_ids of the function_call items so far */
    int i = 0, rc = 0;
    for (const cJSON *it = in->child; it && rc == 0; it = it->next, i++) {
        char param[48];
        snprintf(param, sizeof param, "input[%d]", i);
        if (!cJSON_IsObject(it)) {
            rc = E400(e, param, "'%s' must be an object", param);
            break;
        }
        const cJSON *type = capmoe_api_field(it, "type");
        const char *ts = type && cJSON_IsString(type) ? type->valuestring : "message";
        if (strcmp(ts, "function_call") == 0) {
            rc = add_function_call(it, param, msgs, seen, e);
            continue;
        }
        if (strcmp(ts, "function_call_output") == 0) {
            rc = add_function_output(it, param, msgs, seen, e);
            continue;
        }
        if (strcmp(ts, "item_reference") == 0) {
            rc = E400(e, param, "'%s': items of type 'item_reference' are not supported: this "
                                "server stores no items; send the items themselves (the AI SDK: "
                                "providerOptions.openai.store = false)", param);
            break;
        }
        if (strcmp(ts, "message") != 0) {
            rc = E400(e, param,
                      "'%s': items of type '%.40s' are not supported (only messages with text "
                      "content, function_call and function_call_output)", param, ts);
            break;
        }
        const cJSON *role = capmoe_api_field(it, "role");
        if (!role || !cJSON_IsString(role)) {
            rc = E400(e, param, "'%s.role' must be a string", param);
            break;
        }
        const char *rs = role->valuestring;
        if (strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 && strcmp(rs, "system") != 0 &&
            strcmp(rs, "developer") != 0) {
            rc = E400(e, param, "'%s.role' must be user, assistant, system or developer, got "
                                "'%.40s'", param, rs);
            break;
        }
        const cJSON *content = capmoe_api_field(it, "content");
        char cparam[64];
        snprintf(cparam, sizeof cparam, "%s.content", param);
        if (!content) {
            rc = E400(e, cparam, "'%s' is required", cparam);
            break;
        }
        cJSON *c = item_content(content, cparam, e);
        if (!c) {
            rc = -1;
            break;
        }
        add_message(msgs, rs, c);
    }
    cJSON_Delete(seen);
    return rc;
}

/* Copies root[name] into out as out[to] when present. */
static void copy_field(const cJSON *root, cJSON *out, const char *name, const char *to) {
    const cJSON *f = capmoe_api_field(root, name);
    if (f) cJSON_AddItemToObject(out, to, cJSON_Duplicate(f, 1));
}

/* text.format -> response_format. */
static int translate_text(const cJSON *root, cJSON *out, capmoe_api_error *e) {
    const cJSON *text = capmoe_api_field(root, "text");
    if (!text) return 0;
    if (!cJSON_IsObject(text)) return E400(e, "text", "'text' must be an object");
    const cJSON *fmt = capmoe_api_field(text, "format");
    if (!fmt) return 0;
    const cJSON *type = cJSON_IsObject(fmt) ? capmoe_api_field(fmt, "type") : NULL;
    if (!type || !cJSON_IsString(type))
        return E400(e, "text.format", "'text.format' must be an object with a 'type'");
    cJSON *rf = cJSON_CreateObject();
    cJSON_AddStringToObject(rf, "type", type->valuestring);
    if (strcmp(type->valuestring, "json_schema") == 0) {
        cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
        copy_field(fmt, js, "name", "name");
        copy_field(fmt, js, "description", "description");
        copy_field(fmt, js, "schema", "schema");
        copy_field(fmt, js, "strict", "strict");
    }
    cJSON_AddItemToObject(out, "response_format", rf);
    return 0;
}

/* Function tools {type, name, description, parameters, strict} -> chat tools
 * {type, function: {name, description, parameters, strict}}; hosted tools
 * (web_search, file_search, mcp, ...) are refused by type. The chat parser
 * then checks names (length, duplicates) and schemas. */
static int translate_tools(const cJSON *root, cJSON *out, capmoe_api_error *e) {
    const cJSON *tools = capmoe_api_field(root, "tools");
    if (tools) {
        if (!cJSON_IsArray(tools)) return E400(e, "tools", "'tools' must be a list");
        cJSON *t = cJSON_AddArrayToObject(out, "tools");
        int i = 0;
        for (const cJSON *it = tools->child; it; it = it->next, i++) {
            char param[32];
            snprintf(param, sizeof param, "tools[%d]", i);
            if (!cJSON_IsObject(it)) return E400(e, param, "'%s' must be an object", param);
            const cJSON *type = capmoe_api_field(it, "type");
            if (!type || !cJSON_IsString(type))
                return field_error(e, param, "type", "must be a string (\"function\")");
            if (strcmp(type->valuestring, "function") != 0) {
                char p[48];
                snprintf(p, sizeof p, "%s.type", param);
                return E400(e, p, "'%s': tools of type '%.40s' are not supported: this server "
                                  "runs no hosted tools (web search, file search, computer use, "
                                  "code interpreter, MCP, ...), only tools of type \"function\"",
                            p, type->valuestring);
            }
            const cJSON *name = capmoe_api_field(it, "name");
            if (!name || !cJSON_IsString(name) || !name->valuestring[0] ||
                strlen(name->valuestring) > 64)
                return field_error(e, param, "name",
                                   capmoe_api_field(it, "function")
                                       ? "must be a string (a Responses tool is flat: {\"type\": "
                                         "\"function\", \"name\", \"parameters\"}, not nested "
                                         "under 'function' as on /v1/chat/completions)"
                                       : "must be a string of 1 to 64 characters");
            const cJSON *params = capmoe_api_field(it, "parameters");
            if (params && !cJSON_IsObject(params))
                return field_error(e, param, "parameters", "must be a JSON schema object");
            const cJSON *strict = capmoe_api_field(it, "strict");
            if (strict && !cJSON_IsBool(strict))
                return field_error(e, param, "strict", "must be a boolean");
            const cJSON *desc = capmoe_api_field(it, "description");
            if (desc && !cJSON_IsString(desc))
                return field_error(e, param, "description", "must be a string");
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "type", "function");
            cJSON *fn = cJSON_AddObjectToObject(x, "function");
            copy_field(it, fn, "name", "name");
            copy_field(it, fn, "description", "description");
            copy_field(it, fn, "parameters", "parameters");
            copy_field(it, fn, "strict", "strict");
            cJSON_AddItemToArray(t, x);
        }
    }
    static const char usage[] = "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                "{\"type\": \"function\", \"name\": ...}";
    const cJSON *tc = capmoe_api_field(root, "tool_choice");
    if (cJSON_IsString(tc)) {
        const char *s = tc->valuestring;
        if (strcmp(s, "none") != 0 && strcmp(s, "auto") != 0 && strcmp(s, "required") != 0)
            return E400(e, "tool_choice", "%s, got '%.40s'", usage, s);
        cJSON_AddStringToObject(out, "tool_choice", s);
    } else if (cJSON_IsObject(tc)) { /* {type: function, name} -> {type, function: {name}} */
        const cJSON *type = capmoe_api_field(tc, "type");
        if (!type || !cJSON_IsString(type)) return E400(e, "tool_choice", "%s", usage);
        if (strcmp(type->valuestring, "function") != 0)
            return E400(e, "tool_choice", "'tool_choice' of type '%.40s' is not supported (this "
                                          "server runs function tools only, and no allowed_tools "
                                          "lists): %s", type->valuestring, usage);
        const cJSON *name = capmoe_api_field(tc, "name");
        if (!name || !cJSON_IsString(name))
            return E400(e, "tool_choice", "'tool_choice' of type \"function\" needs the string "
                                          "'name' of a function in 'tools'");
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "type", "function");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(x, "function"), "name", name->valuestring);
        cJSON_AddItemToObject(out, "tool_choice", x);
    } else if (tc) {
        return E400(e, "tool_choice", "%s", usage);
    }
    copy_field(root, out, "parallel_tool_calls", "parallel_tool_calls");
    /* max_tool_calls bounds calls of built-in tools, of which there are none */
    const cJSON *mtc = capmoe_api_field(root, "max_tool_calls");
    if (mtc && !(capmoe_api_is_integer(mtc) && mtc->valuedouble >= 1))
        return E400(e, "max_tool_calls", "'max_tool_calls' must be a positive integer");
    return 0;
}

/* Fields the Responses API has and capmoe cannot honour: refused by name. */
static int check_refused(const cJSON *root, capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(root, "previous_response_id");
    if (f)
        return E400(e, "previous_response_id",
                    "'previous_response_id' is not supported: this server stores no responses; "
                    "send the whole conversation in 'input'");
    if (capmoe_api_field(root, "conversation"))
        return E400(e, "conversation", "'conversation' is not supported: this server stores no "
                                       "conversations");
    f = capmoe_api_field(root, "store");
    if (f && !cJSON_IsBool(f)) return E400(e, "store", "'store' must be a boolean");
    f = capmoe_api_field(root, "background");
    if (f && !cJSON_IsFalse(f))
        return E400(e, "background", "'background' responses are not supported");
    f = capmoe_api_field(root, "top_logprobs");
    if (f && !(cJSON_IsNumber(f) && f->valuedouble == 0))
        return E400(e, "top_logprobs", "'top_logprobs' is not supported on /v1/responses (use "
                                       "/v1/chat/completions)");
    f = capmoe_api_field(root, "include");
    if (f) {
        if (!cJSON_IsArray(f)) return E400(e, "include", "'include' must be a list");
        for (const cJSON *it = f->child; it; it = it->next)
            if (cJSON_IsString(it) && strcmp(it->valuestring, "message.output_text.logprobs") == 0)
                return E400(e, "include", "'include': message.output_text.logprobs is not "
                                          "supported on /v1/responses");
    }
    f = capmoe_api_field(root, "reasoning");
    if (f && cJSON_IsObject(f) && (capmoe_api_field(f, "effort") || capmoe_api_field(f, "summary")))
        return E400(e, "reasoning", "'reasoning' options are not supported by this model");
    return 0;
}

int capmoe_api_responses_translate(const char *body, size_t len, char **chat_body,
                                   char **instructions, capmoe_api_error *e) {
    *chat_body = NULL;
    *instructions = NULL;
    if (!body || len == 0) return E400(e, NULL, "the request body is empty (JSON expected)");
    if (!capmoe_utf8_valid(body, len)) return E400(e, NULL, "the request body is not valid UTF-8");
    cJSON *root = capmoe_api_json_parse(body, len, e);
    if (!root) return -1;
    int rc = -1;
    cJSON *out = cJSON_CreateObject();
    if (!cJSON_IsObject(root)) {
        E400(e, NULL, "the request body must be a JSON object");
        goto done;
    }
    if (check_refused(root, e) != 0) goto done;
    cJSON *msgs = cJSON_AddArrayToObject(out, "messages");
    const cJSON *ins = capmoe_api_field(root, "instructions");
    if (ins) {
        if (!cJSON_IsString(ins)) {
            E400(e, "instructions", "'instructions' must be a string");
            goto done;
        }
        add_message(msgs, "system", cJSON_CreateString(ins->valuestring));
        *instructions = strdup(ins->valuestring);
    }
    if (translate_input(root, msgs, e) != 0 || translate_text(root, out, e) != 0 ||
        translate_tools(root, out, e) != 0)
        goto done;
    copy_field(root, out, "model", "model");
    copy_field(root, out, "max_output_tokens", "max_completion_tokens");
    static const char *same[] = {"temperature", "top_p", "stream", "user", "seed",
                                 "top_k", "min_p", "presence_penalty", "frequency_penalty",
                                 "repetition_penalty", "stop", "ignore_eos"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) copy_field(root, out, same[i], same[i]);
    *chat_body = cJSON_PrintUnformatted(out);
    rc = *chat_body ? 0 : capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
done:
    if (rc != 0) {
        free(*instructions);
        *instructions = NULL;
    }
    cJSON_Delete(root);
    cJSON_Delete(out);
    return rc;
}

void capmoe_api_responses_param(capmoe_api_error *e) {
    static const char *map[][2] = {{"max_completion_tokens", "max_output_tokens"},
                                   {"max_tokens", "max_output_tokens"},
                                   {"response_format", "text.format"},
                                   {"messages", "input"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        size_t n = strlen(map[i][0]);
        if (strncmp(e->param, map[i][0], n) == 0 && (e->param[n] == 0 || e->param[n] == '.' ||
                                                     e->param[n] == '[')) {
            char rest[64];
            snprintf(rest, sizeof rest, "%s", e->param + n);
            snprintf(e->param, sizeof e->param, "%s%s", map[i][1], rest);
            return;
        }
    }
    /* tools[i].function.x -> tools[i].x (the Responses tool is flat) */
    char *f = strncmp(e->param, "tools[", 6) == 0 ? strstr(e->param, "].function.") : NULL;
    if (f) memmove(f + 2, f + 11, strlen(f + 11) + 1);
}

/* ---- the response object ------------------------------------------------------------ */

/* Tools given and not turned off: the text may hold calls, so a stream holds
 * it until it ends (as the chat stream does). */
static int tools_on(const gen_call *c) {
    return c->rq.tools_json && c->rq.tool_choice != CAPMOE_TOOLS_NONE;
}

static cJSON *text_part(const char *text) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "output_text");
    cJSON_AddStringToObject(p, "text", text);
    cJSON_AddArrayToObject(p, "annotations");
    cJSON_AddArrayToObject(p, "logprobs");
    return p;
}

/* An assistant message item; text NULL: no content part yet. */
static cJSON *output_message(const gen_call *c, const char *status, const char *text) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", c->msg_id);
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "status", status);
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON *content = cJSON_AddArrayToObject(m, "content");
    if (text) cJSON_AddItemToArray(content, text_part(text));
    return m;
}

/* A function_call item from a chat tool call {id, function: {name,
 * arguments}}: call_id is the call's id, the item's id "fc_..." alongside;
 * arguments NULL: the call's own. */
static cJSON *function_call_item(const cJSON *call, const char *status, const char *arguments) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    const char *cid = cJSON_IsString(id) ? id->valuestring : "call";
    char fid[128];
    snprintf(fid, sizeof fid, "fc_%s", strncmp(cid, "call_", 5) == 0 ? cid + 5 : cid);
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "id", fid);
    cJSON_AddStringToObject(x, "type", "function_call");
    cJSON_AddStringToObject(x, "status", status);
    cJSON_AddStringToObject(x, "call_id", cid);
    cJSON_AddStringToObject(x, "name", cJSON_IsString(name) ? name->valuestring : "");
    cJSON_AddStringToObject(x, "arguments",
                            arguments ? arguments : cJSON_IsString(args) ? args->valuestring : "{}");
    return x;
}

/* The tool calls in the finished text (chat form, api_tools.c), or NULL;
 * *content: the text around them (malloc'd, NULL when blank). */
static cJSON *parse_calls(const gen_call *c, char **content) {
    *content = NULL;
    if (!tools_on(c)) return NULL;
    const char *text = c->ch[0].text.p ? c->ch[0].text.p : "";
    const char *base = strncmp(c->id, "resp-", 5) == 0 ? c->id + 5 : c->id;
    return capmoe_api_tool_calls(&c->rq, text, base, content);
}

/* The output items of a finished response: one message with the text; or,
 * when the model called tools, a message with the text around the calls
 * (when not blank) and one function_call item per call. */
static cJSON *output_items(const gen_call *c) {
    cJSON *out = cJSON_CreateArray();
    char *content = NULL;
    cJSON *calls = parse_calls(c, &content);
    if (!calls) {
        cJSON_AddItemToArray(out, output_message(c, "completed", c->ch[0].text.p ? c->ch[0].text.p
                                                                                  : ""));
        return out;
    }
    if (content) cJSON_AddItemToArray(out, output_message(c, "completed", content));
    for (const cJSON *x = calls->child; x; x = x->next)
        cJSON_AddItemToArray(out, function_call_item(x, "completed", NULL));
    free(content);
    cJSON_Delete(calls);
    return out;
}

/* The request's tools in the Responses form, tool_choice and
 * parallel_tool_calls, as the response object echoes them. */
static void echo_tools(cJSON *o, const capmoe_api_request *r) {
    cJSON_AddBoolToObject(o, "parallel_tool_calls", r->parallel_tool_calls);
    if (r->tool_choice == CAPMOE_TOOLS_NAMED && r->tool_name) {
        cJSON *x = cJSON_AddObjectToObject(o, "tool_choice");
        cJSON_AddStringToObject(x, "type", "function");
        cJSON_AddStringToObject(x, "name", r->tool_name);
    } else {
        cJSON_AddStringToObject(o, "tool_choice", r->tool_choice == CAPMOE_TOOLS_NONE ? "none"
                                                  : r->tool_choice == CAPMOE_TOOLS_REQUIRED
                                                      ? "required"
                                                      : "auto");
    }
    cJSON *tools = cJSON_AddArrayToObject(o, "tools");
    cJSON *chat = r->tools_json ? cJSON_Parse(r->tools_json) : NULL;
    for (const cJSON *t = chat ? chat->child : NULL; t; t = t->next) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        const cJSON *strict = cJSON_GetObjectItemCaseSensitive(fn, "strict");
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "type", "function");
        copy_field(fn, x, "name", "name");
        if (cJSON_IsString(desc)) cJSON_AddStringToObject(x, "description", desc->valuestring);
        else cJSON_AddNullToObject(x, "description");
        if (cJSON_IsObject(params)) cJSON_AddItemToObject(x, "parameters", cJSON_Duplicate(params, 1));
        else cJSON_AddNullToObject(x, "parameters");
        if (cJSON_IsBool(strict)) cJSON_AddBoolToObject(x, "strict", cJSON_IsTrue(strict));
        else cJSON_AddNullToObject(x, "strict");
        cJSON_AddItemToArray(tools, x);
    }
    cJSON_Delete(chat);
}

/* status: "in_progress" (no output yet), "completed" or "incomplete". */
cJSON *capmoe_api_response_object(const gen_call *c, const char *status) {
    const capmoe_api_request *r = &c->rq;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", "response");
    cJSON_AddNumberToObject(o, "created_at", (double)c->created);
    cJSON_AddStringToObject(o, "status", status);
    cJSON_AddNullToObject(o, "error");
    if (strcmp(status, "incomplete") == 0) {
        cJSON *d = cJSON_AddObjectToObject(o, "incomplete_details");
        cJSON_AddStringToObject(d, "reason", "max_output_tokens");
    } else {
        cJSON_AddNullToObject(o, "incomplete_details");
    }
    if (c->instructions) cJSON_AddStringToObject(o, "instructions", c->instructions);
    else cJSON_AddNullToObject(o, "instructions");
    if (r->max_tokens > 0) cJSON_AddNumberToObject(o, "max_output_tokens", r->max_tokens);
    else cJSON_AddNullToObject(o, "max_output_tokens");
    cJSON_AddStringToObject(o, "model", c->api->model_id);
    int done = strcmp(status, "in_progress") != 0;
    cJSON_AddItemToObject(o, "output", done ? output_items(c) : cJSON_CreateArray());
    cJSON_AddNullToObject(o, "previous_response_id");
    cJSON *rs = cJSON_AddObjectToObject(o, "reasoning");
    cJSON_AddNullToObject(rs, "effort");
    cJSON_AddNullToObject(rs, "summary");
    cJSON_AddBoolToObject(o, "store", 0);
    cJSON_AddNumberToObject(o, "temperature", r->sampling.temperature);
    cJSON *text = cJSON_AddObjectToObject(o, "text");
    cJSON *fmt = cJSON_AddObjectToObject(text, "format");
    cJSON_AddStringToObject(fmt, "type", "text");
    echo_tools(o, r);
    cJSON_AddNumberToObject(o, "top_p", r->sampling.top_p);
    cJSON_AddStringToObject(o, "truncation", "disabled");
    if (done) {
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "input_tokens", (double)c->prompt_tokens);
        cJSON *id = cJSON_AddObjectToObject(u, "input_tokens_details");
        cJSON_AddNumberToObject(id, "cached_tokens", 0);
        cJSON_AddNumberToObject(u, "output_tokens", (double)c->completion_tokens);
        cJSON *od = cJSON_AddObjectToObject(u, "output_tokens_details");
        cJSON_AddNumberToObject(od, "reasoning_tokens", 0);
        cJSON_AddNumberToObject(u, "total_tokens", (double)(c->prompt_tokens + c->completion_tokens));
    } else {
        cJSON_AddNullToObject(o, "usage");
    }
    if (r->user) cJSON_AddStringToObject(o, "user", r->user);
    else cJSON_AddNullToObject(o, "user");
    cJSON_AddObjectToObject(o, "metadata");
    return o;
}

const char *capmoe_api_response_status(const gen_call *c) {
    return c->ch[0].finish == CAPMOE_FINISH_LENGTH || c->ch[0].finish == CAPMOE_FINISH_TIMEOUT
               ? "incomplete"
               : "completed";
}

/* ---- the event stream --------------------------------------------------------------- */

/* Sends o (consumed) as "event: <type>" with the next sequence number. */
void capmoe_api_response_event(gen_call *c, const char *type, cJSON *o) {
    if (!c->req) {
        cJSON_Delete(o);
        return;
    }
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "type", type);
    for (cJSON *it = o ? o->child : NULL; it;) { /* move o's fields after "type" */
        cJSON *next = it->next;
        cJSON_AddItemToObject(ev, it->string, cJSON_DetachItemViaPointer(o, it));
        it = next;
    }
    cJSON_Delete(o);
    cJSON_AddNumberToObject(ev, "sequence_number", c->seq_no++);
    char *s = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    if (!s) return;
    size_t n = strlen(s), tl = strlen(type);
    char *frame = malloc(n + tl + 32);
    if (frame) {
        int k = snprintf(frame, n + tl + 32, "event: %s\ndata: %s\n\n", type, s);
        capmoe_http_stream_write(c->req, frame, (size_t)k);
    }
    free(frame);
    free(s);
}

/* The message's part ids: it is always output 0. */
static cJSON *part_ids(const gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "item_id", c->msg_id);
    cJSON_AddNumberToObject(o, "output_index", 0);
    cJSON_AddNumberToObject(o, "content_index", 0);
    return o;
}

static void item_event(gen_call *c, const char *type, int index, cJSON *item) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "output_index", index);
    cJSON_AddItemToObject(o, "item", item);
    capmoe_api_response_event(c, type, o);
}

/* output_item.added (empty message), content_part.added (empty text). */
static void message_open(gen_call *c) {
    item_event(c, "response.output_item.added", 0, output_message(c, "in_progress", NULL));
    cJSON *o = part_ids(c);
    cJSON_AddItemToObject(o, "part", text_part(""));
    capmoe_api_response_event(c, "response.content_part.added", o);
}

/* output_text.done, content_part.done, output_item.done. */
static void message_close(gen_call *c, const char *text) {
    cJSON *o = part_ids(c);
    cJSON_AddStringToObject(o, "text", text);
    cJSON_AddArrayToObject(o, "logprobs");
    capmoe_api_response_event(c, "response.output_text.done", o);
    o = part_ids(c);
    cJSON_AddItemToObject(o, "part", text_part(text));
    capmoe_api_response_event(c, "response.content_part.done", o);
    item_event(c, "response.output_item.done", 0, output_message(c, "completed", text));
}

static void text_delta(gen_call *c, const char *text) {
    cJSON *o = part_ids(c);
    cJSON_AddStringToObject(o, "delta", text);
    cJSON_AddArrayToObject(o, "logprobs");
    capmoe_api_response_event(c, "response.output_text.delta", o);
}

/* One function_call item: added (arguments ""), the arguments as one delta,
 * arguments.done, output_item.done. */
static void call_events(gen_call *c, int index, const cJSON *call) {
    cJSON *done = function_call_item(call, "completed", NULL);
    const char *fid = cJSON_GetObjectItemCaseSensitive(done, "id")->valuestring;
    const char *name = cJSON_GetObjectItemCaseSensitive(done, "name")->valuestring;
    const char *args = cJSON_GetObjectItemCaseSensitive(done, "arguments")->valuestring;
    item_event(c, "response.output_item.added", index, function_call_item(call, "in_progress", ""));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "item_id", fid);
    cJSON_AddNumberToObject(o, "output_index", index);
    cJSON_AddStringToObject(o, "delta", args);
    capmoe_api_response_event(c, "response.function_call_arguments.delta", o);
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "item_id", fid);
    cJSON_AddNumberToObject(o, "output_index", index);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "arguments", args);
    capmoe_api_response_event(c, "response.function_call_arguments.done", o);
    item_event(c, "response.output_item.done", index, done);
}

void capmoe_api_response_stream_start(gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", capmoe_api_response_object(c, "in_progress"));
    capmoe_api_response_event(c, "response.created", o);
    o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", capmoe_api_response_object(c, "in_progress"));
    capmoe_api_response_event(c, "response.in_progress", o);
    if (!tools_on(c)) message_open(c); /* with tools: once the text is known */
}

void capmoe_api_response_stream_delta(gen_call *c, const char *text, size_t len) {
    if (len == 0 || tools_on(c)) return; /* with tools the text is held until the end */
    char *t = strndup(text, len);
    if (!t) return;
    text_delta(c, t);
    free(t);
}

void capmoe_api_response_stream_end(gen_call *c) {
    const char *text = c->ch[0].text.p ? c->ch[0].text.p : "";
    if (!tools_on(c)) {
        message_close(c, text);
    } else { /* the held text: a message, the calls, or both */
        char *content = NULL;
        cJSON *calls = parse_calls(c, &content);
        const char *msg = calls ? content : text;
        int index = 0;
        if (msg) {
            message_open(c);
            if (msg[0]) text_delta(c, msg);
            message_close(c, msg);
            index++;
        }
        for (const cJSON *x = calls ? calls->child : NULL; x; x = x->next) call_events(c, index++, x);
        free(content);
        cJSON_Delete(calls);
    }
    const char *status = capmoe_api_response_status(c);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", capmoe_api_response_object(c, status));
    capmoe_api_response_event(c, strcmp(status, "completed") == 0 ? "response.completed"
                                                                   : "response.incomplete",
                              o);
}

void capmoe_api_response_stream_error(gen_call *c, const char *code, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "code", code);
    cJSON_AddStringToObject(o, "message", msg);
    cJSON_AddNullToObject(o, "param");
    capmoe_api_response_event(c, "error", o);
}
