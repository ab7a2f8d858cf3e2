/* cli_perplexity.c - `capmoe perplexity`: sliding-window perplexity of a model
 * over a text file under any dispatch policy, several windows per forward so
 * that every dispatch sees a realistic number of tokens.
 *
 *   capmoe perplexity --model DIR --file TEXT [--context 256] [--stride N]
 *                     [--batch 8] [--max-tokens N] [dispatch options]
 *
 * Method (the Hugging Face "perplexity of fixed-length models" recipe):
 *  - the whole file is tokenized once with the tokenizer's post-processor
 *    (add_special_tokens = True), as `tokenizer(text)` in that recipe: a BOS
 *    token, if the tokenizer adds one, appears once at the start of the text,
 *    not at the start of every window. --max-tokens keeps the first N ids.
 *  - windows of `context` tokens start at 0, stride, 2 stride, ... (the last
 *    one is cut at the end of the text; the loop stops at the first window that
 *    reaches the end). Each window scores only the tokens that no earlier
 *    window scored (positions from the previous window's end on); the first
 *    window scores all its tokens but the first, which has no context. A token
 *    at the start of a window is never scored (no context inside the window),
 *    so with stride = context the first token of each window is skipped, as in
 *    the recipe.
 *  - --batch windows go through one forward pass, each with its own fresh KV
 *    cache (window i of a forward lives on rank i mod R), so each dispatch sees
 *    T = the batch's total tokens. Logits of every position are computed
 *    (batch x context x vocab floats of memory).
 *  - --decode: the windows of a batch run as decode does, one position at a
 *    time (each step one token of every window with its KV cache), so every
 *    dispatch sees as many tokens as windows in the batch (B): the quality of
 *    a policy in the memory-bound regime (--decode-policy, piggyback). The
 *    scores are the same positions as without --decode; under policy none
 *    the perplexity is the same up to float rounding.
 *  - NLL of a scored token = logsumexp(row) - row[target], in double over the
 *    float32 logits. perplexity = exp(total NLL / scored tokens).
 *
 * --weights q8|q4 quantizes the experts at load (quant.h).
 * Output: {"perplexity", "nll" (mean per scored token, nats), "tokens" (scored),
 *  "text_tokens", "windows", "forwards", "context", "stride", "batch", "policy",
 *  "capacity_factor" (number, "auto", or null for policy none), "ep_ranks",
 *  "renormalize", "min_tokens", "dispatches", "limited_dispatches",
 *  "mean_gamma" (over limited dispatches, null if none), "routed_pairs",
 *  "dropped_pairs", "rerouted_pairs", "piggybacked_pairs", "activated_experts"
 *  (mean per dispatch), "decode" (bool), "decode_policy", "regime_tokens",
 *  "piggyback_k0", "dropped_fraction" (dropped pairs /
 *  routed pairs, routed = T x k per dispatch), "dropped_mass" (mean over
 *  dispatches), "rerouted_fraction" (rerouted pairs / routed pairs), "time_s"}. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cli.h"
#include "capmoe/model.h"
#include "capmoe/stats.h"
#include "capmoe/tokenizer.h"

static const char *PPL_USAGE =
    "usage: capmoe perplexity --model DIR --file TEXT [options]\n"
    "  --context N      window length in tokens (default 256)\n"
    "  --stride N       window step (default context / 2); each window scores its new tokens\n"
    "  --batch B        windows per forward pass (default 8)\n"
    "  --weights W      bf16 (as stored), q8 or q4: experts quantized at load\n"
    "  --quantize S     experts (default) or all: what --weights q8|q4 quantizes\n"
    "  --max-tokens N   use only the first N tokens of the text\n"
    "  --decode         run each batch of windows one position at a time, as decode steps\n"
    "                   (every dispatch sees B tokens)\n"
    "  dispatch options: --policy --capacity-factor G|auto --ep-ranks R --renormalize\n"
    "                    --min-tokens N --drop-budget B --piggyback-k0 N --decode-policy P\n"
    "                    --regime-tokens N|auto --ep threads|mpi (as for `capmoe logits`)\n"
    CAPMOE_CLI_ENGINE_HELP;

typedef struct window {
    int begin, end, score_from;
} window;

/* log(sum(exp(row))) in double. */
static double logsumexp(const float *row, int n) {
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (row[i] > mx) mx = row[i];
    if (!isfinite(mx)) return mx;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)row[i] - mx);
    return mx + log(s);
}

int capmoe_cmd_perplexity(int argc, char **argv) {
    static const char *const SW[] = {"renormalize", "decode", "help", NULL};
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SW, &err)) goto usage;
    if (capmoe_cli_has(&a, "help")) {
        fputs(PPL_USAGE, stdout);
        return 0;
    }
    const char *dir = capmoe_cli_get(&a, "model");
    const char *file = capmoe_cli_get(&a, "file");
    if (!dir || !*dir) {
        capmoe_set_error(&err, "--model DIR is required");
        goto usage;
    }
    if (!file || !*file) {
        capmoe_set_error(&err, "--file TEXT is required");
        goto usage;
    }
    capmoe_dispatch_cfg cfg;
    long ctx, stride, batch, max_tokens;
    if (capmoe_cli_dispatch(&a, &cfg, &err) ||
        capmoe_cli_int(&a, "context", 2, 1L << 20, 256, &ctx, &err) ||
        capmoe_cli_int(&a, "stride", 1, 1L << 20, ctx / 2 > 0 ? ctx / 2 : 1, &stride, &err) ||
        capmoe_cli_int(&a, "batch", 1, 4096, 8, &batch, &err) ||
        capmoe_cli_int(&a, "max-tokens", 2, INT32_MAX, INT32_MAX, &max_tokens, &err))
        goto usage;
    capmoe_model_opts mo;
    if (capmoe_cli_engine(&a, &mo, &err)) goto usage;
    if (stride > ctx) {
        capmoe_set_error(&err, "--stride %ld exceeds --context %ld (tokens would be skipped)",
                         stride, ctx);
        goto usage;
    }
    int decode = capmoe_cli_has(&a, "decode");
    if (capmoe_cli_check_unused(&a, &err)) goto usage;

    int rc = 1;
    capmoe_comm *comm = NULL;
    capmoe_tokenizer *tok = NULL;
    capmoe_model *m = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    window *win = NULL;
    capmoe_batch_seq *seqs = NULL;
    capmoe_kv **kvs = NULL;
    float *logits = NULL;
    capmoe_layer_stats *ls = NULL;
    int n_ids = 0, n_win = 0, B = (int)batch;
    size_t len = 0;
    if (capmoe_cli_ep(&a, &cfg, &comm, &err)) goto end;
    int R = capmoe_comm_size(comm), me = capmoe_comm_rank(comm);
    text = capmoe_read_file(file, &len, &err);
    mo.max_ranks = cfg.ep_ranks;
    mo.comm = comm;
    int ok = text && capmoe_tokenizer_load(&tok, dir, &err) == 0 &&
             capmoe_model_load(&m, dir, &mo, &err) == 0 &&
             capmoe_cli_regime(m, &cfg, NULL, &err) == 0;
    if (!capmoe_cli_check_load(comm, dir, ok, &err)) goto end; /* every rank leaves together */
    const capmoe_hfconfig *c = capmoe_model_config(m);
    if (c->n_moe_layers > 0 && capmoe_dispatch_cfg_check(&cfg, c->n_experts, &err)) goto end;
    if (ctx > c->max_position_embeddings) {
        capmoe_set_error(&err, "--context %ld exceeds the context length %d of %s", ctx,
                         c->max_position_embeddings, dir);
        goto end;
    }
    if (capmoe_tokenizer_encode(tok, text, len, 1, &ids, &n_ids, &err)) goto end;
    if (n_ids > max_tokens) n_ids = (int)max_tokens;
    if (n_ids < 2) {
        capmoe_set_error(&err, "%s: the text has %d token(s); at least 2 are needed", file,
                         n_ids);
        goto end;
    }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) {
            capmoe_set_error(&err, "%s: token id %d is outside the model's vocabulary (%d)", file,
                             ids[i], c->vocab_size);
            goto end;
        }

    /* Windows, as in the Hugging Face recipe. */
    win = calloc((size_t)(n_ids / stride + 2), sizeof *win);
    if (!win) {
        capmoe_set_error(&err, "out of memory");
        goto end;
    }
    for (long begin = 0, prev_end = 0; begin < n_ids; begin += stride) {
        long end = begin + ctx < n_ids ? begin + ctx : n_ids;
        long from = prev_end > begin + 1 ? prev_end : begin + 1;
        win[n_win++] = (window){(int)begin, (int)end, (int)from};
        prev_end = end;
        if (end == n_ids) break;
    }

    seqs = calloc((size_t)B, sizeof *seqs);
    logits = capmoe_malloc_array((size_t)B * (size_t)ctx * (size_t)c->vocab_size, sizeof(float));
    ls = calloc((size_t)(c->n_moe_layers > 0 ? c->n_moe_layers : 1), sizeof *ls);
    if (!seqs || !logits || !ls) {
        capmoe_set_error(&err, "out of memory for %d windows of %ld tokens x %d logits", B, ctx,
                         c->vocab_size);
        goto end;
    }
    kvs = calloc((size_t)B, sizeof *kvs); /* window s of a batch: cache kvs[s] */
    for (int s = 0; kvs && s < B; s++) {
        kvs[s] = capmoe_kv_new(m, (int)ctx);
        if (!kvs[s]) break;
    }
    if (!kvs || !kvs[B - 1]) {
        capmoe_set_error(&err, "out of memory for KV caches");
        goto end;
    }
    capmoe_forward_stats st = {.layers = ls, .cap_layers = c->n_moe_layers};
    double nll = 0.0, gamma_sum = 0.0, mass_sum = 0.0, act_sum = 0.0, t0 = capmoe_now();
    long scored = 0, routed = 0, dropped = 0, rerouted = 0, dispatches = 0, limited = 0;
    long piggybacked = 0;
    int forwards = 0;
    for (int w0 = 0; w0 < n_win; w0 += B) {
        int nb = n_win - w0 < B ? n_win - w0 : B;
        /* window w0 + s lives on rank s mod R (under --ep mpi, this rank runs
         * its own windows; every rank takes part in every forward) */
        int longest = 0; /* steps of this batch under --decode (every rank alike) */
        for (int s = 0; s < nb; s++)
            if (win[w0 + s].end - win[w0 + s].begin > longest)
                longest = win[w0 + s].end - win[w0 + s].begin;
        for (int s = 0; s < nb; s++) capmoe_kv_clear(kvs[s]);
        for (int p = 0; p < (decode ? longest : 1); p++) { /* --decode: position p */
        int nl = 0, mine[4096];
        for (int s = 0; s < nb; s++) {
            if (comm && s % R != me) continue;
            const window *w = &win[w0 + s];
            int n = w->end - w->begin;
            if (decode && p >= n) continue; /* this window is done */
            seqs[nl] = (capmoe_batch_seq){.kv = kvs[s], .tokens = ids + w->begin + (decode ? p : 0),
                                          .n_tokens = decode ? 1 : n, .want = CAPMOE_LOGITS_ALL,
                                          .rank = s % cfg.ep_ranks};
            mine[nl++] = s;
        }
        ok = capmoe_model_forward(m, seqs, nl, &cfg, logits, &st, &err) == 0;
        if (!capmoe_cli_agree(comm, ok, &err)) goto end;
        if (capmoe_cli_gather_stats(comm, &st, &err)) goto end;
        forwards++;
        size_t row = 0;
        for (int i = 0; i < nl; i++) {
            const window *w = &win[w0 + mine[i]];
            /* logits rows: every position of the window, or (--decode) position p */
            int j0 = w->begin + 1 + (decode ? p : 0);
            int j1 = decode ? j0 + 1 : w->end;
            if (j1 > w->end) j1 = w->end;
            for (int j = j0; j < j1; j++) {
                if (j >= w->score_from) {
                    const float *r = logits + (row + (size_t)(j - j0)) * (size_t)c->vocab_size;
                    double lse = logsumexp(r, c->vocab_size);
                    nll += lse - (double)r[ids[j]];
                    scored++;
                }
            }
            row += decode ? 1 : (size_t)(w->end - w->begin);
        }
        for (int l = 0; l < st.n_moe && me == 0; l++) {
            piggybacked += ls[l].piggybacked;
            routed += (long)ls[l].tokens * c->top_k;
            dropped += ls[l].dropped;
            rerouted += ls[l].rerouted;
            /* one dispatch per layer, or per source rank under --ep mpi */
            int nsrc = ls[l].n_src > 0 ? ls[l].n_src : 1;
            for (int r = 0; r < nsrc; r++) {
                dispatches++;
                int lim = ls[l].n_src > 0 ? ls[l].src_limited[r] : ls[l].limited;
                mass_sum += ls[l].n_src > 0 ? ls[l].src_dropped_mass[r] : ls[l].dropped_mass;
                if (lim) {
                    limited++;
                    gamma_sum += ls[l].n_src > 0 ? ls[l].src_gamma[r] : ls[l].gamma;
                }
                act_sum += ls[l].n_src > 0 ? ls[l].src_activated[r] : ls[l].activated;
            }
        }
        }
    }
    if (comm) { /* every rank scored its own windows */
        double sums[2] = {nll, (double)scored};
        if (capmoe_comm_sum(comm, sums, 2, &err)) goto end;
        nll = sums[0];
        scored = (long)sums[1];
    }
    double elapsed = capmoe_now() - t0;
    if (scored == 0 || !isfinite(nll)) {
        capmoe_set_error(&err, "%s: no finite score (%ld tokens scored)", file, scored);
        goto end;
    }
    if (me != 0) { /* rank 0 prints */
        rc = 0;
        goto end;
    }
    cJSON *o = cJSON_CreateObject();
    double mean = nll / (double)scored;
    cJSON_AddNumberToObject(o, "perplexity", exp(mean));
    cJSON_AddNumberToObject(o, "nll", mean);
    cJSON_AddNumberToObject(o, "tokens", (double)scored);
    cJSON_AddNumberToObject(o, "text_tokens", n_ids);
    cJSON_AddNumberToObject(o, "windows", n_win);
    cJSON_AddStringToObject(o, "compute", capmoe_compute_name(capmoe_model_compute(m)));
    cJSON_AddStringToObject(o, "kv_dtype", capmoe_model_kv_dtype(m) == CAPMOE_KV_BF16 ? "bf16" : "f32");
    cJSON_AddNumberToObject(o, "forwards", forwards);
    cJSON_AddNumberToObject(o, "context", (double)ctx);
    cJSON_AddNumberToObject(o, "stride", (double)stride);
    cJSON_AddNumberToObject(o, "batch", (double)batch);
    cJSON_AddStringToObject(o, "weights", capmoe_weights_name(capmoe_model_weights(m)));
    cJSON_AddStringToObject(o, "quantize", capmoe_quant_scope_name(capmoe_model_quantize(m)));
    cJSON_AddNumberToObject(o, "pack_s", capmoe_model_pack_seconds(m));
    cJSON_AddStringToObject(o, "policy", capmoe_policy_name(cfg.policy));
    if (cfg.policy == CAPMOE_POLICY_NONE || cfg.policy == CAPMOE_POLICY_PIGGYBACK)
        cJSON_AddNullToObject(o, "capacity_factor");
    else if (cfg.auto_gamma) cJSON_AddStringToObject(o, "capacity_factor", "auto");
    else cJSON_AddNumberToObject(o, "capacity_factor", cfg.capacity_factor);
    cJSON_AddNumberToObject(o, "ep_ranks", cfg.ep_ranks);
    cJSON_AddBoolToObject(o, "renormalize", cfg.renormalize);
    cJSON_AddNumberToObject(o, "min_tokens", cfg.min_tokens);
    cJSON_AddNumberToObject(o, "dispatches", (double)dispatches);
    cJSON_AddNumberToObject(o, "limited_dispatches", (double)limited);
    if (limited > 0) cJSON_AddNumberToObject(o, "mean_gamma", gamma_sum / (double)limited);
    else cJSON_AddNullToObject(o, "mean_gamma");
    cJSON_AddNumberToObject(o, "routed_pairs", (double)routed);
    cJSON_AddNumberToObject(o, "dropped_pairs", (double)dropped);
    cJSON_AddNumberToObject(o, "rerouted_pairs", (double)rerouted);
    cJSON_AddNumberToObject(o, "dropped_fraction", routed ? (double)dropped / routed : 0.0);
    cJSON_AddNumberToObject(o, "dropped_mass", dispatches ? mass_sum / (double)dispatches : 0.0);
    cJSON_AddNumberToObject(o, "rerouted_fraction", routed ? (double)rerouted / routed : 0.0);
    cJSON_AddNumberToObject(o, "piggybacked_pairs", (double)piggybacked);
    cJSON_AddNumberToObject(o, "activated_experts", dispatches ? act_sum / (double)dispatches : 0.0);
    cJSON_AddBoolToObject(o, "decode", decode);
    if (cfg.decode_policy >= 0) {
        cJSON_AddStringToObject(o, "decode_policy",
                                capmoe_policy_name((capmoe_policy)cfg.decode_policy));
        cJSON_AddNumberToObject(o, "regime_tokens", cfg.regime_tokens);
    } else {
        cJSON_AddNullToObject(o, "decode_policy");
        cJSON_AddNullToObject(o, "regime_tokens");
    }
    cJSON_AddNumberToObject(o, "piggyback_k0", capmoe_dispatch_k0(&cfg, c->top_k));
    cJSON_AddNumberToObject(o, "time_s", elapsed);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) {
        capmoe_set_error(&err, "out of memory");
        goto end;
    }
    puts(s);
    free(s);
    rc = 0;
end:
    if (rc) capmoe_cli_fail_rank(comm, "perplexity", &err);
    for (int s = 0; kvs && s < B; s++) capmoe_kv_free(kvs[s]);
    free(kvs);
    free(seqs);
    free(logits);
    free(ls);
    free(win);
    free(ids);
    free(text);
    capmoe_model_free(m);
    capmoe_tokenizer_free(tok);
    capmoe_comm_finalize(comm);
    return rc;
usage:
    fprintf(stderr, "capmoe perplexity: %s\n%s", err.msg, PPL_USAGE);
    return 2;
}
