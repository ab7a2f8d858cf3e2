/* openai.c - the API object (openai.h): the route table, authentication,
 * the http callbacks, and the lifecycle (scheduler creation, drain, fault,
 * free). JSON lives only in the api_*.c modules: the scheduler sees native
 * structs (capmoe_gen_params) and hands back events.
 *
 * Where things are:
 *   api_request.c   request bodies -> capmoe_api_request (validation)
 *   api_json.c      typed field readers shared by the parsers
 *   api_error.c     error objects; api_respond.c  sending answers / errors
 *   api_routes.c    /health /metrics /v1/models /tokenize /detokenize
 *   api_generate.c  generation requests <-> scheduler events
 *   api_result.c    non-streaming answers, logprobs, usage
 *   api_stream.c    SSE chunks */
#include "capmoe/openai.h"
#include "api_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- routing ---------------------------------------------------------------------- */

typedef enum route_id {
    R_HEALTH, R_METRICS, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT, R_RESPONSES, R_TOKENIZE,
    R_DETOKENIZE
} route_id;

typedef struct route {
    const char *path;
    route_id id;
    int post;       /* 1: POST; 0: GET / HEAD */
    int auth;       /* needs the API key when one is set */
} route;

static const route k_routes[] = {
    {"/health", R_HEALTH, 0, 0},
    {"/metrics", R_METRICS, 0, 0},
    {"/v1/models", R_MODELS, 0, 1},
    {"/v1/completions", R_COMPLETIONS, 1, 1},
    {"/v1/chat/completions", R_CHAT, 1, 1},
    {"/v1/responses", R_RESPONSES, 1, 1},
    {"/tokenize", R_TOKENIZE, 1, 1},
    {"/detokenize", R_DETOKENIZE, 1, 1},
};

static int auth_ok(const capmoe_api *api, capmoe_http_req *req) {
    const char *key = api->cfg->api_key;
    if (!key || !key[0]) return 1;
    const char *h = capmoe_http_req_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t a = strlen(h), b = strlen(key);
    /* constant time in the key length */
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < a ? h[i] : 0);
    return diff == 0;
}

void capmoe_api_on_request(capmoe_api *api, capmoe_http_req *req) {
    const char *path = capmoe_http_req_path(req);
    const char *method = capmoe_http_req_method(req);
    const route *rt = NULL;
    const char *model_id = NULL;
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++)
        if (strcmp(path, k_routes[i].path) == 0) rt = &k_routes[i];
    static const route model_route = {"/v1/models", R_MODEL, 0, 1};
    if (!rt && strncmp(path, "/v1/models/", 11) == 0 && path[11]) {
        rt = &model_route;
        model_id = path + 11;
    }
    capmoe_api_error e;
    if (api->state == CAPMOE_API_DRAINING && (!rt || rt->id != R_METRICS)) {
        /* draining: every new request (health checks included) is told to go
         * elsewhere; /metrics still answers, for the scrape of the drain */
        capmoe_api_not_ready(api, &e);
        capmoe_api_send_error(api, req, rt ? rt->path : "other", &e);
        return;
    }
    if (!rt) {
        capmoe_api_fail(&e, 404, "invalid_request_error", "not_found", NULL,
                        "Unknown route: %s %s", method, path);
        capmoe_api_send_error(api, req, "other", &e);
        return;
    }
    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int ok = rt->post ? strcmp(method, "POST") == 0 : is_get;
    if (!ok) {
        capmoe_api_fail(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                        "Method %s is not allowed on %s (allowed: %s)", method, path,
                        rt->post ? "POST" : "GET, HEAD");
        const char *hdrs[] = {"Allow", rt->post ? "POST" : "GET, HEAD", NULL};
        capmoe_api_send_json(api, req, rt->path, 405, capmoe_api_error_body(req, &e), hdrs);
        return;
    }
    if (rt->auth && !auth_ok(api, req)) {
        capmoe_api_fail(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                        "Incorrect or missing API key: send \"Authorization: Bearer <key>\"");
        capmoe_api_send_error(api, req, rt->path, &e);
        return;
    }
    switch (rt->id) {
    case R_HEALTH: capmoe_api_route_health(api, req); break;
    case R_METRICS: capmoe_api_route_metrics(api, req); break;
    case R_MODELS: capmoe_api_route_models(api, req, NULL); break;
    case R_MODEL: capmoe_api_route_models(api, req, model_id); break;
    case R_COMPLETIONS: capmoe_api_route_generate(api, req, CAPMOE_API_COMPLETIONS, "/v1/completions"); break;
    case R_CHAT: capmoe_api_route_generate(api, req, CAPMOE_API_CHAT, "/v1/chat/completions"); break;
    case R_RESPONSES: capmoe_api_route_responses(api, req); break;
    case R_TOKENIZE: capmoe_api_route_tokenize(api, req); break;
    case R_DETOKENIZE: capmoe_api_route_detokenize(api, req); break;
    }
}

void capmoe_api_on_done(capmoe_api *api, capmoe_http_req *req, int aborted) {
    gen_call *c = capmoe_http_req_user(req);
    if (!c) return;
    if (aborted && c->n_finished < c->n_sub) capmoe_api_access_note(c, 1);
    capmoe_http_req_set_user(req, NULL);
    c->req = NULL;
    /* Client gone (or the answer was cut): free its sequences now. */
    for (int i = 0; i < c->n_sub; i++)
        if (c->sub_live[i]) capmoe_sched_cancel(api->sched, c->sub_id[i]);
    if (aborted && c->n_finished < c->n_sub) capmoe_api_count_request(api, c->endpoint, 499);
    capmoe_api_call_unref(c);
}

void capmoe_api_on_rejected(capmoe_api *api, const char *path, int status) {
    const char *ep = "other";
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++)
        if (strcmp(path, k_routes[i].path) == 0) ep = k_routes[i].path;
    capmoe_api_count_request(api, ep, status);
}

/* ---- lifecycle --------------------------------------------------------------------- */

int capmoe_api_new(capmoe_api **out, const capmoe_config *cfg, capmoe_metrics *metrics,
                   capmoe_error *err) {
    *out = NULL;
    capmoe_api *api = calloc(1, sizeof *api);
    if (!api) return capmoe_set_error(err, "out of memory");
    api->cfg = cfg;
    api->metrics = metrics;
    api->state = CAPMOE_API_LOADING;
    api->start_time = (long long)time(NULL);
    api->model_id = capmoe_config_model_id(cfg);
    pthread_mutex_init(&api->mu, NULL);
    capmoe_sched_opts so;
    memset(&so, 0, sizeof so);
    so.model_dir = cfg->model;
    so.context = cfg->context;
    so.max_batch_tokens = cfg->max_batch_tokens;
    so.max_running = cfg->max_running;
    so.threads = cfg->threads;
    so.weights = cfg->weights;
    so.quantize = cfg->quantize;
    so.compute = cfg->compute;
    so.kv_dtype = cfg->kv_dtype;
    so.max_queue = cfg->max_queue;
    so.request_timeout_s = cfg->request_timeout_s;
    capmoe_config_dispatch(cfg, &so.dispatch);
    so.collect_stats = metrics != NULL;
    so.on_event = capmoe_api_sched_event;
    so.on_step = capmoe_api_sched_step;
    so.user = api;
    if (!api->model_id || capmoe_chat_load(&api->chat, cfg->model, cfg->chat_template, err) != 0 ||
        capmoe_sched_new(&api->sched, &so, err) != 0) {
        if (!api->model_id) capmoe_set_error(err, "out of memory");
        pthread_mutex_destroy(&api->mu);
        capmoe_chat_free(api->chat);
        free(api->model_id);
        free(api);
        return -1;
    }
    *out = api;
    return 0;
}

void capmoe_api_set_comm(capmoe_api *api, capmoe_comm *comm) {
    capmoe_sched_set_comm(api->sched, comm, api->cfg->ep_step_timeout_s);
}

int capmoe_api_start(capmoe_api *api, capmoe_http *http, capmoe_error *err) {
    pthread_mutex_lock(&api->mu);
    api->http = http;
    pthread_mutex_unlock(&api->mu);
    return capmoe_sched_start(api->sched, err);
}

void capmoe_api_detach_http(capmoe_api *api) {
    pthread_mutex_lock(&api->mu);
    api->http = NULL;
    pthread_mutex_unlock(&api->mu);
}

void capmoe_api_free(capmoe_api *api) {
    if (!api) return;
    capmoe_api_detach_http(api); /* the loop is gone: events are processed right here */
    capmoe_sched_free(api->sched); /* emits the last FINISHED events */
    capmoe_api_process(api);
    /* Calls whose HTTP side never ended (cannot happen after capmoe_http_run
     * returned, but be safe): drop them. */
    while (api->calls) {
        gen_call *c = api->calls;
        capmoe_api_call_unlink(c);
        c->refs = 1;
        capmoe_api_call_unref(c);
    }
    pthread_mutex_destroy(&api->mu);
    capmoe_chat_free(api->chat);
    free(api->model_id);
    free(api);
}

void capmoe_api_fault(capmoe_api *api, const char *why) {
    api->state = CAPMOE_API_FAULT;
    snprintf(api->load_error, sizeof api->load_error, "%s", why);
    capmoe_api_error e;
    capmoe_api_not_ready(api, &e);
    for (gen_call *c = api->calls; c; c = c->next) {
        if (!c->req || c->answered) continue;
        c->answered = 1;
        if (c->rq.stream) {
            capmoe_api_stream_error(c, 503, "unavailable_error", e.message);
            capmoe_api_stream_done(c);
            capmoe_api_count_request(api, c->endpoint, 503);
        } else {
            capmoe_api_send_error(api, c->req, c->endpoint, &e);
        }
    }
}

void capmoe_api_drain(capmoe_api *api) {
    if (api->state == CAPMOE_API_READY || api->state == CAPMOE_API_LOADING)
        api->state = CAPMOE_API_DRAINING;
    capmoe_sched_drain(api->sched);
}

void capmoe_api_cancel_all(capmoe_api *api) { capmoe_sched_cancel_all(api->sched); }
void capmoe_api_set_log(capmoe_api *api, capmoe_log *log) { api->log = log; }
int capmoe_api_set_dispatch(capmoe_api *api, const capmoe_dispatch_cfg *d, capmoe_error *err) {
    return capmoe_sched_set_dispatch(api->sched, d, err);
}
capmoe_api_state capmoe_api_get_state(const capmoe_api *api) { return api->state; }
int capmoe_api_busy(const capmoe_api *api) { return api->n_calls; }
size_t capmoe_api_weight_bytes(const capmoe_api *api) {
    return api->loaded ? capmoe_sched_weight_bytes(api->sched) : 0;
}
const char *capmoe_api_error_msg(const capmoe_api *api) { return api->load_error; }
