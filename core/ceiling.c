/* ceiling.c - peak loops (ceiling.h). The loops keep their accumulators in
 * registers: 12 independent chains per thread hide the FMA latency (a loop
 * of one or two chains measures a third of the peak). */
#include "capmoe/ceiling.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/common.h"
#include "capmoe/cpu_features.h"
#include "capmoe/par.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

typedef struct peak_job {
    double (*loop)(long iters); /* returns flops done (sums kept live) */
    long iters;
    double flops[CAPMOE_PAR_MAX_THREADS];
    int ok[CAPMOE_PAR_MAX_THREADS];
    volatile float sink;
} peak_job;

static void peak_part(void *arg, int part, int n) {
    (void)n;
    peak_job *j = arg;
    j->flops[part] = j->loop(j->iters);
    j->ok[part] = 1;
}

/* Best of 3 of the loop on `threads` parts at once, GFLOP/s. */
static double run_peak(double (*loop)(long), long iters, int threads) {
    if (threads < 1) threads = 1;
    if (threads > CAPMOE_PAR_MAX_THREADS) threads = CAPMOE_PAR_MAX_THREADS;
    capmoe_par *p = capmoe_par_new(threads, NULL);
    if (!p && threads > 1) return -1.0;
    peak_job *j = calloc(1, sizeof *j);
    if (!j) {
        capmoe_par_free(p);
        return -1.0;
    }
    j->loop = loop;
    j->iters = iters / 8;
    capmoe_par_run(p, threads, peak_part, j); /* warm-up: wakes the workers, clocks up */
    j->iters = iters;
    double best = -1.0;
    for (int r = 0; r < 3; r++) {
        memset(j->flops, 0, sizeof j->flops);
        double t0 = capmoe_now();
        capmoe_par_run(p, threads, peak_part, j);
        double t = capmoe_now() - t0, f = 0.0;
        for (int i = 0; i < threads; i++) f += j->flops[i];
        if (t > 0 && f / t > best) best = f / t;
    }
    free(j);
    capmoe_par_free(p);
    return best > 0 ? best / 1e9 : -1.0;
}

#if defined(__x86_64__)
#define CHAINS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx512f"))) static double fma512(long iters) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
#define DECL(i) __m512 a##i = _mm512_set1_ps(1.0f + (float)(i) * 0.01f);
    CHAINS12(DECL)
#undef DECL
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, b, c);
        CHAINS12(STEP)
#undef STEP
        __asm__ volatile("" ::: "memory");
    }
    __m512 s = a0;
#define SUM(i) s = _mm512_add_ps(s, a##i);
    CHAINS12(SUM)
#undef SUM
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) static double fma256(long iters) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
#define DECL(i) __m256 a##i = _mm256_set1_ps(1.0f + (float)(i) * 0.01f);
    CHAINS12(DECL)
#undef DECL
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);
        CHAINS12(STEP)
#undef STEP
        __asm__ volatile("" ::: "memory");
    }
    __m256 s = a0;
#define SUM(i) s = _mm256_add_ps(s, a##i);
    CHAINS12(SUM)
#undef SUM
    float out[8];
    _mm256_storeu_ps(out, s);
    volatile float sink = out[0];
    (void)sink;
    return (double)iters * 12 * 8 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16dot(long iters) {
    __m512i ones = _mm512_set1_epi16(0x3f80); /* bf16 1.0 */
    __m512bh x = (__m512bh)ones, y = (__m512bh)_mm512_set1_epi16(0x3380); /* ~6e-8 */
#define DECL(i) __m512 a##i = _mm512_set1_ps((float)(i));
    CHAINS12(DECL)
#undef DECL
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
        CHAINS12(STEP)
#undef STEP
        __asm__ volatile("" ::: "memory");
    }
    __m512 s = a0;
#define SUM(i) s = _mm512_add_ps(s, a##i);
    CHAINS12(SUM)
#undef SUM
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 12 * 32 * 2;
}

/* AMX: tiles 0-3 accumulate C (16 x 16 float), tiles 4-5 hold A (16 x 32
 * BF16) and 6-7 B (16 pairs x 32 BF16), each TDPBF16PS 16 x 16 x 32. */
struct tilecfg {
    uint8_t palette, start;
    uint8_t rsvd[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_permitted(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

__attribute__((target("amx-tile,amx-bf16"))) static double amx_loop(long iters) {
    if (!amx_permitted()) return 0.0;
    struct tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    static _Thread_local uint16_t ab[16 * 32] __attribute__((aligned(64)));
    static _Thread_local float c[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ab[i] = 0x3380;
    memset(c, 0, sizeof c);
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c, 64);
    _tile_loadd(2, c, 64);
    _tile_loadd(3, c, 64);
    _tile_loadd(4, ab, 64);
    _tile_loadd(5, ab, 64);
    _tile_loadd(6, ab, 64);
    _tile_loadd(7, ab, 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_release();
    volatile float sink = c[0];
    (void)sink;
    return (double)iters * 4 * 16 * 16 * 32 * 2;
}
#endif

double capmoe_peak_fp32_gflops(int threads) {
#if defined(__x86_64__)
    capmoe_cpu_features f;
    capmoe_cpu_features_get(&f);
    if (f.avx512f) return run_peak(fma512, 2000000, threads);
    if (f.avx2 && f.fma) return run_peak(fma256, 2000000, threads);
#endif
    (void)threads;
    return -1.0;
}

double capmoe_peak_bf16_dot_gflops(int threads) {
#if defined(__x86_64__)
    capmoe_cpu_features f;
    capmoe_cpu_features_get(&f);
    if (f.avx512_bf16) return run_peak(bf16dot, 2000000, threads);
#endif
    (void)threads;
    return -1.0;
}

double capmoe_peak_amx_bf16_gflops(int threads) {
#if defined(__x86_64__)
    capmoe_cpu_features f;
    capmoe_cpu_features_get(&f);
    if (f.amx_bf16 && f.amx_tile && amx_permitted()) return run_peak(amx_loop, 500000, threads);
#endif
    (void)threads;
    return -1.0;
}

struct triad_job {
    float *a, *b, *c;
    size_t n;
};

static void triad_part(void *arg, int part, int n_parts) {
    struct triad_job *j = arg;
    size_t i0 = j->n * (size_t)part / (size_t)n_parts, i1 = j->n * (size_t)(part + 1) / (size_t)n_parts;
    float *restrict a = j->a;
    const float *restrict b = j->b, *restrict c = j->c;
    for (size_t i = i0; i < i1; i++) a[i] = b[i] + 3.0f * c[i];
}

double capmoe_stream_triad_gbs(int threads, size_t bytes) {
    size_t n = bytes / sizeof(float);
    struct triad_job j = {capmoe_malloc_array(n, sizeof(float)), capmoe_malloc_array(n, sizeof(float)),
                          capmoe_malloc_array(n, sizeof(float)), n};
    capmoe_par *p = capmoe_par_new(threads, NULL);
    double best = -1.0;
    if (j.a && j.b && j.c && (p || threads <= 1)) {
        /* first touch by the threads that use the pages */
        for (size_t i = 0; i < n; i++) j.b[i] = j.c[i] = 1.0f;
        capmoe_par_run(p, threads, triad_part, &j);
        for (int r = 0; r < 3; r++) {
            double t0 = capmoe_now();
            capmoe_par_run(p, threads, triad_part, &j);
            double t = capmoe_now() - t0;
            if (t > 0 && 3.0 * (double)n * sizeof(float) / t > best)
                best = 3.0 * (double)n * sizeof(float) / t;
        }
    }
    capmoe_par_free(p);
    free(j.a);
    free(j.b);
    free(j.c);
    return best > 0 ? best / 1e9 : -1.0;
}
