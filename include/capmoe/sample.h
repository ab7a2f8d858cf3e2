/* sample.h - token sampling from logits: temperature, top-k, top-p, min-p,
 * a seeded RNG, and log-probabilities. Pure functions; scratch owned by caller. */
#ifndef CAPMOE_SAMPLE_H
#define CAPMOE_SAMPLE_H

#include "capmoe/common.h"

typedef struct capmoe_rng {
    uint64_t s[4];  /* xoshiro256** state */
} capmoe_rng;

void capmoe_rng_seed(capmoe_rng *rng, uint64_t seed);
uint64_t capmoe_rng_next(capmoe_rng *rng);
double capmoe_rng_uniform(capmoe_rng *rng); /* [0, 1) */

typedef struct capmoe_sampling {
    float temperature;  /* 0 = greedy (argmax; ties to the lower id) */
    float top_p;        /* 1 = off */
    int top_k;          /* 0 = off */
    float min_p;        /* 0 = off */
} capmoe_sampling;

void capmoe_sampling_default(capmoe_sampling *s); /* temperature 1, others off */

/* Index of the largest logit (ties: lower index). */
int capmoe_argmax(const float *logits, int n);

/* Samples one token. scratch must hold 2*n floats' worth (n floats + n ints).
 * s NULL = capmoe_sampling_default. Filter order (temperature, top-k, softmax
 * in double, top-p, min-p, renormalise) and the handling of NaN / inf logits
 * are documented in core/sample.c. With temperature > 0 exactly one RNG
 * number is drawn per call; greedy draws none. */
int capmoe_sample(const float *logits, int n, const capmoe_sampling *s, capmoe_rng *rng,
                  void *scratch);

/* The distribution capmoe_sample draws from: probs[0..n) (caller-owned, n
 * doubles) receives each token's probability after temperature and the
 * filters (0 for dropped tokens); returns how many tokens are kept. Same
 * scratch as capmoe_sample; uses no RNG. For tests, and for reporting. */
int capmoe_sample_probs(const float *logits, int n, const capmoe_sampling *s, void *scratch,
                        double *probs);

/* log_softmax(logits)[id], computed in double. */
double capmoe_logprob(const float *logits, int n, int id);
/* The top n_top (id, logprob) of log_softmax(logits), descending; returns count. */
int capmoe_top_logprobs(const float *logits, int n, int n_top, int *ids, double *lps);

#endif
