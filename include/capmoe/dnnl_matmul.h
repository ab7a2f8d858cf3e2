/* dnnl_matmul.h - matrix products through oneDNN's matmul (BF16 on AMX
 * tiles or AVX512-BF16, float32 accumulation and output), for --compute bf16.
 *
 * The library (libdnnl, Debian's 2.6) runs its own OpenMP threads; a product
 * runs on `threads` of them, called from one thread at a time per context. */
#ifndef CAPMOE_DNNL_MATMUL_H
#define CAPMOE_DNNL_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"

/* oneDNN's version, threading runtime and the instruction set its kernels
 * use here: "oneDNN 2.6.3 (OpenMP), ISA avx512_core_bf16". */
void capmoe_dnnl_describe(char *buf, size_t n);

#endif
