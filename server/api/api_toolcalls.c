/* api_toolcalls.c - tool calls read back from generated text, in the form
 * the model's chat template teaches (r->tool_form):
 *   - Hermes / Qwen: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>,
 *     any number, text around them is content;
 *   - Mistral (v0.3): [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
 *     (also one object without the list, and the later
 *     [TOOL_CALLS]name[ARGS]{...} spelling), text before it is content;
 *   - Llama 3.1 / 3.2: the whole answer is {"name": ..., "parameters": {...}}
 *     (or "arguments"), optionally after <|python_tag|>, several separated
 *     by ';' or white space; anything else is content;
 *   - DeepSeek-V3: <｜tool▁calls▁begin｜> then calls
 *     <｜tool▁call▁begin｜>function<｜tool▁sep｜>name\n```json\n{...}\n```<｜tool▁call▁end｜>
 *     (or V3.1's <｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>),
 *     then <｜tool▁calls▁end｜> (optional, as is the last call's end marker when
 *     the text ends with the call), text around it is content.
 * A call is taken only when it parses, names a declared tool and its
 * arguments are an object; otherwise its text stays content (never an
 * error). The form's detection from a rendered probe is here too. */
#include "api_internal.h"
#include "api_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MISTRAL_MARK "[TOOL_CALLS]"
#define LLAMA_TAG "<|python_tag|>"
#define DS_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define DS_CALLS_END "<｜tool▁calls▁end｜>"
#define DS_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define DS_CALL_END "<｜tool▁call▁end｜>"
#define DS_SEP "<｜tool▁sep｜>"

capmoe_api_tool_form capmoe_api_tool_form_of(const char *rendered) {
    if (!rendered || !strstr(rendered, "probe_fn")) return CAPMOE_TOOL_FORM_UNKNOWN;
    if (strstr(rendered, "<tool_call>")) return CAPMOE_TOOL_FORM_HERMES;
    if (strstr(rendered, MISTRAL_MARK)) return CAPMOE_TOOL_FORM_MISTRAL;
    if (strstr(rendered, DS_CALL_BEGIN)) return CAPMOE_TOOL_FORM_DEEPSEEK;
    if (strstr(rendered, "{\"name\": \"probe_fn\", \"parameters\": ")) return CAPMOE_TOOL_FORM_LLAMA3;
    return CAPMOE_TOOL_FORM_UNKNOWN;
}

const char *capmoe_api_tool_form_name(capmoe_api_tool_form f) {
    switch (f) {
    case CAPMOE_TOOL_FORM_HERMES: return "hermes";
    case CAPMOE_TOOL_FORM_MISTRAL: return "mistral";
    case CAPMOE_TOOL_FORM_LLAMA3: return "llama3";
    case CAPMOE_TOOL_FORM_DEEPSEEK: return "deepseek_v3";
    default: return "unknown";
    }
}

void capmoe_api_tool_id9(const char *s, int k, char out[10]) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = s; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ (uint64_t)k) * 1099511628211ull;
    for (int i = 0; i < 9; i++, h /= 62) out[i] = al[h % 62];
    out[9] = 0;
}

/* ---- the calls found so far -------------------------------------------------------- */

typedef struct found {
    const cJSON *tools;   /* the declared tools (borrowed) */
    const char *id_base;
    int mistral_ids;      /* ids of 9 letters / digits (the Mistral template checks them) */
    cJSON *calls;         /* the array being built (owned) */
    buf rest;             /* the content */
    int oom;
} found;

static void rest_add(found *f, const char *s, size_t n) {
    if (buf_add(&f->rest, s, n) != 0) f->oom = 1;
}

static int tool_known(const cJSON *tools, const char *name) {
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *tn = fn ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        if (cJSON_IsString(tn) && !strcmp(tn->valuestring, name)) return 1;
    }
    return 0;
}

/* The arguments of a call as an object (new), from an object, a string
 * holding one, or nothing ({}); NULL when they are something else. */
static cJSON *call_args(const cJSON *a) {
    if (!a) return cJSON_CreateObject();
    if (cJSON_IsObject(a)) return cJSON_Duplicate(a, 1);
    if (cJSON_IsString(a)) {
        cJSON *v = cJSON_Parse(a->valuestring);
        if (cJSON_IsObject(v)) return v;
        cJSON_Delete(v);
    }
    return NULL;
}

/* 1 when {name, <key>: args} (key "arguments", or "parameters" too when
 * alt) is a call of a declared tool. */
static int call_ok(const found *f, const cJSON *v, int alt) {
    const cJSON *name = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "name") : NULL;
    if (!cJSON_IsString(name) || !tool_known(f->tools, name->valuestring)) return 0;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(v, "arguments");
    if (!a && alt) a = cJSON_GetObjectItemCaseSensitive(v, "parameters");
    cJSON *x = call_args(a);
    cJSON_Delete(x);
    return x != NULL;
}

static void add_call(found *f, const char *name, const cJSON *args) {
    cJSON *x = cJSON_CreateObject();
    char id[96];
    int k = cJSON_GetArraySize(f->calls);
    if (f->mistral_ids) {
        capmoe_api_tool_id9(f->id_base, k, id);
    } else {
        snprintf(id, sizeof id, "call_%s_%d", f->id_base, k);
    }
    cJSON_AddStringToObject(x, "id", id);
    cJSON_AddStringToObject(x, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(x, "function");
    cJSON_AddStringToObject(fn, "name", name);
    cJSON *a = call_args(args);
    char *s = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_AddStringToObject(fn, "arguments", s ? s : "{}");
    free(s);
    cJSON_Delete(a);
    cJSON_AddItemToArray(f->calls, x);
}

/* Adds {name, arguments | parameters} (checked with call_ok). */
static void add_obj(found *f, const cJSON *v, int alt) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(v, "arguments");
    if (!a && alt) a = cJSON_GetObjectItemCaseSensitive(v, "parameters");
    add_call(f, cJSON_GetObjectItemCaseSensitive(v, "name")->valuestring, a);
}

static const char *skip_ws(const char *p) {
    while (*p && strchr(" \t\r\n", *p)) p++;
    return p;
}

/* ---- the forms --------------------------------------------------------------------- */

static void parse_hermes(found *f, const char *p) {
    for (;;) {
        const char *o = strstr(p, "<tool_call>");
        const char *c = o ? strstr(o, "</tool_call>") : NULL;
        if (!o || !c) break;
        rest_add(f, p, (size_t)(o - p));
        const char *body = o + strlen("<tool_call>");
        cJSON *v = cJSON_ParseWithLength(body, (size_t)(c - body));
        if (call_ok(f, v, 0)) add_obj(f, v, 0);
        else /* not a call of a declared tool: stays text */
            rest_add(f, o, (size_t)(c + strlen("</tool_call>") - o));
        cJSON_Delete(v);
        p = c + strlen("</tool_call>");
    }
    rest_add(f, p, strlen(p));
}

/* One [TOOL_CALLS] block at p (just after the marker): the calls it holds,
 * all valid, added; returns the end of the block, or NULL (nothing added). */
static const char *mistral_block(found *f, const char *p) {
    p = skip_ws(p);
    if (*p == '[' || *p == '{') {
        const char *end = NULL;
        cJSON *v = cJSON_ParseWithOpts(p, &end, 0);
        int ok = v != NULL;
        if (cJSON_IsArray(v)) {
            ok = v->child != NULL;
            for (const cJSON *c = v->child; c && ok; c = c->next) ok = call_ok(f, c, 1);
            for (const cJSON *c = v->child; c && ok; c = c->next) add_obj(f, c, 1);
        } else if (ok) {
            ok = call_ok(f, v, 1);
            if (ok) add_obj(f, v, 1);
        }
        cJSON_Delete(v);
        return ok ? end : NULL;
    }
    /* name[ARGS]{...} */
    const char *a = strstr(p, "[ARGS]");
    if (!a || a == p) return NULL;
    char name[72];
    size_t nl = (size_t)(a - p);
    if (nl >= sizeof name) return NULL;
    memcpy(name, p, nl);
    name[nl] = 0;
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithOpts(a + strlen("[ARGS]"), &end, 0);
    int ok = cJSON_IsObject(v) && tool_known(f->tools, name);
    if (ok) add_call(f, name, v);
    cJSON_Delete(v);
    return ok ? end : NULL;
}

static void parse_mistral(found *f, const char *p) {
    for (;;) {
        const char *o = strstr(p, MISTRAL_MARK);
        if (!o) break;
        rest_add(f, p, (size_t)(o - p));
        const char *end = mistral_block(f, o + strlen(MISTRAL_MARK));
        if (!end) { /* malformed: the rest is text */
            p = o;
            break;
        }
        p = end;
    }
    rest_add(f, p, strlen(p));
}

static void parse_llama3(found *f, const char *text) {
    const char *p = skip_ws(text);
    if (!strncmp(p, LLAMA_TAG, strlen(LLAMA_TAG))) p = skip_ws(p + strlen(LLAMA_TAG));
    cJSON *objs = cJSON_CreateArray();
    int ok = *p == '{';
    while (ok && *p) {
        const char *end = NULL;
        cJSON *v = cJSON_ParseWithOpts(p, &end, 0);
        ok = v && call_ok(f, v, 1);
        if (ok) cJSON_AddItemToArray(objs, v);
        else cJSON_Delete(v);
        if (!ok) break;
        p = skip_ws(end);
        if (*p == ';') p = skip_ws(p + 1);
    }
    if (ok)
        for (const cJSON *v = objs->child; v; v = v->next) add_obj(f, v, 1);
    else
        rest_add(f, text, strlen(text));
    cJSON_Delete(objs);
}

/* One DeepSeek call body (between call begin and end) added; 0 when malformed. */
static int deepseek_call(found *f, const char *b, size_t len) {
    char *s = malloc(len + 1);
    if (!s) return 0;
    memcpy(s, b, len);
    s[len] = 0;
    int ok = 0;
    char *sep = strstr(s, DS_SEP);
    if (sep) {
        *sep = 0;
        char *right = sep + strlen(DS_SEP);
        char *name = NULL, *args = right;
        char *fence = strstr(right, "```json");
        if (!strcmp(s, "function") && fence) { /* V3: name\n```json\n{...}\n``` */
            char *nl = strchr(right, '\n');
            if (nl && nl < fence) {
                *nl = 0;
                name = right;
                args = fence + strlen("```json");
                char *close = NULL; /* the last fence, only white space after it */
                for (char *x = strstr(args, "```"); x; x = strstr(x + 1, "```")) close = x;
                if (close && !*skip_ws(close + 3)) *close = 0;
                else name = NULL;
            }
        } else { /* V3.1: name<sep>{...} */
            name = s;
        }
        if (name) {
            cJSON *v = cJSON_Parse(args);
            ok = cJSON_IsObject(v) && tool_known(f->tools, name);
            if (ok) add_call(f, name, v);
            cJSON_Delete(v);
        }
    }
    free(s);
    return ok;
}

static void parse_deepseek(found *f, const char *p) {
    const char *o = strstr(p, DS_CALLS_BEGIN);
    if (!o) {
        rest_add(f, p, strlen(p));
        return;
    }
    const char *q = o + strlen(DS_CALLS_BEGIN);
    int n0 = cJSON_GetArraySize(f->calls), ok = 1, any = 0;
    for (;;) {
        const char *s = skip_ws(q);
        if (strncmp(s, DS_CALL_BEGIN, strlen(DS_CALL_BEGIN)) != 0) break;
        s += strlen(DS_CALL_BEGIN);
        const char *e = strstr(s, DS_CALL_END);
        int last = !e; /* the text ended after the call (constrained decoding stops there) */
        if (last) e = s + strlen(s);
        if (!deepseek_call(f, s, (size_t)(e - s))) {
            ok = 0;
            break;
        }
        any = 1;
        q = last ? e : e + strlen(DS_CALL_END);
    }
    if (ok && any) {
        const char *s = skip_ws(q);
        if (!strncmp(s, DS_CALLS_END, strlen(DS_CALLS_END))) q = s + strlen(DS_CALLS_END);
        rest_add(f, p, (size_t)(o - p));
        rest_add(f, q, strlen(q));
        return;
    }
    while (cJSON_GetArraySize(f->calls) > n0) cJSON_DeleteItemFromArray(f->calls, n0);
    rest_add(f, p, strlen(p));
}

/* The calls in text (already joined with the prefill) and the text around
 * them, untrimmed, in *rest (malloc'd). NULL: out of memory. */
static cJSON *parse_text(const capmoe_api_request *r, const char *text, const char *id_base,
                         buf *rest) {
    found f = {0};
    f.tools = cJSON_Parse(r->tools_json);
    f.id_base = id_base;
    f.mistral_ids = r->tool_form == CAPMOE_TOOL_FORM_MISTRAL;
    f.calls = cJSON_CreateArray();
    if (f.calls) {
        switch (r->tool_form) {
        case CAPMOE_TOOL_FORM_MISTRAL: parse_mistral(&f, text); break;
        case CAPMOE_TOOL_FORM_LLAMA3: parse_llama3(&f, text); break;
        case CAPMOE_TOOL_FORM_DEEPSEEK: parse_deepseek(&f, text); break;
        default: parse_hermes(&f, text); break;
        }
    }
    cJSON_Delete((cJSON *)f.tools);
    if (f.oom || !f.calls || buf_add(&f.rest, "", 0) != 0) {
        buf_free(&f.rest);
        cJSON_Delete(f.calls);
        return NULL;
    }
    *rest = f.rest;
    return f.calls;
}

/* prefill + text (malloc'd), or text itself in *joined = NULL. */
static const char *join_prefill(const capmoe_api_request *r, const char *text, char **joined) {
    *joined = NULL;
    if (!r->tool_prefill) return text;
    size_t a = strlen(r->tool_prefill), b = strlen(text);
    if (!(*joined = malloc(a + b + 1))) return NULL;
    memcpy(*joined, r->tool_prefill, a);
    memcpy(*joined + a, text, b + 1);
    return *joined;
}

cJSON *capmoe_api_tool_calls(const capmoe_api_request *r, const char *text, const char *id_base,
                             char **content) {
    *content = NULL;
    if (!r->tools_json || r->tool_choice == CAPMOE_TOOLS_NONE || !text) return NULL;
    char *joined;
    text = join_prefill(r, text, &joined);
    if (!text) return NULL;
    buf rest = {0};
    cJSON *calls = parse_text(r, text, id_base, &rest);
    free(joined);
    if (!calls || cJSON_GetArraySize(calls) == 0) {
        buf_free(&rest);
        cJSON_Delete(calls);
        return NULL;
    }
    /* the text around the calls: content (null when only white space) */
    size_t a = 0, b = rest.len;
    while (a < b && strchr(" \t\r\n", rest.p[a])) a++;
    while (b > a && strchr(" \t\r\n", rest.p[b - 1])) b--;
    if (b > a) {
        memmove(rest.p, rest.p + a, b - a);
        rest.p[b - a] = 0;
        *content = rest.p;
    } else {
        buf_free(&rest);
    }
    return calls;
}

/* ---- the settled part of a text still being generated ----------------------------- */

/* The length of the longest proper suffix of s that begins `mark`. */
static size_t partial_mark(const char *s, const char *mark) {
    size_t n = strlen(s), m = strlen(mark);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (!strncmp(s + n - k, mark, k)) return k;
    return 0;
}

static int starts(const char *s, const char *mark) {
    return !strncmp(s, mark, strlen(mark));
}

/* The end of the prefix of text whose reading no continuation changes: its
 * calls are the first calls of the whole text, its rest the start of the
 * whole text's rest. *more: 0 when no call can follow (the text is content). */
static size_t settled_end(const capmoe_api_request *r, const char *t, int *more) {
    size_t n = strlen(t);
    *more = 1;
    switch (r->tool_form) {
    case CAPMOE_TOOL_FORM_LLAMA3: { /* calls only when the whole text is calls */
        const char *q = skip_ws(t);
        size_t ql = strlen(q), tl = strlen(LLAMA_TAG);
        if (ql < tl && !strncmp(q, LLAMA_TAG, ql)) return 0; /* the tag, maybe (or nothing) */
        if (starts(q, LLAMA_TAG)) q = skip_ws(q + tl);
        if (!*q || *q == '{') return 0;
        *more = 0;
        return n;
    }
    case CAPMOE_TOOL_FORM_DEEPSEEK: { /* one block, settled when closed */
        const char *o = strstr(t, DS_CALLS_BEGIN);
        if (!o) return n - partial_mark(t, DS_CALLS_BEGIN);
        const char *q = o + strlen(DS_CALLS_BEGIN);
        for (;;) {
            const char *s = skip_ws(q);
            if (!starts(s, DS_CALL_BEGIN)) break;
            const char *e = strstr(s + strlen(DS_CALL_BEGIN), DS_CALL_END);
            if (!e) return (size_t)(o - t);
            q = e + strlen(DS_CALL_END);
        }
        if (!starts(skip_ws(q), DS_CALLS_END)) return (size_t)(o - t);
        *more = 0;
        return n;
    }
    case CAPMOE_TOOL_FORM_MISTRAL: { /* blocks settled when their JSON is whole */
        found f = {0};
        f.tools = cJSON_Parse(r->tools_json);
        f.calls = cJSON_CreateArray();
        f.id_base = "";
        const char *p = t;
        size_t k;
        for (;;) {
            const char *o = strstr(p, MISTRAL_MARK);
            if (!o) {
                k = n - partial_mark(p, MISTRAL_MARK);
                break;
            }
            const char *end = f.calls ? mistral_block(&f, o + strlen(MISTRAL_MARK)) : NULL;
            if (!end) {
                k = (size_t)(o - t);
                break;
            }
            p = end;
        }
        cJSON_Delete((cJSON *)f.tools);
        cJSON_Delete(f.calls);
        return k;
    }
    default: { /* Hermes: each call settled at its close */
        const char *p = t;
        for (;;) {
            const char *o = strstr(p, "<tool_call>");
            if (!o) return n - partial_mark(p, "<tool_call>");
            const char *c = strstr(o, "</tool_call>");
            if (!c) return (size_t)(o - t);
            p = c + strlen("</tool_call>");
        }
    }
    }
}

int capmoe_api_tool_stream_step(const capmoe_api_request *r, const char *text, const char *id_base,
                                int final, capmoe_api_tool_stream *st, buf *content,
                                cJSON **calls) {
    *calls = NULL;
    if (!text) text = "";
    if (final) {
        char *c = NULL;
        cJSON *all = capmoe_api_tool_calls(r, text, id_base, &c);
        const char *want = all ? (c ? c : "") : text;
        size_t wl = strlen(want);
        int rc = 0; /* what was sent is the start of want (-1 if not: a bug) */
        if (st->content_sent > wl) rc = -1;
        else if (buf_add(content, want + st->content_sent, wl - st->content_sent) != 0) rc = -1;
        st->content_sent = wl;
        free(c);
        st->has_calls = all != NULL;
        if (all) {
            for (int i = 0; i < st->calls_sent && all->child; i++) cJSON_DeleteItemFromArray(all, 0);
            st->calls_sent += cJSON_GetArraySize(all);
            if (all->child) *calls = all;
            else cJSON_Delete(all);
        }
        return rc;
    }
    /* a required / named call (whose opening marker was the prompt's end):
     * all at the end */
    if (r->tool_prefill || !r->tools_json || r->tool_choice == CAPMOE_TOOLS_NONE) return 0;
    int more;
    size_t k = settled_end(r, text, &more);
    char *pre = strndup(text, k);
    if (!pre) return -1;
    buf rest = {0};
    cJSON *got = parse_text(r, pre, id_base, &rest);
    free(pre);
    if (!got) return -1;
    int nk = cJSON_GetArraySize(got);
    const char *target = rest.p;
    size_t lim = rest.len;
    if (nk > 0) { /* content: the rest, trimmed */
        while (*target && strchr(" \t\r\n", *target)) target++, lim--;
    } else if (!more) { /* never calls: the text as it is */
        target = text;
        lim = strlen(text);
    } else if (rest.len && strchr(" \t\r\n", rest.p[0])) { /* trimmed only if calls follow */
        lim = 0;
    }
    if (nk > 0 || more)
        while (lim > 0 && strchr(" \t\r\n", target[lim - 1])) lim--;
    int rc = 0;
    if (lim > st->content_sent) {
        rc = buf_add(content, target + st->content_sent, lim - st->content_sent);
        st->content_sent = lim;
    }
    if (nk > st->calls_sent) {
        for (int i = 0; i < st->calls_sent; i++) cJSON_DeleteItemFromArray(got, 0);
        st->calls_sent = nk;
        st->has_calls = 1;
        *calls = got;
    } else {
        cJSON_Delete(got);
    }
    buf_free(&rest);
    return rc;
}
