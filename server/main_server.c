/* main_server.c - capmoe-server: configuration, wiring of http + api +
 * scheduler + metrics, and the shutdown sequence.
 *
 * Start: options (file < env < flags) -> model directory checked -> metrics
 * -> API + scheduler -> HTTP socket up (GET /health answers 503 while the
 * scheduler thread loads the model) -> loop.
 * SIGTERM / SIGINT: stop accepting (MHD quiesce), refuse new generations
 * (503), let running ones finish within grace_period_s, then cancel them;
 * once no generation and no HTTP request is left (or 2 s after the cancel),
 * stop the HTTP layer and exit 0. A second signal cancels at once. A model
 * that fails to load exits 1.
 *
 * --ep mpi (under `mpirun -np R`): rank 0 runs all of the above; ranks > 0
 * load their share of the experts, take part in the start-up check, send
 * heartbeats and follow rank 0's steps until it stops them (they ignore
 * SIGTERM / SIGINT, which mpirun forwards: rank 0 decides). When a rank
 * dies or hangs (a step fails: timeout, MPI error; or, on a SIGTERM that
 * mpirun sends when a rank died, a rank found silent), rank 0 answers every
 * open request 503 naming the rank, stops, and ends the job with MPI_Abort
 * (exit status 3). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include "capmoe/comm.h"
#include "capmoe/config.h"
#include "capmoe/engine.h"
#include "capmoe/hfconfig.h"
#include "capmoe/http.h"
#include "capmoe/metrics.h"
#include "capmoe/openai.h"

#define CAPMOE_SERVER_VERSION "0.1.0"

extern char **environ;

typedef struct server {
    const capmoe_config *cfg;
    capmoe_comm *comm;  /* --ep mpi; NULL otherwise */
    int fault;          /* the expert-parallel group failed: end with MPI_Abort */
    int announced;      /* rank 0's own "experts loaded" line was printed */
    int n_experts;
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
        fprintf(stderr, "capmoe-server: closing %d unfinished connection(s)\n",
                capmoe_http_in_flight(s->http));
        stop_http(s);
    }
}

static void grace_over(void *arg) {
    server *s = arg;
    if (s->cancelled) return;
    s->cancelled = 1;
    int busy = capmoe_api_busy(s->api);
    if (busy) fprintf(stderr, "capmoe-server: grace period over: cancelling %d request(s)\n", busy);
    capmoe_api_cancel_all(s->api);
    capmoe_http_set_timer(s->http, 2.0, flush_over, s);
    check_shutdown(s);
}

static void begin_drain(server *s, double grace) {
    s->draining = 1;
    capmoe_http_quiesce(s->http);
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

/* --ep mpi: the process group failed. Everything open has been (or is now)
 * answered 503; once the answers are out the loop stops and main aborts the
 * job. */
static void enter_fault(server *s, const char *why) {
    if (s->fault) return;
    s->fault = 1;
    s->exit_code = 3;
    fprintf(stderr, "capmoe-server: expert-parallel failure: %s; answering 503 and stopping\n", why);
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
    fprintf(stderr,
            "capmoe-server: SIGTERM: no new requests; waiting up to %g s for %d running one(s)\n",
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
        int El = s->n_experts / R;
        fprintf(stderr,
                "capmoe-server: rank 0 of %d (pid %ld) on %s: experts [0, %d) loaded, weights %.1f "
                "MiB; serving HTTP\n",
                R, (long)getpid(), capmoe_comm_host(s->comm), El,
                (double)capmoe_api_weight_bytes(s->api) / 1048576.0);
    }
    if (capmoe_api_get_state(s->api) == CAPMOE_API_FAILED && !s->draining) {
        fprintf(stderr, "capmoe-server: cannot load the model: %s\n",
                capmoe_api_error_msg(s->api));
        s->exit_code = 1;
        begin_drain(s, 0);
    }
    check_shutdown(s);
}

static void on_signal(void *u, int signum) {
    server *s = u;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (!s->draining && s->comm && signum == SIGTERM && !s->fault) {
        /* decided in 0.3 s: an operator's drain, or a rank's death */
        s->draining = 1;
        capmoe_http_set_timer(s->http, 0.3, signal_check, s);
        return;
    }
    if (!s->draining) {
        fprintf(stderr,
                "capmoe-server: %s: no new requests; waiting up to %g s for %d running one(s)\n",
                name, s->cfg->grace_period_s, capmoe_api_busy(s->api));
        begin_drain(s, s->cfg->grace_period_s);
    } else if (!s->cancelled) {
        fprintf(stderr, "capmoe-server: second %s: cancelling now\n", name);
        grace_over(s);
    }
}

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
    return 0;
}

/* Ranks > 0 of --ep mpi: their experts, the start-up check, then rank 0's
 * steps until it stops them. */
static int worker_main(const capmoe_config *cfg, capmoe_comm *comm) {
    signal(SIGTERM, SIG_IGN); /* mpirun forwards the operator's signals: rank 0 decides */
    signal(SIGINT, SIG_IGN);
    int me = capmoe_comm_rank(comm);
    capmoe_model *m = NULL;
    capmoe_error err, lerr;
    capmoe_model_opts mo = {.max_ranks = 1, .threads = cfg->threads, .comm = comm};
    int lrc = capmoe_model_load(&m, cfg->model, &mo, &lerr);
    int context = cfg->context;
    if (lrc == 0 && context <= 0) context = capmoe_model_config(m)->max_position_embeddings;
    capmoe_engine_opts eo = {.model = m, .comm = comm, .context = context,
                             .step_timeout_s = cfg->ep_step_timeout_s, .model_dir = cfg->model};
    capmoe_engine *e = NULL;
    if (capmoe_engine_new(&e, &eo, lrc == 0 ? NULL : lerr.msg, &err) != 0) {
        if (lrc != 0) fprintf(stderr, "capmoe-server: rank %d: %s\n", me, lerr.msg);
        capmoe_model_free(m);
        capmoe_comm_finalize(comm);
        return 1;
    }
    if (capmoe_comm_heartbeat_start(comm, 0.1, &err) != 0)
        fprintf(stderr, "capmoe-server: rank %d: %s (a dead rank cannot be named)\n", me, err.msg);
    const capmoe_hfconfig *hc = capmoe_model_config(m);
    int El = hc->n_experts / capmoe_comm_size(comm);
    fprintf(stderr,
            "capmoe-server: rank %d of %d (pid %ld) on %s: experts [%d, %d) loaded, weights %.1f "
            "MiB; serving\n",
            me, capmoe_comm_size(comm), (long)getpid(), capmoe_comm_host(comm), me * El,
            (me + 1) * El,
            (double)(capmoe_model_alloc_bytes(m) + capmoe_model_mapped_bytes(m)) / 1048576.0);
    int rc = capmoe_engine_serve(e, &err);
    capmoe_engine_free(e);
    capmoe_model_free(m);
    if (rc != 0) {
        fprintf(stderr, "capmoe-server: rank %d: %s\n", me, err.msg);
        capmoe_comm_abort(comm, 3);
    }
    fprintf(stderr, "capmoe-server: rank %d: stopped\n", me);
    capmoe_comm_finalize(comm);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
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
        printf("capmoe-server %s\n", CAPMOE_SERVER_VERSION);
        capmoe_config_free(&cfg);
        return 0;
    }
    if (action == CAPMOE_CONFIG_HEALTHCHECK) {
        int status = capmoe_http_probe(cfg.host, cfg.port, "/health", 5.0, &err);
        int rc = status == 200 ? 0 : 1;
        if (status < 0) fprintf(stderr, "capmoe-server: healthcheck: %s\n", err.msg);
        else if (rc) fprintf(stderr, "capmoe-server: healthcheck: /health answered %d\n", status);
        capmoe_config_free(&cfg);
        return rc;
    }

    capmoe_comm *comm = NULL;
    if (strcmp(cfg.ep, "mpi") == 0) {
        if (capmoe_comm_init(&comm, &argc, &argv, &err) != 0) {
            fprintf(stderr, "capmoe-server: --ep mpi: %s\n", err.msg);
            capmoe_config_free(&cfg);
            return 1;
        }
        int R = capmoe_comm_size(comm);
        if (cfg.ep_ranks != 1 && cfg.ep_ranks != R) {
            fprintf(stderr,
                    "capmoe-server: --ep-ranks %d differs from the %d MPI ranks (under --ep mpi "
                    "the ranks are the processes: leave --ep-ranks out)\n",
                    cfg.ep_ranks, R);
            capmoe_comm_abort(comm, 2);
        }
        cfg.ep_ranks = R;
        if (capmoe_comm_rank(comm) > 0) {
            int rc = worker_main(&cfg, comm);
            capmoe_config_free(&cfg);
            return rc;
        }
        if (capmoe_comm_monitor_start(comm, &err) != 0)
            fprintf(stderr, "capmoe-server: %s (a dead rank cannot be named)\n", err.msg);
    }
    /* rank 0 (or the only process) from here; under MPI a failure before the
     * scheduler starts must end the whole job (the other ranks wait for it) */
#define FAIL_EXIT(code) \
    do { \
        if (comm) capmoe_comm_abort(comm, code); \
        return code; \
    } while (0)
    capmoe_hfconfig hc;
    if (check_model_dir(cfg.model, &hc, &err) != 0) {
        fprintf(stderr, "capmoe-server: %s\n", err.msg);
        capmoe_config_free(&cfg);
        FAIL_EXIT(1);
    }

    char *model_id = capmoe_config_model_id(&cfg);
    capmoe_metrics_opts mo = {
        .model_name = model_id ? model_id : "model",
        .n_layers = hc.n_layers,
        .n_experts = hc.n_experts,
        .per_layer_expert = cfg.metrics_per_layer_expert,
        .policy = capmoe_policy_name((capmoe_policy)cfg.policy),
    };
    capmoe_metrics *metrics = capmoe_metrics_new(&mo);
    if (!metrics) {
        fprintf(stderr, "capmoe-server: cannot create the metrics registry\n");
        free(model_id);
        capmoe_config_free(&cfg);
        FAIL_EXIT(1);
    }
    /* routed pairs per dispatch = tokens x top_k (not computed + dropped, which
     * differs under expanded) */
    capmoe_metrics_set_top_k(metrics, hc.top_k);

    server s = {.cfg = &cfg, .comm = comm, .n_experts = hc.n_experts};
    if (capmoe_api_new(&s.api, &cfg, metrics, &err) != 0) {
        fprintf(stderr, "capmoe-server: %s\n", err.msg);
        capmoe_metrics_free(metrics);
        free(model_id);
        capmoe_config_free(&cfg);
        FAIL_EXIT(1);
    }
    capmoe_http_opts ho = {
        .host = cfg.host,
        .port = cfg.port,
        .max_body_bytes = cfg.max_body_bytes,
        .connection_timeout_s = (unsigned)cfg.connection_timeout_s,
        .header_timeout_s = (unsigned)cfg.header_timeout_s,
        .max_connections = (unsigned)cfg.max_connections,
        .max_connections_per_ip = (unsigned)cfg.max_connections_per_ip,
    };
    capmoe_http_handlers hh = {
        .user = &s,
        .on_request = on_request,
        .on_done = on_done,
        .on_wake = on_wake,
        .on_signal = on_signal,
        .on_rejected = on_rejected,
    };
    if (capmoe_http_new(&s.http, &ho, &hh, &err) != 0) {
        fprintf(stderr, "capmoe-server: %s\n", err.msg);
        capmoe_api_free(s.api);
        capmoe_metrics_free(metrics);
        free(model_id);
        capmoe_config_free(&cfg);
        FAIL_EXIT(1);
    }
    fprintf(stderr, "capmoe-server %s: listening on http://%s:%d (model %s as '%s', loading)\n",
            CAPMOE_SERVER_VERSION, cfg.host, capmoe_http_port(s.http), cfg.model, model_id);
    if (comm) {
        capmoe_api_set_comm(s.api, comm);
        fprintf(stderr, "capmoe-server: --ep mpi: %d ranks; rank 0 on %s serves HTTP\n",
                capmoe_comm_size(comm), capmoe_comm_host(comm));
    }
    if (capmoe_api_start(s.api, s.http, &err) != 0) {
        fprintf(stderr, "capmoe-server: %s\n", err.msg);
        s.exit_code = 1;
        begin_drain(&s, 0);
    }
    capmoe_http_run(s.http);
    if (s.fault) { /* the scheduler may be stuck in a step: end every rank now */
        fprintf(stderr, "capmoe-server: aborting the MPI job (exit status 3)\n");
        fflush(stderr);
        capmoe_comm_abort(comm, 3);
    }
    capmoe_api_free(s.api); /* joins the scheduler (under MPI: stops the other ranks) */
    capmoe_http_free(s.http);
    capmoe_metrics_free(metrics);
    fprintf(stderr, "capmoe-server: stopped\n");
    free(model_id);
    capmoe_config_free(&cfg);
    capmoe_comm_finalize(comm);
    return s.exit_code;
#undef FAIL_EXIT
}
