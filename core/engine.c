/* engine.c - the step executor of the scheduler (engine.h): KV caches by
 * sequence id, the forward pass of a step, sampling; under --ep mpi the
 * step plan goes from rank 0 to every rank and the results come back. */
#include "capmoe/engine.h"
#include "capmoe/version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define PLAN_MAGIC 0x43504d45u /* "CPME" */
enum { PLAN_STEP = 1, PLAN_RELEASE = 2, PLAN_STOP = 3 };

typedef struct kv_entry {
    uint64_t id;
    capmoe_kv *kv;
} kv_entry;

/* A growable byte buffer (plans and results). */
typedef struct bytes {
    char *p;
    size_t len, cap, at; /* at: read position */
    int bad;             /* a read ran past the end, or a write failed */
} bytes;

struct capmoe_engine {
    capmoe_engine_opts o;
    capmoe_model *m;
    capmoe_comm *comm;
    int R, me;
    kv_entry *kv;             /* this process's caches */
    int n_kv, cap_kv;
    /* scratch, grown per step */
    capmoe_batch_seq *batch;
    size_t cap_batch;
    int *local;               /* indexes of this rank's sequences in the step */
    size_t cap_local;
    float *logits;
    size_t cap_logits;        /* floats */
    void *sample_scratch;     /* vocab floats + vocab ints */
    int *top_ids;
    double *top_lps;
    capmoe_tok_info *scored;  /* scored prompt rows of the step, all sequences */
    size_t cap_scored;
    capmoe_layer_stats *layers;
    /* MPI */
    uint64_t *release;        /* rank 0: caches to free on other ranks at the next plan */
    int n_release, cap_release;
    size_t *rank_kv_bytes;    /* [R]: last report of each rank */
    long long step_no;
    bytes plan, res;
    int broken;
    char broken_msg[CAPMOE_ERR_MSG];
};

/* ---- bytes ---------------------------------------------------------------------- */

static void put(bytes *b, const void *p, size_t n) {
    if (b->bad) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->bad = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void get(bytes *b, void *p, size_t n) {
    if (b->bad || b->at + n > b->len) {
        b->bad = 1;
        memset(p, 0, n);
        return;
    }
    if (n) memcpy(p, b->p + b->at, n);
    b->at += n;
}

static const void *get_ptr(bytes *b, size_t n) {
    if (b->bad || b->at + n > b->len) {
        b->bad = 1;
        return NULL;
    }
    const void *p = b->p + b->at;
    b->at += n;
    return p;
}

#define PUT(b, v) put((b), &(v), sizeof(v))
#define GET(b, v) get((b), &(v), sizeof(v))

/* ---- caches ------------------------------------------------------------------------ */

static capmoe_kv *kv_find(capmoe_engine *e, uint64_t id) {
    for (int i = 0; i < e->n_kv; i++)
        if (e->kv[i].id == id) return e->kv[i].kv;
    return NULL;
}

static capmoe_kv *kv_get(capmoe_engine *e, uint64_t id) {
    capmoe_kv *kv = kv_find(e, id);
    if (kv) return kv;
    if (e->n_kv == e->cap_kv) {
        int nc = e->cap_kv ? 2 * e->cap_kv : 32;
        kv_entry *n = realloc(e->kv, (size_t)nc * sizeof *n);
        if (!n) return NULL;
        e->kv = n;
        e->cap_kv = nc;
    }
    kv = capmoe_kv_new(e->m, e->o.context);
    if (!kv) return NULL;
    e->kv[e->n_kv++] = (kv_entry){id, kv};
    return kv;
}

static void kv_drop(capmoe_engine *e, uint64_t id) {
    for (int i = 0; i < e->n_kv; i++)
        if (e->kv[i].id == id) {
            capmoe_kv_free(e->kv[i].kv);
            e->kv[i] = e->kv[--e->n_kv];
            return;
        }
}

static size_t local_kv_bytes(const capmoe_engine *e) {
    size_t b = 0;
    for (int i = 0; i < e->n_kv; i++) b += capmoe_kv_bytes(e->kv[i].kv);
    return b;
}

/* ---- the local part of a step ------------------------------------------------------- */

static void tok_info(capmoe_engine *e, const float *row, int32_t id, int pos, int k,
                     capmoe_tok_info *ti) {
    int V = capmoe_model_config(e->m)->vocab_size;
    memset(ti, 0, sizeof *ti);
    ti->id = id;
    ti->pos = pos;
    ti->logprob = capmoe_logprob(row, V, id);
    if (k > CAPMOE_ENGINE_MAX_TOP) k = CAPMOE_ENGINE_MAX_TOP;
    if (k > 0) {
        ti->n_top = capmoe_top_logprobs(row, V, k, e->top_ids, e->top_lps);
        for (int i = 0; i < ti->n_top; i++) {
            ti->top_ids[i] = e->top_ids[i];
            ti->top_lps[i] = e->top_lps[i];
        }
    }
}

static int grow(void **p, size_t *cap, size_t need, size_t each) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = capmoe_malloc_array(nc, each);
    if (!np) return -1;
    free(*p);
    *p = np;
    *cap = nc;
    return 0;
}

/* Runs the sequences idx[0..n) of seqs (all of this process), filling their
 * outs. Under MPI called on every rank, n = 0 included. */
static int run_local(capmoe_engine *e, const capmoe_step_seq *seqs, const int *idx, int n,
                     const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                     capmoe_forward_stats *st, capmoe_error *err) {
    const capmoe_hfconfig *c = capmoe_model_config(e->m);
    int V = c->vocab_size;
    size_t rows = 0, nscored = 0;
    for (int i = 0; i < n; i++) {
        const capmoe_step_seq *q = &seqs[idx[i]];
        rows += q->n_score > 0 ? (size_t)q->n_tokens : q->sample ? 1 : 0;
        nscored += (size_t)(q->n_score > 0 ? q->n_score : 0);
    }
    if (grow((void **)&e->batch, &e->cap_batch, (size_t)n + 1, sizeof *e->batch) != 0 ||
        grow((void **)&e->logits, &e->cap_logits, (rows + 1) * (size_t)V, sizeof(float)) != 0 ||
        grow((void **)&e->scored, &e->cap_scored, nscored + 1, sizeof *e->scored) != 0)
        return capmoe_set_error(err, "out of memory for a step of %d sequences", n);
    for (int i = 0; i < n; i++) {
        const capmoe_step_seq *q = &seqs[idx[i]];
        capmoe_kv *kv = kv_get(e, q->id);
        if (!kv) return capmoe_set_error(err, "out of memory for a KV cache");
        if (capmoe_kv_len(kv) != q->kv_len)
            return capmoe_set_error(err,
                                    "sequence %llu: its cache holds %d tokens, the step says %d",
                                    (unsigned long long)q->id, capmoe_kv_len(kv), q->kv_len);
        e->batch[i] = (capmoe_batch_seq){kv, q->tokens, q->n_tokens,
                                         q->n_score > 0 ? CAPMOE_LOGITS_ALL
                                         : q->sample    ? CAPMOE_LOGITS_LAST
                                                        : CAPMOE_LOGITS_NONE,
                                         q->rank};
    }
    if (capmoe_model_forward(e->m, e->batch, n, cfg, e->logits, st, err) != 0) return -1;
    const float *row = e->logits;
    capmoe_tok_info *sc = e->scored;
    for (int i = 0; i < n; i++) {
        const capmoe_step_seq *q = &seqs[idx[i]];
        capmoe_step_out *o = &outs[idx[i]];
        memset(o, 0, sizeof *o);
        o->rng = q->rng;
        if (q->n_score > 0) {
            o->scored = sc;
            o->n_scored = q->n_score;
            for (int j = 0; j < q->n_score && j < q->n_tokens; j++)
                tok_info(e, row + (size_t)j * V, q->score[j], q->kv_len + j + 1, q->score_k,
                         sc++);
            row += (size_t)(q->n_tokens - 1) * V; /* the last row samples */
        }
        if (q->sample || q->n_score > 0) {
            if (q->sample) {
                if (q->adj) capmoe_logit_adj_apply(q->adj, (float *)row, V);
                o->token = capmoe_sample(row, V, &q->sampling, &o->rng, e->sample_scratch);
                if (q->logprobs >= 0)
                    tok_info(e, row, o->token, q->kv_len + q->n_tokens, q->logprobs, &o->info);
            }
            row += V;
        }
    }
    return 0;
}

/* ---- one process ------------------------------------------------------------------------- */

int capmoe_engine_step(capmoe_engine *e, const capmoe_step_seq *seqs, int n,
                       const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                       capmoe_forward_stats *stats, capmoe_error *err);

static int step_mpi(capmoe_engine *e, const capmoe_step_seq *seqs, int n,
                    const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                    capmoe_forward_stats *stats, capmoe_error *err);

static int ensure_local(capmoe_engine *e, int n) {
    return grow((void **)&e->local, &e->cap_local, (size_t)n + 1, sizeof *e->local);
}

int capmoe_engine_step(capmoe_engine *e, const capmoe_step_seq *seqs, int n,
                       const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                       capmoe_forward_stats *stats, capmoe_error *err) {
    if (e->broken) return capmoe_set_error(err, "%s", e->broken_msg);
    if (n <= 0) return capmoe_set_error(err, "engine: empty step");
    if (e->comm) return step_mpi(e, seqs, n, cfg, outs, stats, err);
    if (ensure_local(e, n) != 0) return capmoe_set_error(err, "out of memory");
    for (int i = 0; i < n; i++) e->local[i] = i;
    return run_local(e, seqs, e->local, n, cfg, outs, stats, err);
}

void capmoe_engine_release(capmoe_engine *e, uint64_t id, int rank) {
    if (!e) return;
    if (!e->comm || rank == e->me) {
        kv_drop(e, id);
        return;
    }
    if (e->n_release == e->cap_release) {
        int nc = e->cap_release ? 2 * e->cap_release : 64;
        uint64_t *p = realloc(e->release, (size_t)nc * sizeof *p);
        if (!p) return; /* the cache lingers until the job ends */
        e->release = p;
        e->cap_release = nc;
    }
    e->release[e->n_release++] = id;
}

size_t capmoe_engine_kv_bytes(const capmoe_engine *e) {
    if (!e->comm) return local_kv_bytes(e);
    size_t b = local_kv_bytes(e);
    for (int r = 1; r < e->R; r++) b += e->rank_kv_bytes[r];
    return b;
}

int capmoe_engine_broken(const capmoe_engine *e) { return e->broken; }
const char *capmoe_engine_broken_msg(const capmoe_engine *e) { return e->broken_msg; }

/* ---- MPI: the plan ------------------------------------------------------------------------ */

typedef struct plan_head {
    uint32_t magic, kind;
    long long step_no;
    int n_seqs, n_release, want_stats, pad;
    double timeout_s;
    capmoe_dispatch_cfg cfg;
} plan_head;

typedef struct seq_head {
    uint64_t id;
    int rank, n_tokens, kv_len, n_score, score_k, sample, logprobs;
    int n_adj, allow_bytes, has_adj; /* q->adj: n_adj entries, then the mask (padded to 4) */
    capmoe_sampling sampling;
    capmoe_rng rng;
} seq_head;

typedef struct res_head {
    int status, n_out, n_layers, pad;
    unsigned long long kv_bytes;
    char msg[512];
} res_head;

static int fault(capmoe_engine *e, capmoe_error *err, const char *what) {
    char diag[600] = "";
    if (e->me == 0) capmoe_comm_diagnose(e->comm, 1.0, diag, sizeof diag);
    e->broken = 1;
    snprintf(e->broken_msg, sizeof e->broken_msg, "expert-parallel step %lld failed (%.60s): %.500s%s%.400s",
             e->step_no, what, err->msg, diag[0] ? "; " : "", diag);
    return capmoe_set_error(err, "%s", e->broken_msg);
}

/* Broadcasts the plan in e->plan (rank 0) or receives it (others; idle
 * waiting for the size). */
static int plan_bcast(capmoe_engine *e, int idle, capmoe_error *err) {
    unsigned long long size = e->plan.len;
    if (capmoe_comm_bcast(e->comm, &size, sizeof size, 0, idle, err) != 0) return -1;
    if (e->me != 0) {
        e->plan.len = e->plan.at = 0;
        e->plan.bad = 0;
        put(&e->plan, NULL, 0);
        if (size > e->plan.cap) {
            char *p = realloc(e->plan.p, size);
            if (!p) return capmoe_set_error(err, "out of memory for a %llu-byte step plan", size);
            e->plan.p = p;
            e->plan.cap = size;
        }
        e->plan.len = size;
    }
    return capmoe_comm_bcast(e->comm, e->plan.p, size, 0, 0, err);
}

static void plan_begin(capmoe_engine *e, int kind, int n, const capmoe_dispatch_cfg *cfg,
                       int want_stats) {
    bytes *b = &e->plan;
    b->len = b->at = 0;
    b->bad = 0;
    plan_head h;
    memset(&h, 0, sizeof h);
    h.magic = PLAN_MAGIC;
    h.kind = (uint32_t)kind;
    h.step_no = e->step_no;
    h.n_seqs = n;
    h.n_release = e->n_release;
    h.want_stats = want_stats;
    h.timeout_s = e->o.step_timeout_s;
    if (cfg) h.cfg = *cfg;
    PUT(b, h);
    put(b, e->release, (size_t)e->n_release * sizeof *e->release);
}

/* Executes a plan on this rank: frees released caches, runs its sequences,
 * and writes its results into e->res. Returns the plan kind, or -1 when the
 * plan is unreadable. */
static int plan_run(capmoe_engine *e, capmoe_error *err) {
    bytes *b = &e->plan;
    b->at = 0;
    plan_head h;
    GET(b, h);
    if (b->bad || h.magic != PLAN_MAGIC)
        return capmoe_set_error(err, "rank %d: unreadable step plan", e->me), -1;
    e->step_no = h.step_no;
    for (int i = 0; i < h.n_release; i++) {
        uint64_t id;
        GET(b, id);
        kv_drop(e, id);
    }
    if (h.kind != PLAN_STEP) return (int)h.kind;
    capmoe_comm_set_deadline(e->comm, capmoe_now() + h.timeout_s);
    capmoe_comm_progress(e->comm, h.step_no, -1);
    int n = h.n_seqs;
    capmoe_step_seq *seqs = calloc((size_t)(n > 0 ? n : 1), sizeof *seqs);
    capmoe_step_out *outs = calloc((size_t)(n > 0 ? n : 1), sizeof *outs);
    capmoe_logit_adj *adjs = calloc((size_t)(n > 0 ? n : 1), sizeof *adjs);
    int rc = 0;
    if (!seqs || !outs || !adjs || ensure_local(e, n) != 0) {
        rc = capmoe_set_error(err, "rank %d: out of memory for a step plan", e->me);
    }
    int nl = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        seq_head sh;
        GET(b, sh);
        seqs[i] = (capmoe_step_seq){.id = sh.id, .rank = sh.rank, .n_tokens = sh.n_tokens,
                                    .kv_len = sh.kv_len, .n_score = sh.n_score,
                                    .score_k = sh.score_k, .sample = sh.sample,
                                    .sampling = sh.sampling, .rng = sh.rng,
                                    .logprobs = sh.logprobs};
        if (sh.n_tokens < 0 || sh.n_score < 0 || sh.n_score > sh.n_tokens) b->bad = 1;
        seqs[i].tokens = get_ptr(b, (size_t)(sh.n_tokens > 0 ? sh.n_tokens : 0) * sizeof(int32_t));
        seqs[i].score = get_ptr(b, (size_t)(sh.n_score > 0 ? sh.n_score : 0) * sizeof(int32_t));
        if (sh.has_adj) {
            if (sh.n_adj < 0 || sh.allow_bytes < 0) b->bad = 1;
            size_t na = (size_t)(sh.n_adj > 0 ? sh.n_adj : 0);
            size_t ab = (size_t)(sh.allow_bytes > 0 ? sh.allow_bytes : 0);
            capmoe_logit_adj *a = &adjs[i];
            a->n = (int)na;
            a->ids = get_ptr(b, na * sizeof(int32_t));
            a->bias = get_ptr(b, na * sizeof(float));
            a->scale = get_ptr(b, na * sizeof(float));
            a->sub = get_ptr(b, na * sizeof(float));
            a->allow = ab ? get_ptr(b, ab) : NULL;
            a->allow_bytes = (int)ab;
            get_ptr(b, (4 - ab % 4) % 4);
            seqs[i].adj = a;
        }
        if (b->bad) rc = capmoe_set_error(err, "rank %d: truncated step plan", e->me);
        if (sh.rank == e->me) e->local[nl++] = i;
    }
    capmoe_forward_stats st = {.layers = e->layers,
                               .cap_layers = capmoe_model_config(e->m)->n_layers};
    if (rc == 0)
        rc = run_local(e, seqs, e->local, nl, &h.cfg, outs, h.want_stats ? &st : NULL, err);
    else
        capmoe_model_forward_abandon(e->m); /* the others learn it at the first MoE layer */
    /* results */
    bytes *r = &e->res;
    r->len = r->at = 0;
    r->bad = 0;
    res_head rh;
    memset(&rh, 0, sizeof rh);
    rh.status = rc;
    rh.n_out = rc == 0 ? nl : 0;
    rh.n_layers = rc == 0 && h.want_stats ? st.n_moe : 0;
    rh.kv_bytes = local_kv_bytes(e);
    if (rc != 0) snprintf(rh.msg, sizeof rh.msg, "%.500s", err->msg);
    PUT(r, rh);
    put(r, e->layers, (size_t)rh.n_layers * sizeof *e->layers);
    for (int i = 0; i < rh.n_out; i++) {
        const capmoe_step_out *o = &outs[e->local[i]];
        PUT(r, o->token);
        PUT(r, o->rng);
        PUT(r, o->info);
        PUT(r, o->n_scored);
        put(r, o->scored, (size_t)o->n_scored * sizeof *o->scored);
    }
    free(seqs);
    free(outs);
    free(adjs);
    if (r->bad) return capmoe_set_error(err, "rank %d: out of memory for the results", e->me), -1;
    return PLAN_STEP;
}

static int step_mpi(capmoe_engine *e, const capmoe_step_seq *seqs, int n,
                    const capmoe_dispatch_cfg *cfg, capmoe_step_out *outs,
                    capmoe_forward_stats *stats, capmoe_error *err) {
    if (e->me != 0) return capmoe_set_error(err, "engine: only rank 0 plans steps");
    for (int i = 0; i < n; i++)
        if (seqs[i].rank < 0 || seqs[i].rank >= e->R)
            return capmoe_set_error(err, "engine: sequence %d on rank %d of %d", i, seqs[i].rank,
                                    e->R);
    e->step_no++;
    capmoe_comm_set_deadline(e->comm, capmoe_now() + e->o.step_timeout_s);
    plan_begin(e, PLAN_STEP, n, cfg, stats != NULL);
    for (int i = 0; i < n; i++) {
        const capmoe_step_seq *q = &seqs[i];
        const capmoe_logit_adj *a = q->adj;
        int n_adj = a ? a->n : 0, ab = a && a->allow ? a->allow_bytes : 0;
        seq_head sh = {q->id,       q->rank,     q->n_tokens, q->kv_len,  q->n_score,
                       q->score_k,  q->sample,   q->logprobs, n_adj,      ab,
                       a ? 1 : 0,   q->sampling, q->rng};
        PUT(&e->plan, sh);
        put(&e->plan, q->tokens, (size_t)q->n_tokens * sizeof(int32_t));
        put(&e->plan, q->score, (size_t)(q->n_score > 0 ? q->n_score : 0) * sizeof(int32_t));
        if (a) {
            put(&e->plan, a->ids, (size_t)n_adj * sizeof(int32_t));
            put(&e->plan, a->bias, (size_t)n_adj * sizeof(float));
            put(&e->plan, a->scale, (size_t)n_adj * sizeof(float));
            put(&e->plan, a->sub, (size_t)n_adj * sizeof(float));
            static const uint8_t zero[4] = {0};
            put(&e->plan, a->allow, (size_t)ab);
            put(&e->plan, zero, (size_t)((4 - ab % 4) % 4));
        }
    }
    if (e->plan.bad) return capmoe_set_error(err, "out of memory for the step plan");
    if (plan_bcast(e, 0, err) != 0) return fault(e, err, "sending the step plan");
    e->n_release = 0;
    plan_run(e, err); /* rank 0's own sequences; its results (or failure) are in e->res */
    if (capmoe_model_comm_broken(e->m)) return fault(e, err, "the experts' all-to-all");

    void *all = NULL;
    size_t *counts = calloc((size_t)e->R, sizeof *counts);
    const capmoe_layer_stats **lr = calloc((size_t)e->R, sizeof *lr);
    capmoe_layer_stats *per = calloc((size_t)e->R, sizeof *per);
    if (!counts || !lr || !per) {
        free(counts);
        free(lr);
        free(per);
        return capmoe_set_error(err, "out of memory");
    }
    if (capmoe_comm_gather(e->comm, e->res.p, e->res.len, 0, &all, counts, err) != 0) {
        free(counts);
        free(lr);
        free(per);
        return fault(e, err, "gathering the results");
    }
    size_t nscored = 0;
    for (int i = 0; i < n; i++) nscored += (size_t)(seqs[i].n_score > 0 ? seqs[i].n_score : 0);
    int rc = grow((void **)&e->scored, &e->cap_scored, nscored + 1, sizeof *e->scored);
    if (rc != 0) capmoe_set_error(err, "out of memory");
    capmoe_tok_info *sc = e->scored;
    int n_layers = -1;
    size_t off = 0;
    for (int r = 0; r < e->R && rc == 0; r++) {
        bytes b = {.p = (char *)all + off, .len = counts[r], .cap = counts[r]};
        off += counts[r];
        res_head rh;
        GET(&b, rh);
        if (b.bad) {
            rc = capmoe_set_error(err, "rank %d: unreadable step results", r);
            break;
        }
        e->rank_kv_bytes[r] = (size_t)rh.kv_bytes;
        if (rh.status != 0) {
            rc = capmoe_set_error(err, "rank %d: %s", r, rh.msg);
            break;
        }
        lr[r] = get_ptr(&b, (size_t)rh.n_layers * sizeof *lr[r]);
        n_layers = n_layers < 0 || rh.n_layers < n_layers ? rh.n_layers : n_layers;
        int k = 0;
        for (int i = 0; i < n && !b.bad; i++) {
            if (seqs[i].rank != r) continue;
            capmoe_step_out *o = &outs[i];
            memset(o, 0, sizeof *o);
            GET(&b, o->token);
            GET(&b, o->rng);
            GET(&b, o->info);
            int ns = 0;
            GET(&b, ns);
            const capmoe_tok_info *src = get_ptr(&b, (size_t)(ns > 0 ? ns : 0) * sizeof *src);
            if (ns > 0 && src && (size_t)(sc - e->scored) + (size_t)ns <= nscored) {
                memcpy(sc, src, (size_t)ns * sizeof *sc);
                o->scored = sc;
                o->n_scored = ns;
                sc += ns;
            }
            k++;
        }
        if (b.bad || k != rh.n_out)
            rc = capmoe_set_error(err, "rank %d: its results do not match the step plan", r);
    }
    if (rc == 0 && stats) {
        int nl = n_layers < stats->cap_layers ? n_layers : stats->cap_layers;
        for (int l = 0; l < nl; l++) {
            for (int r = 0; r < e->R; r++) per[r] = lr[r][l];
            capmoe_layer_stats_merge_ranks(&stats->layers[l], per, e->R);
        }
        stats->n_moe = nl > 0 ? nl : 0;
        stats->tokens = 0;
        for (int i = 0; i < n; i++) stats->tokens += seqs[i].n_tokens;
    }
    free(per);
    free(lr);
    free(all);
    free(counts);
    return rc;
}

int capmoe_engine_flush(capmoe_engine *e, capmoe_error *err) {
    if (!e->comm || e->me != 0 || e->n_release == 0 || e->broken) return 0;
    capmoe_comm_set_deadline(e->comm, capmoe_now() + e->o.step_timeout_s);
    plan_begin(e, PLAN_RELEASE, 0, NULL, 0);
    if (e->plan.bad) return capmoe_set_error(err, "out of memory");
    if (plan_bcast(e, 0, err) != 0) return fault(e, err, "sending freed caches");
    e->n_release = 0;
    return 0;
}

int capmoe_engine_stop(capmoe_engine *e, capmoe_error *err) {
    if (!e->comm || e->me != 0 || e->broken) return 0;
    capmoe_comm_set_deadline(e->comm, capmoe_now() + e->o.step_timeout_s);
    plan_begin(e, PLAN_STOP, 0, NULL, 0);
    if (e->plan.bad) return capmoe_set_error(err, "out of memory");
    if (plan_bcast(e, 0, err) != 0) return fault(e, err, "stopping the ranks");
    e->n_release = 0;
    return 0;
}

int capmoe_engine_serve(capmoe_engine *e, capmoe_error *err) {
    if (!e->comm || e->me == 0) return capmoe_set_error(err, "engine: only ranks > 0 serve");
    for (;;) {
        capmoe_comm_set_deadline(e->comm, 0);
        if (plan_bcast(e, 1, err) != 0) return fault(e, err, "waiting for a step plan");
        int kind = plan_run(e, err);
        if (kind == PLAN_STOP) return 0;
        if (kind != PLAN_STEP) continue;
        if (capmoe_model_comm_broken(e->m)) return fault(e, err, "the experts' all-to-all");
        void *none = NULL;
        if (capmoe_comm_gather(e->comm, e->res.p, e->res.len, 0, &none, NULL, err) != 0)
            return fault(e, err, "sending the results");
        capmoe_comm_progress(e->comm, e->step_no, -1);
    }
}

/* ---- setup -------------------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

/* A fingerprint of what this process serves: config.json, the safetensors
 * index (or the single file's header), the program's version and the sizes
 * of the structures the ranks exchange. */
static uint64_t fingerprint(const char *dir) {
    uint64_t h = 0xcbf29ce484222325ull;
    const char *files[] = {"config.json", "model.safetensors.index.json"};
    for (int i = 0; i < 2 && dir; i++) {
        char *path = capmoe_path_join(dir, files[i]);
        size_t len = 0;
        char *text = path ? capmoe_read_file(path, &len, NULL) : NULL;
        h = fnv1a(h, files[i], strlen(files[i]));
        if (text) h = fnv1a(h, text, len);
        free(text);
        free(path);
    }
    char *path = dir ? capmoe_path_join(dir, "model.safetensors") : NULL;
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (f) { /* the header names every tensor with its shape and offsets */
        unsigned char n8[8];
        if (fread(n8, 1, 8, f) == 8) {
            uint64_t n = 0;
            for (int i = 7; i >= 0; i--) n = n << 8 | n8[i];
            if (n > 0 && n < (64u << 20)) {
                char *hdr = malloc(n);
                if (hdr && fread(hdr, 1, n, f) == n) h = fnv1a(h, hdr, n);
                free(hdr);
            }
        }
        fclose(f);
    }
    free(path);
    h = fnv1a(h, CAPMOE_VERSION, strlen(CAPMOE_VERSION));
    h = fnv1a(h, capmoe_revision(), strlen(capmoe_revision()));
    size_t sizes[] = {sizeof(plan_head), sizeof(seq_head), sizeof(res_head),
                      sizeof(capmoe_layer_stats), sizeof(capmoe_tok_info)};
    return fnv1a(h, sizes, sizeof sizes);
}

typedef struct hello {
    int status;
    int pad;
    unsigned long long print;
    char build[64];
    char host[64];
    char msg[512];
} hello;

int capmoe_engine_check_ranks(capmoe_comm *comm, const char *model_dir, const char *local_error,
                              capmoe_error *err) {
    if (!comm) return local_error ? capmoe_set_error(err, "%s", local_error) : 0;
    int R = capmoe_comm_size(comm);
    hello me;
    memset(&me, 0, sizeof me);
    me.status = local_error ? -1 : 0;
    me.print = fingerprint(model_dir);
    snprintf(me.build, sizeof me.build, "%s %s", CAPMOE_VERSION, capmoe_revision());
    snprintf(me.host, sizeof me.host, "%s", capmoe_comm_host(comm));
    snprintf(me.msg, sizeof me.msg, "%.500s", local_error ? local_error : "");
    void *all = NULL;
    capmoe_error ce;
    if (capmoe_comm_allgather(comm, &me, sizeof me, &all, NULL, &ce) != 0)
        return capmoe_set_error(err, "the start-up exchange failed: %.500s", ce.msg);
    const hello *h = all;
    int rc = 0;
    for (int r = 0; r < R && rc == 0; r++) {
        if (h[r].status != 0)
            rc = capmoe_set_error(err, "rank %d (%.60s) could not start: %.500s", r, h[r].host,
                                  h[r].msg);
        else if (h[r].print != h[0].print)
            rc = capmoe_set_error(err,
                                  "rank %d (%.60s, build %.60s) serves a different model directory "
                                  "or binary than rank 0 (%.60s, build %.60s): config.json, the "
                                  "safetensors index and the capmoe build must be the same on "
                                  "every host",
                                  r, h[r].host, h[r].build, h[0].host, h[0].build);
    }
    free(all);
    return rc;
}

int capmoe_engine_new(capmoe_engine **out, const capmoe_engine_opts *opts,
                      const char *load_error, capmoe_error *err) {
    *out = NULL;
    capmoe_engine *e = calloc(1, sizeof *e);
    if (!e) return capmoe_set_error(err, "out of memory");
    e->o = *opts;
    if (e->o.step_timeout_s <= 0) e->o.step_timeout_s = 60.0;
    e->m = opts->model;
    e->comm = opts->comm;
    e->R = capmoe_comm_size(e->comm);
    e->me = capmoe_comm_rank(e->comm);
    int rc = 0;
    char why[600] = "";
    if (load_error) {
        snprintf(why, sizeof why, "%.590s", load_error);
        rc = -1;
    } else if (!e->m) {
        snprintf(why, sizeof why, "no model");
        rc = -1;
    } else {
        const capmoe_hfconfig *c = capmoe_model_config(e->m);
        int V = c->vocab_size;
        e->sample_scratch = capmoe_malloc_array((size_t)V, sizeof(float) + sizeof(int));
        e->top_ids = calloc(CAPMOE_ENGINE_MAX_TOP, sizeof *e->top_ids);
        e->top_lps = calloc(CAPMOE_ENGINE_MAX_TOP, sizeof *e->top_lps);
        e->layers = calloc((size_t)(c->n_layers > 0 ? c->n_layers : 1), sizeof *e->layers);
        e->rank_kv_bytes = calloc((size_t)e->R, sizeof *e->rank_kv_bytes);
        if (!e->sample_scratch || !e->top_ids || !e->top_lps || !e->layers || !e->rank_kv_bytes) {
            snprintf(why, sizeof why, "out of memory");
            rc = -1;
        }
    }
    if (e->comm && capmoe_engine_check_ranks(e->comm, opts->model_dir, rc ? why : NULL, err) != 0) {
        capmoe_engine_free(e);
        return -1;
    }
    if (rc != 0) {
        capmoe_engine_free(e);
        return capmoe_set_error(err, "%s", why);
    }
    *out = e;
    return 0;
}

void capmoe_engine_free(capmoe_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->n_kv; i++) capmoe_kv_free(e->kv[i].kv);
    free(e->kv);
    free(e->batch);
    free(e->local);
    free(e->logits);
    free(e->sample_scratch);
    free(e->top_ids);
    free(e->top_lps);
    free(e->scored);
    free(e->layers);
    free(e->release);
    free(e->rank_kv_bytes);
    free(e->plan.p);
    free(e->res.p);
    free(e);
}
