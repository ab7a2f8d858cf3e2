/* api_internal.h - what the server's API modules (server/api/api_*.c,
 * server/api/openai.c) share: the API object, a generation call, and the
 * functions one module offers the others. Not a public header: only
 * server/ includes it. Everything here runs on the loop thread except
 * capmoe_api_sched_event / capmoe_api_sched_step (scheduler thread). */
#ifndef CAPMOE_API_INTERNAL_H
#define CAPMOE_API_INTERNAL_H

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/openai.h"

/* ---- a growing NUL-terminated byte buffer ------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static inline int buf_add(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return -1;
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static inline void buf_free(buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- the API object and a generation call ---------------------------------------- */

typedef struct ev_node {
    capmoe_sched_event *ev;
    struct ev_node *next;
} ev_node;

/* A streamed chat choice's tool calls (api_toolcalls.c): what was sent so far. */
typedef struct capmoe_api_tool_stream {
    size_t content_sent;      /* bytes of the content */
    int calls_sent;           /* calls */
    int has_calls;            /* the choice has calls (finish_reason "tool_calls") */
} capmoe_api_tool_stream;

typedef struct choice_st {
    buf text;                 /* generated text (non-streaming) */
    capmoe_tok_info *toks;    /* generated tokens with logprobs (when requested) */
    int n_toks, cap_toks;
    capmoe_tok_info *ptoks;   /* prompt logprobs (echo + logprobs) */
    int n_ptoks, cap_ptoks;
    capmoe_finish finish;
    int done;
    int started;              /* stream: role / echo chunk sent */
    double last_token_time;
    long text_chars;          /* code points of the text so far (text_offset) */
    capmoe_api_tool_stream ts; /* stream with tools: what was sent */
} choice_st;

typedef struct gen_call {
    capmoe_api *api;
    capmoe_http_req *req;     /* NULL once the HTTP request is over */
    int refs;                 /* 1 for the HTTP request + 1 per unfinished sub-request */
    capmoe_api_request rq;
    const char *endpoint;
    char id[48];
    long long created;
    double t_submit;
    int got_first;
    int n_sub;                /* scheduler requests submitted (one per prompt) */
    int n_sub_alloc;          /* entries allocated in the per-sub arrays */
    uint64_t *sub_id;
    int *sub_live;            /* submitted and not FINISHED */
    int32_t **sub_ids;        /* prompt token ids per sub */
    int *sub_n;
    char **sub_echo;          /* echo text per sub (NULL unless echo) */
    choice_st *ch;            /* n_sub * n */
    long long prompt_tokens, completion_tokens;
    int n_finished;
    int failed;               /* a sub ended with an error */
    int cancelled;
    int answered;             /* the HTTP answer went out early (capmoe_api_fault) */
    char errmsg[512];
    /* for the access log: tokens streamed so far, the dispatches of its forwards */
    long long tokens_seen;
    long dispatches, limited;
    double gamma_min, gamma_max;
    int policy;
    /* POST /v1/responses (api_responses.c): a chat request answered in the
     * Responses format */
    int responses;
    char msg_id[48];          /* the output message's id */
    char *instructions;       /* echoed in the response object (malloc'd) */
    int seq_no;               /* the stream's next sequence_number */
    struct gen_call *prev, *next;
} gen_call;

struct capmoe_api {
    const capmoe_config *cfg;
    capmoe_metrics *metrics;
    capmoe_http *http;
    capmoe_sched *sched;
    capmoe_chat *chat;        /* the chat template, loaded (and compiled) at start */
    char *model_id;
    capmoe_api_state state;
    int loaded;               /* READY was seen: tokenizer / context readable */
    char load_error[CAPMOE_ERR_MSG];
    long long start_time;
    unsigned long long next_id;
    pthread_mutex_t mu;       /* guards evq */
    ev_node *evq_head, *evq_tail;
    gen_call *calls;          /* generation calls the scheduler still owes events */
    int n_calls;
    capmoe_log *log;          /* borrowed; NULL: no records */
    int tool_form;            /* 1 + the form in which the template writes tool calls
                                 (capmoe_api_tool_form), 0: not probed yet (api_tools.c) */
};

/* ---- api_error.c ------------------------------------------------------------------- */

/* {"error":{...}} as a new cJSON object (the caller owns it). */
cJSON *capmoe_api_error_object(const capmoe_api_error *e);

/* ---- api_respond.c: answers ---------------------------------------------------------- */

/* Counts a request with its final status (capmoe_request_total). */
void capmoe_api_count_request(capmoe_api *api, const char *endpoint, int status);
/* Sends body (consumed) as JSON with extra headers (name, value, ..., NULL). */
void capmoe_api_send_json(capmoe_api *api, capmoe_http_req *req, const char *endpoint, int status,
                          cJSON *body, const char *const *headers);
/* The error object plus the request id (also in the X-Request-Id header). */
cJSON *capmoe_api_error_body(const capmoe_http_req *req, const capmoe_api_error *e);
/* Sends e (Retry-After on 429/503, WWW-Authenticate on 401). */
void capmoe_api_send_error(capmoe_api *api, capmoe_http_req *req, const char *endpoint,
                           const capmoe_api_error *e);
/* The 503 of the current state (loading, failed, fault, draining). */
void capmoe_api_not_ready(const capmoe_api *api, capmoe_api_error *e);

/* ---- api_routes.c ------------------------------------------------------------------ */

void capmoe_api_route_health(capmoe_api *api, capmoe_http_req *req);
void capmoe_api_route_metrics(capmoe_api *api, capmoe_http_req *req);
/* id NULL: the list; else that model or 404. */
void capmoe_api_route_models(capmoe_api *api, capmoe_http_req *req, const char *id);
void capmoe_api_route_tokenize(capmoe_api *api, capmoe_http_req *req);
void capmoe_api_route_detokenize(capmoe_api *api, capmoe_http_req *req);

/* ---- api_generate.c ---------------------------------------------------------------- */

/* Scheduler callbacks (scheduler thread): queue the event / publish gauges. */
void capmoe_api_sched_event(void *user, capmoe_sched_event *ev);
void capmoe_api_sched_step(void *user, const capmoe_sched_step_info *info);
/* POST /v1/completions, /v1/chat/completions. */
void capmoe_api_route_generate(capmoe_api *api, capmoe_http_req *req, capmoe_api_kind kind,
                               const char *endpoint);
/* api_tools.c: the form in which the chat template writes tool calls
 * (probed once by rendering a conversation with a call). */
capmoe_api_tool_form capmoe_api_tools_form(capmoe_api *api);
/* api_tools.c: the messages (with tool calls) as the template of form
 * expects them, malloc'd, or NULL when they need no change: DeepSeek-V3's
 * template wants an assistant's calls with content null and the arguments as
 * a JSON string; Mistral's wants call ids of 9 letters / digits (others are
 * replaced by capmoe_api_tool_id9 of them, in calls and results alike). */
char *capmoe_api_tools_history(const char *messages_json, capmoe_api_tool_form form);
/* api_toolcalls.c: a streamed choice with tools, given its whole text so far
 * (final: the text is complete): appends to content the content that is now
 * settled and not sent yet, sets *calls to an array (new; NULL when none) of
 * the calls now settled and not sent yet (as capmoe_api_tool_calls writes
 * them), and updates st. What a client assembles from all steps equals
 * capmoe_api_tool_calls of the whole text (content: its text when there are
 * no calls): text that cannot begin a call goes out at once, white space that
 * the final content may trim waits, and a call goes out once its text is
 * complete (Hermes: at </tool_call>; Mistral: its [TOOL_CALLS] JSON whole;
 * DeepSeek: the calls' end marker; Llama 3 and required / named calls: at the
 * end). -1: out of memory (or a bug: what was sent is not the final answer's start). */
int capmoe_api_tool_stream_step(const capmoe_api_request *r, const char *text, const char *id_base,
                                int final, capmoe_api_tool_stream *st, buf *content,
                                cJSON **calls);
/* api_toolcalls.c: 9 letters / digits derived from s and k (Mistral call ids). */
void capmoe_api_tool_id9(const char *s, int k, char out[10]);
/* api_tools.c: 1 when that form is Hermes / Qwen <tool_call>. */
int capmoe_api_tools_hermes(capmoe_api *api);
/* POST /v1/responses. */
void capmoe_api_route_responses(capmoe_api *api, capmoe_http_req *req);
void capmoe_api_call_unlink(gen_call *c);
/* Drops a reference; the last one frees the call. */
void capmoe_api_call_unref(gen_call *c);
/* Attaches the generation's part of the access-log record to its request. */
void capmoe_api_access_note(gen_call *c, int client_gone);

/* ---- api_result.c ---------------------------------------------------------------- */

/* "stop" / "length", or NULL (cancelled, error). */
const char *capmoe_api_finish_reason(capmoe_finish f);
cJSON *capmoe_api_usage_object(const gen_call *c);
/* Completions logprobs over entries (prompt ones first when with_prompt);
 * *offset: text_offset running count (code points). */
cJSON *capmoe_api_completion_logprobs(const gen_call *c, const capmoe_tok_info *ptoks,
                                      int n_ptoks, int32_t first_prompt_id, int with_prompt,
                                      const capmoe_tok_info *toks, int n_toks, long *offset);
/* Chat logprobs: {"content":[{token, logprob, bytes, top_logprobs}], "refusal": null}. */
cJSON *capmoe_api_chat_logprobs(const gen_call *c, const capmoe_tok_info *toks, int n_toks);
/* The whole non-streaming answer (or its error). */
void capmoe_api_respond_final(gen_call *c);

/* ---- api_responses.c: POST /v1/responses ------------------------------------------- */

/* Checks a Responses body and translates it into a chat-completions body
 * (*chat_body malloc'd) and the instructions (*instructions malloc'd or NULL). */
int capmoe_api_responses_translate(const char *body, size_t len, char **chat_body,
                                   char **instructions, capmoe_api_error *e);
/* Renames a chat parser's param into the Responses field it came from. */
void capmoe_api_responses_param(capmoe_api_error *e);
/* The response object; status "in_progress", "completed" or "incomplete". */
cJSON *capmoe_api_response_object(const gen_call *c, const char *status);
/* "completed", or "incomplete" when max_output_tokens cut it. */
const char *capmoe_api_response_status(const gen_call *c);
/* One event (o consumed: its fields follow "type"; sequence_number added). */
void capmoe_api_response_event(gen_call *c, const char *type, cJSON *o);
/* created, in_progress, output_item.added, content_part.added. */
void capmoe_api_response_stream_start(gen_call *c);
void capmoe_api_response_stream_delta(gen_call *c, const char *text, size_t len);
/* output_text.done ... response.completed / response.incomplete. */
void capmoe_api_response_stream_end(gen_call *c);
void capmoe_api_response_stream_error(gen_call *c, const char *code, const char *msg);

/* ---- api_stream.c ---------------------------------------------------------------- */

/* A chunk's id / object / created / model. */
cJSON *capmoe_api_chunk_base(const gen_call *c);
/* Sends o (consumed) as one SSE event (nothing once the client is gone). */
void capmoe_api_stream_send(gen_call *c, cJSON *o);
/* One chunk for choice idx: text (may be empty), logprobs (consumed), finish;
 * role: chat's first chunk. */
void capmoe_api_stream_choice(gen_call *c, int idx, const char *text, size_t tlen,
                              cJSON *logprobs, const char *finish, int role);
/* An error event. */
void capmoe_api_stream_error(gen_call *c, int status, const char *type, const char *msg);
/* The first chunk of a choice (chat: the role; completions + echo: the prompt). */
void capmoe_api_stream_start_choice(gen_call *c, int idx);
/* "data: [DONE]" and the end of the stream. */
void capmoe_api_stream_done(gen_call *c);

#endif
