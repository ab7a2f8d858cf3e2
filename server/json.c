/* json.c - finds strings that hold an escaped NUL in raw JSON text (json.h). */
#include "capmoe/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct level {
    int is_array;
    long index;          /* arrays: index of the current element */
    const char *key;     /* objects: raw (escaped) text of the current key */
    size_t key_len;
    int want_key;        /* objects: the next string is a key */
} level;

/* Scans one string starting after its opening quote; returns the position of
 * the closing quote and sets *nul when it holds \u0000. */
static size_t scan_string(const char *t, size_t len, size_t i, int *nul) {
    *nul = 0;
    while (i < len && t[i] != '"') {
        if (t[i] == '\\' && i + 1 < len) {
            if (t[i + 1] == 'u' && i + 5 < len && memcmp(t + i + 2, "0000", 4) == 0) *nul = 1;
            i += 2;
            continue;
        }
        i++;
    }
    return i;
}

static void append(char *path, size_t cap, size_t *at, const char *fmt, const char *s, size_t n,
                   long idx) {
    if (*at >= cap) return;
    int w = s ? snprintf(path + *at, cap - *at, fmt, (int)n, s)
              : snprintf(path + *at, cap - *at, fmt, idx);
    if (w > 0) *at += (size_t)w;
    if (*at >= cap) *at = cap - 1;
}

/* The path of levels [0, depth) into path. */
static void write_path(const level *lv, int depth, char *path, size_t cap) {
    size_t at = 0;
    path[0] = '\0';
    for (int d = 0; d < depth; d++) {
        if (lv[d].is_array) append(path, cap, &at, "[%ld]", NULL, 0, lv[d].index);
        else append(path, cap, &at, at ? ".%.*s" : "%.*s", lv[d].key, lv[d].key_len, 0);
    }
}

int capmoe_json_find_nul(const char *t, size_t len, char *path, size_t cap) {
    if (cap) path[0] = '\0';
    /* cheap test first: no escape, nothing to do */
    int any = 0;
    for (size_t i = 0; i + 6 <= len; i++)
        if (t[i] == '\\' && t[i + 1] == 'u' && memcmp(t + i + 2, "0000", 4) == 0) {
            any = 1;
            break;
        }
    if (!any) return 0;
    size_t cap_lv = 64;
    level *lv = malloc(cap_lv * sizeof *lv);
    if (!lv) { /* no room to name it: still report it */
        if (cap) snprintf(path, cap, "a string");
        return 1;
    }
    int depth = 0, found = 0;
    for (size_t i = 0; i < len && !found; i++) {
        char c = t[i];
        if (c == '{' || c == '[') {
            if ((size_t)depth == cap_lv) {
                level *n = realloc(lv, 2 * cap_lv * sizeof *lv);
                if (!n) { /* out of memory: refuse rather than let a NUL through */
                    if (cap) snprintf(path, cap, "a string");
                    found = 1;
                    break;
                }
                lv = n;
                cap_lv *= 2;
            }
            lv[depth] = (level){.is_array = c == '[', .want_key = c == '{'};
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth > 0) depth--;
        } else if (c == ',') {
            if (depth > 0) {
                if (lv[depth - 1].is_array) lv[depth - 1].index++;
                else lv[depth - 1].want_key = 1;
            }
        } else if (c == '"') {
            int nul;
            size_t end = scan_string(t, len, i + 1, &nul);
            if (depth > 0 && !lv[depth - 1].is_array && lv[depth - 1].want_key) {
                level *o = &lv[depth - 1];
                o->key = t + i + 1;
                o->key_len = end - (i + 1);
                o->want_key = 0;
                if (nul && cap) {
                    char parent[256];
                    write_path(lv, depth - 1, parent, sizeof parent);
                    snprintf(path, cap, "key '%.*s' of %s", (int)(o->key_len > 64 ? 64 : o->key_len),
                             o->key, parent[0] ? parent : "the request body");
                }
            } else if (nul && cap) {
                write_path(lv, depth, path, cap);
                if (!path[0]) snprintf(path, cap, "the request body");
            }
            found = nul;
            i = end;
        }
    }
    free(lv);
    return found;
}
