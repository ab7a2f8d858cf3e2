/* cli_matmul.c - `capmoe bench`'s float32 matmul ceiling at the shapes a
 * prefill gives the experts (the square sgemm of cli_bench.c is larger than
 * any expert's product, so it is a rate the experts' products cannot reach
 * with the same library: the ceilings were measured at these
 * shapes too). */
#include <cblas.h>
#include <stdlib.h>

#include "capmoe/cli.h"
#include "capmoe/ops.h"
#include "capmoe/par.h"

/* One expert's products at m rows: gate and up (2I outputs of H inputs),
 * then down (H outputs of IW inputs), through OpenBLAS's own threads or the
 * engine's pool (each part single-threaded OpenBLAS on its columns). */
static void expert_products(int own, capmoe_par *par, const float *x, const float *wgu,
                            const float *wd, float *g, float *y, int m, int H, int IW) {
    if (own) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, 2 * IW, H, 1.0f, x, H, wgu, H, 0.0f,
                    g, 2 * IW);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, IW, 1.0f, g, 2 * IW, wd, IW, 0.0f,
                    y, H);
    } else {
        capmoe_gemm_nt(par, g, 2 * IW, x, H, capmoe_wmat_f32(wgu), H, m, 2 * IW, H, 1.0f, 0.0f);
        capmoe_gemm_nt(par, y, H, g, 2 * IW, capmoe_wmat_f32(wd), IW, m, H, IW, 1.0f, 0.0f);
    }
}

int capmoe_cli_sgemm_experts(int m, int H, int IW, int threads, double *blas, double *engine) {
    *blas = *engine = -1.0;
    if (m < 1 || H < 1 || IW < 1) return -1;
    size_t nx = (size_t)m * H, ngu = (size_t)2 * IW * H, nd = (size_t)H * IW, ng = (size_t)m * 2 * IW;
    float *x = capmoe_malloc_array(nx, sizeof(float)), *wgu = capmoe_malloc_array(ngu, sizeof(float));
    float *wd = capmoe_malloc_array(nd, sizeof(float)), *g = capmoe_malloc_array(ng, sizeof(float));
    float *y = capmoe_malloc_array(nx, sizeof(float));
    capmoe_par *par = capmoe_par_new(threads, NULL);
    int rc = -1;
    if (x && wgu && wd && g && y && par) {
        uint64_t s = 0x2545f4914f6cdd1dull;
#define RND() ((s = s * 6364136223846793005ull + 1442695040888963407ull), \
               (float)((double)(s >> 40) / 16777216.0 - 0.5))
        for (size_t i = 0; i < nx; i++) x[i] = RND();
        for (size_t i = 0; i < ngu; i++) wgu[i] = RND() * 0.05f;
        for (size_t i = 0; i < nd; i++) wd[i] = RND() * 0.05f;
#undef RND
        double flops = 2.0 * m * 3.0 * H * IW;
        for (int own = 0; own < 2; own++) {
            if (own) openblas_set_num_threads(threads);
            double best = -1.0;
            for (int r = 0; r < 4; r++) { /* the first is a warm-up */
                double t0 = capmoe_now();
                expert_products(own, par, x, wgu, wd, g, y, m, H, IW);
                double t = capmoe_now() - t0;
                if (r > 0 && t > 0 && (best < 0 || t < best)) best = t;
            }
            if (own) capmoe_blas_single_threaded();
            *(own ? blas : engine) = best > 0 ? flops / best / 1e9 : -1.0;
        }
        rc = 0;
    }
    capmoe_par_free(par);
    free(x), free(wgu), free(wd), free(g), free(y);
    return rc;
}
