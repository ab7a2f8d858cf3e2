/* comm.c - the MPI process group of --ep mpi (comm.h). */
#include "capmoe/comm.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HB_TAG 7

struct capmoe_comm {
    MPI_Comm world;          /* step collectives */
    MPI_Comm hb;             /* heartbeats (their own communicator) */
    int rank, size;
    int local_size;          /* ranks on this host */
    int thread_level;
    char host[MPI_MAX_PROCESSOR_NAME + 1];
    double deadline;         /* step thread's wait deadline, 0 = none */
    /* heartbeats: sender (ranks > 0) or monitor (rank 0) */
    pthread_t hb_thread;
    int hb_running;
    atomic_int hb_quit;
    double hb_interval;
    _Atomic long long prog_step; /* this rank's progress */
    atomic_int prog_layer;
    /* rank 0's view (monitor thread writes, others read) */
    pthread_mutex_t mu;
    double *last_seen;       /* [size] capmoe_now() of the last heartbeat */
    long long *seen_step;
    int *seen_layer;
};

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

static int mpi_fail(capmoe_error *err, int rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING] = "";
    int n = 0;
    MPI_Error_string(rc, s, &n);
    return capmoe_set_error(err, "MPI: %s failed: %s", what, s);
}

int capmoe_comm_init(capmoe_comm **out, int *argc, char ***argv, capmoe_error *err) {
    *out = NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) return capmoe_set_error(err, "MPI: already finalized");
    capmoe_comm *c = calloc(1, sizeof *c);
    if (!c) return capmoe_set_error(err, "out of memory");
    if (!inited) {
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &c->thread_level);
        if (rc != MPI_SUCCESS) {
            free(c);
            return mpi_fail(err, rc, "MPI_Init_thread");
        }
    } else {
        MPI_Query_thread(&c->thread_level);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->world) != MPI_SUCCESS ||
        MPI_Comm_dup(MPI_COMM_WORLD, &c->hb) != MPI_SUCCESS) {
        free(c);
        return capmoe_set_error(err, "MPI: cannot duplicate MPI_COMM_WORLD");
    }
    MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(c->hb, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->world, &c->rank);
    MPI_Comm_size(c->world, &c->size);
    MPI_Comm node;
    c->local_size = 1;
    if (MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_size(node, &c->local_size);
        MPI_Comm_free(&node);
    }
    int n = 0;
    MPI_Get_processor_name(c->host, &n);
    c->host[n < 0 ? 0 : n > MPI_MAX_PROCESSOR_NAME ? MPI_MAX_PROCESSOR_NAME : n] = '\0';
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->hb_quit, 0);
    atomic_init(&c->prog_step, 0);
    atomic_init(&c->prog_layer, -1);
    *out = c;
    return 0;
}

static void hb_stop(capmoe_comm *c) {
    if (!c->hb_running) return;
    atomic_store(&c->hb_quit, 1);
    pthread_join(c->hb_thread, NULL);
    c->hb_running = 0;
}

void capmoe_comm_finalize(capmoe_comm *c) {
    if (!c) return;
    hb_stop(c);
    /* Heartbeats still in flight toward rank 0 are received and dropped by
     * the barrier's end: drain them so MPI_Finalize has nothing pending. */
    MPI_Barrier(c->world);
    if (c->rank == 0) {
        int flag = 1;
        while (flag) {
            MPI_Status st;
            MPI_Iprobe(MPI_ANY_SOURCE, HB_TAG, c->hb, &flag, &st);
            if (flag) {
                long long msg[2];
                MPI_Recv(msg, 2, MPI_LONG_LONG, st.MPI_SOURCE, HB_TAG, c->hb, MPI_STATUS_IGNORE);
            }
        }
    }
    MPI_Barrier(c->world);
    MPI_Comm_free(&c->hb);
    MPI_Comm_free(&c->world);
    MPI_Finalize();
    pthread_mutex_destroy(&c->mu);
    free(c->last_seen);
    free(c->seen_step);
    free(c->seen_layer);
    free(c);
}

void capmoe_comm_abort(capmoe_comm *c, int code) {
    MPI_Abort(c ? c->world : MPI_COMM_WORLD, code);
    exit(code); /* MPI_Abort should not return */
}

int capmoe_comm_rank(const capmoe_comm *c) { return c ? c->rank : 0; }
int capmoe_comm_size(const capmoe_comm *c) { return c ? c->size : 1; }
const char *capmoe_comm_host(const capmoe_comm *c) { return c ? c->host : ""; }
int capmoe_comm_local_size(const capmoe_comm *c) { return c ? c->local_size : 1; }
int capmoe_comm_threads_ok(const capmoe_comm *c) {
    return c && c->thread_level >= MPI_THREAD_MULTIPLE;
}
void capmoe_comm_set_deadline(capmoe_comm *c, double deadline) { c->deadline = deadline; }

/* Polls a request to completion. idle: sleep between polls (no deadline).
 * Otherwise spin (a step's exchanges take microseconds to milliseconds),
 * checking the deadline every few thousand polls. */
static int wait_req(capmoe_comm *c, MPI_Request *rq, int idle, const char *what,
                    capmoe_error *err) {
    int done = 0;
    long spins = 0;
    while (!done) {
        int rc = MPI_Test(rq, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(err, rc, what);
        if (done) break;
        if (idle) {
            /* ramp up: answer a new step quickly, sleep long when idle */
            nap(spins < 1000 ? 0 : spins < 2000 ? 50000 : 1000000);
            spins++;
            continue;
        }
        if ((++spins & 4095) == 0 && c->deadline > 0 && capmoe_now() > c->deadline)
            return capmoe_set_error(err, "timed out in %s", what);
    }
    return 0;
}

int capmoe_comm_bcast(capmoe_comm *c, void *buf, size_t bytes, int root, int idle,
                      capmoe_error *err) {
    if (bytes > INT_MAX) return capmoe_set_error(err, "MPI: broadcast of %zu bytes is too large", bytes);
    MPI_Request rq;
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, c->world, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Ibcast");
    return wait_req(c, &rq, idle, "the step broadcast", err);
}

int capmoe_comm_max(capmoe_comm *c, long long *v, int n, capmoe_error *err) {
    MPI_Request rq;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_LONG_LONG, MPI_MAX, c->world, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Iallreduce");
    return wait_req(c, &rq, 0, "an all-reduce", err);
}

int capmoe_comm_sum(capmoe_comm *c, double *v, int n, capmoe_error *err) {
    MPI_Request rq;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, c->world, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Iallreduce");
    return wait_req(c, &rq, 0, "an all-reduce", err);
}

static int gather_any(capmoe_comm *c, const void *send, size_t bytes, int root, int all,
                      void **out, size_t *counts, capmoe_error *err) {
    *out = NULL;
    if (bytes > INT_MAX) return capmoe_set_error(err, "MPI: %zu bytes to gather is too large", bytes);
    int R = c->size, me = all || c->rank == root;
    int n = (int)bytes, *cnt = calloc((size_t)R, sizeof *cnt), *dis = calloc((size_t)R, sizeof *dis);
    if (!cnt || !dis) {
        free(cnt);
        free(dis);
        return capmoe_set_error(err, "out of memory");
    }
    MPI_Request rq;
    int rc = all ? MPI_Iallgather(&n, 1, MPI_INT, cnt, 1, MPI_INT, c->world, &rq)
                 : MPI_Igather(&n, 1, MPI_INT, cnt, 1, MPI_INT, root, c->world, &rq);
    if (rc != MPI_SUCCESS || wait_req(c, &rq, 0, "a gather of sizes", err) != 0) {
        free(cnt);
        free(dis);
        return rc != MPI_SUCCESS ? mpi_fail(err, rc, "MPI_Igather") : -1;
    }
    char *buf = NULL;
    if (me) {
        long long total = 0;
        for (int r = 0; r < R; r++) {
            if (total > INT_MAX) break;
            dis[r] = (int)total;
            total += cnt[r];
        }
        if (total > INT_MAX) {
            free(cnt);
            free(dis);
            return capmoe_set_error(err, "MPI: %lld bytes to gather is too large", total);
        }
        buf = malloc(total > 0 ? (size_t)total : 1);
        if (!buf) {
            free(cnt);
            free(dis);
            return capmoe_set_error(err, "out of memory");
        }
    }
    rc = all ? MPI_Iallgatherv(send, n, MPI_BYTE, buf, cnt, dis, MPI_BYTE, c->world, &rq)
             : MPI_Igatherv(send, n, MPI_BYTE, buf, cnt, dis, MPI_BYTE, root, c->world, &rq);
    if (rc != MPI_SUCCESS || wait_req(c, &rq, 0, "a gather", err) != 0) {
        free(buf);
        free(cnt);
        free(dis);
        return rc != MPI_SUCCESS ? mpi_fail(err, rc, "MPI_Igatherv") : -1;
    }
    if (me && counts)
        for (int r = 0; r < R; r++) counts[r] = (size_t)cnt[r];
    free(cnt);
    free(dis);
    *out = buf;
    return 0;
}

int capmoe_comm_gather(capmoe_comm *c, const void *send, size_t bytes, int root, void **out,
                       size_t *counts, capmoe_error *err) {
    return gather_any(c, send, bytes, root, 0, out, counts, err);
}

int capmoe_comm_allgather(capmoe_comm *c, const void *send, size_t bytes, void **out,
                          size_t *counts, capmoe_error *err) {
    return gather_any(c, send, bytes, 0, 1, out, counts, err);
}

int capmoe_comm_alltoall(capmoe_comm *c, const void *send, void *recv, size_t each,
                         capmoe_error *err) {
    if (each > INT_MAX) return capmoe_set_error(err, "MPI: all-to-all of %zu bytes each", each);
    MPI_Request rq;
    int rc = MPI_Ialltoall(send, (int)each, MPI_BYTE, recv, (int)each, MPI_BYTE, c->world, &rq);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Ialltoall");
    return wait_req(c, &rq, 0, "an all-to-all of counts", err);
}

int capmoe_comm_alltoallv_f32(capmoe_comm *c, const float *send, const long long *scount,
                              const long long *sdispl, float *recv, const long long *rcount,
                              const long long *rdispl, double *wait, capmoe_error *err) {
    int R = c->size;
    int *v = malloc(4 * (size_t)R * sizeof *v);
    if (!v) return capmoe_set_error(err, "out of memory");
    for (int r = 0; r < R; r++) {
        long long x[4] = {scount[r], sdispl[r], rcount[r], rdispl[r]};
        for (int i = 0; i < 4; i++) {
            if (x[i] < 0 || x[i] > INT_MAX) {
                free(v);
                return capmoe_set_error(err,
                                        "MPI: the all-to-all with rank %d needs %lld floats, over "
                                        "MPI's int count (use smaller batches)",
                                        r, x[i]);
            }
            v[i * R + r] = (int)x[i];
        }
    }
    double t0 = capmoe_now();
    MPI_Request rq;
    int rc = MPI_Ialltoallv(send, v, v + R, MPI_FLOAT, recv, v + 2 * R, v + 3 * R, MPI_FLOAT,
                            c->world, &rq);
    if (rc == MPI_SUCCESS) rc = wait_req(c, &rq, 0, "the experts' all-to-all", err) ? -1 : 0;
    else mpi_fail(err, rc, "MPI_Ialltoallv");
    if (wait) *wait = capmoe_now() - t0;
    free(v);
    return rc == 0 ? 0 : -1;
}

/* ---- heartbeats --------------------------------------------------------------- */

void capmoe_comm_progress(capmoe_comm *c, long long step, int layer) {
    if (!c) return;
    atomic_store(&c->prog_step, step);
    atomic_store(&c->prog_layer, layer);
}

static void *hb_sender(void *arg) {
    capmoe_comm *c = arg;
    long ns = (long)(c->hb_interval * 1e9);
    MPI_Request rq = MPI_REQUEST_NULL;
    long long msg[2];
    while (!atomic_load(&c->hb_quit)) {
        int done = 1;
        if (rq != MPI_REQUEST_NULL) MPI_Test(&rq, &done, MPI_STATUS_IGNORE);
        if (done) { /* never more than one heartbeat in flight */
            msg[0] = atomic_load(&c->prog_step);
            msg[1] = atomic_load(&c->prog_layer);
            if (MPI_Isend(msg, 2, MPI_LONG_LONG, 0, HB_TAG, c->hb, &rq) != MPI_SUCCESS)
                rq = MPI_REQUEST_NULL;
        }
        for (long slept = 0; slept < ns && !atomic_load(&c->hb_quit); slept += 10000000)
            nap(ns - slept < 10000000 ? ns - slept : 10000000);
    }
    if (rq != MPI_REQUEST_NULL) { /* rank 0 drains heartbeats at finalize */
        int done = 0;
        double until = capmoe_now() + 5.0;
        while (!done && capmoe_now() < until) {
            MPI_Test(&rq, &done, MPI_STATUS_IGNORE);
            if (!done) nap(1000000);
        }
        if (!done) {
            MPI_Cancel(&rq);
            MPI_Request_free(&rq);
        }
    }
    return NULL;
}

static void *hb_monitor(void *arg) {
    capmoe_comm *c = arg;
    while (!atomic_load(&c->hb_quit)) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, HB_TAG, c->hb, &flag, &st) != MPI_SUCCESS) flag = 0;
        if (!flag) {
            nap(5000000);
            continue;
        }
        long long msg[2] = {0, -1};
        if (MPI_Recv(msg, 2, MPI_LONG_LONG, st.MPI_SOURCE, HB_TAG, c->hb, MPI_STATUS_IGNORE) !=
            MPI_SUCCESS)
            continue;
        int r = st.MPI_SOURCE;
        if (r <= 0 || r >= c->size) continue;
        pthread_mutex_lock(&c->mu);
        c->last_seen[r] = capmoe_now();
        c->seen_step[r] = msg[0];
        c->seen_layer[r] = (int)msg[1];
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

int capmoe_comm_heartbeat_start(capmoe_comm *c, double interval_s, capmoe_error *err) {
    if (c->rank == 0 || c->hb_running) return 0;
    if (!capmoe_comm_threads_ok(c))
        return capmoe_set_error(err, "MPI: heartbeats need MPI_THREAD_MULTIPLE, which this "
                                     "MPI library does not offer");
    c->hb_interval = interval_s > 0 ? interval_s : 0.1;
    atomic_store(&c->hb_quit, 0);
    if (pthread_create(&c->hb_thread, NULL, hb_sender, c) != 0)
        return capmoe_set_error(err, "cannot start the heartbeat thread");
    c->hb_running = 1;
    return 0;
}

int capmoe_comm_monitor_start(capmoe_comm *c, capmoe_error *err) {
    if (c->rank != 0 || c->hb_running) return 0;
    if (!capmoe_comm_threads_ok(c))
        return capmoe_set_error(err, "MPI: the heartbeat monitor needs MPI_THREAD_MULTIPLE, "
                                     "which this MPI library does not offer");
    c->last_seen = calloc((size_t)c->size, sizeof *c->last_seen);
    c->seen_step = calloc((size_t)c->size, sizeof *c->seen_step);
    c->seen_layer = calloc((size_t)c->size, sizeof *c->seen_layer);
    if (!c->last_seen || !c->seen_step || !c->seen_layer)
        return capmoe_set_error(err, "out of memory");
    double now = capmoe_now();
    for (int r = 0; r < c->size; r++) c->last_seen[r] = now, c->seen_layer[r] = -1;
    atomic_store(&c->hb_quit, 0);
    if (pthread_create(&c->hb_thread, NULL, hb_monitor, c) != 0)
        return capmoe_set_error(err, "cannot start the heartbeat monitor");
    c->hb_running = 1;
    return 0;
}

double capmoe_comm_silence(capmoe_comm *c, int r, long long *step, int *layer) {
    if (!c || !c->last_seen || r < 0 || r >= c->size) return -1;
    if (r == 0) {
        if (step) *step = atomic_load(&c->prog_step);
        if (layer) *layer = atomic_load(&c->prog_layer);
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    double s = capmoe_now() - c->last_seen[r];
    if (step) *step = c->seen_step[r];
    if (layer) *layer = c->seen_layer[r];
    pthread_mutex_unlock(&c->mu);
    return s;
}

void capmoe_comm_diagnose(capmoe_comm *c, double silent_s, char *buf, size_t cap) {
    if (!cap) return;
    buf[0] = '\0';
    if (!c || !c->last_seen) return;
    size_t at = 0;
    long long best_step = -1;
    int best_layer = -1;
    for (int r = 0; r < c->size; r++) { /* the furthest any rank got */
        long long st;
        int ly;
        capmoe_comm_silence(c, r, &st, &ly);
        if (st > best_step || (st == best_step && ly > best_layer)) best_step = st, best_layer = ly;
    }
    for (int r = 1; r < c->size && at < cap; r++) {
        long long st;
        int ly;
        double s = capmoe_comm_silence(c, r, &st, &ly);
        int w = 0;
        if (s > silent_s)
            w = snprintf(buf + at, cap - at, "%srank %d sent no heartbeat for %.1f s (dead or stopped)",
                         at ? "; " : "", r, s);
        else if (st < best_step || (st == best_step && ly < best_layer))
            w = snprintf(buf + at, cap - at,
                         "%srank %d is alive but behind (step %lld, layer %d; others reached step "
                         "%lld, layer %d)",
                         at ? "; " : "", r, st, ly, best_step, best_layer);
        if (w > 0) at += (size_t)w;
        if (at >= cap) at = cap - 1;
    }
}
