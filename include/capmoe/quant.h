/* quant.h - quantized weight matrices in panel layout (panel.h's idea:
 * panels of CAPMOE_PANEL_COLS = 16 consecutive outputs, streamed once per
 * product), and the products that read them.
 *
 * Q8 and Q4 are made at load from any float weights (--weights q8|q4):
 *   - Q8: blocks of 32 inputs of one output, w = d * q with q an int8 in
 *     [-127, 127] and d = max|w| / 127 (llama.cpp's Q8_0); d is stored as
 *     F16: 8.5 bits per weight.
 *   - Q4: blocks of 32 inputs, w = d * q + m with q in [0, 15], m = min(w)
 *     and d = (max(w) - min(w)) / 15 (llama.cpp's Q4_1: a scale and a
 *     minimum); d and m as F16: 5 bits per weight. A minimum rather than
 *     Q4_0's fixed offset (w = d * (q - 8)) because expert weights are not
 *     symmetric per block: the minimum uses all 16 levels over [min, max]
 *     where the offset form spends levels on the side a block does not
 *     reach, and it costs nothing in the kernel (the m term needs only the
 *     sum of each activation block, computed once per row).
 * Panel p, block b (inputs 32b .. 32b + 31) of a Q8 matrix: 16 F16 scales
 * (output 16p + c at c), then 8 steps of 64 bytes; step s holds, for output
 * c, bytes 4c .. 4c + 3 = q + 128 (as unsigned) of inputs 32b + 4s .. +3.
 * Q4: 16 F16 scales, 16 F16 minimums, then 4 pairs of 64 bytes; byte 4c + i
 * of pair t holds input 32b + 8t + i of output c in its low nibble and
 * input 32b + 8t + 4 + i in its high nibble. Outputs past N are zero.
 * That is the operand order of AVX-512 VNNI's vpdpbusd (unsigned bytes of
 * 16 outputs times 4 signed activation bytes broadcast): one instruction
 * per 64 bytes of weights and row.
 *
 * Products: every row of A is quantized per block of 32 to int8 (d_a =
 * max|a| / 127, a = d_a * q_a) with the sum of its q_a; each block's dot
 * product is an exact int32 sum, then C += (d_w * d_a) * sum (+ m * d_a *
 * sum q_a for Q4) in float32, block after block: every path (VNNI, AVX2,
 * portable) computes the same integers and the same float operations in the
 * same order, so results do not depend on the CPU or on the batch.
 *
 * F8E4M3: checkpoints published in FP8 (safetensors F8_E4M3 weights with a
 * float32 weight_scale_inv per block of 128 outputs x 128 inputs) keep
 * their byte per weight: panel p holds ceil(K / 128) float32 scales (the
 * checkpoint's scale of the panel's outputs times 256, padded to 64 bytes),
 * then steps of two inputs: 16 bytes of input 2j, 16 of input 2j + 1 (an
 * odd K's last step padded with zeros). Each byte widens exactly to float32
 * in the kernel (through F16: e4m3 -> F16 bits is a shift, worth 2^-8); the
 * activations stay float32; C += scale * (sum over the block). */
#ifndef CAPMOE_QUANT_H
#define CAPMOE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"
#include "capmoe/safetensors.h"

#define CAPMOE_QBLOCK 32      /* inputs per block of Q8 and Q4 */
#define CAPMOE_F8_BLOCK 128   /* inputs per scale of F8E4M3 panels */

/* --weights: what expert matrices are turned into at load. */
typedef enum capmoe_weights {
    CAPMOE_WEIGHTS_STORED = 0, /* as in the checkpoint (bf16 for the usual ones) */
    CAPMOE_WEIGHTS_Q8,
    CAPMOE_WEIGHTS_Q4
} capmoe_weights;

/* "bf16" (or "stored"), "q8", "q4" -> *w; -1 for anything else. */
int capmoe_weights_parse(const char *s, capmoe_weights *w);
const char *capmoe_weights_name(capmoe_weights w);

/* --quantize: which matrices --weights q8|q4 turns into Q8/Q4. EXPERTS: the
 * routed experts only (the first MoE layer then routes exactly as the
 * checkpoint does). ALL: also the attention projections (q, k, v, o; latent
 * attention keeps its dtype), shared experts, dense MLP layers and lm_head,
 * as llama.cpp's formats do: a decode step then reads about half the bytes
 * (or less) of EXPERTS' attention and lm_head. The router stays exact. */
typedef enum capmoe_quant_scope { CAPMOE_QUANTIZE_EXPERTS = 0, CAPMOE_QUANTIZE_ALL } capmoe_quant_scope;
/* "experts", "all" -> *q; -1 for anything else. */
int capmoe_quant_scope_parse(const char *s, capmoe_quant_scope *q);
const char *capmoe_quant_scope_name(capmoe_quant_scope q);

static inline int capmoe_dtype_is_q(capmoe_dtype t) {
    return t == CAPMOE_DTYPE_Q8 || t == CAPMOE_DTYPE_Q4;
}

/* Bytes of one panel of K inputs (Q8 and Q4: K a multiple of 32). */
size_t capmoe_quant_panel_bytes(capmoe_dtype t, int K);

/* Q8/Q4: quantizes rows [0, N) of the float32 matrix W (row stride ldw) of
 * K inputs (a multiple of 32) into panels starting at dst (a whole number
 * of panels: outputs past N are written as zeros). Deterministic. */
void capmoe_quant_pack(void *dst, capmoe_dtype t, const float *W, size_t ldw, int N, int K);

/* F8E4M3: rows [0, N) of the row-major FP8 matrix W (K inputs, row stride
 * ldw bytes) with its scales S (row-major [ceil(N/bn), ceil(K/bk)], the
 * checkpoint's weight_scale_inv; bn a multiple of 16, bk of 128), stored as
 * panels at dst; the bytes are copied, never converted. */
void capmoe_f8_pack(void *dst, const uint8_t *W, size_t ldw, const float *S, int bn, int bk,
                    int N, int K);
/* The float32 value of an e4m3 byte (exact; 0x7f and 0xff, NaN in e4m3fn,
 * give NaN). */
float capmoe_f8_to_f32(uint8_t b);
/* dst[i*K + k] = W[row0 + i][k] * S[(row0 + i)/bn][k/bk] (float32, one
 * rounding) for i < N, W and S being the whole matrix's: a dequantized copy
 * of rows [row0, row0 + N), for the paths that need float32 rows. */
void capmoe_f8_dequant(float *dst, const uint8_t *W, size_t ldw, const float *S, int bn, int bk,
                       int row0, int N, int K);

/* Activations of an int8 product: M rows of K (a multiple of 32) quantized
 * per block. Buffer of capmoe_qact_bytes(M, K) bytes (caller-owned, 64-byte
 * aligned for speed only): per row and block two floats (d_a, d_a * sum
 * q_a), then the int8 values, row after row. */
size_t capmoe_qact_bytes(int M, int K);
void capmoe_qact_quantize(void *buf, const float *A, int lda, int M, int K);

/* C[i*ldc + j] = alpha * sum_k a[i][k] * W[j][k] + beta * C[i*ldc + j] for
 * i < M, j < N, where a is the quantized activation buffer qa of M rows of
 * K and P is W's first panel (Q8 or Q4). beta == 0 ignores C's contents. */
void capmoe_quant_gemm(float *C, int ldc, const void *qa, const void *P, capmoe_dtype t, int M,
                       int N, int K, float alpha, float beta);
/* The same on a chosen path (tests): 2 AVX-512 VNNI, 1 AVX2, 0 portable;
 * returns -1 (and computes nothing) when the CPU lacks it. */
int capmoe_quant_gemm_path(int path, float *C, int ldc, const void *qa, const void *P,
                           capmoe_dtype t, int M, int N, int K, float alpha, float beta);

/* C = alpha * A W^T + beta * C with float32 A (lda) and W in F8E4M3 panels. */
void capmoe_f8_gemm(float *C, int ldc, const float *A, int lda, const void *P, int M, int N, int K,
                    float alpha, float beta);
/* dst[k*ldd + 16*i + c] = float32 value (byte times scale) of output 16i + c,
 * input k, of the n_panels F8E4M3 panels at P. */
void capmoe_f8_unpack(float *dst, size_t ldd, const void *P, int K, int n_panels);

#endif
