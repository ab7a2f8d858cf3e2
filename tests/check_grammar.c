/* check_grammar.c - tests of core/grammar.c: schemas it must refuse (the
 * keyword named), documents a recognizer accepts and rejects, and fuzzing:
 * random schemas x random walks over a real vocabulary (the shipped default
 * model's 8,192-token byte-level BPE), each step drawing a token among those the
 * mask allows, with budgets from tight to loose; every finished text must
 * parse (cJSON) and validate against its schema under an independent
 * validator written here from the JSON-schema rules. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/grammar.h"
#include "capmoe/sample.h"
#include "../core/grammar_internal.h" /* capmoe__grammar_mask_reference */

static capmoe_tokenizer *g_tok;
static capmoe_grammar_vocab *g_voc;

static void setup(void) {
    capmoe_error err;
    if (!g_tok) {
        ck_assert_msg(capmoe_tokenizer_load(&g_tok, "config/model", &err) == 0, "%s",
                      err.msg);
        ck_assert_msg(capmoe_grammar_vocab_new(&g_voc, g_tok, &err) == 0, "%s", err.msg);
    }
}

static capmoe_grammar *compile_text(const char *schema, capmoe_error *err) {
    cJSON *s = schema ? cJSON_Parse(schema) : NULL;
    ck_assert(!schema || s);
    capmoe_grammar *g = NULL;
    int rc = capmoe_grammar_compile(&g, s, err);
    cJSON_Delete(s);
    return rc == 0 ? g : NULL;
}

START_TEST(test_refused) {
    static const struct { const char *schema, *needle; } cases[] = {
        {"{\"type\":\"string\",\"pattern\":\"a+\"}", "'pattern'"},
        {"{\"type\":\"string\",\"format\":\"date\"}", "'format'"},
        {"{\"type\":\"integer\",\"minimum\":3}", "'minimum'"},
        {"{\"allOf\":[{\"type\":\"string\"}]}", "'allOf'"},
        {"{\"not\":{}}", "'not'"},
        {"{\"anyOf\":[{\"type\":\"object\"},{\"type\":\"object\",\"properties\":{\"a\":{}}}]}", "anyOf"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":true}", "additionalProperties"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "'b'"},
        {"{\"$ref\":\"#\"}", "recursive"},
        {"{\"$ref\":\"#/$defs/x\"}", "local definition"},
        {"{\"type\":\"strange\"}", "strange"},
        {"{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "maxItems"},
        {"{\"enum\":[]}", "enum"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capmoe_error err;
        capmoe_grammar *g = compile_text(cases[i].schema, &err);
        ck_assert_msg(!g, "accepted %s", cases[i].schema);
        ck_assert_msg(strstr(err.msg, cases[i].needle), "%s: '%s' lacks %s", cases[i].schema, err.msg,
                      cases[i].needle);
    }
}
END_TEST

/* 1 when text is accepted as a complete document. */
static int accepts(capmoe_grammar *g, const char *text) {
    capmoe_grammar_state *s;
    capmoe_error err;
    ck_assert_int_eq(capmoe_grammar_state_new(&s, g, &err), 0);
    int ok = capmoe_grammar_feed(s, text, strlen(text)) == 0 && capmoe_grammar_complete(s);
    capmoe_grammar_state_free(s);
    return ok;
}

START_TEST(test_documents) {
    capmoe_error err;
    capmoe_grammar *g = compile_text(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":3},"
        "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"bc\",1]},"
        "\"minItems\":1,\"maxItems\":2},\"x\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"null\"}]},"
        "\"d\":{\"$ref\":\"#/$defs/D\"}},\"required\":[\"name\",\"tags\"],"
        "\"additionalProperties\":false,\"$defs\":{\"D\":{\"type\":\"boolean\"}}}",
        &err);
    ck_assert_msg(g, "%s", err.msg);
    ck_assert(accepts(g, "{\"name\":\"héé\",\"tags\":[\"a\"]}"));
    ck_assert(accepts(g, "{\"tags\":[1,\"bc\"],\"name\":\"\",\"age\":-12,\"x\":null,\"d\":true}"));
    ck_assert(accepts(g, "{\"name\":\"a\\\"\",\"tags\":[\"a\"],\"x\":-1.5e+3}"));
    ck_assert(!accepts(g, "{\"name\":\"abcd\",\"tags\":[\"a\"]}"));        /* maxLength */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[]}"));                /* minItems */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[1,1,1]}"));           /* maxItems */
    ck_assert(!accepts(g, "{\"tags\":[\"a\"]}"));                          /* required */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[\"b\"]}"));           /* enum */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[1],\"age\":1.5}"));   /* integer */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[1],\"other\":1}"));   /* undeclared */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"name\":\"b\",\"tags\":[1]}")); /* twice */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[1],\"age\":01}"));    /* leading zero */
    ck_assert(!accepts(g, "{\"name\":\"a\", \"tags\":[1]}"));              /* compact only */
    ck_assert(!accepts(g, "{\"name\":\"a\",\"tags\":[1]"));                /* incomplete */
    capmoe_grammar_free(g);
    g = compile_text(NULL, &err); /* json_object */
    ck_assert(accepts(g, "{}"));
    ck_assert(accepts(g, "{\"a\":[1,{\"b\":null}],\"c\":\"x\"}"));
    ck_assert(!accepts(g, "[1]"));
    ck_assert(!accepts(g, "\"s\""));
    capmoe_grammar_free(g);
    g = compile_text("{\"type\":\"integer\"}", &err);
    ck_assert(accepts(g, "0") && accepts(g, "-120") && !accepts(g, "1.0") && !accepts(g, "-"));
    ck_assert(!accepts(g, "1234567890123456")); /* 16 digits: beyond exact doubles */
    capmoe_grammar_free(g);
    g = compile_text("{\"type\":\"integer\",\"minimum\":0,\"maximum\":9007199254740991}", &err);
    ck_assert_msg(g, "%s", err.msg);
    ck_assert(accepts(g, "5") && !accepts(g, "-5"));
    capmoe_grammar_free(g);
    /* tool calls: a prefix naming the tool, its arguments, the suffix */
    cJSON *w = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
                           "\"required\":[\"city\"],\"additionalProperties\":false}");
    const char *pre[2] = {"<c>{\"name\": \"get\", \"arguments\": ", "<c>{\"name\": \"get_all\", \"arguments\": "};
    const cJSON *sch[2] = {w, NULL};
    ck_assert_int_eq(capmoe_grammar_compile_calls(&g, pre, sch, 2, "}</c>", 1, &err), 0);
    ck_assert(accepts(g, "<c>{\"name\": \"get\", \"arguments\": {\"city\":\"Oslo\"}}</c>"));
    ck_assert(accepts(g, "<c>{\"name\": \"get_all\", \"arguments\": {}}</c>\n"
                         "<c>{\"name\": \"get\", \"arguments\": {\"city\":\"\"}}</c>"));
    ck_assert(!accepts(g, "<c>{\"name\": \"get\", \"arguments\": {}}</c>"));      /* required */
    ck_assert(!accepts(g, "<c>{\"name\": \"other\", \"arguments\": {}}</c>"));    /* unknown */
    ck_assert(!accepts(g, "<c>{\"name\": \"get\", \"arguments\": {\"city\":\"x\"}}"));
    ck_assert(!accepts(g, "hello"));
    capmoe_grammar_free(g);
    ck_assert_int_eq(capmoe_grammar_compile_calls(&g, pre, sch, 2, "}</c>", 0, &err), 0);
    ck_assert(!accepts(g, "<c>{\"name\": \"get_all\", \"arguments\": {}}</c>\n"
                          "<c>{\"name\": \"get_all\", \"arguments\": {}}</c>"));  /* one call */
    capmoe_grammar_free(g);
    cJSON_Delete(w);
}
END_TEST

/* ---- the independent validator ----------------------------------------------------- */

static const cJSON *resolve_ref(const cJSON *root, const cJSON *s) {
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (!ref) return s;
    const char *r = ref->valuestring;
    const char *slash = strrchr(r, '/');
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(root, "$defs");
    return resolve_ref(root, cJSON_GetObjectItemCaseSensitive(defs, slash + 1));
}

static long utf8_len(const char *s) {
    long n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int type_ok(const cJSON *v, const char *t) {
    if (!strcmp(t, "object")) return cJSON_IsObject(v);
    if (!strcmp(t, "array")) return cJSON_IsArray(v);
    if (!strcmp(t, "string")) return cJSON_IsString(v);
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(v) && v->valuedouble == (double)(long long)v->valuedouble;
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    return 0;
}

static int valid(const cJSON *root, const cJSON *s, const cJSON *v) {
    s = resolve_ref(root, s);
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
        int any = 0;
        for (const cJSON *e = x->child; e; e = e->next) any |= cJSON_Compare(e, v, 1);
        if (!any) return 0;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "anyOf"))) {
        int any = 0;
        for (const cJSON *e = x->child; e; e = e->next) any |= valid(root, e, v);
        if (!any) return 0;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
        if (cJSON_IsString(x) && !type_ok(v, x->valuestring)) return 0;
        if (cJSON_IsArray(x)) {
            int any = 0;
            for (const cJSON *e = x->child; e; e = e->next) any |= type_ok(v, e->valuestring);
            if (!any) return 0;
        }
    }
    if (cJSON_IsString(v)) {
        long n = utf8_len(v->valuestring);
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "minLength")) && n < x->valueint) return 0;
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "maxLength")) && n > x->valueint) return 0;
    }
    if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "minItems")) && n < x->valueint) return 0;
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "maxItems")) && n > x->valueint) return 0;
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        for (const cJSON *e = v->child; items && e; e = e->next)
            if (!valid(root, items, e)) return 0;
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) return 0;
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        for (const cJSON *e = v->child; e; e = e->next) {
            const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, e->string) : NULL;
            if (!ps && cJSON_IsFalse(ap)) return 0;
            if (ps && !valid(root, ps, e)) return 0;
        }
    }
    return 1;
}

/* ---- random schemas ------------------------------------------------------------------ */

static cJSON *rand_schema(capmoe_rng *r, int depth) {
    cJSON *s = cJSON_CreateObject();
    int k = (int)(capmoe_rng_next(r) % (depth > 2 ? 6 : 9));
    static const char *scalars[] = {"string", "integer", "number", "boolean", "null"};
    if (k < 5) {
        cJSON_AddStringToObject(s, "type", scalars[k]);
        if (k == 0 && capmoe_rng_next(r) % 2) {
            int lo = (int)(capmoe_rng_next(r) % 3);
            cJSON_AddNumberToObject(s, "minLength", lo);
            cJSON_AddNumberToObject(s, "maxLength", lo + (int)(capmoe_rng_next(r) % 6));
        }
    } else if (k == 5) {
        cJSON *e = cJSON_AddArrayToObject(s, "enum");
        cJSON_AddItemToArray(e, cJSON_CreateString("red"));
        cJSON_AddItemToArray(e, cJSON_CreateString("green"));
        if (capmoe_rng_next(r) % 2) cJSON_AddItemToArray(e, cJSON_CreateNumber(7));
        if (capmoe_rng_next(r) % 2) cJSON_AddItemToArray(e, cJSON_CreateNumber(71));
    } else if (k == 6) {
        cJSON_AddStringToObject(s, "type", "array");
        cJSON_AddItemToObject(s, "items", rand_schema(r, depth + 1));
        int lo = (int)(capmoe_rng_next(r) % 3);
        cJSON_AddNumberToObject(s, "minItems", lo);
        if (capmoe_rng_next(r) % 2) cJSON_AddNumberToObject(s, "maxItems", lo + (int)(capmoe_rng_next(r) % 3));
    } else if (k == 7) {
        cJSON *a = cJSON_AddArrayToObject(s, "anyOf");
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "type", capmoe_rng_next(r) % 2 ? "string" : "integer");
        cJSON_AddItemToArray(a, x);
        x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "type", "null");
        cJSON_AddItemToArray(a, x);
    } else {
        cJSON_AddStringToObject(s, "type", "object");
        cJSON *p = cJSON_AddObjectToObject(s, "properties");
        cJSON *req = cJSON_AddArrayToObject(s, "required");
        static const char *names[] = {"id", "name", "tags", "ok", "values", "ünï"};
        int n = 1 + (int)(capmoe_rng_next(r) % 4);
        for (int i = 0; i < n; i++) {
            cJSON_AddItemToObject(p, names[i], rand_schema(r, depth + 1));
            if (capmoe_rng_next(r) % 3) cJSON_AddItemToArray(req, cJSON_CreateString(names[i]));
        }
        cJSON_AddFalseToObject(s, "additionalProperties");
    }
    return s;
}

START_TEST(test_fuzz_walks) {
    setup();
    int V = capmoe_grammar_vocab_size(g_voc);
    uint8_t *allow = malloc((size_t)(V + 7) / 8);
    const int32_t END = capmoe_tokenizer_eos_id(g_tok) >= 0 ? capmoe_tokenizer_eos_id(g_tok) : 0;
    capmoe_rng r;
    capmoe_rng_seed(&r, 2026);
    int done = 0, walks = 0;
    for (int si = 0; si < 150; si++) {
        cJSON *schema = si % 10 == 0 ? NULL : rand_schema(&r, 0);
        capmoe_error err;
        capmoe_grammar *g = NULL;
        ck_assert_msg(capmoe_grammar_compile(&g, schema, &err) == 0, "%s", err.msg);
        for (int w = 0; w < 4; w++, walks++) {
            int budget = w == 0 ? 24 : w == 1 ? 60 : 200;
            capmoe_grammar_state *s;
            ck_assert_int_eq(capmoe_grammar_state_new(&s, g, &err), 0);
            char text[8192];
            size_t tl = 0;
            int ended = 0;
            for (int step = 0; step < budget && !ended; step++) {
                int n = capmoe_grammar_mask(s, g_voc, &END, 1, budget - step, allow);
                ck_assert_msg(n > 0, "schema %d walk %d: empty mask after '%.*s'", si, w, (int)tl, text);
                /* a random allowed token (the last one when the walk is greedy) */
                int pick = (int)(capmoe_rng_next(&r) % (uint64_t)n), id = -1;
                for (int t = 0; t < V; t++)
                    if (allow[t / 8] >> (t % 8) & 1)
                        if (pick-- == 0) {
                            id = t;
                            break;
                        }
                if (id == END) {
                    ended = 1;
                    break;
                }
                ck_assert_int_eq(capmoe_grammar_accept(s, g_voc, id), 0);
                /* the text: the accepted tokens' bytes, checked against the tokenizer */
                const char *b;
                int bl = capmoe_grammar_vocab_token(g_voc, id, &b);
                ck_assert(bl > 0 && tl + (size_t)bl < sizeof text);
                memcpy(text + tl, b, bl);
                tl += bl;
            }
            text[tl] = 0;
            if (!ended && !capmoe_grammar_complete(s)) {
                /* the budget may be too small for the schema's minimal document */
                capmoe_grammar_state_free(s);
                continue;
            }
            done++;
            cJSON *v = cJSON_ParseWithLength(text, tl);
            ck_assert_msg(v, "schema %d: '%s' does not parse", si, text);
            if (schema) {
                char *ss = cJSON_PrintUnformatted(schema);
                ck_assert_msg(valid(schema, schema, v), "schema %s: '%s' does not validate", ss, text);
                free(ss);
            } else {
                ck_assert_msg(cJSON_IsObject(v), "json_object: '%s'", text);
            }
            cJSON_Delete(v);
            capmoe_grammar_state_free(s);
        }
        capmoe_grammar_free(g);
        cJSON_Delete(schema);
    }
    if (getenv("CAPMOE_GRAMMAR_VERBOSE")) fprintf(stderr, "%d of %d walks finished\n", done, walks);
    ck_assert_msg(done >= walks * 3 / 4, "only %d of %d walks finished", done, walks);
    free(allow);
}
END_TEST

/* The fast masks (token groups by first byte, plain-string blocks, the
 * per-state cache) against the reference (every token fed to a copy of the
 * state) at every step of random walks: the same bits and counts, also near
 * the end of the budget. The walks lean towards structural tokens half of
 * the time, so that states are left and met again (cache hits). */
START_TEST(test_mask_cache) {
    setup();
    int V = capmoe_grammar_vocab_size(g_voc);
    size_t mb = (size_t)(V + 7) / 8;
    uint8_t *fast = malloc(mb), *ref = malloc(mb);
    int32_t *ids = malloc(sizeof *ids * (size_t)V);
    const int32_t END[2] = {capmoe_tokenizer_eos_id(g_tok) >= 0 ? capmoe_tokenizer_eos_id(g_tok) : 0, 5};
    capmoe_rng r;
    capmoe_rng_seed(&r, 7);
    long steps = 0, hits = 0;
    cJSON *w = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},"
                           "\"n\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}},"
                           "\"required\":[\"city\"],\"additionalProperties\":false}");
    for (int si = 0; si < 36; si++) {
        capmoe_error err;
        capmoe_grammar *g = NULL;
        cJSON *schema = NULL;
        if (si % 12 == 11) { /* tool calls */
            const char *pre[2] = {"<c>{\"name\": \"get\", \"arguments\": ", "<c>{\"name\": \"all\", \"arguments\": "};
            const cJSON *sch[2] = {w, NULL};
            ck_assert_int_eq(capmoe_grammar_compile_calls(&g, pre, sch, 2, "}</c>", si % 2, &err), 0);
        } else {
            schema = si % 6 == 0 ? NULL : rand_schema(&r, 0);
            ck_assert_msg(capmoe_grammar_compile(&g, schema, &err) == 0, "%s", err.msg);
        }
        for (int wk = 0; wk < 2; wk++) {
            int budget = wk == 0 ? 40 : 140;
            capmoe_grammar_state *s;
            ck_assert_int_eq(capmoe_grammar_state_new(&s, g, &err), 0);
            for (int step = 0; step < budget; step++, steps++) {
                int left = budget - step;
                int n = capmoe_grammar_mask(s, g_voc, END, 2, left, fast);
                int nr = capmoe__grammar_mask_reference(s, g_voc, END, 2, left, ref);
                ck_assert_msg(n == nr && !memcmp(fast, ref, mb),
                              "schema %d walk %d step %d: mask differs (%d vs %d allowed)", si, wk,
                              step, n, nr);
                int k = 0, ks = 0;
                for (int t = 0; t < V; t++)
                    if (fast[t / 8] >> (t % 8) & 1) ids[k++] = t;
                ck_assert_int_eq(k, n);
                if (n == 0) break;
                if (capmoe_rng_next(&r) % 2) { /* structural tokens first */
                    for (int i = 0; i < k; i++) {
                        const char *b;
                        int bl = capmoe_grammar_vocab_token(g_voc, ids[i], &b);
                        if (bl > 0 && strpbrk(b, "\"]},:") && (size_t)bl == strlen(b)) ids[ks++] = ids[i];
                    }
                }
                if (ks) k = ks;
                int id = ids[capmoe_rng_next(&r) % (uint64_t)k];
                if (id == END[0] || id == END[1]) break;
                ck_assert_int_eq(capmoe_grammar_accept(s, g_voc, id), 0);
            }
            hits += capmoe__grammar_mask_hits(s);
            capmoe_grammar_state_free(s);
        }
        capmoe_grammar_free(g);
        cJSON_Delete(schema);
    }
    cJSON_Delete(w);
    if (getenv("CAPMOE_GRAMMAR_VERBOSE"))
        fprintf(stderr, "%ld masks compared, %ld from the cache\n", steps, hits);
    ck_assert_msg(hits > steps / 10, "the cache served only %ld of %ld masks", hits, steps);
    free(fast);
    free(ref);
    free(ids);
}
END_TEST

int main(void) {
    Suite *s = suite_create("grammar");
    TCase *tc = tcase_create("grammar");
    tcase_set_timeout(tc, 600); /* fuzzing on a shared machine, under ASan */
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_documents);
    tcase_add_test(tc, test_fuzz_walks);
    tcase_add_test(tc, test_mask_cache);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    capmoe_grammar_vocab_free(g_voc);
    capmoe_tokenizer_free(g_tok);
    return nf == 0 ? 0 : 1;
}
