/* cli.h - shared pieces of the `capmoe` command-line tool (server/cli/cli_*.c):
 * option parsing with strict number checks, the dispatch options common to
 * every subcommand, and the subcommands that live outside main_cli.c. */
#ifndef CAPMOE_CLI_H
#define CAPMOE_CLI_H

#include "capmoe/comm.h"
#include "capmoe/dispatch.h"
#include "capmoe/quant.h"
#include "capmoe/model.h"
#include "capmoe/stats.h"

/* A parsed command line: --name value pairs and --flag switches, in order. */
typedef struct capmoe_cli_args {
    int n;
    const char *name[128];
    const char *value[128]; /* NULL for a switch */
    int used[128];
    char namebuf[128][64]; /* names given as --name=value */
} capmoe_cli_args;

/* Parses argv (after the subcommand). `switches` lists the option names that
 * take no value (e.g. "renormalize"). Returns 0 or -1 with err set. */
int capmoe_cli_parse(capmoe_cli_args *a, int argc, char **argv, const char *const *switches,
                     capmoe_error *err);
/* Last value of --name (NULL if absent); marks it used. */
const char *capmoe_cli_get(capmoe_cli_args *a, const char *name);
int capmoe_cli_has(capmoe_cli_args *a, const char *name);
/* Strict number parsing; errors name the option. */
int capmoe_cli_int(capmoe_cli_args *a, const char *name, long lo, long hi, long def, long *out,
                   capmoe_error *err);
int capmoe_cli_double(capmoe_cli_args *a, const char *name, double lo, double hi, double def,
                      double *out, capmoe_error *err);
/* Fails naming the first option that no subcommand code looked at. */
int capmoe_cli_check_unused(const capmoe_cli_args *a, capmoe_error *err);
/* "5,9,12" -> malloc'd ids. */
int capmoe_cli_parse_ids(const char *s, int32_t **ids, int *n, capmoe_error *err);
/* The dispatch options: --policy --capacity-factor G|auto --ep-ranks
 * --renormalize --min-tokens --drop-budget --piggyback-k0 N
 * --decode-policy P --regime-tokens N|auto (auto sets cfg->regime_auto;
 * the command resolves it once the model is loaded: capmoe_cli_regime). */
int capmoe_cli_dispatch(capmoe_cli_args *a, capmoe_dispatch_cfg *cfg, capmoe_error *err);
/* The engine options every model-loading command takes: --threads N (0 or
 * absent: one per usable CPU), --compute f32|bf16 (or CAPMOE_COMPUTE),
 * --bf16-min-rows N, --kv-dtype f32|bf16 (or CAPMOE_KV_DTYPE),
 * --weights bf16|q8|q4 (or CAPMOE_WEIGHTS; bf16: as stored), --quantize
 * experts|all (or CAPMOE_QUANTIZE; all needs q8 or q4), into o (other fields
 * zeroed). */
int capmoe_cli_engine(capmoe_cli_args *a, capmoe_model_opts *o, capmoe_error *err);
#define CAPMOE_CLI_ENGINE_HELP \
    "engine options:\n" \
    "  --threads N                engine threads (default 0: one per CPU this process may use)\n" \
    "  --weights bf16|q8|q4       quantize the experts' matrices at load (q8: int8 blocks of\n" \
    "                             32 with a scale; q4: 4-bit blocks of 32, scale and minimum;\n" \
    "                             default $CAPMOE_WEIGHTS, else bf16: as stored)\n" \
    "  --quantize experts|all     what --weights q8|q4 quantizes: the routed experts (default,\n" \
    "                             $CAPMOE_QUANTIZE) or also attention, shared/dense MLPs, lm_head\n" \
    "  --compute f32|bf16         experts' large products: f32 (exact, default) or BF16 through\n" \
    "                             oneDNN (AMX / AVX512-BF16; env CAPMOE_COMPUTE)\n" \
    "  --bf16-min-rows N          bf16: an expert's products go to oneDNN from N rows (16)\n" \
    "  --kv-dtype f32|bf16        KV cache elements: f32 (exact, default) or bf16 (half the\n" \
    "                             memory; env CAPMOE_KV_DTYPE)\n"

/* --regime-tokens auto: measures the crossover on the loaded model
 * (capmoe_model_regime_probe, T up to 256, best of 3) and sets
 * cfg->regime_tokens to it; probe (may be NULL) receives the measurement.
 * No-op (0) without auto. Fails under --ep mpi. */
int capmoe_cli_regime(capmoe_model *m, capmoe_dispatch_cfg *cfg, capmoe_regime_probe *probe,
                      capmoe_error *err);

/* "1.0,1.5,2.0" into out[0..*n) (at most max values in [lo, hi]; "" gives
 * none); errors name --name. */
int capmoe_cli_list_d(const char *name, const char *s, double lo, double hi, double *out, int *n,
                      int max, capmoe_error *err);
int capmoe_cli_list_i(const char *name, const char *s, long lo, long hi, int *out, int *n,
                      int max, capmoe_error *err);
/* The runs of a benchmark: policy none first, then every other policy of
 * the comma-separated list at every gamma (duplicates once). */
int capmoe_cli_configs(const char *policies, const double *gammas, int n_gam,
                       capmoe_policy *pol, double *gamma, int *n, int max, capmoe_error *err);

/* --ep threads|mpi (cli_mpi.c). With mpi, starts the MPI process group
 * (*comm, NULL otherwise) and sets cfg->ep_ranks to its size; an --ep-ranks
 * that differs is refused. Call after capmoe_cli_dispatch. */
int capmoe_cli_ep(capmoe_cli_args *a, capmoe_dispatch_cfg *cfg, capmoe_comm **comm,
                  capmoe_error *err);
/* Every rank says whether it is fine; 1 when all are (ok itself without
 * MPI). A rank that was fine while another was not gets a message in err. */
int capmoe_cli_agree(capmoe_comm *c, int ok, capmoe_error *err);
/* After loading the model under --ep mpi: every rank checks that all
 * loaded the same model with the same build (capmoe_engine_check_ranks);
 * 1 when fine (ok itself without MPI). err names the failing rank. */
int capmoe_cli_check_load(capmoe_comm *c, const char *model_dir, int ok, capmoe_error *err);
/* Prints this rank's error (naming the rank under MPI); returns 1. */
int capmoe_cli_fail_rank(capmoe_comm *c, const char *cmd, const capmoe_error *err);
/* Gathers every rank's per-layer figures at rank 0 and merges them into
 * st->layers there (capmoe_layer_stats_merge_ranks). No-op without MPI. */
int capmoe_cli_gather_stats(capmoe_comm *c, capmoe_forward_stats *st, capmoe_error *err);

/* The float32 products of one expert at m rows (gate and up: m x H times
 * 2 IW x H; down: m x IW times H x IW), best of 3 after a warm-up, in GFLOP/s,
 * two ways: *blas through OpenBLAS's own threads (threads of them), *engine
 * through capmoe_gemm_nt over a pool of threads. 0, or -1 (out of memory or
 * bad sizes; both set to -1). server/cli/cli_matmul.c. */
int capmoe_cli_sgemm_experts(int m, int H, int IW, int threads, double *blas, double *engine);

/* Subcommands implemented in server/cli/cli_bench.c, cli_perplexity.c, cli_synth.c. */
int capmoe_cmd_bench(int argc, char **argv);
int capmoe_cmd_bench_ep(int argc, char **argv); /* bench --ep mpi (cli_bench_ep.c) */
int capmoe_cmd_perplexity(int argc, char **argv);
int capmoe_cmd_synth(int argc, char **argv);

#endif
