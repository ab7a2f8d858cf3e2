/* tok_bpe.c - the BPE model of tokenizer.json: vocab and merges in hash maps,
 * byte fallback, unk fusing, and the merge loop of HF tokenizers
 * (models/bpe/word.rs: a priority queue of (rank, position) pairs). */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int32_t capmoe__tok_bpe_lookup(const capmoe__tok_bpe *m, const char *s, size_t n) {
    return capmoe__tok_strmap_get(&m->vocab, (const char *const *)m->tok, m->tok_len, s, n);
}

void capmoe__tok_bpe_free(capmoe__tok_bpe *m) {
    if (!m) return;
    free(m->tok);
    free(m->tok_len);
    free(m->arena);
    capmoe__tok_strmap_free(&m->vocab);
    capmoe__tok_pairmap_free(&m->merges);
    free(m->unk_token);
    free(m->cont_prefix);
    free(m->eow_suffix);
    memset(m, 0, sizeof *m);
}

static char *nonempty_dup(const char *s) { return (s && *s) ? capmoe__tok_strdup(s) : NULL; }

/* Splits a legacy "a b" merge line; returns 0 when it has exactly two parts. */
static int split_merge_line(const char *line, const char **a, size_t *na, const char **b,
                            size_t *nb) {
    const char *sp = strchr(line, ' ');
    if (!sp || sp == line || strchr(sp + 1, ' ') || !sp[1]) return -1;
    *a = line;
    *na = (size_t)(sp - line);
    *b = sp + 1;
    *nb = strlen(sp + 1);
    return 0;
}

static int load_merges(capmoe__tok_bpe *m, const cJSON *merges, capmoe_error *err) {
    int n = cJSON_GetArraySize(merges);
    if (capmoe__tok_pairmap_init(&m->merges, n)) return capmoe_set_error(err, "out of memory");
    size_t plen = m->cont_prefix ? strlen(m->cont_prefix) : 0;
    capmoe__tok_buf joined = {0};
    int rank = 0, idx = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t na, nb;
        idx++;
        if (cJSON_IsString(it)) {
            if (!strncmp(it->valuestring, "#version", 8)) continue;
            if (split_merge_line(it->valuestring, &a, &na, &b, &nb)) {
                capmoe__tok_buf_free(&joined);
                return capmoe_set_error(err, "model.merges[%d]: \"%.80s\" is not two tokens "
                                        "separated by one space", idx - 1, it->valuestring);
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            na = strlen(a);
            nb = strlen(b);
        } else {
            capmoe__tok_buf_free(&joined);
            return capmoe_set_error(err, "model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]",
                                    idx - 1);
        }
        int32_t ia = capmoe__tok_bpe_lookup(m, a, na), ib = capmoe__tok_bpe_lookup(m, b, nb);
        if (ia < 0 || ib < 0) {
            capmoe__tok_buf_free(&joined);
            const char *bad = ia < 0 ? a : b;
            size_t nbad = ia < 0 ? na : nb;
            return capmoe_set_error(err, "model.merges[%d]: token \"%.*s\" is not in the vocab",
                                    idx - 1, (int)(nbad > 80 ? 80 : nbad), bad);
        }
        size_t skip = (plen && nb >= plen) ? plen : 0;
        joined.n = 0;
        if (capmoe__tok_buf_put(&joined, a, na) || capmoe__tok_buf_put(&joined, b + skip, nb - skip)) {
            capmoe__tok_buf_free(&joined);
            return capmoe_set_error(err, "out of memory");
        }
        int32_t inew = capmoe__tok_bpe_lookup(m, joined.p, joined.n);
        if (inew < 0) {
            int ln = (int)(joined.n > 80 ? 80 : joined.n);
            capmoe_set_error(err, "model.merges[%d]: merged token \"%.*s\" is not in the vocab",
                             idx - 1, ln, joined.p);
            capmoe__tok_buf_free(&joined);
            return -1;
        }
        capmoe__tok_pairmap_put(&m->merges, ia, ib, rank, inew);
        rank++;
    }
    capmoe__tok_buf_free(&joined);
    return 0;
}

int capmoe__tok_bpe_load(capmoe__tok_bpe *m, const cJSON *model, capmoe_error *err) {
    memset(m, 0, sizeof *m);
    m->unk_id = -1;
    if (!cJSON_IsObject(model)) return capmoe_set_error(err, "missing \"model\" object");
    const char *type = capmoe__tok_json_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (type && strcmp(type, "BPE") != 0)
        return capmoe_set_error(err, "tokenizer model type \"%s\" is not supported (only BPE)",
                                type);
    if (!type && !merges)
        return capmoe_set_error(err, "model has no \"type\" and no \"merges\": not a BPE model");
    if (!cJSON_IsObject(vocab)) return capmoe_set_error(err, "model.vocab: missing or not an object");
    if (merges && !cJSON_IsNull(merges) && !cJSON_IsArray(merges))
        return capmoe_set_error(err, "model.merges: not an array");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return capmoe_set_error(err, "model.dropout = %g: BPE dropout is not supported",
                                dropout->valuedouble);

    /* vocab: ids, sizes, then one arena for all token bytes */
    int n_tok = 0;
    size_t total = 0;
    int32_t max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 0x7fffffff ||
            it->valuedouble != (double)(int32_t)it->valuedouble)
            return capmoe_set_error(err, "model.vocab[\"%.80s\"]: id is not a non-negative integer",
                                    it->string ? it->string : "");
        if (it->valueint > max_id) max_id = it->valueint;
        total += strlen(it->string) + 1;
        n_tok++;
    }
    if (max_id >= 50000000) return capmoe_set_error(err, "model.vocab: id %d is too large", max_id);
    m->n_ids = max_id + 1;
    m->tok = calloc((size_t)(m->n_ids ? m->n_ids : 1), sizeof *m->tok);
    m->tok_len = calloc((size_t)(m->n_ids ? m->n_ids : 1), sizeof *m->tok_len);
    m->arena = malloc(total ? total : 1);
    if (!m->tok || !m->tok_len || !m->arena || capmoe__tok_strmap_init(&m->vocab, n_tok))
        goto oom;
    size_t at = 0;
    cJSON_ArrayForEach(it, vocab) {
        size_t l = strlen(it->string);
        char *dst = m->arena + at;
        memcpy(dst, it->string, l + 1);
        at += l + 1;
        int32_t id = it->valueint;
        m->tok[id] = dst;
        m->tok_len[id] = (uint32_t)l;
        if (capmoe__tok_strmap_put(&m->vocab, (const char *const *)m->tok, m->tok_len, dst, l, id))
            goto oom;
    }

    m->byte_fallback = capmoe__tok_json_bool(model, "byte_fallback", 0);
    m->fuse_unk = capmoe__tok_json_bool(model, "fuse_unk", 0);
    m->ignore_merges = capmoe__tok_json_bool(model, "ignore_merges", 0);
    m->cont_prefix = nonempty_dup(capmoe__tok_json_str(model, "continuing_subword_prefix"));
    m->eow_suffix = nonempty_dup(capmoe__tok_json_str(model, "end_of_word_suffix"));
    const char *unk = capmoe__tok_json_str(model, "unk_token");
    if (unk) {
        if (!(m->unk_token = capmoe__tok_strdup(unk))) goto oom;
        m->unk_id = capmoe__tok_bpe_lookup(m, unk, strlen(unk));
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_tok[b] = capmoe__tok_bpe_lookup(m, name, 6);
    }
    if (merges && cJSON_IsArray(merges)) {
        if (load_merges(m, merges, err)) {
            capmoe__tok_bpe_free(m);
            return -1;
        }
    } else if (capmoe__tok_pairmap_init(&m->merges, 0)) {
        goto oom;
    }
    return 0;
oom:
    capmoe__tok_bpe_free(m);
    return capmoe_set_error(err, "model: out of memory");
}

/* ==== Merging =========================================================== */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 = none */
    uint32_t len;       /* bytes of the word covered; 0 = merged away */
} sym;

typedef struct cand {
    int32_t rank, pos, new_id;
} cand;

static int cand_less(const cand *x, const cand *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

typedef struct heap {
    cand *v;
    int n, cap;
} heap;

static int heap_push(heap *h, cand c) {
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 32;
        cand *v = realloc(h->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        h->v = v;
        h->cap = cap;
    }
    int i = h->n++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!cand_less(&c, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return 0;
}

static cand heap_pop(heap *h) {
    cand top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        const cand *best = &last;
        if (l < h->n && cand_less(&h->v[l], best)) { m = l; best = &h->v[l]; }
        if (r < h->n && cand_less(&h->v[r], best)) { m = r; }
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

static int sym_add(sym **v, int *n, int *cap, int32_t id, uint32_t len) {
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 64;
        sym *p = realloc(*v, (size_t)c * sizeof *p);
        if (!p) return -1;
        *v = p;
        *cap = c;
    }
    (*v)[*n] = (sym){id, *n - 1, -1, len};
    if (*n > 0) (*v)[*n - 1].next = *n;
    (*n)++;
    return 0;
}

int capmoe__tok_bpe_word(const capmoe__tok_bpe *m, const char *w, size_t n, capmoe__tok_ids *out,
                         capmoe_error *err) {
    if (n == 0) return 0;
    if (m->ignore_merges) {
        int32_t id = capmoe__tok_bpe_lookup(m, w, n);
        if (id >= 0) return capmoe__tok_ids_push(out, id) ? capmoe_set_error(err, "out of memory") : 0;
    }
    sym *s = NULL;
    int ns = 0, cap = 0;
    capmoe__tok_buf tmp = {0};
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    int have_unk = 0;
    size_t plen = m->cont_prefix ? strlen(m->cont_prefix) : 0;
    size_t slen = m->eow_suffix ? strlen(m->eow_suffix) : 0;
    for (size_t i = 0; i < n;) {
        int l;
        capmoe__tok_utf8_next(w + i, n - i, &l);
        const char *c = w + i;
        size_t cl = (size_t)l;
        int first = i == 0, last = i + (size_t)l >= n;
        if ((!first && plen) || (last && slen)) {
            tmp.n = 0;
            if ((!first && plen && capmoe__tok_buf_put(&tmp, m->cont_prefix, plen)) ||
                capmoe__tok_buf_put(&tmp, c, cl) ||
                (last && slen && capmoe__tok_buf_put(&tmp, m->eow_suffix, slen)))
                goto oom;
            c = tmp.p;
            cl = tmp.n;
        }
        int32_t id = capmoe__tok_bpe_lookup(m, c, cl);
        if (id >= 0) {
            if (have_unk) {
                if (sym_add(&s, &ns, &cap, unk_id, unk_len)) goto oom;
                have_unk = 0;
            }
            if (sym_add(&s, &ns, &cap, id, (uint32_t)l)) goto oom;
        } else {
            int done = 0;
            if (m->byte_fallback) {
                int all = 1;
                for (size_t k = 0; k < cl; k++)
                    if (m->byte_tok[(unsigned char)c[k]] < 0) all = 0;
                if (all) {
                    /* pending unk stays pending, as in HF */
                    for (size_t k = 0; k < cl; k++)
                        if (sym_add(&s, &ns, &cap, m->byte_tok[(unsigned char)c[k]], 1)) goto oom;
                    done = 1;
                }
            }
            if (!done && m->unk_token) {
                if (m->unk_id < 0) {
                    free(s);
                    capmoe__tok_buf_free(&tmp);
                    return capmoe_set_error(err, "unk_token \"%s\" is not in the vocab",
                                            m->unk_token);
                }
                if (have_unk && m->fuse_unk) {
                    unk_len += (uint32_t)l;
                } else {
                    if (have_unk && sym_add(&s, &ns, &cap, unk_id, unk_len)) goto oom;
                    unk_id = m->unk_id;
                    unk_len = (uint32_t)l;
                    have_unk = 1;
                }
            }
            /* no unk token: the character is dropped, as in HF */
        }
        i += (size_t)l;
    }
    if (have_unk && sym_add(&s, &ns, &cap, unk_id, unk_len)) goto oom;
    capmoe__tok_buf_free(&tmp);

    heap h = {0};
    for (int i = 0; i + 1 < ns; i++) {
        int32_t rank, nid;
        if (capmoe__tok_pairmap_get(&m->merges, s[i].id, s[i + 1].id, &rank, &nid) &&
            heap_push(&h, (cand){rank, i, nid}))
            goto oom_heap;
    }
    while (h.n > 0) {
        cand top = heap_pop(&h);
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        sym right = s[cur->next];
        int32_t rank, nid;
        if (!capmoe__tok_pairmap_get(&m->merges, cur->id, right.id, &rank, &nid) || nid != top.new_id)
            continue;
        int32_t rpos = cur->next;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        s[rpos].len = 0;
        if (right.next >= 0) s[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            sym *p = &s[cur->prev];
            if (capmoe__tok_pairmap_get(&m->merges, p->id, cur->id, &rank, &nid) &&
                heap_push(&h, (cand){rank, cur->prev, nid}))
                goto oom_heap;
        }
        if (cur->next >= 0) {
            sym *nx = &s[cur->next];
            if (capmoe__tok_pairmap_get(&m->merges, cur->id, nx->id, &rank, &nid) &&
                heap_push(&h, (cand){rank, top.pos, nid}))
                goto oom_heap;
        }
    }
    free(h.v);
    for (int i = 0; i < ns; i++)
        if (s[i].len && capmoe__tok_ids_push(out, s[i].id)) {
            free(s);
            return capmoe_set_error(err, "out of memory");
        }
    free(s);
    return 0;
oom_heap:
    free(h.v);
    free(s);
    return capmoe_set_error(err, "out of memory");
oom:
    free(s);
    capmoe__tok_buf_free(&tmp);
    return capmoe_set_error(err, "out of memory");
}
