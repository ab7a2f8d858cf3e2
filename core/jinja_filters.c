/* jinja_filters.c - Jinja2's built-in filters and tests, with the signatures
 * and semantics of jinja2/filters.py and jinja2/tests.py (version 3.1), and
 * transformers' tojson (json.dumps with ensure_ascii=False, indent,
 * separators, sort_keys: no HTML escaping). Filters that return generators
 * in Jinja2 (map, select, reject, selectattr, rejectattr, unique, items,
 * batch, slice, reverse of a sequence) return a one-shot generator here too:
 * always true, no length, consumed by the first iteration. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_internal.h"

enum {
    F_ABS, F_ATTR, F_BATCH, F_CAPITALIZE, F_CENTER, F_COUNT, F_D, F_DEFAULT, F_DICTSORT, F_E,
    F_ESCAPE, F_FIRST, F_FLOAT, F_FORMAT, F_INDENT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH,
    F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND,
    F_SAFE, F_SELECT, F_SELECTATTR, F_SLICE, F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM,
    F_TRUNCATE, F_UNIQUE, F_UPPER, F_WORDCOUNT, F_COUNT_
};

static const char *const FILTERS[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "format", "indent", "int", "items", "join", "last", "length",
    "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round",
    "safe", "select", "selectattr", "slice", "sort", "string", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "wordcount",
};

/* Jinja2 filters a chat template has no use for (or that cannot be exact). */
static const char *const UNSUPPORTED[] = {"filesizeformat", "forceescape", "groupby", "pprint", "random",
                                          "striptags", "urlencode", "urlize", "wordwrap", "xmlattr", NULL};

int jj_filter_id(const char *name) {
    for (int i = 0; i < F_COUNT_; i++)
        if (!strcmp(FILTERS[i], name)) return i;
    return -1;
}

const char *jj_filter_name(int fid) { return fid >= 0 && fid < F_COUNT_ ? FILTERS[fid] : "?"; }

int jj_filter_unsupported(const char *name) {
    for (int i = 0; UNSUPPORTED[i]; i++)
        if (!strcmp(UNSUPPORTED[i], name)) return 1;
    return 0;
}

enum {
    X_BOOLEAN, X_CALLABLE, X_DEFINED, X_DIVISIBLEBY, X_EQ, X_EQUALTO, X_ESCAPED, X_EVEN, X_FALSE,
    X_FILTER, X_FLOAT, X_GE, X_GT, X_GREATERTHAN, X_IN, X_INTEGER, X_ITERABLE, X_LE, X_LOWER, X_LT,
    X_LESSTHAN, X_MAPPING, X_NE, X_NONE, X_NUMBER, X_ODD, X_SAMEAS, X_SEQUENCE, X_STRING, X_TEST,
    X_TRUE, X_UNDEFINED, X_UPPER, X_SYM_EQ, X_SYM_NE, X_SYM_GT, X_SYM_GE, X_SYM_LT, X_SYM_LE, X_COUNT_
};

static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "filter", "float", "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lt",
    "lessthan", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test",
    "true", "undefined", "upper", "==", "!=", ">", ">=", "<", "<=",
};

int jj_test_id(const char *name) {
    for (int i = 0; i < X_COUNT_; i++)
        if (!strcmp(TESTS[i], name)) return i;
    return -1;
}

/* ---- argument binding ---------------------------------------------------------------------------- */

void jj_bind(jj_rt *rt, const jj_node *at, const char *what, jj_args *a, const char *const *names,
             int n, jj_val *out) {
    for (int i = 0; i < n; i++) {
        out[i] = jj_none();
        out[i].t = JT_UNDEF;
        out[i].u.u = NULL;
    }
    if (a->n_pos > n) jj_fail(rt, at, "%s takes at most %d argument(s) (%d given)", what, n, a->n_pos);
    for (int i = 0; i < a->n_pos; i++) out[i] = a->pos[i];
    for (int k = 0; k < a->n_kw; k++) {
        int i = 0;
        while (i < n && strcmp(names[i], a->kw[k])) i++;
        if (i == n) jj_fail(rt, at, "%s got an unexpected keyword argument '%s'", what, a->kw[k]);
        if (!JJ_MISSING(out[i])) jj_fail(rt, at, "%s got multiple values for argument '%s'", what, a->kw[k]);
        out[i] = a->kwv[k];
    }
}

static jj_val dflt(jj_val v, jj_val d) { return JJ_MISSING(v) ? d : v; }

static int64_t want_int(jj_rt *rt, const jj_node *at, jj_val v, const char *what) {
    if (v.t == JT_UNDEF) jj_check_undef(rt, at, v);
    if (v.t != JT_INT && v.t != JT_BOOL)
        jj_fail(rt, at, "%s: expected an integer, got %s", what, jj_type_name(v));
    return v.u.i;
}

/* soft_str: Markup stays Markup, everything else str(). */
static jj_val soft_str(jj_rt *rt, jj_val v) {
    if (v.t == JT_STR) return v;
    jj_val r = jj_none();
    r.t = JT_STR;
    r.u.s = jj_to_str(rt, v);
    return r;
}

static jj_val gen_of(jj_rt *rt, jj_list *l, const char *kind) {
    jj_val g = jj_none();
    g.t = JT_GEN;
    g.u.g = jj_alloc(rt, sizeof *g.u.g);
    memset(g.u.g, 0, sizeof *g.u.g);
    g.u.g->l = l;
    g.u.g->pos = 0;
    g.u.g->kind = kind;
    return g;
}

static jj_val tuple2(jj_rt *rt, jj_val a, jj_val b) {
    jj_val t = jj_tuple_v(rt, 2);
    t.u.l->v[0] = a;
    t.u.l->v[1] = b;
    t.u.l->n = 2;
    return t;
}

static jj_val ignore_case(jj_rt *rt, jj_val v) { return v.t == JT_STR ? jj_str_lower(rt, v) : v; }

/* make_attrgetter: "a.b.0" looked up with getitem, part by part. */
static jj_val attrget(jj_rt *rt, const jj_node *at, jj_val item, jj_val attribute, jj_val dflt_v) {
    if (JJ_MISSING(attribute) || attribute.t == JT_NONE) return item;
    if (attribute.t == JT_INT) {
        item = jj_getitem(rt, at, item, attribute);
        if (!JJ_MISSING(dflt_v) && dflt_v.t != JT_NONE && item.t == JT_UNDEF) item = dflt_v;
        return item;
    }
    jj_str *s = jj_to_str(rt, attribute);
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < s->n && s->p[j] != '.') j++;
        jj_val part = jj_str_v(rt, s->p + i, j - i);
        int digits = j > i;
        for (size_t k = i; k < j; k++)
            if (s->p[k] < '0' || s->p[k] > '9') digits = 0;
        if (digits) part = jj_int(strtoll(part.u.s->p, NULL, 10));
        item = jj_getitem(rt, at, item, part);
        if (!JJ_MISSING(dflt_v) && dflt_v.t != JT_NONE && item.t == JT_UNDEF) item = dflt_v;
        if (j >= s->n) break;
        i = j + 1;
    }
    return item;
}

/* Stable merge sort of items by keys with Python's ordering (fails on unorderable keys). */
static void sort_by(jj_rt *rt, const jj_node *at, jj_val *items, jj_val *keys, size_t n, int reverse) {
    if (n < 2) return;
    jj_val *ti = jj_alloc(rt, sizeof *ti * n), *tk = jj_alloc(rt, sizeof *tk * n);
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                /* stable: take from the right only when strictly before (reverse: after) */
                int take_right = reverse ? jj_lt(rt, at, keys[i], keys[j]) : jj_lt(rt, at, keys[j], keys[i]);
                if (take_right) {
                    ti[k] = items[j];
                    tk[k++] = keys[j++];
                } else {
                    ti[k] = items[i];
                    tk[k++] = keys[i++];
                }
            }
            while (i < mid) {
                ti[k] = items[i];
                tk[k++] = keys[i++];
            }
            while (j < hi) {
                ti[k] = items[j];
                tk[k++] = keys[j++];
            }
        }
        memcpy(items, ti, sizeof *ti * n);
        memcpy(keys, tk, sizeof *tk * n);
    }
}

static jj_list *copy_list(jj_rt *rt, const jj_list *l) {
    jj_list *c = jj_list_v(rt, l->n).u.l;
    if (l->n) memcpy(c->v, l->v, sizeof *c->v * l->n);
    c->n = l->n;
    return c;
}

static jj_val str_center(jj_rt *rt, jj_val s, int64_t width) {
    long n = jj_str_ncp(s.u.s);
    if (width <= n) return s;
    int64_t marg = width - n, left = marg / 2 + (marg & width & 1);
    jj_buf b = {0};
    for (int64_t i = 0; i < left; i++) jj_buf_putc(rt, &b, ' ');
    jj_buf_put(rt, &b, s.u.s->p, s.u.s->n);
    for (int64_t i = 0; i < marg - left; i++) jj_buf_putc(rt, &b, ' ');
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

/* Python float(str) */
static int parse_float(const char *s, double *out) {
    while (*s && jj_py_isspace((unsigned char)*s)) s++;
    char buf[512];
    size_t k = 0;
    const char *p = s;
    for (; *p && k + 1 < sizeof buf; p++) {
        if (*p == '_') {
            if (k == 0 || !(buf[k - 1] >= '0' && buf[k - 1] <= '9') || !(p[1] >= '0' && p[1] <= '9')) return 0;
            continue;
        }
        buf[k++] = *p;
    }
    buf[k] = '\0';
    while (k > 0 && jj_py_isspace((unsigned char)buf[k - 1])) buf[--k] = '\0';
    if (!k) return 0;
    const char *q = buf;
    if (*q == '+' || *q == '-') q++;
    if (!strcasecmp(q, "inf") || !strcasecmp(q, "infinity") || !strcasecmp(q, "nan")) {
        double v = (q[0] == 'n' || q[0] == 'N') ? NAN : INFINITY;
        *out = buf[0] == '-' ? -v : v;
        return 1;
    }
    for (const char *c = q; *c; c++)
        if (!((*c >= '0' && *c <= '9') || *c == '.' || *c == 'e' || *c == 'E' || *c == '+' || *c == '-')) return 0;
    char *end;
    *out = strtod(buf, &end);
    return *end == '\0' && end != buf;
}

/* Python int(str, base) for bases 2..36 (0: from the prefix). */
static int parse_int(const char *s, int base, int64_t *out) {
    while (*s && jj_py_isspace((unsigned char)*s)) s++;
    int neg = 0;
    if (*s == '+' || *s == '-') neg = *s++ == '-';
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && (base == 16 || base == 0)) s += 2, base = 16;
    else if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O') && (base == 8 || base == 0)) s += 2, base = 8;
    else if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B') && (base == 2 || base == 0)) s += 2, base = 2;
    if (base == 0) base = 10;
    uint64_t v = 0;
    int nd = 0, prev_us = 1;
    for (; *s && !jj_py_isspace((unsigned char)*s); s++) {
        if (*s == '_') {
            if (prev_us) return 0;
            prev_us = 1;
            continue;
        }
        int d = (*s >= '0' && *s <= '9') ? *s - '0' : (*s >= 'a' && *s <= 'z') ? *s - 'a' + 10 : (*s >= 'A' && *s <= 'Z') ? *s - 'A' + 10 : 99;
        if (d >= base) return 0;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return -1;
        v = v * (uint64_t)base + (uint64_t)d;
        nd++;
        prev_us = 0;
    }
    if (prev_us && nd) return 0;
    while (*s && jj_py_isspace((unsigned char)*s)) s++;
    if (*s || !nd) return 0;
    if (v > (uint64_t)INT64_MAX + (uint64_t)neg) return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static jj_val to_int_filter(jj_rt *rt, const jj_node *at, jj_val v, jj_val def, int base) {
    if (v.t == JT_INT) return v;
    if (v.t == JT_BOOL) return jj_int(v.u.i);
    if (v.t == JT_FLOAT) {
        if (isnan(v.u.f) || isinf(v.u.f)) jj_fail(rt, at, "cannot convert float %s to integer", isnan(v.u.f) ? "NaN" : "infinity");
        if (fabs(v.u.f) >= 9.2e18) jj_fail(rt, at, "integer overflow (capmoe's integers are 64-bit)");
        return jj_int((int64_t)v.u.f);
    }
    if (v.t == JT_STR) {
        int64_t i;
        int r = parse_int(v.u.s->p, base, &i);
        if (r < 0) jj_fail(rt, at, "integer overflow (capmoe's integers are 64-bit)");
        if (r > 0) return jj_int(i);
        double f;
        if (parse_float(v.u.s->p, &f)) {
            if (isnan(f) || isinf(f)) jj_fail(rt, at, "cannot convert float %s to integer", isnan(f) ? "NaN" : "infinity");
            if (fabs(f) >= 9.2e18) jj_fail(rt, at, "integer overflow (capmoe's integers are 64-bit)");
            return jj_int((int64_t)f);
        }
    }
    return def;
}

static jj_val f_round(jj_rt *rt, const jj_node *at, jj_val v, int64_t prec, const char *method) {
    if (v.t == JT_UNDEF) jj_check_undef(rt, at, v);
    if (v.t != JT_INT && v.t != JT_BOOL && v.t != JT_FLOAT)
        jj_fail(rt, at, "filter 'round': type %s doesn't define __round__ method", jj_type_name(v));
    if (strcmp(method, "common") != 0) {
        double scale = pow(10.0, (double)prec), x = (v.t == JT_FLOAT ? v.u.f : (double)v.u.i) * scale;
        double r = !strcmp(method, "ceil") ? ceil(x) : floor(x);
        return jj_float(r / scale);
    }
    if (v.t != JT_FLOAT) {
        if (prec >= 0) return jj_int(v.u.i);
        int64_t p10 = 1;
        for (int64_t i = 0; i < -prec && p10 < INT64_MAX / 10; i++) p10 *= 10;
        int64_t q = v.u.i / p10, r = v.u.i % p10;
        if (r < 0) {
            r += p10;
            q--;
        }
        if (2 * r > p10 || (2 * r == p10 && (q & 1))) q++;
        return jj_int(q * p10);
    }
    double f = v.u.f;
    if (isnan(f) || isinf(f)) return v;
    if (prec > 300) return v;
    if (prec >= 0) {
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", (int)prec, f);
        return jj_float(strtod(buf, NULL));
    }
    double scale = pow(10.0, (double)-prec);
    return jj_float(rint(f / scale) * scale);
}

/* The test a select/reject filter applies (by name, with its extra args). */
static int run_named_test(jj_rt *rt, const jj_node *at, jj_val name, jj_val item, jj_args *rest) {
    if (name.t != JT_STR) jj_fail(rt, at, "test name must be a string, got %s", jj_type_name(name));
    int tid = jj_test_id(name.u.s->p);
    if (tid < 0) jj_fail(rt, at, "no test named '%s'", name.u.s->p);
    return jj_apply_test(rt, at, tid, item, rest);
}

enum { GEN_MAP = 1, GEN_SELECT };

static jj_val lazy_gen(jj_rt *rt, const jj_node *at, int op, jj_val src, jj_args *a) {
    jj_val g = gen_of(rt, jj_list_v(rt, 0).u.l, "generator");
    jj_gen *q = g.u.g;
    q->op = op;
    q->src = src;
    q->at = at;
    q->args = jj_alloc(rt, sizeof *q->args);
    *q->args = *a; /* the argument arrays live in the render's arena */
    return g;
}

/* The first next() of a map / select generator: what Jinja2's generator
 * functions do before their loop (argument checks included). */
static void gen_start(jj_rt *rt, jj_gen *g) {
    g->started = 1;
    jj_args *a = g->args;
    const jj_node *at = g->at;
    if (!jj_truthy(rt, g->src)) {
        g->done = 1;
        return;
    }
    if (g->op == GEN_MAP) {
        g->attribute = jj_none();
        g->dflt = jj_none();
        if (a->n_pos == 0) {
            for (int k = 0; k < a->n_kw; k++) {
                if (!strcmp(a->kw[k], "attribute")) {
                    g->attribute = a->kwv[k];
                    g->by_attr = 1;
                } else if (!strcmp(a->kw[k], "default")) {
                    g->dflt = a->kwv[k];
                } else {
                    jj_fail(rt, at, "filter 'map': unexpected keyword argument '%s'", a->kw[k]);
                }
            }
            if (!g->by_attr) jj_fail(rt, at, "filter 'map' requires a filter argument");
        } else {
            if (a->pos[0].t != JT_STR) jj_fail(rt, at, "filter 'map': filter name must be a string");
            g->fid = jj_filter_id(a->pos[0].u.s->p);
            if (g->fid < 0) jj_fail(rt, at, "No filter named '%s' found.", a->pos[0].u.s->p);
        }
    } else if (g->by_attr && a->n_pos < 1) {
        jj_fail(rt, at, "Missing parameter for attribute name");
    }
    if (g->src.t != JT_GEN) g->src_items = jj_iterate(rt, at, g->src);
}

static int src_next(jj_rt *rt, jj_gen *g, jj_val *out) {
    if (g->src.t == JT_GEN) return jj_gen_next(rt, g->src.u.g, out);
    if (g->src_pos >= g->src_items->n) return 0;
    *out = g->src_items->v[g->src_pos++];
    return 1;
}

int jj_gen_next(jj_rt *rt, jj_gen *g, jj_val *out) {
    if (g->pos < g->l->n) {
        *out = g->l->v[g->pos++];
        return 1;
    }
    if (!g->op || g->done) return 0;
    if (!g->started) gen_start(rt, g);
    jj_args *a = g->args;
    const jj_node *at = g->at;
    jj_val item;
    while (!g->done && src_next(rt, g, &item)) {
        jj_step(rt, at);
        if (g->op == GEN_MAP) {
            jj_args rest = {a->pos + 1, a->n_pos > 0 ? a->n_pos - 1 : 0, a->kw, a->kwv, a->n_kw};
            *out = g->by_attr ? attrget(rt, at, item, g->attribute, g->dflt) : jj_apply_filter(rt, at, g->fid, item, &rest);
            return 1;
        }
        int off = g->by_attr ? 1 : 0;
        jj_val x = g->by_attr ? attrget(rt, at, item, a->pos[0], jj_none()) : item;
        int ok;
        if (a->n_pos > off) {
            jj_args rest = {a->pos + off + 1, a->n_pos - off - 1, a->kw, a->kwv, a->n_kw};
            ok = run_named_test(rt, at, a->pos[off], x, &rest);
        } else {
            ok = jj_truthy(rt, x);
        }
        if (ok != g->reject) {
            *out = item;
            return 1;
        }
    }
    g->done = 1;
    return 0;
}

static jj_val select_reject(jj_rt *rt, const jj_node *at, jj_val in, jj_args *a, int reject, int by_attr) {
    jj_val g = lazy_gen(rt, at, GEN_SELECT, in, a);
    g.u.g->reject = reject;
    g.u.g->by_attr = by_attr;
    return g;
}

static jj_val f_map(jj_rt *rt, const jj_node *at, jj_val in, jj_args *a) {
    return lazy_gen(rt, at, GEN_MAP, in, a);
}

static jj_val min_max(jj_rt *rt, const jj_node *at, jj_val in, jj_val cs, jj_val attribute, int want_max) {
    jj_list *items = jj_iterate(rt, at, in);
    if (items->n == 0) return jj_undef_v(rt, "No aggregated item, sequence was empty.");
    int case_sensitive = !JJ_MISSING(cs) && jj_truthy(rt, cs);
    jj_val best = items->v[0], bk = attrget(rt, at, best, attribute, jj_none());
    if (!case_sensitive) bk = ignore_case(rt, bk);
    for (size_t i = 1; i < items->n; i++) {
        jj_val k = attrget(rt, at, items->v[i], attribute, jj_none());
        if (!case_sensitive) k = ignore_case(rt, k);
        if (want_max ? jj_lt(rt, at, bk, k) : jj_lt(rt, at, k, bk)) {
            best = items->v[i];
            bk = k;
        }
    }
    return best;
}

static jj_val f_indent(jj_rt *rt, jj_val s, jj_val width, int first, int blank) {
    jj_buf ind = {0};
    if (width.t == JT_STR) jj_buf_put(rt, &ind, width.u.s->p, width.u.s->n);
    else
        for (int64_t i = 0; i < width.u.i; i++) jj_buf_putc(rt, &ind, ' ');
    jj_buf src = {0};
    jj_buf_put(rt, &src, s.u.s->p, s.u.s->n);
    jj_buf_putc(rt, &src, '\n');
    jj_list *lines = jj_splitlines(rt, jj_buf_val(rt, &src), 0);
    jj_buf out = {0};
    if (first) jj_buf_put(rt, &out, ind.p, ind.n);
    for (size_t i = 0; i < lines->n; i++) {
        jj_str *l = lines->v[i].u.s;
        if (i > 0) {
            jj_buf_putc(rt, &out, '\n');
            if (blank || l->n) jj_buf_put(rt, &out, ind.p, ind.n);
        }
        jj_buf_put(rt, &out, l->p, l->n);
    }
    jj_val r = jj_buf_val(rt, &out);
    r.markup = s.markup;
    return r;
}

static jj_val f_title(jj_rt *rt, jj_val s) {
    /* "".join(item[0].upper() + item[1:].lower() for item in re.split(r"([-\s({\[<]+)", s) if item) */
    jj_buf out = {0};
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, i = 0;
    while (i < n) {
        size_t j = i;
        uint32_t cp = jj_utf8_next(p, n, &j);
        int sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || jj_py_isspace(cp);
        size_t e = i;
        for (;;) { /* the run of separators or of other characters */
            if (e >= n) break;
            size_t k = e;
            uint32_t c = jj_utf8_next(p, n, &k);
            int s2 = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || jj_py_isspace(c);
            if (s2 != sep) break;
            e = k;
        }
        jj_val item = jj_str_v(rt, p + i, e - i);
        size_t k1 = 0;
        jj_utf8_next(item.u.s->p, item.u.s->n, &k1);
        jj_val head = jj_str_upper(rt, jj_str_v(rt, item.u.s->p, k1));
        jj_val tail = jj_str_lower(rt, jj_str_v(rt, item.u.s->p + k1, item.u.s->n - k1));
        jj_buf_put(rt, &out, head.u.s->p, head.u.s->n);
        jj_buf_put(rt, &out, tail.u.s->p, tail.u.s->n);
        i = e;
    }
    jj_val r = jj_buf_val(rt, &out);
    r.markup = s.markup;
    return r;
}

static int is_word_cp(uint32_t cp) {
    if (cp == '_') return 1;
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

static jj_val f_tojson(jj_rt *rt, const jj_node *at, jj_val in, jj_args *a) {
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
    jj_val p[4];
    jj_bind(rt, at, "filter 'tojson'", a, names, 4, p);
    int ascii = !JJ_MISSING(p[0]) && jj_truthy(rt, p[0]);
    jj_str *indent = NULL, *isep = NULL, *ksep = NULL;
    if (!JJ_MISSING(p[1]) && p[1].t != JT_NONE) {
        if (p[1].t == JT_STR) indent = p[1].u.s;
        else {
            int64_t w = want_int(rt, at, p[1], "tojson indent");
            jj_buf b = {0};
            for (int64_t i = 0; i < w && i < 1024; i++) jj_buf_putc(rt, &b, ' ');
            indent = jj_str_new(rt, b.p ? b.p : "", b.n);
        }
    }
    if (!JJ_MISSING(p[2]) && p[2].t != JT_NONE) {
        if ((p[2].t != JT_LIST && p[2].t != JT_TUPLE) || p[2].u.l->n != 2 || p[2].u.l->v[0].t != JT_STR ||
            p[2].u.l->v[1].t != JT_STR)
            jj_fail(rt, at, "filter 'tojson': separators must be a pair of strings");
        isep = p[2].u.l->v[0].u.s;
        ksep = p[2].u.l->v[1].u.s;
    }
    int sort_keys = !JJ_MISSING(p[3]) && jj_truthy(rt, p[3]);
    jj_buf b = {0};
    jj_json_dump(rt, at, &b, in, ascii, indent, isep, ksep, sort_keys);
    return jj_buf_val(rt, &b);
}

#define BIND(...)                                                            \
    static const char *const names[] = {__VA_ARGS__};                        \
    jj_val p[sizeof names / sizeof names[0]];                                \
    jj_bind(rt, at, what, a, names, (int)(sizeof names / sizeof names[0]), p)

jj_val jj_apply_filter(jj_rt *rt, const jj_node *at, int fid, jj_val in, jj_args *a) {
    char what[48];
    snprintf(what, sizeof what, "filter '%s'", jj_filter_name(fid));
    switch (fid) {
    case F_ABS: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (in.t == JT_UNDEF) jj_check_undef(rt, at, in);
        if (in.t == JT_FLOAT) return jj_float(fabs(in.u.f));
        if (in.t == JT_INT || in.t == JT_BOOL) {
            if (in.u.i == INT64_MIN) jj_fail(rt, at, "integer overflow in abs");
            return jj_int(in.u.i < 0 ? -in.u.i : in.u.i);
        }
        jj_fail(rt, at, "bad operand type for abs(): '%s'", jj_type_name(in));
    }
    case F_ATTR: {
        BIND("name");
        jj_str *name = jj_to_str(rt, p[0]);
        if (in.t == JT_UNDEF) jj_check_undef(rt, at, in);
        if (in.t == JT_DICT || in.t == JT_STR || in.t == JT_LIST || in.t == JT_TUPLE) {
            int unsafe, id = jj_method_id(in, name->p, &unsafe);
            if (id > 0) return jj_getattr(rt, at, in, name->p);
            return jj_undef_v(rt, "'%s' has no attribute '%s'", jj_object_desc(in), name->p);
        }
        return jj_getattr(rt, at, in, name->p);
    }
    case F_BATCH: {
        BIND("linecount", "fill_with");
        int64_t lc = want_int(rt, at, p[0], what);
        if (lc <= 0) jj_fail(rt, at, "%s: linecount must be positive", what);
        jj_list *items = jj_iterate(rt, at, in), *out = jj_list_v(rt, 0).u.l;
        jj_val tmp = jj_list_v(rt, 0);
        for (size_t i = 0; i < items->n; i++) {
            if ((int64_t)tmp.u.l->n == lc) {
                jj_list_push(rt, out, tmp);
                tmp = jj_list_v(rt, 0);
            }
            jj_list_push(rt, tmp.u.l, items->v[i]);
        }
        if (tmp.u.l->n) {
            if (!JJ_MISSING(p[1]) && p[1].t != JT_NONE)
                while ((int64_t)tmp.u.l->n < lc) jj_list_push(rt, tmp.u.l, p[1]);
            jj_list_push(rt, out, tmp);
        }
        return gen_of(rt, out, "generator");
    }
    case F_CAPITALIZE:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return jj_str_capitalize(rt, soft_str(rt, in));
    case F_CENTER: {
        BIND("width");
        return str_center(rt, soft_str(rt, in), JJ_MISSING(p[0]) ? 80 : want_int(rt, at, p[0], what));
    }
    case F_COUNT:
    case F_LENGTH:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return jj_int(jj_length(rt, at, in));
    case F_D:
    case F_DEFAULT: {
        BIND("default_value", "boolean");
        jj_val d = dflt(p[0], jj_str_v(rt, "", 0));
        int boolean = !JJ_MISSING(p[1]) && jj_truthy(rt, p[1]);
        if (in.t == JT_UNDEF || (boolean && !jj_truthy(rt, in))) return d;
        return in;
    }
    case F_DICTSORT: {
        BIND("case_sensitive", "by", "reverse");
        if (in.t == JT_UNDEF) jj_check_undef(rt, at, in);
        if (in.t != JT_DICT) jj_fail(rt, at, "%s: '%s' object has no attribute 'items'", what, jj_type_name(in));
        int cs = !JJ_MISSING(p[0]) && jj_truthy(rt, p[0]);
        int pos = 0;
        if (!JJ_MISSING(p[1])) {
            if (p[1].t == JT_STR && !strcmp(p[1].u.s->p, "key")) pos = 0;
            else if (p[1].t == JT_STR && !strcmp(p[1].u.s->p, "value")) pos = 1;
            else jj_fail(rt, at, "You can only sort by either \"key\" or \"value\"");
        }
        size_t n = in.u.d->n;
        jj_val *items = jj_alloc(rt, sizeof *items * (n + 1)), *keys = jj_alloc(rt, sizeof *keys * (n + 1));
        for (size_t i = 0; i < n; i++) {
            items[i] = tuple2(rt, in.u.d->k[i], in.u.d->v[i]);
            keys[i] = pos ? in.u.d->v[i] : in.u.d->k[i];
            if (!cs) keys[i] = ignore_case(rt, keys[i]);
        }
        if (p[2].t == JT_UNDEF && !JJ_MISSING(p[2])) jj_check_undef(rt, at, p[2]);
        sort_by(rt, at, items, keys, n, !JJ_MISSING(p[2]) && jj_truthy(rt, p[2]));
        jj_val r = jj_list_v(rt, n);
        memcpy(r.u.l->v, items, sizeof *items * n);
        r.u.l->n = n;
        return r;
    }
    case F_E:
    case F_ESCAPE:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (in.t == JT_STR && in.markup) return in;
        return jj_html_escape(rt, soft_str(rt, in));
    case F_FIRST: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (in.t == JT_GEN) {
            jj_val x;
            if (jj_gen_next(rt, in.u.g, &x)) return x;
        } else {
            jj_list *l = jj_iterate(rt, at, in);
            if (l->n) return l->v[0];
        }
        return jj_undef_v(rt, "No first item, sequence was empty.");
    }
    case F_LAST: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (in.t == JT_GEN || in.t == JT_UNDEF || in.t == JT_NS || in.t == JT_NONE || in.t == JT_INT ||
            in.t == JT_FLOAT || in.t == JT_BOOL) {
            if (in.t == JT_UNDEF) jj_check_undef(rt, at, in);
            jj_fail(rt, at, "'%s' object is not reversible", jj_type_name(in));
        }
        jj_list *l = jj_iterate(rt, at, in);
        if (l->n) return l->v[l->n - 1];
        return jj_undef_v(rt, "No last item, sequence was empty.");
    }
    case F_FLOAT: {
        BIND("default");
        jj_val d = dflt(p[0], jj_float(0.0));
        if (in.t == JT_FLOAT) return in;
        if (in.t == JT_INT || in.t == JT_BOOL) return jj_float((double)in.u.i);
        double f;
        if (in.t == JT_STR && parse_float(in.u.s->p, &f)) return jj_float(f);
        return d;
    }
    case F_FORMAT: {
        jj_val s = soft_str(rt, in);
        if (a->n_pos && a->n_kw) jj_fail(rt, at, "can't handle positional and keyword arguments at the same time");
        if (a->n_kw) {
            jj_val d = jj_dict_v(rt);
            for (int k = 0; k < a->n_kw; k++) jj_dict_set(rt, d.u.d, jj_cstr(rt, a->kw[k]), a->kwv[k]);
            return jj_percent_format(rt, at, s, d);
        }
        jj_val t = jj_tuple_v(rt, (size_t)a->n_pos);
        for (int i = 0; i < a->n_pos; i++) t.u.l->v[t.u.l->n++] = a->pos[i];
        return jj_percent_format(rt, at, s, t);
    }
    case F_INDENT: {
        BIND("width", "first", "blank");
        jj_val width = dflt(p[0], jj_int(4));
        if (width.t != JT_STR) want_int(rt, at, width, what);
        return f_indent(rt, soft_str(rt, in), width, !JJ_MISSING(p[1]) && jj_truthy(rt, p[1]),
                        !JJ_MISSING(p[2]) && jj_truthy(rt, p[2]));
    }
    case F_INT: {
        BIND("default", "base");
        return to_int_filter(rt, at, in, dflt(p[0], jj_int(0)), JJ_MISSING(p[1]) ? 10 : (int)want_int(rt, at, p[1], what));
    }
    case F_ITEMS: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        jj_list *out = jj_list_v(rt, 0).u.l;
        if (in.t == JT_UNDEF) return gen_of(rt, out, "generator");
        if (in.t != JT_DICT) jj_fail(rt, at, "Can only get item pairs from a mapping.");
        for (size_t i = 0; i < in.u.d->n; i++) jj_list_push(rt, out, tuple2(rt, in.u.d->k[i], in.u.d->v[i]));
        return gen_of(rt, out, "generator");
    }
    case F_JOIN: {
        BIND("d", "attribute");
        jj_str *sep = JJ_MISSING(p[0]) ? jj_str_new(rt, "", 0) : jj_to_str(rt, p[0]);
        jj_list *items = jj_iterate(rt, at, in);
        jj_buf out = {0};
        for (size_t i = 0; i < items->n; i++) {
            if (i) jj_buf_put(rt, &out, sep->p, sep->n);
            jj_val x = JJ_MISSING(p[1]) ? items->v[i] : attrget(rt, at, items->v[i], p[1], jj_none());
            jj_str_to(rt, &out, x);
        }
        return jj_buf_val(rt, &out);
    }
    case F_LIST: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        jj_val r = jj_list_v(rt, 0);
        r.u.l = copy_list(rt, jj_iterate(rt, at, in));
        return r;
    }
    case F_LOWER:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return jj_str_lower(rt, soft_str(rt, in));
    case F_UPPER:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return jj_str_upper(rt, soft_str(rt, in));
    case F_MAP: return f_map(rt, at, in, a);
    case F_MAX:
    case F_MIN: {
        BIND("case_sensitive", "attribute");
        return min_max(rt, at, in, p[0], p[1], fid == F_MAX);
    }
    case F_REJECT: return select_reject(rt, at, in, a, 1, 0);
    case F_REJECTATTR: return select_reject(rt, at, in, a, 1, 1);
    case F_SELECT: return select_reject(rt, at, in, a, 0, 0);
    case F_SELECTATTR: return select_reject(rt, at, in, a, 0, 1);
    case F_REPLACE: {
        BIND("old", "new", "count");
        if (JJ_MISSING(p[0]) || JJ_MISSING(p[1])) jj_fail(rt, at, "%s: missing argument (old, new)", what);
        jj_val s = jj_none();
        s.t = JT_STR;
        s.u.s = jj_to_str(rt, in);
        jj_val o = jj_none(), w = jj_none();
        o.t = w.t = JT_STR;
        o.u.s = jj_to_str(rt, p[0]);
        w.u.s = jj_to_str(rt, p[1]);
        int64_t count = JJ_MISSING(p[2]) || p[2].t == JT_NONE ? -1 : want_int(rt, at, p[2], what);
        return jj_str_replace(rt, s, o, w, count);
    }
    case F_REVERSE: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (in.t == JT_STR) {
            jj_list *cs = jj_iterate(rt, at, in);
            jj_buf b = {0};
            for (size_t i = cs->n; i > 0; i--) jj_buf_put(rt, &b, cs->v[i - 1].u.s->p, cs->v[i - 1].u.s->n);
            jj_val r = jj_buf_val(rt, &b);
            r.markup = in.markup;
            return r;
        }
        if (in.t == JT_LIST || in.t == JT_TUPLE || in.t == JT_DICT) {
            jj_list *items = jj_iterate(rt, at, in), *out = jj_list_v(rt, items->n).u.l;
            for (size_t i = items->n; i > 0; i--) out->v[out->n++] = items->v[i - 1];
            return gen_of(rt, out, in.t == JT_DICT ? "dict_reversekeyiterator" : in.t == JT_LIST ? "list_reverseiterator" : "reversed");
        }
        jj_list *items = jj_iterate(rt, at, in), *out = jj_list_v(rt, items->n).u.l;
        for (size_t i = items->n; i > 0; i--) out->v[out->n++] = items->v[i - 1];
        jj_val r = jj_list_v(rt, 0);
        r.u.l = out;
        return r;
    }
    case F_ROUND: {
        BIND("precision", "method");
        const char *method = "common";
        if (!JJ_MISSING(p[1])) {
            if (p[1].t != JT_STR || (strcmp(p[1].u.s->p, "common") && strcmp(p[1].u.s->p, "ceil") && strcmp(p[1].u.s->p, "floor")))
                jj_fail(rt, at, "method must be common, ceil or floor");
            method = p[1].u.s->p;
        }
        return f_round(rt, at, in, JJ_MISSING(p[0]) ? 0 : want_int(rt, at, p[0], what), method);
    }
    case F_SAFE: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        jj_val s = soft_str(rt, in);
        s.markup = 1;
        return s;
    }
    case F_SLICE: {
        BIND("slices", "fill_with");
        int64_t slices = want_int(rt, at, p[0], what);
        if (slices <= 0) jj_fail(rt, at, "%s: slices must be positive", what);
        jj_list *seq = jj_iterate(rt, at, in), *out = jj_list_v(rt, 0).u.l;
        int64_t length = (int64_t)seq->n, per = length / slices, extra = length % slices, offset = 0;
        for (int64_t k = 0; k < slices; k++) {
            int64_t start = offset + k * per;
            if (k < extra) offset++;
            int64_t end = offset + (k + 1) * per;
            jj_val tmp = jj_list_v(rt, 0);
            for (int64_t i = start; i < end && i < length; i++) jj_list_push(rt, tmp.u.l, seq->v[i]);
            if (!JJ_MISSING(p[1]) && p[1].t != JT_NONE && k >= extra) jj_list_push(rt, tmp.u.l, p[1]);
            jj_list_push(rt, out, tmp);
        }
        return gen_of(rt, out, "generator");
    }
    case F_SORT: {
        BIND("reverse", "case_sensitive", "attribute");
        jj_list *items = copy_list(rt, jj_iterate(rt, at, in));
        int cs = !JJ_MISSING(p[1]) && jj_truthy(rt, p[1]);
        jj_val *keys = jj_alloc(rt, sizeof *keys * (items->n + 1));
        jj_list *attrs = NULL;
        if (!JJ_MISSING(p[2]) && p[2].t == JT_STR && strchr(p[2].u.s->p, ',')) {
            attrs = jj_str_split(rt, at, p[2], jj_cstr(rt, ","), -1).u.l;
        }
        for (size_t i = 0; i < items->n; i++) {
            if (attrs) {
                jj_val kl = jj_list_v(rt, attrs->n);
                for (size_t k = 0; k < attrs->n; k++) {
                    jj_val x = attrget(rt, at, items->v[i], attrs->v[k], jj_none());
                    kl.u.l->v[kl.u.l->n++] = cs ? x : ignore_case(rt, x);
                }
                keys[i] = kl;
            } else { /* a one-item list, as Jinja2's make_multi_attrgetter: equal keys
                        (two Undefined, two None) are never ordered */
                jj_val x = attrget(rt, at, items->v[i], p[2], jj_none());
                jj_val kl = jj_list_v(rt, 1);
                kl.u.l->v[kl.u.l->n++] = cs ? x : ignore_case(rt, x);
                keys[i] = kl;
            }
        }
        if (p[0].t == JT_UNDEF && !JJ_MISSING(p[0])) jj_check_undef(rt, at, p[0]); /* sorted(reverse=Undefined) */
        sort_by(rt, at, items->v, keys, items->n, !JJ_MISSING(p[0]) && jj_truthy(rt, p[0]));
        jj_val r = jj_list_v(rt, 0);
        r.u.l = items;
        return r;
    }
    case F_STRING:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return soft_str(rt, in);
    case F_SUM: {
        BIND("attribute", "start");
        jj_val acc = dflt(p[1], jj_int(0));
        jj_list *items = jj_iterate(rt, at, in);
        for (size_t i = 0; i < items->n; i++) {
            jj_val x = JJ_MISSING(p[0]) ? items->v[i] : attrget(rt, at, items->v[i], p[0], jj_none());
            if (acc.t == JT_STR || x.t == JT_STR) {
                if (acc.t == JT_STR) jj_fail(rt, at, "sum() can't sum strings [use ''.join(seq) instead]");
                jj_fail(rt, at, "unsupported operand type(s) for +: '%s' and 'str'", jj_type_name(acc));
            }
            acc = jj_binop(rt, at, OP_ADD, acc, x);
        }
        return acc;
    }
    case F_TITLE:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        return f_title(rt, soft_str(rt, in));
    case F_TOJSON: return f_tojson(rt, at, in, a);
    case F_TRIM: {
        BIND("chars");
        jj_val s = soft_str(rt, in);
        if (!JJ_MISSING(p[0]) && p[0].t != JT_NONE && p[0].t != JT_STR)
            jj_fail(rt, at, "strip arg must be None or str");
        return jj_str_strip(rt, s, JJ_MISSING(p[0]) || p[0].t == JT_NONE ? NULL : p[0].u.s, 1, 1);
    }
    case F_TRUNCATE: {
        BIND("length", "killwords", "end", "leeway");
        jj_val s = soft_str(rt, in);
        int64_t length = JJ_MISSING(p[0]) ? 255 : want_int(rt, at, p[0], what);
        int kill = !JJ_MISSING(p[1]) && jj_truthy(rt, p[1]);
        jj_str *end = JJ_MISSING(p[2]) ? jj_str_new(rt, "...", 3) : jj_to_str(rt, p[2]);
        int64_t leeway = JJ_MISSING(p[3]) || p[3].t == JT_NONE ? 5 : want_int(rt, at, p[3], what);
        long endlen = jj_str_ncp(end), n = jj_str_ncp(s.u.s);
        if (length < endlen) jj_fail(rt, at, "expected length >= %ld, got %lld", endlen, (long long)length);
        if (leeway < 0) jj_fail(rt, at, "expected leeway >= 0, got %lld", (long long)leeway);
        if (n <= length + leeway) return s;
        size_t cut = jj_cp_offset(s.u.s, (long)(length - endlen));
        jj_buf b = {0};
        if (kill) {
            jj_buf_put(rt, &b, s.u.s->p, cut);
        } else {
            size_t k = cut;
            while (k > 0 && s.u.s->p[k - 1] != ' ') k--;
            jj_buf_put(rt, &b, s.u.s->p, k > 0 ? k - 1 : cut);
        }
        jj_buf_put(rt, &b, end->p, end->n);
        return jj_buf_val(rt, &b);
    }
    case F_UNIQUE: {
        BIND("case_sensitive", "attribute");
        int cs = !JJ_MISSING(p[0]) && jj_truthy(rt, p[0]);
        jj_list *items = jj_iterate(rt, at, in), *out = jj_list_v(rt, 0).u.l;
        jj_val seen = jj_dict_v(rt);
        for (size_t i = 0; i < items->n; i++) {
            jj_val k = attrget(rt, at, items->v[i], p[1], jj_none());
            if (!cs) k = ignore_case(rt, k);
            if (k.t == JT_LIST || k.t == JT_DICT) jj_fail(rt, at, "unhashable type: '%s'", jj_type_name(k));
            if (jj_dict_get(seen.u.d, k)) continue;
            jj_dict_set(rt, seen.u.d, k, jj_none());
            jj_list_push(rt, out, items->v[i]);
        }
        return gen_of(rt, out, "generator");
    }
    case F_WORDCOUNT: {
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        jj_val s = soft_str(rt, in);
        int64_t count = 0;
        int inword = 0;
        for (size_t i = 0; i < s.u.s->n;) {
            uint32_t cp = jj_utf8_next(s.u.s->p, s.u.s->n, &i);
            int w = is_word_cp(cp);
            if (w && !inword) count++;
            inword = w;
        }
        return jj_int(count);
    }
    }
    jj_fail(rt, at, "unknown filter");
}

/* ---- tests --------------------------------------------------------------------------------------------- */

static int test_cmp(jj_rt *rt, const jj_node *at, int tid, jj_val in, jj_args *a) {
    static const char *const names[] = {"other"};
    jj_val o;
    jj_bind(rt, at, "test", a, names, 1, &o);
    if (JJ_MISSING(o)) jj_fail(rt, at, "test '%s' needs an argument", TESTS[tid]);
    switch (tid) {
    case X_EQ:
    case X_EQUALTO:
    case X_SYM_EQ: return jj_eq(in, o);
    case X_NE:
    case X_SYM_NE: return !jj_eq(in, o);
    case X_GT:
    case X_GREATERTHAN:
    case X_SYM_GT: return jj_lt(rt, at, o, in);
    case X_GE:
    case X_SYM_GE: return jj_lt(rt, at, o, in) || jj_eq(in, o);
    case X_LT:
    case X_LESSTHAN:
    case X_SYM_LT: return jj_lt(rt, at, in, o);
    case X_LE:
    case X_SYM_LE: return jj_lt(rt, at, in, o) || jj_eq(in, o);
    }
    return 0;
}

int jj_apply_test(jj_rt *rt, const jj_node *at, int tid, jj_val in, jj_args *a) {
    int noargs = a->n_pos == 0 && a->n_kw == 0;
    switch (tid) {
    case X_EQ: case X_EQUALTO: case X_SYM_EQ: case X_NE: case X_SYM_NE: case X_GT: case X_GREATERTHAN:
    case X_SYM_GT: case X_GE: case X_SYM_GE: case X_LT: case X_LESSTHAN: case X_SYM_LT: case X_LE:
    case X_SYM_LE:
        return test_cmp(rt, at, tid, in, a);
    case X_IN: {
        static const char *const names[] = {"seq"};
        jj_val seq;
        jj_bind(rt, at, "test 'in'", a, names, 1, &seq);
        if (JJ_MISSING(seq)) jj_fail(rt, at, "test 'in' needs an argument");
        switch (seq.t) {
        case JT_STR:
            if (in.t != JT_STR) jj_fail(rt, at, "'in <string>' requires string as left operand, not %s", jj_type_name(in));
            return in.u.s->n == 0 || memmem(seq.u.s->p, seq.u.s->n, in.u.s->p, in.u.s->n) != NULL;
        case JT_DICT: return jj_dict_get(seq.u.d, in) != NULL;
        default: {
            jj_list *l = jj_iterate(rt, at, seq);
            for (size_t i = 0; i < l->n; i++)
                if (jj_eq(l->v[i], in)) return 1;
            return 0;
        }
        }
    }
    case X_SAMEAS: {
        static const char *const names[] = {"other"};
        jj_val o;
        jj_bind(rt, at, "test 'sameas'", a, names, 1, &o);
        if (JJ_MISSING(o)) jj_fail(rt, at, "test 'sameas' needs an argument");
        if (in.t != o.t) return 0;
        switch (in.t) {
        case JT_NONE: return 1;
        case JT_BOOL: return in.u.i == o.u.i;
        case JT_INT: return in.u.i == o.u.i && in.u.i >= -5 && in.u.i <= 256; /* CPython's cached ints */
        case JT_FLOAT: return 0;
        case JT_STR: return in.u.s == o.u.s;
        case JT_FUNC: return in.u.i == o.u.i;
        default: return in.u.l == o.u.l;
        }
    }
    case X_DIVISIBLEBY: {
        static const char *const names[] = {"num"};
        jj_val num;
        jj_bind(rt, at, "test 'divisibleby'", a, names, 1, &num);
        if (JJ_MISSING(num)) jj_fail(rt, at, "test 'divisibleby' needs an argument");
        return jj_eq(jj_binop(rt, at, OP_MOD, in, num), jj_int(0));
    }
    default: break;
    }
    if (!noargs) jj_fail(rt, at, "test '%s' takes no arguments", TESTS[tid]);
    switch (tid) {
    case X_BOOLEAN: return in.t == JT_BOOL;
    case X_CALLABLE:
        return in.t == JT_MACRO || in.t == JT_FUNC || in.t == JT_METHOD || in.t == JT_JOINER ||
               in.t == JT_LOOP || in.t == JT_UNDEF;
    case X_DEFINED: return in.t != JT_UNDEF;
    case X_UNDEFINED: return in.t == JT_UNDEF;
    case X_ESCAPED: return in.t == JT_STR && in.markup;
    case X_EVEN:
    case X_ODD: {
        jj_val m = jj_binop(rt, at, OP_MOD, in, jj_int(2));
        return jj_eq(m, jj_int(tid == X_ODD ? 1 : 0));
    }
    case X_FALSE: return in.t == JT_BOOL && !in.u.i;
    case X_TRUE: return in.t == JT_BOOL && in.u.i;
    case X_FILTER: return in.t == JT_STR && jj_filter_id(in.u.s->p) >= 0;
    case X_TEST: return in.t == JT_STR && jj_test_id(in.u.s->p) >= 0;
    case X_FLOAT: return in.t == JT_FLOAT;
    case X_INTEGER: return in.t == JT_INT;
    case X_NUMBER: return in.t == JT_INT || in.t == JT_FLOAT || in.t == JT_BOOL;
    case X_STRING: return in.t == JT_STR;
    case X_MAPPING: return in.t == JT_DICT;
    case X_NONE: return in.t == JT_NONE;
    case X_ITERABLE:
        return in.t == JT_STR || in.t == JT_LIST || in.t == JT_TUPLE || in.t == JT_DICT || in.t == JT_GEN ||
               in.t == JT_UNDEF || in.t == JT_LOOP;
    case X_SEQUENCE:
        return in.t == JT_STR || in.t == JT_LIST || in.t == JT_TUPLE || in.t == JT_DICT || in.t == JT_UNDEF;
    case X_LOWER:
    case X_UPPER: {
        jj_val s = soft_str(rt, in);
        int cased = 0;
        for (size_t i = 0; i < s.u.s->n;) {
            uint32_t cp = jj_utf8_next(s.u.s->p, s.u.s->n, &i);
            utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
            if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT) {
                if (tid == X_LOWER) return 0;
                cased = 1;
            } else if (c == UTF8PROC_CATEGORY_LL) {
                if (tid == X_UPPER) return 0;
                cased = 1;
            }
        }
        return cased;
    }
    }
    return 0;
}
