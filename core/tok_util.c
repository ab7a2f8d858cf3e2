/* tok_util.c - buffers, UTF-8, Unicode predicates, hash maps and regex
 * helpers for the tokenizer (see tok_internal.h). */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ==== Buffers =========================================================== */

int capmoe__tok_buf_reserve(capmoe__tok_buf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) {
        if (cap > ((size_t)-1) / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int capmoe__tok_buf_put(capmoe__tok_buf *b, const void *s, size_t n) {
    if (capmoe__tok_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

int capmoe__tok_buf_putc(capmoe__tok_buf *b, char c) { return capmoe__tok_buf_put(b, &c, 1); }

int capmoe__tok_buf_put_cp(capmoe__tok_buf *b, uint32_t cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | (cp >> 18));
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return capmoe__tok_buf_put(b, u, n);
}

void capmoe__tok_buf_free(capmoe__tok_buf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* ==== String lists ====================================================== */

static int list_grow(capmoe__tok_list *l) {
    if (l->n < l->cap) return 0;
    int cap = l->cap ? l->cap * 2 : 16;
    size_t *off = realloc(l->off, (size_t)cap * sizeof *off);
    if (!off) return -1;
    l->off = off;
    size_t *len = realloc(l->len, (size_t)cap * sizeof *len);
    if (!len) return -1;
    l->len = len;
    int *flag = realloc(l->flag, (size_t)cap * sizeof *flag);
    if (!flag) return -1;
    l->flag = flag;
    l->cap = cap;
    return 0;
}

int capmoe__tok_list_add(capmoe__tok_list *l, const char *s, size_t n, int flag) {
    if (list_grow(l)) return -1;
    size_t at = l->data.n;
    if (capmoe__tok_buf_put(&l->data, s, n)) return -1;
    l->off[l->n] = at;
    l->len[l->n] = n;
    l->flag[l->n] = flag;
    l->n++;
    return 0;
}

int capmoe__tok_list_begin(capmoe__tok_list *l, int flag) {
    if (list_grow(l)) return -1;
    if (capmoe__tok_buf_reserve(&l->data, 0)) return -1;
    l->off[l->n] = l->data.n;
    l->len[l->n] = 0;
    l->flag[l->n] = flag;
    return 0;
}

void capmoe__tok_list_end(capmoe__tok_list *l) {
    l->len[l->n] = l->data.n - l->off[l->n];
    l->n++;
}

void capmoe__tok_list_clear(capmoe__tok_list *l) {
    l->n = 0;
    l->data.n = 0;
    if (l->data.p) l->data.p[0] = '\0';
}

void capmoe__tok_list_free(capmoe__tok_list *l) {
    capmoe__tok_buf_free(&l->data);
    free(l->off);
    free(l->len);
    free(l->flag);
    memset(l, 0, sizeof *l);
}

int capmoe__tok_ids_push(capmoe__tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ==== UTF-8 ============================================================= */

/* Expected length of a sequence starting with lead byte c (0 = invalid lead)
 * and the allowed range of its second byte. */
static int utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) { *lo = 0xA0; return 3; }
    if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return 3;
    if (c == 0xED) { *hi = 0x9F; return 3; }
    if (c == 0xF0) { *lo = 0x90; return 4; }
    if (c >= 0xF1 && c <= 0xF3) return 4;
    if (c == 0xF4) { *hi = 0x8F; return 4; }
    return 0;
}

/* Length of the maximal valid-prefix subpart at s (>= 1), and whether it is
 * a complete character (*ok). */
static size_t utf8_step(const unsigned char *s, size_t n, int *ok) {
    unsigned char c = s[0], lo, hi;
    if (c < 0x80) { *ok = 1; return 1; }
    int need = utf8_lead(c, &lo, &hi);
    *ok = 0;
    if (need == 0) return 1;
    if (n < 2 || s[1] < lo || s[1] > hi) return 1;
    for (int k = 2; k < need; k++)
        if ((size_t)k >= n || (s[k] & 0xC0) != 0x80) return (size_t)k;
    *ok = 1;
    return (size_t)need;
}

size_t capmoe__tok_utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        int ok;
        size_t k = utf8_step(u + i, n - i, &ok);
        if (!ok) return i;
        i += k;
    }
    return n;
}

uint32_t capmoe__tok_utf8_next(const char *s, size_t n, int *len) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) { *len = 0; return 0; }
    if (u[0] < 0x80) { *len = 1; return u[0]; }
    if (u[0] < 0xE0 && n >= 2) { *len = 2; return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F); }
    if (u[0] < 0xF0 && n >= 3) {
        *len = 3;
        return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    }
    if (n >= 4) {
        *len = 4;
        return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
               ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    }
    *len = 1; /* truncated: treat as one byte (never happens on valid text) */
    return 0xFFFD;
}

int capmoe__tok_utf8_prev_len(const char *s, size_t n) {
    int k = 1;
    while ((size_t)k < n && k < 4 && (((unsigned char)s[n - (size_t)k]) & 0xC0) == 0x80) k++;
    return k;
}

int capmoe__tok_utf8_lossy(capmoe__tok_buf *out, const unsigned char *s, size_t n) {
    static const char fffd[] = "\xEF\xBF\xBD";
    if (n == 0) return 0; /* s may be NULL: no arithmetic on it */
    size_t i = 0, run = 0; /* run: start of pending valid bytes */
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        int ok;
        size_t k = utf8_step(s + i, n - i, &ok);
        if (ok) { i += k; continue; }
        if (capmoe__tok_buf_put(out, s + run, i - run)) return -1;
        if (capmoe__tok_buf_put(out, fffd, 3)) return -1;
        i += k;
        run = i;
    }
    return capmoe__tok_buf_put(out, s + run, n - run);
}

/* ==== Unicode predicates ================================================ */

int capmoe__tok_is_whitespace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

int capmoe__tok_is_numeric(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

int capmoe__tok_is_alnum(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || capmoe__tok_is_numeric(cp);
}

/* ==== Hash maps ========================================================= */

uint64_t capmoe__tok_hash(const void *s, size_t n) {
    const unsigned char *p = s;
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

static uint32_t table_size(int expected) {
    uint32_t cap = 16;
    while (cap < (uint32_t)expected * 2u + 16u) cap *= 2;
    return cap;
}

int capmoe__tok_strmap_init(capmoe__tok_strmap *m, int expected) {
    uint32_t cap = table_size(expected);
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    m->count = 0;
    return m->slot ? 0 : -1;
}

static int strmap_grow(capmoe__tok_strmap *m, const char *const *strs, const uint32_t *lens) {
    uint32_t cap = (m->mask + 1) * 2;
    int32_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return -1;
    for (uint32_t i = 0; i <= m->mask; i++) {
        if (!m->slot[i]) continue;
        int32_t id = m->slot[i] - 1;
        uint32_t h = (uint32_t)capmoe__tok_hash(strs[id], lens[id]) & (cap - 1);
        while (slot[h]) h = (h + 1) & (cap - 1);
        slot[h] = id + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->mask = cap - 1;
    return 0;
}

int capmoe__tok_strmap_put(capmoe__tok_strmap *m, const char *const *strs, const uint32_t *lens,
                           const char *key, size_t n, int32_t id) {
    if ((uint32_t)(m->count + 1) * 2u > m->mask + 1 && strmap_grow(m, strs, lens)) return -1;
    uint32_t h = (uint32_t)capmoe__tok_hash(key, n) & m->mask;
    while (m->slot[h]) {
        int32_t o = m->slot[h] - 1;
        if (lens[o] == n && memcmp(strs[o], key, n) == 0) {
            m->slot[h] = id + 1;
            return 0;
        }
        h = (h + 1) & m->mask;
    }
    m->slot[h] = id + 1;
    m->count++;
    return 0;
}

int32_t capmoe__tok_strmap_get(const capmoe__tok_strmap *m, const char *const *strs,
                               const uint32_t *lens, const char *key, size_t n) {
    if (!m->slot) return -1;
    uint32_t h = (uint32_t)capmoe__tok_hash(key, n) & m->mask;
    while (m->slot[h]) {
        int32_t o = m->slot[h] - 1;
        if (lens[o] == n && memcmp(strs[o], key, n) == 0) return o;
        h = (h + 1) & m->mask;
    }
    return -1;
}

void capmoe__tok_strmap_free(capmoe__tok_strmap *m) {
    free(m->slot);
    m->slot = NULL;
}

static uint32_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

int capmoe__tok_pairmap_init(capmoe__tok_pairmap *m, int expected) {
    uint32_t cap = table_size(expected);
    m->key = calloc(cap, sizeof *m->key);
    m->rank = malloc(cap * sizeof *m->rank);
    m->new_id = malloc(cap * sizeof *m->new_id);
    m->mask = cap - 1;
    m->count = 0;
    return (m->key && m->rank && m->new_id) ? 0 : -1;
}

/* The table is sized at init for all merges, so no growth is needed. */
void capmoe__tok_pairmap_put(capmoe__tok_pairmap *m, int32_t a, int32_t b, int32_t rank,
                             int32_t new_id) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t h = pair_hash(k) & m->mask;
    while (m->key[h] && m->key[h] != k) h = (h + 1) & m->mask;
    if (!m->key[h]) m->count++;
    m->key[h] = k;
    m->rank[h] = rank;
    m->new_id[h] = new_id;
}

int capmoe__tok_pairmap_get(const capmoe__tok_pairmap *m, int32_t a, int32_t b, int32_t *rank,
                            int32_t *new_id) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t h = pair_hash(k) & m->mask;
    while (m->key[h]) {
        if (m->key[h] == k) {
            *rank = m->rank[h];
            *new_id = m->new_id[h];
            return 1;
        }
        h = (h + 1) & m->mask;
    }
    return 0;
}

void capmoe__tok_pairmap_free(capmoe__tok_pairmap *m) {
    free(m->key);
    free(m->rank);
    free(m->new_id);
    m->key = NULL;
    m->rank = m->new_id = NULL;
}

/* ==== Regular expressions =============================================== */

/* Oniguruma's \s (Unicode White_Space) and \w (Letter, Mark, Number,
 * Connector_Punctuation), as PCRE2 class bodies. */
#define ONIG_SPACE "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
                   "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define ONIG_WORD "\\p{L}\\p{M}\\p{N}\\p{Pc}"

static int rewrite_regex(const char *p, size_t n, capmoe__tok_buf *out) {
    int in_class = 0;
    size_t class_start = 0; /* index just after '[' or '[^' */
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            const char *body = NULL;
            int neg = 0;
            if (e == 's' || e == 'S') body = ONIG_SPACE, neg = e == 'S';
            if (e == 'w' || e == 'W') body = ONIG_WORD, neg = e == 'W';
            if (body && !in_class) {
                if (capmoe__tok_buf_put(out, neg ? "[^" : "[", neg ? 2 : 1) ||
                    capmoe__tok_buf_put(out, body, strlen(body)) || capmoe__tok_buf_putc(out, ']'))
                    return -1;
            } else if (body && !neg) {
                if (capmoe__tok_buf_put(out, body, strlen(body))) return -1;
            } else if (capmoe__tok_buf_put(out, p + i, 2)) {
                return -1;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            if (capmoe__tok_buf_putc(out, c)) return -1;
            if (i + 1 < n && p[i + 1] == '^') {
                if (capmoe__tok_buf_putc(out, '^')) return -1;
                i++;
            }
            class_start = i + 1;
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            const char *end = NULL;
            for (size_t k = i + 2; k + 1 < n; k++)
                if (p[k] == ':' && p[k + 1] == ']') { end = p + k + 2; break; }
            if (end) {
                if (capmoe__tok_buf_put(out, p + i, (size_t)(end - (p + i)))) return -1;
                i = (size_t)(end - p) - 1;
                continue;
            }
        }
        if (in_class && c == ']' && i != class_start) in_class = 0;
        if (capmoe__tok_buf_putc(out, c)) return -1;
    }
    return 0;
}

pcre2_code *capmoe__tok_regex_compile(const char *pat, size_t len, int literal, const char *what,
                                      capmoe_error *err) {
    capmoe__tok_buf rx = {0};
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
    if (capmoe__tok_utf8_valid_prefix(pat, len) != len) {
        capmoe_set_error(err, "%s: pattern is not valid UTF-8", what);
        return NULL;
    }
    if (literal) {
        opts = (opts & ~(uint32_t)PCRE2_UCP) | PCRE2_LITERAL; /* UCP is not allowed */
        if (capmoe__tok_buf_put(&rx, pat, len)) goto oom;
    } else if (rewrite_regex(pat, len, &rx) || capmoe__tok_buf_reserve(&rx, 0)) {
        goto oom;
    }
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rx.p, rx.n, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        capmoe_set_error(err, "%s: cannot compile regex '%.*s': %s at offset %zu", what,
                         (int)(len > 200 ? 200 : len), pat, (const char *)msg, (size_t)eo);
        capmoe__tok_buf_free(&rx);
        return NULL;
    }
    capmoe__tok_buf_free(&rx);
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional speed-up */
    return re;
oom:
    capmoe__tok_buf_free(&rx);
    capmoe_set_error(err, "%s: out of memory", what);
    return NULL;
}

static int span_push(capmoe__tok_span **v, int *n, int *cap, size_t s, size_t e, int m) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        capmoe__tok_span *p = realloc(*v, (size_t)nc * sizeof *p);
        if (!p) return -1;
        *v = p;
        *cap = nc;
    }
    (*v)[*n].start = s;
    (*v)[*n].end = e;
    (*v)[*n].is_match = m;
    (*n)++;
    return 0;
}

int capmoe__tok_find_matches(const pcre2_code *re, const char *s, size_t n,
                             capmoe__tok_span **spans, int *n_spans, capmoe_error *err) {
    capmoe__tok_span *v = NULL;
    int cnt = 0, cap = 0;
    *spans = NULL;
    *n_spans = 0;
    if (n == 0) {
        if (span_push(&v, &cnt, &cap, 0, 0, 0)) goto oom;
        *spans = v;
        *n_spans = cnt;
        return 0;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) goto oom;
    size_t prev = 0, pos = 0;
    int have_last = 0;
    size_t last_end = 0;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            pcre2_match_data_free(md);
            free(v);
            return capmoe_set_error(err, "tokenizer regex match failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_end == me) {
            /* empty match right after the previous match: step one char */
            if (pos >= n) break;
            int l;
            capmoe__tok_utf8_next(s + pos, n - pos, &l);
            pos += (size_t)l;
            continue;
        }
        if (prev != ms && span_push(&v, &cnt, &cap, prev, ms, 0)) goto oom_md;
        if (span_push(&v, &cnt, &cap, ms, me, 1)) goto oom_md;
        prev = me;
        have_last = 1;
        last_end = me;
        pos = me;
    }
    if (prev != n && span_push(&v, &cnt, &cap, prev, n, 0)) goto oom_md;
    pcre2_match_data_free(md);
    *spans = v;
    *n_spans = cnt;
    return 0;
oom_md:
    pcre2_match_data_free(md);
oom:
    free(v);
    return capmoe_set_error(err, "tokenizer: out of memory");
}

/* ==== JSON helpers ====================================================== */

int capmoe__tok_json_bool(const cJSON *obj, const char *name, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (cJSON_IsNumber(v)) return v->valuedouble != 0;
    return dflt;
}

const char *capmoe__tok_json_str(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

char *capmoe__tok_strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}
