/* api_generate.c - the glue between generation requests and the scheduler:
 * a request becomes a gen_call with one scheduler request per prompt, the
 * scheduler's events (queued by its thread) become stream chunks or the
 * final answer, the access-log note and the per-request metrics. */
#include "capmoe/access_log.h"
#include "capmoe/log.h"
#include "api_internal.h"
#include "api_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- scheduler-thread side --------------------------------------------------------- */

void capmoe_api_sched_event(void *user, capmoe_sched_event *ev) {
    capmoe_api *api = user;
    ev_node *n = malloc(sizeof *n);
    if (!n) { /* cannot queue: keep the FINISHED contract by dropping only non-final events */
        if (ev->type != CAPMOE_EV_FINISHED) {
            capmoe_sched_event_free(ev);
            return;
        }
        while (!(n = malloc(sizeof *n))) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    n->ev = ev;
    n->next = NULL;
    pthread_mutex_lock(&api->mu);
    if (api->evq_tail) api->evq_tail->next = n;
    else api->evq_head = n;
    api->evq_tail = n;
    /* under mu: capmoe_api_detach_http guarantees no wake after it returns */
    if (api->http) capmoe_http_wake(api->http);
    pthread_mutex_unlock(&api->mu);
}

void capmoe_api_sched_step(void *user, const capmoe_sched_step_info *info) {
    capmoe_api *api = user;
    if (!api->metrics) return;
    capmoe_metrics_set_requests(api->metrics, info->n_running, info->n_waiting);
    capmoe_metrics_set_kv_cache(api->metrics, (double)info->kv_tokens, (double)info->kv_capacity,
                                (double)info->kv_bytes);
    capmoe_metrics_set_kv_token_bytes(api->metrics, (double)info->kv_token_bytes,
                                      (double)info->kv_token_bytes_expanded);
    if (info->fwd) capmoe_metrics_batch(api->metrics, info->batch_tokens, info->fwd);
}

/* ---- generation ------------------------------------------------------------------- */

void capmoe_api_call_unlink(gen_call *c) {
    capmoe_api *api = c->api;
    if (c->prev) c->prev->next = c->next;
    else if (api->calls == c) api->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

void capmoe_api_call_unref(gen_call *c) {
    if (--c->refs > 0) return;
    capmoe_api_call_unlink(c);
    c->api->n_calls--;
    int nch = c->n_sub_alloc * c->rq.n;
    for (int i = 0; c->ch && i < nch; i++) {
        buf_free(&c->ch[i].text);
        free(c->ch[i].toks);
        free(c->ch[i].ptoks);
    }
    for (int i = 0; i < c->n_sub_alloc; i++) {
        if (c->sub_ids) free(c->sub_ids[i]);
        if (c->sub_echo) free(c->sub_echo[i]);
    }
    free(c->ch);
    free(c->sub_id);
    free(c->sub_live);
    free(c->sub_ids);
    free(c->sub_n);
    free(c->sub_echo);
    capmoe_api_request_free(&c->rq);
    free(c->instructions);
    free(c);
}

static int push_tok(capmoe_tok_info **arr, int *n, int *cap, const capmoe_tok_info *t, int k) {
    if (*n + k > *cap) {
        int nc = *cap ? *cap : 16;
        while (nc < *n + k) nc *= 2;
        capmoe_tok_info *na = realloc(*arr, sizeof *na * (size_t)nc);
        if (!na) return -1;
        *arr = na;
        *cap = nc;
    }
    memcpy(*arr + *n, t, sizeof *t * (size_t)k);
    *n += k;
    return 0;
}

/* ---- access log and per-sequence metrics -------------------------------------------- */

static const char *success_reason(capmoe_finish f) {
    switch (f) {
    case CAPMOE_FINISH_STOP: return "stop";
    case CAPMOE_FINISH_LENGTH:
    case CAPMOE_FINISH_TIMEOUT: return "length";
    case CAPMOE_FINISH_CANCELLED: return "abort";
    default: return NULL;
    }
}

/* capmoe_request_success_total and the per-sequence token histograms. */
static void count_choice(capmoe_api *api, const gen_call *c, int sub,
                         const capmoe_sched_event *ev) {
    const char *r = success_reason(ev->finish);
    if (r && api->metrics)
        capmoe_metrics_request_finished(api->metrics, r, c->sub_n ? c->sub_n[sub] : 0,
                                        ev->n_generated);
}

static void note_free(void *p) { free(p); }

/* The generation's part of its access-log record (access_log.h). */
void capmoe_api_access_note(gen_call *c, int client_gone) {
    if (!c->req) return;
    capmoe_access_gen *g = calloc(1, sizeof *g);
    if (!g) return;
    const capmoe_config *cfg = c->api->cfg;
    g->prompt_tokens = c->prompt_tokens;
    g->completion_tokens = c->n_finished == c->n_sub ? c->completion_tokens : c->tokens_seen;
    if (client_gone) {
        snprintf(g->finish_reason, sizeof g->finish_reason, "abort");
    } else {
        size_t o = 0;
        const char *seen[8];
        int ns = 0;
        for (int i = 0; i < c->n_sub * c->rq.n; i++) {
            capmoe_finish f = c->ch[i].finish;
            const char *name = c->failed      ? "error"
                               : c->cancelled ? "abort"
                                              : (capmoe_api_finish_reason(f) ? capmoe_api_finish_reason(f) : "stop");
            int dup = 0;
            for (int k = 0; k < ns; k++) dup |= strcmp(seen[k], name) == 0;
            if (dup || ns == 8) continue;
            seen[ns++] = name;
            o += (size_t)snprintf(g->finish_reason + o, sizeof g->finish_reason - o, "%s%s",
                                  o ? "," : "", name);
            if (o >= sizeof g->finish_reason) break;
        }
    }
    snprintf(g->policy, sizeof g->policy, "%s",
             capmoe_policy_name((capmoe_policy)(c->dispatches ? c->policy : cfg->policy)));
    if (cfg->capacity_auto) snprintf(g->gamma, sizeof g->gamma, "auto");
    else snprintf(g->gamma, sizeof g->gamma, "%g", cfg->capacity_factor);
    g->dispatches = c->dispatches;
    g->limited = c->limited;
    g->gamma_min = c->gamma_min;
    g->gamma_max = c->gamma_max;
    capmoe_http_req_set_note(c->req, g, note_free);
}

/* All sub-requests are over: finish the HTTP answer. */
static void call_complete(gen_call *c) {
    capmoe_api *api = c->api;
    if (api->metrics) capmoe_metrics_e2e_latency(api->metrics, capmoe_now() - c->t_submit);
    if (!c->req || c->answered) return;
    capmoe_api_access_note(c, 0);
    if (!c->rq.stream) {
        capmoe_api_respond_final(c);
        return;
    }
    if (c->failed && api->state == CAPMOE_API_FAULT) {
        capmoe_api_error e;
        capmoe_api_not_ready(api, &e);
        capmoe_api_stream_error(c, 503, "unavailable_error", e.message);
    } else if (c->failed) {
        capmoe_api_stream_error(c, 500, "server_error", c->errmsg);
    } else if (c->cancelled) {
        capmoe_api_stream_error(c, 503, "unavailable_error",
                     api->state == CAPMOE_API_DRAINING
                         ? "the request was cancelled: the server is shutting down"
                         : "the request was cancelled");
    } else if (c->responses) {
        capmoe_api_response_stream_end(c);
    } else if (c->rq.include_usage) {
        cJSON *o = capmoe_api_chunk_base(c);
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", capmoe_api_usage_object(c));
        capmoe_api_stream_send(c, o);
    }
    capmoe_api_stream_done(c);
    capmoe_api_count_request(api, c->endpoint,
                  c->failed ? (api->state == CAPMOE_API_FAULT ? 503 : 500) : c->cancelled ? 503 : 200);
}

static int sub_index(const gen_call *c, uint64_t id) {
    for (int i = 0; i < c->n_sub; i++)
        if (c->sub_id[i] == id) return i;
    return -1;
}

static void handle_event(capmoe_api *api, capmoe_sched_event *ev) {
    if (ev->type == CAPMOE_EV_READY) {
        api->loaded = 1;
        if (api->state == CAPMOE_API_LOADING) api->state = CAPMOE_API_READY;
        int crossover = capmoe_sched_regime_tokens(api->sched);
        capmoe_metrics_set_regime_crossover(api->metrics, crossover);
        capmoe_log_field f[] = {CAPMOE_LOG_STR("model", api->model_id),
                                CAPMOE_LOG_INT("context", capmoe_sched_context(api->sched)),
                                CAPMOE_LOG_STR("chat_template", capmoe_chat_source(api->chat)),
                                CAPMOE_LOG_INT("regime_crossover_tokens", crossover),
                                CAPMOE_LOG_STR("tool_calls", capmoe_api_tool_form_name(
                                                                 capmoe_api_tools_form(api)))};
        capmoe_log_fields(api->log, CAPMOE_LOG_INFO, f, 5,
                          "model loaded; ready (memory/compute crossover: %d tokens per dispatch)",
                          crossover);
        return;
    }
    if (ev->type == CAPMOE_EV_FATAL) {
        api->state = CAPMOE_API_FAULT;
        snprintf(api->load_error, sizeof api->load_error, "%s", ev->error ? ev->error : "?");
        return;
    }
    if (ev->type == CAPMOE_EV_LOAD_FAILED) {
        api->state = CAPMOE_API_FAILED;
        snprintf(api->load_error, sizeof api->load_error, "%s", ev->error ? ev->error : "?");
        return;
    }
    gen_call *c = ev->user;
    if (!c) return;
    int sub = sub_index(c, ev->req_id);
    if (sub < 0) return;
    int idx = sub * c->rq.n + ev->choice;
    choice_st *ch = (ev->choice >= 0 && ev->choice < c->rq.n) ? &c->ch[idx] : NULL;
    switch (ev->type) {
    case CAPMOE_EV_PROMPT_LOGPROBS:
        if (ch) push_tok(&ch->ptoks, &ch->n_ptoks, &ch->cap_ptoks, ev->toks, ev->n_toks);
        break;
    case CAPMOE_EV_TOKEN: {
        if (!ch) break;
        if (api->metrics) {
            capmoe_metrics_generated_tokens(api->metrics, 1);
            if (!c->got_first)
                capmoe_metrics_time_to_first_token(api->metrics, ev->time - c->t_submit);
            else if (ch->last_token_time > 0)
                capmoe_metrics_inter_token_latency(api->metrics, ev->time - ch->last_token_time);
        }
        c->got_first = 1;
        c->tokens_seen++;
        ch->last_token_time = ev->time;
        if (c->rq.stream) {
            capmoe_api_stream_start_choice(c, idx);
            cJSON *lp = NULL;
            if (c->rq.logprobs >= 0 && ev->n_toks > 0) {
                if (c->rq.kind == CAPMOE_API_CHAT) lp = capmoe_api_chat_logprobs(c, ev->toks, ev->n_toks);
                else
                    lp = capmoe_api_completion_logprobs(c, NULL, 0, 0, 0, ev->toks, ev->n_toks,
                                             &ch->text_chars);
            }
            if (ev->text_len > 0 || lp) capmoe_api_stream_choice(c, idx, ev->text, ev->text_len, lp, NULL, 0);
        } else {
            buf_add(&ch->text, ev->text ? ev->text : "", ev->text_len);
            if (c->rq.logprobs >= 0 && ev->n_toks > 0)
                push_tok(&ch->toks, &ch->n_toks, &ch->cap_toks, ev->toks, ev->n_toks);
        }
        break;
    }
    case CAPMOE_EV_CHOICE_DONE:
        if (!ch) break;
        ch->finish = ev->finish;
        ch->done = 1;
        count_choice(api, c, sub, ev);
        if (ev->finish == CAPMOE_FINISH_ERROR) {
            c->failed = 1;
            snprintf(c->errmsg, sizeof c->errmsg, "%s", ev->error ? ev->error : "internal error");
        }
        if (c->rq.stream) {
            const char *fr = capmoe_api_finish_reason(ev->finish);
            if (!fr) break; /* cancelled / error: reported once at the end */
            capmoe_api_stream_start_choice(c, idx);
            if (ev->text_len > 0) capmoe_api_stream_choice(c, idx, ev->text, ev->text_len, NULL, NULL, 0);
            capmoe_api_stream_choice(c, idx, "", 0, NULL, fr, 0);
        } else {
            buf_add(&ch->text, ev->text ? ev->text : "", ev->text_len);
        }
        break;
    case CAPMOE_EV_FINISHED:
        c->prompt_tokens += ev->n_prompt;
        c->completion_tokens += ev->n_generated_total;
        if (ev->n_limited) {
            if (c->limited == 0 || ev->gamma_min < c->gamma_min) c->gamma_min = ev->gamma_min;
            if (c->limited == 0 || ev->gamma_max > c->gamma_max) c->gamma_max = ev->gamma_max;
        }
        c->dispatches += ev->n_dispatches;
        c->limited += ev->n_limited;
        c->policy = ev->policy;
        if (ev->cancelled) c->cancelled = 1;
        if (ev->error && !c->failed) {
            c->failed = 1;
            snprintf(c->errmsg, sizeof c->errmsg, "%s", ev->error);
        }
        if (api->metrics) {
            capmoe_metrics_prompt_tokens(api->metrics, ev->n_prompt);
            if (ev->t_admit > 0) capmoe_metrics_queue_time(api->metrics, ev->t_admit - ev->t_submit);
        }
        c->sub_live[sub] = 0;
        c->n_finished++;
        if (c->n_finished == c->n_sub) call_complete(c);
        capmoe_api_call_unref(c); /* the scheduler's reference */
        break;
    default:
        break;
    }
}

void capmoe_api_process(capmoe_api *api) {
    for (;;) {
        pthread_mutex_lock(&api->mu);
        ev_node *n = api->evq_head;
        api->evq_head = api->evq_tail = NULL;
        pthread_mutex_unlock(&api->mu);
        if (!n) return;
        while (n) {
            ev_node *next = n->next;
            handle_event(api, n->ev);
            capmoe_sched_event_free(n->ev);
            free(n);
            n = next;
        }
    }
}

/* Tokenizes the prompt(s) of a request into the call. */
static int build_prompts(capmoe_api *api, gen_call *c, capmoe_api_error *e) {
    const capmoe_tokenizer *tok = capmoe_sched_tokenizer(api->sched);
    int ctx = capmoe_sched_context(api->sched);
    capmoe_api_request *r = &c->rq;
    capmoe_error err;
    int n_sub = r->kind == CAPMOE_API_CHAT ? 1 : r->n_prompts;
    c->n_sub = n_sub;
    c->n_sub_alloc = n_sub;
    c->sub_id = calloc((size_t)n_sub, sizeof *c->sub_id);
    c->sub_live = calloc((size_t)n_sub, sizeof *c->sub_live);
    c->sub_ids = calloc((size_t)n_sub, sizeof *c->sub_ids);
    c->sub_n = calloc((size_t)n_sub, sizeof *c->sub_n);
    c->sub_echo = calloc((size_t)n_sub, sizeof *c->sub_echo);
    c->ch = calloc((size_t)n_sub * (size_t)r->n, sizeof *c->ch);
    if (!c->sub_id || !c->sub_live || !c->sub_ids || !c->sub_n || !c->sub_echo || !c->ch)
        return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    const char *param = r->kind == CAPMOE_API_CHAT ? "messages" : "prompt";
    for (int i = 0; i < n_sub; i++) {
        if (r->kind == CAPMOE_API_CHAT) {
            char *text = NULL;
            const char *tools = r->tool_choice == CAPMOE_TOOLS_NONE ? NULL : r->tools_json;
            int arc;
            if (r->messages_json || tools) {
                char *mj = capmoe_api_tools_history(r->messages_json, r->tool_form);
                if (!mj) mj = r->messages_json;
                if (!mj) { /* plain messages, rendered with the tools */
                    cJSON *arr = cJSON_CreateArray();
                    for (int k = 0; k < r->n_messages; k++) {
                        cJSON *m = cJSON_CreateObject();
                        cJSON_AddStringToObject(m, "role", r->messages[k].role);
                        cJSON_AddStringToObject(m, "content", r->messages[k].content);
                        cJSON_AddItemToArray(arr, m);
                    }
                    mj = cJSON_PrintUnformatted(arr);
                    cJSON_Delete(arr);
                    if (!mj) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
                }
                arc = capmoe_chat_apply(api->chat, mj, tools, 1, NULL, &text, &err);
                if (mj != r->messages_json) free(mj);
            } else {
                arc = capmoe_chat_apply_msgs(api->chat, r->messages, r->n_messages, 1, &text, &err);
            }
            if (arc != 0)
                return E400(e, "messages", "cannot apply the chat template: %s", err.msg);
            if (r->tool_prefill) { /* a required / named call's opening marker */
                size_t a = strlen(text), b = strlen(r->tool_prefill);
                char *t2 = realloc(text, a + b + 1);
                if (!t2) {
                    free(text);
                    return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
                }
                memcpy(t2 + a, r->tool_prefill, b + 1);
                text = t2;
            }
            /* the template writes its special tokens (bos) as text */
            int rc = capmoe_tokenizer_encode(tok, text, strlen(text), 0, &c->sub_ids[i], &c->sub_n[i],
                                             &err);
            free(text);
            if (rc != 0) return E400(e, "messages", "cannot tokenize: %s", err.msg);
        } else if (r->prompts[i].text) {
            if (capmoe_tokenizer_encode(tok, r->prompts[i].text, r->prompts[i].text_len,
                                        r->add_special, &c->sub_ids[i], &c->sub_n[i], &err) != 0)
                return E400(e, "prompt", "cannot tokenize: %s", err.msg);
            if (r->echo) c->sub_echo[i] = strdup(r->prompts[i].text);
        } else {
            c->sub_n[i] = r->prompts[i].n_ids;
            c->sub_ids[i] = malloc(sizeof(int32_t) * (size_t)c->sub_n[i]);
            if (!c->sub_ids[i])
                return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
            memcpy(c->sub_ids[i], r->prompts[i].ids, sizeof(int32_t) * (size_t)c->sub_n[i]);
            if (r->echo) {
                size_t tl;
                if (capmoe_tokenizer_decode(tok, c->sub_ids[i], c->sub_n[i], 0, &c->sub_echo[i],
                                            &tl, &err) != 0)
                    return E400(e, "prompt", "cannot detokenize the prompt: %s", err.msg);
            }
        }
        if (r->echo && !c->sub_echo[i])
            return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        if (c->sub_n[i] == 0)
            return E400(e, param, "the prompt is empty (0 tokens)");
        if (c->sub_n[i] >= ctx)
            return capmoe_api_fail(e, 400, "invalid_request_error", "context_length_exceeded",
                                   param,
                                   "This model's maximum context length is %d tokens, but the "
                                   "prompt has %d tokens (at least one token must be left for "
                                   "the completion)",
                                   ctx, c->sub_n[i]);
    }
    return 0;
}

/* Extra stop ids for chat: the end-of-turn marker of the template family. */
static int chat_stop_ids(const capmoe_tokenizer *tok, int32_t *out, int max) {
    static const char *names[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>",
                                  "<|end|>", "<|eom_id|>"};
    int n = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && n < max; i++) {
        int id = capmoe_tokenizer_token_to_id(tok, names[i]);
        if (id >= 0 && capmoe_tokenizer_is_special(tok, id)) out[n++] = id;
    }
    return n;
}

/* responses: the body is a Responses request, translated into a chat one. */
static void generate(capmoe_api *api, capmoe_http_req *req, capmoe_api_kind kind,
                     const char *endpoint, int responses) {
    capmoe_api_error e;
    if (api->state != CAPMOE_API_READY) {
        capmoe_api_not_ready(api, &e);
        capmoe_api_send_error(api, req, endpoint, &e);
        return;
    }
    gen_call *c = calloc(1, sizeof *c);
    if (!c) {
        capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
        capmoe_api_send_error(api, req, endpoint, &e);
        return;
    }
    c->api = api;
    c->refs = 1;
    c->endpoint = endpoint;
    c->t_submit = capmoe_now();
    c->created = (long long)time(NULL);
    api->n_calls++;
    c->next = api->calls;
    if (api->calls) api->calls->prev = c;
    api->calls = c;
    snprintf(c->id, sizeof c->id, "%s-%llx%08llx",
             responses ? "resp" : kind == CAPMOE_API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)api->start_time, ++api->next_id);
    c->responses = responses;
    snprintf(c->msg_id, sizeof c->msg_id, "msg-%llx%08llx", (unsigned long long)api->start_time,
             api->next_id);

    size_t len;
    const char *body = capmoe_http_req_body(req, &len);
    const capmoe_tokenizer *tok = capmoe_sched_tokenizer(api->sched);
    capmoe_api_limits lim = {capmoe_sched_context(api->sched), capmoe_sched_vocab(api->sched),
                             16};
    if (responses) {
        char *chat_body = NULL;
        if (capmoe_api_responses_translate(body, len, &chat_body, &c->instructions, &e) != 0)
            goto fail;
        int prc = capmoe_api_parse_request(kind, chat_body, strlen(chat_body), &lim, &c->rq, &e);
        free(chat_body);
        if (prc != 0) {
            capmoe_api_responses_param(&e);
            goto fail;
        }
    } else if (capmoe_api_parse_request(kind, body, len, &lim, &c->rq, &e) != 0) {
        goto fail;
    }
    if (c->rq.model && strcmp(c->rq.model, api->model_id) != 0) {
        capmoe_api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
                        "The model '%s' does not exist (this server serves '%s')", c->rq.model,
                        api->model_id);
        goto fail;
    }
    if (c->rq.tools_json &&
        capmoe_api_tools_set_form(&c->rq, capmoe_api_tools_form(api), &e) != 0) {
        if (responses) capmoe_api_responses_param(&e);
        goto fail;
    }
    if (c->rq.n > api->cfg->max_running) {
        E400(&e, "n", "'n' must be at most max_running (%d) on this server", api->cfg->max_running);
        goto fail;
    }
    if (build_prompts(api, c, &e) != 0) goto fail;

    capmoe_gen_params gp;
    int32_t stop_ids[CAPMOE_SCHED_MAX_STOP_IDS];
    int n_stop_ids = 0;
    for (int i = 0; i < c->rq.n_stop_ids; i++) stop_ids[n_stop_ids++] = c->rq.stop_ids[i];
    if (kind == CAPMOE_API_CHAT && !c->rq.ignore_eos)
        n_stop_ids += chat_stop_ids(tok, stop_ids + n_stop_ids,
                                    CAPMOE_SCHED_MAX_STOP_IDS - n_stop_ids);
    /* Submit every prompt; a failure cancels what was already submitted. */
    for (int i = 0; i < c->n_sub; i++) {
        capmoe_gen_params_default(&gp);
        gp.prompt = c->sub_ids[i];
        gp.n_prompt = c->sub_n[i];
        gp.n = c->rq.n;
        int ctx = capmoe_sched_context(api->sched);
        gp.max_tokens = c->rq.max_tokens > 0 ? c->rq.max_tokens
                        : kind == CAPMOE_API_CHAT ? ctx - gp.n_prompt
                                                  : 16;
        gp.sampling = c->rq.sampling;
        gp.has_seed = c->rq.has_seed;
        gp.seed = c->rq.seed;
        gp.stop = (const char *const *)c->rq.stop;
        gp.n_stop = c->rq.n_stop;
        gp.stop_ids = stop_ids;
        gp.n_stop_ids = n_stop_ids;
        gp.ignore_eos = c->rq.ignore_eos;
        gp.logprobs = c->rq.logprobs;
        gp.prompt_logprobs = kind == CAPMOE_API_COMPLETIONS && c->rq.echo && c->rq.logprobs >= 0;
        gp.skip_special = c->rq.skip_special;
        /* tool calls whose markers are special tokens ([TOOL_CALLS],
         * <|python_tag|>, DeepSeek's) are read from the text with them (as vLLM) */
        if (c->rq.tools_json && c->rq.tool_choice != CAPMOE_TOOLS_NONE &&
            c->rq.tool_form != CAPMOE_TOOL_FORM_HERMES && c->rq.tool_form != CAPMOE_TOOL_FORM_UNKNOWN)
            gp.skip_special = 0;
        gp.penalties = c->rq.penalties;
        gp.logit_bias = c->rq.logit_bias;
        gp.n_logit_bias = c->rq.n_logit_bias;
        gp.grammar = c->rq.grammar;
        gp.bypass_queue_limit = i > 0; /* the request as a whole was admitted */
        gp.user = c;
        capmoe_error err;
        capmoe_sched_rc rc = capmoe_sched_submit(api->sched, &gp, &c->sub_id[i], &err);
        if (rc != CAPMOE_SCHED_OK) {
            switch (rc) {
            case CAPMOE_SCHED_EINVAL: E400(&e, NULL, "%s", err.msg); break;
            case CAPMOE_SCHED_EFULL:
                capmoe_api_fail(&e, 429, "rate_limit_exceeded", "queue_full", NULL,
                                "the server is at capacity (%d requests waiting); retry later",
                                api->cfg->max_queue);
                break;
            case CAPMOE_SCHED_EDRAINING:
            case CAPMOE_SCHED_ENOTREADY: capmoe_api_not_ready(api, &e); break;
            default: capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "%s", err.msg); break;
            }
            for (int j = 0; j < i; j++) capmoe_sched_cancel(api->sched, c->sub_id[j]);
            c->n_sub = i; /* only the submitted ones will report FINISHED */
            goto fail;
        }
        c->sub_live[i] = 1;
        c->refs++;
    }
    c->req = req;
    capmoe_http_req_set_user(req, c);
    if (c->rq.stream) {
        static const char *hdrs[] = {"Cache-Control", "no-cache", "X-Accel-Buffering", "no", NULL};
        if (capmoe_http_stream_start(req, 200, "text/event-stream", hdrs) != 0) {
            for (int i = 0; i < c->n_sub; i++) capmoe_sched_cancel(api->sched, c->sub_id[i]);
            c->req = NULL;
            capmoe_http_req_set_user(req, NULL);
            capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "cannot start the stream");
            capmoe_api_send_error(api, req, endpoint, &e);
            capmoe_api_call_unref(c); /* the scheduler references keep it until FINISHED */
            return;
        }
        /* Chat streams announce the role of every choice at once. */
        if (kind == CAPMOE_API_CHAT)
            for (int i = 0; i < c->n_sub * c->rq.n; i++) capmoe_api_stream_start_choice(c, i);
    } else {
        capmoe_http_defer(req);
    }
    return;
fail:
    capmoe_api_send_error(api, req, endpoint, &e);
    capmoe_api_call_unref(c);
}

void capmoe_api_route_generate(capmoe_api *api, capmoe_http_req *req, capmoe_api_kind kind,
                               const char *endpoint) {
    generate(api, req, kind, endpoint, 0);
}

void capmoe_api_route_responses(capmoe_api *api, capmoe_http_req *req) {
    generate(api, req, CAPMOE_API_CHAT, "/v1/responses", 1);
}
