/* openai.c - routes, request parsing / validation, responses, SSE and error
 * bodies of capmoe-server (OpenAI-compatible API). JSON lives only here: the
 * scheduler sees native structs (capmoe_gen_params) and hands back events. */
#include "capmoe/openai.h"
#include "capmoe/access_log.h"
#include "capmoe/json.h"
#include "capmoe/log.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ==== small utilities ========================================================= */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
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

static void buf_free(buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int capmoe_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n; /* continuation bytes */
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return 0; /* continuation byte, C0/C1 overlong lead, or > U+10FFFF lead */
        if (len - i - 1 < n) return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
        i += n + 1;
    }
    return 1;
}

size_t capmoe_utf8_complete(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = len, back = 0;
    while (i > 0 && back < 4 && (p[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return back ? 0 : len;
    unsigned c = p[i - 1];
    size_t need;
    if (c < 0x80) return len;
    else if (c >= 0xF0) need = 3;
    else if (c >= 0xE0) need = 2;
    else if (c >= 0xC0) need = 1;
    else return len;
    return back >= need ? len : i - 1;
}

char *capmoe_sse_frame(const char *json, size_t *len) {
    size_t n = strlen(json);
    char *s = malloc(n + 9);
    if (!s) return NULL;
    memcpy(s, "data: ", 6);
    memcpy(s + 6, json, n);
    memcpy(s + 6 + n, "\n\n", 3);
    if (len) *len = n + 8;
    return s;
}

int capmoe_api_fail(capmoe_api_error *e, int status, const char *type, const char *code,
                    const char *param, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static cJSON *error_object(const capmoe_api_error *e) {
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "server_error");
    if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
    else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code);
    else cJSON_AddNullToObject(o, "code");
    return root;
}

char *capmoe_api_error_json(const capmoe_api_error *e, size_t *len) {
    cJSON *root = error_object(e);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (s && len) *len = strlen(s);
    return s;
}

/* ==== request parsing ========================================================== */

#define E400(e, param, ...) \
    capmoe_api_fail(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* cJSON over a length-delimited buffer, refusing trailing non-space bytes
 * (cJSON_ParseWithLengthOpts alone accepts "{...} garbage") and strings that
 * hold an escaped NUL (cJSON would silently cut them at the NUL). */
static cJSON *parse_json(const char *body, size_t len, capmoe_api_error *e) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    for (const char *p = end; root && p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            root = NULL;
            end = p;
        }
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        E400(e, NULL, "malformed JSON near byte %zu (or nested deeper than %d levels)", at,
             CJSON_NESTING_LIMIT);
        return NULL;
    }
    char where[256];
    if (capmoe_json_find_nul(body, len, where, sizeof where)) {
        cJSON_Delete(root);
        E400(e, where,
             "%s: a string holds a NUL character (\\u0000), which is not accepted "
             "(it would cut the text short)",
             where);
        return NULL;
    }
    return root;
}

/* The field, or NULL when absent or JSON null. */
static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

static int is_integer(const cJSON *f) {
    return cJSON_IsNumber(f) && isfinite(f->valuedouble) &&
           floor(f->valuedouble) == f->valuedouble;
}

/* Optional integer in [lo, hi]; *out unchanged when absent. */
static int get_int(const cJSON *o, const char *name, double lo, double hi, int *out,
                   capmoe_api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!is_integer(f)) return E400(e, name, "'%s' must be an integer", name);
    if (f->valuedouble < lo || f->valuedouble > hi)
        return E400(e, name, "'%s' must be between %.0f and %.0f, got %.17g", name, lo, hi,
                    f->valuedouble);
    *out = (int)f->valuedouble;
    return 0;
}

/* Optional number in [lo, hi] (lo_open: lo excluded). */
static int get_num(const cJSON *o, const char *name, double lo, int lo_open, double hi,
                   float *out, capmoe_api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble))
        return E400(e, name, "'%s' must be a number", name);
    double d = f->valuedouble;
    if ((lo_open ? d <= lo : d < lo) || d > hi)
        return E400(e, name, "'%s' must be %s %g and <= %g, got %.17g", name, lo_open ? ">" : ">=",
                    lo, hi, d);
    *out = (float)d;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, int *out, capmoe_api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsBool(f)) return E400(e, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(f) ? 1 : 0;
    return 0;
}

static int get_str(const cJSON *o, const char *name, char **out, capmoe_api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsString(f)) return E400(e, name, "'%s' must be a string", name);
    free(*out);
    *out = strdup(f->valuestring);
    if (!*out) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    return 0;
}

/* An array of token ids. */
static int parse_ids(const cJSON *arr, const char *param, const capmoe_api_limits *lim,
                     int32_t **ids, int *n_ids, capmoe_api_error *e) {
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return E400(e, param, "'%s' must not be an empty list of token ids", param);
    int32_t *v = malloc(sizeof *v * (size_t)n);
    if (!v) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        double hi = lim && lim->vocab > 0 ? lim->vocab - 1 : 2147483647.0;
        if (!is_integer(it) || it->valuedouble < 0 || it->valuedouble > hi) {
            free(v);
            if (!is_integer(it))
                return E400(e, param, "'%s' token ids must be integers", param);
            return E400(e, param, "'%s': token id %.17g is out of range 0..%.0f", param,
                        it->valuedouble, hi);
        }
        v[i] = (int32_t)it->valuedouble;
    }
    *ids = v;
    *n_ids = n;
    return 0;
}

static int parse_prompt(const cJSON *root, const capmoe_api_limits *lim, capmoe_api_request *r,
                        capmoe_api_error *e) {
    const cJSON *p = field(root, "prompt");
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
        return parse_ids(p, "prompt", lim, &r->prompts[0].ids, &r->prompts[0].n_ids, e);
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
            if (parse_ids(it, "prompt", lim, &r->prompts[i].ids, &r->prompts[i].n_ids, e) != 0)
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
        const cJSON *type = cJSON_IsObject(part) ? field(part, "type") : NULL;
        const cJSON *text = cJSON_IsObject(part) ? field(part, "text") : NULL;
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

static int parse_messages(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *m = field(root, "messages");
    if (!m) return E400(e, "messages", "'messages' is required");
    if (!cJSON_IsArray(m)) return E400(e, "messages", "'messages' must be a list");
    int n = cJSON_GetArraySize(m);
    if (n == 0) return E400(e, "messages", "'messages' must not be empty");
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int i = 0;
    for (const cJSON *it = m->child; it; it = it->next, i++) {
        char param[48];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(it)) return E400(e, param, "'%s' must be an object", param);
        const cJSON *role = field(it, "role");
        if (!role || !cJSON_IsString(role))
            return E400(e, param, "'%s.role' must be a string", param);
        const char *rs = role->valuestring;
        if (strcmp(rs, "developer") == 0) rs = "system";
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0)
            return E400(e, param, "'%s.role' must be system, developer, user or assistant, got '%s'",
                        param, role->valuestring);
        char *role_s = strdup(rs);
        if (!role_s) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        r->messages[i].role = role_s;
        r->n_messages = i + 1;
        const cJSON *content = field(it, "content");
        char *text = NULL;
        if (!content) {
            if (strcmp(rs, "assistant") != 0)
                return E400(e, param, "'%s.content' is required", param);
            text = strdup("");
            if (!text) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        } else if (parse_content(content, i, &text, e) != 0) {
            return -1;
        }
        r->messages[i].content = text;
    }
    return 0;
}

static int parse_stop(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    const cJSON *s = field(root, "stop");
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

/* Fields OpenAI defines that capmoe does not implement: refused unless they
 * hold their neutral value, so a client never silently gets something else. */
static int check_unsupported(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e) {
    static const char *penalties[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        float v = 0;
        if (get_num(root, penalties[i], -2.0, 0, 2.0, &v, e) != 0) return -1;
        if (v != 0)
            return E400(e, penalties[i], "'%s' is not supported (only 0)", penalties[i]);
    }
    const cJSON *f = field(root, "repetition_penalty");
    if (f && (!cJSON_IsNumber(f) || f->valuedouble != 1.0))
        return E400(e, "repetition_penalty", "'repetition_penalty' is not supported (only 1)");
    f = field(root, "logit_bias");
    if (f) {
        if (!cJSON_IsObject(f)) return E400(e, "logit_bias", "'logit_bias' must be an object");
        if (f->child) return E400(e, "logit_bias", "'logit_bias' is not supported");
    }
    f = field(root, "best_of");
    if (f) {
        if (!is_integer(f)) return E400(e, "best_of", "'best_of' must be an integer");
        if ((int)f->valuedouble != r->n)
            return E400(e, "best_of", "'best_of' is not supported (only equal to n)");
    }
    f = field(root, "suffix");
    if (f) {
        if (!cJSON_IsString(f)) return E400(e, "suffix", "'suffix' must be a string");
        if (f->valuestring[0]) return E400(e, "suffix", "'suffix' is not supported");
    }
    f = field(root, "tools");
    if (f) {
        if (!cJSON_IsArray(f)) return E400(e, "tools", "'tools' must be a list");
        if (f->child) return E400(e, "tools", "'tools' (function calling) is not supported");
    }
    f = field(root, "functions");
    if (f && cJSON_IsArray(f) && f->child)
        return E400(e, "functions", "'functions' (function calling) is not supported");
    f = field(root, "response_format");
    if (f) {
        const cJSON *t = cJSON_IsObject(f) ? field(f, "type") : NULL;
        if (!t || !cJSON_IsString(t))
            return E400(e, "response_format", "'response_format' must be an object with a 'type'");
        if (strcmp(t->valuestring, "text") != 0)
            return E400(e, "response_format", "'response_format' type '%s' is not supported",
                        t->valuestring);
    }
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
    cJSON *root = parse_json(body, len, e);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        E400(e, NULL, "the request body must be a JSON object");
        goto out;
    }
    int max_n = lim && lim->max_n > 0 ? lim->max_n : 16;
    double max_tok = lim && lim->context > 0 ? lim->context : 2147483647.0;
    if (get_str(root, "model", &r->model, e) || get_str(root, "user", &r->user, e)) goto out;
    if (kind == CAPMOE_API_COMPLETIONS) {
        if (parse_prompt(root, lim, r, e) != 0) goto out;
        if (get_int(root, "max_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        if (get_int(root, "logprobs", 0, 5, &r->logprobs, e) != 0) goto out;
        if (get_bool(root, "echo", &r->echo, e) != 0) goto out;
        if (get_bool(root, "add_special_tokens", &r->add_special, e) != 0) goto out;
    } else {
        if (parse_messages(root, r, e) != 0) goto out;
        if (get_int(root, "max_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        if (get_int(root, "max_completion_tokens", 1, max_tok, &r->max_tokens, e) != 0) goto out;
        int lp = 0, top = -1;
        if (get_bool(root, "logprobs", &lp, e) != 0) goto out;
        if (get_int(root, "top_logprobs", 0, 20, &top, e) != 0) goto out;
        if (top >= 0 && !lp) {
            E400(e, "top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
            goto out;
        }
        if (lp) r->logprobs = top >= 0 ? top : 0;
    }
    if (get_num(root, "temperature", 0.0, 0, 2.0, &r->sampling.temperature, e) != 0) goto out;
    if (get_num(root, "top_p", 0.0, 1, 1.0, &r->sampling.top_p, e) != 0) goto out;
    if (get_num(root, "min_p", 0.0, 0, 1.0, &r->sampling.min_p, e) != 0) goto out;
    int top_k = 0;
    if (get_int(root, "top_k", -1, 1e9, &top_k, e) != 0) goto out;
    r->sampling.top_k = top_k > 0 ? top_k : 0;
    const cJSON *seed = field(root, "seed");
    if (seed) {
        /* any integer a double holds exactly; negative seeds wrap to uint64 */
        if (!is_integer(seed) || fabs(seed->valuedouble) > 9007199254740992.0) {
            E400(e, "seed", "'seed' must be an integer with |seed| <= 2^53");
            goto out;
        }
        r->has_seed = 1;
        r->seed = (uint64_t)(int64_t)seed->valuedouble;
    }
    if (get_int(root, "n", 1, max_n, &r->n, e) != 0) goto out;
    if (parse_stop(root, r, e) != 0) goto out;
    const cJSON *sid = field(root, "stop_token_ids");
    if (sid) {
        if (!cJSON_IsArray(sid) || cJSON_GetArraySize(sid) > CAPMOE_SCHED_MAX_STOP_IDS) {
            E400(e, "stop_token_ids", "'stop_token_ids' must be a list of at most %d token ids",
                 CAPMOE_SCHED_MAX_STOP_IDS);
            goto out;
        }
        for (const cJSON *it = sid->child; it; it = it->next) {
            double hi = lim && lim->vocab > 0 ? lim->vocab - 1 : 2147483647.0;
            if (!is_integer(it) || it->valuedouble < 0 || it->valuedouble > hi) {
                E400(e, "stop_token_ids", "'stop_token_ids' items must be token ids in 0..%.0f", hi);
                goto out;
            }
            r->stop_ids[r->n_stop_ids++] = (int32_t)it->valuedouble;
        }
    }
    if (get_bool(root, "stream", &r->stream, e) != 0) goto out;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            E400(e, "stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (get_bool(so, "include_usage", &r->include_usage, e) != 0) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto out;
        }
    }
    if (get_bool(root, "ignore_eos", &r->ignore_eos, e) != 0) goto out;
    if (get_bool(root, "skip_special_tokens", &r->skip_special, e) != 0) goto out;
    if (check_unsupported(root, r, e) != 0) goto out;
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
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ==== the API object ============================================================ */

typedef struct ev_node {
    capmoe_sched_event *ev;
    struct ev_node *next;
} ev_node;

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
};

/* ---- scheduler-thread side --------------------------------------------------------- */

static void sched_event_cb(void *user, capmoe_sched_event *ev) {
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

static void sched_step_cb(void *user, const capmoe_sched_step_info *info) {
    capmoe_api *api = user;
    if (!api->metrics) return;
    capmoe_metrics_set_requests(api->metrics, info->n_running, info->n_waiting);
    capmoe_metrics_set_kv_cache(api->metrics, (double)info->kv_tokens, (double)info->kv_capacity,
                                (double)info->kv_bytes);
    capmoe_metrics_set_kv_token_bytes(api->metrics, (double)info->kv_token_bytes,
                                      (double)info->kv_token_bytes_expanded);
    if (info->fwd) capmoe_metrics_batch(api->metrics, info->batch_tokens, info->fwd);
}

/* ---- responses ------------------------------------------------------------------- */

static const char *k_json = "application/json";

static void count_request(capmoe_api *api, const char *endpoint, int status) {
    if (api->metrics) capmoe_metrics_request(api->metrics, endpoint, status);
}

static void send_json(capmoe_api *api, capmoe_http_req *req, const char *endpoint, int status,
                      cJSON *body, const char *const *headers) {
    char *s = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        capmoe_http_respond(req, 500, k_json, oom, sizeof oom - 1, NULL);
        count_request(api, endpoint, 500);
        return;
    }
    capmoe_http_respond(req, status, k_json, s, strlen(s), headers);
    free(s);
    count_request(api, endpoint, status);
}

/* The error object plus the request id (also in the X-Request-Id header). */
static cJSON *error_body(const capmoe_http_req *req, const capmoe_api_error *e) {
    cJSON *o = error_object(e);
    cJSON_AddStringToObject(o, "request_id", capmoe_http_req_id(req));
    return o;
}

static void send_error(capmoe_api *api, capmoe_http_req *req, const char *endpoint,
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
    send_json(api, req, endpoint, e->status, error_body(req, e), hdrs);
}

static void not_ready_error(const capmoe_api *api, capmoe_api_error *e) {
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

/* ---- the simple routes ------------------------------------------------------------- */

static void route_health(capmoe_api *api, capmoe_http_req *req) {
    if (api->state == CAPMOE_API_READY) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        send_json(api, req, "/health", 200, o, NULL);
        return;
    }
    capmoe_api_error e;
    not_ready_error(api, &e);
    send_error(api, req, "/health", &e);
}

static void route_metrics(capmoe_api *api, capmoe_http_req *req) {
    static const char *ct = "text/plain; version=0.0.4; charset=utf-8";
    size_t len = 0;
    char *text = api->metrics ? capmoe_metrics_render(api->metrics, &len) : NULL;
    if (!text) {
        capmoe_api_error e;
        capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "metrics are not available");
        send_error(api, req, "/metrics", &e);
        return;
    }
    /* Counted before rendering would be off by one; count after. */
    capmoe_http_respond(req, 200, ct, text, len, NULL);
    free(text);
    count_request(api, "/metrics", 200);
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

static void route_models(capmoe_api *api, capmoe_http_req *req, const char *id) {
    if (id) {
        if (strcmp(id, api->model_id) != 0) {
            capmoe_api_error e;
            capmoe_api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
                            "The model '%s' does not exist (this server serves '%s')", id,
                            api->model_id);
            send_error(api, req, "/v1/models", &e);
            return;
        }
        send_json(api, req, "/v1/models", 200, model_object(api), NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(data, model_object(api));
    send_json(api, req, "/v1/models", 200, o, NULL);
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
    cJSON *root = parse_json(body, len, e);
    if (!root) return NULL;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        E400(e, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

static int check_model(const capmoe_api *api, const cJSON *root, capmoe_api_error *e) {
    const cJSON *m = field(root, "model");
    if (!m) return 0;
    if (!cJSON_IsString(m)) return E400(e, "model", "'model' must be a string");
    if (strcmp(m->valuestring, api->model_id) != 0)
        return capmoe_api_fail(e, 404, "invalid_request_error", "model_not_found", "model",
                               "The model '%s' does not exist (this server serves '%s')",
                               m->valuestring, api->model_id);
    return 0;
}

static void route_tokenize(capmoe_api *api, capmoe_http_req *req) {
    capmoe_api_error e;
    if (!api->loaded) {
        not_ready_error(api, &e);
        send_error(api, req, "/tokenize", &e);
        return;
    }
    cJSON *root = parse_object_body(req, &e);
    if (!root) {
        send_error(api, req, "/tokenize", &e);
        return;
    }
    const cJSON *t = field(root, "prompt");
    const char *pname = "prompt";
    if (!t) {
        t = field(root, "text");
        pname = "text";
    }
    int add_special = 1;
    if (check_model(api, root, &e) != 0 || get_bool(root, "add_special_tokens", &add_special, &e) != 0) {
        cJSON_Delete(root);
        send_error(api, req, "/tokenize", &e);
        return;
    }
    if (!t || !cJSON_IsString(t)) {
        cJSON_Delete(root);
        E400(&e, "prompt", "'prompt' (or 'text') must be a string");
        send_error(api, req, "/tokenize", &e);
        return;
    }
    int32_t *ids = NULL;
    int n = 0;
    capmoe_error err;
    if (capmoe_tokenizer_encode(capmoe_sched_tokenizer(api->sched), t->valuestring,
                                strlen(t->valuestring), add_special, &ids, &n, &err) != 0) {
        cJSON_Delete(root);
        E400(&e, pname, "cannot tokenize: %s", err.msg);
        send_error(api, req, "/tokenize", &e);
        return;
    }
    cJSON_Delete(root);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "max_model_len", capmoe_sched_context(api->sched));
    free(ids);
    send_json(api, req, "/tokenize", 200, o, NULL);
}

static void route_detokenize(capmoe_api *api, capmoe_http_req *req) {
    capmoe_api_error e;
    if (!api->loaded) {
        not_ready_error(api, &e);
        send_error(api, req, "/detokenize", &e);
        return;
    }
    cJSON *root = parse_object_body(req, &e);
    if (!root) {
        send_error(api, req, "/detokenize", &e);
        return;
    }
    const capmoe_tokenizer *tok = capmoe_sched_tokenizer(api->sched);
    capmoe_api_limits lim = {0, capmoe_tokenizer_n_vocab(tok), 0};
    const cJSON *t = field(root, "tokens");
    int32_t *ids = NULL;
    int n = 0;
    if (check_model(api, root, &e) != 0) goto fail;
    if (!t || !cJSON_IsArray(t)) {
        E400(&e, "tokens", "'tokens' must be a list of token ids");
        goto fail;
    }
    if (cJSON_GetArraySize(t) > 0 && parse_ids(t, "tokens", &lim, &ids, &n, &e) != 0) goto fail;
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
    send_json(api, req, "/detokenize", 200, o, NULL);
    return;
fail:
    cJSON_Delete(root);
    send_error(api, req, "/detokenize", &e);
}

/* ---- generation ------------------------------------------------------------------- */

static void call_unlink(gen_call *c) {
    capmoe_api *api = c->api;
    if (c->prev) c->prev->next = c->next;
    else if (api->calls == c) api->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void call_unref(gen_call *c) {
    if (--c->refs > 0) return;
    call_unlink(c);
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
    free(c);
}

static long utf8_chars(const char *s, size_t n) {
    long k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

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
static cJSON *completion_logprobs(const gen_call *c, const capmoe_tok_info *ptoks, int n_ptoks,
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
        *offset += s ? utf8_chars(s, strlen(s)) : 0;
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
static cJSON *chat_logprobs(const gen_call *c, const capmoe_tok_info *toks, int n_toks) {
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

static const char *finish_reason(capmoe_finish f) {
    switch (f) {
    case CAPMOE_FINISH_STOP: return "stop";
    case CAPMOE_FINISH_LENGTH:
    case CAPMOE_FINISH_TIMEOUT: return "length";
    default: return NULL;
    }
}

static cJSON *usage_object(const gen_call *c) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)c->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)c->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(c->prompt_tokens + c->completion_tokens));
    return u;
}

static cJSON *chunk_base(const gen_call *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", c->rq.kind == CAPMOE_API_CHAT ? "chat.completion.chunk"
                                                                       : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", c->api->model_id);
    return o;
}

static void stream_send(gen_call *c, cJSON *o) {
    if (!c->req) {
        cJSON_Delete(o);
        return;
    }
    if (c->rq.include_usage && !cJSON_GetObjectItemCaseSensitive(o, "usage"))
        cJSON_AddNullToObject(o, "usage");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return;
    size_t n;
    char *frame = capmoe_sse_frame(s, &n);
    free(s);
    if (frame) capmoe_http_stream_write(c->req, frame, n);
    free(frame);
}

/* One streamed chunk for choice idx: text (may be empty), logprobs, finish. */
static void stream_choice(gen_call *c, int idx, const char *text, size_t tlen,
                          cJSON *logprobs, const char *finish, int role) {
    cJSON *o = chunk_base(c);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", idx);
    char *t = strndup(text ? text : "", tlen);
    if (c->rq.kind == CAPMOE_API_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (role || tlen > 0) cJSON_AddStringToObject(delta, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(ch, "text", t ? t : "");
    }
    free(t);
    if (logprobs) cJSON_AddItemToObject(ch, "logprobs", logprobs);
    else cJSON_AddNullToObject(ch, "logprobs");
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(choices, ch);
    stream_send(c, o);
}

static void stream_error(gen_call *c, int status, const char *type, const char *msg) {
    capmoe_api_error e;
    capmoe_api_fail(&e, status, type, NULL, NULL, "%s", msg);
    if (!c->req) return;
    cJSON *o = error_body(c->req, &e);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return;
    size_t n;
    char *frame = capmoe_sse_frame(s, &n);
    free(s);
    if (frame) capmoe_http_stream_write(c->req, frame, n);
    free(frame);
}

/* Stream: the first chunk of a choice (chat: the role; completions + echo:
 * the prompt text with its logprobs). */
static void stream_start_choice(gen_call *c, int idx) {
    choice_st *ch = &c->ch[idx];
    if (ch->started) return;
    ch->started = 1;
    if (c->rq.kind == CAPMOE_API_CHAT) {
        stream_choice(c, idx, "", 0, NULL, NULL, 1);
        return;
    }
    if (!c->rq.echo) return;
    int sub = idx / c->rq.n;
    const char *echo = c->sub_echo[sub];
    cJSON *lp = NULL;
    if (c->rq.logprobs >= 0)
        lp = completion_logprobs(c, ch->ptoks, ch->n_ptoks, c->sub_ids[sub][0], 1, NULL, 0,
                                 &ch->text_chars);
    else
        ch->text_chars += utf8_chars(echo, strlen(echo));
    stream_choice(c, idx, echo, strlen(echo), lp, NULL, 0);
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

/* The whole non-streaming answer. */
static void respond_final(gen_call *c) {
    capmoe_api *api = c->api;
    if (c->failed) {
        capmoe_api_error e;
        if (api->state == CAPMOE_API_FAULT) not_ready_error(api, &e);
        else capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "generation failed: %s", c->errmsg);
        send_error(api, c->req, c->endpoint, &e);
        return;
    }
    if (c->cancelled) {
        capmoe_api_error e;
        not_ready_error(api, &e);
        if (api->state != CAPMOE_API_DRAINING)
            capmoe_api_fail(&e, 503, "unavailable_error", "cancelled", NULL,
                            "the request was cancelled");
        send_error(api, c->req, c->endpoint, &e);
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
        cJSON_AddNumberToObject(x, "index", i);
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(x, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddStringToObject(msg, "content", ch->text.p ? ch->text.p : "");
            if (c->rq.logprobs >= 0)
                cJSON_AddItemToObject(x, "logprobs", chat_logprobs(c, ch->toks, ch->n_toks));
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
                                      completion_logprobs(c, ch->ptoks, ch->n_ptoks,
                                                          c->sub_ids[sub][0], c->rq.echo,
                                                          ch->toks, ch->n_toks, &off));
            } else {
                cJSON_AddNullToObject(x, "logprobs");
            }
        }
        const char *fr = finish_reason(ch->finish);
        if (fr) cJSON_AddStringToObject(x, "finish_reason", fr);
        else cJSON_AddStringToObject(x, "finish_reason", "stop");
        cJSON_AddItemToArray(choices, x);
    }
    cJSON_AddItemToObject(o, "usage", usage_object(c));
    send_json(api, c->req, c->endpoint, 200, o, NULL);
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
static void attach_access_note(gen_call *c, int client_gone) {
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
                                              : (finish_reason(f) ? finish_reason(f) : "stop");
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
    attach_access_note(c, 0);
    if (!c->rq.stream) {
        respond_final(c);
        return;
    }
    if (c->failed && api->state == CAPMOE_API_FAULT) {
        capmoe_api_error e;
        not_ready_error(api, &e);
        stream_error(c, 503, "unavailable_error", e.message);
    } else if (c->failed) {
        stream_error(c, 500, "server_error", c->errmsg);
    } else if (c->cancelled) {
        stream_error(c, 503, "unavailable_error",
                     api->state == CAPMOE_API_DRAINING
                         ? "the request was cancelled: the server is shutting down"
                         : "the request was cancelled");
    } else if (c->rq.include_usage) {
        cJSON *o = chunk_base(c);
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_object(c));
        stream_send(c, o);
    }
    static const char done[] = "data: [DONE]\n\n";
    capmoe_http_stream_write(c->req, done, sizeof done - 1);
    capmoe_http_stream_end(c->req);
    count_request(api, c->endpoint,
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
        capmoe_log_field f[] = {CAPMOE_LOG_STR("model", api->model_id),
                                CAPMOE_LOG_INT("context", capmoe_sched_context(api->sched)),
                                CAPMOE_LOG_STR("chat_template", capmoe_chat_source(api->chat))};
        capmoe_log_fields(api->log, CAPMOE_LOG_INFO, f, 3, "model loaded; ready");
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
            stream_start_choice(c, idx);
            cJSON *lp = NULL;
            if (c->rq.logprobs >= 0 && ev->n_toks > 0) {
                if (c->rq.kind == CAPMOE_API_CHAT) lp = chat_logprobs(c, ev->toks, ev->n_toks);
                else
                    lp = completion_logprobs(c, NULL, 0, 0, 0, ev->toks, ev->n_toks,
                                             &ch->text_chars);
            }
            if (ev->text_len > 0 || lp) stream_choice(c, idx, ev->text, ev->text_len, lp, NULL, 0);
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
            const char *fr = finish_reason(ev->finish);
            if (!fr) break; /* cancelled / error: reported once at the end */
            stream_start_choice(c, idx);
            if (ev->text_len > 0) stream_choice(c, idx, ev->text, ev->text_len, NULL, NULL, 0);
            stream_choice(c, idx, "", 0, NULL, fr, 0);
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
        call_unref(c); /* the scheduler's reference */
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
            if (capmoe_chat_apply_msgs(api->chat, r->messages, r->n_messages, 1, &text, &err) != 0)
                return E400(e, "messages", "cannot apply the chat template: %s", err.msg);
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
                                  "<|end|>"};
    int n = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && n < max; i++) {
        int id = capmoe_tokenizer_token_to_id(tok, names[i]);
        if (id >= 0 && capmoe_tokenizer_is_special(tok, id)) out[n++] = id;
    }
    return n;
}

static void route_generate(capmoe_api *api, capmoe_http_req *req, capmoe_api_kind kind,
                           const char *endpoint) {
    capmoe_api_error e;
    if (api->state != CAPMOE_API_READY) {
        not_ready_error(api, &e);
        send_error(api, req, endpoint, &e);
        return;
    }
    gen_call *c = calloc(1, sizeof *c);
    if (!c) {
        capmoe_api_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
        send_error(api, req, endpoint, &e);
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
    snprintf(c->id, sizeof c->id, "%s-%llx%08llx", kind == CAPMOE_API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)api->start_time, ++api->next_id);

    size_t len;
    const char *body = capmoe_http_req_body(req, &len);
    const capmoe_tokenizer *tok = capmoe_sched_tokenizer(api->sched);
    capmoe_api_limits lim = {capmoe_sched_context(api->sched), capmoe_sched_vocab(api->sched),
                             16};
    if (capmoe_api_parse_request(kind, body, len, &lim, &c->rq, &e) != 0) goto fail;
    if (c->rq.model && strcmp(c->rq.model, api->model_id) != 0) {
        capmoe_api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
                        "The model '%s' does not exist (this server serves '%s')", c->rq.model,
                        api->model_id);
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
            case CAPMOE_SCHED_ENOTREADY: not_ready_error(api, &e); break;
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
            send_error(api, req, endpoint, &e);
            call_unref(c); /* the scheduler references keep it until FINISHED */
            return;
        }
        /* Chat streams announce the role of every choice at once. */
        if (kind == CAPMOE_API_CHAT)
            for (int i = 0; i < c->n_sub * c->rq.n; i++) stream_start_choice(c, i);
    } else {
        capmoe_http_defer(req);
    }
    return;
fail:
    send_error(api, req, endpoint, &e);
    call_unref(c);
}

/* ---- routing ---------------------------------------------------------------------- */

typedef enum route_id {
    R_HEALTH, R_METRICS, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT, R_TOKENIZE, R_DETOKENIZE
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
        not_ready_error(api, &e);
        send_error(api, req, rt ? rt->path : "other", &e);
        return;
    }
    if (!rt) {
        capmoe_api_fail(&e, 404, "invalid_request_error", "not_found", NULL,
                        "Unknown route: %s %s", method, path);
        send_error(api, req, "other", &e);
        return;
    }
    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int ok = rt->post ? strcmp(method, "POST") == 0 : is_get;
    if (!ok) {
        capmoe_api_fail(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                        "Method %s is not allowed on %s (allowed: %s)", method, path,
                        rt->post ? "POST" : "GET, HEAD");
        const char *hdrs[] = {"Allow", rt->post ? "POST" : "GET, HEAD", NULL};
        send_json(api, req, rt->path, 405, error_body(req, &e), hdrs);
        return;
    }
    if (rt->auth && !auth_ok(api, req)) {
        capmoe_api_fail(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                        "Incorrect or missing API key: send \"Authorization: Bearer <key>\"");
        send_error(api, req, rt->path, &e);
        return;
    }
    switch (rt->id) {
    case R_HEALTH: route_health(api, req); break;
    case R_METRICS: route_metrics(api, req); break;
    case R_MODELS: route_models(api, req, NULL); break;
    case R_MODEL: route_models(api, req, model_id); break;
    case R_COMPLETIONS: route_generate(api, req, CAPMOE_API_COMPLETIONS, "/v1/completions"); break;
    case R_CHAT: route_generate(api, req, CAPMOE_API_CHAT, "/v1/chat/completions"); break;
    case R_TOKENIZE: route_tokenize(api, req); break;
    case R_DETOKENIZE: route_detokenize(api, req); break;
    }
}

void capmoe_api_on_done(capmoe_api *api, capmoe_http_req *req, int aborted) {
    gen_call *c = capmoe_http_req_user(req);
    if (!c) return;
    if (aborted && c->n_finished < c->n_sub) attach_access_note(c, 1);
    capmoe_http_req_set_user(req, NULL);
    c->req = NULL;
    /* Client gone (or the answer was cut): free its sequences now. */
    for (int i = 0; i < c->n_sub; i++)
        if (c->sub_live[i]) capmoe_sched_cancel(api->sched, c->sub_id[i]);
    if (aborted && c->n_finished < c->n_sub) count_request(api, c->endpoint, 499);
    call_unref(c);
}

void capmoe_api_on_rejected(capmoe_api *api, const char *path, int status) {
    const char *ep = "other";
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++)
        if (strcmp(path, k_routes[i].path) == 0) ep = k_routes[i].path;
    count_request(api, ep, status);
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
    so.max_queue = cfg->max_queue;
    so.request_timeout_s = cfg->request_timeout_s;
    capmoe_config_dispatch(cfg, &so.dispatch);
    so.collect_stats = metrics != NULL;
    so.on_event = sched_event_cb;
    so.on_step = sched_step_cb;
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
        call_unlink(c);
        c->refs = 1;
        call_unref(c);
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
    not_ready_error(api, &e);
    for (gen_call *c = api->calls; c; c = c->next) {
        if (!c->req || c->answered) continue;
        c->answered = 1;
        if (c->rq.stream) {
            stream_error(c, 503, "unavailable_error", e.message);
            static const char done[] = "data: [DONE]\n\n";
            capmoe_http_stream_write(c->req, done, sizeof done - 1);
            capmoe_http_stream_end(c->req);
            count_request(api, c->endpoint, 503);
        } else {
            send_error(api, c->req, c->endpoint, &e);
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
