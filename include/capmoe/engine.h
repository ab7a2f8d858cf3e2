/* engine.h - runs the scheduler's steps: one batched forward pass over the
 * new tokens of many sequences, then sampling, wherever the sequences live.
 *
 * The engine owns every sequence's KV cache, keyed by a sequence id the
 * caller chooses, and the sampling scratch. A step lists, per sequence, its
 * new tokens and what to do with its logits (sample the next token with the
 * given sampler and RNG state, score prompt tokens for logprobs); it returns
 * the sampled token, its logprob information and the advanced RNG state.
 * The caller (core/sched.c) keeps everything else (requests, text, stop
 * strings, events), so the same scheduler drives one process or many.
 *
 * Without MPI the step runs here. Under --ep mpi (a capmoe_comm), rank 0's
 * scheduler calls capmoe_engine_step; the step plan (sequences, tokens,
 * sampling parameters, dispatch configuration, caches to free) is
 * broadcast; every rank runs the forward pass of its own sequences (their
 * KV caches live there: data-parallel attention) with its experts taking
 * part in every MoE layer's all-to-all, samples them, and sends the results
 * and its per-layer figures back to rank 0. The other ranks sit in
 * capmoe_engine_serve, following rank 0's steps until it stops them.
 *
 * Faults: rank 0 bounds every step by step_timeout_s; a rank that died or
 * hangs makes the step fail with a message naming it (heartbeats), and the
 * engine is then broken for good (capmoe_engine_broken): the caller must
 * end the job. */
#ifndef CAPMOE_ENGINE_H
#define CAPMOE_ENGINE_H

#include "capmoe/comm.h"
#include "capmoe/dispatch.h"
#include "capmoe/logitproc.h"
#include "capmoe/model.h"
#include "capmoe/sample.h"
#include "capmoe/stats.h"

#define CAPMOE_ENGINE_MAX_TOP 20 /* top logprobs per token */

typedef struct capmoe_engine capmoe_engine;

/* A token's log-probability information (raw logits, before sampling
 * transforms). */
typedef struct capmoe_tok_info {
    int32_t id;
    int pos;                  /* position in the sequence (prompt index for prompt tokens) */
    double logprob;
    int n_top;
    int32_t top_ids[CAPMOE_ENGINE_MAX_TOP]; /* most likely ids, descending */
    double top_lps[CAPMOE_ENGINE_MAX_TOP];
} capmoe_tok_info;

/* One sequence's share of a step. */
typedef struct capmoe_step_seq {
    uint64_t id;              /* key of the sequence's KV cache (created on first use) */
    int rank;                 /* rank it lives on (--ep mpi: the process; threads: the EP
                                 rank worker of Expanded Drop's locality) */
    const int32_t *tokens;    /* new tokens, appended to the cache */
    int n_tokens;
    int kv_len;               /* tokens the cache holds before this step (checked) */
    const int32_t *score;     /* prompt logprobs: score[j] is the token row j predicts */
    int n_score;              /* 0..n_tokens rows to score (0: none) */
    int score_k;              /* top k of each scored row */
    int sample;               /* 1: sample the next token from the last row */
    capmoe_sampling sampling;
    capmoe_rng rng;           /* the sequence's RNG state before sampling */
    int logprobs;             /* -1: none; k >= 0: info of the sampled token with top k */
    const capmoe_logit_adj *adj; /* NULL, or applied to the sampled row first (logit_bias,
                                    penalties, a grammar's mask); logprobs see the result */
} capmoe_step_seq;

/* What a step gave one sequence. */
typedef struct capmoe_step_out {
    int32_t token;            /* sampled token (when sample) */
    capmoe_rng rng;           /* the RNG state after sampling */
    capmoe_tok_info info;     /* when logprobs >= 0 */
    capmoe_tok_info *scored;  /* n_score entries (engine-owned, valid until the next step) */
    int n_scored;
} capmoe_step_out;

typedef struct capmoe_engine_opts {
    capmoe_model *model;      /* borrowed; every rank loads the same checkpoint */
    capmoe_comm *comm;        /* NULL: one process */
    int context;              /* tokens per sequence (cache limit) */
    double step_timeout_s;    /* --ep mpi: a step longer than this is a fault (0: 60 s) */
    const char *model_dir;    /* for the start-up check that every rank serves the same
                                 model with the same binary */
} capmoe_engine_opts;

/* Creates the engine. Under --ep mpi a collective: every rank calls it (rank
 * 0 from its scheduler thread, the others before capmoe_engine_serve) with
 * load_error NULL, or with the message of its failed model load (then it
 * fails here on every rank, naming that rank); the ranks compare a hash of
 * config.json, the safetensors index and the program's build and refuse to
 * start when they differ. opts->model may be NULL only with load_error. */
int capmoe_engine_new(capmoe_engine **out, const capmoe_engine_opts *opts,
                      const char *load_error, capmoe_error *err);
void capmoe_engine_free(capmoe_engine *e);
/* The start-up check of --ep mpi, a collective (capmoe_engine_new runs it;
 * the CLI after loading): every rank reports local_error (NULL: loaded) and
 * a fingerprint of config.json, the safetensors index and its build; fails
 * on every rank, naming the rank, when one could not start or serves
 * something else than rank 0. Without comm: fails iff local_error. */
int capmoe_engine_check_ranks(capmoe_comm *comm, const char *model_dir, const char *local_error,
                              capmoe_error *err);

/* Runs one step over n sequences (batch order = array order; each sequence
 * at most once). outs receives n results. stats (may be NULL) receives the
 * per-layer figures, under MPI merged over the ranks. On failure every
 * cache is left as it was when possible (one process), and the requests of
 * the step should be failed; check capmoe_engine_broken afterwards. */
int capmoe_engine_step(capmoe_engine *e, const capmoe_step_seq *seqs, int n,
                       const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                       capmoe_forward_stats *stats, capmoe_error *err);
/* The sequence is over: its cache is freed (on its rank: with the next step
 * or capmoe_engine_flush). */
void capmoe_engine_release(capmoe_engine *e, uint64_t id, int rank);
/* Sends pending releases to the other ranks now (call when idle). */
int capmoe_engine_flush(capmoe_engine *e, capmoe_error *err);
/* Bytes held by every KV cache, all ranks (as of their last report). */
size_t capmoe_engine_kv_bytes(const capmoe_engine *e);
/* 1 after a fault that ends the process group (a rank died or hung, an MPI
 * error); the message says which rank. */
int capmoe_engine_broken(const capmoe_engine *e);
const char *capmoe_engine_broken_msg(const capmoe_engine *e);

/* Ranks > 0: follows rank 0's steps until it calls capmoe_engine_stop.
 * Returns 0 on an orderly stop, -1 on a fault. */
int capmoe_engine_serve(capmoe_engine *e, capmoe_error *err);
/* Rank 0: makes every other rank leave capmoe_engine_serve. */
int capmoe_engine_stop(capmoe_engine *e, capmoe_error *err);

#endif
