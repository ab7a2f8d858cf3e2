/* cors.c - the allowed-origin list of CORS (include/capmoe/cors.h). */
#include "capmoe/cors.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CORS_MAX_ORIGINS 64

struct capmoe_cors {
    int any;                        /* "*" */
    int n;
    char *origin[CORS_MAX_ORIGINS]; /* normalised: lower-case scheme://host[:port] */
};

void capmoe_cors_free(capmoe_cors *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) free(c->origin[i]);
    free(c);
}

/* Checks "scheme://host[:port]" (no path, query, user info or trailing
 * slash) and returns it lower-cased, malloc'd; NULL with err set otherwise. */
static char *normalise(const char *s, size_t n, capmoe_error *err) {
    char item[300];
    if (n >= sizeof item) {
        capmoe_set_error(err, "origin '%.40s...' is too long", s);
        return NULL;
    }
    memcpy(item, s, n);
    item[n] = '\0';
    const char *sep = strstr(item, "://");
    size_t sl = sep ? (size_t)(sep - item) : 0;
    int scheme_ok = sep && ((sl == 4 && strncasecmp(item, "http", 4) == 0) ||
                            (sl == 5 && strncasecmp(item, "https", 5) == 0));
    if (!scheme_ok) {
        capmoe_set_error(err, "origin '%s' must start with http:// or https:// (or be *)", item);
        return NULL;
    }
    const char *host = sep + 3;
    if (!*host) {
        capmoe_set_error(err, "origin '%s' has no host", item);
        return NULL;
    }
    int in_brackets = 0;
    for (const char *p = host; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '[') in_brackets = 1;
        else if (c == ']') in_brackets = 0;
        else if (c == '/' || c == '?' || c == '#' || c == '@' || isspace(c) || c < 0x21 || c > 0x7e) {
            capmoe_set_error(err,
                             "origin '%s' must be scheme://host[:port] only (no path, slash, "
                             "query or user)",
                             item);
            return NULL;
        } else if (c == ':' && !in_brackets) {
            const char *port = p + 1;
            if (!*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
                atoi(port) < 1 || atoi(port) > 65535) {
                capmoe_set_error(err, "origin '%s' has an invalid port", item);
                return NULL;
            }
            break;
        }
    }
    char *out = strdup(item);
    if (!out) {
        capmoe_set_error(err, "out of memory");
        return NULL;
    }
    for (char *p = out; *p; p++) *p = (char)tolower((unsigned char)*p);
    return out;
}

int capmoe_cors_new(capmoe_cors **out, const char *origins, capmoe_error *err) {
    *out = NULL;
    capmoe_cors *c = calloc(1, sizeof *c);
    if (!c) return capmoe_set_error(err, "out of memory");
    const char *p = origins ? origins : "";
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *end = p;
        while (*end && *end != ',') end++;
        size_t n = (size_t)(end - p);
        while (n > 0 && isspace((unsigned char)p[n - 1])) n--;
        if (n == 1 && p[0] == '*') {
            c->any = 1;
        } else {
            if (c->n == CORS_MAX_ORIGINS) {
                capmoe_cors_free(c);
                return capmoe_set_error(err, "at most %d origins", CORS_MAX_ORIGINS);
            }
            char *o = normalise(p, n, err);
            if (!o) {
                capmoe_cors_free(c);
                return -1;
            }
            c->origin[c->n++] = o;
        }
        p = end;
    }
    *out = c;
    return 0;
}

int capmoe_cors_enabled(const capmoe_cors *c) { return c && (c->any || c->n > 0); }

const char *capmoe_cors_allow(const capmoe_cors *c, const char *origin) {
    if (!c || !origin || !*origin) return NULL;
    if (c->any) return "*";
    for (int i = 0; i < c->n; i++)
        if (strcasecmp(c->origin[i], origin) == 0) return origin;
    return NULL;
}
