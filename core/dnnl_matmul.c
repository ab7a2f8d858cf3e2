/* dnnl_matmul.c - oneDNN matmul for --compute bf16. */
#include "capmoe/dnnl_matmul.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>

static const char *isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    default: return "other";
    }
}

void capmoe_dnnl_describe(char *buf, size_t n) {
    const dnnl_version_t *v = dnnl_version();
    const char *rt = v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP"
                     : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                     : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                                                          : "threadpool";
    snprintf(buf, n, "oneDNN %d.%d.%d (%s), ISA %s", v->major, v->minor, v->patch, rt,
             isa_name(dnnl_get_effective_cpu_isa()));
}
