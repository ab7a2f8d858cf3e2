/* cli_bench.c - `capmoe bench`: throughput, expert loads, stragglers and the
 * modelled expert-parallel speedup of each dispatch policy on a real model
 * directory, with the machine's own ceilings measured in the same run.
 *
 *   capmoe bench --model DIR [--policies none,drop,reroute,expanded]
 *                [--gammas 1.0,1.5,2.0] [--ep-ranks R] [--prefill 64,256,1024,4096,8192]
 *                [--decode 1,16,64] [--repeat 2] [--seed 0] [--text FILE]
 *                [--format json|table] [--seq-len 512] [--decode-context 64]
 *                [--decode-steps 8] [--min-tokens 16] [--renormalize]
 *                [--sgemm-size 2048] [--copy-mib 256]
 *
 * What is measured (the "definitions" object of the output says it too):
 *  - Ceilings: sgemm through capmoe_gemm_nt, the engine's own GEMM path (one
 *    thread per core, each running single-threaded OpenBLAS on its columns), on
 *    square N x N float32 matrices, best of 5, 2 N^3 flops; memory bandwidth = bytes read + bytes written per second of
 *    a memcpy of --copy-mib MiB (best of 3), with 1 thread and with one thread
 *    per core. Both are measured before and after the runs (the machine may be
 *    shared) and the largest value is the ceiling. And the float32 product at
 *    the experts' own shapes (cli_matmul.c; the mean rows per expert of the
 *    largest prefill), the best of OpenBLAS's threads and the engine's path.
 *  - Prefill T: the T tokens are split into max(R, ceil(T / seq_len)) sequences
 *    (at most T; sequence i lives on rank i mod R), token ids uniform random
 *    (seeded) or taken in order from --text through the model's tokenizer. Each
 *    run is one forward from empty KV caches with no logits; one untimed warm-up
 *    run per T; the configurations (policy x gamma) run round-robin, --repeat
 *    rounds, so that load from other processes hits them alike; the fastest
 *    run of each is reported.
 *  - Decode B: per configuration, B sequences are prefilled with
 *    --decode-context tokens (untimed, policy none) and take one untimed step;
 *    then --repeat rounds, round-robin over the configurations, of
 *    --decode-steps steps of B tokens (one per sequence, last-token logits
 *    computed as a server would), every configuration decoding the same ids.
 *    The median step time is reported; loads are averaged over the steps.
 *  - Per MoE layer (means over layers, and over steps for decode): MoE block
 *    time, router and expert-phase times, max/mean expert load, max rank load,
 *    straggler ratio (slowest rank time / mean rank time), dropped routing mass.
 *    Pair counts are summed over layers (and steps).
 *  - Modelled expert-parallel layer time = max over ranks of the rank load x the
 *    per-pair expert cost c, c measured from the `none` run of the same T (or B)
 *    in the same process: c = sum of rank busy times / pairs when R <= cores,
 *    else (ranks share cores) c = sum of the rank threads' CPU times / pairs.
 *  - Speedups are ratios against the `none` run of the same T (or B):
 *    wall-clock forward time, MoE block time, and modelled EP layer time.
 *  - Flops: 2 x (attention projections + router + computed expert pairs x
 *    3 x H x I + shared expert + dense MLP) per token, plus causal attention
 *    4 x (heads x head_dim) x attended positions; embeddings and lm_head are
 *    not counted (prefill computes no logits). Latent attention (DeepSeek):
 *    the projections (q or q_a + q_b, kv_a, o) and kv_b_proj's heads x
 *    (qk_nope + v) x kv_lora_rank per token, plus 2 x heads x (qk_nope +
 *    qk_rope + v) per attended position for prefill (the expanded form) or
 *    2 x heads x (2 kv_lora_rank + qk_rope) for decode (the absorbed form). The prefill ratio is the flop
 *    rate of the `none` run at the largest T over the sgemm rate.
 *  - Decode ratio at B = 1 (`none`): capmoe_model_active_bytes_per_token (k
 *    experts + attention + router + lm_head weights) / median step time, over
 *    the bandwidth ceiling. KV-cache reads are not counted. */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capmoe/ceiling.h"
#include "capmoe/cli.h"
#include "capmoe/ep.h"
#include "capmoe/model.h"
#include "capmoe/ops.h"
#include "capmoe/stats.h"
#include "capmoe/sysinfo.h"
#include "capmoe/tokenizer.h"

static const char *BENCH_USAGE =
    "usage: capmoe bench --model DIR [options]\n"
    "  --policies LIST      none,drop,reroute,expanded,rank_drop,piggyback (default\n"
    "                       none,drop,reroute,expanded; none is always run)\n"
    "  --piggyback-k0s LIST piggyback runs, one per k0 (default 1,k/4,k/2 of the model)\n"
    "  --regime-max N       the memory/compute crossover probe: T = 1, 2, 3, 4, 6, 8 ... N (256;\n"
    "                       0 skips it)\n"
    "  --gammas LIST        capacity factors (default 1.0,1.5,2.0)\n"
    "  --ep-ranks R         expert-parallel ranks (default: number of experts, or its\n"
    "                       largest divisor <= 64)\n"
    "  --prefill LIST       prefill batch sizes in tokens (default 64,256,1024,4096,8192;\n"
    "                       \"\" for none)\n"
    "  --decode LIST        decode batch sizes in sequences (default 1,16,64; \"\" for none)\n"
    "  --repeat N (2)  --seed S (0)  --text FILE (token ids from a text)\n"
    "  --weights bf16|q8|q4 experts quantized at load (default $CAPMOE_WEIGHTS, else bf16)\n"
    "  --quantize experts|all  what --weights q8|q4 quantizes (default $CAPMOE_QUANTIZE, else experts)\n"
    "  --format json|table (json)  --seq-len N (512)  --decode-context N (64)\n"
    "  --decode-steps N (8)  --min-tokens N (16)  --renormalize\n"
    "  --sgemm-size N (2048)  --copy-mib N (256)\n"
    "  --threads N          engine threads (default 0: one per CPU this process may use)\n"
    "  --compute f32|bf16   experts' large products in float32 (default) or BF16 (oneDNN)\n"
    "  --bf16-min-rows N    bf16: from this many rows per expert (16)\n"
    "  --kv-dtype f32|bf16  KV cache elements (default f32)\n";

#define MAX_LIST 32

/* ---- small helpers --------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- machine ceilings -------------------------------------------------------- */

static double measure_sgemm(int n, int threads, capmoe_error *err) {
    size_t nn = (size_t)n * (size_t)n;
    float *A = capmoe_malloc_array(nn, sizeof(float));
    float *B = capmoe_malloc_array(nn, sizeof(float));
    float *C = capmoe_malloc_array(nn, sizeof(float));
    double best = -1.0;
    if (!A || !B || !C) {
        capmoe_set_error(err, "out of memory for the %d x %d sgemm", n, n);
    } else {
        uint64_t s = 12345;
        for (size_t i = 0; i < nn; i++) {
            A[i] = (float)((rng_next(&s) >> 40) * (1.0 / 16777216.0) - 0.5);
            B[i] = (float)((rng_next(&s) >> 40) * (1.0 / 16777216.0) - 0.5);
            C[i] = 0.0f;
        }
        /* The engine's own path: its pool of one thread per core, each
         * running single-threaded OpenBLAS on its share of the columns. */
        capmoe_blas_single_threaded();
        capmoe_par *par = capmoe_par_new(threads, NULL);
        capmoe_gemm_nt(par, C, n, A, n, capmoe_wmat_f32(B), n, n, n, n, 1.0f, 0.0f); /* warm-up */
        for (int r = 0; r < 5; r++) {
            double t0 = capmoe_now();
            capmoe_gemm_nt(par, C, n, A, n, capmoe_wmat_f32(B), n, n, n, n, 1.0f, 0.0f);
            double t = capmoe_now() - t0;
            if (t > 0 && (best < 0 || t < best)) best = t;
        }
        capmoe_par_free(par);
    }
    free(A);
    free(B);
    free(C);
    return best > 0 ? 2.0 * (double)n * n * n / best / 1e9 : -1.0;
}

struct copy_job {
    char *dst;
    const char *src;
    size_t n;
};

static void *copy_main(void *v) {
    struct copy_job *j = v;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* Best-of-3 memcpy of `bytes` with `threads` threads (1..64); GB/s of read +
 * write. Thread 0 is the caller; a thread that cannot start is done inline. */
static double measure_copy(char *dst, const char *src, size_t bytes, int threads) {
    double best = -1.0;
    for (int r = 0; r < 3; r++) {
        pthread_t th[64];
        int started[64] = {0};
        struct copy_job jobs[64];
        size_t chunk = bytes / (size_t)threads;
        for (int i = 0; i < threads; i++) {
            jobs[i].dst = dst + (size_t)i * chunk;
            jobs[i].src = src + (size_t)i * chunk;
            jobs[i].n = i == threads - 1 ? bytes - (size_t)i * chunk : chunk;
        }
        double t0 = capmoe_now();
        for (int i = 1; i < threads; i++)
            started[i] = pthread_create(&th[i], NULL, copy_main, &jobs[i]) == 0;
        copy_main(&jobs[0]);
        for (int i = 1; i < threads; i++) {
            if (started[i]) pthread_join(th[i], NULL);
            else copy_main(&jobs[i]);
        }
        double t = capmoe_now() - t0;
        if (t > 0 && (best < 0 || t < best)) best = t;
    }
    return best > 0 ? 2.0 * (double)bytes / best / 1e9 : -1.0;
}

typedef struct ceilings {
    double sgemm, bw1, bwn;
} ceilings;

/* The sgemm rate and the copy bandwidths (1 thread and one per core). */
static int measure_ceilings(int sg_n, size_t bytes, int cores, ceilings *cl, capmoe_error *err) {
    cl->sgemm = measure_sgemm(sg_n, cores, err);
    if (cl->sgemm < 0) return -1;
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (!src || !dst) {
        free(src);
        free(dst);
        return capmoe_set_error(err, "out of memory for the %zu MiB copy", bytes >> 20);
    }
    memset(src, 1, bytes);
    memset(dst, 2, bytes);
    cl->bw1 = measure_copy(dst, src, bytes, 1);
    cl->bwn = measure_copy(dst, src, bytes, cores < 64 ? cores : 64);
    free(src);
    free(dst);
    return 0;
}

/* ---- what one configuration measured ------------------------------------------- */

typedef struct agg {
    int forwards;          /* forwards aggregated */
    int obs;               /* MoE-layer observations */
    double time;           /* forward time (prefill: fastest; decode: median step) */
    double attn, moe, attn_proj, attn_core;     /* per forward, summed over layers */
    double layer_time, router_time, expert_time; /* sums over observations */
    double imbalance, max_load, mean_load, max_rank_load, straggler, dropped_mass;
    double rank_time_sum;  /* sum of rank busy times */
    double rank_cpu_sum;   /* sum of rank thread CPU times */
    long routed, computed, dropped, rerouted, piggybacked;
    double activated;      /* experts with a load, summed over observations */
    int capacity;          /* C of the last limited layer (-1: never limited) */
    int limited, unlimited; /* layer observations with / without a limit */
    double flops;          /* per forward */
} agg;

typedef struct bench {
    capmoe_model *m;
    const capmoe_hfconfig *c;
    int R, cores, seq_len;
    capmoe_dispatch_cfg base;
    const int32_t *text_ids;
    int n_text;
    size_t text_pos;
    uint64_t rng;
    capmoe_layer_stats *ls;
    int n_ls;
    double expert_bytes;   /* capmoe_model_expert_bytes */
} bench;

static void fill_ids(bench *b, int32_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        if (b->text_ids) {
            ids[i] = b->text_ids[b->text_pos];
            b->text_pos = (b->text_pos + 1) % (size_t)b->n_text;
        } else {
            ids[i] = (int32_t)(rng_next(&b->rng) % (uint64_t)b->c->vocab_size);
        }
    }
}

/* Flops of one forward, given its stats (pairs computed per layer) and the
 * attended positions (sum over new tokens of the context length seen);
 * decode: the forward is a decode step (latent attention: absorbed form). */
static double forward_flops(const bench *b, const capmoe_forward_stats *st, double attended,
                            int decode) {
    const capmoe_hfconfig *c = b->c;
    double H = c->hidden_size, d = c->head_dim, qd = c->n_heads * d, kd = c->n_kv_heads * d;
    double T = st->tokens, f = 0.0;
    double nH = c->n_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    double dv = c->v_head_dim, kvl = c->kv_lora_rank, ql = c->q_lora_rank;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->kv_lora_rank > 0) {
            double q = ql > 0 ? H * ql + ql * nH * (dn + dr) : H * nH * (dn + dr);
            f += 2.0 * T * (q + H * (kvl + dr) + nH * dv * H + nH * (dn + dv) * kvl);
            f += 2.0 * nH * attended * (decode ? 2 * kvl + dr : dn + dr + dv);
        } else {
            f += 2.0 * T * H * (2 * qd + 2 * kd) + 4.0 * qd * attended;
        }
        if (!c->layer_is_moe[l]) f += 2.0 * T * 3 * H * c->intermediate_size;
    }
    for (int l = 0; l < st->n_moe; l++) {
        long pairs = 0;
        for (int e = 0; e < st->layers[l].n_experts; e++) pairs += st->layers[l].loads[e];
        f += 2.0 * T * H * c->n_experts;
        f += 2.0 * (double)pairs * 3 * H * c->moe_intermediate_size;
        f += 2.0 * T * (3 * H * c->shared_expert_intermediate_size +
                        (c->shared_expert_intermediate_size > 0 ? H : 0));
    }
    return f;
}

static void add_stats(agg *a, const capmoe_forward_stats *st, int k) {
    a->forwards++;
    a->attn += st->attn_time;
    a->moe += st->moe_time;
    a->attn_proj += st->attn_proj_time;
    a->attn_core += st->attn_core_time;
    for (int l = 0; l < st->n_moe; l++) {
        const capmoe_layer_stats *ls = &st->layers[l];
        long sum = 0;
        int mx = 0;
        for (int e = 0; e < ls->n_experts; e++) {
            sum += ls->loads[e];
            if (ls->loads[e] > mx) mx = ls->loads[e];
        }
        a->obs++;
        a->layer_time += ls->layer_time;
        a->router_time += ls->router_time;
        a->expert_time += ls->expert_time;
        a->imbalance += capmoe_layer_load_imbalance(ls);
        a->max_load += mx;
        a->mean_load += ls->n_experts > 0 ? (double)sum / ls->n_experts : 0.0;
        a->max_rank_load += capmoe_layer_max_rank_load(ls);
        a->straggler += capmoe_layer_straggler_ratio(ls);
        a->dropped_mass += ls->dropped_mass;
        for (int r = 0; r < ls->n_ranks; r++) {
            a->rank_time_sum += ls->rank_time[r];
            a->rank_cpu_sum += ls->rank_cpu_time[r];
        }
        a->routed += (long)ls->tokens * k;
        a->computed += sum;
        a->dropped += ls->dropped;
        a->rerouted += ls->rerouted;
        a->piggybacked += ls->piggybacked;
        for (int e = 0; e < ls->n_experts; e++) a->activated += ls->loads[e] > 0;
        if (ls->limited) {
            a->limited++;
            a->capacity = ls->capacity;
        } else {
            a->unlimited++;
        }
    }
}

/* Per-pair expert cost from a `none` run (see the top of the file). */
static double pair_cost(const bench *b, const agg *none) {
    if (none->computed <= 0) return 0.0;
    if (b->R <= b->cores) return none->rank_time_sum / (double)none->computed;
    /* Ranks share cores: each rank thread's CPU time excludes its wait for a
     * core (rank threads run single-threaded BLAS when R > 1). */
    return none->rank_cpu_sum / (double)none->computed;
}

static double modelled(const agg *a, double c) {
    return a->obs > 0 ? a->max_rank_load / a->obs * c : 0.0;
}

static cJSON *run_json(const agg *a, capmoe_policy pol, double gamma, int auto_g, int k0,
                       const agg *none, double c, int tokens_per_forward, int decode,
                       double expert_bytes) {
    cJSON *o = cJSON_CreateObject();
    double n = a->obs > 0 ? a->obs : 1;
    double nf = a->forwards > 0 ? a->forwards : 1;
    cJSON_AddStringToObject(o, "policy", capmoe_policy_name(pol));
    if (pol == CAPMOE_POLICY_PIGGYBACK) cJSON_AddNumberToObject(o, "piggyback_k0", k0);
    if (pol == CAPMOE_POLICY_NONE || pol == CAPMOE_POLICY_PIGGYBACK)
        cJSON_AddNullToObject(o, "capacity_factor");
    else if (auto_g) cJSON_AddStringToObject(o, "capacity_factor", "auto");
    else cJSON_AddNumberToObject(o, "capacity_factor", gamma);
    if (a->limited > 0 && a->unlimited == 0) cJSON_AddNumberToObject(o, "capacity", a->capacity);
    else cJSON_AddNullToObject(o, "capacity");
    cJSON_AddNumberToObject(o, "time_s", a->time);
    cJSON_AddNumberToObject(o, "tokens_per_s", a->time > 0 ? tokens_per_forward / a->time : 0);
    cJSON_AddNumberToObject(o, "attn_time_s", a->attn / nf);
    cJSON_AddNumberToObject(o, "moe_time_s", a->moe / nf);
    /* where attention's time goes (seconds per forward, all layers) */
    cJSON_AddNumberToObject(o, "attn_proj_time_s", a->attn_proj / nf);
    cJSON_AddNumberToObject(o, "attn_core_time_s", a->attn_core / nf);
    cJSON_AddNumberToObject(o, "moe_layer_time_s", a->layer_time / n);
    cJSON_AddNumberToObject(o, "router_time_s", a->router_time / n);
    cJSON_AddNumberToObject(o, "expert_time_s", a->expert_time / n);
    cJSON_AddNumberToObject(o, "max_mean_load", a->imbalance / n);
    cJSON_AddNumberToObject(o, "max_load", a->max_load / n);
    cJSON_AddNumberToObject(o, "mean_load", a->mean_load / n);
    cJSON_AddNumberToObject(o, "max_rank_load", a->max_rank_load / n);
    cJSON_AddNumberToObject(o, "straggler_ratio", a->straggler / n);
    cJSON_AddNumberToObject(o, "dropped_mass", a->dropped_mass / n);
    cJSON_AddNumberToObject(o, "routed_pairs", (double)a->routed);
    cJSON_AddNumberToObject(o, "computed_pairs", (double)a->computed);
    cJSON_AddNumberToObject(o, "dropped_pairs", (double)a->dropped);
    cJSON_AddNumberToObject(o, "rerouted_pairs", (double)a->rerouted);
    cJSON_AddNumberToObject(o, "dropped_fraction",
                            a->routed > 0 ? (double)a->dropped / (double)a->routed : 0.0);
    cJSON_AddNumberToObject(o, "piggybacked_pairs", (double)a->piggybacked);
    /* what a memory-bound step reads: every activated expert of every MoE layer */
    cJSON_AddNumberToObject(o, "activated_experts", a->activated / n);
    cJSON_AddNumberToObject(o, "expert_bytes_per_forward", a->activated / nf * expert_bytes);
    double mt = modelled(a, c), mn = modelled(none, c);
    cJSON_AddNumberToObject(o, "modelled_ep_layer_time_s", mt);
    cJSON_AddNumberToObject(o, "gflops", a->time > 0 ? a->flops / a->time / 1e9 : 0);
    cJSON_AddNumberToObject(o, "speedup_wall", a->time > 0 ? none->time / a->time : 0);
    double ml = a->layer_time / n, nl = none->layer_time / (none->obs > 0 ? none->obs : 1);
    cJSON_AddNumberToObject(o, "speedup_moe_wall", ml > 0 ? nl / ml : 0);
    cJSON_AddNumberToObject(o, "speedup_modelled", mt > 0 ? mn / mt : 0);
    (void)decode;
    return o;
}

/* ---- prefill ----------------------------------------------------------------- */

typedef struct cfg_list {
    int n;
    capmoe_policy pol[MAX_LIST * MAX_LIST + 1];
    double gamma[MAX_LIST * MAX_LIST + 1];
    int k0[MAX_LIST * MAX_LIST + 1]; /* piggyback's k0 (0 for the other policies) */
} cfg_list;

/* The dispatch configuration of run i of the list. */
static capmoe_dispatch_cfg run_cfg(const bench *b, const cfg_list *cl, int i) {
    capmoe_dispatch_cfg cfg = b->base;
    cfg.policy = cl->pol[i];
    cfg.capacity_factor = cl->gamma[i] > 0 ? cl->gamma[i] : 1.0;
    cfg.piggyback_k0 = cl->k0[i];
    return cfg;
}

static int run_prefill(bench *b, int T, const cfg_list *cl, int repeat, cJSON *out_arr,
                       double *none_gflops, capmoe_error *err) {
    const capmoe_hfconfig *c = b->c;
    int n_seqs = (T + b->seq_len - 1) / b->seq_len;
    if (n_seqs < b->R) n_seqs = b->R;
    if (n_seqs > T) n_seqs = T;
    capmoe_batch_seq *seqs = calloc((size_t)n_seqs, sizeof *seqs);
    int32_t *ids = capmoe_malloc_array((size_t)T, sizeof *ids);
    agg *res = calloc((size_t)cl->n, sizeof *res);
    int rc = -1;
    if (!seqs || !ids || !res) {
        capmoe_set_error(err, "out of memory");
        goto end;
    }
    fill_ids(b, ids, T);
    double attended = 0.0;
    for (int s = 0, off = 0; s < n_seqs; s++) {
        int len = T / n_seqs + (s < T % n_seqs ? 1 : 0);
        seqs[s].kv = capmoe_kv_new(b->m, len);
        if (!seqs[s].kv) {
            capmoe_set_error(err, "out of memory for KV caches");
            goto end;
        }
        seqs[s].tokens = ids + off;
        seqs[s].n_tokens = len;
        seqs[s].want = CAPMOE_LOGITS_NONE;
        seqs[s].rank = s % b->R;
        attended += (double)len * (len + 1) / 2.0;
        off += len;
    }
    capmoe_forward_stats st = {.layers = b->ls, .cap_layers = b->n_ls};
    /* Warm-up: grows the scratch buffers and the caches. */
    capmoe_dispatch_cfg cfg = b->base;
    cfg.policy = CAPMOE_POLICY_NONE;
    if (capmoe_model_forward(b->m, seqs, n_seqs, &cfg, NULL, &st, err)) goto end;
    /* Round-robin over the configurations, so that a burst of load from other
     * processes hits them alike; the fastest run of each is kept. */
    for (int i = 0; i < cl->n; i++) res[i].time = -1;
    for (int r = 0; r < repeat; r++) {
        for (int i = 0; i < cl->n; i++) {
            cfg = run_cfg(b, cl, i);
            for (int s = 0; s < n_seqs; s++) capmoe_kv_clear(seqs[s].kv);
            if (isatty(2))
                fprintf(stderr, "\rbench: prefill T=%d %s %g run %d/%d   ", T,
                        capmoe_policy_name(cfg.policy), cfg.capacity_factor, r + 1, repeat);
            if (capmoe_model_forward(b->m, seqs, n_seqs, &cfg, NULL, &st, err)) goto end;
            agg *best = &res[i];
            if (best->time < 0 || st.total_time < best->time) {
                memset(best, 0, sizeof *best);
                best->capacity = -1;
                add_stats(best, &st, c->top_k);
                best->time = st.total_time;
                best->flops = forward_flops(b, &st, attended, 0);
            }
        }
    }
    if (isatty(2)) fputs("\r\033[K", stderr);
    double cost = pair_cost(b, &res[0]);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens", T);
    cJSON_AddNumberToObject(o, "sequences", n_seqs);
    cJSON_AddNumberToObject(o, "per_pair_cost_s", cost);
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    for (int i = 0; i < cl->n; i++)
        cJSON_AddItemToArray(runs, run_json(&res[i], cl->pol[i], cl->gamma[i], 0, cl->k0[i],
                                            &res[0], cost, T, 0, b->expert_bytes));
    cJSON_AddItemToArray(out_arr, o);
    *none_gflops = res[0].time > 0 ? res[0].flops / res[0].time / 1e9 : 0;
    rc = 0;
end:
    for (int s = 0; seqs && s < n_seqs; s++) capmoe_kv_free(seqs[s].kv);
    free(seqs);
    free(ids);
    free(res);
    return rc;
}

/* ---- decode ------------------------------------------------------------------ */

static int run_decode(bench *b, int B, int ctx, int steps, const cfg_list *cl, int repeat,
                      cJSON *out_arr, double *none_step_time, capmoe_error *err) {
    const capmoe_hfconfig *c = b->c;
    int n_steps = steps * repeat, nc = cl->n;
    size_t n_ids = (size_t)B * (size_t)(ctx + n_steps + 1);
    /* One set of B caches per configuration; every configuration decodes the
     * same token ids after the same context. */
    capmoe_kv **kv = calloc((size_t)nc * (size_t)B, sizeof *kv);
    capmoe_batch_seq *seqs = calloc((size_t)B, sizeof *seqs);
    int32_t *ids = capmoe_malloc_array(n_ids, sizeof *ids);
    float *logits = capmoe_malloc_array((size_t)B * (size_t)c->vocab_size, sizeof(float));
    double *times = calloc((size_t)nc * (size_t)n_steps, sizeof *times);
    agg *res = calloc((size_t)nc, sizeof *res);
    int rc = -1;
    if (!kv || !seqs || !ids || !logits || !times || !res) {
        capmoe_set_error(err, "out of memory");
        goto end;
    }
    fill_ids(b, ids, (int)n_ids);
    const int32_t *step_ids = ids + (size_t)B * ctx; /* (1 + n_steps) x B */
    capmoe_forward_stats st = {.layers = b->ls, .cap_layers = b->n_ls};
    for (int i = 0; i < nc; i++) {
        res[i].capacity = -1;
        for (int s = 0; s < B; s++) {
            kv[i * B + s] = capmoe_kv_new(b->m, ctx + n_steps + 1);
            if (!kv[i * B + s]) {
                capmoe_set_error(err, "out of memory for KV caches");
                goto end;
            }
        }
    }
    /* Contexts (untimed, policy none), then one untimed step per configuration. */
    for (int i = 0; i < nc; i++) {
        capmoe_dispatch_cfg cfg = b->base;
        if (ctx > 0) {
            for (int s = 0; s < B; s++)
                seqs[s] = (capmoe_batch_seq){.kv = kv[i * B + s], .tokens = ids + (size_t)s * ctx,
                                             .n_tokens = ctx, .want = CAPMOE_LOGITS_NONE,
                                             .rank = s % b->R};
            if (capmoe_model_forward(b->m, seqs, B, &cfg, NULL, &st, err)) goto end;
        }
        cfg = run_cfg(b, cl, i);
        for (int s = 0; s < B; s++)
            seqs[s] = (capmoe_batch_seq){.kv = kv[i * B + s], .tokens = step_ids + s,
                                         .n_tokens = 1, .want = CAPMOE_LOGITS_LAST,
                                         .rank = s % b->R};
        if (capmoe_model_forward(b->m, seqs, B, &cfg, logits, &st, err)) goto end;
    }
    /* Timed steps, round-robin over the configurations (--decode-steps each). */
    for (int r = 0; r < repeat; r++) {
        for (int i = 0; i < nc; i++) {
            capmoe_dispatch_cfg cfg = run_cfg(b, cl, i);
            for (int k = 0; k < steps; k++) {
                int step = r * steps + k;
                double attended = 0.0;
                for (int s = 0; s < B; s++) {
                    capmoe_kv *q = kv[i * B + s];
                    seqs[s] = (capmoe_batch_seq){.kv = q,
                                                 .tokens = step_ids + (size_t)(1 + step) * B + s,
                                                 .n_tokens = 1, .want = CAPMOE_LOGITS_LAST,
                                                 .rank = s % b->R};
                    attended += capmoe_kv_len(q) + 1;
                }
                if (isatty(2))
                    fprintf(stderr, "\rbench: decode B=%d %s %g step %d/%d   ", B,
                            capmoe_policy_name(cfg.policy), cfg.capacity_factor, step + 1,
                            n_steps);
                if (capmoe_model_forward(b->m, seqs, B, &cfg, logits, &st, err)) goto end;
                times[(size_t)i * n_steps + step] = st.total_time;
                add_stats(&res[i], &st, c->top_k);
                res[i].flops += forward_flops(b, &st, attended, 1);
            }
        }
    }
    for (int i = 0; i < nc; i++) {
        double *t = times + (size_t)i * n_steps;
        qsort(t, (size_t)n_steps, sizeof *t, cmp_double);
        res[i].time = n_steps % 2 ? t[n_steps / 2] : 0.5 * (t[n_steps / 2 - 1] + t[n_steps / 2]);
        res[i].flops /= n_steps;
    }
    if (isatty(2)) fputs("\r\033[K", stderr);
    double cost = pair_cost(b, &res[0]);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "batch", B);
    cJSON_AddNumberToObject(o, "context", ctx);
    cJSON_AddNumberToObject(o, "steps", n_steps);
    cJSON_AddNumberToObject(o, "per_pair_cost_s", cost);
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    for (int i = 0; i < nc; i++)
        cJSON_AddItemToArray(runs, run_json(&res[i], cl->pol[i], cl->gamma[i], 0, cl->k0[i],
                                            &res[0], cost, B, 1, b->expert_bytes));
    cJSON_AddItemToArray(out_arr, o);
    *none_step_time = res[0].time;
    rc = 0;
end:
    for (size_t i = 0; kv && i < (size_t)nc * (size_t)B; i++) capmoe_kv_free(kv[i]);
    free(kv);
    free(seqs);
    free(ids);
    free(logits);
    free(times);
    free(res);
    return rc;
}

/* ---- the markdown table --------------------------------------------------------- */

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void print_runs(const cJSON *groups, const char *size_key, const char *size_label,
                       int decode) {
    printf("| %s | policy | gamma/k0 | %s | MoE ms/layer | activated | max/mean load | max rank load | "
           "straggler | dropped mass | dropped | rerouted | piggybacked | modelled EP ms/layer | "
           "speedup wall | speedup modelled |\n",
           size_label, decode ? "tok/s (median step)" : "tok/s");
    printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    const cJSON *g;
    cJSON_ArrayForEach(g, groups) {
        const cJSON *r;
        cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(g, "runs")) {
            const cJSON *pol = cJSON_GetObjectItemCaseSensitive(r, "policy");
            const cJSON *gm = cJSON_GetObjectItemCaseSensitive(r, "capacity_factor");
            char gs[32] = "-";
            if (cJSON_IsNumber(gm)) snprintf(gs, sizeof gs, "%g", gm->valuedouble);
            const cJSON *k0 = cJSON_GetObjectItemCaseSensitive(r, "piggyback_k0");
            if (cJSON_IsNumber(k0)) snprintf(gs, sizeof gs, "k0=%g", k0->valuedouble);
            printf("| %.0f | %s | %s | %.0f | %.3f | %.1f | %.2f | %.1f | %.2f | %.4f | %.0f | %.0f | "
                   "%.0f | %.3f | %.2fx | %.2fx |\n",
                   num(g, size_key), pol->valuestring, gs, num(r, "tokens_per_s"),
                   num(r, "moe_layer_time_s") * 1e3, num(r, "activated_experts"),
                   num(r, "max_mean_load"),
                   num(r, "max_rank_load"), num(r, "straggler_ratio"), num(r, "dropped_mass"),
                   num(r, "dropped_pairs"), num(r, "rerouted_pairs"), num(r, "piggybacked_pairs"),
                   num(r, "modelled_ep_layer_time_s") * 1e3, num(r, "speedup_wall"),
                   num(r, "speedup_modelled"));
        }
    }
}

static void print_table(const cJSON *o) {
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(o, "model");
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(o, "machine");
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(o, "ratios");
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(mo, "arch");
    printf("## capmoe bench\n\n");
    printf("Model: %s, hidden %.0f, %.0f layers (%.0f MoE), %.0f experts, top-%.0f, expert "
           "width %.0f, %.1f M active parameters per token.\n\n",
           cJSON_IsString(arch) ? arch->valuestring : "?", num(mo, "hidden_size"),
           num(mo, "layers"), num(mo, "moe_layers"), num(mo, "experts"), num(mo, "top_k"),
           num(mo, "moe_intermediate_size"), num(mo, "active_params_per_token") / 1e6);
    if (num(mo, "kv_bytes_per_token") != num(mo, "kv_bytes_per_token_expanded"))
        printf("KV cache: %.0f bytes per token (latent), %.0f for every head's keys and values "
               "(%.1fx).\n\n", num(mo, "kv_bytes_per_token"), num(mo, "kv_bytes_per_token_expanded"),
               num(mo, "kv_bytes_per_token_expanded") / num(mo, "kv_bytes_per_token"));
    printf("Machine: %.0f cores, %.0f expert-parallel ranks (experts per rank: %.0f), %.0f "
           "engine threads; sgemm %.0fx%.0f: %.1f GFLOP/s; memcpy bandwidth (read + write): "
           "%.1f GB/s (1 thread %.1f GB/s).\n\n",
           num(ma, "cores"), num(ma, "ep_ranks"), num(ma, "experts_per_rank"),
           num(ma, "threads"), num(ma, "sgemm_size"), num(ma, "sgemm_size"),
           num(ma, "sgemm_gflops"), num(ma, "bandwidth_gbs"), num(ma, "memcpy_gbs_1thread"));
    const cJSON *core = cJSON_GetObjectItemCaseSensitive(ma, "sgemm_blas_core");
    printf("Ceilings of the hardware (hand-written loops): FP32 FMA %.0f GFLOP/s, BF16 dot %.0f, "
           "AMX-BF16 %.0f, triad %.1f GB/s (nan: the CPU lacks it); sgemm through OpenBLAS core %s.\n\n",
           num(ma, "peak_fp32_gflops"), num(ma, "peak_bf16_dot_gflops"),
           num(ma, "peak_amx_bf16_gflops"), num(ma, "triad_gbs"),
           cJSON_IsString(core) ? core->valuestring : "?");
    const cJSON *warn = cJSON_GetObjectItemCaseSensitive(ma, "sgemm_warning");
    if (cJSON_IsString(warn)) printf("**Warning:** %s\n\n", warn->valuestring);
    const cJSON *note = cJSON_GetObjectItemCaseSensitive(ma, "note");
    if (cJSON_IsString(note)) printf("**Note:** %s\n\n", note->valuestring);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(o, "prefill");
    if (cJSON_GetArraySize(pre) > 0) {
        printf("### Prefill\n\n");
        print_runs(pre, "tokens", "T", 0);
        printf("\n");
    }
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(o, "decode");
    if (cJSON_GetArraySize(dec) > 0) {
        printf("### Decode (B concurrent sequences, one token each per step)\n\n");
        print_runs(dec, "batch", "B", 1);
        printf("\n");
    }
    const cJSON *rg = cJSON_GetObjectItemCaseSensitive(o, "regime");
    if (rg)
        printf("Memory/compute crossover: %.0f tokens per dispatch (fixed %.3f ms + %.4f ms per "
               "token over all MoE layers).\n\n",
               num(rg, "crossover_tokens"), num(rg, "fixed_seconds") * 1e3,
               num(rg, "per_token_seconds") * 1e3);
    printf("### Ratios\n\n");
    double pf = num(ra, "prefill_fraction_of_sgemm");
    if (!isnan(pf))
        printf("- Prefill (T = %.0f, none): %.1f GFLOP/s = %.1f%% of sgemm (target 50%%: %s)\n",
               num(ra, "prefill_tokens"), num(ra, "prefill_gflops"), pf * 100,
               pf >= 0.5 ? "met" : "NOT met");
    else
        printf("- Prefill: not measured\n");
    double df = num(ra, "decode_fraction_of_bandwidth");
    if (!isnan(df))
        printf("- Decode (B = 1, none): %.1f MB per token in %.2f ms = %.1f GB/s = %.1f%% of the "
               "bandwidth (target 50%%: %s)\n",
               num(ra, "decode_bytes_per_token") / 1e6, num(ra, "decode_time_per_token_s") * 1e3,
               num(ra, "decode_gbs"), df * 100, df >= 0.5 ? "met" : "NOT met");
    else
        printf("- Decode at B = 1: not measured\n");
    printf("\nSpeedups are against `none` at the same T / B in this run; modelled EP time = "
           "max rank load x per-pair expert cost measured from `none`.\n");
}

/* ---- the command ------------------------------------------------------------ */

int capmoe_cmd_bench(int argc, char **argv) {
    static const char *const SW[] = {"renormalize", "help", NULL};
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SW, &err)) {
        fprintf(stderr, "capmoe bench: %s\n%s", err.msg, BENCH_USAGE);
        return 2;
    }
    if (capmoe_cli_has(&a, "help")) {
        fputs(BENCH_USAGE, stdout);
        return 0;
    }
    const char *dir = capmoe_cli_get(&a, "model");
    const char *pol_s = capmoe_cli_get(&a, "policies");
    const char *gam_s = capmoe_cli_get(&a, "gammas");
    const char *pre_s = capmoe_cli_get(&a, "prefill");
    const char *dec_s = capmoe_cli_get(&a, "decode");
    const char *text = capmoe_cli_get(&a, "text");
    const char *fmt = capmoe_cli_get(&a, "format");
    const char *k0_s = capmoe_cli_get(&a, "piggyback-k0s");
    long regime_max;
    long R_opt, repeat, seed, seq_len, dctx, dsteps, min_tokens, sg_n, copy_mib;
    int usage = 1;
    if (!dir || !*dir) {
        capmoe_set_error(&err, "--model DIR is required");
        goto usage_err;
    }
    if (!pol_s) pol_s = "none,drop,reroute,expanded";
    if (!gam_s) gam_s = "1.0,1.5,2.0";
    if (!pre_s) pre_s = "64,256,1024,4096,8192";
    if (!dec_s) dec_s = "1,16,64";
    if (!fmt) fmt = "json";
    if (strcmp(fmt, "json") != 0 && strcmp(fmt, "table") != 0) {
        capmoe_set_error(&err, "--format: '%s' is not json or table", fmt);
        goto usage_err;
    }
    if (text && !*text) {
        capmoe_set_error(&err, "--text: empty file name");
        goto usage_err;
    }
    capmoe_dispatch_cfg base;
    capmoe_dispatch_cfg_default(&base);
    if (capmoe_cli_int(&a, "ep-ranks", 1, CAPMOE_MAX_RANKS, 0, &R_opt, &err) ||
        capmoe_cli_int(&a, "repeat", 1, 1000, 2, &repeat, &err) ||
        capmoe_cli_int(&a, "seed", 0, INT64_MAX, 0, &seed, &err) ||
        capmoe_cli_int(&a, "seq-len", 1, 1L << 20, 512, &seq_len, &err) ||
        capmoe_cli_int(&a, "decode-context", 0, 1L << 20, 64, &dctx, &err) ||
        capmoe_cli_int(&a, "decode-steps", 1, 100000, 8, &dsteps, &err) ||
        capmoe_cli_int(&a, "min-tokens", 0, 1L << 30, base.min_tokens, &min_tokens, &err) ||
        capmoe_cli_int(&a, "sgemm-size", 16, 16384, 2048, &sg_n, &err) ||
        capmoe_cli_int(&a, "copy-mib", 1, 8192, 256, &copy_mib, &err) ||
        capmoe_cli_int(&a, "regime-max", 0, 1 << 16, 256, &regime_max, &err))
        goto usage_err;
    int k0s[MAX_LIST], n_k0 = 0;
    if (k0_s && capmoe_cli_list_i("piggyback-k0s", k0_s, 1, CAPMOE_TOPK_MAX, k0s, &n_k0, MAX_LIST,
                                  &err))
        goto usage_err;
    capmoe_model_opts eng;
    if (capmoe_cli_engine(&a, &eng, &err)) goto usage_err;
    base.min_tokens = (int)min_tokens;
    base.renormalize = capmoe_cli_has(&a, "renormalize");
    double gammas[MAX_LIST];
    int n_gam, prefill[MAX_LIST], n_pre, decode[MAX_LIST], n_dec;
    if (capmoe_cli_list_d("gammas", gam_s, 1e-6, 1e6, gammas, &n_gam, MAX_LIST, &err) ||
        capmoe_cli_list_i("prefill", pre_s, 1, 1L << 20, prefill, &n_pre, MAX_LIST, &err) ||
        capmoe_cli_list_i("decode", dec_s, 1, 4096, decode, &n_dec, MAX_LIST, &err))
        goto usage_err;
    cfg_list cl = {0};
    if (capmoe_cli_configs(pol_s, gammas, n_gam, cl.pol, cl.gamma, &cl.n,
                           (int)(sizeof cl.pol / sizeof cl.pol[0]), &err))
        goto usage_err;
    if (capmoe_cli_check_unused(&a, &err)) goto usage_err;

    usage = 0;
    bench b = {0};
    capmoe_tokenizer *tok = NULL;
    int32_t *text_ids = NULL;
    cJSON *out = NULL;
    int rc = 1;
    {
        capmoe_hfconfig hc;
        if (capmoe_hfconfig_load(&hc, dir, &err)) goto end;
        /* Default: one expert per rank (Mixtral at one expert per GPU); with
         * more experts than rank workers, the largest divisor of E that fits. */
        int R = (int)R_opt;
        if (R <= 0)
            for (R = hc.n_experts < CAPMOE_MAX_RANKS ? hc.n_experts : CAPMOE_MAX_RANKS;
                 R > 1 && hc.n_experts % R != 0; R--)
                ;
        if (R < 1) R = 1;
        if (hc.n_experts > 0 && hc.n_experts % R != 0) {
            capmoe_set_error(&err, "--ep-ranks %d does not divide the %d experts of %s", R,
                             hc.n_experts, dir);
            goto end;
        }
        if (hc.n_moe_layers == 0) {
            capmoe_set_error(&err, "%s: the model has no MoE layer", dir);
            goto end;
        }
        capmoe_model_opts mo = eng;
        mo.max_ranks = R;
        if (capmoe_model_load(&b.m, dir, &mo, &err)) goto end;
        b.c = capmoe_model_config(b.m);
        b.R = R;
        b.cores = capmoe_ep_cores();
        b.seq_len = (int)seq_len < b.c->max_position_embeddings ? (int)seq_len
                                                                : b.c->max_position_embeddings;
        b.base = base;
        b.base.ep_ranks = R;
        b.rng = (uint64_t)seed;
        if (dctx + dsteps * repeat + 1 > b.c->max_position_embeddings) {
            capmoe_set_error(&err, "--decode-context %ld + %ld steps exceed the context length "
                             "%d of %s", dctx, dsteps * repeat, b.c->max_position_embeddings,
                             dir);
            goto end;
        }
        b.expert_bytes = (double)capmoe_model_expert_bytes(b.m);
        { /* piggyback has no gamma: one run per k0 instead (1, k/4, k/2 by default) */
            int k = b.c->top_k, want = 0, n = 0;
            for (int i = 0; i < cl.n; i++) {
                if (cl.pol[i] == CAPMOE_POLICY_PIGGYBACK) {
                    want = 1;
                    continue;
                }
                cl.pol[n] = cl.pol[i];
                cl.gamma[n] = cl.gamma[i];
                cl.k0[n++] = 0;
            }
            if (want && n_k0 == 0) {
                int d[3] = {1, k / 4 > 1 ? k / 4 : 1, k / 2 > 1 ? k / 2 : 1};
                for (int j = 0; j < 3; j++)
                    if (n_k0 == 0 || d[j] != k0s[n_k0 - 1]) k0s[n_k0++] = d[j];
            }
            for (int j = 0; want && j < n_k0; j++) {
                if (k0s[j] > k) {
                    capmoe_set_error(&err, "--piggyback-k0s: %d exceeds the model's k=%d", k0s[j],
                                     k);
                    goto end;
                }
                cl.pol[n] = CAPMOE_POLICY_PIGGYBACK;
                cl.gamma[n] = 0;
                cl.k0[n++] = k0s[j];
            }
            cl.n = n;
        }
        for (int i = 0; i < cl.n; i++) {
            capmoe_dispatch_cfg t = run_cfg(&b, &cl, i);
            if (capmoe_dispatch_cfg_check(&t, b.c->n_experts, &err)) goto end;
        }
        b.n_ls = b.c->n_moe_layers;
        b.ls = calloc((size_t)b.n_ls, sizeof *b.ls);
        if (!b.ls) {
            capmoe_set_error(&err, "out of memory");
            goto end;
        }
        if (text) {
            size_t len = 0;
            char *buf = capmoe_read_file(text, &len, &err);
            if (!buf) goto end;
            int n = 0;
            int r2 = capmoe_tokenizer_load(&tok, dir, &err);
            if (r2 == 0) r2 = capmoe_tokenizer_encode(tok, buf, len, 0, &text_ids, &n, &err);
            free(buf);
            if (r2) goto end;
            if (n == 0) {
                capmoe_set_error(&err, "--text %s: the text has no tokens", text);
                goto end;
            }
            for (int i = 0; i < n; i++)
                if (text_ids[i] >= b.c->vocab_size) {
                    capmoe_set_error(&err, "--text %s: token id %d is outside the model's "
                                     "vocabulary (%d)", text, text_ids[i], b.c->vocab_size);
                    goto end;
                }
            b.text_ids = text_ids;
            b.n_text = n;
        }

        /* Ceilings, measured before and after the runs; the best counts, so
         * that load from other processes at one moment does not lower them. */
        int cores = b.cores, threads = eng.threads > 0 ? eng.threads : cores;
        size_t bytes = (size_t)copy_mib << 20;
        ceilings c0, c1;
        if (measure_ceilings((int)sg_n, bytes, threads, &c0, &err)) goto end;
        /* The BLAS's kernels against the CPU's: a slow library must not set
         * the sgemm ceiling silently. */
        capmoe_sysinfo si;
        capmoe_sysinfo_get(&si);
        if (si.warning[0]) fprintf(stderr, "capmoe bench: warning: %s\n", si.warning);

        out = cJSON_CreateObject();
        cJSON *mo_j = cJSON_AddObjectToObject(out, "model");
        const capmoe_hfconfig *c = b.c;
        cJSON_AddStringToObject(mo_j, "dir", dir);
        cJSON_AddStringToObject(mo_j, "arch", c->arch_name);
        cJSON_AddNumberToObject(mo_j, "hidden_size", c->hidden_size);
        cJSON_AddNumberToObject(mo_j, "layers", c->n_layers);
        cJSON_AddNumberToObject(mo_j, "moe_layers", c->n_moe_layers);
        cJSON_AddNumberToObject(mo_j, "experts", c->n_experts);
        cJSON_AddNumberToObject(mo_j, "top_k", c->top_k);
        cJSON_AddNumberToObject(mo_j, "moe_intermediate_size", c->moe_intermediate_size);
        cJSON_AddNumberToObject(mo_j, "shared_expert_intermediate_size",
                                c->shared_expert_intermediate_size);
        cJSON_AddNumberToObject(mo_j, "vocab_size", c->vocab_size);
        size_t abpt = capmoe_model_active_bytes_per_token(b.m);
        cJSON_AddNumberToObject(mo_j, "active_params_per_token", (double)(abpt / sizeof(float)));
        cJSON_AddNumberToObject(mo_j, "active_bytes_per_token", (double)abpt);
        cJSON_AddNumberToObject(mo_j, "kv_bytes_per_token",
                                (double)capmoe_model_kv_bytes_per_token(b.m, 0));
        cJSON_AddNumberToObject(mo_j, "kv_bytes_per_token_expanded",
                                (double)capmoe_model_kv_bytes_per_token(b.m, 1));

        cJSON *ma = cJSON_AddObjectToObject(out, "machine");
        cJSON_AddNumberToObject(ma, "cores", cores);
        cJSON_AddNumberToObject(ma, "ep_ranks", R);
        cJSON_AddNumberToObject(ma, "experts_per_rank", c->n_experts / R);
        cJSON_AddBoolToObject(ma, "ranks_exceed_cores", R > cores);
        if (R > cores) {
            char note[256];
            snprintf(note, sizeof note,
                     "%d ranks run on %d cores: rank work is serialized, so wall-clock times and "
                     "straggler ratios do not show expert-parallel execution; loads and the "
                     "modelled EP layer time are the meaningful numbers", R, cores);
            cJSON_AddStringToObject(ma, "note", note);
        } else {
            cJSON_AddNullToObject(ma, "note");
        }
        cJSON_AddNumberToObject(ma, "threads", threads);
        cJSON_AddStringToObject(ma, "compute", capmoe_compute_name(capmoe_model_compute(b.m)));
        cJSON_AddStringToObject(ma, "kv_dtype",
                                capmoe_model_kv_dtype(b.m) == CAPMOE_KV_BF16 ? "bf16" : "f32");
        cJSON_AddItemToObject(ma, "system", capmoe_sysinfo_json(&si, threads));

        cJSON *se = cJSON_AddObjectToObject(out, "settings");
        cJSON *pl = cJSON_AddArrayToObject(se, "policies");
        for (int i = 0; i < cl.n; i++) /* each policy once, in the order run */
            if (i == 0 || cl.pol[i] != cl.pol[i - 1])
                cJSON_AddItemToArray(pl, cJSON_CreateString(capmoe_policy_name(cl.pol[i])));
        cJSON *gl = cJSON_AddArrayToObject(se, "gammas");
        for (int g = 0; g < n_gam; g++) cJSON_AddItemToArray(gl, cJSON_CreateNumber(gammas[g]));
        cJSON_AddNumberToObject(se, "repeat", (double)repeat);
        cJSON_AddStringToObject(se, "weights", capmoe_weights_name(capmoe_model_weights(b.m)));
        cJSON_AddStringToObject(se, "quantize", capmoe_quant_scope_name(capmoe_model_quantize(b.m)));
        cJSON_AddNumberToObject(se, "pack_s", capmoe_model_pack_seconds(b.m));
        cJSON_AddNumberToObject(se, "seed", (double)seed);
        cJSON_AddStringToObject(se, "ids", text ? "text" : "random");
        if (text) cJSON_AddStringToObject(se, "text", text);
        else cJSON_AddNullToObject(se, "text");
        cJSON_AddNumberToObject(se, "seq_len", b.seq_len);
        cJSON_AddNumberToObject(se, "decode_context", (double)dctx);
        cJSON_AddNumberToObject(se, "decode_steps", (double)dsteps);
        cJSON_AddNumberToObject(se, "min_tokens", (double)min_tokens);
        cJSON_AddBoolToObject(se, "renormalize", base.renormalize);

        cJSON *pre = cJSON_AddArrayToObject(out, "prefill");
        double pre_gflops = NAN;
        int pre_T = 0;
        for (int i = 0; i < n_pre; i++) {
            double gf;
            if (run_prefill(&b, prefill[i], &cl, (int)repeat, pre, &gf, &err)) goto end;
            if (prefill[i] >= pre_T) {
                pre_T = prefill[i];
                pre_gflops = gf;
            }
        }
        cJSON *dec = cJSON_AddArrayToObject(out, "decode");
        double dec_time = NAN;
        for (int i = 0; i < n_dec; i++) {
            double st;
            if (run_decode(&b, decode[i], (int)dctx, (int)dsteps, &cl, (int)repeat, dec, &st,
                           &err))
                goto end;
            if (decode[i] == 1) dec_time = st;
        }
        /* Decode step time against the experts it reads: a least-squares line
         * over every decode run (all B, all policies). */
        {
            double sx = 0, sy = 0, sxx = 0, sxy = 0;
            int np = 0;
            cJSON *pts = cJSON_CreateArray();
            const cJSON *g, *r;
            cJSON_ArrayForEach(g, dec) {
                cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(g, "runs")) {
                    double x = cJSON_GetObjectItemCaseSensitive(r, "activated_experts")->valuedouble;
                    double y = cJSON_GetObjectItemCaseSensitive(r, "time_s")->valuedouble;
                    double ye = cJSON_GetObjectItemCaseSensitive(r, "expert_time_s")->valuedouble;
                    cJSON *p = cJSON_CreateObject();
                    cJSON_AddNumberToObject(p, "batch",
                                            cJSON_GetObjectItemCaseSensitive(g, "batch")->valuedouble);
                    cJSON_AddItemToObject(p, "policy", cJSON_Duplicate(
                                                           cJSON_GetObjectItemCaseSensitive(r, "policy"), 1));
                    const cJSON *k0j = cJSON_GetObjectItemCaseSensitive(r, "piggyback_k0");
                    if (k0j) cJSON_AddNumberToObject(p, "piggyback_k0", k0j->valuedouble);
                    const cJSON *gj = cJSON_GetObjectItemCaseSensitive(r, "capacity_factor");
                    cJSON_AddItemToObject(p, "capacity_factor", cJSON_Duplicate(gj, 1));
                    cJSON_AddNumberToObject(p, "activated_experts", x);
                    cJSON_AddNumberToObject(p, "step_time_s", y);
                    cJSON_AddNumberToObject(p, "expert_time_s_per_layer", ye);
                    cJSON_AddItemToArray(pts, p);
                    sx += x;
                    sy += y;
                    sxx += x * x;
                    sxy += x * y;
                    np++;
                }
            }
            cJSON *dv = cJSON_AddObjectToObject(out, "decode_time_vs_activated");
            cJSON_AddItemToObject(dv, "points", pts);
            double den = np * sxx - sx * sx;
            if (np >= 2 && den > 0) {
                double slope = (np * sxy - sx * sy) / den;
                cJSON_AddNumberToObject(dv, "seconds_per_activated_expert", slope);
                cJSON_AddNumberToObject(dv, "intercept_s", (sy - slope * sx) / np);
            } else {
                cJSON_AddNullToObject(dv, "seconds_per_activated_expert");
                cJSON_AddNullToObject(dv, "intercept_s");
            }
            cJSON_AddNumberToObject(dv, "expert_bytes", b.expert_bytes);
        }
        /* Where a dispatch stops being memory-bound (--regime-tokens auto) */
        if (regime_max >= 2) {
            capmoe_regime_probe pr;
            if (capmoe_model_regime_probe(b.m, (int)regime_max, (int)repeat + 1, &pr, &err)) goto end;
            cJSON *rg = cJSON_AddObjectToObject(out, "regime");
            cJSON *tt = cJSON_AddArrayToObject(rg, "tokens"), *ts = cJSON_AddArrayToObject(rg, "seconds");
            cJSON *ta = cJSON_AddArrayToObject(rg, "activated_experts");
            for (int i = 0; i < pr.n; i++) {
                cJSON_AddItemToArray(tt, cJSON_CreateNumber(pr.tokens[i]));
                cJSON_AddItemToArray(ts, cJSON_CreateNumber(pr.seconds[i]));
                cJSON_AddItemToArray(ta, cJSON_CreateNumber(pr.activated[i]));
            }
            cJSON_AddNumberToObject(rg, "fixed_seconds", pr.fixed_seconds);
            cJSON_AddNumberToObject(rg, "per_token_seconds", pr.per_token_seconds);
            cJSON_AddNumberToObject(rg, "crossover_tokens", pr.crossover);
            fprintf(stderr, "capmoe bench: memory/compute crossover: %d tokens per dispatch "
                    "(--regime-tokens %d)\n", pr.crossover, pr.crossover);
        }

        if (measure_ceilings((int)sg_n, bytes, threads, &c1, &err)) goto end;
        /* the hardware's own ceilings: hand-written loops, not the library */
        double pk32 = capmoe_peak_fp32_gflops(threads), pkbf = capmoe_peak_bf16_dot_gflops(threads);
        double pkamx = capmoe_peak_amx_bf16_gflops(threads);
        double triad = capmoe_stream_triad_gbs(threads, bytes);
        double sg = fmax(c0.sgemm, c1.sgemm), bw1 = fmax(c0.bw1, c1.bw1);
        double bwn = fmax(c0.bwn, c1.bwn), bw = fmax(bw1, bwn);
        cJSON_AddNumberToObject(ma, "sgemm_size", (double)sg_n);
        cJSON_AddNumberToObject(ma, "sgemm_gflops", sg);
        cJSON_AddStringToObject(ma, "sgemm_blas_core", si.blas.core);
        cJSON_AddBoolToObject(ma, "sgemm_blas_slow", si.blas.weak);
        if (si.warning[0]) cJSON_AddStringToObject(ma, "sgemm_warning", si.warning);
        else cJSON_AddNullToObject(ma, "sgemm_warning");
#define ADD_PEAK(k, v) ((v) > 0 ? cJSON_AddNumberToObject(ma, k, v) : cJSON_AddNullToObject(ma, k))
        ADD_PEAK("peak_fp32_gflops", pk32);
        ADD_PEAK("peak_bf16_dot_gflops", pkbf);
        ADD_PEAK("peak_amx_bf16_gflops", pkamx);
        ADD_PEAK("triad_gbs", triad);
#undef ADD_PEAK
        /* the float32 product at the experts' own shapes (mean rows per
         * expert of the largest prefill), a ceiling they can reach */
        const capmoe_hfconfig *mc = capmoe_model_config(b.m);
        double sgx = -1.0, sgx_blas = -1.0, sgx_eng = -1.0;
        int sgx_rows = 0;
        if (n_pre > 0 && mc->n_experts > 0 && mc->moe_intermediate_size > 0) {
            sgx_rows = (int)((double)pre_T * mc->top_k / mc->n_experts + 0.5);
            if (sgx_rows < 1) sgx_rows = 1;
            if (capmoe_cli_sgemm_experts(sgx_rows, mc->hidden_size, mc->moe_intermediate_size,
                                         threads, &sgx_blas, &sgx_eng) == 0)
                sgx = fmax(sgx_blas, sgx_eng);
        }
        if (sgx > 0) {
            cJSON_AddNumberToObject(ma, "sgemm_experts_rows", sgx_rows);
            cJSON_AddNumberToObject(ma, "sgemm_experts_gflops", sgx);
            cJSON_AddNumberToObject(ma, "sgemm_experts_blas_gflops", sgx_blas);
            cJSON_AddNumberToObject(ma, "sgemm_experts_engine_gflops", sgx_eng);
        } else {
            cJSON_AddNullToObject(ma, "sgemm_experts_gflops");
        }
        cJSON *sr = cJSON_AddArrayToObject(ma, "sgemm_gflops_start_end");
        cJSON_AddItemToArray(sr, cJSON_CreateNumber(c0.sgemm));
        cJSON_AddItemToArray(sr, cJSON_CreateNumber(c1.sgemm));
        cJSON_AddNumberToObject(ma, "memcpy_bytes", (double)bytes);
        cJSON_AddNumberToObject(ma, "memcpy_gbs_1thread", bw1);
        cJSON_AddNumberToObject(ma, "memcpy_gbs", bwn);
        cJSON_AddNumberToObject(ma, "bandwidth_gbs", bw);
        cJSON *br = cJSON_AddArrayToObject(ma, "bandwidth_gbs_start_end");
        cJSON_AddItemToArray(br, cJSON_CreateNumber(fmax(c0.bw1, c0.bwn)));
        cJSON_AddItemToArray(br, cJSON_CreateNumber(fmax(c1.bw1, c1.bwn)));

        cJSON *ra = cJSON_AddObjectToObject(out, "ratios");
        if (n_pre > 0) {
            cJSON_AddNumberToObject(ra, "prefill_tokens", pre_T);
            cJSON_AddNumberToObject(ra, "prefill_gflops", pre_gflops);
            cJSON_AddNumberToObject(ra, "prefill_fraction_of_sgemm", pre_gflops / sg);
            if (sgx > 0)
                cJSON_AddNumberToObject(ra, "prefill_fraction_of_sgemm_experts", pre_gflops / sgx);
            else
                cJSON_AddNullToObject(ra, "prefill_fraction_of_sgemm_experts");
            cJSON_AddBoolToObject(ra, "prefill_target_met", pre_gflops / sg >= 0.5);
            if (pk32 > 0) cJSON_AddNumberToObject(ra, "prefill_fraction_of_fp32_peak", pre_gflops / pk32);
            else cJSON_AddNullToObject(ra, "prefill_fraction_of_fp32_peak");
        } else {
            cJSON_AddNullToObject(ra, "prefill_tokens");
            cJSON_AddNullToObject(ra, "prefill_gflops");
            cJSON_AddNullToObject(ra, "prefill_fraction_of_sgemm");
            cJSON_AddNullToObject(ra, "prefill_target_met");
        }
        cJSON_AddNumberToObject(ra, "sgemm_gflops", sg);
        cJSON_AddNumberToObject(ra, "decode_bytes_per_token", (double)abpt);
        if (!isnan(dec_time) && dec_time > 0) {
            double gbs = (double)abpt / dec_time / 1e9;
            cJSON_AddNumberToObject(ra, "decode_time_per_token_s", dec_time);
            cJSON_AddNumberToObject(ra, "decode_gbs", gbs);
            cJSON_AddNumberToObject(ra, "decode_fraction_of_bandwidth", gbs / bw);
            cJSON_AddBoolToObject(ra, "decode_target_met", gbs / bw >= 0.5);
        } else {
            cJSON_AddNullToObject(ra, "decode_time_per_token_s");
            cJSON_AddNullToObject(ra, "decode_gbs");
            cJSON_AddNullToObject(ra, "decode_fraction_of_bandwidth");
            cJSON_AddNullToObject(ra, "decode_target_met");
        }
        cJSON_AddNumberToObject(ra, "bandwidth_gbs", bw);
        cJSON_AddNumberToObject(ra, "target", 0.5);

        cJSON *df = cJSON_AddObjectToObject(out, "definitions");
        cJSON_AddStringToObject(
            df, "sgemm", "capmoe_gemm_nt (the engine's GEMM: one thread per core, each "
                         "running single-threaded OpenBLAS cblas_sgemm on its columns) on N x N "
                         "float32, 2 N^3 flops, best of 5; measured before and after the runs, "
                         "the larger counts");
        cJSON_AddStringToObject(
            df, "sgemm_experts",
            "float32 products of one expert at sgemm_experts_rows rows (the largest prefill's "
            "tokens x top_k / experts): gate and up (rows x H times 2I x H) then down (rows x I "
            "times H x I), best of 3 after a warm-up, through OpenBLAS's own threads "
            "(sgemm_experts_blas_gflops) and through the engine's GEMM "
            "(sgemm_experts_engine_gflops); sgemm_experts_gflops is the larger: the f32 rate "
            "the experts' shapes allow");
        cJSON_AddStringToObject(
            df, "peaks",
            "hand-written loops on every engine thread, best of 3: peak_fp32_gflops = 12 "
            "independent FMA chains (AVX-512, else AVX2), peak_bf16_dot_gflops = VDPBF16PS "
            "(AVX512-BF16), peak_amx_bf16_gflops = TDPBF16PS tiles (AMX), triad_gbs = a = b + s c "
            "over copy_mib-sized float arrays, 3 x bytes / s; null where the CPU lacks them. "
            "sgemm_blas_core names the BLAS kernels behind sgemm_gflops; sgemm_warning is set "
            "when they are weaker than the CPU");
        cJSON_AddStringToObject(df, "bandwidth",
                                "memcpy of memcpy_bytes: (bytes read + bytes written) / s, best "
                                "of 3; with 1 thread and one thread per core, before and after "
                                "the runs; the largest counts");
        cJSON_AddStringToObject(
            df, "flops",
            "2 x (q,k,v,o projections + router + computed expert pairs x 3 H I + shared expert "
            "+ dense MLP) per token + causal attention 4 x heads x head_dim x attended positions; "
            "latent attention: projections (q or q_a + q_b, kv_a, o) + kv_b heads x (qk_nope + v) "
            "x kv_lora_rank per token, 2 x heads x (qk_nope + qk_rope + v) per attended position "
            "(prefill, expanded form) or 2 x heads x (2 kv_lora_rank + qk_rope) (decode, absorbed "
            "form); no embedding or lm_head");
        cJSON_AddStringToObject(df, "active_params_per_token",
                                "capmoe_model_active_bytes_per_token / 4: attention projections, "
                                "router, top-k experts (+ shared expert), lm_head");
        cJSON_AddStringToObject(df, "prefill_ratio",
                                "gflops of the none run at the largest prefill T / sgemm_gflops");
        cJSON_AddStringToObject(df, "decode_ratio",
                                "active_bytes_per_token / median step time at B = 1 (none, "
                                "last-token logits) / bandwidth_gbs; KV reads not counted");
        cJSON_AddStringToObject(df, "per_pair_cost",
                                "from the none run of the same T or B: sum of rank busy times / "
                                "computed pairs when ranks <= cores, else sum of the rank threads' "
                                "CPU times / computed pairs");
        cJSON_AddStringToObject(df, "modelled_ep_layer_time",
                                "mean over MoE layers of (max over ranks of rank load) x "
                                "per_pair_cost");
        cJSON_AddStringToObject(df, "speedups",
                                "none / policy, same T or B, same run: speedup_wall = forward "
                                "time, speedup_moe_wall = MoE block time, speedup_modelled = "
                                "modelled EP layer time");
        cJSON_AddStringToObject(df, "regime",
                                "capmoe_model_regime_probe: every MoE layer's block on T random "
                                "tokens (policy none), best of repeat+1; over the points with "
                                "every expert activated, t(T) = fixed + per_token x T; "
                                "crossover = fixed / per_token (what --regime-tokens auto uses)");
        cJSON_AddStringToObject(df, "activated",
                                "activated_experts = experts with a load per MoE layer dispatch "
                                "(mean); expert_bytes_per_forward = activated experts over all "
                                "MoE layers x the bytes of one expert; decode_time_vs_activated = "
                                "every decode run's median step time against its activated "
                                "experts, with a least-squares line");
        cJSON_AddStringToObject(df, "loads",
                                "per MoE layer then averaged over layers (and decode steps): "
                                "max_mean_load = max expert load / mean expert load; "
                                "straggler_ratio = slowest rank time / mean rank time");
        rc = 0;
    }
end:
    if (rc == 0) {
        if (strcmp(fmt, "table") == 0) {
            print_table(out);
        } else {
            char *s = cJSON_PrintUnformatted(out);
            if (s) {
                puts(s);
                free(s);
            } else {
                rc = 1;
                capmoe_set_error(&err, "out of memory");
            }
        }
    }
    if (rc) fprintf(stderr, "capmoe bench: %s\n", err.msg);
    cJSON_Delete(out);
    free(b.ls);
    free(text_ids);
    capmoe_tokenizer_free(tok);
    capmoe_model_free(b.m);
    return rc;
usage_err:
    (void)usage;
    fprintf(stderr, "capmoe bench: %s\n%s", err.msg, BENCH_USAGE);
    return 2;
}
