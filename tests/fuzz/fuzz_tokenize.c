/* fuzz_tokenize.c - encode, decode and streaming decode on real tokenizers
 * (core/tokenizer.c and its tok_*.c): the shipped default model's byte-level
 * BPE (config/model), SentencePiece-style BPE with byte fallback
 * (mixtral-tiny), Qwen-style (qwen3moe-tiny), GPT-2/OLMoE-style
 * (olmoe-tiny), DeepSeek-V3-style (deepseekv3-tiny).
 * Input: byte 0 picks the tokenizer and the mode, the rest is
 *   mode 0/1: text to encode (with / without special tokens), then decode
 *   mode 2/3: little-endian 16-bit ids to decode and stream-decode (ids past
 *             the vocabulary included: they must be refused, not read)
 * Invariants: ids in range; decoding gives valid UTF-8; for valid UTF-8
 * text, streamed pieces add up to the whole decode; on the byte-level
 * tokenizer without normalizer, decode(encode(text)) == text. */
#include "capmoe/openai.h"
#include "capmoe/tokenizer.h"
#include "fuzz.h"

#define NTOK 5
static const char *const DIRS[NTOK] = {
    "config/model", "tests/fixtures/mixtral-tiny", "tests/fixtures/qwen3moe-tiny",
    "tests/fixtures/olmoe-tiny", "tests/fixtures/deepseekv3-tiny",
};
static capmoe_tokenizer *toks[NTOK];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < NTOK; i++) {
        capmoe_error err;
        if (capmoe_tokenizer_load(&toks[i], fuzz_path(DIRS[i]), &err) != 0) {
            fprintf(stderr, "fuzz_tokenize: %s (run from the repository root)\n", err.msg);
            exit(1);
        }
    }
    return 0;
}

/* Decodes ids whole and streamed; checks UTF-8 and, when exact, equality. */
static void decode_both(const capmoe_tokenizer *tok, const int32_t *ids, int n, int skip,
                        int must_match) {
    capmoe_error err;
    char *whole = NULL;
    size_t wlen = 0;
    int rc = capmoe_tokenizer_decode(tok, ids, n, skip, &whole, &wlen, &err);
    if (rc == 0) FUZZ_CHECK(capmoe_utf8_valid(whole, wlen), "decode gave invalid UTF-8");
    capmoe_detok_stream s;
    capmoe_detok_stream_init(&s, tok, skip);
    char *acc = malloc(1);
    size_t alen = 0;
    int refused = 0;
    for (int i = 0; i < n; i++) {
        char *t = NULL;
        size_t l = 0;
        if (capmoe_detok_stream_push(&s, ids[i], &t, &l, &err) != 0) {
            refused = 1;
            continue;
        }
        FUZZ_CHECK(capmoe_utf8_valid(t, l), "stream piece is invalid UTF-8");
        acc = realloc(acc, alen + l + 1);
        memcpy(acc + alen, t, l);
        alen += l;
        free(t);
    }
    char *t = NULL;
    size_t l = 0;
    if (capmoe_detok_stream_finish(&s, &t, &l, &err) == 0) {
        acc = realloc(acc, alen + l + 1);
        memcpy(acc + alen, t, l);
        alen += l;
        free(t);
    }
    capmoe_detok_stream_free(&s);
    FUZZ_CHECK(capmoe_utf8_valid(acc, alen), "streamed text is invalid UTF-8");
    if (must_match && rc == 0 && !refused)
        FUZZ_CHECK(alen == wlen && memcmp(acc, whole, wlen) == 0,
                   "streamed %zu bytes != decoded %zu bytes", alen, wlen);
    free(acc);
    free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 16384) return 0;
    int which = data[0] % NTOK, mode = (data[0] / NTOK) % 4;
    const capmoe_tokenizer *tok = toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int nv = capmoe_tokenizer_n_vocab(tok);
    capmoe_error err;
    if (mode < 2) {
        int32_t *ids = NULL;
        int n = 0;
        if (capmoe_tokenizer_encode(tok, text, len, mode == 0, &ids, &n, &err) == 0) {
            for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d", ids[i]);
            int valid = capmoe_utf8_valid(text, len);
            decode_both(tok, ids, n, 0, valid);
            decode_both(tok, ids, n, 1, valid);
            if (which == 0 && mode == 1 && valid) {
                char *back = NULL;
                size_t blen = 0;
                FUZZ_CHECK(capmoe_tokenizer_decode(tok, ids, n, 0, &back, &blen, &err) == 0, "%s",
                           err.msg);
                FUZZ_CHECK(blen == len && memcmp(back, text, len) == 0,
                           "byte-level round trip changed the text (%zu -> %zu bytes)", len, blen);
                free(back);
            }
        }
        free(ids);
    } else {
        int n = (int)(len / 2);
        int32_t *ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
        int in_range = 1;
        for (int i = 0; i < n; i++) {
            ids[i] = (int32_t)(data[1 + 2 * i] | (data[2 + 2 * i] << 8));
            if (mode == 3) ids[i] %= nv + 2; /* mostly valid ids, a few just past the end */
            if (ids[i] >= nv) in_range = 0;
        }
        char *whole = NULL;
        size_t wlen = 0;
        int rc = capmoe_tokenizer_decode(tok, ids, n, mode == 3, &whole, &wlen, &err);
        FUZZ_CHECK(rc == 0 || !in_range, "in-range ids refused: %s", err.msg);
        free(whole);
        decode_both(tok, ids, n, mode == 3, 0);
        free(ids);
    }
    return 0;
}
