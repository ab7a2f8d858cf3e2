/* fuzz_hfconfig.c - a model's config.json (core/hfconfig.c, every supported
 * architecture) and the server's checks against it
 * (capmoe_config_check_model). Input: the config.json text.
 * Invariants: a config that parses has positive dimensions within the
 * documented bounds (layers <= CAPMOE_MAX_LAYERS, top_k <= experts). */
#include "capmoe/config.h"
#include "capmoe/hfconfig.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    capmoe_hfconfig hc;
    capmoe_error err;
    memset(&hc, 0, sizeof hc);
    if (capmoe_hfconfig_parse(&hc, (const char *)data, size, "config.json", &err) != 0) {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
        return 0;
    }
    FUZZ_CHECK(hc.vocab_size > 0 && hc.hidden_size > 0 && hc.n_heads > 0, "dims");
    FUZZ_CHECK(hc.n_layers > 0 && hc.n_layers <= CAPMOE_MAX_LAYERS, "n_layers %d", hc.n_layers);
    FUZZ_CHECK(hc.n_kv_heads > 0, "n_kv_heads %d", hc.n_kv_heads);
    FUZZ_CHECK(hc.n_experts >= 0, "experts %d", hc.n_experts); /* Qwen: 0 = dense */
    if (hc.n_experts > 0)
        FUZZ_CHECK(hc.top_k > 0 && hc.top_k <= hc.n_experts, "experts %d top_k %d", hc.n_experts,
                   hc.top_k);
    FUZZ_CHECK(hc.n_eos >= 0 && hc.n_eos <= 8, "n_eos %d", hc.n_eos);
    FUZZ_CHECK(hc.max_position_embeddings > 0, "max_position_embeddings %d",
               hc.max_position_embeddings);
    capmoe_config cfg;
    capmoe_config_defaults(&cfg);
    (void)capmoe_config_check_model(&cfg, &hc, &err);
    cfg.context = 1 + (int)(size % 8192);
    cfg.ep_ranks = 1 + (int)(size % 7);
    (void)capmoe_config_check_model(&cfg, &hc, &err);
    capmoe_config_free(&cfg);
    (void)capmoe_arch_name(hc.arch);
    return 0;
}
