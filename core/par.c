/* par.c - fork-join pool: a generation counter the workers spin on for a
 * while before sleeping, and a pending count the caller spins on. */
#include "capmoe/par.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spin iterations (about 20-40 us) a worker polls for the next call before
 * it goes to sleep: longer than the gaps inside a forward pass, shorter than
 * the gaps between requests. */
#define SPIN_ITERS 20000

struct capmoe_par {
    int n;                     /* threads taking part: workers + caller */
    pthread_t *th;             /* n - 1 workers */
    int started;               /* workers created */
    atomic_ulong gen;          /* (runs << 8) | n_parts of the latest run */
    atomic_int pending;        /* worker parts not yet finished */
    atomic_int quit;
    capmoe_par_fn fn;
    void *arg;
    pthread_mutex_t mu;        /* guards sleepers and the sleep/wake handshake */
    pthread_cond_t wake;
    int sleepers;
};

struct worker_arg {
    capmoe_par *p;
    int part;
};

static void *worker_main(void *v) {
    struct worker_arg wa = *(struct worker_arg *)v;
    free(v);
    capmoe_par *p = wa.p;
    unsigned long seen = 0; /* the value gen starts at: no run is missed */
    for (;;) {
        unsigned long g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
            if (++spins < SPIN_ITERS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
                   !atomic_load_explicit(&p->quit, memory_order_relaxed))
                pthread_cond_wait(&p->wake, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load_explicit(&p->quit, memory_order_relaxed)) break;
        seen = g;
        /* n_parts travels in the generation word itself, so a worker that
         * sits out a run can never mistake it for a later one. */
        int n_parts = (int)(g & 0xff);
        if (wa.part < n_parts) {
            p->fn(p->arg, wa.part, n_parts);
            atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
        }
    }
    return NULL;
}

capmoe_par *capmoe_par_new(int n_threads, capmoe_error *err) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > CAPMOE_PAR_MAX_THREADS) n_threads = CAPMOE_PAR_MAX_THREADS;
    capmoe_par *p = calloc(1, sizeof *p);
    if (!p || (n_threads > 1 && !(p->th = calloc((size_t)n_threads - 1, sizeof *p->th)))) {
        free(p);
        capmoe_set_error(err, "par: out of memory");
        return NULL;
    }
    p->n = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->quit, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (int i = 0; i < n_threads - 1; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (struct worker_arg){p, i + 1};
        if (!wa || pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = i + 1; /* the workers that did start */
            capmoe_par_free(p);
            capmoe_set_error(err, "par: cannot start worker thread %d", i + 1);
            return NULL;
        }
        p->started = i + 1;
    }
    return p;
}

void capmoe_par_free(capmoe_par *p) {
    if (!p) return;
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->th);
    free(p);
}

int capmoe_par_threads(const capmoe_par *p) { return p ? p->n : 1; }

void capmoe_par_run(capmoe_par *p, int n_parts, capmoe_par_fn fn, void *arg) {
    if (n_parts > capmoe_par_threads(p)) n_parts = capmoe_par_threads(p);
    if (n_parts <= 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    /* Workers with part >= n_parts see the new generation and skip it. */
    atomic_store_explicit(&p->pending, n_parts - 1, memory_order_relaxed);
    unsigned long g = atomic_load_explicit(&p->gen, memory_order_relaxed);
    atomic_store_explicit(&p->gen, ((g >> 8) + 1) << 8 | (unsigned long)n_parts,
                          memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers > 0) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, n_parts);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) CPU_RELAX();
}
