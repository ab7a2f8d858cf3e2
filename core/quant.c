/* quant.c - Q8 / Q4 / F8E4M3 weight panels (see quant.h): quantization at
 * load, activation quantization, and the products, in AVX-512 VNNI, AVX2
 * and portable C, chosen at run time by the CPU. */
#include "capmoe/quant.h"

#include <math.h>
#include <string.h>

#include "capmoe/panel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QUANT_X86 1
#include <immintrin.h>
#endif

#define PW CAPMOE_PANEL_COLS
#define QB CAPMOE_QBLOCK
#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* Weights are prefetched this far ahead into L2 (as panel.c). */
#define PF_BYTES 8192

int capmoe_weights_parse(const char *s, capmoe_weights *w) {
    if (!s) return -1;
    if (strcmp(s, "bf16") == 0 || strcmp(s, "stored") == 0) *w = CAPMOE_WEIGHTS_STORED;
    else if (strcmp(s, "q8") == 0) *w = CAPMOE_WEIGHTS_Q8;
    else if (strcmp(s, "q4") == 0) *w = CAPMOE_WEIGHTS_Q4;
    else return -1;
    return 0;
}

const char *capmoe_weights_name(capmoe_weights w) {
    return w == CAPMOE_WEIGHTS_Q8 ? "q8" : w == CAPMOE_WEIGHTS_Q4 ? "q4" : "bf16";
}

int capmoe_quant_scope_parse(const char *s, capmoe_quant_scope *q) {
    if (!s) return -1;
    if (strcmp(s, "experts") == 0) *q = CAPMOE_QUANTIZE_EXPERTS;
    else if (strcmp(s, "all") == 0) *q = CAPMOE_QUANTIZE_ALL;
    else return -1;
    return 0;
}

const char *capmoe_quant_scope_name(capmoe_quant_scope q) {
    return q == CAPMOE_QUANTIZE_ALL ? "all" : "experts";
}

/* ---- layout ----------------------------------------------------------------- */

/* Bytes of one 32-input block of one panel: scales (and minimums), quants. */
static size_t block_bytes(capmoe_dtype t) {
    return t == CAPMOE_DTYPE_Q8 ? 2 * PW + PW * QB : 4 * PW + PW * QB / 2;
}
static size_t f8_scale_bytes(int K) {
    size_t n = ((size_t)K + CAPMOE_F8_BLOCK - 1) / CAPMOE_F8_BLOCK * sizeof(float);
    return (n + 63) & ~(size_t)63;
}

size_t capmoe_quant_panel_bytes(capmoe_dtype t, int K) {
    if (t == CAPMOE_DTYPE_F8E4M3) return f8_scale_bytes(K) + ((size_t)K + 1) / 2 * 2 * PW;
    return (size_t)(K / QB) * block_bytes(t);
}

static uint16_t f16_bits(float f) { return capmoe_f32_to_f16(f); }
static float f16_val(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return capmoe_f16_to_f32(h);
}

/* One block (32 inputs) of the 16 outputs of a panel: rows W[c] for c < n. */
static void pack_block(char *blk, capmoe_dtype t, const float *W, size_t ldw, int n, int k0) {
    memset(blk, 0, block_bytes(t));
    for (int c = 0; c < n; c++) {
        const float *w = W + (size_t)c * ldw + k0;
        if (t == CAPMOE_DTYPE_Q8) {
            float amax = 0.0f;
            for (int i = 0; i < QB; i++) amax = fmaxf(amax, fabsf(w[i]));
            uint16_t dh = f16_bits(amax / 127.0f);
            float d = capmoe_f16_to_f32(dh);
            memcpy(blk + 2 * c, &dh, 2);
            unsigned char *q = (unsigned char *)blk + 2 * PW;
            for (int i = 0; i < QB; i++) {
                float v = d > 0.0f ? nearbyintf(w[i] / d) : 0.0f;
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                q[(i / 4) * 64 + 4 * c + (i & 3)] = (unsigned char)((int)v + 128);
            }
        } else {
            float lo = w[0], hi = w[0];
            for (int i = 1; i < QB; i++) {
                lo = fminf(lo, w[i]);
                hi = fmaxf(hi, w[i]);
            }
            uint16_t dh = f16_bits((hi - lo) / 15.0f), mh = f16_bits(lo);
            float d = capmoe_f16_to_f32(dh), m = capmoe_f16_to_f32(mh);
            memcpy(blk + 2 * c, &dh, 2);
            memcpy(blk + 2 * PW + 2 * c, &mh, 2);
            unsigned char *q = (unsigned char *)blk + 4 * PW;
            for (int i = 0; i < QB; i++) {
                float v = d > 0.0f ? nearbyintf((w[i] - m) / d) : 0.0f;
                v = v > 15.0f ? 15.0f : v < 0.0f ? 0.0f : v;
                int pair = i / 8, hi4 = (i & 7) >= 4;
                unsigned char *b = q + pair * 64 + 4 * c + (i & 3);
                *b |= (unsigned char)((int)v << (hi4 ? 4 : 0));
            }
        }
    }
}

void capmoe_quant_pack(void *dst, capmoe_dtype t, const float *W, size_t ldw, int N, int K) {
    size_t pb = capmoe_quant_panel_bytes(t, K);
    for (int p = 0; p * PW < N; p++) {
        int n = N - p * PW < PW ? N - p * PW : PW;
        for (int b = 0; b < K / QB; b++)
            pack_block((char *)dst + p * pb + (size_t)b * block_bytes(t), t,
                       W + (size_t)p * PW * ldw, ldw, n, b * QB);
    }
}

/* ---- FP8 -------------------------------------------------------------------- */

float capmoe_f8_to_f32(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    float v = e ? ldexpf(1.0f + (float)m / 8.0f, e - 7) : ldexpf((float)m, -9);
    return b & 0x80 ? -v : v;
}

void capmoe_f8_pack(void *dst, const uint8_t *W, size_t ldw, const float *S, int bn, int bk, int N,
                    int K) {
    size_t pb = capmoe_quant_panel_bytes(CAPMOE_DTYPE_F8E4M3, K), sb = f8_scale_bytes(K);
    int kbs = (K + bk - 1) / bk;
    for (int p = 0; p * PW < N; p++) {
        char *pp = (char *)dst + p * pb;
        memset(pp, 0, pb);
        int n = N - p * PW < PW ? N - p * PW : PW;
        float *sc = (float *)(void *)pp;
        for (int kb = 0; kb * CAPMOE_F8_BLOCK < K; kb++)
            sc[kb] = S[(size_t)(p * PW / bn) * kbs + (size_t)(kb * CAPMOE_F8_BLOCK / bk)] * 256.0f;
        uint8_t *d = (uint8_t *)pp + sb;
        for (int c = 0; c < n; c++) {
            const uint8_t *w = W + (size_t)(p * PW + c) * ldw;
            for (int k = 0; k < K; k++) d[(size_t)(k / 2) * 2 * PW + (size_t)(k & 1) * PW + c] = w[k];
        }
    }
}

void capmoe_f8_dequant(float *dst, const uint8_t *W, size_t ldw, const float *S, int bn, int bk,
                       int row0, int N, int K) {
    int kbs = (K + bk - 1) / bk;
    for (int i = 0; i < N; i++) {
        int r = row0 + i;
        for (int k = 0; k < K; k++)
            dst[(size_t)i * K + k] =
                capmoe_f8_to_f32(W[(size_t)r * ldw + k]) * S[(size_t)(r / bn) * kbs + k / bk];
    }
}

/* The F16 bits of an e4m3 byte, worth 2^-8 of it. */
static inline uint16_t f8_f16(uint8_t b) {
    uint16_t h = (uint16_t)(b << 7);
    return (uint16_t)(h + (h & 0x4000));
}

void capmoe_f8_unpack(float *dst, size_t ldd, const void *P, int K, int n_panels) {
    size_t pb = capmoe_quant_panel_bytes(CAPMOE_DTYPE_F8E4M3, K), sb = f8_scale_bytes(K);
    for (int i = 0; i < n_panels; i++) {
        const char *pp = (const char *)P + i * pb;
        const float *sc = (const float *)(const void *)pp;
        const uint8_t *d = (const uint8_t *)pp + sb;
        for (int k = 0; k < K; k++)
            for (int c = 0; c < PW; c++) {
                uint16_t h = f8_f16(d[(size_t)(k / 2) * 2 * PW + (size_t)(k & 1) * PW + c]);
                dst[(size_t)k * ldd + (size_t)PW * i + c] =
                    capmoe_f16_to_f32(h) * sc[k / CAPMOE_F8_BLOCK];
            }
    }
}

/* ---- activations ------------------------------------------------------------- */

size_t capmoe_qact_bytes(int M, int K) {
    return (size_t)M * (size_t)(K / QB) * 8 + (size_t)M * (size_t)K;
}

/* One block of 32 activations: d and the int8 values, their sum. */
static void qact_block_scalar(const float *a, int8_t *qq, float *d_out, int32_t *sum_out) {
    float amax = 0.0f;
    int nan = 0;
    for (int i = 0; i < QB; i++) {
        amax = fmaxf(amax, fabsf(a[i]));
        nan |= isnan(a[i]);
    }
    if (nan) amax = NAN; /* fmaxf drops NaN: carry it in d */
    int32_t sum = 0;
    float d = amax / 127.0f;
    if (amax > 0.0f && isfinite(amax)) {
        float id = 127.0f / amax;
        for (int i = 0; i < QB; i++) {
            float v = nearbyintf(a[i] * id);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            qq[i] = (int8_t)v;
            sum += qq[i];
        }
    } else {
        memset(qq, 0, QB); /* zero block, or NaN/inf: d carries it */
        if (amax == 0.0f) d = 0.0f;
    }
    *d_out = d;
    *sum_out = sum;
}

#ifdef QUANT_X86
/* The same with AVX-512 (identical results: the same max, the same float
 * product a * id rounded to nearest even, |a * id| <= 127 needs no clamp);
 * blocks with NaN or infinity go to the scalar code. */
__attribute__((target("avx512f"))) static void qact_row_avx512(const float *a, int8_t *q, float *sc,
                                                                  int nb) {
    for (int b = 0; b < nb; b++) {
        __m512 x0 = _mm512_loadu_ps(a + b * QB), x1 = _mm512_loadu_ps(a + b * QB + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        float d;
        int32_t sum;
        if (!(amax > 0.0f) || !isfinite(amax) ||
            _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) || _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) {
            qact_block_scalar(a + b * QB, q + b * QB, &d, &sum);
        } else {
            __m512 id = _mm512_set1_ps(127.0f / amax);
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
            _mm_storeu_si128((__m128i *)(q + b * QB), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + b * QB + 16), _mm512_cvtepi32_epi8(q1));
            sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            d = amax / 127.0f;
        }
        sc[2 * b] = d;
        memcpy(&sc[2 * b + 1], &sum, 4);
    }
}
#endif

void capmoe_qact_quantize(void *buf, const float *A, int lda, int M, int K) {
    int nb = K / QB;
    float *sc = buf;
    int8_t *q = (int8_t *)buf + (size_t)M * nb * 8;
#ifdef QUANT_X86
    if (__builtin_cpu_supports("avx512f")) {
        for (int r = 0; r < M; r++)
            qact_row_avx512(A + (size_t)r * lda, q + (size_t)r * K, sc + (size_t)r * nb * 2, nb);
        return;
    }
#endif
    for (int r = 0; r < M; r++)
        for (int b = 0; b < nb; b++) {
            float d;
            int32_t sum;
            qact_block_scalar(A + (size_t)r * lda + b * QB, q + (size_t)r * K + b * QB, &d, &sum);
            sc[((size_t)r * nb + b) * 2] = d;
            memcpy(&sc[((size_t)r * nb + b) * 2 + 1], &sum, 4);
        }
}

/* Row r's block b: scale and integer sum of the quantized activations. */
ALWAYS_INLINE void act_scale(const float *sc, int nb, int r, int b, float *d, int32_t *sum) {
    *d = sc[((size_t)r * nb + b) * 2];
    memcpy(sum, &sc[((size_t)r * nb + b) * 2 + 1], 4);
}

static inline float finish(float v, float *c, float alpha, float beta) {
    float r = alpha * v;
    return beta == 0.0f ? r : fmaf(beta, *c, r);
}

/* ---- portable ------------------------------------------------------------------ */

static void port_gemm(float *C, int ldc, const void *qa, const void *P, capmoe_dtype t, int M,
                      int N, int K, float alpha, float beta) {
    int nb = K / QB, q8 = t == CAPMOE_DTYPE_Q8;
    const float *sc = qa;
    const int8_t *q = (const int8_t *)qa + (size_t)M * nb * 8;
    size_t pb = capmoe_quant_panel_bytes(t, K), bb = block_bytes(t);
    for (int p = 0; p * PW < N; p++) {
        int n = N - p * PW < PW ? N - p * PW : PW;
        for (int r = 0; r < M; r++) {
            float out[PW] = {0};
            for (int b = 0; b < nb; b++) {
                const char *blk = (const char *)P + p * pb + b * bb;
                const unsigned char *wq = (const unsigned char *)blk + (q8 ? 2 : 4) * PW;
                const int8_t *a = q + (size_t)r * K + b * QB;
                float da;
                int32_t asum;
                act_scale(sc, nb, r, b, &da, &asum);
                for (int c = 0; c < PW; c++) {
                    int32_t s = 0;
                    for (int i = 0; i < QB; i++) {
                        int w;
                        if (q8) {
                            w = (int)wq[(i / 4) * 64 + 4 * c + (i & 3)] - 128;
                        } else {
                            unsigned char x = wq[(i / 8) * 64 + 4 * c + (i & 3)];
                            w = (i & 7) >= 4 ? x >> 4 : x & 15;
                        }
                        s += w * a[i];
                    }
                    float dw = f16_val(blk + 2 * c);
                    out[c] = fmaf((float)s, dw * da, out[c]);
                    if (!q8) out[c] = fmaf(f16_val(blk + 2 * PW + 2 * c), da * (float)asum, out[c]);
                }
            }
            float *cr = C + (size_t)r * ldc + p * PW;
            for (int c = 0; c < n; c++) cr[c] = finish(out[c], &cr[c], alpha, beta);
        }
    }
}

static void port_f8(float *C, int ldc, const float *A, int lda, const void *P, int M, int N, int K,
                    float alpha, float beta) {
    size_t pb = capmoe_quant_panel_bytes(CAPMOE_DTYPE_F8E4M3, K), sb = f8_scale_bytes(K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + p * pb;
        const float *sc = (const float *)(const void *)pp;
        const uint8_t *d = (const uint8_t *)pp + sb;
        int n = N - p * PW < PW ? N - p * PW : PW;
        for (int r = 0; r < M; r++) {
            const float *a = A + (size_t)r * lda;
            float *cr = C + (size_t)r * ldc + p * PW;
            for (int c = 0; c < n; c++) {
                float out = 0.0f;
                for (int k0 = 0; k0 < K; k0 += CAPMOE_F8_BLOCK) {
                    float s = 0.0f;
                    int k1 = k0 + CAPMOE_F8_BLOCK < K ? k0 + CAPMOE_F8_BLOCK : K;
                    for (int k = k0; k < k1; k++) {
                        uint16_t h = f8_f16(d[(size_t)(k / 2) * 2 * PW + (size_t)(k & 1) * PW + c]);
                        s = fmaf(a[k], capmoe_f16_to_f32(h), s);
                    }
                    out = fmaf(s, sc[k0 / CAPMOE_F8_BLOCK], out);
                }
                cr[c] = finish(out, &cr[c], alpha, beta);
            }
        }
    }
}

/* ---- AVX2 ------------------------------------------------------------------------ */

#ifdef QUANT_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define A2_ROWS 4

AVX2 ALWAYS_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

AVX2 ALWAYS_INLINE void a2_rows(capmoe_dtype t, int R, float *C, int ldc, const float *sc,
                                const int8_t *q, int nb, int K, const char *pp, int ncols,
                                float alpha, float beta) {
    int q8 = t == CAPMOE_DTYPE_Q8;
    size_t bb = block_bytes(t);
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15),
                  x80 = _mm256_set1_epi8((char)0x80);
    for (int h = 0; h < 2 && 8 * h < ncols; h++) {
        __m256 out[A2_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < A2_ROWS; r++) out[r] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const char *blk = pp + b * bb;
            if (h == 0) _mm_prefetch(blk + PF_BYTES, _MM_HINT_T1);
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16 * h)));
            __m256i acc[A2_ROWS];
#pragma GCC unroll 4
            for (int r = 0; r < A2_ROWS; r++) acc[r] = _mm256_setzero_si256();
            if (q8) {
                const char *wq = blk + 2 * PW + 32 * h;
#pragma GCC unroll 8
                for (int s = 0; s < 8; s++) {
                    __m256i ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wq + 64 * s)), x80);
                    __m256i aw = _mm256_abs_epi8(ws);
#pragma GCC unroll 4
                    for (int r = 0; r < A2_ROWS; r++) {
                        if (r >= R) break;
                        __m256i a = bcast4(q + (size_t)r * K + b * QB + 4 * s);
                        __m256i pr = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, ws));
                        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pr, ones));
                    }
                }
            } else {
                const char *wq = blk + 4 * PW + 32 * h;
#pragma GCC unroll 4
                for (int s = 0; s < 4; s++) {
                    __m256i x = _mm256_loadu_si256((const __m256i *)(wq + 64 * s));
                    __m256i lo = _mm256_and_si256(x, m4);
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
#pragma GCC unroll 4
                    for (int r = 0; r < A2_ROWS; r++) {
                        if (r >= R) break;
                        const int8_t *a = q + (size_t)r * K + b * QB + 8 * s;
                        __m256i p0 = _mm256_maddubs_epi16(lo, bcast4(a));
                        __m256i p1 = _mm256_maddubs_epi16(hi, bcast4(a + 4));
                        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p0, ones));
                        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p1, ones));
                    }
                }
            }
            __m256 mw = q8 ? dw : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 2 * PW + 16 * h)));
#pragma GCC unroll 4
            for (int r = 0; r < A2_ROWS; r++) {
                if (r >= R) break;
                float da;
                int32_t asum;
                act_scale(sc, nb, r, b, &da, &asum);
                __m256 f = _mm256_cvtepi32_ps(acc[r]);
                out[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, _mm256_set1_ps(da)), out[r]);
                if (!q8) out[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(da * (float)asum), out[r]);
            }
        }
        int n = ncols - 8 * h < 8 ? ncols - 8 * h : 8;
#pragma GCC unroll 4
        for (int r = 0; r < A2_ROWS; r++) {
            if (r >= R) break;
            float v[8], *cr = C + (size_t)r * ldc + 8 * h;
            _mm256_storeu_ps(v, out[r]);
            for (int c = 0; c < n; c++) cr[c] = finish(v[c], &cr[c], alpha, beta);
        }
    }
}

AVX2 ALWAYS_INLINE void a2_gemm(capmoe_dtype t, float *C, int ldc, const void *qa, const void *P,
                                int M, int N, int K, float alpha, float beta) {
    int nb = K / QB;
    const float *sc = qa;
    const int8_t *q = (const int8_t *)qa + (size_t)M * nb * 8;
    size_t pb = capmoe_quant_panel_bytes(t, K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + p * pb;
        int ncols = N - p * PW < PW ? N - p * PW : PW;
        for (int m0 = 0; m0 < M; m0 += A2_ROWS) {
            float *c = C + (size_t)m0 * ldc + p * PW;
            const float *s = sc + (size_t)m0 * nb * 2;
            const int8_t *qq = q + (size_t)m0 * K;
            switch (M - m0 < A2_ROWS ? M - m0 : A2_ROWS) {
            case 1: a2_rows(t, 1, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 2: a2_rows(t, 2, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 3: a2_rows(t, 3, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            default: a2_rows(t, 4, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            }
        }
    }
}

AVX2 static void a2_q8(float *C, int ldc, const void *qa, const void *P, int M, int N, int K,
                       float alpha, float beta) {
    a2_gemm(CAPMOE_DTYPE_Q8, C, ldc, qa, P, M, N, K, alpha, beta);
}
AVX2 static void a2_q4(float *C, int ldc, const void *qa, const void *P, int M, int N, int K,
                       float alpha, float beta) {
    a2_gemm(CAPMOE_DTYPE_Q4, C, ldc, qa, P, M, N, K, alpha, beta);
}

/* ---- AVX-512 VNNI ----------------------------------------------------------------- */

#define V512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))
#define V_ROWS 8

V512 ALWAYS_INLINE __m512i vbcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

V512 ALWAYS_INLINE void v_rows(capmoe_dtype t, int R, float *C, int ldc, const float *sc,
                               const int8_t *q, int nb, int K, const char *pp, int ncols,
                               float alpha, float beta) {
    int q8 = t == CAPMOE_DTYPE_Q8;
    size_t bb = block_bytes(t);
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512 out[V_ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < V_ROWS; r++) out[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const char *blk = pp + b * bb;
        for (size_t o = 0; o < bb; o += 64) _mm_prefetch(blk + PF_BYTES + o, _MM_HINT_T1);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        __m512i acc[V_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < V_ROWS; r++) acc[r] = _mm512_setzero_si512();
        if (q8) {
            const char *wq = blk + 2 * PW;
#pragma GCC unroll 8
            for (int s = 0; s < 8; s++) {
                __m512i w = _mm512_loadu_si512((const void *)(wq + 64 * s));
#pragma GCC unroll 8
                for (int r = 0; r < V_ROWS; r++) {
                    if (r >= R) break;
                    acc[r] = _mm512_dpbusd_epi32(acc[r], w, vbcast4(q + (size_t)r * K + b * QB + 4 * s));
                }
            }
        } else {
            const char *wq = blk + 4 * PW;
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                __m512i x = _mm512_loadu_si512((const void *)(wq + 64 * s));
                __m512i lo = _mm512_and_si512(x, m4);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
#pragma GCC unroll 8
                for (int r = 0; r < V_ROWS; r++) {
                    if (r >= R) break;
                    const int8_t *a = q + (size_t)r * K + b * QB + 8 * s;
                    acc[r] = _mm512_dpbusd_epi32(acc[r], lo, vbcast4(a));
                    acc[r] = _mm512_dpbusd_epi32(acc[r], hi, vbcast4(a + 4));
                }
            }
        }
        __m512 mw = q8 ? dw : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 2 * PW)));
#pragma GCC unroll 8
        for (int r = 0; r < V_ROWS; r++) {
            if (r >= R) break;
            float da;
            int32_t asum;
            act_scale(sc, nb, r, b, &da, &asum);
            __m512i s = acc[r];
            /* Q8 bytes are q + 128: the sum holds 128 * sum(q_a) too */
            if (q8) s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * asum));
            __m512 f = _mm512_cvtepi32_ps(s);
            out[r] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw, _mm512_set1_ps(da)), out[r]);
            if (!q8) out[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(da * (float)asum), out[r]);
        }
    }
    __mmask16 mk = (__mmask16)(ncols >= PW ? 0xffffu : (1u << ncols) - 1u);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < V_ROWS; r++) {
        if (r >= R) break;
        float *c = C + (size_t)r * ldc;
        __m512 s = _mm512_mul_ps(va, out[r]);
        if (beta != 0.0f) s = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, c), s);
        _mm512_mask_storeu_ps(c, mk, s);
    }
}

V512 ALWAYS_INLINE void v_gemm(capmoe_dtype t, float *C, int ldc, const void *qa, const void *P,
                               int M, int N, int K, float alpha, float beta) {
    int nb = K / QB;
    const float *sc = qa;
    const int8_t *q = (const int8_t *)qa + (size_t)M * nb * 8;
    size_t pb = capmoe_quant_panel_bytes(t, K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + p * pb;
        int ncols = N - p * PW < PW ? N - p * PW : PW;
        for (int m0 = 0; m0 < M; m0 += V_ROWS) {
            float *c = C + (size_t)m0 * ldc + p * PW;
            const float *s = sc + (size_t)m0 * nb * 2;
            const int8_t *qq = q + (size_t)m0 * K;
            switch (M - m0 < V_ROWS ? M - m0 : V_ROWS) {
            case 1: v_rows(t, 1, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 2: v_rows(t, 2, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 3: v_rows(t, 3, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 4: v_rows(t, 4, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 5: v_rows(t, 5, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 6: v_rows(t, 6, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            case 7: v_rows(t, 7, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            default: v_rows(t, 8, c, ldc, s, qq, nb, K, pp, ncols, alpha, beta); break;
            }
        }
    }
}

V512 static void v_q8(float *C, int ldc, const void *qa, const void *P, int M, int N, int K,
                      float alpha, float beta) {
    v_gemm(CAPMOE_DTYPE_Q8, C, ldc, qa, P, M, N, K, alpha, beta);
}
V512 static void v_q4(float *C, int ldc, const void *qa, const void *P, int M, int N, int K,
                      float alpha, float beta) {
    v_gemm(CAPMOE_DTYPE_Q4, C, ldc, qa, P, M, N, K, alpha, beta);
}

/* F8E4M3 with float32 activations, AVX-512F: 16 bytes -> 16 F16 -> 16 floats. */
#define F8_ROWS 6
#define F8T __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
F8T ALWAYS_INLINE __m512 f8_widen(const uint8_t *p) {
    __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 7);
    h = _mm256_add_epi16(h, _mm256_and_si256(h, _mm256_set1_epi16(0x4000)));
    return _mm512_cvtph_ps(h);
}

F8T ALWAYS_INLINE void f8_rows(int R, float *C, int ldc, const float *A, int lda, const char *pp,
                                int K, int ncols, float alpha, float beta) {
    const float *sc = (const float *)(const void *)pp;
    const uint8_t *d = (const uint8_t *)pp + f8_scale_bytes(K);
    __m512 out[F8_ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < F8_ROWS; r++) out[r] = _mm512_setzero_ps();
    for (int k0 = 0; k0 < K; k0 += CAPMOE_F8_BLOCK) {
        int k1 = k0 + CAPMOE_F8_BLOCK < K ? k0 + CAPMOE_F8_BLOCK : K;
        __m512 s0[F8_ROWS], s1[F8_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < F8_ROWS; r++) s0[r] = s1[r] = _mm512_setzero_ps();
        int k = k0;
        for (; k + 2 <= k1; k += 2) {
            const uint8_t *st = d + (size_t)(k / 2) * 2 * PW;
            _mm_prefetch((const char *)st + PF_BYTES, _MM_HINT_T1);
            __m512 w0 = f8_widen(st), w1 = f8_widen(st + PW);
#pragma GCC unroll 8
            for (int r = 0; r < F8_ROWS; r++) {
                if (r >= R) break;
                const float *a = A + (size_t)r * lda + k;
                s0[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), w0, s0[r]);
                s1[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), w1, s1[r]);
            }
        }
        if (k < k1) { /* odd K: the last input */
            __m512 w0 = f8_widen(d + (size_t)(k / 2) * 2 * PW);
#pragma GCC unroll 8
            for (int r = 0; r < F8_ROWS; r++) {
                if (r >= R) break;
                s0[r] = _mm512_fmadd_ps(_mm512_set1_ps(A[(size_t)r * lda + k]), w0, s0[r]);
            }
        }
        __m512 scl = _mm512_set1_ps(sc[k0 / CAPMOE_F8_BLOCK]);
#pragma GCC unroll 8
        for (int r = 0; r < F8_ROWS; r++) {
            if (r >= R) break;
            out[r] = _mm512_fmadd_ps(_mm512_add_ps(s0[r], s1[r]), scl, out[r]);
        }
    }
    __mmask16 mk = (__mmask16)(ncols >= PW ? 0xffffu : (1u << ncols) - 1u);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int r = 0; r < F8_ROWS; r++) {
        if (r >= R) break;
        float *c = C + (size_t)r * ldc;
        __m512 s = _mm512_mul_ps(va, out[r]);
        if (beta != 0.0f) s = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk, c), s);
        _mm512_mask_storeu_ps(c, mk, s);
    }
}

F8T static void v_f8(float *C, int ldc, const float *A, int lda, const void *P, int M, int N,
                      int K, float alpha, float beta) {
    size_t pb = capmoe_quant_panel_bytes(CAPMOE_DTYPE_F8E4M3, K);
    for (int p = 0; p * PW < N; p++) {
        const char *pp = (const char *)P + p * pb;
        int ncols = N - p * PW < PW ? N - p * PW : PW;
        for (int m0 = 0; m0 < M; m0 += F8_ROWS) {
            float *c = C + (size_t)m0 * ldc + p * PW;
            const float *a = A + (size_t)m0 * lda;
            switch (M - m0 < F8_ROWS ? M - m0 : F8_ROWS) {
            case 1: f8_rows(1, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 2: f8_rows(2, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 3: f8_rows(3, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 4: f8_rows(4, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            case 5: f8_rows(5, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            default: f8_rows(6, c, ldc, a, lda, pp, K, ncols, alpha, beta); break;
            }
        }
    }
}

static int have_vnni(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
static int have_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* ---- dispatch ------------------------------------------------------------------------ */

int capmoe_quant_gemm_path(int path, float *C, int ldc, const void *qa, const void *P,
                           capmoe_dtype t, int M, int N, int K, float alpha, float beta) {
    if (M <= 0 || N <= 0) return 0;
    int q8 = t == CAPMOE_DTYPE_Q8;
#ifdef QUANT_X86
    if (path == 2) {
        if (!have_vnni()) return -1;
        (q8 ? v_q8 : v_q4)(C, ldc, qa, P, M, N, K, alpha, beta);
        return 0;
    }
    if (path == 1) {
        if (!have_avx2()) return -1;
        (q8 ? a2_q8 : a2_q4)(C, ldc, qa, P, M, N, K, alpha, beta);
        return 0;
    }
#else
    (void)q8;
    if (path != 0) return -1;
#endif
    port_gemm(C, ldc, qa, P, t, M, N, K, alpha, beta);
    return 0;
}

void capmoe_quant_gemm(float *C, int ldc, const void *qa, const void *P, capmoe_dtype t, int M,
                       int N, int K, float alpha, float beta) {
#ifdef QUANT_X86
    int path = have_vnni() ? 2 : have_avx2() ? 1 : 0;
#else
    int path = 0;
#endif
    capmoe_quant_gemm_path(path, C, ldc, qa, P, t, M, N, K, alpha, beta);
}

void capmoe_f8_gemm(float *C, int ldc, const float *A, int lda, const void *P, int M, int N, int K,
                    float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
#ifdef QUANT_X86
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        v_f8(C, ldc, A, lda, P, M, N, K, alpha, beta);
        return;
    }
#endif
    port_f8(C, ldc, A, lda, P, M, N, K, alpha, beta);
}
