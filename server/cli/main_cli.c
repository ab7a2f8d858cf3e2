/* main_cli.c - the `capmoe` command-line tool (dispatch-spec.md section 2).
 *
 *   capmoe logits | tokenize | detokenize | generate | bench | perplexity | synth
 *   capmoe --version, capmoe --help, capmoe CMD --help (exit 0)
 *
 * Output on stdout is one JSON object; errors go to stderr with a non-zero
 * exit status (1: the command failed, 2: bad usage). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cli.h"
#include "capmoe/model.h"
#include "capmoe/sample.h"
#include "capmoe/sysinfo.h"
#include "capmoe/tokenizer.h"
#include "capmoe/version.h"

static const char *USAGE =
    "usage: capmoe <command> --model DIR [options]\n"
    "commands:\n"
    "  logits      --ids 5,9,12 [--ids ...] --out FILE [--seq-ranks 0,1,...] [dispatch options]\n"
    "  tokenize    --text STR\n"
    "  detokenize  --ids 1,2,3\n"
    "  generate    (--ids 1,2,3 | --prompt STR) --max-tokens N [--temperature T] [--seed S]\n"
    "              [--stop-at-eos] [dispatch options]\n"
    "  bench       see `capmoe bench --help`\n"
    "  perplexity  see `capmoe perplexity --help`\n"
    "  synth       see `capmoe synth --help`\n"
    "every command takes --help; capmoe --version prints the version\n"
    "dispatch options:\n"
    "  --policy none|drop|reroute|expanded|rank_drop|piggyback   (default none)\n"
    "  --capacity-factor G|auto   capacity factor gamma, or per-dispatch tuning (default 1.0)\n"
    "  --ep-ranks R               expert-parallel ranks (rank threads; default 1)\n"
    "  --ep threads|mpi           mpi: the ranks are the MPI processes of mpirun -np R\n"
    "  --renormalize              rescale each token's kept weights to sum to 1\n"
    "  --min-tokens N             no limit below N tokens per dispatch (default 16, 0 = off)\n"
    "  --drop-budget B            auto: largest dropped routing mass allowed (default 0.01)\n"
    "  --piggyback-k0 N           piggyback: experts of its own each token keeps (default k/2)\n"
    "  --decode-policy P          policy of dispatches below --regime-tokens (default: none set)\n"
    "  --regime-tokens N|auto     dispatches of fewer than N tokens use --decode-policy; auto:\n"
    "                             the memory/compute crossover measured at start\n"
    CAPMOE_CLI_ENGINE_HELP
    "latent attention (DeepSeek), logits and generate:\n"
    "  --mla-form auto|expanded|absorbed   how to attend (default auto: the cheaper per\n"
    "                             sequence and step; the others force one form)\n";

static const char *const SWITCHES[] = {"renormalize", "stop-at-eos", "help", NULL};

/* `capmoe CMD --help` of the commands that live in this file. */
static const struct {
    const char *cmd, *text;
} HELP[] = {
    {"logits",
     "usage: capmoe logits --model DIR --ids 5,9,12 [--ids ...] --out FILE [dispatch options]\n"
     "Runs every --ids sequence as ONE batch (one dispatch per MoE layer over all their\n"
     "tokens), writes the logits of every token as float32 to FILE (tokens x vocab, row\n"
     "major) and prints per MoE layer the capacity, the capacity factor applied, the\n"
     "expert loads and the activated experts, and the dropped / rerouted / piggybacked\n"
     "pair counts.\n"},
    {"tokenize", "usage: capmoe tokenize --model DIR --text STR\n"
                 "Prints the token ids of STR (with the BOS the tokenizer adds): {\"ids\": [...]}.\n"},
    {"detokenize", "usage: capmoe detokenize --model DIR --ids 1,2,3\n"
                   "Prints the text of the ids: {\"text\": \"...\"}.\n"},
    {"generate",
     "usage: capmoe generate --model DIR (--ids 1,2,3 | --prompt STR) --max-tokens N\n"
     "                       [--temperature T] [--seed S] [--stop-at-eos] [dispatch options]\n"
     "Decodes one sequence (greedy at temperature 0, the default) and prints\n"
     "{\"ids\": [...], \"text\": \"...\"}.\n"},
};

static const char *DISPATCH_HELP =
    "dispatch options:\n"
    "  --policy none|drop|reroute|expanded|rank_drop|piggyback   (default none)\n"
    "  --capacity-factor G|auto   capacity factor gamma, or per-dispatch tuning (default 1.0)\n"
    "  --ep-ranks R               expert-parallel ranks (default 1)\n"
    "  --renormalize              rescale each token's kept weights to sum to 1\n"
    "  --min-tokens N             no limit below N tokens per dispatch (default 16, 0 = off)\n"
    "  --drop-budget B            auto: largest dropped routing mass allowed (default 0.01)\n"
    "  --piggyback-k0 N           piggyback: experts of its own each token keeps (default k/2)\n"
    "  --decode-policy P          policy of dispatches below --regime-tokens (default: none set)\n"
    "  --regime-tokens N|auto     dispatches of fewer than N tokens use --decode-policy; auto:\n"
    "                             the memory/compute crossover measured at start\n";

/* 1 when argv asks for help (--help or -h anywhere). */
static int wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

static int fail(const char *cmd, const capmoe_error *err) {
    fprintf(stderr, "capmoe %s: %s\n", cmd, err->msg);
    return 1;
}

static int usage_fail(const char *cmd, const capmoe_error *err) {
    fprintf(stderr, "capmoe %s: %s\n%s", cmd, err->msg, USAGE);
    return 2;
}

static void print_json(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
    cJSON_Delete(o);
}

/* --mla-form: capmoe_model_opts.mla_form. */
static int mla_form_opt(capmoe_cli_args *a, capmoe_mla_form *f, capmoe_error *err) {
    const char *v = capmoe_cli_get(a, "mla-form");
    *f = CAPMOE_MLA_AUTO;
    if (!v || strcmp(v, "auto") == 0) return 0;
    if (strcmp(v, "expanded") == 0) *f = CAPMOE_MLA_EXPANDED;
    else if (strcmp(v, "absorbed") == 0) *f = CAPMOE_MLA_ABSORBED;
    else return capmoe_set_error(err, "--mla-form: '%s' is not one of auto, expanded, absorbed", v);
    return 0;
}

/* --weights q8|q4: how long the load spent quantizing (stderr). */
static void report_weights(const capmoe_model *m) {
    if (capmoe_model_weights(m) != CAPMOE_WEIGHTS_STORED)
        fprintf(stderr, "capmoe: %s quantized to %s at load: weights repacked in %.3f s\n",
                capmoe_model_quantize(m) == CAPMOE_QUANTIZE_ALL ? "every matrix but the router"
                                                                : "experts",
                capmoe_weights_name(capmoe_model_weights(m)), capmoe_model_pack_seconds(m));
}

static const char *need_model(capmoe_cli_args *a, capmoe_error *err) {
    const char *m = capmoe_cli_get(a, "model");
    if (!m || !*m) capmoe_set_error(err, "--model DIR is required");
    return m && *m ? m : NULL;
}

/* ---- logits ------------------------------------------------------------ */

/* The JSON report of one logits batch. Under --ep mpi every MoE layer's
 * capacity and capacity factor are lists with one value per source rank,
 * and loads are sums over the sources (dispatch-spec.md section 2). */
static cJSON *logits_report(const capmoe_forward_stats *st, int T, int mpi) {
    const capmoe_layer_stats *ls = st->layers;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens", T);
    cJSON *cap = cJSON_AddArrayToObject(o, "capacity");
    cJSON *gam = cJSON_AddArrayToObject(o, "capacity_factor");
    cJSON *loads = cJSON_AddArrayToObject(o, "loads");
    cJSON *act = cJSON_CreateArray();
    long dropped = 0, rerouted = 0, piggybacked = 0;
    for (int l = 0; l < st->n_moe; l++) {
        piggybacked += ls[l].piggybacked;
        if (mpi) {
            cJSON *cl = cJSON_CreateArray(), *gl = cJSON_CreateArray(), *al = cJSON_CreateArray();
            for (int r = 0; r < ls[l].n_src; r++) {
                int lim = ls[l].src_limited[r];
                cJSON_AddItemToArray(cl, lim ? cJSON_CreateNumber(ls[l].src_capacity[r])
                                             : cJSON_CreateNull());
                cJSON_AddItemToArray(gl, lim ? cJSON_CreateNumber(ls[l].src_gamma[r])
                                             : cJSON_CreateNull());
                cJSON_AddItemToArray(al, cJSON_CreateNumber(ls[l].src_activated[r]));
            }
            cJSON_AddItemToArray(cap, cl);
            cJSON_AddItemToArray(gam, gl);
            cJSON_AddItemToArray(act, al);
        } else {
            cJSON_AddItemToArray(act, cJSON_CreateNumber(ls[l].activated));
            cJSON_AddItemToArray(cap, ls[l].limited ? cJSON_CreateNumber(ls[l].capacity)
                                                    : cJSON_CreateNull());
            cJSON_AddItemToArray(gam, ls[l].limited ? cJSON_CreateNumber(ls[l].gamma)
                                                    : cJSON_CreateNull());
        }
        cJSON *lo = cJSON_CreateArray();
        for (int e = 0; e < ls[l].n_experts; e++)
            cJSON_AddItemToArray(lo, cJSON_CreateNumber(ls[l].loads[e]));
        cJSON_AddItemToArray(loads, lo);
        dropped += ls[l].dropped;
        rerouted += ls[l].rerouted;
    }
    cJSON_AddNumberToObject(o, "dropped", (double)dropped);
    cJSON_AddNumberToObject(o, "rerouted", (double)rerouted);
    cJSON_AddNumberToObject(o, "piggybacked", (double)piggybacked);
    cJSON_AddItemToObject(o, "activated", act);
    return o;
}

/* Under --ep mpi: every rank's logits rows (its sequences, in order) are
 * gathered at rank 0 and put back in batch order (sequence i lives on rank
 * srank[i]). */
static int gather_logits(capmoe_comm *comm, float **logits, int n_seqs, const int *n_ids,
                         const int *srank, int V, capmoe_error *err) {
    int R = capmoe_comm_size(comm), me = capmoe_comm_rank(comm);
    size_t mine = 0, T = 0;
    for (int s = 0; s < n_seqs; s++) {
        T += (size_t)n_ids[s];
        if (srank[s] == me) mine += (size_t)n_ids[s];
    }
    void *all = NULL;
    size_t *counts = calloc((size_t)R, sizeof *counts);
    if (!counts) return capmoe_set_error(err, "out of memory");
    int rc = capmoe_comm_gather(comm, *logits, mine * (size_t)V * sizeof(float), 0, &all, counts,
                                err);
    if (rc == 0 && me == 0) {
        float *out = malloc((T ? T : 1) * (size_t)V * sizeof(float));
        size_t *at = calloc((size_t)R, sizeof *at); /* next row of each rank's part */
        size_t *base = calloc((size_t)R, sizeof *base);
        if (!out || !at || !base) {
            rc = capmoe_set_error(err, "out of memory");
        } else {
            for (int r = 1; r < R; r++) base[r] = base[r - 1] + counts[r - 1] / sizeof(float);
            size_t row = 0;
            for (int s = 0; s < n_seqs; s++) {
                int r = srank[s];
                size_t n = (size_t)n_ids[s] * (size_t)V;
                memcpy(out + row, (float *)all + base[r] + at[r], n * sizeof(float));
                at[r] += n;
                row += n;
            }
            free(*logits);
            *logits = out;
            out = NULL;
        }
        free(out);
        free(at);
        free(base);
    }
    free(all);
    free(counts);
    return rc;
}

static int cmd_logits(int argc, char **argv) {
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SWITCHES, &err)) return usage_fail("logits", &err);
    const char *dir = need_model(&a, &err);
    if (!dir) return usage_fail("logits", &err);
    capmoe_dispatch_cfg cfg;
    if (capmoe_cli_dispatch(&a, &cfg, &err)) return usage_fail("logits", &err);
    capmoe_mla_form form;
    if (mla_form_opt(&a, &form, &err)) return usage_fail("logits", &err);
    capmoe_model_opts mo;
    if (capmoe_cli_engine(&a, &mo, &err)) return usage_fail("logits", &err);
    const char *out = capmoe_cli_get(&a, "out");
    if (!out || !*out) {
        capmoe_set_error(&err, "--out FILE is required");
        return usage_fail("logits", &err);
    }
    int n_seqs = 0;
    int32_t *ids[128] = {0};
    int n_ids[128] = {0};
    int rc = 2;
    capmoe_comm *comm = NULL;
    capmoe_model *m = NULL;
    float *logits = NULL;
    capmoe_layer_stats *ls = NULL;
    capmoe_batch_seq seqs[128];
    int n_local = 0;
    for (int i = 0; i < a.n; i++) {
        if (strcmp(a.name[i], "ids") != 0) continue;
        a.used[i] = 1;
        if (n_seqs == 128) {
            capmoe_set_error(&err, "at most 128 --ids sequences");
            goto done_usage;
        }
        if (capmoe_cli_parse_ids(a.value[i] ? a.value[i] : "", &ids[n_seqs], &n_ids[n_seqs], &err))
            goto done_usage;
        n_seqs++;
    }
    if (n_seqs == 0) {
        capmoe_set_error(&err, "at least one --ids sequence is required");
        goto done_usage;
    }
    const char *sr = capmoe_cli_get(&a, "seq-ranks");
    int srank[128];
    if (sr) { /* the rank each sequence lives on (default: i mod R) */
        int32_t *v = NULL;
        int nv = 0;
        if (capmoe_cli_parse_ids(sr, &v, &nv, &err) || nv != n_seqs) {
            free(v);
            capmoe_set_error(&err, "--seq-ranks: give one rank per --ids sequence (%d)", n_seqs);
            goto done_usage;
        }
        for (int s = 0; s < n_seqs; s++) srank[s] = v[s];
        free(v);
    }
    if (capmoe_cli_check_unused(&a, &err)) goto done_usage;

    rc = 1;
    if (capmoe_cli_ep(&a, &cfg, &comm, &err)) {
        capmoe_cli_fail_rank(comm, "logits", &err);
        goto done;
    }
    int me = capmoe_comm_rank(comm);
    for (int s = 0; s < n_seqs; s++) {
        if (!sr) srank[s] = s % cfg.ep_ranks;
        if (srank[s] >= cfg.ep_ranks) {
            capmoe_set_error(&err, "--seq-ranks: rank %d of sequence %d is not below the %d ranks",
                             srank[s], s, cfg.ep_ranks);
            if (me == 0) usage_fail("logits", &err);
            rc = 2;
            goto done;
        }
    }
    mo.max_ranks = cfg.ep_ranks;
    mo.comm = comm;
    mo.mla_form = form;
    int ok = capmoe_model_load(&m, dir, &mo, &err) == 0;
    if (ok) report_weights(m);
    if (ok && capmoe_dispatch_cfg_check(&cfg, capmoe_model_config(m)->n_experts, &err)) ok = 0;
    if (ok && capmoe_cli_regime(m, &cfg, NULL, &err)) ok = 0;
    if (!capmoe_cli_check_load(comm, dir, ok, &err)) {
        capmoe_cli_fail_rank(comm, "logits", &err);
        goto done;
    }
    const capmoe_hfconfig *c = capmoe_model_config(m);
    int T = 0, T_local = 0;
    for (int s = 0; s < n_seqs; s++) {
        T += n_ids[s];
        if (comm && srank[s] != me) continue; /* another rank's sequence */
        seqs[n_local++] = (capmoe_batch_seq){.kv = capmoe_kv_new(m, 0), .tokens = ids[s],
                                             .n_tokens = n_ids[s], .want = CAPMOE_LOGITS_ALL,
                                             .rank = srank[s]};
        T_local += n_ids[s];
        if (!seqs[n_local - 1].kv) ok = 0;
    }
    logits = malloc(((size_t)T_local + 1) * (size_t)c->vocab_size * sizeof(float));
    ls = calloc((size_t)(c->n_moe_layers + 1), sizeof *ls);
    capmoe_forward_stats st = {.layers = ls, .cap_layers = c->n_moe_layers};
    if (!ok || !logits || !ls) {
        capmoe_set_error(&err, "out of memory");
        ok = 0;
    } else {
        ok = capmoe_model_forward(m, seqs, n_local, &cfg, logits, &st, &err) == 0;
    }
    if (!ok) capmoe_cli_fail_rank(comm, "logits", &err);
    if (!capmoe_cli_agree(comm, ok, &err)) goto done;
    if (comm && (gather_logits(comm, &logits, n_seqs, n_ids, srank, c->vocab_size, &err) ||
                 capmoe_cli_gather_stats(comm, &st, &err))) {
        capmoe_cli_fail_rank(comm, "logits", &err);
        goto done;
    }
    if (me == 0) {
        FILE *f = fopen(out, "wb");
        ok = 0;
        if (!f) {
            capmoe_set_error(&err, "%s: cannot open for writing", out);
        } else {
            size_t n = (size_t)T * (size_t)c->vocab_size;
            if (fwrite(logits, sizeof(float), n, f) != n || fclose(f) != 0)
                capmoe_set_error(&err, "%s: write failed", out);
            else
                ok = 1;
            if (!ok) fclose(f);
        }
        if (!ok) {
            fail("logits", &err);
            goto done;
        }
        print_json(logits_report(&st, T, comm != NULL));
    }
    rc = 0;
    goto done;
done_usage:
    usage_fail("logits", &err);
done:
    free(logits);
    free(ls);
    for (int s = 0; s < n_local; s++) capmoe_kv_free(seqs[s].kv);
    capmoe_model_free(m);
    capmoe_comm_finalize(comm);
    for (int s = 0; s < n_seqs; s++) free(ids[s]);
    return rc;
}

/* ---- tokenize / detokenize -------------------------------------------- */

static int cmd_tokenize(int argc, char **argv) {
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SWITCHES, &err)) return usage_fail("tokenize", &err);
    const char *dir = need_model(&a, &err);
    if (!dir) return usage_fail("tokenize", &err);
    const char *text = capmoe_cli_get(&a, "text");
    if (!text) {
        capmoe_set_error(&err, "--text STR is required");
        return usage_fail("tokenize", &err);
    }
    if (capmoe_cli_check_unused(&a, &err)) return usage_fail("tokenize", &err);
    capmoe_tokenizer *tok = NULL;
    if (capmoe_tokenizer_load(&tok, dir, &err)) return fail("tokenize", &err);
    int32_t *ids = NULL;
    int n = 0;
    if (capmoe_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err)) {
        capmoe_tokenizer_free(tok);
        return fail("tokenize", &err);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "ids");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    print_json(o);
    free(ids);
    capmoe_tokenizer_free(tok);
    return 0;
}

static int cmd_detokenize(int argc, char **argv) {
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SWITCHES, &err)) return usage_fail("detokenize", &err);
    const char *dir = need_model(&a, &err);
    if (!dir) return usage_fail("detokenize", &err);
    const char *s = capmoe_cli_get(&a, "ids");
    if (!s) {
        capmoe_set_error(&err, "--ids 1,2,3 is required");
        return usage_fail("detokenize", &err);
    }
    int32_t *ids = NULL;
    int n = 0;
    if (capmoe_cli_parse_ids(s, &ids, &n, &err) || capmoe_cli_check_unused(&a, &err)) {
        free(ids);
        return usage_fail("detokenize", &err);
    }
    capmoe_tokenizer *tok = NULL;
    if (capmoe_tokenizer_load(&tok, dir, &err)) {
        free(ids);
        return fail("detokenize", &err);
    }
    char *text = NULL;
    size_t len = 0;
    int rc = capmoe_tokenizer_decode(tok, ids, n, 0, &text, &len, &err);
    if (rc == 0) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", text);
        print_json(o);
    }
    free(text);
    free(ids);
    capmoe_tokenizer_free(tok);
    return rc == 0 ? 0 : fail("detokenize", &err);
}

/* ---- generate ---------------------------------------------------------- */

static int cmd_generate(int argc, char **argv) {
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SWITCHES, &err)) return usage_fail("generate", &err);
    const char *dir = need_model(&a, &err);
    if (!dir) return usage_fail("generate", &err);
    capmoe_dispatch_cfg cfg;
    long max_tokens, seed;
    double temperature, top_p;
    long top_k;
    if (capmoe_cli_dispatch(&a, &cfg, &err) ||
        capmoe_cli_int(&a, "max-tokens", 0, 1L << 20, -1, &max_tokens, &err) ||
        capmoe_cli_double(&a, "temperature", 0.0, 100.0, 0.0, &temperature, &err) ||
        capmoe_cli_double(&a, "top-p", 1e-9, 1.0, 1.0, &top_p, &err) ||
        capmoe_cli_int(&a, "top-k", 0, 1L << 30, 0, &top_k, &err) ||
        capmoe_cli_int(&a, "seed", 0, INT64_MAX, 0, &seed, &err))
        return usage_fail("generate", &err);
    if (max_tokens < 0) {
        capmoe_set_error(&err, "--max-tokens N is required");
        return usage_fail("generate", &err);
    }
    capmoe_mla_form form;
    if (mla_form_opt(&a, &form, &err)) return usage_fail("generate", &err);
    capmoe_model_opts mo;
    if (capmoe_cli_engine(&a, &mo, &err)) return usage_fail("generate", &err);
    const char *ids_s = capmoe_cli_get(&a, "ids");
    const char *prompt = capmoe_cli_get(&a, "prompt");
    int stop_eos = capmoe_cli_has(&a, "stop-at-eos");
    if ((ids_s == NULL) == (prompt == NULL)) {
        capmoe_set_error(&err, "give exactly one of --ids or --prompt");
        return usage_fail("generate", &err);
    }
    if (capmoe_cli_check_unused(&a, &err)) return usage_fail("generate", &err);

    int32_t *ids = NULL;
    int n = 0;
    if (ids_s && capmoe_cli_parse_ids(ids_s, &ids, &n, &err)) return usage_fail("generate", &err);
    capmoe_tokenizer *tok = NULL;
    capmoe_model *m = NULL;
    int rc = 1;
    float *logits = NULL;
    int32_t *out = NULL;
    void *scratch = NULL;
    capmoe_kv *kv = NULL;
    capmoe_comm *comm = NULL;
    if (capmoe_cli_ep(&a, &cfg, &comm, &err)) goto end;
    int me = capmoe_comm_rank(comm);
    mo.max_ranks = cfg.ep_ranks;
    mo.comm = comm;
    mo.mla_form = form;
    int ok = capmoe_tokenizer_load(&tok, dir, &err) == 0 && capmoe_model_load(&m, dir, &mo, &err) == 0;
    if (ok) report_weights(m);
    if (ok && prompt && capmoe_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n, &err))
        ok = 0;
    if (ok && n == 0) {
        capmoe_set_error(&err, "the prompt has no tokens");
        ok = 0;
    }
    if (ok && capmoe_cli_regime(m, &cfg, NULL, &err)) ok = 0;
    if (!capmoe_cli_check_load(comm, dir, ok, &err)) goto end;
    const capmoe_hfconfig *c = capmoe_model_config(m);
    kv = capmoe_kv_new(m, 0);
    logits = malloc((size_t)c->vocab_size * sizeof(float));
    out = malloc(((size_t)max_tokens + 1) * sizeof(int32_t));
    scratch = malloc((size_t)c->vocab_size * 2 * sizeof(float) + 64);
    ok = kv && logits && out && scratch;
    if (!ok) capmoe_set_error(&err, "out of memory");
    if (ok && n + max_tokens > capmoe_kv_max(kv)) {
        capmoe_set_error(&err, "prompt (%d tokens) + --max-tokens %ld exceed the context length %d",
                         n, max_tokens, capmoe_kv_max(kv));
        ok = 0;
    }
    if (!capmoe_cli_agree(comm, ok, &err)) goto end;
    capmoe_sampling sp;
    capmoe_sampling_default(&sp);
    sp.temperature = (float)temperature;
    sp.top_p = (float)top_p;
    sp.top_k = (int)top_k;
    capmoe_rng rng;
    capmoe_rng_seed(&rng, (uint64_t)seed);
    int eos = capmoe_tokenizer_eos_id(tok);
    int n_out = 0;
    const int32_t *step = ids;
    int step_n = n;
    /* Under --ep mpi the sequence lives on rank 0; every rank takes part
     * in every forward, and rank 0 says when to stop. */
    while (n_out < max_tokens) {
        capmoe_batch_seq bs = {.kv = kv, .tokens = step, .n_tokens = step_n,
                               .want = CAPMOE_LOGITS_LAST, .rank = 0};
        ok = capmoe_model_forward(m, &bs, me == 0 ? 1 : 0, &cfg, logits, NULL, &err) == 0;
        if (!capmoe_cli_agree(comm, ok, &err)) goto end;
        int next = me == 0 ? capmoe_sample(logits, c->vocab_size, &sp, &rng, scratch) : 0;
        out[n_out++] = next;
        int stop = stop_eos && eos >= 0 && next == eos;
        if (comm && capmoe_comm_bcast(comm, &stop, sizeof stop, 0, 0, &err)) goto end;
        if (stop) break;
        step = &out[n_out - 1];
        step_n = 1;
    }
    if (me != 0) { /* rank 0 prints */
        rc = 0;
        goto end;
    }
    char *text = NULL;
    size_t tl = 0;
    /* Ids the padded vocabulary has beyond the tokenizer's are left out of the text. */
    int32_t *known = malloc(((size_t)n_out + 1) * sizeof *known);
    int nk = 0;
    for (int i = 0; known && i < n_out; i++)
        if (out[i] < capmoe_tokenizer_n_vocab(tok)) known[nk++] = out[i];
    if (!known || capmoe_tokenizer_decode(tok, known, nk, 1, &text, &tl, &err)) {
        free(known);
        goto end;
    }
    free(known);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "ids");
    for (int i = 0; i < n_out; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(out[i]));
    cJSON_AddStringToObject(o, "text", text);
    print_json(o);
    free(text);
    rc = 0;
end:
    if (rc) capmoe_cli_fail_rank(comm, "generate", &err);
    free(ids);
    free(out);
    free(logits);
    free(scratch);
    capmoe_kv_free(kv);
    capmoe_model_free(m);
    capmoe_tokenizer_free(tok);
    capmoe_comm_finalize(comm);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("capmoe %s (revision %s)\n", CAPMOE_VERSION, capmoe_revision());
        capmoe_sysinfo si;
        capmoe_sysinfo_get(&si);
        capmoe_sysinfo_print(stdout, &si, 0);
        return 0;
    }
    const char *cmd = argv[1];
    for (size_t i = 0; i < sizeof HELP / sizeof HELP[0]; i++)
        if (strcmp(cmd, HELP[i].cmd) == 0 && wants_help(argc - 2, argv + 2)) {
            fputs(HELP[i].text, stdout);
            if (strcmp(cmd, "logits") == 0 || strcmp(cmd, "generate") == 0) {
                fputs(DISPATCH_HELP, stdout);
                fputs(CAPMOE_CLI_ENGINE_HELP, stdout);
            }
            return 0;
        }
    if (strcmp(cmd, "logits") == 0) return cmd_logits(argc - 2, argv + 2);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc - 2, argv + 2);
    if (strcmp(cmd, "detokenize") == 0) return cmd_detokenize(argc - 2, argv + 2);
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0) {
        for (int i = 2; i < argc; i++) /* measured expert parallelism across processes */
            if ((strcmp(argv[i], "--ep") == 0 && i + 1 < argc && strcmp(argv[i + 1], "mpi") == 0) ||
                strcmp(argv[i], "--ep=mpi") == 0)
                return capmoe_cmd_bench_ep(argc - 2, argv + 2);
        return capmoe_cmd_bench(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "perplexity") == 0) return capmoe_cmd_perplexity(argc - 2, argv + 2);
    if (strcmp(cmd, "synth") == 0) return capmoe_cmd_synth(argc - 2, argv + 2);
    fprintf(stderr, "capmoe: unknown command '%s'\n%s", cmd, USAGE);
    return 2;
}
