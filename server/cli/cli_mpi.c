/* cli_mpi.c - `--ep mpi` in the capmoe subcommands: starting the process
 * group, agreeing on failures (every rank must leave a collective phase
 * together, or the others wait forever), and gathering what each rank
 * measured at rank 0, which alone prints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/cli.h"
#include "capmoe/engine.h"

int capmoe_cli_ep(capmoe_cli_args *a, capmoe_dispatch_cfg *cfg, capmoe_comm **comm,
                  capmoe_error *err) {
    *comm = NULL;
    const char *ep = capmoe_cli_get(a, "ep");
    if (!ep || strcmp(ep, "threads") == 0) return 0;
    if (strcmp(ep, "mpi") != 0)
        return capmoe_set_error(err, "--ep: '%s' is neither threads nor mpi", ep);
    if (capmoe_comm_init(comm, NULL, NULL, err) != 0) return -1;
    int R = capmoe_comm_size(*comm);
    if (capmoe_cli_has(a, "ep-ranks") && cfg->ep_ranks != R)
        return capmoe_set_error(err,
                                "--ep-ranks %d differs from the %d MPI ranks (under --ep mpi the "
                                "ranks are the processes: leave --ep-ranks out)",
                                cfg->ep_ranks, R);
    cfg->ep_ranks = R;
    return 0;
}

int capmoe_cli_agree(capmoe_comm *c, int ok, capmoe_error *err) {
    if (!c) return ok;
    long long bad = ok ? 0 : 1;
    capmoe_error e;
    if (capmoe_comm_max(c, &bad, 1, &e) != 0) {
        if (ok) capmoe_set_error(err, "%s", e.msg);
        return 0;
    }
    if (bad && ok) capmoe_set_error(err, "stopped: another rank failed (see its message)");
    return bad == 0;
}

int capmoe_cli_check_load(capmoe_comm *c, const char *model_dir, int ok, capmoe_error *err) {
    if (!c) return ok;
    capmoe_error local = *err;
    return capmoe_engine_check_ranks(c, model_dir, ok ? NULL : local.msg, err) == 0;
}

int capmoe_cli_fail_rank(capmoe_comm *c, const char *cmd, const capmoe_error *err) {
    if (c && capmoe_comm_size(c) > 1)
        fprintf(stderr, "capmoe %s: rank %d (%s): %s\n", cmd, capmoe_comm_rank(c),
                capmoe_comm_host(c), err->msg);
    else
        fprintf(stderr, "capmoe %s: %s\n", cmd, err->msg);
    return 1;
}

int capmoe_cli_gather_stats(capmoe_comm *c, capmoe_forward_stats *st, capmoe_error *err) {
    if (!c) return 0;
    int R = capmoe_comm_size(c);
    size_t one = (size_t)st->n_moe * sizeof(capmoe_layer_stats);
    void *all = NULL;
    size_t *counts = calloc((size_t)R, sizeof *counts);
    if (!counts) return capmoe_set_error(err, "out of memory");
    if (capmoe_comm_gather(c, st->layers, one, 0, &all, counts, err) != 0) {
        free(counts);
        return -1;
    }
    if (capmoe_comm_rank(c) == 0) {
        capmoe_layer_stats *per = calloc((size_t)R, sizeof *per);
        if (!per) {
            free(all);
            free(counts);
            return capmoe_set_error(err, "out of memory");
        }
        const capmoe_layer_stats *src = all;
        for (int l = 0; l < st->n_moe; l++) {
            for (int r = 0; r < R; r++) per[r] = src[(size_t)r * st->n_moe + l];
            capmoe_layer_stats_merge_ranks(&st->layers[l], per, R);
        }
        free(per);
    }
    free(all);
    free(counts);
    return 0;
}
