/* access_log.h - one log record per HTTP request (server/access_log.c).
 *
 * Fields: method, path, status, bytes (body bytes sent), duration_ms,
 * request_id, remote (client address), and for generations the note the API
 * attached to the request: prompt_tokens, completion_tokens, finish_reason
 * (the distinct reasons of its choices, e.g. "length" or "stop,length";
 * "abort" when the client left), policy (of its last forward), gamma (the
 * configured capacity factor, a number or "auto"), limited_dispatches /
 * dispatches (MoE layer dispatches of its forwards that a capacity limit
 * applied to / in all), gamma_applied (the gamma of those limited
 * dispatches: one value, or min..max; "none" when no limit applied). */
#ifndef CAPMOE_ACCESS_LOG_H
#define CAPMOE_ACCESS_LOG_H

#include "capmoe/http.h"
#include "capmoe/log.h"

/* The API's note on a generation request (capmoe_http_req_set_note). */
typedef struct capmoe_access_gen {
    long long prompt_tokens, completion_tokens;
    char finish_reason[64];
    char policy[16];
    char gamma[32];
    long dispatches, limited;
    double gamma_min, gamma_max;
} capmoe_access_gen;

/* Writes the record of req at info level (nothing when log is NULL or below
 * info). Reads the note as a capmoe_access_gen when there is one. */
void capmoe_access_log(capmoe_log *log, const capmoe_http_req *req);

#endif
