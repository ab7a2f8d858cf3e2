/* check_panel.c - tests of core/panel.c and of the panel-layout path of
 * capmoe_gemm_nt (core/ops.c): the packed layout byte for byte against the
 * one panel.h describes (zero padding, exact sizes, deterministic);
 * capmoe_panel_pack_rows stacking several sources into one packed matrix
 * (the bytes of packing their concatenation, no writes outside its rows);
 * capmoe_panel_gemm and capmoe_panel_gemm_portable for F32 / BF16 / F16
 * weights against a naive double-precision product of the same values over
 * many shapes, padded leading dimensions, alpha / beta (beta == 0 over a C
 * full of NaN), NaN padding in A that must never be read, and nothing
 * written outside the M x N block of C; the two implementations bit for bit;
 * products starting at a later panel; batch invariance (a row's result does
 * not depend on M, on its position among the rows, or on how the columns
 * are split); capmoe_panel_unpack; and capmoe_gemm_nt / capmoe_linear with
 * weights in panel layout, over pools of 1-3 threads, below and above
 * CAPMOE_PANEL_MAX_ROWS (panel kernel, and unpacking for sgemm). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/ops.h"
#include "capmoe/panel.h"
#include "capmoe/par.h"
#include "capmoe/safetensors.h"

#include "weights_test.h"

#define NELEM(a) (sizeof(a) / sizeof *(a))
#define PW CAPMOE_PANEL_COLS

static const capmoe_dtype DTYPES[3] = {CAPMOE_DTYPE_F32, CAPMOE_DTYPE_BF16, CAPMOE_DTYPE_F16};

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    EXPECT(p, "out of memory (%zu bytes)", n);
    return p;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ---- the layout, as panel.h describes it ------------------------------------- */

static int n_panels_of(int N) { return (N + PW - 1) / PW; }
static size_t ref_panel_elems(int K) { return (size_t)(K + 1) / 2 * 2 * PW; }

/* Element index of W[n][k] in the packed matrix: panel n / 16; step k / 2 of
 * 32 elements; within it, F32 / F16: the 16 of input 2j then the 16 of
 * input 2j + 1; BF16: 32-bit word c = W[16p+c][2j] | W[16p+c][2j+1] << 16
 * (little-endian: the even input in the lower half). */
static size_t ref_index(capmoe_dtype t, int K, int n, int k) {
    size_t base = (size_t)(n / PW) * ref_panel_elems(K) + (size_t)(k / 2) * 2 * PW;
    size_t c = (size_t)(n % PW);
    return t == CAPMOE_DTYPE_BF16 ? base + 2 * c + (size_t)(k & 1)
                                  : base + (size_t)(k & 1) * PW + c;
}

/* ---- a weight matrix, row-major and packed ----------------------------------- */

typedef struct wcase {
    capmoe_dtype dt;
    int N, K;
    size_t ldw;
    void *wbuf;    /* row-major W: exactly (N-1)*ldw + K elements; padding NaN */
    float *wv;     /* N*K: the float32 values W's elements represent */
    void *P;       /* packed: exactly capmoe_panel_matrix_bytes bytes */
    size_t pbytes;
} wcase;

static void wcase_init(wcase *w, uint64_t *rs, capmoe_dtype dt, int N, int K, size_t ldw) {
    memset(w, 0, sizeof *w);
    w->dt = dt, w->N = N, w->K = K, w->ldw = ldw;
    size_t wn = (size_t)(N - 1) * ldw + (size_t)K;
    w->wbuf = xmalloc(wn * dt_size(dt));
    w->wv = xmalloc((size_t)N * K * sizeof(float));
    for (size_t i = 0; i < wn; i++) store_nan(w->wbuf, dt, i);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            w->wv[(size_t)n * K + k] = store_elem(w->wbuf, dt, (size_t)n * ldw + k, rng_val(rs));
    w->pbytes = capmoe_panel_matrix_bytes(dt, N, K);
    EXPECT(w->pbytes == (size_t)n_panels_of(N) * ref_panel_elems(K) * dt_size(dt),
           "panel_matrix_bytes(%s, N=%d, K=%d) = %zu", dt_name(dt), N, K, w->pbytes);
    w->P = xmalloc(w->pbytes);
    memset(w->P, 0xa5, w->pbytes); /* garbage: the padding must be cleared by pack */
    capmoe_panel_pack(w->P, w->wbuf, dt, ldw, N, K);
}

static void wcase_free(wcase *w) { free(w->wbuf), free(w->wv), free(w->P); }

static const void *panel_at(const wcase *w, int p) {
    return (const char *)w->P + (size_t)p * capmoe_panel_bytes(w->dt, w->K);
}

/* ---- one C = alpha A W^T + beta C case over columns [col0, N) ---------------- */

typedef struct pcase {
    const wcase *w;
    int col0, M, N, K, lda, ldc;
    float alpha, beta;
    float *abuf, *A;   /* A = abuf + aoff; padding (k >= K) is NaN */
    float *c0;         /* initial C buffer: coff + (M-1)*ldc + N floats */
    size_t cn, coff;
    double *ref, *mag; /* M*N: expected value, sum of |terms| */
} pcase;

/* Buffers are exactly as long as the last row needs, so ASan sees any read
 * or write past it; A's row gaps hold NaN, which any read would propagate.
 * With c_nan, C's M x N block starts as NaN (for beta == 0); the gaps of C
 * always hold distinct finite values, so any store there shows. */
static void pcase_init_a(pcase *g, uint64_t *rs, const wcase *w, int col0, int M, int lda,
                         int ldc, size_t aoff, size_t coff, float alpha, float beta, int c_nan,
                         const float *a_src, int a_ld) {
    memset(g, 0, sizeof *g);
    int N = w->N - col0, K = w->K;
    g->w = w, g->col0 = col0, g->M = M, g->N = N, g->K = K, g->lda = lda, g->ldc = ldc;
    g->alpha = alpha, g->beta = beta, g->coff = coff;
    size_t an = aoff + (size_t)(M - 1) * lda + K;
    g->cn = coff + (size_t)(M - 1) * ldc + N;
    g->abuf = xmalloc(an * sizeof(float));
    g->c0 = xmalloc(g->cn * sizeof(float));
    g->ref = xmalloc((size_t)M * N * sizeof(double));
    g->mag = xmalloc((size_t)M * N * sizeof(double));
    for (size_t i = 0; i < an; i++) g->abuf[i] = NAN;
    g->A = g->abuf + aoff;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++)
            g->A[(size_t)i * lda + k] = a_src ? a_src[(size_t)i * a_ld + k] : rng_val(rs);
    for (size_t x = 0; x < g->cn; x++) {
        int inside = 0;
        if (x >= coff) {
            size_t r = (x - coff) / (size_t)ldc, c = (x - coff) % (size_t)ldc;
            inside = r < (size_t)M && c < (size_t)N;
        }
        g->c0[x] = inside && c_nan ? NAN : rng_val(rs);
    }
    ref_product(g->ref, g->mag, g->A, lda, w->wv + (size_t)col0 * K, g->c0 + coff, ldc, M, N, K,
                alpha, beta);
}

/* The same with random rows of A. */
static void pcase_init(pcase *g, uint64_t *rs, const wcase *w, int col0, int M, int lda, int ldc,
                       size_t aoff, size_t coff, float alpha, float beta, int c_nan) {
    pcase_init_a(g, rs, w, col0, M, lda, ldc, aoff, coff, alpha, beta, c_nan, NULL, 0);
}

static void pcase_free(pcase *g) { free(g->abuf), free(g->c0), free(g->ref), free(g->mag); }

/* A fresh copy of the initial C (exactly cn floats). */
static float *pcase_c(const pcase *g) {
    float *c = xmalloc(g->cn * sizeof(float));
    memcpy(c, g->c0, g->cn * sizeof(float));
    return c;
}

/* Every C[i][j] within 1e-5 of max(1, sum of |terms|); everything else in
 * the C buffer (row gaps, the offset) bit-for-bit untouched. */
static void pcase_check(const pcase *g, const float *cbuf, const char *what) {
    char desc[256];
    snprintf(desc, sizeof desc, "%s %s M=%d N=%d K=%d col0=%d lda=%d ldc=%d alpha=%g beta=%g",
             what, dt_name(g->w->dt), g->M, g->N, g->K, g->col0, g->lda, g->ldc,
             (double)g->alpha, (double)g->beta);
    check_product(cbuf, g->c0, g->cn, g->coff, g->M, g->N, g->ldc, g->ref, g->mag, desc);
}

typedef void (*panel_gemm_fn)(float *C, int ldc, const float *A, int lda, const void *P,
                              capmoe_dtype t, int M, int N, int K, float alpha, float beta);

/* Runs one implementation on a fresh copy of C; returns the C buffer. */
static float *pcase_run(const pcase *g, panel_gemm_fn fn) {
    float *c = pcase_c(g);
    fn(c + g->coff, g->ldc, g->A, g->lda, panel_at(g->w, g->col0 / PW), g->w->dt, g->M, g->N,
       g->K, g->alpha, g->beta);
    return c;
}

/* ---- whether the two implementations must agree bit for bit ------------------ */

/* panel.h: both implementations give the same bits wherever fused
 * multiply-add is available. The portable code fuses when its clone for
 * x86-64-v3 runs; the sanitizer build compiles it for baseline x86-64 only
 * (no clones), where a*b + c is rounded twice. Probe it with K = 8, W = (1,
 * 0, 0, 0, e, 0, 0, 0), A = (-1, 0, 0, 0, e, 0, 0, 0), e = 1 + 2^-12:
 * accumulator 0 (inputs 0 and 4) gets -1, then e^2 = 1 + 2^-11 + 2^-24:
 * fused, 2^-11 + 2^-24; rounded first (a tie, to even), 2^-11. */
static int fuses(panel_gemm_fn fn, const char *name) {
    const float e = 1.0f + 0x1p-12f;
    float W[8] = {1, 0, 0, 0, e, 0, 0, 0}, A[8] = {-1, 0, 0, 0, e, 0, 0, 0}, c = NAN;
    size_t bytes = capmoe_panel_matrix_bytes(CAPMOE_DTYPE_F32, 1, 8);
    void *P = xmalloc(bytes);
    capmoe_panel_pack(P, W, CAPMOE_DTYPE_F32, 8, 1, 8);
    fn(&c, 1, A, 8, P, CAPMOE_DTYPE_F32, 1, 1, 8, 1.0f, 0.0f);
    free(P);
    EXPECT(c == 0x1p-11f + 0x1p-24f || c == 0x1p-11f,
           "%s FMA probe (F32, M=1 N=1 K=8): got %a, expected 0x1.0008p-11 (fused) or 0x1p-11",
           name, (double)c);
    return c == 0x1p-11f + 0x1p-24f;
}

static int expect_identical(void) {
    int d = fuses(capmoe_panel_gemm, "panel_gemm");
    int p = fuses(capmoe_panel_gemm_portable, "panel_gemm_portable");
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
    /* not the sanitizer build: a CPU with FMA runs the x86-64-v3 clone */
    if (__builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2"))
        EXPECT(p, "the portable panel code does not fuse multiply-adds on a CPU with FMA");
#endif
    return d == p;
}

/* ---- capmoe_panel_pack / capmoe_panel_matrix_bytes --------------------------- */

static const int LNs[] = {1, 15, 16, 17, 33, 40};
static const int LKs[] = {1, 2, 3, 4, 5, 7, 16, 31, 64, 257};

START_TEST(test_panel_pack_layout) {
    capmoe_dtype dt = DTYPES[_i];
    size_t es = dt_size(dt);
    uint64_t rs = 0x5100u + (uint64_t)_i;
    for (size_t ni = 0; ni < NELEM(LNs); ni++)
        for (size_t ki = 0; ki < NELEM(LKs); ki++)
            for (int pad = 0; pad <= 3; pad += 3) {
                int N = LNs[ni], K = LKs[ki];
                EXPECT(capmoe_panel_bytes(dt, K) == ref_panel_elems(K) * es,
                       "panel_bytes(%s, K=%d) = %zu", dt_name(dt), K,
                       capmoe_panel_bytes(dt, K));
                wcase w;
                wcase_init(&w, &rs, dt, N, K, (size_t)K + (size_t)pad);
                /* every element where panel.h puts it, every other byte zero */
                unsigned char *want = calloc(w.pbytes, 1);
                EXPECT(want, "out of memory");
                for (int n = 0; n < N; n++)
                    for (int k = 0; k < K; k++)
                        memcpy(want + ref_index(dt, K, n, k) * es,
                               (const char *)w.wbuf + ((size_t)n * w.ldw + k) * es, es);
                for (size_t b = 0; b < w.pbytes; b++)
                    EXPECT(((unsigned char *)w.P)[b] == want[b],
                           "pack %s N=%d K=%d ldw=%zu: byte %zu (element %zu) is %02x, "
                           "expected %02x",
                           dt_name(dt), N, K, w.ldw, b, b / es, ((unsigned char *)w.P)[b],
                           want[b]);
                /* packing again, over different garbage, gives the same bytes */
                void *again = xmalloc(w.pbytes);
                memset(again, 0x3c, w.pbytes);
                capmoe_panel_pack(again, w.wbuf, dt, w.ldw, N, K);
                EXPECT(memcmp(again, w.P, w.pbytes) == 0, "pack %s N=%d K=%d: not deterministic",
                       dt_name(dt), N, K);
                free(again), free(want);
                wcase_free(&w);
            }
}
END_TEST

/* ---- capmoe_panel_pack_rows: matrices stacked from several sources ----------- */

/* Three sources of rows[0] + rows[1] + rows[2] rows (q, k, v of a layer, as
 * core/model.c stacks them), each with its own row stride (NaN in the gaps),
 * packed with pack_rows into a zeroed buffer, in every order: exactly the
 * bytes of capmoe_panel_pack on their row-wise concatenation. Each source
 * packed alone over a buffer of garbage writes only its own rows' elements
 * (k < K; its rows' padding input of an odd K left alone or zeroed), never
 * another row's nor the rows past N. */
START_TEST(test_panel_pack_rows_stacked) {
    static const int splits[][3] = {{16, 8, 8}, {13, 5, 7}, {1, 1, 1}, {18, 6, 6}, {33, 15, 17}};
    static const int Ks[] = {1, 2, 3, 8, 37, 64};
    static const size_t pads[3] = {0, 1, 3};
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                     {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    capmoe_dtype dt = DTYPES[_i];
    size_t es = dt_size(dt);
    uint64_t rs = 0x5a00u + (uint64_t)_i;
    for (size_t si = 0; si < NELEM(splits); si++)
        for (size_t ki = 0; ki < NELEM(Ks); ki++) {
            const int *rows = splits[si];
            int K = Ks[ki], N = rows[0] + rows[1] + rows[2], n0[3];
            n0[0] = 0, n0[1] = rows[0], n0[2] = rows[0] + rows[1];
            /* the sources, with padded rows, and their concatenation (ldw = K) */
            wcase src[3];
            for (int s = 0; s < 3; s++)
                wcase_init(&src[s], &rs, dt, rows[s], K, (size_t)K + pads[s]);
            void *cat = xmalloc((size_t)N * K * es);
            for (int s = 0; s < 3; s++)
                for (int n = 0; n < rows[s]; n++)
                    memcpy((char *)cat + ((size_t)(n0[s] + n) * K) * es,
                           (const char *)src[s].wbuf + (size_t)n * src[s].ldw * es,
                           (size_t)K * es);
            size_t bytes = capmoe_panel_matrix_bytes(dt, N, K);
            unsigned char *ref = xmalloc(bytes), *got = xmalloc(bytes);
            memset(ref, 0x5c, bytes);
            capmoe_panel_pack(ref, cat, dt, (size_t)K, N, K);
            for (size_t oi = 0; oi < NELEM(orders); oi++) {
                memset(got, 0, bytes);
                for (int x = 0; x < 3; x++) {
                    int s = orders[oi][x];
                    capmoe_panel_pack_rows(got, dt, K, n0[s], src[s].wbuf, src[s].ldw, rows[s]);
                }
                for (size_t b = 0; b < bytes; b++)
                    EXPECT(got[b] == ref[b],
                           "pack_rows %s rows %d+%d+%d K=%d order %d%d%d: byte %zu (element "
                           "%zu) is %02x, panel_pack of the concatenation has %02x",
                           dt_name(dt), rows[0], rows[1], rows[2], K, orders[oi][0],
                           orders[oi][1], orders[oi][2], b, b / es, got[b], ref[b]);
            }
            /* one source alone, over garbage: which elements it may write */
            size_t n_el = bytes / es;
            unsigned char *own = xmalloc(n_el);
            for (int s = 0; s < 3; s++) {
                memset(own, 0, n_el);
                for (int n = n0[s]; n < n0[s] + rows[s]; n++) {
                    for (int k = 0; k < K; k++) own[ref_index(dt, K, n, k)] = 1;
                    if (K & 1) own[ref_index(dt, K, n, K)] = 2; /* its padding input */
                }
                memset(got, 0xa5, bytes);
                capmoe_panel_pack_rows(got, dt, K, n0[s], src[s].wbuf, src[s].ldw, rows[s]);
                for (size_t e = 0; e < n_el; e++) {
                    const unsigned char *g = got + e * es;
                    int untouched = 1, zero = 1;
                    for (size_t b = 0; b < es; b++) untouched &= g[b] == 0xa5, zero &= g[b] == 0;
                    if (own[e] == 1)
                        EXPECT(memcmp(g, ref + e * es, es) == 0,
                               "pack_rows %s rows %d+%d+%d K=%d, source %d alone: element %zu "
                               "(one of its rows) differs from panel_pack",
                               dt_name(dt), rows[0], rows[1], rows[2], K, s, e);
                    else if (own[e] == 2)
                        EXPECT(untouched || zero,
                               "pack_rows %s rows %d+%d+%d K=%d, source %d alone: the padding "
                               "input of its rows (element %zu) got a nonzero value",
                               dt_name(dt), rows[0], rows[1], rows[2], K, s, e);
                    else
                        EXPECT(untouched,
                               "pack_rows %s rows %d+%d+%d K=%d, source %d (rows [%d, %d)) "
                               "alone: wrote element %zu, outside its rows",
                               dt_name(dt), rows[0], rows[1], rows[2], K, s, n0[s],
                               n0[s] + rows[s], e);
                }
            }
            free(own), free(ref), free(got), free(cat);
            for (int s = 0; s < 3; s++) wcase_free(&src[s]);
        }
}
END_TEST

/* ---- capmoe_panel_gemm against the reference --------------------------------- */

static const int GMs[] = {1, 2, 3, 5, 6, 7, 12, 13, 32};
static const int GNs[] = {1, 15, 16, 17, 33, 40};
static const int GKs[] = {1, 2, 3, 4, 5, 7, 16, 31, 64, 257};

/* _i = dtype * 3 + variant: 0 contiguous, beta 0 over NaN; 1 padded rows,
 * A and C one element off alignment, alpha != 1, beta 0 over NaN; 2 padded
 * rows, W padded, alpha and beta != 0 (accumulating). Both implementations
 * against the reference; against each other bit for bit. */
START_TEST(test_panel_gemm_vs_reference) {
    capmoe_dtype dt = DTYPES[_i / 3];
    int variant = _i % 3;
    int identical = expect_identical();
    uint64_t rs = 0x7700u + (uint64_t)_i;
    for (size_t ni = 0; ni < NELEM(GNs); ni++)
        for (size_t ki = 0; ki < NELEM(GKs); ki++) {
            int N = GNs[ni], K = GKs[ki];
            wcase w;
            wcase_init(&w, &rs, dt, N, K, (size_t)K + (variant == 2 ? 5 : 0));
            for (size_t mi = 0; mi < NELEM(GMs); mi++) {
                int M = GMs[mi];
                pcase g;
                switch (variant) {
                case 0: pcase_init(&g, &rs, &w, 0, M, K, N, 0, 0, 1.0f, 0.0f, 1); break;
                case 1: pcase_init(&g, &rs, &w, 0, M, K + 3, N + 5, 1, 1, -0.75f, 0.0f, 1); break;
                default: pcase_init(&g, &rs, &w, 0, M, K + 8, N + 7, 0, 0, 1.5f, 0.5f, 0); break;
                }
                float *c1 = pcase_run(&g, capmoe_panel_gemm);
                float *c2 = pcase_run(&g, capmoe_panel_gemm_portable);
                char what[64];
                snprintf(what, sizeof what, "panel_gemm variant %d", variant);
                pcase_check(&g, c1, what);
                snprintf(what, sizeof what, "panel_gemm_portable variant %d", variant);
                pcase_check(&g, c2, what);
                if (identical)
                    for (size_t x = 0; x < g.cn; x++)
                        EXPECT(same_bits(c1[x], c2[x]),
                               "%s M=%d N=%d K=%d variant %d: panel_gemm and "
                               "panel_gemm_portable differ at C buffer element %zu: %a vs %a",
                               dt_name(dt), M, N, K, variant, x, (double)c1[x], (double)c2[x]);
                free(c1), free(c2);
                pcase_free(&g);
            }
            wcase_free(&w);
        }
}
END_TEST

/* P offset to panel p: the product of columns 16p .. N-1, equal to those
 * columns of the whole product bit for bit. */
START_TEST(test_panel_gemm_later_panels) {
    static const int Ns[] = {17, 40, 70}, Ks[] = {3, 31, 64}, Ms[] = {1, 6, 13};
    capmoe_dtype dt = DTYPES[_i];
    uint64_t rs = 0x4400u + (uint64_t)_i;
    panel_gemm_fn fns[2] = {capmoe_panel_gemm, capmoe_panel_gemm_portable};
    for (size_t ni = 0; ni < NELEM(Ns); ni++)
        for (size_t ki = 0; ki < NELEM(Ks); ki++)
            for (size_t mi = 0; mi < NELEM(Ms); mi++) {
                int N = Ns[ni], K = Ks[ki], M = Ms[mi];
                wcase w;
                wcase_init(&w, &rs, dt, N, K, (size_t)K);
                pcase whole;
                pcase_init(&whole, &rs, &w, 0, M, K + 1, N, 0, 0, 0.5f, 0.0f, 1);
                for (int f = 0; f < 2; f++) {
                    float *cw = pcase_run(&whole, fns[f]);
                    pcase_check(&whole, cw, f ? "portable whole" : "panel_gemm whole");
                    for (int p = 1; p < n_panels_of(N); p++) {
                        pcase g; /* the same rows of A as the whole product */
                        pcase_init_a(&g, &rs, &w, PW * p, M, K + 1, N + 2, 0, 0, 0.5f, 0.0f, 1,
                                     whole.A, whole.lda);
                        float *c = pcase_run(&g, fns[f]);
                        char what[64];
                        snprintf(what, sizeof what, "%s from panel %d",
                                 f ? "portable" : "panel_gemm", p);
                        pcase_check(&g, c, what);
                        for (int i = 0; i < M; i++)
                            for (int j = 0; j < g.N; j++)
                                EXPECT(same_bits(c[(size_t)i * g.ldc + j],
                                                 cw[(size_t)i * whole.ldc + PW * p + j]),
                                       "%s %s M=%d N=%d K=%d from panel %d: C[%d][%d] differs "
                                       "from the whole product's column %d",
                                       what, dt_name(dt), M, N, K, p, i, j, PW * p + j);
                        free(c);
                        pcase_free(&g);
                    }
                    free(cw);
                }
                pcase_free(&whole);
                wcase_free(&w);
            }
}
END_TEST

/* M or N of zero: nothing is written. */
START_TEST(test_panel_gemm_empty) {
    uint64_t rs = 0x1111;
    wcase w;
    wcase_init(&w, &rs, DTYPES[_i], 3, 4, 4);
    float A[8] = {1, 2, 3, 4, 5, 6, 7, 8}, C[6];
    panel_gemm_fn fns[2] = {capmoe_panel_gemm, capmoe_panel_gemm_portable};
    for (int f = 0; f < 2; f++) {
        for (int i = 0; i < 6; i++) C[i] = 42.0f;
        fns[f](C, 3, A, 4, w.P, DTYPES[_i], 0, 3, 4, 1.0f, 0.0f);
        fns[f](C, 3, A, 4, w.P, DTYPES[_i], 2, 0, 4, 1.0f, 0.0f);
        for (int i = 0; i < 6; i++)
            EXPECT(C[i] == 42.0f, "%s empty product wrote C[%d]", dt_name(DTYPES[_i]), i);
    }
    wcase_free(&w);
}
END_TEST

/* ---- batch invariance ------------------------------------------------------- */

/* A row's result is the same bits whatever M, wherever the row sits among
 * the others (random), and however the columns are split (at multiples of
 * 16, through P offset to a later panel), for both implementations. */
START_TEST(test_panel_gemm_batch_invariance) {
    static const int Ns[] = {17, 40}, Ks[] = {1, 3, 7, 64, 257},
                     Ms[] = {1, 5, 6, 7, 13, 32, 70};
    const int MAXM = 70;
    capmoe_dtype dt = DTYPES[_i];
    uint64_t rs = 0x2200u + (uint64_t)_i;
    panel_gemm_fn fns[2] = {capmoe_panel_gemm, capmoe_panel_gemm_portable};
    for (size_t ni = 0; ni < NELEM(Ns); ni++)
        for (size_t ki = 0; ki < NELEM(Ks); ki++) {
            int N = Ns[ni], K = Ks[ki], lda = K + 2, ldc = N + 1;
            const float alpha = -0.75f;
            wcase w;
            wcase_init(&w, &rs, dt, N, K, (size_t)K);
            size_t an = (size_t)(MAXM - 1) * lda + K, cn = (size_t)(MAXM - 1) * ldc + N;
            float *x = xmalloc((size_t)K * sizeof(float));
            float *A = xmalloc(an * sizeof(float));
            float *C = xmalloc(cn * sizeof(float)), *C2 = xmalloc(cn * sizeof(float));
            float *y = xmalloc((size_t)N * sizeof(float));
            for (int k = 0; k < K; k++) x[k] = rng_val(&rs);
            for (int f = 0; f < 2; f++) {
                const char *fname = f ? "portable" : "panel_gemm";
                for (int j = 0; j < N; j++) y[j] = NAN;
                fns[f](y, N, x, K, w.P, dt, 1, N, K, alpha, 0.0f); /* the row alone */
                for (size_t mi = 0; mi < NELEM(Ms); mi++) {
                    int M = Ms[mi];
                    for (int r = 0; r < M; r++) {
                        for (size_t i = 0; i < an; i++) A[i] = NAN;
                        for (int i = 0; i < M; i++)
                            for (int k = 0; k < K; k++)
                                A[(size_t)i * lda + k] = i == r ? x[k] : rng_val(&rs);
                        for (size_t i = 0; i < cn; i++) C[i] = NAN;
                        fns[f](C, ldc, A, lda, w.P, dt, M, N, K, alpha, 0.0f);
                        for (int j = 0; j < N; j++)
                            EXPECT(same_bits(C[(size_t)r * ldc + j], y[j]),
                                   "%s %s N=%d K=%d: row %d of M=%d, column %d: %a, alone %a",
                                   fname, dt_name(dt), N, K, r, M, j,
                                   (double)C[(size_t)r * ldc + j], (double)y[j]);
                        /* the columns in two calls, split at each panel boundary */
                        for (int s = PW; s < N; s += PW) {
                            for (size_t i = 0; i < cn; i++) C2[i] = NAN;
                            fns[f](C2, ldc, A, lda, w.P, dt, M, s, K, alpha, 0.0f);
                            fns[f](C2 + s, ldc, A, lda, panel_at(&w, s / PW), dt, M, N - s, K,
                                   alpha, 0.0f);
                            EXPECT(memcmp(C, C2, (size_t)((M - 1) * ldc + N) * sizeof(float)) ==
                                       0,
                                   "%s %s M=%d N=%d K=%d: columns split at %d differ from one "
                                   "call",
                                   fname, dt_name(dt), M, N, K, s);
                        }
                        /* beyond 13 rows: the first 7 positions and the last 7 */
                        if (M > 13 && r == 6) r = M - 8;
                    }
                }
            }
            free(x), free(A), free(C), free(C2), free(y);
            wcase_free(&w);
        }
}
END_TEST

/* ---- capmoe_panel_unpack ----------------------------------------------------- */

START_TEST(test_panel_unpack) {
    static const int Ks[] = {1, 2, 3, 5, 16, 31, 64};
    capmoe_dtype dt = DTYPES[_i];
    uint64_t rs = 0x3300u + (uint64_t)_i;
    for (size_t ni = 0; ni < NELEM(LNs); ni++)
        for (size_t ki = 0; ki < NELEM(Ks); ki++) {
            int N = LNs[ni], K = Ks[ki], np_all = n_panels_of(N);
            wcase w;
            wcase_init(&w, &rs, dt, N, K, (size_t)K + 1);
            /* all panels; from panel 1 on; panel 0 alone */
            int firsts[3] = {0, 1, 0}, counts[3] = {np_all, np_all - 1, 1};
            for (int v = 0; v < 3; v++) {
                int p0 = firsts[v], np = counts[v];
                if (np < 1 || (v == 2 && np_all == 1)) continue;
                size_t ldd = (size_t)PW * np + 3;
                size_t dn = (size_t)(K - 1) * ldd + (size_t)PW * np; /* exact: ASan bounds it */
                float *d = xmalloc(dn * sizeof(float)), *d0 = xmalloc(dn * sizeof(float));
                for (size_t i = 0; i < dn; i++) d0[i] = rng_val(&rs);
                memcpy(d, d0, dn * sizeof(float));
                capmoe_panel_unpack(d, ldd, panel_at(&w, p0), dt, K, np);
                for (size_t x = 0; x < dn; x++) {
                    size_t k = x / ldd, col = x % ldd;
                    int n = PW * p0 + (int)col;
                    if (col >= (size_t)PW * np) {
                        EXPECT(same_bits(d[x], d0[x]),
                               "unpack %s N=%d K=%d panels %d+%d: wrote the gap at [%zu][%zu]",
                               dt_name(dt), N, K, p0, np, k, col);
                    } else {
                        float want = n < N ? w.wv[(size_t)n * K + k] : 0.0f;
                        EXPECT(same_bits(d[x], want),
                               "unpack %s N=%d K=%d panels %d+%d: [%zu][%zu] = %a, expected %a",
                               dt_name(dt), N, K, p0, np, k, col, (double)d[x], (double)want);
                    }
                }
                free(d), free(d0);
            }
            wcase_free(&w);
        }
}
END_TEST

/* ---- capmoe_gemm_nt / capmoe_linear with weights in panel layout -------------- */

/* _i = dtype * 2 + variant (0: contiguous, beta 0 over NaN; 1: padded, A and
 * C off alignment, alpha, beta). Pools of none, 2 and 3 threads; shapes on
 * the panel kernel (capmoe_gemm_small: up to CAPMOE_PANEL_MAX_ROWS rows, and
 * beyond while A is small) and on sgemm over unpacked panels (A over
 * CAPMOE_PANEL_MAX_A_BYTES), N not a multiple of 16. On the panel kernel the
 * result is the same bits whatever the pool (columns split at whole panels)
 * and the same as capmoe_panel_gemm's. */
START_TEST(test_gemm_nt_panels_pool) {
    static const int Ms[] = {1, 7, 32, 33, 70}, Ns[] = {17, 100, 250}, Ks[] = {64, 257};
    /* Over CAPMOE_PANEL_MAX_ROWS rows and M x K floats over 2^18 (1 MiB):
     * sgemm. Without a pool the last unpacks in two pieces of the scratch
     * (2^20 floats: 128 columns at K = 8192), the second of 22 columns. */
    static const int big[][3] = {{70, 17, 4096}, {300, 33, 1024}, {33, 150, 8192}};
    capmoe_dtype dt = DTYPES[_i / 2];
    int variant = _i % 2;
    capmoe_blas_single_threaded(); /* as a model load does */
    capmoe_error err = {{0}};
    capmoe_par *pools[3] = {NULL, NULL, NULL};
    for (int t = 1; t <= 2; t++) {
        pools[t] = capmoe_par_new(t + 1, &err);
        EXPECT(pools[t] != NULL, "par_new(%d): %s", t + 1, err.msg);
    }
    uint64_t rs = 0x6600u + (uint64_t)_i;
    int shapes[NELEM(Ms) * NELEM(Ns) * NELEM(Ks) + NELEM(big)][3], ns = 0;
    for (size_t mi = 0; mi < NELEM(Ms); mi++)
        for (size_t ni = 0; ni < NELEM(Ns); ni++)
            for (size_t ki = 0; ki < NELEM(Ks); ki++) {
                shapes[ns][0] = Ms[mi], shapes[ns][1] = Ns[ni], shapes[ns][2] = Ks[ki];
                ns++;
            }
    for (size_t bi = 0; bi < NELEM(big); bi++) {
        if (variant == 1 && bi == NELEM(big) - 1) continue; /* the biggest once per dtype */
        memcpy(shapes[ns++], big[bi], sizeof big[bi]);
    }
    int n_small = 0, n_sgemm = 0;
    for (int si = 0; si < ns; si++) {
        int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        wcase w;
        wcase_init(&w, &rs, dt, N, K, (size_t)K);
        pcase g;
        if (variant == 0)
            pcase_init(&g, &rs, &w, 0, M, K, N, 0, 0, 1.0f, 0.0f, 1);
        else
            pcase_init(&g, &rs, &w, 0, M, K + 4, N + 5, 1, 1, -0.5f, 1.25f, 0);
        capmoe_wmat B = {w.P, dt, 1, NULL};
        int small = capmoe_gemm_small(B, M, K);
        small ? n_small++ : n_sgemm++;
        float *first = NULL;
        for (int t = 0; t < 3; t++) {
            float *c = pcase_c(&g);
            capmoe_gemm_nt(pools[t], c + g.coff, g.ldc, g.A, g.lda, B, K, M, N, K, g.alpha,
                           g.beta);
            char what[80];
            snprintf(what, sizeof what, "gemm_nt panels (%s) threads=%d variant %d",
                     small ? "panel kernel" : "sgemm", t ? t + 1 : 0, variant);
            pcase_check(&g, c, what);
            if (small) {
                if (!first) {
                    /* the panel kernel itself, called directly */
                    float *d = pcase_run(&g, capmoe_panel_gemm);
                    EXPECT(memcmp(c, d, g.cn * sizeof(float)) == 0,
                           "%s M=%d N=%d K=%d: gemm_nt differs from panel_gemm", dt_name(dt), M,
                           N, K);
                    free(d);
                    first = c;
                    continue;
                }
                EXPECT(memcmp(c, first, g.cn * sizeof(float)) == 0,
                       "%s M=%d N=%d K=%d: threads=%d differs from no pool", dt_name(dt), M, N,
                       K, t + 1);
            }
            free(c);
        }
        free(first);
        pcase_free(&g);
        wcase_free(&w);
    }
    EXPECT(n_small > 0 && n_sgemm > 0,
           "the shapes no longer cover both paths (%d on the panel kernel, %d on sgemm)", n_small,
           n_sgemm);
    for (int t = 1; t <= 2; t++) capmoe_par_free(pools[t]);
}
END_TEST

/* capmoe_linear: y = x W^T + bias with W in panel layout, both paths. */
START_TEST(test_linear_panels_bias) {
    static const int Ms[] = {3, 40, 1500};
    const int N = 37, K = 200; /* 1500 x 200 floats: over 1 MiB, sgemm */
    capmoe_dtype dt = DTYPES[_i];
    uint64_t rs = 0x4242u + (uint64_t)_i;
    wcase w;
    wcase_init(&w, &rs, dt, N, K, (size_t)K);
    float *bias = xmalloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) bias[i] = rng_val(&rs);
    capmoe_wmat W = {w.P, dt, 1, NULL};
    for (size_t mi = 0; mi < NELEM(Ms); mi++) {
        int M = Ms[mi];
        float *x = xmalloc(sizeof(float) * M * K), *y = xmalloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) x[i] = rng_val(&rs);
        for (int i = 0; i < M * N; i++) y[i] = NAN;
        capmoe_linear(NULL, y, x, W, bias, M, N, K);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double s = bias[j], m = fabs(bias[j]);
                for (int k = 0; k < K; k++) {
                    double t = (double)x[i * K + k] * w.wv[(size_t)j * K + k];
                    s += t;
                    m += fabs(t);
                }
                EXPECT(fabs(y[i * N + j] - s) <= 1e-5 * (m > 1 ? m : 1),
                       "linear %s M=%d: y[%d][%d] = %.9g, expected %.9g", dt_name(dt), M, i, j,
                       (double)y[i * N + j], s);
            }
        free(x), free(y);
    }
    free(bias);
    wcase_free(&w);
}
END_TEST

static Suite *panel_suite(void) {
    Suite *s = suite_create("panel");
    TCase *pack = tcase_create("panel_pack");
    tcase_add_loop_test(pack, test_panel_pack_layout, 0, 3);
    tcase_add_loop_test(pack, test_panel_pack_rows_stacked, 0, 3);
    tcase_add_loop_test(pack, test_panel_unpack, 0, 3);
    TCase *gemm = tcase_create("panel_gemm");
    tcase_add_loop_test(gemm, test_panel_gemm_vs_reference, 0, 9);
    tcase_add_loop_test(gemm, test_panel_gemm_later_panels, 0, 3);
    tcase_add_loop_test(gemm, test_panel_gemm_empty, 0, 3);
    tcase_add_loop_test(gemm, test_panel_gemm_batch_invariance, 0, 3);
    TCase *ops = tcase_create("gemm_nt_panels");
    tcase_add_loop_test(ops, test_gemm_nt_panels_pool, 0, 6);
    tcase_add_loop_test(ops, test_linear_panels_bias, 0, 3);
    TCase *all[] = {pack, gemm, ops};
    for (size_t i = 0; i < NELEM(all); i++) {
        tcase_set_timeout(all[i], 60); /* ASan and busy CI machines are slower */
        suite_add_tcase(s, all[i]);
    }
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(panel_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
