/* check_metrics.c - tests of server/metrics.c.
 *
 * A small parser of the Prometheus text format (0.0.4) checks what promtool
 * does not: every sample's family has HELP and TYPE before it, families are
 * contiguous, no series appears twice, histogram buckets are cumulative with
 * ascending le and +Inf == _count, the text ends with a newline. Then exact
 * values after known updates, label escaping, bounded label cardinality, and
 * totals after concurrent updates from several threads.
 *
 * `check_metrics --dump [per-layer]` prints a populated exposition to stdout
 * for tests/t_promtool.sh. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capmoe/metrics.h"

/* ---- a tiny exposition parser ------------------------------------------------ */

#define MAXFAM 64
#define MAXSER 8192

typedef struct family {
    char name[96];
    char type[16];
    int has_help, has_type, n_samples;
} family;

typedef struct series {
    char key[256]; /* name{k="v",...} with labels sorted, values unescaped */
    char name[96];
    double value;
} series;

typedef struct parsed {
    int n_fam, n_ser;
    family fam[MAXFAM];
    series ser[MAXSER];
    char err[512];
} parsed;

static int name_char(int c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

static family *fam_find(parsed *p, const char *name) {
    for (int i = 0; i < p->n_fam; i++)
        if (strcmp(p->fam[i].name, name) == 0) return &p->fam[i];
    return NULL;
}

typedef struct label {
    char k[64], v[192];
} label;

static int label_cmp(const void *a, const void *b) {
    return strcmp(((const label *)a)->k, ((const label *)b)->k);
}

/* The label part of a canonical key ("{a=\"x\",le=\"1\"}") without le:
 * "{a=\"x\"}", or "" when le was the only label. */
static void strip_le(const char *labels, char *out, size_t n) {
    snprintf(out, n, "%s", labels);
    char *q = strstr(out, "le=\"");
    while (q && q != out + 1 && q[-1] != ',') q = strstr(q + 1, "le=\"");
    if (!q) return;
    char *end = strchr(q + 4, '"');
    if (!end) return;
    end++;
    if (*end == ',') end++;
    else if (q[-1] == ',') q--;
    memmove(q, end, strlen(end) + 1);
    if (strcmp(out, "{}") == 0) out[0] = '\0';
}

/* Fails (returns -1 with p->err) on anything that is not valid exposition. */
static int parse_exposition(const char *text, size_t len, parsed *p) {
    memset(p, 0, sizeof *p);
    if (len == 0 || text[len - 1] != '\n') {
        snprintf(p->err, sizeof p->err, "no final newline");
        return -1;
    }
    if (strlen(text) != len) {
        snprintf(p->err, sizeof p->err, "NUL byte inside");
        return -1;
    }
    family *cur = NULL;
    const char *line = text;
    int lineno = 0;
    while (line < text + len) {
        const char *eol = memchr(line, '\n', (size_t)(text + len - line));
        size_t n = (size_t)(eol - line);
        char buf[1024];
        lineno++;
        if (n >= sizeof buf) {
            snprintf(p->err, sizeof p->err, "line %d too long", lineno);
            return -1;
        }
        memcpy(buf, line, n);
        buf[n] = 0;
        line = eol + 1;
        if (n == 0) continue;
        if (buf[0] == '#') {
            char kind[8], name[96], rest[512] = "";
            if (sscanf(buf, "# %7s %95s %511[^\n]", kind, name, rest) < 2) {
                snprintf(p->err, sizeof p->err, "line %d: bad comment", lineno);
                return -1;
            }
            family *f = fam_find(p, name);
            if (strcmp(kind, "HELP") == 0) {
                if (f) {
                    snprintf(p->err, sizeof p->err, "line %d: family %s repeated (split family)", lineno, name);
                    return -1;
                }
                if (p->n_fam == MAXFAM) return -1;
                f = &p->fam[p->n_fam++];
                snprintf(f->name, sizeof f->name, "%s", name);
                f->has_help = 1;
                cur = f;
            } else if (strcmp(kind, "TYPE") == 0) {
                if (!f || f != cur || f->has_type || f->n_samples) {
                    snprintf(p->err, sizeof p->err, "line %d: TYPE %s without HELP just before", lineno, name);
                    return -1;
                }
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram")) {
                    snprintf(p->err, sizeof p->err, "line %d: type %.60s", lineno, rest);
                    return -1;
                }
                snprintf(f->type, sizeof f->type, "%.15s", rest);
                f->has_type = 1;
            }
            continue;
        }
        /* sample: name[{labels}] value */
        char *s = buf;
        char name[96];
        int i = 0;
        if (!name_char((unsigned char)s[0], 1)) {
            snprintf(p->err, sizeof p->err, "line %d: bad metric name", lineno);
            return -1;
        }
        while (name_char((unsigned char)s[i], 0) && i < 95) name[i] = s[i], i++;
        name[i] = 0;
        s += i;
        label lb[8];
        int nl = 0;
        if (*s == '{') {
            s++;
            while (*s != '}') {
                if (nl == 8) return -1;
                int j = 0;
                while (name_char((unsigned char)*s, j == 0) && j < 63) lb[nl].k[j++] = *s++;
                lb[nl].k[j] = 0;
                if (j == 0 || s[0] != '=' || s[1] != '"') {
                    snprintf(p->err, sizeof p->err, "line %d: bad label", lineno);
                    return -1;
                }
                s += 2;
                j = 0;
                while (*s != '"') {
                    if (!*s || j >= 190) {
                        snprintf(p->err, sizeof p->err, "line %d: unterminated label", lineno);
                        return -1;
                    }
                    if (*s == '\\') {
                        s++;
                        if (*s == 'n') lb[nl].v[j++] = '\n';
                        else if (*s == '\\' || *s == '"') lb[nl].v[j++] = *s;
                        else {
                            snprintf(p->err, sizeof p->err, "line %d: bad escape", lineno);
                            return -1;
                        }
                        s++;
                    } else {
                        lb[nl].v[j++] = *s++;
                    }
                }
                lb[nl].v[j] = 0;
                s++;
                nl++;
                if (*s == ',') s++;
                else if (*s != '}') {
                    snprintf(p->err, sizeof p->err, "line %d: bad label list", lineno);
                    return -1;
                }
            }
            s++;
        }
        if (*s != ' ') {
            snprintf(p->err, sizeof p->err, "line %d: no value", lineno);
            return -1;
        }
        s++;
        char *end;
        double v = strtod(s, &end);
        if (end == s || *end) { /* no timestamps either */
            snprintf(p->err, sizeof p->err, "line %d: bad value '%s'", lineno, s);
            return -1;
        }
        /* The family of this sample: the name, or a histogram's base name. */
        family *f = fam_find(p, name);
        if (!f) {
            static const char *suf[] = {"_bucket", "_sum", "_count"};
            for (int k = 0; k < 3 && !f; k++) {
                size_t nn = strlen(name), sl = strlen(suf[k]);
                if (nn > sl && strcmp(name + nn - sl, suf[k]) == 0) {
                    char base[96];
                    snprintf(base, sizeof base, "%.*s", (int)(nn - sl), name);
                    f = fam_find(p, base);
                    if (f && strcmp(f->type, "histogram") != 0) f = NULL;
                }
            }
        }
        if (!f || f != cur || !f->has_help || !f->has_type) {
            snprintf(p->err, sizeof p->err, "line %d: sample %s outside its family group", lineno, name);
            return -1;
        }
        f->n_samples++;
        qsort(lb, (size_t)nl, sizeof lb[0], label_cmp);
        if (p->n_ser == MAXSER) return -1;
        series *se = &p->ser[p->n_ser];
        int off = snprintf(se->key, sizeof se->key, "%s", name);
        if (nl) {
            off += snprintf(se->key + off, sizeof se->key - (size_t)off, "{");
            for (int k = 0; k < nl; k++)
                off += snprintf(se->key + off, sizeof se->key - (size_t)off, "%s%s=\"%s\"", k ? "," : "",
                                lb[k].k, lb[k].v);
            snprintf(se->key + off, sizeof se->key - (size_t)off, "}");
        }
        for (int k = 0; k < p->n_ser; k++)
            if (strcmp(p->ser[k].key, se->key) == 0) {
                snprintf(p->err, sizeof p->err, "line %d: duplicate series %s", lineno, se->key);
                return -1;
            }
        snprintf(se->name, sizeof se->name, "%s", name);
        se->value = v;
        p->n_ser++;
    }
    /* Per family: naming rules, and histogram structure. */
    for (int i = 0; i < p->n_fam; i++) {
        family *f = &p->fam[i];
        size_t nn = strlen(f->name);
        if (!f->has_type) {
            snprintf(p->err, sizeof p->err, "%s: no TYPE", f->name);
            return -1;
        }
        if (strcmp(f->type, "counter") == 0 && (nn < 6 || strcmp(f->name + nn - 6, "_total") != 0)) {
            snprintf(p->err, sizeof p->err, "%s: counter without _total", f->name);
            return -1;
        }
        if (strcmp(f->type, "histogram") != 0) continue;
        char bname[128], cname[128], sname[128];
        snprintf(bname, sizeof bname, "%s_bucket", f->name);
        snprintf(cname, sizeof cname, "%s_count", f->name);
        snprintf(sname, sizeof sname, "%s_sum", f->name);
        /* one histogram per label set (its _count series) */
        int n_groups = 0;
        for (int g = 0; g < p->n_ser; g++) {
            if (strcmp(p->ser[g].name, cname) != 0) continue;
            n_groups++;
            const char *labels = p->ser[g].key + strlen(cname); /* "" or {...} */
            double count = p->ser[g].value;
            double prev_le = -INFINITY, prev_cnt = 0, inf_cnt = -1;
            int have_sum = 0;
            for (int k = 0; k < p->n_ser; k++) {
                series *se = &p->ser[k];
                if (strcmp(se->name, bname) == 0) {
                    char rest[256];
                    strip_le(se->key + strlen(bname), rest, sizeof rest);
                    if (strcmp(rest, labels) != 0) continue;
                    const char *q = strstr(se->key, "le=\"");
                    if (!q) return -1;
                    double le = strtod(q + 4, NULL);
                    if (!(le > prev_le) || se->value < prev_cnt) {
                        snprintf(p->err, sizeof p->err, "%s: buckets not ascending / cumulative",
                                 f->name);
                        return -1;
                    }
                    prev_le = le;
                    prev_cnt = se->value;
                    if (isinf(le)) inf_cnt = se->value;
                } else if (strcmp(se->name, sname) == 0 &&
                           strcmp(se->key + strlen(sname), labels) == 0) {
                    have_sum = 1;
                }
            }
            if (inf_cnt < 0 || inf_cnt != count || !have_sum) {
                snprintf(p->err, sizeof p->err, "%s%s: +Inf bucket %g vs _count %g (sum %d)",
                         f->name, labels, inf_cnt, count, have_sum);
                return -1;
            }
        }
        if (n_groups == 0) {
            snprintf(p->err, sizeof p->err, "%s: histogram without _count", f->name);
            return -1;
        }
    }
    return 0;
}

/* Value of a series by its canonical key; NAN when absent. */
static double val(const parsed *p, const char *key) {
    for (int i = 0; i < p->n_ser; i++)
        if (strcmp(p->ser[i].key, key) == 0) return p->ser[i].value;
    return NAN;
}

static const char *type_of(parsed *p, const char *name) {
    family *f = fam_find(p, name);
    return f ? f->type : "";
}

static parsed *render_parse(capmoe_metrics *m) {
    size_t len;
    char *text = capmoe_metrics_render(m, &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(strlen(text), len);
    parsed *p = malloc(sizeof *p);
    int rc = parse_exposition(text, len, p);
    ck_assert_msg(rc == 0, "exposition invalid: %s", p->err);
    free(text);
    return p;
}

/* ---- fixtures ------------------------------------------------------------------ */

static const char *const k_build[] = {"version", "1.2.3", "revision", "abc\"def", NULL};

/* min_tokens 2: the T = 4 dispatches of fake_step count as full-size. */
static capmoe_metrics *new_metrics(int per_layer) {
    capmoe_metrics_opts o = {.model_name = "mixtral-tiny", .n_layers = 4, .n_experts = 4,
                             .per_layer_expert = per_layer, .policy = "drop", .min_tokens = 2,
                             .build_labels = k_build};
    capmoe_metrics *m = capmoe_metrics_new(&o);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Two MoE layers of a T=4, k=2 step over 4 experts on 2 ranks. */
static void fake_step(capmoe_forward_stats *fs, capmoe_layer_stats ls[2]) {
    memset(ls, 0, 2 * sizeof ls[0]);
    /* layer 1: limited, gamma 1.25 -> capacity 3; loads 3,1,2,1 = 7 pairs
     * computed, 1 dropped (8 routed). */
    ls[0].layer = 1;
    ls[0].tokens = 4;
    ls[0].limited = 1;
    ls[0].capacity = 3;
    ls[0].gamma = 1.25;
    ls[0].n_experts = 4;
    ls[0].loads[0] = 3, ls[0].loads[1] = 1, ls[0].loads[2] = 2, ls[0].loads[3] = 1;
    ls[0].dropped = 1;
    ls[0].dropped_mass = 0.05;
    ls[0].n_ranks = 2;
    ls[0].rank_load[0] = 4, ls[0].rank_load[1] = 3;
    ls[0].rank_time[0] = 0.003, ls[0].rank_time[1] = 0.001; /* straggler 1.5 */
    ls[0].layer_time = 0.004;
    /* layer 3: not limited; loads 4,4,0,0 (imbalance 2), 8 pairs. */
    ls[1].layer = 3;
    ls[1].tokens = 4;
    ls[1].n_experts = 4;
    ls[1].loads[0] = 4, ls[1].loads[1] = 4;
    ls[1].n_ranks = 2;
    ls[1].rank_load[0] = 8;
    ls[1].rank_time[0] = 0.002, ls[1].rank_time[1] = 0.002; /* straggler 1 */
    ls[1].layer_time = 0.0005;
    memset(fs, 0, sizeof *fs);
    fs->n_moe = 2;
    fs->layers = ls;
    fs->cap_layers = 2;
    fs->tokens = 4;
    fs->total_time = 0.02;
}

static void populate(capmoe_metrics *m) {
    capmoe_metrics_request(m, "/v1/completions", 200);
    capmoe_metrics_request(m, "/v1/completions", 200);
    capmoe_metrics_request(m, "/v1/completions", 400);
    capmoe_metrics_request(m, "/v1/chat/completions", 200);
    capmoe_metrics_request(m, "/metrics", 200);
    capmoe_metrics_prompt_tokens(m, 12);
    capmoe_metrics_generated_tokens(m, 5);
    capmoe_metrics_generated_tokens(m, 2);
    capmoe_metrics_time_to_first_token(m, 0.05);
    capmoe_metrics_time_to_first_token(m, 0.3);
    capmoe_metrics_inter_token_latency(m, 0.012);
    capmoe_metrics_e2e_latency(m, 1.5);
    capmoe_metrics_queue_time(m, 0.0001);
    capmoe_metrics_set_requests(m, 3, 7);
    capmoe_metrics_set_kv_cache(m, 256, 1024, 65536);
    capmoe_metrics_set_kv_token_bytes(m, 62208, 552960);
    capmoe_forward_stats fs;
    capmoe_layer_stats ls[2];
    fake_step(&fs, ls);
    capmoe_metrics_batch(m, 4, &fs);
    capmoe_metrics_batch(m, 4, &fs);
    capmoe_metrics_batch(m, 1, NULL);
}

/* ---- tests -------------------------------------------------------------------- */

static const struct {
    const char *name, *type;
} expected_families[] = {
    {"capmoe_requests_total", "counter"},
    {"capmoe_prompt_tokens_total", "counter"},
    {"capmoe_generation_tokens_total", "counter"},
    {"capmoe_request_success_total", "counter"},
    {"capmoe_request_prompt_tokens", "histogram"},
    {"capmoe_request_generation_tokens", "histogram"},
    {"capmoe_time_to_first_token_seconds", "histogram"},
    {"capmoe_inter_token_latency_seconds", "histogram"},
    {"capmoe_e2e_request_latency_seconds", "histogram"},
    {"capmoe_request_queue_time_seconds", "histogram"},
    {"capmoe_requests_running", "gauge"},
    {"capmoe_requests_waiting", "gauge"},
    {"capmoe_kv_cache_usage_ratio", "gauge"},
    {"capmoe_kv_cache_tokens", "gauge"},
    {"capmoe_kv_cache_capacity_tokens", "gauge"},
    {"capmoe_kv_cache_bytes", "gauge"},
    {"capmoe_kv_cache_token_bytes", "gauge"},
    {"capmoe_kv_cache_expanded_token_bytes", "gauge"},
    {"capmoe_batch_tokens", "histogram"},
    {"capmoe_forward_seconds", "histogram"},
    {"capmoe_expert_tokens_total", "counter"},
    {"capmoe_moe_load_imbalance", "histogram"},
    {"capmoe_moe_straggler_ratio", "histogram"},
    {"capmoe_moe_routed_pairs_total", "counter"},
    {"capmoe_moe_dropped_pairs_total", "counter"},
    {"capmoe_moe_rerouted_pairs_total", "counter"},
    {"capmoe_moe_piggybacked_pairs_total", "counter"},
    {"capmoe_moe_regime_crossover_tokens", "gauge"},
    {"capmoe_moe_activated_experts", "histogram"},
    {"capmoe_moe_dispatches_total", "counter"},
    {"capmoe_moe_capacity_factor", "histogram"},
    {"capmoe_moe_dropped_mass_ratio", "histogram"},
    {"capmoe_moe_layer_seconds", "histogram"},
    {"capmoe_model_info", "gauge"},
    {"capmoe_build_info", "gauge"},
    {"process_cpu_seconds_total", "counter"},
    {"process_resident_memory_bytes", "gauge"},
    {"process_virtual_memory_bytes", "gauge"},
    {"process_open_fds", "gauge"},
    {"process_max_fds", "gauge"},
    {"process_start_time_seconds", "gauge"},
};
#define N_EXPECTED ((int)(sizeof expected_families / sizeof expected_families[0]))

START_TEST(test_fresh_registry) {
    capmoe_metrics *m = new_metrics(0);
    parsed *p = render_parse(m);
    ck_assert_int_eq(p->n_fam, N_EXPECTED);
    for (int i = 0; i < N_EXPECTED; i++) {
        ck_assert_str_eq(p->fam[i].name, expected_families[i].name);
        ck_assert_str_eq(p->fam[i].type, expected_families[i].type);
    }
    ck_assert(val(p, "capmoe_generation_tokens_total") == 0);
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_count") == 0);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"3\"}") == 0);
    ck_assert(isnan(val(p, "capmoe_expert_tokens_total{expert=\"4\"}")));
    ck_assert(val(p, "capmoe_model_info{model=\"mixtral-tiny\",policy=\"drop\"}") == 1);
    ck_assert(val(p, "capmoe_build_info{revision=\"abc\"def\",version=\"1.2.3\"}") == 1);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"stop\"}") == 0);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"length\"}") == 0);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"abort\"}") == 0);
    /* process_*: this process, read from /proc at scrape time */
    double start = val(p, "process_start_time_seconds");
    ck_assert(start > 1.6e9 && start < 4e9); /* a Unix time, not a monotonic one */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    ck_assert(start <= (double)now.tv_sec + 1 && start > (double)now.tv_sec - 3600);
    ck_assert(val(p, "process_resident_memory_bytes") > 1e6);
    ck_assert(val(p, "process_virtual_memory_bytes") >= val(p, "process_resident_memory_bytes"));
    ck_assert(val(p, "process_cpu_seconds_total") > 0);
    double fds = val(p, "process_open_fds");
    ck_assert(fds >= 3 && fds <= val(p, "process_max_fds"));
    free(p);
    /* an opened descriptor shows at the next scrape */
    FILE *f[5];
    for (int i = 0; i < 5; i++) f[i] = fopen("/proc/self/stat", "r");
    p = render_parse(m);
    ck_assert(val(p, "process_open_fds") == fds + 5);
    free(p);
    for (int i = 0; i < 5; i++) fclose(f[i]);
    capmoe_metrics_free(m);
}
END_TEST

START_TEST(test_values_after_updates) {
    capmoe_metrics *m = new_metrics(0);
    populate(m);
    parsed *p = render_parse(m);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/v1/completions\"}") == 2);
    ck_assert(val(p, "capmoe_requests_total{code=\"400\",endpoint=\"/v1/completions\"}") == 1);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/v1/chat/completions\"}") == 1);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/metrics\"}") == 1);
    ck_assert(val(p, "capmoe_prompt_tokens_total") == 12);
    ck_assert(val(p, "capmoe_generation_tokens_total") == 7);
    /* Buckets are inclusive upper bounds: 0.05 counts in le="0.05". */
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_bucket{le=\"0.025\"}") == 0);
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_bucket{le=\"0.05\"}") == 1);
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_bucket{le=\"0.3\"}") == 2);
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_bucket{le=\"+Inf\"}") == 2);
    ck_assert(fabs(val(p, "capmoe_time_to_first_token_seconds_sum") - 0.35) < 1e-12);
    ck_assert(val(p, "capmoe_inter_token_latency_seconds_bucket{le=\"0.01\"}") == 0);
    ck_assert(val(p, "capmoe_inter_token_latency_seconds_bucket{le=\"0.02\"}") == 1);
    ck_assert(val(p, "capmoe_e2e_request_latency_seconds_count") == 1);
    ck_assert(val(p, "capmoe_request_queue_time_seconds_bucket{le=\"0.0005\"}") == 1);
    ck_assert(val(p, "capmoe_requests_running") == 3);
    ck_assert(val(p, "capmoe_requests_waiting") == 7);
    ck_assert(val(p, "capmoe_kv_cache_usage_ratio") == 0.25);
    ck_assert(val(p, "capmoe_kv_cache_tokens") == 256);
    ck_assert(val(p, "capmoe_kv_cache_capacity_tokens") == 1024);
    ck_assert(val(p, "capmoe_kv_cache_bytes") == 65536);
    ck_assert(val(p, "capmoe_kv_cache_token_bytes") == 62208);          /* DeepSeek-V2-Lite */
    ck_assert(val(p, "capmoe_kv_cache_expanded_token_bytes") == 552960);
    /* Three steps: 4, 4 and 1 tokens; two with forward stats. */
    ck_assert(val(p, "capmoe_batch_tokens_count") == 3);
    ck_assert(val(p, "capmoe_batch_tokens_bucket{le=\"1\"}") == 1);
    ck_assert(val(p, "capmoe_batch_tokens_bucket{le=\"4\"}") == 3);
    ck_assert(val(p, "capmoe_batch_tokens_sum") == 9);
    ck_assert(val(p, "capmoe_forward_seconds_count") == 2);
    /* Experts, summed over both layers and both steps: (3+4, 1+4, 2, 1) x 2. */
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"0\"}") == 14);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"1\"}") == 10);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"2\"}") == 4);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"3\"}") == 2);
    /* Imbalance: layer 1 max 3 / mean 1.75 = 1.714..; layer 3: 4 / 2 = 2. */
    ck_assert(val(p, "capmoe_moe_load_imbalance_count{below_min_tokens=\"false\"}") == 4);
    ck_assert(val(p, "capmoe_moe_load_imbalance_count{below_min_tokens=\"true\"}") == 0);
    ck_assert(val(p, "capmoe_moe_load_imbalance_bucket{below_min_tokens=\"false\",le=\"1.5\"}") == 0);
    ck_assert(val(p, "capmoe_moe_load_imbalance_bucket{below_min_tokens=\"false\",le=\"1.75\"}") == 2);
    ck_assert(val(p, "capmoe_moe_load_imbalance_bucket{below_min_tokens=\"false\",le=\"2\"}") == 4);
    ck_assert(fabs(val(p, "capmoe_moe_load_imbalance_sum{below_min_tokens=\"false\"}") -
                   2 * (3 / 1.75 + 2)) < 1e-12);
    /* Straggler: 0.003 / 0.002 = 1.5 and 1. */
    ck_assert(val(p, "capmoe_moe_straggler_ratio_bucket{le=\"1\"}") == 2);
    ck_assert(val(p, "capmoe_moe_straggler_ratio_bucket{le=\"1.3\"}") == 2);
    ck_assert(val(p, "capmoe_moe_straggler_ratio_bucket{le=\"1.5\"}") == 4);
    /* Pairs: routed = computed + dropped = (7 + 1) + 8 per step. */
    ck_assert(val(p, "capmoe_moe_routed_pairs_total") == 32);
    ck_assert(val(p, "capmoe_moe_dropped_pairs_total") == 2);
    ck_assert(val(p, "capmoe_moe_rerouted_pairs_total") == 0);
    ck_assert(val(p, "capmoe_moe_dispatches_total{limited=\"true\",regime=\"main\"}") == 2);
    ck_assert(val(p, "capmoe_moe_dispatches_total{limited=\"false\",regime=\"main\"}") == 2);
    ck_assert(val(p, "capmoe_moe_dispatches_total{limited=\"true\",regime=\"decode\"}") == 0);
    ck_assert(val(p, "capmoe_moe_dispatches_total{limited=\"false\",regime=\"decode\"}") == 0);
    /* Activated experts per dispatch: loads (3,1,2,1) -> 4 and (4,4,0,0) -> 2, twice. */
    ck_assert(val(p, "capmoe_moe_activated_experts_count") == 4);
    ck_assert(val(p, "capmoe_moe_activated_experts_bucket{le=\"2\"}") == 2);
    ck_assert(val(p, "capmoe_moe_activated_experts_bucket{le=\"4\"}") == 4);
    ck_assert(val(p, "capmoe_moe_activated_experts_sum") == 12);
    ck_assert(val(p, "capmoe_moe_piggybacked_pairs_total") == 0);
    ck_assert(val(p, "capmoe_moe_capacity_factor_count") == 2);
    ck_assert(val(p, "capmoe_moe_capacity_factor_bucket{le=\"1\"}") == 0);
    ck_assert(val(p, "capmoe_moe_capacity_factor_bucket{le=\"1.25\"}") == 2);
    ck_assert(val(p, "capmoe_moe_capacity_factor_sum") == 2.5);
    ck_assert(val(p, "capmoe_moe_dropped_mass_ratio_count") == 2);
    ck_assert(val(p, "capmoe_moe_dropped_mass_ratio_bucket{le=\"0.02\"}") == 0);
    ck_assert(val(p, "capmoe_moe_dropped_mass_ratio_bucket{le=\"0.05\"}") == 2);
    ck_assert(val(p, "capmoe_moe_layer_seconds_count") == 4);
    ck_assert(val(p, "capmoe_moe_layer_seconds_bucket{le=\"0.0005\"}") == 2);
    ck_assert(val(p, "capmoe_moe_layer_seconds_bucket{le=\"0.0025\"}") == 2);
    ck_assert(val(p, "capmoe_moe_layer_seconds_bucket{le=\"0.005\"}") == 4);
    free(p);

    /* With k known, routed pairs are T*k exactly: 2 layers x 4 tokens x 2. */
    capmoe_metrics_set_top_k(m, 2);
    capmoe_forward_stats fs;
    capmoe_layer_stats ls[2];
    fake_step(&fs, ls);
    ls[1].loads[2] = 3; /* an "expanded" extra: computed beyond T*k */
    capmoe_metrics_batch(m, 4, &fs);
    p = render_parse(m);
    ck_assert(val(p, "capmoe_moe_routed_pairs_total") == 32 + 16);
    free(p);

    /* A live min_tokens of 16: the T = 4 dispatches count as below it. */
    capmoe_metrics_set_min_tokens(m, 16);
    capmoe_metrics_set_policy(m, "reroute");
    capmoe_metrics_batch(m, 4, &fs);
    p = render_parse(m);
    ck_assert(val(p, "capmoe_moe_load_imbalance_count{below_min_tokens=\"false\"}") == 6);
    ck_assert(val(p, "capmoe_moe_load_imbalance_count{below_min_tokens=\"true\"}") == 2);
    ck_assert(val(p, "capmoe_moe_load_imbalance_bucket{below_min_tokens=\"true\",le=\"2\"}") == 2);
    ck_assert(val(p, "capmoe_model_info{model=\"mixtral-tiny\",policy=\"reroute\"}") == 1);
    ck_assert(isnan(val(p, "capmoe_model_info{model=\"mixtral-tiny\",policy=\"drop\"}")));
    free(p);

    /* Finished sequences: by reason (others ignored), token histograms. */
    capmoe_metrics_request_finished(m, "stop", 7, 3);
    capmoe_metrics_request_finished(m, "length", 100, 16);
    capmoe_metrics_request_finished(m, "length", 1, 1);
    capmoe_metrics_request_finished(m, "abort", 5, 0);
    capmoe_metrics_request_finished(m, "error", 5, 0);
    capmoe_metrics_request_finished(m, NULL, 5, 0);
    p = render_parse(m);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"stop\"}") == 1);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"length\"}") == 2);
    ck_assert(val(p, "capmoe_request_success_total{finished_reason=\"abort\"}") == 1);
    ck_assert(isnan(val(p, "capmoe_request_success_total{finished_reason=\"error\"}")));
    ck_assert(val(p, "capmoe_request_prompt_tokens_count") == 4);
    ck_assert(val(p, "capmoe_request_prompt_tokens_sum") == 113);
    ck_assert(val(p, "capmoe_request_prompt_tokens_bucket{le=\"5\"}") == 2);
    ck_assert(val(p, "capmoe_request_prompt_tokens_bucket{le=\"10\"}") == 3);
    ck_assert(val(p, "capmoe_request_generation_tokens_sum") == 20);
    ck_assert(val(p, "capmoe_request_generation_tokens_bucket{le=\"1\"}") == 2);
    ck_assert(val(p, "capmoe_request_generation_tokens_bucket{le=\"20\"}") == 4);
    free(p);
    capmoe_metrics_free(m);
}
END_TEST

START_TEST(test_per_layer_experts) {
    capmoe_metrics *m = new_metrics(1);
    parsed *p = render_parse(m);
    ck_assert(isnan(val(p, "capmoe_expert_tokens_total{expert=\"0\",layer=\"1\"}")));
    free(p);
    populate(m);
    p = render_parse(m);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"0\",layer=\"1\"}") == 6);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"2\",layer=\"1\"}") == 4);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"1\",layer=\"3\"}") == 8);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"3\",layer=\"3\"}") == 0);
    /* Only layers that dispatched get series (dense layers would be zeros). */
    ck_assert(isnan(val(p, "capmoe_expert_tokens_total{expert=\"0\",layer=\"0\"}")));
    ck_assert(isnan(val(p, "capmoe_expert_tokens_total{expert=\"0\"}")));
    int n = 0;
    for (int i = 0; i < p->n_ser; i++) n += strcmp(p->ser[i].name, "capmoe_expert_tokens_total") == 0;
    ck_assert_int_eq(n, 8);
    free(p);
    /* Out-of-range layer indices are ignored, not written out of bounds. */
    capmoe_forward_stats fs;
    capmoe_layer_stats ls[2];
    fake_step(&fs, ls);
    ls[0].layer = 4;
    ls[1].layer = -1;
    ls[1].n_experts = 100000;
    capmoe_metrics_batch(m, 4, &fs);
    p = render_parse(m);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"0\",layer=\"1\"}") == 6);
    free(p);
    capmoe_metrics_free(m);
}
END_TEST

START_TEST(test_escaping_and_utf8) {
    capmoe_metrics_opts o = {.model_name = "we\"ird\\name\nline \xC3\xA9 \xFF end", .n_layers = 1,
                             .n_experts = 2, .policy = "reroute"};
    capmoe_metrics *m = capmoe_metrics_new(&o);
    capmoe_metrics_request(m, "/a\"b\\c", 200);
    capmoe_metrics_request(m, "/bad\nnewline", 200);
    capmoe_metrics_request(m, "/caf\xC3\xA9", 200);
    capmoe_metrics_request(m, NULL, 404);
    capmoe_metrics_request(m, "", 404);
    size_t len;
    char *text = capmoe_metrics_render(m, &len);
    ck_assert_ptr_nonnull(strstr(text, "model=\"we\\\"ird\\\\name\\nline \xC3\xA9 \xEF\xBF\xBD end\""));
    ck_assert_ptr_nonnull(strstr(text, "endpoint=\"/a\\\"b\\\\c\""));
    ck_assert_ptr_null(strstr(text, "newline"));
    free(text);
    parsed *p = render_parse(m);
    ck_assert(val(p, "capmoe_model_info{model=\"we\"ird\\name\nline \xC3\xA9 \xEF\xBF\xBD end\",policy=\"reroute\"}") == 1);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/a\"b\\c\"}") == 1);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"other\"}") == 2);
    ck_assert(val(p, "capmoe_requests_total{code=\"404\",endpoint=\"other\"}") == 2);
    free(p);
    capmoe_metrics_free(m);
}
END_TEST

START_TEST(test_bounded_cardinality) {
    capmoe_metrics *m = new_metrics(0);
    char ep[64];
    for (int i = 0; i < 200; i++) {
        snprintf(ep, sizeof ep, "/random/%d", i);
        capmoe_metrics_request(m, ep, 404);
        capmoe_metrics_request(m, ep, 200 + i % 3);
    }
    capmoe_metrics_request(m, "/random/0", 404); /* an early one keeps its series */
    parsed *p = render_parse(m);
    int n = 0;
    double total = 0;
    for (int i = 0; i < p->n_ser; i++)
        if (strcmp(p->ser[i].name, "capmoe_requests_total") == 0) n++, total += p->ser[i].value;
    ck_assert_int_le(n, 32 * 4 + 4);
    ck_assert(total == 401); /* nothing lost */
    ck_assert(val(p, "capmoe_requests_total{code=\"404\",endpoint=\"/random/0\"}") == 2);
    ck_assert(val(p, "capmoe_requests_total{code=\"404\",endpoint=\"other\"}") == 200 - 32);
    free(p);
    capmoe_metrics_free(m);
}
END_TEST

START_TEST(test_bad_inputs) {
    capmoe_metrics *m = capmoe_metrics_new(NULL);
    ck_assert_ptr_nonnull(m);
    capmoe_metrics_time_to_first_token(m, NAN);
    capmoe_metrics_e2e_latency(m, INFINITY);
    capmoe_metrics_prompt_tokens(m, -5);
    capmoe_metrics_set_kv_cache(m, NAN, 0, INFINITY);
    capmoe_metrics_set_kv_token_bytes(m, NAN, INFINITY);
    capmoe_metrics_request(m, "/x", -3);
    capmoe_metrics_request(m, "/x", 100000);
    capmoe_forward_stats fs = {0};
    fs.n_moe = 3; /* no layers array: ignored */
    capmoe_metrics_batch(m, 2, &fs);
    /* Unknown expert count: experts appear as they are seen. */
    capmoe_layer_stats ls[1];
    memset(ls, 0, sizeof ls);
    ls[0].n_experts = 3;
    ls[0].loads[2] = 5;
    ls[0].tokens = 5;
    fs.layers = ls;
    fs.n_moe = 1;
    fs.cap_layers = 1;
    capmoe_metrics_batch(m, 5, &fs);
    parsed *p = render_parse(m);
    ck_assert(val(p, "capmoe_time_to_first_token_seconds_count") == 0);
    ck_assert(val(p, "capmoe_e2e_request_latency_seconds_sum") == 0);
    ck_assert(val(p, "capmoe_prompt_tokens_total") == 0);
    ck_assert(val(p, "capmoe_kv_cache_usage_ratio") == 0);
    ck_assert(val(p, "capmoe_requests_total{code=\"0\",endpoint=\"/x\"}") == 2);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"2\"}") == 5);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"0\"}") == 0);
    ck_assert(val(p, "capmoe_model_info{model=\"unknown\",policy=\"none\"}") == 1);
    /* One rank: no straggler observation. */
    ck_assert(val(p, "capmoe_moe_straggler_ratio_count") == 0);
    free(p);
    capmoe_metrics_free(m);
    /* NULL registry: every call is a no-op. */
    capmoe_metrics_request(NULL, "/x", 200);
    capmoe_metrics_set_policy(NULL, "drop");
    capmoe_metrics_set_min_tokens(NULL, 3);
    capmoe_metrics_request_finished(NULL, "stop", 1, 1);
    capmoe_metrics_batch(NULL, 3, NULL);
    capmoe_metrics_set_top_k(NULL, 2);
    size_t len = 7;
    ck_assert_ptr_null(capmoe_metrics_render(NULL, &len));
    ck_assert_uint_eq(len, 0);
    capmoe_metrics_free(NULL);
}
END_TEST

/* ---- concurrency ------------------------------------------------------------------- */

#define THREADS 6
#define ITERS 100000

static pthread_barrier_t g_start; /* all writers start together, so they overlap */

static void *writer(void *arg) {
    capmoe_metrics *m = arg;
    pthread_barrier_wait(&g_start);
    capmoe_forward_stats fs;
    capmoe_layer_stats ls[2];
    fake_step(&fs, ls);
    for (int i = 0; i < ITERS; i++) {
        capmoe_metrics_request(m, (i & 1) ? "/v1/completions" : "/v1/chat/completions", 200);
        capmoe_metrics_prompt_tokens(m, 3);
        capmoe_metrics_generated_tokens(m, 1);
        capmoe_metrics_inter_token_latency(m, 0.001 * (i % 50));
        if (i % 10 == 0) capmoe_metrics_batch(m, 4, &fs);
    }
    return NULL;
}

static void *reader(void *arg) {
    capmoe_metrics *m = arg;
    double last = 0;
    for (int i = 0; i < 50; i++) {
        parsed *p = render_parse(m);
        double g = val(p, "capmoe_generation_tokens_total");
        ck_assert(g >= last); /* a counter never goes back */
        /* Each snapshot is consistent: prompt tokens are 3 per generated. */
        ck_assert(val(p, "capmoe_prompt_tokens_total") <= 3 * g + 3 * THREADS);
        last = g;
        free(p);
    }
    return NULL;
}

START_TEST(test_concurrent_updates) {
    capmoe_metrics *m = new_metrics(1);
    pthread_t t[THREADS + 1];
    pthread_barrier_init(&g_start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, writer, m);
    pthread_create(&t[THREADS], NULL, reader, m);
    for (int i = 0; i <= THREADS; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&g_start);
    parsed *p = render_parse(m);
    double n = (double)THREADS * ITERS;
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/v1/completions\"}") == n / 2);
    ck_assert(val(p, "capmoe_requests_total{code=\"200\",endpoint=\"/v1/chat/completions\"}") == n / 2);
    ck_assert(val(p, "capmoe_prompt_tokens_total") == 3 * n);
    ck_assert(val(p, "capmoe_generation_tokens_total") == n);
    ck_assert(val(p, "capmoe_inter_token_latency_seconds_count") == n);
    double steps = THREADS * (ITERS / 10);
    ck_assert(val(p, "capmoe_batch_tokens_count") == steps);
    ck_assert(val(p, "capmoe_moe_dropped_pairs_total") == steps);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"0\",layer=\"1\"}") == 3 * steps);
    ck_assert(val(p, "capmoe_expert_tokens_total{expert=\"1\",layer=\"3\"}") == 4 * steps);
    free(p);
    capmoe_metrics_free(m);
}
END_TEST

/* ---- the parser rejects what it must (so the checks above can fail) ---------- */

START_TEST(test_parser_rejects_bad_text) {
    static const char *bad[] = {
        "# HELP a_total x\n# TYPE a_total counter\na_total 1", /* no final newline */
        "a_total 1\n",                                          /* no HELP/TYPE */
        "# HELP a_total x\n# TYPE a_total counter\na_total 1\n# HELP b x\n# TYPE b gauge\nb 1\n"
        "a_total 2\n", /* split family */
        "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{x=\"1\"} 2\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n"
        "h_count 1\n", /* not cumulative */
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", /* no +Inf */
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
        "# HELP a x\n# TYPE a counter\na 1\n",                                 /* no _total */
        "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"a\\q\"} 1\n", /* bad escape */
        "# HELP a_total x\n# TYPE a_total counter\na_total 1 1700000000\n",   /* timestamp */
    };
    parsed *p = malloc(sizeof *p);
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(parse_exposition(bad[i], strlen(bad[i]), p) != 0, "accepted bad text %u", i);
    const char *good = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                       "h_sum 3\nh_count 2\n";
    ck_assert(parse_exposition(good, strlen(good), p) == 0);
    ck_assert_str_eq(type_of(p, "h"), "histogram");
    free(p);
}
END_TEST

static Suite *metrics_suite(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("registry");
    tcase_set_timeout(tc, 60); /* the concurrency test is slow under ASan */
    tcase_add_test(tc, test_parser_rejects_bad_text);
    tcase_add_test(tc, test_fresh_registry);
    tcase_add_test(tc, test_values_after_updates);
    tcase_add_test(tc, test_per_layer_experts);
    tcase_add_test(tc, test_escaping_and_utf8);
    tcase_add_test(tc, test_bounded_cardinality);
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_concurrent_updates);
    suite_add_tcase(s, tc);
    return s;
}

/* --dump [per-layer]: print a populated exposition (for promtool). */
static int dump(int per_layer) {
    capmoe_metrics_opts o = {.model_name = "mixtral \"tiny\"", .n_layers = 4, .n_experts = 4,
                             .per_layer_expert = per_layer, .policy = "drop", .min_tokens = 16,
                             .build_labels = k_build};
    capmoe_metrics *m = capmoe_metrics_new(&o);
    if (!m) return 1;
    capmoe_metrics_set_top_k(m, 2);
    capmoe_metrics_request(m, "/v1/completions", 200);
    capmoe_metrics_request(m, "/v1/chat/completions", 400);
    capmoe_metrics_request(m, "other", 404);
    capmoe_metrics_prompt_tokens(m, 10);
    capmoe_metrics_generated_tokens(m, 20);
    capmoe_metrics_time_to_first_token(m, 0.1);
    capmoe_metrics_inter_token_latency(m, 0.02);
    capmoe_metrics_e2e_latency(m, 0.5);
    capmoe_metrics_queue_time(m, 0.001);
    capmoe_metrics_set_requests(m, 1, 2);
    capmoe_metrics_set_kv_cache(m, 100, 4096, 1 << 20);
    capmoe_metrics_request_finished(m, "length", 10, 20);
    capmoe_forward_stats fs;
    capmoe_layer_stats ls[2];
    fake_step(&fs, ls);
    capmoe_metrics_batch(m, 4, &fs);
    size_t len;
    char *text = capmoe_metrics_render(m, &len);
    int rc = text && fwrite(text, 1, len, stdout) == len ? 0 : 1;
    free(text);
    capmoe_metrics_free(m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--dump") == 0)
        return dump(argc >= 3 && strcmp(argv[2], "per-layer") == 0);
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
