/* dnnl_matmul.c - oneDNN BF16 matmul in chunks for --compute bf16
 * (dnnl_matmul.h). */
#include "capmoe/dnnl_matmul.h"

#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/kern.h"

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

static void bf16_from_f32_scalar(uint16_t *restrict dst, const float *restrict src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN: keep it a (quiet) NaN */
            dst[i] = (uint16_t)((u >> 16) | 0x40);
            continue;
        }
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (uint16_t)(u >> 16);
    }
}

#if defined(__x86_64__)
/* The same rounding 16 at a time (integer AVX-512: vcvtneps2bf16 would
 * flush denormals, which the scalar code keeps), 4x faster. */
__attribute__((target("avx512f,avx512bw"))) static void
bf16_from_f32_avx512(uint16_t *restrict dst, const float *restrict src, size_t n) {
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i quiet = _mm512_set1_epi32(0x400000);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_loadu_si512(src + i);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
        __m512i r = _mm512_add_epi32(
            u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        r = _mm512_mask_or_epi32(r, nan, u, quiet);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    bf16_from_f32_scalar(dst + i, src + i, n - i);
}
#endif

void capmoe_bf16_from_f32(uint16_t *restrict dst, const float *restrict src, size_t n) {
#if defined(__x86_64__)
    if (n >= 16 && __builtin_cpu_supports("avx512bw")) {
        bf16_from_f32_avx512(dst, src, n);
        return;
    }
#endif
    bf16_from_f32_scalar(dst, src, n);
}

/* ---- the context ---------------------------------------------------------- */

#define CACHE_MAX 256

typedef struct prim {
    int M, N, K, ldx, ldy, nthr; /* nthr: the OpenMP team it was built for */
    dnnl_primitive_t p;
    size_t scratch; /* bytes of user scratchpad */
    dnnl_memory_desc_t src, dst, scr;
} prim;

struct capmoe_dnnl {
    dnnl_engine_t eng;
    prim cache[CACHE_MAX];
    int n_cache, next_evict;
    dnnl_stream_t stream[CAPMOE_PAR_MAX_THREADS];
    void *scratch[CAPMOE_PAR_MAX_THREADS];
    size_t scratch_cap[CAPMOE_PAR_MAX_THREADS];
    dnnl_stream_t team_stream; /* capmoe_dnnl_run_team's */
    void *team_scratch;
    size_t team_scratch_cap;
    pthread_mutex_t fail_mu;
    int failed;
    char fail_msg[200];
};

struct capmoe_dnnl_mat {
    int N, K, cw, n_src, n_chunks;
    dnnl_memory_desc_t wmd_full, wmd_tail; /* weights {K, n_src * w} of a full / the last chunk */
    void **chunk;                          /* n_chunks buffers in oneDNN's layout */
    size_t bytes;
};

int capmoe_dnnl_new(capmoe_dnnl **out, capmoe_error *err) {
    *out = NULL;
    capmoe_dnnl *d = calloc(1, sizeof *d);
    if (!d) return capmoe_set_error(err, "out of memory");
    if (dnnl_engine_create(&d->eng, dnnl_cpu, 0) != dnnl_success) {
        free(d);
        return capmoe_set_error(err, "oneDNN: no CPU engine");
    }
    pthread_mutex_init(&d->fail_mu, NULL);
    *out = d;
    return 0;
}

void capmoe_dnnl_free(capmoe_dnnl *d) {
    if (!d) return;
    for (int i = 0; i < d->n_cache; i++) dnnl_primitive_destroy(d->cache[i].p);
    for (int s = 0; s < CAPMOE_PAR_MAX_THREADS; s++) {
        if (d->stream[s]) dnnl_stream_destroy(d->stream[s]);
        free(d->scratch[s]);
    }
    if (d->team_stream) dnnl_stream_destroy(d->team_stream);
    free(d->team_scratch);
    dnnl_engine_destroy(d->eng);
    pthread_mutex_destroy(&d->fail_mu);
    free(d);
}

static void fail(capmoe_dnnl *d, const char *what, dnnl_status_t st) {
    pthread_mutex_lock(&d->fail_mu);
    if (!d->failed) snprintf(d->fail_msg, sizeof d->fail_msg, "oneDNN %s failed (status %d)", what, (int)st);
    d->failed = 1;
    pthread_mutex_unlock(&d->fail_mu);
}

void capmoe_dnnl_set_failed(capmoe_dnnl *d, const char *what) {
    pthread_mutex_lock(&d->fail_mu);
    if (!d->failed) snprintf(d->fail_msg, sizeof d->fail_msg, "%s", what);
    d->failed = 1;
    pthread_mutex_unlock(&d->fail_mu);
}

int capmoe_dnnl_failed(capmoe_dnnl *d, capmoe_error *err) {
    if (!d) return 0;
    pthread_mutex_lock(&d->fail_mu);
    int f = d->failed;
    if (f) capmoe_set_error(err, "%s", d->fail_msg);
    d->failed = 0;
    pthread_mutex_unlock(&d->fail_mu);
    return f;
}

/* ---- packing -------------------------------------------------------------- */

/* The weights layout oneDNN prefers for {K, N} BF16 weights (format any),
 * asked with a 64-row product (the layout does not depend on the rows). */
static int preferred_wmd(capmoe_dnnl *d, int K, int N, dnnl_memory_desc_t *out) {
    dnnl_memory_desc_t src, wei, dst;
    dnnl_dims_t sd = {64, K}, wd = {K, N}, dd = {64, N};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_memory_desc_init_by_tag(&src, 2, sd, dnnl_bf16, dnnl_ab) ||
        dnnl_memory_desc_init_by_tag(&wei, 2, wd, dnnl_bf16, dnnl_format_tag_any) ||
        dnnl_memory_desc_init_by_tag(&dst, 2, dd, dnnl_f32, dnnl_ab) ||
        dnnl_matmul_desc_init(&md, &src, &wei, NULL, &dst) ||
        dnnl_primitive_desc_create(&pd, &md, NULL, d->eng, NULL))
        return -1;
    *out = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    return 0;
}

int capmoe_dnnl_mat_chunks(const capmoe_dnnl_mat *w) { return w->n_chunks; }
int capmoe_dnnl_mat_cw(const capmoe_dnnl_mat *w) { return w->cw; }
size_t capmoe_dnnl_mat_bytes(const capmoe_dnnl_mat *w) { return w ? w->bytes : 0; }
int capmoe_dnnl_mat_chunk_cols(const capmoe_dnnl_mat *w, int j) {
    int c0 = j * w->cw;
    return w->N - c0 < w->cw ? w->N - c0 : w->cw;
}

void capmoe_dnnl_mat_free(capmoe_dnnl_mat *w) {
    if (!w) return;
    for (int j = 0; w->chunk && j < w->n_chunks; j++) free(w->chunk[j]);
    free(w->chunk);
    free(w);
}

struct pack_job {
    capmoe_dnnl *d;
    capmoe_dnnl_mat *w;
    const capmoe_wmat *src;
    int failed;
};

/* Chunk j: the sources' rows stacked, converted to BF16 (row-major [n_src w,
 * K], i.e. weights {K, n_src w} with strides {1, K}), reordered into the
 * preferred layout. */
static void pack_item(void *arg, int j, int slot) {
    (void)slot;
    struct pack_job *pj = arg;
    capmoe_dnnl_mat *w = pj->w;
    int K = w->K, cols = capmoe_dnnl_mat_chunk_cols(w, j), width = cols * w->n_src;
    omp_set_num_threads(1);
    const dnnl_memory_desc_t *dmd = j == w->n_chunks - 1 ? &w->wmd_tail : &w->wmd_full;
    size_t bytes = dnnl_memory_desc_get_size(dmd);
    uint16_t *tmp = capmoe_malloc_array((size_t)width * K, sizeof *tmp);
    float *row = capmoe_malloc_array((size_t)K, sizeof *row);
    void *dst = NULL;
    if (!tmp || !row || posix_memalign(&dst, 64, bytes ? bytes : 64) != 0) {
        dst = NULL;
        goto fail;
    }
    for (int s = 0; s < w->n_src; s++)
        for (int r = 0; r < cols; r++) {
            size_t n = (size_t)j * w->cw + (size_t)r;
            const char *p = (const char *)pj->src[s].p + n * K * capmoe_dtype_size(pj->src[s].dtype);
            uint16_t *o = tmp + ((size_t)s * cols + r) * K;
            if (pj->src[s].dtype == CAPMOE_DTYPE_BF16) {
                memcpy(o, p, (size_t)K * 2);
            } else {
                capmoe_kern_to_f32(row, p, pj->src[s].dtype, (size_t)K);
                capmoe_bf16_from_f32(o, row, (size_t)K);
            }
        }
    dnnl_memory_desc_t smd;
    dnnl_dims_t wd = {K, width}, strides = {1, K};
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t rp = NULL;
    dnnl_memory_t ms = NULL, md = NULL;
    dnnl_stream_t st = NULL;
    int ok = dnnl_memory_desc_init_by_strides(&smd, 2, wd, dnnl_bf16, strides) == dnnl_success &&
             dnnl_reorder_primitive_desc_create(&rpd, &smd, pj->d->eng, dmd, pj->d->eng, NULL) ==
                 dnnl_success &&
             dnnl_primitive_create(&rp, rpd) == dnnl_success &&
             dnnl_memory_create(&ms, &smd, pj->d->eng, tmp) == dnnl_success &&
             dnnl_memory_create(&md, dmd, pj->d->eng, dst) == dnnl_success &&
             dnnl_stream_create(&st, pj->d->eng, dnnl_stream_default_flags) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
        ok = dnnl_primitive_execute(rp, st, 2, args) == dnnl_success &&
             dnnl_stream_wait(st) == dnnl_success;
    }
    if (st) dnnl_stream_destroy(st);
    if (ms) dnnl_memory_destroy(ms);
    if (md) dnnl_memory_destroy(md);
    if (rp) dnnl_primitive_destroy(rp);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (!ok) goto fail;
    free(tmp);
    free(row);
    w->chunk[j] = dst;
    return;
fail:
    free(tmp);
    free(row);
    free(dst);
    pj->failed = 1;
}

int capmoe_dnnl_pack(capmoe_dnnl *d, capmoe_par *par, capmoe_dnnl_mat **out,
                     const capmoe_wmat *src, int n_src, int N, int K, int cw, capmoe_error *err) {
    *out = NULL;
    if (N <= 0 || K <= 0 || n_src < 1 || cw < 16) return capmoe_set_error(err, "oneDNN pack: bad shape");
    for (int s = 0; s < n_src; s++)
        if (src[s].panels || !src[s].p) return capmoe_set_error(err, "oneDNN pack: no row-major source");
    capmoe_dnnl_mat *w = calloc(1, sizeof *w);
    if (!w) return capmoe_set_error(err, "out of memory");
    w->N = N;
    w->K = K;
    w->cw = cw < N ? cw : N;
    w->n_src = n_src;
    w->n_chunks = (N + w->cw - 1) / w->cw;
    int tail = N - (w->n_chunks - 1) * w->cw;
    w->chunk = calloc((size_t)w->n_chunks, sizeof *w->chunk);
    if (!w->chunk || preferred_wmd(d, K, n_src * w->cw, &w->wmd_full) != 0 ||
        preferred_wmd(d, K, n_src * tail, &w->wmd_tail) != 0) {
        capmoe_dnnl_mat_free(w);
        return capmoe_set_error(err, "oneDNN: no BF16 matmul for %d x %d weights", N, K);
    }
    struct pack_job pj = {d, w, src, 0};
    capmoe_par_for(par, w->n_chunks, pack_item, &pj);
    if (pj.failed) {
        capmoe_dnnl_mat_free(w);
        return capmoe_set_error(err, "oneDNN: packing %d x %d weights failed (out of memory?)", N, K);
    }
    w->bytes = (size_t)(w->n_chunks - 1) * dnnl_memory_desc_get_size(&w->wmd_full) +
               dnnl_memory_desc_get_size(&w->wmd_tail);
    *out = w;
    return 0;
}

/* ---- products --------------------------------------------------------------- */

static prim *find(capmoe_dnnl *d, int M, int N, int K, int ldx, int ldy, int nthr) {
    for (int i = 0; i < d->n_cache; i++) {
        prim *p = &d->cache[i];
        if (p->M == M && p->N == N && p->K == K && p->ldx == ldx && p->ldy == ldy &&
            p->nthr == nthr)
            return p;
    }
    return NULL;
}

/* The primitive of an M x K times {K, N} product with weights wmd, for an
 * OpenMP team of nthr threads. */
static prim *build(capmoe_dnnl *d, const dnnl_memory_desc_t *wmd, int M, int N, int K, int ldx,
                   int ldy, int nthr, capmoe_error *err) {
    prim *p = find(d, M, N, K, ldx, ldy, nthr);
    if (p) return p;
    prim np = {.M = M, .N = N, .K = K, .ldx = ldx, .ldy = ldy, .nthr = nthr};
    dnnl_dims_t sd = {M, K}, ss = {ldx, 1}, dd = {M, N}, ds = {ldy, 1};
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    omp_set_num_threads(nthr); /* one: the pool's threads run it */
    int ok = dnnl_memory_desc_init_by_strides(&np.src, 2, sd, dnnl_bf16, ss) == dnnl_success &&
             dnnl_memory_desc_init_by_strides(&np.dst, 2, dd, dnnl_f32, ds) == dnnl_success &&
             dnnl_matmul_desc_init(&md, &np.src, wmd, NULL, &np.dst) == dnnl_success &&
             dnnl_primitive_attr_create(&attr) == dnnl_success &&
             dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
             dnnl_primitive_desc_create(&pd, &md, attr, d->eng, NULL) == dnnl_success &&
             dnnl_primitive_create(&np.p, pd) == dnnl_success;
    if (ok) {
        np.scr = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        np.scratch = dnnl_memory_desc_get_size(&np.scr);
    }
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (!ok) {
        capmoe_set_error(err, "oneDNN: no BF16 matmul of %d x %d x %d", M, K, N);
        return NULL;
    }
    if (d->n_cache < CACHE_MAX) {
        p = &d->cache[d->n_cache++];
    } else { /* replace the oldest entry */
        p = &d->cache[d->next_evict];
        d->next_evict = (d->next_evict + 1) % CACHE_MAX;
        dnnl_primitive_destroy(p->p);
    }
    *p = np;
    return p;
}

int capmoe_dnnl_prepare(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int M, int threads,
                        capmoe_error *err) {
    int K = w->K, ld = K; /* x rows contiguous (ldx = K) */
    int tail = capmoe_dnnl_mat_chunk_cols(w, w->n_chunks - 1);
    const prim *p[2] = {build(d, &w->wmd_full, M, w->n_src * w->cw, K, ld, w->n_src * w->cw, 1, err),
                        build(d, &w->wmd_tail, M, w->n_src * tail, K, ld, w->n_src * tail, 1, err)};
    if (!p[0] || !p[1]) return -1;
    if (threads > CAPMOE_PAR_MAX_THREADS) threads = CAPMOE_PAR_MAX_THREADS;
    for (int s = 0; s < threads; s++) {
        if (!d->stream[s] &&
            dnnl_stream_create(&d->stream[s], d->eng, dnnl_stream_default_flags) != dnnl_success)
            return capmoe_set_error(err, "oneDNN: cannot create a stream");
        size_t need = p[0]->scratch > p[1]->scratch ? p[0]->scratch : p[1]->scratch;
        if (need > d->scratch_cap[s]) {
            void *b = NULL;
            if (posix_memalign(&b, 64, need) != 0) return capmoe_set_error(err, "out of memory");
            free(d->scratch[s]);
            d->scratch[s] = b;
            d->scratch_cap[s] = need;
        }
    }
    return 0;
}

/* One execution of p on stream st with the given scratchpad. */
static dnnl_status_t execute(capmoe_dnnl *d, const prim *p, dnnl_stream_t st_, void *scratch,
                             const dnnl_memory_desc_t *wmd, void *wbuf, const uint16_t *x, float *y) {
    dnnl_memory_t ms = NULL, mw = NULL, md = NULL, mscr = NULL;
    dnnl_status_t st = dnnl_memory_create(&ms, &p->src, d->eng, (void *)x);
    if (st == dnnl_success) st = dnnl_memory_create(&mw, wmd, d->eng, wbuf);
    if (st == dnnl_success) st = dnnl_memory_create(&md, &p->dst, d->eng, y);
    if (st == dnnl_success && p->scratch) st = dnnl_memory_create(&mscr, &p->scr, d->eng, scratch);
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md},
                                   {DNNL_ARG_SCRATCHPAD, mscr}};
        st = dnnl_primitive_execute(p->p, st_, p->scratch ? 4 : 3, args);
        if (st == dnnl_success) st = dnnl_stream_wait(st_);
    }
    if (ms) dnnl_memory_destroy(ms);
    if (mw) dnnl_memory_destroy(mw);
    if (md) dnnl_memory_destroy(md);
    if (mscr) dnnl_memory_destroy(mscr);
    return st;
}

int capmoe_dnnl_run_chunk(capmoe_dnnl *d, int slot, const capmoe_dnnl_mat *w, int j,
                          const uint16_t *x, int M, float *y) {
    int last = j == w->n_chunks - 1, N = w->n_src * capmoe_dnnl_mat_chunk_cols(w, j);
    prim *p = find(d, M, N, w->K, w->K, N, 1);
    if (!p || !d->stream[slot]) {
        fail(d, "matmul (not prepared)", dnnl_runtime_error);
        return -1;
    }
    omp_set_num_threads(1);
    dnnl_status_t st = execute(d, p, d->stream[slot], d->scratch[slot],
                               last ? &w->wmd_tail : &w->wmd_full, w->chunk[j], x, y);
    if (st != dnnl_success) {
        fail(d, "matmul", st);
        return -1;
    }
    return 0;
}

int capmoe_dnnl_run_team(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int j, const uint16_t *x,
                         int M, float *y, int nthr, capmoe_error *err) {
    int last = j == w->n_chunks - 1, N = w->n_src * capmoe_dnnl_mat_chunk_cols(w, j);
    if (nthr < 1) nthr = 1;
    const prim *p = build(d, last ? &w->wmd_tail : &w->wmd_full, M, N, w->K, w->K, N, nthr, err);
    if (!p) return -1;
    if (!d->team_stream &&
        dnnl_stream_create(&d->team_stream, d->eng, dnnl_stream_default_flags) != dnnl_success)
        return capmoe_set_error(err, "oneDNN: cannot create a stream");
    if (p->scratch > d->team_scratch_cap) {
        void *b = NULL;
        if (posix_memalign(&b, 64, p->scratch) != 0) return capmoe_set_error(err, "out of memory");
        free(d->team_scratch);
        d->team_scratch = b;
        d->team_scratch_cap = p->scratch;
    }
    omp_set_num_threads(nthr);
    dnnl_status_t st = execute(d, p, d->team_stream, d->team_scratch,
                               last ? &w->wmd_tail : &w->wmd_full, w->chunk[j], x, y);
    omp_set_num_threads(1);
    if (st != dnnl_success) return capmoe_set_error(err, "oneDNN matmul failed (status %d)", (int)st);
    return 0;
}

const char *capmoe_dnnl_impl(capmoe_dnnl *d, const capmoe_dnnl_mat *w, int M, int nthr) {
    int N = w->n_src * w->cw;
    const prim *p = find(d, M, N, w->K, w->K, N, nthr < 1 ? 1 : nthr);
    const_dnnl_primitive_desc_t pd = NULL;
    const char *s = NULL;
    if (p && dnnl_primitive_get_primitive_desc(p->p, &pd) == dnnl_success &&
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) == dnnl_success)
        return s;
    return "unknown";
}
