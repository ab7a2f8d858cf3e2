/* api_responses.c - POST /v1/responses, the OpenAI Responses API, on top of
 * the chat path:
 *   - the request is checked and translated into a chat-completions body
 *     (instructions + input items -> messages, max_output_tokens ->
 *     max_completion_tokens, text.format -> response_format, function tools
 *     -> tools), which the chat parser then validates; its error params are
 *     named back in Responses terms;
 *   - the answer is a "response" object (output: one assistant message with
 *     one output_text part), and a stream is the Responses event stream:
 *     response.created, response.in_progress, response.output_item.added,
 *     response.content_part.added, response.output_text.delta...,
 *     response.output_text.done, response.content_part.done,
 *     response.output_item.done, response.completed (or .incomplete), each
 *     "event: <type>\ndata: {...,\"sequence_number\":k}\n\n".
 * Nothing is stored: previous_response_id and conversation are refused. */
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

static int translate_input(const cJSON *root, cJSON *msgs, capmoe_api_error *e) {
    const cJSON *in = capmoe_api_field(root, "input");
    if (!in) return E400(e, "input", "'input' is required");
    if (cJSON_IsString(in)) return add_message(msgs, "user", cJSON_CreateString(in->valuestring));
    if (!cJSON_IsArray(in)) return E400(e, "input", "'input' must be a string or a list of items");
    if (!in->child) return E400(e, "input", "'input' must not be empty");
    int i = 0;
    for (const cJSON *it = in->child; it; it = it->next, i++) {
        char param[48];
        snprintf(param, sizeof param, "input[%d]", i);
        if (!cJSON_IsObject(it)) return E400(e, param, "'%s' must be an object", param);
        const cJSON *type = capmoe_api_field(it, "type");
        const char *ts = type && cJSON_IsString(type) ? type->valuestring : "message";
        if (strcmp(ts, "message") != 0)
            return E400(e, param,
                        "'%s': items of type '%.40s' are not supported (only messages with "
                        "text content)", param, ts);
        const cJSON *role = capmoe_api_field(it, "role");
        if (!role || !cJSON_IsString(role))
            return E400(e, param, "'%s.role' must be a string", param);
        const char *rs = role->valuestring;
        if (strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 && strcmp(rs, "system") != 0 &&
            strcmp(rs, "developer") != 0)
            return E400(e, param, "'%s.role' must be user, assistant, system or developer, got "
                                  "'%.40s'", param, rs);
        const cJSON *content = capmoe_api_field(it, "content");
        char cparam[64];
        snprintf(cparam, sizeof cparam, "%s.content", param);
        if (!content) return E400(e, cparam, "'%s' is required", cparam);
        cJSON *c = item_content(content, cparam, e);
        if (!c) return -1;
        add_message(msgs, rs, c);
    }
    return 0;
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

/* Function tools {type, name, description, parameters, strict} -> chat tools. */
static int translate_tools(const cJSON *root, cJSON *out, capmoe_api_error *e) {
    const cJSON *tools = capmoe_api_field(root, "tools");
    if (tools) {
        if (!cJSON_IsArray(tools)) return E400(e, "tools", "'tools' must be a list");
        cJSON *t = cJSON_AddArrayToObject(out, "tools");
        int i = 0;
        for (const cJSON *it = tools->child; it; it = it->next, i++) {
            char param[32];
            snprintf(param, sizeof param, "tools[%d]", i);
            const cJSON *type = cJSON_IsObject(it) ? capmoe_api_field(it, "type") : NULL;
            if (!type || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0)
                return E400(e, param, "'%s': only function tools are supported (no hosted tools "
                                      "such as web search or file search)", param);
            return E400(e, "tools", "'tools' on /v1/responses are not supported yet (function_call "
                                    "output items are not produced): use /v1/chat/completions for "
                                    "function calling");
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
    const cJSON *tc = capmoe_api_field(root, "tool_choice");
    if (tc) {
        if (cJSON_IsObject(tc)) { /* {type: function, name} -> {type, function: {name}} */
            cJSON *x = cJSON_CreateObject();
            copy_field(tc, x, "type", "type");
            cJSON *fn = cJSON_AddObjectToObject(x, "function");
            copy_field(tc, fn, "name", "name");
            cJSON_AddItemToObject(out, "tool_choice", x);
        } else {
            cJSON_AddItemToObject(out, "tool_choice", cJSON_Duplicate(tc, 1));
        }
    }
    copy_field(root, out, "parallel_tool_calls", "parallel_tool_calls");
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
}

/* ---- the response object ------------------------------------------------------------ */

static cJSON *output_message(const gen_call *c, const char *status, int with_text) {
    const choice_st *ch = &c->ch[0];
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", c->msg_id);
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "status", status);
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON *content = cJSON_AddArrayToObject(m, "content");
    if (with_text) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "type", "output_text");
        cJSON_AddStringToObject(p, "text", ch->text.p ? ch->text.p : "");
        cJSON_AddArrayToObject(p, "annotations");
        cJSON_AddArrayToObject(p, "logprobs");
        cJSON_AddItemToArray(content, p);
    }
    return m;
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
    cJSON *out = cJSON_AddArrayToObject(o, "output");
    int done = strcmp(status, "in_progress") != 0;
    if (done) cJSON_AddItemToArray(out, output_message(c, "completed", 1));
    cJSON_AddBoolToObject(o, "parallel_tool_calls", 1);
    cJSON_AddNullToObject(o, "previous_response_id");
    cJSON *rs = cJSON_AddObjectToObject(o, "reasoning");
    cJSON_AddNullToObject(rs, "effort");
    cJSON_AddNullToObject(rs, "summary");
    cJSON_AddBoolToObject(o, "store", 0);
    cJSON_AddNumberToObject(o, "temperature", r->sampling.temperature);
    cJSON *text = cJSON_AddObjectToObject(o, "text");
    cJSON *fmt = cJSON_AddObjectToObject(text, "format");
    cJSON_AddStringToObject(fmt, "type", "text");
    cJSON_AddStringToObject(o, "tool_choice", "auto");
    cJSON_AddArrayToObject(o, "tools");
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

static cJSON *part_ids(const gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "item_id", c->msg_id);
    cJSON_AddNumberToObject(o, "output_index", 0);
    cJSON_AddNumberToObject(o, "content_index", 0);
    return o;
}

static cJSON *text_part(const char *text) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "output_text");
    cJSON_AddStringToObject(p, "text", text);
    cJSON_AddArrayToObject(p, "annotations");
    cJSON_AddArrayToObject(p, "logprobs");
    return p;
}

void capmoe_api_response_stream_start(gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", capmoe_api_response_object(c, "in_progress"));
    capmoe_api_response_event(c, "response.created", o);
    o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", capmoe_api_response_object(c, "in_progress"));
    capmoe_api_response_event(c, "response.in_progress", o);
    o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "output_index", 0);
    cJSON_AddItemToObject(o, "item", output_message(c, "in_progress", 0));
    capmoe_api_response_event(c, "response.output_item.added", o);
    o = part_ids(c);
    cJSON_AddItemToObject(o, "part", text_part(""));
    capmoe_api_response_event(c, "response.content_part.added", o);
}

void capmoe_api_response_stream_delta(gen_call *c, const char *text, size_t len) {
    if (len == 0) return;
    char *t = strndup(text, len);
    if (!t) return;
    cJSON *o = part_ids(c);
    cJSON_AddStringToObject(o, "delta", t);
    cJSON_AddArrayToObject(o, "logprobs");
    free(t);
    capmoe_api_response_event(c, "response.output_text.delta", o);
}

void capmoe_api_response_stream_end(gen_call *c) {
    const char *text = c->ch[0].text.p ? c->ch[0].text.p : "";
    cJSON *o = part_ids(c);
    cJSON_AddStringToObject(o, "text", text);
    cJSON_AddArrayToObject(o, "logprobs");
    capmoe_api_response_event(c, "response.output_text.done", o);
    o = part_ids(c);
    cJSON_AddItemToObject(o, "part", text_part(text));
    capmoe_api_response_event(c, "response.content_part.done", o);
    o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "output_index", 0);
    cJSON_AddItemToObject(o, "item", output_message(c, "completed", 1));
    capmoe_api_response_event(c, "response.output_item.done", o);
    const char *status = capmoe_api_response_status(c);
    o = cJSON_CreateObject();
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
