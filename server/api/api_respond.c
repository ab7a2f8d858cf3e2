/* api_respond.c - sending JSON answers and error answers (with their
 * headers and the request counter), and the 503 of a server not ready. */
#include "api_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *k_json = "application/json";

void capmoe_api_count_request(capmoe_api *api, const char *endpoint, int status) {
    if (api->metrics) capmoe_metrics_request(api->metrics, endpoint, status);
}

void capmoe_api_send_json(capmoe_api *api, capmoe_http_req *req, const char *endpoint, int status,
                      cJSON *body, const char *const *headers) {
    char *s = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        capmoe_http_respond(req, 500, k_json, oom, sizeof oom - 1, NULL);
        capmoe_api_count_request(api, endpoint, 500);
        return;
    }
    capmoe_http_respond(req, status, k_json, s, strlen(s), headers);
    free(s);
    capmoe_api_count_request(api, endpoint, status);
}

/* The error object plus the request id (also in the X-Request-Id header). */
cJSON *capmoe_api_error_body(const capmoe_http_req *req, const capmoe_api_error *e) {
    cJSON *o = capmoe_api_error_object(e);
    cJSON_AddStringToObject(o, "request_id", capmoe_http_req_id(req));
    return o;
}

void capmoe_api_send_error(capmoe_api *api, capmoe_http_req *req, const char *endpoint,
                       const capmoe_api_error *e) {
    const char *hdrs[8];
    int nh = 0;
    if (e->status == 429 || e->status == 503) {
        hdrs[nh++] = "Retry-After";
        hdrs[nh++] = api->state == CAPMOE_API_LOADING ? "5" : "1";
    }
    if (e->status == 401) {
        hdrs[nh++] = "WWW-Authenticate";
        hdrs[nh++] = "Bearer";
    }
    hdrs[nh] = NULL;
    capmoe_api_send_json(api, req, endpoint, e->status, capmoe_api_error_body(req, e), hdrs);
}

void capmoe_api_not_ready(const capmoe_api *api, capmoe_api_error *e) {
    if (api->state == CAPMOE_API_LOADING)
        capmoe_api_fail(e, 503, "unavailable_error", "model_loading", NULL, "Loading model");
    else if (api->state == CAPMOE_API_FAILED)
        capmoe_api_fail(e, 503, "unavailable_error", "model_load_failed", NULL,
                        "the model failed to load: %s", api->load_error);
    else if (api->state == CAPMOE_API_FAULT)
        capmoe_api_fail(e, 503, "unavailable_error", "expert_parallel_failure", NULL,
                        "the server cannot generate: %s", api->load_error);
    else
        capmoe_api_fail(e, 503, "unavailable_error", "shutting_down", NULL,
                        "the server is shutting down");
}

