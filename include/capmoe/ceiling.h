/* ceiling.h - the hardware's own ceilings, measured with small hand-written
 * loops (not with the library under test): the float32 FMA rate, the BF16
 * rate of AVX512-BF16 dot products and of AMX-BF16 tiles, and a STREAM-like
 * triad's memory bandwidth. Each runs on `threads` threads at once (a pool
 * made for the call) and returns the best of 3 runs; -1 when the CPU (or the
 * operating system: AMX needs arch_prctl(ARCH_REQ_XCOMP_PERM)) lacks the
 * instructions or memory runs out. */
#ifndef CAPMOE_CEILING_H
#define CAPMOE_CEILING_H

#include <stddef.h>

double capmoe_peak_fp32_gflops(int threads);     /* 2 flops per FMA lane */
double capmoe_peak_bf16_dot_gflops(int threads); /* VDPBF16PS: 2 flops per BF16 pair */
double capmoe_peak_amx_bf16_gflops(int threads); /* TDPBF16PS 16x16x32: 16384 flops */
/* a[i] = b[i] + s * c[i] over float arrays of `bytes` each: (3 x bytes) / s. */
double capmoe_stream_triad_gbs(int threads, size_t bytes);

#endif
