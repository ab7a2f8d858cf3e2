/* logitproc.h - per-sequence processing of the logits before sampling:
 * logit_bias, repetition / presence / frequency penalties with vLLM's
 * semantics, and an allowed-token mask (constrained decoding).
 *
 * For every token t, in this order (vLLM: logit_bias is a logits processor
 * that runs before the sampler's penalties):
 *   l = logit[t] + bias[t]
 *   if t occurs in the prompt or the output:   l = l > 0 ? l / rep : l * rep
 *   l -= frequency * count_out(t) + presence * (count_out(t) > 0)
 *   tokens outside the mask (when one is set): l = -inf
 * Only the tokens with a bias or seen so far are touched (a sparse list), so
 * the cost per step is the number of distinct tokens, not the vocabulary. */
#ifndef CAPMOE_LOGITPROC_H
#define CAPMOE_LOGITPROC_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"

/* What the engine applies to one row of logits (borrowed arrays). */
typedef struct capmoe_logit_adj {
    int n;                  /* sparse entries */
    const int32_t *ids;     /* distinct token ids */
    const float *bias;      /* added first */
    const float *scale;     /* repetition factor (1: none) */
    const float *sub;       /* subtracted last */
    const uint8_t *allow;   /* NULL: every token; else bit t of allow[t/8] (LSB first) set =
                               allowed, others become -inf */
    int allow_bytes;        /* bytes of allow (tokens past allow_bytes*8 are forbidden) */
} capmoe_logit_adj;

/* Applies a to logits[0..n) in place. NULL a: nothing. */
void capmoe_logit_adj_apply(const capmoe_logit_adj *a, float *logits, int n);

typedef struct capmoe_logit_bias {
    int32_t id;
    float bias;             /* OpenAI: -100..100 */
} capmoe_logit_bias;

typedef struct capmoe_penalties {
    float presence;         /* OpenAI / vLLM: -2..2, 0 = off */
    float frequency;        /* -2..2, 0 = off */
    float repetition;       /* vLLM / HF: (0, 2], 1 = off (0 is read as 1) */
} capmoe_penalties;

/* 1 when p changes nothing. */
int capmoe_penalties_off(const capmoe_penalties *p);

/* One sequence's state: the tokens seen and their counts. */
typedef struct capmoe_logitproc capmoe_logitproc;

/* vocab: token ids are 0..vocab-1 (ids outside are ignored). The prompt
 * counts for the repetition penalty only. bias: n_bias entries (copied; a
 * repeated id: the last wins). */
int capmoe_logitproc_new(capmoe_logitproc **out, int vocab, const capmoe_penalties *pen,
                         const capmoe_logit_bias *bias, int n_bias, const int32_t *prompt,
                         int n_prompt, capmoe_error *err);
/* A generated token (counts for every penalty). 0, or -1 out of memory. */
int capmoe_logitproc_accept(capmoe_logitproc *lp, int32_t tok);
/* The adjustment for the next step (valid until the next accept / set_allow / free). */
const capmoe_logit_adj *capmoe_logitproc_adj(const capmoe_logitproc *lp);
/* The mask of the next step (borrowed until the next call or free; NULL: none). */
void capmoe_logitproc_set_allow(capmoe_logitproc *lp, const uint8_t *allow, int allow_bytes);
void capmoe_logitproc_free(capmoe_logitproc *lp);

#endif
