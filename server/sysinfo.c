/* sysinfo.c - the build and machine report (sysinfo.h). */
#include "capmoe/sysinfo.h"

#include <string.h>

#include "capmoe/dnnl_matmul.h"
#include "capmoe/version.h"

void capmoe_sysinfo_get(capmoe_sysinfo *s) {
    memset(s, 0, sizeof *s);
    capmoe_cpu_features_get(&s->cpu);
    capmoe_blas_info_get(&s->blas, &s->cpu);
    capmoe_cpu_features_str(&s->cpu, s->features, sizeof s->features);
    capmoe_dnnl_describe(s->dnnl, sizeof s->dnnl);
    capmoe_blas_warning(&s->blas, &s->cpu, s->warning, sizeof s->warning);
    s->cpus = capmoe_cpu_count();
}

void capmoe_sysinfo_print(FILE *out, const capmoe_sysinfo *s, int threads) {
    fprintf(out, "build: %s\n", capmoe_build_flags());
    fprintf(out, "cpu: %s; features: %s; %d usable CPUs\n",
            s->cpu.brand[0] ? s->cpu.brand : "unknown", s->features, s->cpus);
    fprintf(out, "blas: %s %s, core %s (%s kernels%s%s); config: %s\n", s->blas.name,
            s->blas.version, s->blas.core, capmoe_isa_name(s->blas.core_isa),
            s->blas.forced[0] ? ", OPENBLAS_CORETYPE=" : "", s->blas.forced, s->blas.config);
    fprintf(out, "onednn: %s\n", s->dnnl);
    fprintf(out, "threads: %d\n", threads > 0 ? threads : s->cpus);
    if (s->warning[0]) fprintf(out, "warning: %s\n", s->warning);
}

cJSON *capmoe_sysinfo_json(const capmoe_sysinfo *s, int threads) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "cpu", s->cpu.brand[0] ? s->cpu.brand : "unknown");
    cJSON_AddStringToObject(o, "cpu_features", s->features);
    cJSON_AddNumberToObject(o, "cpus", s->cpus);
    cJSON_AddNumberToObject(o, "threads", threads > 0 ? threads : s->cpus);
    cJSON_AddStringToObject(o, "blas", s->blas.name);
    cJSON_AddStringToObject(o, "blas_version", s->blas.version);
    cJSON_AddStringToObject(o, "blas_core", s->blas.core);
    cJSON_AddStringToObject(o, "blas_config", s->blas.config);
    cJSON_AddBoolToObject(o, "blas_slow", s->blas.weak);
    if (s->warning[0]) cJSON_AddStringToObject(o, "blas_warning", s->warning);
    else cJSON_AddNullToObject(o, "blas_warning");
    cJSON_AddStringToObject(o, "onednn", s->dnnl);
    if (!cJSON_AddStringToObject(o, "build", capmoe_build_flags())) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}
