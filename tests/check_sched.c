/* check_sched.c - tests of core/sched.c on a real tiny model
 * (tests/fixtures/qwen3moe-tiny, generated from transformers): every result
 * is compared with a direct decode through capmoe_model_forward (one lone
 * sequence, whole prompt in one forward), so continuous batching, chunked
 * prefill, slots, cancellation, stop strings / ids, seeds, logprobs and the
 * queue limits are checked against the engine itself. Prompts are token ids
 * drawn from a fixed LCG; no expected output is written into this file. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/model.h"
#include "capmoe/sched.h"
#include "capmoe/tokenizer.h"

#define MODEL "tests/fixtures/qwen3moe-tiny"
#define MAXTOK 512

/* ---- event collector ------------------------------------------------------- */

typedef struct choice_out {
    int32_t toks[MAXTOK];
    double lps[MAXTOK];
    int ntop[MAXTOK];
    int32_t top0[MAXTOK];
    double top0lp[MAXTOK];
    int n;
    char text[8192];
    size_t text_len;
    capmoe_finish finish;
    int n_generated;
    int done_events;
    double plp[MAXTOK]; /* prompt logprobs by position */
    int plp_seen[MAXTOK];
} choice_out;

typedef struct req_out {
    uint64_t id;
    choice_out ch[4];
    int finished;
    int finished_events;
    int cancelled;
    int n_prompt, n_generated_total;
    int token_events_after_finish;
    int policy, n_dispatches, n_limited; /* FINISHED: the dispatches it took part in */
    double gamma_min, gamma_max;
} req_out;

typedef struct collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, failed;
    char fail_msg[1024];
    int max_batch_tokens_seen, max_batch_seqs_seen, steps;
    long long last_kv_tokens;
    int last_running;
} collector;

static collector g_col = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "", 0, 0, 0, 0, 0};

static void on_event(void *user, capmoe_sched_event *ev) {
    collector *c = &g_col;
    (void)user;
    pthread_mutex_lock(&c->mu);
    if (ev->type == CAPMOE_EV_READY) c->ready = 1;
    else if (ev->type == CAPMOE_EV_LOAD_FAILED) {
        c->failed = 1;
        snprintf(c->fail_msg, sizeof c->fail_msg, "%s", ev->error ? ev->error : "");
    } else {
        req_out *r = ev->user;
        if (r->finished) r->token_events_after_finish++;
        choice_out *o = &r->ch[ev->choice];
        switch (ev->type) {
        case CAPMOE_EV_TOKEN:
            ck_assert_int_eq(ev->n_toks, 1);
            if (o->n < MAXTOK) {
                o->toks[o->n] = ev->toks[0].id;
                o->lps[o->n] = ev->toks[0].logprob;
                o->ntop[o->n] = ev->toks[0].n_top;
                o->top0[o->n] = ev->toks[0].n_top ? ev->toks[0].top_ids[0] : -1;
                o->top0lp[o->n] = ev->toks[0].n_top ? ev->toks[0].top_lps[0] : 0;
                for (int k = 1; k < ev->toks[0].n_top; k++)
                    ck_assert(ev->toks[0].top_lps[k] <= ev->toks[0].top_lps[k - 1]);
                o->n++;
            }
            /* the text below */
            __attribute__((fallthrough));
        case CAPMOE_EV_CHOICE_DONE:
            ck_assert_ptr_nonnull(ev->text);
            if (o->text_len + ev->text_len < sizeof o->text) {
                memcpy(o->text + o->text_len, ev->text, ev->text_len);
                o->text_len += ev->text_len;
                o->text[o->text_len] = '\0';
            }
            if (ev->type == CAPMOE_EV_CHOICE_DONE) {
                o->finish = ev->finish;
                o->n_generated = ev->n_generated;
                o->done_events++;
            }
            break;
        case CAPMOE_EV_PROMPT_LOGPROBS:
            for (int i = 0; i < ev->n_toks; i++) {
                int p = ev->toks[i].pos;
                if (p >= 0 && p < MAXTOK) {
                    o->plp[p] = ev->toks[i].logprob;
                    o->plp_seen[p]++;
                }
            }
            break;
        case CAPMOE_EV_FINISHED:
            r->finished = 1;
            r->finished_events++;
            r->cancelled = ev->cancelled;
            r->n_prompt = ev->n_prompt;
            r->n_generated_total = ev->n_generated_total;
            r->policy = ev->policy;
            r->n_dispatches = ev->n_dispatches;
            r->n_limited = ev->n_limited;
            r->gamma_min = ev->gamma_min;
            r->gamma_max = ev->gamma_max;
            break;
        default:
            break;
        }
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    capmoe_sched_event_free(ev);
}

static void on_step(void *user, const capmoe_sched_step_info *info) {
    (void)user;
    collector *c = &g_col;
    pthread_mutex_lock(&c->mu);
    if (info->fwd) {
        c->steps++;
        ck_assert_int_eq(info->fwd->tokens, info->batch_tokens);
        if (info->batch_tokens > c->max_batch_tokens_seen) c->max_batch_tokens_seen = info->batch_tokens;
        if (info->batch_seqs > c->max_batch_seqs_seen) c->max_batch_seqs_seen = info->batch_seqs;
    }
    c->last_kv_tokens = info->kv_tokens;
    c->last_running = info->n_running;
    pthread_mutex_unlock(&c->mu);
}

static double g_timeout_s; /* request_timeout_s of the next start() */

static capmoe_sched *start(int max_running, int max_batch_tokens, int max_queue) {
    pthread_mutex_lock(&g_col.mu);
    g_col.ready = g_col.failed = 0;
    g_col.max_batch_tokens_seen = g_col.max_batch_seqs_seen = g_col.steps = 0;
    pthread_mutex_unlock(&g_col.mu);
    capmoe_sched_opts o;
    memset(&o, 0, sizeof o);
    o.model_dir = MODEL;
    o.max_running = max_running;
    o.max_batch_tokens = max_batch_tokens;
    o.max_queue = max_queue;
    o.request_timeout_s = g_timeout_s;
    capmoe_dispatch_cfg_default(&o.dispatch);
    o.collect_stats = 1;
    o.on_event = on_event;
    o.on_step = on_step;
    capmoe_sched *s;
    capmoe_error err;
    ck_assert_msg(capmoe_sched_new(&s, &o, &err) == 0, "%s", err.msg);
    ck_assert_msg(capmoe_sched_start(s, &err) == 0, "%s", err.msg);
    pthread_mutex_lock(&g_col.mu);
    while (!g_col.ready && !g_col.failed) pthread_cond_wait(&g_col.cv, &g_col.mu);
    pthread_mutex_unlock(&g_col.mu);
    ck_assert_msg(g_col.ready, "load failed: %s", g_col.fail_msg);
    return s;
}

static void wait_finished(req_out *r) {
    pthread_mutex_lock(&g_col.mu);
    while (!r->finished) pthread_cond_wait(&g_col.cv, &g_col.mu);
    pthread_mutex_unlock(&g_col.mu);
}

static void wait_tokens(req_out *r, int n) {
    pthread_mutex_lock(&g_col.mu);
    while (r->ch[0].n < n && !r->finished) pthread_cond_wait(&g_col.cv, &g_col.mu);
    pthread_mutex_unlock(&g_col.mu);
}

static uint64_t submit(capmoe_sched *s, const capmoe_gen_params *p, req_out *r) {
    memset(r, 0, sizeof *r);
    capmoe_gen_params q = *p;
    q.user = r;
    capmoe_error err;
    uint64_t id = 0;
    capmoe_sched_rc rc = capmoe_sched_submit(s, &q, &id, &err);
    ck_assert_msg(rc == CAPMOE_SCHED_OK, "submit: %d %s", rc, err.msg);
    r->id = id;
    return id;
}

/* ---- the reference: a lone decode through the model ------------------------------ */

static capmoe_model *g_model;
static capmoe_tokenizer *g_tok;
static int g_vocab;

static void ref_setup(void) {
    capmoe_error err;
    ck_assert_msg(capmoe_model_load(&g_model, MODEL, NULL, &err) == 0, "%s", err.msg);
    ck_assert_msg(capmoe_tokenizer_load(&g_tok, MODEL, &err) == 0, "%s", err.msg);
    g_vocab = capmoe_model_config(g_model)->vocab_size;
}

static void ref_teardown(void) {
    capmoe_model_free(g_model);
    capmoe_tokenizer_free(g_tok);
    g_model = NULL;
    g_tok = NULL;
}

/* Greedy continuation of prompt for n tokens; lps gets log p of each. */
static void ref_greedy(const int32_t *prompt, int np, int n, int32_t *out, double *lps) {
    capmoe_kv *kv = capmoe_kv_new(g_model, 0);
    float *logits = malloc(sizeof(float) * (size_t)g_vocab);
    capmoe_error err;
    capmoe_batch_seq b = {kv, prompt, np, CAPMOE_LOGITS_LAST, 0};
    ck_assert_msg(capmoe_model_forward(g_model, &b, 1, NULL, logits, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < n; i++) {
        out[i] = capmoe_argmax(logits, g_vocab);
        lps[i] = capmoe_logprob(logits, g_vocab, out[i]);
        if (i + 1 == n) break;
        b = (capmoe_batch_seq){kv, &out[i], 1, CAPMOE_LOGITS_LAST, 0};
        ck_assert_msg(capmoe_model_forward(g_model, &b, 1, NULL, logits, NULL, &err) == 0, "%s",
                      err.msg);
    }
    free(logits);
    capmoe_kv_free(kv);
}

/* Decodes ids as the scheduler's text does: ids the tokenizer does not know
 * (the embedding may be padded beyond the tokenizer) add no text. */
static char *decode_known(const int32_t *ids, int n) {
    int32_t *k = malloc(sizeof *k * (size_t)(n ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < capmoe_tokenizer_n_vocab(g_tok)) k[m++] = ids[i];
    char *text = NULL;
    size_t tl;
    capmoe_error err;
    ck_assert_msg(capmoe_tokenizer_decode(g_tok, k, m, 1, &text, &tl, &err) == 0, "%s", err.msg);
    free(k);
    return text;
}

/* Prompt ids from an LCG (ids 3.. to avoid the special tokens). */
static void make_prompt(int32_t *p, int n, unsigned seed) {
    unsigned x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = 3 + (int32_t)((x >> 8) % (unsigned)(g_vocab - 3));
    }
}

static void greedy_params(capmoe_gen_params *p, const int32_t *prompt, int np, int max_tokens) {
    capmoe_gen_params_default(p);
    p->prompt = prompt;
    p->n_prompt = np;
    p->max_tokens = max_tokens;
    p->sampling.temperature = 0;
    p->ignore_eos = 1;
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_lone_greedy_matches_forward) {
    capmoe_sched *s = start(4, 64, 16);
    ck_assert_int_eq(capmoe_sched_context(s), capmoe_model_config(g_model)->max_position_embeddings);
    ck_assert_int_eq(capmoe_sched_vocab(s), g_vocab);
    static const int lens[] = {1, 7, 30};
    for (int k = 0; k < 3; k++) {
        int32_t prompt[64], ref[24];
        double rlp[24];
        make_prompt(prompt, lens[k], (unsigned)k + 1);
        ref_greedy(prompt, lens[k], 24, ref, rlp);
        capmoe_gen_params p;
        greedy_params(&p, prompt, lens[k], 24);
        p.logprobs = 3;
        static req_out r;
        submit(s, &p, &r);
        wait_finished(&r);
        ck_assert_int_eq(r.finished_events, 1);
        ck_assert_int_eq(r.ch[0].n, 24);
        ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_LENGTH);
        ck_assert_int_eq(r.ch[0].n_generated, 24);
        ck_assert_int_eq(r.n_prompt, lens[k]);
        ck_assert_int_eq(r.n_generated_total, 24);
        for (int i = 0; i < 24; i++) {
            ck_assert_msg(r.ch[0].toks[i] == ref[i], "prompt %d token %d: %d vs %d", k, i,
                          r.ch[0].toks[i], ref[i]);
            ck_assert_msg(fabs(r.ch[0].lps[i] - rlp[i]) < 1e-4, "logprob %g vs %g", r.ch[0].lps[i],
                          rlp[i]);
            ck_assert_int_eq(r.ch[0].ntop[i], 3);
            ck_assert_int_eq(r.ch[0].top0[i], ref[i]); /* greedy = most likely */
        }
        /* the text is the decode of the tokens */
        char *text = decode_known(ref, 24);
        ck_assert_str_eq(r.ch[0].text, text);
        free(text);
    }
    capmoe_sched_free(s);
    ck_assert_int_eq(g_col.last_kv_tokens, 0);
}
END_TEST

/* Several requests at once, a small token budget (prompts prefilled in
 * chunks next to other sequences' decode tokens): every output is still the
 * lone greedy decode. */
START_TEST(test_batching_and_chunked_prefill) {
    capmoe_sched *s = start(4, 8, 16);
    enum { NR = 5, NT = 20 };
    static const int lens[NR] = {5, 13, 21, 2, 9};
    int32_t prompts[NR][32], ref[NR][NT];
    double rlp[NT];
    static req_out r[NR];
    capmoe_gen_params p;
    for (int k = 0; k < NR; k++) {
        make_prompt(prompts[k], lens[k], 100u + (unsigned)k);
        ref_greedy(prompts[k], lens[k], NT, ref[k], rlp);
    }
    for (int k = 0; k < NR; k++) {
        greedy_params(&p, prompts[k], lens[k], NT);
        submit(s, &p, &r[k]);
    }
    for (int k = 0; k < NR; k++) wait_finished(&r[k]);
    for (int k = 0; k < NR; k++) {
        ck_assert_int_eq(r[k].ch[0].n, NT);
        for (int i = 0; i < NT; i++)
            ck_assert_msg(r[k].ch[0].toks[i] == ref[k][i], "request %d token %d: %d vs %d", k, i,
                          r[k].ch[0].toks[i], ref[k][i]);
    }
    ck_assert_int_le(g_col.max_batch_tokens_seen, 8);
    ck_assert_int_ge(g_col.max_batch_seqs_seen, 2); /* sequences really shared forwards */
    ck_assert_int_le(g_col.max_batch_seqs_seen, 4);
    capmoe_sched_free(s);
}
END_TEST

START_TEST(test_stop_strings_and_ids) {
    capmoe_sched *s = start(4, 64, 16);
    int32_t prompt[16], ref[40];
    double rlp[40];
    char *full = NULL;
    size_t fl = 0;
    const char *stop = NULL;
    char stopbuf[8];
    /* find a prompt whose greedy text has an ASCII pair in its second half */
    for (unsigned seed = 7; seed < 40 && !stop; seed++) {
        make_prompt(prompt, 6, seed);
        ref_greedy(prompt, 6, 40, ref, rlp);
        free(full);
        full = decode_known(ref, 40);
        fl = strlen(full);
        for (size_t i = fl / 2; i + 1 < fl; i++)
            if (full[i] > 32 && full[i] < 127 && full[i + 1] > 32 && full[i + 1] < 127) {
                stopbuf[0] = full[i];
                stopbuf[1] = full[i + 1];
                stopbuf[2] = '\0';
                stop = stopbuf;
                break;
            }
    }
    ck_assert_ptr_nonnull(stop);
    size_t cut = (size_t)(strstr(full, stop) - full); /* first occurrence */
    capmoe_gen_params p;
    greedy_params(&p, prompt, 6, 40);
    const char *stops[] = {"\x01never\x02", stop};
    p.stop = stops;
    p.n_stop = 2;
    static req_out r;
    submit(s, &p, &r);
    wait_finished(&r);
    ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_STOP);
    ck_assert_int_eq(r.ch[0].text_len, cut);
    ck_assert(memcmp(r.ch[0].text, full, cut) == 0);
    ck_assert_ptr_null(strstr(r.ch[0].text, stop));
    ck_assert_int_lt(r.ch[0].n, 40);

    /* a stop token id: the choice ends at that token, which adds no text */
    greedy_params(&p, prompt, 6, 40);
    int32_t sid = ref[5];
    int first = 0;
    while (ref[first] != sid) first++;
    p.stop_ids = &sid;
    p.n_stop_ids = 1;
    submit(s, &p, &r);
    wait_finished(&r);
    ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_STOP);
    ck_assert_int_eq(r.ch[0].n_generated, first + 1);
    char *pre = decode_known(ref, first);
    ck_assert_str_eq(r.ch[0].text, pre);
    free(pre);

    /* max_tokens */
    greedy_params(&p, prompt, 6, 5);
    submit(s, &p, &r);
    wait_finished(&r);
    ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_LENGTH);
    ck_assert_int_eq(r.ch[0].n_generated, 5);
    free(full);
    capmoe_sched_free(s);
}
END_TEST

/* The context bounds generation: a prompt of context-3 tokens gets 3 tokens. */
START_TEST(test_context_full) {
    capmoe_sched *s = start(2, 600, 16);
    int ctx = capmoe_sched_context(s);
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)ctx);
    make_prompt(prompt, ctx - 3, 9);
    capmoe_gen_params p;
    greedy_params(&p, prompt, ctx - 3, 100);
    static req_out r;
    submit(s, &p, &r);
    wait_finished(&r);
    ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_LENGTH);
    ck_assert_int_eq(r.ch[0].n_generated, 4); /* 3 fill the cache, the 4th is sampled last */
    free(prompt);
    capmoe_sched_free(s);
}
END_TEST

START_TEST(test_seeds_and_choices) {
    capmoe_sched *s = start(4, 64, 16);
    int32_t prompt[8];
    make_prompt(prompt, 8, 21);
    capmoe_gen_params p;
    capmoe_gen_params_default(&p);
    p.prompt = prompt;
    p.n_prompt = 8;
    p.max_tokens = 16;
    p.ignore_eos = 1;
    p.sampling.temperature = 0.9f;
    p.has_seed = 1;
    static req_out a, b, c, d, e;
    p.seed = 42;
    submit(s, &p, &a);
    wait_finished(&a);
    submit(s, &p, &b);
    wait_finished(&b);
    p.seed = 43;
    submit(s, &p, &c);
    wait_finished(&c);
    p.seed = 42;
    p.n = 2;
    submit(s, &p, &d);
    wait_finished(&d);
    p.n = 1;
    p.seed = 1000;
    submit(s, &p, &e);
    wait_finished(&e);
    ck_assert(memcmp(a.ch[0].toks, b.ch[0].toks, sizeof(int32_t) * 16) == 0);
    ck_assert(memcmp(a.ch[0].toks, d.ch[0].toks, sizeof(int32_t) * 16) == 0); /* choice 0: seed */
    ck_assert(memcmp(c.ch[0].toks, d.ch[1].toks, sizeof(int32_t) * 16) == 0); /* choice 1: seed+1 */
    ck_assert(memcmp(a.ch[0].toks, e.ch[0].toks, sizeof(int32_t) * 16) != 0);
    ck_assert_int_eq(d.ch[0].done_events, 1);
    ck_assert_int_eq(d.ch[1].done_events, 1);
    ck_assert_int_eq(d.n_generated_total, 32);
    ck_assert_int_eq(d.finished_events, 1);
    capmoe_sched_free(s);
}
END_TEST

/* Without a seed every request draws its own: 30 identical requests on this
 * random model (a near-uniform next-token distribution over 576 ids) give 30
 * different continuations and many different first tokens. (Seeds derived
 * from counters that move together repeated after a few requests.) */
START_TEST(test_unseeded_requests_differ) {
    capmoe_sched *s = start(4, 64, 64);
    int32_t prompt[4];
    make_prompt(prompt, 4, 5);
    capmoe_gen_params p;
    capmoe_gen_params_default(&p);
    p.prompt = prompt;
    p.n_prompt = 4;
    p.max_tokens = 8;
    p.ignore_eos = 1;
    p.sampling.temperature = 1.0f;
    enum { N = 30 };
    static req_out r[N];
    for (int i = 0; i < N; i++) submit(s, &p, &r[i]);
    for (int i = 0; i < N; i++) wait_finished(&r[i]);
    int same = 0, first_distinct = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(r[i].ch[0].n, 8);
        int new_first = 1;
        for (int j = 0; j < i; j++) {
            same += memcmp(r[i].ch[0].toks, r[j].ch[0].toks, sizeof(int32_t) * 8) == 0;
            new_first &= r[i].ch[0].toks[0] != r[j].ch[0].toks[0];
        }
        first_distinct += new_first;
    }
    ck_assert_int_eq(same, 0);
    /* 30 draws from ~576 near-equally likely ids: about 29 distinct; fewer
     * than 20 happens with probability far below 1e-9 */
    ck_assert_msg(first_distinct >= 20, "only %d distinct first tokens", first_distinct);
    capmoe_sched_free(s);
}
END_TEST

/* A new dispatch configuration applies from the next step on, to running
 * requests too; FINISHED reports the dispatches a request took part in. */
START_TEST(test_set_dispatch_live) {
    capmoe_sched *s = start(4, 64, 16);
    int32_t prompt[8];
    make_prompt(prompt, 8, 9);
    capmoe_gen_params p;
    greedy_params(&p, prompt, 8, 24);
    p.n = 2; /* decode steps of 2 tokens: a capacity limit applies to them */
    static req_out a, b, c, d;
    submit(s, &p, &a);
    wait_finished(&a);
    ck_assert_int_eq(a.policy, CAPMOE_POLICY_NONE);
    ck_assert_int_gt(a.n_dispatches, 0);
    ck_assert_int_eq(a.n_limited, 0);

    capmoe_dispatch_cfg d1;
    capmoe_dispatch_cfg_default(&d1);
    d1.policy = CAPMOE_POLICY_DROP;
    d1.capacity_factor = 1.5;
    d1.min_tokens = 0;
    capmoe_error err;
    ck_assert_msg(capmoe_sched_set_dispatch(s, &d1, &err) == 0, "%s", err.msg);
    submit(s, &p, &b);
    wait_finished(&b);
    ck_assert_int_eq(b.policy, CAPMOE_POLICY_DROP);
    ck_assert_int_eq(b.n_dispatches, a.n_dispatches); /* same steps: same prompt, n, length */
    ck_assert_int_eq(b.n_limited, b.n_dispatches);
    ck_assert(b.gamma_min == 1.5 && b.gamma_max == 1.5);

    /* refused: another rank count, or a configuration the model rejects */
    capmoe_dispatch_cfg bad = d1;
    bad.ep_ranks = 2;
    ck_assert_int_eq(capmoe_sched_set_dispatch(s, &bad, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "ep_ranks"));
    bad = d1;
    bad.capacity_factor = 0;
    ck_assert_int_eq(capmoe_sched_set_dispatch(s, &bad, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "gamma"));

    /* a change in the middle of a request: it goes on under the new setting */
    p.max_tokens = 200;
    submit(s, &p, &c);
    wait_tokens(&c, 20);
    capmoe_dispatch_cfg d0;
    capmoe_dispatch_cfg_default(&d0);
    ck_assert_int_eq(capmoe_sched_set_dispatch(s, &d0, &err), 0);
    wait_finished(&c);
    ck_assert_int_eq(c.ch[0].n, 200);
    ck_assert_int_eq(c.ch[1].n, 200);
    ck_assert(!c.cancelled);
    ck_assert_int_eq(c.policy, CAPMOE_POLICY_NONE);
    ck_assert_int_gt(c.n_limited, 0);
    ck_assert_int_lt(c.n_limited, c.n_dispatches);
    p.max_tokens = 24;
    submit(s, &p, &d);
    wait_finished(&d);
    ck_assert_int_eq(d.n_limited, 0);
    capmoe_sched_free(s);
}
END_TEST

/* Prompt logprobs (echo) over chunked prefill equal those of one forward. */
START_TEST(test_prompt_logprobs) {
    capmoe_sched *s = start(2, 4, 16);
    enum { NP = 11 };
    int32_t prompt[NP];
    make_prompt(prompt, NP, 5);
    capmoe_kv *kv = capmoe_kv_new(g_model, 0);
    float *logits = malloc(sizeof(float) * (size_t)g_vocab * NP);
    capmoe_batch_seq b = {kv, prompt, NP, CAPMOE_LOGITS_ALL, 0};
    capmoe_error err;
    ck_assert(capmoe_model_forward(g_model, &b, 1, NULL, logits, NULL, &err) == 0);
    capmoe_gen_params p;
    greedy_params(&p, prompt, NP, 2);
    p.prompt_logprobs = 1;
    p.logprobs = 2;
    p.n = 2;
    static req_out r;
    submit(s, &p, &r);
    wait_finished(&r);
    for (int c = 0; c < 2; c++) {
        ck_assert_int_eq(r.ch[c].plp_seen[0], 0);
        for (int i = 1; i < NP; i++) {
            ck_assert_int_eq(r.ch[c].plp_seen[i], 1);
            double want = capmoe_logprob(logits + (size_t)(i - 1) * g_vocab, g_vocab, prompt[i]);
            ck_assert_msg(fabs(r.ch[c].plp[i] - want) < 1e-4, "pos %d: %g vs %g", i, r.ch[c].plp[i],
                          want);
        }
        /* the first generated token follows the last prompt row */
        ck_assert_int_eq(r.ch[c].toks[0], capmoe_argmax(logits + (size_t)(NP - 1) * g_vocab, g_vocab));
    }
    free(logits);
    capmoe_kv_free(kv);
    capmoe_sched_free(s);
}
END_TEST

START_TEST(test_cancel) {
    capmoe_sched *s = start(2, 64, 16);
    int32_t prompt[4];
    make_prompt(prompt, 4, 3);
    capmoe_gen_params p;
    greedy_params(&p, prompt, 4, 400);
    p.n = 2;
    static req_out r;
    uint64_t id = submit(s, &p, &r);
    wait_tokens(&r, 2);
    capmoe_sched_cancel(s, id);
    wait_finished(&r);
    ck_assert_int_eq(r.cancelled, 1);
    ck_assert_int_eq(r.ch[0].finish, CAPMOE_FINISH_CANCELLED);
    ck_assert_int_eq(r.ch[1].finish, CAPMOE_FINISH_CANCELLED);
    ck_assert_int_lt(r.n_generated_total, 800);
    ck_assert_int_eq(capmoe_sched_active(s), 0);
    capmoe_sched_cancel(s, id); /* unknown by now: a no-op */
    capmoe_sched_cancel(s, 999999);
    /* the slots are free again: a new request runs */
    static req_out r2;
    greedy_params(&p, prompt, 4, 3);
    submit(s, &p, &r2);
    wait_finished(&r2);
    ck_assert_int_eq(r2.ch[0].n_generated, 3);
    pthread_mutex_lock(&g_col.mu);
    ck_assert_int_eq(r.token_events_after_finish, 0);
    pthread_mutex_unlock(&g_col.mu);
    capmoe_sched_free(s);
    ck_assert_int_eq(g_col.last_running, 0);
}
END_TEST

START_TEST(test_queue_full_drain_cancel_all) {
    capmoe_sched *s = start(1, 16, 1);
    int32_t prompt[4];
    make_prompt(prompt, 4, 11);
    capmoe_gen_params p;
    greedy_params(&p, prompt, 4, 60);
    static req_out a, b, c, d;
    submit(s, &p, &a);
    wait_tokens(&a, 1); /* a holds the only slot */
    submit(s, &p, &b);  /* b waits: the queue (1) is now full */
    capmoe_error err;
    uint64_t id;
    p.user = NULL;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EFULL);
        ck_assert_ptr_nonnull(strstr(err.msg, "queue is full"));
    }
    ck_assert_int_eq(capmoe_sched_active(s), 2);
    static req_out e;
    p.bypass_queue_limit = 1; /* the later prompts of an admitted HTTP request */
    submit(s, &p, &e);
    p.bypass_queue_limit = 0;
    ck_assert_int_eq(capmoe_sched_active(s), 3);
    /* refusals leave the running and the waiting requests intact */
    wait_finished(&a);
    wait_finished(&b);
    wait_finished(&e);
    ck_assert_int_eq(e.ch[0].n_generated, 60);
    ck_assert_int_eq(a.ch[0].n_generated, 60);
    ck_assert_int_eq(b.ch[0].n_generated, 60);
    ck_assert(memcmp(a.ch[0].toks, b.ch[0].toks, sizeof(int32_t) * 60) == 0);
    /* cancel_all ends running and waiting requests */
    greedy_params(&p, prompt, 4, 500);
    submit(s, &p, &c);
    wait_tokens(&c, 1);
    submit(s, &p, &d);
    capmoe_sched_cancel_all(s);
    wait_finished(&c);
    wait_finished(&d);
    ck_assert(c.cancelled && d.cancelled);
    ck_assert_int_eq(d.n_generated_total, 0);
    ck_assert_int_eq(d.ch[0].finish, CAPMOE_FINISH_CANCELLED);
    ck_assert_int_eq(capmoe_sched_active(s), 0);
    /* draining refuses new work */
    capmoe_sched_drain(s);
    p.user = NULL;
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EDRAINING);
    capmoe_sched_free(s);
}
END_TEST

/* request_timeout_s ends a generation that runs too long (with its text). */
START_TEST(test_request_timeout) {
    g_timeout_s = 0.05;
    capmoe_sched *s = start(4, 64, 4);
    g_timeout_s = 0;
    int32_t prompt[4];
    make_prompt(prompt, 4, 13);
    capmoe_gen_params p;
    greedy_params(&p, prompt, 4, 500);
    p.n = 4;
    static req_out r;
    double t0 = capmoe_now();
    submit(s, &p, &r);
    wait_finished(&r);
    double dt = capmoe_now() - t0;
    /* 500 decode steps take far longer than 50 ms on any CPU */
    ck_assert_int_lt(r.n_generated_total, 2000);
    for (int c = 0; c < 4; c++) ck_assert_int_eq(r.ch[c].finish, CAPMOE_FINISH_TIMEOUT);
    ck_assert_int_eq(r.cancelled, 0);
    ck_assert_msg(dt < 5.0, "timeout after %g s", dt);
    char *t = decode_known(r.ch[0].toks, r.ch[0].n);
    ck_assert_str_eq(r.ch[0].text, t);
    free(t);
    capmoe_sched_free(s);
}
END_TEST

/* Freeing with work in flight cancels it and still delivers FINISHED. */
START_TEST(test_free_with_running_work) {
    capmoe_sched *s = start(2, 16, 4);
    int32_t prompt[4];
    make_prompt(prompt, 4, 12);
    capmoe_gen_params p;
    greedy_params(&p, prompt, 4, 500);
    static req_out a, b;
    submit(s, &p, &a);
    submit(s, &p, &b);
    wait_tokens(&a, 1);
    capmoe_sched_free(s);
    ck_assert_int_eq(a.finished_events, 1);
    ck_assert_int_eq(b.finished_events, 1);
}
END_TEST

START_TEST(test_invalid_and_not_ready) {
    capmoe_sched_opts o;
    memset(&o, 0, sizeof o);
    o.model_dir = MODEL;
    o.max_running = 2;
    o.max_batch_tokens = 16;
    o.max_queue = 4;
    capmoe_dispatch_cfg_default(&o.dispatch);
    o.on_event = on_event;
    capmoe_sched *s;
    capmoe_error err;
    ck_assert_int_eq(capmoe_sched_new(&s, &o, &err), 0);
    int32_t one = 5;
    capmoe_gen_params p;
    greedy_params(&p, &one, 1, 4);
    uint64_t id;
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_ENOTREADY);
    capmoe_sched_free(s); /* never started */
    o.max_batch_tokens = 1;
    ck_assert_int_eq(capmoe_sched_new(&s, &o, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_batch_tokens"));

    s = start(2, 16, 4);
    int ctx = capmoe_sched_context(s);
    int32_t *big = calloc((size_t)ctx, sizeof *big);
    greedy_params(&p, big, ctx, 4);
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "context"));
    free(big);
    int32_t bad = g_vocab;
    greedy_params(&p, &bad, 1, 4);
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    greedy_params(&p, &one, 0, 4);
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    greedy_params(&p, &one, 1, 4);
    p.n = 3;
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    greedy_params(&p, &one, 1, 0);
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    greedy_params(&p, &one, 1, 4);
    const char *empty[] = {""};
    p.stop = empty;
    p.n_stop = 1;
    ck_assert_int_eq(capmoe_sched_submit(s, &p, &id, &err), CAPMOE_SCHED_EINVAL);
    ck_assert_int_eq(capmoe_sched_active(s), 0);
    capmoe_sched_free(s);
}
END_TEST

START_TEST(test_load_failure) {
    pthread_mutex_lock(&g_col.mu);
    g_col.ready = g_col.failed = 0;
    pthread_mutex_unlock(&g_col.mu);
    capmoe_sched_opts o;
    memset(&o, 0, sizeof o);
    o.model_dir = "tests/fixtures/does-not-exist";
    o.max_running = 1;
    o.max_batch_tokens = 1;
    o.max_queue = 1;
    capmoe_dispatch_cfg_default(&o.dispatch);
    o.on_event = on_event;
    capmoe_sched *s;
    capmoe_error err;
    ck_assert_int_eq(capmoe_sched_new(&s, &o, &err), 0);
    ck_assert_int_eq(capmoe_sched_start(s, &err), 0);
    pthread_mutex_lock(&g_col.mu);
    while (!g_col.ready && !g_col.failed) pthread_cond_wait(&g_col.cv, &g_col.mu);
    pthread_mutex_unlock(&g_col.mu);
    ck_assert_int_eq(g_col.failed, 1);
    ck_assert_msg(strstr(g_col.fail_msg, "does-not-exist"), "%s", g_col.fail_msg);
    capmoe_sched_free(s);
}
END_TEST

static Suite *sched_suite(void) {
    Suite *s = suite_create("sched");
    TCase *tc = tcase_create("sched");
    tcase_add_checked_fixture(tc, ref_setup, ref_teardown); /* in each forked test */
    tcase_add_test(tc, test_lone_greedy_matches_forward);
    tcase_add_test(tc, test_batching_and_chunked_prefill);
    tcase_add_test(tc, test_stop_strings_and_ids);
    tcase_add_test(tc, test_context_full);
    tcase_add_test(tc, test_seeds_and_choices);
    tcase_add_test(tc, test_unseeded_requests_differ);
    tcase_add_test(tc, test_set_dispatch_live);
    tcase_add_test(tc, test_prompt_logprobs);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_queue_full_drain_cancel_all);
    tcase_add_test(tc, test_request_timeout);
    tcase_add_test(tc, test_free_with_running_work);
    tcase_add_test(tc, test_invalid_and_not_ready);
    tcase_add_test(tc, test_load_failure);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(sched_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
