/* fuzz_safetensors.c - a safetensors file (core/safetensors.c): the 8-byte
 * header length, the JSON header (dtypes, shapes, data_offsets, metadata),
 * offsets against the file size, overlaps. Input: the whole file.
 * Invariants: every tensor of a file that opens lies inside the file with
 * nbytes == dtype size x shape product, and converts to float32. */
#include "capmoe/safetensors.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    capmoe_st *st = NULL;
    capmoe_error err;
    int rc = capmoe_st_open_file(&st, path, &err);
    close(fd);
    if (rc != 0) {
        FUZZ_CHECK(err.msg[0] != '\0', "error without a message");
        return 0;
    }
    int n = capmoe_st_count(st);
    for (int i = 0; i < n; i++) {
        const capmoe_st_tensor *t = capmoe_st_at(st, i);
        FUZZ_CHECK(t && t->name, "tensor %d", i);
        FUZZ_CHECK(capmoe_st_find(st, t->name) != NULL, "find %s", t->name);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= CAPMOE_ST_MAX_DIMS, "ndim %d", t->ndim);
        if (t->dtype == CAPMOE_DTYPE_OTHER) continue;
        unsigned __int128 elems = 1;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "negative dim");
            elems *= (unsigned __int128)t->shape[d];
        }
        FUZZ_CHECK(elems * capmoe_dtype_size(t->dtype) == t->nbytes, "%s: nbytes %zu", t->name,
                   t->nbytes);
        FUZZ_CHECK(t->nbytes <= size, "%s: %zu bytes in a %zu-byte file", t->name, t->nbytes, size);
        if (t->nbytes > (1u << 20)) continue;
        const float *f = NULL;
        float *owned = NULL;
        FUZZ_CHECK(capmoe_st_get_f32(st, t->name, t->ndim, t->shape, &f, &owned, &err) == 0, "%s",
                   err.msg);
        float sum = 0; /* reads every element: ASan sees any read outside the file */
        for (size_t k = 0; k < (size_t)elems; k++) sum += f[k];
        FUZZ_CHECK(sum == sum || sum != sum, "unreachable");
        free(owned);
        int64_t wrong[CAPMOE_ST_MAX_DIMS + 1] = {0};
        memcpy(wrong, t->shape, sizeof t->shape);
        wrong[0] += 1;
        FUZZ_CHECK(capmoe_st_get_float(st, t->name, t->ndim ? t->ndim : 1, wrong, &t, &err) != 0 ||
                       t->ndim == 0,
                   "a wrong shape was accepted");
    }
    FUZZ_CHECK(capmoe_st_find(st, "") == NULL || n > 0, "find on empty file");
    capmoe_st_close(st);
    return 0;
}
