/* par.c - fork-join pool. One 64-bit word carries the run's generation, its
 * part count and the next unclaimed part; threads (the caller included)
 * claim parts from it with compare-and-swap until none are left. A worker
 * that is late or descheduled therefore never holds the caller up: the
 * caller runs the parts nobody claimed, and only waits for parts already
 * running elsewhere. Workers spin briefly for the next run, then yield, then
 * sleep on a condition variable. */
#include "capmoe/par.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* claim word: generation << 16 | n_parts << 8 | next part index */
#define W_GEN(w) ((w) >> 16)
#define W_NP(w) ((int)(((w) >> 8) & 0xff))
#define W_IDX(w) ((int)((w) & 0xff))
#define W_MAKE(g, np) ((uint64_t)(g) << 16 | (uint64_t)(np) << 8)

/* Pause-spins before a waiting thread starts yielding its core, and how
 * long (seconds) a worker keeps looking for the next run before it sleeps:
 * longer than the gaps inside a forward pass, shorter than the gaps between
 * requests. */
#define SPIN_PAUSES 2000
#define WORKER_IDLE_S 300e-6

struct capmoe_par {
    int n;                     /* threads taking part: workers + caller */
    pthread_t *th;             /* n - 1 workers */
    int started;               /* workers created */
    _Atomic uint64_t claim;    /* see W_* */
    atomic_int done;           /* parts finished in the current run */
    atomic_int quit;
    capmoe_par_fn fn;          /* of the current run; written before claim */
    void *arg;
    pthread_mutex_t mu;        /* guards sleepers and the sleep/wake handshake */
    pthread_cond_t wake;
    int sleepers;
    float *scratch[CAPMOE_PAR_MAX_THREADS]; /* per part, grown on demand */
    size_t scratch_cap[CAPMOE_PAR_MAX_THREADS];
};

/* Claims and runs parts of generation gen until none are left. */
static void run_parts(capmoe_par *p, uint64_t gen) {
    uint64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    while (W_GEN(w) == gen && W_IDX(w) < W_NP(w)) {
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* w was reloaded */
        p->fn(p->arg, W_IDX(w), W_NP(w));
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        w = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static void *worker_main(void *v) {
    capmoe_par *p = v;
    uint64_t seen = 0; /* the generation the pool starts at: no run is missed */
    for (;;) {
        uint64_t g;
        int spins = 0;
        double idle_since = 0.0;
        while ((g = W_GEN(atomic_load_explicit(&p->claim, memory_order_acquire))) == seen &&
               !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
            if (++spins < SPIN_PAUSES) {
                CPU_RELAX();
                continue;
            }
            if (idle_since == 0.0) idle_since = capmoe_now();
            if (capmoe_now() - idle_since < WORKER_IDLE_S) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (W_GEN(atomic_load_explicit(&p->claim, memory_order_acquire)) == seen &&
                   !atomic_load_explicit(&p->quit, memory_order_relaxed))
                pthread_cond_wait(&p->wake, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
            idle_since = 0.0;
        }
        if (atomic_load_explicit(&p->quit, memory_order_relaxed)) break;
        seen = g;
        run_parts(p, g);
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
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->quit, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&p->th[i], NULL, worker_main, p) != 0) {
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
    for (int i = 0; i < p->n; i++) free(p->scratch[i]);
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
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint64_t gen = W_GEN(atomic_load_explicit(&p->claim, memory_order_relaxed)) + 1;
    atomic_store_explicit(&p->claim, W_MAKE(gen, n_parts), memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers > 0) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_parts(p, gen);
    /* Only parts another thread is running are left: wait for them, giving
     * the core away if that thread was preempted. */
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_parts; spins++) {
        if (spins < SPIN_PAUSES) CPU_RELAX();
        else sched_yield();
    }
}

float *capmoe_par_scratch(capmoe_par *p, int part, size_t n) {
    if (!p || part < 0 || part >= p->n) return NULL;
    if (p->scratch_cap[part] < n) {
        float *b = capmoe_malloc_array(n, sizeof *b);
        if (!b) return NULL;
        free(p->scratch[part]);
        p->scratch[part] = b;
        p->scratch_cap[part] = n;
    }
    return p->scratch[part];
}

/* capmoe_par_for: one part per thread, each claiming items from a counter. */
struct for_job {
    capmoe_par_item_fn fn;
    void *arg;
    int n_items;
    atomic_int next;
};

static void for_part(void *arg, int part, int n_parts) {
    (void)n_parts;
    struct for_job *f = arg;
    for (int i; (i = atomic_fetch_add_explicit(&f->next, 1, memory_order_relaxed)) < f->n_items;)
        f->fn(f->arg, i, part);
}

void capmoe_par_for(capmoe_par *p, int n_items, capmoe_par_item_fn fn, void *arg) {
    struct for_job f = {.fn = fn, .arg = arg, .n_items = n_items};
    atomic_init(&f.next, 0);
    capmoe_par_run(p, n_items, for_part, &f);
}

/* capmoe_par_rows: part i of n_parts takes rows [n i / n_parts, n (i+1) / n_parts). */
struct rows_job {
    capmoe_par_range_fn fn;
    void *arg;
    int n;
};

static void rows_part(void *arg, int part, int n_parts) {
    const struct rows_job *r = arg;
    int r0 = (int)((long long)r->n * part / n_parts), r1 = (int)((long long)r->n * (part + 1) / n_parts);
    if (r1 > r0) r->fn(r->arg, r0, r1);
}

void capmoe_par_rows(capmoe_par *p, int n, int min_rows, capmoe_par_range_fn fn, void *arg) {
    if (n <= 0) return;
    if (min_rows < 1) min_rows = 1;
    int parts = (n + min_rows - 1) / min_rows;
    struct rows_job r = {fn, arg, n};
    capmoe_par_run(p, parts, rows_part, &r);
}
