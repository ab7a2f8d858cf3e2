/* jinja.c - the public API of the Jinja interpreter (capmoe_jinja_*): compile
 * (lex + parse into the template's arena), render (a fresh arena per render,
 * the variables read from JSON, limits), and the helpers the lexer and the
 * parser share (errors, allocation, interned names). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

#define MAX_TEMPLATE_BYTES (4u << 20)

/* ---- compile-time helpers ------------------------------------------------------------------------------ */

_Noreturn void jj_parse_fail(jj_parse *p, int line, int col, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0) capmoe_set_error(p->err, "%s, line %d, column %d: %s", p->t->name, line, col, msg);
    else capmoe_set_error(p->err, "%s: %s", p->t->name, msg);
    longjmp(p->jb, 1);
}

void *jj_parse_alloc(jj_parse *p, size_t n) {
    void *r = jj_arena_alloc(&p->t->arena, n);
    if (!r) jj_parse_fail(p, 0, 0, "out of memory");
    return r;
}

static uint64_t hash_name(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

const char *jj_intern(jj_parse *p, const char *s, size_t n) {
    capmoe_jinja *t = p->t;
    if ((t->n_names + 1) * 2 > t->names_cap) {
        size_t cap = t->names_cap ? t->names_cap * 2 : 64;
        const char **nn = jj_parse_alloc(p, sizeof *nn * cap);
        memset(nn, 0, sizeof *nn * cap);
        for (size_t i = 0; i < t->names_cap; i++) {
            if (!t->names[i]) continue;
            size_t h = (size_t)hash_name(t->names[i], strlen(t->names[i])) & (cap - 1);
            while (nn[h]) h = (h + 1) & (cap - 1);
            nn[h] = t->names[i];
        }
        t->names = nn;
        t->names_cap = cap;
    }
    size_t h = (size_t)hash_name(s, n) & (t->names_cap - 1);
    while (t->names[h]) {
        if (strlen(t->names[h]) == n && !memcmp(t->names[h], s, n)) return t->names[h];
        h = (h + 1) & (t->names_cap - 1);
    }
    char *c = jj_parse_alloc(p, n + 1);
    memcpy(c, s, n);
    c[n] = '\0';
    t->names[h] = c;
    t->n_names++;
    return c;
}

const char *jj_lookup_name(const capmoe_jinja *t, const char *s) {
    if (!t->names_cap) return NULL;
    size_t n = strlen(s), h = (size_t)hash_name(s, n) & (t->names_cap - 1);
    while (t->names[h]) {
        if (!strcmp(t->names[h], s)) return t->names[h];
        h = (h + 1) & (t->names_cap - 1);
    }
    return NULL;
}

/* 1 when s[0..n) is valid UTF-8 without NUL bytes; *bad receives the offset of the first fault. */
static int valid_text(const char *s, size_t n, size_t *bad) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (c == 0 || len == 0 || i + len > n) {
            *bad = i;
            return 0;
        }
        uint32_t cp = c & (0xFF >> (len + 1));
        for (size_t k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80) {
                *bad = i;
                return 0;
            }
            cp = (cp << 6) | (u[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF)) {
            *bad = i;
            return 0;
        }
        i += len;
    }
    return 1;
}

/* ---- API ------------------------------------------------------------------------------------------------------ */

int capmoe_jinja_compile(capmoe_jinja **out, const char *source, size_t len, const char *name,
                         capmoe_error *err) {
    *out = NULL;
    const char *nm = name && *name ? name : "template";
    if (!source) return capmoe_set_error(err, "%s: no template text", nm);
    if (len > MAX_TEMPLATE_BYTES)
        return capmoe_set_error(err, "%s: template of %zu bytes is larger than the limit (%u bytes)", nm, len,
                                MAX_TEMPLATE_BYTES);
    size_t bad;
    if (!valid_text(source, len, &bad))
        return capmoe_set_error(err, "%s: byte %zu is %s", nm, bad,
                                source[bad] ? "not valid UTF-8" : "a NUL byte");
    capmoe_jinja *t = calloc(1, sizeof *t);
    jj_parse *p = calloc(1, sizeof *p); /* on the heap: it outlives a longjmp unchanged */
    if (!t || !p) {
        free(t);
        free(p);
        return capmoe_set_error(err, "%s: out of memory", nm);
    }
    snprintf(t->name, sizeof t->name, "%s", nm);
    p->t = t;
    p->err = err;
    if (setjmp(p->jb)) {
        free(p->toks);
        free(p);
        capmoe_jinja_free(t);
        return -1;
    }
    jj_lex(p, source, len);
    jj_parse_template(p);
    free(p->toks);
    free(p);
    *out = t;
    return 0;
}

void capmoe_jinja_free(capmoe_jinja *t) {
    if (!t) return;
    jj_arena_free(&t->arena);
    free(t);
}

int capmoe_jinja_uses(const capmoe_jinja *t, const char *name) {
    return t && name && jj_lookup_name(t, name) != NULL;
}

int capmoe_jinja_render(const capmoe_jinja *t, const char *vars_json, const capmoe_jinja_opts *opts,
                        char **out, size_t *len, capmoe_error *err) {
    *out = NULL;
    if (len) *len = 0;
    if (!t) return capmoe_set_error(err, "no template");
    jj_rt *rt = calloc(1, sizeof *rt); /* on the heap: it outlives a longjmp unchanged */
    if (!rt) return capmoe_set_error(err, "%s: out of memory", t->name);
    const capmoe_jinja_limits *lim = opts ? opts->limits : NULL;
    rt->t = t;
    rt->err = err;
    rt->max_output = lim && lim->max_output ? lim->max_output : (size_t)16 << 20;
    rt->arena.limit = lim && lim->max_memory ? lim->max_memory : (size_t)512 << 20;
    rt->steps_left = lim && lim->max_steps ? lim->max_steps : 10000000L;
    rt->max_depth = lim && lim->max_depth ? lim->max_depth : 100;
    rt->now = opts ? opts->now : 0;
    if (setjmp(rt->jb)) {
        jj_arena_free(&rt->arena);
        free(rt);
        return -1;
    }
    rt->out = jj_alloc(rt, sizeof *rt->out);
    memset(rt->out, 0, sizeof *rt->out);
    if (vars_json && *vars_json) {
        jj_val v = jj_json_parse(rt, vars_json, strlen(vars_json), "template variables");
        if (v.t != JT_DICT) jj_fail(rt, NULL, "the template variables must be a JSON object");
        rt->vars = v.u.d;
    }
    jj_exec(rt);
    char *r = malloc(rt->out->n + 1);
    if (!r) jj_fail(rt, NULL, "out of memory");
    if (rt->out->n) memcpy(r, rt->out->p, rt->out->n);
    r[rt->out->n] = '\0';
    if (len) *len = rt->out->n;
    *out = r;
    jj_arena_free(&rt->arena);
    free(rt);
    return 0;
}
