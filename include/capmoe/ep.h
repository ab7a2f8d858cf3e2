/* ep.h - the expert-parallel executor: R persistent rank worker threads.
 *
 * capmoe_ep_run(pool, R, fn, arg) calls fn(arg, r) for r = 0..R-1, rank r on
 * worker thread r (rank 0 on worker 0, never on the caller), and returns when
 * the slowest rank is done, as an MoE layer under expert parallelism waits for
 * its straggler. With R = 1 the caller runs fn itself. The pool owns its
 * threads; rank workers own nothing between calls. */
#ifndef CAPMOE_EP_H
#define CAPMOE_EP_H

#include "capmoe/common.h"

typedef struct capmoe_ep_pool capmoe_ep_pool;
typedef void (*capmoe_ep_fn)(void *arg, int rank);

/* Starts max_ranks worker threads. NULL on failure (err set). */
capmoe_ep_pool *capmoe_ep_new(int max_ranks, capmoe_error *err);
void capmoe_ep_free(capmoe_ep_pool *p);
int capmoe_ep_max_ranks(const capmoe_ep_pool *p);
/* Runs fn on R ranks (1 <= R <= max_ranks) and waits for all of them. */
void capmoe_ep_run(capmoe_ep_pool *p, int R, capmoe_ep_fn fn, void *arg);
/* CPUs this process may use (capmoe_cpu_count: affinity mask and cgroup
 * quota), to tell when R ranks share fewer cores. */
int capmoe_ep_cores(void);

#endif
