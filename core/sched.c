/* sched.c - continuous batching on a dedicated thread (see sched.h).
 *
 * Ownership: the scheduler thread alone touches the model, the KV caches,
 * the sequences and the active request list. Other threads only reach the
 * `shared` fields below, under `mu`: the incoming queue, cancellation ids,
 * flags and counters. Events leave through opts.on_event (called on the
 * scheduler thread, never with `mu` held). */
#include "capmoe/sched.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "capmoe/model.h"

/* ---- data ---------------------------------------------------------------- */

struct sreq;

typedef struct seq {
    struct sreq *rq;
    int choice;
    uint64_t sid;          /* the engine's key of its KV cache (0: none yet) */
    int rank;              /* the rank its cache lives on */
    int kv_len;            /* tokens in its cache */
    int slot;              /* -1: waiting for a slot */
    long admit_order;
    int pos;               /* prompt tokens fed so far */
    int n_gen;             /* tokens sampled */
    int32_t next_tok;      /* decode input of the next step */
    int done;
    capmoe_rng rng;
    capmoe_detok_stream detok;
    int detok_init;
    char *held;            /* decoded text not yet released (stop-string hold-back) */
    size_t held_len, held_cap;
    capmoe_logitproc *lp;  /* logit_bias / penalties / mask; NULL when the request has none */
    capmoe_grammar_state *gs; /* constrained decoding: the recognizer, and its mask */
    uint8_t *allow;
} seq;

typedef struct sreq {
    uint64_t id;
    void *user;
    int32_t *prompt;
    int n_prompt;
    int n;
    int max_tokens;
    capmoe_sampling sampling;
    uint64_t seed;
    char *stop[CAPMOE_SCHED_MAX_STOP];
    size_t stop_len[CAPMOE_SCHED_MAX_STOP];
    int n_stop;
    int32_t stop_ids[CAPMOE_SCHED_MAX_STOP_IDS];
    int n_stop_ids;
    int ignore_eos;
    int logprobs;
    int prompt_logprobs;
    int skip_special;
    capmoe_penalties penalties;
    capmoe_logit_bias *logit_bias;
    int n_logit_bias;
    const capmoe_grammar *grammar;
    seq *seqs;             /* n */
    int n_admitted, n_done;
    int n_generated_total;
    double t_submit, t_admit, t_first;
    int cancelled;
    char *error;
    /* the dispatches of the forwards this request took part in */
    long step_seen;        /* last step counted (a request with n choices counts once) */
    int policy;            /* capmoe_policy of its last forward */
    int n_dispatch, n_limited;
    double gamma_min, gamma_max, gamma_sum;
    struct sreq *next;
} sreq;

typedef enum entry_kind { ENT_DECODE = 0, ENT_PREFILL } entry_kind;

struct capmoe_sched {
    capmoe_sched_opts o;
    char *model_dir;
    pthread_t th;
    int started;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* shared, under mu */
    sreq *in_head, *in_tail;
    int n_incoming;
    uint64_t *cancel_ids;
    int n_cancel, cap_cancel;
    int cancel_all, draining, stop;
    int n_waiting;         /* requests the thread holds that are not fully admitted */
    int n_active;          /* submitted, FINISHED not yet emitted */
    uint64_t next_id;
    int ready;             /* 1 loaded, -1 failed, 0 loading */
    capmoe_dispatch_cfg pending_dispatch; /* capmoe_sched_set_dispatch, taken before a step */
    int has_pending_dispatch;
    int regime_crossover;  /* regime_tokens under "auto": measured at load (READY on) */

    /* scheduler thread (read-only for others after READY: tok, hc, context, vocab) */
    capmoe_model *model;
    capmoe_engine *engine;
    uint64_t next_sid;     /* sequence ids given to the engine */
    int fatal;             /* the process group failed: no more steps */
    capmoe_tokenizer *tok;
    capmoe_grammar_vocab *gvocab; /* token bytes, built at the first constrained request */
    const capmoe_hfconfig *hc;
    int context, vocab;
    int32_t eos[24];
    int n_eos;
    sreq *reqs;            /* active requests, submission order */
    seq **slots;           /* max_running */
    long admit_counter;
    capmoe_step_seq *batch;
    capmoe_step_out *outs;
    seq **batch_seq;
    entry_kind *batch_kind;
    int *batch_pos;        /* prompt position of a prefill entry */
    capmoe_layer_stats *layer_st;
    capmoe_forward_stats st;
    long step_counter;
};

const char *capmoe_finish_name(capmoe_finish f) {
    switch (f) {
    case CAPMOE_FINISH_STOP: return "stop";
    case CAPMOE_FINISH_LENGTH: return "length";
    case CAPMOE_FINISH_CANCELLED: return "cancelled";
    case CAPMOE_FINISH_TIMEOUT: return "timeout";
    case CAPMOE_FINISH_ERROR: return "error";
    default: return "none";
    }
}

void capmoe_sched_event_free(capmoe_sched_event *ev) {
    if (!ev) return;
    free(ev->text);
    free(ev->toks);
    free(ev->error);
    free(ev);
}

void capmoe_gen_params_default(capmoe_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->n = 1;
    p->max_tokens = 16;
    capmoe_sampling_default(&p->sampling);
    p->logprobs = -1;
    p->skip_special = 1;
}

/* ---- events ---------------------------------------------------------------- */

static capmoe_sched_event *ev_new(capmoe_event_type type, const sreq *rq, int choice) {
    capmoe_sched_event *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    ev->type = type;
    ev->choice = choice;
    ev->time = capmoe_now();
    if (rq) {
        ev->req_id = rq->id;
        ev->user = rq->user;
    }
    return ev;
}

static void emit(capmoe_sched *s, capmoe_sched_event *ev) {
    if (ev) s->o.on_event(s->o.user, ev);
}

/* Text into an event (copied; "" when empty). 0, or -1 on allocation failure. */
static int ev_text(capmoe_sched_event *ev, const char *t, size_t n) {
    ev->text = malloc(n + 1);
    if (!ev->text) return -1;
    if (n) memcpy(ev->text, t, n);
    ev->text[n] = '\0';
    ev->text_len = n;
    return 0;
}

/* ---- requests and sequences ---------------------------------------------------- */

static void seq_release(capmoe_sched *s, seq *q) {
    if (q->slot >= 0) {
        s->slots[q->slot] = NULL;
        q->slot = -1;
    }
    if (q->sid) capmoe_engine_release(s->engine, q->sid, q->rank);
    q->sid = 0;
    if (q->detok_init) capmoe_detok_stream_free(&q->detok);
    q->detok_init = 0;
    free(q->held);
    q->held = NULL;
    q->held_len = q->held_cap = 0;
    capmoe_logitproc_free(q->lp);
    q->lp = NULL;
    capmoe_grammar_state_free(q->gs);
    q->gs = NULL;
    free(q->allow);
    q->allow = NULL;
}

static void req_free(capmoe_sched *s, sreq *rq) {
    if (!rq) return;
    for (int i = 0; rq->seqs && i < rq->n; i++) seq_release(s, &rq->seqs[i]);
    free(rq->seqs);
    free(rq->prompt);
    free(rq->logit_bias);
    for (int i = 0; i < rq->n_stop; i++) free(rq->stop[i]);
    free(rq->error);
    free(rq);
}

static int held_add(seq *q, const char *t, size_t n) {
    if (q->held_len + n + 1 > q->held_cap) {
        size_t cap = q->held_cap ? q->held_cap : 64;
        while (cap < q->held_len + n + 1) cap *= 2;
        char *nh = realloc(q->held, cap);
        if (!nh) return -1;
        q->held = nh;
        q->held_cap = cap;
    }
    memcpy(q->held + q->held_len, t, n);
    q->held_len += n;
    q->held[q->held_len] = '\0';
    return 0;
}

/* Decides how much of the held text can be released. Returns the number of
 * bytes to release; *stopped = 1 when a stop string starts at that point (the
 * rest is then discarded). final: no more text will come, release all that
 * is not cut by a stop string. */
static size_t held_release(const sreq *rq, const seq *q, int final, int *stopped) {
    *stopped = 0;
    size_t n = q->held_len;
    size_t first = n;
    for (int i = 0; i < rq->n_stop && n > 0; i++) {
        const char *m = memmem(q->held, n, rq->stop[i], rq->stop_len[i]);
        if (m && (size_t)(m - q->held) < first) first = (size_t)(m - q->held);
    }
    if (first < n) {
        *stopped = 1;
        return first;
    }
    if (final) return n;
    /* Hold back the longest tail that is a proper prefix of a stop string. */
    size_t keep = 0;
    for (int i = 0; i < rq->n_stop; i++) {
        size_t L = rq->stop_len[i];
        size_t max = L - 1 < n ? L - 1 : n;
        for (size_t k = max; k > keep; k--)
            if (memcmp(q->held + n - k, rq->stop[i], k) == 0) {
                keep = k;
                break;
            }
    }
    return n - keep;
}

/* Moves `n` released bytes from the held buffer into ev->text. */
static int take_held(seq *q, size_t n, capmoe_sched_event *ev) {
    if (ev_text(ev, q->held, n) != 0) return -1;
    if (q->held_len > n) memmove(q->held, q->held + n, q->held_len - n);
    q->held_len -= n;
    if (q->held) q->held[q->held_len] = '\0';
    return 0;
}

static void finish_request_if_done(capmoe_sched *s, sreq *rq);
static void seq_finish(capmoe_sched *s, seq *q, capmoe_finish why, const char *error);

/* Ends one choice: emits CHOICE_DONE (with the held-back text when flush),
 * frees the sequence; the request ends with its last choice. */
static void seq_finish_ex(capmoe_sched *s, seq *q, capmoe_finish why, int flush,
                          const char *error) {
    if (q->done) return;
    sreq *rq = q->rq;
    q->done = 1;
    capmoe_sched_event *ev = ev_new(CAPMOE_EV_CHOICE_DONE, rq, q->choice);
    if (ev) {
        ev->finish = why;
        ev->n_generated = q->n_gen;
        if (flush) {
            if (q->detok_init) {
                char *rest = NULL;
                size_t rl = 0;
                capmoe_error e;
                if (capmoe_detok_stream_finish(&q->detok, &rest, &rl, &e) == 0 && rl)
                    held_add(q, rest, rl);
                free(rest);
            }
            int stopped;
            size_t n = held_release(rq, q, 1, &stopped);
            if (stopped) ev->finish = CAPMOE_FINISH_STOP;
            take_held(q, n, ev);
        }
        if (!ev->text) ev_text(ev, "", 0);
        if (error) ev->error = strdup(error);
    }
    seq_release(s, q);
    rq->n_done++;
    emit(s, ev);
    finish_request_if_done(s, rq);
}

static void seq_finish(capmoe_sched *s, seq *q, capmoe_finish why, const char *error) {
    int flush = why == CAPMOE_FINISH_LENGTH || why == CAPMOE_FINISH_STOP ||
                why == CAPMOE_FINISH_TIMEOUT;
    seq_finish_ex(s, q, why, flush, error);
}

static void unlink_req(capmoe_sched *s, sreq *rq) {
    for (sreq **pp = &s->reqs; *pp; pp = &(*pp)->next)
        if (*pp == rq) {
            *pp = rq->next;
            return;
        }
}

static void finish_request_if_done(capmoe_sched *s, sreq *rq) {
    if (rq->n_done < rq->n) return;
    capmoe_sched_event *ev = ev_new(CAPMOE_EV_FINISHED, rq, 0);
    if (ev) {
        ev->n_prompt = rq->n_prompt;
        ev->n_generated_total = rq->n_generated_total;
        ev->t_submit = rq->t_submit;
        ev->t_admit = rq->t_admit;
        ev->t_first_token = rq->t_first;
        ev->cancelled = rq->cancelled;
        if (rq->error) ev->error = strdup(rq->error);
        ev->policy = rq->policy;
        ev->n_dispatches = rq->n_dispatch;
        ev->n_limited = rq->n_limited;
        ev->gamma_min = rq->gamma_min;
        ev->gamma_max = rq->gamma_max;
        ev->gamma_mean = rq->n_limited ? rq->gamma_sum / rq->n_limited : 0;
    }
    unlink_req(s, rq);
    req_free(s, rq);
    pthread_mutex_lock(&s->mu);
    s->n_active--;
    pthread_mutex_unlock(&s->mu);
    emit(s, ev);
}

static void req_end(capmoe_sched *s, sreq *rq, capmoe_finish why, const char *error) {
    if (why == CAPMOE_FINISH_CANCELLED) rq->cancelled = 1;
    if (error && !rq->error) rq->error = strdup(error);
    /* seq_finish may free rq with the last choice: walk a copy of the count */
    int n = rq->n;
    for (int i = 0; i < n; i++) {
        seq *q = &rq->seqs[i];
        int last = rq->n_done == n - 1 && !q->done;
        seq_finish(s, q, why, error);
        if (last) return;
    }
}

/* ---- loading ---------------------------------------------------------------- */

static void add_eos(capmoe_sched *s, int id) {
    if (id < 0 || id >= s->vocab) return;
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return;
    if (s->n_eos < (int)(sizeof s->eos / sizeof s->eos[0])) s->eos[s->n_eos++] = id;
}

/* generation_config.json eos_token_id (int or list), when present. */
static void load_generation_eos(capmoe_sched *s) {
    char *path = capmoe_path_join(s->model_dir, "generation_config.json");
    if (!path) return;
    size_t len;
    char *text = capmoe_read_file(path, &len, NULL);
    free(path);
    if (!text) return;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *e = root ? cJSON_GetObjectItemCaseSensitive(root, "eos_token_id") : NULL;
    /* ids outside 0..vocab-1 are ignored (add_eos); checked before the
     * conversion, which is undefined for doubles past int */
    if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < s->vocab)
        add_eos(s, (int)e->valuedouble);
    else if (cJSON_IsArray(e))
        for (const cJSON *it = e->child; it; it = it->next)
            if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < s->vocab)
                add_eos(s, (int)it->valuedouble);
    cJSON_Delete(root);
}

static int load(capmoe_sched *s, capmoe_error *err) {
    capmoe_model_opts mo = {.max_ranks = s->o.dispatch.ep_ranks, .threads = s->o.threads,
                            .compute = (capmoe_compute)s->o.compute,
                            .kv_dtype = (capmoe_kv_dtype)s->o.kv_dtype,
                            .comm = s->o.comm, .weights = (capmoe_weights)s->o.weights,
                            .quantize = (capmoe_quant_scope)s->o.quantize};
    capmoe_error lerr;
    int lrc = capmoe_model_load(&s->model, s->model_dir, &mo, &lerr);
    if (lrc == 0) {
        s->hc = capmoe_model_config(s->model);
        int maxpos = s->hc->max_position_embeddings;
        s->context = s->o.context > 0 ? s->o.context : maxpos;
    }
    /* every rank of --ep mpi takes part, also after a failed load here */
    capmoe_engine_opts eo = {.model = s->model, .comm = s->o.comm, .context = s->context,
                             .step_timeout_s = s->o.step_timeout_s, .model_dir = s->model_dir};
    if (capmoe_engine_new(&s->engine, &eo, lrc == 0 ? NULL : lerr.msg, err) != 0) return -1;
    if (s->hc->n_moe_layers > 0 &&
        capmoe_dispatch_cfg_check(&s->o.dispatch, s->hc->n_experts, err) != 0)
        return -1;
    /* regime_tokens auto: where a dispatch stops being memory-bound, measured
     * once on this machine and model (capmoe_model_regime_probe). Under --ep
     * mpi, whose experts live in other processes, every decode step counts as
     * memory-bound: max_running + 1 tokens. */
    capmoe_regime_probe probe;
    capmoe_error perr;
    if (s->hc->n_moe_layers > 0 && !s->o.comm &&
        capmoe_model_regime_probe(s->model, 256, 3, &probe, &perr) == 0)
        s->regime_crossover = probe.crossover;
    else
        s->regime_crossover = s->o.max_running + 1;
    if (s->o.dispatch.regime_auto) s->o.dispatch.regime_tokens = s->regime_crossover;
    if (capmoe_tokenizer_load(&s->tok, s->model_dir, err) != 0) return -1;
    s->vocab = s->hc->vocab_size;
    int maxpos = s->hc->max_position_embeddings;
    if (s->o.context > 0 && maxpos > 0 && s->o.context > maxpos)
        return capmoe_set_error(err,
                                "context: %d exceeds the model's max_position_embeddings (%d)",
                                s->o.context, maxpos);
    if (s->context < 2)
        return capmoe_set_error(err, "context: %d tokens is too small", s->context);
    for (int i = 0; i < s->hc->n_eos; i++) add_eos(s, s->hc->eos_token_id[i]);
    add_eos(s, capmoe_tokenizer_eos_id(s->tok));
    load_generation_eos(s);

    int R = s->o.max_running;
    s->slots = calloc((size_t)R, sizeof *s->slots);
    s->batch = calloc((size_t)R, sizeof *s->batch);
    s->outs = calloc((size_t)R, sizeof *s->outs);
    s->batch_seq = calloc((size_t)R, sizeof *s->batch_seq);
    s->batch_kind = calloc((size_t)R, sizeof *s->batch_kind);
    s->batch_pos = calloc((size_t)R, sizeof *s->batch_pos);
    s->layer_st = calloc((size_t)(s->hc->n_layers > 0 ? s->hc->n_layers : 1), sizeof *s->layer_st);
    if (!s->slots || !s->batch || !s->outs || !s->batch_seq || !s->batch_kind || !s->batch_pos ||
        !s->layer_st)
        return capmoe_set_error(err, "out of memory for the scheduler buffers");
    s->st.layers = s->layer_st;
    s->st.cap_layers = s->hc->n_layers;
    return 0;
}

/* ---- one step ---------------------------------------------------------------- */

static int is_stop_token(const capmoe_sched *s, const sreq *rq, int32_t t) {
    if (!rq->ignore_eos)
        for (int i = 0; i < s->n_eos; i++)
            if (s->eos[i] == t) return 1;
    for (int i = 0; i < rq->n_stop_ids; i++)
        if (rq->stop_ids[i] == t) return 1;
    return 0;
}

/* The token the engine sampled for q: emits it, decodes its text, applies
 * stop tokens and strings, and ends the choice when it is done. */
static void accept_token(capmoe_sched *s, seq *q, const capmoe_step_out *o) {
    sreq *rq = q->rq;
    int32_t tok = o->token;
    double now = capmoe_now();
    q->rng = o->rng;
    q->n_gen++;
    if (q->lp) capmoe_logitproc_accept(q->lp, tok);
    if (q->gs && !is_stop_token(s, rq, tok)) capmoe_grammar_accept(q->gs, s->gvocab, tok);
    rq->n_generated_total++;
    if (rq->t_first == 0) rq->t_first = now;
    capmoe_sched_event *ev = ev_new(CAPMOE_EV_TOKEN, rq, q->choice);
    if (ev) {
        ev->toks = calloc(1, sizeof *ev->toks);
        if (ev->toks) {
            ev->n_toks = 1;
            if (rq->logprobs >= 0) {
                *ev->toks = o->info;
            } else {
                ev->toks->id = tok;
            }
            ev->toks->pos = q->pos + q->n_gen - 1;
        }
    }
    capmoe_finish fin = CAPMOE_FINISH_NONE;
    int stop_string = 0;
    int grammar_end = q->gs && capmoe_grammar_complete(q->gs);
    if (grammar_end) /* a finished document ends with whatever end token the mask allowed */
        for (int i = 0; i < s->n_eos; i++) grammar_end |= s->eos[i] == tok ? 2 : 0;
    if (is_stop_token(s, rq, tok) || grammar_end >= 2) {
        fin = CAPMOE_FINISH_STOP; /* the stop token adds no text */
    } else {
        char *t = NULL;
        size_t tl = 0;
        capmoe_error e;
        if (capmoe_detok_stream_push(&q->detok, tok, &t, &tl, &e) == 0 && tl) held_add(q, t, tl);
        free(t);
        int stopped;
        size_t n = held_release(rq, q, 0, &stopped);
        if (ev) take_held(q, n, ev);
        if (stopped) {
            fin = CAPMOE_FINISH_STOP;
            stop_string = 1;
            q->held_len = 0; /* the stop string and what follows are never emitted */
        }
    }
    if (ev && !ev->text) ev_text(ev, "", 0);
    emit(s, ev);
    if (fin == CAPMOE_FINISH_NONE) {
        if (q->n_gen >= rq->max_tokens) fin = CAPMOE_FINISH_LENGTH;
        else if (q->kv_len + 1 > s->context) fin = CAPMOE_FINISH_LENGTH;
        /* a constrained document completed by the last token allowed: only
         * an end token could follow, so it ended as it would have */
        if (fin == CAPMOE_FINISH_LENGTH && q->gs && capmoe_grammar_complete(q->gs) &&
            !capmoe_grammar_can_continue(q->gs))
            fin = CAPMOE_FINISH_STOP;
    }
    if (stop_string) seq_finish_ex(s, q, fin, 0, NULL);
    else if (fin != CAPMOE_FINISH_NONE) seq_finish(s, q, fin, NULL);
    else q->next_tok = tok;
}

static int cmp_admit(const void *a, const void *b) {
    const seq *x = *(seq *const *)a, *y = *(seq *const *)b;
    return (x->admit_order > y->admit_order) - (x->admit_order < y->admit_order);
}

static void report(capmoe_sched *s, int tokens, int n_seqs, double step_time,
                   const capmoe_forward_stats *fwd);

/* Adds the dispatches of the forward just run (its stats) to every request
 * of the batch, once per request. */
static void account_dispatches(capmoe_sched *s, int nb) {
    s->step_counter++;
    int n = 0, lim = 0;
    double gmin = 0, gmax = 0, gsum = 0;
    if (s->o.collect_stats)
        for (int l = 0; l < s->st.n_moe && l < s->st.cap_layers; l++) {
            const capmoe_layer_stats *ls = &s->st.layers[l];
            n++;
            if (!ls->limited) continue;
            if (lim == 0 || ls->gamma < gmin) gmin = ls->gamma;
            if (lim == 0 || ls->gamma > gmax) gmax = ls->gamma;
            gsum += ls->gamma;
            lim++;
        }
    for (int i = 0; i < nb; i++) {
        sreq *rq = s->batch_seq[i]->rq;
        if (rq->step_seen == s->step_counter) continue;
        rq->step_seen = s->step_counter;
        rq->policy = (int)s->o.dispatch.policy;
        if (lim) {
            if (rq->n_limited == 0 || gmin < rq->gamma_min) rq->gamma_min = gmin;
            if (rq->n_limited == 0 || gmax > rq->gamma_max) rq->gamma_max = gmax;
        }
        rq->n_dispatch += n;
        rq->n_limited += lim;
        rq->gamma_sum += gsum;
    }
}

static void end_all(capmoe_sched *s, const char *why);

/* The token bytes constrained decoding needs, built before the first step
 * that has a constrained sequence; when that fails, those requests end. */
static void grammar_vocab_ensure(capmoe_sched *s) {
    if (s->gvocab) return;
    int need = 0;
    for (int i = 0; i < s->o.max_running; i++) need |= s->slots[i] && s->slots[i]->gs;
    if (!need) return;
    capmoe_error err;
    if (capmoe_grammar_vocab_new(&s->gvocab, s->tok, &err) == 0) return;
    for (int i = 0; i < s->o.max_running; i++)
        if (s->slots[i] && s->slots[i]->gs && !s->slots[i]->done)
            req_end(s, s->slots[i]->rq, CAPMOE_FINISH_ERROR, err.msg);
}

/* Constrained decoding: the mask of q's next token (scheduler thread).
 * new_tokens: the tokens this step feeds q. */
static int grammar_mask(capmoe_sched *s, seq *q, int new_tokens) {
    if (!q->gs || !s->gvocab) return 0;
    sreq *rq = q->rq;
    int32_t ends[24 + CAPMOE_SCHED_MAX_STOP_IDS];
    int ne = 0;
    for (int i = 0; i < s->n_eos; i++) ends[ne++] = s->eos[i];
    for (int i = 0; i < rq->n_stop_ids; i++) ends[ne++] = rq->stop_ids[i];
    int left = rq->max_tokens - q->n_gen;
    int ctx_left = s->context - (q->kv_len + new_tokens);
    if (ctx_left < left) left = ctx_left;
    if (capmoe_grammar_mask(q->gs, s->gvocab, ends, ne, left, q->allow) == 0) {
        /* no token continues the document (a const / enum string holding a
         * character that no token of this vocabulary spells whole): an
         * error, never a sample from an empty mask (found by fuzz_grammar) */
        seq_finish(s, q, CAPMOE_FINISH_ERROR,
                   "the response format cannot be continued with this model's vocabulary (no "
                   "token fits the schema here: a const or enum string may hold a character no "
                   "token spells whole)");
        return -1;
    }
    capmoe_logitproc_set_allow(q->lp, q->allow, (capmoe_grammar_vocab_size(s->gvocab) + 7) / 8);
    return 0;
}

/* Builds and runs one batch. Returns 1 when a forward ran. */
static int step(capmoe_sched *s) {
    int R = s->o.max_running, nb = 0, tokens = 0;
    grammar_vocab_ensure(s);
    /* decode tokens first: one per running sequence past its prompt */
    for (int i = 0; i < R; i++) {
        seq *q = s->slots[i];
        if (!q || q->done || q->pos < q->rq->n_prompt) continue;
        if (grammar_mask(s, q, 1) != 0) continue;
        sreq *rq = q->rq;
        s->batch[nb] = (capmoe_step_seq){.id = q->sid, .rank = q->rank, .tokens = &q->next_tok,
                                         .n_tokens = 1, .kv_len = q->kv_len, .sample = 1,
                                         .sampling = rq->sampling, .rng = q->rng,
                                         .logprobs = rq->logprobs,
                                         .adj = capmoe_logitproc_adj(q->lp)};
        s->batch_seq[nb] = q;
        s->batch_kind[nb] = ENT_DECODE;
        nb++;
        tokens++;
    }
    /* then prompt chunks, oldest admission first, within the token budget */
    seq *pre[4096];
    int np = 0;
    for (int i = 0; i < R && np < (int)(sizeof pre / sizeof pre[0]); i++) {
        seq *q = s->slots[i];
        if (q && !q->done && q->pos < q->rq->n_prompt) pre[np++] = q;
    }
    qsort(pre, (size_t)np, sizeof pre[0], cmp_admit);
    int budget = s->o.max_batch_tokens - tokens;
    for (int i = 0; i < np && budget > 0; i++) {
        seq *q = pre[i];
        sreq *rq = q->rq;
        int left = rq->n_prompt - q->pos;
        int chunk = left < budget ? left : budget;
        int last = chunk == left;
        if (last && grammar_mask(s, q, chunk) != 0) continue;
        capmoe_step_seq *b = &s->batch[nb];
        *b = (capmoe_step_seq){.id = q->sid, .rank = q->rank, .tokens = rq->prompt + q->pos,
                               .n_tokens = chunk, .kv_len = q->kv_len, .sample = last,
                               .sampling = rq->sampling, .rng = q->rng,
                               .logprobs = rq->logprobs,
                               .adj = last ? capmoe_logitproc_adj(q->lp) : NULL};
        if (rq->prompt_logprobs) { /* prompt tokens this chunk's rows predict */
            int n_lp = 0;
            for (int j = 0; j < chunk; j++)
                if (q->pos + j + 1 < rq->n_prompt) n_lp++;
            b->score = rq->prompt + q->pos + 1;
            b->n_score = n_lp;
            b->score_k = rq->logprobs > 0 ? rq->logprobs : 0;
        }
        s->batch_seq[nb] = q;
        s->batch_kind[nb] = ENT_PREFILL;
        s->batch_pos[nb] = q->pos;
        nb++;
        tokens += chunk;
        budget -= chunk;
    }
    if (nb == 0) return 0;
    capmoe_error err;
    double t0 = capmoe_now();
    int rc = capmoe_engine_step(s->engine, s->batch, nb, &s->o.dispatch, s->outs,
                                s->o.collect_stats ? &s->st : NULL, &err);
    if (rc != 0) {
        if (capmoe_engine_broken(s->engine)) { /* the process group is gone */
            end_all(s, err.msg);
            return 0;
        }
        /* Fail the requests of this batch (each once; ending one request
         * never frees another). */
        sreq *failed[4096];
        int nf = 0;
        for (int i = 0; i < nb; i++) {
            sreq *rq = s->batch_seq[i]->rq;
            int seen = 0;
            for (int j = 0; j < nf; j++) seen |= failed[j] == rq;
            if (!seen && nf < (int)(sizeof failed / sizeof failed[0])) failed[nf++] = rq;
        }
        for (int j = 0; j < nf; j++) req_end(s, failed[j], CAPMOE_FINISH_ERROR, err.msg);
        report(s, 0, 0, capmoe_now() - t0, NULL);
        return 0;
    }
    account_dispatches(s, nb);
    /* Sequences may finish (and requests be freed) while we walk the batch:
     * take what each entry needs first. */
    for (int i = 0; i < nb; i++) {
        seq *q = s->batch_seq[i];
        const capmoe_step_seq *b = &s->batch[i];
        const capmoe_step_out *o = &s->outs[i];
        q->kv_len += b->n_tokens;
        if (s->batch_kind[i] == ENT_DECODE) {
            accept_token(s, q, o);
            continue;
        }
        sreq *rq = q->rq;
        int pos0 = s->batch_pos[i];
        q->pos = pos0 + b->n_tokens;
        if (b->n_score > 0 && o->n_scored > 0) {
            capmoe_sched_event *ev = ev_new(CAPMOE_EV_PROMPT_LOGPROBS, rq, q->choice);
            if (ev && (ev->toks = calloc((size_t)o->n_scored, sizeof *ev->toks))) {
                ev->n_toks = o->n_scored;
                memcpy(ev->toks, o->scored, (size_t)o->n_scored * sizeof *ev->toks);
                ev_text(ev, "", 0);
                emit(s, ev);
            } else {
                capmoe_sched_event_free(ev);
            }
        }
        if (b->sample) accept_token(s, q, o);
    }
    report(s, tokens, nb, capmoe_now() - t0, s->o.collect_stats ? &s->st : NULL);
    return 1;
}

/* The rank with the fewest live tokens (cached, plus prompt still to feed)
 * of the sequences holding a slot; ties: the lowest rank. */
static int least_loaded_rank(const capmoe_sched *s, int R) {
    long long load[CAPMOE_MAX_RANKS] = {0};
    for (int i = 0; i < s->o.max_running; i++) {
        const seq *q = s->slots[i];
        if (q && q->rank >= 0 && q->rank < R && q->rank < CAPMOE_MAX_RANKS)
            load[q->rank] += q->kv_len + (q->rq->n_prompt - q->pos) + 1;
    }
    int best = 0;
    for (int r = 1; r < R && r < CAPMOE_MAX_RANKS; r++)
        if (load[r] < load[best]) best = r;
    return best;
}

/* Gives free slots to waiting sequences, oldest request first. */
static void admit(capmoe_sched *s) {
    int R = s->o.max_running;
    for (sreq *rq = s->reqs; rq; rq = rq->next) {
        for (int c = 0; c < rq->n && rq->n_admitted < rq->n; c++) {
            seq *q = &rq->seqs[c];
            if (q->done || q->sid) continue;
            int slot = -1;
            for (int i = 0; i < R; i++)
                if (!s->slots[i]) {
                    slot = i;
                    break;
                }
            if (slot < 0) return;
            q->sid = ++s->next_sid;
            q->kv_len = 0;
            q->rank = s->o.comm ? least_loaded_rank(s, s->o.dispatch.ep_ranks)
                                : slot % s->o.dispatch.ep_ranks;
            capmoe_detok_stream_init(&q->detok, s->tok, rq->skip_special);
            q->detok_init = 1;
            q->slot = slot;
            q->admit_order = s->admit_counter++;
            s->slots[slot] = q;
            rq->n_admitted++;
            if (rq->t_admit == 0) rq->t_admit = capmoe_now();
        }
    }
}

static void report(capmoe_sched *s, int tokens, int n_seqs, double step_time,
                   const capmoe_forward_stats *fwd) {
    capmoe_sched_step_info info;
    memset(&info, 0, sizeof info);
    info.batch_tokens = tokens;
    info.batch_seqs = n_seqs;
    info.step_time = step_time;
    info.fwd = fwd;
    int waiting = 0;
    for (sreq *rq = s->reqs; rq; rq = rq->next)
        if (rq->n_admitted < rq->n) waiting++;
    for (int i = 0; i < s->o.max_running; i++) {
        seq *q = s->slots[i];
        if (!q) continue;
        info.n_running++;
        info.kv_tokens += q->kv_len;
    }
    if (s->engine) info.kv_bytes = capmoe_engine_kv_bytes(s->engine);
    info.kv_capacity = (long long)s->o.max_running * s->context;
    info.kv_token_bytes = s->model ? capmoe_model_kv_bytes_per_token(s->model, 0) : 0;
    info.kv_token_bytes_expanded = s->model ? capmoe_model_kv_bytes_per_token(s->model, 1) : 0;
    pthread_mutex_lock(&s->mu);
    s->n_waiting = waiting;
    info.n_waiting = waiting + s->n_incoming;
    pthread_mutex_unlock(&s->mu);
    if (s->o.on_step) s->o.on_step(s->o.user, &info);
}

/* The process group failed (--ep mpi): every request ends with the error,
 * then FATAL tells the program; no step runs again. */
static void end_all(capmoe_sched *s, const char *why) {
    s->fatal = 1;
    capmoe_sched_event *ev = ev_new(CAPMOE_EV_FATAL, NULL, 0);
    if (ev) ev->error = strdup(why);
    emit(s, ev); /* first: the requests below then end as casualties of the fault */
    while (s->reqs) req_end(s, s->reqs, CAPMOE_FINISH_ERROR, why);
}

/* ---- the thread ------------------------------------------------------------------ */

static void *thread_main(void *arg) {
    capmoe_sched *s = arg;
    capmoe_error err;
    if (load(s, &err) != 0) {
        if (s->o.comm && s->engine) { /* release the other ranks */
            capmoe_error e2;
            capmoe_engine_stop(s->engine, &e2);
        }
        pthread_mutex_lock(&s->mu);
        s->ready = -1;
        pthread_mutex_unlock(&s->mu);
        capmoe_sched_event *ev = ev_new(CAPMOE_EV_LOAD_FAILED, NULL, 0);
        if (ev) ev->error = strdup(err.msg);
        emit(s, ev);
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    s->ready = 1;
    pthread_mutex_unlock(&s->mu);
    emit(s, ev_new(CAPMOE_EV_READY, NULL, 0));
    report(s, 0, 0, 0, NULL);

    uint64_t *cancels = NULL;
    int cap_cancels = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->in_head && s->n_cancel == 0 && !s->cancel_all && !s->reqs)
            pthread_cond_wait(&s->cv, &s->mu);
        /* take the shared queues */
        sreq *in = s->in_head;
        s->in_head = s->in_tail = NULL;
        s->n_waiting += s->n_incoming; /* still waiting until admitted (report recounts) */
        s->n_incoming = 0;
        int nc = s->n_cancel;
        if (nc > cap_cancels) {
            uint64_t *nb = realloc(cancels, sizeof *nb * (size_t)nc);
            if (nb) {
                cancels = nb;
                cap_cancels = nc;
            } else {
                nc = cap_cancels;
            }
        }
        if (nc) memcpy(cancels, s->cancel_ids, sizeof *cancels * (size_t)nc);
        if (s->n_cancel > nc)
            memmove(s->cancel_ids, s->cancel_ids + nc,
                    sizeof *cancels * (size_t)(s->n_cancel - nc));
        s->n_cancel -= nc;
        if (s->has_pending_dispatch) { /* between two forwards: no batch sees two settings */
            s->o.dispatch = s->pending_dispatch;
            if (s->o.dispatch.regime_auto) s->o.dispatch.regime_tokens = s->regime_crossover;
            s->has_pending_dispatch = 0;
        }
        int all = s->cancel_all || s->stop;
        s->cancel_all = 0;
        int stop = s->stop;
        pthread_mutex_unlock(&s->mu);

        /* append the new requests in submission order */
        sreq **tail = &s->reqs;
        while (*tail) tail = &(*tail)->next;
        *tail = in;

        if (all) {
            while (s->reqs) req_end(s, s->reqs, CAPMOE_FINISH_CANCELLED, NULL);
        } else {
            for (int i = 0; i < nc; i++)
                for (sreq *rq = s->reqs; rq; rq = rq->next)
                    if (rq->id == cancels[i]) {
                        req_end(s, rq, CAPMOE_FINISH_CANCELLED, NULL);
                        break;
                    }
            if (s->o.request_timeout_s > 0) {
                double now = capmoe_now();
                sreq *rq = s->reqs;
                while (rq) {
                    sreq *next = rq->next;
                    if (now - rq->t_submit > s->o.request_timeout_s)
                        req_end(s, rq, CAPMOE_FINISH_TIMEOUT, NULL);
                    rq = next;
                }
            }
        }
        if (stop) break;
        if (s->fatal) { /* nothing runs any more: refuse what arrives */
            while (s->reqs) req_end(s, s->reqs, CAPMOE_FINISH_ERROR, "the expert-parallel group failed");
            continue;
        }
        admit(s);
        int waiting = 0;
        for (sreq *rq = s->reqs; rq; rq = rq->next)
            if (rq->n_admitted < rq->n) waiting++;
        pthread_mutex_lock(&s->mu);
        s->n_waiting = waiting;
        pthread_mutex_unlock(&s->mu);
        if (!step(s)) {
            report(s, 0, 0, 0, NULL);
            capmoe_error e2; /* idle: free the finished sequences' caches on their ranks */
            if (!s->fatal && capmoe_engine_flush(s->engine, &e2) != 0 &&
                capmoe_engine_broken(s->engine))
                end_all(s, e2.msg);
        }
    }
    free(cancels);
    if (s->engine && !s->fatal) { /* let the other ranks leave */
        capmoe_error e2;
        capmoe_engine_stop(s->engine, &e2);
    }
    report(s, 0, 0, 0, NULL);
    return NULL;
}

/* ---- public API -------------------------------------------------------------------- */

int capmoe_sched_new(capmoe_sched **out, const capmoe_sched_opts *o, capmoe_error *err) {
    *out = NULL;
    if (!o->on_event) return capmoe_set_error(err, "scheduler: on_event is required");
    if (!o->model_dir || !o->model_dir[0]) return capmoe_set_error(err, "model: no directory given");
    if (o->max_running < 1) return capmoe_set_error(err, "max_running: must be >= 1");
    if (o->max_batch_tokens < o->max_running)
        return capmoe_set_error(err, "max_batch_tokens (%d) must be >= max_running (%d)",
                                o->max_batch_tokens, o->max_running);
    if (o->max_queue < 1) return capmoe_set_error(err, "max_queue: must be >= 1");
    if (o->context < 0) return capmoe_set_error(err, "context: must be >= 0");
    if (o->dispatch.ep_ranks < 1 || o->dispatch.ep_ranks > CAPMOE_MAX_RANKS)
        return capmoe_set_error(err, "ep_ranks: must be 1..%d", CAPMOE_MAX_RANKS);
    capmoe_sched *s = calloc(1, sizeof *s);
    if (!s) return capmoe_set_error(err, "out of memory");
    s->o = *o;
    s->model_dir = strdup(o->model_dir);
    s->o.model_dir = s->model_dir;
    if (!s->model_dir) {
        free(s);
        return capmoe_set_error(err, "out of memory");
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->next_id = 1;
    *out = s;
    return 0;
}

void capmoe_sched_set_comm(capmoe_sched *s, capmoe_comm *comm, double step_timeout_s) {
    s->o.comm = comm;
    s->o.step_timeout_s = step_timeout_s;
}

int capmoe_sched_start(capmoe_sched *s, capmoe_error *err) {
    if (s->started) return capmoe_set_error(err, "scheduler: already started");
    int rc = pthread_create(&s->th, NULL, thread_main, s);
    if (rc != 0) return capmoe_set_error(err, "scheduler: cannot start its thread: %s", strerror(rc));
    s->started = 1;
    return 0;
}

void capmoe_sched_free(capmoe_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    while (s->reqs) { /* only when the thread never ran */
        sreq *rq = s->reqs;
        s->reqs = rq->next;
        req_free(s, rq);
    }
    while (s->in_head) {
        sreq *rq = s->in_head;
        s->in_head = rq->next;
        req_free(s, rq);
    }
    capmoe_engine_free(s->engine);
    capmoe_model_free(s->model);
    capmoe_tokenizer_free(s->tok);
    capmoe_grammar_vocab_free(s->gvocab);
    free(s->slots);
    free(s->outs);
    free(s->batch);
    free(s->batch_seq);
    free(s->batch_kind);
    free(s->batch_pos);
    free(s->layer_st);
    free(s->cancel_ids);
    free(s->model_dir);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* A seed from the kernel's entropy source (getrandom, blocking only until
 * the pool is first initialised, which happens at boot). */
static int entropy_seed(uint64_t *out, capmoe_error *err) {
    unsigned char *p = (unsigned char *)out;
    size_t got = 0;
    while (got < sizeof *out) {
        ssize_t n = getrandom(p + got, sizeof *out - got, 0);
        if (n > 0) got += (size_t)n;
        else if (n < 0 && errno != EINTR)
            return capmoe_set_error(err, "cannot draw a random seed: getrandom: %s",
                                    strerror(errno));
    }
    return 0;
}

static capmoe_sched_rc validate(const capmoe_sched *s, const capmoe_gen_params *p,
                                capmoe_error *err) {
    if (!p->prompt || p->n_prompt < 1) {
        capmoe_set_error(err, "the prompt is empty");
        return CAPMOE_SCHED_EINVAL;
    }
    if (p->n_prompt >= s->context) {
        capmoe_set_error(err,
                         "the prompt has %d tokens but the context is %d tokens (at least one "
                         "must be left for the completion)",
                         p->n_prompt, s->context);
        return CAPMOE_SCHED_EINVAL;
    }
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= s->vocab) {
            capmoe_set_error(err, "prompt token %d: id %d is out of range 0..%d", i, p->prompt[i],
                             s->vocab - 1);
            return CAPMOE_SCHED_EINVAL;
        }
    if (p->n < 1 || p->n > s->o.max_running) {
        capmoe_set_error(err, "n must be 1..%d (max_running), got %d", s->o.max_running, p->n);
        return CAPMOE_SCHED_EINVAL;
    }
    if (p->max_tokens < 1) {
        capmoe_set_error(err, "max_tokens must be >= 1, got %d", p->max_tokens);
        return CAPMOE_SCHED_EINVAL;
    }
    const capmoe_sampling *sp = &p->sampling;
    if (!(sp->temperature >= 0 && isfinite(sp->temperature)) || !(sp->top_p > 0 && sp->top_p <= 1) ||
        sp->top_k < 0 || !(sp->min_p >= 0 && sp->min_p <= 1)) {
        capmoe_set_error(err, "sampling parameters out of range");
        return CAPMOE_SCHED_EINVAL;
    }
    if (p->n_stop < 0 || p->n_stop > CAPMOE_SCHED_MAX_STOP || (p->n_stop && !p->stop)) {
        capmoe_set_error(err, "at most %d stop strings", CAPMOE_SCHED_MAX_STOP);
        return CAPMOE_SCHED_EINVAL;
    }
    for (int i = 0; i < p->n_stop; i++) {
        size_t L = p->stop[i] ? strlen(p->stop[i]) : 0;
        if (L == 0 || L > CAPMOE_SCHED_MAX_STOP_LEN) {
            capmoe_set_error(err, "stop strings must be 1..%d bytes", CAPMOE_SCHED_MAX_STOP_LEN);
            return CAPMOE_SCHED_EINVAL;
        }
    }
    if (p->n_stop_ids < 0 || p->n_stop_ids > CAPMOE_SCHED_MAX_STOP_IDS ||
        (p->n_stop_ids && !p->stop_ids)) {
        capmoe_set_error(err, "at most %d stop token ids", CAPMOE_SCHED_MAX_STOP_IDS);
        return CAPMOE_SCHED_EINVAL;
    }
    const capmoe_penalties *pe = &p->penalties;
    if (!(pe->presence >= -2 && pe->presence <= 2) || !(pe->frequency >= -2 && pe->frequency <= 2) ||
        !(pe->repetition >= 0 && pe->repetition <= 2)) {
        capmoe_set_error(err, "penalties out of range (presence, frequency -2..2; repetition "
                              "(0, 2])");
        return CAPMOE_SCHED_EINVAL;
    }
    if (p->n_logit_bias < 0 || (p->n_logit_bias && !p->logit_bias)) {
        capmoe_set_error(err, "logit_bias: bad list");
        return CAPMOE_SCHED_EINVAL;
    }
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id < 0 || p->logit_bias[i].id >= s->vocab ||
            !(p->logit_bias[i].bias >= -100 && p->logit_bias[i].bias <= 100)) {
            capmoe_set_error(err, "logit_bias: token %d must be in 0..%d with a bias in -100..100",
                             p->logit_bias[i].id, s->vocab - 1);
            return CAPMOE_SCHED_EINVAL;
        }
    if (p->logprobs > CAPMOE_SCHED_MAX_TOP) {
        capmoe_set_error(err, "logprobs must be at most %d", CAPMOE_SCHED_MAX_TOP);
        return CAPMOE_SCHED_EINVAL;
    }
    return CAPMOE_SCHED_OK;
}

capmoe_sched_rc capmoe_sched_submit(capmoe_sched *s, const capmoe_gen_params *p, uint64_t *id,
                                    capmoe_error *err) {
    pthread_mutex_lock(&s->mu);
    int ready = s->ready, draining = s->draining || s->stop;
    pthread_mutex_unlock(&s->mu);
    if (ready != 1) {
        capmoe_set_error(err, ready < 0 ? "the model failed to load" : "the model is loading");
        return CAPMOE_SCHED_ENOTREADY;
    }
    if (draining) {
        capmoe_set_error(err, "the scheduler is draining (shutting down)");
        return CAPMOE_SCHED_EDRAINING;
    }
    capmoe_sched_rc rc = validate(s, p, err);
    if (rc != CAPMOE_SCHED_OK) return rc;

    sreq *rq = calloc(1, sizeof *rq);
    if (!rq) goto oom;
    rq->user = p->user;
    rq->n_prompt = p->n_prompt;
    rq->prompt = capmoe_malloc_array((size_t)p->n_prompt, sizeof(int32_t));
    rq->seqs = calloc((size_t)p->n, sizeof *rq->seqs);
    if (!rq->prompt || !rq->seqs) goto oom;
    rq->n = p->n;
    for (int c = 0; c < p->n; c++) {
        rq->seqs[c].rq = rq;
        rq->seqs[c].choice = c;
        rq->seqs[c].slot = -1; /* never 0 from calloc: req_free would clear slot 0 */
    }
    memcpy(rq->prompt, p->prompt, sizeof(int32_t) * (size_t)p->n_prompt);
    rq->max_tokens = p->max_tokens;
    rq->sampling = p->sampling;
    for (int i = 0; i < p->n_stop; i++) {
        rq->stop[i] = strdup(p->stop[i]);
        if (!rq->stop[i]) goto oom;
        rq->stop_len[i] = strlen(p->stop[i]);
        rq->n_stop = i + 1;
    }
    rq->n_stop_ids = p->n_stop_ids;
    if (p->n_stop_ids) memcpy(rq->stop_ids, p->stop_ids, sizeof(int32_t) * (size_t)p->n_stop_ids);
    rq->ignore_eos = p->ignore_eos;
    rq->logprobs = p->logprobs < 0 ? -1 : p->logprobs;
    rq->prompt_logprobs = p->prompt_logprobs;
    rq->skip_special = p->skip_special;
    rq->penalties = p->penalties;
    if (p->n_logit_bias) {
        rq->logit_bias = capmoe_malloc_array((size_t)p->n_logit_bias, sizeof *rq->logit_bias);
        if (!rq->logit_bias) goto oom;
        memcpy(rq->logit_bias, p->logit_bias, sizeof *rq->logit_bias * (size_t)p->n_logit_bias);
        rq->n_logit_bias = p->n_logit_bias;
    }
    rq->grammar = p->grammar;
    if (p->n_logit_bias || !capmoe_penalties_off(&p->penalties) || p->grammar)
        for (int c = 0; c < p->n; c++)
            if (capmoe_logitproc_new(&rq->seqs[c].lp, s->vocab, &rq->penalties, rq->logit_bias,
                                     rq->n_logit_bias, rq->prompt, rq->n_prompt, err) != 0) {
                req_free(s, rq);
                return CAPMOE_SCHED_ENOMEM;
            }
    if (p->grammar)
        for (int c = 0; c < p->n; c++) {
            int nv = capmoe_tokenizer_n_vocab(s->tok);
            rq->seqs[c].allow = malloc((size_t)(nv + 7) / 8);
            if (!rq->seqs[c].allow ||
                capmoe_grammar_state_new(&rq->seqs[c].gs, p->grammar, err) != 0) {
                req_free(s, rq);
                return CAPMOE_SCHED_ENOMEM;
            }
        }
    rq->t_submit = capmoe_now();
    /* Without a seed every request draws its own from the kernel, so
     * identical requests sample independently; with one, output repeats. */
    rq->seed = p->seed;
    if (!p->has_seed && entropy_seed(&rq->seed, err) != 0) {
        req_free(s, rq);
        return CAPMOE_SCHED_ENOMEM;
    }

    pthread_mutex_lock(&s->mu);
    if (s->draining || s->stop) {
        pthread_mutex_unlock(&s->mu);
        req_free(s, rq);
        capmoe_set_error(err, "the scheduler is draining (shutting down)");
        return CAPMOE_SCHED_EDRAINING;
    }
    if (!p->bypass_queue_limit && s->n_incoming + s->n_waiting >= s->o.max_queue) {
        int q = s->n_incoming + s->n_waiting;
        pthread_mutex_unlock(&s->mu);
        req_free(s, rq);
        capmoe_set_error(err, "the queue is full (%d requests waiting)", q);
        return CAPMOE_SCHED_EFULL;
    }
    rq->id = s->next_id++;
    pthread_mutex_unlock(&s->mu);
    for (int c = 0; c < rq->n; c++) capmoe_rng_seed(&rq->seqs[c].rng, rq->seed + (uint64_t)c);
    pthread_mutex_lock(&s->mu);
    if (s->in_tail) s->in_tail->next = rq;
    else s->in_head = rq;
    s->in_tail = rq;
    s->n_incoming++;
    s->n_active++;
    *id = rq->id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return CAPMOE_SCHED_OK;
oom:
    req_free(s, rq);
    capmoe_set_error(err, "out of memory");
    return CAPMOE_SCHED_ENOMEM;
}

void capmoe_sched_cancel(capmoe_sched *s, uint64_t id) {
    pthread_mutex_lock(&s->mu);
    if (s->n_cancel == s->cap_cancel) {
        int nc = s->cap_cancel ? s->cap_cancel * 2 : 16;
        uint64_t *n = realloc(s->cancel_ids, sizeof *n * (size_t)nc);
        if (!n) { /* cannot record it: fall back to nothing (the request ends normally) */
            pthread_mutex_unlock(&s->mu);
            return;
        }
        s->cancel_ids = n;
        s->cap_cancel = nc;
    }
    s->cancel_ids[s->n_cancel++] = id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int capmoe_sched_set_dispatch(capmoe_sched *s, const capmoe_dispatch_cfg *d, capmoe_error *err) {
    if (d->ep_ranks != s->o.dispatch.ep_ranks) /* ep_ranks never changes after new */
        return capmoe_set_error(err, "ep_ranks: %d ranks cannot change to %d without a restart",
                                s->o.dispatch.ep_ranks, d->ep_ranks);
    pthread_mutex_lock(&s->mu);
    int ready = s->ready;
    pthread_mutex_unlock(&s->mu);
    if (ready == 1 && s->hc->n_moe_layers > 0 &&
        capmoe_dispatch_cfg_check(d, s->hc->n_experts, err) != 0)
        return -1;
    pthread_mutex_lock(&s->mu);
    s->pending_dispatch = *d;
    s->has_pending_dispatch = 1;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void capmoe_sched_drain(capmoe_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
}

void capmoe_sched_cancel_all(capmoe_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->cancel_all = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int capmoe_sched_active(capmoe_sched *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->n_active;
    pthread_mutex_unlock(&s->mu);
    return n;
}

const capmoe_tokenizer *capmoe_sched_tokenizer(const capmoe_sched *s) { return s->tok; }
const capmoe_hfconfig *capmoe_sched_model_config(const capmoe_sched *s) { return s->hc; }
int capmoe_sched_context(const capmoe_sched *s) { return s->context; }
int capmoe_sched_vocab(const capmoe_sched *s) { return s->vocab; }
size_t capmoe_sched_weight_bytes(const capmoe_sched *s) {
    return s->model ? capmoe_model_alloc_bytes(s->model) + capmoe_model_mapped_bytes(s->model) : 0;
}

int capmoe_sched_regime_tokens(capmoe_sched *s) {
    pthread_mutex_lock(&s->mu);
    int ready = s->ready;
    pthread_mutex_unlock(&s->mu);
    return ready == 1 ? s->regime_crossover : 0;
}
