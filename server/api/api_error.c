/* api_error.c - OpenAI-shaped error objects (api_error.h). */
#include "capmoe/api_error.h"
#include "api_internal.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int capmoe_api_fail(capmoe_api_error *e, int status, const char *type, const char *code,
                    const char *param, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

cJSON *capmoe_api_error_object(const capmoe_api_error *e) {
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "server_error");
    if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
    else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code);
    else cJSON_AddNullToObject(o, "code");
    return root;
}

char *capmoe_api_error_json(const capmoe_api_error *e, size_t *len) {
    cJSON *root = capmoe_api_error_object(e);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (s && len) *len = strlen(s);
    return s;
}

