/* tok_pretok.c - normalizers and pre-tokenizers of tokenizer.json, with the
 * semantics of Hugging Face tokenizers (normalizers, pre_tokenizers,
 * NormalizedString::split). */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ==== ByteLevel table =================================================== */

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes (0-32, 127-160, 173) to U+0100.. in byte order. */
uint32_t capmoe__tok_byte_to_cp(unsigned char b) {
    if (b <= 32) return 256u + b;
    if (b >= 127 && b <= 160) return 289u + (b - 127u);
    if (b == 173) return 323;
    return b;
}

int capmoe__tok_cp_to_byte(uint32_t cp) {
    if (cp <= 32 || (cp >= 127 && cp <= 160) || cp == 173) return -1;
    if (cp < 256) return (int)cp;
    if (cp <= 288) return (int)(cp - 256);
    if (cp <= 322) return (int)(cp - 289 + 127);
    if (cp == 323) return 173;
    return -1;
}

/* ==== Normalizers ======================================================= */

enum norm_type {
    NORM_SEQUENCE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE,
    NORM_STRIP, NORM_STRIP_ACCENTS, NORM_PREPEND, NORM_REPLACE
};

struct capmoe__tok_norm {
    enum norm_type type;
    char *str;             /* Prepend: prefix; Replace: content */
    size_t str_len;
    pcre2_code *re;        /* Replace: pattern */
    int left, right;       /* Strip */
    capmoe__tok_norm **sub;
    int n_sub;
};

void capmoe__tok_norm_free(capmoe__tok_norm *nm) {
    if (!nm) return;
    for (int i = 0; i < nm->n_sub; i++) capmoe__tok_norm_free(nm->sub[i]);
    free(nm->sub);
    free(nm->str);
    if (nm->re) pcre2_code_free(nm->re);
    free(nm);
}

/* Parses a {"String": s} / {"Regex": r} pattern object. */
static pcre2_code *parse_pattern(const cJSON *pat, const char *what, capmoe_error *err) {
    const char *s = capmoe__tok_json_str(pat, "String");
    if (s) return capmoe__tok_regex_compile(s, strlen(s), 1, what, err);
    const char *r = capmoe__tok_json_str(pat, "Regex");
    if (r) return capmoe__tok_regex_compile(r, strlen(r), 0, what, err);
    capmoe_set_error(err, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", what);
    return NULL;
}

int capmoe__tok_norm_parse(capmoe__tok_norm **out, const cJSON *json, capmoe_error *err) {
    *out = NULL;
    if (!json || cJSON_IsNull(json)) return 0;
    const char *type = capmoe__tok_json_str(json, "type");
    if (!type) return capmoe_set_error(err, "normalizer: missing \"type\"");
    capmoe__tok_norm *nm = calloc(1, sizeof *nm);
    if (!nm) return capmoe_set_error(err, "normalizer: out of memory");
    if (!strcmp(type, "Sequence")) {
        nm->type = NORM_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(json, "normalizers");
        if (!cJSON_IsArray(list)) {
            capmoe__tok_norm_free(nm);
            return capmoe_set_error(err, "normalizer Sequence: missing \"normalizers\" array");
        }
        int n = cJSON_GetArraySize(list);
        nm->sub = calloc((size_t)(n ? n : 1), sizeof *nm->sub);
        if (!nm->sub) goto oom;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            if (capmoe__tok_norm_parse(&nm->sub[nm->n_sub], it, err)) {
                capmoe__tok_norm_free(nm);
                return -1;
            }
            if (nm->sub[nm->n_sub]) nm->n_sub++;
        }
    } else if (!strcmp(type, "NFC")) {
        nm->type = NORM_NFC;
    } else if (!strcmp(type, "NFD")) {
        nm->type = NORM_NFD;
    } else if (!strcmp(type, "NFKC")) {
        nm->type = NORM_NFKC;
    } else if (!strcmp(type, "NFKD")) {
        nm->type = NORM_NFKD;
    } else if (!strcmp(type, "Lowercase")) {
        nm->type = NORM_LOWERCASE;
    } else if (!strcmp(type, "StripAccents")) {
        nm->type = NORM_STRIP_ACCENTS;
    } else if (!strcmp(type, "Strip")) {
        nm->type = NORM_STRIP;
        nm->left = capmoe__tok_json_bool(json, "strip_left", 1);
        nm->right = capmoe__tok_json_bool(json, "strip_right", 1);
    } else if (!strcmp(type, "Prepend")) {
        nm->type = NORM_PREPEND;
        const char *p = capmoe__tok_json_str(json, "prepend");
        if (!p) {
            capmoe__tok_norm_free(nm);
            return capmoe_set_error(err, "normalizer Prepend: missing \"prepend\" string");
        }
        if (!(nm->str = capmoe__tok_strdup(p))) goto oom;
        nm->str_len = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        nm->type = NORM_REPLACE;
        const char *c = capmoe__tok_json_str(json, "content");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(json, "pattern");
        if (!c || !cJSON_IsObject(pat)) {
            capmoe__tok_norm_free(nm);
            return capmoe_set_error(err, "normalizer Replace: needs \"pattern\" and \"content\"");
        }
        if (!(nm->str = capmoe__tok_strdup(c))) goto oom;
        nm->str_len = strlen(c);
        if (!(nm->re = parse_pattern(pat, "normalizer Replace", err))) {
            capmoe__tok_norm_free(nm);
            return -1;
        }
    } else {
        capmoe__tok_norm_free(nm);
        return capmoe_set_error(err, "normalizer type \"%s\" is not supported", type);
    }
    *out = nm;
    return 0;
oom:
    capmoe__tok_norm_free(nm);
    return capmoe_set_error(err, "normalizer: out of memory");
}

static int norm_unicode(const char *in, size_t n, utf8proc_option_t opt, capmoe__tok_buf *out,
                        capmoe_error *err) {
    if (n == 0) return 0;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, &dst,
                                      opt | UTF8PROC_STABLE);
    if (r < 0) {
        free(dst);
        return capmoe_set_error(err, "normalizer: %s", utf8proc_errmsg(r));
    }
    int rc = capmoe__tok_buf_put(out, dst, (size_t)r);
    free(dst);
    return rc ? capmoe_set_error(err, "normalizer: out of memory") : 0;
}

static int norm_one(const capmoe__tok_norm *nm, const char *in, size_t n, capmoe__tok_buf *out,
                    capmoe_error *err) {
    switch (nm->type) {
    case NORM_SEQUENCE: {
        capmoe__tok_buf a = {0}, b = {0};
        if (capmoe__tok_buf_put(&a, in, n)) goto seq_oom;
        for (int i = 0; i < nm->n_sub; i++) {
            b.n = 0;
            if (norm_one(nm->sub[i], a.p, a.n, &b, err)) {
                capmoe__tok_buf_free(&a);
                capmoe__tok_buf_free(&b);
                return -1;
            }
            capmoe__tok_buf t = a;
            a = b;
            b = t;
        }
        int rc = capmoe__tok_buf_put(out, a.p, a.n);
        capmoe__tok_buf_free(&a);
        capmoe__tok_buf_free(&b);
        return rc ? capmoe_set_error(err, "normalizer: out of memory") : 0;
    seq_oom:
        capmoe__tok_buf_free(&a);
        return capmoe_set_error(err, "normalizer: out of memory");
    }
    case NORM_NFC: return norm_unicode(in, n, UTF8PROC_COMPOSE, out, err);
    case NORM_NFD: return norm_unicode(in, n, UTF8PROC_DECOMPOSE, out, err);
    case NORM_NFKC: return norm_unicode(in, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out, err);
    case NORM_NFKD: return norm_unicode(in, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out, err);
    case NORM_LOWERCASE:
    case NORM_STRIP_ACCENTS:
        for (size_t i = 0; i < n;) {
            int l;
            uint32_t cp = capmoe__tok_utf8_next(in + i, n - i, &l);
            i += (size_t)l;
            int rc = 0;
            if (nm->type == NORM_STRIP_ACCENTS) {
                if (utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_MN) continue;
                rc = capmoe__tok_buf_put_cp(out, cp);
            } else if (cp == 0x130) { /* the one multi-char lowercase mapping */
                rc = capmoe__tok_buf_put(out, "i\xCC\x87", 3);
            } else {
                rc = capmoe__tok_buf_put_cp(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
            }
            if (rc) return capmoe_set_error(err, "normalizer: out of memory");
        }
        return 0;
    case NORM_STRIP: {
        size_t a = 0, b = n;
        while (nm->left && a < b) {
            int l;
            uint32_t cp = capmoe__tok_utf8_next(in + a, b - a, &l);
            if (!capmoe__tok_is_whitespace(cp)) break;
            a += (size_t)l;
        }
        while (nm->right && b > a) {
            int l = capmoe__tok_utf8_prev_len(in + a, b - a);
            int l2;
            uint32_t cp = capmoe__tok_utf8_next(in + b - (size_t)l, (size_t)l, &l2);
            if (!capmoe__tok_is_whitespace(cp)) break;
            b -= (size_t)l;
        }
        return capmoe__tok_buf_put(out, in + a, b - a) ? capmoe_set_error(err, "out of memory") : 0;
    }
    case NORM_PREPEND:
        if (n > 0 && capmoe__tok_buf_put(out, nm->str, nm->str_len))
            return capmoe_set_error(err, "normalizer: out of memory");
        return capmoe__tok_buf_put(out, in, n) ? capmoe_set_error(err, "out of memory") : 0;
    case NORM_REPLACE: {
        capmoe__tok_span *sp;
        int ns;
        if (capmoe__tok_find_matches(nm->re, in, n, &sp, &ns, err)) return -1;
        int rc = 0;
        for (int i = 0; i < ns && !rc; i++) {
            if (sp[i].is_match)
                rc = capmoe__tok_buf_put(out, nm->str, nm->str_len);
            else if (sp[i].end > sp[i].start) /* in may be NULL when n == 0 */
                rc = capmoe__tok_buf_put(out, in + sp[i].start, sp[i].end - sp[i].start);
        }
        free(sp);
        return rc ? capmoe_set_error(err, "normalizer: out of memory") : 0;
    }
    }
    return capmoe_set_error(err, "normalizer: bad type");
}

int capmoe__tok_norm_apply(const capmoe__tok_norm *nm, const char *in, size_t n,
                           capmoe__tok_buf *out, capmoe_error *err) {
    if (!nm) return capmoe__tok_buf_put(out, in, n) ? capmoe_set_error(err, "out of memory") : 0;
    if (capmoe__tok_buf_reserve(out, 0)) return capmoe_set_error(err, "out of memory");
    return norm_one(nm, in, n, out, err);
}

/* ==== Pre-tokenizers ==================================================== */

enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };

enum pretok_type {
    PT_SEQUENCE, PT_SPLIT, PT_BYTELEVEL, PT_METASPACE, PT_DIGITS, PT_WHITESPACE,
    PT_WHITESPACE_SPLIT, PT_PUNCTUATION, PT_CHAR_DELIM
};

enum prepend_scheme { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS };

struct capmoe__tok_pretok {
    enum pretok_type type;
    pcre2_code *re;          /* Split, ByteLevel (use_regex), Whitespace */
    enum split_behavior behavior;
    int invert;
    int add_prefix_space;    /* ByteLevel */
    uint32_t ch;             /* Metaspace replacement / CharDelimiterSplit delimiter */
    char ch_utf8[5];
    int ch_len;
    enum prepend_scheme prepend;
    int split;               /* Metaspace */
    int individual;          /* Digits */
    capmoe__tok_pretok **sub;
    int n_sub;
};

void capmoe__tok_pretok_free(capmoe__tok_pretok *pt) {
    if (!pt) return;
    for (int i = 0; i < pt->n_sub; i++) capmoe__tok_pretok_free(pt->sub[i]);
    free(pt->sub);
    if (pt->re) pcre2_code_free(pt->re);
    free(pt);
}

static int parse_behavior(const cJSON *json, const char *what, enum split_behavior dflt,
                          enum split_behavior *out, capmoe_error *err) {
    const char *b = capmoe__tok_json_str(json, "behavior");
    if (!b) { *out = dflt; return 0; }
    if (!strcmp(b, "Removed")) *out = SB_REMOVED;
    else if (!strcmp(b, "Isolated")) *out = SB_ISOLATED;
    else if (!strcmp(b, "MergedWithPrevious")) *out = SB_MERGED_PREV;
    else if (!strcmp(b, "MergedWithNext")) *out = SB_MERGED_NEXT;
    else if (!strcmp(b, "Contiguous")) *out = SB_CONTIGUOUS;
    else return capmoe_set_error(err, "%s: unknown split behavior \"%s\"", what, b);
    return 0;
}

/* Reads a one-character string member (Metaspace replacement, delimiter). */
static int parse_char(capmoe__tok_pretok *pt, const cJSON *json, const char *name,
                      const char *what, capmoe_error *err) {
    const char *s = capmoe__tok_json_str(json, name);
    int l;
    if (!s || !*s) return capmoe_set_error(err, "%s: missing \"%s\" character", what, name);
    size_t n = strlen(s);
    if (capmoe__tok_utf8_valid_prefix(s, n) != n)
        return capmoe_set_error(err, "%s: \"%s\" is not valid UTF-8", what, name);
    pt->ch = capmoe__tok_utf8_next(s, n, &l);
    if ((size_t)l != n) return capmoe_set_error(err, "%s: \"%s\" must be one character", what, name);
    memcpy(pt->ch_utf8, s, (size_t)l);
    pt->ch_utf8[l] = '\0';
    pt->ch_len = l;
    return 0;
}

/* Parses the Metaspace fields shared with the Metaspace decoder. */
int capmoe__tok_metaspace_fields(const cJSON *json, uint32_t *ch, char *ch_utf8, int *ch_len,
                                 int *prepend, int *split, capmoe_error *err);
int capmoe__tok_metaspace_fields(const cJSON *json, uint32_t *ch, char *ch_utf8, int *ch_len,
                                 int *prepend, int *split, capmoe_error *err) {
    capmoe__tok_pretok tmp;
    memset(&tmp, 0, sizeof tmp);
    if (parse_char(&tmp, json, "replacement", "Metaspace", err)) return -1;
    *ch = tmp.ch;
    memcpy(ch_utf8, tmp.ch_utf8, 5);
    *ch_len = tmp.ch_len;
    const char *ps = capmoe__tok_json_str(json, "prepend_scheme");
    *prepend = PREPEND_ALWAYS;
    if (ps) {
        if (!strcmp(ps, "first")) *prepend = PREPEND_FIRST;
        else if (!strcmp(ps, "never")) *prepend = PREPEND_NEVER;
        else if (!strcmp(ps, "always")) *prepend = PREPEND_ALWAYS;
        else return capmoe_set_error(err, "Metaspace: unknown prepend_scheme \"%s\"", ps);
    }
    if (!capmoe__tok_json_bool(json, "add_prefix_space", 1)) *prepend = PREPEND_NEVER;
    *split = capmoe__tok_json_bool(json, "split", 1);
    return 0;
}

#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

int capmoe__tok_pretok_parse(capmoe__tok_pretok **out, const cJSON *json, capmoe_error *err) {
    *out = NULL;
    if (!json || cJSON_IsNull(json)) return 0;
    const char *type = capmoe__tok_json_str(json, "type");
    if (!type) return capmoe_set_error(err, "pre_tokenizer: missing \"type\"");
    capmoe__tok_pretok *pt = calloc(1, sizeof *pt);
    if (!pt) return capmoe_set_error(err, "pre_tokenizer: out of memory");
    if (!strcmp(type, "Sequence")) {
        pt->type = PT_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(json, "pretokenizers");
        if (!cJSON_IsArray(list)) {
            capmoe_set_error(err, "pre_tokenizer Sequence: missing \"pretokenizers\" array");
            goto fail;
        }
        int n = cJSON_GetArraySize(list);
        pt->sub = calloc((size_t)(n ? n : 1), sizeof *pt->sub);
        if (!pt->sub) goto oom;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            if (capmoe__tok_pretok_parse(&pt->sub[pt->n_sub], it, err)) goto fail;
            if (pt->sub[pt->n_sub]) pt->n_sub++;
        }
    } else if (!strcmp(type, "Split")) {
        pt->type = PT_SPLIT;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(json, "pattern");
        if (!cJSON_IsObject(pat)) {
            capmoe_set_error(err, "pre_tokenizer Split: missing \"pattern\"");
            goto fail;
        }
        if (!(pt->re = parse_pattern(pat, "pre_tokenizer Split", err))) goto fail;
        if (parse_behavior(json, "pre_tokenizer Split", SB_ISOLATED, &pt->behavior, err)) goto fail;
        pt->invert = capmoe__tok_json_bool(json, "invert", 0);
    } else if (!strcmp(type, "ByteLevel")) {
        pt->type = PT_BYTELEVEL;
        pt->add_prefix_space = capmoe__tok_json_bool(json, "add_prefix_space", 1);
        if (capmoe__tok_json_bool(json, "use_regex", 1) &&
            !(pt->re = capmoe__tok_regex_compile(GPT2_REGEX, strlen(GPT2_REGEX), 0,
                                                 "pre_tokenizer ByteLevel", err)))
            goto fail;
    } else if (!strcmp(type, "Metaspace")) {
        pt->type = PT_METASPACE;
        int prepend;
        if (capmoe__tok_metaspace_fields(json, &pt->ch, pt->ch_utf8, &pt->ch_len, &prepend,
                                         &pt->split, err))
            goto fail;
        pt->prepend = (enum prepend_scheme)prepend;
    } else if (!strcmp(type, "Digits")) {
        pt->type = PT_DIGITS;
        pt->individual = capmoe__tok_json_bool(json, "individual_digits", 0);
    } else if (!strcmp(type, "Whitespace")) {
        pt->type = PT_WHITESPACE;
        static const char ws_re[] = "\\w+|[^\\w\\s]+";
        if (!(pt->re = capmoe__tok_regex_compile(ws_re, strlen(ws_re), 0, "pre_tokenizer Whitespace",
                                                 err)))
            goto fail;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        pt->type = PT_WHITESPACE_SPLIT;
    } else if (!strcmp(type, "Punctuation")) {
        pt->type = PT_PUNCTUATION;
        if (parse_behavior(json, "pre_tokenizer Punctuation", SB_ISOLATED, &pt->behavior, err))
            goto fail;
    } else if (!strcmp(type, "CharDelimiterSplit")) {
        pt->type = PT_CHAR_DELIM;
        if (parse_char(pt, json, "delimiter", "pre_tokenizer CharDelimiterSplit", err)) goto fail;
    } else {
        capmoe_set_error(err, "pre_tokenizer type \"%s\" is not supported", type);
        goto fail;
    }
    *out = pt;
    return 0;
oom:
    capmoe_set_error(err, "pre_tokenizer: out of memory");
fail:
    capmoe__tok_pretok_free(pt);
    return -1;
}

/* Segments from a character predicate: every matching character is its own
 * match (HF's Pattern for Fn(char) -> bool). */
typedef int (*char_pred)(uint32_t cp, const capmoe__tok_pretok *pt);

static int pred_numeric(uint32_t cp, const capmoe__tok_pretok *pt) {
    (void)pt;
    return capmoe__tok_is_numeric(cp);
}
static int pred_space(uint32_t cp, const capmoe__tok_pretok *pt) {
    (void)pt;
    return capmoe__tok_is_whitespace(cp);
}
static int pred_char(uint32_t cp, const capmoe__tok_pretok *pt) { return cp == pt->ch; }
static int pred_punct(uint32_t cp, const capmoe__tok_pretok *pt) {
    (void)pt;
    if (cp < 0x80)
        return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
               (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

static int pred_spans(const char *s, size_t n, char_pred pred, const capmoe__tok_pretok *pt,
                      capmoe__tok_span **out, int *n_out) {
    int cap = 16, cnt = 0;
    capmoe__tok_span *v = malloc((size_t)cap * sizeof *v);
    if (!v) return -1;
    size_t last = 0;
    if (n == 0) {
        v[cnt++] = (capmoe__tok_span){0, 0, 0};
    }
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t cp = capmoe__tok_utf8_next(s + i, n - i, &l);
        if (pred(cp, pt)) {
            if (cnt + 2 > cap) {
                cap *= 2;
                capmoe__tok_span *p = realloc(v, (size_t)cap * sizeof *p);
                if (!p) { free(v); return -1; }
                v = p;
            }
            if (last < i) v[cnt++] = (capmoe__tok_span){last, i, 0};
            v[cnt++] = (capmoe__tok_span){i, i + (size_t)l, 1};
            last = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (n > last) {
        if (cnt + 1 > cap) {
            capmoe__tok_span *p = realloc(v, (size_t)(cap + 1) * sizeof *p);
            if (!p) { free(v); return -1; }
            v = p;
        }
        v[cnt++] = (capmoe__tok_span){last, n, 0};
    }
    *out = v;
    *n_out = cnt;
    return 0;
}

/* Applies a split behavior to the segments of one piece and appends the
 * non-empty results to out (HF NormalizedString::split). */
static int split_piece(const char *s, int flag, capmoe__tok_span *sp, int ns,
                       enum split_behavior bh, capmoe__tok_list *out) {
    /* acc[i]: (start, end, removed) */
    capmoe__tok_span *acc = malloc((size_t)(ns ? ns : 1) * sizeof *acc);
    if (!acc) return -1;
    int na = 0, prev_match = 0;
    switch (bh) {
    case SB_ISOLATED:
    case SB_REMOVED:
        for (int i = 0; i < ns; i++) {
            acc[na] = sp[i];
            acc[na].is_match = bh == SB_REMOVED ? sp[i].is_match : 0;
            na++;
        }
        break;
    case SB_CONTIGUOUS:
        for (int i = 0; i < ns; i++) {
            if (sp[i].is_match == prev_match && na > 0) acc[na - 1].end = sp[i].end;
            else acc[na++] = (capmoe__tok_span){sp[i].start, sp[i].end, 0};
            prev_match = sp[i].is_match;
        }
        break;
    case SB_MERGED_PREV:
        for (int i = 0; i < ns; i++) {
            if (sp[i].is_match && !prev_match && na > 0) acc[na - 1].end = sp[i].end;
            else acc[na++] = (capmoe__tok_span){sp[i].start, sp[i].end, 0};
            prev_match = sp[i].is_match;
        }
        break;
    case SB_MERGED_NEXT:
        for (int i = ns - 1; i >= 0; i--) {
            if (sp[i].is_match && !prev_match && na > 0) acc[na - 1].start = sp[i].start;
            else acc[na++] = (capmoe__tok_span){sp[i].start, sp[i].end, 0};
            prev_match = sp[i].is_match;
        }
        for (int i = 0; i < na / 2; i++) {
            capmoe__tok_span t = acc[i];
            acc[i] = acc[na - 1 - i];
            acc[na - 1 - i] = t;
        }
        break;
    }
    int rc = 0;
    for (int i = 0; i < na && !rc; i++) {
        if (acc[i].is_match || acc[i].end == acc[i].start) continue;
        int f = (flag & CAPMOE__PIECE_ORIGIN) && acc[i].start == 0 ? CAPMOE__PIECE_ORIGIN : 0;
        rc = capmoe__tok_list_add(out, s + acc[i].start, acc[i].end - acc[i].start, f);
    }
    free(acc);
    return rc;
}

/* Splits every piece of in by regex re (or a char predicate) into out. */
static int split_regex(const capmoe__tok_list *in, const pcre2_code *re, char_pred pred,
                       const capmoe__tok_pretok *pt, int invert, enum split_behavior bh,
                       capmoe__tok_list *out, capmoe_error *err) {
    for (int i = 0; i < in->n; i++) {
        const char *s = CAPMOE__PIECE(in, i);
        capmoe__tok_span *sp;
        int ns;
        if (re) {
            if (capmoe__tok_find_matches(re, s, in->len[i], &sp, &ns, err)) return -1;
        } else if (pred_spans(s, in->len[i], pred, pt, &sp, &ns)) {
            return capmoe_set_error(err, "pre_tokenizer: out of memory");
        }
        if (invert)
            for (int k = 0; k < ns; k++) sp[k].is_match = !sp[k].is_match;
        int rc = split_piece(s, in->flag[i], sp, ns, bh, out);
        free(sp);
        if (rc) return capmoe_set_error(err, "pre_tokenizer: out of memory");
    }
    return 0;
}

static int pretok_one(const capmoe__tok_pretok *pt, capmoe__tok_list *pieces, capmoe_error *err) {
    capmoe__tok_list out = {0};
    int rc = 0;
    switch (pt->type) {
    case PT_SEQUENCE:
        for (int i = 0; i < pt->n_sub; i++)
            if (pretok_one(pt->sub[i], pieces, err)) return -1;
        return 0;
    case PT_SPLIT:
        rc = split_regex(pieces, pt->re, NULL, pt, pt->invert, pt->behavior, &out, err);
        break;
    case PT_WHITESPACE:
        rc = split_regex(pieces, pt->re, NULL, pt, 1, SB_REMOVED, &out, err);
        break;
    case PT_WHITESPACE_SPLIT:
        rc = split_regex(pieces, NULL, pred_space, pt, 0, SB_REMOVED, &out, err);
        break;
    case PT_CHAR_DELIM:
        rc = split_regex(pieces, NULL, pred_char, pt, 0, SB_REMOVED, &out, err);
        break;
    case PT_PUNCTUATION:
        rc = split_regex(pieces, NULL, pred_punct, pt, 0, pt->behavior, &out, err);
        break;
    case PT_DIGITS:
        rc = split_regex(pieces, NULL, pred_numeric, pt, 0,
                         pt->individual ? SB_ISOLATED : SB_CONTIGUOUS, &out, err);
        break;
    case PT_METASPACE: {
        capmoe__tok_list mid = {0};
        for (int i = 0; i < pieces->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(pieces, i);
            size_t n = pieces->len[i];
            int starts = n >= (size_t)pt->ch_len && memcmp(s, pt->ch_utf8, (size_t)pt->ch_len) == 0;
            if (n > 0 && s[0] == ' ') starts = 1; /* the space becomes the replacement */
            int add = !starts && (pt->prepend == PREPEND_ALWAYS ||
                                  (pt->prepend == PREPEND_FIRST &&
                                   (pieces->flag[i] & CAPMOE__PIECE_ORIGIN)));
            rc = capmoe__tok_list_begin(&mid, pieces->flag[i]);
            if (!rc && add) rc = capmoe__tok_buf_put(&mid.data, pt->ch_utf8, (size_t)pt->ch_len);
            for (size_t k = 0; k < n && !rc; k++)
                rc = s[k] == ' ' ? capmoe__tok_buf_put(&mid.data, pt->ch_utf8, (size_t)pt->ch_len)
                                 : capmoe__tok_buf_putc(&mid.data, s[k]);
            if (!rc) capmoe__tok_list_end(&mid);
        }
        if (rc) {
            capmoe__tok_list_free(&mid);
            capmoe_set_error(err, "pre_tokenizer: out of memory");
            break;
        }
        if (pt->split) {
            rc = split_regex(&mid, NULL, pred_char, pt, 0, SB_MERGED_NEXT, &out, err);
            capmoe__tok_list_free(&mid);
        } else {
            out = mid;
        }
        break;
    }
    case PT_BYTELEVEL: {
        capmoe__tok_list mid = {0};
        const capmoe__tok_list *src = pieces;
        if (pt->add_prefix_space) {
            for (int i = 0; i < pieces->n && !rc; i++) {
                const char *s = CAPMOE__PIECE(pieces, i);
                rc = capmoe__tok_list_begin(&mid, pieces->flag[i]);
                if (!rc && (pieces->len[i] == 0 || s[0] != ' '))
                    rc = capmoe__tok_buf_putc(&mid.data, ' ');
                if (!rc) rc = capmoe__tok_buf_put(&mid.data, s, pieces->len[i]);
                if (!rc) capmoe__tok_list_end(&mid);
            }
            if (rc) {
                capmoe__tok_list_free(&mid);
                capmoe_set_error(err, "pre_tokenizer: out of memory");
                break;
            }
            src = &mid;
        }
        capmoe__tok_list split = {0};
        if (pt->re) {
            rc = split_regex(src, pt->re, NULL, pt, 0, SB_ISOLATED, &split, err);
            src = &split;
        }
        for (int i = 0; i < src->n && !rc; i++) {
            const unsigned char *s = (const unsigned char *)CAPMOE__PIECE(src, i);
            rc = capmoe__tok_list_begin(&out, src->flag[i]);
            for (size_t k = 0; k < src->len[i] && !rc; k++)
                rc = capmoe__tok_buf_put_cp(&out.data, capmoe__tok_byte_to_cp(s[k]));
            if (!rc) capmoe__tok_list_end(&out);
            else capmoe_set_error(err, "pre_tokenizer: out of memory");
        }
        capmoe__tok_list_free(&mid);
        capmoe__tok_list_free(&split);
        break;
    }
    }
    if (rc) {
        capmoe__tok_list_free(&out);
        return -1;
    }
    capmoe__tok_list_free(pieces);
    *pieces = out;
    return 0;
}

int capmoe__tok_pretok_apply(const capmoe__tok_pretok *pt, capmoe__tok_list *pieces,
                             capmoe_error *err) {
    if (!pt) return 0;
    return pretok_one(pt, pieces, err);
}
