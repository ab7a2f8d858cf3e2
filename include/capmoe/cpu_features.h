/* cpu_features.h - what this CPU can do, how many CPUs this process may use,
 * and whether the BLAS library runs kernels that match the CPU.
 *
 * A BLAS picking kernels weaker than the CPU supports is a silent slow path:
 * OpenBLAS's DYNAMIC_ARCH builds choose by the CPU's model number, and in
 * virtual machines and containers that present a generic CPU (or with an
 * OPENBLAS_CORETYPE in the environment) they fall back to, for example,
 * Prescott (SSE3) kernels on a CPU with AVX-512, halving prefill.
 * capmoe_blas_warning names the kernels, the CPU's features and the fix. */
#ifndef CAPMOE_CPU_FEATURES_H
#define CAPMOE_CPU_FEATURES_H

#include <stddef.h>

/* Instruction sets the CPU has and the operating system enables (XCR0). */
typedef struct capmoe_cpu_features {
    int avx2, fma, avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16;
    int amx_tile, amx_bf16, amx_int8;
    char brand[49]; /* the CPUID brand string, trimmed ("" when absent) */
} capmoe_cpu_features;

void capmoe_cpu_features_get(capmoe_cpu_features *f);
/* The features present, space-separated ("avx2 fma avx512f ... amx-bf16"),
 * "none" when none: written to buf (always NUL-terminated). */
void capmoe_cpu_features_str(const capmoe_cpu_features *f, char *buf, size_t n);

/* CPUs this process may use: the affinity mask (sched_getaffinity), capped
 * by the cgroup CPU quota (cgroup v2 cpu.max, v1 cfs_quota_us), rounded up;
 * at least 1. */
int capmoe_cpu_count(void);

/* Instruction-set levels, for comparing kernels with the CPU. */
enum { CAPMOE_ISA_UNKNOWN = 0, CAPMOE_ISA_SSE, CAPMOE_ISA_AVX, CAPMOE_ISA_AVX2,
       CAPMOE_ISA_AVX512 };

typedef struct capmoe_blas_info {
    char name[16];     /* "OpenBLAS" */
    char version[32];  /* "0.3.21" (from the config string), or "" */
    char core[32];     /* openblas_get_corename(): "Haswell", "SkylakeX", ... */
    char config[256];  /* openblas_get_config() */
    char forced[32];   /* OPENBLAS_CORETYPE from the environment, or "" */
    int dynamic;       /* a DYNAMIC_ARCH build (OPENBLAS_CORETYPE applies) */
    int core_isa;      /* CAPMOE_ISA_* of the kernels in use (UNKNOWN: not an x86 name) */
    int cpu_isa;       /* CAPMOE_ISA_* the CPU supports */
    int weak;          /* core_isa < cpu_isa: the kernels leave the CPU's vector units idle */
    const char *fix;   /* the OPENBLAS_CORETYPE matching the CPU ("SKYLAKEX", ...) */
} capmoe_blas_info;

void capmoe_blas_info_get(capmoe_blas_info *b, const capmoe_cpu_features *f);
/* The name of an ISA level ("AVX-512", ...). */
const char *capmoe_isa_name(int isa);
/* One warning line (no newline) when b->weak, naming the kernels, the CPU's
 * features and the fix; "" otherwise. Returns b->weak. */
int capmoe_blas_warning(const capmoe_blas_info *b, const capmoe_cpu_features *f, char *buf,
                        size_t n);

#endif
