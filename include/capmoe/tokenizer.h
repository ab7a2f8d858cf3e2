/* tokenizer.h - Hugging Face tokenizer.json (BPE) in C.
 *
 * Byte-level BPE with regex pre-tokenizers (GPT-2/OLMoE, Qwen2/3, DeepSeek-V3),
 * SentencePiece-style BPE (Metaspace / Prepend+Replace, byte_fallback; Llama,
 * Mistral, Mixtral), NFC, added/special tokens, post-processor (BOS), decoders.
 * Encoding matches HF tokenizers with add_special_tokens as given. */
#ifndef CAPMOE_TOKENIZER_H
#define CAPMOE_TOKENIZER_H

#include "capmoe/common.h"

typedef struct capmoe_tokenizer capmoe_tokenizer;

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json
 * (chat template, bos/eos names). */
int capmoe_tokenizer_load(capmoe_tokenizer **out, const char *dir, capmoe_error *err);
/* Loads from a tokenizer.json path alone (tests). */
int capmoe_tokenizer_load_file(capmoe_tokenizer **out, const char *path, capmoe_error *err);
void capmoe_tokenizer_free(capmoe_tokenizer *tok);

/* Encodes len bytes of UTF-8 text. *ids is malloc'd (caller frees).
 * add_special: apply the post-processor (e.g. BOS), like HF add_special_tokens.
 * Special tokens written in the text are matched as special tokens. */
int capmoe_tokenizer_encode(const capmoe_tokenizer *tok, const char *text, size_t len,
                            int add_special, int32_t **ids, int *n_ids, capmoe_error *err);

/* Decodes ids to malloc'd UTF-8 (NUL-terminated). skip_special: drop special
 * tokens (as HF skip_special_tokens). Invalid byte sequences become U+FFFD. */
int capmoe_tokenizer_decode(const capmoe_tokenizer *tok, const int32_t *ids, int n_ids,
                            int skip_special, char **text, size_t *len, capmoe_error *err);

/* Number of ids (max id + 1, added tokens included). */
int capmoe_tokenizer_n_vocab(const capmoe_tokenizer *tok);
/* Id of a token string (vocab or added token), -1 if none. */
int capmoe_tokenizer_token_to_id(const capmoe_tokenizer *tok, const char *content);
/* Token string of an id (NULL if none); owned by tok. */
const char *capmoe_tokenizer_id_to_token(const capmoe_tokenizer *tok, int id);
int capmoe_tokenizer_is_special(const capmoe_tokenizer *tok, int id);
int capmoe_tokenizer_bos_id(const capmoe_tokenizer *tok); /* -1 if none */
int capmoe_tokenizer_eos_id(const capmoe_tokenizer *tok); /* -1 if none */
/* Chat template string from tokenizer_config.json, NULL if none. */
const char *capmoe_tokenizer_chat_template(const capmoe_tokenizer *tok);

/* Streaming-safe decoding: feed ids one at a time, get only complete UTF-8
 * text (never half a character). The pieces add up to
 * capmoe_tokenizer_decode of all ids (the one exception: a run of <0xXX>
 * byte-fallback tokens that turns invalid after part of it was returned, see
 * core/tokenizer.c). Each push decodes a short window of recent ids, so the
 * cost per id does not grow with the length of the stream. State owned by
 * the caller; one stream per thread. */
typedef struct capmoe_detok_stream {
    const capmoe_tokenizer *tok;
    int32_t *ids;       /* (internal) the recent ids decoded together */
    int n_ids, cap_ids;
    size_t emitted;     /* (internal) bytes of their text already returned */
    int skip_special;
    char *shown;        /* (internal) those bytes */
    size_t shown_cap;
} capmoe_detok_stream;

void capmoe_detok_stream_init(capmoe_detok_stream *s, const capmoe_tokenizer *tok,
                              int skip_special);
/* Appends id; *text receives malloc'd new complete text (may be "").
 * An id out of range fails with a message naming it and leaves the stream
 * as it was. */
int capmoe_detok_stream_push(capmoe_detok_stream *s, int32_t id, char **text, size_t *len,
                             capmoe_error *err);
/* Flushes what remains (incomplete bytes become U+FFFD). */
int capmoe_detok_stream_finish(capmoe_detok_stream *s, char **text, size_t *len,
                               capmoe_error *err);
void capmoe_detok_stream_free(capmoe_detok_stream *s);

#endif
