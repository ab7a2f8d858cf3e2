/* openai.h - the HTTP API of capmoe-server: routes, request parsing and
 * validation (JSON -> native structs), responses, SSE, error bodies.
 *
 * Routes
 *   POST /v1/completions, POST /v1/chat/completions   generation (JSON or SSE)
 *   GET  /v1/models, GET /v1/models/{id}
 *   GET  /health      503 {"error":{...,"type":"unavailable_error"}} while loading
 *                     or shutting down, 200 {"status":"ok"} when ready
 *   GET  /metrics     Prometheus text 0.0.4 (capmoe_metrics_render)
 *   POST /tokenize    {"prompt"|"text", "add_special_tokens"} -> {"tokens","count","max_model_len"}
 *   POST /detokenize  {"tokens":[...]} -> {"prompt","text"}
 * Errors are {"error":{"message","type","param","code"},"request_id":"..."}
 * (request_id as in the X-Request-Id header): 400 invalid_request_error
 * (malformed JSON, invalid UTF-8, wrong types, out-of-range values, prompt
 * longer than the context), 401 invalid_api_key, 404 not_found /
 * model_not_found, 405 (+Allow), 413, 429 (+Retry-After) when the queue is
 * full, 503 (+Retry-After) while loading or draining, 500 server_error.
 * With an api_key, /v1/..., /tokenize and /detokenize need the bearer token;
 * /health and /metrics stay public (as in vLLM).
 *
 * Request parsing: api_request.h; errors: api_error.h; SSE framing: sse.h;
 * UTF-8 checks: utf8.h (all included here). Server-side modules: see the
 * map at the top of server/api/openai.c.
 *
 * Threads: everything runs on the loop thread except capmoe_api_sched_event /
 * capmoe_api_sched_step, which the scheduler thread calls; they only queue and
 * wake the loop (capmoe_http_wake). */
#ifndef CAPMOE_OPENAI_H
#define CAPMOE_OPENAI_H

#include <stddef.h>

#include "capmoe/api_error.h"
#include "capmoe/api_request.h"
#include "capmoe/chat.h"
#include "capmoe/common.h"
#include "capmoe/config.h"
#include "capmoe/http.h"
#include "capmoe/log.h"
#include "capmoe/metrics.h"
#include "capmoe/sample.h"
#include "capmoe/sched.h"
#include "capmoe/sse.h"
#include "capmoe/utf8.h"

/* ---- the API object ---------------------------------------------------------------- */

typedef struct capmoe_api capmoe_api;

typedef enum capmoe_api_state {
    CAPMOE_API_LOADING = 0,
    CAPMOE_API_READY,
    CAPMOE_API_FAILED,
    CAPMOE_API_DRAINING,
    CAPMOE_API_FAULT      /* --ep mpi: a rank died or hung; everything is answered 503 */
} capmoe_api_state;

/* Creates the API and its scheduler (not started). cfg, metrics are borrowed
 * and must outlive the API; metrics may be NULL. */
int capmoe_api_new(capmoe_api **out, const capmoe_config *cfg, capmoe_metrics *metrics,
                   capmoe_error *err);
/* --ep mpi, before capmoe_api_start: the scheduler is rank 0 of comm (borrowed). */
void capmoe_api_set_comm(capmoe_api *api, capmoe_comm *comm);
/* Starts the scheduler thread (model loading). http is borrowed. */
int capmoe_api_start(capmoe_api *api, capmoe_http *http, capmoe_error *err);
/* Stops waking the loop from the scheduler thread (events queue up and are
 * handled by capmoe_api_free). Call before capmoe_http_stop: the loop's async
 * handle is closed after that. Thread-safe. */
void capmoe_api_detach_http(capmoe_api *api);
/* Stops the scheduler (cancelling what is left), processes its last events
 * and frees everything. Call after capmoe_http_run returned. NULL ok. */
void capmoe_api_free(capmoe_api *api);

/* http callbacks (loop thread). */
void capmoe_api_on_request(capmoe_api *api, capmoe_http_req *req);
void capmoe_api_on_done(capmoe_api *api, capmoe_http_req *req, int aborted);
void capmoe_api_on_rejected(capmoe_api *api, const char *path, int status);
/* Handles queued scheduler events (call from on_wake). */
void capmoe_api_process(capmoe_api *api);

/* --ep mpi fault seen by the loop (a rank died or hangs while the scheduler
 * may be stuck in a step): every open generation is answered 503 now, with
 * `why`, and so is everything that follows. */
void capmoe_api_fault(capmoe_api *api, const char *why);
/* Draining: every new request but GET /metrics gets 503 shutting_down with
 * Retry-After (with capmoe_http_drain, also Connection: close); running
 * generations go on. */
void capmoe_api_drain(capmoe_api *api);
/* Records go to log (borrowed; NULL: none). */
void capmoe_api_set_log(capmoe_api *api, capmoe_log *log);
/* A reloaded dispatch configuration (capmoe_sched_set_dispatch). */
int capmoe_api_set_dispatch(capmoe_api *api, const capmoe_dispatch_cfg *d, capmoe_error *err);
/* Cancels every generation still running (grace period over). */
void capmoe_api_cancel_all(capmoe_api *api);
capmoe_api_state capmoe_api_get_state(const capmoe_api *api);
/* Weight memory of this process's model (valid once loaded). */
size_t capmoe_api_weight_bytes(const capmoe_api *api);
/* Generation calls the scheduler still owes a FINISHED for. */
int capmoe_api_busy(const capmoe_api *api);
/* The LOAD_FAILED message (valid in state FAILED), or the fault (state FAULT). */
const char *capmoe_api_error_msg(const capmoe_api *api);

#endif
