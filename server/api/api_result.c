/* api_result.c - the non-streaming answers of /v1/completions and
 * /v1/chat/completions, and the pieces streams share with them (logprobs
 * objects, finish reasons, usage). */
#include "capmoe/utf8.h"
#include "api_internal.h"
#include "api_json.h"

#include <stdlib.h>
#include <string.h>

/* The text of one token id alone (for logprobs). malloc'd. */
static char *token_text(const capmoe_api *api, int32_t id) {
    char *s = NULL;
    size_t n = 0;
    capmoe_error err;
    if (capmoe_tokenizer_decode(capmoe_sched_tokenizer(api->sched), &id, 1, 0, &s, &n, &err) != 0)
        return strdup("");
    return s;
}

static cJSON *bytes_array(const char *s) {
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
    return a;
}

/* Completions logprobs object over entries (prompt ones first when given). */
cJSON *capmoe_api_completion_logprobs(const gen_call *c, const capmoe_tok_info *ptoks, int n_ptoks,
                                  int32_t first_prompt_id, int with_prompt,
                                  const capmoe_tok_info *toks, int n_toks, long *offset) {
    const capmoe_api *api = c->api;
    cJSON *lp = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(lp, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON *off = cJSON_AddArrayToObject(lp, "text_offset");
    int total = (with_prompt ? 1 + n_ptoks : 0) + n_toks;
    for (int i = 0; i < total; i++) {
        const capmoe_tok_info *t = NULL;
        int32_t id = first_prompt_id;
        if (with_prompt && i == 0) id = first_prompt_id;
        else if (with_prompt && i <= n_ptoks) t = &ptoks[i - 1];
        else t = &toks[i - (with_prompt ? 1 + n_ptoks : 0)];
        if (t) id = t->id;
        char *s = token_text(api, id);
        cJSON_AddItemToArray(tokens, cJSON_CreateString(s ? s : ""));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)*offset));
        *offset += s ? capmoe_utf8_chars(s, strlen(s)) : 0;
        free(s);
        if (!t) {
            cJSON_AddItemToArray(tlp, cJSON_CreateNull());
            cJSON_AddItemToArray(top, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(t->logprob));
        cJSON *d = cJSON_CreateObject();
        for (int k = 0; k < t->n_top; k++) {
            char *ts = token_text(api, t->top_ids[k]);
            if (ts && !cJSON_GetObjectItemCaseSensitive(d, ts))
                cJSON_AddNumberToObject(d, ts, t->top_lps[k]);
            free(ts);
        }
        cJSON_AddItemToArray(top, d);
    }
    return lp;
}

/* Chat logprobs: {"content":[{token, logprob, bytes, top_logprobs}], "refusal": null}. */
cJSON *capmoe_api_chat_logprobs(const gen_call *c, const capmoe_tok_info *toks, int n_toks) {
    cJSON *lp = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(lp, "content");
    for (int i = 0; i < n_toks; i++) {
        const capmoe_tok_info *t = &toks[i];
        char *s = token_text(c->api, t->id);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "token", s ? s : "");
        cJSON_AddNumberToObject(o, "logprob", t->logprob);
        cJSON_AddItemToObject(o, "bytes", bytes_array(s ? s : ""));
        free(s);
        cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
        for (int k = 0; k < t->n_top; k++) {
            char *ts = token_text(c->api, t->top_ids[k]);
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "token", ts ? ts : "");
            cJSON_AddNumberToObject(x, "logprob", t->top_lps[k]);
            cJSON_AddItemToObject(x, "bytes", bytes_array(ts ? ts : ""));
            free(ts);
            cJSON_AddItemToArray(top, x);
        }
        cJSON_AddItemToArray(content, o);
    }
    cJSON_AddNullToObject(lp, "refusal");
    return lp;
}

const char *capmoe_api_finish_reason(capmoe_finish f) {
    switch (f) {
    case CAPMOE_FINISH_STOP: return "stop";
    case CAPMOE_FINISH_LENGTH:
    case CAPMOE_FINISH_TIMEOUT: return "length";
    default: return NULL;
    }
}

cJSON *capmoe_api_usage_object(const gen_call *c) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)c->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)c->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(c->prompt_tokens + c->completion_tokens));
    return u;
}


/* The whole non-streaming answer. */
void capmoe_api_respond_final(gen_call *c) {
    capmoe_api *api = c->api;
    if (c->failed) {
        capmoe_api_error e;
        if (api->state == CAPMOE_API_FAULT) capmoe_api_not_ready(api, &e);
        else capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "generation failed: %s", c->errmsg);
        capmoe_api_send_error(api, c->req, c->endpoint, &e);
        return;
    }
    if (c->cancelled) {
        capmoe_api_error e;
        capmoe_api_not_ready(api, &e);
        if (api->state != CAPMOE_API_DRAINING)
            capmoe_api_fail(&e, 503, "unavailable_error", "cancelled", NULL,
                            "the request was cancelled");
        capmoe_api_send_error(api, c->req, c->endpoint, &e);
        return;
    }
    if (c->responses) {
        capmoe_api_send_json(api, c->req, c->endpoint, 200,
                             capmoe_api_response_object(c, capmoe_api_response_status(c)), NULL);
        return;
    }
    int chat = c->rq.kind == CAPMOE_API_CHAT;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", api->model_id);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    int nch = c->n_sub * c->rq.n;
    for (int i = 0; i < nch; i++) {
        choice_st *ch = &c->ch[i];
        int sub = i / c->rq.n;
        cJSON *x = cJSON_CreateObject();
        int tool_calls = 0;
        cJSON_AddNumberToObject(x, "index", i);
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(x, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            char idb[64], *content = NULL;
            snprintf(idb, sizeof idb, "%s_%d", c->id, i);
            cJSON *calls = capmoe_api_tool_calls(&c->rq, ch->text.p ? ch->text.p : "", idb, &content);
            if (calls) {
                if (content) cJSON_AddStringToObject(msg, "content", content);
                else cJSON_AddNullToObject(msg, "content");
                cJSON_AddItemToObject(msg, "tool_calls", calls);
                tool_calls = 1;
                free(content);
            } else {
                cJSON_AddStringToObject(msg, "content", ch->text.p ? ch->text.p : "");
            }
            if (c->rq.logprobs >= 0)
                cJSON_AddItemToObject(x, "logprobs", capmoe_api_chat_logprobs(c, ch->toks, ch->n_toks));
            else
                cJSON_AddNullToObject(x, "logprobs");
        } else {
            buf t = {0};
            if (c->rq.echo) buf_add(&t, c->sub_echo[sub], strlen(c->sub_echo[sub]));
            buf_add(&t, ch->text.p ? ch->text.p : "", ch->text.len);
            cJSON_AddStringToObject(x, "text", t.p ? t.p : "");
            buf_free(&t);
            if (c->rq.logprobs >= 0) {
                long off = 0;
                cJSON_AddItemToObject(x, "logprobs",
                                      capmoe_api_completion_logprobs(c, ch->ptoks, ch->n_ptoks,
                                                          c->sub_ids[sub][0], c->rq.echo,
                                                          ch->toks, ch->n_toks, &off));
            } else {
                cJSON_AddNullToObject(x, "logprobs");
            }
        }
        const char *fr = tool_calls ? "tool_calls" : capmoe_api_finish_reason(ch->finish);
        if (fr) cJSON_AddStringToObject(x, "finish_reason", fr);
        else cJSON_AddStringToObject(x, "finish_reason", "stop");
        cJSON_AddItemToArray(choices, x);
    }
    cJSON_AddItemToObject(o, "usage", capmoe_api_usage_object(c));
    capmoe_api_send_json(api, c->req, c->endpoint, 200, o, NULL);
}

