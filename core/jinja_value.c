/* jinja_value.c - the values of the Jinja interpreter, with Python's
 * semantics: str() and repr() (float repr is the shortest string that reads
 * back to the same double, as Python prints it), truthiness, == across
 * int/float/bool, ordering, len(), iteration; JSON in (json.loads: 1 is an
 * int, 1.0 a float) and out (json.dumps with transformers' tojson options).
 * Everything is allocated in the render's arena. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_internal.h"

/* ---- arena --------------------------------------------------------------------------------- */

struct jj_chunk {
    jj_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

void *jj_arena_alloc(jj_arena *a, size_t n) {
    const size_t al = sizeof(max_align_t);
    n = (n + al - 1) / al * al;
    if (n == 0) n = al;
    jj_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 - sizeof *c ? n : 65536 - sizeof *c;
        if (c && c->cap * 2 > cap && c->cap < (1u << 24)) cap = c->cap * 2; /* grow chunks */
        if (a->limit && a->total + cap + sizeof *c > a->limit) {
            if (a->total + n + sizeof *c > a->limit) return NULL;
            cap = n;
        }
        c = calloc(1, sizeof *c + cap); /* zeroed: every allocation starts at zero */
        if (!c) return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
        a->total += sizeof *c + cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void jj_arena_free(jj_arena *a) {
    jj_chunk *c = a->head;
    while (c) {
        jj_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- UTF-8 ------------------------------------------------------------------------------------ */

uint32_t jj_utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    size_t k = *i;
    uint32_t c = u[k];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (k + (size_t)len > n) len = 1;
    if (len == 1) {
        *i = k + 1;
        return c < 0x80 ? c : 0xFFFD;
    }
    uint32_t cp = c & (0xFF >> (len + 1));
    for (int j = 1; j < len; j++) cp = (cp << 6) | (u[k + (size_t)j] & 0x3F);
    *i = k + (size_t)len;
    return cp;
}

size_t jj_utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

long jj_str_ncp(jj_str *s) {
    if (s->ncp < 0) {
        long k = 0;
        for (size_t i = 0; i < s->n; i++) k += ((unsigned char)s->p[i] & 0xC0) != 0x80;
        s->ncp = k;
    }
    return s->ncp;
}

size_t jj_cp_offset(const jj_str *s, long k) {
    size_t i = 0;
    if (s->ncp == (long)s->n) return (size_t)k; /* ASCII */
    while (k > 0 && i < s->n) {
        i++;
        while (i < s->n && ((unsigned char)s->p[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}

int jj_py_isspace(uint32_t cp) {
    /* Python str.isspace(): bidirectional class WS/B/S or category Zs */
    if ((cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20)) return 1;
    if (cp < 0x80) return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* ---- constructors ------------------------------------------------------------------------------ */

jj_val jj_none(void) {
    jj_val v;
    memset(&v, 0, sizeof v);
    v.t = JT_NONE;
    return v;
}
jj_val jj_bool(int b) {
    jj_val v = jj_none();
    v.t = JT_BOOL;
    v.u.i = b != 0;
    return v;
}
jj_val jj_int(int64_t i) {
    jj_val v = jj_none();
    v.t = JT_INT;
    v.u.i = i;
    return v;
}
jj_val jj_float(double f) {
    jj_val v = jj_none();
    v.t = JT_FLOAT;
    v.u.f = f;
    return v;
}

jj_val jj_undef_v(jj_rt *rt, const char *fmt, ...) {
    jj_val v = jj_none();
    v.t = JT_UNDEF;
    jj_undef *u = jj_alloc(rt, sizeof *u);
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    size_t n = strlen(buf);
    char *m = jj_alloc(rt, n + 1);
    memcpy(m, buf, n + 1);
    u->msg = m;
    v.u.u = u;
    return v;
}

jj_str *jj_str_new(jj_rt *rt, const char *s, size_t n) {
    jj_str *r = jj_alloc(rt, sizeof *r + n + 1);
    r->n = n;
    r->ncp = -1;
    if (n) memcpy(r->p, s, n);
    r->p[n] = '\0';
    return r;
}

jj_val jj_str_v(jj_rt *rt, const char *s, size_t n) {
    jj_val v = jj_none();
    v.t = JT_STR;
    v.u.s = jj_str_new(rt, s, n);
    return v;
}

jj_val jj_cstr(jj_rt *rt, const char *s) { return jj_str_v(rt, s, strlen(s)); }

static jj_val list_of(jj_rt *rt, int type, size_t cap) {
    jj_val v = jj_none();
    v.t = (uint8_t)type;
    v.u.l = jj_alloc(rt, sizeof *v.u.l);
    v.u.l->n = 0;
    v.u.l->cap = cap;
    v.u.l->v = cap ? jj_alloc(rt, sizeof(jj_val) * cap) : NULL;
    return v;
}
jj_val jj_list_v(jj_rt *rt, size_t cap) { return list_of(rt, JT_LIST, cap); }
jj_val jj_tuple_v(jj_rt *rt, size_t cap) { return list_of(rt, JT_TUPLE, cap); }

void jj_list_push(jj_rt *rt, jj_list *l, jj_val v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jj_val *nv = jj_alloc(rt, sizeof *nv * cap);
        if (l->n) memcpy(nv, l->v, sizeof *nv * l->n);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

jj_val jj_dict_v(jj_rt *rt) {
    jj_val v = jj_none();
    v.t = JT_DICT;
    v.u.d = jj_alloc(rt, sizeof *v.u.d);
    memset(v.u.d, 0, sizeof *v.u.d);
    return v;
}

/* Python-consistent hash: equal values (1 == 1.0 == True) hash alike. */
static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static int hashable(jj_val k) {
    return k.t == JT_STR || k.t == JT_INT || k.t == JT_BOOL || k.t == JT_FLOAT || k.t == JT_NONE;
}

static uint64_t hash_val(jj_val k) {
    switch (k.t) {
    case JT_STR: return hash_bytes(k.u.s->p, k.u.s->n);
    case JT_INT:
    case JT_BOOL: return (uint64_t)k.u.i * 0x9E3779B97F4A7C15ULL;
    case JT_FLOAT:
        if (k.u.f == floor(k.u.f) && fabs(k.u.f) < 9.2e18) return (uint64_t)(int64_t)k.u.f * 0x9E3779B97F4A7C15ULL;
        return hash_bytes((const char *)&k.u.f, sizeof k.u.f);
    default: return 7;
    }
}

static void dict_reindex(jj_rt *rt, jj_dict *d) {
    size_t cap = 16;
    while (cap < d->n * 2 + 2) cap *= 2;
    d->idx = jj_alloc(rt, sizeof *d->idx * cap);
    memset(d->idx, 0, sizeof *d->idx * cap);
    d->idx_cap = cap;
    for (size_t i = 0; i < d->n; i++) {
        size_t h = (size_t)hash_val(d->k[i]) & (cap - 1);
        while (d->idx[h]) h = (h + 1) & (cap - 1);
        d->idx[h] = (uint32_t)i + 1;
    }
}

static long dict_find(const jj_dict *d, jj_val key) {
    if (d->idx && hashable(key)) {
        size_t h = (size_t)hash_val(key) & (d->idx_cap - 1);
        while (d->idx[h]) {
            size_t i = d->idx[h] - 1;
            if (jj_eq(d->k[i], key)) return (long)i;
            h = (h + 1) & (d->idx_cap - 1);
        }
        return -1;
    }
    for (size_t i = 0; i < d->n; i++)
        if (jj_eq(d->k[i], key)) return (long)i;
    return -1;
}

jj_val *jj_dict_get(const jj_dict *d, jj_val key) {
    long i = dict_find(d, key);
    return i < 0 ? NULL : &d->v[i];
}

jj_val *jj_dict_gets(const jj_dict *d, const char *key, size_t n) {
    union { /* a transient key: on the stack when short */
        jj_str s;
        char bytes[sizeof(jj_str) + 248];
    } buf;
    jj_str *s = n < 240 ? &buf.s : malloc(sizeof *s + n + 1);
    if (!s) return NULL;
    s->n = n;
    s->ncp = -1;
    memcpy(s->p, key, n);
    s->p[n] = '\0';
    jj_val k = jj_none();
    k.t = JT_STR;
    k.u.s = s;
    jj_val *r = jj_dict_get(d, k);
    if (s != &buf.s) free(s);
    return r;
}

void jj_dict_set(jj_rt *rt, jj_dict *d, jj_val key, jj_val v) {
    long i = dict_find(d, key);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jj_val *nk = jj_alloc(rt, sizeof *nk * cap), *nv = jj_alloc(rt, sizeof *nv * cap);
        if (d->n) {
            memcpy(nk, d->k, sizeof *nk * d->n);
            memcpy(nv, d->v, sizeof *nv * d->n);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = v;
    d->n++;
    if (d->n > 8 && (!d->idx || d->n * 2 + 2 > d->idx_cap)) {
        dict_reindex(rt, d);
    } else if (d->idx) {
        if (hashable(key)) {
            size_t h = (size_t)hash_val(key) & (d->idx_cap - 1);
            while (d->idx[h]) h = (h + 1) & (d->idx_cap - 1);
            d->idx[h] = (uint32_t)d->n;
        } else {
            d->idx = NULL; /* unhashable keys: linear search from now on */
        }
    }
}

/* ---- buffers -------------------------------------------------------------------------------------- */

void jj_buf_put(jj_rt *rt, jj_buf *b, const char *s, size_t n) {
    if (n == 0) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = jj_alloc(rt, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void jj_buf_puts(jj_rt *rt, jj_buf *b, const char *s) { jj_buf_put(rt, b, s, strlen(s)); }
void jj_buf_putc(jj_rt *rt, jj_buf *b, char c) { jj_buf_put(rt, b, &c, 1); }
void jj_buf_putcp(jj_rt *rt, jj_buf *b, uint32_t cp) {
    char o[4];
    jj_buf_put(rt, b, o, jj_utf8_put(o, cp));
}

jj_val jj_buf_val(jj_rt *rt, jj_buf *b) { return jj_str_v(rt, b->p ? b->p : "", b->n); }

/* ---- Python semantics -------------------------------------------------------------------------------- */

int jj_truthy(jj_rt *rt, jj_val v) {
    (void)rt;
    switch (v.t) {
    case JT_UNDEF:
    case JT_NONE: return 0;
    case JT_BOOL:
    case JT_INT: return v.u.i != 0;
    case JT_FLOAT: return v.u.f != 0.0;
    case JT_STR: return v.u.s->n != 0;
    case JT_LIST:
    case JT_TUPLE: return v.u.l->n != 0;
    case JT_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

const char *jj_type_name(jj_val v) {
    switch (v.t) {
    case JT_UNDEF: return "Undefined";
    case JT_NONE: return "NoneType";
    case JT_BOOL: return "bool";
    case JT_INT: return "int";
    case JT_FLOAT: return "float";
    case JT_STR: return v.markup ? "Markup" : "str";
    case JT_LIST: return "list";
    case JT_TUPLE: return "tuple";
    case JT_DICT: return "dict";
    case JT_GEN: return v.u.g->kind;
    case JT_NS: return "Namespace";
    case JT_MACRO: return "Macro";
    case JT_FUNC: return "function";
    case JT_METHOD: return "builtin_function_or_method";
    case JT_LOOP: return "LoopContext";
    case JT_CYCLER: return "Cycler";
    case JT_JOINER: return "Joiner";
    }
    return "object";
}

const char *jj_object_desc(jj_val v) {
    switch (v.t) {
    case JT_NONE: return "None";
    case JT_BOOL: return "bool object";
    case JT_INT: return "int object";
    case JT_FLOAT: return "float object";
    case JT_STR: return v.markup ? "markupsafe.Markup object" : "str object";
    case JT_LIST: return "list object";
    case JT_TUPLE: return "tuple object";
    case JT_DICT: return "dict object";
    case JT_NS: return "jinja2.utils.Namespace object";
    case JT_LOOP: return "jinja2.runtime.LoopContext object";
    case JT_MACRO: return "jinja2.runtime.Macro object";
    default: return "object";
    }
}

void jj_float_repr(double f, char *out, size_t cap) {
    if (isnan(f)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0) {
        snprintf(out, cap, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* shortest digits that read back to f */
    char buf[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, f);
        if (strtod(buf, NULL) == f) break;
    }
    /* buf: [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = 0;
    const char *q = buf;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1;
    char *o = out;
    size_t left = cap;
#define PUT(...)                                              \
    do {                                                      \
        int k_ = snprintf(o, left, __VA_ARGS__);              \
        if (k_ < 0 || (size_t)k_ >= left) return;             \
        o += k_;                                              \
        left -= (size_t)k_;                                   \
    } while (0)
    if (neg) PUT("-");
    if (decpt <= -4 || decpt > 16) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        PUT("0.");
        for (int i = 0; i < -decpt; i++) PUT("0");
        PUT("%s", digits);
    } else if (decpt >= nd) {
        PUT("%s", digits);
        for (int i = nd; i < decpt; i++) PUT("0");
        PUT(".0");
    } else {
        PUT("%.*s.%s", decpt, digits, digits + decpt);
    }
#undef PUT
}

/* Python's str.isprintable() for one code point. */
static int py_printable(uint32_t cp) {
    if (cp < 0x20 || cp == 0x7F) return 0;
    if (cp < 0x7F) return 1;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    switch (c) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return 0;
    default: return 1;
    }
}

static void repr_str(jj_rt *rt, jj_buf *b, const jj_str *s) {
    int has_sq = memchr(s->p, '\'', s->n) != NULL, has_dq = memchr(s->p, '"', s->n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    jj_buf_putc(rt, b, q);
    for (size_t i = 0; i < s->n;) {
        uint32_t cp = jj_utf8_next(s->p, s->n, &i);
        char e[16];
        if (cp == (uint32_t)q || cp == '\\') {
            e[0] = '\\';
            e[1] = (char)cp;
            jj_buf_put(rt, b, e, 2);
        } else if (cp == '\n') {
            jj_buf_puts(rt, b, "\\n");
        } else if (cp == '\r') {
            jj_buf_puts(rt, b, "\\r");
        } else if (cp == '\t') {
            jj_buf_puts(rt, b, "\\t");
        } else if (!py_printable(cp)) {
            int k = cp < 0x100 ? snprintf(e, sizeof e, "\\x%02x", cp)
                  : cp < 0x10000 ? snprintf(e, sizeof e, "\\u%04x", cp)
                                 : snprintf(e, sizeof e, "\\U%08x", cp);
            jj_buf_put(rt, b, e, (size_t)k);
        } else {
            jj_buf_putcp(rt, b, cp);
        }
    }
    jj_buf_putc(rt, b, q);
}

static void repr_rec(jj_rt *rt, jj_buf *b, jj_val v, int depth);

static void seq_repr(jj_rt *rt, jj_buf *b, jj_val v, int depth) {
    int tuple = v.t == JT_TUPLE;
    jj_buf_putc(rt, b, tuple ? '(' : '[');
    for (size_t i = 0; i < v.u.l->n; i++) {
        if (i) jj_buf_puts(rt, b, ", ");
        repr_rec(rt, b, v.u.l->v[i], depth + 1);
    }
    if (tuple && v.u.l->n == 1) jj_buf_putc(rt, b, ',');
    jj_buf_putc(rt, b, tuple ? ')' : ']');
}

static void dict_repr(jj_rt *rt, jj_buf *b, const jj_dict *d, int depth) {
    jj_buf_putc(rt, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) jj_buf_puts(rt, b, ", ");
        repr_rec(rt, b, d->k[i], depth + 1);
        jj_buf_puts(rt, b, ": ");
        repr_rec(rt, b, d->v[i], depth + 1);
    }
    jj_buf_putc(rt, b, '}');
}

static void repr_rec(jj_rt *rt, jj_buf *b, jj_val v, int depth) {
    if (depth > 200) jj_fail(rt, NULL, "maximum recursion depth exceeded while getting the repr of an object");
    char num[64];
    switch (v.t) {
    case JT_UNDEF: jj_buf_puts(rt, b, "Undefined"); return;
    case JT_NONE: jj_buf_puts(rt, b, "None"); return;
    case JT_BOOL: jj_buf_puts(rt, b, v.u.i ? "True" : "False"); return;
    case JT_INT:
        snprintf(num, sizeof num, "%lld", (long long)v.u.i);
        jj_buf_puts(rt, b, num);
        return;
    case JT_FLOAT:
        jj_float_repr(v.u.f, num, sizeof num);
        jj_buf_puts(rt, b, num);
        return;
    case JT_STR:
        if (v.markup) {
            jj_buf_puts(rt, b, "Markup(");
            repr_str(rt, b, v.u.s);
            jj_buf_putc(rt, b, ')');
        } else {
            repr_str(rt, b, v.u.s);
        }
        return;
    case JT_LIST:
    case JT_TUPLE: seq_repr(rt, b, v, depth); return;
    case JT_DICT: dict_repr(rt, b, v.u.d, depth); return;
    case JT_NS:
        jj_buf_puts(rt, b, "<Namespace ");
        dict_repr(rt, b, v.u.d, depth);
        jj_buf_putc(rt, b, '>');
        return;
    case JT_MACRO:
        jj_buf_puts(rt, b, "<Macro '");
        jj_buf_puts(rt, b, v.u.m->def->kind == N_MACRO ? v.u.m->def->name : "caller");
        jj_buf_puts(rt, b, "'>");
        return;
    default:
        /* Python prints these with a memory address, which no template can rely on */
        jj_fail(rt, NULL, "cannot convert a %s object to a string (Python would print its memory address)",
                jj_type_name(v));
    }
}

void jj_repr_to(jj_rt *rt, jj_buf *b, jj_val v) { repr_rec(rt, b, v, 0); }

void jj_str_to(jj_rt *rt, jj_buf *b, jj_val v) {
    if (v.t == JT_STR) jj_buf_put(rt, b, v.u.s->p, v.u.s->n);
    else if (v.t == JT_UNDEF) return;
    else repr_rec(rt, b, v, 0);
}

jj_str *jj_to_str(jj_rt *rt, jj_val v) {
    if (v.t == JT_STR) return v.u.s;
    jj_buf b = {0};
    jj_str_to(rt, &b, v);
    return jj_str_new(rt, b.p ? b.p : "", b.n);
}

static int is_num(jj_val v) { return v.t == JT_INT || v.t == JT_BOOL || v.t == JT_FLOAT; }

static int num_eq(jj_val a, jj_val b) {
    if (a.t != JT_FLOAT && b.t != JT_FLOAT) return a.u.i == b.u.i;
    if (a.t == JT_FLOAT && b.t == JT_FLOAT) return a.u.f == b.u.f;
    double f = a.t == JT_FLOAT ? a.u.f : b.u.f;
    int64_t i = a.t == JT_FLOAT ? b.u.i : a.u.i;
    /* exact comparison of an int64 with a double */
    if (isnan(f) || isinf(f) || f != floor(f)) return 0;
    if (f >= 9223372036854775808.0 || f < -9223372036854775808.0) return 0;
    return (int64_t)f == i;
}

int jj_eq(jj_val a, jj_val b) {
    if (is_num(a) && is_num(b)) return num_eq(a, b);
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JT_UNDEF:
    case JT_NONE: return 1;
    case JT_STR: return a.u.s->n == b.u.s->n && !memcmp(a.u.s->p, b.u.s->p, a.u.s->n);
    case JT_LIST:
    case JT_TUPLE:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jj_eq(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case JT_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jj_val *o = jj_dict_get(b.u.d, a.u.d->k[i]);
            if (!o || !jj_eq(a.u.d->v[i], *o)) return 0;
        }
        return 1;
    case JT_FUNC: return a.u.i == b.u.i;
    default: return a.u.l == b.u.l; /* identity of the object */
    }
}

static const char *op_type(jj_val v) { return jj_type_name(v); }

int jj_lt(jj_rt *rt, const jj_node *at, jj_val a, jj_val b) {
    if (a.t == JT_UNDEF || b.t == JT_UNDEF) jj_check_undef(rt, at, a.t == JT_UNDEF ? a : b);
    if (is_num(a) && is_num(b)) {
        if (a.t != JT_FLOAT && b.t != JT_FLOAT) return a.u.i < b.u.i;
        if (a.t == JT_FLOAT && b.t == JT_FLOAT) return a.u.f < b.u.f;
        if (a.t == JT_FLOAT) { /* float < int */
            if (isnan(a.u.f)) return 0;
            if (num_eq(a, b)) return 0;
            /* (double)INT64_MAX is 2^63, past int64: compare before converting */
            return a.u.f < (double)b.u.i || (a.u.f == (double)b.u.i && a.u.f < 9223372036854775808.0 &&
                                             (int64_t)a.u.f < b.u.i);
        }
        if (isnan(b.u.f)) return 0;
        if (num_eq(a, b)) return 0;
        return (double)a.u.i < b.u.f ||
               ((double)a.u.i == b.u.f && (b.u.f >= 9223372036854775808.0 || a.u.i < (int64_t)b.u.f));
    }
    if (a.t == JT_STR && b.t == JT_STR) {
        size_t n = a.u.s->n < b.u.s->n ? a.u.s->n : b.u.s->n;
        int c = memcmp(a.u.s->p, b.u.s->p, n); /* UTF-8 byte order = code point order */
        return c < 0 || (c == 0 && a.u.s->n < b.u.s->n);
    }
    if ((a.t == JT_LIST && b.t == JT_LIST) || (a.t == JT_TUPLE && b.t == JT_TUPLE)) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++)
            if (!jj_eq(a.u.l->v[i], b.u.l->v[i])) return jj_lt(rt, at, a.u.l->v[i], b.u.l->v[i]);
        return a.u.l->n < b.u.l->n;
    }
    jj_fail(rt, at, "'<' not supported between instances of '%s' and '%s'", op_type(a), op_type(b));
}

void jj_check_undef(jj_rt *rt, const jj_node *at, jj_val v) {
    if (v.t != JT_UNDEF) return;
    jj_fail(rt, at, "%s", v.u.u ? v.u.u->msg : "undefined value");
}

jj_list *jj_iterate(jj_rt *rt, const jj_node *at, jj_val v) {
    switch (v.t) {
    case JT_UNDEF: return jj_list_v(rt, 0).u.l;
    case JT_LIST:
    case JT_TUPLE: return v.u.l;
    case JT_DICT:
    case JT_NS: {
        if (v.t == JT_NS) break;
        jj_list *l = jj_list_v(rt, v.u.d->n).u.l;
        for (size_t i = 0; i < v.u.d->n; i++) l->v[l->n++] = v.u.d->k[i];
        return l;
    }
    case JT_STR: {
        jj_list *l = jj_list_v(rt, v.u.s->n).u.l;
        for (size_t i = 0; i < v.u.s->n;) {
            size_t s0 = i;
            jj_utf8_next(v.u.s->p, v.u.s->n, &i);
            jj_val c = jj_str_v(rt, v.u.s->p + s0, i - s0);
            c.markup = v.markup;
            l->v[l->n++] = c;
        }
        return l;
    }
    case JT_GEN: {
        jj_list *l = jj_list_v(rt, 0).u.l;
        jj_val x;
        while (jj_gen_next(rt, v.u.g, &x)) jj_list_push(rt, l, x);
        return l;
    }
    default: break;
    }
    jj_fail(rt, at, "'%s' object is not iterable", jj_type_name(v));
}

long jj_length(jj_rt *rt, const jj_node *at, jj_val v) {
    switch (v.t) {
    case JT_UNDEF: return 0;
    case JT_STR: return jj_str_ncp(v.u.s);
    case JT_LIST:
    case JT_TUPLE: return (long)v.u.l->n;
    case JT_DICT: return (long)v.u.d->n;
    default: jj_fail(rt, at, "object of type '%s' has no len()", jj_type_name(v));
    }
}

/* ---- JSON in (json.loads) ---------------------------------------------------------------------------- */

typedef struct jp {
    jj_rt *rt;
    const char *s;
    size_t n, i;
    const char *what;
    int depth;
} jp;

static _Noreturn void jp_fail(jp *p, const char *msg) {
    jj_fail(p->rt, NULL, "%s: invalid JSON at byte %zu: %s", p->what, p->i, msg);
}

static void jp_ws(jp *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int jp_hex4(jp *p, uint32_t *out) {
    if (p->i + 4 > p->n) return 0;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i + (size_t)k];
        int h = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (h < 0) return 0;
        v = v * 16 + (uint32_t)h;
    }
    p->i += 4;
    *out = v;
    return 1;
}

static jj_val jp_string(jp *p) {
    p->i++; /* " */
    jj_buf b = {0};
    for (;;) {
        if (p->i >= p->n) jp_fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20) jp_fail(p, "control character in a string");
        if (c != '\\') {
            size_t s0 = p->i++;
            while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' && (unsigned char)p->s[p->i] >= 0x20) p->i++;
            jj_buf_put(p->rt, &b, p->s + s0, p->i - s0);
            continue;
        }
        p->i++;
        if (p->i >= p->n) jp_fail(p, "unterminated string");
        char e = p->s[p->i++];
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (!jp_hex4(p, &cp)) jp_fail(p, "bad \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (p->i + 2 <= p->n && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                    p->i += 2;
                    if (!jp_hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) jp_fail(p, "unpaired surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    jp_fail(p, "unpaired surrogate");
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                jp_fail(p, "unpaired surrogate");
            }
            if (cp == 0) jp_fail(p, "NUL character (\\u0000) in a string");
            break;
        default: jp_fail(p, "bad escape");
        }
        jj_buf_putcp(p->rt, &b, cp);
    }
    return jj_buf_val(p->rt, &b);
}

static jj_val jp_value(jp *p) {
    jp_ws(p);
    if (p->i >= p->n) jp_fail(p, "unexpected end");
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        if (++p->depth > 512) jp_fail(p, "nested too deeply");
        p->i++;
        jj_val v = c == '{' ? jj_dict_v(p->rt) : jj_list_v(p->rt, 0);
        jp_ws(p);
        char close = c == '{' ? '}' : ']';
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            p->depth--;
            return v;
        }
        for (;;) {
            if (c == '{') {
                jp_ws(p);
                if (p->i >= p->n || p->s[p->i] != '"') jp_fail(p, "expected a string key");
                jj_val k = jp_string(p);
                jp_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') jp_fail(p, "expected ':'");
                p->i++;
                jj_val x = jp_value(p);
                jj_dict_set(p->rt, v.u.d, k, x);
            } else {
                jj_list_push(p->rt, v.u.l, jp_value(p));
            }
            jp_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->n && p->s[p->i] == close) {
                p->i++;
                break;
            }
            jp_fail(p, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
        }
        p->depth--;
        return v;
    }
    if (c == '"') return jp_string(p);
    if (!strncmp(p->s + p->i, "true", 4)) {
        p->i += 4;
        return jj_bool(1);
    }
    if (!strncmp(p->s + p->i, "false", 5)) {
        p->i += 5;
        return jj_bool(0);
    }
    if (!strncmp(p->s + p->i, "null", 4)) {
        p->i += 4;
        return jj_none();
    }
    if (!strncmp(p->s + p->i, "NaN", 3)) {
        p->i += 3;
        return jj_float(NAN);
    }
    if (!strncmp(p->s + p->i, "Infinity", 8)) {
        p->i += 8;
        return jj_float(INFINITY);
    }
    if (!strncmp(p->s + p->i, "-Infinity", 9)) {
        p->i += 9;
        return jj_float(-INFINITY);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        size_t s0 = p->i;
        int is_float = 0;
        if (p->s[p->i] == '-') p->i++;
        if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') jp_fail(p, "bad number");
        if (p->s[p->i] == '0') p->i++;
        else while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        if (p->i < p->n && p->s[p->i] == '.') {
            is_float = 1;
            p->i++;
            if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') jp_fail(p, "bad number");
            while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        }
        if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
            is_float = 1;
            p->i++;
            if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
            if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') jp_fail(p, "bad number");
            while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        }
        char buf[400];
        size_t len = p->i - s0;
        if (len >= sizeof buf) jp_fail(p, "number too long");
        memcpy(buf, p->s + s0, len);
        buf[len] = '\0';
        if (is_float) return jj_float(strtod(buf, NULL));
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == ERANGE) jp_fail(p, "integer out of the 64-bit range");
        return jj_int(v);
    }
    jp_fail(p, "unexpected character");
}

jj_val jj_json_parse(jj_rt *rt, const char *text, size_t len, const char *what) {
    jp p = {rt, text, len, 0, what, 0};
    jj_val v = jp_value(&p);
    jp_ws(&p);
    if (p.i != p.n) jp_fail(&p, "extra data after the value");
    return v;
}

/* ---- JSON out (json.dumps) --------------------------------------------------------------------------- */

static void json_str(jj_rt *rt, jj_buf *b, const char *s, size_t n, int ascii) {
    jj_buf_putc(rt, b, '"');
    for (size_t i = 0; i < n;) {
        size_t s0 = i;
        uint32_t cp = jj_utf8_next(s, n, &i);
        char e[16];
        switch (cp) {
        case '"': jj_buf_puts(rt, b, "\\\""); continue;
        case '\\': jj_buf_puts(rt, b, "\\\\"); continue;
        case '\n': jj_buf_puts(rt, b, "\\n"); continue;
        case '\r': jj_buf_puts(rt, b, "\\r"); continue;
        case '\t': jj_buf_puts(rt, b, "\\t"); continue;
        case '\b': jj_buf_puts(rt, b, "\\b"); continue;
        case '\f': jj_buf_puts(rt, b, "\\f"); continue;
        default: break;
        }
        if (cp < 0x20 || (ascii && cp > 0x7F)) {
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
                jj_buf_puts(rt, b, e);
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
                jj_buf_puts(rt, b, e);
            }
            continue;
        }
        jj_buf_put(rt, b, s + s0, i - s0);
    }
    jj_buf_putc(rt, b, '"');
}

typedef struct jdump {
    jj_rt *rt;
    const jj_node *at;
    jj_buf *b;
    int ascii, sort_keys;
    const jj_str *indent, *item_sep, *key_sep;
} jdump;

static void json_float(jdump *d, double f) {
    char num[64];
    if (isnan(f)) snprintf(num, sizeof num, "NaN");
    else if (isinf(f)) snprintf(num, sizeof num, f < 0 ? "-Infinity" : "Infinity");
    else jj_float_repr(f, num, sizeof num);
    jj_buf_puts(d->rt, d->b, num);
}

static void newline_indent(jdump *d, int level) {
    jj_buf_putc(d->rt, d->b, '\n');
    for (int i = 0; i < level; i++) jj_buf_put(d->rt, d->b, d->indent->p, d->indent->n);
}

/* A dict key as json.dumps writes it (str, or int/float/bool/None converted). */
static void json_key(jdump *d, jj_val k) {
    char num[64];
    switch (k.t) {
    case JT_STR: json_str(d->rt, d->b, k.u.s->p, k.u.s->n, d->ascii); return;
    case JT_BOOL: json_str(d->rt, d->b, k.u.i ? "true" : "false", k.u.i ? 4 : 5, 0); return;
    case JT_NONE: json_str(d->rt, d->b, "null", 4, 0); return;
    case JT_INT:
        snprintf(num, sizeof num, "%lld", (long long)k.u.i);
        json_str(d->rt, d->b, num, strlen(num), 0);
        return;
    case JT_FLOAT:
        if (isnan(k.u.f)) snprintf(num, sizeof num, "NaN");
        else if (isinf(k.u.f)) snprintf(num, sizeof num, k.u.f < 0 ? "-Infinity" : "Infinity");
        else jj_float_repr(k.u.f, num, sizeof num);
        json_str(d->rt, d->b, num, strlen(num), 0);
        return;
    default:
        jj_fail(d->rt, d->at, "keys must be str, int, float, bool or None, not %s", jj_type_name(k));
    }
}

static void json_rec(jdump *d, jj_val v, int level) {
    if (level > 200) jj_fail(d->rt, d->at, "maximum recursion depth exceeded while encoding a JSON object");
    char num[64];
    switch (v.t) {
    case JT_NONE: jj_buf_puts(d->rt, d->b, "null"); return;
    case JT_BOOL: jj_buf_puts(d->rt, d->b, v.u.i ? "true" : "false"); return;
    case JT_INT:
        snprintf(num, sizeof num, "%lld", (long long)v.u.i);
        jj_buf_puts(d->rt, d->b, num);
        return;
    case JT_FLOAT: json_float(d, v.u.f); return;
    case JT_STR: json_str(d->rt, d->b, v.u.s->p, v.u.s->n, d->ascii); return;
    case JT_LIST:
    case JT_TUPLE: {
        if (v.u.l->n == 0) {
            jj_buf_puts(d->rt, d->b, "[]");
            return;
        }
        jj_buf_putc(d->rt, d->b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jj_buf_put(d->rt, d->b, d->item_sep->p, d->item_sep->n);
            if (d->indent) newline_indent(d, level + 1);
            json_rec(d, v.u.l->v[i], level + 1);
        }
        if (d->indent) newline_indent(d, level);
        jj_buf_putc(d->rt, d->b, ']');
        return;
    }
    case JT_DICT: {
        const jj_dict *dc = v.u.d;
        if (dc->n == 0) {
            jj_buf_puts(d->rt, d->b, "{}");
            return;
        }
        size_t *order = jj_alloc(d->rt, sizeof *order * dc->n);
        for (size_t i = 0; i < dc->n; i++) order[i] = i;
        if (d->sort_keys) { /* insertion sort, stable; keys must be comparable */
            for (size_t i = 1; i < dc->n; i++) {
                size_t x = order[i], j = i;
                while (j > 0 && jj_lt(d->rt, d->at, dc->k[x], dc->k[order[j - 1]])) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
            }
        }
        jj_buf_putc(d->rt, d->b, '{');
        for (size_t i = 0; i < dc->n; i++) {
            if (i) jj_buf_put(d->rt, d->b, d->item_sep->p, d->item_sep->n);
            if (d->indent) newline_indent(d, level + 1);
            json_key(d, dc->k[order[i]]);
            jj_buf_put(d->rt, d->b, d->key_sep->p, d->key_sep->n);
            json_rec(d, dc->v[order[i]], level + 1);
        }
        if (d->indent) newline_indent(d, level);
        jj_buf_putc(d->rt, d->b, '}');
        return;
    }
    default:
        jj_fail(d->rt, d->at, "Object of type %s is not JSON serializable", jj_type_name(v));
    }
}

void jj_json_dump(jj_rt *rt, const jj_node *at, jj_buf *b, jj_val v, int ensure_ascii,
                  const jj_str *indent, const jj_str *item_sep, const jj_str *key_sep,
                  int sort_keys) {
    jdump d = {rt, at, b, ensure_ascii, sort_keys, indent, item_sep, key_sep};
    if (!d.item_sep) d.item_sep = jj_str_new(rt, indent ? "," : ", ", indent ? 1 : 2);
    if (!d.key_sep) d.key_sep = jj_str_new(rt, ": ", 2);
    json_rec(&d, v, 0);
}
