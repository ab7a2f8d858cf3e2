/* cli_synth.c - `capmoe synth`: writes a random Hugging Face checkpoint of a
 * supported MoE architecture, so that benchmarks and tests need no download.
 *
 *   capmoe synth --arch mixtral|qwen2_moe|olmoe|qwen3_moe|deepseek_v2|deepseek_v3
 *                --out DIR
 *                [--hidden 1024] [--layers 2] [--experts 8] [--top-k 2]
 *                [--intermediate N] [--shared-intermediate N] [--heads 16]
 *                [--kv-heads 4] [--vocab 4096] [--context 4096]
 *                [--dtype f32|bf16|f16] [--skew 8] [--seed 0]
 *                [--norm-topk-prob 0|1] [--tokenizer-from DIR]
 *   DeepSeek:    [--q-lora-rank N] [--kv-lora-rank N] [--qk-nope N] [--qk-rope N]
 *                [--v-head N] [--shared-experts N] [--dense-layers N]
 *                [--dense-intermediate N] [--groups N] [--topk-group N]
 *                [--routed-scaling F]
 *
 * DIR receives config.json (the transformers 5 layout: `dtype`,
 * `rope_parameters`), model.safetensors with the hub tensor names of the
 * architecture, generation_config.json, tokenizer.json and
 * tokenizer_config.json. Stdout: one JSON object describing what was written.
 *
 * Weights (deterministic: each tensor has its own generator seeded from --seed
 * and the tensor name, so a tensor does not depend on the others):
 *   - every projection [out, in]: normal, std 1/sqrt(in);
 *   - attention biases (Qwen2-MoE): normal, std 1/sqrt(hidden);
 *   - every norm weight (input/post-attention/final, q/k norms): 1;
 *   - embed_tokens: e_v = z_v + BETA * sqrt(H) * u, z_v ~ N(0, 1) per element,
 *     u a fixed random unit vector shared by all tokens (BETA = 1);
 *   - lm_head: normal, std 1/sqrt(H) (untied).
 * Every matrix that reads the hidden state (q/k/v, DeepSeek's q_a/q/kv_a,
 * expert, shared-expert and dense gate/up, shared_expert_gate, lm_head) has its
 * rows made orthogonal to u, and every matrix that writes to the residual
 * stream (o_proj, expert, shared and dense down) has its columns made
 * orthogonal to u. DeepSeek-V3's e_score_correction_bias is 0, in float32
 * whatever --dtype says (as the hub checkpoints store it). So the residual stream carries
 * the component BETA * sqrt(H) * u for every token, unchanged through the
 * layers, and only the routers see it.
 *
 * Skewed routers. Router row e of a layer is
 *     w_e = KAPPA * z_e / sqrt(H) + o_e * KAPPA / (BETA * sqrt(H)) * u,
 *     o_e = -ln(skew) * pi(e) / (E - 1),
 * with z_e ~ N(0, 1) made orthogonal to u, pi a random permutation of the
 * experts drawn per layer, and KAPPA = sqrt(1 + BETA^2) (the RMS of an
 * embedding). For a router input of RMS KAPPA, the first term gives
 * token-dependent logits of standard deviation ~1 and the second adds the
 * expert offset o_e: exp(o_e) is a geometric series from 1 (the most popular
 * expert) down to 1/skew (the least popular one) in a random expert order.
 * The residual stream grows through the layers, which scales both terms down
 * alike, so `skew` sets the popularity ratio of the experts only
 * approximately (the top-k selection depends on both terms). skew 1 gives
 * balanced routers (max/mean load ~1.2 at E = 8, k = 2, T = 512); the default
 * skew 8 gives a max/mean expert load of about 2.5 at E = 8, k = 2, close to
 * the imbalance behind the paper's Mixtral speedups (upcycled models < 3x). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capmoe/cli.h"
#include "capmoe/cpu_features.h"
#include "capmoe/par.h"
#include "capmoe/sample.h"
#include "capmoe/hfconfig.h"
#include "capmoe/model.h"
#include "capmoe/safetensors.h"
#include "capmoe/stats.h"
#include "capmoe/tokenizer.h"

#define SYNTH_BETA 1.0
#define SYNTH_MAX_BYTES (8ULL << 30) /* weights held in memory while writing */

static const char *SYNTH_USAGE =
    "usage: capmoe synth --arch mixtral|qwen2_moe|olmoe|qwen3_moe|deepseek_v2|deepseek_v3\n"
    "                    --out DIR [options]\n"
    "  --hidden N (1024)  --layers N (2)  --experts N (8)  --top-k N (2)\n"
    "  --intermediate N   expert width (default: hidden)\n"
    "  --shared-intermediate N   Qwen2-MoE shared expert width (default: 4 x intermediate)\n"
    "  --heads N (16)  --kv-heads N (4)  --vocab N (4096)  --context N (4096)\n"
    "  --dtype f32|bf16|f16 (f32)  --skew S (8; 1 = balanced routers)  --seed N (0)\n"
    "  --norm-topk-prob 0|1   (OLMoE/Qwen: default as the hub models: 1 for qwen3_moe)\n"
    "  --tokenizer-from DIR   copy tokenizer.json + tokenizer_config.json from DIR\n"
    "                         (default: a minimal byte-level BPE tokenizer)\n"
    "DeepSeek (latent attention; --kv-heads is --heads):\n"
    "  --q-lora-rank N   query compression (0 = plain q_proj; v2 default 0, v3 hidden/4)\n"
    "  --kv-lora-rank N (512, at most hidden)  --qk-nope N (128)  --qk-rope N (64)\n"
    "  --v-head N (128)  --shared-experts N (v2 2, v3 1)  --dense-layers N (1)\n"
    "  --dense-intermediate N   width of the dense layers (default 8 x intermediate)\n"
    "  --groups N (1)  --topk-group N   group-limited routing (v2: group_limited_greedy)\n"
    "  --routed-scaling F (v2 1.0, v3 2.5)\n";

/* ---- deterministic random numbers --------------------------------------- */

typedef struct rng {
    capmoe_rng core; /* xoshiro256** of sample.h */
    int have;        /* Box-Muller keeps its second value */
    double spare;
} rng;

/* Seeds from the run's seed and the tensor name, so every tensor's values
 * depend on nothing else. */
static void rng_seed(rng *r, uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a of the tensor name */
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    capmoe_rng_seed(&r->core, seed ^ h);
    r->have = 0;
}

static uint64_t rng_next(rng *r) { return capmoe_rng_next(&r->core); }

static double rng_unit(rng *r) { /* (0, 1) */
    return ((double)(rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rng_normal(rng *r) { /* Box-Muller */
    if (r->have) {
        r->have = 0;
        return r->spare;
    }
    double u1 = rng_unit(r), u2 = rng_unit(r);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    r->spare = rad * sin(th);
    r->have = 1;
    return rad * cos(th);
}

/* ---- tensors being built -------------------------------------------------- */

typedef struct synth {
    capmoe_st_write_tensor *t;
    char **names;
    float **f32;   /* float data of each tensor (converted at write time) */
    int n, cap;
    capmoe_dtype dtype;
    uint64_t seed;
    const float *u; /* the common direction (H) */
    struct proj_job *jobs; /* projections to fill, run in parallel (run_proj_jobs) */
    int n_jobs, cap_jobs;
} synth;

/* A projection's fill: each tensor has its own generator (seeded by its
 * name), so filling them in parallel gives the same bytes as in order. */
struct proj_job {
    float *w;
    int64_t out, in;
    int mode;
    int failed;
    char name[256];
};

static float *add_tensor(synth *s, capmoe_error *err, int ndim, int64_t d0, int64_t d1,
                         const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static float *add_tensor(synth *s, capmoe_error *err, int ndim, int64_t d0, int64_t d1,
                         const char *fmt, ...) {
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 64;
        capmoe_st_write_tensor *t = realloc(s->t, (size_t)nc * sizeof *t);
        if (t) s->t = t;
        char **nm = realloc(s->names, (size_t)nc * sizeof *nm);
        if (nm) s->names = nm;
        float **f = realloc(s->f32, (size_t)nc * sizeof *f);
        if (f) s->f32 = f;
        if (!t || !nm || !f) {
            capmoe_set_error(err, "out of memory");
            return NULL;
        }
        s->cap = nc;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    float *data = capmoe_malloc_array(numel, sizeof(float));
    char *nm = strdup(name);
    if (!data || !nm) {
        free(data);
        free(nm);
        capmoe_set_error(err, "out of memory for tensor %s", name);
        return NULL;
    }
    capmoe_st_write_tensor *t = &s->t[s->n];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->dtype = s->dtype;
    t->ndim = ndim;
    t->shape[0] = d0;
    if (ndim == 2) t->shape[1] = d1;
    s->names[s->n] = nm;
    s->f32[s->n] = data;
    s->n++;
    return data;
}

static void fill_normal(const synth *s, float *x, size_t n, double std, const char *name) {
    rng r;
    rng_seed(&r, s->seed, name);
    for (size_t i = 0; i < n; i++) x[i] = (float)(rng_normal(&r) * std);
}

static void fill_ones(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 1.0f;
}

/* [out, in] projection, std 1/sqrt(in). READS_H: the input is the hidden
 * state, so each row is made orthogonal to u; WRITES_H: the output goes to the
 * residual stream, so each column is made orthogonal to u. Then u is seen by
 * the routers alone (see the top of the file). */
enum { PLAIN = 0, READS_H = 1, WRITES_H = 2 };

static int proj(synth *s, capmoe_error *err, int64_t out, int64_t in, int mode,
                const char *name) {
    float *w = add_tensor(s, err, 2, out, in, "%s", name);
    if (!w) return -1;
    if (s->n_jobs == s->cap_jobs) {
        int nc = s->cap_jobs ? 2 * s->cap_jobs : 64;
        struct proj_job *j = realloc(s->jobs, (size_t)nc * sizeof *j);
        if (!j) return capmoe_set_error(err, "out of memory");
        s->jobs = j;
        s->cap_jobs = nc;
    }
    struct proj_job *j = &s->jobs[s->n_jobs++];
    *j = (struct proj_job){.w = w, .out = out, .in = in, .mode = mode};
    snprintf(j->name, sizeof j->name, "%s", name);
    return 0;
}

/* Fills projection j: normal, std 1/sqrt(in), then made orthogonal to u as
 * its mode says. */
static void proj_fill(void *arg, int item, int slot) {
    (void)slot;
    synth *s = arg;
    struct proj_job *j = &s->jobs[item];
    float *w = j->w;
    int64_t out = j->out, in = j->in;
    int mode = j->mode;
    fill_normal(s, w, (size_t)out * (size_t)in, 1.0 / sqrt((double)in), j->name);
    const float *u = s->u;
    if (mode == READS_H) {
        for (int64_t r = 0; r < out; r++) {
            float *row = w + r * in;
            double dot = 0.0;
            for (int64_t i = 0; i < in; i++) dot += (double)row[i] * u[i];
            for (int64_t i = 0; i < in; i++) row[i] -= (float)(dot * u[i]);
        }
    } else if (mode == WRITES_H) {
        double *dot = calloc((size_t)in, sizeof *dot);
        if (!dot) {
            j->failed = 1;
            return;
        }
        for (int64_t r = 0; r < out; r++)
            for (int64_t i = 0; i < in; i++) dot[i] += (double)w[r * in + i] * u[r];
        for (int64_t r = 0; r < out; r++)
            for (int64_t i = 0; i < in; i++) w[r * in + i] -= (float)(dot[i] * u[r]);
        free(dot);
    }
}

/* Every projection queued by proj, on one thread per usable CPU. */
static int run_proj_jobs(synth *s, capmoe_error *err) {
    capmoe_par *par = capmoe_par_new(capmoe_cpu_count(), NULL);
    capmoe_par_for(par, s->n_jobs, proj_fill, s); /* a NULL pool runs them here */
    capmoe_par_free(par);
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i].failed) return capmoe_set_error(err, "out of memory filling %s", s->jobs[i].name);
    s->n_jobs = 0;
    return 0;
}

static int vec(synth *s, capmoe_error *err, int64_t n, double std, const char *name) {
    float *w = add_tensor(s, err, 1, n, 0, "%s", name);
    if (!w) return -1;
    if (std > 0) fill_normal(s, w, (size_t)n, std, name);
    else fill_ones(w, (size_t)n);
    return 0;
}

static void synth_free(synth *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->names[i]);
        free(s->f32[i]);
    }
    free(s->jobs);
    free(s->t);
    free(s->names);
    free(s->f32);
}

/* Converts every tensor to its dtype (the output dtype, or F32 for those
 * kept in float32) in place of its float data. */
static int convert_all(synth *s, capmoe_error *err) {
    for (int i = 0; i < s->n; i++) {
        size_t numel = 1;
        for (int k = 0; k < s->t[i].ndim; k++) numel *= (size_t)s->t[i].shape[k];
        if (s->t[i].dtype == CAPMOE_DTYPE_F32) {
            s->t[i].data = s->f32[i];
            continue;
        }
        /* 2-byte values fit in the first half of the float buffer. */
        uint16_t *h = (uint16_t *)(void *)s->f32[i];
        for (size_t j = 0; j < numel; j++) {
            float v = s->f32[i][j];
            h[j] = s->dtype == CAPMOE_DTYPE_BF16 ? capmoe_f32_to_bf16(v) : capmoe_f32_to_f16(v);
        }
        s->t[i].data = h;
    }
    (void)err;
    return 0;
}

/* ---- options ---------------------------------------------------------------- */

typedef struct synth_opts {
    capmoe_arch arch;
    const char *arch_s;
    const char *out;
    const char *tok_from;
    long hidden, layers, experts, top_k, inter, shared, heads, kv_heads, vocab, context, seed;
    long norm_topk;
    double skew;
    /* DeepSeek */
    int deepseek, v3;
    long q_lora, kv_lora, qk_nope, qk_rope, v_head, n_shared, dense_layers, dense_inter;
    long groups, topk_group;
    double rsf;
    capmoe_dtype dtype;
    const char *dtype_s;
} synth_opts;

static int parse_dtype_opt(capmoe_cli_args *a, synth_opts *o, capmoe_error *err) {
    o->dtype_s = capmoe_cli_get(a, "dtype");
    if (!o->dtype_s) o->dtype_s = "f32";
    if (strcmp(o->dtype_s, "f32") == 0) o->dtype = CAPMOE_DTYPE_F32;
    else if (strcmp(o->dtype_s, "bf16") == 0) o->dtype = CAPMOE_DTYPE_BF16;
    else if (strcmp(o->dtype_s, "f16") == 0) o->dtype = CAPMOE_DTYPE_F16;
    else return capmoe_set_error(err, "--dtype: '%s' is not one of f32, bf16, f16", o->dtype_s);
    return 0;
}

/* DeepSeek's own sizes, checked as hfconfig.c checks a config.json. */
static int parse_deepseek_opts(capmoe_cli_args *a, synth_opts *o, capmoe_error *err) {
    long kv_def = o->hidden < 512 ? o->hidden : 512;
    if (capmoe_cli_int(a, "q-lora-rank", 0, 1L << 16, o->v3 ? o->hidden / 4 : 0, &o->q_lora, err) ||
        capmoe_cli_int(a, "kv-lora-rank", 1, 1L << 16, kv_def, &o->kv_lora, err) ||
        capmoe_cli_int(a, "qk-nope", 1, 4096, 128, &o->qk_nope, err) ||
        capmoe_cli_int(a, "qk-rope", 2, 4096, 64, &o->qk_rope, err) ||
        capmoe_cli_int(a, "v-head", 1, 4096, 128, &o->v_head, err) ||
        capmoe_cli_int(a, "shared-experts", 0, 64, o->v3 ? 1 : 2, &o->n_shared, err) ||
        capmoe_cli_int(a, "dense-layers", 0, o->layers, o->layers > 1 ? 1 : 0, &o->dense_layers,
                       err) ||
        capmoe_cli_int(a, "dense-intermediate", 1, 1L << 20, 8 * o->inter, &o->dense_inter, err) ||
        capmoe_cli_int(a, "groups", 1, o->experts, 1, &o->groups, err) ||
        capmoe_cli_int(a, "topk-group", 1, o->experts, o->groups > 1 ? o->groups / 2 : 1,
                       &o->topk_group, err) ||
        capmoe_cli_double(a, "routed-scaling", 1e-6, 1e6, o->v3 ? 2.5 : 1.0, &o->rsf, err))
        return -1;
    if (capmoe_cli_has(a, "kv-heads"))
        return capmoe_set_error(err, "--kv-heads: DeepSeek's latent attention has one key and "
                                     "value per head (--heads)");
    if (capmoe_cli_has(a, "shared-intermediate"))
        return capmoe_set_error(err, "--shared-intermediate: DeepSeek's shared experts are "
                                     "--shared-experts experts of --intermediate width");
    if (o->qk_rope % 2 != 0)
        return capmoe_set_error(err, "--qk-rope %ld: must be even (rotary embeddings)", o->qk_rope);
    if (o->experts % o->groups != 0)
        return capmoe_set_error(err, "--groups %ld does not divide --experts %ld", o->groups,
                                o->experts);
    if (o->topk_group > o->groups)
        return capmoe_set_error(err, "--topk-group %ld exceeds --groups %ld", o->topk_group,
                                o->groups);
    if (o->v3 && o->groups > 1 && o->experts / o->groups < 2)
        return capmoe_set_error(err, "--groups %ld: DeepSeek-V3 groups need at least 2 experts",
                                o->groups);
    if (o->top_k > o->topk_group * (o->experts / o->groups))
        return capmoe_set_error(err, "--top-k %ld exceeds the experts of the %ld groups kept",
                                o->top_k, o->topk_group);
    if (o->top_k > o->experts)
        return capmoe_set_error(err, "--top-k (%ld) exceeds --experts (%ld)", o->top_k,
                                o->experts);
    o->kv_heads = o->heads;
    o->norm_topk = o->v3;
    if (capmoe_cli_has(a, "norm-topk-prob")) {
        if (!o->v3)
            return capmoe_set_error(err, "--norm-topk-prob: DeepSeek-V2 never normalises its "
                                         "top-k weights");
        if (capmoe_cli_int(a, "norm-topk-prob", 0, 1, 1, &o->norm_topk, err)) return -1;
    }
    return parse_dtype_opt(a, o, err);
}

static int parse_opts(capmoe_cli_args *a, synth_opts *o, capmoe_error *err) {
    memset(o, 0, sizeof *o);
    o->arch_s = capmoe_cli_get(a, "arch");
    if (!o->arch_s) return capmoe_set_error(err, "--arch is required (mixtral, qwen2_moe, olmoe, "
                                                 "qwen3_moe, deepseek_v2, deepseek_v3)");
    if (strcmp(o->arch_s, "mixtral") == 0) o->arch = CAPMOE_ARCH_MIXTRAL;
    else if (strcmp(o->arch_s, "qwen2_moe") == 0) o->arch = CAPMOE_ARCH_QWEN2_MOE;
    else if (strcmp(o->arch_s, "olmoe") == 0) o->arch = CAPMOE_ARCH_OLMOE;
    else if (strcmp(o->arch_s, "qwen3_moe") == 0) o->arch = CAPMOE_ARCH_QWEN3_MOE;
    else if (strcmp(o->arch_s, "deepseek_v2") == 0) o->arch = CAPMOE_ARCH_DEEPSEEK_V2;
    else if (strcmp(o->arch_s, "deepseek_v3") == 0) o->arch = CAPMOE_ARCH_DEEPSEEK_V3;
    else
        return capmoe_set_error(err, "--arch: unknown architecture '%s' (mixtral, qwen2_moe, "
                                     "olmoe, qwen3_moe, deepseek_v2, deepseek_v3)", o->arch_s);
    o->v3 = o->arch == CAPMOE_ARCH_DEEPSEEK_V3;
    o->deepseek = o->v3 || o->arch == CAPMOE_ARCH_DEEPSEEK_V2;
    o->out = capmoe_cli_get(a, "out");
    if (!o->out || !*o->out) return capmoe_set_error(err, "--out DIR is required");
    o->tok_from = capmoe_cli_get(a, "tokenizer-from");
    if (o->tok_from && !*o->tok_from)
        return capmoe_set_error(err, "--tokenizer-from: empty directory name");
    if (capmoe_cli_int(a, "hidden", 1, 65536, 1024, &o->hidden, err) ||
        capmoe_cli_int(a, "layers", 1, CAPMOE_MAX_LAYERS, 2, &o->layers, err) ||
        capmoe_cli_int(a, "experts", 1, CAPMOE_MAX_EXPERTS, 8, &o->experts, err) ||
        capmoe_cli_int(a, "top-k", 1, CAPMOE_MAX_EXPERTS, 2, &o->top_k, err) ||
        capmoe_cli_int(a, "intermediate", 1, 1L << 20, o->hidden, &o->inter, err) ||
        capmoe_cli_int(a, "shared-intermediate", 0, 1L << 22, 4 * o->inter, &o->shared, err) ||
        capmoe_cli_int(a, "heads", 1, 4096, 16, &o->heads, err) ||
        capmoe_cli_int(a, "kv-heads", 1, 4096, 4, &o->kv_heads, err) ||
        capmoe_cli_int(a, "vocab", 1, 1L << 24, 4096, &o->vocab, err) ||
        capmoe_cli_int(a, "context", 1, 1L << 24, 4096, &o->context, err) ||
        capmoe_cli_int(a, "seed", 0, INT64_MAX, 0, &o->seed, err) ||
        capmoe_cli_int(a, "norm-topk-prob", 0, 1, o->arch == CAPMOE_ARCH_QWEN3_MOE, &o->norm_topk,
                       err) ||
        capmoe_cli_double(a, "skew", 1.0, 1e6, 8.0, &o->skew, err))
        return -1;
    if (o->deepseek) return parse_deepseek_opts(a, o, err);
    static const char *const DS_ONLY[] = {"q-lora-rank", "kv-lora-rank", "qk-nope", "qk-rope",
                                          "v-head", "shared-experts", "dense-layers",
                                          "dense-intermediate", "groups", "topk-group",
                                          "routed-scaling", NULL};
    for (int i = 0; DS_ONLY[i]; i++)
        if (capmoe_cli_has(a, DS_ONLY[i]))
            return capmoe_set_error(err, "--%s: only deepseek_v2 and deepseek_v3 have it",
                                    DS_ONLY[i]);
    if (o->arch == CAPMOE_ARCH_MIXTRAL && capmoe_cli_has(a, "norm-topk-prob") && !o->norm_topk)
        return capmoe_set_error(err, "--norm-topk-prob: Mixtral always normalises its top-k "
                                     "weights");
    if (o->arch != CAPMOE_ARCH_QWEN2_MOE && capmoe_cli_has(a, "shared-intermediate"))
        return capmoe_set_error(err, "--shared-intermediate: only qwen2_moe has a shared expert");
    if (parse_dtype_opt(a, o, err)) return -1;
    if (o->top_k > o->experts)
        return capmoe_set_error(err, "--top-k (%ld) exceeds --experts (%ld)", o->top_k,
                                o->experts);
    if (o->hidden % o->heads != 0)
        return capmoe_set_error(err, "--heads (%ld) does not divide --hidden (%ld)", o->heads,
                                o->hidden);
    if ((o->hidden / o->heads) % 2 != 0)
        return capmoe_set_error(err, "--hidden / --heads = %ld: the head size must be even "
                                     "(rotary embeddings)", o->hidden / o->heads);
    if (o->heads % o->kv_heads != 0)
        return capmoe_set_error(err, "--kv-heads (%ld) does not divide --heads (%ld)",
                                o->kv_heads, o->heads);
    return 0;
}

/* ---- files ------------------------------------------------------------------ */

static int write_text(const char *dir, const char *name, const char *text, capmoe_error *err) {
    char *path = capmoe_path_join(dir, name);
    if (!path) return capmoe_set_error(err, "out of memory");
    FILE *f = fopen(path, "wb");
    if (!f) {
        capmoe_set_error(err, "%s: cannot create: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    if (fclose(f) != 0) ok = 0;
    if (!ok) capmoe_set_error(err, "%s: write failed", path);
    free(path);
    return ok ? 0 : -1;
}

static int write_json(const char *dir, const char *name, cJSON *o, capmoe_error *err) {
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) return capmoe_set_error(err, "out of memory");
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return capmoe_set_error(err, "out of memory");
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    int rc = write_text(dir, name, t, err);
    free(t);
    return rc;
}

static int copy_file(const char *from_dir, const char *to_dir, const char *name, int required,
                     capmoe_error *err) {
    char *src = capmoe_path_join(from_dir, name);
    if (!src) return capmoe_set_error(err, "out of memory");
    if (access(src, F_OK) != 0 && !required) {
        free(src);
        return 0;
    }
    size_t len = 0;
    char *text = capmoe_read_file(src, &len, err);
    free(src);
    if (!text) return -1;
    char *dst = capmoe_path_join(to_dir, name);
    FILE *f = dst ? fopen(dst, "wb") : NULL;
    int ok = f && fwrite(text, 1, len, f) == len;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) capmoe_set_error(err, "%s: cannot write: %s", dst ? dst : name, strerror(errno));
    free(dst);
    free(text);
    return ok ? 0 : -1;
}

/* GPT-2 byte-to-unicode map: printable bytes map to themselves, the others to
 * U+0100 + n in increasing byte order. Writes UTF-8 into out (>= 3 bytes). */
static void byte_char(int b, char out[4]) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static const char *SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
#define N_SPECIALS 3
#define SYNTH_TOK_VOCAB (256 + N_SPECIALS)

static const char *CHATML =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

static cJSON *byte_level(void) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", 0);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", 1);
    return o;
}

/* A valid minimal byte-level BPE tokenizer: id b = byte b, no merges, then
 * the special tokens <|endoftext|> <|im_start|> <|im_end|> (256..258). */
static int write_min_tokenizer(const char *dir, long context, capmoe_error *err) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", "1.0");
    cJSON_AddNullToObject(o, "truncation");
    cJSON_AddNullToObject(o, "padding");
    cJSON *added = cJSON_AddArrayToObject(o, "added_tokens");
    for (int i = 0; i < N_SPECIALS; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", 256 + i);
        cJSON_AddStringToObject(t, "content", SPECIALS[i]);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", 0);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    cJSON_AddNullToObject(o, "normalizer");
    cJSON_AddItemToObject(o, "pre_tokenizer", byte_level());
    cJSON_AddItemToObject(o, "post_processor", byte_level());
    cJSON_AddItemToObject(o, "decoder", byte_level());
    cJSON *model = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char ch[4];
        byte_char(b, ch);
        cJSON_AddNumberToObject(vocab, ch, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    if (write_json(dir, "tokenizer.json", o, err)) return -1;

    cJSON *c = cJSON_CreateObject();
    cJSON_AddBoolToObject(c, "add_bos_token", 0);
    cJSON_AddBoolToObject(c, "add_prefix_space", 0);
    cJSON *dec = cJSON_AddObjectToObject(c, "added_tokens_decoder");
    for (int i = 0; i < N_SPECIALS; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", 256 + i);
        cJSON *t = cJSON_AddObjectToObject(dec, id);
        cJSON_AddStringToObject(t, "content", SPECIALS[i]);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "special", 1);
    }
    cJSON *extra = cJSON_AddArrayToObject(c, "additional_special_tokens");
    cJSON_AddItemToArray(extra, cJSON_CreateString("<|im_start|>"));
    cJSON_AddItemToArray(extra, cJSON_CreateString("<|im_end|>"));
    cJSON_AddNullToObject(c, "bos_token");
    cJSON_AddStringToObject(c, "chat_template", CHATML);
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
    cJSON_AddStringToObject(c, "eos_token", "<|endoftext|>");
    cJSON_AddNumberToObject(c, "model_max_length", (double)context);
    cJSON_AddStringToObject(c, "pad_token", "<|endoftext|>");
    cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddNullToObject(c, "unk_token");
    return write_json(dir, "tokenizer_config.json", c, err);
}

static const char *dtype_config_name(capmoe_dtype d) {
    return d == CAPMOE_DTYPE_BF16 ? "bfloat16" : d == CAPMOE_DTYPE_F16 ? "float16" : "float32";
}

static cJSON *make_config(const synth_opts *o, int bos, int eos) {
    cJSON *c = cJSON_CreateObject();
    static const char *ARCH[] = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "OlmoeForCausalLM",
                                 "Qwen3MoeForCausalLM"};
    cJSON *archs = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(ARCH[o->arch]));
    int mixtral = o->arch == CAPMOE_ARCH_MIXTRAL, olmoe = o->arch == CAPMOE_ARCH_OLMOE;
    int qwen2 = o->arch == CAPMOE_ARCH_QWEN2_MOE, qwen3 = o->arch == CAPMOE_ARCH_QWEN3_MOE;
    if (olmoe || qwen3) cJSON_AddBoolToObject(c, "attention_bias", 0);
    cJSON_AddRawToObject(c, "attention_dropout", "0.0"); /* a float, as HF writes it (strict config classes refuse an int) */
    if (bos >= 0) cJSON_AddNumberToObject(c, "bos_token_id", bos);
    else cJSON_AddNullToObject(c, "bos_token_id");
    if (olmoe) cJSON_AddNullToObject(c, "clip_qkv");
    if (qwen2 || qwen3) cJSON_AddNumberToObject(c, "decoder_sparse_step", 1);
    cJSON_AddStringToObject(c, "dtype", dtype_config_name(o->dtype));
    if (eos >= 0) cJSON_AddNumberToObject(c, "eos_token_id", eos);
    else cJSON_AddNullToObject(c, "eos_token_id");
    if (mixtral || qwen3) cJSON_AddNumberToObject(c, "head_dim", (double)(o->hidden / o->heads));
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "hidden_size", (double)o->hidden);
    cJSON_AddNumberToObject(c, "initializer_range", 0.02);
    /* Mixtral/OLMoE: intermediate_size is the expert width; Qwen: the width of
     * dense layers (none here), set as the hub models do. */
    double inter = mixtral || olmoe ? (double)o->inter : qwen2 ? (double)o->shared
                                                               : (double)(o->inter * 8);
    if (qwen2 && o->shared == 0) inter = (double)(o->inter * 4);
    cJSON_AddNumberToObject(c, "intermediate_size", inter);
    if (qwen2) {
        cJSON *lt = cJSON_AddArrayToObject(c, "layer_types");
        for (long l = 0; l < o->layers; l++)
            cJSON_AddItemToArray(lt, cJSON_CreateString("full_attention"));
    }
    cJSON_AddNumberToObject(c, "max_position_embeddings", (double)o->context);
    if (qwen2 || qwen3) cJSON_AddNumberToObject(c, "max_window_layers", (double)o->layers);
    if (qwen2 || qwen3) cJSON_AddArrayToObject(c, "mlp_only_layers");
    static const char *MT[] = {"mixtral", "qwen2_moe", "olmoe", "qwen3_moe"};
    cJSON_AddStringToObject(c, "model_type", MT[o->arch]);
    if (qwen2 || qwen3) cJSON_AddNumberToObject(c, "moe_intermediate_size", (double)o->inter);
    if (!mixtral) cJSON_AddBoolToObject(c, "norm_topk_prob", o->norm_topk != 0);
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)o->heads);
    if (!mixtral) cJSON_AddNumberToObject(c, "num_experts", (double)o->experts);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", (double)o->top_k);
    cJSON_AddNumberToObject(c, "num_hidden_layers", (double)o->layers);
    cJSON_AddNumberToObject(c, "num_key_value_heads", (double)o->kv_heads);
    if (mixtral) cJSON_AddNumberToObject(c, "num_local_experts", (double)o->experts);
    cJSON_AddBoolToObject(c, "output_router_logits", 0);
    if (olmoe) cJSON_AddNumberToObject(c, "pad_token_id", eos >= 0 ? eos : 0);
    else cJSON_AddNullToObject(c, "pad_token_id");
    if (qwen2) cJSON_AddBoolToObject(c, "qkv_bias", 1);
    cJSON_AddNumberToObject(c, "rms_norm_eps", mixtral || olmoe ? 1e-5 : 1e-6);
    cJSON *rp = cJSON_AddObjectToObject(c, "rope_parameters");
    cJSON_AddNumberToObject(rp, "rope_theta", olmoe ? 10000.0 : 1000000.0);
    cJSON_AddStringToObject(rp, "rope_type", "default");
    cJSON_AddNumberToObject(c, "router_aux_loss_coef", mixtral ? 0.02 : olmoe ? 0.01 : 0.001);
    if (mixtral) cJSON_AddRawToObject(c, "router_jitter_noise", "0.0"); /* float, see above */
    if (qwen2) cJSON_AddNumberToObject(c, "shared_expert_intermediate_size", (double)o->shared);
    if (!olmoe) cJSON_AddNullToObject(c, "sliding_window");
    cJSON_AddBoolToObject(c, "tie_word_embeddings", 0);
    cJSON_AddStringToObject(c, "transformers_version", "5.0.0");
    cJSON_AddBoolToObject(c, "use_cache", 1);
    if (qwen2 || qwen3) cJSON_AddBoolToObject(c, "use_sliding_window", 0);
    cJSON_AddNumberToObject(c, "vocab_size", (double)o->vocab);
    return c;
}

/* DeepseekV2ForCausalLM / DeepseekV3ForCausalLM, transformers 5 layout. */
static cJSON *make_config_deepseek(const synth_opts *o, int bos, int eos) {
    cJSON *c = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(o->v3 ? "DeepseekV3ForCausalLM"
                                                          : "DeepseekV2ForCausalLM"));
    cJSON_AddBoolToObject(c, "attention_bias", 0);
    cJSON_AddRawToObject(c, "attention_dropout", "0.0"); /* a float, as HF writes it (strict config classes refuse an int) */
    if (bos >= 0) cJSON_AddNumberToObject(c, "bos_token_id", bos);
    else cJSON_AddNullToObject(c, "bos_token_id");
    cJSON_AddStringToObject(c, "dtype", dtype_config_name(o->dtype));
    if (eos >= 0) cJSON_AddNumberToObject(c, "eos_token_id", eos);
    else cJSON_AddNullToObject(c, "eos_token_id");
    cJSON_AddNumberToObject(c, "first_k_dense_replace", (double)o->dense_layers);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "hidden_size", (double)o->hidden);
    cJSON_AddNumberToObject(c, "initializer_range", 0.02);
    cJSON_AddNumberToObject(c, "intermediate_size", (double)o->dense_inter);
    cJSON_AddNumberToObject(c, "kv_lora_rank", (double)o->kv_lora);
    cJSON_AddNumberToObject(c, "max_position_embeddings", (double)o->context);
    cJSON_AddStringToObject(c, "model_type", o->v3 ? "deepseek_v3" : "deepseek_v2");
    cJSON_AddNumberToObject(c, "moe_intermediate_size", (double)o->inter);
    cJSON_AddNumberToObject(c, "moe_layer_freq", 1);
    cJSON_AddNumberToObject(c, "n_group", (double)o->groups);
    cJSON_AddNumberToObject(c, "n_routed_experts", (double)o->experts);
    cJSON_AddNumberToObject(c, "n_shared_experts", (double)o->n_shared);
    cJSON_AddBoolToObject(c, "norm_topk_prob", o->norm_topk != 0);
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)o->heads);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", (double)o->top_k);
    cJSON_AddNumberToObject(c, "num_hidden_layers", (double)o->layers);
    cJSON_AddNumberToObject(c, "num_key_value_heads", (double)o->heads);
    cJSON_AddNullToObject(c, "pad_token_id");
    if (o->q_lora > 0) cJSON_AddNumberToObject(c, "q_lora_rank", (double)o->q_lora);
    else cJSON_AddNullToObject(c, "q_lora_rank");
    cJSON_AddNumberToObject(c, "qk_nope_head_dim", (double)o->qk_nope);
    cJSON_AddNumberToObject(c, "qk_rope_head_dim", (double)o->qk_rope);
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-6);
    cJSON *rp = cJSON_AddObjectToObject(c, "rope_parameters");
    cJSON_AddNumberToObject(rp, "rope_theta", 10000.0);
    cJSON_AddStringToObject(rp, "rope_type", "default");
    cJSON_AddNumberToObject(c, "routed_scaling_factor", o->rsf);
    cJSON_AddStringToObject(c, "scoring_func", o->v3 ? "sigmoid" : "softmax");
    cJSON_AddBoolToObject(c, "tie_word_embeddings", 0);
    cJSON_AddNumberToObject(c, "topk_group", (double)o->topk_group);
    cJSON_AddStringToObject(c, "topk_method", o->v3 ? "noaux_tc"
                                              : o->groups > 1 ? "group_limited_greedy" : "greedy");
    cJSON_AddStringToObject(c, "transformers_version", "5.0.0");
    cJSON_AddBoolToObject(c, "use_cache", 1);
    cJSON_AddNumberToObject(c, "v_head_dim", (double)o->v_head);
    cJSON_AddNumberToObject(c, "vocab_size", (double)o->vocab);
    return c;
}

/* ---- the weights ---------------------------------------------------------- */

/* Latent attention of layer l (DeepSeek). */
static int deepseek_attention(synth *s, const synth_opts *o, long l, capmoe_error *err) {
    char name[256];
    int64_t H = o->hidden, nH = o->heads, qk = o->qk_nope + o->qk_rope, kvl = o->kv_lora;
#define P(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    if (o->q_lora > 0) {
        if (proj(s, err, o->q_lora, H, READS_H, P("model.layers.%ld.self_attn.q_a_proj.weight", l)) ||
            vec(s, err, o->q_lora, 0, P("model.layers.%ld.self_attn.q_a_layernorm.weight", l)) ||
            proj(s, err, nH * qk, o->q_lora, PLAIN,
                 P("model.layers.%ld.self_attn.q_b_proj.weight", l)))
            return -1;
    } else if (proj(s, err, nH * qk, H, READS_H, P("model.layers.%ld.self_attn.q_proj.weight", l))) {
        return -1;
    }
    if (proj(s, err, kvl + o->qk_rope, H, READS_H,
             P("model.layers.%ld.self_attn.kv_a_proj_with_mqa.weight", l)) ||
        vec(s, err, kvl, 0, P("model.layers.%ld.self_attn.kv_a_layernorm.weight", l)) ||
        proj(s, err, nH * (o->qk_nope + o->v_head), kvl, PLAIN,
             P("model.layers.%ld.self_attn.kv_b_proj.weight", l)) ||
        proj(s, err, H, nH * o->v_head, WRITES_H, P("model.layers.%ld.self_attn.o_proj.weight", l)))
        return -1;
    return 0;
#undef P
}

/* A gate/up/down MLP of width I under prefix (dense layers, shared experts). */
static int mlp(synth *s, int64_t H, int64_t I, const char *prefix, capmoe_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.gate_proj.weight", prefix);
    if (proj(s, err, I, H, READS_H, name)) return -1;
    snprintf(name, sizeof name, "%s.up_proj.weight", prefix);
    if (proj(s, err, I, H, READS_H, name)) return -1;
    snprintf(name, sizeof name, "%s.down_proj.weight", prefix);
    return proj(s, err, H, I, WRITES_H, name);
}

static int build_weights(synth *s, const synth_opts *o, capmoe_error *err) {
    int64_t H = o->hidden, V = o->vocab, E = o->experts, I = o->inter;
    int64_t d = H / o->heads, qd = o->heads * d, kd = o->kv_heads * d;
    int mixtral = o->arch == CAPMOE_ARCH_MIXTRAL, qwen2 = o->arch == CAPMOE_ARCH_QWEN2_MOE;
    double sqH = sqrt((double)H);
    char name[256];

    /* The direction shared by every token embedding. */
    float *u = malloc((size_t)H * sizeof *u);
    if (!u) return capmoe_set_error(err, "out of memory");
    fill_normal(s, u, (size_t)H, 1.0, "synth.common_direction");
    double un = 0.0;
    for (int64_t i = 0; i < H; i++) un += (double)u[i] * u[i];
    un = sqrt(un);
    for (int64_t i = 0; i < H; i++) u[i] = (float)(u[i] / un);
    s->u = u;

    float *emb = add_tensor(s, err, 2, V, H, "model.embed_tokens.weight");
    if (!emb) goto fail;
    fill_normal(s, emb, (size_t)V * (size_t)H, 1.0, "model.embed_tokens.weight");
    for (int64_t v = 0; v < V; v++)
        for (int64_t i = 0; i < H; i++) emb[v * H + i] += (float)(SYNTH_BETA * sqH * u[i]);

    for (long l = 0; l < o->layers; l++) {
#define P(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
        if (vec(s, err, H, 0, P("model.layers.%ld.input_layernorm.weight", l)) ||
            vec(s, err, H, 0, P("model.layers.%ld.post_attention_layernorm.weight", l)))
            goto fail;
        if (o->deepseek) {
            if (deepseek_attention(s, o, l, err)) goto fail;
            if (l < o->dense_layers) { /* DeepSeek's dense first layers */
                char pre[128];
                snprintf(pre, sizeof pre, "model.layers.%ld.mlp", l);
                if (mlp(s, H, o->dense_inter, pre, err)) goto fail;
                continue;
            }
        } else if (
            proj(s, err, qd, H, READS_H, P("model.layers.%ld.self_attn.q_proj.weight", l)) ||
            proj(s, err, kd, H, READS_H, P("model.layers.%ld.self_attn.k_proj.weight", l)) ||
            proj(s, err, kd, H, READS_H, P("model.layers.%ld.self_attn.v_proj.weight", l)) ||
            proj(s, err, H, qd, WRITES_H, P("model.layers.%ld.self_attn.o_proj.weight", l)))
            goto fail;
        if (qwen2 && (vec(s, err, qd, 1.0 / sqH, P("model.layers.%ld.self_attn.q_proj.bias", l)) ||
                      vec(s, err, kd, 1.0 / sqH, P("model.layers.%ld.self_attn.k_proj.bias", l)) ||
                      vec(s, err, kd, 1.0 / sqH, P("model.layers.%ld.self_attn.v_proj.bias", l))))
            goto fail;
        if (o->arch == CAPMOE_ARCH_OLMOE &&
            (vec(s, err, qd, 0, P("model.layers.%ld.self_attn.q_norm.weight", l)) ||
             vec(s, err, kd, 0, P("model.layers.%ld.self_attn.k_norm.weight", l))))
            goto fail;
        if (o->arch == CAPMOE_ARCH_QWEN3_MOE &&
            (vec(s, err, d, 0, P("model.layers.%ld.self_attn.q_norm.weight", l)) ||
             vec(s, err, d, 0, P("model.layers.%ld.self_attn.k_norm.weight", l))))
            goto fail;
        const char *blk = mixtral ? "block_sparse_moe" : "mlp";
        float *router = add_tensor(s, err, 2, E, H, "model.layers.%ld.%s.gate.weight", l, blk);
        if (!router) goto fail;
        double kappa = sqrt(1.0 + SYNTH_BETA * SYNTH_BETA);
        fill_normal(s, router, (size_t)E * (size_t)H, kappa / sqH, s->names[s->n - 1]);
        for (int64_t e = 0; e < E; e++) { /* token part orthogonal to u */
            double dot = 0.0;
            for (int64_t i = 0; i < H; i++) dot += (double)router[e * H + i] * u[i];
            for (int64_t i = 0; i < H; i++) router[e * H + i] -= (float)(dot * u[i]);
        }
        /* Popularity offsets: a permuted geometric series (see the top). */
        int *perm = malloc((size_t)E * sizeof *perm);
        if (!perm) {
            capmoe_set_error(err, "out of memory");
            goto fail;
        }
        rng r;
        rng_seed(&r, s->seed, P("synth.router_order.%ld", l));
        for (int64_t e = 0; e < E; e++) perm[e] = (int)e;
        for (int64_t e = E - 1; e > 0; e--) {
            int64_t j = (int64_t)(rng_next(&r) % (uint64_t)(e + 1));
            int t = perm[e];
            perm[e] = perm[j];
            perm[j] = t;
        }
        for (int64_t e = 0; e < E; e++) {
            double off = E > 1 ? -log(o->skew) * perm[e] / (double)(E - 1) : 0.0;
            double a = off * kappa / (SYNTH_BETA * sqH);
            for (int64_t i = 0; i < H; i++) router[e * H + i] += (float)(a * u[i]);
        }
        free(perm);
        if (o->v3) { /* e_score_correction_bias: 0, stored as float32 */
            float *b = add_tensor(s, err, 1, E, 0, "model.layers.%ld.mlp.gate.e_score_correction_bias",
                                  l);
            if (!b) goto fail;
            memset(b, 0, (size_t)E * sizeof *b);
            s->t[s->n - 1].dtype = CAPMOE_DTYPE_F32;
        }
        /* Expert e: gate (w1), up (w3), down (w2). */
        static const char *MIX[3] = {"w1", "w3", "w2"};
        static const char *HUB[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int64_t e = 0; e < E; e++)
            for (int p = 0; p < 3; p++) {
                if (mixtral)
                    P("model.layers.%ld.block_sparse_moe.experts.%ld.%s.weight", l, (long)e, MIX[p]);
                else
                    P("model.layers.%ld.mlp.experts.%ld.%s.weight", l, (long)e, HUB[p]);
                if (p < 2 ? proj(s, err, I, H, READS_H, name) : proj(s, err, H, I, WRITES_H, name))
                    goto fail;
            }
        if (o->deepseek && o->n_shared > 0) {
            char pre[128];
            snprintf(pre, sizeof pre, "model.layers.%ld.mlp.shared_experts", l);
            if (mlp(s, H, o->n_shared * I, pre, err)) goto fail;
        }
        if (qwen2 && o->shared > 0) {
            int64_t Is = o->shared;
            if (proj(s, err, Is, H, READS_H,
                     P("model.layers.%ld.mlp.shared_expert.gate_proj.weight", l)) ||
                proj(s, err, Is, H, READS_H,
                     P("model.layers.%ld.mlp.shared_expert.up_proj.weight", l)) ||
                proj(s, err, H, Is, WRITES_H,
                     P("model.layers.%ld.mlp.shared_expert.down_proj.weight", l)) ||
                proj(s, err, 1, H, READS_H, P("model.layers.%ld.mlp.shared_expert_gate.weight", l)))
                goto fail;
        }
#undef P
    }
    if (vec(s, err, H, 0, "model.norm.weight") || proj(s, err, V, H, READS_H, "lm_head.weight") ||
        run_proj_jobs(s, err))
        goto fail;
    free(u);
    return 0;
fail:
    free(u);
    return -1;
}

static double count_params(const synth_opts *o) {
    if (o->deepseek) {
        double H = (double)o->hidden, nH = (double)o->heads, qk = (double)(o->qk_nope + o->qk_rope);
        double kvl = (double)o->kv_lora, ql = (double)o->q_lora, E = (double)o->experts;
        double I = (double)o->inter;
        double attn = (ql > 0 ? H * ql + ql + ql * nH * qk : H * nH * qk) +
                      H * (kvl + (double)o->qk_rope) + kvl +
                      nH * (double)(o->qk_nope + o->v_head) * kvl + nH * (double)o->v_head * H;
        double dense = 3 * H * (double)o->dense_inter;
        double moe = E * H + (o->v3 ? E : 0) + E * 3 * H * I + 3 * H * I * (double)o->n_shared;
        return (double)o->layers * (2 * H + attn) + (double)o->dense_layers * dense +
               (double)(o->layers - o->dense_layers) * moe + 2 * (double)o->vocab * H + H;
    }
    double H = (double)o->hidden, d = H / (double)o->heads, qd = (double)o->heads * d;
    double kd = (double)o->kv_heads * d, E = (double)o->experts, I = (double)o->inter;
    double per = 2 * H + 2 * H * qd + 2 * H * kd + E * H + E * 3 * H * I;
    if (o->arch == CAPMOE_ARCH_QWEN2_MOE) per += qd + 2 * kd + 3 * H * (double)o->shared + H;
    if (o->arch == CAPMOE_ARCH_OLMOE) per += qd + kd;
    if (o->arch == CAPMOE_ARCH_QWEN3_MOE) per += 2 * d;
    return per * (double)o->layers + 2 * (double)o->vocab * H + H;
}

static int make_dir(const char *dir, capmoe_error *err) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return capmoe_set_error(err, "--out %s: not a directory", dir);
    } else if (mkdir(dir, 0777) != 0) {
        return capmoe_set_error(err, "--out %s: cannot create the directory: %s", dir,
                                strerror(errno));
    }
    if (access(dir, W_OK) != 0)
        return capmoe_set_error(err, "--out %s: directory is not writable", dir);
    char *idx = capmoe_path_join(dir, "model.safetensors.index.json");
    int sharded = idx && access(idx, F_OK) == 0;
    free(idx);
    if (sharded)
        return capmoe_set_error(err, "--out %s: the directory holds a sharded checkpoint "
                                     "(model.safetensors.index.json); choose another directory",
                                dir);
    return 0;
}

int capmoe_cmd_synth(int argc, char **argv) {
    static const char *const SW[] = {"help", NULL};
    capmoe_error err = {{0}};
    capmoe_cli_args a;
    if (capmoe_cli_parse(&a, argc, argv, SW, &err)) {
        fprintf(stderr, "capmoe synth: %s\n%s", err.msg, SYNTH_USAGE);
        return 2;
    }
    if (capmoe_cli_has(&a, "help")) {
        fputs(SYNTH_USAGE, stdout);
        return 0;
    }
    synth_opts o;
    if (parse_opts(&a, &o, &err) || capmoe_cli_check_unused(&a, &err)) {
        fprintf(stderr, "capmoe synth: %s\n%s", err.msg, SYNTH_USAGE);
        return 2;
    }
    int bos = 256, eos = 256;
    if (o.tok_from) {
        capmoe_tokenizer *tok = NULL;
        if (capmoe_tokenizer_load(&tok, o.tok_from, &err)) {
            fprintf(stderr, "capmoe synth: --tokenizer-from: %s\n", err.msg);
            return 1;
        }
        int nv = capmoe_tokenizer_n_vocab(tok);
        bos = capmoe_tokenizer_bos_id(tok);
        eos = capmoe_tokenizer_eos_id(tok);
        capmoe_tokenizer_free(tok);
        if (!capmoe_cli_has(&a, "vocab")) o.vocab = (nv + 63) / 64 * 64;
        else if (o.vocab < nv) {
            fprintf(stderr, "capmoe synth: --vocab %ld is smaller than the %d ids of the "
                    "tokenizer in %s\n", o.vocab, nv, o.tok_from);
            return 2;
        }
    } else if (o.vocab < SYNTH_TOK_VOCAB) {
        fprintf(stderr, "capmoe synth: --vocab %ld is smaller than the %d ids of the built-in "
                "byte-level tokenizer\n", o.vocab, SYNTH_TOK_VOCAB);
        return 2;
    }
    double params = count_params(&o);
    double bytes = params * (o.dtype == CAPMOE_DTYPE_F32 ? 4.0 : 2.0);
    if (params * 4.0 > (double)SYNTH_MAX_BYTES) {
        fprintf(stderr, "capmoe synth: the requested sizes give %.0f parameters (%.1f GiB as "
                "float32); at most %.0f GiB is supported\n", params, params * 4.0 / 1073741824.0,
                (double)SYNTH_MAX_BYTES / 1073741824.0);
        return 2;
    }
    if (make_dir(o.out, &err)) {
        fprintf(stderr, "capmoe synth: %s\n", err.msg);
        return 1;
    }
    synth s = {.dtype = o.dtype, .seed = (uint64_t)o.seed};
    int rc = 1;
    char *path = NULL;
    if (build_weights(&s, &o, &err) || convert_all(&s, &err)) goto end;
    path = capmoe_path_join(o.out, "model.safetensors");
    if (!path) {
        capmoe_set_error(&err, "out of memory");
        goto end;
    }
    if (capmoe_st_write_file(path, s.t, s.n, &err)) goto end;
    if (write_json(o.out, "config.json",
                   o.deepseek ? make_config_deepseek(&o, bos, eos) : make_config(&o, bos, eos), &err))
        goto end;
    cJSON *g = cJSON_CreateObject();
    if (bos >= 0) cJSON_AddNumberToObject(g, "bos_token_id", bos);
    if (eos >= 0) cJSON_AddNumberToObject(g, "eos_token_id", eos);
    cJSON_AddStringToObject(g, "transformers_version", "5.0.0");
    if (write_json(o.out, "generation_config.json", g, &err)) goto end;
    if (o.tok_from) {
        if (copy_file(o.tok_from, o.out, "tokenizer.json", 1, &err) ||
            copy_file(o.tok_from, o.out, "tokenizer_config.json", 0, &err) ||
            copy_file(o.tok_from, o.out, "special_tokens_map.json", 0, &err))
            goto end;
    } else if (write_min_tokenizer(o.out, o.context, &err)) {
        goto end;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "out", o.out);
    cJSON_AddStringToObject(out, "arch", o.arch_s);
    cJSON_AddStringToObject(out, "dtype", o.dtype_s);
    cJSON_AddNumberToObject(out, "tensors", s.n);
    cJSON_AddNumberToObject(out, "parameters", params);
    cJSON_AddNumberToObject(out, "bytes", bytes);
    cJSON_AddNumberToObject(out, "vocab_size", (double)o.vocab);
    cJSON_AddNumberToObject(out, "skew", o.skew);
    cJSON_AddNumberToObject(out, "seed", (double)o.seed);
    char *txt = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    if (txt) {
        puts(txt);
        free(txt);
    }
    rc = 0;
end:
    if (rc) fprintf(stderr, "capmoe synth: %s\n", err.msg);
    free(path);
    synth_free(&s);
    return rc;
}
