/* api_request.c - the bodies of /v1/completions and /v1/chat/completions:
 * parsed and validated into capmoe_api_request (api_request.h). */
#include "capmoe/api_request.h"
#include "capmoe/utf8.h"
#include "api_internal.h"
#include "api_json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_prompt(const cJSON *root, const capmoe_api_limits *lim, capmoe_api_request *r,
                        capmoe_api_error *e) {
    const cJSON *p = capmoe_api_field(root, "prompt");
    if (!p) return E400(e, "prompt", "'prompt' is required");
    if (cJSON_IsString(p)) {
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        r->n_prompts = 1;
        r->prompts[0].text = strdup(p->valuestring);
        r->prompts[0].text_len = strlen(p->valuestring);
        return r->prompts[0].text ? 0 : capmoe_api_fail(e, 500, "server_error", NULL, NULL,
                                                        "out of memory");
    }
    if (!cJSON_IsArray(p))
        return E400(e, "prompt",
                    "'prompt' must be a string, a list of token ids, or a list of strings or of "
                    "token-id lists");
    int n = cJSON_GetArraySize(p);
    if (n == 0) return E400(e, "prompt", "'prompt' must not be empty");
    const cJSON *first = p->child;
    if (cJSON_IsNumber(first)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        r->n_prompts = 1;
        return capmoe_api_parse_ids(p, "prompt", lim, &r->prompts[0].ids, &r->prompts[0].n_ids, e);
    }
    if (n > CAPMOE_API_MAX_PROMPTS)
        return E400(e, "prompt", "at most %d prompts per request, got %d", CAPMOE_API_MAX_PROMPTS,
                    n);
    r->prompts = calloc((size_t)n, sizeof *r->prompts);
    if (!r->prompts) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    r->n_prompts = n;
    int i = 0;
    for (const cJSON *it = p->child; it; it = it->next, i++) {
        if (cJSON_IsString(it)) {
            r->prompts[i].text = strdup(it->valuestring);
            if (!r->prompts[i].text)
                return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
            r->prompts[i].text_len = strlen(it->valuestring);
        } else if (cJSON_IsArray(it)) {
            if (capmoe_api_parse_ids(it, "prompt", lim, &r->prompts[i].ids, &r->prompts[i].n_ids, e) != 0)
                return -1;
        } else {
            return E400(e, "prompt",
                        "'prompt' list items must be strings or lists of token ids (item %d)", i);
        }
    }
    return 0;
}

/* Text of a chat message content: a string or a list of {"type":"text"} parts. */
static int parse_content(const cJSON *c, int idx, char **out, capmoe_api_error *e) {
    char param[48];
    snprintf(param, sizeof param, "messages[%d].content", idx);
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return *out ? 0 : capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (!cJSON_IsArray(c)) return E400(e, param, "'%s' must be a string or a list of parts", param);
    buf b = {0};
    for (const cJSON *part = c->child; part; part = part->next) {
        const cJSON *type = cJSON_IsObject(part) ? capmoe_api_field(part, "type") : NULL;
        const cJSON *text = cJSON_IsObject(part) ? capmoe_api_field(part, "text") : NULL;
        if (!type || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0) {
            buf_free(&b);
            return E400(e, param, "'%s': only parts of type \"text\" are supported", param);
        }
        if (!text || !cJSON_IsString(text)) {
            buf_free(&b);
            return E400(e, param, "'%s': a text part needs a string 'text'", param);
        }
        if (buf_add(&b, text->valuestring, strlen(text->valuestring)) != 0) {
            buf_free(&b);
            return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        }
    }
    if (!b.p && buf_add(&b, "", 0) != 0)
        return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    *out = b.p;
    return 0;
}

int capmoe_api_parse_messages(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *m = capmoe_api_field(root, "messages");
    if (!m) return E400(e, "messages", "'messages' is required");
    if (!cJSON_IsArray(m)) return E400(e, "messages", "'messages' must be a list");
    int n = cJSON_GetArraySize(m);
    if (n == 0) return E400(e, "messages", "'messages' must not be empty");
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    /* the messages as the template gets them (kept when a tool conversation
     * needs more than role / content) */
    cJSON *arr = cJSON_CreateArray();
    int tool_parts = 0;
    int i = 0;
    for (const cJSON *it = m->child; it; it = it->next, i++) {
        char param[48];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(it)) {
            cJSON_Delete(arr);
            return E400(e, param, "'%s' must be an object", param);
        }
        const cJSON *role = capmoe_api_field(it, "role");
        if (!role || !cJSON_IsString(role)) {
            cJSON_Delete(arr);
            return E400(e, param, "'%s.role' must be a string", param);
        }
        const char *rs = role->valuestring;
        if (strcmp(rs, "developer") == 0) rs = "system";
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 &&
            strcmp(rs, "tool") != 0) {
            cJSON_Delete(arr);
            return E400(e, param,
                        "'%s.role' must be system, developer, user, assistant or tool, got '%s'",
                        param, role->valuestring);
        }
        char *role_s = strdup(rs);
        if (!role_s) goto oom;
        r->messages[i].role = role_s;
        r->n_messages = i + 1;
        const cJSON *content = capmoe_api_field(it, "content");
        int has_calls = capmoe_api_field(it, "tool_calls") != NULL;
        char *text = NULL;
        if (!content) {
            if (strcmp(rs, "assistant") != 0) {
                cJSON_Delete(arr);
                return E400(e, param, "'%s.content' is required", param);
            }
            text = strdup("");
            if (!text) goto oom;
        } else if (parse_content(content, i, &text, e) != 0) {
            cJSON_Delete(arr);
            return -1;
        }
        r->messages[i].content = text;
        cJSON *m2 = cJSON_CreateObject();
        cJSON_AddStringToObject(m2, "role", rs);
        cJSON_AddStringToObject(m2, "content", text);
        cJSON_AddItemToArray(arr, m2);
        if (strcmp(rs, "tool") == 0 || has_calls) {
            tool_parts = 1;
            if (capmoe_api_tool_message(it, i, rs, m2, e) != 0) {
                cJSON_Delete(arr);
                return -1;
            }
        }
    }
    if (tool_parts) {
        r->messages_json = cJSON_PrintUnformatted(arr);
        if (!r->messages_json) goto oom;
    }
    cJSON_Delete(arr);
    return 0;
oom:
    cJSON_Delete(arr);
    return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
}

static int parse_stop(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *s = capmoe_api_field(root, "stop");
    if (!s) return 0;
    if (cJSON_IsString(s)) {
        if (!s->valuestring[0]) return 0; /* "" means no stop string */
        if (strlen(s->valuestring) > CAPMOE_SCHED_MAX_STOP_LEN)
            return E400(e, "stop", "a stop string is at most %d bytes", CAPMOE_SCHED_MAX_STOP_LEN);
        r->stop[0] = strdup(s->valuestring);
        if (!r->stop[0]) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        r->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(s)) return E400(e, "stop", "'stop' must be a string or a list of strings");
    int n = cJSON_GetArraySize(s);
    if (n > CAPMOE_API_MAX_STOP)
        return E400(e, "stop", "'stop' takes at most %d strings, got %d", CAPMOE_API_MAX_STOP, n);
    for (const cJSON *it = s->child; it; it = it->next) {
        if (!cJSON_IsString(it)) return E400(e, "stop", "'stop' items must be strings");
        if (!it->valuestring[0]) return E400(e, "stop", "'stop' strings must not be empty");
        if (strlen(it->valuestring) > CAPMOE_SCHED_MAX_STOP_LEN)
            return E400(e, "stop", "a stop string is at most %d bytes", CAPMOE_SCHED_MAX_STOP_LEN);
        r->stop[r->n_stop] = strdup(it->valuestring);
        if (!r->stop[r->n_stop])
            return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        r->n_stop++;
    }
    return 0;
}

/* presence_penalty, frequency_penalty (OpenAI: -2..2), repetition_penalty
 * (vLLM: (0, 2]) and logit_bias ({"token id": -100..100}). */
static int parse_penalties(const cJSON *root, const capmoe_api_limits *lim, capmoe_api_request *r,
                           capmoe_api_error *e) {
    capmoe_penalties *p = &r->penalties;
    p->repetition = 1;
    if (capmoe_api_get_num(root, "presence_penalty", -2.0, 0, 2.0, &p->presence, e) != 0 ||
        capmoe_api_get_num(root, "frequency_penalty", -2.0, 0, 2.0, &p->frequency, e) != 0 ||
        capmoe_api_get_num(root, "repetition_penalty", 0.0, 1, 2.0, &p->repetition, e) != 0)
        return -1;
    const cJSON *f = capmoe_api_field(root, "logit_bias");
    if (!f) return 0;
    if (!cJSON_IsObject(f))
        return E400(e, "logit_bias", "'logit_bias' must be an object mapping token ids to biases");
    int n = cJSON_GetArraySize(f);
    if (n == 0) return 0;
    r->logit_bias = calloc((size_t)n, sizeof *r->logit_bias);
    if (!r->logit_bias) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    double hi = lim && lim->vocab > 0 ? lim->vocab - 1 : 2147483647.0;
    for (const cJSON *it = f->child; it; it = it->next) {
        const char *k = it->string;
        char *end = NULL;
        double id = k && *k >= '0' && *k <= '9' ? strtod(k, &end) : -1;
        if (id < 0 || !end || *end || id != floor(id) || id > hi)
            return E400(e, "logit_bias",
                        "'logit_bias' keys must be token ids in 0..%.0f, got \"%.40s\"", hi,
                        k ? k : "");
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= -100 && it->valuedouble <= 100))
            return E400(e, "logit_bias", "'logit_bias' values must be numbers in -100..100 (token %s)",
                        k);
        r->logit_bias[r->n_logit_bias].id = (int32_t)id;
        r->logit_bias[r->n_logit_bias].bias = (float)it->valuedouble;
        r->n_logit_bias++;
    }
    return 0;
}

/* Fields OpenAI defines that capmoe does not implement: refused unless they
 * hold their neutral value, so a client never silently gets something else. */
static int check_unsupported(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *f;
    f = capmoe_api_field(root, "best_of");
    if (f) {
        if (!capmoe_api_is_integer(f)) return E400(e, "best_of", "'best_of' must be an integer");
        if (f->valuedouble != (double)r->n) /* compared as doubles: 6666666666 is no int */
            return E400(e, "best_of", "'best_of' is not supported (only equal to n)");
    }
    f = capmoe_api_field(root, "suffix");
    if (f) {
        if (!cJSON_IsString(f)) return E400(e, "suffix", "'suffix' must be a string");
        if (f->valuestring[0]) return E400(e, "suffix", "'suffix' is not supported");
    }
    return 0;
}

/* response_format: text, json_object, or json_schema {name, schema, strict}:
 * the last two compile into a grammar that constrains decoding. */
static int parse_response_format(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(root, "response_format");
    if (!f) return 0;
    const cJSON *t = cJSON_IsObject(f) ? capmoe_api_field(f, "type") : NULL;
    if (!t || !cJSON_IsString(t))
        return E400(e, "response_format", "'response_format' must be an object with a 'type'");
    const char *ts = t->valuestring;
    if (strcmp(ts, "text") == 0) return 0;
    const cJSON *schema = NULL;
    if (strcmp(ts, "json_schema") == 0) {
        const cJSON *js = capmoe_api_field(f, "json_schema");
        if (!js || !cJSON_IsObject(js))
            return E400(e, "response_format", "'response_format.json_schema' must be an object");
        const cJSON *name = capmoe_api_field(js, "name");
        if (name && !cJSON_IsString(name))
            return E400(e, "response_format", "'response_format.json_schema.name' must be a string");
        schema = capmoe_api_field(js, "schema");
        if (!schema || !cJSON_IsObject(schema))
            return E400(e, "response_format",
                        "'response_format.json_schema.schema' must be a JSON schema object");
    } else if (strcmp(ts, "json_object") != 0) {
        return E400(e, "response_format",
                    "'response_format' type must be text, json_object or json_schema, got '%.40s'",
                    ts);
    }
    capmoe_error err;
    if (capmoe_grammar_compile(&r->grammar, schema, &err) != 0)
        return E400(e, "response_format", "unsupported JSON schema: %s", err.msg);
    return 0;
}

int capmoe_api_parse_request(capmoe_api_kind kind, const char *body, size_t len,
                             const capmoe_api_limits *lim, capmoe_api_request *r,
                             capmoe_api_error *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
    capmoe_sampling_default(&r->sampling);
    r->n = 1;
    r->logprobs = -1;
    r->skip_special = 1;
    r->add_special = 1;
    if (!body || len == 0) return E400(e, NULL, "the request body is empty (JSON expected)");
    if (!capmoe_utf8_valid(body, len)) return E400(e, NULL, "the request body is not valid UTF-8");
    cJSON *root = capmoe_api_json_parse(body, len, e);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        E400(e, NULL, "the request body must be a JSON object");
        goto out;
    }
    int max_n = lim && lim->max_n > 0 ? lim->max_n : 16;
    double max_tok = lim && lim->context > 0 ? lim->context : 2147483647.0;
    if (capmoe_api_get_str(root, "model", &r->model, e) || capmoe_api_get_str(root, "user", &r->user, e)) goto out;
    if (kind == CAPMOE_API_COMPLETIONS) {
        if (parse_prompt(root, lim, r, e) != 0) goto out;
        if (capmoe_api_get_int(root, "max_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        if (capmoe_api_get_int(root, "logprobs", 0, 5, &r->logprobs, e) != 0) goto out;
        if (capmoe_api_get_bool(root, "echo", &r->echo, e) != 0) goto out;
        if (capmoe_api_get_bool(root, "add_special_tokens", &r->add_special, e) != 0) goto out;
    } else {
        if (capmoe_api_parse_messages(root, r, e) != 0) goto out;
        if (capmoe_api_get_int(root, "max_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        if (capmoe_api_get_int(root, "max_completion_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        int lp = 0, top = -1;
        if (capmoe_api_get_bool(root, "logprobs", &lp, e) != 0) goto out;
        if (capmoe_api_get_int(root, "top_logprobs", 0, 20, &top, e) != 0) goto out;
        if (top >= 0 && !lp) {
            E400(e, "top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
            goto out;
        }
        if (lp) r->logprobs = top >= 0 ? top : 0;
    }
    if (capmoe_api_get_num(root, "temperature", 0.0, 0, 2.0, &r->sampling.temperature, e) != 0) goto out;
    if (capmoe_api_get_num(root, "top_p", 0.0, 1, 1.0, &r->sampling.top_p, e) != 0) goto out;
    if (capmoe_api_get_num(root, "min_p", 0.0, 0, 1.0, &r->sampling.min_p, e) != 0) goto out;
    int top_k = 0;
    if (capmoe_api_get_int(root, "top_k", -1, 1e9, &top_k, e) != 0) goto out;
    r->sampling.top_k = top_k > 0 ? top_k : 0;
    const cJSON *seed = capmoe_api_field(root, "seed");
    if (seed) {
        /* any integer a double holds exactly; negative seeds wrap to uint64 */
        if (!capmoe_api_is_integer(seed) || fabs(seed->valuedouble) > 9007199254740992.0) {
            E400(e, "seed", "'seed' must be an integer with |seed| <= 2^53");
            goto out;
        }
        r->has_seed = 1;
        r->seed = (uint64_t)(int64_t)seed->valuedouble;
    }
    if (capmoe_api_get_int(root, "n", 1, max_n, &r->n, e) != 0) goto out;
    if (parse_stop(root, r, e) != 0) goto out;
    const cJSON *sid = capmoe_api_field(root, "stop_token_ids");
    if (sid) {
        if (!cJSON_IsArray(sid) || cJSON_GetArraySize(sid) > CAPMOE_SCHED_MAX_STOP_IDS) {
            E400(e, "stop_token_ids", "'stop_token_ids' must be a list of at most %d token ids",
                 CAPMOE_SCHED_MAX_STOP_IDS);
            goto out;
        }
        for (const cJSON *it = sid->child; it; it = it->next) {
            double hi = lim && lim->vocab > 0 ? lim->vocab - 1 : 2147483647.0;
            if (!capmoe_api_is_integer(it) || it->valuedouble < 0 || it->valuedouble > hi) {
                E400(e, "stop_token_ids", "'stop_token_ids' items must be token ids in 0..%.0f", hi);
                goto out;
            }
            r->stop_ids[r->n_stop_ids++] = (int32_t)it->valuedouble;
        }
    }
    if (capmoe_api_get_bool(root, "stream", &r->stream, e) != 0) goto out;
    const cJSON *so = capmoe_api_field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            E400(e, "stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (capmoe_api_get_bool(so, "include_usage", &r->include_usage, e) != 0) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto out;
        }
    }
    if (capmoe_api_get_bool(root, "ignore_eos", &r->ignore_eos, e) != 0) goto out;
    if (capmoe_api_get_bool(root, "skip_special_tokens", &r->skip_special, e) != 0) goto out;
    if (parse_penalties(root, lim, r, e) != 0) goto out;
    if (check_unsupported(root, r, e) != 0) goto out;
    if (parse_response_format(root, r, e) != 0) goto out;
    if (kind == CAPMOE_API_CHAT && capmoe_api_parse_tools(root, r, e) != 0) goto out;
    if (kind == CAPMOE_API_COMPLETIONS) {
        const cJSON *t = capmoe_api_field(root, "tools");
        if (t && (!cJSON_IsArray(t) || t->child)) {
            E400(e, "tools", "'tools' (function calling) is available on /v1/chat/completions");
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc != 0) capmoe_api_request_free(r);
    return rc;
}

void capmoe_api_request_free(capmoe_api_request *r) {
    if (!r) return;
    free(r->model);
    free(r->user);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_messages; i++) {
        free((char *)r->messages[i].role);
        free((char *)r->messages[i].content);
    }
    free(r->messages);
    free(r->logit_bias);
    free(r->messages_json);
    free(r->tools_json);
    free(r->tool_name);
    capmoe_grammar_free(r->grammar);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ==== the API object ============================================================ */
