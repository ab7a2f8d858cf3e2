/* tok_decode.c - the "decoder" object of tokenizer.json: ByteLevel,
 * Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder and Sequence,
 * each a transformation of the list of token strings (HF decode_chain). */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

enum dec_type { DEC_SEQUENCE, DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK,
                DEC_FUSE, DEC_STRIP, DEC_BPE };

struct capmoe__tok_decoder {
    enum dec_type type;
    pcre2_code *re;        /* Replace */
    char *str;             /* Replace content / BPEDecoder suffix */
    size_t str_len;
    uint32_t ch;           /* Metaspace replacement / Strip content */
    char ch_utf8[5];
    int ch_len;
    int prepend_never;     /* Metaspace */
    int start, stop;       /* Strip */
    capmoe__tok_decoder **sub;
    int n_sub;
};

int capmoe__tok_metaspace_fields(const cJSON *json, uint32_t *ch, char *ch_utf8, int *ch_len,
                                 int *prepend, int *split, capmoe_error *err);

void capmoe__tok_decoder_free(capmoe__tok_decoder *d) {
    if (!d) return;
    for (int i = 0; i < d->n_sub; i++) capmoe__tok_decoder_free(d->sub[i]);
    free(d->sub);
    free(d->str);
    if (d->re) pcre2_code_free(d->re);
    free(d);
}

int capmoe__tok_decoder_parse(capmoe__tok_decoder **out, const cJSON *json, capmoe_error *err) {
    *out = NULL;
    if (!json || cJSON_IsNull(json)) return 0;
    const char *type = capmoe__tok_json_str(json, "type");
    if (!type) return capmoe_set_error(err, "decoder: missing \"type\"");
    capmoe__tok_decoder *d = calloc(1, sizeof *d);
    if (!d) return capmoe_set_error(err, "decoder: out of memory");
    if (!strcmp(type, "Sequence")) {
        d->type = DEC_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(json, "decoders");
        if (!cJSON_IsArray(list)) {
            capmoe_set_error(err, "decoder Sequence: missing \"decoders\" array");
            goto fail;
        }
        int n = cJSON_GetArraySize(list);
        d->sub = calloc((size_t)(n ? n : 1), sizeof *d->sub);
        if (!d->sub) goto oom;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            if (capmoe__tok_decoder_parse(&d->sub[d->n_sub], it, err)) goto fail;
            if (d->sub[d->n_sub]) d->n_sub++;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        d->type = DEC_BYTELEVEL;
    } else if (!strcmp(type, "Metaspace")) {
        d->type = DEC_METASPACE;
        int prepend, split;
        if (capmoe__tok_metaspace_fields(json, &d->ch, d->ch_utf8, &d->ch_len, &prepend, &split,
                                         err))
            goto fail;
        d->prepend_never = prepend == 0;
    } else if (!strcmp(type, "Replace")) {
        d->type = DEC_REPLACE;
        const char *c = capmoe__tok_json_str(json, "content");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(json, "pattern");
        const char *ps = capmoe__tok_json_str(pat, "String"), *pr = capmoe__tok_json_str(pat, "Regex");
        if (!c || (!ps && !pr)) {
            capmoe_set_error(err, "decoder Replace: needs \"pattern\" and \"content\"");
            goto fail;
        }
        if (!(d->str = capmoe__tok_strdup(c))) goto oom;
        d->str_len = strlen(c);
        d->re = ps ? capmoe__tok_regex_compile(ps, strlen(ps), 1, "decoder Replace", err)
                   : capmoe__tok_regex_compile(pr, strlen(pr), 0, "decoder Replace", err);
        if (!d->re) goto fail;
    } else if (!strcmp(type, "ByteFallback")) {
        d->type = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->type = DEC_FUSE;
    } else if (!strcmp(type, "Strip")) {
        d->type = DEC_STRIP;
        const char *c = capmoe__tok_json_str(json, "content");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(json, "start");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(json, "stop");
        if (!c || !*c || !cJSON_IsNumber(st) || !cJSON_IsNumber(sp) || st->valueint < 0 ||
            sp->valueint < 0) {
            capmoe_set_error(err, "decoder Strip: needs \"content\", \"start\" and \"stop\"");
            goto fail;
        }
        size_t n = strlen(c);
        if (capmoe__tok_utf8_valid_prefix(c, n) != n) {
            capmoe_set_error(err, "decoder Strip: content is not valid UTF-8");
            goto fail;
        }
        d->ch = capmoe__tok_utf8_next(c, n, &d->ch_len);
        memcpy(d->ch_utf8, c, (size_t)d->ch_len);
        d->start = st->valueint;
        d->stop = sp->valueint;
    } else if (!strcmp(type, "BPEDecoder")) {
        d->type = DEC_BPE;
        const char *s = capmoe__tok_json_str(json, "suffix");
        if (!(d->str = capmoe__tok_strdup(s ? s : "</w>"))) goto oom;
        d->str_len = strlen(d->str);
    } else {
        capmoe_set_error(err, "decoder type \"%s\" is not supported", type);
        goto fail;
    }
    *out = d;
    return 0;
oom:
    capmoe_set_error(err, "decoder: out of memory");
fail:
    capmoe__tok_decoder_free(d);
    return -1;
}

/* "<0xAB>" -> 0xAB, or -1. */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Flushes pending fallback bytes: valid UTF-8 as one string, else one
 * U+FFFD per byte (HF ByteFallback). */
static int flush_bytes(capmoe__tok_buf *bytes, capmoe__tok_list *out) {
    if (bytes->n == 0) return 0;
    int rc;
    if (capmoe__tok_utf8_valid_prefix(bytes->p, bytes->n) == bytes->n) {
        rc = capmoe__tok_list_add(out, bytes->p, bytes->n, 0);
    } else {
        rc = capmoe__tok_list_begin(out, 0);
        for (size_t k = 0; k < bytes->n && !rc; k++)
            rc = capmoe__tok_buf_put(&out->data, "\xEF\xBF\xBD", 3);
        if (!rc) capmoe__tok_list_end(out);
    }
    bytes->n = 0;
    return rc;
}

static int dec_one(const capmoe__tok_decoder *d, capmoe__tok_list *t, capmoe_error *err) {
    capmoe__tok_list out = {0};
    int rc = 0;
    switch (d->type) {
    case DEC_SEQUENCE:
        for (int i = 0; i < d->n_sub; i++)
            if (dec_one(d->sub[i], t, err)) return -1;
        return 0;
    case DEC_BYTELEVEL: {
        capmoe__tok_buf bytes = {0};
        for (int i = 0; i < t->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(t, i);
            size_t n = t->len[i], mark = bytes.n;
            int all = 1;
            for (size_t k = 0; k < n && !rc;) {
                int l;
                int b = capmoe__tok_cp_to_byte(capmoe__tok_utf8_next(s + k, n - k, &l));
                if (b < 0) { all = 0; break; }
                rc = capmoe__tok_buf_putc(&bytes, (char)b);
                k += (size_t)l;
            }
            if (!all) { /* a token outside the table keeps its own bytes */
                bytes.n = mark;
                rc = capmoe__tok_buf_put(&bytes, s, n);
            }
        }
        if (!rc) rc = capmoe__tok_list_begin(&out, 0);
        if (!rc) rc = capmoe__tok_utf8_lossy(&out.data, (const unsigned char *)bytes.p, bytes.n);
        if (!rc) capmoe__tok_list_end(&out);
        capmoe__tok_buf_free(&bytes);
        break;
    }
    case DEC_METASPACE:
        for (int i = 0; i < t->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(t, i);
            size_t n = t->len[i];
            rc = capmoe__tok_list_begin(&out, 0);
            for (size_t k = 0; k < n && !rc;) {
                int l;
                uint32_t cp = capmoe__tok_utf8_next(s + k, n - k, &l);
                if (cp == d->ch) {
                    if (!(i == 0 && !d->prepend_never)) rc = capmoe__tok_buf_putc(&out.data, ' ');
                } else {
                    rc = capmoe__tok_buf_put(&out.data, s + k, (size_t)l);
                }
                k += (size_t)l;
            }
            if (!rc) capmoe__tok_list_end(&out);
        }
        break;
    case DEC_REPLACE:
        for (int i = 0; i < t->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(t, i);
            capmoe__tok_span *sp;
            int ns;
            if (capmoe__tok_find_matches(d->re, s, t->len[i], &sp, &ns, err)) {
                capmoe__tok_list_free(&out);
                return -1;
            }
            rc = capmoe__tok_list_begin(&out, 0);
            for (int k = 0; k < ns && !rc; k++)
                rc = sp[k].is_match ? capmoe__tok_buf_put(&out.data, d->str, d->str_len)
                                    : capmoe__tok_buf_put(&out.data, s + sp[k].start,
                                                          sp[k].end - sp[k].start);
            free(sp);
            if (!rc) capmoe__tok_list_end(&out);
        }
        break;
    case DEC_BYTEFALLBACK: {
        capmoe__tok_buf bytes = {0};
        for (int i = 0; i < t->n && !rc; i++) {
            int b = byte_token(CAPMOE__PIECE(t, i), t->len[i]);
            if (b >= 0) {
                rc = capmoe__tok_buf_putc(&bytes, (char)b);
                continue;
            }
            rc = flush_bytes(&bytes, &out);
            if (!rc) rc = capmoe__tok_list_add(&out, CAPMOE__PIECE(t, i), t->len[i], 0);
        }
        if (!rc) rc = flush_bytes(&bytes, &out);
        capmoe__tok_buf_free(&bytes);
        break;
    }
    case DEC_FUSE:
        rc = capmoe__tok_list_begin(&out, 0);
        for (int i = 0; i < t->n && !rc; i++)
            rc = capmoe__tok_buf_put(&out.data, CAPMOE__PIECE(t, i), t->len[i]);
        if (!rc) capmoe__tok_list_end(&out);
        break;
    case DEC_STRIP:
        for (int i = 0; i < t->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(t, i);
            size_t a = 0, b = t->len[i];
            for (int k = 0; k < d->start && a < b; k++) {
                if (b - a < (size_t)d->ch_len || memcmp(s + a, d->ch_utf8, (size_t)d->ch_len)) break;
                a += (size_t)d->ch_len;
            }
            for (int k = 0; k < d->stop && b > a; k++) {
                if (b - a < (size_t)d->ch_len ||
                    memcmp(s + b - (size_t)d->ch_len, d->ch_utf8, (size_t)d->ch_len))
                    break;
                b -= (size_t)d->ch_len;
            }
            rc = capmoe__tok_list_add(&out, s + a, b - a, 0);
        }
        break;
    case DEC_BPE:
        for (int i = 0; i < t->n && !rc; i++) {
            const char *s = CAPMOE__PIECE(t, i);
            size_t n = t->len[i];
            const char *rep = i == t->n - 1 ? "" : " ";
            rc = capmoe__tok_list_begin(&out, 0);
            for (size_t k = 0; k < n && !rc;) {
                if (d->str_len && n - k >= d->str_len && !memcmp(s + k, d->str, d->str_len)) {
                    rc = capmoe__tok_buf_put(&out.data, rep, strlen(rep));
                    k += d->str_len;
                } else {
                    rc = capmoe__tok_buf_putc(&out.data, s[k++]);
                }
            }
            if (!rc) capmoe__tok_list_end(&out);
        }
        break;
    }
    if (rc) {
        capmoe__tok_list_free(&out);
        return capmoe_set_error(err, "decoder: out of memory");
    }
    capmoe__tok_list_free(t);
    *t = out;
    return 0;
}

int capmoe__tok_decoder_apply(const capmoe__tok_decoder *d, capmoe__tok_list *tokens,
                              capmoe_error *err) {
    if (!d) return 0;
    return dec_one(d, tokens, err);
}
