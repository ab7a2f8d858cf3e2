/* grammar.c - JSON-schema constrained decoding (grammar.h).
 *
 * The schema compiles to a tree of nodes; the recognizer is a stack of
 * frames, one per open value, each with a small phase machine. A token is
 * allowed when feeding its bytes to a copy of the state succeeds (the masks
 * over a vocabulary: grammar_mask.c). Literals
 * (enum / const values, true / false / null, declared object keys) are
 * matched against a bit set of candidates, so no backtracking is needed;
 * anyOf branches are told apart by their first byte. */
#include "capmoe/grammar.h"

#include "grammar_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH CAPMOE__GRAMMAR_MAX_DEPTH
#define MAX_CAND 64
#define MAX_DIGITS 15         /* mantissa digits: integers stay exact in a double */
#define MAX_EXP_DIGITS 2
#define ANY_DEPTH 6          /* nesting of free-form (json_object) values */

enum { G_ANY, G_OBJECT, G_ARRAY, G_STRING, G_NUMBER, G_INTEGER, G_LIT, G_ANYOF, G_CALLS };

typedef struct gnode {
    int kind;
    /* object: declared properties ("\"key\"" literals) or free keys */
    int free_keys;
    int n_props;
    char **keys;
    size_t *key_len;
    struct gnode **props;
    uint64_t required;
    /* array */
    struct gnode *items;
    int min_items, max_items;  /* max -1: none */
    /* string */
    int min_len, max_len;      /* max -1: none */
    /* literals (JSON texts) */
    int n_lits;
    char **lits;
    size_t *lit_len;
    /* anyOf */
    int n_alts;
    struct gnode **alts;
    /* calls: n_lits prefixes (lits), the argument schema of each (alts), the
     * suffix, min_items: several calls allowed */
    char *suffix;
    size_t suffix_len;
    struct gnode *next_alloc;  /* every node of a grammar, for freeing */
} gnode;

struct capmoe_grammar {
    gnode *root;
    gnode *nodes;              /* allocation list */
    gnode *any, *any_obj, *any_arr, *str, *num, *boolean, *null; /* free-form values */
};

/* ---- nodes -------------------------------------------------------------------------- */

static gnode *node_new(capmoe_grammar *g, int kind) {
    gnode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->max_items = -1;
    n->max_len = -1;
    n->next_alloc = g->nodes;
    g->nodes = n;
    return n;
}

static void node_free(gnode *n) {
    for (int i = 0; i < n->n_props; i++) free(n->keys[i]);
    free(n->keys);
    free(n->key_len);
    free(n->props);
    for (int i = 0; i < n->n_lits; i++) free(n->lits[i]);
    free(n->lits);
    free(n->lit_len);
    free(n->alts);
    free(n->suffix);
    free(n);
}

void capmoe_grammar_free(capmoe_grammar *g) {
    if (!g) return;
    for (gnode *n = g->nodes; n;) {
        gnode *next = n->next_alloc;
        node_free(n);
        n = next;
    }
    free(g);
}

static int add_lit(gnode *n, const char *text) {
    if (n->n_lits >= MAX_CAND) return -1;
    char **l = realloc(n->lits, sizeof *l * (size_t)(n->n_lits + 1));
    if (!l) return -1;
    n->lits = l;
    size_t *ll = realloc(n->lit_len, sizeof *ll * (size_t)(n->n_lits + 1));
    if (!ll) return -1;
    n->lit_len = ll;
    if (!(n->lits[n->n_lits] = strdup(text))) return -1;
    n->lit_len[n->n_lits] = strlen(text);
    n->n_lits++;
    return 0;
}

static gnode *lit_node(capmoe_grammar *g, const char *a, const char *b) {
    gnode *n = node_new(g, G_LIT);
    if (!n || add_lit(n, a) != 0 || (b && add_lit(n, b) != 0)) return NULL;
    return n;
}

/* ---- compiling a schema --------------------------------------------------------------- */

typedef struct compiler {
    capmoe_grammar *g;
    const cJSON *root;
    capmoe_error *err;
    int refs;                  /* $ref expansions (bounds recursion) */
} compiler;

static gnode *compile(compiler *c, const cJSON *s, const char *path, int depth);
int capmoe__grammar_starts(const gnode *n, int b);

static const char *k_known[] = {"type", "properties", "required", "additionalProperties", "items",
                                "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
                                "anyOf", "oneOf", "$defs", "definitions", "$ref", "title",
                                "description", "default", "examples", "$schema", "$id", "strict",
                                "$comment", "nullable", "minimum", "maximum", NULL};

static gnode *fail(compiler *c, const char *path, const char *fmt, const char *what) {
    char msg[200];
    snprintf(msg, sizeof msg, fmt, what);
    capmoe_set_error(c->err, "%s at %s", msg, path);
    return NULL;
}

static int get_count(compiler *c, const cJSON *s, const char *name, int *out, const char *path) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(s, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f) || f->valuedouble < 0 || f->valuedouble > 4096 ||
        f->valuedouble != floor(f->valuedouble)) {
        fail(c, path, "'%s' must be an integer in 0..4096", name);
        return -1;
    }
    *out = (int)f->valuedouble;
    return 0;
}

static gnode *compile_type(compiler *c, const cJSON *s, const char *type, const char *path,
                           int depth) {
    capmoe_grammar *g = c->g;
    char sub[256];
    if (!strcmp(type, "null")) return lit_node(g, "null", NULL);
    if (!strcmp(type, "boolean")) return lit_node(g, "true", "false");
    if (!strcmp(type, "number") || !strcmp(type, "integer")) {
        /* bounds: only those the grammar keeps anyway (at most 15 digits, so
         * zod's safe-integer range) and minimum 0 (no sign) */
        gnode *n = node_new(g, !strcmp(type, "number") ? G_NUMBER : G_INTEGER);
        if (!n) return NULL;
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minimum");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maximum");
        if (mn && !(cJSON_IsNumber(mn) && (mn->valuedouble == 0 || mn->valuedouble <= -1e15)))
            return fail(c, path, "%s",
                        "the JSON-schema keyword 'minimum' is supported only as 0 or <= -1e15");
        if (mx && !(cJSON_IsNumber(mx) && mx->valuedouble >= 1e15))
            return fail(c, path, "%s", "the JSON-schema keyword 'maximum' is supported only as >= 1e15");
        n->min_items = mn && mn->valuedouble == 0; /* numbers: 1 = no minus sign */
        return n;
    }
    if (!strcmp(type, "string")) {
        gnode *n = node_new(g, G_STRING);
        if (!n || get_count(c, s, "minLength", &n->min_len, path) ||
            get_count(c, s, "maxLength", &n->max_len, path))
            return NULL;
        if (n->max_len >= 0 && n->max_len < n->min_len)
            return fail(c, path, "%s", "maxLength is below minLength");
        return n;
    }
    if (!strcmp(type, "array")) {
        gnode *n = node_new(g, G_ARRAY);
        if (!n || get_count(c, s, "minItems", &n->min_items, path) ||
            get_count(c, s, "maxItems", &n->max_items, path))
            return NULL;
        if (n->max_items >= 0 && n->max_items < n->min_items)
            return fail(c, path, "%s", "maxItems is below minItems");
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(s, "items");
        snprintf(sub, sizeof sub, "%.200s.items", path);
        n->items = it ? compile(c, it, sub, depth + 1) : g->any;
        return n->items ? n : NULL;
    }
    if (!strcmp(type, "object")) {
        gnode *n = node_new(g, G_OBJECT);
        if (!n) return NULL;
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        if (!props || !props->child) {
            if (ap && cJSON_IsFalse(ap)) return n; /* {} only */
            if (ap && !cJSON_IsTrue(ap))
                return fail(c, path, "%s", "'additionalProperties' with a schema is not supported");
            n->free_keys = 1; /* any object */
            return n;
        }
        if (ap && !cJSON_IsFalse(ap))
            return fail(c, path, "%s",
                        "'additionalProperties' other than false is not supported with "
                        "'properties' (only declared properties are generated)");
        if (!cJSON_IsObject(props)) return fail(c, path, "%s", "'properties' must be an object");
        int np = cJSON_GetArraySize(props);
        if (np > MAX_CAND) return fail(c, path, "%s", "more than 64 properties");
        n->keys = calloc((size_t)np, sizeof *n->keys);
        n->key_len = calloc((size_t)np, sizeof *n->key_len);
        n->props = calloc((size_t)np, sizeof *n->props);
        if (!n->keys || !n->key_len || !n->props) return fail(c, path, "%s", "out of memory");
        for (const cJSON *p = props->child; p; p = p->next) {
            cJSON *k = cJSON_CreateString(p->string);
            char *ks = k ? cJSON_PrintUnformatted(k) : NULL;
            cJSON_Delete(k);
            if (!ks) return fail(c, path, "%s", "out of memory");
            n->keys[n->n_props] = ks;
            n->key_len[n->n_props] = strlen(ks);
            snprintf(sub, sizeof sub, "%.150s.properties.%.80s", path, p->string);
            n->n_props++;
            if (!(n->props[n->n_props - 1] = compile(c, p, sub, depth + 1))) return NULL;
        }
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        if (req) {
            if (!cJSON_IsArray(req)) return fail(c, path, "%s", "'required' must be a list");
            for (const cJSON *r = req->child; r; r = r->next) {
                int found = -1;
                for (int i = 0; cJSON_IsString(r) && i < n->n_props; i++) {
                    const cJSON *pk = cJSON_GetArrayItem(props, i);
                    if (pk && !strcmp(pk->string, r->valuestring)) found = i;
                }
                if (found < 0)
                    return fail(c, path, "'required' names '%s', which is not in 'properties'",
                                cJSON_IsString(r) ? r->valuestring : "?");
                n->required |= 1ull << found;
            }
        }
        return n;
    }
    return fail(c, path, "unknown type '%s'", type);
}

static gnode *compile(compiler *c, const cJSON *s, const char *path, int depth) {
    capmoe_grammar *g = c->g;
    if (depth > MAX_DEPTH - 2) return fail(c, path, "%s", "the schema nests too deeply");
    if (cJSON_IsTrue(s)) return g->any;
    if (!cJSON_IsObject(s)) return fail(c, path, "%s", "a schema must be an object");
    for (const cJSON *k = s->child; k; k = k->next) {
        int ok = 0;
        for (int i = 0; k_known[i]; i++) ok |= !strcmp(k->string, k_known[i]);
        if (!ok)
            return fail(c, path, "the JSON-schema keyword '%s' is not supported", k->string);
    }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (ref) {
        if (!cJSON_IsString(ref)) return fail(c, path, "%s", "'$ref' must be a string");
        const char *r = ref->valuestring;
        const cJSON *defs = NULL;
        const char *name = NULL;
        if (!strncmp(r, "#/$defs/", 8)) {
            defs = cJSON_GetObjectItemCaseSensitive(c->root, "$defs");
            name = r + 8;
        } else if (!strncmp(r, "#/definitions/", 14)) {
            defs = cJSON_GetObjectItemCaseSensitive(c->root, "definitions");
            name = r + 14;
        } else if (!strcmp(r, "#")) {
            return fail(c, path, "%s", "a recursive '$ref' is not supported");
        }
        const cJSON *t = defs && name ? cJSON_GetObjectItemCaseSensitive(defs, name) : NULL;
        if (!t) return fail(c, path, "'$ref' '%s' does not name a local definition", r);
        if (++c->refs > 256) return fail(c, path, "%s", "a recursive '$ref' is not supported");
        return compile(c, t, r, depth + 1);
    }
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (cst || en) {
        gnode *n = node_new(g, G_LIT);
        if (!n) return fail(c, path, "%s", "out of memory");
        if (en && (!cJSON_IsArray(en) || !en->child))
            return fail(c, path, "%s", "'enum' must be a non-empty list");
        for (const cJSON *v = cst ? cst : en->child; v; v = cst ? NULL : v->next) {
            char *t = cJSON_PrintUnformatted(v);
            int rc = t ? add_lit(n, t) : -1;
            free(t);
            if (rc != 0) return fail(c, path, "%s", "'enum' has more than 64 values");
        }
        return n;
    }
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (!any) any = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (any || cJSON_IsArray(type)) {
        gnode *n = node_new(g, G_ANYOF);
        if (!n) return fail(c, path, "%s", "out of memory");
        const cJSON *list = any ? any : type;
        if (!cJSON_IsArray(list) || !list->child)
            return fail(c, path, "%s", "'anyOf' / 'type' must be a non-empty list");
        int na = cJSON_GetArraySize(list);
        n->alts = calloc((size_t)na, sizeof *n->alts);
        if (!n->alts) return fail(c, path, "%s", "out of memory");
        int i = 0;
        for (const cJSON *a = list->child; a; a = a->next, i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%.200s.%s[%d]", path, any ? "anyOf" : "type", i);
            gnode *x;
            if (any) {
                x = compile(c, a, sub, depth + 1);
            } else {
                if (!cJSON_IsString(a)) return fail(c, sub, "%s", "types must be strings");
                x = compile_type(c, s, a->valuestring, sub, depth + 1);
            }
            if (!x) return NULL;
            n->alts[n->n_alts++] = x;
        }
        /* the branches must differ by their first byte */
        for (int b = 0; b < 256; b++) {
            int k = 0;
            for (int a = 0; a < n->n_alts; a++) k += capmoe__grammar_starts(n->alts[a], b);
            if (k > 1)
                return fail(c, path, "%s",
                            "'anyOf' branches of the same JSON type (telling them apart needs "
                            "more than the first character) are not supported");
        }
        return n;
    }
    if (!type) return g->any; /* {} or annotations only: any value */
    if (!cJSON_IsString(type)) return fail(c, path, "%s", "'type' must be a string or a list");
    return compile_type(c, s, type->valuestring, path, depth);
}

/* 1 when a value of n can start with byte b. */
int capmoe__grammar_starts(const gnode *n, int b) {
    switch (n->kind) {
    case G_ANY: return b == '{' || b == '[' || b == '"' || b == '-' || (b >= '0' && b <= '9') ||
                       b == 't' || b == 'f' || b == 'n';
    case G_OBJECT: return b == '{';
    case G_ARRAY: return b == '[';
    case G_STRING: return b == '"';
    case G_NUMBER:
    case G_INTEGER: return b == '-' || (b >= '0' && b <= '9');
    case G_LIT:
        for (int i = 0; i < n->n_lits; i++)
            if ((unsigned char)n->lits[i][0] == b) return 1;
        return 0;
    case G_ANYOF:
        for (int i = 0; i < n->n_alts; i++)
            if (capmoe__grammar_starts(n->alts[i], b)) return 1;
        return 0;
    case G_CALLS: return (unsigned char)n->lits[0][0] == b;
    }
    return 0;
}

int capmoe_grammar_compile(capmoe_grammar **out, const cJSON *schema, capmoe_error *err) {
    *out = NULL;
    capmoe_grammar *g = calloc(1, sizeof *g);
    if (!g) return capmoe_set_error(err, "out of memory");
    g->any = node_new(g, G_ANY);
    g->any_obj = node_new(g, G_OBJECT);
    g->any_arr = node_new(g, G_ARRAY);
    g->str = node_new(g, G_STRING);
    g->num = node_new(g, G_NUMBER);
    g->boolean = lit_node(g, "true", "false");
    g->null = lit_node(g, "null", NULL);
    if (!g->any || !g->any_obj || !g->any_arr || !g->str || !g->num || !g->boolean || !g->null) {
        capmoe_grammar_free(g);
        return capmoe_set_error(err, "out of memory");
    }
    g->any_obj->free_keys = 1;
    g->any_arr->items = g->any;
    if (!schema) {
        g->root = g->any_obj;
    } else {
        compiler c = {g, schema, err, 0};
        g->root = compile(&c, schema, "schema", 0);
        if (!g->root) {
            capmoe_grammar_free(g);
            return -1;
        }
    }
    *out = g;
    return 0;
}

int capmoe_grammar_compile_calls(capmoe_grammar **out, const char *const *prefixes,
                                 const cJSON *const *schemas, int n, const char *suffix,
                                 int several, capmoe_error *err) {
    *out = NULL;
    if (n < 1 || n > MAX_CAND) return capmoe_set_error(err, "1 to 64 tools");
    capmoe_grammar *g = NULL;
    if (capmoe_grammar_compile(&g, NULL, err) != 0) return -1;
    gnode *calls = node_new(g, G_CALLS);
    if (!calls || !(calls->alts = calloc((size_t)n, sizeof *calls->alts)) ||
        !(calls->suffix = strdup(suffix))) {
        capmoe_grammar_free(g);
        return capmoe_set_error(err, "out of memory");
    }
    calls->suffix_len = strlen(suffix);
    calls->min_items = several;
    for (int i = 0; i < n; i++) {
        compiler c = {g, schemas[i], err, 0};
        gnode *a = schemas[i] ? compile(&c, schemas[i], "parameters", 0) : g->any_obj;
        if (!a || add_lit(calls, prefixes[i]) != 0) {
            capmoe_grammar_free(g);
            return a ? capmoe_set_error(err, "out of memory") : -1;
        }
        calls->alts[calls->n_alts++] = a;
    }
    g->root = calls;
    *out = g;
    return 0;
}

/* ---- the recognizer ---------------------------------------------------------------------- */

int capmoe_grammar_state_new(capmoe_grammar_state **out, const capmoe_grammar *g,
                             capmoe_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out || !((*out)->cache = capmoe__gmask_cache_new())) {
        free(*out);
        *out = NULL;
        return capmoe_set_error(err, "out of memory");
    }
    (*out)->g = g;
    return 0;
}

void capmoe_grammar_state_free(capmoe_grammar_state *s) {
    if (!s) return;
    capmoe__gmask_cache_free(s->cache);
    free(s);
}

void capmoe__grammar_copy(capmoe_grammar_state *dst, const capmoe_grammar_state *src) {
    memcpy(dst, src, offsetof(capmoe_grammar_state, st));
    memcpy(dst->st, src->st, sizeof src->st[0] * (size_t)src->depth);
}

/* A new frame for a value of node n (its first byte comes next). */
static int push(capmoe_grammar_state *s, const gnode *n, int any_depth) {
    if (s->depth >= MAX_DEPTH) return -1;
    gframe *f = &s->st[s->depth++];
    memset(f, 0, sizeof *f);
    f->n = n;
    f->any_depth = (uint8_t)any_depth;
    return 0;
}

static void pop(capmoe_grammar_state *s) {
    s->depth--;
    if (s->depth == 0) s->done = 1;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

/* Number phases: 0 start, 1 after '-', 2 int digits, 3 after a leading 0,
 * 4 after '.', 5 fraction digits, 6 after 'e', 7 after the exponent sign,
 * 8 exponent digits. Accepting: 2, 3, 5, 8. */
static int num_accepting(int ph) { return ph == 2 || ph == 3 || ph == 5 || ph == 8; }

static int lit_can_end(const gframe *f) {
    for (int i = 0; i < f->n->n_lits; i++)
        if ((f->cand >> i & 1) && f->n->lit_len[i] == f->pos) return 1;
    return 0;
}

static int frame_can_end(const gframe *f) {
    if (f->n->kind == G_NUMBER || f->n->kind == G_INTEGER) return num_accepting(f->ph);
    if (f->n->kind == G_LIT) return f->ph == 1 && lit_can_end(f);
    if (f->n->kind == G_CALLS) return f->ph == 3;
    return 0;
}

/* The child a value slot of frame f takes for first byte c (anyOf and free
 * values resolved), or NULL. */
static const gnode *resolve(const capmoe_grammar *g, const gnode *n, int c, int any_depth) {
    if (n->kind == G_ANYOF) {
        for (int i = 0; i < n->n_alts; i++)
            if (capmoe__grammar_starts(n->alts[i], c)) return resolve(g, n->alts[i], c, any_depth);
        return NULL;
    }
    if (n->kind == G_ANY) {
        if (c == '{') return any_depth < ANY_DEPTH ? g->any_obj : NULL;
        if (c == '[') return any_depth < ANY_DEPTH ? g->any_arr : NULL;
        if (c == '"') return g->str;
        if (c == '-' || is_digit(c)) return g->num;
        if (c == 't' || c == 'f') return g->boolean;
        if (c == 'n') return g->null;
        return NULL;
    }
    return capmoe__grammar_starts(n, c) ? n : NULL;
}

/* Object phases: 0 start, 1 after '{' (key or '}'), 2 in a declared key,
 * 3 expect ':', 4 after a value (',' or '}'), 5 after ',' (a key), 6 expect
 * a value. count: the property of the key being read. */
static int required_done(const gframe *f) { return (f->n->required & ~f->seen) == 0; }

static uint64_t keys_left(const gframe *f) {
    uint64_t all = f->n->n_props >= 64 ? ~0ull : ((1ull << f->n->n_props) - 1);
    return all & ~f->seen;
}

int capmoe__grammar_feed_byte(capmoe_grammar_state *s, int c) {
    const capmoe_grammar *g = s->g;
    if (s->done) return -1;
    if (s->depth == 0) { /* the document's first byte */
        const gnode *n = resolve(g, g->root, c, 0);
        if (!n || push(s, n, n == g->any_obj || n == g->any_arr ? 1 : 0) != 0) return -1;
    }
    for (;;) {
        gframe *f = &s->st[s->depth - 1];
        const gnode *n = f->n;
        switch (n->kind) {
        case G_STRING:
            switch (f->ph) {
            case 0:
                if (c != '"') return -1;
                f->ph = 1;
                return 0;
            case 1:
                if (c == '"') {
                    if (f->pos < n->min_len) return -1;
                    pop(s);
                    return 0;
                }
                if (c == '\\') {
                    if (n->max_len >= 0 && f->pos >= n->max_len) return -1;
                    f->ph = 2;
                    return 0;
                }
                if (c < 0x20) return -1;
                if ((c & 0xC0) != 0x80) {
                    if (n->max_len >= 0 && f->pos >= n->max_len) return -1;
                    f->pos++;
                }
                return 0;
            case 2:
                if (strchr("\"\\/bfnrt", c) && c) {
                    f->pos++;
                    f->ph = 1;
                    return 0;
                }
                return -1; /* no \u escapes: characters are written as UTF-8 */
            default: /* \u hex */
                if (!(is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return -1;
                if (++f->cand == 4) {
                    f->pos++;
                    f->ph = 1;
                }
                return 0;
            }
        case G_NUMBER:
        case G_INTEGER: {
            int ph = f->ph, np = -1, integer = n->kind == G_INTEGER;
            if (ph == 0 && c == '-' && !n->min_items) np = 1;
            else if ((ph == 0 || ph == 1) && c == '0') np = 3;
            else if ((ph == 0 || ph == 1) && c >= '1' && c <= '9') np = 2;
            else if (ph == 2 && is_digit(c)) np = 2;
            else if (!integer && (ph == 2 || ph == 3) && c == '.' && f->pos < MAX_DIGITS) np = 4;
            else if (!integer && (ph == 4 || ph == 5) && is_digit(c)) np = 5;
            else if (!integer && (ph == 2 || ph == 3 || ph == 5) && (c == 'e' || c == 'E')) np = 6;
            else if (!integer && ph == 6 && (c == '+' || c == '-')) np = 7;
            else if (!integer && (ph == 6 || ph == 7 || ph == 8) && is_digit(c)) np = 8;
            if (np >= 0) {
                if (np == 8) {
                    if (++f->count > MAX_EXP_DIGITS) return -1;
                } else if (is_digit(c) && ++f->pos > MAX_DIGITS) {
                    return -1;
                }
                f->ph = (uint8_t)np;
                return 0;
            }
            if (!num_accepting(ph) || s->depth == 1) return -1;
            pop(s); /* the byte belongs to the parent */
            continue;
        }
        case G_LIT: {
            if (f->ph == 0) {
                f->ph = 1;
                f->cand = n->n_lits >= 64 ? ~0ull : ((1ull << n->n_lits) - 1);
                f->pos = 0;
            }
            uint64_t nc = 0;
            for (int i = 0; i < n->n_lits; i++)
                if ((f->cand >> i & 1) && n->lit_len[i] > f->pos &&
                    (unsigned char)n->lits[i][f->pos] == c)
                    nc |= 1ull << i;
            if (nc) {
                f->cand = nc;
                f->pos++;
                int longer = 0;
                for (int i = 0; i < n->n_lits; i++)
                    if ((nc >> i & 1) && n->lit_len[i] > f->pos) longer = 1;
                if (!longer) pop(s);
                return 0;
            }
            if (!lit_can_end(f) || s->depth == 1) return -1;
            pop(s);
            continue;
        }
        case G_ARRAY:
            switch (f->ph) {
            case 0:
                if (c != '[') return -1;
                f->ph = 1;
                return 0;
            case 1:
            case 3:
                if (f->ph == 1 && c == ']') {
                    if (n->min_items > 0) return -1;
                    pop(s);
                    return 0;
                } else {
                    if (n->max_items == 0) return -1;
                    const gnode *it = resolve(g, n->items, c, f->any_depth);
                    if (!it) return -1;
                    f->count++;
                    f->ph = 2;
                    int d = f->any_depth + (it == g->any_obj || it == g->any_arr);
                    if (push(s, it, d) != 0) return -1;
                    continue;
                }
            default: /* 2: after an item */
                if (c == ',') {
                    if (n->max_items >= 0 && f->count >= n->max_items) return -1;
                    f->ph = 3;
                    return 0;
                }
                if (c == ']') {
                    if (f->count < n->min_items) return -1;
                    pop(s);
                    return 0;
                }
                return -1;
            }
        case G_OBJECT:
            switch (f->ph) {
            case 0:
                if (c != '{') return -1;
                f->ph = 1;
                return 0;
            case 1:
            case 5:
                if (f->ph == 1 && c == '}') {
                    if (!required_done(f)) return -1;
                    pop(s);
                    return 0;
                }
                if (c != '"') return -1;
                if (n->free_keys) {
                    f->ph = 3;
                    if (push(s, g->str, f->any_depth) != 0) return -1;
                    s->st[s->depth - 1].ph = 1; /* the quote is read */
                    return 0;
                }
                f->cand = keys_left(f);
                if (!f->cand) return -1;
                f->pos = 1;
                f->ph = 2;
                return 0;
            case 2: {
                uint64_t nc = 0;
                int hit = -1;
                for (int i = 0; i < n->n_props; i++)
                    if ((f->cand >> i & 1) && n->key_len[i] > f->pos &&
                        (unsigned char)n->keys[i][f->pos] == c) {
                        nc |= 1ull << i;
                        if (n->key_len[i] == (size_t)f->pos + 1) hit = i;
                    }
                if (!nc) return -1;
                f->cand = nc;
                f->pos++;
                if (hit >= 0) { /* keys end with their quote: unique */
                    f->count = (uint16_t)hit;
                    f->seen |= 1ull << hit;
                    f->ph = 3;
                }
                return 0;
            }
            case 3:
                if (c != ':') return -1;
                f->ph = 6;
                return 0;
            case 6: {
                const gnode *v = n->free_keys ? g->any : n->props[f->count];
                const gnode *r = resolve(g, v, c, f->any_depth);
                if (!r) return -1;
                f->ph = 4;
                int d = f->any_depth + (r == g->any_obj || r == g->any_arr);
                if (push(s, r, d) != 0) return -1;
                continue;
            }
            default: /* 4 */
                if (c == ',') {
                    if (!n->free_keys && !keys_left(f)) return -1;
                    f->ph = 5;
                    return 0;
                }
                if (c == '}') {
                    if (!required_done(f)) return -1;
                    pop(s);
                    return 0;
                }
                return -1;
            }
        case G_CALLS:
            /* phases: 0 a prefix (cand / pos), 1 the arguments (child), 2 the
             * suffix (pos), 3 after a call (separator "\n" or the end) */
            if (f->ph == 3) {
                if (c != '\n' || !n->min_items) return -1;
                f->ph = 0;
                f->pos = 0;
                f->cand = n->n_lits >= 64 ? ~0ull : ((1ull << n->n_lits) - 1);
                return 0;
            }
            if (f->ph == 0) {
                if (f->pos == 0 && f->cand == 0)
                    f->cand = n->n_lits >= 64 ? ~0ull : ((1ull << n->n_lits) - 1);
                uint64_t nc = 0;
                int hit = -1;
                for (int i = 0; i < n->n_lits; i++)
                    if ((f->cand >> i & 1) && n->lit_len[i] > f->pos &&
                        (unsigned char)n->lits[i][f->pos] == c) {
                        nc |= 1ull << i;
                        if (n->lit_len[i] == (size_t)f->pos + 1) hit = i;
                    }
                if (!nc) return -1;
                f->cand = nc;
                f->pos++;
                if (hit >= 0) { /* prefixes end with the tool's name: unique */
                    f->count = (uint16_t)hit;
                    f->ph = 4;
                }
                return 0;
            }
            if (f->ph == 4) { /* the arguments' first byte */
                const gnode *a = resolve(g, n->alts[f->count], c, 0);
                if (!a) return -1;
                f->ph = 2;
                f->pos = 0;
                if (push(s, a, a == g->any_obj || a == g->any_arr) != 0) return -1;
                continue;
            }
            /* 2: the suffix */
            if ((unsigned char)n->suffix[f->pos] != c) return -1;
            if (++f->pos == n->suffix_len) f->ph = 3;
            return 0;
        default:
            return -1;
        }
    }
}

int capmoe_grammar_feed(capmoe_grammar_state *s, const char *text, size_t len) {
    capmoe_grammar_state tmp = *s;
    for (size_t i = 0; i < len; i++)
        if (capmoe__grammar_feed_byte(&tmp, (unsigned char)text[i]) != 0) return -1;
    *s = tmp;
    return 0;
}

int capmoe_grammar_complete(const capmoe_grammar_state *s) {
    return s->done || (s->depth == 1 && frame_can_end(&s->st[0]));
}

int capmoe_grammar_can_continue(const capmoe_grammar_state *s) {
    for (int c = 0; c < 256; c++) {
        capmoe_grammar_state t = *s;
        if (capmoe__grammar_feed_byte(&t, c) == 0) return 1;
    }
    return 0;
}

/* ---- the shortest completion (for the end of the budget) ------------------------------------ */

typedef capmoe__gsbuf sbuf;

static void sput(sbuf *b, const char *t, size_t n) {
    if (b->n + n >= sizeof b->p) {
        b->over = 1;
        return;
    }
    memcpy(b->p + b->n, t, n);
    b->n += n;
}
static void sputs(sbuf *b, const char *t) { sput(b, t, strlen(t)); }

static void min_value(const capmoe_grammar *g, const gnode *n, sbuf *b, int depth) {
    if (depth > MAX_DEPTH) {
        b->over = 1;
        return;
    }
    switch (n->kind) {
    case G_ANY:
    case G_NUMBER:
    case G_INTEGER: sputs(b, "0"); break;
    case G_STRING:
        sputs(b, "\"");
        for (int i = 0; i < n->min_len; i++) sputs(b, "a");
        sputs(b, "\"");
        break;
    case G_LIT: {
        int best = 0;
        for (int i = 1; i < n->n_lits; i++)
            if (n->lit_len[i] < n->lit_len[best]) best = i;
        sput(b, n->lits[best], n->lit_len[best]);
        break;
    }
    case G_ANYOF: min_value(g, n->alts[0], b, depth + 1); break;
    case G_CALLS:
        sput(b, n->lits[0], n->lit_len[0]);
        min_value(g, n->alts[0], b, depth + 1);
        sput(b, n->suffix, n->suffix_len);
        break;
    case G_ARRAY:
        sputs(b, "[");
        for (int i = 0; i < n->min_items; i++) {
            if (i) sputs(b, ",");
            min_value(g, n->items, b, depth + 1);
        }
        sputs(b, "]");
        break;
    case G_OBJECT: {
        sputs(b, "{");
        int k = 0;
        for (int i = 0; i < n->n_props; i++)
            if (n->required >> i & 1) {
                if (k++) sputs(b, ",");
                sput(b, n->keys[i], n->key_len[i]);
                sputs(b, ":");
                min_value(g, n->props[i], b, depth + 1);
            }
        sputs(b, "}");
        break;
    }
    }
}

/* The rest of an object from "after a value" with `seen`, closing it. */
static void close_object(const capmoe_grammar *g, const gnode *n, uint64_t seen, sbuf *b) {
    for (int i = 0; i < n->n_props; i++)
        if ((n->required >> i & 1) && !(seen >> i & 1)) {
            sputs(b, ",");
            sput(b, n->keys[i], n->key_len[i]);
            sputs(b, ":");
            min_value(g, n->props[i], b, 1);
        }
    sputs(b, "}");
}

void capmoe__grammar_completion(const capmoe_grammar_state *s, sbuf *b) {
    const capmoe_grammar *g = s->g;
    if (s->done) return;
    if (s->depth == 0) {
        min_value(g, g->root, b, 0);
        return;
    }
    for (int d = s->depth - 1; d >= 0; d--) {
        const gframe *f = &s->st[d];
        const gnode *n = f->n;
        switch (n->kind) {
        case G_STRING:
            if (f->ph == 2) sputs(b, "n");
            if (f->ph == 3)
                for (uint64_t i = f->cand; i < 4; i++) sputs(b, "0");
            for (int i = f->pos + (f->ph >= 2); i < n->min_len; i++) sputs(b, "a");
            sputs(b, "\"");
            break;
        case G_NUMBER:
        case G_INTEGER:
            if (!num_accepting(f->ph)) sputs(b, "0");
            break;
        case G_LIT: {
            int best = -1;
            for (int i = 0; i < n->n_lits; i++)
                if ((f->ph == 0 || (f->cand >> i & 1)) &&
                    (best < 0 || n->lit_len[i] < n->lit_len[best]))
                    best = i;
            int pos = f->ph == 0 ? 0 : f->pos;
            if (best >= 0) sput(b, n->lits[best] + pos, n->lit_len[best] - (size_t)pos);
            break;
        }
        case G_ARRAY:
            if (f->ph == 1 || f->ph == 3) {
                if (f->ph == 3 || n->min_items > 0) min_value(g, n->items, b, 1);
                for (int i = f->count + 1; i < n->min_items; i++) {
                    sputs(b, ",");
                    min_value(g, n->items, b, 1);
                }
            } else {
                for (int i = f->count; i < n->min_items; i++) {
                    sputs(b, ",");
                    min_value(g, n->items, b, 1);
                }
            }
            sputs(b, "]");
            break;
        case G_OBJECT: {
            uint64_t seen = f->seen;
            if (f->ph == 1 && !n->free_keys) {
                /* the first required property opens the list */
                int first = -1;
                for (int i = 0; i < n->n_props && first < 0; i++)
                    if (n->required >> i & 1) first = i;
                if (first < 0) {
                    sputs(b, "}");
                    break;
                }
                sput(b, n->keys[first], n->key_len[first]);
                sputs(b, ":");
                min_value(g, n->props[first], b, 1);
                close_object(g, n, seen | 1ull << first, b);
                break;
            }
            if (f->ph == 1) {
                sputs(b, "}");
                break;
            }
            if (f->ph == 5 || f->ph == 2) {
                int k = -1;
                if (n->free_keys) {
                    sputs(b, f->ph == 5 ? "\"\":0}" : "");
                    if (f->ph == 5) break;
                }
                /* a key is open or due: the shortest candidate */
                uint64_t cand = f->ph == 2 ? f->cand : keys_left(f);
                for (int i = 0; i < n->n_props; i++)
                    if ((cand >> i & 1) && (k < 0 || ((n->required >> i & 1) && !(n->required >> k & 1))))
                        k = i;
                if (k < 0) {
                    b->over = 1;
                    break;
                }
                size_t from = f->ph == 2 ? f->pos : 0;
                sput(b, n->keys[k] + from, n->key_len[k] - from);
                sputs(b, ":");
                min_value(g, n->props[k], b, 1);
                close_object(g, n, seen | 1ull << k, b);
                break;
            }
            if (f->ph == 3 || f->ph == 6) {
                if (f->ph == 3) sputs(b, ":");
                min_value(g, n->free_keys ? g->any : n->props[f->count], b, 1);
            }
            if (n->free_keys) sputs(b, "}");
            else close_object(g, n, seen, b);
            break;
        }
        case G_CALLS:
            if (f->ph == 0) {
                int best = -1;
                for (int i = 0; i < n->n_lits; i++)
                    if ((f->cand == 0 || (f->cand >> i & 1)) &&
                        (best < 0 || n->lit_len[i] < n->lit_len[best]))
                        best = i;
                sput(b, n->lits[best] + f->pos, n->lit_len[best] - f->pos);
                min_value(g, n->alts[best], b, 1);
                sput(b, n->suffix, n->suffix_len);
            } else if (f->ph == 4) {
                min_value(g, n->alts[f->count], b, 1);
                sput(b, n->suffix, n->suffix_len);
            } else if (f->ph == 2) {
                sput(b, n->suffix + f->pos, n->suffix_len - f->pos);
            }
            break;
        default:
            break;
        }
    }
}


/* ---- what the masks need ------------------------------------------------------------- */

int capmoe__grammar_string_room(const capmoe_grammar_state *s) {
    if (s->done || s->depth == 0) return -2;
    const gframe *f = &s->st[s->depth - 1];
    if (f->n->kind != G_STRING || f->ph != 1) return -2;
    if (f->n->max_len < 0) return -1;
    return f->pos >= f->n->max_len ? 0 : f->n->max_len - f->pos;
}

size_t capmoe__grammar_key(const capmoe_grammar_state *s, uint8_t *key) {
    size_t n = 0;
    uint32_t head[2] = {(uint32_t)s->depth, (uint32_t)s->done};
    memcpy(key, head, sizeof head);
    n += sizeof head;
    for (int d = 0; d < s->depth; d++) {
        const gframe *f = &s->st[d];
        const gnode *nd = f->n;
        uint16_t pos = f->pos, count = f->count;
        /* a string past its minimum length with no maximum, an array past its
         * minimum items with no maximum: more of them changes nothing */
        if (nd->kind == G_STRING && nd->max_len < 0 && pos > nd->min_len) pos = (uint16_t)nd->min_len;
        if (nd->kind == G_ARRAY && nd->max_items < 0 && count > nd->min_items)
            count = (uint16_t)nd->min_items;
        uint64_t cand = f->cand;
        /* an object reads its key's candidates and position in phase 2 only
         * (set when the key opens), its property in 3 and 6 */
        if (nd->kind == G_OBJECT && f->ph != 2) {
            pos = 0;
            cand = 0;
            if (f->ph != 3 && f->ph != 6) count = 0;
        }
        memcpy(key + n, &nd, sizeof nd);
        n += sizeof nd;
        key[n++] = f->ph;
        key[n++] = f->any_depth;
        memcpy(key + n, &pos, 2);
        memcpy(key + n + 2, &count, 2);
        n += 4;
        memcpy(key + n, &cand, 8);
        memcpy(key + n + 8, &f->seen, 8);
        n += 16;
    }
    return n;
}
