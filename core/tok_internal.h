/* tok_internal.h - internals shared by the tokenizer files (not public).
 *
 *   tok_util.c      byte buffers, UTF-8, Unicode predicates, hash maps,
 *                   regex compilation (Oniguruma-compatible \s and \w)
 *   tok_pretok.c    normalizers and pre-tokenizers (tokenizer.json
 *                   "normalizer" / "pre_tokenizer" objects)
 *   tok_bpe.c       the BPE model: vocab, merges, byte fallback, merging
 *   tok_decode.c    decoders ("decoder" object) and lossy UTF-8
 *   tokenizer.c     loading, added tokens, encode pipeline, post-processor,
 *                   decode, streaming decode (the public API)
 *
 * The encode pipeline follows Hugging Face tokenizers: split the raw text on
 * added tokens (non-normalized ones first, normalized ones after the
 * normalizer), normalize, pre-tokenize, BPE each piece, post-process.
 * Everything here is read-only after loading, so encode/decode may run from
 * several threads at once on one tokenizer. */
#ifndef CAPMOE_TOK_INTERNAL_H
#define CAPMOE_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"

/* ---- growable byte buffer --------------------------------------------- */

typedef struct capmoe__tok_buf {
    char *p;
    size_t n, cap;
} capmoe__tok_buf;

int capmoe__tok_buf_reserve(capmoe__tok_buf *b, size_t extra);
int capmoe__tok_buf_put(capmoe__tok_buf *b, const void *s, size_t n);
int capmoe__tok_buf_putc(capmoe__tok_buf *b, char c);
int capmoe__tok_buf_put_cp(capmoe__tok_buf *b, uint32_t cp); /* UTF-8 encode */
void capmoe__tok_buf_free(capmoe__tok_buf *b);

/* ---- list of strings (pieces of text) -------------------------------- */

/* Strings stored back to back in one buffer. flag: per-piece bit used by
 * the pre-tokenizers (CAPMOE__PIECE_ORIGIN: the piece starts at offset 0 of
 * the original text, which Metaspace prepend_scheme "first" needs). */
#define CAPMOE__PIECE_ORIGIN 1

typedef struct capmoe__tok_list {
    capmoe__tok_buf data;
    size_t *off, *len;
    int *flag;
    int n, cap;
} capmoe__tok_list;

int capmoe__tok_list_add(capmoe__tok_list *l, const char *s, size_t n, int flag);
/* Starts a piece whose bytes the caller appends to l->data, then ends it. */
int capmoe__tok_list_begin(capmoe__tok_list *l, int flag);
void capmoe__tok_list_end(capmoe__tok_list *l);
void capmoe__tok_list_clear(capmoe__tok_list *l);
void capmoe__tok_list_free(capmoe__tok_list *l);
#define CAPMOE__PIECE(l, i) ((l)->data.p + (l)->off[i])

/* ---- UTF-8 and Unicode ------------------------------------------------ */

/* Length of the valid UTF-8 prefix of s (== n when all valid). */
size_t capmoe__tok_utf8_valid_prefix(const char *s, size_t n);
/* Decodes the code point at s (valid UTF-8 assumed); *len = its bytes. */
uint32_t capmoe__tok_utf8_next(const char *s, size_t n, int *len);
/* Byte length of the code point ending at s[n-1]. */
int capmoe__tok_utf8_prev_len(const char *s, size_t n);
/* Appends bytes as UTF-8, replacing each maximal invalid subpart by U+FFFD
 * (Rust String::from_utf8_lossy / WHATWG decoder). */
int capmoe__tok_utf8_lossy(capmoe__tok_buf *out, const unsigned char *s, size_t n);
/* Rust char::is_whitespace (Unicode White_Space). */
int capmoe__tok_is_whitespace(uint32_t cp);
/* Rust char::is_alphanumeric (letters and numbers). */
int capmoe__tok_is_alnum(uint32_t cp);
/* Rust char::is_numeric (Nd, Nl, No). */
int capmoe__tok_is_numeric(uint32_t cp);

/* ---- hash maps -------------------------------------------------------- */

uint64_t capmoe__tok_hash(const void *s, size_t n);

/* string -> id. The strings are not copied: they live in the owner's
 * storage (id -> string table given at lookup). */
typedef struct capmoe__tok_strmap {
    int32_t *slot; /* id + 1, 0 = empty */
    uint32_t mask;
    int count;
} capmoe__tok_strmap;

int capmoe__tok_strmap_init(capmoe__tok_strmap *m, int expected);
/* Inserts id for key (the caller guarantees strs[id] == key); replaces an
 * existing entry with the same key. */
int capmoe__tok_strmap_put(capmoe__tok_strmap *m, const char *const *strs, const uint32_t *lens,
                           const char *key, size_t n, int32_t id);
int32_t capmoe__tok_strmap_get(const capmoe__tok_strmap *m, const char *const *strs,
                               const uint32_t *lens, const char *key, size_t n);
void capmoe__tok_strmap_free(capmoe__tok_strmap *m);

/* (id, id) -> (rank, new id) for BPE merges. */
typedef struct capmoe__tok_pairmap {
    uint64_t *key; /* (a << 32 | b) + 1, 0 = empty */
    int32_t *rank, *new_id;
    uint32_t mask;
    int count;
} capmoe__tok_pairmap;

int capmoe__tok_pairmap_init(capmoe__tok_pairmap *m, int expected);
void capmoe__tok_pairmap_put(capmoe__tok_pairmap *m, int32_t a, int32_t b, int32_t rank,
                             int32_t new_id);
/* Returns 1 and fills rank/new_id when present. */
int capmoe__tok_pairmap_get(const capmoe__tok_pairmap *m, int32_t a, int32_t b, int32_t *rank,
                            int32_t *new_id);
void capmoe__tok_pairmap_free(capmoe__tok_pairmap *m);

/* ---- regular expressions --------------------------------------------- */

/* Compiles a tokenizer.json pattern: literal (a "String" pattern) or a
 * "Regex" written for Oniguruma, which HF tokenizers uses. \s, \S, \w and \W
 * are rewritten to Oniguruma's Unicode meaning (PCRE2's UCP differs: its \s
 * has U+180E, its \w lacks marks). what names the pattern in errors. */
pcre2_code *capmoe__tok_regex_compile(const char *pat, size_t len, int literal, const char *what,
                                      capmoe_error *err);

/* One match / non-match segment of a string, in order, covering it all. */
typedef struct capmoe__tok_span {
    size_t start, end;
    int is_match;
} capmoe__tok_span;

/* Finds all matches of re in s like Rust's find_iter (an empty match right
 * after the previous match is skipped) and returns the segments, as HF's
 * Pattern::find_matches. *spans is malloc'd. */
int capmoe__tok_find_matches(const pcre2_code *re, const char *s, size_t n,
                             capmoe__tok_span **spans, int *n_spans, capmoe_error *err);

/* ---- normalizers and pre-tokenizers (tok_pretok.c) ------------------- */

typedef struct capmoe__tok_norm capmoe__tok_norm;
typedef struct capmoe__tok_pretok capmoe__tok_pretok;
typedef struct cJSON cJSON;

/* Parses a "normalizer" object; NULL json gives *out = NULL (none). */
int capmoe__tok_norm_parse(capmoe__tok_norm **out, const cJSON *json, capmoe_error *err);
/* Normalizes in[0..n) into out (appended). */
int capmoe__tok_norm_apply(const capmoe__tok_norm *nm, const char *in, size_t n,
                           capmoe__tok_buf *out, capmoe_error *err);
void capmoe__tok_norm_free(capmoe__tok_norm *nm);

int capmoe__tok_pretok_parse(capmoe__tok_pretok **out, const cJSON *json, capmoe_error *err);
/* Splits pieces in place (pieces is replaced by the pre-tokenized pieces). */
int capmoe__tok_pretok_apply(const capmoe__tok_pretok *pt, capmoe__tok_list *pieces,
                             capmoe_error *err);
void capmoe__tok_pretok_free(capmoe__tok_pretok *pt);

/* GPT-2 byte <-> unicode table of the ByteLevel pre-tokenizer/decoder. */
uint32_t capmoe__tok_byte_to_cp(unsigned char b);
/* Returns the byte of code point cp, or -1 when cp is not in the table. */
int capmoe__tok_cp_to_byte(uint32_t cp);

/* ---- BPE model (tok_bpe.c) -------------------------------------------- */

typedef struct capmoe__tok_bpe {
    int n_ids;            /* max vocab id + 1 */
    char **tok;           /* id -> token (NUL-terminated, in arena), NULL for holes */
    uint32_t *tok_len;    /* id -> byte length */
    char *arena;          /* token bytes */
    capmoe__tok_strmap vocab;
    capmoe__tok_pairmap merges;
    int32_t unk_id;       /* -1 when none */
    char *unk_token;      /* as named in the json (may be absent from vocab) */
    int byte_fallback, fuse_unk, ignore_merges;
    char *cont_prefix;    /* continuing_subword_prefix, NULL if none/empty */
    char *eow_suffix;     /* end_of_word_suffix, NULL if none/empty */
    int32_t byte_tok[256];/* id of "<0xXX>" or -1 */
} capmoe__tok_bpe;

/* Parses the "model" object (only type BPE; others refused by name). */
int capmoe__tok_bpe_load(capmoe__tok_bpe *m, const cJSON *model, capmoe_error *err);
void capmoe__tok_bpe_free(capmoe__tok_bpe *m);
int32_t capmoe__tok_bpe_lookup(const capmoe__tok_bpe *m, const char *s, size_t n);

typedef struct capmoe__tok_ids {
    int32_t *v;
    int n, cap;
} capmoe__tok_ids;

int capmoe__tok_ids_push(capmoe__tok_ids *a, int32_t id);

/* Tokenizes one pre-token (word) and appends its ids. */
int capmoe__tok_bpe_word(const capmoe__tok_bpe *m, const char *w, size_t n, capmoe__tok_ids *out,
                         capmoe_error *err);

/* ---- decoders (tok_decode.c) ------------------------------------------ */

typedef struct capmoe__tok_decoder capmoe__tok_decoder;

int capmoe__tok_decoder_parse(capmoe__tok_decoder **out, const cJSON *json, capmoe_error *err);
/* Runs the decoder chain over tokens (replaced by the result). */
int capmoe__tok_decoder_apply(const capmoe__tok_decoder *d, capmoe__tok_list *tokens,
                              capmoe_error *err);
void capmoe__tok_decoder_free(capmoe__tok_decoder *d);

/* ---- small JSON helpers (tok_util.c) ---------------------------------- */

/* Boolean member: 1/0, or dflt when absent or null. */
int capmoe__tok_json_bool(const cJSON *obj, const char *name, int dflt);
/* String member or NULL when absent / null / not a string. */
const char *capmoe__tok_json_str(const cJSON *obj, const char *name);
/* strdup that returns NULL on NULL. */
char *capmoe__tok_strdup(const char *s);

#endif
