/* api_error.h - OpenAI-shaped errors of the HTTP API:
 * {"error":{"message","type","param","code"}}. */
#ifndef CAPMOE_API_ERROR_H
#define CAPMOE_API_ERROR_H

#include <stddef.h>

typedef struct capmoe_api_error {
    int status;            /* HTTP status */
    const char *type;      /* static: "invalid_request_error", "server_error", ... */
    const char *code;      /* static, NULL = JSON null */
    char param[64];        /* "" = JSON null */
    char message[768];
} capmoe_api_error;

/* Fills e and returns -1. */
int capmoe_api_fail(capmoe_api_error *e, int status, const char *type, const char *code,
                    const char *param, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;
/* {"error":{"message","type","param","code"}}; malloc'd, *len optional. */
char *capmoe_api_error_json(const capmoe_api_error *e, size_t *len);

#endif
