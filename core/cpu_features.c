/* cpu_features.c - CPUID features, usable CPU count, BLAS kernel check. */
#include "capmoe/cpu_features.h"

#include <cblas.h>
#include <ctype.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

void capmoe_cpu_features_get(capmoe_cpu_features *f) {
    memset(f, 0, sizeof *f);
    unsigned a, b, c, d, max = __get_cpuid_max(0, NULL);
    if (max < 1) return;
    __cpuid_count(1, 0, a, b, c, d);
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, avx = (c >> 28) & 1;
    unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    int os_avx = (xcr0 & 0x6) == 0x6;                  /* SSE and AVX state */
    int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;   /* opmask, ZMM_Hi256, Hi16_ZMM */
    int os_amx = (xcr0 & 0x60000) == 0x60000;          /* XTILECFG, XTILEDATA */
    f->fma = fma && avx && os_avx;
    if (max >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        unsigned sub = a;
        f->avx2 = os_avx && avx && ((b >> 5) & 1);
        f->avx512f = os_avx512 && ((b >> 16) & 1);
        f->avx512bw = f->avx512f && ((b >> 30) & 1);
        f->avx512vl = f->avx512f && ((b >> 31) & 1);
        f->avx512_vnni = f->avx512f && ((c >> 11) & 1);
        f->amx_bf16 = os_amx && ((d >> 22) & 1);
        f->amx_tile = os_amx && ((d >> 24) & 1);
        f->amx_int8 = os_amx && ((d >> 25) & 1);
        if (sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            f->avx512_bf16 = f->avx512f && ((a >> 5) & 1);
        }
    }
    if (__get_cpuid_max(0x80000000, NULL) >= 0x80000004) {
        unsigned r[12];
        for (unsigned i = 0; i < 3; i++)
            __cpuid(0x80000002 + i, r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
        memcpy(f->brand, r, 48);
        f->brand[48] = '\0';
        char *s = f->brand;
        while (*s == ' ') s++;
        memmove(f->brand, s, strlen(s) + 1);
        for (size_t n = strlen(f->brand); n > 0 && f->brand[n - 1] == ' '; n--) f->brand[n - 1] = '\0';
    }
}
#else
void capmoe_cpu_features_get(capmoe_cpu_features *f) { memset(f, 0, sizeof *f); }
#endif

void capmoe_cpu_features_str(const capmoe_cpu_features *f, char *buf, size_t n) {
    const struct {
        int on;
        const char *name;
    } t[] = {{f->avx2, "avx2"},           {f->fma, "fma"},
             {f->avx512f, "avx512f"},     {f->avx512bw, "avx512bw"},
             {f->avx512vl, "avx512vl"},   {f->avx512_vnni, "avx512-vnni"},
             {f->avx512_bf16, "avx512-bf16"}, {f->amx_tile, "amx-tile"},
             {f->amx_bf16, "amx-bf16"},   {f->amx_int8, "amx-int8"}};
    size_t len = 0;
    if (n == 0) return;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].on) {
            int w = snprintf(buf + len, n - len, "%s%s", len ? " " : "", t[i].name);
            if (w < 0 || (size_t)w >= n - len) break;
            len += (size_t)w;
        }
    if (len == 0) snprintf(buf, n, "none");
}

/* ceil(quota / period) of the cgroup CPU limit, or 0 when there is none. */
static int cgroup_cpus(void) {
    char line[128];
    long long q = -1, p = 0;
    FILE *fp = fopen("/sys/fs/cgroup/cpu.max", "r"); /* v2: "max 100000" or "200000 100000" */
    if (fp) {
        if (fgets(line, sizeof line, fp) && strncmp(line, "max", 3) != 0 &&
            sscanf(line, "%lld %lld", &q, &p) != 2)
            q = -1;
        fclose(fp);
    } else if ((fp = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r"))) { /* v1 */
        if (fscanf(fp, "%lld", &q) != 1) q = -1;
        fclose(fp);
        if ((fp = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r"))) {
            if (fscanf(fp, "%lld", &p) != 1) p = 0;
            fclose(fp);
        }
    }
    if (q <= 0 || p <= 0) return 0;
    return (int)((q + p - 1) / p);
}

int capmoe_cpu_count(void) {
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n < 1) n = 1;
    int q = cgroup_cpus();
    if (q > 0 && q < n) n = q;
    return n;
}

/* ---- the BLAS ----------------------------------------------------------- */

static int core_isa(const char *core) {
    static const char *const avx512[] = {"skylakex", "cooperlake", "sapphirerapids", NULL};
    static const char *const avx2[] = {"haswell", "zen", "excavator", NULL};
    static const char *const avx[] = {"sandybridge", "bulldozer", "piledriver", "steamroller",
                                      NULL};
    static const char *const sse[] = {"prescott", "core2", "penryn", "dunnington", "nehalem",
                                      "atom", "opteron", "opteron_sse3", "barcelona", "bobcat",
                                      "katmai", "coppermine", "northwood", "banias", "athlon",
                                      "nano", "generic", NULL};
    const char *const *t[] = {sse, avx, avx2, avx512};
    for (int l = 0; l < 4; l++)
        for (int i = 0; t[l][i]; i++)
            if (strcasecmp(core, t[l][i]) == 0) return CAPMOE_ISA_SSE + l;
    return CAPMOE_ISA_UNKNOWN;
}

static int cpu_isa(const capmoe_cpu_features *f) {
#if defined(__x86_64__) || defined(__i386__)
    if (f->avx512f && f->avx512bw && f->avx512vl) return CAPMOE_ISA_AVX512;
    if (f->avx2 && f->fma) return CAPMOE_ISA_AVX2;
    if (f->fma || f->avx2) return CAPMOE_ISA_AVX;
    return CAPMOE_ISA_SSE;
#else
    (void)f;
    return CAPMOE_ISA_UNKNOWN;
#endif
}

const char *capmoe_isa_name(int isa) {
    switch (isa) {
    case CAPMOE_ISA_SSE: return "SSE";
    case CAPMOE_ISA_AVX: return "AVX";
    case CAPMOE_ISA_AVX2: return "AVX2";
    case CAPMOE_ISA_AVX512: return "AVX-512";
    default: return "unknown";
    }
}

static void copy_trim(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src ? src : "");
    for (size_t l = strlen(dst); l > 0 && isspace((unsigned char)dst[l - 1]); l--) dst[l - 1] = '\0';
}

void capmoe_blas_info_get(capmoe_blas_info *b, const capmoe_cpu_features *f) {
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "OpenBLAS");
    copy_trim(b->core, sizeof b->core, openblas_get_corename());
    copy_trim(b->config, sizeof b->config, openblas_get_config());
    copy_trim(b->forced, sizeof b->forced, getenv("OPENBLAS_CORETYPE"));
    /* "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64" */
    const char *v = strstr(b->config, "OpenBLAS ");
    if (v) sscanf(v + 9, "%31[0-9.a-z]", b->version);
    b->dynamic = strstr(b->config, "DYNAMIC_ARCH") != NULL;
    b->core_isa = core_isa(b->core);
    b->cpu_isa = cpu_isa(f);
    b->weak = b->core_isa != CAPMOE_ISA_UNKNOWN && b->core_isa < b->cpu_isa;
    b->fix = b->cpu_isa == CAPMOE_ISA_AVX512 ? "SKYLAKEX"
             : b->cpu_isa == CAPMOE_ISA_AVX2 ? "HASWELL"
             : b->cpu_isa == CAPMOE_ISA_AVX  ? "SANDYBRIDGE"
                                             : "";
}

int capmoe_blas_warning(const capmoe_blas_info *b, const capmoe_cpu_features *f, char *buf,
                        size_t n) {
    if (n) buf[0] = '\0';
    if (!b->weak) return 0;
    char feat[160];
    capmoe_cpu_features_str(f, feat, sizeof feat);
    char why[96];
    if (b->forced[0])
        snprintf(why, sizeof why, "forced by OPENBLAS_CORETYPE=%s in the environment", b->forced);
    else
        snprintf(why, sizeof why, "chosen by %s %s for this CPU", b->name, b->version);
    if (b->dynamic)
        snprintf(buf, n,
                 "slow BLAS: %s %s runs its %s kernels (%s, %s) on a CPU with %s (%s): matrix "
                 "products (prefill) run at a fraction of the CPU's speed; fix: "
                 "OPENBLAS_CORETYPE=%s%s, or %s >= 0.3.26",
                 b->name, b->version, b->core, capmoe_isa_name(b->core_isa), why,
                 capmoe_isa_name(b->cpu_isa), feat, b->fix,
                 b->forced[0] ? " (unless the setting is deliberate)" : "", b->name);
    else
        snprintf(buf, n,
                 "slow BLAS: %s %s was built for %s (%s) only, on a CPU with %s (%s): matrix "
                 "products (prefill) run at a fraction of the CPU's speed; fix: a %s built with "
                 "DYNAMIC_ARCH (>= 0.3.26) or for this CPU",
                 b->name, b->version, b->core, capmoe_isa_name(b->core_isa),
                 capmoe_isa_name(b->cpu_isa), feat, b->name);
    return 1;
}
