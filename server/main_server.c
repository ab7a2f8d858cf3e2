/* main_server.c - capmoe-server: configuration, wiring of http + api +
 * scheduler + metrics + logger, signals and the shutdown sequence.
 *
 * Start: options (file < env < flags) -> logger -> model directory and the
 * whole configuration checked against the model's config.json (a bad
 * ep_ranks, policy or context is refused here, before any socket) ->
 * metrics -> API + scheduler -> HTTP socket up (GET /health answers 503
 * while the scheduler thread loads the model) -> loop.
 * SIGHUP: re-read the configuration (the same file, environment and flags)
 * and apply the live options at once (server/config.c marks them); a change
 * to any other option is logged as needing a restart and not applied. An
 * invalid new configuration changes nothing.
 * SIGTERM / SIGINT: drain. The socket stays open: every new request gets 503
 * + Retry-After + Connection: close (so load balancers see the drain), running
 * generations go on for up to grace_period_s, then are cancelled; once no
 * generation and no HTTP request is left (or 2 s after the cancel), the HTTP
 * layer stops and the exit status is 0. A second signal cancels at once. A
 * model that fails to load exits 1.
 *
 * --ep mpi (under `mpirun -np R`): rank 0 runs all of the above; ranks > 0
 * load their share of the experts, take part in the start-up check, send
 * heartbeats and follow rank 0's steps until it stops them (they ignore
 * SIGTERM / SIGINT / SIGHUP, which mpirun forwards: rank 0 decides; a
 * reload reaches them with the dispatch settings of every step). When a rank
 * dies or hangs (a step fails: timeout, MPI error; or, on a SIGTERM that
 * mpirun sends when a rank died, a rank found silent), rank 0 answers every
 * open request 503 naming the rank, stops, and ends the job with MPI_Abort
 * (exit status 3). A configuration refused before the scheduler starts ends
 * the whole job too. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capmoe/access_log.h"
#include "capmoe/comm.h"
#include "capmoe/config.h"
#include "capmoe/cors.h"
#include "capmoe/engine.h"
#include "capmoe/hfconfig.h"
#include "capmoe/http.h"
#include "capmoe/log.h"
#include "capmoe/metrics.h"
#include "capmoe/openai.h"
#include "capmoe/sysinfo.h"
#include "capmoe/version.h"

extern char **environ;

typedef struct server {
    capmoe_config *cfg;        /* the live configuration (reload copies live options in) */
    int argc;                  /* for a reload */
    char **argv;
    capmoe_hfconfig hc;        /* the model's config.json */
    capmoe_log *log;
    capmoe_metrics *metrics;
    capmoe_cors *cors;         /* owned; replaced by a reload */
    capmoe_comm *comm;         /* --ep mpi; NULL otherwise */
    int fault;                 /* the expert-parallel group failed: end with MPI_Abort */
    int sched_started;         /* the scheduler runs (under MPI: the other ranks follow it) */
    int announced;             /* rank 0's own "experts loaded" record was written */
    capmoe_http *http;
    capmoe_api *api;
    int draining;      /* a signal arrived (or loading failed) */
    int cancelled;     /* the grace period is over */
    int stop_sent;
    int exit_code;
} server;

static void stop_http(server *s) {
    s->stop_sent = 1;
    capmoe_api_detach_http(s->api); /* no uv_async_send once the loop closes */
    capmoe_http_stop(s->http);
}

static void check_shutdown(server *s) {
    if (!s->draining || s->stop_sent) return;
    if (capmoe_api_busy(s->api) == 0 && capmoe_http_in_flight(s->http) == 0) stop_http(s);
}

static void flush_over(void *arg) { /* cancelled answers had 2 s to leave */
    server *s = arg;
    if (!s->stop_sent) {
        capmoe_log_warn(s->log, "closing %d unfinished connection(s)",
                        capmoe_http_in_flight(s->http));
        stop_http(s);
    }
}

static void grace_over(void *arg) {
    server *s = arg;
    if (s->cancelled) return;
    s->cancelled = 1;
    int busy = capmoe_api_busy(s->api);
    if (busy) capmoe_log_warn(s->log, "grace period over: cancelling %d request(s)", busy);
    capmoe_api_cancel_all(s->api);
    capmoe_http_set_timer(s->http, 2.0, flush_over, s);
    check_shutdown(s);
}

static void begin_drain(server *s, double grace) {
    s->draining = 1;
    capmoe_http_drain(s->http); /* the socket stays open: new requests get 503 */
    capmoe_api_drain(s->api);
    capmoe_http_set_timer(s->http, grace, grace_over, s);
    check_shutdown(s);
}

static void on_request(void *u, capmoe_http_req *req) {
    server *s = u;
    capmoe_api_on_request(s->api, req);
}

static void on_done(void *u, capmoe_http_req *req, int aborted) {
    server *s = u;
    capmoe_api_on_done(s->api, req, aborted);
    check_shutdown(s);
}

static void on_rejected(void *u, const char *path, int status) {
    server *s = u;
    capmoe_api_on_rejected(s->api, path, status);
}

static void on_access(void *u, capmoe_http_req *req) {
    server *s = u;
    if (s->cfg->access_log) capmoe_access_log(s->log, req);
}

/* --ep mpi: the process group failed. Everything open has been (or is now)
 * answered 503; once the answers are out the loop stops and main aborts the
 * job. */
static void enter_fault(server *s, const char *why) {
    if (s->fault) return;
    s->fault = 1;
    s->exit_code = 3;
    capmoe_log_error(s->log, "expert-parallel failure: %s; answering 503 and stopping", why);
    capmoe_api_fault(s->api, why);
    if (!s->draining) begin_drain(s, 0);
    capmoe_http_set_timer(s->http, 2.0, flush_over, s);
}

/* After a SIGTERM under mpirun: if it came because a rank died (mpirun
 * signals every process then), some rank has gone silent by now. */
static void signal_check(void *arg) {
    server *s = arg;
    char why[700];
    capmoe_comm_diagnose(s->comm, 0.25, why, sizeof why);
    if (why[0]) {
        enter_fault(s, why);
        return;
    }
    capmoe_log_info(s->log,
                    "SIGTERM: no new requests (503 while draining); waiting up to %g s for %d "
                    "running one(s)",
                    s->cfg->grace_period_s, capmoe_api_busy(s->api));
    begin_drain(s, s->cfg->grace_period_s);
}

static void on_wake(void *u) {
    server *s = u;
    capmoe_api_process(s->api);
    if (capmoe_api_get_state(s->api) == CAPMOE_API_FAULT) enter_fault(s, capmoe_api_error_msg(s->api));
    if (s->comm && !s->announced && capmoe_api_get_state(s->api) == CAPMOE_API_READY) {
        s->announced = 1;
        int R = capmoe_comm_size(s->comm);
        capmoe_log_field f[] = {CAPMOE_LOG_INT("rank", 0), CAPMOE_LOG_INT("pid", (long)getpid())};
        capmoe_log_fields(s->log, CAPMOE_LOG_INFO, f, 2,
                          "rank 0 of %d (pid %ld) on %s: experts [0, %d) loaded, weights %.1f MiB; "
                          "serving HTTP",
                          R, (long)getpid(), capmoe_comm_host(s->comm), s->hc.n_experts / R,
                          (double)capmoe_api_weight_bytes(s->api) / 1048576.0);
    }
    if (capmoe_api_get_state(s->api) == CAPMOE_API_FAILED && !s->draining) {
        capmoe_log_error(s->log, "cannot load the model: %s", capmoe_api_error_msg(s->api));
        s->exit_code = 1;
        begin_drain(s, 0);
    }
    check_shutdown(s);
}

/* ---- SIGHUP: reload ------------------------------------------------------------ */

typedef struct reload_ctx {
    server *s;
    const char *live[64];   /* live options that changed */
    int n_live;
    char changes[2048];     /* "name old -> new, ..." */
    size_t len;
    int n_restart;
} reload_ctx;

static void on_diff(void *user, const char *name, int live, const char *old_value,
                    const char *new_value) {
    reload_ctx *r = user;
    if (!live) {
        r->n_restart++;
        capmoe_log_field f[] = {CAPMOE_LOG_STR("option", name), CAPMOE_LOG_STR("old", old_value),
                                CAPMOE_LOG_STR("new", new_value)};
        capmoe_log_fields(r->s->log, CAPMOE_LOG_WARN, f, 3,
                          "reload: %s changed (%s -> %s) but needs a restart; %s stays in force",
                          name, old_value, new_value, old_value);
        return;
    }
    if (r->n_live < (int)(sizeof r->live / sizeof r->live[0])) r->live[r->n_live++] = name;
    if (r->len < sizeof r->changes)
        r->len += (size_t)snprintf(r->changes + r->len, sizeof r->changes - r->len, "%s%s %s -> %s",
                                   r->len ? ", " : "", name, old_value, new_value);
}

static void reload(server *s) {
    capmoe_config next;
    capmoe_config_action action;
    capmoe_error err;
    const char *file = s->cfg->config_file ? s->cfg->config_file : "(no file: environment and flags)";
    int loaded = capmoe_config_load(&next, s->argc, s->argv, environ, &action, &err) == 0;
    if (loaded && s->comm) next.ep_ranks = s->cfg->ep_ranks; /* under MPI: the processes */
    if (!loaded || capmoe_config_check_model(&next, &s->hc, &err) != 0) {
        capmoe_log_error(s->log, "SIGHUP: configuration not reloaded, nothing changed: %s", err.msg);
        capmoe_config_free(&next);
        return;
    }
    reload_ctx r = {.s = s};
    capmoe_config_diff(s->cfg, &next, on_diff, &r);
    if (r.n_live == 0) {
        capmoe_log_info(s->log, "SIGHUP: configuration re-read from %s: no live option changed%s",
                        file, r.n_restart ? " (see the restart warnings)" : "");
        capmoe_config_free(&next);
        return;
    }
    /* Everything that can fail first, then the copies. The dispatch of the
     * new file with the running rank count (ep_ranks needs a restart). */
    capmoe_dispatch_cfg d;
    capmoe_config_dispatch(&next, &d);
    d.ep_ranks = s->cfg->ep_ranks;
    capmoe_cors *cors = NULL;
    if (capmoe_cors_new(&cors, next.cors_origins, &err) != 0 ||
        capmoe_api_set_dispatch(s->api, &d, &err) != 0) {
        capmoe_log_error(s->log, "SIGHUP: configuration not reloaded, nothing changed: %s", err.msg);
        capmoe_cors_free(cors);
        capmoe_config_free(&next);
        return;
    }
    for (int i = 0; i < r.n_live; i++)
        if (capmoe_config_copy_option(s->cfg, &next, r.live[i]) != 0)
            capmoe_log_error(s->log, "SIGHUP: %s: out of memory, kept the old value", r.live[i]);
    capmoe_log_set_level(s->log, (capmoe_log_level)s->cfg->log_level);
    capmoe_http_set_cors(s->http, cors);
    capmoe_cors_free(s->cors);
    s->cors = cors;
    capmoe_metrics_set_policy(s->metrics, capmoe_policy_name((capmoe_policy)s->cfg->policy));
    capmoe_metrics_set_min_tokens(s->metrics, s->cfg->min_tokens);
    capmoe_log_field f = CAPMOE_LOG_STR("file", file);
    capmoe_log_fields(s->log, CAPMOE_LOG_INFO, &f, 1, "SIGHUP: configuration reloaded: %s",
                      r.changes);
    capmoe_config_free(&next);
}

static void on_signal(void *u, int signum) {
    server *s = u;
    if (signum == SIGHUP) {
        reload(s);
        return;
    }
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (!s->draining && s->comm && signum == SIGTERM && !s->fault) {
        /* decided in 0.3 s: an operator's drain, or a rank's death */
        s->draining = 1;
        capmoe_http_set_timer(s->http, 0.3, signal_check, s);
        return;
    }
    if (!s->draining) {
        capmoe_log_info(s->log,
                        "%s: no new requests (503 while draining); waiting up to %g s for %d "
                        "running one(s)",
                        name, s->cfg->grace_period_s, capmoe_api_busy(s->api));
        begin_drain(s, s->cfg->grace_period_s);
    } else if (!s->cancelled) {
        capmoe_log_warn(s->log, "second %s: cancelling now", name);
        grace_over(s);
    }
}

/* ---- start ------------------------------------------------------------------------ */

static int check_model_dir(const char *dir, capmoe_hfconfig *hc, capmoe_error *err) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return capmoe_set_error(err,
                                "model: '%s' is not a directory (give a Hugging Face model "
                                "directory with --model DIR; the default is config/model)",
                                dir);
    char *cj = capmoe_path_join(dir, "config.json");
    int ok = cj && access(cj, R_OK) == 0;
    free(cj);
    if (!ok)
        return capmoe_set_error(err, "model: '%s' has no readable config.json", dir);
    capmoe_error e;
    if (capmoe_hfconfig_load(hc, dir, &e) != 0) return capmoe_set_error(err, "model: %s", e.msg);
    char *tj = capmoe_path_join(dir, "tokenizer.json");
    ok = tj && access(tj, R_OK) == 0;
    free(tj);
    if (!ok) return capmoe_set_error(err, "model: '%s' has no readable tokenizer.json", dir);
    return 0;
}

/* Ranks > 0 of --ep mpi: their experts, the start-up check, then rank 0's
 * steps until it stops them. */
static int worker_main(const capmoe_config *cfg, capmoe_comm *comm, capmoe_log *log) {
    signal(SIGTERM, SIG_IGN); /* mpirun forwards the operator's signals: rank 0 decides */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    int me = capmoe_comm_rank(comm);
    capmoe_model *m = NULL;
    capmoe_error err, lerr;
    capmoe_model_opts mo = {.max_ranks = 1, .threads = cfg->threads, .comm = comm,
                            .compute = (capmoe_compute)cfg->compute,
                            .kv_dtype = (capmoe_kv_dtype)cfg->kv_dtype,
                            .weights = (capmoe_weights)cfg->weights,
                            .quantize = (capmoe_quant_scope)cfg->quantize};
    int lrc = capmoe_model_load(&m, cfg->model, &mo, &lerr);
    int context = cfg->context;
    if (lrc == 0 && context <= 0) context = capmoe_model_config(m)->max_position_embeddings;
    capmoe_engine_opts eo = {.model = m, .comm = comm, .context = context,
                             .step_timeout_s = cfg->ep_step_timeout_s, .model_dir = cfg->model};
    capmoe_engine *e = NULL;
    if (capmoe_engine_new(&e, &eo, lrc == 0 ? NULL : lerr.msg, &err) != 0) {
        if (lrc != 0) capmoe_log_error(log, "rank %d: %s", me, lerr.msg);
        capmoe_model_free(m);
        capmoe_comm_finalize(comm);
        return 1;
    }
    if (capmoe_comm_heartbeat_start(comm, 0.1, &err) != 0)
        capmoe_log_warn(log, "rank %d: %s (a dead rank cannot be named)", me, err.msg);
    const capmoe_hfconfig *hc = capmoe_model_config(m);
    int El = hc->n_experts / capmoe_comm_size(comm);
    capmoe_log_field f[] = {CAPMOE_LOG_INT("rank", me), CAPMOE_LOG_INT("pid", (long)getpid())};
    capmoe_log_fields(log, CAPMOE_LOG_INFO, f, 2,
                      "rank %d of %d (pid %ld) on %s: experts [%d, %d) loaded, weights %.1f MiB; "
                      "serving",
                      me, capmoe_comm_size(comm), (long)getpid(), capmoe_comm_host(comm), me * El,
                      (me + 1) * El,
                      (double)(capmoe_model_alloc_bytes(m) + capmoe_model_mapped_bytes(m)) /
                          1048576.0);
    int rc = capmoe_engine_serve(e, &err);
    capmoe_engine_free(e);
    capmoe_model_free(m);
    if (rc != 0) {
        capmoe_log_error(log, "rank %d: %s", me, err.msg);
        capmoe_comm_abort(comm, 3);
    }
    capmoe_log_info(log, "rank %d: stopped", me);
    capmoe_comm_finalize(comm);
    return 0;
}

/* "host:port" for a URL: IPv6 literals in brackets. */
static void url_host(const char *host, int port, char *out, size_t n) {
    if (strchr(host, ':')) snprintf(out, n, "[%s]:%d", host, port);
    else snprintf(out, n, "%s:%d", host, port);
}

/* PEM files of tls_cert / tls_key into memory (malloc'd). */
static int read_tls(const capmoe_config *cfg, char **cert, char **key, capmoe_error *err) {
    *cert = *key = NULL;
    if (!cfg->tls_cert[0]) return 0;
    capmoe_error e;
    if (!(*cert = capmoe_read_file(cfg->tls_cert, NULL, &e)))
        return capmoe_set_error(err, "tls_cert: %s", e.msg);
    if (!(*key = capmoe_read_file(cfg->tls_key, NULL, &e))) {
        free(*cert);
        *cert = NULL;
        return capmoe_set_error(err, "tls_key: %s", e.msg);
    }
    return 0;
}

static int run(server *s) {
    capmoe_config *cfg = s->cfg;
    capmoe_error err;
    if (check_model_dir(cfg->model, &s->hc, &err) != 0 ||
        capmoe_config_check_model(cfg, &s->hc, &err) != 0) {
        capmoe_log_error(s->log, "%s", err.msg);
        return 1;
    }
    char *model_id = capmoe_config_model_id(cfg);
    capmoe_sysinfo si;
    capmoe_sysinfo_get(&si);
    char threads[16];
    snprintf(threads, sizeof threads, "%d", cfg->threads > 0 ? cfg->threads : si.cpus);
    const char *build[] = {"version", CAPMOE_VERSION, "revision", capmoe_revision(),
                           "cpu_features", si.features, "blas", si.blas.name,
                           "blas_version", si.blas.version, "blas_core", si.blas.core,
                           "blas_slow", si.blas.weak ? "1" : "0", "onednn", si.dnnl,
                           "threads", threads, "compute",
                           capmoe_compute_name((capmoe_compute)cfg->compute), "kv_dtype",
                           cfg->kv_dtype ? "bf16" : "f32", "weights",
                           capmoe_weights_name((capmoe_weights)cfg->weights), "quantize",
                           capmoe_quant_scope_name((capmoe_quant_scope)cfg->quantize), NULL};
    capmoe_metrics_opts mo = {
        .model_name = model_id ? model_id : "model",
        .n_layers = s->hc.n_layers,
        .n_experts = s->hc.n_experts,
        .per_layer_expert = cfg->metrics_per_layer_expert,
        .policy = capmoe_policy_name((capmoe_policy)cfg->policy),
        .min_tokens = cfg->min_tokens,
        .build_labels = build,
    };
    char *cert = NULL, *key = NULL;
    int rc = 1;
    s->metrics = capmoe_metrics_new(&mo);
    if (!s->metrics) {
        capmoe_log_error(s->log, "cannot create the metrics registry");
        goto out;
    }
    /* routed pairs per dispatch = tokens x top_k (not computed + dropped, which
     * differs under expanded) */
    capmoe_metrics_set_top_k(s->metrics, s->hc.top_k);
    if (capmoe_cors_new(&s->cors, cfg->cors_origins, &err) != 0 ||
        read_tls(cfg, &cert, &key, &err) != 0 ||
        capmoe_api_new(&s->api, cfg, s->metrics, &err) != 0) {
        capmoe_log_error(s->log, "%s", err.msg);
        goto out;
    }
    capmoe_api_set_log(s->api, s->log);
    capmoe_http_opts ho = {
        .host = cfg->host,
        .port = cfg->port,
        .max_body_bytes = cfg->max_body_bytes,
        .connection_timeout_s = (unsigned)cfg->connection_timeout_s,
        .header_timeout_s = (unsigned)cfg->header_timeout_s,
        .max_connections = (unsigned)cfg->max_connections,
        .max_connections_per_ip = (unsigned)cfg->max_connections_per_ip,
        .tls_cert_pem = cert,
        .tls_key_pem = key,
        .log = s->log,
        .cors = s->cors,
    };
    capmoe_http_handlers hh = {
        .user = s,
        .on_request = on_request,
        .on_done = on_done,
        .on_wake = on_wake,
        .on_signal = on_signal,
        .on_rejected = on_rejected,
        .on_access = on_access,
    };
    if (capmoe_http_new(&s->http, &ho, &hh, &err) != 0) {
        capmoe_log_error(s->log, "%s", err.msg);
        goto out;
    }
    char hp[300];
    url_host(cfg->host, capmoe_http_port(s->http), hp, sizeof hp);
    const char *scheme = cert ? "https" : "http";
    capmoe_log_field f[] = {CAPMOE_LOG_INT("port", capmoe_http_port(s->http)),
                            CAPMOE_LOG_STR("version", CAPMOE_VERSION),
                            CAPMOE_LOG_STR("revision", capmoe_revision())};
    capmoe_log_fields(s->log, CAPMOE_LOG_INFO, f, 3,
                      "capmoe-server %s: listening on %s://%s (model %s as '%s', loading)",
                      CAPMOE_VERSION, scheme, hp, cfg->model, model_id ? model_id : "model");
    capmoe_log_field sf[] = {CAPMOE_LOG_STR("cpu_features", si.features),
                             CAPMOE_LOG_STR("blas_core", si.blas.core),
                             CAPMOE_LOG_STR("blas_config", si.blas.config),
                             CAPMOE_LOG_STR("onednn", si.dnnl),
                             CAPMOE_LOG_STR("threads", threads)};
    capmoe_log_fields(s->log, CAPMOE_LOG_INFO, sf, 5, "%s %s (%s kernels), %s threads, CPU %s",
                      si.blas.name, si.blas.version, si.blas.core, threads,
                      si.cpu.brand[0] ? si.cpu.brand : "unknown");
    if (si.warning[0]) capmoe_log_warn(s->log, "%s", si.warning);
    if (s->comm) {
        capmoe_api_set_comm(s->api, s->comm);
        capmoe_log_info(s->log, "--ep mpi: %d ranks; rank 0 on %s serves HTTP",
                        capmoe_comm_size(s->comm), capmoe_comm_host(s->comm));
    }
    if (capmoe_api_start(s->api, s->http, &err) != 0) {
        capmoe_log_error(s->log, "%s", err.msg);
        s->exit_code = 1;
        begin_drain(s, 0);
    } else {
        s->sched_started = 1;
    }
    capmoe_http_run(s->http);
    if (s->fault) { /* the scheduler may be stuck in a step: end every rank now */
        capmoe_log_error(s->log, "aborting the MPI job (exit status 3)");
        capmoe_comm_abort(s->comm, 3);
    }
    rc = s->exit_code;
out:
    capmoe_api_free(s->api); /* joins the scheduler (under MPI: stops the other ranks) */
    capmoe_http_free(s->http);
    capmoe_metrics_free(s->metrics);
    capmoe_cors_free(s->cors);
    free(cert);
    free(key);
    free(model_id);
    if (s->http || rc == 0) capmoe_log_info(s->log, "stopped");
    return rc;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    /* a SIGHUP before the loop handles it (it reloads then) must not kill */
    signal(SIGHUP, SIG_IGN);
    capmoe_config cfg;
    capmoe_config_action action;
    capmoe_error err;
    if (capmoe_config_load(&cfg, argc, argv, environ, &action, &err) != 0) {
        fprintf(stderr, "capmoe-server: %s\n", err.msg);
        capmoe_config_free(&cfg);
        return 2;
    }
    if (action == CAPMOE_CONFIG_HELP) {
        capmoe_config_help(stdout, "capmoe-server");
        capmoe_config_free(&cfg);
        return 0;
    }
    if (action == CAPMOE_CONFIG_VERSION) {
        printf("capmoe-server %s (revision %s)\n", CAPMOE_VERSION, capmoe_revision());
        capmoe_sysinfo si;
        capmoe_sysinfo_get(&si);
        capmoe_sysinfo_print(stdout, &si, cfg.threads);
        capmoe_config_free(&cfg);
        return 0;
    }
    if (action == CAPMOE_CONFIG_HEALTHCHECK) {
        int tls = cfg.tls_cert && cfg.tls_cert[0];
        int status = capmoe_http_probe(cfg.host, cfg.port, "/health", 5.0, tls, &err);
        int rc = status == 200 ? 0 : 1;
        if (status < 0) fprintf(stderr, "capmoe-server: healthcheck: %s\n", err.msg);
        else if (rc) fprintf(stderr, "capmoe-server: healthcheck: /health answered %d\n", status);
        capmoe_config_free(&cfg);
        return rc;
    }
    server s = {.cfg = &cfg, .argc = argc, .argv = argv};
    s.log = capmoe_log_new(stderr, (capmoe_log_format)cfg.log_format,
                           (capmoe_log_level)cfg.log_level);
    if (!s.log) {
        fprintf(stderr, "capmoe-server: out of memory\n");
        capmoe_config_free(&cfg);
        return 1;
    }
    if (strcmp(cfg.ep, "mpi") == 0) {
        if (capmoe_comm_init(&s.comm, &argc, &argv, &err) != 0) {
            capmoe_log_error(s.log, "--ep mpi: %s", err.msg);
            capmoe_log_free(s.log);
            capmoe_config_free(&cfg);
            return 1;
        }
        s.argc = argc; /* a reload reads the arguments MPI left */
        s.argv = argv;
        int R = capmoe_comm_size(s.comm);
        if (cfg.ep_ranks != 1 && cfg.ep_ranks != R) {
            capmoe_log_error(s.log,
                             "--ep-ranks %d differs from the %d MPI ranks (under --ep mpi the "
                             "ranks are the processes: leave --ep-ranks out)",
                             cfg.ep_ranks, R);
            capmoe_comm_abort(s.comm, 2);
        }
        cfg.ep_ranks = R;
        if (capmoe_comm_rank(s.comm) > 0) {
            int rc = worker_main(&cfg, s.comm, s.log);
            capmoe_log_free(s.log);
            capmoe_config_free(&cfg);
            return rc;
        }
        if (capmoe_comm_monitor_start(s.comm, &err) != 0)
            capmoe_log_warn(s.log, "%s (a dead rank cannot be named)", err.msg);
    }
    /* rank 0 (or the only process) from here */
    int rc = run(&s);
    /* under MPI a failure before the scheduler started must end the whole
     * job (the other ranks wait for it) */
    if (s.comm && !s.sched_started && rc != 0) capmoe_comm_abort(s.comm, rc);
    capmoe_log_free(s.log);
    capmoe_config_free(&cfg);
    capmoe_comm_finalize(s.comm);
    return rc;
}
