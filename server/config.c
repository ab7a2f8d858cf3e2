/* config.c - the option table of capmoe-server and the four ways to set it:
 * defaults, JSON file, CAPMOE_* environment variables and --flags. */
#include "capmoe/config.h"
#include "capmoe/cors.h"
#include "capmoe/json.h"
#include "capmoe/log.h"
#include "capmoe/quant.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the table ------------------------------------------------------------ */

typedef enum opt_type {
    OPT_STRING = 0,   /* char *, malloc'd */
    OPT_INT,          /* int */
    OPT_LLONG,        /* long long */
    OPT_DOUBLE,       /* double */
    OPT_BOOL,         /* int 0/1 */
    OPT_POLICY,       /* int capmoe_policy */
    OPT_GAMMA,        /* double capacity_factor + int capacity_auto */
    OPT_CHOICE,       /* int: index of the value in meta ("a|b|c") */
    OPT_REGIME        /* int regime_tokens + int regime_auto */
} opt_type;

/* Flags (the last column of the table). */
#define OPT_RESTART 0 /* a changed value needs a restart (a reload logs it and keeps the old) */
#define OPT_LIVE 1    /* a SIGHUP reload applies a new value at once; others need a restart */
#define OPT_SECRET 2  /* never written in logs (a reload logs "changed") */

typedef struct opt {
    const char *name;    /* snake_case: JSON key; flag = kebab-case; env = CAPMOE_UPPER */
    opt_type type;
    size_t off;          /* offset of the field in capmoe_config */
    double min, max;     /* numeric range (inclusive) */
    const char *def;     /* default, as the text a flag would carry */
    const char *meta;    /* value placeholder in --help */
    const char *help;
    int flags;           /* OPT_LIVE, OPT_SECRET */
} opt;

#define OFF(f) offsetof(capmoe_config, f)

static const opt k_opts[] = {
    {"model", OPT_STRING, OFF(model), 0, 0, "config/model", "DIR",
     "Hugging Face model directory (config.json, safetensors, tokenizer.json)",
     OPT_RESTART},
    {"model_name", OPT_STRING, OFF(model_name), 0, 0, "", "ID",
     "model id served in /v1/models and accepted in \"model\" (empty: basename of --model)",
     OPT_RESTART},
    {"chat_template", OPT_STRING, OFF(chat_template), 0, 0, "", "FILE|NAME",
     "chat template replacing the model's own: a Jinja file, or a built-in family (chatml, qwen2.5, "
     "qwen3, mistral, llama2, olmoe) (empty: the model's chat_template)",
     OPT_RESTART},
    {"host", OPT_STRING, OFF(host), 0, 0, "127.0.0.1", "ADDR",
     "address to listen on (IPv4 / IPv6 literal or host name)",
     OPT_RESTART},
    {"port", OPT_INT, OFF(port), 0, 65535, "8080", "N",
     "TCP port to listen on (0: any free port, logged at start)",
     OPT_RESTART},
    {"api_key", OPT_STRING, OFF(api_key), 0, 0, "", "KEY",
     "require \"Authorization: Bearer KEY\" on /v1/..., /tokenize, /detokenize (empty: off)",
     OPT_LIVE | OPT_SECRET},
    {"policy", OPT_POLICY, OFF(policy), 0, 0, "none", "P",
     "dispatch policy: none, drop, reroute, expanded, rank_drop, piggyback",
     OPT_LIVE},
    {"capacity_factor", OPT_GAMMA, OFF(capacity_factor), 1e-6, 1e6, "1.0", "G|auto",
     "capacity factor gamma (> 0), or auto (smallest grid gamma within the drop budget)",
     OPT_LIVE},
    {"ep_ranks", OPT_INT, OFF(ep_ranks), 1, 64, "1", "R",
     "expert-parallel ranks (worker threads); sequence i lives on rank i mod R",
     OPT_RESTART},
    {"ep", OPT_STRING, OFF(ep), 0, 0, "threads", "threads|mpi",
     "where expert-parallel ranks run: threads of this process (--ep-ranks), or the MPI "
     "processes of `mpirun -np R` (rank 0 serves HTTP; experts and sequences spread over all)",
     OPT_RESTART},
    {"ep_step_timeout_s", OPT_DOUBLE, OFF(ep_step_timeout_s), 0.1, 86400, "60", "S",
     "--ep mpi: a scheduler step that takes longer is a fault (a rank died or hangs): open "
     "requests get 503 and the job stops",
     OPT_RESTART},
    {"renormalize", OPT_BOOL, OFF(renormalize), 0, 1, "false", "BOOL",
     "rescale each token's kept expert weights to sum to 1 after a limited dispatch",
     OPT_LIVE},
    {"min_tokens", OPT_INT, OFF(min_tokens), 0, 1e9, "16", "N",
     "dispatches of fewer tokens are never capacity-limited (0: always limit)",
     OPT_LIVE},
    {"drop_budget", OPT_DOUBLE, OFF(drop_budget), 0, 1, "0.01", "B",
     "dropped routing mass allowed per dispatch under capacity_factor auto",
     OPT_LIVE},
    {"piggyback_k0", OPT_INT, OFF(piggyback_k0), 0, 64, "0", "N",
     "policy piggyback: experts of its own each token keeps (0: max(1, k/2))",
     OPT_LIVE},
    {"decode_policy", OPT_CHOICE, OFF(decode_policy), 0, 0, "off",
     "off|none|drop|reroute|expanded|rank_drop|piggyback",
     "policy of dispatches of fewer than regime_tokens tokens (off: policy everywhere)",
     OPT_LIVE},
    {"regime_tokens", OPT_REGIME, OFF(regime_tokens), 0, 1 << 30, "auto", "N|auto",
     "dispatches below this many tokens are memory-bound and use decode_policy (auto: the "
     "crossover measured when the model loads)",
     OPT_LIVE},
    {"max_batch_tokens", OPT_INT, OFF(max_batch_tokens), 1, 1 << 20, "512", "N",
     "token budget of one scheduler step (decode tokens + prompt chunks)",
     OPT_RESTART},
    {"max_running", OPT_INT, OFF(max_running), 1, 4096, "16", "N",
     "sequences decoded together (a request with n choices uses n)",
     OPT_RESTART},
    {"max_queue", OPT_INT, OFF(max_queue), 1, 1e6, "256", "N",
     "requests waiting for a slot; more are refused with 429 and Retry-After",
     OPT_RESTART},
    {"context", OPT_INT, OFF(context), 0, 1 << 24, "0", "N",
     "tokens per sequence, prompt + completion (0: the model's max_position_embeddings)",
     OPT_RESTART},
    {"max_body_bytes", OPT_LLONG, OFF(max_body_bytes), 1024, 1073741824.0, "1048576", "N",
     "largest request body accepted (413 above, decided from Content-Length when sent)",
     OPT_RESTART},
    {"grace_period_s", OPT_DOUBLE, OFF(grace_period_s), 0, 86400, "30", "S",
     "on SIGTERM/SIGINT: seconds running requests get to finish before they are cancelled",
     OPT_RESTART},
    {"request_timeout_s", OPT_DOUBLE, OFF(request_timeout_s), 0, 1e7, "0", "S",
     "end a generation this long after its arrival (queue time included) with what it has, "
     "finish_reason length (0: no limit)",
     OPT_RESTART},
    {"connection_timeout_s", OPT_INT, OFF(connection_timeout_s), 0, 86400, "60", "S",
     "close an HTTP connection idle this long (0: never)",
     OPT_RESTART},
    {"header_timeout_s", OPT_INT, OFF(header_timeout_s), 0, 86400, "10", "S",
     "close a new HTTP connection that has not sent a whole request header this long "
     "after connecting (0: connection_timeout_s applies)",
     OPT_RESTART},
    {"max_connections", OPT_INT, OFF(max_connections), 1, 65536, "512", "N",
     "concurrent HTTP connections (suspended streaming ones included)",
     OPT_RESTART},
    {"max_connections_per_ip", OPT_INT, OFF(max_connections_per_ip), 0, 65536, "0", "N",
     "concurrent HTTP connections from one client address (0: no per-address limit)",
     OPT_RESTART},
    {"metrics_per_layer_expert", OPT_BOOL, OFF(metrics_per_layer_expert), 0, 1, "false", "BOOL",
     "label expert-token counters by {layer,expert} (layers x experts series) instead of {expert}",
     OPT_RESTART},
    {"threads", OPT_INT, OFF(threads), 0, 64, "0", "N",
     "engine threads for matrix products and attention (0: one per CPU this process may use)",
     OPT_RESTART},
    {"weights", OPT_CHOICE, OFF(weights), 0, 0, "bf16", "bf16|q8|q4",
     "expert weights: bf16 keeps the checkpoint's dtype; q8 (int8 blocks of 32 with a scale) or "
     "q4 (4-bit blocks of 32 with a scale and a minimum) quantizes the experts at load",
     OPT_RESTART},
    {"quantize", OPT_CHOICE, OFF(quantize), 0, 0, "experts", "experts|all",
     "what weights q8|q4 quantizes: the routed experts (the first MoE layer routes exactly as the "
     "checkpoint) or all: attention, shared and dense MLPs and lm_head too (faster decode, "
     "larger quality cost; the router stays exact)",
     OPT_RESTART},
    {"compute", OPT_CHOICE, OFF(compute), 0, 0, "f32", "f32|bf16",
     "precision of the experts' prefill-sized products: f32 (exact, the default) or bf16 "
     "(BF16 operands through oneDNN, AMX / AVX512-BF16, float32 accumulation)",
     OPT_RESTART},
    {"kv_dtype", OPT_CHOICE, OFF(kv_dtype), 0, 0, "f32", "f32|bf16",
     "element type of the KV cache: f32 (exact, the default) or bf16 (half the memory; not for "
     "latent attention)",
     OPT_RESTART},
    {"log_level", OPT_CHOICE, OFF(log_level), 0, 0, "info", CAPMOE_LOG_LEVELS,
     "least severe log records written (the access log is at info)", OPT_LIVE},
    {"log_format", OPT_CHOICE, OFF(log_format), 0, 0, "text", CAPMOE_LOG_FORMATS,
     "log records as text lines (timestamp level message key=value) or JSON objects",
     OPT_RESTART},
    {"access_log", OPT_BOOL, OFF(access_log), 0, 1, "true", "BOOL",
     "one info record per HTTP request (method, path, status, bytes, duration, request id, "
     "tokens, finish reason, policy and gamma)",
     OPT_LIVE},
    {"tls_cert", OPT_STRING, OFF(tls_cert), 0, 0, "", "FILE",
     "PEM certificate (chain) for HTTPS; with tls_key (empty: plain HTTP)",
     OPT_RESTART},
    {"tls_key", OPT_STRING, OFF(tls_key), 0, 0, "", "FILE",
     "PEM private key of tls_cert (unencrypted)",
     OPT_RESTART},
    {"cors_origins", OPT_STRING, OFF(cors_origins), 0, 0, "", "LIST",
     "comma-separated origins (scheme://host[:port]) whose browser pages may call the API, "
     "or * for any (empty: no CORS headers)",
     OPT_LIVE},
};
#define N_OPTS (sizeof k_opts / sizeof k_opts[0])

static const opt *find_opt(const char *name) {
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(k_opts[i].name, name) == 0) return &k_opts[i];
    return NULL;
}

static void *field(capmoe_config *cfg, const opt *o) { return (char *)cfg + o->off; }
static const void *cfield(const capmoe_config *cfg, const opt *o) {
    return (const char *)cfg + o->off;
}

/* ---- value parsing ------------------------------------------------------- */

static int parse_bool(const char *v, int *out) {
    static const char *yes[] = {"true", "1", "yes", "on"};
    static const char *no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(v, no[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

static int parse_double(const char *v, double *out) {
    char *end;
    errno = 0;
    while (isspace((unsigned char)*v)) v++;
    if (!*v) return -1;
    double d = strtod(v, &end);
    while (isspace((unsigned char)*end)) end++;
    if (*end || errno == ERANGE || !isfinite(d)) return -1;
    *out = d;
    return 0;
}

static int parse_integer(const char *v, long long *out) {
    char *end;
    errno = 0;
    while (isspace((unsigned char)*v)) v++;
    if (!*v) return -1;
    long long x = strtoll(v, &end, 10);
    while (isspace((unsigned char)*end)) end++;
    if (*end || errno == ERANGE) return -1;
    *out = x;
    return 0;
}

static void fmt_num(char *buf, size_t n, double d) {
    if (d == floor(d) && fabs(d) < 1e15) snprintf(buf, n, "%.0f", d);
    else snprintf(buf, n, "%g", d);
}

/* Index of value among the '|'-separated choices, -1 if absent. */
static int choice_index(const char *choices, const char *value) {
    size_t vl = strlen(value);
    int i = 0;
    for (const char *p = choices;; i++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, value, n) == 0) return i;
        if (!bar) return -1;
        p = bar + 1;
    }
}

/* The choice at index i, into out. */
static const char *choice_name(const char *choices, int i, char *out, size_t n) {
    const char *p = choices;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, '|');
        if (p) p++;
    }
    if (!p) p = "?";
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    snprintf(out, n, "%.*s", (int)len, p);
    return out;
}

int capmoe_config_set(capmoe_config *cfg, const char *name, const char *value,
                      const char *what, capmoe_error *err) {
    const opt *o = find_opt(name);
    if (!o) return capmoe_set_error(err, "%s: unknown option '%s'", what, name);
    if (!value) return capmoe_set_error(err, "%s: missing value", what);
    void *f = field(cfg, o);
    char lo[32], hi[32];
    fmt_num(lo, sizeof lo, o->min);
    fmt_num(hi, sizeof hi, o->max);
    switch (o->type) {
    case OPT_STRING: {
        char *s = strdup(value);
        if (!s) return capmoe_set_error(err, "%s: out of memory", what);
        free(*(char **)f);
        *(char **)f = s;
        return 0;
    }
    case OPT_INT:
    case OPT_LLONG: {
        long long x;
        if (parse_integer(value, &x) != 0)
            return capmoe_set_error(err, "%s: '%s' is not an integer", what, value);
        if ((double)x < o->min || (double)x > o->max)
            return capmoe_set_error(err, "%s: %lld is out of range %s..%s", what, x, lo, hi);
        if (o->type == OPT_INT) *(int *)f = (int)x;
        else *(long long *)f = x;
        return 0;
    }
    case OPT_DOUBLE: {
        double d;
        if (parse_double(value, &d) != 0)
            return capmoe_set_error(err, "%s: '%s' is not a finite number", what, value);
        if (d < o->min || d > o->max)
            return capmoe_set_error(err, "%s: %s is out of range %s..%s", what, value, lo, hi);
        *(double *)f = d;
        return 0;
    }
    case OPT_BOOL: {
        int b;
        if (parse_bool(value, &b) != 0)
            return capmoe_set_error(err, "%s: '%s' is not a boolean (true/false)", what, value);
        *(int *)f = b;
        return 0;
    }
    case OPT_POLICY: {
        int p = capmoe_policy_parse(value);
        if (p < 0)
            return capmoe_set_error(
                err, "%s: unknown policy '%s' (none, drop, reroute, expanded, rank_drop, piggyback)", what,
                value);
        *(int *)f = p;
        return 0;
    }
    case OPT_GAMMA: {
        if (strcmp(value, "auto") == 0) {
            cfg->capacity_auto = 1;
            return 0;
        }
        double d;
        if (parse_double(value, &d) != 0)
            return capmoe_set_error(err, "%s: '%s' is neither a number nor \"auto\"", what, value);
        if (d < o->min || d > o->max)
            return capmoe_set_error(err, "%s: %s is out of range (> 0, at most %s)", what, value,
                                    hi);
        cfg->capacity_factor = d;
        cfg->capacity_auto = 0;
        return 0;
    }
    case OPT_REGIME: {
        if (strcmp(value, "auto") == 0) {
            cfg->regime_auto = 1;
            return 0;
        }
        long long v;
        char *end;
        errno = 0;
        v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < o->min || v > o->max)
            return capmoe_set_error(err, "%s: '%s' is neither an integer in %s..%s nor \"auto\"",
                                    what, value, lo, hi);
        cfg->regime_tokens = (int)v;
        cfg->regime_auto = 0;
        return 0;
    }
    case OPT_CHOICE: {
        int i = choice_index(o->meta, value);
        if (i < 0) {
            char list[128];
            snprintf(list, sizeof list, "%s", o->meta);
            for (char *p = list; *p; p++)
                if (*p == '|') *p = ',';
            return capmoe_set_error(err, "%s: unknown value '%s' (%s)", what, value, list);
        }
        *(int *)f = i;
        return 0;
    }
    }
    return capmoe_set_error(err, "%s: internal error (option type)", what);
}

void capmoe_config_defaults(capmoe_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_OPTS; i++) {
        capmoe_error e;
        /* The table's defaults are valid by construction (check_config tests it). */
        if (capmoe_config_set(cfg, k_opts[i].name, k_opts[i].def, "default", &e) != 0) abort();
    }
}

void capmoe_config_free(capmoe_config *cfg) {
    if (!cfg) return;
    for (size_t i = 0; i < N_OPTS; i++) {
        if (k_opts[i].type != OPT_STRING) continue;
        char **p = (char **)field(cfg, &k_opts[i]);
        free(*p);
        *p = NULL;
    }
    free(cfg->config_file);
    cfg->config_file = NULL;
}

/* ---- JSON file ------------------------------------------------------------ */

int capmoe_config_apply_json(capmoe_config *cfg, const char *json, size_t len, const char *what,
                             capmoe_error *err) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (root) { /* nothing but white space may follow the object */
        for (const char *p = end; p && p < json + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                cJSON_Delete(root);
                root = NULL;
                end = p;
                break;
            }
    }
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return capmoe_set_error(err, "%s: invalid JSON near byte %zu", what, at);
    }
    int rc = 0;
    char where[256];
    if (capmoe_json_find_nul(json, len, where, sizeof where)) {
        rc = capmoe_set_error(err, "%s: %s: a string holds a NUL character (\\u0000)", what,
                              where);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = capmoe_set_error(err, "%s: the top level must be a JSON object", what);
        goto out;
    }
    for (cJSON *it = root->child; it; it = it->next) {
        const opt *o = it->string ? find_opt(it->string) : NULL;
        char src[512];
        snprintf(src, sizeof src, "%s: \"%s\"", what, it->string ? it->string : "?");
        if (!o) {
            rc = capmoe_set_error(err, "%s: unknown option (see capmoe-server --help)", src);
            goto out;
        }
        char buf[64];
        const char *val = NULL;
        switch (o->type) {
        case OPT_STRING:
        case OPT_POLICY:
        case OPT_CHOICE:
            if (!cJSON_IsString(it)) {
                rc = capmoe_set_error(err, "%s: must be a string", src);
                goto out;
            }
            val = it->valuestring;
            break;
        case OPT_INT:
        case OPT_LLONG:
        case OPT_DOUBLE:
            if (!cJSON_IsNumber(it)) {
                rc = capmoe_set_error(err, "%s: must be a number", src);
                goto out;
            }
            snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
            val = buf;
            break;
        case OPT_BOOL:
            if (!cJSON_IsBool(it)) {
                rc = capmoe_set_error(err, "%s: must be true or false", src);
                goto out;
            }
            val = cJSON_IsTrue(it) ? "true" : "false";
            break;
        case OPT_REGIME:
        case OPT_GAMMA:
            if (cJSON_IsNumber(it)) {
                snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
                val = buf;
            } else if (cJSON_IsString(it) && strcmp(it->valuestring, "auto") == 0) {
                val = "auto";
            } else {
                rc = capmoe_set_error(err, "%s: must be a number or \"auto\"", src);
                goto out;
            }
            break;
        }
        if (capmoe_config_set(cfg, o->name, val, src, err) != 0) {
            rc = -1;
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    return rc;
}

char *capmoe_config_to_json(const capmoe_config *cfg) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *op = &k_opts[i];
        const void *f = cfield(cfg, op);
        switch (op->type) {
        case OPT_STRING: cJSON_AddStringToObject(o, op->name, *(char *const *)f ? *(char *const *)f : ""); break;
        case OPT_INT: cJSON_AddNumberToObject(o, op->name, *(const int *)f); break;
        case OPT_LLONG: cJSON_AddNumberToObject(o, op->name, (double)*(const long long *)f); break;
        case OPT_DOUBLE: cJSON_AddNumberToObject(o, op->name, *(const double *)f); break;
        case OPT_BOOL: cJSON_AddBoolToObject(o, op->name, *(const int *)f); break;
        case OPT_POLICY:
            cJSON_AddStringToObject(o, op->name, capmoe_policy_name((capmoe_policy) * (const int *)f));
            break;
        case OPT_GAMMA:
            if (cfg->capacity_auto) cJSON_AddStringToObject(o, op->name, "auto");
            else cJSON_AddNumberToObject(o, op->name, cfg->capacity_factor);
            break;
        case OPT_REGIME:
            if (cfg->regime_auto) cJSON_AddStringToObject(o, op->name, "auto");
            else cJSON_AddNumberToObject(o, op->name, cfg->regime_tokens);
            break;
        case OPT_CHOICE: {
            char v[64];
            cJSON_AddStringToObject(o, op->name, choice_name(op->meta, *(const int *)f, v, sizeof v));
            break;
        }
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* ---- reload: what differs, what is live ------------------------------------- */

/* The value of one option as text (strings as they are). */
static void opt_text(const capmoe_config *cfg, const opt *o, char *out, size_t n) {
    const void *f = cfield(cfg, o);
    switch (o->type) {
    case OPT_STRING: snprintf(out, n, "%s", *(char *const *)f ? *(char *const *)f : ""); break;
    case OPT_INT: snprintf(out, n, "%d", *(const int *)f); break;
    case OPT_BOOL: snprintf(out, n, "%s", *(const int *)f ? "true" : "false"); break;
    case OPT_LLONG: snprintf(out, n, "%lld", *(const long long *)f); break;
    case OPT_DOUBLE: snprintf(out, n, "%.17g", *(const double *)f); break;
    case OPT_POLICY: snprintf(out, n, "%s", capmoe_policy_name((capmoe_policy) * (const int *)f)); break;
    case OPT_GAMMA:
        if (cfg->capacity_auto) snprintf(out, n, "auto");
        else snprintf(out, n, "%.17g", cfg->capacity_factor);
        break;
    case OPT_REGIME:
        if (cfg->regime_auto) snprintf(out, n, "auto");
        else snprintf(out, n, "%d", cfg->regime_tokens);
        break;
    case OPT_CHOICE: choice_name(o->meta, *(const int *)f, out, n); break;
    }
}

/* The same, for logs: numbers in their short form, secrets hidden. */
static void opt_show(const capmoe_config *cfg, const opt *o, char *out, size_t n) {
    if (o->flags & OPT_SECRET) {
        const char *s = *(char *const *)cfield(cfg, o);
        snprintf(out, n, "%s", s && s[0] ? "(set)" : "(empty)");
        return;
    }
    if (o->type == OPT_DOUBLE || (o->type == OPT_GAMMA && !cfg->capacity_auto)) {
        double d = o->type == OPT_DOUBLE ? *(const double *)cfield(cfg, o) : cfg->capacity_factor;
        snprintf(out, n, "%g", d);
        return;
    }
    opt_text(cfg, o, out, n);
    if (o->type == OPT_STRING && !out[0]) snprintf(out, n, "\"\"");
}

int capmoe_config_diff(const capmoe_config *a, const capmoe_config *b, capmoe_config_diff_fn fn,
                       void *user) {
    int n = 0;
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *o = &k_opts[i];
        char va[1024], vb[1024];
        opt_text(a, o, va, sizeof va);
        opt_text(b, o, vb, sizeof vb);
        if (strcmp(va, vb) == 0) continue;
        n++;
        if (!fn) continue;
        opt_show(a, o, va, sizeof va);
        opt_show(b, o, vb, sizeof vb);
        fn(user, o->name, (o->flags & OPT_LIVE) != 0, va, vb);
    }
    return n;
}

int capmoe_config_is_live(const char *name) {
    const opt *o = find_opt(name);
    return o && (o->flags & OPT_LIVE);
}

int capmoe_config_copy_option(capmoe_config *dst, const capmoe_config *src, const char *name) {
    const opt *o = find_opt(name);
    if (!o) return -1;
    const void *from = cfield(src, o);
    void *to = field(dst, o);
    switch (o->type) {
    case OPT_STRING: {
        const char *s = *(char *const *)from;
        char *d = strdup(s ? s : "");
        if (!d) return -1;
        free(*(char **)to);
        *(char **)to = d;
        return 0;
    }
    case OPT_LLONG: *(long long *)to = *(const long long *)from; return 0;
    case OPT_DOUBLE: *(double *)to = *(const double *)from; return 0;
    case OPT_GAMMA:
        dst->capacity_factor = src->capacity_factor;
        dst->capacity_auto = src->capacity_auto;
        return 0;
    case OPT_REGIME:
        dst->regime_tokens = src->regime_tokens;
        dst->regime_auto = src->regime_auto;
        return 0;
    case OPT_INT:
    case OPT_BOOL:
    case OPT_POLICY:
    case OPT_CHOICE: *(int *)to = *(const int *)from; return 0;
    }
    return -1;
}

/* ---- environment and flags ------------------------------------------------ */

static const char *env_get(char *const *envp, const char *key) {
    if (!envp) return NULL;
    size_t n = strlen(key);
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, key, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

static void env_name(const char *name, char *out, size_t n) {
    size_t o = (size_t)snprintf(out, n, "CAPMOE_");
    for (const char *p = name; *p && o + 1 < n; p++) out[o++] = (char)toupper((unsigned char)*p);
    out[o] = '\0';
}

static void flag_name(const char *name, char *out, size_t n) {
    size_t o = (size_t)snprintf(out, n, "--");
    for (const char *p = name; *p && o + 1 < n; p++) out[o++] = *p == '_' ? '-' : *p;
    out[o] = '\0';
}

/* "--max-batch-tokens" -> "max_batch_tokens" (without the leading dashes). */
static void flag_to_name(const char *flag, size_t len, char *out, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < n; i++) out[o++] = flag[i] == '-' ? '_' : flag[i];
    out[o] = '\0';
}

int capmoe_config_check(const capmoe_config *cfg, capmoe_error *err) {
    if (!cfg->model || !cfg->model[0]) return capmoe_set_error(err, "model: must not be empty");
    if (!cfg->host || !cfg->host[0]) return capmoe_set_error(err, "host: must not be empty");
    if (cfg->max_batch_tokens < cfg->max_running)
        return capmoe_set_error(err,
                                "max_batch_tokens (%d) must be at least max_running (%d): every "
                                "running sequence decodes one token per step",
                                cfg->max_batch_tokens, cfg->max_running);
    if (cfg->api_key && strpbrk(cfg->api_key, " \t\r\n"))
        return capmoe_set_error(err, "api_key: must not contain white space");
    if (cfg->quantize == CAPMOE_QUANTIZE_ALL && cfg->weights == CAPMOE_WEIGHTS_STORED)
        return capmoe_set_error(err, "quantize: all needs weights q8 or q4 (with bf16 nothing is "
                                     "quantized)");
    if (!cfg->ep || (strcmp(cfg->ep, "threads") != 0 && strcmp(cfg->ep, "mpi") != 0))
        return capmoe_set_error(err, "ep: '%s' is neither threads nor mpi", cfg->ep ? cfg->ep : "");
    int cert = cfg->tls_cert && cfg->tls_cert[0], key = cfg->tls_key && cfg->tls_key[0];
    if (cert != key)
        return capmoe_set_error(err, "%s: HTTPS needs both tls_cert and tls_key",
                                cert ? "tls_key" : "tls_cert");
    capmoe_cors *cors = NULL;
    capmoe_error e;
    if (capmoe_cors_new(&cors, cfg->cors_origins, &e) != 0)
        return capmoe_set_error(err, "cors_origins: %s", e.msg);
    capmoe_cors_free(cors);
    return 0;
}

int capmoe_config_load(capmoe_config *cfg, int argc, char **argv, char *const *envp,
                       capmoe_config_action *action, capmoe_error *err) {
    capmoe_config_defaults(cfg);
    *action = CAPMOE_CONFIG_RUN;
    /* Pass 1: actions and --config. */
    const char *file = env_get(envp, "CAPMOE_CONFIG");
    const char *file_src = "CAPMOE_CONFIG";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *action = CAPMOE_CONFIG_HELP;
            return 0;
        }
        if (strcmp(a, "--version") == 0) *action = CAPMOE_CONFIG_VERSION;
        else if (strcmp(a, "--healthcheck") == 0) *action = CAPMOE_CONFIG_HEALTHCHECK;
        else if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) return capmoe_set_error(err, "--config: missing FILE");
            file = argv[++i];
            file_src = "--config";
        } else if (strncmp(a, "--config=", 9) == 0) {
            file = a + 9;
            file_src = "--config";
        }
    }
    if (file) {
        if (!*file) return capmoe_set_error(err, "%s: empty file name", file_src);
        capmoe_error e;
        size_t len;
        char *text = capmoe_read_file(file, &len, &e);
        if (!text) return capmoe_set_error(err, "%s: %s", file_src, e.msg);
        int rc = capmoe_config_apply_json(cfg, text, len, file, err);
        free(text);
        if (rc != 0) return -1;
        cfg->config_file = strdup(file);
    }
    /* Environment. */
    for (size_t i = 0; i < N_OPTS; i++) {
        char key[96];
        env_name(k_opts[i].name, key, sizeof key);
        const char *v = env_get(envp, key);
        if (v && capmoe_config_set(cfg, k_opts[i].name, v, key, err) != 0) return -1;
    }
    /* Flags. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--version") == 0 || strcmp(a, "--healthcheck") == 0) continue;
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0) continue;
        if (strncmp(a, "--", 2) != 0 || !a[2])
            return capmoe_set_error(err, "unexpected argument '%s' (see --help)", a);
        const char *body = a + 2;
        const char *eq = strchr(body, '=');
        size_t nlen = eq ? (size_t)(eq - body) : strlen(body);
        char name[96];
        if (nlen >= sizeof name) return capmoe_set_error(err, "unknown option '%s' (see --help)", a);
        flag_to_name(body, nlen, name, sizeof name);
        char flag[112];
        snprintf(flag, sizeof flag, "--%.*s", (int)nlen, body);
        const opt *o = find_opt(name);
        if (!o && strncmp(name, "no_", 3) == 0 && !eq) {
            const opt *b = find_opt(name + 3);
            if (b && b->type == OPT_BOOL) {
                if (capmoe_config_set(cfg, b->name, "false", flag, err) != 0) return -1;
                continue;
            }
        }
        if (!o) return capmoe_set_error(err, "unknown option '%s' (see --help)", flag);
        const char *val;
        if (eq) val = eq + 1;
        else if (o->type == OPT_BOOL) val = "true";
        else if (i + 1 < argc) val = argv[++i];
        else return capmoe_set_error(err, "%s: missing value (%s)", flag, o->meta);
        if (capmoe_config_set(cfg, o->name, val, flag, err) != 0) return -1;
    }
    return capmoe_config_check(cfg, err);
}

/* ---- help ----------------------------------------------------------------- */

void capmoe_config_help(FILE *out, const char *prog) {
    fprintf(out,
            "Usage: %s [--config FILE] [options]\n"
            "Serves a Mixture-of-Experts model over HTTP (OpenAI-compatible API, Prometheus\n"
            "metrics) with continuous batching and capacity-aware expert dispatch.\n\n"
            "Every option can be set in the JSON file (key as shown without dashes, e.g.\n"
            "\"max_batch_tokens\"), by the environment variable shown, or by the flag;\n"
            "flags override variables, which override the file. Booleans take\n"
            "--flag, --flag=true|false or --no-flag.\n\n"
            "SIGHUP re-reads the file (and the environment and flags, which still win) and\n"
            "applies the options marked \"applied on SIGHUP\" at once, running requests\n"
            "included; a changed option without the mark is logged and needs a restart.\n\n"
            "Options:\n",
            prog);
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *o = &k_opts[i];
        char flag[64], env[80], left[96];
        flag_name(o->name, flag, sizeof flag);
        env_name(o->name, env, sizeof env);
        if (o->type == OPT_BOOL) snprintf(left, sizeof left, "%s[=BOOL]", flag);
        else snprintf(left, sizeof left, "%s %s", flag, o->meta);
        const char *def = o->def[0] ? o->def : "\"\"";
        fprintf(out, "  %-32s %s\n  %-32s (default: %s; env %s%s)\n", left, o->help, "", def, env,
                (o->flags & OPT_LIVE) ? "; applied on SIGHUP" : "");
    }
    fprintf(out,
            "  %-32s %s\n  %-32s %s\n  %-32s %s\n  %-32s %s\n",
            "--config FILE", "JSON file of options (also CAPMOE_CONFIG); config/capmoe.json ships",
            "--healthcheck", "GET http://HOST:PORT/health; exit 0 on 200, else 1 (for Docker)",
            "--version", "print the version and exit", "--help", "this text");
}

/* ---- derived values ------------------------------------------------------- */

void capmoe_config_dispatch(const capmoe_config *cfg, capmoe_dispatch_cfg *out) {
    capmoe_dispatch_cfg_default(out);
    out->policy = (capmoe_policy)cfg->policy;
    out->capacity_factor = cfg->capacity_factor;
    out->auto_gamma = cfg->capacity_auto;
    out->ep_ranks = cfg->ep_ranks;
    out->renormalize = cfg->renormalize;
    out->min_tokens = cfg->min_tokens;
    out->drop_budget = cfg->drop_budget;
    out->piggyback_k0 = cfg->piggyback_k0;
    out->decode_policy = cfg->decode_policy - 1; /* 0 = off -> -1 */
    out->regime_tokens = cfg->regime_tokens;
    out->regime_auto = cfg->regime_auto;
}

char *capmoe_config_model_id(const capmoe_config *cfg) {
    if (cfg->model_name && cfg->model_name[0]) return strdup(cfg->model_name);
    const char *m = cfg->model ? cfg->model : "";
    size_t end = strlen(m);
    while (end > 1 && m[end - 1] == '/') end--;
    size_t start = end;
    while (start > 0 && m[start - 1] != '/') start--;
    if (start == end) return strdup(m[0] ? m : "model");
    return strndup(m + start, end - start);
}

/* ---- the configuration against the model -------------------------------------- */

int capmoe_config_check_model(const capmoe_config *cfg, const capmoe_hfconfig *hc,
                              capmoe_error *err) {
    if (hc->n_moe_layers > 0) {
        int E = hc->n_experts, R = cfg->ep_ranks;
        if (R > E || E % R != 0) {
            char divs[256] = "";
            size_t o = 0;
            for (int d = 1; d <= E && d <= 64 && o + 8 < sizeof divs; d++)
                if (E % d == 0) o += (size_t)snprintf(divs + o, sizeof divs - o, "%s%d", o ? ", " : "", d);
            return capmoe_set_error(err,
                                    "ep_ranks: R=%d ranks cannot split the model's E=%d experts "
                                    "evenly (E must be divisible by R; possible: %s)",
                                    R, E, divs);
        }
        capmoe_dispatch_cfg d;
        capmoe_config_dispatch(cfg, &d);
        capmoe_error e;
        if (capmoe_dispatch_cfg_check(&d, E, &e) != 0) return capmoe_set_error(err, "%s", e.msg);
        if ((d.policy == CAPMOE_POLICY_PIGGYBACK || d.decode_policy == CAPMOE_POLICY_PIGGYBACK) &&
            capmoe_dispatch_k0(&d, hc->top_k) > hc->top_k)
            return capmoe_set_error(err,
                                    "piggyback_k0: %d exceeds the model's %d experts per token",
                                    d.piggyback_k0, hc->top_k);
    }
    int maxpos = hc->max_position_embeddings;
    if (cfg->context > 0 && maxpos > 0 && cfg->context > maxpos)
        return capmoe_set_error(err,
                                "context: %d exceeds the model's max_position_embeddings (%d)",
                                cfg->context, maxpos);
    if (cfg->context == 0 && maxpos > 0 && maxpos < 2)
        return capmoe_set_error(err, "context: the model's max_position_embeddings (%d) is too small",
                                maxpos);
    return 0;
}
