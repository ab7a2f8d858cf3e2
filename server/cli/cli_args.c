/* cli_args.c - option parsing shared by the capmoe subcommands. */
#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cli.h"
#include "capmoe/par.h"

int capmoe_cli_parse(capmoe_cli_args *a, int argc, char **argv, const char *const *switches,
                     capmoe_error *err) {
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return capmoe_set_error(err, "unexpected argument '%s' (options start with --)", arg);
        if (a->n >= 128) return capmoe_set_error(err, "too many options");
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        if (eq) {
            size_t l = (size_t)(eq - name);
            if (l >= sizeof a->namebuf[0]) return capmoe_set_error(err, "option '%s' too long", arg);
            memcpy(a->namebuf[a->n], name, l);
            a->namebuf[a->n][l] = '\0';
            a->name[a->n] = a->namebuf[a->n];
            a->value[a->n] = eq + 1;
            a->n++;
            continue;
        }
        int is_switch = 0;
        for (int s = 0; switches && switches[s]; s++)
            if (strcmp(switches[s], name) == 0) is_switch = 1;
        a->name[a->n] = name;
        if (is_switch) {
            a->value[a->n] = NULL;
        } else {
            if (i + 1 >= argc) return capmoe_set_error(err, "option --%s needs a value", name);
            a->value[a->n] = argv[++i];
        }
        a->n++;
    }
    return 0;
}

const char *capmoe_cli_get(capmoe_cli_args *a, const char *name) {
    const char *v = NULL;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->name[i], name) == 0) {
            a->used[i] = 1;
            v = a->value[i] ? a->value[i] : "";
        }
    return v;
}

int capmoe_cli_has(capmoe_cli_args *a, const char *name) { return capmoe_cli_get(a, name) != NULL; }

int capmoe_cli_int(capmoe_cli_args *a, const char *name, long lo, long hi, long def, long *out,
                   capmoe_error *err) {
    const char *v = capmoe_cli_get(a, name);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return capmoe_set_error(err, "--%s: '%s' is not an integer", name, v);
    if (x < lo || x > hi)
        return capmoe_set_error(err, "--%s: %ld is out of range [%ld, %ld]", name, x, lo, hi);
    *out = x;
    return 0;
}

int capmoe_cli_double(capmoe_cli_args *a, const char *name, double lo, double hi, double def,
                      double *out, capmoe_error *err) {
    const char *v = capmoe_cli_get(a, name);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end != '\0' || !isfinite(x))
        return capmoe_set_error(err, "--%s: '%s' is not a number", name, v);
    if (x < lo || x > hi)
        return capmoe_set_error(err, "--%s: %g is out of range [%g, %g]", name, x, lo, hi);
    *out = x;
    return 0;
}

int capmoe_cli_check_unused(const capmoe_cli_args *a, capmoe_error *err) {
    for (int i = 0; i < a->n; i++)
        if (!a->used[i]) return capmoe_set_error(err, "unknown option --%s", a->name[i]);
    return 0;
}

int capmoe_cli_parse_ids(const char *s, int32_t **ids, int *n, capmoe_error *err) {
    *ids = NULL;
    *n = 0;
    size_t cap = 16, cnt = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return capmoe_set_error(err, "out of memory");
    const char *p = s;
    if (*p == '\0') {
        free(v);
        return capmoe_set_error(err, "--ids: empty list");
    }
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(v);
            return capmoe_set_error(err, "--ids: '%s' is not a comma-separated list of token ids",
                                    s);
        }
        if (cnt == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                free(v);
                return capmoe_set_error(err, "out of memory");
            }
            v = nv;
        }
        v[cnt++] = (int32_t)x;
        p = end;
        if (*p == ',') {
            p++;
            if (*p == '\0') {
                free(v);
                return capmoe_set_error(err, "--ids: trailing comma in '%s'", s);
            }
        }
    }
    *ids = v;
    *n = (int)cnt;
    return 0;
}

/* The value of --NAME, else of the environment variable env (NULL when
 * neither is set); where names the source for error messages. */
static const char *flag_or_env(capmoe_cli_args *a, const char *name, const char *env, char *where,
                               size_t n) {
    const char *v = capmoe_cli_get(a, name);
    snprintf(where, n, v ? "--%s" : "%s", v ? name : env);
    return v ? v : getenv(env);
}

int capmoe_cli_weights(capmoe_cli_args *a, capmoe_weights *w, capmoe_error *err) {
    char what[32];
    const char *v = flag_or_env(a, "weights", "CAPMOE_WEIGHTS", what, sizeof what);
    *w = CAPMOE_WEIGHTS_STORED;
    if (v && capmoe_weights_parse(v, w) != 0)
        return capmoe_set_error(err, "%s: '%s' is not one of bf16, q8, q4", what, v);
    return 0;
}

static int cli_quantize(capmoe_cli_args *a, capmoe_weights w, capmoe_quant_scope *q,
                        capmoe_error *err) {
    char what[32];
    const char *v = flag_or_env(a, "quantize", "CAPMOE_QUANTIZE", what, sizeof what);
    *q = CAPMOE_QUANTIZE_EXPERTS;
    if (v && capmoe_quant_scope_parse(v, q) != 0)
        return capmoe_set_error(err, "%s: '%s' is neither experts nor all", what, v);
    if (*q == CAPMOE_QUANTIZE_ALL && w == CAPMOE_WEIGHTS_STORED)
        return capmoe_set_error(err, "%s all: needs --weights q8 or q4 (nothing is quantized "
                                     "with bf16)", what);
    return 0;
}

int capmoe_cli_dispatch(capmoe_cli_args *a, capmoe_dispatch_cfg *cfg, capmoe_error *err) {
    capmoe_dispatch_cfg_default(cfg);
    const char *pol = capmoe_cli_get(a, "policy");
    if (pol) {
        int p = capmoe_policy_parse(pol);
        if (p < 0)
            return capmoe_set_error(
                err,
                "--policy: unknown policy '%s' (none, drop, reroute, expanded, rank_drop, "
                "piggyback)",
                pol);
        cfg->policy = (capmoe_policy)p;
    }
    const char *dp = capmoe_cli_get(a, "decode-policy");
    const char *rt = capmoe_cli_get(a, "regime-tokens");
    if (dp) {
        int p = capmoe_policy_parse(dp);
        if (p < 0)
            return capmoe_set_error(err,
                                    "--decode-policy: unknown policy '%s' (none, drop, reroute, "
                                    "expanded, rank_drop, piggyback)",
                                    dp);
        if (!rt)
            return capmoe_set_error(err, "--decode-policy needs --regime-tokens N|auto (the "
                                         "dispatches of fewer than N tokens use it)");
        cfg->decode_policy = p;
    }
    if (rt) {
        long n;
        if (strcmp(rt, "auto") == 0) {
            cfg->regime_auto = 1;
        } else if (capmoe_cli_int(a, "regime-tokens", 0, 1L << 30, 0, &n, err) != 0) {
            return capmoe_set_error(err, "--regime-tokens: '%s' is not an integer >= 0 or 'auto'",
                                    rt);
        } else {
            cfg->regime_tokens = (int)n;
        }
    }
    long k0;
    if (capmoe_cli_int(a, "piggyback-k0", 1, CAPMOE_TOPK_MAX, 0, &k0, err)) return -1;
    cfg->piggyback_k0 = (int)k0;
    const char *cf = capmoe_cli_get(a, "capacity-factor");
    if (cf) {
        if (strcmp(cf, "auto") == 0) {
            cfg->auto_gamma = 1;
        } else if (capmoe_cli_double(a, "capacity-factor", 1e-6, 1e6, 1.0, &cfg->capacity_factor,
                                     err) != 0) {
            return capmoe_set_error(err,
                                    "--capacity-factor: '%s' is not a positive number or 'auto'",
                                    cf);
        }
    }
    long r, mt;
    if (capmoe_cli_int(a, "ep-ranks", 1, 64, 1, &r, err) ||
        capmoe_cli_int(a, "min-tokens", 0, 1L << 30, cfg->min_tokens, &mt, err) ||
        capmoe_cli_double(a, "drop-budget", 0.0, 1.0, cfg->drop_budget, &cfg->drop_budget, err))
        return -1;
    cfg->ep_ranks = (int)r;
    cfg->min_tokens = (int)mt;
    const char *ep = capmoe_cli_get(a, "ep"); /* started by capmoe_cli_ep */
    if (ep && strcmp(ep, "threads") != 0 && strcmp(ep, "mpi") != 0)
        return capmoe_set_error(err, "--ep: '%s' is neither threads nor mpi", ep);
    if (capmoe_cli_has(a, "renormalize")) cfg->renormalize = 1;
    return 0;
}

int capmoe_cli_list_d(const char *name, const char *s, double lo, double hi, double *out, int *n,
                      int max, capmoe_error *err) {
    *n = 0;
    const char *p = s;
    if (!*p) return 0;
    while (*p) {
        char *end;
        double x = strtod(p, &end);
        if (end == p || (*end != ',' && *end != '\0') || !isfinite(x))
            return capmoe_set_error(err, "--%s: '%s' is not a comma-separated list of numbers",
                                    name, s);
        if (x < lo || x > hi)
            return capmoe_set_error(err, "--%s: %g is out of range [%g, %g]", name, x, lo, hi);
        if (*n == max) return capmoe_set_error(err, "--%s: at most %d values", name, max);
        out[(*n)++] = x;
        p = end;
        if (*p == ',') {
            p++;
            if (!*p) return capmoe_set_error(err, "--%s: trailing comma in '%s'", name, s);
        }
    }
    return 0;
}

int capmoe_cli_list_i(const char *name, const char *s, long lo, long hi, int *out, int *n,
                      int max, capmoe_error *err) {
    double v[256];
    if (max > 256) max = 256;
    if (capmoe_cli_list_d(name, s, (double)lo, (double)hi, v, n, max, err)) return -1;
    for (int i = 0; i < *n; i++) {
        if (v[i] != floor(v[i]))
            return capmoe_set_error(err, "--%s: %g is not an integer", name, v[i]);
        out[i] = (int)v[i];
    }
    return 0;
}

int capmoe_cli_configs(const char *policies, const double *gammas, int n_gam,
                       capmoe_policy *pol, double *gamma, int *n, int max, capmoe_error *err) {
    *n = 0;
    if (max < 1) return capmoe_set_error(err, "--policies: no room");
    pol[0] = CAPMOE_POLICY_NONE;
    gamma[0] = 0;
    *n = 1;
    if (!*policies) return capmoe_set_error(err, "--policies: empty list");
    char buf[256];
    if (strlen(policies) >= sizeof buf) return capmoe_set_error(err, "--policies: list too long");
    strcpy(buf, policies);
    char seen[16] = {0};
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int p = capmoe_policy_parse(tok);
        if (p < 0 || p >= (int)sizeof seen)
            return capmoe_set_error(err, "--policies: unknown policy '%s' (none, drop, reroute, "
                                         "expanded, rank_drop, piggyback)", tok);
        if (seen[p]++ || p == CAPMOE_POLICY_NONE) continue;
        if (n_gam == 0)
            return capmoe_set_error(err, "--gammas: empty list, but policy %s needs one", tok);
        for (int g = 0; g < n_gam; g++) {
            if (*n == max) return capmoe_set_error(err, "--policies x --gammas: too many runs");
            pol[*n] = (capmoe_policy)p;
            gamma[*n] = gammas[g];
            (*n)++;
        }
    }
    return 0;
}

int capmoe_cli_regime(capmoe_model *m, capmoe_dispatch_cfg *cfg, capmoe_regime_probe *probe,
                      capmoe_error *err) {
    if (!cfg->regime_auto) return 0;
    capmoe_regime_probe local;
    capmoe_regime_probe *p = probe ? probe : &local;
    if (capmoe_model_regime_probe(m, 256, 3, p, err)) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        return capmoe_set_error(err, "--regime-tokens auto: %s (give a number instead)", why);
    }
    cfg->regime_tokens = p->crossover;
    return 0;
}

int capmoe_cli_engine(capmoe_cli_args *a, capmoe_model_opts *o, capmoe_error *err) {
    memset(o, 0, sizeof *o);
    long t;
    if (capmoe_cli_int(a, "threads", 0, CAPMOE_PAR_MAX_THREADS, 0, &t, err)) return -1;
    o->threads = (int)t;
    const char *c = capmoe_cli_get(a, "compute");
    if (!c) c = getenv("CAPMOE_COMPUTE");
    if (c) {
        int v = capmoe_compute_parse(c);
        if (v < 0) return capmoe_set_error(err, "--compute: '%s' is neither f32 nor bf16", c);
        o->compute = (capmoe_compute)v;
    }
    const char *kd = capmoe_cli_get(a, "kv-dtype");
    if (!kd) kd = getenv("CAPMOE_KV_DTYPE");
    if (kd) {
        int v = capmoe_compute_parse(kd); /* the same two names */
        if (v < 0) return capmoe_set_error(err, "--kv-dtype: '%s' is neither f32 nor bf16", kd);
        o->kv_dtype = (capmoe_kv_dtype)v;
    }
    if (capmoe_cli_int(a, "bf16-min-rows", 1, 1L << 20, 0, &t, err)) return -1;
    o->bf16_min_rows = (int)t;
    if (capmoe_cli_weights(a, &o->weights, err)) return -1;
    return cli_quantize(a, o->weights, &o->quantize, err);
}
