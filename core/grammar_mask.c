/* grammar_mask.c - the token masks of constrained decoding (grammar.h): the
 * vocabulary's bytes, indexed for masks, and the mask of a recognizer state.
 *
 * A token is allowed when feeding its bytes to a copy of the state succeeds
 * (grammar.c). Three things keep that cheap per step:
 *   - tokens are grouped by their first byte, and only the groups of the
 *     bytes the state accepts next are tried;
 *   - inside a string, the tokens made only of plain characters (no quote,
 *     backslash or control byte) are allowed as a block (all of them, or
 *     those of at most the characters left under maxLength), and only the
 *     other tokens are fed;
 *   - each state keeps the masks of the states it has been in (keyed by the
 *     recognizer's stack, string lengths and item counts that no bound can
 *     tell apart folded), so a state met again costs a copy: inside a string,
 *     after a key, between items.
 * Near the end of the token budget (when the document must be able to
 * close in what is left) every candidate is checked token by token, without
 * the cache. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

/* ---- the vocabulary --------------------------------------------------------------------- */

struct capmoe_grammar_vocab {
    int n;
    uint32_t *off;             /* n + 1 */
    int32_t *len;              /* -1: never inside a document */
    char *bytes;
    uint64_t serial;           /* tells vocabularies apart in mask caches */
    int32_t *by_first;         /* the document tokens, by their first byte */
    int first_at[257];         /* byte b's tokens: by_first[first_at[b] .. first_at[b + 1]) */
    uint8_t *plain;            /* bit set: tokens of plain string characters only */
    int n_plain;
    int32_t *plain_by_chars;   /* those tokens, fewest characters first */
    int32_t *plain_chars;      /* their characters, same order */
    int32_t *other;            /* the document tokens that are not plain */
    int n_other;
};

static atomic_uint_fast64_t g_vocab_serial;

int capmoe_grammar_vocab_size(const capmoe_grammar_vocab *v) { return v->n; }

int capmoe_grammar_vocab_token(const capmoe_grammar_vocab *v, int32_t id, const char **bytes) {
    if (id < 0 || id >= v->n || v->len[id] <= 0) return -1;
    *bytes = v->bytes + v->off[id];
    return v->len[id];
}

void capmoe_grammar_vocab_free(capmoe_grammar_vocab *v) {
    if (!v) return;
    free(v->off);
    free(v->len);
    free(v->bytes);
    free(v->by_first);
    free(v->plain);
    free(v->plain_by_chars);
    free(v->plain_chars);
    free(v->other);
    free(v);
}

/* Characters of a plain token (UTF-8 lead bytes), or -1 when a byte is a
 * quote, a backslash or a control byte. */
static int plain_chars(const unsigned char *p, int L) {
    int n = 0;
    for (int k = 0; k < L; k++) {
        if (p[k] < 0x20 || p[k] == '"' || p[k] == '\\') return -1;
        n += (p[k] & 0xC0) != 0x80;
    }
    return n;
}

/* The indexes above, from off / len / bytes. */
static int index_vocab(capmoe_grammar_vocab *v) {
    int V = v->n;
    v->serial = atomic_fetch_add(&g_vocab_serial, 1) + 1;
    v->by_first = malloc(sizeof *v->by_first * (size_t)(V + 1));
    v->plain = calloc((size_t)(V + 7) / 8, 1);
    v->plain_by_chars = malloc(sizeof *v->plain_by_chars * (size_t)(V + 1));
    v->plain_chars = malloc(sizeof *v->plain_chars * (size_t)(V + 1));
    v->other = malloc(sizeof *v->other * (size_t)(V + 1));
    if (!v->by_first || !v->plain || !v->plain_by_chars || !v->plain_chars || !v->other) return -1;
    int count[256] = {0};
    for (int id = 0; id < V; id++)
        if (v->len[id] > 0) count[(unsigned char)v->bytes[v->off[id]]]++;
    v->first_at[0] = 0;
    for (int b = 0; b < 256; b++) v->first_at[b + 1] = v->first_at[b] + count[b];
    int at[256];
    memcpy(at, v->first_at, sizeof at);
    int maxc = 0;
    for (int id = 0; id < V; id++) {
        if (v->len[id] <= 0) continue;
        const unsigned char *p = (const unsigned char *)v->bytes + v->off[id];
        v->by_first[at[p[0]]++] = id;
        int c = plain_chars(p, v->len[id]);
        if (c < 0) {
            v->other[v->n_other++] = id;
            continue;
        }
        v->plain[id / 8] |= (uint8_t)(1u << (id % 8));
        v->plain_by_chars[v->n_plain] = id;
        v->plain_chars[v->n_plain++] = c;
        if (c > maxc) maxc = c;
    }
    /* counting sort by characters (stable: ids stay ascending) */
    int *hist = calloc((size_t)maxc + 2, sizeof *hist);
    int32_t *ids = malloc(sizeof *ids * (size_t)(v->n_plain + 1));
    int32_t *chs = malloc(sizeof *chs * (size_t)(v->n_plain + 1));
    if (!hist || !ids || !chs) {
        free(hist);
        free(ids);
        free(chs);
        return -1;
    }
    for (int i = 0; i < v->n_plain; i++) hist[v->plain_chars[i] + 1]++;
    for (int c = 0; c <= maxc; c++) hist[c + 1] += hist[c];
    for (int i = 0; i < v->n_plain; i++) {
        int k = hist[v->plain_chars[i]]++;
        ids[k] = v->plain_by_chars[i];
        chs[k] = v->plain_chars[i];
    }
    free(hist);
    free(v->plain_by_chars);
    free(v->plain_chars);
    v->plain_by_chars = ids;
    v->plain_chars = chs;
    return 0;
}

int capmoe_grammar_vocab_new(capmoe_grammar_vocab **out, const capmoe_tokenizer *tok,
                             capmoe_error *err) {
    *out = NULL;
    int V = capmoe_tokenizer_n_vocab(tok);
    capmoe_grammar_vocab *v = calloc(1, sizeof *v);
    if (!v) return capmoe_set_error(err, "out of memory");
    v->n = V;
    v->off = calloc((size_t)V + 1, sizeof *v->off);
    v->len = calloc((size_t)V, sizeof *v->len);
    size_t cap = (size_t)V * 8 + 64, used = 0;
    v->bytes = malloc(cap);
    if (!v->off || !v->len || !v->bytes) goto oom;
    /* a token's bytes as they read after a plain letter (a first token may
     * lose a leading space to the decoder) */
    int32_t *ref = NULL;
    int nref = 0;
    if (capmoe_tokenizer_encode(tok, "a", 1, 0, &ref, &nref, err) != 0) goto fail;
    int32_t a = nref == 1 ? ref[0] : -1;
    free(ref);
    char *at = NULL;
    size_t alen = 0;
    if (a >= 0 && capmoe_tokenizer_decode(tok, &a, 1, 0, &at, &alen, err) != 0) goto fail;
    for (int id = 0; id < V; id++) {
        v->off[id] = (uint32_t)used;
        v->len[id] = -1;
        if (capmoe_tokenizer_is_special(tok, id) || !capmoe_tokenizer_id_to_token(tok, id)) continue;
        int32_t pair[2] = {a, id};
        char *t = NULL;
        size_t tl = 0;
        capmoe_error e2;
        if (capmoe_tokenizer_decode(tok, a >= 0 ? pair : pair + 1, a >= 0 ? 2 : 1, 0, &t, &tl, &e2) != 0)
            continue;
        size_t skip = a >= 0 && tl >= alen && !memcmp(t, at, alen) ? alen : 0;
        if (a >= 0 && skip == 0) {
            free(t);
            continue;
        }
        const char *p = t + skip;
        size_t pl = tl - skip;
        if (pl == 0 || memmem(p, pl, "\xEF\xBF\xBD", 3)) { /* incomplete UTF-8 */
            free(t);
            continue;
        }
        if (used + pl > cap) {
            while (used + pl > cap) cap *= 2;
            char *nb = realloc(v->bytes, cap);
            if (!nb) {
                free(t);
                free(at);
                goto oom;
            }
            v->bytes = nb;
        }
        memcpy(v->bytes + used, p, pl);
        used += pl;
        v->len[id] = (int32_t)pl;
        free(t);
    }
    v->off[V] = (uint32_t)used;
    free(at);
    if (index_vocab(v) != 0) goto oom;
    *out = v;
    return 0;
oom:
    capmoe_set_error(err, "out of memory for the grammar's vocabulary");
fail:
    capmoe_grammar_vocab_free(v);
    return -1;
}


/* ---- the mask cache --------------------------------------------------------------------- */

#define CACHE_BYTES (512u << 10) /* per state: masks of 8k tokens x 64, of 150k tokens x 27 */
#define CACHE_MIN 4
#define CACHE_MAX 64

typedef struct centry {
    uint64_t hash, vocab, used;
    size_t key_len;
    int count;
    uint8_t *key;              /* key_len bytes, then the mask */
} centry;

struct capmoe__gmask_cache {
    int n;
    uint64_t tick;
    long hits;
    centry e[CACHE_MAX];
};

capmoe__gmask_cache *capmoe__gmask_cache_new(void) { return calloc(1, sizeof(capmoe__gmask_cache)); }

void capmoe__gmask_cache_free(capmoe__gmask_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) free(c->e[i].key);
    free(c);
}

long capmoe__grammar_mask_hits(const capmoe_grammar_state *s) {
    return s->cache ? s->cache->hits : 0;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static centry *cache_find(capmoe__gmask_cache *c, uint64_t vocab, uint64_t h, const uint8_t *key,
                          size_t kl) {
    for (int i = 0; i < c->n; i++) {
        centry *e = &c->e[i];
        if (e->hash == h && e->vocab == vocab && e->key_len == kl && !memcmp(e->key, key, kl)) {
            e->used = ++c->tick;
            return e;
        }
    }
    return NULL;
}

/* Stores a mask (a full cache drops its least recently used entry; out of
 * memory: nothing stored). */
static void cache_put(capmoe__gmask_cache *c, const capmoe_grammar_vocab *v, uint64_t h,
                      const uint8_t *key, size_t kl, const uint8_t *mask, int count) {
    size_t mb = (size_t)(v->n + 7) / 8;
    int cap = (int)(CACHE_BYTES / (mb + kl + 1));
    if (cap < CACHE_MIN) cap = CACHE_MIN;
    if (cap > CACHE_MAX) cap = CACHE_MAX;
    centry *e;
    if (c->n < cap) {
        e = &c->e[c->n];
        e->key = NULL;
    } else {
        e = &c->e[0];
        for (int i = 1; i < c->n; i++)
            if (c->e[i].used < e->used) e = &c->e[i];
        free(e->key);
        e->key = NULL;
    }
    uint8_t *buf = malloc(kl + mb);
    if (!buf) {
        if (e != &c->e[c->n]) *e = c->e[--c->n]; /* the dropped entry's slot */
        return;
    }
    if (e == &c->e[c->n]) c->n++;
    memcpy(buf, key, kl);
    memcpy(buf + kl, mask, mb);
    *e = (centry){.hash = h, .vocab = v->serial, .used = ++c->tick, .key_len = kl, .count = count,
                  .key = buf};
}

/* ---- masks ------------------------------------------------------------------------------ */

#define SET(allow, id) ((allow)[(id) / 8] |= (uint8_t)(1u << ((id) % 8)))
#define HAS(allow, id) ((allow)[(id) / 8] >> ((id) % 8) & 1)

/* 1 when token id may follow s. t: scratch state. */
static int token_ok(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v, int id,
                    capmoe_grammar_state *t, int closing, int near_end, const capmoe__gsbuf *comp,
                    int left) {
    int L = v->len[id];
    const unsigned char *p = (const unsigned char *)v->bytes + v->off[id];
    if (closing && ((size_t)L > comp->n || memcmp(p, comp->p, (size_t)L) != 0)) return 0;
    capmoe__grammar_copy(t, s);
    for (int k = 0; k < L; k++)
        if (capmoe__grammar_feed_byte(t, p[k]) != 0) return 0;
    if (near_end) { /* the document must still close in what is left */
        capmoe__gsbuf after = {.n = 0};
        capmoe__grammar_completion(t, &after);
        return !after.over && (int)after.n <= left - 1;
    }
    return 1;
}

/* The document tokens allowed after s into allow (zeroed by the caller);
 * returns how many. */
static int scan(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v, int closing,
                int near_end, const capmoe__gsbuf *comp, int left, uint8_t *allow) {
    capmoe_grammar_state t;
    int count = 0;
    /* inside a string: plain tokens as a block. Near the end too when what
     * closes the document now fits: plain characters never lengthen it
     * (they only count towards minLength). */
    int room = closing || (near_end && (int)comp->n > left - 1) ? -2
                                                                 : capmoe__grammar_string_room(s);
    if (room != -2) {
        if (room == -1) {
            memcpy(allow, v->plain, (size_t)(v->n + 7) / 8);
            count = v->n_plain;
        } else {
            for (; count < v->n_plain && v->plain_chars[count] <= room; count++)
                SET(allow, v->plain_by_chars[count]);
        }
        for (int i = 0; i < v->n_other; i++) {
            int id = v->other[i];
            if (token_ok(s, v, id, &t, 0, near_end, comp, left)) {
                SET(allow, id);
                count++;
            }
        }
        return count;
    }
    for (int c = 0; c < 256; c++) {
        if (v->first_at[c] == v->first_at[c + 1]) continue;
        capmoe__grammar_copy(&t, s);
        if (capmoe__grammar_feed_byte(&t, c) != 0) continue; /* no token starting with c */
        for (int i = v->first_at[c]; i < v->first_at[c + 1]; i++) {
            int id = v->by_first[i];
            if (token_ok(s, v, id, &t, closing, near_end, comp, left)) {
                SET(allow, id);
                count++;
            }
        }
    }
    return count;
}

/* The end tokens, when the document is complete (each once). */
static int add_ends(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v,
                    const int32_t *end_ids, int n_end, uint8_t *allow) {
    int count = 0;
    if (!capmoe_grammar_complete(s)) return 0;
    for (int i = 0; i < n_end; i++)
        if (end_ids[i] >= 0 && end_ids[i] < v->n && !HAS(allow, end_ids[i])) {
            SET(allow, end_ids[i]);
            count++;
        }
    return count;
}

int capmoe_grammar_mask(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v,
                        const int32_t *end_ids, int n_end, int left, uint8_t *allow) {
    size_t mb = (size_t)(v->n + 7) / 8;
    memset(allow, 0, mb);
    if (s->done) return add_ends(s, v, end_ids, n_end, allow);
    capmoe__gsbuf comp = {.n = 0};
    capmoe__grammar_completion(s, &comp);
    int closing = !comp.over && left <= (int)comp.n + 1;
    /* near the end of the budget each token is checked to leave a document
     * that can still close (a ',' or another call would need more) */
    int near_end = !comp.over && left <= (int)comp.n + 64;
    if (!near_end) {
        uint8_t key[CAPMOE__GRAMMAR_KEY_MAX];
        size_t kl = capmoe__grammar_key(s, key);
        uint64_t h = hash_bytes(key, kl);
        centry *e = s->cache ? cache_find(s->cache, v->serial, h, key, kl) : NULL;
        int count;
        if (e) {
            s->cache->hits++;
            memcpy(allow, e->key + e->key_len, mb);
            count = e->count;
        } else {
            count = scan(s, v, 0, 0, &comp, left, allow);
            if (s->cache) cache_put(s->cache, v, h, key, kl, allow, count);
        }
        return count + add_ends(s, v, end_ids, n_end, allow);
    }
    int count = scan(s, v, closing, near_end, &comp, left, allow);
    int ends = add_ends(s, v, end_ids, n_end, allow);
    if (count + ends == 0) { /* no token can close in time: the best effort is to go on */
        count = scan(s, v, 0, 0, &comp, left, allow);
        ends = add_ends(s, v, end_ids, n_end, allow);
    }
    return count + ends;
}

int capmoe__grammar_mask_reference(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v,
                                   const int32_t *end_ids, int n_end, int left, uint8_t *allow) {
    memset(allow, 0, (size_t)(v->n + 7) / 8);
    if (s->done) return add_ends(s, v, end_ids, n_end, allow);
    capmoe__gsbuf comp = {.n = 0};
    capmoe__grammar_completion(s, &comp);
    int closing = !comp.over && left <= (int)comp.n + 1;
    int near_end = !comp.over && left <= (int)comp.n + 64;
    capmoe_grammar_state t;
    for (int attempt = 0; attempt < 2; attempt++) {
        int count = 0;
        for (int id = 0; id < v->n; id++)
            if (v->len[id] > 0 && token_ok(s, v, id, &t, closing, near_end, &comp, left)) {
                SET(allow, id);
                count++;
            }
        count += add_ends(s, v, end_ids, n_end, allow);
        if (count > 0 || !near_end) return count;
        near_end = closing = 0;
    }
    return 0;
}

int capmoe_grammar_accept(capmoe_grammar_state *s, const capmoe_grammar_vocab *v, int32_t id) {
    if (id < 0 || id >= v->n || v->len[id] <= 0) return -1;
    return capmoe_grammar_feed(s, v->bytes + v->off[id], (size_t)v->len[id]);
}
