/* fuzz_request.c - the request body parser of the HTTP API
 * (capmoe_api_parse_request, server/api/openai.c; with it capmoe_json_find_nul,
 * server/json.c), the translation of a /v1/responses body into a chat one
 * (capmoe_api_responses_translate, server/api/api_responses.c) and the UTF-8
 * helpers.
 * Input: byte 0 selects /v1/completions (even) or /v1/chat/completions
 * (odd), whether limits are given (bit 1), and /v1/responses (bit 2: the
 * body is translated, then parsed as a chat body); the rest is the body.
 * Invariants: success fills a request whose numbers are inside the documented
 * ranges; failure is a 400 with a message. */
#include "capmoe/json.h"
#include "api_internal.h"
#include "capmoe/openai.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    capmoe_api_kind kind = (data[0] & 1) ? CAPMOE_API_CHAT : CAPMOE_API_COMPLETIONS;
    capmoe_api_limits lim = {.context = 2048, .vocab = 32000, .max_n = 16};
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    capmoe_api_request r;
    capmoe_api_error e;
    memset(&r, 0, sizeof r);
    memset(&e, 0, sizeof e);
    char *chat_body = NULL, *instructions = NULL;
    if (data[0] & 4) {
        if (capmoe_api_responses_translate(body, len, &chat_body, &instructions, &e) != 0) {
            FUZZ_CHECK(e.status >= 400 && e.status < 600 && e.message[0], "responses error");
            return 0;
        }
        FUZZ_CHECK(chat_body != NULL, "no chat body");
        kind = CAPMOE_API_CHAT;
        body = chat_body;
        len = strlen(chat_body);
    }
    int rc = capmoe_api_parse_request(kind, body, len, (data[0] & 2) ? NULL : &lim, &r, &e);
    if (rc != 0 && chat_body) capmoe_api_responses_param(&e);
    if (rc == 0) {
        FUZZ_CHECK(r.n >= 1, "n = %d", r.n);
        FUZZ_CHECK(r.n_stop >= 0 && r.n_stop <= CAPMOE_API_MAX_STOP, "n_stop %d", r.n_stop);
        if (kind == CAPMOE_API_COMPLETIONS) {
            FUZZ_CHECK(r.n_prompts >= 1 && r.n_prompts <= CAPMOE_API_MAX_PROMPTS, "%d", r.n_prompts);
            for (int i = 0; i < r.n_prompts; i++) {
                const capmoe_api_prompt *p = &r.prompts[i];
                FUZZ_CHECK((p->text != NULL) != (p->ids != NULL), "prompt %d", i);
                if (p->text) FUZZ_CHECK(capmoe_utf8_valid(p->text, p->text_len), "prompt utf-8");
                if (p->text) FUZZ_CHECK(memchr(p->text, 0, p->text_len) == NULL, "NUL in prompt");
                if (p->ids && !(data[0] & 2))
                    for (int k = 0; k < p->n_ids; k++)
                        FUZZ_CHECK(p->ids[k] >= 0 && p->ids[k] < lim.vocab, "id %d", p->ids[k]);
            }
        } else {
            FUZZ_CHECK(r.n_messages >= 1, "%d messages", r.n_messages);
        }
        if (!(data[0] & 2)) {
            FUZZ_CHECK(r.n <= lim.max_n, "n %d", r.n);
            FUZZ_CHECK(r.max_tokens <= lim.context, "max_tokens %d", r.max_tokens);
        }
        capmoe_api_request_free(&r);
    } else {
        FUZZ_CHECK(e.status >= 400 && e.status < 600, "status %d", e.status);
        FUZZ_CHECK(e.message[0] != '\0', "empty error message");
        char *js = capmoe_api_error_json(&e, NULL);
        free(js);
    }
    /* The raw-text helpers on any bytes. */
    int valid = capmoe_utf8_valid(body, len);
    size_t c = capmoe_utf8_complete(body, len);
    FUZZ_CHECK(c <= len, "complete %zu > %zu", c, len);
    if (valid) FUZZ_CHECK(c == len, "valid text cut at %zu of %zu", c, len);
    free(chat_body);
    free(instructions);
    return 0;
}
