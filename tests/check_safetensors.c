/* check_safetensors.c - reader, writer, conversions and every refusal of
 * core/safetensors.c. Test files are generated at run time in a temp dir. */
#include "capmoe/safetensors.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ck_assert reports each pass to the parent process; loops use this. */
#define FAST_CHECK(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                 \
    } while (0)

static char tmpdir[256];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/capmoe-st-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_rf(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void teardown(void) { rm_rf(tmpdir); }

static char *tpath(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void write_text(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

/* A raw safetensors file: header length (as given), header text, data. */
static void write_raw_n(const char *path, uint64_t n, const char *header, const void *data,
                        size_t dlen) {
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + dlen + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (dlen) memcpy(buf + 8 + hl, data, dlen);
    write_bytes(path, buf, 8 + hl + dlen);
    free(buf);
}

static void write_raw(const char *path, const char *header, const void *data, size_t dlen) {
    write_raw_n(path, strlen(header), header, data, dlen);
}

/* Opens PATH expecting failure; checks the message names the file and has WHAT. */
static void expect_open_fail(const char *path, const char *what) {
    capmoe_st *st = (capmoe_st *)1;
    capmoe_error err = {{0}};
    int rc = capmoe_st_open_file(&st, path, &err);
    ck_assert_msg(rc == -1, "open of %s succeeded, expected '%s'", path, what);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message lacks path: %s", err.msg);
    ck_assert_msg(strstr(err.msg, what) != NULL, "message '%s' lacks '%s'", err.msg, what);
}

static void expect_dir_fail(const char *dir, const char *what1, const char *what2) {
    capmoe_st *st = (capmoe_st *)1;
    capmoe_error err = {{0}};
    ck_assert_int_eq(capmoe_st_open_dir(&st, dir, &err), -1);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err.msg, what1) != NULL, "message '%s' lacks '%s'", err.msg, what1);
    if (what2)
        ck_assert_msg(strstr(err.msg, what2) != NULL, "message '%s' lacks '%s'", err.msg, what2);
}

/* ---------- conversions ---------- */

static float f16_reference(uint16_t h) { /* direct from the IEEE definition */
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -24);
    else v = ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

START_TEST(test_f16_to_f32_exhaustive) {
    for (uint32_t h = 0; h < 65536; h++) {
        float got = capmoe_f16_to_f32((uint16_t)h), want = f16_reference((uint16_t)h);
        if (isnan(want)) {
            FAST_CHECK(isnan(got) && (signbit(got) != 0) == ((h & 0x8000) != 0), "h=%04x", h);
        } else {
            FAST_CHECK(fbits(got) == fbits(want), "h=%04x got %a want %a", h, got, want);
        }
        /* round trip is exact for every non-nan value */
        uint16_t back = capmoe_f32_to_f16(got);
        if (!isnan(want)) FAST_CHECK(back == h, "h=%04x back %04x", h, back);
        else FAST_CHECK(((back >> 10) & 31) == 31 && (back & 1023) != 0, "h=%04x", h);
    }
    ck_assert_float_eq(capmoe_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(capmoe_f16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(capmoe_f16_to_f32(0x7bff), 65504.0f);
    ck_assert_float_eq(capmoe_f16_to_f32(0x0001), ldexpf(1.0f, -24));
    ck_assert_float_eq(capmoe_f16_to_f32(0x03ff), ldexpf(1023.0f, -24));
    ck_assert(isinf(capmoe_f16_to_f32(0xfc00)) && capmoe_f16_to_f32(0xfc00) < 0);
    ck_assert(signbit(capmoe_f16_to_f32(0x8000)) && capmoe_f16_to_f32(0x8000) == 0.0f);
}
END_TEST

START_TEST(test_f32_to_f16_rounding) {
    /* ties to even, overflow, subnormals */
    ck_assert_uint_eq(capmoe_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);      /* tie -> even */
    ck_assert_uint_eq(capmoe_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);  /* tie -> even */
    ck_assert_uint_eq(capmoe_f32_to_f16(1.0f + ldexpf(1.5f, -11)), 0x3c01);   /* above tie */
    ck_assert_uint_eq(capmoe_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(capmoe_f32_to_f16(65519.99f), 0x7bff);
    ck_assert_uint_eq(capmoe_f32_to_f16(65520.0f), 0x7c00);                   /* tie -> inf */
    ck_assert_uint_eq(capmoe_f32_to_f16(1e10f), 0x7c00);
    ck_assert_uint_eq(capmoe_f32_to_f16(-1e10f), 0xfc00);
    ck_assert_uint_eq(capmoe_f32_to_f16(ldexpf(1, -25)), 0x0000);             /* tie -> 0 */
    ck_assert_uint_eq(capmoe_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    ck_assert_uint_eq(capmoe_f32_to_f16(ldexpf(3, -25)), 0x0002);             /* tie -> even */
    ck_assert_uint_eq(capmoe_f32_to_f16(ldexpf(2047, -25)), 0x0400);          /* to normal */
    ck_assert_uint_eq(capmoe_f32_to_f16(-ldexpf(1, -30)), 0x8000);
    ck_assert_uint_eq(capmoe_f32_to_f16(bitsf(0x00000001)), 0x0000);          /* f32 subnormal */
    ck_assert_uint_eq(capmoe_f32_to_f16(INFINITY), 0x7c00);
    uint16_t qn = capmoe_f32_to_f16(NAN);
    ck_assert(((qn >> 10) & 31) == 31 && (qn & 0x200));
    /* a signalling nan whose payload sits only in the low bits stays a nan */
    qn = capmoe_f32_to_f16(bitsf(0x7f800001));
    ck_assert(((qn >> 10) & 31) == 31 && (qn & 1023) != 0);
#ifdef __FLT16_MANT_DIG__
    /* Against the compiler's own float -> _Float16 conversion (round to
     * nearest even) on a spread of bit patterns. */
    uint32_t x = 12345;
    for (int i = 0; i < 300000; i++) {
        x = x * 1664525u + 1013904223u;
        uint32_t u = x;
        if (i % 3 == 0) u = (x & 0x80000000u) | (0x33000000u + (x % 0x0c000000u)); /* near range */
        float f = bitsf(u);
        if (isnan(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, 2);
        FAST_CHECK(capmoe_f32_to_f16(f) == want, "f=%a (%08x): got %04x want %04x", f, u,
                      capmoe_f32_to_f16(f), want);
    }
#endif
}
END_TEST

/* bf16 reference: the nearer of the two truncations, ties to even. */
static uint16_t bf16_reference(float f) {
    uint32_t u = fbits(f);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double dl = fabs((double)bitsf(lo) - f);
    double dh = isinf(bitsf(hi)) || isnan(bitsf(hi)) ? INFINITY : fabs((double)bitsf(hi) - f);
    if ((hi & 0x7fffffffu) == 0x7f800000u) { /* rounding up reaches inf: compare with the
                                                  unrepresentable 2^128 */
        dh = fabs(ldexp(1.0, 128) - fabs((double)f));
    }
    if (dl < dh) return (uint16_t)(lo >> 16);
    if (dh < dl) return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

START_TEST(test_bf16) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = capmoe_bf16_to_f32((uint16_t)h);
        FAST_CHECK(fbits(f) == h << 16, "h=%04x", h);
        if (!isnan(f)) FAST_CHECK(capmoe_f32_to_bf16(f) == h, "h=%04x", h);
        else FAST_CHECK(isnan(capmoe_bf16_to_f32(capmoe_f32_to_bf16(f))), "h=%04x", h);
    }
    ck_assert_uint_eq(capmoe_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(capmoe_f32_to_bf16(bitsf(0x3f808000)), 0x3f80); /* tie -> even */
    ck_assert_uint_eq(capmoe_f32_to_bf16(bitsf(0x3f818000)), 0x3f82); /* tie -> even */
    ck_assert_uint_eq(capmoe_f32_to_bf16(bitsf(0x3f808001)), 0x3f81);
    ck_assert_uint_eq(capmoe_f32_to_bf16(bitsf(0x7f7fffff)), 0x7f80); /* overflow -> inf */
    ck_assert(isnan(capmoe_bf16_to_f32(capmoe_f32_to_bf16(bitsf(0x7f800001)))));
    uint32_t x = 777;
    for (int i = 0; i < 300000; i++) {
        x = x * 1664525u + 1013904223u;
        float f = bitsf(x);
        if (isnan(f)) continue;
        FAST_CHECK(capmoe_f32_to_bf16(f) == bf16_reference(f), "%08x", x);
    }
}
END_TEST

/* ---------- write / read ---------- */

static const float A[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};

static void write_sample(const char *path, uint16_t *h16, uint16_t *b16) {
    static const float hvals[4] = {0.5f, -1.0f, 65504.0f, 6e-8f};
    static const float bvals[4] = {1.0f, -3.0f, 0.1f, 1e30f};
    for (int i = 0; i < 4; i++) {
        h16[i] = capmoe_f32_to_f16(hvals[i]);
        b16[i] = capmoe_f32_to_bf16(bvals[i]);
    }
    static const float scalar = 42.0f;
    capmoe_st_write_tensor t[5] = {
        {"half", CAPMOE_DTYPE_F16, 1, {4}, h16},
        {"a", CAPMOE_DTYPE_F32, 2, {2, 3}, A},
        {"brain", CAPMOE_DTYPE_BF16, 2, {2, 2}, b16},
        {"scalar", CAPMOE_DTYPE_F32, 0, {0}, &scalar},
        {"empty", CAPMOE_DTYPE_F32, 2, {0, 5}, NULL},
    };
    capmoe_error err;
    ck_assert_msg(capmoe_st_write_file(path, t, 5, &err) == 0, "%s", err.msg);
}

START_TEST(test_roundtrip) {
    uint16_t h16[4], b16[4];
    const char *p = tpath("model.safetensors");
    write_sample(p, h16, b16);

    /* The file layout itself: 8-byte aligned header, __metadata__. */
    size_t len;
    capmoe_error err;
    char *raw = capmoe_read_file(p, &len, &err);
    ck_assert_ptr_nonnull(raw);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | (unsigned char)raw[i];
    ck_assert_uint_eq(n % 8, 0);
    ck_assert_uint_eq(len, 8 + n + 8 + 24 + 8 + 4 + 0);
    cJSON *h = cJSON_ParseWithLength(raw + 8, n);
    ck_assert_ptr_nonnull(h);
    cJSON *md = cJSON_GetObjectItemCaseSensitive(h, "__metadata__");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(md, "format")->valuestring, "pt");
    cJSON_Delete(h);
    free(raw);

    capmoe_st *st;
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), 5);
    ck_assert_str_eq(capmoe_st_at(st, 0)->name, "half");
    ck_assert_str_eq(capmoe_st_at(st, 4)->name, "empty");
    ck_assert_ptr_null(capmoe_st_at(st, 5));
    ck_assert_ptr_null(capmoe_st_at(st, -1));
    ck_assert_ptr_null(capmoe_st_find(st, "nope"));

    const capmoe_st_tensor *t = capmoe_st_find(st, "a");
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->file, p);
    ck_assert_str_eq(t->dtype_name, "F32");
    ck_assert_int_eq(t->dtype, CAPMOE_DTYPE_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->nbytes, 24);

    const float *d;
    float *owned;
    int64_t sh[2] = {2, 3};
    ck_assert_msg(capmoe_st_get_f32(st, "a", 2, sh, &d, &owned, &err) == 0, "%s", err.msg);
    ck_assert_ptr_null(owned); /* aligned F32: in place */
    ck_assert_ptr_eq(d, t->data);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(d[i], A[i]);

    int64_t s4[1] = {4};
    ck_assert_msg(capmoe_st_get_f32(st, "half", 1, s4, &d, &owned, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(owned);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(d[i], capmoe_f16_to_f32(h16[i]));
    ck_assert_float_eq(d[2], 65504.0f);
    free(owned);

    int64_t s22[2] = {2, 2};
    ck_assert_msg(capmoe_st_get_f32(st, "brain", 2, s22, &d, &owned, &err) == 0, "%s", err.msg);
    ck_assert_str_eq(capmoe_st_find(st, "brain")->dtype_name, "BF16");
    for (int i = 0; i < 4; i++) ck_assert_float_eq(d[i], capmoe_bf16_to_f32(b16[i]));
    ck_assert_float_eq(d[0], 1.0f);
    ck_assert_float_eq(d[1], -3.0f);
    free(owned);

    ck_assert_msg(capmoe_st_get_f32(st, "scalar", 0, NULL, &d, &owned, &err) == 0, "%s",
                  err.msg);
    ck_assert_float_eq(d[0], 42.0f);
    free(owned);

    int64_t s05[2] = {0, 5};
    ck_assert_msg(capmoe_st_get_f32(st, "empty", 2, s05, &d, &owned, &err) == 0, "%s", err.msg);
    free(owned);
    ck_assert_uint_eq(capmoe_st_find(st, "empty")->nbytes, 0);

    /* errors name file and tensor */
    int64_t bad[2] = {3, 2};
    ck_assert_int_eq(capmoe_st_get_f32(st, "a", 2, bad, &d, &owned, &err), -1);
    ck_assert_ptr_null(d);
    ck_assert_ptr_null(owned);
    char want[1024];
    snprintf(want, sizeof want, "%s: tensor a has shape [2, 3], expected [3, 2]", p);
    ck_assert_str_eq(err.msg, want);
    ck_assert_int_eq(capmoe_st_get_f32(st, "a", 1, s4, &d, &owned, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "has shape [2, 3], expected [4]"));
    ck_assert_int_eq(capmoe_st_get_f32(st, "missing.weight", 1, s4, &d, &owned, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor missing.weight not found"));
    ck_assert_ptr_nonnull(strstr(err.msg, p));
    capmoe_st_close(st);
    capmoe_st_close(NULL);
}
END_TEST

START_TEST(test_escaped_names_and_write_errors) {
    const char *p = tpath("esc.safetensors");
    float v[2] = {1, 2};
    capmoe_st_write_tensor t[2] = {{"we\"ird\\name\n\x01", CAPMOE_DTYPE_F32, 1, {2}, v},
                                   {"\xc3\xa9t\xc3\xa9", CAPMOE_DTYPE_F32, 1, {1}, v}};
    capmoe_error err;
    ck_assert_msg(capmoe_st_write_file(p, t, 2, &err) == 0, "%s", err.msg);
    capmoe_st *st;
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(capmoe_st_find(st, "we\"ird\\name\n\x01"));
    ck_assert_ptr_nonnull(capmoe_st_find(st, "\xc3\xa9t\xc3\xa9"));
    capmoe_st_close(st);

    capmoe_st_write_tensor o = {"x", CAPMOE_DTYPE_OTHER, 1, {2}, v};
    ck_assert_int_eq(capmoe_st_write_file(p, &o, 1, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "only F32, F16 and BF16"));
    capmoe_st_write_tensor neg = {"x", CAPMOE_DTYPE_F32, 1, {-1}, v};
    ck_assert_int_eq(capmoe_st_write_file(p, &neg, 1, &err), -1);
    capmoe_st_write_tensor md = {"__metadata__", CAPMOE_DTYPE_F32, 1, {1}, v};
    ck_assert_int_eq(capmoe_st_write_file(p, &md, 1, &err), -1);
    ck_assert_int_eq(capmoe_st_write_file(tpath("no/such/dir/x.safetensors"), t, 1, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "cannot create"));
    /* zero tensors is a valid file */
    ck_assert_int_eq(capmoe_st_write_file(p, NULL, 0, &err), 0);
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), 0);
    capmoe_st_close(st);
}
END_TEST

START_TEST(test_other_dtypes_and_unaligned) {
    /* Hand-written header (padded to 8 bytes): F32 data starting 3 bytes into
     * the data area, so unaligned, and non-float dtypes of the specification. */
    unsigned char data[41];
    for (int i = 0; i < 41; i++) data[i] = (unsigned char)i;
    float f[2] = {3.5f, -0.25f};
    memcpy(data + 3, f, 8);
    const char *hdr =
        "{\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[0,3]},"
        "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[3,11]},"
        "\"__metadata__\":{\"k\":\"v\"},"
        "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[11,27]},"
        "\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[1,2],\"data_offsets\":[27,29]},"
        "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[29,37]},"
        "\"h\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[37,41]},"
        "\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[41,41]}}";
    char padded[1024];
    snprintf(padded, sizeof padded, "%s", hdr);
    while (strlen(padded) % 8) strcat(padded, " ");
    const char *p = tpath("mixed.safetensors");
    write_raw(p, padded, data, 41);
    capmoe_st *st;
    capmoe_error err;
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), 7);
    const capmoe_st_tensor *t = capmoe_st_find(st, "ids");
    ck_assert_int_eq(t->dtype, CAPMOE_DTYPE_OTHER);
    ck_assert_str_eq(t->dtype_name, "I64");
    ck_assert_str_eq(capmoe_st_find(st, "f8")->dtype_name, "F8_E4M3");
    ck_assert_str_eq(capmoe_st_find(st, "mask")->dtype_name, "BOOL");
    ck_assert_uint_eq(capmoe_st_find(st, "mask")->nbytes, 3);
    const float *d;
    float *owned;
    int64_t s2[1] = {2};
    ck_assert_int_eq(capmoe_st_get_f32(st, "ids", 1, s2, &d, &owned, &err), -1);
    char want[1024];
    snprintf(want, sizeof want, "%s: tensor ids has dtype I64, expected a float", p);
    ck_assert_msg(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);
    ck_assert_msg(capmoe_st_get_f32(st, "u", 1, s2, &d, &owned, &err) == 0, "%s", err.msg);
    ck_assert_ptr_nonnull(owned); /* unaligned: copied */
    ck_assert_float_eq(d[0], 3.5f);
    ck_assert_float_eq(d[1], -0.25f);
    free(owned);
    capmoe_st_close(st);
}
END_TEST

START_TEST(test_sharded_dir) {
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    uint16_t c[3] = {capmoe_f32_to_bf16(7), capmoe_f32_to_bf16(8), capmoe_f32_to_bf16(9)};
    capmoe_st_write_tensor s1[2] = {{"model.embed_tokens.weight", CAPMOE_DTYPE_F32, 2, {2, 2}, a},
                                    {"model.norm.weight", CAPMOE_DTYPE_F32, 1, {2}, b}};
    capmoe_st_write_tensor s2[1] = {{"lm_head.weight", CAPMOE_DTYPE_BF16, 2, {1, 3}, c}};
    capmoe_error err;
    ck_assert_int_eq(capmoe_st_write_file(tpath("model-00001-of-00002.safetensors"), s1, 2, &err),
                     0);
    ck_assert_int_eq(capmoe_st_write_file(tpath("model-00002-of-00002.safetensors"), s2, 1, &err),
                     0);
    write_text(tpath("model.safetensors.index.json"),
               "{\"metadata\":{\"total_size\":30},\"weight_map\":{"
               "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
               "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
               "\"model.norm.weight\":\"model-00001-of-00002.safetensors\"}}");
    capmoe_st *st;
    ck_assert_msg(capmoe_st_open_dir(&st, tmpdir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), 3);
    const capmoe_st_tensor *t = capmoe_st_find(st, "lm_head.weight");
    ck_assert_ptr_nonnull(strstr(t->file, "model-00002-of-00002.safetensors"));
    ck_assert_ptr_nonnull(
        strstr(capmoe_st_find(st, "model.norm.weight")->file, "model-00001-of-00002"));
    const float *d;
    float *owned;
    int64_t sh[2] = {1, 3};
    ck_assert_int_eq(capmoe_st_get_f32(st, "lm_head.weight", 2, sh, &d, &owned, &err), 0);
    ck_assert_float_eq(d[2], 9.0f);
    free(owned);
    int64_t wrong[2] = {3, 1};
    ck_assert_int_eq(capmoe_st_get_f32(st, "lm_head.weight", 2, wrong, &d, &owned, &err), -1);
    char want[1024];
    snprintf(want, sizeof want,
             "%s: tensor lm_head.weight has shape [1, 3], expected [3, 1]", t->file);
    ck_assert_str_eq(err.msg, want);
    ck_assert_int_eq(capmoe_st_get_f32(st, "nope", 2, wrong, &d, &owned, &err), -1);
    snprintf(want, sizeof want, "%s: tensor nope not found",
             tpath("model.safetensors.index.json"));
    ck_assert_str_eq(err.msg, want);
    capmoe_st_close(st);

    /* index naming a tensor its shard lacks */
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
               "\"model.layers.0.mlp.gate.weight\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(tmpdir, "tensor model.layers.0.mlp.gate.weight listed in",
                    "model-00002-of-00002.safetensors");
    /* index pointing a tensor at the wrong shard */
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"lm_head.weight\":\"model-00001-of-00002.safetensors\","
               "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(tmpdir, "is missing from the shard", "model-00001-of-00002.safetensors");
    /* missing shard */
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"lm_head.weight\":\"model-00003-of-00003.safetensors\"}}");
    expect_dir_fail(tmpdir, "model-00003-of-00003.safetensors: cannot open",
                    "model.safetensors.index.json");
    /* shard names that are paths */
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"lm_head.weight\":\"../model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(tmpdir, "not a plain file name", "../model-00002");
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"lm_head.weight\":\"/etc/passwd\"}}");
    expect_dir_fail(tmpdir, "not a plain file name", NULL);
    write_text(tpath("model.safetensors.index.json"), "{\"weight_map\":{\"x\":\"..\"}}");
    expect_dir_fail(tmpdir, "not a plain file name", NULL);
    write_text(tpath("model.safetensors.index.json"), "{\"weight_map\":{\"x\":3}}");
    expect_dir_fail(tmpdir, "is not a string", NULL);
    write_text(tpath("model.safetensors.index.json"), "{\"metadata\":{}}");
    expect_dir_fail(tmpdir, "weight_map", "model.safetensors.index.json");
    write_text(tpath("model.safetensors.index.json"), "{\"weight_map\":{}}");
    expect_dir_fail(tmpdir, "is empty", NULL);
    write_text(tpath("model.safetensors.index.json"), "{\"weight_map\":{\"a\":");
    expect_dir_fail(tmpdir, "model.safetensors.index.json: not valid JSON", NULL);
    /* the same tensor in two shards */
    ck_assert_int_eq(capmoe_st_write_file(tpath("model-00002-of-00002.safetensors"), s1, 1, &err),
                     0);
    write_text(tpath("model.safetensors.index.json"),
               "{\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
               "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(tmpdir, "tensor model.embed_tokens.weight is also in", NULL);
}
END_TEST

START_TEST(test_single_file_dir) {
    capmoe_error err;
    capmoe_st *st;
    expect_dir_fail(tmpdir, "no model.safetensors.index.json or model.safetensors", tmpdir);
    expect_dir_fail(tpath("nonexistent"), "cannot open model directory", "nonexistent");
    uint16_t h16[4], b16[4];
    write_sample(tpath("model.safetensors"), h16, b16);
    ck_assert_msg(capmoe_st_open_dir(&st, tmpdir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), 5);
    capmoe_st_close(st);
}
END_TEST

/* ---------- corruption ---------- */

START_TEST(test_corrupt_files) {
    const char *p = tpath("bad.safetensors");
    unsigned char zeros[64] = {0};
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    expect_open_fail(tpath("missing.safetensors"), "cannot open");
    ck_assert_int_eq(mkdir(tpath("adir.safetensors"), 0700), 0);
    expect_open_fail(tpath("adir.safetensors"), "not a regular file");

    write_bytes(p, "", 0);
    expect_open_fail(p, "truncated");
    write_bytes(p, "\x10\0\0", 3);
    expect_open_fail(p, "truncated");
    write_raw_n(p, 1ULL << 40, "{}", NULL, 0);
    expect_open_fail(p, "exceeds the limit");
    write_raw_n(p, 100000001ULL, "{}", NULL, 0);
    expect_open_fail(p, "exceeds the limit");
    write_raw_n(p, 200, "{}", NULL, 0);
    expect_open_fail(p, "truncated: header length 200");
    write_raw_n(p, 0, "", NULL, 0);
    expect_open_fail(p, "header too short");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],", zeros, 8);
    expect_open_fail(p, "header is not valid JSON");
    write_raw(p, "[1,2,3]", zeros, 8);
    expect_open_fail(p, "not a JSON object");
    write_raw(p, "{} x", zeros, 8);
    expect_open_fail(p, "trailing bytes");
    {   /* header with an embedded NUL */
        unsigned char b[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, ' ', ' ', ' ', ' ', ' '};
        write_bytes(p, b, 16);
        expect_open_fail(p, "NUL");
    }
    /* offsets past the end (also: file truncated in the data area) */
    write_raw(p, ok1, zeros, 4);
    expect_open_fail(p, "tensor a: data_offsets [0, 8] past the end of the data area");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", zeros, 8);
    expect_open_fail(p, "begin after end");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", zeros, 16);
    expect_open_fail(p, "tensor a: data_offsets [0, 8] hold 8 bytes but F32 [3] needs 12");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[6,14]}}",
              zeros, 16);
    expect_open_fail(p, "tensors a and b overlap");
    write_raw(p,
              "{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[2,6]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
              zeros, 16);
    expect_open_fail(p, "overlap");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
              zeros, 16);
    expect_open_fail(p, "tensor a appears twice");
    write_raw(p, "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", zeros, 8);
    expect_open_fail(p, "unknown dtype 'F33'");
    write_raw(p, "{\"a\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", zeros, 8);
    expect_open_fail(p, "dtype");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", zeros, 8);
    expect_open_fail(p, "shape entry 0 is not a non-negative integer");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", zeros, 8);
    expect_open_fail(p, "shape entry 0");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", zeros, 8);
    expect_open_fail(p, "shape");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}",
              zeros, 8);
    expect_open_fail(p, "9 dimensions");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
              "\"data_offsets\":[0,8]}}",
              zeros, 8);
    expect_open_fail(p, "shape is too large");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", zeros, 8);
    expect_open_fail(p, "data_offsets must be two non-negative integers");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", zeros, 8);
    expect_open_fail(p, "data_offsets must be");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", zeros,
              8);
    expect_open_fail(p, "data_offsets must be");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", zeros, 8);
    expect_open_fail(p, "data_offsets");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}",
              zeros, 16);
    expect_open_fail(p, "tensor b: data_offsets [12, 16] leave a gap of 4 bytes");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              zeros, 12);
    expect_open_fail(p, "leave a gap");
    write_raw(p, ok1, zeros, 9);
    expect_open_fail(p, "the data area has 9 bytes but the tensors cover 8");
    write_raw(p, "{}", zeros, 1);
    expect_open_fail(p, "the data area has 1 bytes but the tensors cover 0");
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
              zeros, 8);
    expect_open_fail(p, "overlap");
    write_raw(p, "{\"\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", zeros,
              8);
    expect_open_fail(p, "not valid UTF-8 (byte 2)");
    write_raw(p, "{\"\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              zeros, 8);
    expect_open_fail(p, "not valid UTF-8"); /* overlong */
    write_raw(p, "{\"\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              zeros, 8);
    expect_open_fail(p, "not valid UTF-8"); /* surrogate */
    write_raw(p, "{\"__metadata__\":{\"format\":1}}", zeros, 0);
    expect_open_fail(p, "__metadata__ entry format is not a string");
    write_raw(p, "{\"a\":[1]}", zeros, 8);
    expect_open_fail(p, "tensor a: entry is not an object");
    write_raw(p, "{\"__metadata__\":3}", zeros, 8);
    expect_open_fail(p, "__metadata__ is not an object");
    write_raw(p, "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", zeros, 8);
    expect_open_fail(p, "not a whole number of bytes");
    /* still valid: F4 with an even count, trailing padding, empty tensors */
    write_raw(p, "{\"a\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}\n  ", zeros, 2);
    capmoe_st *st;
    capmoe_error err;
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    capmoe_st_close(st);
}
END_TEST

/* Random truncations and byte flips of a valid file: never a crash, and
 * whatever opens can be read in full. */
START_TEST(test_fuzz) {
    const char *src = tpath("fuzz-src.safetensors");
    const char *p = tpath("fuzz.safetensors");
    float a[12];
    uint16_t h[5], b[7];
    for (int i = 0; i < 12; i++) a[i] = (float)i - 3.5f;
    for (int i = 0; i < 5; i++) h[i] = capmoe_f32_to_f16((float)i * 0.25f);
    for (int i = 0; i < 7; i++) b[i] = capmoe_f32_to_bf16((float)i * -1.5f);
    capmoe_st_write_tensor t[3] = {{"layers.0.w", CAPMOE_DTYPE_F32, 2, {3, 4}, a},
                                   {"layers.0.h", CAPMOE_DTYPE_F16, 1, {5}, h},
                                   {"layers.1.b", CAPMOE_DTYPE_BF16, 2, {7, 1}, b}};
    capmoe_error err;
    ck_assert_int_eq(capmoe_st_write_file(src, t, 3, &err), 0);
    size_t len;
    unsigned char *orig = (unsigned char *)capmoe_read_file(src, &len, &err);
    ck_assert_ptr_nonnull(orig);
    unsigned char *buf = malloc(len);

    for (size_t cut = 0; cut < len; cut++) { /* every truncation fails cleanly */
        write_bytes(p, orig, cut);
        capmoe_st *st = NULL;
        ck_assert_int_eq(capmoe_st_open_file(&st, p, &err), -1);
        ck_assert_ptr_null(st);
        ck_assert_ptr_nonnull(strstr(err.msg, p));
    }
    uint32_t x = 2024;
    int opened = 0;
    /* CAPMOE_FUZZ_ITERS=N runs a longer campaign by hand. */
    const char *fi = getenv("CAPMOE_FUZZ_ITERS");
    int iters = fi && atoi(fi) > 0 ? atoi(fi) : 1500;
    for (int it = 0; it < iters; it++) {
        memcpy(buf, orig, len);
        int flips = 1 + it % 3;
        for (int k = 0; k < flips; k++) {
            x = x * 1664525u + 1013904223u;
            size_t pos = (x >> 8) % len;
            if (it % 2) pos = (x >> 8) % (len < 200 ? len : 200); /* mostly header */
            x = x * 1664525u + 1013904223u;
            buf[pos] = (it % 5 == 0) ? (unsigned char)(buf[pos] ^ (1u << (x >> 29)))
                                     : (unsigned char)(x >> 24);
        }
        write_bytes(p, buf, len);
        capmoe_st *st = NULL;
        if (capmoe_st_open_file(&st, p, &err) != 0) {
            ck_assert_ptr_null(st);
            ck_assert_msg(strstr(err.msg, p) != NULL, "%s", err.msg);
            continue;
        }
        opened++;
        volatile float sink = 0;
        for (int i = 0; i < capmoe_st_count(st); i++) {
            const capmoe_st_tensor *tt = capmoe_st_at(st, i);
            ck_assert_ptr_eq(capmoe_st_find(st, tt->name), tt);
            const unsigned char *bytes = tt->data;
            for (size_t j = 0; j < tt->nbytes; j++) sink += bytes[j];
            const float *d;
            float *owned;
            if (capmoe_st_get_f32(st, tt->name, tt->ndim, tt->shape, &d, &owned, &err) == 0) {
                size_t n = tt->nbytes / (tt->dtype == CAPMOE_DTYPE_F32 ? 4 : 2);
                for (size_t j = 0; j < n; j++) sink += d[j];
                free(owned);
            } else {
                ck_assert_int_eq(tt->dtype, CAPMOE_DTYPE_OTHER);
            }
        }
        (void)sink;
        capmoe_st_close(st);
    }
    ck_assert_int_gt(opened, 0); /* flips in the data area leave a valid file */
    free(buf);
    free(orig);
}
END_TEST

/* Many tensors: the hash lookup finds each one. */
START_TEST(test_many_tensors) {
    enum { N = 3000 };
    capmoe_st_write_tensor *t = calloc(N, sizeof *t);
    char (*names)[64] = calloc(N, 64);
    float *vals = malloc(N * sizeof *vals);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], 64, "model.layers.%d.mlp.experts.%d.w1.weight", i / 64, i % 64);
        vals[i] = (float)i;
        t[i] = (capmoe_st_write_tensor){names[i], CAPMOE_DTYPE_F32, 1, {1}, &vals[i]};
    }
    capmoe_error err;
    const char *p = tpath("many.safetensors");
    ck_assert_int_eq(capmoe_st_write_file(p, t, N, &err), 0);
    capmoe_st *st;
    ck_assert_msg(capmoe_st_open_file(&st, p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), N);
    for (int i = N - 1; i >= 0; i--) {
        const capmoe_st_tensor *tt = capmoe_st_find(st, names[i]);
        ck_assert_ptr_nonnull(tt);
        float v;
        memcpy(&v, tt->data, 4);
        ck_assert_float_eq(v, (float)i);
    }
    ck_assert_ptr_null(capmoe_st_find(st, "model.layers.0.mlp.experts.64.w1.weight"));
    capmoe_st_close(st);
    free(t);
    free(names);
    free(vals);
}
END_TEST


/* ---------- files written by the official safetensors / transformers ---------- */

#define REF "tests/data/reference/"

static cJSON *load_json(const char *path) {
    capmoe_error err;
    size_t len;
    char *text = capmoe_read_file(path, &len, &err);
    ck_assert_msg(text != NULL, "%s", err.msg);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    ck_assert_msg(j != NULL, "%s: bad JSON", path);
    return j;
}

static int same_float(float got, double want) {
    if (isnan(want)) return isnan(got);
    return got == (float)want && (signbit(got) != 0) == (signbit(want) != 0);
}

static void check_shape(const capmoe_st_tensor *t, const cJSON *shape) {
    ck_assert_int_eq(t->ndim, cJSON_GetArraySize(shape));
    int k = 0;
    for (const cJSON *d = shape->child; d; d = d->next, k++)
        ck_assert_int_eq(t->shape[k], (int64_t)d->valuedouble);
}

/* format.safetensors: save_file of every dtype kind; every float value as read by safe_open. */
START_TEST(test_reference_format) {
    cJSON *want = load_json(REF "format.json");
    capmoe_st *st;
    capmoe_error err;
    ck_assert_msg(capmoe_st_open_file(&st, REF "format.safetensors", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(capmoe_st_count(st), cJSON_GetArraySize(want));
    int nvals = 0;
    for (const cJSON *e = want->child; e; e = e->next) {
        const capmoe_st_tensor *t = capmoe_st_find(st, e->string);
        ck_assert_msg(t != NULL, "tensor %s missing", e->string);
        ck_assert_str_eq(t->dtype_name,
                         cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring);
        check_shape(t, cJSON_GetObjectItemCaseSensitive(e, "shape"));
        const cJSON *vals = cJSON_GetObjectItemCaseSensitive(e, "values");
        const float *d;
        float *owned;
        int rc = capmoe_st_get_f32(st, t->name, t->ndim, t->shape, &d, &owned, &err);
        if (!vals) {
            ck_assert_msg(rc == -1 && (t->dtype == CAPMOE_DTYPE_OTHER || t->dtype == CAPMOE_DTYPE_F8E4M3),
                          "%s", e->string);
            continue;
        }
        ck_assert_msg(rc == 0, "%s", err.msg);
        int i = 0;
        for (const cJSON *v = vals->child; v; v = v->next, i++, nvals++) {
            double w = strtod(v->valuestring, NULL);
            if (!same_float(d[i], w))
                ck_abort_msg("%s[%d]: got %a want %s", e->string, i, d[i], v->valuestring);
        }
        free(owned);
    }
    ck_assert_int_ge(nvals, 40);
    capmoe_st_close(st);
    cJSON_Delete(want);
}
END_TEST

/* Checkpoints written by save_pretrained (sharded bf16, single-file f16). */
START_TEST(test_reference_models) {
    cJSON *all = load_json(REF "models.json");
    for (const cJSON *m = all->child; m; m = m->next) {
        char dir[256];
        snprintf(dir, sizeof dir, REF "%s", m->string);
        capmoe_st *st;
        capmoe_error err;
        ck_assert_msg(capmoe_st_open_dir(&st, dir, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(capmoe_st_count(st), cJSON_GetArraySize(m));
        for (const cJSON *e = m->child; e; e = e->next) {
            const capmoe_st_tensor *t = capmoe_st_find(st, e->string);
            ck_assert_msg(t != NULL, "%s: tensor %s missing", dir, e->string);
            const char *base = strrchr(t->file, '/');
            ck_assert_str_eq(base ? base + 1 : t->file,
                             cJSON_GetObjectItemCaseSensitive(e, "file")->valuestring);
            ck_assert_str_eq(t->dtype_name,
                             cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring);
            check_shape(t, cJSON_GetObjectItemCaseSensitive(e, "shape"));
            const float *d;
            float *owned;
            ck_assert_msg(capmoe_st_get_f32(st, t->name, t->ndim, t->shape, &d, &owned, &err) ==
                              0, "%s", err.msg);
            size_t n = t->nbytes / 2;
            double sum = 0, abssum = 0;
            for (size_t i = 0; i < n; i++) {
                sum += d[i];
                abssum += fabs(d[i]);
            }
            double ws = strtod(cJSON_GetObjectItemCaseSensitive(e, "sum")->valuestring, NULL);
            double wa = strtod(cJSON_GetObjectItemCaseSensitive(e, "abssum")->valuestring, NULL);
            ck_assert_msg(fabs(sum - ws) <= 1e-12 * wa && fabs(abssum - wa) <= 1e-12 * wa,
                          "%s %s: sum %.17g/%.17g want %.17g/%.17g", dir, t->name, sum, abssum,
                          ws, wa);
            int i = 0;
            for (const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "first")->child; v;
                 v = v->next, i++)
                ck_assert_msg(same_float(d[i], strtod(v->valuestring, NULL)), "%s[%d]",
                              t->name, i);
            free(owned);
        }
        capmoe_st_close(st);
    }
    cJSON_Delete(all);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("conv");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_f16_to_f32_exhaustive);
    tcase_add_test(tc, test_f32_to_f16_rounding);
    tcase_add_test(tc, test_bf16);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_escaped_names_and_write_errors);
    tcase_add_test(tc, test_other_dtypes_and_unaligned);
    tcase_add_test(tc, test_sharded_dir);
    tcase_add_test(tc, test_single_file_dir);
    tcase_add_test(tc, test_corrupt_files);
    tcase_add_test(tc, test_fuzz);
    tcase_add_test(tc, test_many_tensors);
    suite_add_tcase(s, tc);
    tc = tcase_create("reference");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_reference_format);
    tcase_add_test(tc, test_reference_models);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
