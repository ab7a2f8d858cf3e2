/* api_stream.c - the SSE writer: chunk objects of chat and completions
 * streams, framed as "data: ...\n\n" (sse.h). */
#include "capmoe/sse.h"
#include "capmoe/utf8.h"
#include "api_internal.h"
#include "api_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *capmoe_sse_frame(const char *json, size_t *len) {
    size_t n = strlen(json);
    char *s = malloc(n + 9);
    if (!s) return NULL;
    memcpy(s, "data: ", 6);
    memcpy(s + 6, json, n);
    memcpy(s + 6 + n, "\n\n", 3);
    if (len) *len = n + 8;
    return s;
}

cJSON *capmoe_api_chunk_base(const gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", c->rq.kind == CAPMOE_API_CHAT ? "chat.completion.chunk"
                                                                       : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", c->api->model_id);
    return o;
}

void capmoe_api_stream_send(gen_call *c, cJSON *o) {
    if (!c->req) {
        cJSON_Delete(o);
        return;
    }
    if (c->rq.include_usage && !cJSON_GetObjectItemCaseSensitive(o, "usage"))
        cJSON_AddNullToObject(o, "usage");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return;
    size_t n;
    char *frame = capmoe_sse_frame(s, &n);
    free(s);
    if (frame) capmoe_http_stream_write(c->req, frame, n);
    free(frame);
}

/* A chat chunk for choice idx with delta (consumed) and finish (may be NULL). */
static void send_delta(gen_call *c, int idx, cJSON *delta, const char *finish) {
    cJSON *o = capmoe_api_chunk_base(c);
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", idx);
    cJSON_AddItemToObject(ch, "delta", delta);
    cJSON_AddNullToObject(ch, "logprobs");
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
    capmoe_api_stream_send(c, o);
}

/* A chat choice with tools: content as soon as it cannot be the start of a
 * call, each call once its text is complete (capmoe_api_tool_stream_step),
 * as OpenAI streams them: {index, id, type, function: {name, arguments: ""}}
 * then {index, function: {arguments}}. */
static void stream_tools(gen_call *c, int idx, const char *text, size_t tlen, const char *finish) {
    choice_st *cs = &c->ch[idx];
    if (tlen > 0) buf_add(&cs->text, text, tlen);
    char idb[64];
    snprintf(idb, sizeof idb, "%s_%d", c->id, idx);
    buf content = {0};
    cJSON *calls = NULL;
    capmoe_api_tool_stream_step(&c->rq, cs->text.p ? cs->text.p : "", idb, finish != NULL, &cs->ts,
                                &content, &calls);
    if (content.len > 0) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "content", content.p);
        send_delta(c, idx, d, NULL);
    }
    buf_free(&content);
    int k = cs->ts.calls_sent - cJSON_GetArraySize(calls);
    for (cJSON *x = calls ? calls->child : NULL; x; x = x->next, k++) {
        cJSON *fn = cJSON_GetObjectItemCaseSensitive(x, "function");
        cJSON *args = cJSON_DetachItemFromObjectCaseSensitive(fn, "arguments");
        cJSON_AddStringToObject(fn, "arguments", "");
        cJSON *head = cJSON_CreateObject();
        cJSON_AddNumberToObject(head, "index", k);
        cJSON_AddItemReferenceToObject(head, "id", cJSON_GetObjectItemCaseSensitive(x, "id"));
        cJSON_AddStringToObject(head, "type", "function");
        cJSON_AddItemReferenceToObject(head, "function", fn);
        cJSON *d = cJSON_CreateObject();
        cJSON_AddItemToArray(cJSON_AddArrayToObject(d, "tool_calls"), head);
        send_delta(c, idx, d, NULL);
        cJSON *part = cJSON_CreateObject();
        cJSON_AddNumberToObject(part, "index", k);
        cJSON_AddItemToObject(cJSON_AddObjectToObject(part, "function"), "arguments", args);
        d = cJSON_CreateObject();
        cJSON_AddItemToArray(cJSON_AddArrayToObject(d, "tool_calls"), part);
        send_delta(c, idx, d, NULL);
    }
    cJSON_Delete(calls);
    if (finish)
        send_delta(c, idx, cJSON_CreateObject(), cs->ts.has_calls ? "tool_calls" : finish);
}

/* One streamed chunk for choice idx: text (may be empty), logprobs, finish. */
void capmoe_api_stream_choice(gen_call *c, int idx, const char *text, size_t tlen,
                          cJSON *logprobs, const char *finish, int role) {
    if (c->responses) { /* the text is kept for the .done events */
        cJSON_Delete(logprobs);
        if (tlen > 0) {
            buf_add(&c->ch[idx].text, text, tlen);
            capmoe_api_response_stream_delta(c, text, tlen);
        }
        return;
    }
    if (!role && c->rq.kind == CAPMOE_API_CHAT && c->rq.tools_json &&
        c->rq.tool_choice != CAPMOE_TOOLS_NONE) {
        stream_tools(c, idx, text, tlen, finish);
        cJSON_Delete(logprobs);
        return;
    }
    cJSON *o = capmoe_api_chunk_base(c);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", idx);
    char *t = strndup(text ? text : "", tlen);
    if (c->rq.kind == CAPMOE_API_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (role || tlen > 0) cJSON_AddStringToObject(delta, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(ch, "text", t ? t : "");
    }
    free(t);
    if (logprobs) cJSON_AddItemToObject(ch, "logprobs", logprobs);
    else cJSON_AddNullToObject(ch, "logprobs");
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(choices, ch);
    capmoe_api_stream_send(c, o);
}

void capmoe_api_stream_error(gen_call *c, int status, const char *type, const char *msg) {
    if (c->responses) {
        capmoe_api_response_stream_error(c, type, msg);
        return;
    }
    capmoe_api_error e;
    capmoe_api_fail(&e, status, type, NULL, NULL, "%s", msg);
    if (!c->req) return;
    cJSON *o = capmoe_api_error_body(c->req, &e);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return;
    size_t n;
    char *frame = capmoe_sse_frame(s, &n);
    free(s);
    if (frame) capmoe_http_stream_write(c->req, frame, n);
    free(frame);
}

/* Stream: the first chunk of a choice (chat: the role; completions + echo:
 * the prompt text with its logprobs). */
void capmoe_api_stream_start_choice(gen_call *c, int idx) {
    choice_st *ch = &c->ch[idx];
    if (ch->started) return;
    ch->started = 1;
    if (c->responses) {
        capmoe_api_response_stream_start(c);
        return;
    }
    if (c->rq.kind == CAPMOE_API_CHAT) {
        capmoe_api_stream_choice(c, idx, "", 0, NULL, NULL, 1);
        return;
    }
    if (!c->rq.echo) return;
    int sub = idx / c->rq.n;
    const char *echo = c->sub_echo[sub];
    cJSON *lp = NULL;
    if (c->rq.logprobs >= 0)
        lp = capmoe_api_completion_logprobs(c, ch->ptoks, ch->n_ptoks, c->sub_ids[sub][0], 1, NULL, 0,
                                 &ch->text_chars);
    else
        ch->text_chars += capmoe_utf8_chars(echo, strlen(echo));
    capmoe_api_stream_choice(c, idx, echo, strlen(echo), lp, NULL, 0);
}

void capmoe_api_stream_done(gen_call *c) {
    static const char done[] = "data: [DONE]\n\n";
    if (!c->responses) capmoe_http_stream_write(c->req, done, sizeof done - 1);
    capmoe_http_stream_end(c->req);
}
