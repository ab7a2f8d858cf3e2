/* http.h - libmicrohttpd driven by a libuv loop (../shared/docs/ecosystem-notes.md §1).
 *
 * One loop thread owns everything here: MHD runs in external epoll mode
 * (MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG),
 * its epoll fd watched by a uv_poll_t, MHD_get_timeout honoured with a
 * uv_timer_t (0 included), a uv_async_t wakes the loop from other threads
 * (capmoe_http_wake is the only thread-safe call), uv_signal_t catches
 * SIGTERM / SIGINT. SIGPIPE must be ignored by the program.
 *
 * A request reaches on_request once, when its headers and whole body are in
 * (bodies over max_body_bytes are answered 413 by this layer: from
 * Content-Length before reading, or while reading a chunked body). The
 * handler answers it with exactly one of
 *   capmoe_http_respond      a complete response, now;
 *   capmoe_http_defer        suspend the connection; answer later with
 *                            capmoe_http_respond (from any loop callback);
 *   capmoe_http_stream_start a streamed (chunked) response whose body is fed
 *                            with capmoe_http_stream_write / _end.
 * Suspended connections are watched for client disconnects (a peek on the
 * socket every 100 ms): a gone client is closed at once, and on_done reports
 * aborted = 1 so the application can cancel its work.
 *
 * on_done(req) is called exactly once per request that reached on_request
 * (response sent, client gone, or daemon shutdown); the request pointer is
 * invalid after it returns.
 *
 * Every request gets an id: the client's X-Request-Id when it is 1..128
 * characters of [A-Za-z0-9._:/+=@-], else 32 random hex digits. Every
 * response carries it in X-Request-Id, and this layer's own error bodies in
 * "request_id". on_access(req) is called once for every request whose
 * header arrived (after on_done, also for the 413s and CORS preflights this
 * layer answered itself), with status, bytes and duration readable, for
 * the access log.
 *
 * CORS (include/capmoe/cors.h): responses to an allowed Origin carry the
 * Access-Control-* headers; preflights are answered here.
 * TLS: with tls_cert_pem and tls_key_pem, the socket speaks HTTPS only
 * (libmicrohttpd with GnuTLS). */
#ifndef CAPMOE_HTTP_H
#define CAPMOE_HTTP_H

#include <stddef.h>

#include "capmoe/common.h"
#include "capmoe/cors.h"
#include "capmoe/log.h"

#define CAPMOE_HTTP_REQ_ID_MAX 128

typedef struct capmoe_http capmoe_http;
typedef struct capmoe_http_req capmoe_http_req;

typedef struct capmoe_http_handlers {
    void *user;
    void (*on_request)(void *user, capmoe_http_req *req);
    void (*on_done)(void *user, capmoe_http_req *req, int aborted);
    void (*on_wake)(void *user);               /* after capmoe_http_wake (coalesced) */
    void (*on_signal)(void *user, int signum); /* SIGTERM, SIGINT or SIGHUP */
    /* Optional: a request this layer answered itself without on_request
     * (413 body too large); path and status for metrics / logs. */
    void (*on_rejected)(void *user, const char *path, int status);
    /* Optional: every request is over (see above); req is valid during the call. */
    void (*on_access)(void *user, capmoe_http_req *req);
} capmoe_http_handlers;

typedef struct capmoe_http_opts {
    const char *host;              /* numeric address or name; wildcard ok */
    int port;                      /* 0 = any free port (see capmoe_http_port) */
    long long max_body_bytes;      /* 413 above */
    unsigned connection_timeout_s; /* MHD idle timeout; 0 = none */
    unsigned header_timeout_s;     /* a new connection's timeout until its first request
                                      header is complete; 0 = connection_timeout_s */
    unsigned max_connections;
    unsigned max_connections_per_ip; /* 0 = no per-address limit */
    const char *tls_cert_pem;      /* PEM text (not a path); both NULL: plain HTTP */
    const char *tls_key_pem;
    capmoe_log *log;               /* libmicrohttpd's messages; borrowed, NULL: dropped */
    const capmoe_cors *cors;       /* borrowed; NULL: no CORS (see capmoe_http_set_cors) */
} capmoe_http_opts;

/* Creates the loop, binds and listens (the socket is up when this returns). */
int capmoe_http_new(capmoe_http **out, const capmoe_http_opts *opts,
                    const capmoe_http_handlers *handlers, capmoe_error *err);
/* Runs the loop until capmoe_http_stop has closed everything. */
int capmoe_http_run(capmoe_http *h);
/* Frees what is left after capmoe_http_run returned. NULL ok. */
void capmoe_http_free(capmoe_http *h);
int capmoe_http_port(const capmoe_http *h);

/* Thread-safe: makes the loop call on_wake soon (coalesced). */
void capmoe_http_wake(capmoe_http *h);
/* Stops accepting connections (MHD_quiesce_daemon, listen fd closed);
 * connections already open are still served. Idempotent. */
void capmoe_http_quiesce(capmoe_http *h);
/* Draining: the socket stays open and every response from now on says
 * Connection: close (the application answers new requests 503). */
void capmoe_http_drain(capmoe_http *h);
/* Replaces the CORS policy (loop thread; c must live until replaced or the
 * server is freed). Requests already received keep their headers. */
void capmoe_http_set_cors(capmoe_http *h, const capmoe_cors *c);
/* Final shutdown: resumes and closes every suspended connection, closes the
 * poll handle, stops the daemon (remaining requests get on_done(aborted=1)),
 * closes the other handles; capmoe_http_run then returns. Idempotent. */
void capmoe_http_stop(capmoe_http *h);
/* Requests that reached on_request and have not had on_done yet. */
int capmoe_http_in_flight(const capmoe_http *h);
/* One-shot timer on the loop (one per server; re-arming replaces it).
 * seconds < 0 cancels it. */
void capmoe_http_set_timer(capmoe_http *h, double seconds, void (*cb)(void *arg), void *arg);

/* ---- the request (loop thread only) ---------------------------------------- */
const char *capmoe_http_req_method(const capmoe_http_req *r);
const char *capmoe_http_req_path(const capmoe_http_req *r);  /* without the query */
/* Header value (case-insensitive name), NULL when absent. Borrowed. */
const char *capmoe_http_req_header(const capmoe_http_req *r, const char *name);
/* The body (not NUL-terminated; may be NULL when empty). Borrowed. */
const char *capmoe_http_req_body(const capmoe_http_req *r, size_t *len);
void capmoe_http_req_set_user(capmoe_http_req *r, void *user);
void *capmoe_http_req_user(const capmoe_http_req *r);
/* 1 once the client is known to be gone (the request ends soon). */
int capmoe_http_req_aborted(const capmoe_http_req *r);
/* The request id (X-Request-Id); the client's address as text. Borrowed. */
const char *capmoe_http_req_id(const capmoe_http_req *r);
const char *capmoe_http_req_remote(const capmoe_http_req *r);
/* Status of the response queued (0: none yet), body bytes handed to
 * libmicrohttpd so far, seconds since the request header was complete. */
int capmoe_http_req_status(const capmoe_http_req *r);
long long capmoe_http_req_bytes(const capmoe_http_req *r);
double capmoe_http_req_duration(const capmoe_http_req *r);
/* A note of the application for the access log (owned by the request from
 * now on: free_fn(note) runs when the request is freed; a second note
 * replaces the first). */
void capmoe_http_req_set_note(capmoe_http_req *r, void *note, void (*free_fn)(void *));
void *capmoe_http_req_note(const capmoe_http_req *r);

/* Extra headers: NULL-terminated array of name, value pairs; may be NULL.
 * All functions copy what they are given. */
int capmoe_http_respond(capmoe_http_req *r, int status, const char *content_type,
                        const char *body, size_t len, const char *const *headers);
void capmoe_http_defer(capmoe_http_req *r);
int capmoe_http_stream_start(capmoe_http_req *r, int status, const char *content_type,
                             const char *const *headers);
int capmoe_http_stream_write(capmoe_http_req *r, const char *data, size_t len);
int capmoe_http_stream_end(capmoe_http_req *r);

/* --healthcheck client: GET http(s)://host:port/path, with a timeout (tls:
 * over GnuTLS, without verifying the certificate: the daemon probes its own
 * address). A wildcard host (0.0.0.0, ::, empty) probes the loopback.
 * Returns the HTTP status (> 0), or -1 with err set (connect / TLS /
 * timeout / garbage). */
int capmoe_http_probe(const char *host, int port, const char *path, double timeout_s, int tls,
                      capmoe_error *err);

#endif
