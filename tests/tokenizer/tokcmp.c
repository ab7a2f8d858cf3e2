/* tokcmp.c - compares the C tokenizer with reference token ids.
 *
 *   tokcmp DIR REF.json [--overrides FILE] [--nfc] [--sp] [--max-load-ms MS]
 *          [--max-encode-ms MS]
 *
 * DIR holds tokenizer.json (+ tokenizer_config.json); REF.json is written by
 * gen_ref.js (the JavaScript reference). For every case it checks:
 *   - encode(text, add_special=1) and (add_special=0) give the reference ids
 *     (or, for a case listed in the overrides file, the ids Hugging Face
 *     tokenizers gives where the JavaScript reference is known to differ);
 *   - decode(encode(text)) == text (== NFC(text) with --nfc; with
 *     --sp (SentencePiece-style tokenizers) cases holding special tokens or
 *     "▁" are skipped: the normalizer prepends "▁" to each stretch between
 *     special tokens and the decoder turns every "▁" into a space);
 *   - streaming decode, one id at a time, gives the same text as decode,
 *     also for random id sequences (see random_streams);
 *   - loading and encoding all cases stay under the given times.
 * Prints one summary line; exits 0 when everything matched. Built and run
 * by tests/t_tokenizer_parity.sh. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "capmoe/common.h"
#include "capmoe/tokenizer.h"

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static char *unhex(const char *h, size_t *n) {
    size_t l = strlen(h);
    char *out = malloc(l / 2 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i + 1 < l; i += 2) out[i / 2] = (char)(hexval(h[i]) * 16 + hexval(h[i + 1]));
    out[l / 2] = '\0';
    *n = l / 2;
    return out;
}

static int ids_equal(const cJSON *ref, const int32_t *ids, int n) {
    if (!cJSON_IsArray(ref) || cJSON_GetArraySize(ref) != n) return 0;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, ref) if (it->valueint != ids[i++]) return 0;
    return 1;
}

static void print_text(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n && i < 160; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    printf("\"%s", n > 160 ? "..." : "");
}

static void print_ids(const char *label, const int32_t *ids, int n, const cJSON *ref) {
    printf("    %s C  :", label);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n    %s ref:", label);
    const cJSON *it;
    cJSON_ArrayForEach(it, ref) printf(" %d", it->valueint);
    putchar('\n');
}

/* ---- random id sequences through the streaming decoder ------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static int valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate(u + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) return 0;
        i += (size_t)l;
    }
    return 1;
}

static int is_byte_tok(const char *t) {
    return t && strlen(t) == 6 && !strncmp(t, "<0x", 3) && t[5] == '>';
}

/* 300 sequences of 40 ids, mixing random ids with byte tokens, special
 * tokens and whitespace tokens; every piece the stream returns must be
 * valid UTF-8, and the pieces must add up to decode(ids) - except after
 * <0xXX> byte-fallback runs that turn invalid later, which can change text
 * already returned (HF decodes such a run to one U+FFFD per byte). */
static int random_streams(const capmoe_tokenizer *tok, int *n_exact, int *n_seq) {
    int nv = capmoe_tokenizer_n_vocab(tok), bad = 0;
    int32_t hot[600];
    int nh = 0;
    for (int id = 0; id < nv && nh < 600; id++) {
        const char *t = capmoe_tokenizer_id_to_token(tok, id);
        if (!t) continue;
        if (is_byte_tok(t) || capmoe_tokenizer_is_special(tok, id) || !strcmp(t, "\xE2\x96\x81") ||
            !strcmp(t, "\xE2\x96\x81\xE2\x96\x81") || !strcmp(t, "\xC4\xA0") || !strcmp(t, "\xC4\x8A") ||
            !strcmp(t, "\xC4\xA0\xC4\xA0") || (strlen(t) == 2 && (unsigned char)t[0] >= 0xC2))
            hot[nh++] = id;
    }
    *n_exact = *n_seq = 0;
    for (int r = 0; r < 300; r++) {
        int32_t ids[40];
        int has_byte = 0;
        for (int i = 0; i < 40; i++) {
            do {
                ids[i] = (rng() % 3 == 0 && nh) ? hot[rng() % (uint32_t)nh] : (int32_t)(rng() % (uint32_t)nv);
            } while (!capmoe_tokenizer_id_to_token(tok, ids[i]));
            has_byte |= is_byte_tok(capmoe_tokenizer_id_to_token(tok, ids[i]));
        }
        int skip = r & 1;
        capmoe_error err;
        char *full;
        size_t flen;
        if (capmoe_tokenizer_decode(tok, ids, 40, skip, &full, &flen, &err)) return -1;
        capmoe_detok_stream st;
        capmoe_detok_stream_init(&st, tok, skip);
        char acc[1 << 16];
        size_t got = 0;
        int ok = 1;
        for (int i = 0; i <= 40; i++) {
            char *piece;
            size_t pl;
            if (i < 40 ? capmoe_detok_stream_push(&st, ids[i], &piece, &pl, &err)
                       : capmoe_detok_stream_finish(&st, &piece, &pl, &err)) {
                ok = 0;
                break;
            }
            if (!valid_utf8(piece, pl)) ok = 0;
            if (got + pl < sizeof acc) memcpy(acc + got, piece, pl);
            got += pl;
            free(piece);
        }
        int exact = ok && got == flen && got < sizeof acc && !memcmp(acc, full, flen);
        if (!ok || (!exact && !has_byte)) {
            bad++;
            printf("  RANDOM STREAM %d (skip %d): %s\n", r, skip, ok ? "text differs from decode" : "invalid UTF-8 or error");
        }
        *n_exact += exact;
        (*n_seq)++;
        capmoe_detok_stream_free(&st);
        free(full);
    }
    return bad;
}

static cJSON *load_json(const char *path) {
    capmoe_error err;
    size_t n;
    char *text = capmoe_read_file(path, &n, &err);
    if (!text) {
        fprintf(stderr, "tokcmp: %s\n", err.msg);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    if (!j) fprintf(stderr, "tokcmp: %s: malformed JSON\n", path);
    return j;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *ref_path = NULL, *ovr_path = NULL, *hf_path = NULL;
    int nfc = 0, sp_lossy = 0;
    double max_load_ms = 0, max_encode_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--overrides") && i + 1 < argc) ovr_path = argv[++i];
        else if (!strcmp(argv[i], "--hf") && i + 1 < argc) hf_path = argv[++i];
        else if (!strcmp(argv[i], "--nfc")) nfc = 1;
        else if (!strcmp(argv[i], "--max-load-ms") && i + 1 < argc) max_load_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--max-encode-ms") && i + 1 < argc) max_encode_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--sp")) sp_lossy = 1;
        else if (!dir) dir = argv[i];
        else if (!ref_path) ref_path = argv[i];
        else {
            fprintf(stderr, "tokcmp: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !ref_path) {
        fprintf(stderr, "usage: tokcmp DIR REF.json [--overrides FILE] [--nfc] [--sp]\n"
                        "              [--max-load-ms MS] [--max-encode-ms MS]\n");
        return 2;
    }
    capmoe_error err;
    capmoe_tokenizer *tok;
    double t0 = capmoe_now();
    if (capmoe_tokenizer_load(&tok, dir, &err)) {
        fprintf(stderr, "tokcmp: %s\n", err.msg);
        return 1;
    }
    double t_load = capmoe_now() - t0;
    cJSON *ref = load_json(ref_path);
    cJSON *ovr_all = ovr_path ? load_json(ovr_path) : NULL;
    cJSON *hf_all = hf_path ? load_json(hf_path) : NULL;
    if (!ref || (ovr_path && !ovr_all) || (hf_path && !hf_all)) return 1;
    const char *name = cJSON_GetObjectItemCaseSensitive(ref, "name")->valuestring;
    const cJSON *ovr = cJSON_GetObjectItemCaseSensitive(ovr_all, name);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(ref, "cases");
    /* HF reference rows by hex text (a linear index is enough for ~500) */
    const cJSON *hf = cJSON_GetObjectItemCaseSensitive(hf_all, name);

    int n = 0, ok_sp = 0, ok_ns = 0, n_rt = 0, ok_rt = 0, ok_stream = 0, n_ovr = 0, shown = 0;
    int n_hf = 0, ok_hf = 0, stale = 0;
    double t_enc = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *hex = cJSON_GetObjectItemCaseSensitive(c, "hex")->valuestring;
        size_t len = 0;
        char *text = unhex(hex, &len);
        const cJSON *exp_sp = cJSON_GetObjectItemCaseSensitive(c, "ids");
        const cJSON *exp_ns = cJSON_GetObjectItemCaseSensitive(c, "ids_nospecial");
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(ovr, hex);
        if (o) {
            /* the override must still describe what the JS reference says */
            const cJSON *js = cJSON_GetObjectItemCaseSensitive(o, "js_ids");
            if (js && !cJSON_Compare(js, exp_sp, 1)) {
                printf("  case %d: stale override (JS ids changed)\n", n);
                stale++;
            }
            n_ovr++;
            exp_sp = cJSON_GetObjectItemCaseSensitive(o, "ids");
            exp_ns = cJSON_GetObjectItemCaseSensitive(o, "ids_nospecial");
        }
        n++;
        int32_t *a = NULL, *b = NULL;
        int na = 0, nb = 0, bad = 0;
        double t1 = capmoe_now();
        if (capmoe_tokenizer_encode(tok, text, len, 1, &a, &na, &err) ||
            capmoe_tokenizer_encode(tok, text, len, 0, &b, &nb, &err)) {
            printf("  case %d: encode failed: %s\n", n - 1, err.msg);
            free(a);
            free(text);
            continue;
        }
        t_enc += capmoe_now() - t1;
        int e1 = ids_equal(exp_sp, a, na), e2 = ids_equal(exp_ns, b, nb);
        ok_sp += e1;
        ok_ns += e2;
        if ((!e1 || !e2) && shown++ < 100) {
            printf("  MISMATCH case %d ", n - 1);
            print_text(text, len);
            putchar('\n');
            if (!e1) print_ids("special  ", a, na, exp_sp);
            if (!e2) print_ids("nospecial", b, nb, exp_ns);
        }
        /* Hugging Face tokenizers (Python) reference: ids and three decodes */
        const cJSON *h = NULL, *it;
        cJSON_ArrayForEach(it, hf) {
            if (!strcmp(cJSON_GetObjectItemCaseSensitive(it, "hex")->valuestring, hex)) { h = it; break; }
        }
        if (h) {
            int good = ids_equal(cJSON_GetObjectItemCaseSensitive(h, "ids"), a, na) &&
                       ids_equal(cJSON_GetObjectItemCaseSensitive(h, "ids_nospecial"), b, nb);
            const char *keys[] = {"decode", "decode_sp", "decode_sp_skip"};
            const int32_t *dv[] = {b, a, a};
            int dn[] = {nb, na, na}, dskip[] = {0, 0, 1};
            for (int k = 0; k < 3 && good; k++) {
                char *d = NULL, hk[32];
                size_t dl = 0, wl;
                const cJSON *wj = cJSON_GetObjectItemCaseSensitive(h, keys[k]);
                snprintf(hk, sizeof hk, "%s_hex", keys[k]); /* texts holding NUL */
                const cJSON *wh = cJSON_GetObjectItemCaseSensitive(h, hk);
                char *want = wh ? unhex(wh->valuestring, &wl) : NULL;
                if (!wh) {
                    want = strdup(wj ? wj->valuestring : "");
                    wl = strlen(want);
                }
                if (capmoe_tokenizer_decode(tok, dv[k], dn[k], dskip[k], &d, &dl, &err) ||
                    dl != wl || memcmp(d, want, dl)) {
                    good = 0;
                    if (shown++ < 100) {
                        printf("  HF %s case %d ", keys[k], n - 1);
                        print_text(d ? d : "", dl);
                        printf(" vs HF ");
                        print_text(want, wl);
                        putchar('\n');
                    }
                }
                free(want);
                free(d);
            }
            if (!good && shown++ < 100) printf("  HF mismatch case %d\n", n - 1);
            n_hf++;
            ok_hf += good;
        }
        /* round trip */
        int has_added = 0; /* special tokens (all added tokens of Llama/Mistral) */
        for (int i = 0; i < nb; i++) has_added |= capmoe_tokenizer_is_special(tok, b[i]);
        char *dec = NULL;
        size_t dlen = 0;
        if (capmoe_tokenizer_decode(tok, b, nb, 0, &dec, &dlen, &err)) {
            printf("  case %d: decode failed: %s\n", n - 1, err.msg);
            bad = 1;
        }
        if (!bad && !(sp_lossy && (has_added || strstr(text, "\xE2\x96\x81")))) {
            n_rt++;
            char *want = text;
            size_t wlen = len;
            utf8proc_uint8_t *norm = NULL;
            if (nfc && len > 0) {
                utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                                  &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (r >= 0) {
                    want = (char *)norm;
                    wlen = (size_t)r;
                }
            }
            if (dlen == wlen && memcmp(dec, want, wlen) == 0) ok_rt++;
            else if (shown++ < 100) {
                printf("  ROUNDTRIP case %d ", n - 1);
                print_text(text, len);
                printf(" -> ");
                print_text(dec, dlen);
                putchar('\n');
            }
            free(norm);
        }
        /* streaming, including special tokens */
        if (!bad) {
            capmoe_detok_stream st;
            capmoe_detok_stream_init(&st, tok, 0);
            char *full = NULL;
            size_t flen = 0;
            size_t cap = 64, got = 0;
            char *acc = malloc(cap);
            int sbad = capmoe_tokenizer_decode(tok, a, na, 0, &full, &flen, &err);
            for (int i = 0; i <= na && !sbad; i++) {
                char *piece;
                size_t pl;
                if (i < na ? capmoe_detok_stream_push(&st, a[i], &piece, &pl, &err)
                           : capmoe_detok_stream_finish(&st, &piece, &pl, &err)) {
                    sbad = 1;
                    break;
                }
                if (got + pl + 1 > cap) {
                    while (got + pl + 1 > cap) cap *= 2;
                    acc = realloc(acc, cap);
                }
                memcpy(acc + got, piece, pl);
                got += pl;
                free(piece);
            }
            if (!sbad && got == flen && memcmp(acc, full, flen) == 0) ok_stream++;
            else if (shown++ < 100) {
                printf("  STREAM case %d ", n - 1);
                print_text(text, len);
                printf(" streamed ");
                print_text(acc, got);
                printf(" vs ");
                print_text(full ? full : "", flen);
                putchar('\n');
            }
            capmoe_detok_stream_free(&st);
            free(acc);
            free(full);
        }
        free(dec);
        free(a);
        free(b);
        free(text);
    }
    int n_exact = 0, n_seq = 0;
    int rbad = random_streams(tok, &n_exact, &n_seq);
    printf("%s: random id streams: %d sequences, valid UTF-8 pieces%s, %d equal to decode\n", name, n_seq,
           rbad ? " FAILED" : "", n_exact);
    int slow = (max_load_ms > 0 && t_load * 1e3 > max_load_ms) ||
               (max_encode_ms > 0 && t_enc * 1e3 > max_encode_ms);
    int all = ok_sp == n && ok_ns == n && ok_rt == n_rt && ok_stream == n && !slow && n > 0 &&
              ok_hf == n_hf && (!hf_path || n_hf > 0) && !stale && rbad == 0;
    printf("%s: %d cases (%d with HF overrides): ids identical %d/%d (add_special=1), "
           "%d/%d (add_special=0); HF ids+decodes identical %d/%d; decode(encode(s))==s %d/%d; "
           "stream==decode %d/%d; "
           "load %.0f ms, encode %.0f ms -> %s\n",
           name, n, n_ovr, ok_sp, n, ok_ns, n, ok_hf, n_hf, ok_rt, n_rt, ok_stream, n, t_load * 1e3,
           t_enc * 1e3,
           all ? "OK" : slow ? "FAIL (too slow)" : "FAIL");
    cJSON_Delete(ref);
    cJSON_Delete(ovr_all);
    cJSON_Delete(hf_all);
    capmoe_tokenizer_free(tok);
    return all ? 0 : 1;
}
