/* matmul_shapes.c - the experts' products of one MoE layer at prefill
 * shapes, run every way the engine could run them, on the engine's own code
 * (dnnl_matmul.h, ops.h, par.h): which split of the work is fastest per
 * thread count and rows per expert (issue 19's "measure both").
 *
 *   build/tests/bench/matmul_shapes [--threads 2,16] [--rows 128,256]
 *       [--hidden 2048] [--inter 4864] [--experts 8] [--cw 64,128,256,512]
 *       [--reps 3]
 *
 * A layer is E experts of M rows each: gate and up (stacked, N = 2 IW, K = H),
 * SiLU, down (N = H, K = IW). Modes, each timed best of --reps:
 *  - bf16_items_cwC: the weights packed in chunks of C output columns, every
 *    (expert, chunk) one single-threaded oneDNN call on the pool (what
 *    --compute bf16 does, C = its chunk width);
 *  - bf16_team: per expert one oneDNN call over all columns with an OpenMP
 *    team of all threads (the pool idle);
 *  - f32_bf16w: the float32 path on BF16 weights (ops.h: each product split
 *    over the pool by columns, weights converted, single-threaded sgemm);
 *  - f32_f32w: the same on float32 weights (no conversion);
 *  - sgemm_team: OpenBLAS sgemm with its own threads on float32 weights,
 *    per expert and projection (the best float32 matmul at this shape).
 * Every mode's output is compared with f32_f32w (max |diff| / max |ref|).
 * JSON on stdout: one object per (threads, rows, mode) with seconds,
 * GFLOP/s, the oneDNN implementation and the difference. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capmoe/dnnl_matmul.h"
#include "capmoe/ops.h"
#include "capmoe/par.h"

#define MAXV 16

static int parse_list(const char *s, int *v) {
    int n = 0;
    while (*s && n < MAXV) {
        v[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)(rng >> 40) / 16777216.0f * 2.0f - 1.0f);
}

typedef struct {
    int E, M, H, IW, T;
    uint16_t **wgu_b, **wdn_b;  /* BF16 row-major: [2I, H] (gate rows then up), [H, IW] */
    float **wgu_f, **wdn_f;     /* the same values in float32 */
    float *x;                   /* [E M, H] */
    uint16_t *xb, *gb;          /* BF16 x, BF16 g [E M, IW] */
    float *g, *u, *y, *ref;     /* [E M, IW] x2, [E M, H], reference y */
    capmoe_par *par;
    capmoe_dnnl *d;
    capmoe_dnnl_mat **pgu, **pdn;
    int n_gu, n_dn;
} layer;

/* ---- bf16, items over the pool ---- */
static void gu_item(void *arg, int it, int slot) {
    layer *L = arg;
    int e = it / L->n_gu, ch = it % L->n_gu;
    const capmoe_dnnl_mat *w = L->pgu[e];
    int cols = capmoe_dnnl_mat_chunk_cols(w, ch), c0 = ch * capmoe_dnnl_mat_cw(w);
    float *o = capmoe_par_scratch(L->par, slot, (size_t)L->M * 2 * cols);
    capmoe_dnnl_run_chunk(L->d, slot, w, ch, L->xb + (size_t)e * L->M * L->H, L->M, o);
    for (int i = 0; i < L->M; i++) {
        float *row = o + (size_t)i * 2 * cols;
        capmoe_silu_mul(row, row + cols, (size_t)cols);
        capmoe_bf16_from_f32(L->gb + ((size_t)e * L->M + i) * L->IW + c0, row, (size_t)cols);
    }
}
static void dn_item(void *arg, int it, int slot) {
    layer *L = arg;
    int e = it / L->n_dn, ch = it % L->n_dn;
    const capmoe_dnnl_mat *w = L->pdn[e];
    int cols = capmoe_dnnl_mat_chunk_cols(w, ch), c0 = ch * capmoe_dnnl_mat_cw(w);
    float *o = capmoe_par_scratch(L->par, slot, (size_t)L->M * cols);
    capmoe_dnnl_run_chunk(L->d, slot, w, ch, L->gb + (size_t)e * L->M * L->IW, L->M, o);
    for (int i = 0; i < L->M; i++)
        memcpy(L->y + ((size_t)e * L->M + i) * L->H + c0, o + (size_t)i * cols, (size_t)cols * 4);
}
static void run_items(layer *L) {
    capmoe_par_for(L->par, L->E * L->n_gu, gu_item, L);
    capmoe_par_for(L->par, L->E * L->n_dn, dn_item, L);
}

/* ---- bf16, one OpenMP team per expert ---- */
static int run_team(layer *L, capmoe_error *err) {
    int H = L->H, IW = L->IW, M = L->M;
    float *o = L->g; /* [M, 2I] fits in g+u */
    for (int e = 0; e < L->E; e++) {
        if (capmoe_dnnl_run_team(L->d, L->pgu[e], 0, L->xb + (size_t)e * M * H, M, o, L->T, err))
            return -1;
        for (int i = 0; i < M; i++) {
            float *row = o + (size_t)i * 2 * IW;
            capmoe_silu_mul(row, row + IW, (size_t)IW);
            capmoe_bf16_from_f32(L->gb + ((size_t)e * M + i) * IW, row, (size_t)IW);
        }
        if (capmoe_dnnl_run_team(L->d, L->pdn[e], 0, L->gb + (size_t)e * M * IW, M,
                                 L->y + (size_t)e * M * H, L->T, err))
            return -1;
    }
    return 0;
}

/* ---- float32 through ops.h (weights f32 or BF16) ---- */
static void run_f32(layer *L, int bf16w) {
    int H = L->H, IW = L->IW, M = L->M;
    for (int e = 0; e < L->E; e++) {
        capmoe_wmat gu = bf16w ? (capmoe_wmat){L->wgu_b[e], CAPMOE_DTYPE_BF16, 0, NULL}
                               : capmoe_wmat_f32(L->wgu_f[e]);
        capmoe_wmat dn = bf16w ? (capmoe_wmat){L->wdn_b[e], CAPMOE_DTYPE_BF16, 0, NULL}
                               : capmoe_wmat_f32(L->wdn_f[e]);
        const float *x = L->x + (size_t)e * M * H;
        float *g = L->g + (size_t)e * M * IW, *u = L->u + (size_t)e * M * IW;
        capmoe_linear(L->par, g, x, gu, NULL, M, IW, H);
        capmoe_linear(L->par, u, x, capmoe_wmat_rows(gu, H, (size_t)H, IW), NULL, M, IW, H);
        capmoe_silu_mul(g, u, (size_t)M * IW);
        capmoe_linear(L->par, L->y + (size_t)e * M * H, g, dn, NULL, M, H, IW);
    }
}

/* ---- OpenBLAS with its own threads ---- */
static void run_sgemm_team(layer *L) {
    int H = L->H, IW = L->IW, M = L->M;
    for (int e = 0; e < L->E; e++) {
        const float *x = L->x + (size_t)e * M * H;
        float *g = L->g + (size_t)e * M * IW, *u = L->u + (size_t)e * M * IW;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, IW, H, 1.0f, x, H, L->wgu_f[e], H,
                    0.0f, g, IW);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, IW, H, 1.0f, x, H,
                    L->wgu_f[e] + (size_t)IW * H, H, 0.0f, u, IW);
        capmoe_silu_mul(g, u, (size_t)M * IW);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, H, IW, 1.0f, g, IW, L->wdn_f[e], IW,
                    0.0f, L->y + (size_t)e * M * H, H);
    }
}

static double diff(const layer *L) {
    size_t n = (size_t)L->E * L->M * L->H;
    double mx = 0, dm = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs(L->ref[i]), dd = fabs((double)L->y[i] - L->ref[i]);
        if (r > mx) mx = r;
        if (dd > dm) dm = dd;
    }
    return mx > 0 ? dm / mx : dm;
}

static int first_out = 1;
static void report(const layer *L, const char *mode, int cw, double s, const char *impl) {
    double fl = 2.0 * L->E * L->M * (3.0 * L->H * L->IW);
    printf("%s{\"threads\": %d, \"rows\": %d, \"experts\": %d, \"hidden\": %d, \"inter\": %d, "
           "\"mode\": \"%s\", \"cw\": %d, \"seconds\": %.6f, \"gflops\": %.1f, \"impl\": \"%s\", "
           "\"rel_diff\": %.3g}",
           first_out ? "[\n" : ",\n", L->T, L->M, L->E, L->H, L->IW, mode, cw, s, fl / s * 1e-9,
           impl ? impl : "", diff(L));
    first_out = 0;
    fflush(stdout);
}

int main(int argc, char **argv) {
    int th[MAXV] = {2}, nth = 1, rows[MAXV] = {128, 256}, nrows = 2, cws[MAXV] = {64, 128, 256, 512};
    int ncw = 4, H = 2048, IW = 4864, E = 8, reps = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "matmul_shapes: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--threads")) nth = parse_list(v, th);
        else if (!strcmp(a, "--rows")) nrows = parse_list(v, rows);
        else if (!strcmp(a, "--cw")) ncw = parse_list(v, cws);
        else if (!strcmp(a, "--hidden")) H = atoi(v);
        else if (!strcmp(a, "--inter")) IW = atoi(v);
        else if (!strcmp(a, "--experts")) E = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else {
            fprintf(stderr, "matmul_shapes: unknown option %s\n", a);
            return 2;
        }
    }
    if (H < 16 || IW < 16 || E < 1 || reps < 1 || nth < 1 || nrows < 1) {
        fprintf(stderr, "matmul_shapes: bad sizes\n");
        return 2;
    }
    int maxM = 0;
    for (int r = 0; r < nrows; r++) maxM = rows[r] > maxM ? rows[r] : maxM;
    capmoe_error err;
    layer L = {.E = E, .H = H, .IW = IW};
    L.wgu_b = calloc((size_t)E, sizeof *L.wgu_b);
    L.wdn_b = calloc((size_t)E, sizeof *L.wdn_b);
    L.wgu_f = calloc((size_t)E, sizeof *L.wgu_f);
    L.wdn_f = calloc((size_t)E, sizeof *L.wdn_f);
    L.pgu = calloc((size_t)E, sizeof *L.pgu);
    L.pdn = calloc((size_t)E, sizeof *L.pdn);
    size_t nx = (size_t)E * maxM;
    L.x = malloc(nx * H * 4);
    L.xb = malloc(nx * H * 2);
    L.gb = malloc(nx * IW * 2);
    L.g = malloc(nx * 2 * IW * 4 > nx * IW * 4 ? nx * 2 * IW * 4 : 1);
    L.u = malloc(nx * IW * 4);
    L.y = malloc(nx * H * 4);
    L.ref = malloc(nx * H * 4);
    if (!L.x || !L.xb || !L.gb || !L.g || !L.u || !L.y || !L.ref) return 1;
    float sg = 1.0f / sqrtf((float)H), sd = 1.0f / sqrtf((float)IW);
    for (int e = 0; e < E; e++) { /* BF16 values, and the same values in float32 */
        L.wgu_b[e] = malloc((size_t)2 * IW * H * 2);
        L.wdn_b[e] = malloc((size_t)H * IW * 2);
        L.wgu_f[e] = malloc((size_t)2 * IW * H * 4);
        L.wdn_f[e] = malloc((size_t)H * IW * 4);
        if (!L.wgu_b[e] || !L.wdn_b[e] || !L.wgu_f[e] || !L.wdn_f[e]) return 1;
        for (size_t i = 0; i < (size_t)2 * IW * H; i++) L.wgu_f[e][i] = frand() * sg;
        for (size_t i = 0; i < (size_t)H * IW; i++) L.wdn_f[e][i] = frand() * sd;
        capmoe_bf16_from_f32(L.wgu_b[e], L.wgu_f[e], (size_t)2 * IW * H);
        capmoe_bf16_from_f32(L.wdn_b[e], L.wdn_f[e], (size_t)H * IW);
        for (size_t i = 0; i < (size_t)2 * IW * H; i++) {
            uint32_t u = (uint32_t)L.wgu_b[e][i] << 16;
            memcpy(&L.wgu_f[e][i], &u, 4);
        }
        for (size_t i = 0; i < (size_t)H * IW; i++) {
            uint32_t u = (uint32_t)L.wdn_b[e][i] << 16;
            memcpy(&L.wdn_f[e][i], &u, 4);
        }
    }
    for (size_t i = 0; i < nx * H; i++) L.x[i] = frand();
    if (capmoe_dnnl_new(&L.d, &err) != 0) {
        fprintf(stderr, "matmul_shapes: %s\n", err.msg);
        return 1;
    }
    for (int ti = 0; ti < nth; ti++) {
        L.T = th[ti];
        L.par = capmoe_par_new(L.T, &err);
        if (!L.par) return 1;
        capmoe_blas_single_threaded();
        for (int ri = 0; ri < nrows; ri++) {
            L.M = rows[ri];
            capmoe_bf16_from_f32(L.xb, L.x, (size_t)E * L.M * H);
            double best;
            /* the reference: float32 weights through ops.h */
            run_f32(&L, 0);
            memcpy(L.ref, L.y, (size_t)E * L.M * H * 4);
#define TIME(call)                                                \
    best = 1e30;                                                  \
    for (int r = 0; r < reps; r++) {                              \
        double t0 = capmoe_now();                                 \
        call;                                                     \
        double t = capmoe_now() - t0;                             \
        if (t < best) best = t;                                   \
    }
            TIME(run_f32(&L, 0));
            report(&L, "f32_f32w", 0, best, NULL);
            TIME(run_f32(&L, 1));
            report(&L, "f32_bf16w", 0, best, NULL);
            openblas_set_num_threads(L.T);
            TIME(run_sgemm_team(&L));
            report(&L, "sgemm_team", 0, best, NULL);
            capmoe_blas_single_threaded();
            for (int ci = 0; ci < ncw + 1; ci++) {
                int team = ci == ncw, cw = team ? IW : cws[ci];
                capmoe_wmat gu[2], dn;
                for (int e = 0; e < E; e++) {
                    capmoe_dnnl_mat_free(L.pgu[e]);
                    capmoe_dnnl_mat_free(L.pdn[e]);
                    gu[0] = (capmoe_wmat){L.wgu_b[e], CAPMOE_DTYPE_BF16, 0, NULL};
                    gu[1] = (capmoe_wmat){L.wgu_b[e] + (size_t)IW * H, CAPMOE_DTYPE_BF16, 0, NULL};
                    dn = (capmoe_wmat){L.wdn_b[e], CAPMOE_DTYPE_BF16, 0, NULL};
                    if (capmoe_dnnl_pack(L.d, L.par, &L.pgu[e], gu, 2, IW, H, cw, &err) ||
                        capmoe_dnnl_pack(L.d, L.par, &L.pdn[e], &dn, 1, H, IW, team ? H : cw, &err)) {
                        fprintf(stderr, "matmul_shapes: %s\n", err.msg);
                        return 1;
                    }
                    if (!team && (capmoe_dnnl_prepare(L.d, L.pgu[e], L.M, L.T, &err) ||
                                  capmoe_dnnl_prepare(L.d, L.pdn[e], L.M, L.T, &err))) {
                        fprintf(stderr, "matmul_shapes: %s\n", err.msg);
                        return 1;
                    }
                }
                L.n_gu = capmoe_dnnl_mat_chunks(L.pgu[0]);
                L.n_dn = capmoe_dnnl_mat_chunks(L.pdn[0]);
                char mode[32];
                if (team) {
                    if (run_team(&L, &err) != 0) {
                        fprintf(stderr, "matmul_shapes: %s\n", err.msg);
                        return 1;
                    }
                    TIME(run_team(&L, &err));
                    report(&L, "bf16_team", 0, best, capmoe_dnnl_impl(L.d, L.pgu[0], L.M, L.T));
                } else {
                    run_items(&L);
                    TIME(run_items(&L));
                    snprintf(mode, sizeof mode, "bf16_items_cw%d", cw);
                    report(&L, mode, cw, best, capmoe_dnnl_impl(L.d, L.pgu[0], L.M, 1));
                }
                if (capmoe_dnnl_failed(L.d, &err)) {
                    fprintf(stderr, "matmul_shapes: %s\n", err.msg);
                    return 1;
                }
            }
        }
        capmoe_par_free(L.par);
    }
    printf("\n]\n");
    for (int e = 0; e < E; e++) {
        capmoe_dnnl_mat_free(L.pgu[e]);
        capmoe_dnnl_mat_free(L.pdn[e]);
        free(L.wgu_b[e]);
        free(L.wdn_b[e]);
        free(L.wgu_f[e]);
        free(L.wdn_f[e]);
    }
    capmoe_dnnl_free(L.d);
    free(L.wgu_b), free(L.wdn_b), free(L.wgu_f), free(L.wdn_f), free(L.pgu), free(L.pdn);
    free(L.x), free(L.xb), free(L.gb), free(L.g), free(L.u), free(L.y), free(L.ref);
    return 0;
}
