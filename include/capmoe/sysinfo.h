/* sysinfo.h - what `capmoe --version`, `capmoe-server --version`, the
 * server's start-up log, `capmoe bench`'s JSON and capmoe_build_info report
 * about the build and the machine: the CPU's features, the BLAS library, its
 * version and the kernels it selected, oneDNN, the thread count, and the
 * warning when the BLAS runs kernels weaker than the CPU supports. */
#ifndef CAPMOE_SYSINFO_H
#define CAPMOE_SYSINFO_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "capmoe/cpu_features.h"

typedef struct capmoe_sysinfo {
    capmoe_cpu_features cpu;
    capmoe_blas_info blas;
    char features[160]; /* capmoe_cpu_features_str */
    char dnnl[96];      /* capmoe_dnnl_describe */
    char warning[640];  /* capmoe_blas_warning, or "" */
    int cpus;           /* capmoe_cpu_count */
} capmoe_sysinfo;

void capmoe_sysinfo_get(capmoe_sysinfo *s);
/* The lines after the first of --version ("build: ...", "cpu: ...",
 * "blas: ...", "onednn: ...", "threads: ...", and "warning: ..." when the
 * BLAS is slow). threads: the engine threads a run would use (0: cpus). */
void capmoe_sysinfo_print(FILE *out, const capmoe_sysinfo *s, int threads);
/* {"cpu": ..., "cpu_features": ..., "cpus": N, "threads": N, "blas": ...,
 * "blas_version", "blas_core", "blas_config", "blas_slow": bool,
 * "blas_warning": str|null, "onednn": ..., "build": ...}; NULL when out of
 * memory. The caller owns the object. */
cJSON *capmoe_sysinfo_json(const capmoe_sysinfo *s, int threads);

#endif
