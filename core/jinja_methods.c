/* jinja_methods.c - what templates call on values: the methods of Python's
 * str, dict and list that chat templates use (with Python's semantics, on
 * code points), loop.cycle / loop.changed, cycler.next. Methods that mutate
 * a list or a dict exist but fail, as in Jinja2's
 * ImmutableSandboxedEnvironment. str.format and % are in jinja_format.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_internal.h"

/* ---- method tables ----------------------------------------------------------------------------------- */

typedef struct mdef {
    const char *name;
    int id;
} mdef;

static const mdef STR_METHODS[] = {
    {"strip", JM_STRIP}, {"lstrip", JM_LSTRIP}, {"rstrip", JM_RSTRIP}, {"split", JM_SPLIT},
    {"rsplit", JM_RSPLIT}, {"splitlines", JM_SPLITLINES}, {"startswith", JM_STARTSWITH},
    {"endswith", JM_ENDSWITH}, {"upper", JM_UPPER}, {"lower", JM_LOWER}, {"title", JM_TITLE},
    {"capitalize", JM_CAPITALIZE}, {"swapcase", JM_SWAPCASE}, {"casefold", JM_CASEFOLD},
    {"replace", JM_REPLACE}, {"format", JM_FORMAT}, {"join", JM_JOIN}, {"find", JM_FIND},
    {"rfind", JM_RFIND}, {"index", JM_INDEX}, {"rindex", JM_RINDEX}, {"count", JM_COUNT},
    {"isdigit", JM_ISDIGIT}, {"isalpha", JM_ISALPHA}, {"isalnum", JM_ISALNUM}, {"isspace", JM_ISSPACE},
    {"islower", JM_ISLOWER}, {"isupper", JM_ISUPPER}, {"isnumeric", JM_ISNUMERIC},
    {"isdecimal", JM_ISDECIMAL}, {"istitle", JM_ISTITLE}, {"center", JM_CENTER}, {"ljust", JM_LJUST},
    {"rjust", JM_RJUST}, {"zfill", JM_ZFILL}, {"partition", JM_PARTITION}, {"rpartition", JM_RPARTITION},
    {"removeprefix", JM_REMOVEPREFIX}, {"removesuffix", JM_REMOVESUFFIX}, {"expandtabs", JM_EXPANDTABS},
    {NULL, 0}};
static const mdef DICT_METHODS[] = {{"items", JM_ITEMS}, {"keys", JM_KEYS}, {"values", JM_VALUES},
                                    {"get", JM_GET}, {"copy", JM_COPY}, {NULL, 0}};
static const char *const DICT_UNSAFE[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};
static const mdef LIST_METHODS[] = {{"index", JM_INDEX}, {"count", JM_COUNT}, {"copy", JM_COPY}, {NULL, 0}};
static const char *const LIST_UNSAFE[] = {"append", "clear", "extend", "insert", "pop", "remove",
                                          "reverse", "sort", NULL};

static int find_m(const mdef *t, const char *name) {
    for (; t->name; t++)
        if (!strcmp(t->name, name)) return t->id;
    return -1;
}

static int in_list(const char *const *l, const char *name) {
    for (; *l; l++)
        if (!strcmp(*l, name)) return 1;
    return 0;
}

int jj_method_id(jj_val self, const char *name, int *unsafe) {
    *unsafe = 0;
    switch (self.t) {
    case JT_STR: return find_m(STR_METHODS, name);
    case JT_DICT:
        if (in_list(DICT_UNSAFE, name)) {
            *unsafe = 1;
            return JM_UNSAFE;
        }
        return find_m(DICT_METHODS, name);
    case JT_LIST:
        if (in_list(LIST_UNSAFE, name)) {
            *unsafe = 1;
            return JM_UNSAFE;
        }
        return find_m(LIST_METHODS, name);
    case JT_TUPLE: {
        int id = find_m(LIST_METHODS, name);
        return id == JM_COPY ? -1 : id;
    }
    default: return -1;
    }
}

/* ---- case mapping and classes ----------------------------------------------------------------------------- */

static int is_cased_cat(utf8proc_category_t c) {
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
}

/* Python's full (one-to-many) uppercase mappings of SpecialCasing.txt that
 * utf8proc's simple mappings lack (the common ones; Greek iota subscripts
 * are left to the simple mapping). Returns the number of code points. */
static int special_upper(uint32_t cp, uint32_t out[3]) {
    static const uint32_t T[][4] = {
        {0x00DF, 0x53, 0x53, 0},       {0x0149, 0x2BC, 0x4E, 0},       {0x01F0, 0x4A, 0x30C, 0},
        {0x0390, 0x399, 0x308, 0x301}, {0x03B0, 0x3A5, 0x308, 0x301}, {0x0587, 0x535, 0x552, 0},
        {0x1E96, 0x48, 0x331, 0},      {0x1E97, 0x54, 0x308, 0},       {0x1E98, 0x57, 0x30A, 0},
        {0x1E99, 0x59, 0x30A, 0},      {0x1E9A, 0x41, 0x2BE, 0},       {0xFB00, 0x46, 0x46, 0},
        {0xFB01, 0x46, 0x49, 0},       {0xFB02, 0x46, 0x4C, 0},        {0xFB03, 0x46, 0x46, 0x49},
        {0xFB04, 0x46, 0x46, 0x4C},    {0xFB05, 0x53, 0x54, 0},        {0xFB06, 0x53, 0x54, 0},
        {0xFB13, 0x544, 0x546, 0},     {0xFB14, 0x544, 0x535, 0},      {0xFB15, 0x544, 0x53B, 0},
        {0xFB16, 0x54E, 0x546, 0},     {0xFB17, 0x544, 0x53D, 0},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (T[i][0] == cp) {
            int n = 0;
            for (int k = 1; k < 4 && T[i][k]; k++) out[n++] = T[i][k];
            return n;
        }
    return 0;
}

static int case_ignorable(uint32_t cp) {
    if (cp == 0x27 || cp == 0x2E || cp == 0x3A || cp == 0x5E || cp == 0x60 || cp == 0xB7 || cp == 0x2019)
        return 1;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_ME || c == UTF8PROC_CATEGORY_CF ||
           c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_SK;
}

static int cased_cp(uint32_t cp) { return is_cased_cat(utf8proc_category((utf8proc_int32_t)cp)); }

/* Python's final-sigma rule: a capital sigma after a cased letter and not
 * before one lowers to the final form. */
static int final_sigma(const uint32_t *cps, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && case_ignorable(cps[j - 1])) j--;
    if (j == 0 || !cased_cp(cps[j - 1])) return 0;
    j = i + 1;
    while (j < n && case_ignorable(cps[j])) j++;
    return j == n || !cased_cp(cps[j]);
}

static jj_val map_cp(jj_rt *rt, jj_val s, int mode) { /* 0 lower 1 upper 2 swapcase */
    size_t n = 0;
    uint32_t *cps = jj_alloc(rt, sizeof *cps * (s.u.s->n + 1));
    for (size_t i = 0; i < s.u.s->n;) cps[n++] = jj_utf8_next(s.u.s->p, s.u.s->n, &i);
    jj_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        utf8proc_int32_t c = (utf8proc_int32_t)cps[i];
        utf8proc_category_t cat = utf8proc_category(c);
        int up = mode == 1 || (mode == 2 && cat == UTF8PROC_CATEGORY_LL);
        int down = mode == 0 || (mode == 2 && (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT));
        uint32_t sp[3];
        int k;
        if (up && (k = special_upper(cps[i], sp)) > 0) {
            for (int q = 0; q < k; q++) jj_buf_putcp(rt, &b, sp[q]);
            continue;
        }
        if (down && c == 0x130) { /* İ -> i + combining dot above */
            jj_buf_putcp(rt, &b, 0x69);
            jj_buf_putcp(rt, &b, 0x307);
            continue;
        }
        if (down && c == 0x3A3) {
            jj_buf_putcp(rt, &b, final_sigma(cps, n, i) ? 0x3C2 : 0x3C3);
            continue;
        }
        jj_buf_putcp(rt, &b, (uint32_t)(up ? utf8proc_toupper(c) : down ? utf8proc_tolower(c) : c));
    }
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

jj_val jj_str_lower(jj_rt *rt, jj_val s) { return map_cp(rt, s, 0); }
jj_val jj_str_upper(jj_rt *rt, jj_val s) { return map_cp(rt, s, 1); }

jj_val jj_str_title(jj_rt *rt, jj_val s) {
    jj_buf b = {0};
    int prev_cased = 0;
    for (size_t i = 0; i < s.u.s->n;) {
        utf8proc_int32_t c = (utf8proc_int32_t)jj_utf8_next(s.u.s->p, s.u.s->n, &i);
        utf8proc_category_t cat = utf8proc_category(c);
        jj_buf_putcp(rt, &b, (uint32_t)(prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c)));
        prev_cased = is_cased_cat(cat);
    }
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

jj_val jj_str_capitalize(jj_rt *rt, jj_val s) {
    jj_buf b = {0};
    int first = 1;
    for (size_t i = 0; i < s.u.s->n;) {
        utf8proc_int32_t c = (utf8proc_int32_t)jj_utf8_next(s.u.s->p, s.u.s->n, &i);
        jj_buf_putcp(rt, &b, (uint32_t)(first ? utf8proc_totitle(c) : utf8proc_tolower(c)));
        first = 0;
    }
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

jj_val jj_html_escape(jj_rt *rt, jj_val v) {
    jj_str *s = jj_to_str(rt, v);
    jj_buf b = {0};
    for (size_t i = 0; i < s->n; i++) {
        switch (s->p[i]) {
        case '&': jj_buf_puts(rt, &b, "&amp;"); break;
        case '<': jj_buf_puts(rt, &b, "&lt;"); break;
        case '>': jj_buf_puts(rt, &b, "&gt;"); break;
        case '"': jj_buf_puts(rt, &b, "&#34;"); break;
        case '\'': jj_buf_puts(rt, &b, "&#39;"); break;
        default: jj_buf_putc(rt, &b, s->p[i]);
        }
    }
    jj_val r = jj_buf_val(rt, &b);
    r.markup = 1;
    return r;
}

jj_val jj_markup_arg(jj_rt *rt, jj_val self, jj_val arg) {
    if (self.markup && arg.t == JT_STR && !arg.markup) return jj_html_escape(rt, arg);
    return arg;
}

/* ---- strip / split / replace ----------------------------------------------------------------------------- */

static int in_chars(const jj_str *chars, uint32_t cp) {
    if (!chars) return jj_py_isspace(cp);
    for (size_t i = 0; i < chars->n;)
        if (jj_utf8_next(chars->p, chars->n, &i) == cp) return 1;
    return 0;
}

jj_val jj_str_strip(jj_rt *rt, jj_val s, const jj_str *chars, int left, int right) {
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, a = 0, e = n;
    if (left)
        while (a < n) {
            size_t k = a;
            if (!in_chars(chars, jj_utf8_next(p, n, &k))) break;
            a = k;
        }
    if (right)
        while (e > a) {
            size_t k = e - 1;
            while (k > a && ((unsigned char)p[k] & 0xC0) == 0x80) k--;
            size_t j = k;
            if (!in_chars(chars, jj_utf8_next(p, n, &j))) break;
            e = k;
        }
    jj_val r = (a == 0 && e == n) ? s : jj_str_v(rt, p + a, e - a);
    r.markup = s.markup;
    return r;
}

jj_val jj_str_replace(jj_rt *rt, jj_val s, jj_val old, jj_val new_, int64_t count) {
    jj_buf b = {0};
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, on = old.u.s->n;
    if (on == 0) { /* between every character, and at both ends */
        size_t i = 0;
        int64_t done = 0;
        if (count != 0) {
            jj_buf_put(rt, &b, new_.u.s->p, new_.u.s->n);
            done++;
        }
        while (i < n) {
            size_t k = i;
            jj_utf8_next(p, n, &k);
            jj_buf_put(rt, &b, p + i, k - i);
            i = k;
            if (count < 0 || done < count) {
                jj_buf_put(rt, &b, new_.u.s->p, new_.u.s->n);
                done++;
            }
        }
    } else {
        size_t i = 0;
        int64_t done = 0;
        while (i < n) {
            const char *f = (count < 0 || done < count) ? memmem(p + i, n - i, old.u.s->p, on) : NULL;
            if (!f) {
                jj_buf_put(rt, &b, p + i, n - i);
                break;
            }
            jj_buf_put(rt, &b, p + i, (size_t)(f - (p + i)));
            jj_buf_put(rt, &b, new_.u.s->p, new_.u.s->n);
            i = (size_t)(f - p) + on;
            done++;
        }
    }
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

jj_val jj_str_split(jj_rt *rt, const jj_node *at, jj_val s, jj_val sep, int64_t maxsplit) {
    jj_val out = jj_list_v(rt, 0);
    const char *p = s.u.s->p;
    size_t n = s.u.s->n;
    if (sep.t == JT_NONE || JJ_MISSING(sep)) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            while (i < n) {
                size_t k = i;
                if (!jj_py_isspace(jj_utf8_next(p, n, &k))) break;
                i = k;
            }
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                jj_val part = jj_str_v(rt, p + i, n - i); /* the rest, as it is */
                part.markup = s.markup;
                jj_list_push(rt, out.u.l, part);
                break;
            }
            size_t j = i;
            while (j < n) {
                size_t k = j;
                if (jj_py_isspace(jj_utf8_next(p, n, &k))) break;
                j = k;
            }
            jj_val part = jj_str_v(rt, p + i, j - i);
            part.markup = s.markup;
            jj_list_push(rt, out.u.l, part);
            splits++;
            i = j;
        }
        return out;
    }
    if (sep.t != JT_STR) jj_fail(rt, at, "must be str or None, not %s", jj_type_name(sep));
    if (sep.u.s->n == 0) jj_fail(rt, at, "empty separator");
    size_t i = 0;
    int64_t splits = 0;
    for (;;) {
        const char *f = (maxsplit < 0 || splits < maxsplit) ? memmem(p + i, n - i, sep.u.s->p, sep.u.s->n) : NULL;
        size_t e = f ? (size_t)(f - p) : n;
        jj_val part = jj_str_v(rt, p + i, e - i);
        part.markup = s.markup;
        jj_list_push(rt, out.u.l, part);
        if (!f) break;
        i = e + sep.u.s->n;
        splits++;
    }
    return out;
}

static jj_val str_rsplit(jj_rt *rt, const jj_node *at, jj_val s, jj_val sep, int64_t maxsplit) {
    if (maxsplit < 0) return jj_str_split(rt, at, s, sep, maxsplit);
    jj_val parts = jj_list_v(rt, 0); /* collected right to left */
    const char *p = s.u.s->p;
    size_t n = s.u.s->n;
    if (sep.t == JT_NONE || JJ_MISSING(sep)) {
        size_t e = n;
        int64_t splits = 0;
        for (;;) {
            while (e > 0) { /* skip trailing whitespace */
                size_t k = e - 1;
                while (k > 0 && ((unsigned char)p[k] & 0xC0) == 0x80) k--;
                size_t j = k;
                if (!jj_py_isspace(jj_utf8_next(p, n, &j))) break;
                e = k;
            }
            if (e == 0) break;
            if (splits >= maxsplit) {
                jj_list_push(rt, parts.u.l, jj_str_v(rt, p, e));
                break;
            }
            size_t b = e;
            while (b > 0) {
                size_t k = b - 1;
                while (k > 0 && ((unsigned char)p[k] & 0xC0) == 0x80) k--;
                size_t j = k;
                if (jj_py_isspace(jj_utf8_next(p, n, &j))) break;
                b = k;
            }
            jj_list_push(rt, parts.u.l, jj_str_v(rt, p + b, e - b));
            splits++;
            e = b;
        }
    } else {
        if (sep.t != JT_STR) jj_fail(rt, at, "must be str or None, not %s", jj_type_name(sep));
        if (sep.u.s->n == 0) jj_fail(rt, at, "empty separator");
        size_t e = n, m = sep.u.s->n;
        int64_t splits = 0;
        for (;;) {
            const char *f = NULL;
            if (splits < maxsplit && e >= m)
                for (size_t k = e - m + 1; k-- > 0;)
                    if (!memcmp(p + k, sep.u.s->p, m)) {
                        f = p + k;
                        break;
                    }
            if (!f) {
                jj_list_push(rt, parts.u.l, jj_str_v(rt, p, e));
                break;
            }
            size_t b = (size_t)(f - p) + m;
            jj_list_push(rt, parts.u.l, jj_str_v(rt, p + b, e - b));
            e = (size_t)(f - p);
            splits++;
        }
    }
    jj_val out = jj_list_v(rt, parts.u.l->n);
    for (size_t i = parts.u.l->n; i > 0; i--) {
        jj_val x = parts.u.l->v[i - 1];
        x.markup = s.markup;
        out.u.l->v[out.u.l->n++] = x;
    }
    return out;
}

static int is_linebreak(uint32_t cp) {
    return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D || cp == 0x1E ||
           cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

jj_list *jj_splitlines(jj_rt *rt, jj_val s, int keepends) {
    jj_list *out = jj_list_v(rt, 0).u.l;
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, i = 0, start = 0;
    while (i < n) {
        size_t k = i;
        uint32_t cp = jj_utf8_next(p, n, &k);
        if (!is_linebreak(cp)) {
            i = k;
            continue;
        }
        size_t end = k;
        if (cp == '\r' && end < n && p[end] == '\n') end++;
        jj_val line = jj_str_v(rt, p + start, (keepends ? end : i) - start);
        line.markup = s.markup;
        jj_list_push(rt, out, line);
        i = start = end;
    }
    if (start < n) {
        jj_val line = jj_str_v(rt, p + start, n - start);
        line.markup = s.markup;
        jj_list_push(rt, out, line);
    }
    return out;
}

/* [start, end) code point range of s from optional Python slice-style bounds. */
static void bounds(jj_rt *rt, const jj_node *at, jj_str *s, jj_val start, jj_val end, long *a, long *b) {
    long n = jj_str_ncp(s);
    *a = 0;
    *b = n;
    jj_val v[2] = {start, end};
    long *o[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        if (JJ_MISSING(v[k]) || v[k].t == JT_NONE) continue;
        if (v[k].t != JT_INT && v[k].t != JT_BOOL)
            jj_fail(rt, at, "slice indices must be integers or None, not %s", jj_type_name(v[k]));
        long x = (long)v[k].u.i;
        if (x < 0) x += n;
        if (x < 0) x = 0;
        if (x > n) x = n;
        *o[k] = x;
    }
}

static jj_str *want_str(jj_rt *rt, const jj_node *at, jj_val v, const char *what) {
    if (v.t == JT_UNDEF) jj_check_undef(rt, at, v);
    if (v.t != JT_STR) jj_fail(rt, at, "%s must be str, not %s", what, jj_type_name(v));
    return v.u.s;
}

static int64_t want_i(jj_rt *rt, const jj_node *at, jj_val v, const char *what) {
    if (v.t == JT_UNDEF) jj_check_undef(rt, at, v);
    if (v.t != JT_INT && v.t != JT_BOOL)
        jj_fail(rt, at, "%s: '%s' object cannot be interpreted as an integer", what, jj_type_name(v));
    return v.u.i;
}

/* Code point index of the first / last occurrence of sub in s[a, b), -1 if none. */
static long find_cp(jj_str *s, jj_str *sub, long a, long b, int last) {
    if (b - a < jj_str_ncp(sub)) return -1;
    size_t x = jj_cp_offset(s, a), y = jj_cp_offset(s, b);
    const char *f = NULL;
    if (!last) {
        f = sub->n == 0 ? s->p + x : memmem(s->p + x, y - x, sub->p, sub->n);
    } else {
        if (sub->n == 0) f = s->p + y;
        else
            for (size_t k = y - sub->n + 1; k-- > x;)
                if (!memcmp(s->p + k, sub->p, sub->n)) {
                    f = s->p + k;
                    break;
                }
    }
    if (!f) return -1;
    long cp = 0;
    for (const char *q = s->p; q < f; q++) cp += ((unsigned char)*q & 0xC0) != 0x80;
    return cp;
}

static int affix(jj_rt *rt, const jj_node *at, jj_val self, jj_val what, jj_val start, jj_val end, int ends) {
    long a, b;
    bounds(rt, at, self.u.s, start, end, &a, &b);
    if ((start.t == JT_INT || start.t == JT_BOOL) && start.u.i > 0 && start.u.i > jj_str_ncp(self.u.s))
        return 0; /* a start past the end never matches, not even '' */
    if (what.t == JT_TUPLE) {
        for (size_t i = 0; i < what.u.l->n; i++)
            if (affix(rt, at, self, what.u.l->v[i], start, end, ends)) return 1;
        return 0;
    }
    if (what.t != JT_STR)
        jj_fail(rt, at, "%s first arg must be str or a tuple of str, not %s", ends ? "endswith" : "startswith",
                jj_type_name(what));
    if (a > b) return 0;
    size_t x = jj_cp_offset(self.u.s, a), y = jj_cp_offset(self.u.s, b);
    size_t m = what.u.s->n;
    if (m > y - x) return 0;
    return !memcmp(self.u.s->p + (ends ? y - m : x), what.u.s->p, m);
}

static jj_val pad(jj_rt *rt, jj_val s, int64_t width, uint32_t fill, int align) { /* '<' '>' '^' */
    long n = jj_str_ncp(s.u.s);
    if (width <= n) return s;
    int64_t marg = width - n, left = align == '<' ? 0 : align == '>' ? marg : marg / 2 + (marg & width & 1);
    jj_buf b = {0};
    for (int64_t i = 0; i < left; i++) jj_buf_putcp(rt, &b, fill);
    jj_buf_put(rt, &b, s.u.s->p, s.u.s->n);
    for (int64_t i = 0; i < marg - left; i++) jj_buf_putcp(rt, &b, fill);
    jj_val r = jj_buf_val(rt, &b);
    r.markup = s.markup;
    return r;
}

static int all_cps(jj_str *s, int (*pred)(uint32_t)) {
    if (s->n == 0) return 0;
    for (size_t i = 0; i < s->n;)
        if (!pred(jj_utf8_next(s->p, s->n, &i))) return 0;
    return 1;
}

static utf8proc_category_t cat(uint32_t cp) { return utf8proc_category((utf8proc_int32_t)cp); }
static int p_decimal(uint32_t cp) { return cat(cp) == UTF8PROC_CATEGORY_ND; }
static int p_digit(uint32_t cp) { return p_decimal(cp) || (cp >= 0xB2 && cp <= 0xB3) || cp == 0xB9 || (cp >= 0x2070 && cp <= 0x2079) || (cp >= 0x2080 && cp <= 0x2089) || (cp >= 0x2460 && cp <= 0x2468); }
static int p_numeric(uint32_t cp) {
    utf8proc_category_t c = cat(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO || p_digit(cp);
}
static int p_alpha(uint32_t cp) {
    utf8proc_category_t c = cat(cp);
    return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}
static int p_alnum(uint32_t cp) { return p_alpha(cp) || p_numeric(cp); }
static int p_space(uint32_t cp) { return jj_py_isspace(cp); }

static int cased_test(jj_str *s, int upper) {
    int cased = 0;
    for (size_t i = 0; i < s->n;) {
        utf8proc_category_t c = cat(jj_utf8_next(s->p, s->n, &i));
        if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT) {
            if (!upper) return 0;
            cased = 1;
        } else if (c == UTF8PROC_CATEGORY_LL) {
            if (upper) return 0;
            cased = 1;
        }
    }
    return cased;
}

static int istitle(jj_str *s) {
    int cased = 0, prev = 0;
    for (size_t i = 0; i < s->n;) {
        utf8proc_category_t c = cat(jj_utf8_next(s->p, s->n, &i));
        if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT) {
            if (prev) return 0;
            prev = cased = 1;
        } else if (c == UTF8PROC_CATEGORY_LL) {
            if (!prev) return 0;
            prev = cased = 1;
        } else {
            prev = 0;
        }
    }
    return cased;
}

/* ---- dispatch ---------------------------------------------------------------------------------------------- */

#define ARGS(...)                                                          \
    static const char *const names[] = {__VA_ARGS__};                      \
    jj_val p[sizeof names / sizeof names[0]];                              \
    jj_bind(rt, at, what, a, names, (int)(sizeof names / sizeof names[0]), p)
#define NOARGS()                                                          \
    if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what)

static jj_val tuple3(jj_rt *rt, jj_val x, jj_val y, jj_val z) {
    jj_val t = jj_tuple_v(rt, 3);
    t.u.l->v[0] = x;
    t.u.l->v[1] = y;
    t.u.l->v[2] = z;
    t.u.l->n = 3;
    return t;
}

static jj_val call_str(jj_rt *rt, const jj_node *at, jj_method *m, jj_args *a, const char *what) {
    jj_val self = m->self;
    jj_str *s = self.u.s;
    switch (m->id) {
    case JM_STRIP:
    case JM_LSTRIP:
    case JM_RSTRIP: {
        ARGS("chars");
        if (!JJ_MISSING(p[0]) && p[0].t != JT_NONE && p[0].t != JT_STR)
            jj_fail(rt, at, "%s arg must be None or str", m->name);
        const jj_str *chars = JJ_MISSING(p[0]) || p[0].t == JT_NONE ? NULL : p[0].u.s;
        return jj_str_strip(rt, self, chars, m->id != JM_RSTRIP, m->id != JM_LSTRIP);
    }
    case JM_SPLIT:
    case JM_RSPLIT: {
        ARGS("sep", "maxsplit");
        int64_t mx = JJ_MISSING(p[1]) ? -1 : want_i(rt, at, p[1], what);
        jj_val sep = JJ_MISSING(p[0]) ? jj_none() : p[0];
        if (sep.t == JT_UNDEF) jj_check_undef(rt, at, sep);
        return m->id == JM_SPLIT ? jj_str_split(rt, at, self, sep, mx) : str_rsplit(rt, at, self, sep, mx);
    }
    case JM_SPLITLINES: {
        ARGS("keepends");
        jj_val r = jj_list_v(rt, 0);
        r.u.l = jj_splitlines(rt, self, !JJ_MISSING(p[0]) && jj_truthy(rt, p[0]));
        return r;
    }
    case JM_STARTSWITH:
    case JM_ENDSWITH: {
        if (a->n_kw) jj_fail(rt, at, "%s takes no keyword arguments", what);
        if (a->n_pos < 1 || a->n_pos > 3) jj_fail(rt, at, "%s takes 1 to 3 arguments (%d given)", what, a->n_pos);
        jj_val none = jj_none();
        if (a->pos[0].t == JT_UNDEF) jj_check_undef(rt, at, a->pos[0]);
        return jj_bool(affix(rt, at, self, a->pos[0], a->n_pos > 1 ? a->pos[1] : none, a->n_pos > 2 ? a->pos[2] : none,
                             m->id == JM_ENDSWITH));
    }
    case JM_UPPER: NOARGS(); return jj_str_upper(rt, self);
    case JM_LOWER:
    case JM_CASEFOLD: NOARGS(); return jj_str_lower(rt, self);
    case JM_TITLE: NOARGS(); return jj_str_title(rt, self);
    case JM_CAPITALIZE: NOARGS(); return jj_str_capitalize(rt, self);
    case JM_SWAPCASE: NOARGS(); return map_cp(rt, self, 2);
    case JM_REPLACE: {
        ARGS("old", "new", "count");
        if (JJ_MISSING(p[0]) || JJ_MISSING(p[1])) jj_fail(rt, at, "replace expected at least 2 arguments");
        want_str(rt, at, p[0], "replace() argument 1");
        want_str(rt, at, p[1], "replace() argument 2");
        int64_t cnt = JJ_MISSING(p[2]) ? -1 : want_i(rt, at, p[2], what);
        return jj_str_replace(rt, self, jj_markup_arg(rt, self, p[0]), jj_markup_arg(rt, self, p[1]), cnt);
    }
    case JM_FORMAT: return jj_str_format(rt, at, self, a);
    case JM_JOIN: {
        ARGS("iterable");
        if (JJ_MISSING(p[0])) jj_fail(rt, at, "join() takes exactly one argument");
        jj_list *items = jj_iterate(rt, at, p[0]);
        jj_buf b = {0};
        for (size_t i = 0; i < items->n; i++) {
            jj_val x = items->v[i];
            if (x.t != JT_STR)
                jj_fail(rt, at, "sequence item %zu: expected str instance, %s found", i, jj_type_name(x));
            x = jj_markup_arg(rt, self, x);
            if (i) jj_buf_put(rt, &b, s->p, s->n);
            jj_buf_put(rt, &b, x.u.s->p, x.u.s->n);
        }
        jj_val r = jj_buf_val(rt, &b);
        r.markup = self.markup;
        return r;
    }
    case JM_FIND:
    case JM_RFIND:
    case JM_INDEX:
    case JM_RINDEX:
    case JM_COUNT: {
        if (a->n_kw) jj_fail(rt, at, "%s takes no keyword arguments", what);
        if (a->n_pos < 1 || a->n_pos > 3) jj_fail(rt, at, "%s takes 1 to 3 arguments (%d given)", what, a->n_pos);
        jj_str *sub = want_str(rt, at, a->pos[0], what);
        long lo, hi;
        bounds(rt, at, s, a->n_pos > 1 ? a->pos[1] : jj_none(), a->n_pos > 2 ? a->pos[2] : jj_none(), &lo, &hi);
        if (m->id == JM_COUNT) {
            if (lo > hi) return jj_int(0);
            if (sub->n == 0) return jj_int(hi - lo + 1);
            size_t x = jj_cp_offset(s, lo), y = jj_cp_offset(s, hi);
            int64_t c = 0;
            for (const char *q = s->p + x; (q = memmem(q, (size_t)(s->p + y - q), sub->p, sub->n)); q += sub->n) c++;
            return jj_int(c);
        }
        long r = lo > hi ? -1 : find_cp(s, sub, lo, hi, m->id == JM_RFIND || m->id == JM_RINDEX);
        if (r < 0 && (m->id == JM_INDEX || m->id == JM_RINDEX)) jj_fail(rt, at, "substring not found");
        return jj_int(r);
    }
    case JM_ISDIGIT: NOARGS(); return jj_bool(all_cps(s, p_digit));
    case JM_ISALPHA: NOARGS(); return jj_bool(all_cps(s, p_alpha));
    case JM_ISALNUM: NOARGS(); return jj_bool(all_cps(s, p_alnum));
    case JM_ISSPACE: NOARGS(); return jj_bool(all_cps(s, p_space));
    case JM_ISNUMERIC: NOARGS(); return jj_bool(all_cps(s, p_numeric));
    case JM_ISDECIMAL: NOARGS(); return jj_bool(all_cps(s, p_decimal));
    case JM_ISLOWER: NOARGS(); return jj_bool(cased_test(s, 0));
    case JM_ISUPPER: NOARGS(); return jj_bool(cased_test(s, 1));
    case JM_ISTITLE: NOARGS(); return jj_bool(istitle(s));
    case JM_CENTER:
    case JM_LJUST:
    case JM_RJUST: {
        ARGS("width", "fillchar");
        if (JJ_MISSING(p[0])) jj_fail(rt, at, "%s expected at least 1 argument", what);
        uint32_t fill = ' ';
        if (!JJ_MISSING(p[1])) {
            jj_str *fc = want_str(rt, at, p[1], "fill character");
            if (jj_str_ncp(fc) != 1) jj_fail(rt, at, "The fill character must be exactly one character long");
            size_t k = 0;
            fill = jj_utf8_next(fc->p, fc->n, &k);
        }
        return pad(rt, self, want_i(rt, at, p[0], what), fill, m->id == JM_CENTER ? '^' : m->id == JM_LJUST ? '<' : '>');
    }
    case JM_ZFILL: {
        ARGS("width");
        int64_t w = want_i(rt, at, p[0], what);
        long n = jj_str_ncp(s);
        if (w <= n) return self;
        jj_buf b = {0};
        size_t start = 0;
        if (s->n && (s->p[0] == '+' || s->p[0] == '-')) {
            jj_buf_putc(rt, &b, s->p[0]);
            start = 1;
        }
        for (int64_t i = 0; i < w - n; i++) jj_buf_putc(rt, &b, '0');
        jj_buf_put(rt, &b, s->p + start, s->n - start);
        return jj_buf_val(rt, &b);
    }
    case JM_PARTITION:
    case JM_RPARTITION: {
        ARGS("sep");
        jj_str *sep = want_str(rt, at, p[0], what);
        if (sep->n == 0) jj_fail(rt, at, "empty separator");
        long r = find_cp(s, sep, 0, jj_str_ncp(s), m->id == JM_RPARTITION);
        jj_val e = jj_str_v(rt, "", 0);
        if (r < 0) return m->id == JM_PARTITION ? tuple3(rt, self, e, e) : tuple3(rt, e, e, self);
        size_t x = jj_cp_offset(s, r);
        return tuple3(rt, jj_str_v(rt, s->p, x), p[0], jj_str_v(rt, s->p + x + sep->n, s->n - x - sep->n));
    }
    case JM_REMOVEPREFIX:
    case JM_REMOVESUFFIX: {
        ARGS("affix");
        jj_str *x = want_str(rt, at, p[0], what);
        if (x->n > s->n) return self;
        if (m->id == JM_REMOVEPREFIX)
            return memcmp(s->p, x->p, x->n) ? self : jj_str_v(rt, s->p + x->n, s->n - x->n);
        return memcmp(s->p + s->n - x->n, x->p, x->n) ? self : jj_str_v(rt, s->p, s->n - x->n);
    }
    case JM_EXPANDTABS: {
        ARGS("tabsize");
        int64_t ts = JJ_MISSING(p[0]) ? 8 : want_i(rt, at, p[0], what);
        jj_buf b = {0};
        long col = 0;
        for (size_t i = 0; i < s->n;) {
            size_t k = i;
            uint32_t cp = jj_utf8_next(s->p, s->n, &k);
            if (cp == '\t') {
                if (ts > 0) {
                    long sp = (long)(ts - col % ts);
                    for (long q = 0; q < sp; q++) jj_buf_putc(rt, &b, ' ');
                    col += sp;
                }
            } else {
                jj_buf_put(rt, &b, s->p + i, k - i);
                col = (cp == '\n' || cp == '\r') ? 0 : col + 1;
            }
            i = k;
        }
        return jj_buf_val(rt, &b);
    }
    }
    jj_fail(rt, at, "unknown str method '%s'", m->name);
}

jj_val jj_call_method(jj_rt *rt, const jj_node *at, jj_method *m, jj_args *a) {
    char what[64];
    snprintf(what, sizeof what, "%s.%s()", jj_type_name(m->self), m->name);
    jj_val self = m->self;
    if (m->id == JM_UNSAFE) jj_fail(rt, at, "access to attribute '%s' of '%s' object is unsafe.", m->name, jj_type_name(self));
    if (self.t == JT_STR) return call_str(rt, at, m, a, what);
    if (self.t == JT_DICT) {
        jj_dict *d = self.u.d;
        switch (m->id) {
        case JM_ITEMS:
        case JM_KEYS:
        case JM_VALUES: {
            NOARGS();
            jj_val r = jj_list_v(rt, d->n);
            for (size_t i = 0; i < d->n; i++) {
                jj_val x;
                if (m->id == JM_KEYS) x = d->k[i];
                else if (m->id == JM_VALUES) x = d->v[i];
                else {
                    x = jj_tuple_v(rt, 2);
                    x.u.l->v[0] = d->k[i];
                    x.u.l->v[1] = d->v[i];
                    x.u.l->n = 2;
                }
                r.u.l->v[r.u.l->n++] = x;
            }
            return r;
        }
        case JM_GET: {
            if (a->n_kw) jj_fail(rt, at, "%s takes no keyword arguments", what);
            if (a->n_pos < 1 || a->n_pos > 2) jj_fail(rt, at, "get expected 1 or 2 arguments, got %d", a->n_pos);
            jj_val k = a->pos[0];
            if (k.t == JT_LIST || k.t == JT_DICT) jj_fail(rt, at, "unhashable type: '%s'", jj_type_name(k));
            jj_val *v = jj_dict_get(d, k);
            return v ? *v : a->n_pos > 1 ? a->pos[1] : jj_none();
        }
        case JM_COPY: {
            NOARGS();
            jj_val r = jj_dict_v(rt);
            for (size_t i = 0; i < d->n; i++) jj_dict_set(rt, r.u.d, d->k[i], d->v[i]);
            return r;
        }
        }
    }
    if (self.t == JT_LIST || self.t == JT_TUPLE) {
        jj_list *l = self.u.l;
        switch (m->id) {
        case JM_COUNT: {
            ARGS("value");
            int64_t c = 0;
            for (size_t i = 0; i < l->n; i++) c += jj_eq(l->v[i], p[0]);
            return jj_int(c);
        }
        case JM_INDEX: {
            if (a->n_kw || a->n_pos < 1 || a->n_pos > 3) jj_fail(rt, at, "%s takes 1 to 3 positional arguments", what);
            int64_t n = (int64_t)l->n, lo = 0, hi = n;
            if (a->n_pos > 1) lo = want_i(rt, at, a->pos[1], what);
            if (a->n_pos > 2) hi = want_i(rt, at, a->pos[2], what);
            if (lo < 0) lo = lo + n < 0 ? 0 : lo + n;
            if (hi < 0) hi = hi + n < 0 ? 0 : hi + n;
            for (int64_t i = lo; i < hi && i < n; i++)
                if (jj_eq(l->v[i], a->pos[0])) return jj_int(i);
            jj_buf b = {0};
            jj_repr_to(rt, &b, a->pos[0]);
            jj_fail(rt, at, "%s is not in %s", b.p ? b.p : "", self.t == JT_LIST ? "list" : "tuple");
        }
        case JM_COPY: {
            NOARGS();
            jj_val r = jj_list_v(rt, l->n);
            if (l->n) memcpy(r.u.l->v, l->v, sizeof *l->v * l->n);
            r.u.l->n = l->n;
            return r;
        }
        }
    }
    if (self.t == JT_LOOP) {
        jj_loop *lp = self.u.lp;
        if (m->id == JM_LOOP_CYCLE) {
            if (a->n_kw) jj_fail(rt, at, "loop.cycle() takes no keyword arguments");
            if (a->n_pos == 0) jj_fail(rt, at, "no items for cycling given");
            return a->pos[lp->i % (size_t)a->n_pos];
        }
        if (m->id == JM_LOOP_CHANGED) {
            if (a->n_kw) jj_fail(rt, at, "loop.changed() takes no keyword arguments");
            jj_val v = jj_tuple_v(rt, (size_t)a->n_pos);
            for (int i = 0; i < a->n_pos; i++) v.u.l->v[v.u.l->n++] = a->pos[i];
            if (lp->has_last && jj_eq(lp->last, v)) return jj_bool(0);
            lp->last = v;
            lp->has_last = 1;
            return jj_bool(1);
        }
    }
    if (self.t == JT_CYCLER) {
        jj_cycler *c = self.u.cy;
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "%s takes no arguments", what);
        if (m->id == JM_CYCLER_RESET) {
            c->pos = 0;
            return jj_none();
        }
        jj_val r = c->items->v[c->pos];
        c->pos = (c->pos + 1) % c->items->n;
        return r;
    }
    jj_fail(rt, at, "unknown method '%s'", m->name);
}
