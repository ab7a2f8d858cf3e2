/* api_routes.c - the routes that do not generate: /health, /metrics,
 * /v1/models, /tokenize, /detokenize. */
#include "capmoe/utf8.h"
#include "api_internal.h"
#include "api_json.h"

#include <stdlib.h>
#include <string.h>

void capmoe_api_route_health(capmoe_api *api, capmoe_http_req *req) {
    if (api->state == CAPMOE_API_READY) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        capmoe_api_send_json(api, req, "/health", 200, o, NULL);
        return;
    }
    capmoe_api_error e;
    capmoe_api_not_ready(api, &e);
    capmoe_api_send_error(api, req, "/health", &e);
}

void capmoe_api_route_metrics(capmoe_api *api, capmoe_http_req *req) {
    static const char *ct = "text/plain; version=0.0.4; charset=utf-8";
    size_t len = 0;
    char *text = api->metrics ? capmoe_metrics_render(api->metrics, &len) : NULL;
    if (!text) {
        capmoe_api_error e;
        capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "metrics are not available");
        capmoe_api_send_error(api, req, "/metrics", &e);
        return;
    }
    /* Counted before rendering would be off by one; count after. */
    capmoe_http_respond(req, 200, ct, text, len, NULL);
    free(text);
    capmoe_api_count_request(api, "/metrics", 200);
}

static cJSON *model_object(const capmoe_api *api) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", api->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)api->start_time);
    cJSON_AddStringToObject(m, "owned_by", "capmoe");
    if (api->loaded) cJSON_AddNumberToObject(m, "max_model_len", capmoe_sched_context(api->sched));
    return m;
}

void capmoe_api_route_models(capmoe_api *api, capmoe_http_req *req, const char *id) {
    if (id) {
        if (strcmp(id, api->model_id) != 0) {
            capmoe_api_error e;
            capmoe_api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
                            "The model '%s' does not exist (this server serves '%s')", id,
                            api->model_id);
            capmoe_api_send_error(api, req, "/v1/models", &e);
            return;
        }
        capmoe_api_send_json(api, req, "/v1/models", 200, model_object(api), NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(data, model_object(api));
    capmoe_api_send_json(api, req, "/v1/models", 200, o, NULL);
}

/* Parses a small JSON object body for /tokenize, /detokenize. */
static cJSON *parse_object_body(capmoe_http_req *req, capmoe_api_error *e) {
    size_t len;
    const char *body = capmoe_http_req_body(req, &len);
    if (!body || len == 0) {
        E400(e, NULL, "the request body is empty (JSON expected)");
        return NULL;
    }
    if (!capmoe_utf8_valid(body, len)) {
        E400(e, NULL, "the request body is not valid UTF-8");
        return NULL;
    }
    cJSON *root = capmoe_api_json_parse(body, len, e);
    if (!root) return NULL;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        E400(e, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

static int check_model(const capmoe_api *api, const cJSON *root, capmoe_api_error *e) {
    const cJSON *m = capmoe_api_field(root, "model");
    if (!m) return 0;
    if (!cJSON_IsString(m)) return E400(e, "model", "'model' must be a string");
    if (strcmp(m->valuestring, api->model_id) != 0)
        return capmoe_api_fail(e, 404, "invalid_request_error", "model_not_found", "model",
                               "The model '%s' does not exist (this server serves '%s')",
                               m->valuestring, api->model_id);
    return 0;
}

void capmoe_api_route_tokenize(capmoe_api *api, capmoe_http_req *req) {
    capmoe_api_error e;
    if (!api->loaded) {
        capmoe_api_not_ready(api, &e);
        capmoe_api_send_error(api, req, "/tokenize", &e);
        return;
    }
    cJSON *root = parse_object_body(req, &e);
    if (!root) {
        capmoe_api_send_error(api, req, "/tokenize", &e);
        return;
    }
    const cJSON *t = capmoe_api_field(root, "prompt");
    const char *pname = "prompt";
    if (!t) {
        t = capmoe_api_field(root, "text");
        pname = "text";
    }
    /* vLLM: chat messages are rendered with the chat template, and then the
     * template writes the special tokens (add_special_tokens defaults off) */
    int chat = capmoe_api_field(root, "messages") != NULL;
    int add_special = !chat, add_gen = 1;
    char *rendered = NULL;
    if (check_model(api, root, &e) != 0 ||
        capmoe_api_get_bool(root, "add_special_tokens", &add_special, &e) != 0 ||
        capmoe_api_get_bool(root, "add_generation_prompt", &add_gen, &e) != 0)
        goto fail;
    if (chat) {
        if (t) {
            E400(&e, "messages", "give either 'messages' or 'prompt', not both");
            goto fail;
        }
        capmoe_api_request rq;
        memset(&rq, 0, sizeof rq);
        rq.kind = CAPMOE_API_CHAT;
        if (capmoe_api_parse_messages(root, &rq, &e) != 0) goto fail;
        capmoe_error cerr;
        int rc = capmoe_chat_apply_msgs(api->chat, rq.messages, rq.n_messages, add_gen, &rendered,
                                        &cerr);
        capmoe_api_request_free(&rq);
        if (rc != 0) {
            E400(&e, "messages", "cannot apply the chat template: %s", cerr.msg);
            goto fail;
        }
        pname = "messages";
    } else if (!t || !cJSON_IsString(t)) {
        E400(&e, "prompt", "'prompt' (or 'text') must be a string, or 'messages' a chat");
        goto fail;
    }
    const char *text = chat ? rendered : t->valuestring;
    int32_t *ids = NULL;
    int n = 0;
    capmoe_error err;
    if (capmoe_tokenizer_encode(capmoe_sched_tokenizer(api->sched), text, strlen(text),
                                add_special, &ids, &n, &err) != 0) {
        E400(&e, pname, "cannot tokenize: %s", err.msg);
        goto fail;
    }
    free(rendered);
    cJSON_Delete(root);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "max_model_len", capmoe_sched_context(api->sched));
    free(ids);
    capmoe_api_send_json(api, req, "/tokenize", 200, o, NULL);
    return;
fail:
    free(rendered);
    cJSON_Delete(root);
    capmoe_api_send_error(api, req, "/tokenize", &e);
}

void capmoe_api_route_detokenize(capmoe_api *api, capmoe_http_req *req) {
    capmoe_api_error e;
    if (!api->loaded) {
        capmoe_api_not_ready(api, &e);
        capmoe_api_send_error(api, req, "/detokenize", &e);
        return;
    }
    cJSON *root = parse_object_body(req, &e);
    if (!root) {
        capmoe_api_send_error(api, req, "/detokenize", &e);
        return;
    }
    const capmoe_tokenizer *tok = capmoe_sched_tokenizer(api->sched);
    capmoe_api_limits lim = {0, capmoe_tokenizer_n_vocab(tok), 0};
    const cJSON *t = capmoe_api_field(root, "tokens");
    int32_t *ids = NULL;
    int n = 0;
    if (check_model(api, root, &e) != 0) goto fail;
    if (!t || !cJSON_IsArray(t)) {
        E400(&e, "tokens", "'tokens' must be a list of token ids");
        goto fail;
    }
    if (cJSON_GetArraySize(t) > 0 && capmoe_api_parse_ids(t, "tokens", &lim, &ids, &n, &e) != 0) goto fail;
    char *text = NULL;
    size_t tlen = 0;
    capmoe_error err;
    if (capmoe_tokenizer_decode(tok, ids, n, 0, &text, &tlen, &err) != 0) {
        free(ids);
        E400(&e, "tokens", "cannot detokenize: %s", err.msg);
        goto fail;
    }
    free(ids);
    cJSON_Delete(root);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "prompt", text);
    cJSON_AddStringToObject(o, "text", text);
    free(text);
    capmoe_api_send_json(api, req, "/detokenize", 200, o, NULL);
    return;
fail:
    cJSON_Delete(root);
    capmoe_api_send_error(api, req, "/detokenize", &e);
}

