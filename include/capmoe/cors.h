/* cors.h - Cross-Origin Resource Sharing for browser clients of the API.
 *
 * The cors_origins option lists the origins whose pages may call the server
 * ("https://app.example, http://localhost:5173"), or "*" for any. For a
 * request whose Origin header is allowed, every response carries
 *   Access-Control-Allow-Origin: <that origin> (or * when "*" is configured)
 *   Access-Control-Expose-Headers: X-Request-Id, Retry-After
 *   Vary: Origin
 * and a preflight (OPTIONS with Origin and Access-Control-Request-Method) is
 * answered 204 with the allowed methods and headers and a max age. A
 * preflight from an origin that is not allowed is answered 403. Requests
 * without an Origin header are unaffected. */
#ifndef CAPMOE_CORS_H
#define CAPMOE_CORS_H

#include "capmoe/common.h"

typedef struct capmoe_cors capmoe_cors;

#define CAPMOE_CORS_ALLOW_METHODS "GET, HEAD, POST, OPTIONS"
#define CAPMOE_CORS_ALLOW_HEADERS "Authorization, Content-Type, X-Request-Id"
#define CAPMOE_CORS_EXPOSE_HEADERS "X-Request-Id, Retry-After"
#define CAPMOE_CORS_MAX_AGE "600"

/* Parses the origin list; NULL or "" gives a policy that allows nothing
 * (no CORS headers at all). Errors name the malformed item. */
int capmoe_cors_new(capmoe_cors **out, const char *origins, capmoe_error *err);
void capmoe_cors_free(capmoe_cors *c);
/* 1 when any origin is configured. */
int capmoe_cors_enabled(const capmoe_cors *c);
/* The Access-Control-Allow-Origin value for a request's Origin header, or
 * NULL when the origin is not allowed (or c / origin is NULL). Borrowed from
 * c or origin. */
const char *capmoe_cors_allow(const capmoe_cors *c, const char *origin);

#endif
