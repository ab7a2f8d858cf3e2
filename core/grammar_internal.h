/* grammar_internal.h - what the token masks (grammar_mask.c) share with the
 * recognizer (grammar.c); not a public API. */
#ifndef CAPMOE_GRAMMAR_INTERNAL_H
#define CAPMOE_GRAMMAR_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/grammar.h"

#define CAPMOE__GRAMMAR_MAX_DEPTH 24

struct gnode;

typedef struct gframe {
    const struct gnode *n;
    uint8_t ph;
    uint16_t pos;              /* literal / key position, string length, digits */
    uint16_t count;            /* array items; object: the property being read */
    uint64_t cand;             /* literal / key candidates; \u hex digits */
    uint64_t seen;             /* object: properties given */
    uint8_t any_depth;         /* free-form nesting of this frame */
} gframe;

typedef struct capmoe__gmask_cache capmoe__gmask_cache;

struct capmoe_grammar_state {
    const capmoe_grammar *g;
    int depth;
    int done;
    capmoe__gmask_cache *cache; /* owned: the masks of states seen before (grammar_mask.c) */
    gframe st[CAPMOE__GRAMMAR_MAX_DEPTH]; /* st[0..depth) in use; keep it last */
};

/* dst = src, copying only the frames in use. */
void capmoe__grammar_copy(capmoe_grammar_state *dst, const capmoe_grammar_state *src);
/* Feeds one byte: 0, or -1 when rejected (s may then be half-changed). */
int capmoe__grammar_feed_byte(capmoe_grammar_state *s, int c);

/* The shortest text that completes the document (at most sizeof p - 1
 * bytes; over: it did not fit). */
typedef struct capmoe__gsbuf {
    char p[1024];
    size_t n;
    int over;
} capmoe__gsbuf;
void capmoe__grammar_completion(const capmoe_grammar_state *s, capmoe__gsbuf *b);

/* When the innermost value is a string and its next byte is a character
 * (not an escape's): how many more characters it may take (-1: any);
 * otherwise -2. */
int capmoe__grammar_string_room(const capmoe_grammar_state *s);

/* Writes a key of s into key (cap >= CAPMOE__GRAMMAR_KEY_MAX bytes) and
 * returns its length: two states with the same key accept exactly the same
 * texts (string lengths and array counts that no bound can tell apart any
 * more are folded). */
#define CAPMOE__GRAMMAR_KEY_MAX (16 + 32 * CAPMOE__GRAMMAR_MAX_DEPTH)
size_t capmoe__grammar_key(const capmoe_grammar_state *s, uint8_t *key);

/* The mask cache of a state (grammar_mask.c). */
capmoe__gmask_cache *capmoe__gmask_cache_new(void);
void capmoe__gmask_cache_free(capmoe__gmask_cache *c);
/* Masks of s served from its cache so far (tests). */
long capmoe__grammar_mask_hits(const capmoe_grammar_state *s);

/* The mask of s computed token by token, without the cache or the fast
 * paths (tests compare the two). Same contract as capmoe_grammar_mask. */
int capmoe__grammar_mask_reference(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v,
                                   const int32_t *end_ids, int n_end, int left, uint8_t *allow);

#endif
