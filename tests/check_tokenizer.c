/* check_tokenizer.c - unit tests of the tokenizer (core/tokenizer.c, tok_*.c).
 *
 * Golden values come from Hugging Face tokenizers 0.23.2 (Python), recorded
 * in tests/tokenizer/unit/expected.json for:
 *   - three hand-written tokenizer.json files in tests/tokenizer/unit/
 *     (bytelevel.json: GPT-2 style byte-level BPE with Digits, NFC, Replace,
 *     added tokens with lstrip/rstrip/single_word/normalized, a Sequence
 *     post-processor; sentencepiece.json: Llama-style Prepend/Replace
 *     normalizer, byte fallback with missing byte tokens, unk, fuse_unk;
 *     metaspace.json: Metaspace pre-tokenizer and decoder, ignore_merges)
 *   - single pre-tokenizers, normalizers and decoders (components.json).
 * Plus error handling, lookups, the tokenizer_config.json loader and the
 * streaming decoder. Run from the repository root. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/tok_internal.h"
#include "capmoe/tokenizer.h"

#define UNIT "tests/tokenizer/unit/"

static cJSON *load_json(const char *path) {
    capmoe_error err;
    size_t n;
    char *t = capmoe_read_file(path, &n, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    cJSON *j = cJSON_ParseWithLength(t, n);
    free(t);
    ck_assert_msg(j != NULL, "%s: bad JSON", path);
    return j;
}

static capmoe_tokenizer *load_mini(const char *name) {
    char path[256];
    snprintf(path, sizeof path, UNIT "%s.json", name);
    capmoe_tokenizer *tok;
    capmoe_error err;
    ck_assert_msg(capmoe_tokenizer_load_file(&tok, path, &err) == 0, "%s", err.msg);
    return tok;
}

static int ids_match(const cJSON *exp, const int32_t *ids, int n) {
    if (cJSON_GetArraySize(exp) != n) return 0;
    for (int i = 0; i < n; i++)
        if (cJSON_GetArrayItem(exp, i)->valueint != ids[i]) return 0;
    return 1;
}

static void ids_str(char *buf, size_t cap, const int32_t *ids, int n) {
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && o + 12 < cap; i++) o += (size_t)snprintf(buf + o, cap - o, " %d", ids[i]);
}

/* Writes text to DIR/name. */
static void write_file(const char *dir, const char *name, const char *text) {
    char *p = capmoe_path_join(dir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

/* Loads a tokenizer.json given as a string; returns 0 or -1 with err. */
static int load_text(const char *json, capmoe_tokenizer **tok, capmoe_error *err) {
    char dir[] = "/tmp/capmoe_tokXXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    write_file(dir, "tokenizer.json", json);
    char *p = capmoe_path_join(dir, "tokenizer.json");
    int rc = capmoe_tokenizer_load_file(tok, p, err);
    unlink(p);
    free(p);
    rmdir(dir);
    return rc;
}

/* ==== components (pre-tokenizers, normalizers, decoders) =============== */

START_TEST(test_pretokenizers) {
    cJSON *exp = load_json(UNIT "expected.json");
    const cJSON *list = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "components"), "pre_tokenizers");
    int checked = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, list) {
        capmoe__tok_pretok *pt;
        capmoe_error err;
        char *cfg = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "config"));
        ck_assert_msg(capmoe__tok_pretok_parse(&pt, cJSON_GetObjectItem(c, "config"), &err) == 0,
                      "%s: %s", cfg, err.msg);
        const cJSON *in = cJSON_GetObjectItem(c, "inputs")->child;
        const cJSON *want = cJSON_GetObjectItem(c, "expected")->child;
        for (; in && want; in = in->next, want = want->next) {
            capmoe__tok_list l = {0};
            ck_assert_int_eq(capmoe__tok_list_add(&l, in->valuestring, strlen(in->valuestring),
                                                  CAPMOE__PIECE_ORIGIN), 0);
            ck_assert_msg(capmoe__tok_pretok_apply(pt, &l, &err) == 0, "%s", err.msg);
            int ok = cJSON_GetArraySize(want) == l.n;
            for (int i = 0; ok && i < l.n; i++) {
                const char *w = cJSON_GetArrayItem(want, i)->valuestring;
                ok = strlen(w) == l.len[i] && memcmp(w, CAPMOE__PIECE(&l, i), l.len[i]) == 0;
            }
            char *ws = cJSON_PrintUnformatted(want);
            ck_assert_msg(ok, "%s on \"%s\": got %d pieces (first \"%.*s\"), want %s", cfg,
                          in->valuestring, l.n, l.n ? (int)l.len[0] : 0, l.n ? CAPMOE__PIECE(&l, 0) : "",
                          ws);
            free(ws);
            capmoe__tok_list_free(&l);
            checked++;
        }
        free(cfg);
        capmoe__tok_pretok_free(pt);
    }
    ck_assert_int_gt(checked, 100);
    cJSON_Delete(exp);
}
END_TEST

START_TEST(test_normalizers) {
    cJSON *exp = load_json(UNIT "expected.json");
    const cJSON *list = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "components"), "normalizers");
    int checked = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, list) {
        capmoe__tok_norm *nm;
        capmoe_error err;
        char *cfg = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "config"));
        ck_assert_msg(capmoe__tok_norm_parse(&nm, cJSON_GetObjectItem(c, "config"), &err) == 0,
                      "%s: %s", cfg, err.msg);
        const cJSON *in = cJSON_GetObjectItem(c, "inputs")->child;
        const cJSON *want = cJSON_GetObjectItem(c, "expected")->child;
        for (; in && want; in = in->next, want = want->next) {
            capmoe__tok_buf out = {0};
            ck_assert_msg(capmoe__tok_norm_apply(nm, in->valuestring, strlen(in->valuestring), &out,
                                                 &err) == 0, "%s", err.msg);
            ck_assert_msg(out.n == strlen(want->valuestring) &&
                              memcmp(out.p, want->valuestring, out.n) == 0,
                          "%s on \"%s\": got \"%s\", want \"%s\"", cfg, in->valuestring, out.p,
                          want->valuestring);
            capmoe__tok_buf_free(&out);
            checked++;
        }
        free(cfg);
        capmoe__tok_norm_free(nm);
    }
    ck_assert_int_gt(checked, 10);
    cJSON_Delete(exp);
}
END_TEST

START_TEST(test_decoders) {
    cJSON *exp = load_json(UNIT "expected.json");
    const cJSON *list = cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "components"), "decoders");
    int checked = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, list) {
        capmoe__tok_decoder *d;
        capmoe_error err;
        char *cfg = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "config"));
        ck_assert_msg(capmoe__tok_decoder_parse(&d, cJSON_GetObjectItem(c, "config"), &err) == 0,
                      "%s: %s", cfg, err.msg);
        const cJSON *in = cJSON_GetObjectItem(c, "inputs")->child;
        const cJSON *want = cJSON_GetObjectItem(c, "expected")->child;
        for (; in && want; in = in->next, want = want->next) {
            capmoe__tok_list l = {0};
            const cJSON *t;
            cJSON_ArrayForEach(t, in) capmoe__tok_list_add(&l, t->valuestring, strlen(t->valuestring), 0);
            ck_assert_msg(capmoe__tok_decoder_apply(d, &l, &err) == 0, "%s", err.msg);
            capmoe__tok_buf out = {0};
            for (int i = 0; i < l.n; i++) capmoe__tok_buf_put(&out, CAPMOE__PIECE(&l, i), l.len[i]);
            capmoe__tok_buf_put(&out, "", 0);
            ck_assert_msg(out.n == strlen(want->valuestring) &&
                              memcmp(out.p, want->valuestring, out.n) == 0,
                          "%s: got \"%s\", want \"%s\"", cfg, out.p, want->valuestring);
            capmoe__tok_buf_free(&out);
            capmoe__tok_list_free(&l);
            checked++;
        }
        free(cfg);
        capmoe__tok_decoder_free(d);
    }
    ck_assert_int_gt(checked, 8);
    cJSON_Delete(exp);
}
END_TEST

/* ==== the hand-written tokenizers ======================================= */

START_TEST(test_mini_encode_decode) {
    cJSON *exp = load_json(UNIT "expected.json");
    const cJSON *mini = cJSON_GetObjectItem(exp, "mini");
    int checked = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, mini) {
        capmoe_tokenizer *tok = load_mini(m->string);
        const cJSON *row;
        cJSON_ArrayForEach(row, cJSON_GetObjectItem(m, "encode")) {
            const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
            capmoe_error err;
            int32_t *a, *b;
            int na, nb;
            char got[4096];
            ck_assert_msg(capmoe_tokenizer_encode(tok, text, strlen(text), 1, &a, &na, &err) == 0,
                          "%s", err.msg);
            ck_assert_msg(capmoe_tokenizer_encode(tok, text, strlen(text), 0, &b, &nb, &err) == 0,
                          "%s", err.msg);
            ids_str(got, sizeof got, a, na);
            ck_assert_msg(ids_match(cJSON_GetObjectItem(row, "ids"), a, na), "%s \"%s\": got%s",
                          m->string, text, got);
            ids_str(got, sizeof got, b, nb);
            ck_assert_msg(ids_match(cJSON_GetObjectItem(row, "ids_nospecial"), b, nb),
                          "%s \"%s\" (no special): got%s", m->string, text, got);
            char *d;
            size_t dl;
            ck_assert_int_eq(capmoe_tokenizer_decode(tok, b, nb, 0, &d, &dl, &err), 0);
            const char *want = cJSON_GetObjectItem(row, "decode")->valuestring;
            ck_assert_msg(dl == strlen(want) && !memcmp(d, want, dl), "%s decode \"%s\": \"%s\" vs \"%s\"",
                          m->string, text, d, want);
            free(d);
            ck_assert_int_eq(capmoe_tokenizer_decode(tok, a, na, 1, &d, &dl, &err), 0);
            want = cJSON_GetObjectItem(row, "decode_sp_skip")->valuestring;
            ck_assert_msg(dl == strlen(want) && !memcmp(d, want, dl),
                          "%s decode(skip special) \"%s\": \"%s\" vs \"%s\"", m->string, text, d, want);
            free(d);
            free(a);
            free(b);
            checked++;
        }
        cJSON_ArrayForEach(row, cJSON_GetObjectItem(m, "decode")) {
            const cJSON *idl = cJSON_GetObjectItem(row, "ids");
            int n = cJSON_GetArraySize(idl);
            int32_t ids[32];
            for (int i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(idl, i)->valueint;
            for (int skip = 0; skip < 2; skip++) {
                char *d;
                size_t dl;
                capmoe_error err;
                ck_assert_msg(capmoe_tokenizer_decode(tok, ids, n, skip, &d, &dl, &err) == 0, "%s", err.msg);
                const char *want = cJSON_GetObjectItem(row, skip ? "decode_skip" : "decode")->valuestring;
                char *toks = cJSON_PrintUnformatted(cJSON_GetObjectItem(row, "tokens"));
                ck_assert_msg(dl == strlen(want) && !memcmp(d, want, dl),
                              "%s decode %s (skip %d): \"%s\" vs \"%s\"", m->string, toks, skip, d, want);
                free(toks);
                free(d);
            }
            checked++;
        }
        capmoe_tokenizer_free(tok);
    }
    ck_assert_int_gt(checked, 50);
    cJSON_Delete(exp);
}
END_TEST

START_TEST(test_lookups) {
    capmoe_tokenizer *tok = load_mini("bytelevel");
    ck_assert_int_eq(capmoe_tokenizer_n_vocab(tok), 290);
    ck_assert_int_eq(capmoe_tokenizer_token_to_id(tok, "<mask>"), 286);
    ck_assert_int_ge(capmoe_tokenizer_token_to_id(tok, "hello"), 256);
    ck_assert_int_eq(capmoe_tokenizer_token_to_id(tok, "no such token"), -1);
    ck_assert_str_eq(capmoe_tokenizer_id_to_token(tok, 284), "<bos>");
    ck_assert_str_eq(capmoe_tokenizer_id_to_token(tok, 'a'), "a");
    ck_assert_ptr_null(capmoe_tokenizer_id_to_token(tok, 290));
    ck_assert_ptr_null(capmoe_tokenizer_id_to_token(tok, -1));
    /* a "normalized" added token: found by its content, shown normalized
     * (HF: token_to_id("cafe\u0301!") = 288, id_to_token(288) = "caf\u00e9!") */
    ck_assert_int_eq(capmoe_tokenizer_token_to_id(tok, "cafe\xCC\x81!"), 288);
    ck_assert_int_eq(capmoe_tokenizer_token_to_id(tok, "caf\xC3\xA9!"), -1);
    ck_assert_str_eq(capmoe_tokenizer_id_to_token(tok, 288), "caf\xC3\xA9!");
    ck_assert_int_eq(capmoe_tokenizer_is_special(tok, 284), 1);
    ck_assert_int_eq(capmoe_tokenizer_is_special(tok, 286), 0);
    ck_assert_int_eq(capmoe_tokenizer_is_special(tok, 5), 0);
    ck_assert_int_eq(capmoe_tokenizer_bos_id(tok), 284); /* from the TemplateProcessing */
    ck_assert_int_eq(capmoe_tokenizer_eos_id(tok), 285);
    ck_assert_ptr_null(capmoe_tokenizer_chat_template(tok));
    capmoe_tokenizer_free(tok);
    tok = load_mini("sentencepiece");
    ck_assert_int_eq(capmoe_tokenizer_bos_id(tok), 1);
    ck_assert_int_eq(capmoe_tokenizer_eos_id(tok), -1); /* no template suffix, no config */
    capmoe_tokenizer_free(tok);
}
END_TEST

/* ==== streaming ========================================================== */

static void push_expect(capmoe_detok_stream *s, int32_t id, const char *want) {
    char *t;
    size_t n;
    capmoe_error err;
    ck_assert_msg(capmoe_detok_stream_push(s, id, &t, &n, &err) == 0, "%s", err.msg);
    ck_assert_msg(n == strlen(want) && !memcmp(t, want, n), "push %d: got \"%s\", want \"%s\"", id, t, want);
    free(t);
}

static void finish_expect(capmoe_detok_stream *s, const char *want) {
    char *t;
    size_t n;
    capmoe_error err;
    ck_assert_msg(capmoe_detok_stream_finish(s, &t, &n, &err) == 0, "%s", err.msg);
    ck_assert_msg(n == strlen(want) && !memcmp(t, want, n), "finish: got \"%s\", want \"%s\"", t, want);
    free(t);
}

START_TEST(test_stream_emoji_bytes) {
    /* byte-level: U+1F600 = F0 9F 98 80, one byte token each */
    capmoe_tokenizer *tok = load_mini("bytelevel");
    capmoe_detok_stream s;
    capmoe_detok_stream_init(&s, tok, 0);
    int hello = capmoe_tokenizer_token_to_id(tok, "hello");
    push_expect(&s, hello, "hello");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC3\xB0"), ""); /* 'ð' = byte F0 */
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC5\x81"), ""); /* byte 9F */
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC4\xBA"), ""); /* byte 98 */
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC4\xA2"), "\xF0\x9F\x98\x80");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC4\xA0world"), " world");
    push_expect(&s, 285, "<eos>");
    finish_expect(&s, "");
    capmoe_detok_stream_free(&s);

    /* an incomplete character at the end becomes U+FFFD at finish */
    capmoe_detok_stream_init(&s, tok, 1);
    push_expect(&s, 284, ""); /* special, skipped */
    push_expect(&s, 'a', "a");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xC3\xB0"), "");
    finish_expect(&s, "\xEF\xBF\xBD");
    capmoe_detok_stream_free(&s);
    capmoe_tokenizer_free(tok);

    /* SentencePiece byte fallback: U+E0001 = F3 A0 80 81 as <0xXX> tokens,
     * and the Strip decoder removing the first space only once */
    tok = load_mini("sentencepiece");
    capmoe_detok_stream_init(&s, tok, 1);
    push_expect(&s, 1, "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81hello"), "hello");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xF3>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xA0>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0x80>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0x81>"), "\xF3\xA0\x80\x81");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81world"), " world");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81"), " ");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81hello"), " hello");
    finish_expect(&s, "");
    capmoe_detok_stream_free(&s);

    /* two characters in one run of byte tokens: the run is invalid while
     * the second one is incomplete, the first one is not repeated */
    capmoe_detok_stream_init(&s, tok, 0);
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xD9>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xA1>"), "\xD9\xA1");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xD9>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0xA2>"), "\xD9\xA2");
    finish_expect(&s, "");
    capmoe_detok_stream_free(&s);

    /* a run that turns invalid after part of it was returned: HF decodes the
     * whole run to U+FFFDs; what was returned stays, and the stream goes on
     * with valid UTF-8 */
    capmoe_detok_stream_init(&s, tok, 0);
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0x41>"), "A");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "<0x80>"), "");
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81world"), "\xEF\xBF\xBD world");
    finish_expect(&s, "");
    capmoe_detok_stream_free(&s);
    capmoe_tokenizer_free(tok);
}
END_TEST

START_TEST(test_stream_equals_decode) {
    cJSON *texts = load_json(UNIT "texts.json");
    const cJSON *m;
    int checked = 0;
    cJSON_ArrayForEach(m, texts) {
        capmoe_tokenizer *tok = load_mini(m->string);
        const cJSON *t;
        cJSON_ArrayForEach(t, m) {
            for (int skip = 0; skip < 2; skip++) {
                int32_t *ids;
                int n;
                capmoe_error err;
                ck_assert_int_eq(capmoe_tokenizer_encode(tok, t->valuestring, strlen(t->valuestring),
                                                         1, &ids, &n, &err), 0);
                char *full;
                size_t fl;
                ck_assert_int_eq(capmoe_tokenizer_decode(tok, ids, n, skip, &full, &fl, &err), 0);
                capmoe_detok_stream s;
                capmoe_detok_stream_init(&s, tok, skip);
                capmoe__tok_buf acc = {0};
                for (int i = 0; i <= n; i++) {
                    char *p;
                    size_t pl;
                    int rc = i < n ? capmoe_detok_stream_push(&s, ids[i], &p, &pl, &err)
                                   : capmoe_detok_stream_finish(&s, &p, &pl, &err);
                    ck_assert_msg(rc == 0, "%s", err.msg);
                    capmoe__tok_buf_put(&acc, p, pl);
                    free(p);
                }
                capmoe__tok_buf_put(&acc, "", 0);
                ck_assert_msg(acc.n == fl && !memcmp(acc.p, full, fl), "%s \"%s\": streamed \"%s\" vs \"%s\"",
                              m->string, t->valuestring, acc.p, full);
                capmoe__tok_buf_free(&acc);
                capmoe_detok_stream_free(&s);
                free(full);
                free(ids);
                checked++;
            }
        }
        capmoe_tokenizer_free(tok);
    }
    ck_assert_int_gt(checked, 40);
    cJSON_Delete(texts);
}
END_TEST

/* ==== errors ============================================================= */

START_TEST(test_decode_bad_ids) {
    capmoe_tokenizer *tok = load_mini("sentencepiece");
    capmoe_error err;
    char *t = (char *)1;
    size_t n;
    int32_t ids[] = {1, 5, 99999};
    ck_assert_int_eq(capmoe_tokenizer_decode(tok, ids, 3, 0, &t, &n, &err), -1);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, "99999") && strstr(err.msg, "out of range"), "%s", err.msg);
    int32_t neg[] = {-3};
    ck_assert_int_eq(capmoe_tokenizer_decode(tok, neg, 1, 0, &t, &n, &err), -1);
    ck_assert_msg(strstr(err.msg, "-3"), "%s", err.msg);

    capmoe_detok_stream s;
    capmoe_detok_stream_init(&s, tok, 0);
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81hello"), "hello");
    ck_assert_int_eq(capmoe_detok_stream_push(&s, 123456, &t, &n, &err), -1);
    ck_assert_msg(strstr(err.msg, "123456"), "%s", err.msg);
    push_expect(&s, capmoe_tokenizer_token_to_id(tok, "\xE2\x96\x81world"), " world");
    capmoe_detok_stream_free(&s);
    capmoe_tokenizer_free(tok);
}
END_TEST

START_TEST(test_encode_invalid_utf8) {
    capmoe_tokenizer *tok = load_mini("bytelevel");
    capmoe_error err;
    int32_t *ids = (int32_t *)1;
    int n = 7;
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, "ab\xFF", 3, 1, &ids, &n, &err), -1);
    ck_assert_ptr_null(ids);
    ck_assert_int_eq(n, 0);
    ck_assert_msg(strstr(err.msg, "UTF-8") && strstr(err.msg, "offset 2"), "%s", err.msg);
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, "\xE2\x82", 2, 0, &ids, &n, &err), -1);
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, "\xED\xA0\x80", 3, 0, &ids, &n, &err), -1); /* surrogate */
    /* NUL is a valid character */
    ck_assert_int_eq(capmoe_tokenizer_encode(tok, "a\0b", 3, 0, &ids, &n, &err), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[1], capmoe_tokenizer_token_to_id(tok, "\xC4\x80")); /* byte 0 -> U+0100 */
    free(ids);
    capmoe_tokenizer_free(tok);
}
END_TEST

static void expect_load_error(const char *json, const char *needle) {
    capmoe_tokenizer *tok = (capmoe_tokenizer *)1;
    capmoe_error err;
    err.msg[0] = '\0';
    ck_assert_int_eq(load_text(json, &tok, &err), -1);
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error \"%s\" lacks \"%s\"", err.msg, needle);
}

#define MODEL(extra) "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, " extra "}"

START_TEST(test_load_errors) {
    capmoe_tokenizer *tok = (capmoe_tokenizer *)1;
    capmoe_error err;
    ck_assert_int_eq(capmoe_tokenizer_load_file(&tok, "/nonexistent/dir/tokenizer.json", &err), -1);
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err.msg, "/nonexistent/dir/tokenizer.json") && strstr(err.msg, "cannot open"),
                  "%s", err.msg);
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, "/nonexistent/dir", &err), -1);
    ck_assert_msg(strstr(err.msg, "/nonexistent/dir/tokenizer.json"), "%s", err.msg);

    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {", "malformed JSON");
    expect_load_error("[1, 2]", "not a JSON object");
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "\"WordPiece\"");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "\"Unigram\"");
    expect_load_error("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", "\"WordLevel\"");
    expect_load_error("{\"normalizer\": null}", "model");
    expect_load_error(MODEL("\"merges\": [\"a c\"]}"), "token \"c\" is not in the vocab");
    expect_load_error(MODEL("\"merges\": [[\"b\", \"a\"]]}"), "merged token \"ba\"");
    expect_load_error(MODEL("\"merges\": [\"a b c\"]}"), "merges[0]");
    expect_load_error(MODEL("\"merges\": [42]}"), "merges[0]");
    expect_load_error(MODEL("\"merges\": [], \"dropout\": 0.1}"), "dropout");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "\"a\"");
    expect_load_error(MODEL("\"merges\": []}, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}"),
                      "\"BertPreTokenizer\"");
    expect_load_error(MODEL("\"merges\": []}, \"normalizer\": {\"type\": \"Precompiled\"}"), "\"Precompiled\"");
    expect_load_error(MODEL("\"merges\": []}, \"decoder\": {\"type\": \"CTC\"}"), "\"CTC\"");
    expect_load_error(MODEL("\"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                            "{\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}"),
                      "cannot compile regex");
    expect_load_error(MODEL("\"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                            "{\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}"),
                      "\"Sideways\"");
    expect_load_error(MODEL("\"merges\": []}, \"added_tokens\": [{\"content\": \"x\"}]"), "added_tokens[0]");
    expect_load_error(MODEL("\"merges\": []}, \"post_processor\": {\"type\": \"TemplateProcessing\", "
                            "\"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}}, {\"Sequence\": "
                            "{\"id\": \"A\"}}], \"special_tokens\": {}}"),
                      "\"<s>\"");
    expect_load_error(MODEL("\"merges\": []}, \"post_processor\": {\"type\": \"RobertaProcessing\"}"),
                      "RobertaProcessing");
}
END_TEST

START_TEST(test_merge_formats) {
    capmoe_tokenizer *tok;
    capmoe_error err;
    /* legacy strings with a #version line, and the newer pairs */
    const char *j1 = MODEL("\"merges\": [\"#version: 0.2\", \"a b\"]}");
    const char *j2 = MODEL("\"merges\": [[\"a\", \"b\"]], \"ignore_merges\": false}");
    const char *js[] = {j1, j2};
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(load_text(js[k], &tok, &err) == 0, "%s", err.msg);
        int32_t *ids;
        int n;
        ck_assert_int_eq(capmoe_tokenizer_encode(tok, "abba", 4, 1, &ids, &n, &err), 0);
        ck_assert_int_eq(n, 3);
        ck_assert_int_eq(ids[0], 2);
        ck_assert_int_eq(ids[1], 1);
        ck_assert_int_eq(ids[2], 0);
        free(ids);
        /* no decoder: tokens joined by spaces, as HF */
        char *t;
        int32_t d[] = {2, 1, 0};
        ck_assert_int_eq(capmoe_tokenizer_decode(tok, d, 3, 0, &t, NULL, &err), 0);
        ck_assert_str_eq(t, "ab b a");
        free(t);
        /* a character outside the vocab and no unk token is dropped, as HF
         * (the neighbours then merge) */
        ck_assert_int_eq(capmoe_tokenizer_encode(tok, "azb", 3, 0, &ids, &n, &err), 0);
        ck_assert_int_eq(n, 1);
        ck_assert_int_eq(ids[0], 2);
        free(ids);
        capmoe_tokenizer_free(tok);
    }
}
END_TEST

START_TEST(test_load_dir_config) {
    char dir[] = "/tmp/capmoe_tokXXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    capmoe_error err;
    size_t n;
    char *tj = capmoe_read_file(UNIT "sentencepiece.json", &n, &err);
    ck_assert_ptr_nonnull(tj);
    write_file(dir, "tokenizer.json", tj);
    free(tj);
    capmoe_tokenizer *tok;
    /* no tokenizer_config.json: fine, no template */
    ck_assert_msg(capmoe_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(capmoe_tokenizer_chat_template(tok));
    ck_assert_int_eq(capmoe_tokenizer_eos_id(tok), -1);
    capmoe_tokenizer_free(tok);

    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": \"{{ bos_token }}[INST]\", \"bos_token\": \"<s>\", "
               "\"eos_token\": {\"__type\": \"AddedToken\", \"content\": \"</s>\"}}");
    ck_assert_msg(capmoe_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(capmoe_tokenizer_chat_template(tok), "{{ bos_token }}[INST]");
    ck_assert_int_eq(capmoe_tokenizer_bos_id(tok), 1);
    ck_assert_int_eq(capmoe_tokenizer_eos_id(tok), 2);
    capmoe_tokenizer_free(tok);

    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
               "{\"name\": \"default\", \"template\": \"D\"}], \"bos_token\": null}");
    ck_assert_msg(capmoe_tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(capmoe_tokenizer_chat_template(tok), "D");
    ck_assert_int_eq(capmoe_tokenizer_bos_id(tok), -1);
    capmoe_tokenizer_free(tok);

    write_file(dir, "tokenizer_config.json", "{\"chat_template\": ");
    tok = (capmoe_tokenizer *)1;
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, dir, &err), -1);
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err.msg, "tokenizer_config.json") && strstr(err.msg, "malformed"), "%s", err.msg);

    write_file(dir, "tokenizer_config.json", "{\"eos_token\": \"<nope>\"}");
    ck_assert_int_eq(capmoe_tokenizer_load(&tok, dir, &err), -1);
    ck_assert_msg(strstr(err.msg, "<nope>"), "%s", err.msg);

    char *p = capmoe_path_join(dir, "tokenizer.json");
    unlink(p);
    free(p);
    p = capmoe_path_join(dir, "tokenizer_config.json");
    unlink(p);
    free(p);
    rmdir(dir);
}
END_TEST

START_TEST(test_utf8_lossy) {
    struct { const char *in; size_t n; const char *out; } cases[] = {
        {"abc", 3, "abc"},
        {"\xE2\x82", 2, "\xEF\xBF\xBD"},                         /* truncated: one U+FFFD */
        {"\xE2\x82" "a", 3, "\xEF\xBF\xBD" "a"},
        {"\xF0\x80\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* bad 2nd byte */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},               /* overlong */
        {"\xF4\x90\x80\x80", 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD"},
        {"\x80\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe__tok_buf b = {0};
        ck_assert_int_eq(capmoe__tok_utf8_lossy(&b, (const unsigned char *)cases[i].in, cases[i].n), 0);
        capmoe__tok_buf_put(&b, "", 0);
        ck_assert_msg(b.n == strlen(cases[i].out) && !memcmp(b.p, cases[i].out, b.n), "case %zu", i);
        capmoe__tok_buf_free(&b);
    }
}
END_TEST

static Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pretokenizers);
    tcase_add_test(tc, test_normalizers);
    tcase_add_test(tc, test_decoders);
    tcase_add_test(tc, test_mini_encode_decode);
    tcase_add_test(tc, test_lookups);
    tcase_add_test(tc, test_stream_emoji_bytes);
    tcase_add_test(tc, test_stream_equals_decode);
    tcase_add_test(tc, test_decode_bad_ids);
    tcase_add_test(tc, test_encode_invalid_utf8);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_merge_formats);
    tcase_add_test(tc, test_load_dir_config);
    tcase_add_test(tc, test_utf8_lossy);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(tokenizer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
