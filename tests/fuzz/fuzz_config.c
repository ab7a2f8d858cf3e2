/* fuzz_config.c - capmoe-server's configuration (server/config.c): the JSON
 * file format (capmoe_config_apply_json) and the string form the
 * environment and the flags use (capmoe_config_set).
 * Input: byte 0 even: a configuration file; odd: lines NAME=VALUE, each
 * applied with capmoe_config_set. Then the cross-option checks, the JSON
 * writer and a re-read of what it wrote.
 * Invariants: whatever is accepted is written back as JSON that is accepted
 * again and describes the same configuration (no differing options). */
#include "capmoe/config.h"
#include "fuzz.h"

static void count_diff(void *user, const char *name, int live, const char *a, const char *b) {
    (void)live;
    fprintf(stderr, "option %s: '%s' vs '%s'\n", name, a, b);
    ++*(int *)user;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    capmoe_config cfg;
    capmoe_error err;
    capmoe_config_defaults(&cfg);
    int rc = 0;
    if (!(data[0] & 1)) {
        rc = capmoe_config_apply_json(&cfg, (const char *)data + 1, size - 1, "fuzz.json", &err);
    } else {
        char *text = fuzz_strndup(data + 1, size - 1);
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && rc == 0;
             line = strtok_r(NULL, "\n", &save)) {
            char *eq = strchr(line, '=');
            if (!eq) continue;
            *eq = '\0';
            rc = capmoe_config_set(&cfg, line, eq + 1, "--fuzz", &err);
        }
        free(text);
    }
    if (rc != 0) FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
    if (rc == 0 && capmoe_config_check(&cfg, &err) == 0) {
        char *js = capmoe_config_to_json(&cfg);
        FUZZ_CHECK(js != NULL, "to_json");
        capmoe_config again;
        capmoe_config_defaults(&again);
        FUZZ_CHECK(capmoe_config_apply_json(&again, js, strlen(js), "written", &err) == 0,
                   "its own JSON refused: %s\n%s", err.msg, js);
        int diffs = 0;
        capmoe_config_diff(&cfg, &again, count_diff, &diffs);
        FUZZ_CHECK(diffs == 0, "%d options differ after a write and re-read", diffs);
        capmoe_dispatch_cfg d;
        capmoe_config_dispatch(&cfg, &d);
        char *id = capmoe_config_model_id(&cfg);
        free(id);
        capmoe_config_free(&again);
        free(js);
    }
    capmoe_config_free(&cfg);
    return 0;
}
