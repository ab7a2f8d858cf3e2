/* sched.h - continuous batching: the scheduler thread that owns the model,
 * the tokenizer, the per-sequence KV caches and every running sequence.
 *
 * No I/O, no HTTP, no libuv. Work comes in through capmoe_sched_submit (any
 * thread; a mutexed queue + condition variable), results go out through the
 * on_event callback, which runs ON THE SCHEDULER THREAD and takes ownership of
 * each event (free it with capmoe_sched_event_free); the server's callback
 * pushes it to its own queue and wakes its loop (uv_async_send).
 *
 * One step = ONE capmoe_model_forward over
 *   - the next token of every running sequence that is decoding, then
 *   - chunks of prompts still being prefilled (oldest admission first),
 * up to max_batch_tokens tokens and max_running sequences. Requests join at
 * the next step and leave as soon as they finish; a cancelled request frees
 * its sequences at the next step. The configured capmoe_dispatch_cfg is
 * applied to every forward, so every MoE layer dispatches the whole batch.
 * Sequence in slot s lives on expert-parallel rank s mod ep_ranks (rank
 * worker threads); under --ep mpi a new sequence goes to the rank holding
 * the fewest live tokens (cached + prompt still to feed; ties: lowest rank),
 * where its KV cache lives until it finishes. The forward pass and the
 * sampling run through capmoe_engine (engine.h).
 *
 * Lifecycle
 *   capmoe_sched_new(opts)      allocates; loads nothing
 *   capmoe_sched_start(s)       starts the thread, which loads the model and
 *                               the tokenizer, then emits CAPMOE_EV_READY (or
 *                               CAPMOE_EV_LOAD_FAILED with the message)
 *   capmoe_sched_submit / _cancel / _drain / _cancel_all   any thread
 *   capmoe_sched_free(s)        cancels what is left (FINISHED events are
 *                               still delivered), joins the thread, frees all
 *
 * Events of one request: [PROMPT_LOGPROBS] TOKEN... CHOICE_DONE per choice,
 * then exactly one FINISHED, always (also on cancel, error and shutdown).
 * After FINISHED the scheduler never mentions that request (or its user
 * pointer) again: release the user state then.
 *
 * Determinism: each choice has its own RNG seeded from the request's seed (+
 * the choice index), so sampling does not depend on other requests. A
 * request without a seed draws one from the kernel (getrandom), so identical
 * unseeded requests sample independently. The
 * logits can: batched BLAS kernels round differently for different batch
 * shapes, and under a capacity policy other than none the dispatch of a
 * token depends on the whole batch (that is the point of capacity-aware
 * dispatch). Same seed -> same output is therefore guaranteed for identical
 * batches (e.g. a lone request) and with policy none is expected but not
 * bit-guaranteed across different batch compositions. */
#ifndef CAPMOE_SCHED_H
#define CAPMOE_SCHED_H

#include "capmoe/common.h"
#include "capmoe/dispatch.h"
#include "capmoe/grammar.h"
#include "capmoe/logitproc.h"
#include "capmoe/engine.h"
#include "capmoe/hfconfig.h"
#include "capmoe/sample.h"
#include "capmoe/stats.h"
#include "capmoe/tokenizer.h"

typedef struct capmoe_sched capmoe_sched;

#define CAPMOE_SCHED_MAX_STOP 8        /* stop strings per request */
#define CAPMOE_SCHED_MAX_STOP_LEN 256  /* bytes per stop string */
#define CAPMOE_SCHED_MAX_STOP_IDS 16   /* extra stop token ids per request */
#define CAPMOE_SCHED_MAX_TOP CAPMOE_ENGINE_MAX_TOP /* top logprobs per token */

/* Return codes of capmoe_sched_submit. */
typedef enum capmoe_sched_rc {
    CAPMOE_SCHED_OK = 0,
    CAPMOE_SCHED_EINVAL = 1,     /* invalid parameters (message in err): HTTP 400 */
    CAPMOE_SCHED_EFULL = 2,      /* max_queue requests already waiting: HTTP 429 */
    CAPMOE_SCHED_EDRAINING = 3,  /* shutting down, no new work: HTTP 503 */
    CAPMOE_SCHED_ENOTREADY = 4,  /* model still loading or failed: HTTP 503 */
    CAPMOE_SCHED_ENOMEM = 5      /* HTTP 500 */
} capmoe_sched_rc;

typedef enum capmoe_finish {
    CAPMOE_FINISH_NONE = 0,
    CAPMOE_FINISH_STOP,        /* EOS / stop token id / stop string */
    CAPMOE_FINISH_LENGTH,      /* max_tokens reached, or the context is full */
    CAPMOE_FINISH_CANCELLED,   /* capmoe_sched_cancel / _cancel_all / free */
    CAPMOE_FINISH_TIMEOUT,     /* request_timeout_s exceeded */
    CAPMOE_FINISH_ERROR        /* the forward pass failed (message in the event) */
} capmoe_finish;

const char *capmoe_finish_name(capmoe_finish f); /* "stop", "length", ... */

typedef enum capmoe_event_type {
    CAPMOE_EV_READY = 1,         /* model + tokenizer loaded; accessors now valid */
    CAPMOE_EV_LOAD_FAILED,       /* loading failed: error holds the message */
    CAPMOE_EV_PROMPT_LOGPROBS,   /* when prompt_logprobs, for every choice before its
                                    first TOKEN: toks[i] for prompt tokens 1..n_prompt-1
                                    (a chunk at a time; toks[i].pos = prompt index) */
    CAPMOE_EV_TOKEN,             /* one generated token of one choice */
    CAPMOE_EV_CHOICE_DONE,       /* a choice finished (finish, n_generated) */
    CAPMOE_EV_FINISHED,          /* the request is over; last event for it */
    CAPMOE_EV_FATAL              /* --ep mpi: the process group failed (a rank died or hung):
                                    every request has been ended with an error (FINISHED sent),
                                    no step will run again; error says which rank. The
                                    program should answer what it can and exit non-zero. */
} capmoe_event_type;

/* capmoe_tok_info: see engine.h */

/* One event. Owned by the receiver of on_event; free with capmoe_sched_event_free. */
typedef struct capmoe_sched_event {
    capmoe_event_type type;
    uint64_t req_id;
    void *user;            /* capmoe_gen_params.user of the request */
    int choice;            /* 0..n-1 */
    double time;           /* capmoe_now() when emitted */
    /* TOKEN: text that became final with this token: complete UTF-8, stop
     * strings removed and never emitted, text that may still turn out to be
     * the start of a stop string held back (it comes with a later token or
     * at the finish). May be empty. NUL-terminated. */
    char *text;
    size_t text_len;
    /* CHOICE_DONE: the rest of the text (held-back text released at the
     * finish, never a stop string); may be empty. */
    /* TOKEN: 1 entry (the sampled token); PROMPT_LOGPROBS: n_toks entries. */
    capmoe_tok_info *toks;
    int n_toks;
    /* CHOICE_DONE */
    capmoe_finish finish;
    int n_generated;       /* tokens generated by this choice (incl. EOS / stop tokens) */
    /* FINISHED: totals of the request */
    int n_prompt;          /* prompt tokens (of one choice) */
    int n_generated_total; /* over all choices */
    double t_submit, t_admit, t_first_token; /* capmoe_now() stamps (0 if never) */
    int cancelled;         /* 1 when the request ended by cancellation */
    /* FINISHED: the dispatches of the forwards the request took part in (MoE
     * layers x steps; 0 without collect_stats): how many were capacity-
     * limited, the gamma applied to those (min, max, mean), the policy of
     * its last forward. */
    int policy;            /* capmoe_policy */
    int n_dispatches, n_limited;
    double gamma_min, gamma_max, gamma_mean;
    /* LOAD_FAILED, CHOICE_DONE with FINISH_ERROR, FINISHED after an error */
    char *error;
} capmoe_sched_event;

void capmoe_sched_event_free(capmoe_sched_event *ev);

/* Called after every step (and when the queues change without a step) on
 * the scheduler thread, for gauges and metrics. fwd is NULL when no forward
 * ran; otherwise it holds the stats of that forward (borrowed for the call). */
typedef struct capmoe_sched_step_info {
    int batch_tokens;      /* tokens in the forward (0 when none ran) */
    int batch_seqs;        /* sequences in the forward */
    int n_running;         /* sequences holding a slot */
    int n_waiting;         /* requests not yet fully admitted */
    long long kv_tokens;   /* tokens held in all KV caches */
    long long kv_capacity; /* max_running * context */
    size_t kv_bytes;       /* memory the KV caches hold */
    size_t kv_token_bytes; /* KV cache bytes per token (capmoe_model_kv_bytes_per_token) */
    size_t kv_token_bytes_expanded; /* the same for a cache of every head's keys and values */
    double step_time;      /* seconds of the forward + sampling */
    const capmoe_forward_stats *fwd;
} capmoe_sched_step_info;

typedef void (*capmoe_sched_event_cb)(void *user, capmoe_sched_event *ev);
typedef void (*capmoe_sched_step_cb)(void *user, const capmoe_sched_step_info *info);

typedef struct capmoe_sched_opts {
    const char *model_dir;       /* copied */
    int context;                 /* tokens per sequence; 0 = max_position_embeddings */
    int max_batch_tokens;        /* >= max_running */
    int max_running;             /* sequences in slots */
    int max_queue;               /* requests waiting for admission */
    double request_timeout_s;    /* 0 = none */
    capmoe_dispatch_cfg dispatch;
    int collect_stats;           /* 1: pass capmoe_forward_stats to the forward */
    int threads;                 /* engine threads (capmoe_model_opts); 0 = one per core */
    int weights;                 /* capmoe_weights: experts quantized at load (quant.h) */
    int quantize;                /* capmoe_quant_scope: which matrices weights applies to */
    int compute;                 /* capmoe_model_opts.compute */
    int kv_dtype;                /* capmoe_model_opts.kv_dtype */
    capmoe_comm *comm;           /* --ep mpi (borrowed): this is rank 0; the other ranks run
                                    capmoe_engine_serve; dispatch.ep_ranks must be the size.
                                    New sequences go to the rank with the fewest live tokens. */
    double step_timeout_s;       /* --ep mpi: a step longer than this is a fault (0: 60 s) */
    capmoe_sched_event_cb on_event;  /* required */
    capmoe_sched_step_cb on_step;    /* optional */
    void *user;                  /* first argument of both callbacks */
} capmoe_sched_opts;

/* One generation request: n choices continuing the same prompt. Everything
 * is copied by capmoe_sched_submit. */
typedef struct capmoe_gen_params {
    const int32_t *prompt;       /* token ids, 1 <= n_prompt < context */
    int n_prompt;
    int n;                       /* choices, 1..max_running */
    int max_tokens;              /* >= 1; generation also stops when the context is full */
    capmoe_sampling sampling;
    int has_seed;
    uint64_t seed;               /* choice c uses seed + c; without seed one from getrandom */
    const char *const *stop;     /* n_stop stop strings (UTF-8, non-empty), never emitted */
    int n_stop;
    const int32_t *stop_ids;     /* extra token ids that end a choice (as EOS does) */
    int n_stop_ids;
    int ignore_eos;              /* 1: EOS ids do not end a choice */
    int logprobs;                /* -1: none; k >= 0: logprob + top k of each token */
    int prompt_logprobs;         /* 1: PROMPT_LOGPROBS events (every choice), k = max(logprobs,0) */
    int skip_special;            /* 1: special tokens add no text (HF skip_special_tokens) */
    capmoe_penalties penalties;  /* presence / frequency / repetition (logitproc.h); zeros: off */
    const capmoe_logit_bias *logit_bias; /* n_logit_bias entries (copied), ids < vocab */
    int n_logit_bias;
    const capmoe_grammar *grammar; /* NULL, or every choice is constrained to it (grammar.h);
                                     borrowed until FINISHED */
    int bypass_queue_limit;      /* 1: never EFULL (the 2nd.. prompts of one admitted
                                    HTTP request must not be refused half-way) */
    void *user;                  /* handed back in every event */
} capmoe_gen_params;

void capmoe_gen_params_default(capmoe_gen_params *p); /* n 1, max_tokens 16, sampling default,
                                                         logprobs -1, skip_special 1 */

/* Allocates a scheduler (no thread, nothing loaded). Validates the limits. */
int capmoe_sched_new(capmoe_sched **out, const capmoe_sched_opts *opts, capmoe_error *err);
/* --ep mpi, before capmoe_sched_start: this process is rank 0 of comm
 * (borrowed); the other ranks must run capmoe_engine_serve. */
void capmoe_sched_set_comm(capmoe_sched *s, capmoe_comm *comm, double step_timeout_s);
/* Starts the scheduler thread (which loads the model). */
int capmoe_sched_start(capmoe_sched *s, capmoe_error *err);
/* Cancels everything, joins the thread, frees the model and all state.
 * FINISHED events of cancelled requests are emitted before it returns. NULL ok. */
void capmoe_sched_free(capmoe_sched *s);

/* Queues a request. On CAPMOE_SCHED_OK *id receives its id. Thread-safe. */
capmoe_sched_rc capmoe_sched_submit(capmoe_sched *s, const capmoe_gen_params *p, uint64_t *id,
                                    capmoe_error *err);
/* Cancels a request (no-op if unknown or already over): its sequences are
 * freed at the next step and FINISHED follows. Thread-safe. */
void capmoe_sched_cancel(capmoe_sched *s, uint64_t id);
/* Replaces the dispatch configuration (policy, gamma, drop budget, ...)
 * from the next step on: a forward never mixes two settings, and running
 * requests go on under the new one. ep_ranks cannot change; once the model
 * is loaded the configuration is checked against it (-1 with err, nothing
 * changed). Thread-safe. */
int capmoe_sched_set_dispatch(capmoe_sched *s, const capmoe_dispatch_cfg *d, capmoe_error *err);
/* The memory/compute crossover measured when the model loaded, which
 * dispatch.regime_auto ("regime_tokens": "auto") uses as regime_tokens
 * (capmoe_model_regime_probe; max_running + 1 under --ep mpi); 0 before the
 * model is ready. Thread-safe. */
int capmoe_sched_regime_tokens(capmoe_sched *s);
/* Stops admitting new requests (submit returns EDRAINING); queued and running
 * requests go on. Thread-safe. */
void capmoe_sched_drain(capmoe_sched *s);
/* Cancels every queued and running request. Thread-safe. */
void capmoe_sched_cancel_all(capmoe_sched *s);

/* Requests submitted and not yet FINISHED. Thread-safe. */
int capmoe_sched_active(capmoe_sched *s);

/* Valid after CAPMOE_EV_READY (borrowed; live until capmoe_sched_free). The
 * tokenizer may be used read-only from other threads (encode / decode). */
const capmoe_tokenizer *capmoe_sched_tokenizer(const capmoe_sched *s);
const capmoe_hfconfig *capmoe_sched_model_config(const capmoe_sched *s);
int capmoe_sched_context(const capmoe_sched *s);     /* tokens per sequence */
int capmoe_sched_vocab(const capmoe_sched *s);       /* logits row size */
/* Weight memory of this process's model: allocated + still mapped bytes. */
size_t capmoe_sched_weight_bytes(const capmoe_sched *s);

#endif
