/* api_json.c - reading typed, range-checked fields from request JSON
 * (api_json.h); every failure is an OpenAI-shaped 400 naming the field. */
#include "api_json.h"
#include "capmoe/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cJSON over a length-delimited buffer, refusing trailing non-space bytes
 * (cJSON_ParseWithLengthOpts alone accepts "{...} garbage") and strings that
 * hold an escaped NUL (cJSON would silently cut them at the NUL). */
cJSON *capmoe_api_json_parse(const char *body, size_t len, capmoe_api_error *e) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    for (const char *p = end; root && p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            root = NULL;
            end = p;
        }
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        E400(e, NULL, "malformed JSON near byte %zu (or nested deeper than %d levels)", at,
             CJSON_NESTING_LIMIT);
        return NULL;
    }
    char where[256];
    if (capmoe_json_find_nul(body, len, where, sizeof where)) {
        cJSON_Delete(root);
        E400(e, where,
             "%s: a string holds a NUL character (\\u0000), which is not accepted "
             "(it would cut the text short)",
             where);
        return NULL;
    }
    return root;
}

/* The field, or NULL when absent or JSON null. */
const cJSON *capmoe_api_field(const cJSON *o, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

int capmoe_api_is_integer(const cJSON *f) {
    return cJSON_IsNumber(f) && isfinite(f->valuedouble) &&
           floor(f->valuedouble) == f->valuedouble;
}

/* Optional integer in [lo, hi]; *out unchanged when absent. */
int capmoe_api_get_int(const cJSON *o, const char *name, double lo, double hi, int *out,
                   capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(o, name);
    if (!f) return 0;
    if (!capmoe_api_is_integer(f)) return E400(e, name, "'%s' must be an integer", name);
    if (f->valuedouble < lo || f->valuedouble > hi)
        return E400(e, name, "'%s' must be between %.0f and %.0f, got %.17g", name, lo, hi,
                    f->valuedouble);
    *out = (int)f->valuedouble;
    return 0;
}

/* Optional number in [lo, hi] (lo_open: lo excluded). */
int capmoe_api_get_num(const cJSON *o, const char *name, double lo, int lo_open, double hi,
                   float *out, capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(o, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble))
        return E400(e, name, "'%s' must be a number", name);
    double d = f->valuedouble;
    /* the bounds hold for the float stored too (1e-300 is 0 as a float) */
    float fv = (float)d;
    if ((lo_open ? d <= lo || fv <= lo : d < lo) || d > hi)
        return E400(e, name, "'%s' must be %s %g and <= %g, got %.17g", name, lo_open ? ">" : ">=",
                    lo, hi, d);
    *out = fv;
    return 0;
}

int capmoe_api_get_bool(const cJSON *o, const char *name, int *out, capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(o, name);
    if (!f) return 0;
    if (!cJSON_IsBool(f)) return E400(e, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(f) ? 1 : 0;
    return 0;
}

int capmoe_api_get_str(const cJSON *o, const char *name, char **out, capmoe_api_error *e) {
    const cJSON *f = capmoe_api_field(o, name);
    if (!f) return 0;
    if (!cJSON_IsString(f)) return E400(e, name, "'%s' must be a string", name);
    free(*out);
    *out = strdup(f->valuestring);
    if (!*out) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    return 0;
}

/* An array of token ids. */
int capmoe_api_parse_ids(const cJSON *arr, const char *param, const capmoe_api_limits *lim,
                     int32_t **ids, int *n_ids, capmoe_api_error *e) {
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return E400(e, param, "'%s' must not be an empty list of token ids", param);
    int32_t *v = malloc(sizeof *v * (size_t)n);
    if (!v) return capmoe_api_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        double hi = lim && lim->vocab > 0 ? lim->vocab - 1 : 2147483647.0;
        if (!capmoe_api_is_integer(it) || it->valuedouble < 0 || it->valuedouble > hi) {
            free(v);
            if (!capmoe_api_is_integer(it))
                return E400(e, param, "'%s' token ids must be integers", param);
            return E400(e, param, "'%s': token id %.17g is out of range 0..%.0f", param,
                        it->valuedouble, hi);
        }
        v[i] = (int32_t)it->valuedouble;
    }
    *ids = v;
    *n_ids = n;
    return 0;
}

