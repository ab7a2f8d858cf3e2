/* fuzz_jinja.c - the Jinja interpreter of chat templates (core/jinja*.c):
 * lexer, parser, evaluator, filters, methods, value formatting.
 * Input: the template source; after the first NUL byte (if any), a JSON
 * object of template variables (default: a short conversation). Rendering
 * runs under small limits (output, memory, steps, depth).
 * Invariants: a render that succeeds returns output within the limit; a
 * failure carries a message. */
#include "capmoe/jinja.h"
#include "fuzz.h"

static const char DEFAULT_VARS[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Hi \\u00e9 {{x}}\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello\",\"tool_calls\":[{\"type\":\"function\","
    "\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1,\"b\":[1.5,null,true]}}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"}]}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\","
    "\"tools\":null,\"n\":3,\"f\":2.5,\"s\":\"abc\",\"d\":{\"k\":\"v\",\"z\":0}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 65536) return 0;
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *vars = nul ? fuzz_strndup(nul + 1, size - tlen - 1) : NULL;
    capmoe_jinja *t = NULL;
    capmoe_error err;
    if (capmoe_jinja_compile(&t, (const char *)data, tlen, "fuzz", &err) != 0) {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
        free(vars);
        return 0;
    }
    (void)capmoe_jinja_uses(t, "tools");
    capmoe_jinja_limits lim = {.max_output = 1 << 16, .max_memory = 32 << 20, .max_steps = 20000,
                               .max_depth = 20};
    capmoe_jinja_opts opts = {.limits = &lim, .now = 1700000000};
    char *out = NULL;
    size_t len = 0;
    if (capmoe_jinja_render(t, vars ? vars : DEFAULT_VARS, &opts, &out, &len, &err) == 0) {
        FUZZ_CHECK(out != NULL && len <= lim.max_output, "output %zu bytes", len);
        FUZZ_CHECK(strlen(out) <= len, "length");
        free(out);
    } else {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
    }
    capmoe_jinja_free(t);
    free(vars);
    return 0;
}
