/* access_log.c - the access log record of one HTTP request (access_log.h). */
#include "capmoe/access_log.h"

#include <stdio.h>

void capmoe_access_log(capmoe_log *log, const capmoe_http_req *req) {
    if (!capmoe_log_enabled(log, CAPMOE_LOG_INFO)) return;
    capmoe_log_field f[16];
    int n = 0;
    f[n++] = CAPMOE_LOG_STR("method", capmoe_http_req_method(req));
    f[n++] = CAPMOE_LOG_STR("path", capmoe_http_req_path(req));
    f[n++] = CAPMOE_LOG_INT("status", capmoe_http_req_status(req));
    f[n++] = CAPMOE_LOG_INT("bytes", capmoe_http_req_bytes(req));
    f[n++] = CAPMOE_LOG_NUM("duration_ms",
                            (double)(long long)(capmoe_http_req_duration(req) * 1e6) / 1e3);
    f[n++] = CAPMOE_LOG_STR("request_id", capmoe_http_req_id(req));
    f[n++] = CAPMOE_LOG_STR("remote", capmoe_http_req_remote(req));
    const capmoe_access_gen *g = capmoe_http_req_note(req);
    char applied[64];
    if (g) {
        f[n++] = CAPMOE_LOG_INT("prompt_tokens", g->prompt_tokens);
        f[n++] = CAPMOE_LOG_INT("completion_tokens", g->completion_tokens);
        f[n++] = CAPMOE_LOG_STR("finish_reason", g->finish_reason);
        f[n++] = CAPMOE_LOG_STR("policy", g->policy);
        f[n++] = CAPMOE_LOG_STR("gamma", g->gamma);
        f[n++] = CAPMOE_LOG_INT("limited_dispatches", g->limited);
        f[n++] = CAPMOE_LOG_INT("dispatches", g->dispatches);
        if (g->limited == 0) snprintf(applied, sizeof applied, "none");
        else if (g->gamma_min == g->gamma_max) snprintf(applied, sizeof applied, "%g", g->gamma_min);
        else snprintf(applied, sizeof applied, "%g..%g", g->gamma_min, g->gamma_max);
        f[n++] = CAPMOE_LOG_STR("gamma_applied", applied);
    }
    capmoe_log_fields((capmoe_log *)log, CAPMOE_LOG_INFO, f, n, "request");
}
