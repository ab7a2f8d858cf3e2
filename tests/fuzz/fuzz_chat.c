/* fuzz_chat.c - chat templates applied to hostile conversations
 * (core/chat.c, chat_native.c, jinja*.c): the real templates of
 * tests/tokenizer/chat/NAME.jinja, a model's own template
 * (tests/fixtures/deepseekv3-tiny, config/model) and the built-in families.
 * Input: byte 0 picks the template and add_generation_prompt; the rest is
 * the messages JSON array, then optionally after a NUL byte the tools JSON
 * array. Invariant: a render that succeeds gives valid UTF-8 when the input
 * was valid UTF-8. */
#include "capmoe/chat.h"
#include "capmoe/openai.h"
#include "fuzz.h"

static const char *const SOURCES[][2] = {
    /* {model_dir, override} */
    {"config/model", ""},
    {"tests/fixtures/deepseekv3-tiny", ""},
    {".", "chatml"},
    {".", "qwen3"},
    {".", "mistral"},
    {".", "llama2"},
    {".", "olmoe"},
    {".", "qwen2.5"},
    {".", "tests/tokenizer/chat/chatml.jinja"},
    {".", "tests/tokenizer/chat/deepseek_v2.jinja"},
    {".", "tests/tokenizer/chat/deepseek_v3.jinja"},
    {".", "tests/tokenizer/chat/llama2.jinja"},
    {".", "tests/tokenizer/chat/mistral_v0.jinja"},
    {".", "tests/tokenizer/chat/mistral_v1.jinja"},
    {".", "tests/tokenizer/chat/olmoe.jinja"},
    {".", "tests/tokenizer/chat/qwen25.jinja"},
};
#define NSRC ((int)(sizeof SOURCES / sizeof SOURCES[0]))
static capmoe_chat *chats[NSRC];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < NSRC; i++) {
        capmoe_error err;
        char over[4096];
        const char *o = SOURCES[i][1];
        if (strchr(o, '/')) snprintf(over, sizeof over, "%s", fuzz_path(o));
        else snprintf(over, sizeof over, "%s", o);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", fuzz_path(SOURCES[i][0]));
        if (capmoe_chat_load(&chats[i], dir, over, &err) != 0) {
            fprintf(stderr, "fuzz_chat: %s %s: %s (run from the repository root)\n", dir, over,
                    err.msg);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 65536) return 0;
    const capmoe_chat *c = chats[(data[0] & 0x7f) % NSRC];
    int gen = data[0] >> 7;
    const uint8_t *body = data + 1;
    size_t blen = size - 1;
    const uint8_t *nul = memchr(body, 0, blen);
    size_t mlen = nul ? (size_t)(nul - body) : blen;
    char *msgs = fuzz_strndup(body, mlen);
    char *tools = nul ? fuzz_strndup(nul + 1, blen - mlen - 1) : NULL;
    char *prompt = NULL;
    capmoe_error err;
    if (capmoe_chat_apply(c, msgs, tools, gen, NULL, &prompt, &err) == 0) {
        FUZZ_CHECK(prompt != NULL, "no prompt");
        if (capmoe_utf8_valid((const char *)body, blen))
            FUZZ_CHECK(capmoe_utf8_valid(prompt, strlen(prompt)), "prompt is invalid UTF-8");
        free(prompt);
    } else {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
    }
    free(msgs);
    free(tools);
    return 0;
}
