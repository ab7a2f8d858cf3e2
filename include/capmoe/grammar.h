/* grammar.h - JSON and JSON-schema constrained decoding.
 *
 * A schema (the subset below) is compiled into a grammar; a generation keeps
 * a recognizer state per sequence; before each sampling step the state gives
 * the mask of the tokens whose bytes keep the text a prefix of a document
 * the schema accepts (and, once the document is complete, only the end
 * tokens), so the sampled text always parses and validates.
 *
 * Output form: compact JSON (no whitespace between tokens), object
 * properties of a schema in any order, each at most once.
 *
 * Schema subset: "type" (object, array, string, number, integer, boolean,
 * null, or a list of them), "properties", "required",
 * "additionalProperties": false (true / a schema are refused: only declared
 * properties are generated), "items", "minItems", "maxItems", "minLength",
 * "maxLength", "minimum" (0, or <= -1e15) / "maximum" (>= 1e15) on numbers
 * (numbers have at most 15 digits, so zod's safe-integer bounds hold),
 * "enum", "const", "anyOf" / "oneOf" whose branches start with
 * different JSON types (e.g. a type or null), "$defs" / "definitions" with
 * local "$ref" (not recursive), and the annotations "title", "description",
 * "default", "examples", "$schema", "$id", "strict". Anything else
 * ("pattern", "format", "minimum", "allOf", "not", ...) is refused with a
 * message naming it. A NULL schema means any JSON object (json_object).
 *
 * Termination: when the tokens left (max_tokens, context) are barely enough
 * to close the document, only tokens that follow the shortest completion are
 * allowed, so a document cut by the budget still closes when there is room. */
#ifndef CAPMOE_GRAMMAR_H
#define CAPMOE_GRAMMAR_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"
#include "capmoe/tokenizer.h"

typedef struct capmoe_grammar capmoe_grammar;

/* schema borrowed during the call; NULL: any JSON object. On an
 * unsupported or invalid schema: -1 with a message naming the keyword and
 * its path. */
int capmoe_grammar_compile(capmoe_grammar **out, const cJSON *schema, capmoe_error *err);
void capmoe_grammar_free(capmoe_grammar *g);
/* Tool calls: one of n calls, each prefixes[i] (its text up to the
 * arguments, e.g. "<tool_call>\n{\"name\": \"f\", \"arguments\": "; the
 * prefixes must differ before their ends), then a JSON value of schemas[i]
 * (NULL: any object), then suffix; several: more calls may follow, each
 * after a "\n". Errors as capmoe_grammar_compile. */
int capmoe_grammar_compile_calls(capmoe_grammar **out, const char *const *prefixes,
                                 const cJSON *const *schemas, int n, const char *suffix,
                                 int several, capmoe_error *err);

/* The bytes of every token of a vocabulary (as it reads after another
 * token): built once per tokenizer. Tokens whose bytes are not complete
 * UTF-8 on their own, and special tokens, are never allowed inside a
 * document. */
typedef struct capmoe_grammar_vocab capmoe_grammar_vocab;
int capmoe_grammar_vocab_new(capmoe_grammar_vocab **out, const capmoe_tokenizer *tok,
                             capmoe_error *err);
void capmoe_grammar_vocab_free(capmoe_grammar_vocab *v);
int capmoe_grammar_vocab_size(const capmoe_grammar_vocab *v);
/* Token id's bytes (*bytes borrowed); -1 when it is never allowed in a document. */
int capmoe_grammar_vocab_token(const capmoe_grammar_vocab *v, int32_t id, const char **bytes);

/* One sequence's recognizer (g borrowed for its life). */
typedef struct capmoe_grammar_state capmoe_grammar_state;
int capmoe_grammar_state_new(capmoe_grammar_state **out, const capmoe_grammar *g,
                             capmoe_error *err);
void capmoe_grammar_state_free(capmoe_grammar_state *s);

/* Fills allow (bit t of allow[t/8]; (n_vocab+7)/8 bytes) with the tokens
 * allowed next. end_ids: the tokens that end the generation (EOS, stop
 * ids), allowed only when the document is complete. left: tokens the
 * sequence may still generate. Returns the number of allowed tokens. The
 * masks of the states s has been in are kept with s (a few hundred KB at
 * most), so a state met again costs a copy: s must not be used from two
 * threads at once. */
int capmoe_grammar_mask(const capmoe_grammar_state *s, const capmoe_grammar_vocab *v,
                        const int32_t *end_ids, int n_end, int left, uint8_t *allow);
/* Advances over a sampled token (end tokens: no change). -1 when the token
 * is not allowed (the state is then unchanged). */
int capmoe_grammar_accept(capmoe_grammar_state *s, const capmoe_grammar_vocab *v, int32_t id);
/* Feeds raw text (tests). -1 when rejected (state unchanged). */
int capmoe_grammar_feed(capmoe_grammar_state *s, const char *text, size_t len);
/* 1 when the text so far is a complete document. */
int capmoe_grammar_complete(const capmoe_grammar_state *s);
/* 1 when some byte could still extend the text (a number's digits, another
 * tool call); 0 when only the end can follow. */
int capmoe_grammar_can_continue(const capmoe_grammar_state *s);

#endif
