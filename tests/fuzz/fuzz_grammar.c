/* fuzz_grammar.c - JSON-schema constrained decoding (core/grammar.c): the
 * schema compiler, the recognizer fed raw text, and the token mask over the
 * shipped default model's vocabulary (config/model, 8,192 tokens).
 * Input: the schema JSON (empty: any JSON object), a NUL byte, then a
 * driver: first byte even: the rest is text fed in chunks; odd: each further
 * byte picks one of the tokens the mask allows (up to 16 steps, with the
 * budget shrinking to 0).
 * Invariants: a token the mask allows is accepted; an end token is allowed
 * once the document is complete (an empty mask before that is possible: a
 * const holding a character no token spells whole; the scheduler answers
 * it with an error); a document the recognizer calls complete parses as
 * JSON. */
#include <cjson/cJSON.h>

#include "capmoe/grammar.h"
#include "capmoe/tokenizer.h"
#include "capmoe/utf8.h"
#include "fuzz.h"

static capmoe_tokenizer *tok;
static capmoe_grammar_vocab *voc;
static uint8_t *allow;
static int n_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    capmoe_error err;
    if (capmoe_tokenizer_load(&tok, fuzz_path("config/model"), &err) != 0 ||
        capmoe_grammar_vocab_new(&voc, tok, &err) != 0) {
        fprintf(stderr, "fuzz_grammar: %s (run from the repository root)\n", err.msg);
        exit(1);
    }
    n_vocab = capmoe_grammar_vocab_size(voc);
    allow = malloc((size_t)(n_vocab + 7) / 8);
    return 0;
}

static void check_document(const char *buf, size_t n) {
    cJSON *doc = cJSON_ParseWithLength(buf, n);
    FUZZ_CHECK(doc != NULL, "a complete document does not parse: %.*s", (int)(n > 200 ? 200 : n),
               buf);
    cJSON_Delete(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 16384) return 0;
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    size_t slen = (size_t)(nul - data);
    const uint8_t *drv = nul + 1;
    size_t dlen = size - slen - 1;
    cJSON *schema = NULL;
    /* the server validates the UTF-8 of a request body before its schema
     * reaches the grammar: so does the harness */
    if (!capmoe_utf8_valid((const char *)data, slen)) return 0;
    if (slen) {
        schema = cJSON_ParseWithLength((const char *)data, slen);
        if (!schema) return 0;
    }
    capmoe_grammar *g = NULL;
    capmoe_error err;
    int rc = capmoe_grammar_compile(&g, schema, &err);
    cJSON_Delete(schema);
    if (rc != 0) {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
        return 0;
    }
    capmoe_grammar_state *st = NULL;
    if (capmoe_grammar_state_new(&st, g, &err) != 0) {
        capmoe_grammar_free(g);
        return 0;
    }
    size_t cap = dlen + 4096;
    char *buf = malloc(cap);
    size_t n = 0;
    if (dlen && !(drv[0] & 1)) {
        /* raw text in chunks of 1..8 bytes; a rejected chunk leaves the state as it was */
        size_t k = 1 + (drv[0] >> 1) % 8;
        for (size_t o = 1; o < dlen; o += k) {
            size_t m = dlen - o < k ? dlen - o : k;
            if (capmoe_grammar_feed(st, (const char *)drv + o, m) == 0) {
                memcpy(buf + n, drv + o, m);
                n += m;
            }
        }
        if (capmoe_grammar_complete(st)) check_document(buf, n);
    } else if (dlen) {
        int32_t end = capmoe_tokenizer_eos_id(tok);
        if (end < 0) end = 0;
        int steps = dlen - 1 < 16 ? (int)dlen - 1 : 16;
        for (int i = 0; i < steps; i++) {
            int left = steps - i;
            int count = capmoe_grammar_mask(st, voc, &end, 1, left, allow);
            /* empty: no token spells what the schema needs next (a rare
             * character in a const / enum); the scheduler ends the
             * generation with an error then. Never empty once complete. */
            if (count == 0) {
                FUZZ_CHECK(!capmoe_grammar_complete(st), "complete, yet no end token allowed");
                break;
            }
            int pick = drv[1 + i] % count, seen = 0;
            int32_t id = -1;
            for (int t = 0; t < n_vocab && id < 0; t++)
                if (allow[t / 8] & (1u << (t % 8)) && seen++ == pick) id = t;
            FUZZ_CHECK(id >= 0, "mask counted %d but fewer bits are set", count);
            if (id == end) {
                FUZZ_CHECK(capmoe_grammar_complete(st), "end token allowed before the end");
                break;
            }
            const char *bytes = NULL;
            int blen = capmoe_grammar_vocab_token(voc, id, &bytes);
            FUZZ_CHECK(blen >= 0, "token %d allowed but never allowed in a document", id);
            FUZZ_CHECK(capmoe_grammar_accept(st, voc, id) == 0, "allowed token %d refused", id);
            if (n + (size_t)blen > cap) {
                cap = 2 * (n + (size_t)blen);
                buf = realloc(buf, cap);
                if (!buf) abort();
            }
            memcpy(buf + n, bytes, (size_t)blen);
            n += (size_t)blen;
        }
        if (capmoe_grammar_complete(st)) check_document(buf, n);
    }
    free(buf);
    capmoe_grammar_state_free(st);
    capmoe_grammar_free(g);
    return 0;
}
