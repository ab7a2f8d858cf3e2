/* jinja_lex.c - template text -> tokens, as Jinja2's lexer does it with the
 * environment transformers uses (trim_blocks=True, lstrip_blocks=True,
 * keep_trailing_newline=False):
 *
 *   - \r\n and \r become \n; one trailing newline of the template is dropped
 *   - {%- / {{- / {#- strip all whitespace (Unicode, as str.rstrip) before
 *     the tag; -%} / -}} / -#} strip all whitespace after it
 *   - lstrip_blocks: spaces and tabs (any whitespace but newlines) between
 *     the start of a line and {% or {# are removed, unless the tag is {%+
 *   - trim_blocks: the first newline after %} or #} is removed, unless +%}
 *   - {% raw %} ... {% endraw %} is text
 *   - inside tags: names, strings (Python escapes), integers (0b/0o/0x,
 *     underscores), floats, operators; }} and %} end the tag only outside
 *     brackets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja_internal.h"

typedef struct lexer {
    jj_parse *p;
    const char *s;   /* normalised source */
    size_t n;
    size_t lc_pos;   /* line/column cursor */
    int lc_line;
    size_t lc_start; /* offset of the current line's start */
} lexer;

static void at(lexer *L, size_t pos, int *line, int *col) {
    if (pos < L->lc_pos) { /* rewind (rare: only for messages) */
        L->lc_pos = 0;
        L->lc_line = 1;
        L->lc_start = 0;
    }
    for (; L->lc_pos < pos && L->lc_pos < L->n; L->lc_pos++)
        if (L->s[L->lc_pos] == '\n') {
            L->lc_line++;
            L->lc_start = L->lc_pos + 1;
        }
    *line = L->lc_line;
    *col = (int)(pos - L->lc_start) + 1;
}

static _Noreturn void lfail(lexer *L, size_t pos, const char *msg, const char *arg) {
    int line, col;
    at(L, pos, &line, &col);
    jj_parse_fail(L->p, line, col, msg, arg);
}

static jj_tok *push(lexer *L, int type, size_t pos) {
    jj_parse *p = L->p;
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? p->cap_toks * 2 : 256;
        jj_tok *t = realloc(p->toks, cap * sizeof *t);
        if (!t) jj_parse_fail(p, 0, 0, "out of memory");
        p->toks = t;
        p->cap_toks = cap;
    }
    jj_tok *t = &p->toks[p->n_toks++];
    memset(t, 0, sizeof *t);
    t->type = (uint8_t)type;
    at(L, pos, &t->line, &t->col);
    return t;
}

static void push_data(lexer *L, size_t pos, const char *s, size_t n) {
    if (n == 0) return;
    jj_tok *t = push(L, T_DATA, pos);
    char *c = jj_parse_alloc(L->p, n + 1);
    memcpy(c, s, n);
    c[n] = '\0';
    t->s = c;
    t->n = n;
}

/* Whitespace code point at s[i] (Python's str.isspace); *len its bytes. */
static int ws_at(const char *s, size_t n, size_t i, size_t *len) {
    size_t j = i;
    uint32_t cp = jj_utf8_next(s, n, &j);
    *len = j - i;
    return jj_py_isspace(cp);
}

/* Length of text[0..n) without trailing whitespace (str.rstrip()). */
static size_t rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t k = n - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        size_t l;
        if (!ws_at(s, n, k, &l) || k + l != n) break;
        n = k;
    }
    return n;
}

static size_t skip_ws(const char *s, size_t n, size_t i) {
    size_t l;
    while (i < n && ws_at(s, n, i, &l)) i += l;
    return i;
}

/* Applies the strip sign of a tag to the text before it; returns the kept length. */
static size_t strip_text(const char *text, size_t n, char sign, int is_var, int line_starting) {
    if (sign == '-') return rstrip_len(text, n);
    if (sign == '+' || is_var) return n;
    size_t l_pos = 0;
    for (size_t i = n; i > 0; i--)
        if (text[i - 1] == '\n') {
            l_pos = i;
            break;
        }
    if (l_pos == 0 && !line_starting) return n;
    if (l_pos == n) return n;
    size_t i = l_pos, l;
    while (i < n && ws_at(text, n, i, &l)) i += l;
    return i == n ? l_pos : n;
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

/* A character of a Python identifier at s[i] (first: a start character);
 * *len receives its bytes. */
static int ident_char(const char *s, size_t n, size_t i, int first, size_t *len) {
    unsigned char c = (unsigned char)s[i];
    *len = 1;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return 1;
    if (c < 0x80) return !first && isdig((char)c);
    size_t j = i;
    uint32_t cp = jj_utf8_next(s, n, &j);
    *len = j - i;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)cp);
    if ((k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || k == UTF8PROC_CATEGORY_NL) return 1;
    return !first && (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_MC || k == UTF8PROC_CATEGORY_ND ||
                      k == UTF8PROC_CATEGORY_PC);
}

/* (\d+_)*\d+ at i; returns the end or i when none. */
static size_t digits(const char *s, size_t n, size_t i) {
    if (i >= n || !isdig(s[i])) return i;
    size_t j = i;
    for (;;) {
        while (j < n && isdig(s[j])) j++;
        if (j + 1 < n && s[j] == '_' && isdig(s[j + 1])) {
            j++;
            continue;
        }
        return j;
    }
}

static size_t match_float(const char *s, size_t n, size_t i) {
    if (i > 0 && s[i - 1] == '.') return 0;
    size_t j = digits(s, n, i);
    if (j == i) return 0;
    size_t frac = 0;
    if (j < n && s[j] == '.') {
        size_t k = digits(s, n, j + 1);
        if (k > j + 1) frac = k;
    }
    size_t e = frac ? frac : j;
    if (e < n && (s[e] == 'e' || s[e] == 'E')) {
        size_t k = e + 1;
        if (k < n && (s[k] == '+' || s[k] == '-')) k++;
        size_t m = digits(s, n, k);
        if (m > k) return m;
    }
    return frac;
}

static int digit_ok(char c, int base) {
    if (base == 2) return c == '0' || c == '1';
    if (base == 8) return c >= '0' && c <= '7';
    if (base == 16) return isdig(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    return isdig(c);
}

/* integer_re; *base receives the base. */
static size_t match_int(const char *s, size_t n, size_t i, int *base) {
    if (i >= n || !isdig(s[i])) return 0;
    if (s[i] == '0' && i + 1 < n) {
        char x = s[i + 1];
        int b = (x == 'b' || x == 'B') ? 2 : (x == 'o' || x == 'O') ? 8 : (x == 'x' || x == 'X') ? 16 : 0;
        if (b) {
            size_t j = i + 2, end = 0;
            for (;;) {
                size_t k = j;
                if (k < n && s[k] == '_') k++;
                if (k < n && digit_ok(s[k], b)) {
                    j = k + 1;
                    end = j;
                } else {
                    break;
                }
            }
            if (end) {
                *base = b;
                return end;
            }
        }
    }
    *base = 10;
    size_t j = i + 1;
    char first = s[i];
    for (;;) {
        size_t k = j;
        if (k < n && s[k] == '_') k++;
        if (k < n && (first == '0' ? s[k] == '0' : isdig(s[k])))
            j = k + 1;
        else
            break;
    }
    return j;
}

static int hexval(char c) {
    if (isdig(c)) return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Unescapes a string literal body as Python's "unicode-escape" codec does
 * after Jinja2's encode("ascii", "backslashreplace"). */
static void lex_string(lexer *L, size_t pos, const char *b, size_t n, jj_tok *t) {
    char *o = jj_parse_alloc(L->p, n * 2 + 16), *q = o;
    for (size_t i = 0; i < n;) {
        if (b[i] != '\\') {
            *q++ = b[i++];
            continue;
        }
        if (i + 1 >= n) { /* cannot happen: the regex needs an escaped char */
            *q++ = '\\';
            i++;
            continue;
        }
        unsigned char e = (unsigned char)b[i + 1];
        if (e >= 0x80) { /* backslashreplace turned the character into \xhh / \uXXXX text */
            size_t j = i + 1;
            uint32_t cp = jj_utf8_next(b, n, &j);
            char esc[16];
            int k = cp < 0x100 ? snprintf(esc, sizeof esc, "\\x%02x", cp)
                  : cp < 0x10000 ? snprintf(esc, sizeof esc, "\\u%04x", cp)
                                 : snprintf(esc, sizeof esc, "\\U%08x", cp);
            memcpy(q, esc, (size_t)k); /* "\\" + "\x.." decodes to "\" + "x.." */
            q += k;
            i = j;
            continue;
        }
        i += 2;
        uint32_t cp;
        switch (e) {
        case '\n': continue; /* line continuation */
        case '\\': *q++ = '\\'; continue;
        case '\'': *q++ = '\''; continue;
        case '"': *q++ = '"'; continue;
        case 'a': *q++ = '\a'; continue;
        case 'b': *q++ = '\b'; continue;
        case 'f': *q++ = '\f'; continue;
        case 'n': *q++ = '\n'; continue;
        case 'r': *q++ = '\r'; continue;
        case 't': *q++ = '\t'; continue;
        case 'v': *q++ = '\v'; continue;
        case 'x':
        case 'u':
        case 'U': {
            int need = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            cp = 0;
            for (int k = 0; k < need; k++) {
                int h = i + (size_t)k < n ? hexval(b[i + (size_t)k]) : -1;
                if (h < 0)
                    lfail(L, pos, "string literal: truncated \\%s escape", e == 'x' ? "xXX" : e == 'u' ? "uXXXX" : "UXXXXXXXX");
                cp = cp * 16 + (uint32_t)h;
            }
            i += (size_t)need;
            break;
        }
        case 'N': lfail(L, pos, "string literal: \\N{...} escapes are not supported%s", "");
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i < n && b[i] >= '0' && b[i] <= '7'; k++) cp = cp * 8 + (uint32_t)(b[i++] - '0');
                break;
            }
            *q++ = '\\'; /* unknown escape: kept */
            *q++ = (char)e;
            continue;
        }
        if (cp > 0x10FFFF) lfail(L, pos, "string literal: illegal Unicode character%s", "");
        if (cp >= 0xD800 && cp <= 0xDFFF) lfail(L, pos, "string literal: a surrogate escape cannot be encoded as UTF-8%s", "");
        if (cp == 0) lfail(L, pos, "string literal: a NUL character (\\x00) is not supported%s", "");
        q += jj_utf8_put(q, cp);
    }
    *q = '\0';
    t->s = o;
    t->n = (size_t)(q - o);
}

static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char ops1[] = "+-/*%~[](){}><=.:|,;";

/* Lexes the inside of a {% %} or {{ }} tag from i; returns the position after
 * its end tag. */
static size_t lex_tag(lexer *L, size_t i, int is_var, int *line_starting) {
    const char *s = L->s;
    size_t n = L->n;
    char stack[256];
    int depth = 0;
    for (;;) {
        if (i >= n)
            lfail(L, i, "unexpected end of template: %s never closed", is_var ? "'{{'" : "'{%'");
        if (depth == 0) {
            size_t e = 0;
            if (is_var) {
                if (!strncmp(s + i, "-}}", 3)) e = skip_ws(s, n, i + 3);
                else if (!strncmp(s + i, "}}", 2)) e = i + 2;
            } else {
                if (!strncmp(s + i, "+%}", 3)) e = i + 3;
                else if (!strncmp(s + i, "-%}", 3)) e = skip_ws(s, n, i + 3);
                else if (!strncmp(s + i, "%}", 2)) e = i + 2 + (i + 2 < n && s[i + 2] == '\n');
            }
            if (e) {
                push(L, is_var ? T_VAR_END : T_BLOCK_END, i);
                *line_starting = s[e - 1] == '\n';
                return e;
            }
        }
        size_t l;
        if (ws_at(s, n, i, &l)) {
            i += l;
            continue;
        }
        size_t e;
        int base;
        if ((e = match_float(s, n, i)) > i) {
            jj_tok *t = push(L, T_FLOAT, i);
            char buf[128];
            size_t k = 0;
            for (size_t j = i; j < e && k + 1 < sizeof buf; j++)
                if (s[j] != '_') buf[k++] = s[j];
            buf[k] = '\0';
            t->f = strtod(buf, NULL);
            i = e;
            continue;
        }
        if ((e = match_int(s, n, i, &base)) > i) {
            jj_tok *t = push(L, T_INT, i);
            uint64_t v = 0;
            for (size_t j = i + (base == 10 ? 0 : 2); j < e; j++) {
                if (s[j] == '_') continue;
                uint64_t d = (uint64_t)hexval(s[j]);
                if (v > (UINT64_MAX - d) / (uint64_t)base || v * (uint64_t)base + d > (uint64_t)INT64_MAX)
                    lfail(L, i, "integer literal too large (capmoe uses 64-bit integers)%s", "");
                v = v * (uint64_t)base + d;
            }
            t->i = (int64_t)v;
            i = e;
            continue;
        }
        char c = s[i];
        if (ident_char(s, n, i, 1, &l)) {
            size_t j = i + l;
            while (j < n && ident_char(s, n, j, 0, &l)) j += l;
            jj_tok *t = push(L, T_NAME, i);
            t->s = jj_intern(L->p, s + i, j - i);
            t->n = j - i;
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) j += (s[j] == '\\' && j + 1 < n) ? 2 : 1;
            if (j >= n) lfail(L, i, "unterminated string literal%s", "");
            jj_tok *t = push(L, T_STRING, i);
            lex_string(L, i, s + i + 1, j - i - 1, t);
            i = j + 1;
            continue;
        }
        int oplen = 0;
        for (size_t k = 0; k < sizeof ops2 / sizeof ops2[0]; k++)
            if (!strncmp(s + i, ops2[k], 2)) oplen = 2;
        if (!oplen && strchr(ops1, c) && c) oplen = 1;
        if (!oplen) {
            char ch[8];
            size_t j = i;
            uint32_t cp = jj_utf8_next(s, n, &j);
            ch[jj_utf8_put(ch, cp)] = '\0';
            lfail(L, i, "unexpected character '%s' in a tag", ch);
        }
        if (oplen == 1 && (c == '(' || c == '[' || c == '{')) {
            if (depth == (int)sizeof stack) lfail(L, i, "brackets nested too deeply%s", "");
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
        } else if (oplen == 1 && (c == ')' || c == ']' || c == '}')) {
            if (depth == 0) {
                char m[2] = {c, 0};
                lfail(L, i, "unexpected '%s'", m);
            }
            if (stack[depth - 1] != c) {
                char m[16] = {c, '\'', ',', ' ', 'e', 'x', 'p', 'e', 'c', 't', 'e', 'd', ' ', '\'',
                              stack[depth - 1], 0};
                lfail(L, i, "unexpected '%s'", m);
            }
            depth--;
        }
        jj_tok *t = push(L, T_OP, i);
        memcpy(t->op, s + i, (size_t)oplen);
        i += (size_t)oplen;
    }
}

/* Finds the end of a {% endraw %} tag from i. *start receives the start of
 * the tag, *sign its strip sign; returns the position after it or 0. */
static size_t find_endraw(const char *s, size_t n, size_t i, size_t *start, char *sign) {
    for (; i + 1 < n; i++) {
        if (s[i] != '{' || s[i + 1] != '%') continue;
        size_t j = i + 2;
        char sg = 0;
        if (j < n && (s[j] == '-' || s[j] == '+')) sg = s[j++];
        j = skip_ws(s, n, j);
        if (strncmp(s + j, "endraw", 6) != 0) continue;
        j = skip_ws(s, n, j + 6);
        size_t e = 0;
        if (!strncmp(s + j, "+%}", 3)) e = j + 3;
        else if (!strncmp(s + j, "-%}", 3)) e = skip_ws(s, n, j + 3);
        else if (!strncmp(s + j, "%}", 2)) e = j + 2 + (j + 2 < n && s[j + 2] == '\n');
        if (!e) continue;
        *start = i;
        *sign = sg;
        return e;
    }
    return 0;
}

/* A {% raw %} opening tag at i ({%, sign, \s* raw \s*, -%}\s* or %}): returns its end or 0. */
static size_t match_raw(const char *s, size_t n, size_t i) {
    size_t j = i + 2;
    if (j < n && (s[j] == '-' || s[j] == '+')) j++;
    j = skip_ws(s, n, j);
    if (strncmp(s + j, "raw", 3) != 0) return 0;
    j = skip_ws(s, n, j + 3);
    if (!strncmp(s + j, "-%}", 3)) return skip_ws(s, n, j + 3);
    if (!strncmp(s + j, "%}", 2)) return j + 2;
    return 0;
}

void jj_lex(jj_parse *p, const char *src, size_t len) {
    /* newline normalisation; one trailing newline dropped */
    char *s = jj_parse_alloc(p, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n') n--;
    s[n] = '\0';
    lexer L = {p, s, n, 0, 1, 0};
    size_t pos = 0;
    int line_starting = 1;
    while (pos < n) {
        size_t i = pos;
        int kind = 0; /* '{', '%', '#' */
        for (; i + 1 < n; i++)
            if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) {
                kind = s[i + 1];
                break;
            }
        if (!kind) {
            push_data(&L, pos, s + pos, n - pos);
            break;
        }
        char sign = 0;
        if (i + 2 < n && (s[i + 2] == '-' || s[i + 2] == '+')) sign = s[i + 2];
        size_t keep = strip_text(s + pos, i - pos, sign, kind == '{', line_starting);
        push_data(&L, pos, s + pos, keep);
        size_t body = i + 2 + (sign ? 1 : 0);
        size_t raw_end = kind == '%' ? match_raw(s, n, i) : 0;
        if (raw_end) {
            size_t tag, e;
            char sg;
            if (raw_end >= n) break; /* nothing after it: Jinja2's lexer stops there quietly */
            if (!(e = find_endraw(s, n, raw_end, &tag, &sg)))
                lfail(&L, i, "missing end of raw directive ({%% endraw %%})%s", "");
            int ls = s[raw_end - 1] == '\n';
            size_t k = strip_text(s + raw_end, tag - raw_end, sg, 0, ls);
            push_data(&L, raw_end, s + raw_end, k);
            line_starting = s[e - 1] == '\n';
            pos = e;
            continue;
        }
        if (kind == '#') {
            size_t e = 0, j = body;
            for (; j + 1 < n; j++) {
                if (s[j] == '+' && !strncmp(s + j, "+#}", 3)) { e = j + 3; break; }
                if (s[j] == '-' && !strncmp(s + j, "-#}", 3)) { e = skip_ws(s, n, j + 3); break; }
                if (s[j] == '#' && s[j + 1] == '}') { e = j + 2 + (j + 2 < n && s[j + 2] == '\n'); break; }
            }
            if (!e && body >= n) break; /* nothing after it: Jinja2's lexer stops there quietly */
            if (!e) lfail(&L, i, "missing end of comment tag ('#}')%s", "");
            line_starting = s[e - 1] == '\n';
            pos = e;
            continue;
        }
        push(&L, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, i);
        pos = lex_tag(&L, body, kind == '{', &line_starting);
    }
    push(&L, T_EOF, n);
}
