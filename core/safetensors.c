/* safetensors.c - mmap'd, validated reader (and a small writer) for the
 * Hugging Face safetensors format.
 *
 * File layout: u64 little-endian N, N bytes of JSON header, data area.
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [b, e]}
 * with offsets relative to the start of the data area (8 + N); the optional
 * "__metadata__" entry is a string->string map and is skipped.
 * Every header is validated when opened, so later accesses need no checks. */
#include "capmoe/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ULL
#define ST_MAX_JSON_INT 9007199254740992.0 /* 2^53: exact in a double */

typedef struct st_file {
    char *path;
    unsigned char *map;
    size_t size;
} st_file;

struct capmoe_st {
    st_file *files;
    int nfiles;
    capmoe_st_tensor *tensors;
    int n, cap;
    uint32_t *slots; /* hash table of tensor index + 1; 0 = empty */
    size_t nslots;   /* power of two */
    char *source;    /* the file or index opened, for messages */
};

/* ---------- dtypes ---------- */

typedef struct dtype_info {
    const char *name;
    capmoe_dtype dtype;
    size_t bits;
} dtype_info;

/* Every dtype of the safetensors specification (Rust crate `safetensors`). */
static const dtype_info DTYPES[] = {
    {"F32", CAPMOE_DTYPE_F32, 32},       {"F16", CAPMOE_DTYPE_F16, 16},
    {"BF16", CAPMOE_DTYPE_BF16, 16},     {"BOOL", CAPMOE_DTYPE_OTHER, 8},
    {"U8", CAPMOE_DTYPE_OTHER, 8},       {"I8", CAPMOE_DTYPE_OTHER, 8},
    {"I16", CAPMOE_DTYPE_OTHER, 16},     {"U16", CAPMOE_DTYPE_OTHER, 16},
    {"I32", CAPMOE_DTYPE_OTHER, 32},     {"U32", CAPMOE_DTYPE_OTHER, 32},
    {"I64", CAPMOE_DTYPE_OTHER, 64},     {"U64", CAPMOE_DTYPE_OTHER, 64},
    {"F64", CAPMOE_DTYPE_OTHER, 64},     {"F8_E4M3", CAPMOE_DTYPE_OTHER, 8},
    {"F8_E5M2", CAPMOE_DTYPE_OTHER, 8},  {"F8_E8M0", CAPMOE_DTYPE_OTHER, 8},
    {"C64", CAPMOE_DTYPE_OTHER, 64},     {"F4", CAPMOE_DTYPE_OTHER, 4},
    {"F6_E2M3", CAPMOE_DTYPE_OTHER, 6},  {"F6_E3M2", CAPMOE_DTYPE_OTHER, 6},
};

static const dtype_info *dtype_lookup(const char *s) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (strcmp(DTYPES[i].name, s) == 0) return &DTYPES[i];
    return NULL;
}

static const char *dtype_str(capmoe_dtype d) {
    switch (d) {
    case CAPMOE_DTYPE_F32: return "F32";
    case CAPMOE_DTYPE_F16: return "F16";
    case CAPMOE_DTYPE_BF16: return "BF16";
    default: return NULL;
    }
}

/* ---------- conversions ---------- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float capmoe_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

float capmoe_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {              /* inf / nan: keep the payload */
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {          /* normal */
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {          /* signed zero */
        u = sign;
    } else {                        /* subnormal: man * 2^-24, exact in f32 */
        int e = -1;
        do {                        /* normalise: shift until the implicit bit */
            man <<= 1;
            e++;
        } while ((man & 0x400u) == 0);
        man &= 0x3ffu;
        u = sign | ((uint32_t)(112 - e) << 23) | (man << 13);
    }
    return bits_f32(u);
}

uint16_t capmoe_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb; /* round to nearest, ties to even; may carry to inf */
    return (uint16_t)(u >> 16);
}

uint16_t capmoe_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* nan: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    int32_t exp = (int32_t)(a >> 23) - 127; /* unbiased */
    if (exp > 15) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    uint32_t man = (a & 0x7fffffu) | (a >= 0x00800000u ? 0x800000u : 0);
    if (a < 0x00800000u) exp = -126; /* f32 subnormal (far below f16 range) */
    /* Value = man * 2^(exp-23). Target: normal f16 has 10 fraction bits at
     * exponent exp; subnormal f16 has fixed exponent -14. */
    int shift;
    uint32_t base;
    if (exp >= -14) {
        shift = 13;
        base = (uint32_t)(exp + 15) << 10; /* biased exponent */
        man &= 0x7fffffu;                  /* implicit bit comes from base */
    } else {
        shift = 13 + (-14 - exp); /* subnormal: denormalise further */
        base = 0;
        if (shift > 24 + 1) return sign; /* far below half of the smallest */
    }
    uint32_t q = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    /* Adding q to base carries correctly into the exponent (and to inf). */
    return (uint16_t)(sign | (base + q));
}

/* ---------- helpers ---------- */

static void st_free_files(capmoe_st *st) {
    for (int i = 0; i < st->nfiles; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
}

void capmoe_st_close(capmoe_st *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    free(st->slots);
    free(st->source);
    st_free_files(st);
    free(st);
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Builds the hash table; fails (naming both places) on a duplicate name. */
static int st_build_index(capmoe_st *st, capmoe_error *err) {
    size_t ns = 16;
    while (ns < (size_t)st->n * 2) ns <<= 1;
    free(st->slots);
    st->slots = calloc(ns, sizeof *st->slots);
    if (!st->slots) return capmoe_set_error(err, "safetensors: out of memory");
    st->nslots = ns;
    for (int i = 0; i < st->n; i++) {
        const capmoe_st_tensor *t = &st->tensors[i];
        size_t s = hash_str(t->name) & (ns - 1);
        while (st->slots[s]) {
            const capmoe_st_tensor *o = &st->tensors[st->slots[s] - 1];
            if (strcmp(o->name, t->name) == 0) {
                if (strcmp(o->file, t->file) == 0)
                    return capmoe_set_error(err, "%s: tensor %s appears twice in the header",
                                            t->file, t->name);
                return capmoe_set_error(err, "%s: tensor %s is also in %s", t->file, t->name,
                                        o->file);
            }
            s = (s + 1) & (ns - 1);
        }
        st->slots[s] = (uint32_t)i + 1;
    }
    return 0;
}

const capmoe_st_tensor *capmoe_st_find(const capmoe_st *st, const char *name) {
    if (!st || !name || !st->slots) return NULL;
    size_t s = hash_str(name) & (st->nslots - 1);
    while (st->slots[s]) {
        const capmoe_st_tensor *t = &st->tensors[st->slots[s] - 1];
        if (strcmp(t->name, name) == 0) return t;
        s = (s + 1) & (st->nslots - 1);
    }
    return NULL;
}

int capmoe_st_count(const capmoe_st *st) { return st ? st->n : 0; }

const capmoe_st_tensor *capmoe_st_at(const capmoe_st *st, int i) {
    if (!st || i < 0 || i >= st->n) return NULL;
    return &st->tensors[i];
}

/* Reads a JSON number that must be a non-negative integer < 2^53. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > ST_MAX_JSON_INT || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

typedef struct span {
    uint64_t begin, end;
    int idx;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Maps PATH read-only and appends it to st->files. */
static int st_map_file(capmoe_st *st, const char *path, capmoe_error *err) {
    /* O_NONBLOCK: a FIFO must not block open; it is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return capmoe_set_error(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return capmoe_set_error(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return capmoe_set_error(err, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return capmoe_set_error(err, "%s: truncated safetensors file (%lld bytes, the header "
                                "length alone takes 8)", path, (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return capmoe_set_error(err, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return capmoe_set_error(err, "%s: cannot mmap: %s", path, strerror(e));
    st_file *nf = realloc(st->files, sizeof *nf * (size_t)(st->nfiles + 1));
    char *p = strdup(path);
    if (!nf || !p) {
        free(p);
        if (nf) st->files = nf;
        munmap(map, size);
        return capmoe_set_error(err, "%s: out of memory", path);
    }
    st->files = nf;
    st->files[st->nfiles].path = p;
    st->files[st->nfiles].map = map;
    st->files[st->nfiles].size = size;
    st->nfiles++;
    return 0;
}

static int st_push(capmoe_st *st, capmoe_st_tensor *t) {
    if (st->n == st->cap) {
        int nc = st->cap ? st->cap * 2 : 64;
        if (nc > 0x7fffffff / 2) return -1;
        capmoe_st_tensor *nt = realloc(st->tensors, sizeof *nt * (size_t)nc);
        if (!nt) return -1;
        st->tensors = nt;
        st->cap = nc;
    }
    st->tensors[st->n++] = *t;
    return 0;
}

/* Offset of the first byte that is not part of well-formed UTF-8 (no
 * overlong forms, surrogates or code points past U+10FFFF); -1 if none. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return (size_t)-1;
}

/* Parses and validates the header of file FI, appending its tensors. */
static int st_parse_header(capmoe_st *st, int fi, capmoe_error *err) {
    const st_file *f = &st->files[fi];
    const char *path = f->path;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->map[i];
    if (n > ST_MAX_HEADER)
        return capmoe_set_error(err, "%s: header length %llu exceeds the limit of %llu bytes",
                                path, (unsigned long long)n, ST_MAX_HEADER);
    if (n + 8 > f->size)
        return capmoe_set_error(err, "%s: truncated: header length %llu but the file has only "
                                "%zu bytes", path, (unsigned long long)n, f->size);
    if (n < 2)
        return capmoe_set_error(err, "%s: header too short (%llu bytes)", path,
                                (unsigned long long)n);
    /* Copy into a NUL-terminated buffer so the parser can never read past it. */
    char *text = malloc((size_t)n + 1);
    if (!text) return capmoe_set_error(err, "%s: out of memory", path);
    memcpy(text, f->map + 8, (size_t)n);
    text[n] = '\0';
    if (memchr(text, '\0', (size_t)n)) {
        free(text);
        return capmoe_set_error(err, "%s: header contains a NUL byte", path);
    }
    size_t bad = utf8_invalid_at((const unsigned char *)text, (size_t)n);
    if (bad != (size_t)-1) {
        free(text);
        return capmoe_set_error(err, "%s: header is not valid UTF-8 (byte %zu)", path, bad);
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n + 1, &end, 0);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        const char *ep = cJSON_GetErrorPtr();
        if (ep && ep >= text && ep <= text + n) at = (size_t)(ep - text);
        free(text);
        return capmoe_set_error(err, "%s: header is not valid JSON (near byte %zu of %llu)",
                                path, at, (unsigned long long)n);
    }
    for (const char *p = end; p && *p; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            free(text);
            return capmoe_set_error(err, "%s: trailing bytes after the header JSON", path);
        }
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return capmoe_set_error(err, "%s: header is not a JSON object", path);
    }
    const uint64_t data_len = f->size - 8 - n;
    const unsigned char *data = f->map + 8 + n;
    int first = st->n, rc = -1;
    span *spans = NULL;
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *name = e->string ? e->string : "";
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                capmoe_set_error(err, "%s: __metadata__ is not an object", path);
                goto out;
            }
            for (const cJSON *m = e->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    capmoe_set_error(err, "%s: __metadata__ entry %s is not a string", path,
                                     m->string);
                    goto out;
                }
            }
            continue;
        }
        if (!cJSON_IsObject(e)) {
            capmoe_set_error(err, "%s: tensor %s: entry is not an object", path, name);
            goto out;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(jd)) {
            capmoe_set_error(err, "%s: tensor %s: missing or non-string dtype", path, name);
            goto out;
        }
        const dtype_info *di = dtype_lookup(jd->valuestring);
        if (!di) {
            capmoe_set_error(err, "%s: tensor %s: unknown dtype '%.32s'", path, name,
                             jd->valuestring);
            goto out;
        }
        if (!cJSON_IsArray(js)) {
            capmoe_set_error(err, "%s: tensor %s: missing or non-array shape", path, name);
            goto out;
        }
        capmoe_st_tensor t;
        memset(&t, 0, sizeof t);
        t.file = path;
        snprintf(t.dtype_name, sizeof t.dtype_name, "%s", di->name);
        t.dtype = di->dtype;
        int nd = cJSON_GetArraySize(js);
        if (nd > CAPMOE_ST_MAX_DIMS) {
            capmoe_set_error(err, "%s: tensor %s: %d dimensions (at most %d supported)", path,
                             name, nd, CAPMOE_ST_MAX_DIMS);
            goto out;
        }
        t.ndim = nd;
        uint64_t numel = 1;
        int overflow = 0, k = 0, has_zero = 0;
        for (const cJSON *d = js->child; d; d = d->next, k++) {
            uint64_t v;
            if (json_uint(d, &v) != 0) {
                capmoe_set_error(err, "%s: tensor %s: shape entry %d is not a non-negative "
                                 "integer", path, name, k);
                goto out;
            }
            t.shape[k] = (int64_t)v;
            if (v == 0) has_zero = 1;
            else if (numel > UINT64_MAX / v) overflow = 1;
            else numel *= v;
        }
        uint64_t nbits = 0;
        if (has_zero) numel = 0, overflow = 0;
        if (overflow || numel > UINT64_MAX / di->bits) overflow = 1;
        else nbits = numel * di->bits;
        if (overflow) {
            capmoe_set_error(err, "%s: tensor %s: shape is too large", path, name);
            goto out;
        }
        if (nbits % 8 != 0) {
            capmoe_set_error(err, "%s: tensor %s: %s data of %llu elements is not a whole "
                             "number of bytes", path, name, di->name,
                             (unsigned long long)numel);
            goto out;
        }
        uint64_t b, en;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 ||
            json_uint(cJSON_GetArrayItem(jo, 0), &b) != 0 ||
            json_uint(cJSON_GetArrayItem(jo, 1), &en) != 0) {
            capmoe_set_error(err, "%s: tensor %s: data_offsets must be two non-negative "
                             "integers", path, name);
            goto out;
        }
        if (b > en) {
            capmoe_set_error(err, "%s: tensor %s: data_offsets [%llu, %llu] begin after end",
                             path, name, (unsigned long long)b, (unsigned long long)en);
            goto out;
        }
        if (en > data_len) {
            capmoe_set_error(err, "%s: tensor %s: data_offsets [%llu, %llu] past the end of "
                             "the data area (%llu bytes; file truncated?)", path, name,
                             (unsigned long long)b, (unsigned long long)en,
                             (unsigned long long)data_len);
            goto out;
        }
        if (en - b != nbits / 8) {
            char sh[256];
            fmt_shape(sh, sizeof sh, t.ndim, t.shape);
            capmoe_set_error(err, "%s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes "
                             "but %s %s needs %llu", path, name, (unsigned long long)b,
                             (unsigned long long)en, (unsigned long long)(en - b), di->name,
                             sh, (unsigned long long)(nbits / 8));
            goto out;
        }
        t.data = data + b;
        t.nbytes = (size_t)(en - b);
        t.name = strdup(name);
        if (!t.name || st_push(st, &t) != 0) {
            free((char *)t.name);
            capmoe_set_error(err, "%s: out of memory", path);
            goto out;
        }
    }
    /* Like the reference reader: sorted by offsets, the tensors must tile the
     * data area exactly (no overlap, no gap, nothing after the last one). */
    int cnt = st->n - first;
    spans = malloc(sizeof *spans * (size_t)(cnt ? cnt : 1));
    if (!spans) {
        capmoe_set_error(err, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < cnt; i++) {
        const capmoe_st_tensor *t = &st->tensors[first + i];
        spans[i].begin = (uint64_t)((const unsigned char *)t->data - data);
        spans[i].end = spans[i].begin + t->nbytes;
        spans[i].idx = first + i;
    }
    qsort(spans, (size_t)cnt, sizeof *spans, span_cmp);
    uint64_t expect = 0;
    for (int i = 0; i < cnt; i++) {
        const char *tn = st->tensors[spans[i].idx].name;
        if (spans[i].begin < expect) {
            capmoe_set_error(err, "%s: tensors %s and %s overlap in the data area", path,
                             st->tensors[spans[i - 1].idx].name, tn);
            goto out;
        }
        if (spans[i].begin > expect) {
            capmoe_set_error(err, "%s: tensor %s: data_offsets [%llu, %llu] leave a gap of %llu "
                             "bytes before it (tensors must be contiguous)", path, tn,
                             (unsigned long long)spans[i].begin,
                             (unsigned long long)spans[i].end,
                             (unsigned long long)(spans[i].begin - expect));
            goto out;
        }
        expect = spans[i].end;
    }
    if (expect != data_len) {
        capmoe_set_error(err, "%s: the data area has %llu bytes but the tensors cover %llu "
                         "(trailing bytes after the last tensor)", path,
                         (unsigned long long)data_len, (unsigned long long)expect);
        goto out;
    }
    rc = 0;
out:
    free(spans);
    cJSON_Delete(root);
    return rc;
}

/* ---------- opening ---------- */

int capmoe_st_open_file(capmoe_st **out, const char *path, capmoe_error *err) {
    *out = NULL;
    capmoe_st *st = calloc(1, sizeof *st);
    if (!st) return capmoe_set_error(err, "%s: out of memory", path);
    st->source = strdup(path);
    if (!st->source) {
        capmoe_st_close(st);
        return capmoe_set_error(err, "%s: out of memory", path);
    }
    if (st_map_file(st, path, err) != 0 || st_parse_header(st, 0, err) != 0 ||
        st_build_index(st, err) != 0) {
        capmoe_st_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

static int plain_file_name(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 &&
           strstr(s, "..") == NULL;
}

static int st_open_index(capmoe_st **out, const char *dir, const char *ipath,
                         capmoe_error *err) {
    size_t len = 0;
    char *text = capmoe_read_file(ipath, &len, err);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return capmoe_set_error(err, "%s: not valid JSON", ipath);
    int rc = -1;
    capmoe_st *st = NULL;
    char *spath = NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        capmoe_set_error(err, "%s: missing \"weight_map\" object", ipath);
        goto out;
    }
    if (!wm->child) {
        capmoe_set_error(err, "%s: \"weight_map\" is empty", ipath);
        goto out;
    }
    st = calloc(1, sizeof *st);
    if (!st || !(st->source = strdup(ipath))) {
        capmoe_set_error(err, "%s: out of memory", ipath);
        goto out;
    }
    /* Open each distinct shard once, in order of first appearance. */
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            capmoe_set_error(err, "%s: weight_map entry %s is not a string", ipath, e->string);
            goto out;
        }
        const char *shard = e->valuestring;
        if (!plain_file_name(shard)) {
            capmoe_set_error(err, "%s: weight_map entry %s names shard '%.200s', which is not "
                             "a plain file name", ipath, e->string, shard);
            goto out;
        }
        free(spath);
        spath = capmoe_path_join(dir, shard);
        if (!spath) {
            capmoe_set_error(err, "%s: out of memory", ipath);
            goto out;
        }
        int seen = 0;
        for (int i = 0; i < st->nfiles && !seen; i++) seen = strcmp(st->files[i].path, spath) == 0;
        if (seen) continue;
        capmoe_error me;
        if (st_map_file(st, spath, &me) != 0) { /* say which index named the shard */
            capmoe_set_error(err, "%s (shard listed in %s)", me.msg, ipath);
            goto out;
        }
        if (st_parse_header(st, st->nfiles - 1, err) != 0) goto out;
    }
    if (st_build_index(st, err) != 0) goto out;
    /* Every weight_map entry must be in the shard it names. */
    for (const cJSON *e = wm->child; e; e = e->next) {
        const capmoe_st_tensor *t = capmoe_st_find(st, e->string);
        free(spath);
        spath = capmoe_path_join(dir, e->valuestring);
        if (!spath) {
            capmoe_set_error(err, "%s: out of memory", ipath);
            goto out;
        }
        if (!t) {
            capmoe_set_error(err, "%s: tensor %s listed in %s is missing from the shard",
                             spath, e->string, ipath);
            goto out;
        }
        if (strcmp(t->file, spath) != 0) {
            capmoe_set_error(err, "%s: tensor %s listed in %s is missing from the shard (it is "
                             "in %s)", spath, e->string, ipath, t->file);
            goto out;
        }
    }
    rc = 0;
    *out = st;
    st = NULL;
out:
    free(spath);
    capmoe_st_close(st);
    cJSON_Delete(root);
    return rc;
}

int capmoe_st_open_dir(capmoe_st **out, const char *dir, capmoe_error *err) {
    *out = NULL;
    char *ipath = capmoe_path_join(dir, "model.safetensors.index.json");
    char *fpath = capmoe_path_join(dir, "model.safetensors");
    int rc;
    if (!ipath || !fpath) {
        rc = capmoe_set_error(err, "%s: out of memory", dir);
    } else if (access(ipath, F_OK) == 0) {
        rc = st_open_index(out, dir, ipath, err);
    } else if (access(fpath, F_OK) == 0) {
        rc = capmoe_st_open_file(out, fpath, err);
    } else {
        struct stat sb;
        if (stat(dir, &sb) != 0)
            rc = capmoe_set_error(err, "%s: cannot open model directory: %s", dir,
                                  strerror(errno));
        else
            rc = capmoe_set_error(err, "%s: no model.safetensors.index.json or "
                                  "model.safetensors in this directory", dir);
    }
    free(ipath);
    free(fpath);
    return rc;
}

/* ---------- access ---------- */

int capmoe_st_get_float(const capmoe_st *st, const char *name, int ndim, const int64_t *shape,
                        const capmoe_st_tensor **out, capmoe_error *err) {
    *out = NULL;
    const capmoe_st_tensor *t = capmoe_st_find(st, name);
    if (!t)
        return capmoe_set_error(err, "%s: tensor %s not found", st ? st->source : "(null)",
                                name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        fmt_shape(have, sizeof have, t->ndim, t->shape);
        fmt_shape(want, sizeof want, ndim, shape);
        return capmoe_set_error(err, "%s: tensor %s has shape %s, expected %s", t->file,
                                t->name, have, want);
    }
    if (t->dtype == CAPMOE_DTYPE_OTHER)
        return capmoe_set_error(err, "%s: tensor %s has dtype %s, expected a float (F32, F16 "
                                "or BF16)", t->file, t->name, t->dtype_name);
    *out = t;
    return 0;
}

int capmoe_st_get_f32(const capmoe_st *st, const char *name, int ndim, const int64_t *shape,
                      const float **data, float **owned, capmoe_error *err) {
    *data = NULL;
    *owned = NULL;
    const capmoe_st_tensor *t;
    if (capmoe_st_get_float(st, name, ndim, shape, &t, err) != 0) return -1;
    size_t n = t->nbytes / capmoe_dtype_size(t->dtype);
    if (t->dtype == CAPMOE_DTYPE_F32 && ((uintptr_t)t->data & 3u) == 0) {
        *data = (const float *)t->data;
        return 0;
    }
    float *buf = capmoe_malloc_array(n, sizeof *buf);
    if (!buf)
        return capmoe_set_error(err, "%s: tensor %s: out of memory (%zu floats)", t->file,
                                t->name, n);
    const unsigned char *src = t->data;
    if (t->dtype == CAPMOE_DTYPE_F32) {
        memcpy(buf, src, n * 4); /* little-endian host assumed throughout */
    } else if (t->dtype == CAPMOE_DTYPE_F16) {
        for (size_t i = 0; i < n; i++)
            buf[i] = capmoe_f16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
    } else {
        for (size_t i = 0; i < n; i++)
            buf[i] = capmoe_bf16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
    }
    *data = buf;
    *owned = buf;
    return 0;
}

/* ---------- writing ---------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + len + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

int capmoe_st_write_file(const char *path, const capmoe_st_write_tensor *t, int n,
                         capmoe_error *err) {
    if (n < 0 || (n > 0 && !t)) return capmoe_set_error(err, "%s: bad tensor list", path);
    sbuf hb = {0};
    uint64_t off = 0;
    uint64_t *sizes = capmoe_malloc_array((size_t)n, sizeof *sizes);
    if (!sizes) return capmoe_set_error(err, "%s: out of memory", path);
    sb_str(&hb, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        const char *dn = dtype_str(t[i].dtype);
        if (!t[i].name || !t[i].name[0] || strcmp(t[i].name, "__metadata__") == 0) {
            free(sizes);
            free(hb.p);
            return capmoe_set_error(err, "%s: tensor %d has an invalid name", path, i);
        }
        if (!dn) {
            free(sizes);
            free(hb.p);
            return capmoe_set_error(err, "%s: tensor %s: only F32, F16 and BF16 can be written",
                                    path, t[i].name);
        }
        if (t[i].ndim < 0 || t[i].ndim > CAPMOE_ST_MAX_DIMS) {
            free(sizes);
            free(hb.p);
            return capmoe_set_error(err, "%s: tensor %s: bad ndim %d", path, t[i].name,
                                    t[i].ndim);
        }
        uint64_t numel = 1;
        int bad = 0;
        for (int k = 0; k < t[i].ndim; k++) {
            int64_t d = t[i].shape[k];
            if (d < 0) bad = 1;
            else if (d != 0 && numel > (UINT64_MAX / 8) / (uint64_t)d) bad = 1;
            else numel *= (uint64_t)d;
        }
        uint64_t bytes = numel * capmoe_dtype_size(t[i].dtype);
        if (bad || bytes > (uint64_t)ST_MAX_JSON_INT - off) {
            free(sizes);
            free(hb.p);
            return capmoe_set_error(err, "%s: tensor %s: bad or too large shape", path,
                                    t[i].name);
        }
        if (bytes && !t[i].data) {
            free(sizes);
            free(hb.p);
            return capmoe_set_error(err, "%s: tensor %s: no data", path, t[i].name);
        }
        sizes[i] = bytes;
        char num[64];
        sb_str(&hb, ",");
        sb_json_string(&hb, t[i].name);
        sb_str(&hb, ":{\"dtype\":\"");
        sb_str(&hb, dn);
        sb_str(&hb, "\",\"shape\":[");
        for (int k = 0; k < t[i].ndim; k++) {
            snprintf(num, sizeof num, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
            sb_str(&hb, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + bytes));
        sb_str(&hb, num);
        off += bytes;
    }
    sb_str(&hb, "}");
    while (!hb.oom && hb.n % 8 != 0) sb_str(&hb, " ");
    if (hb.oom) {
        free(sizes);
        free(hb.p);
        return capmoe_set_error(err, "%s: out of memory", path);
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        free(sizes);
        free(hb.p);
        return capmoe_set_error(err, "%s: cannot create: %s", path, strerror(e));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(((uint64_t)hb.n >> (8 * i)) & 0xff);
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hb.p, 1, hb.n, f) == hb.n;
    for (int i = 0; ok && i < n; i++)
        if (sizes[i]) ok = fwrite(t[i].data, 1, (size_t)sizes[i], f) == (size_t)sizes[i];
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    free(sizes);
    free(hb.p);
    if (!ok) {
        unlink(path);
        return capmoe_set_error(err, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}
