/* http.c - libmicrohttpd in external epoll mode, driven by a libuv loop.
 *
 * Rules followed (ecosystem-notes.md §1, checked against MHD 0.9.75):
 *  - MHD's epoll fd is watched by a uv_poll_t; after every MHD_run the
 *    timeout from MHD_get_timeout re-arms a uv_timer_t, 0 included (MHD keeps
 *    edge-triggered sockets in a private "ready" list that only a 0 timeout
 *    reveals).
 *  - external mode has no inter-thread channel: MHD_resume_connection wakes
 *    nothing, so every resume happens on the loop thread and is followed by
 *    another MHD_run (get_timeout ignores pending resumes in 0.9.75).
 *  - a content reader returns 0 only after suspending its connection.
 *  - shutdown: quiesce (we close the listen fd), resume every suspended
 *    connection, uv_close the poll handle, MHD_stop_daemon, close the other
 *    handles, run the loop until uv_loop_close stops answering UV_EBUSY.
 *  - MHD calls are never made from inside MHD callbacks where MHD forbids it:
 *    stop / quiesce requested from a callback are carried out from the async
 *    handler. */
#include "capmoe/http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

typedef enum req_state {
    RQ_RECEIVING = 0,  /* headers / body arriving */
    RQ_HANDLING,       /* inside on_request */
    RQ_DEFERRED,       /* suspended, waiting for capmoe_http_respond */
    RQ_RESPONDED,      /* a complete response is queued */
    RQ_STREAMING       /* a callback response is queued */
} req_state;

struct capmoe_http_req {
    capmoe_http *h;
    struct MHD_Connection *conn;   /* NULL once MHD is done with the request */
    int refs;                      /* 1 for MHD (until NOTIFY_COMPLETED) + 1 per stream response */
    char *method, *path;
    char *body;
    size_t body_len, body_cap;
    int too_large;
    req_state state;
    int reached;                   /* on_request was called: on_done is owed */
    int suspended;
    int aborted;
    struct MHD_Response *pending;  /* deferred answer, queued when the handler runs again */
    unsigned pending_status;
    char *out;                     /* stream bytes not yet handed to MHD */
    size_t out_len, out_off, out_cap;
    int out_ended;
    void *user;
    capmoe_http_req *sprev, *snext; /* list of suspended requests */
};

struct capmoe_http {
    uv_loop_t loop;
    uv_poll_t poll;        /* MHD's epoll fd */
    uv_timer_t mhd_timer;  /* MHD_get_timeout */
    uv_timer_t watch;      /* disconnect watch of suspended connections */
    uv_timer_t user_timer; /* capmoe_http_set_timer */
    uv_async_t async;      /* capmoe_http_wake + deferred stop / quiesce */
    uv_signal_t sigterm, sigint;
    struct MHD_Daemon *d;
    capmoe_http_opts opts;
    capmoe_http_handlers hd;
    int port;
    int quiesced;
    int quiesce_requested, stop_requested, stopped;
    int resume_pending;    /* a resume happened since the last MHD_run */
    int in_mhd;            /* inside MHD_run (callbacks must not re-enter MHD) */
    int in_flight;
    int loop_ready;        /* loop + handles initialised */
    capmoe_http_req *susp_head;
    void (*timer_cb)(void *);
    void *timer_arg;
};

static void pump(capmoe_http *h);
static void watch_cb(uv_timer_t *t);

/* ---- requests --------------------------------------------------------------- */

static void req_unref(capmoe_http_req *r) {
    if (--r->refs > 0) return;
    if (r->pending) MHD_destroy_response(r->pending);
    free(r->method);
    free(r->path);
    free(r->body);
    free(r->out);
    free(r);
}

static void susp_add(capmoe_http_req *r) {
    capmoe_http *h = r->h;
    r->suspended = 1;
    r->sprev = NULL;
    r->snext = h->susp_head;
    if (h->susp_head) h->susp_head->sprev = r;
    h->susp_head = r;
    if (!uv_is_active((uv_handle_t *)&h->watch) && !h->stopped)
        uv_timer_start(&h->watch, watch_cb, 100, 100);
}

static void susp_remove(capmoe_http_req *r) {
    capmoe_http *h = r->h;
    if (!r->suspended) return;
    if (r->sprev) r->sprev->snext = r->snext;
    else h->susp_head = r->snext;
    if (r->snext) r->snext->sprev = r->sprev;
    r->sprev = r->snext = NULL;
    r->suspended = 0;
    if (!h->susp_head) uv_timer_stop(&h->watch);
}

static void req_suspend(capmoe_http_req *r) {
    MHD_suspend_connection(r->conn);
    susp_add(r);
}

static void req_resume(capmoe_http_req *r) {
    if (!r->suspended || !r->conn) return;
    susp_remove(r);
    MHD_resume_connection(r->conn);
    r->h->resume_pending = 1;
}

/* Peeks at the sockets of suspended connections: MHD cannot see a client
 * leave while a connection is suspended. */
static void watch_cb(uv_timer_t *t) {
    capmoe_http *h = t->data;
    capmoe_http_req *r = h->susp_head, *next;
    int any = 0;
    for (; r; r = next) {
        next = r->snext;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) continue;
        char c;
        ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            r->aborted = 1;
            req_resume(r);
            any = 1;
        }
    }
    if (any) pump(h);
}

static int add_headers(struct MHD_Response *resp, const char *content_type,
                       const char *const *headers, int close) {
    if (content_type &&
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES)
        return -1;
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        if (MHD_add_response_header(resp, headers[i], headers[i + 1]) != MHD_YES) return -1;
    if (close) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return 0;
}

static int queue_simple(struct MHD_Connection *conn, unsigned status, const char *body) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc == MHD_YES ? 0 : -1;
}

static const char k_413[] =
    "{\"error\":{\"message\":\"request body too large\",\"type\":\"invalid_request_error\","
    "\"param\":null,\"code\":\"request_too_large\"}}";
static const char k_500[] =
    "{\"error\":{\"message\":\"the server did not answer the request\",\"type\":\"server_error\","
    "\"param\":null,\"code\":null}}";

/* ---- MHD callbacks ------------------------------------------------------------ */

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)version;
    capmoe_http *h = cls;
    capmoe_http_req *r = *con_cls;
    if (!r) { /* first call: headers only */
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->h = h;
        r->conn = conn;
        r->refs = 1;
        if (h->opts.header_timeout_s && h->opts.header_timeout_s != h->opts.connection_timeout_s)
            MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
                                      h->opts.connection_timeout_s);
        r->method = strdup(method);
        r->path = strdup(url);
        *con_cls = r;
        if (!r->method || !r->path) return MHD_NO;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno == ERANGE || n > (unsigned long long)h->opts.max_body_bytes) {
                /* Decided before reading: MHD answers and drops the body. */
                r->too_large = 1;
                r->state = RQ_RESPONDED;
                if (h->hd.on_rejected) h->hd.on_rejected(h->hd.user, r->path, 413);
                return queue_simple(conn, MHD_HTTP_CONTENT_TOO_LARGE, k_413) == 0 ? MHD_YES
                                                                                   : MHD_NO;
            }
        }
        return MHD_YES;
    }
    if (*upload_size != 0) { /* a piece of the body */
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_large) return MHD_YES;
        if ((long long)(r->body_len + n) > h->opts.max_body_bytes) {
            r->too_large = 1; /* chunked body over the limit: keep reading, answer 413 */
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            return MHD_YES;
        }
        if (r->body_len + n > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n) cap *= 2;
            char *nb = realloc(r->body, cap);
            if (!nb) return MHD_NO;
            r->body = nb;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        return MHD_YES;
    }
    /* Final call, or a call after a resume. */
    switch (r->state) {
    case RQ_RECEIVING:
        if (r->too_large) {
            r->state = RQ_RESPONDED;
            if (h->hd.on_rejected) h->hd.on_rejected(h->hd.user, r->path, 413);
            return queue_simple(conn, MHD_HTTP_CONTENT_TOO_LARGE, k_413) == 0 ? MHD_YES : MHD_NO;
        }
        r->state = RQ_HANDLING;
        r->reached = 1;
        h->in_flight++;
        h->hd.on_request(h->hd.user, r);
        if (r->state == RQ_HANDLING) { /* the handler gave no answer: a bug, but answer */
            r->state = RQ_RESPONDED;
            return queue_simple(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, k_500) == 0 ? MHD_YES
                                                                                  : MHD_NO;
        }
        return MHD_YES;
    case RQ_DEFERRED:
        if (r->pending) {
            struct MHD_Response *resp = r->pending;
            r->pending = NULL;
            r->state = RQ_RESPONDED;
            enum MHD_Result rc = MHD_queue_response(conn, r->pending_status, resp);
            MHD_destroy_response(resp);
            return rc;
        }
        if (r->aborted) return MHD_NO; /* client gone / shutdown: close */
        req_suspend(r);                /* woken without an answer: keep waiting */
        return MHD_YES;
    default:
        return MHD_YES;
    }
}

/* A new connection gets the short header timeout: idle connections that
 * never send a request would otherwise hold one of max_connections slots for
 * connection_timeout_s (the first request header restores the normal idle
 * timeout, see access_cb). */
static void connection_cb(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    (void)socket_context;
    capmoe_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED && h->opts.header_timeout_s &&
        h->opts.header_timeout_s != h->opts.connection_timeout_s)
        MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, h->opts.header_timeout_s);
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    capmoe_http *h = cls;
    capmoe_http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    susp_remove(r);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) r->aborted = 1;
    r->conn = NULL;
    if (r->reached) {
        r->reached = 0;
        h->in_flight--;
        h->hd.on_done(h->hd.user, r, r->aborted);
    }
    req_unref(r);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    capmoe_http_req *r = cls;
    if (r->aborted || !r->conn) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = r->out_len - r->out_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->out + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out_len) r->out_off = r->out_len = 0;
        return (ssize_t)n;
    }
    if (r->out_ended) return MHD_CONTENT_READER_END_OF_STREAM;
    req_suspend(r); /* nothing to send: suspend first, then 0 */
    return 0;
}

static void stream_free(void *cls) { req_unref(cls); }

/* ---- public request API --------------------------------------------------------- */

const char *capmoe_http_req_method(const capmoe_http_req *r) { return r->method; }
const char *capmoe_http_req_path(const capmoe_http_req *r) { return r->path; }
const char *capmoe_http_req_header(const capmoe_http_req *r, const char *name) {
    if (!r->conn) return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}
const char *capmoe_http_req_body(const capmoe_http_req *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body;
}
void capmoe_http_req_set_user(capmoe_http_req *r, void *user) { r->user = user; }
void *capmoe_http_req_user(const capmoe_http_req *r) { return r->user; }
int capmoe_http_req_aborted(const capmoe_http_req *r) { return r->aborted; }

int capmoe_http_respond(capmoe_http_req *r, int status, const char *content_type,
                        const char *body, size_t len, const char *const *headers) {
    if (!r->conn || (r->state != RQ_HANDLING && r->state != RQ_DEFERRED) || r->pending) return -1;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    if (add_headers(resp, content_type, headers, r->h->quiesced) != 0) {
        MHD_destroy_response(resp);
        return -1;
    }
    if (r->state == RQ_HANDLING) {
        enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
        MHD_destroy_response(resp);
        r->state = RQ_RESPONDED;
        return rc == MHD_YES ? 0 : -1;
    }
    r->pending = resp; /* queued when MHD calls the handler again after the resume */
    r->pending_status = (unsigned)status;
    req_resume(r);
    return 0;
}

void capmoe_http_defer(capmoe_http_req *r) {
    if (r->state != RQ_HANDLING || !r->conn) return;
    r->state = RQ_DEFERRED;
    req_suspend(r);
}

int capmoe_http_stream_start(capmoe_http_req *r, int status, const char *content_type,
                             const char *const *headers) {
    if (r->state != RQ_HANDLING || !r->conn) return -1;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r, stream_free);
    if (!resp) return -1;
    r->refs++; /* released by stream_free when MHD destroys the response */
    if (add_headers(resp, content_type, headers, r->h->quiesced) != 0) {
        MHD_destroy_response(resp);
        return -1;
    }
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->state = RQ_STREAMING;
    return rc == MHD_YES ? 0 : -1;
}

int capmoe_http_stream_write(capmoe_http_req *r, const char *data, size_t len) {
    if (r->state != RQ_STREAMING || r->out_ended) return -1;
    if (!r->conn || r->aborted) return -1;
    if (r->out_len + len > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 4096;
        while (cap < r->out_len + len) cap *= 2;
        char *nb = realloc(r->out, cap);
        if (!nb) return -1;
        r->out = nb;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, data, len);
    r->out_len += len;
    req_resume(r);
    return 0;
}

int capmoe_http_stream_end(capmoe_http_req *r) {
    if (r->state != RQ_STREAMING || r->out_ended) return -1;
    r->out_ended = 1;
    req_resume(r);
    return 0;
}

/* ---- loop ------------------------------------------------------------------------ */

static void mhd_timer_cb(uv_timer_t *t) { pump(t->data); }

static void poll_cb(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    pump(p->data);
}

/* Open connections as MHD counts them (the query also frees closed ones). */
static unsigned conn_count(capmoe_http *h) {
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

/* One MHD_run, repeated while it has more to do than a timeout would show:
 *  - a connection was resumed during the run (0.9.75's get_timeout ignores
 *    pending resumes);
 *  - a connection was freed during the run. At the connection limit (or
 *    after accept() failed for lack of descriptors) MHD takes its listen
 *    socket out of the epoll set, and puts it back only at the start of a
 *    later MHD_run once a slot is free. The connections whose closing frees
 *    that slot are reaped at the end of a run, and nothing else would wake
 *    the loop afterwards (no listen socket in the set, possibly no timeout
 *    left): without this second run the server never accepted again. */
static void pump(capmoe_http *h) {
    if (!h->d || h->in_mhd) return;
    int again = 0;
    for (int i = 0; i < 8; i++) {
        h->resume_pending = 0;
        unsigned before = conn_count(h);
        h->in_mhd = 1;
        MHD_run(h->d);
        h->in_mhd = 0;
        again = h->resume_pending || conn_count(h) < before;
        if (!again) break;
    }
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (again) {
        uv_timer_start(&h->mhd_timer, mhd_timer_cb, 0, 0);
    } else if (MHD_get_timeout(h->d, &to) == MHD_YES) {
        uv_timer_start(&h->mhd_timer, mhd_timer_cb, (uint64_t)to, 0);
    } else {
        uv_timer_stop(&h->mhd_timer);
    }
}

static void do_quiesce(capmoe_http *h) {
    if (h->quiesced || !h->d) return;
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    h->quiesced = 1;
}

static void close_cb(uv_handle_t *hd) { (void)hd; }

static void close_handle(uv_handle_t *hd) {
    if (!uv_is_closing(hd)) uv_close(hd, close_cb);
}

static void do_stop(capmoe_http *h) {
    if (h->stopped) return;
    h->stopped = 1;
    do_quiesce(h);
    /* Stopping MHD with suspended connections is undefined: resume them all;
     * flagged aborted, their handler / reader closes them. */
    while (h->susp_head) {
        capmoe_http_req *r = h->susp_head;
        r->aborted = 1;
        req_resume(r);
    }
    close_handle((uv_handle_t *)&h->poll); /* before MHD closes its epoll fd */
    if (h->d) {
        MHD_stop_daemon(h->d);
        h->d = NULL;
    }
    close_handle((uv_handle_t *)&h->mhd_timer);
    close_handle((uv_handle_t *)&h->watch);
    close_handle((uv_handle_t *)&h->user_timer);
    close_handle((uv_handle_t *)&h->async);
    close_handle((uv_handle_t *)&h->sigterm);
    close_handle((uv_handle_t *)&h->sigint);
}

static void async_cb(uv_async_t *a) {
    capmoe_http *h = a->data;
    if (h->stopped) return;
    if (h->hd.on_wake) h->hd.on_wake(h->hd.user);
    if (h->quiesce_requested) do_quiesce(h);
    if (h->stop_requested) {
        do_stop(h);
        return;
    }
    pump(h);
}

static void signal_cb(uv_signal_t *s, int signum) {
    capmoe_http *h = s->data;
    if (h->hd.on_signal) h->hd.on_signal(h->hd.user, signum);
    if (h->quiesce_requested && !h->in_mhd) do_quiesce(h);
    if (h->stop_requested && !h->in_mhd) do_stop(h);
    else if (!h->stopped) pump(h);
}

static void user_timer_cb(uv_timer_t *t) {
    capmoe_http *h = t->data;
    void (*cb)(void *) = h->timer_cb;
    h->timer_cb = NULL;
    if (cb) cb(h->timer_arg);
    if (h->quiesce_requested) do_quiesce(h);
    if (h->stop_requested) do_stop(h);
    else if (!h->stopped) pump(h);
}

void capmoe_http_set_timer(capmoe_http *h, double seconds, void (*cb)(void *arg), void *arg) {
    if (h->stopped) return;
    uv_timer_stop(&h->user_timer);
    h->timer_cb = NULL;
    if (seconds < 0 || !cb) return;
    h->timer_cb = cb;
    h->timer_arg = arg;
    uv_timer_start(&h->user_timer, user_timer_cb, (uint64_t)(seconds * 1000.0 + 0.5), 0);
}

void capmoe_http_wake(capmoe_http *h) { uv_async_send(&h->async); }

void capmoe_http_quiesce(capmoe_http *h) {
    h->quiesce_requested = 1;
    if (!h->in_mhd) do_quiesce(h);
    else uv_async_send(&h->async);
}

void capmoe_http_stop(capmoe_http *h) {
    h->stop_requested = 1;
    uv_async_send(&h->async); /* carried out from the loop, outside MHD callbacks */
}

int capmoe_http_in_flight(const capmoe_http *h) { return h->in_flight; }
int capmoe_http_port(const capmoe_http *h) { return h->port; }

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    fputs("capmoe-server: libmicrohttpd: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int capmoe_http_new(capmoe_http **out, const capmoe_http_opts *opts,
                    const capmoe_http_handlers *handlers, capmoe_error *err) {
    *out = NULL;
    capmoe_http *h = calloc(1, sizeof *h);
    if (!h) return capmoe_set_error(err, "http: out of memory");
    h->opts = *opts;
    h->hd = *handlers;
    const char *host = opts->host && opts->host[0] ? opts->host : "127.0.0.1";

    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", opts->port);
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai != 0 || !ai) {
        free(h);
        return capmoe_set_error(err, "host: cannot resolve '%s': %s", host, gai_strerror(gai));
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    errno = 0;
    h->d = MHD_start_daemon(
        flags, (uint16_t)opts->port, NULL, NULL, access_cb, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h, MHD_OPTION_NOTIFY_CONNECTION,
        connection_cb, h, MHD_OPTION_CONNECTION_TIMEOUT, opts->connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, opts->max_connections ? opts->max_connections : 512u,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, opts->max_connections_per_ip, MHD_OPTION_END);
    int e = errno;
    freeaddrinfo(ai);
    if (!h->d) {
        free(h);
        return capmoe_set_error(err, "cannot listen on %s:%d%s%s", host, opts->port,
                                e ? ": " : "", e ? strerror(e) : "");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : opts->port;
    di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        MHD_stop_daemon(h->d);
        free(h);
        return capmoe_set_error(err, "http: libmicrohttpd has no epoll fd");
    }
    int efd = di->epoll_fd;

    if (uv_loop_init(&h->loop) != 0) {
        MHD_stop_daemon(h->d);
        free(h);
        return capmoe_set_error(err, "http: uv_loop_init failed");
    }
    uv_poll_init(&h->loop, &h->poll, efd);
    uv_timer_init(&h->loop, &h->mhd_timer);
    uv_timer_init(&h->loop, &h->watch);
    uv_timer_init(&h->loop, &h->user_timer);
    uv_async_init(&h->loop, &h->async, async_cb);
    uv_signal_init(&h->loop, &h->sigterm);
    uv_signal_init(&h->loop, &h->sigint);
    h->poll.data = h->mhd_timer.data = h->watch.data = h->user_timer.data = h;
    h->async.data = h->sigterm.data = h->sigint.data = h;
    uv_poll_start(&h->poll, UV_READABLE, poll_cb);
    uv_signal_start(&h->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&h->sigint, signal_cb, SIGINT);
    uv_timer_start(&h->mhd_timer, mhd_timer_cb, 0, 0); /* first MHD_run */
    h->loop_ready = 1;
    *out = h;
    return 0;
}

int capmoe_http_run(capmoe_http *h) {
    uv_run(&h->loop, UV_RUN_DEFAULT);
    if (!h->stopped) do_stop(h); /* the loop ran dry without a stop: clean up */
    while (uv_loop_close(&h->loop) == UV_EBUSY) uv_run(&h->loop, UV_RUN_ONCE);
    h->loop_ready = 0;
    return 0;
}

void capmoe_http_free(capmoe_http *h) {
    if (!h) return;
    if (h->loop_ready) {
        do_stop(h);
        while (uv_loop_close(&h->loop) == UV_EBUSY) uv_run(&h->loop, UV_RUN_ONCE);
    }
    if (h->d) MHD_stop_daemon(h->d);
    free(h);
}

/* ---- --healthcheck client ------------------------------------------------------------ */

static int wait_fd(int fd, short ev, double deadline) {
    for (;;) {
        double left = deadline - capmoe_now();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = ev};
        int n = poll(&p, 1, (int)(left * 1000) + 1);
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

int capmoe_http_probe(const char *host, int port, const char *path, double timeout_s,
                      capmoe_error *err) {
    if (!host || !host[0] || strcmp(host, "0.0.0.0") == 0) host = "127.0.0.1";
    else if (strcmp(host, "::") == 0) host = "::1";
    double deadline = capmoe_now() + timeout_s;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai != 0 || !ai) return capmoe_set_error(err, "cannot resolve %s: %s", host, gai_strerror(gai));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return capmoe_set_error(err, "socket: %s", strerror(errno));
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return capmoe_set_error(err, "connect to %s:%d: %s", host, port, strerror(e));
    }
    if (rc != 0) {
        if (wait_fd(fd, POLLOUT, deadline) <= 0) {
            close(fd);
            return capmoe_set_error(err, "connect to %s:%d: timed out", host, port);
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            close(fd);
            return capmoe_set_error(err, "connect to %s:%d: %s", host, port, strerror(soerr));
        }
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                     path, host, port);
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && (errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLOUT, deadline) > 0)
            continue;
        close(fd);
        return capmoe_set_error(err, "send to %s:%d failed", host, port);
    }
    char buf[64];
    size_t got = 0;
    while (got < 12) {
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r > 0) { got += (size_t)r; continue; }
        if (r == 0) break;
        if ((errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLIN, deadline) > 0) continue;
        break;
    }
    close(fd);
    buf[got] = '\0';
    int status = 0;
    if (got < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || sscanf(buf + 9, "%3d", &status) != 1)
        return capmoe_set_error(err, "no HTTP answer from %s:%d", host, port);
    return status;
}
