/* par.h - a small fork-join pool for splitting one kernel call across cores.
 *
 * capmoe_par_run(p, n, fn, arg) calls fn(arg, i, n) exactly once for every
 * i < n and returns when all have returned. Parts are claimed by whichever
 * thread comes first, the caller included, so part i may run on any thread
 * (index per-part scratch by i, never by thread) and a preempted worker
 * never stalls the caller. Workers spin briefly between calls (a decode step
 * makes hundreds of small calls in a row), then yield, then sleep on a
 * condition variable, so an idle pool costs no CPU. One caller at a time: a
 * pool belongs to one model and is driven by the thread that runs its
 * forward passes. */
#ifndef CAPMOE_PAR_H
#define CAPMOE_PAR_H

#include "capmoe/common.h"

#define CAPMOE_PAR_MAX_THREADS 64 /* parts are numbered in 8 bits */

typedef struct capmoe_par capmoe_par;
typedef void (*capmoe_par_fn)(void *arg, int part, int n_parts);

/* A pool of n_threads - 1 workers (plus the caller; n_threads is capped at
 * CAPMOE_PAR_MAX_THREADS). n_threads <= 1 makes a
 * pool that runs everything on the caller. Returns NULL and sets err on
 * failure. The pool owns its threads; capmoe_par_free joins them. */
capmoe_par *capmoe_par_new(int n_threads, capmoe_error *err);
void capmoe_par_free(capmoe_par *p);
/* Threads taking part in a run (workers + the caller); 1 for a NULL pool. */
int capmoe_par_threads(const capmoe_par *p);
/* n_parts is clamped to capmoe_par_threads(p). p may be NULL (serial). */
void capmoe_par_run(capmoe_par *p, int n_parts, capmoe_par_fn fn, void *arg);

/* fn(arg, item, slot) exactly once for every item < n_items, on min(threads,
 * n_items) parts that each take the next unclaimed item until none is left,
 * so items of uneven cost balance. slot (< capmoe_par_threads(p)) is the
 * part running the item: per-thread scratch is indexed by it. */
typedef void (*capmoe_par_item_fn)(void *arg, int item, int slot);
void capmoe_par_for(capmoe_par *p, int n_items, capmoe_par_item_fn fn, void *arg);

/* fn(arg, r0, r1) over [0, n) cut into contiguous ranges of at least
 * min_rows (one per thread at most): row-wise work (norms, residual adds,
 * element-wise passes) that is cheap per row but adds up over a prompt.
 * Ranges are claimed like parts (capmoe_par_run). */
typedef void (*capmoe_par_range_fn)(void *arg, int r0, int r1);
void capmoe_par_rows(capmoe_par *p, int n, int min_rows, capmoe_par_range_fn fn, void *arg);

/* A buffer of at least n floats for part `part` of the current run, owned
 * by the pool and kept for later runs; NULL when p is NULL or out of memory.
 * Only the thread running that part may use it. */
float *capmoe_par_scratch(capmoe_par *p, int part, size_t n);

#endif
