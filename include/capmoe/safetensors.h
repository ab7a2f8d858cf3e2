/* safetensors.h - read-only access to Hugging Face safetensors checkpoints.
 *
 * A capmoe_st is a set of mmap'd files: one model.safetensors, or the shards
 * listed in model.safetensors.index.json. Headers are validated when opened
 * (offsets inside the file, no overlap, sizes consistent with dtype*shape,
 * index entries present in their shard). Tensor data stay in the mmap. */
#ifndef CAPMOE_SAFETENSORS_H
#define CAPMOE_SAFETENSORS_H

#include "capmoe/common.h"

typedef enum capmoe_dtype {
    CAPMOE_DTYPE_F32 = 0,
    CAPMOE_DTYPE_F16,
    CAPMOE_DTYPE_BF16,
    CAPMOE_DTYPE_OTHER, /* legal in a file, refused where a float is needed */
    CAPMOE_DTYPE_F8E4M3, /* safetensors F8_E4M3: only with block scales (quant.h) */
    CAPMOE_DTYPE_Q8,     /* quantized at load, panel layout only (quant.h) */
    CAPMOE_DTYPE_Q4      /* quantized at load, panel layout only (quant.h) */
} capmoe_dtype;

/* Bytes per element of a float dtype (F32, F16, BF16) and of F8_E4M3. The
 * quantized panel types have no whole element size: their matrices' sizes
 * come from capmoe_panel_matrix_bytes (1 is returned). */
static inline size_t capmoe_dtype_size(capmoe_dtype t) {
    return t == CAPMOE_DTYPE_F32 ? 4 : t >= CAPMOE_DTYPE_F8E4M3 ? 1 : 2;
}

#define CAPMOE_ST_MAX_DIMS 8

typedef struct capmoe_st_tensor {
    const char *name;      /* owned by the capmoe_st */
    const char *file;      /* path of the file holding it; owned by the capmoe_st */
    char dtype_name[16];   /* as written in the header, e.g. "BF16" */
    capmoe_dtype dtype;
    int ndim;
    int64_t shape[CAPMOE_ST_MAX_DIMS];
    const void *data;      /* points into the mmap; may be unaligned */
    size_t nbytes;
} capmoe_st_tensor;

typedef struct capmoe_st capmoe_st;

/* Opens DIR/model.safetensors.index.json if present, else DIR/model.safetensors.
 * On success *out owns every mapping; free with capmoe_st_close. */
int capmoe_st_open_dir(capmoe_st **out, const char *dir, capmoe_error *err);
/* Opens one file. */
int capmoe_st_open_file(capmoe_st **out, const char *path, capmoe_error *err);
void capmoe_st_close(capmoe_st *st);

/* NULL when absent. The pointer lives as long as st. */
const capmoe_st_tensor *capmoe_st_find(const capmoe_st *st, const char *name);
int capmoe_st_count(const capmoe_st *st);
const capmoe_st_tensor *capmoe_st_at(const capmoe_st *st, int i);

/* Finds tensor NAME and checks it has exactly the given shape (ndim dims) and
 * a float dtype (F32, F16, BF16); *out points into st. Errors name the file
 * and tensor: missing, wrong dtype, wrong shape. */
int capmoe_st_get_float(const capmoe_st *st, const char *name, int ndim, const int64_t *shape,
                        const capmoe_st_tensor **out, capmoe_error *err);

/* Gets tensor NAME as float32 with exactly the given shape (ndim dims).
 * F32 data that is 4-byte aligned is returned in place (*owned = NULL);
 * anything else (F16, BF16, unaligned F32) is converted into a malloc'd buffer
 * returned both in *data and *owned, which the caller frees.
 * Errors name the file and tensor: missing, wrong dtype, wrong shape. */
int capmoe_st_get_f32(const capmoe_st *st, const char *name, int ndim,
                      const int64_t *shape, const float **data, float **owned,
                      capmoe_error *err);

/* Conversions used by the loader and the tests. */
float capmoe_f16_to_f32(uint16_t h);
float capmoe_bf16_to_f32(uint16_t h);
uint16_t capmoe_f32_to_bf16(float f); /* round to nearest even */
uint16_t capmoe_f32_to_f16(float f);  /* round to nearest even */

/* Writes a single safetensors file (used by `capmoe synth` and tests).
 * names/dtypes/shapes/data describe n tensors; data is in the given dtype. */
typedef struct capmoe_st_write_tensor {
    const char *name;
    capmoe_dtype dtype; /* F32, F16 or BF16 */
    int ndim;
    int64_t shape[CAPMOE_ST_MAX_DIMS];
    const void *data;
} capmoe_st_write_tensor;
int capmoe_st_write_file(const char *path, const capmoe_st_write_tensor *t, int n,
                         capmoe_error *err);

#endif
