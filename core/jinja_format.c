/* jinja_format.c - Python's two string formatting languages, as templates
 * use them: str.format (fields by position, number or name, .attr and [key]
 * lookups, !r !s !a conversions, the format-spec mini-language for str,
 * int, bool and float) and printf-style % (the format filter too). A Markup
 * string escapes the plain strings formatted into it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

/* ---- str.format ----------------------------------------------------------------------------------------- */

typedef struct spec {
    uint32_t fill;
    char align;   /* 0 '<' '>' '^' '=' */
    char sign;    /* 0 '+' '-' ' ' */
    int alt, zero;
    long width;   /* -1 none */
    char group;   /* 0 ',' '_' */
    long prec;    /* -1 none */
    char type;    /* 0 or the letter */
} spec;

static void parse_spec(jj_rt *rt, const jj_node *at, const char *s, size_t n, spec *sp) {
    memset(sp, 0, sizeof *sp);
    sp->fill = ' ';
    sp->width = sp->prec = -1;
    size_t i = 0;
    if (n > 0) {
        size_t k = 0;
        uint32_t cp = jj_utf8_next(s, n, &k);
        if (k < n && strchr("<>=^", s[k])) {
            sp->fill = cp;
            sp->align = s[k];
            i = k + 1;
        } else if (strchr("<>=^", s[0])) {
            sp->align = s[0];
            i = 1;
        }
    }
    if (i < n && strchr("+- ", s[i])) sp->sign = s[i++];
    if (i < n && s[i] == 'z') i++;
    if (i < n && s[i] == '#') sp->alt = 1, i++;
    if (i < n && s[i] == '0') {
        sp->zero = 1;
        i++;
    }
    if (i < n && s[i] >= '0' && s[i] <= '9') {
        sp->width = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') sp->width = sp->width * 10 + (s[i++] - '0');
    }
    if (i < n && (s[i] == ',' || s[i] == '_')) sp->group = s[i++];
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') jj_fail(rt, at, "Format specifier missing precision");
        sp->prec = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') sp->prec = sp->prec * 10 + (s[i++] - '0');
    }
    if (i < n) sp->type = s[i++];
    if (i < n) jj_fail(rt, at, "Invalid format specifier '%.*s'", (int)n, s);
    if (sp->zero && !sp->align) {
        sp->fill = '0';
        sp->align = '=';
    }
}

static void group_digits(jj_rt *rt, jj_buf *out, const char *d, size_t n, char sep, int every) {
    for (size_t i = 0; i < n; i++) {
        if (i && (n - i) % (size_t)every == 0) jj_buf_putc(rt, out, sep);
        jj_buf_putc(rt, out, d[i]);
    }
}

/* Lays out sign + body with fill/align/width ('=' pads after the sign). */
static jj_val layout(jj_rt *rt, const spec *sp, const char *sign, const char *body, size_t bn, char dflt_align) {
    jj_buf b = {0};
    long blen = 0;
    for (size_t i = 0; i < bn; i++) blen += ((unsigned char)body[i] & 0xC0) != 0x80;
    long total = (long)strlen(sign) + blen;
    char align = sp->align ? sp->align : dflt_align;
    long padn = sp->width > total ? sp->width - total : 0;
    long left = align == '<' ? 0 : align == '^' ? padn / 2 : padn;
    if (align == '=') {
        jj_buf_puts(rt, &b, sign);
        for (long i = 0; i < padn; i++) jj_buf_putcp(rt, &b, sp->fill);
        jj_buf_put(rt, &b, body, bn);
        return jj_buf_val(rt, &b);
    }
    for (long i = 0; i < left; i++) jj_buf_putcp(rt, &b, sp->fill);
    jj_buf_puts(rt, &b, sign);
    jj_buf_put(rt, &b, body, bn);
    for (long i = 0; i < padn - left; i++) jj_buf_putcp(rt, &b, sp->fill);
    return jj_buf_val(rt, &b);
}

/* Formats a float for a format spec type (e f g % or none). */
static void fmt_float(double x, const spec *sp, char *out, size_t cap) {
    char t = sp->type;
    long prec = sp->prec;
    if (isnan(x) || isinf(x)) {
        const char *s = isnan(x) ? "nan" : "inf";
        snprintf(out, cap, "%s", (t == 'E' || t == 'F' || t == 'G') ? (isnan(x) ? "NAN" : "INF") : s);
        return;
    }
    if (t == 0 && prec < 0) {
        jj_float_repr(fabs(x), out, cap);
        return;
    }
    if (t == '%') {
        snprintf(out, cap, "%.*f%%", (int)(prec < 0 ? 6 : prec), fabs(x) * 100);
        return;
    }
    if (t == 'f' || t == 'F') {
        snprintf(out, cap, "%.*f", (int)(prec < 0 ? 6 : prec), fabs(x));
        return;
    }
    if (t == 'e' || t == 'E') {
        snprintf(out, cap, t == 'e' ? "%.*e" : "%.*E", (int)(prec < 0 ? 6 : prec), fabs(x));
        return;
    }
    /* g, G, n, or none with a precision */
    long p = prec < 0 ? 6 : prec == 0 ? 1 : prec;
    char e[64];
    snprintf(e, sizeof e, "%.*e", (int)(p - 1), fabs(x));
    int exp10 = atoi(strchr(e, 'e') + 1);
    /* no type: like g, but scientific from exp >= p - 1 and at least one decimal */
    int sci = exp10 < -4 || exp10 >= (t == 0 ? p - 1 : p);
    char buf[128];
    if (sci) {
        snprintf(buf, sizeof buf, (t == 'G') ? "%.*E" : "%.*e", (int)(p - 1), fabs(x));
        if (!sp->alt) { /* strip zeros in the mantissa */
            char *ep = strpbrk(buf, "eE"), *d = strchr(buf, '.');
            if (d && ep && d < ep) {
                char *z = ep;
                while (z > d + 1 && z[-1] == '0') z--;
                if (z == d + 1) z = d;
                memmove(z, ep, strlen(ep) + 1);
            }
        }
    } else {
        snprintf(buf, sizeof buf, "%.*f", (int)(p - 1 - exp10 > 0 ? p - 1 - exp10 : 0), fabs(x));
        if (!sp->alt && strchr(buf, '.')) {
            char *z = buf + strlen(buf);
            while (z[-1] == '0') z--;
            if (z[-1] == '.') z--;
            *z = '\0';
        }
        if (t == 0 && !strchr(buf, '.')) strncat(buf, ".0", sizeof buf - strlen(buf) - 1);
    }
    snprintf(out, cap, "%s", buf);
}

static jj_val format_value(jj_rt *rt, const jj_node *at, jj_val v, const char *s, size_t n) {
    spec sp;
    parse_spec(rt, at, s, n, &sp);
    if (v.t == JT_UNDEF) {
        if (n) jj_check_undef(rt, at, v);
        return jj_str_v(rt, "", 0);
    }
    if (v.t == JT_STR || (n == 0 && v.t != JT_INT && v.t != JT_FLOAT)) {
        if (v.t != JT_STR && n == 0) return jj_str_v(rt, jj_to_str(rt, v)->p, jj_to_str(rt, v)->n);
        if (sp.type && sp.type != 's') jj_fail(rt, at, "Unknown format code '%c' for object of type 'str'", sp.type);
        if (sp.sign) jj_fail(rt, at, "Sign not allowed in string format specifier");
        jj_str *str = v.u.s;
        size_t len = str->n;
        if (sp.prec >= 0 && sp.prec < jj_str_ncp(str)) len = jj_cp_offset(str, sp.prec);
        return layout(rt, &sp, "", str->p, len, '<');
    }
    if (v.t == JT_BOOL && n == 0) { /* str(bool); with a spec, bool formats as an int */
        jj_val t = jj_cstr(rt, v.u.i ? "True" : "False");
        return layout(rt, &sp, "", t.u.s->p, t.u.s->n, '<');
    }
    if (v.t == JT_INT || v.t == JT_BOOL) {
        int64_t i = v.u.i;
        char t = sp.type ? sp.type : 'd';
        if (strchr("eEfFgG%", t)) {
            v = jj_float((double)i);
        } else {
            if (sp.prec >= 0) jj_fail(rt, at, "Precision not allowed in integer format specifier");
            uint64_t u = i < 0 ? (uint64_t)0 - (uint64_t)i : (uint64_t)i;
            char digits[80];
            int base = t == 'b' ? 2 : t == 'o' ? 8 : (t == 'x' || t == 'X') ? 16 : 10;
            if (t == 'c') {
                char c[8];
                size_t k = jj_utf8_put(c, (uint32_t)u);
                return layout(rt, &sp, "", c, k, '<');
            }
            if (!strchr("bdoxXn", t)) jj_fail(rt, at, "Unknown format code '%c' for object of type 'int'", t);
            size_t nd = 0;
            char tmp[80];
            do {
                int d = (int)(u % (uint64_t)base);
                tmp[nd++] = (char)(d < 10 ? '0' + d : (t == 'X' ? 'A' : 'a') + d - 10);
                u /= (uint64_t)base;
            } while (u);
            for (size_t k = 0; k < nd; k++) digits[k] = tmp[nd - 1 - k];
            jj_buf body = {0};
            if (sp.group) group_digits(rt, &body, digits, nd, sp.group, base == 10 ? 3 : 4);
            else jj_buf_put(rt, &body, digits, nd);
            char sign[8] = "";
            size_t sk = 0;
            if (i < 0) sign[sk++] = '-';
            else if (sp.sign == '+') sign[sk++] = '+';
            else if (sp.sign == ' ') sign[sk++] = ' ';
            if (sp.alt && base != 10) {
                sign[sk++] = '0';
                sign[sk++] = t == 'b' ? 'b' : t == 'o' ? 'o' : t;
            }
            sign[sk] = '\0';
            return layout(rt, &sp, sign, body.p ? body.p : "", body.n, '>');
        }
    }
    if (v.t == JT_FLOAT) {
        if (sp.type && !strchr("eEfFgGn%", sp.type))
            jj_fail(rt, at, "Unknown format code '%c' for object of type 'float'", sp.type);
        char num[512];
        fmt_float(v.u.f, &sp, num, sizeof num);
        jj_buf body = {0};
        if (sp.group) {
            size_t k = 0;
            while (num[k] >= '0' && num[k] <= '9') k++;
            group_digits(rt, &body, num, k, sp.group, 3);
            jj_buf_puts(rt, &body, num + k);
        } else {
            jj_buf_puts(rt, &body, num);
        }
        const char *sign = (signbit(v.u.f) && !isnan(v.u.f)) ? "-" : sp.sign == '+' ? "+" : sp.sign == ' ' ? " " : "";
        return layout(rt, &sp, sign, body.p ? body.p : "", body.n, '>');
    }
    jj_fail(rt, at, "unsupported format string passed to %s.__format__", jj_type_name(v));
}

static jj_val ascii_repr(jj_rt *rt, jj_val v) {
    jj_buf b = {0}, o = {0};
    jj_repr_to(rt, &b, v);
    for (size_t i = 0; i < b.n;) {
        uint32_t cp = jj_utf8_next(b.p, b.n, &i);
        char e[16];
        if (cp < 0x80) jj_buf_putc(rt, &o, (char)cp);
        else {
            int k = cp < 0x100 ? snprintf(e, sizeof e, "\\x%02x", cp) : cp < 0x10000 ? snprintf(e, sizeof e, "\\u%04x", cp) : snprintf(e, sizeof e, "\\U%08x", cp);
            jj_buf_put(rt, &o, e, (size_t)k);
        }
    }
    return jj_buf_val(rt, &o);
}

/* auto_idx / manual: the field numbering, shared with the fields nested in
 * format specs ('{:{}}'.format(1, 3)). */
static jj_val str_format(jj_rt *rt, const jj_node *at, jj_val self, jj_args *a, int depth, int *auto_idx,
                         int *manual) {
    const char *p = self.u.s->p;
    size_t n = self.u.s->n, i = 0;
    jj_buf out = {0};
    if (depth > 2) jj_fail(rt, at, "Max string recursion exceeded");
    while (i < n) {
        char c = p[i];
        if (c == '}') {
            if (i + 1 < n && p[i + 1] == '}') {
                jj_buf_putc(rt, &out, '}');
                i += 2;
                continue;
            }
            jj_fail(rt, at, "Single '}' encountered in format string");
        }
        if (c != '{') {
            jj_buf_putc(rt, &out, c);
            i++;
            continue;
        }
        if (i + 1 < n && p[i + 1] == '{') {
            jj_buf_putc(rt, &out, '{');
            i += 2;
            continue;
        }
        /* a field: {name[.attr|[key]]*[!conv][:spec]} with nested {} in spec */
        size_t j = i + 1;
        int nest = 1;
        while (j < n && nest) {
            if (p[j] == '{') nest++;
            else if (p[j] == '}') nest--;
            if (nest) j++;
        }
        if (j >= n) jj_fail(rt, at, "expected '}' before end of string");
        const char *f = p + i + 1;
        size_t fn = j - i - 1;
        i = j + 1;
        size_t k = 0;
        while (k < fn && f[k] != '.' && f[k] != '[' && f[k] != '!' && f[k] != ':') k++;
        jj_val v;
        int all_digits = k > 0;
        for (size_t q = 0; q < k; q++)
            if (f[q] < '0' || f[q] > '9') all_digits = 0;
        if (k == 0) {
            if (*manual) jj_fail(rt, at, "cannot switch from manual field specification to automatic field numbering");
            (*auto_idx)++;
            if (*auto_idx > a->n_pos) jj_fail(rt, at, "Replacement index %d out of range for positional args tuple", *auto_idx - 1);
            v = a->pos[*auto_idx - 1];
        } else if (all_digits) {
            if (*auto_idx) jj_fail(rt, at, "cannot switch from automatic field numbering to manual field specification");
            *manual = 1;
            long idx = strtol(f, NULL, 10);
            if (idx >= a->n_pos) jj_fail(rt, at, "Replacement index %ld out of range for positional args tuple", idx);
            v = a->pos[idx];
        } else {
            int found = 0;
            for (int q = 0; q < a->n_kw; q++)
                if (strlen(a->kw[q]) == k && !strncmp(a->kw[q], f, k)) {
                    v = a->kwv[q];
                    found = 1;
                }
            if (!found) jj_fail(rt, at, "KeyError: '%.*s'", (int)k, f);
        }
        while (k < fn && (f[k] == '.' || f[k] == '[')) {
            if (f[k] == '.') {
                size_t e = k + 1;
                while (e < fn && f[e] != '.' && f[e] != '[' && f[e] != '!' && f[e] != ':') e++;
                char name[128];
                if (e == k + 1) jj_fail(rt, at, "Empty attribute in format string");
                snprintf(name, sizeof name, "%.*s", (int)(e - k - 1), f + k + 1);
                v = jj_getattr(rt, at, v, name);
                k = e;
            } else {
                size_t e = k + 1;
                while (e < fn && f[e] != ']') e++;
                if (e >= fn) jj_fail(rt, at, "Missing ']' in format string");
                jj_val key = jj_str_v(rt, f + k + 1, e - k - 1);
                int digits = e > k + 1;
                for (size_t q = k + 1; q < e; q++)
                    if (f[q] < '0' || f[q] > '9') digits = 0;
                if (digits) key = jj_int(strtoll(key.u.s->p, NULL, 10));
                v = jj_getitem(rt, at, v, key);
                k = e + 1;
            }
        }
        if (k < fn && f[k] == '!') {
            if (k + 1 >= fn) jj_fail(rt, at, "end of string while looking for conversion specifier");
            char conv = f[k + 1];
            if (conv == 'r') {
                jj_buf b = {0};
                jj_repr_to(rt, &b, v);
                v = jj_buf_val(rt, &b);
            } else if (conv == 's') {
                v = jj_str_v(rt, jj_to_str(rt, v)->p, jj_to_str(rt, v)->n);
            } else if (conv == 'a') {
                v = ascii_repr(rt, v);
            } else {
                jj_fail(rt, at, "Unknown conversion specifier %c", conv);
            }
            k += 2;
        }
        jj_val specv = jj_str_v(rt, "", 0);
        if (k < fn && f[k] == ':') {
            specv = jj_str_v(rt, f + k + 1, fn - k - 1);
            if (memchr(specv.u.s->p, '{', specv.u.s->n))
                specv = str_format(rt, at, specv, a, depth + 1, auto_idx, manual);
        } else if (k < fn) {
            jj_fail(rt, at, "expected ':' after conversion specifier");
        }
        v = jj_markup_arg(rt, self, v);
        jj_val r = format_value(rt, at, v, specv.u.s->p, specv.u.s->n);
        jj_buf_put(rt, &out, r.u.s->p, r.u.s->n);
    }
    jj_val r = jj_buf_val(rt, &out);
    r.markup = self.markup;
    return r;
}

/* ---- printf-style % ----------------------------------------------------------------------------------------- */

jj_val jj_percent_format(jj_rt *rt, const jj_node *at, jj_val fmt, jj_val args) {
    const char *p = fmt.u.s->p;
    size_t n = fmt.u.s->n, i = 0;
    jj_val *argv = &args;
    size_t argc = 1, next = 0;
    int mapping = args.t == JT_DICT;
    if (args.t == JT_TUPLE) {
        argv = args.u.l->v;
        argc = args.u.l->n;
    }
    jj_buf out = {0};
    int used_mapping = 0;
    while (i < n) {
        if (p[i] != '%') {
            jj_buf_putc(rt, &out, p[i++]);
            continue;
        }
        i++;
        if (i >= n) jj_fail(rt, at, "incomplete format");
        jj_val v;
        int have = 0;
        if (p[i] == '(') {
            if (!mapping) jj_fail(rt, at, "format requires a mapping");
            size_t e = i + 1;
            int depth = 1;
            while (e < n && depth) {
                if (p[e] == '(') depth++;
                else if (p[e] == ')') depth--;
                if (depth) e++;
            }
            if (e >= n) jj_fail(rt, at, "incomplete format key");
            jj_val *x = jj_dict_gets(args.u.d, p + i + 1, e - i - 1);
            if (!x) jj_fail(rt, at, "KeyError: '%.*s'", (int)(e - i - 1), p + i + 1);
            v = *x;
            have = 1;
            used_mapping = 1;
            i = e + 1;
        }
        spec sp;
        memset(&sp, 0, sizeof sp);
        sp.fill = ' ';
        sp.width = sp.prec = -1;
        int left = 0, plus = 0, space = 0, alt = 0, zero = 0;
        for (; i < n && strchr("-+ #0", p[i]); i++) {
            if (p[i] == '-') left = 1;
            else if (p[i] == '+') plus = 1;
            else if (p[i] == ' ') space = 1;
            else if (p[i] == '#') alt = 1;
            else zero = 1;
        }
        if (i < n && p[i] == '*') jj_fail(rt, at, "'*' widths in %% formatting are not supported");
        long width = -1, prec = -1;
        if (i < n && p[i] >= '0' && p[i] <= '9') {
            width = 0;
            while (i < n && p[i] >= '0' && p[i] <= '9') width = width * 10 + (p[i++] - '0');
        }
        if (i < n && p[i] == '.') {
            i++;
            prec = 0;
            while (i < n && p[i] >= '0' && p[i] <= '9') prec = prec * 10 + (p[i++] - '0');
        }
        while (i < n && strchr("hlL", p[i])) i++;
        if (i >= n) jj_fail(rt, at, "incomplete format");
        char t = p[i++];
        if (t == '%') {
            jj_buf_putc(rt, &out, '%');
            continue;
        }
        if (!have) {
            if (mapping) {
                v = args; /* the whole mapping as one value */
            } else {
                if (next >= argc) jj_fail(rt, at, "not enough arguments for format string");
                v = argv[next++];
            }
        }
        if (v.t == JT_UNDEF && t != 's' && t != 'r' && t != 'a') jj_check_undef(rt, at, v); /* int(Undefined) */
        jj_val body;
        const char *sign = "";
        switch (t) {
        case 's': body = jj_markup_arg(rt, fmt, v.t == JT_STR ? v : jj_str_v(rt, jj_to_str(rt, v)->p, jj_to_str(rt, v)->n)); break;
        case 'r': {
            jj_buf b = {0};
            jj_repr_to(rt, &b, v);
            body = jj_markup_arg(rt, fmt, jj_buf_val(rt, &b));
            break;
        }
        case 'a': body = ascii_repr(rt, v); break;
        case 'c':
            if (v.t == JT_STR && jj_str_ncp(v.u.s) == 1) body = v;
            else if (v.t == JT_INT) {
                char c[8];
                body = jj_str_v(rt, c, jj_utf8_put(c, (uint32_t)v.u.i));
            } else jj_fail(rt, at, "%%c requires int or char");
            break;
        case 'd': case 'i': case 'u': case 'o': case 'x': case 'X': {
            int64_t x;
            if (v.t == JT_INT || v.t == JT_BOOL) x = v.u.i;
            else if (v.t == JT_FLOAT) {
                if (isnan(v.u.f) || isinf(v.u.f))
                    jj_fail(rt, at, "cannot convert float %s to integer", isnan(v.u.f) ? "NaN" : "infinity");
                if (fabs(v.u.f) >= 9.2e18) jj_fail(rt, at, "integer overflow (capmoe's integers are 64-bit)");
                x = (int64_t)v.u.f;
            } else jj_fail(rt, at, "%%%c format: a%s number is required, not %s", t, t == 'd' || t == 'i' || t == 'u' ? " real" : "n integer", jj_type_name(v));
            uint64_t u = x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
            char buf[80];
            int base = t == 'o' ? 8 : (t == 'x' || t == 'X') ? 16 : 10;
            size_t nd = 0;
            char tmp[80];
            do {
                int d = (int)(u % (uint64_t)base);
                tmp[nd++] = (char)(d < 10 ? '0' + d : (t == 'X' ? 'A' : 'a') + d - 10);
                u /= (uint64_t)base;
            } while (u);
            size_t k = 0;
            if (alt && base != 10) {
                buf[k++] = '0';
                buf[k++] = t == 'o' ? 'o' : t;
            }
            for (long z = (long)nd; prec > z; z++) buf[k++] = '0';
            while (nd) buf[k++] = tmp[--nd];
            body = jj_str_v(rt, buf, k);
            sign = x < 0 ? "-" : plus ? "+" : space ? " " : "";
            break;
        }
        case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': {
            double x;
            if (v.t == JT_FLOAT) x = v.u.f;
            else if (v.t == JT_INT || v.t == JT_BOOL) x = (double)v.u.i;
            else jj_fail(rt, at, "must be real number, not %s", jj_type_name(v));
            char f[48], buf[512];
            snprintf(f, sizeof f, "%%%s.%ld%c", alt ? "#" : "", prec < 0 ? 6 : prec, t);
            snprintf(buf, sizeof buf, f, fabs(x));
            body = jj_cstr(rt, buf);
            sign = signbit(x) && !isnan(x) ? "-" : plus ? "+" : space ? " " : "";
            break;
        }
        default: jj_fail(rt, at, "unsupported format character '%c' (0x%x)", t, (unsigned)(unsigned char)t);
        }
        if (t == 's' || t == 'r' || t == 'a') {
            if (prec >= 0 && prec < jj_str_ncp(body.u.s)) body = jj_str_v(rt, body.u.s->p, jj_cp_offset(body.u.s, prec));
        }
        sp.width = width;
        sp.align = left ? '<' : (zero && t != 's' && t != 'r' && t != 'a' && t != 'c') ? '=' : '>';
        sp.fill = sp.align == '=' ? '0' : ' ';
        jj_val r = layout(rt, &sp, sign, body.u.s->p, body.u.s->n, '>');
        jj_buf_put(rt, &out, r.u.s->p, r.u.s->n);
    }
    if (!mapping && args.t == JT_TUPLE && next < argc)
        jj_fail(rt, at, "not all arguments converted during string formatting");
    if (!mapping && args.t != JT_TUPLE && next == 0)
        jj_fail(rt, at, "not all arguments converted during string formatting");
    (void)used_mapping;
    jj_val r = jj_buf_val(rt, &out);
    r.markup = fmt.markup;
    return r;
}

jj_val jj_str_format(jj_rt *rt, const jj_node *at, jj_val self, jj_args *a) {
    int auto_idx = 0, manual = 0;
    return str_format(rt, at, self, a, 0, &auto_idx, &manual);
}
