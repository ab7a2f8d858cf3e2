/* ep.c - rank worker threads for expert-parallel execution. */
#include "capmoe/ep.h"
#include "capmoe/cpu_features.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct capmoe_ep_pool {
    int n;                 /* worker threads */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t start;  /* signalled when a new generation begins */
    pthread_cond_t done;   /* signalled when pending reaches 0 */
    unsigned long gen;     /* job generation */
    int active;            /* ranks taking part in the current job */
    int pending;           /* ranks still running */
    int quit;
    capmoe_ep_fn fn;
    void *arg;
};

struct worker_arg {
    capmoe_ep_pool *p;
    int rank;
};

static void *worker_main(void *v) {
    struct worker_arg wa = *(struct worker_arg *)v;
    free(v);
    capmoe_ep_pool *p = wa.p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && (p->gen == seen || wa.rank >= p->active)) {
            if (p->gen != seen) seen = p->gen; /* a job this rank sits out */
            pthread_cond_wait(&p->start, &p->mu);
        }
        if (p->quit) break;
        seen = p->gen;
        capmoe_ep_fn fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, wa.rank);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

capmoe_ep_pool *capmoe_ep_new(int max_ranks, capmoe_error *err) {
    if (max_ranks < 1) max_ranks = 1;
    capmoe_ep_pool *p = calloc(1, sizeof *p);
    if (!p) {
        capmoe_set_error(err, "ep: out of memory");
        return NULL;
    }
    p->th = calloc((size_t)max_ranks, sizeof *p->th);
    if (!p->th) {
        free(p);
        capmoe_set_error(err, "ep: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int r = 0; r < max_ranks; r++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->p = p;
            wa->rank = r;
        }
        if (!wa || pthread_create(&p->th[r], NULL, worker_main, wa) != 0) {
            free(wa);
            capmoe_set_error(err, "ep: cannot start rank worker %d", r);
            capmoe_ep_free(p);
            return NULL;
        }
        p->n = r + 1; /* the thread owns and frees wa */
    }
    return p;
}

void capmoe_ep_free(capmoe_ep_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int r = 0; r < p->n; r++) pthread_join(p->th[r], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

int capmoe_ep_max_ranks(const capmoe_ep_pool *p) { return p->n; }

void capmoe_ep_run(capmoe_ep_pool *p, int R, capmoe_ep_fn fn, void *arg) {
    if (R <= 1 || !p) {
        fn(arg, 0);
        return;
    }
    if (R > p->n) R = p->n;
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->active = R;
    p->pending = R;
    p->gen++;
    pthread_cond_broadcast(&p->start);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int capmoe_ep_cores(void) { return capmoe_cpu_count(); }
