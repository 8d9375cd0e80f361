/* tests/unit/test_safetensors.c - engine/safetensors: validation, lookup, fp8 scales, sets.
 *
 * Every malformed file is written at test time into a fresh mkdtemp directory.
 * Headers are written with ' for " to keep them readable (see jq). The real
 * tiny models are used only when RALUD_SHARED points at the shared folder
 * (RALUD_SHARED/testvectors/models); without it that TCase is left out. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "engine/safetensors.h"
#include "tests/check_main.h"

static char tmpdir[512];

static void quiet_sink(void *ctx, enum log_level lvl, const char *line)
{
    (void)ctx;
    (void)lvl;
    (void)line;
}

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ralud_st_XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    log_set_sink(quiet_sink, NULL);
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *de;
        char p[1024];
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(tmpdir);
    log_set_sink(NULL, NULL);
}

/* Path of name inside tmpdir; a few rotating static buffers. */
static const char *tp(const char *name)
{
    static char buf[8][1024];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

/* JSON with ' for ", so headers read naturally in C strings. */
static const char *jq(const char *s)
{
    static char buf[4][8192];
    static int k;
    char *b = buf[k++ % 4];
    size_t n = strlen(s);
    ck_assert_uint_lt(n, sizeof buf[0]);
    for (size_t i = 0; i <= n; i++)
        b[i] = s[i] == '\'' ? '"' : s[i];
    return b;
}

static void write_raw(const char *name, const void *bytes, size_t n)
{
    FILE *f = fopen(tp(name), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void write_text(const char *name, const char *text) { write_raw(name, text, strlen(text)); }

/* A safetensors file: u64 LE header length, header (padded with spaces to a
 * multiple of pad, 1 = unpadded), then data. */
static void write_st_pad(const char *name, const char *header, const void *data, size_t n,
                         size_t pad)
{
    size_t hl = strlen(header);
    size_t hp = (hl + pad - 1) / pad * pad;
    size_t total = 8 + hp + n;
    unsigned char *b = malloc(total);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hp >> (8 * i));
    memcpy(b + 8, header, hl);
    memset(b + 8 + hl, ' ', hp - hl);
    if (n)
        memcpy(b + 8 + hp, data, n);
    write_raw(name, b, total);
    free(b);
}

static void write_st(const char *name, const char *header, const void *data, size_t n)
{
    write_st_pad(name, header, data, n, 8);
}

/* A file with this header (quoted with ') and n zero data bytes must fail to
 * open with code, leave *out alone and say something containing want. */
static void expect_reject(const char *header, size_t n, int code, const char *want)
{
    void *zeros = calloc(1, n ? n : 1);
    write_st("bad.safetensors", jq(header), zeros, n);
    free(zeros);
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    int rc = st_open(&f, tp("bad.safetensors"), &em);
    ck_assert_msg(rc == code, "rc %s, want %s; message: %s", err_name(rc), err_name(code), em.text);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(em.text, want), "message \"%s\" lacks \"%s\"", em.text, want);
    ck_assert_msg(strstr(em.text, "bad.safetensors"), "message \"%s\" lacks the file", em.text);
}

static void u64le(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* ---- open: valid files ---- */

START_TEST(test_st_open_reads_dtype_shape_and_values)
{
    float v[6] = {0, 1, 2, 3, 4, 5};
    write_st("a.safetensors",
             jq("{'__metadata__': {'format': 'pt'}, "
                "'a': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]}}"),
             v, sizeof v);
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_open(&f, tp("a.safetensors"), &em), ERR_OK);
    ck_assert_uint_eq(st_count(f), 1);
    ck_assert_str_eq(st_name(f, 0), "a");
    ck_assert_ptr_null(st_name(f, 1));
    ck_assert_str_eq(st_path(f), tp("a.safetensors"));
    ck_assert_str_eq(st_metadata(f, "format"), "pt");
    ck_assert_ptr_null(st_metadata(f, "missing"));

    struct tensor t;
    ck_assert_int_eq(st_find(f, "a", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_F32);
    ck_assert_int_eq(t.ndim, 2);
    ck_assert_int_eq(t.ne[0], 2);
    ck_assert_int_eq(t.ne[1], 3);
    ck_assert_int_eq(t.nb[0], 3);
    ck_assert_int_eq(t.nb[1], 1);
    ck_assert_float_eq(t.scale, 1.0f);
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, (size_t)i), (float)i);
    st_close(f);
}
END_TEST

START_TEST(test_st_open_accepts_empty_header)
{
    write_st("e.safetensors", "{}", NULL, 0);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("e.safetensors"), NULL), ERR_OK);
    ck_assert_uint_eq(st_count(f), 0);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "x", &t), ERR_NOTFOUND);
    st_close(f);
}
END_TEST

START_TEST(test_st_open_accepts_gaps_trailing_bytes_and_empty_tensors)
{
    unsigned char d[32] = {0};
    write_st("g.safetensors",
             jq("{'a': {'dtype': 'U8', 'shape': [4], 'data_offsets': [4, 8]},"
                " 'b': {'dtype': 'F32', 'shape': [0, 7], 'data_offsets': [4, 4]},"
                " 'c': {'dtype': 'U8', 'shape': [2], 'data_offsets': [12, 14]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("g.safetensors"), NULL), ERR_OK);
    ck_assert_uint_eq(st_count(f), 3);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "b", &t), ERR_OK);
    ck_assert_int_eq(t.ne[0], 0);
    ck_assert_int_eq(tensor_nelem(&t), 0);
    st_close(f);
}
END_TEST

START_TEST(test_st_open_reads_integer_and_bool_dtypes)
{
    unsigned char d[64] = {0};
    int64_t i64 = -5;
    int16_t i16[2] = {-300, 7};
    int8_t i8[2] = {-128, 127};
    memcpy(d, &i64, 8);
    memcpy(d + 8, i16, 4);
    memcpy(d + 12, i8, 2);
    d[14] = 1;
    d[15] = 0;
    d[16] = 200;
    write_st("i.safetensors",
             jq("{'l': {'dtype': 'I64', 'shape': [1], 'data_offsets': [0, 8]},"
                " 's': {'dtype': 'I16', 'shape': [2], 'data_offsets': [8, 12]},"
                " 'c': {'dtype': 'I8', 'shape': [2], 'data_offsets': [12, 14]},"
                " 'b': {'dtype': 'BOOL', 'shape': [2], 'data_offsets': [14, 16]},"
                " 'u': {'dtype': 'U8', 'shape': [1], 'data_offsets': [16, 17]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("i.safetensors"), NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "l", &t), ERR_OK);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), -5.0f);
    ck_assert_int_eq(st_find(f, "s", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_I16);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), -300.0f);
    ck_assert_int_eq(st_find(f, "c", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_I8);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), -128.0f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 1), 127.0f);
    ck_assert_int_eq(st_find(f, "b", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_BOOL);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), 1.0f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 1), 0.0f);
    ck_assert_int_eq(st_find(f, "u", &t), ERR_OK);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), 200.0f);
    st_close(f);
}
END_TEST

START_TEST(test_st_open_memory_validates_like_st_open)
{
    float v[2] = {1.5f, -2.0f};
    write_st("m.safetensors", jq("{'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}"),
             v, sizeof v);
    FILE *fp = fopen(tp("m.safetensors"), "rb");
    ck_assert_ptr_nonnull(fp);
    unsigned char buf[256];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    _Alignas(8) unsigned char img[256];
    memcpy(img, buf, n);

    struct st_file *f = NULL;
    ck_assert_int_eq(st_open_memory(&f, img, n, "mem", NULL), ERR_OK);
    ck_assert_str_eq(st_path(f), "mem");
    struct tensor t;
    ck_assert_int_eq(st_find(f, "a", &t), ERR_OK);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 1), -2.0f);
    st_close(f);

    struct err_msg em = {{0}};
    f = NULL;
    ck_assert_int_eq(st_open_memory(&f, img, n - 1, "mem", &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(em.text, "mem: tensor \"a\""));
    ck_assert_int_eq(st_open_memory(&f, NULL, 0, "empty", &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
}
END_TEST

/* ---- open: rejected files ---- */

START_TEST(test_st_open_rejects_missing_file)
{
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_open(&f, tp("nope.safetensors"), &em), ERR_NOTFOUND);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(em.text, "nope.safetensors"));
}
END_TEST

START_TEST(test_st_open_rejects_directory)
{
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tmpdir, NULL), ERR_IO);
    ck_assert_ptr_null(f);
}
END_TEST

START_TEST(test_st_open_rejects_truncated_header)
{
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    write_raw("t.safetensors", "\x10\0\0\0\0", 5);
    ck_assert_int_eq(st_open(&f, tp("t.safetensors"), &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(em.text, "too short"));
    write_raw("t0.safetensors", "", 0);
    ck_assert_int_eq(st_open(&f, tp("t0.safetensors"), &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
}
END_TEST

START_TEST(test_st_open_rejects_header_longer_than_file)
{
    unsigned char b[8 + 4];
    u64le(b, 100);
    memcpy(b + 8, "{}  ", 4);
    write_raw("l.safetensors", b, sizeof b);
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_open(&f, tp("l.safetensors"), &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
    ck_assert_ptr_nonnull(strstr(em.text, "header length 100 but only 4 bytes follow"));
}
END_TEST

START_TEST(test_st_open_rejects_tiny_header_length)
{
    unsigned char b[8 + 2];
    u64le(b, 1);
    memcpy(b + 8, "{}", 2);
    write_raw("s.safetensors", b, sizeof b);
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_open(&f, tp("s.safetensors"), &em), ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(em.text, "too small"));
    u64le(b, 0);
    write_raw("s.safetensors", b, sizeof b);
    ck_assert_int_eq(st_open(&f, tp("s.safetensors"), &em), ERR_FORMAT);
    ck_assert_ptr_null(f);
}
END_TEST

START_TEST(test_st_open_rejects_huge_header_length)
{
    unsigned char b[8 + 2];
    memcpy(b + 8, "{}", 2);
    struct st_file *f = NULL;
    struct err_msg em = {{0}};
    /* UINT64_MAX would wrap 8 + N; it must hit the limit check first. */
    const uint64_t lens[] = {ST_HEADER_MAX + 1ull, 1ull << 40, UINT64_MAX};
    for (size_t i = 0; i < 3; i++) {
        u64le(b, lens[i]);
        write_raw("h.safetensors", b, sizeof b);
        ck_assert_int_eq(st_open(&f, tp("h.safetensors"), &em), ERR_FORMAT);
        ck_assert_ptr_null(f);
        ck_assert_ptr_nonnull(strstr(em.text, "limit"));
    }
}
END_TEST

START_TEST(test_st_open_rejects_header_not_json)
{
    expect_reject("{nope", 0, ERR_FORMAT, "not valid JSON");
    expect_reject("{'a': 1} trailing", 0, ERR_FORMAT, "not valid JSON");
}
END_TEST

START_TEST(test_st_open_rejects_header_not_object)
{
    expect_reject("[1, 2]", 0, ERR_FORMAT, "not an object");
}
END_TEST

START_TEST(test_st_open_rejects_duplicate_tensor_names)
{
    expect_reject("{'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]},"
                  " 'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [1, 2]}}",
                  2, ERR_FORMAT, "duplicate");
}
END_TEST

START_TEST(test_st_open_rejects_entry_not_object)
{
    expect_reject("{'w': 5}", 0, ERR_FORMAT, "tensor \"w\": entry is a JSON integer");
}
END_TEST

START_TEST(test_st_open_rejects_missing_dtype)
{
    expect_reject("{'w': {'shape': [1], 'data_offsets': [0, 4]}}", 4, ERR_FORMAT,
                  "tensor \"w\": no \"dtype\"");
    expect_reject("{'w': {'dtype': 4, 'shape': [1], 'data_offsets': [0, 4]}}", 4, ERR_FORMAT,
                  "\"dtype\" is a JSON integer");
}
END_TEST

START_TEST(test_st_open_rejects_missing_shape)
{
    expect_reject("{'w': {'dtype': 'F32', 'data_offsets': [0, 4]}}", 4, ERR_FORMAT,
                  "tensor \"w\": no \"shape\"");
    expect_reject("{'w': {'dtype': 'F32', 'shape': 1, 'data_offsets': [0, 4]}}", 4, ERR_FORMAT,
                  "\"shape\" is a JSON integer");
}
END_TEST

START_TEST(test_st_open_rejects_missing_offsets)
{
    expect_reject("{'w': {'dtype': 'F32', 'shape': [1]}}", 4, ERR_FORMAT,
                  "tensor \"w\": no \"data_offsets\"");
}
END_TEST

START_TEST(test_st_open_rejects_unknown_dtype)
{
    expect_reject("{'blocks.0.w': {'dtype': 'F4', 'shape': [2], 'data_offsets': [0, 1]}}", 1,
                  ERR_UNSUPPORTED, "tensor \"blocks.0.w\": unsupported dtype \"F4\"");
    expect_reject("{'w': {'dtype': 'f32', 'shape': [1], 'data_offsets': [0, 4]}}", 4,
                  ERR_UNSUPPORTED, "\"f32\"");
}
END_TEST

START_TEST(test_st_open_rejects_negative_shape)
{
    expect_reject("{'w': {'dtype': 'F32', 'shape': [-1], 'data_offsets': [0, 4]}}", 4, ERR_FORMAT,
                  "shape[0] is not a non-negative integer");
}
END_TEST

START_TEST(test_st_open_rejects_non_integer_shape)
{
    expect_reject("{'w': {'dtype': 'F32', 'shape': [2, 2.0], 'data_offsets': [0, 16]}}", 16,
                  ERR_FORMAT, "shape[1] is not a non-negative integer");
    expect_reject("{'w': {'dtype': 'F32', 'shape': ['2'], 'data_offsets': [0, 8]}}", 8, ERR_FORMAT,
                  "shape[0]");
    expect_reject("{'w': {'dtype': 'F32', 'shape': [null], 'data_offsets': [0, 8]}}", 8, ERR_FORMAT,
                  "shape[0]");
}
END_TEST

START_TEST(test_st_open_rejects_more_than_8_dims)
{
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1,1,1,1,1,1,1,1,1], 'data_offsets': [0, 1]}}", 1,
                  ERR_UNSUPPORTED, "9 dims");
}
END_TEST

START_TEST(test_st_open_rejects_malformed_offsets)
{
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0]}}", 1, ERR_FORMAT,
                  "\"data_offsets\" is not [begin, end]");
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1, 2]}}", 2, ERR_FORMAT,
                  "\"data_offsets\" is not");
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1], 'data_offsets': [-1, 0]}}", 1, ERR_FORMAT,
                  "\"data_offsets\" is not");
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1], 'data_offsets': '0,1'}}", 1, ERR_FORMAT,
                  "\"data_offsets\" is not");
}
END_TEST

START_TEST(test_st_open_rejects_offsets_end_before_begin)
{
    expect_reject("{'w': {'dtype': 'U8', 'shape': [0], 'data_offsets': [4, 2]}}", 8, ERR_FORMAT,
                  "data_offsets [4, 2] end before they begin");
}
END_TEST

START_TEST(test_st_open_rejects_offsets_out_of_range)
{
    expect_reject("{'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}}", 12, ERR_FORMAT,
                  "data_offsets [0, 16] run past the 12-byte data section");
    expect_reject("{'w': {'dtype': 'U8', 'shape': [1], "
                  "'data_offsets': [9223372036854775806, 9223372036854775807]}}",
                  1, ERR_FORMAT, "tensor \"w\"");
}
END_TEST

START_TEST(test_st_open_rejects_overlapping_offsets)
{
    expect_reject("{'a': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]},"
                  " 'e': {'dtype': 'F32', 'shape': [0], 'data_offsets': [8, 8]},"
                  " 'b': {'dtype': 'F32', 'shape': [2], 'data_offsets': [8, 16]}}",
                  16, ERR_FORMAT, "overlap");
    /* b lies inside a; c starts after b ends but inside a. */
    expect_reject("{'a': {'dtype': 'U8', 'shape': [10], 'data_offsets': [0, 10]},"
                  " 'b': {'dtype': 'U8', 'shape': [2], 'data_offsets': [1, 3]},"
                  " 'c': {'dtype': 'U8', 'shape': [2], 'data_offsets': [5, 7]}}",
                  16, ERR_FORMAT, "\"a\" [0, 10] and \"b\" [1, 3] overlap");
}
END_TEST

START_TEST(test_st_open_rejects_size_mismatch)
{
    expect_reject("{'blocks.0.w': {'dtype': 'F32', 'shape': [5, 6], 'data_offsets': [0, 100]}}",
                  200, ERR_FORMAT,
                  "bad.safetensors: tensor \"blocks.0.w\": data_offsets [0, 100] but F32 [5, 6] "
                  "needs 120 bytes");
}
END_TEST

START_TEST(test_st_open_rejects_shape_overflow)
{
    /* 2^32 * 2^32 * 4 elements wraps to 0 in 64 bits. */
    expect_reject("{'w': {'dtype': 'F32', 'shape': [4294967296, 4294967296, 4],"
                  " 'data_offsets': [0, 0]}}",
                  0, ERR_FORMAT, "too many elements");
    /* 2^62 elements of 8 bytes wrap to 0 bytes. */
    expect_reject("{'w': {'dtype': 'F64', 'shape': [4611686018427387904], "
                  "'data_offsets': [0, 0]}}",
                  0, ERR_FORMAT, "too many bytes");
    /* Empty, but [2^40, 2^40] would still overflow every element-count and
     * stride computation downstream. */
    expect_reject("{'w': {'dtype': 'F64', 'shape': [1099511627776, 1099511627776, 0],"
                  " 'data_offsets': [0, 0]}}",
                  0, ERR_FORMAT, "too many elements");
    /* Larger than int64 in JSON. */
    expect_reject("{'w': {'dtype': 'F64', 'shape': [18446744073709551616], "
                  "'data_offsets': [0, 0]}}",
                  0, ERR_FORMAT, "not valid JSON");
}
END_TEST

START_TEST(test_st_open_rejects_bad_metadata)
{
    expect_reject("{'__metadata__': {'format': 1}}", 0, ERR_FORMAT,
                  "\"__metadata__\" value \"format\" is a JSON integer");
    expect_reject("{'__metadata__': ['pt']}", 0, ERR_FORMAT, "\"__metadata__\" is a JSON array");
}
END_TEST

START_TEST(test_st_open_names_control_characters_safely)
{
    expect_reject("{'bad\\nname': 3}", 0, ERR_FORMAT, "tensor \"bad?name\"");
}
END_TEST

/* ---- find ---- */

START_TEST(test_st_find_returns_notfound_for_unknown_name)
{
    float v[2] = {0};
    write_st("n.safetensors",
             jq("{'ab': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]},"
                " 'abc': {'dtype': 'F32', 'shape': [1], 'data_offsets': [4, 8]}}"),
             v, sizeof v);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("n.safetensors"), NULL), ERR_OK);
    struct tensor t, before;
    memset(&t, 0x5a, sizeof t);
    before = t;
    ck_assert_int_eq(st_find(f, "a", &t), ERR_NOTFOUND);
    ck_assert_int_eq(st_find(f, "abcd", &t), ERR_NOTFOUND);
    ck_assert_int_eq(st_find(f, "", &t), ERR_NOTFOUND);
    ck_assert_mem_eq(&t, &before, sizeof t);
    ck_assert_int_eq(st_find(f, "abc", &t), ERR_OK);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_reads_f16_and_bf16_values)
{
    const float want[4] = {1.5f, -2.25f, 65504.0f, 0.00006103515625f};
    uint16_t h[4], b[4];
    for (int i = 0; i < 4; i++) {
        h[i] = f32_to_fp16(want[i]);
        b[i] = f32_to_bf16(want[i]);
    }
    unsigned char d[16];
    memcpy(d, h, 8);
    memcpy(d + 8, b, 8);
    write_st("h.safetensors",
             jq("{'h': {'dtype': 'F16', 'shape': [2, 2], 'data_offsets': [0, 8]},"
                " 'b': {'dtype': 'BF16', 'shape': [4], 'data_offsets': [8, 16]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("h.safetensors"), NULL), ERR_OK);
    struct tensor th, tb;
    ck_assert_int_eq(st_find(f, "h", &th), ERR_OK);
    ck_assert_int_eq(st_find(f, "b", &tb), ERR_OK);
    ck_assert_int_eq(th.dtype, DTYPE_F16);
    ck_assert_int_eq(tb.dtype, DTYPE_BF16);
    for (int i = 0; i < 4; i++) {
        ck_assert_float_eq(dtype_load_f32(th.dtype, th.data, (size_t)i), want[i]);
        ck_assert_float_eq_tol(dtype_load_f32(tb.dtype, tb.data, (size_t)i), want[i],
                               fabsf(want[i]) / 128);
    }
    ck_assert_float_eq(dtype_load_f32(tb.dtype, tb.data, 0), 1.5f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_returns_scalar_as_shape_1)
{
    float v = 3.0f;
    write_st("s.safetensors", jq("{'s': {'dtype': 'F32', 'shape': [], 'data_offsets': [0, 4]}}"),
             &v, 4);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("s.safetensors"), NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "s", &t), ERR_OK);
    ck_assert_int_eq(t.ndim, 1);
    ck_assert_int_eq(t.ne[0], 1);
    ck_assert_float_eq(*(const float *)t.data, 3.0f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_folds_leading_unit_dims)
{
    unsigned char d[240] = {0};
    write_st("f.safetensors",
             jq("{'six': {'dtype': 'U8', 'shape': [1, 1, 2, 3, 4, 5], 'data_offsets': [0, 120]},"
                " 'five': {'dtype': 'U8', 'shape': [2, 1, 3, 4, 5], 'data_offsets': [120, 240]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("f.safetensors"), NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "six", &t), ERR_OK);
    ck_assert_int_eq(t.ndim, 4);
    ck_assert_int_eq(t.ne[0], 2);
    ck_assert_int_eq(t.ne[3], 5);
    ck_assert_int_eq(t.nb[0], 60);
    /* A 5-d tensor that cannot fold fails alone; the rest of the file works. */
    ck_assert_int_eq(st_find(f, "five", &t), ERR_UNSUPPORTED);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_realigns_misaligned_data)
{
    /* Unpadded header of odd length: the data section starts at an odd offset. */
    const char *h = jq("{'a': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 12]},"
                       " 'b': {'dtype': 'U8', 'shape': [1], 'data_offsets': [12, 13]},"
                       " 'e': {'dtype': 'F32', 'shape': [0], 'data_offsets': [12, 12]}}");
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%s%s", h, strlen(h) % 2 ? "" : " ");
    float v[3] = {1.0f, -7.5f, 1e30f};
    unsigned char d[13];
    memcpy(d, v, 12);
    d[12] = 9;
    write_st_pad("u.safetensors", hdr, d, sizeof d, 1);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("u.safetensors"), NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "a", &t), ERR_OK);
    ck_assert_uint_eq((uintptr_t)t.data % 4, 0);
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq(((const float *)t.data)[i], v[i]);
    ck_assert_int_eq(st_find(f, "b", &t), ERR_OK);
    ck_assert_uint_eq(*(const uint8_t *)t.data, 9);
    /* Nothing to copy, but the pointer is still aligned. */
    ck_assert_int_eq(st_find(f, "e", &t), ERR_OK);
    ck_assert_uint_eq((uintptr_t)t.data % 4, 0);
    st_close(f);
}
END_TEST

START_TEST(test_st_count_and_name_list_names_in_sorted_order)
{
    unsigned char d[3] = {0};
    write_st("o.safetensors",
             jq("{'z': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]},"
                " 'a.b': {'dtype': 'U8', 'shape': [1], 'data_offsets': [1, 2]},"
                " 'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [2, 3]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("o.safetensors"), NULL), ERR_OK);
    ck_assert_uint_eq(st_count(f), 3);
    ck_assert_str_eq(st_name(f, 0), "a");
    ck_assert_str_eq(st_name(f, 1), "a.b");
    ck_assert_str_eq(st_name(f, 2), "z");
    struct stat st;
    ck_assert_int_eq(stat(tp("o.safetensors"), &st), 0);
    ck_assert_uint_eq(st_bytes(f), (size_t)st.st_size);
    st_close(f);
}
END_TEST

/* ---- fp8 scales ---- */

/* An fp8 weight "blk.weight" [2, 2] plus the given extra entries after it. */
static struct st_file *open_fp8(const char *dtype, const char *extra, const void *xdata, size_t xn,
                                int want_rc)
{
    unsigned char d[64] = {0};
    const float w[4] = {1.0f, -0.5f, 2.0f, 448.0f};
    for (int i = 0; i < 4; i++)
        d[i] = strcmp(dtype, "F8_E4M3") == 0 ? f32_to_fp8_e4m3(w[i]) : f32_to_fp8_e5m2(w[i]);
    if (xn)
        memcpy(d + 8, xdata, xn);
    char h[1024];
    snprintf(h, sizeof h,
             "{'scaled_fp8': {'dtype': 'F8_E4M3', 'shape': [0], 'data_offsets': [0, 0]},"
             " 'blk.weight': {'dtype': '%s', 'shape': [2, 2], 'data_offsets': [0, 4]}%s}",
             dtype, extra);
    write_st("fp8.safetensors", jq(h), d, 8 + xn);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("fp8.safetensors"), NULL), want_rc);
    return f;
}

START_TEST(test_st_find_applies_fp8_scale_weight)
{
    float s = 0.25f;
    struct st_file *f = open_fp8("F8_E4M3",
                                 ", 'blk.scale_weight': {'dtype': 'F32', 'shape': [], "
                                 "'data_offsets': [8, 12]}",
                                 &s, 4, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_F8_E4M3);
    ck_assert_float_eq(t.scale, 0.25f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 1) * t.scale, -0.125f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 3) * t.scale, 112.0f);
    /* The companion and the marker stay ordinary tensors. */
    ck_assert_int_eq(st_find(f, "blk.scale_weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 1.0f);
    ck_assert_int_eq(st_find(f, "scaled_fp8", &t), ERR_OK);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_applies_fp8_weight_scale)
{
    float s = 2.0f;
    struct st_file *f = open_fp8("F8_E5M2",
                                 ", 'blk.weight_scale': {'dtype': 'F32', 'shape': [1], "
                                 "'data_offsets': [8, 12]}",
                                 &s, 4, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_OK);
    ck_assert_int_eq(t.dtype, DTYPE_F8_E5M2);
    ck_assert_float_eq(t.scale, 2.0f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 2) * t.scale, 4.0f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_prefers_scale_weight_over_weight_scale)
{
    float s[2] = {3.0f, 5.0f};
    struct st_file *f = open_fp8("F8_E4M3",
                                 ", 'blk.scale_weight': {'dtype': 'F32', 'shape': [], "
                                 "'data_offsets': [8, 12]}, 'blk.weight_scale': {'dtype': 'F32',"
                                 " 'shape': [], 'data_offsets': [12, 16]}",
                                 s, 8, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 3.0f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_reads_f16_and_bf16_scales)
{
    uint16_t s = f32_to_bf16(0.5f);
    struct st_file *f = open_fp8("F8_E4M3",
                                 ", 'blk.scale_weight': {'dtype': 'BF16', 'shape': [1, 1], "
                                 "'data_offsets': [8, 10]}",
                                 &s, 2, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 0.5f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_leaves_scale_1_without_companion)
{
    struct st_file *f = open_fp8("F8_E4M3", "", NULL, 0, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 1.0f);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_rejects_fp8_with_unusable_scale)
{
    /* Per-channel vector: cannot be a per-tensor scale. */
    float s[2] = {1.0f, 2.0f};
    struct st_file *f = open_fp8("F8_E4M3",
                                 ", 'blk.scale_weight': {'dtype': 'F32', 'shape': [2], "
                                 "'data_offsets': [8, 16]}",
                                 s, 8, ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_UNSUPPORTED);
    ck_assert_int_eq(st_find(f, "blk.scale_weight", &t), ERR_OK);
    st_close(f);

    /* Not a float, zero, and NaN. */
    int32_t i = 1;
    f = open_fp8("F8_E4M3",
                 ", 'blk.weight_scale': {'dtype': 'I32', 'shape': [], 'data_offsets': [8, 12]}", &i,
                 4, ERR_OK);
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_UNSUPPORTED);
    st_close(f);
    float z = 0.0f;
    f = open_fp8("F8_E4M3",
                 ", 'blk.weight_scale': {'dtype': 'F32', 'shape': [], 'data_offsets': [8, 12]}", &z,
                 4, ERR_OK);
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_UNSUPPORTED);
    st_close(f);
    float nan = NAN;
    f = open_fp8("F8_E4M3",
                 ", 'blk.weight_scale': {'dtype': 'F32', 'shape': [], 'data_offsets': [8, 12]}",
                 &nan, 4, ERR_OK);
    ck_assert_int_eq(st_find(f, "blk.weight", &t), ERR_UNSUPPORTED);
    st_close(f);
}
END_TEST

START_TEST(test_st_find_rejects_real_scale_on_non_fp8_weight)
{
    unsigned char d[16] = {0};
    float one = 1.0f, half = 0.5f;
    memcpy(d + 8, &one, 4);
    memcpy(d + 12, &half, 4);
    write_st("b.safetensors",
             jq("{'p.weight': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [0, 4]},"
                " 'p.scale_weight': {'dtype': 'F32', 'shape': [], 'data_offsets': [8, 12]},"
                " 'q.weight': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [4, 8]},"
                " 'q.scale_weight': {'dtype': 'F32', 'shape': [], 'data_offsets': [12, 16]}}"),
             d, sizeof d);
    struct st_file *f = NULL;
    ck_assert_int_eq(st_open(&f, tp("b.safetensors"), NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_find(f, "p.weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 1.0f);
    /* A real scale on a bf16 weight cannot be carried: refuse, do not drop it. */
    ck_assert_int_eq(st_find(f, "q.weight", &t), ERR_UNSUPPORTED);
    st_close(f);
}
END_TEST

/* ---- sets ---- */

static const char *SHARD1_H = "{'a.weight': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]},"
                              " 'b': {'dtype': 'F32', 'shape': [1], 'data_offsets': [8, 12]}}";
static const char *SHARD2_H = "{'c': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}}";

static void write_two_shards(const char *prefix)
{
    float d1[3] = {1, 2, 3}, d2[1] = {4};
    char n1[256], n2[256];
    snprintf(n1, sizeof n1, "%s-00001-of-00002.safetensors", prefix);
    snprintf(n2, sizeof n2, "%s-00002-of-00002.safetensors", prefix);
    write_st(n1, jq(SHARD1_H), d1, sizeof d1);
    write_st(n2, jq(SHARD2_H), d2, sizeof d2);
}

static void write_index(const char *name, const char *prefix, const char *extra)
{
    char b[2048];
    snprintf(b, sizeof b,
             "{'metadata': {'total_size': 16}, 'weight_map': {"
             "'a.weight': '%s-00001-of-00002.safetensors',"
             " 'b': '%s-00001-of-00002.safetensors',"
             " 'c': '%s-00002-of-00002.safetensors'%s}}",
             prefix, prefix, prefix, extra);
    write_text(name, jq(b));
}

static void expect_set_tensor(const struct st_set *s, const char *name, float v0)
{
    struct tensor t;
    ck_assert_int_eq(st_set_find(s, name, &t), ERR_OK);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0), v0);
}

START_TEST(test_st_set_open_dir_reads_index_and_shards)
{
    write_two_shards("model");
    write_index("model.safetensors.index.json", "model", "");
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_msg(st_set_open_dir(&s, tmpdir, "model", &em) == ERR_OK, "%s", em.text);
    ck_assert_uint_eq(st_set_nfiles(s), 2);
    ck_assert_uint_eq(st_set_count(s), 3);
    ck_assert_str_eq(st_set_name(s, 0), "a.weight");
    ck_assert_str_eq(st_set_name(s, 1), "b");
    ck_assert_str_eq(st_set_name(s, 2), "c");
    ck_assert_ptr_null(st_set_name(s, 3));
    expect_set_tensor(s, "a.weight", 1);
    expect_set_tensor(s, "b", 3);
    expect_set_tensor(s, "c", 4);
    struct tensor t;
    ck_assert_int_eq(st_set_find(s, "d", &t), ERR_NOTFOUND);
    ck_assert_uint_eq(st_set_bytes(s), st_bytes(st_set_file(s, 0)) + st_bytes(st_set_file(s, 1)));
    struct stat st1, st2;
    ck_assert_int_eq(stat(tp("model-00001-of-00002.safetensors"), &st1), 0);
    ck_assert_int_eq(stat(tp("model-00002-of-00002.safetensors"), &st2), 0);
    ck_assert_uint_eq(st_set_bytes(s), (size_t)(st1.st_size + st2.st_size));
    st_set_close(s);
}
END_TEST

START_TEST(test_st_set_open_dir_prefers_index_over_single_file)
{
    write_two_shards("model");
    write_index("model.safetensors.index.json", "model", "");
    float x = 9;
    write_st("model.safetensors",
             jq("{'x': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}}"), &x, 4);
    struct st_set *s = NULL;
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", NULL), ERR_OK);
    ck_assert_uint_eq(st_set_count(s), 3);
    st_set_close(s);
}
END_TEST

START_TEST(test_st_set_open_dir_reads_single_file)
{
    float x = 9;
    write_st("diffusion_pytorch_model.safetensors",
             jq("{'x': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}}"), &x, 4);
    struct st_set *s = NULL;
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "diffusion_pytorch_model", NULL), ERR_OK);
    ck_assert_uint_eq(st_set_nfiles(s), 1);
    expect_set_tensor(s, "x", 9);
    st_set_close(s);
}
END_TEST

START_TEST(test_st_set_open_dir_reads_fp16_variant)
{
    uint16_t h = f32_to_fp16(0.5f);
    write_st("model.fp16.safetensors",
             jq("{'x': {'dtype': 'F16', 'shape': [1], 'data_offsets': [0, 2]}}"), &h, 2);
    struct st_set *s = NULL;
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", NULL), ERR_OK);
    expect_set_tensor(s, "x", 0.5f);
    st_set_close(s);
}
END_TEST

START_TEST(test_st_set_open_dir_reads_fp16_variant_index)
{
    /* diffusers/transformers spelling: the variant goes before ".json". */
    write_two_shards("model.fp16");
    write_index("model.safetensors.index.fp16.json", "model.fp16", "");
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_msg(st_set_open_dir(&s, tmpdir, "model", &em) == ERR_OK, "%s", em.text);
    ck_assert_uint_eq(st_set_count(s), 3);
    st_set_close(s);
    unlink(tp("model.safetensors.index.fp16.json"));
    write_index("model.fp16.safetensors.index.json", "model.fp16", "");
    ck_assert_msg(st_set_open_dir(&s, tmpdir, "model", &em) == ERR_OK, "%s", em.text);
    ck_assert_uint_eq(st_set_nfiles(s), 2);
    st_set_close(s);
}
END_TEST

START_TEST(test_st_set_open_dir_returns_notfound_when_nothing_matches)
{
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_NOTFOUND);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(em.text, "model.safetensors"));
    ck_assert_int_eq(st_set_open_dir(&s, tp("no_such_dir"), "model", &em), ERR_NOTFOUND);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_st_set_open_dir_rejects_missing_shard)
{
    write_two_shards("model");
    unlink(tp("model-00002-of-00002.safetensors"));
    write_index("model.safetensors.index.json", "model", "");
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_NOTFOUND);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(em.text, "model.safetensors.index.json") &&
                      strstr(em.text, "\"model-00002-of-00002.safetensors\"") &&
                      strstr(em.text, "\"c\""),
                  "%s", em.text);
}
END_TEST

START_TEST(test_st_set_open_dir_rejects_tensor_absent_from_shard)
{
    write_two_shards("model");
    write_index("model.safetensors.index.json", "model",
                ", 'ghost': 'model-00002-of-00002.safetensors'");
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(em.text, "model.safetensors.index.json: tensor \"ghost\" is mapped to") &&
                      strstr(em.text, "model-00002-of-00002.safetensors"),
                  "%s", em.text);
}
END_TEST

START_TEST(test_st_set_open_dir_rejects_shard_outside_dir)
{
    write_text("model.safetensors.index.json", jq("{'weight_map': {'a': '../model.safetensors'}}"));
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(em.text, "not a file name in the same directory"));
}
END_TEST

START_TEST(test_st_set_open_dir_rejects_bad_index)
{
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    write_text("model.safetensors.index.json", "{not json");
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(em.text, "model.safetensors.index.json"));
    write_text("model.safetensors.index.json", jq("{'metadata': {}}"));
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(em.text, "weight_map"));
    write_text("model.safetensors.index.json", jq("{'weight_map': {'a': 3}}"));
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(em.text, "weight_map[\"a\"]"));
    write_text("model.safetensors.index.json", jq("{'weight_map': {'a': 'x', 'a': 'y'}}"));
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_st_set_open_dir_rejects_malformed_shard)
{
    write_two_shards("model");
    write_raw("model-00002-of-00002.safetensors", "\1\0\0\0\0\0\0\0{", 9);
    write_index("model.safetensors.index.json", "model", "");
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_dir(&s, tmpdir, "model", &em), ERR_FORMAT);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(em.text, "model-00002-of-00002.safetensors"));
}
END_TEST

START_TEST(test_st_set_open_files_rejects_duplicate_names)
{
    float d[3] = {0};
    write_st("one.safetensors", jq(SHARD1_H), d, 12);
    write_st("two.safetensors", jq("{'b': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]}}"),
             d, 4);
    const char *paths[2] = {tp("one.safetensors"), tp("two.safetensors")};
    struct st_set *s = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(st_set_open_files(&s, paths, 2, &em), ERR_FORMAT);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(em.text, "tensor \"b\" is in both") &&
                      strstr(em.text, "one.safetensors") && strstr(em.text, "two.safetensors"),
                  "%s", em.text);
}
END_TEST

START_TEST(test_st_set_open_files_reads_explicit_files)
{
    write_two_shards("m");
    const char *paths[2] = {tp("m-00002-of-00002.safetensors"), tp("m-00001-of-00002.safetensors")};
    struct st_set *s = NULL;
    ck_assert_int_eq(st_set_open_files(&s, paths, 2, NULL), ERR_OK);
    ck_assert_uint_eq(st_set_count(s), 3);
    ck_assert_str_eq(st_set_name(s, 0), "a.weight");
    expect_set_tensor(s, "c", 4);
    st_set_close(s);
    s = NULL;
    ck_assert_int_eq(st_set_open_files(&s, paths, 0, NULL), ERR_INVAL);
    ck_assert_ptr_null(s);
    const char *missing[1] = {tp("missing.safetensors")};
    ck_assert_int_eq(st_set_open_files(&s, missing, 1, NULL), ERR_NOTFOUND);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_st_set_find_applies_scale_from_other_shard)
{
    unsigned char w[4] = {0x38, 0x38, 0x38, 0x38}; /* 1.0 in E4M3 */
    float sc = 0.125f;
    write_st("s1.safetensors",
             jq("{'blk.weight': {'dtype': 'F8_E4M3', 'shape': [4], 'data_offsets': [0, 4]}}"), w,
             4);
    write_st("s2.safetensors",
             jq("{'blk.scale_weight': {'dtype': 'F32', 'shape': [], 'data_offsets': [0, 4]}}"), &sc,
             4);
    const char *paths[2] = {tp("s1.safetensors"), tp("s2.safetensors")};
    struct st_set *s = NULL;
    ck_assert_int_eq(st_set_open_files(&s, paths, 2, NULL), ERR_OK);
    struct tensor t;
    ck_assert_int_eq(st_set_find(s, "blk.weight", &t), ERR_OK);
    ck_assert_float_eq(t.scale, 0.125f);
    ck_assert_float_eq(dtype_load_f32(t.dtype, t.data, 0) * t.scale, 0.125f);
    st_set_close(s);
}
END_TEST

/* ---- the shared tiny models (only with RALUD_SHARED) ---- */

static char models[768];

static bool shared_models_available(void)
{
    const char *sh = getenv("RALUD_SHARED");
    if (!sh || !*sh)
        return false;
    snprintf(models, sizeof models, "%s/testvectors/models", sh);
    struct stat st;
    return stat(models, &st) == 0 && S_ISDIR(st.st_mode);
}

static const char *mp(const char *rel)
{
    static char buf[4][1024];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", models, rel);
    return b;
}

/* Every tensor of narrow equals the f32 tensor of the same name in wide,
 * rounded to nearest-even (how torch casts). */
static void expect_cast_of(const struct st_set *narrow, const struct st_set *wide, enum dtype dt)
{
    ck_assert_uint_eq(st_set_count(narrow), st_set_count(wide));
    for (size_t i = 0; i < st_set_count(narrow); i++) {
        const char *name = st_set_name(narrow, i);
        struct tensor a, b;
        ck_assert_int_eq(st_set_find(narrow, name, &a), ERR_OK);
        ck_assert_int_eq(st_set_find(wide, name, &b), ERR_OK);
        ck_assert_int_eq(a.dtype, dt);
        ck_assert_int_eq(b.dtype, DTYPE_F32);
        ck_assert_msg(tensor_same_shape(&a, &b), "%s: shape differs", name);
        int64_t n = tensor_nelem(&a);
        for (int64_t j = 0; j < n; j++) {
            float w = ((const float *)b.data)[j];
            uint16_t got = ((const uint16_t *)a.data)[j];
            uint16_t want = dt == DTYPE_BF16 ? f32_to_bf16(w) : f32_to_fp16(w);
            ck_assert_msg(got == want, "%s[%lld]: 0x%04x, want 0x%04x", name, (long long)j, got,
                          want);
        }
    }
}

START_TEST(test_st_set_open_dir_reads_tiny_flux_bf16_shards)
{
    struct st_set *bf = NULL, *f32 = NULL;
    struct err_msg em = {{0}};
    ck_assert_msg(st_set_open_dir(&bf, mp("tiny-flux-transformer-bf16"), "diffusion_pytorch_model",
                                  &em) == ERR_OK,
                  "%s", em.text);
    ck_assert_msg(st_set_open_dir(&f32, mp("tiny-flux/transformer"), "diffusion_pytorch_model",
                                  &em) == ERR_OK,
                  "%s", em.text);
    ck_assert_uint_eq(st_set_nfiles(bf), 4);
    ck_assert_uint_gt(st_set_count(bf), 100);
    expect_cast_of(bf, f32, DTYPE_BF16);
    st_set_close(bf);
    st_set_close(f32);
}
END_TEST

START_TEST(test_st_set_open_dir_reads_tiny_sd3_fp16_transformer)
{
    struct st_set *h = NULL, *f32 = NULL;
    ck_assert_int_eq(
        st_set_open_dir(&h, mp("tiny-sd3-transformer-fp16"), "diffusion_pytorch_model", NULL),
        ERR_OK);
    ck_assert_int_eq(
        st_set_open_dir(&f32, mp("tiny-sd3/transformer"), "diffusion_pytorch_model", NULL), ERR_OK);
    expect_cast_of(h, f32, DTYPE_F16);
    st_set_close(h);
    st_set_close(f32);
}
END_TEST

START_TEST(test_st_open_reads_every_shared_model_file)
{
    static const char *const comps[] = {"transformer", "vae", "text_encoder", "text_encoder_2",
                                        "text_encoder_3"};
    static const char *const pipes[] = {"tiny-sd3", "tiny-sd35", "tiny-flux"};
    int opened = 0;
    for (size_t p = 0; p < 3; p++) {
        for (size_t c = 0; c < 5; c++) {
            char dir[256];
            snprintf(dir, sizeof dir, "%s/%s", pipes[p], comps[c]);
            struct stat st;
            if (stat(mp(dir), &st) != 0)
                continue;
            const char *stem = c < 2 ? "diffusion_pytorch_model" : "model";
            struct st_set *s = NULL;
            struct err_msg em = {{0}};
            ck_assert_msg(st_set_open_dir(&s, mp(dir), stem, &em) == ERR_OK, "%s", em.text);
            for (size_t i = 0; i < st_set_count(s); i++) {
                struct tensor t;
                ck_assert_int_eq(st_set_find(s, st_set_name(s, i), &t), ERR_OK);
                ck_assert_uint_eq((uintptr_t)t.data % dtype_size(t.dtype), 0);
            }
            st_set_close(s);
            opened++;
        }
    }
    ck_assert_int_ge(opened, 10);
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");

    TCase *open = tcase_create("open");
    tcase_add_checked_fixture(open, setup, teardown);
    tcase_set_timeout(open, 30);
    tcase_add_test(open, test_st_open_reads_dtype_shape_and_values);
    tcase_add_test(open, test_st_open_accepts_empty_header);
    tcase_add_test(open, test_st_open_accepts_gaps_trailing_bytes_and_empty_tensors);
    tcase_add_test(open, test_st_open_reads_integer_and_bool_dtypes);
    tcase_add_test(open, test_st_open_memory_validates_like_st_open);
    tcase_add_test(open, test_st_open_rejects_missing_file);
    tcase_add_test(open, test_st_open_rejects_directory);
    tcase_add_test(open, test_st_open_rejects_truncated_header);
    tcase_add_test(open, test_st_open_rejects_header_longer_than_file);
    tcase_add_test(open, test_st_open_rejects_tiny_header_length);
    tcase_add_test(open, test_st_open_rejects_huge_header_length);
    tcase_add_test(open, test_st_open_rejects_header_not_json);
    tcase_add_test(open, test_st_open_rejects_header_not_object);
    tcase_add_test(open, test_st_open_rejects_duplicate_tensor_names);
    tcase_add_test(open, test_st_open_rejects_entry_not_object);
    tcase_add_test(open, test_st_open_rejects_missing_dtype);
    tcase_add_test(open, test_st_open_rejects_missing_shape);
    tcase_add_test(open, test_st_open_rejects_missing_offsets);
    tcase_add_test(open, test_st_open_rejects_unknown_dtype);
    tcase_add_test(open, test_st_open_rejects_negative_shape);
    tcase_add_test(open, test_st_open_rejects_non_integer_shape);
    tcase_add_test(open, test_st_open_rejects_more_than_8_dims);
    tcase_add_test(open, test_st_open_rejects_malformed_offsets);
    tcase_add_test(open, test_st_open_rejects_offsets_end_before_begin);
    tcase_add_test(open, test_st_open_rejects_offsets_out_of_range);
    tcase_add_test(open, test_st_open_rejects_overlapping_offsets);
    tcase_add_test(open, test_st_open_rejects_size_mismatch);
    tcase_add_test(open, test_st_open_rejects_shape_overflow);
    tcase_add_test(open, test_st_open_rejects_bad_metadata);
    tcase_add_test(open, test_st_open_names_control_characters_safely);
    suite_add_tcase(s, open);

    TCase *find = tcase_create("find");
    tcase_add_checked_fixture(find, setup, teardown);
    tcase_set_timeout(find, 30);
    tcase_add_test(find, test_st_find_returns_notfound_for_unknown_name);
    tcase_add_test(find, test_st_find_reads_f16_and_bf16_values);
    tcase_add_test(find, test_st_find_returns_scalar_as_shape_1);
    tcase_add_test(find, test_st_find_folds_leading_unit_dims);
    tcase_add_test(find, test_st_find_realigns_misaligned_data);
    tcase_add_test(find, test_st_count_and_name_list_names_in_sorted_order);
    suite_add_tcase(s, find);

    TCase *fp8 = tcase_create("fp8_scale");
    tcase_add_checked_fixture(fp8, setup, teardown);
    tcase_set_timeout(fp8, 30);
    tcase_add_test(fp8, test_st_find_applies_fp8_scale_weight);
    tcase_add_test(fp8, test_st_find_applies_fp8_weight_scale);
    tcase_add_test(fp8, test_st_find_prefers_scale_weight_over_weight_scale);
    tcase_add_test(fp8, test_st_find_reads_f16_and_bf16_scales);
    tcase_add_test(fp8, test_st_find_leaves_scale_1_without_companion);
    tcase_add_test(fp8, test_st_find_rejects_fp8_with_unusable_scale);
    tcase_add_test(fp8, test_st_find_rejects_real_scale_on_non_fp8_weight);
    suite_add_tcase(s, fp8);

    TCase *set = tcase_create("set");
    tcase_add_checked_fixture(set, setup, teardown);
    tcase_set_timeout(set, 30);
    tcase_add_test(set, test_st_set_open_dir_reads_index_and_shards);
    tcase_add_test(set, test_st_set_open_dir_prefers_index_over_single_file);
    tcase_add_test(set, test_st_set_open_dir_reads_single_file);
    tcase_add_test(set, test_st_set_open_dir_reads_fp16_variant);
    tcase_add_test(set, test_st_set_open_dir_reads_fp16_variant_index);
    tcase_add_test(set, test_st_set_open_dir_returns_notfound_when_nothing_matches);
    tcase_add_test(set, test_st_set_open_dir_rejects_missing_shard);
    tcase_add_test(set, test_st_set_open_dir_rejects_tensor_absent_from_shard);
    tcase_add_test(set, test_st_set_open_dir_rejects_shard_outside_dir);
    tcase_add_test(set, test_st_set_open_dir_rejects_bad_index);
    tcase_add_test(set, test_st_set_open_dir_rejects_malformed_shard);
    tcase_add_test(set, test_st_set_open_files_rejects_duplicate_names);
    tcase_add_test(set, test_st_set_open_files_reads_explicit_files);
    tcase_add_test(set, test_st_set_find_applies_scale_from_other_shard);
    suite_add_tcase(s, set);

    if (shared_models_available()) {
        TCase *real = tcase_create("shared_models");
        tcase_set_timeout(real, 60);
        tcase_add_checked_fixture(real, setup, teardown);
        tcase_add_test(real, test_st_set_open_dir_reads_tiny_flux_bf16_shards);
        tcase_add_test(real, test_st_set_open_dir_reads_tiny_sd3_fp16_transformer);
        tcase_add_test(real, test_st_open_reads_every_shared_model_file);
        suite_add_tcase(s, real);
    } else {
        fprintf(stderr, "test_safetensors: RALUD_SHARED not set; skipping the shared-model "
                        "tests\n");
    }
    return s;
}

CHECK_MAIN(safetensors_suite)
