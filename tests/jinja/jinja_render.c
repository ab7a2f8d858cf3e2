/* jinja_render.c - renders a batch of (template, variables) cases with
 * capmoe's Jinja interpreter (core/jinja.c) and writes one JSON object of
 * results: {"ID": {"out": "..."} or {"error": "..."}}. The same cases go
 * through tests/jinja/render_ref.py (Python's jinja2, the reference) and
 * tests/jinja/render_hfjs.mjs (@huggingface/jinja); tests/jinja/compare.py
 * compares the three.
 *
 *   jinja_render CASES.json OUT.json
 *
 * CASES.json: {"templates": {"NAME": "source", ...},
 *              "cases": [{"id": "...", "template": "NAME", "vars": {...}}, ...]}
 * strftime_now renders the fixed time "now" of CASES.json (seconds, UTC),
 * as the Python side does. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/jinja.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: jinja_render CASES.json OUT.json\n");
        return 2;
    }
    capmoe_error err;
    size_t len;
    char *text = capmoe_read_file(argv[1], &len, &err);
    if (!text) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) {
        fprintf(stderr, "%s: malformed JSON\n", argv[1]);
        return 2;
    }
    const cJSON *tmpls = cJSON_GetObjectItem(root, "templates");
    const cJSON *now = cJSON_GetObjectItem(root, "now");
    cJSON *out = cJSON_CreateObject();
    int n_tmpl = cJSON_GetArraySize(tmpls);
    capmoe_jinja **compiled = calloc((size_t)n_tmpl + 1, sizeof *compiled);
    char **compile_err = calloc((size_t)n_tmpl + 1, sizeof *compile_err);
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tmpls) {
        if (capmoe_jinja_compile(&compiled[i], t->valuestring, strlen(t->valuestring), t->string, &err) != 0)
            compile_err[i] = strdup(err.msg);
        i++;
    }
    capmoe_jinja_opts opts = {NULL, cJSON_IsNumber(now) ? (long long)now->valuedouble : 0};
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        int k = 0, found = -1;
        cJSON_ArrayForEach(t, tmpls) {
            if (!strcmp(t->string, tname)) found = k;
            k++;
        }
        cJSON *r = cJSON_CreateObject();
        if (found < 0) {
            cJSON_AddStringToObject(r, "error", "no such template");
        } else if (!compiled[found]) {
            cJSON_AddStringToObject(r, "error", compile_err[found]);
            cJSON_AddTrueToObject(r, "compile");
        } else {
            char *vars = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "vars"));
            const cJSON *vt = cJSON_GetObjectItem(c, "vars_text"); /* exact JSON text (floats) */
            char *o = NULL;
            if (capmoe_jinja_render(compiled[found], cJSON_IsString(vt) ? vt->valuestring : vars, &opts, &o, NULL,
                                    &err) == 0)
                cJSON_AddStringToObject(r, "out", o);
            else
                cJSON_AddStringToObject(r, "error", err.msg);
            free(o);
            free(vars);
        }
        cJSON_AddItemToObject(out, id, r);
    }
    char *s = cJSON_Print(out);
    FILE *f = fopen(argv[2], "wb");
    if (!f || fputs(s, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "%s: cannot write\n", argv[2]);
        return 2;
    }
    free(s);
    for (int j = 0; j < n_tmpl; j++) {
        capmoe_jinja_free(compiled[j]);
        free(compile_err[j]);
    }
    free(compiled);
    free(compile_err);
    cJSON_Delete(out);
    cJSON_Delete(root);
    return 0;
}
