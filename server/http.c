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

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "capmoe/cors.h"
#include "capmoe/log.h"

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
    /* access log and tracing */
    char id[CAPMOE_HTTP_REQ_ID_MAX + 1]; /* X-Request-Id: the client's, or generated */
    char remote[64];               /* client address */
    char *cors_allow;              /* Access-Control-Allow-Origin value, NULL: none */
    double t_start;                /* capmoe_now() when the request header was complete */
    int status;                    /* status of the response queued (0: none yet) */
    long long bytes;               /* body bytes handed to libmicrohttpd */
    void *note;                    /* the application's access-log note */
    void (*note_free)(void *);
};

struct capmoe_http {
    uv_loop_t loop;
    uv_poll_t poll;        /* MHD's epoll fd */
    uv_timer_t mhd_timer;  /* MHD_get_timeout */
    uv_timer_t watch;      /* disconnect watch of suspended connections */
    uv_timer_t user_timer; /* capmoe_http_set_timer */
    uv_async_t async;      /* capmoe_http_wake + deferred stop / quiesce */
    uv_signal_t sigterm, sigint, sighup;
    struct MHD_Daemon *d;
    capmoe_http_opts opts;
    capmoe_http_handlers hd;
    int port;
    int quiesced;
    int draining;          /* capmoe_http_drain: every response says Connection: close */
    const capmoe_cors *cors; /* borrowed; capmoe_http_set_cors */
    capmoe_log *log;       /* borrowed */
    int quiesce_requested, stop_requested, stopped;
    int resume_pending;    /* a resume happened since the last MHD_run */
    int in_mhd;            /* inside MHD_run (callbacks must not re-enter MHD) */
    int in_flight;
    int loop_ready;        /* loop + handles initialised */
    capmoe_http_req *susp_head;
    unsigned long long id_fallback;
    void (*timer_cb)(void *);
    void *timer_arg;
};

static void pump(capmoe_http *h);
static void watch_cb(uv_timer_t *t);

/* ---- requests --------------------------------------------------------------- */

static void req_unref(capmoe_http_req *r) {
    if (--r->refs > 0) return;
    if (r->pending) MHD_destroy_response(r->pending);
    if (r->note && r->note_free) r->note_free(r->note);
    free(r->cors_allow);
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

/* The headers every response of r carries: the application's, the request
 * id, CORS for an allowed Origin, Connection: close while draining. */
static int add_headers(capmoe_http_req *r, struct MHD_Response *resp, const char *content_type,
                       const char *const *headers) {
    if (content_type &&
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES)
        return -1;
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        if (MHD_add_response_header(resp, headers[i], headers[i + 1]) != MHD_YES) return -1;
    if (r->id[0] && MHD_add_response_header(resp, "X-Request-Id", r->id) != MHD_YES) return -1;
    if (r->cors_allow) {
        if (MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_allow) != MHD_YES ||
            MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                    CAPMOE_CORS_EXPOSE_HEADERS) != MHD_YES ||
            MHD_add_response_header(resp, "Vary", "Origin") != MHD_YES)
            return -1;
    }
    if (r->h->quiesced || r->h->draining)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return 0;
}

/* Queues a complete response built by this layer (413, 500, preflight). */
static int queue_simple(capmoe_http_req *r, unsigned status, const char *content_type,
                        const char *body, const char *const *headers) {
    size_t n = body ? strlen(body) : 0;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    if (add_headers(r, resp, content_type, headers) != 0) {
        MHD_destroy_response(resp);
        return -1;
    }
    enum MHD_Result rc = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    if (rc != MHD_YES) return -1;
    r->status = (int)status;
    r->bytes += (long long)n;
    return 0;
}

/* An OpenAI-shaped error body of this layer, with the request id. */
static int queue_error(capmoe_http_req *r, unsigned status, const char *type, const char *code,
                       const char *message) {
    char body[512];
    char codebuf[64];
    if (code) snprintf(codebuf, sizeof codebuf, "\"%s\"", code);
    else snprintf(codebuf, sizeof codebuf, "null");
    snprintf(body, sizeof body,
             "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":%s},"
             "\"request_id\":\"%s\"}",
             message, type, codebuf, r->id);
    return queue_simple(r, status, "application/json", body, NULL);
}

static int queue_413(capmoe_http_req *r) {
    return queue_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", "request_too_large",
                       "request body too large");
}

/* ---- request ids ------------------------------------------------------------- */

/* A client's X-Request-Id is kept when it is 1..CAPMOE_HTTP_REQ_ID_MAX
 * characters of [A-Za-z0-9._:/+=@-] (safe in headers, logs and JSON). */
static int id_ok(const char *s) {
    if (!s) return 0;
    size_t n = strlen(s);
    if (n == 0 || n > CAPMOE_HTTP_REQ_ID_MAX) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("._:/+=@-", *p)))
            return 0;
    return 1;
}

/* 128 random bits as 32 hex digits (getrandom; a counter if that fails). */
static void new_id(capmoe_http *h, char *out) {
    unsigned char b[16];
    if (getrandom(b, sizeof b, GRND_NONBLOCK) != (ssize_t)sizeof b) {
        unsigned long long c = ++h->id_fallback;
        double t = capmoe_now();
        memcpy(b, &c, 8);
        memcpy(b + 8, &t, 8);
    }
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static void client_address(struct MHD_Connection *conn, char *out, size_t n) {
    snprintf(out, n, "-");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)n);
}

/* ---- CORS preflight ------------------------------------------------------------ */

/* OPTIONS with Origin and Access-Control-Request-Method, when CORS is on:
 * answered here (204 for an allowed origin, 403 otherwise). Returns 1 when
 * it queued an answer. */
static int preflight(capmoe_http_req *r, const char *origin) {
    capmoe_http *h = r->h;
    if (strcmp(r->method, "OPTIONS") != 0 || !origin || !capmoe_cors_enabled(h->cors)) return 0;
    if (!MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Access-Control-Request-Method"))
        return 0;
    r->state = RQ_RESPONDED;
    if (!r->cors_allow)
        return queue_error(r, MHD_HTTP_FORBIDDEN, "invalid_request_error", "origin_not_allowed",
                           "origin not allowed by cors_origins") == 0
                   ? 1
                   : -1;
    /* The headers the page asks for are allowed when they are plain tokens
     * (the OpenAI SDKs send several X-Stainless-* headers). */
    const char *want = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                   "Access-Control-Request-Headers");
    const char *allow_headers = CAPMOE_CORS_ALLOW_HEADERS;
    if (want && strlen(want) < 1024 &&
        strspn(want, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ") ==
            strlen(want))
        allow_headers = want;
    const char *hdrs[] = {"Access-Control-Allow-Methods", CAPMOE_CORS_ALLOW_METHODS,
                          "Access-Control-Allow-Headers", allow_headers,
                          "Access-Control-Max-Age", CAPMOE_CORS_MAX_AGE, NULL};
    return queue_simple(r, MHD_HTTP_NO_CONTENT, NULL, NULL, hdrs) == 0 ? 1 : -1;
}

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
        r->t_start = capmoe_now();
        const char *cid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        if (id_ok(cid)) snprintf(r->id, sizeof r->id, "%s", cid);
        else new_id(h, r->id);
        client_address(conn, r->remote, sizeof r->remote);
        const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
        const char *allow = capmoe_cors_allow(h->cors, origin);
        if (allow && !(r->cors_allow = strdup(allow))) return MHD_NO;
        int pf = preflight(r, origin);
        if (pf != 0) return pf > 0 ? MHD_YES : MHD_NO;
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
                return queue_413(r) == 0 ? MHD_YES : MHD_NO;
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
            return queue_413(r) == 0 ? MHD_YES : MHD_NO;
        }
        r->state = RQ_HANDLING;
        r->reached = 1;
        h->in_flight++;
        h->hd.on_request(h->hd.user, r);
        if (r->state == RQ_HANDLING) { /* the handler gave no answer: a bug, but answer */
            r->state = RQ_RESPONDED;
            return queue_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL,
                               "the server did not answer the request") == 0
                       ? MHD_YES
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
            if (rc == MHD_YES) r->status = (int)r->pending_status;
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
    if (h->hd.on_access) h->hd.on_access(h->hd.user, r);
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
        r->bytes += (long long)n;
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
const char *capmoe_http_req_id(const capmoe_http_req *r) { return r->id; }
const char *capmoe_http_req_remote(const capmoe_http_req *r) { return r->remote; }
int capmoe_http_req_status(const capmoe_http_req *r) { return r->status; }
long long capmoe_http_req_bytes(const capmoe_http_req *r) { return r->bytes; }
double capmoe_http_req_duration(const capmoe_http_req *r) {
    return r->t_start > 0 ? capmoe_now() - r->t_start : 0;
}
void capmoe_http_req_set_note(capmoe_http_req *r, void *note, void (*free_fn)(void *)) {
    if (r->note && r->note_free) r->note_free(r->note);
    r->note = note;
    r->note_free = free_fn;
}
void *capmoe_http_req_note(const capmoe_http_req *r) { return r->note; }

int capmoe_http_respond(capmoe_http_req *r, int status, const char *content_type,
                        const char *body, size_t len, const char *const *headers) {
    if (!r->conn || (r->state != RQ_HANDLING && r->state != RQ_DEFERRED) || r->pending) return -1;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    if (add_headers(r, resp, content_type, headers) != 0) {
        MHD_destroy_response(resp);
        return -1;
    }
    r->bytes += (long long)len;
    if (r->state == RQ_HANDLING) {
        enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
        MHD_destroy_response(resp);
        r->state = RQ_RESPONDED;
        if (rc == MHD_YES) r->status = status;
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
    if (add_headers(r, resp, content_type, headers) != 0) {
        MHD_destroy_response(resp);
        return -1;
    }
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->state = RQ_STREAMING;
    if (rc == MHD_YES) r->status = status;
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
    close_handle((uv_handle_t *)&h->sighup);
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

void capmoe_http_drain(capmoe_http *h) { h->draining = 1; }

void capmoe_http_set_cors(capmoe_http *h, const capmoe_cors *cors) { h->cors = cors; }

void capmoe_http_stop(capmoe_http *h) {
    h->stop_requested = 1;
    uv_async_send(&h->async); /* carried out from the loop, outside MHD callbacks */
}

int capmoe_http_in_flight(const capmoe_http *h) { return h->in_flight; }
int capmoe_http_port(const capmoe_http *h) { return h->port; }

/* libmicrohttpd's own messages (socket errors, clients that went away in
 * the middle of a response, TLS handshake failures) become warn records. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    capmoe_http *h = cls;
    capmoe_log_field f = CAPMOE_LOG_STR("source", "libmicrohttpd");
    capmoe_log_vfields(h->log, CAPMOE_LOG_WARN, &f, 1, fmt, ap);
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
    int tls = opts->tls_cert_pem && opts->tls_key_pem;
    if (tls) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            freeaddrinfo(ai);
            free(h);
            return capmoe_set_error(err, "tls_cert: this libmicrohttpd was built without TLS");
        }
        flags |= MHD_USE_TLS;
    }
    h->log = opts->log;
    h->cors = opts->cors;
    struct MHD_OptionItem mo[16];
    int n = 0;
    /* MHD_OPTION_ARRAY: a two-pointer option passes its first one as intptr_t */
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, h};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, ai->ai_addr};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed_cb, h};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)connection_cb, h};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                      (intptr_t)opts->connection_timeout_s, NULL};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                      (intptr_t)(opts->max_connections ? opts->max_connections
                                                                       : 512u),
                                      NULL};
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                      (intptr_t)opts->max_connections_per_ip, NULL};
    if (tls) {
        mo[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                          (void *)opts->tls_cert_pem};
        mo[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                          (void *)opts->tls_key_pem};
    }
    mo[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    errno = 0;
    h->d = MHD_start_daemon(flags, (uint16_t)opts->port, NULL, NULL, access_cb, h,
                            MHD_OPTION_ARRAY, mo, MHD_OPTION_END);
    int e = errno;
    freeaddrinfo(ai);
    if (!h->d) {
        free(h);
        if (tls && (e == 0 || e == EINVAL))
            return capmoe_set_error(err,
                                    "cannot listen on %s:%d with TLS: libmicrohttpd refused the "
                                    "certificate or key (tls_cert / tls_key must be PEM, the key "
                                    "unencrypted and matching the certificate)",
                                    host, opts->port);
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
    uv_signal_init(&h->loop, &h->sighup);
    h->poll.data = h->mhd_timer.data = h->watch.data = h->user_timer.data = h;
    h->async.data = h->sigterm.data = h->sigint.data = h->sighup.data = h;
    uv_poll_start(&h->poll, UV_READABLE, poll_cb);
    uv_signal_start(&h->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&h->sigint, signal_cb, SIGINT);
    uv_signal_start(&h->sighup, signal_cb, SIGHUP);
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

/* Sends req and reads the status line over a plain socket. */
static int probe_plain(int fd, const char *req, size_t n, double deadline, char *buf, size_t cap) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, req + off, n - off, MSG_NOSIGNAL);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && (errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLOUT, deadline) > 0)
            continue;
        return -1;
    }
    size_t got = 0;
    while (got < 12) {
        ssize_t r = recv(fd, buf + got, cap - 1 - got, 0);
        if (r > 0) { got += (size_t)r; continue; }
        if (r == 0) break;
        if ((errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLIN, deadline) > 0) continue;
        break;
    }
    return (int)got;
}

/* The same over TLS (GnuTLS). The probe checks that the daemon answers; it
 * connects to its own configured address, so the certificate is not verified. */
static int probe_tls(int fd, const char *req, size_t n, double deadline, char *buf, size_t cap,
                     capmoe_error *err) {
    gnutls_certificate_credentials_t cred = NULL;
    gnutls_session_t sess = NULL;
    int got = -1, rc;
    if (gnutls_certificate_allocate_credentials(&cred) < 0 || gnutls_init(&sess, GNUTLS_CLIENT) < 0 ||
        gnutls_set_default_priority(sess) < 0 ||
        gnutls_credentials_set(sess, GNUTLS_CRD_CERTIFICATE, cred) < 0) {
        capmoe_set_error(err, "TLS: cannot set up a GnuTLS session");
        goto out;
    }
    gnutls_transport_set_int(sess, fd);
    int ms = (int)((deadline - capmoe_now()) * 1000);
    gnutls_handshake_set_timeout(sess, (unsigned)(ms > 0 ? ms : 1));
    do {
        rc = gnutls_handshake(sess);
        if (rc == GNUTLS_E_AGAIN && wait_fd(fd, gnutls_record_get_direction(sess) ? POLLOUT : POLLIN,
                                            deadline) <= 0)
            break;
    } while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc < 0) {
        capmoe_set_error(err, "TLS handshake failed: %s", gnutls_strerror(rc));
        goto out;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = gnutls_record_send(sess, req + off, n - off);
        if (w > 0) off += (size_t)w;
        else if ((w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED) &&
                 wait_fd(fd, POLLOUT, deadline) > 0)
            continue;
        else {
            capmoe_set_error(err, "TLS send failed");
            goto out;
        }
    }
    got = 0;
    while (got < 12) {
        ssize_t r = gnutls_record_recv(sess, buf + got, cap - 1 - (size_t)got);
        if (r > 0) got += (int)r;
        else if ((r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) &&
                 wait_fd(fd, POLLIN, deadline) > 0)
            continue;
        else break;
    }
out:
    if (sess) gnutls_deinit(sess);
    if (cred) gnutls_certificate_free_credentials(cred);
    return got;
}

int capmoe_http_probe(const char *host, int port, const char *path, double timeout_s, int tls,
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
    char buf[64];
    int got = tls ? probe_tls(fd, req, (size_t)n, deadline, buf, sizeof buf, err)
                  : probe_plain(fd, req, (size_t)n, deadline, buf, sizeof buf);
    close(fd);
    if (got < 0) {
        if (!tls) capmoe_set_error(err, "send to %s:%d failed", host, port);
        return -1;
    }
    buf[got] = '\0';
    int status = 0;
    if (got < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || sscanf(buf + 9, "%3d", &status) != 1)
        return capmoe_set_error(err, "no HTTP answer from %s:%d", host, port);
    return status;
}
