/*
 * The IDX reader: every element type comes back in host byte order from raw and gzip
 * files alike, and every malformed file (truncated, wrong magic, unknown type, bad
 * dimensions, trailing bytes, empty, missing, corrupt gzip) fails with the right status
 * and a message that names the file and the problem.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/idx_fixture.h"
#include "ddp/data.h"

/* Reads path and expects failure with status st and a message containing what (and the
 * path); the output must be left empty. */
static void expect_read_fails(const char *path, ddp_status st, const char *what) {
    ddp_idx idx;
    ddp_error_clear();
    assert_int_equal(ddp_idx_read(path, &idx), st);
    assert_int_equal(ddp_error_status(), st);
    assert_msg_has(what);
    assert_msg_has(path);
    assert_null(idx.data);
    assert_int_equal(idx.count, 0);
    ddp_idx_free(&idx); /* harmless on an emptied result */
}

static void u8_round_trip(const char *dir, int gz) {
    char path[512];
    fx_path(path, sizeof path, dir, gz ? "u8.gz" : "u8");
    const uint32_t dims[3] = {2, 3, 4};
    unsigned char data[24];
    for (int i = 0; i < 24; i++)
        data[i] = (unsigned char)(i * 11);
    fx_write_idx(path, DDP_IDX_U8, 3, dims, data, sizeof data, gz);

    ddp_idx idx;
    assert_int_equal(ddp_idx_read(path, &idx), DDP_OK);
    assert_int_equal(idx.type, DDP_IDX_U8);
    assert_int_equal(idx.ndims, 3);
    assert_int_equal(idx.dims[0], 2);
    assert_int_equal(idx.dims[1], 3);
    assert_int_equal(idx.dims[2], 4);
    assert_int_equal(idx.count, 24);
    assert_int_equal(idx.elem_size, 1);
    assert_memory_equal(idx.data, data, sizeof data);
    ddp_idx_free(&idx);
    assert_null(idx.data);
}

static void test_reads_u8_raw_and_gzip(void **state) {
    u8_round_trip(*state, 0);
    u8_round_trip(*state, 1);
}

static void test_converts_i32_from_big_endian(void **state) {
    const int32_t want[5] = {1, -2, 0x01020304, INT32_MIN, INT32_MAX};
    unsigned char data[20];
    for (int i = 0; i < 5; i++)
        fx_be32(data + 4 * i, (uint32_t)want[i]);
    /* The file's first element is 00 00 00 01: big-endian, whatever the host is. */
    assert_int_equal(data[3], 1);
    const uint32_t dims[1] = {5};
    for (int gz = 0; gz <= 1; gz++) {
        char path[512];
        fx_path(path, sizeof path, *state, gz ? "i32.gz" : "i32");
        fx_write_idx(path, DDP_IDX_I32, 1, dims, data, sizeof data, gz);
        ddp_idx idx;
        assert_int_equal(ddp_idx_read(path, &idx), DDP_OK);
        assert_int_equal(idx.type, DDP_IDX_I32);
        assert_int_equal(idx.elem_size, 4);
        assert_int_equal(idx.count, 5);
        const int32_t *got = idx.data;
        for (int i = 0; i < 5; i++)
            assert_int_equal(got[i], want[i]);
        ddp_idx_free(&idx);
    }
}

static void test_converts_f32_from_big_endian(void **state) {
    const float want[4] = {1.5f, -0.25f, 3.0e38f, 1.0e-40f /* subnormal */};
    unsigned char data[16];
    for (int i = 0; i < 4; i++) {
        uint32_t bits;
        memcpy(&bits, &want[i], 4);
        fx_be32(data + 4 * i, bits);
    }
    assert_int_equal(data[0], 0x3F); /* 1.5f is 3F C0 00 00 */
    assert_int_equal(data[1], 0xC0);
    const uint32_t dims[2] = {2, 2};
    char path[512];
    fx_path(path, sizeof path, *state, "f32.gz");
    fx_write_idx(path, DDP_IDX_F32, 2, dims, data, sizeof data, 1);
    ddp_idx idx;
    assert_int_equal(ddp_idx_read(path, &idx), DDP_OK);
    assert_int_equal(idx.type, DDP_IDX_F32);
    assert_int_equal(idx.ndims, 2);
    assert_memory_equal(idx.data, want, sizeof want);
    ddp_idx_free(&idx);
}

static void test_converts_i8_i16_f64(void **state) {
    /* Parsed from memory: the same conversion as the file path, without the file. */
    unsigned char buf[64];
    const uint32_t dims3[1] = {3};

    size_t h = fx_idx_header(buf, DDP_IDX_I8, 1, dims3);
    buf[h] = 0x80, buf[h + 1] = 0x7F, buf[h + 2] = 0xFF;
    ddp_idx idx;
    assert_int_equal(ddp_idx_parse(buf, h + 3, "i8", &idx), DDP_OK);
    const int8_t *i8 = idx.data;
    assert_int_equal(i8[0], -128);
    assert_int_equal(i8[1], 127);
    assert_int_equal(i8[2], -1);
    ddp_idx_free(&idx);

    h = fx_idx_header(buf, DDP_IDX_I16, 1, dims3);
    const int16_t w16[3] = {-300, 0x1234, INT16_MIN};
    for (int i = 0; i < 3; i++)
        fx_be16(buf + h + 2 * i, (uint16_t)w16[i]);
    assert_int_equal(ddp_idx_parse(buf, h + 6, "i16", &idx), DDP_OK);
    assert_int_equal(idx.elem_size, 2);
    const int16_t *i16 = idx.data;
    for (int i = 0; i < 3; i++)
        assert_int_equal(i16[i], w16[i]);
    ddp_idx_free(&idx);

    h = fx_idx_header(buf, DDP_IDX_F64, 1, dims3);
    const double w64[3] = {-2.5, 1.0 / 3.0, 6.02214076e23};
    for (int i = 0; i < 3; i++) {
        uint64_t bits;
        memcpy(&bits, &w64[i], 8);
        fx_be64(buf + h + 8 * i, bits);
    }
    assert_int_equal(ddp_idx_parse(buf, h + 24, "f64", &idx), DDP_OK);
    assert_int_equal(idx.elem_size, 8);
    assert_memory_equal(idx.data, w64, sizeof w64);
    ddp_idx_free(&idx);
}

static void test_accepts_four_dims_and_an_empty_tensor(void **state) {
    unsigned char buf[32];
    const uint32_t dims[4] = {1, 2, 1, 2};
    size_t h = fx_idx_header(buf, DDP_IDX_U8, 4, dims);
    memcpy(buf + h, "\x01\x02\x03\x04", 4);
    ddp_idx idx;
    assert_int_equal(ddp_idx_parse(buf, h + 4, "4d", &idx), DDP_OK);
    assert_int_equal(idx.ndims, 4);
    assert_int_equal(idx.count, 4);
    ddp_idx_free(&idx);

    const uint32_t zero[2] = {0, 28};
    h = fx_idx_header(buf, DDP_IDX_F32, 2, zero);
    assert_int_equal(ddp_idx_parse(buf, h, "empty tensor", &idx), DDP_OK);
    assert_int_equal(idx.count, 0);
    assert_non_null(idx.data);
    ddp_idx_free(&idx);
}

static void test_rejects_truncated_header(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "short-header");
    /* Declares 3 dimensions but holds only the first. */
    unsigned char buf[8] = {0, 0, DDP_IDX_U8, 3, 0, 0, 0, 10};
    fx_write(path, buf, sizeof buf, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "truncated in its header");
    assert_msg_has("16-byte header");

    fx_path(path, sizeof path, *state, "short-magic.gz");
    fx_write(path, buf, 3, 1);
    expect_read_fails(path, DDP_ERR_FORMAT, "truncated");
    assert_msg_has("3 bytes");
}

static void test_rejects_truncated_data(void **state) {
    const uint32_t dims[2] = {4, 5};
    unsigned char data[19] = {0};
    for (int gz = 0; gz <= 1; gz++) {
        char path[512];
        fx_path(path, sizeof path, *state, gz ? "short-data.gz" : "short-data");
        fx_write_idx(path, DDP_IDX_U8, 2, dims, data, sizeof data, gz);
        expect_read_fails(path, DDP_ERR_FORMAT, "truncated");
        /* Expected 12 + 20 bytes, got 12 + 19. */
        assert_msg_has("expected 32 bytes");
        assert_msg_has("has 31 bytes");
        assert_msg_has("4 x 5");
    }
}

static void test_rejects_trailing_bytes(void **state) {
    const uint32_t dims[1] = {4};
    unsigned char data[4 + 70000] = {0};
    for (int gz = 0; gz <= 1; gz++) {
        char path[512];
        fx_path(path, sizeof path, *state, gz ? "long.gz" : "long");
        fx_write_idx(path, DDP_IDX_U8, 1, dims, data, 7, gz);
        expect_read_fails(path, DDP_ERR_FORMAT, "3 trailing bytes");
        assert_msg_has("expected 12 bytes");
        assert_msg_has("has 15 bytes");

        /* Trailing data longer than one read still counts exactly. */
        fx_write_idx(path, DDP_IDX_U8, 1, dims, data, sizeof data, gz);
        expect_read_fails(path, DDP_ERR_FORMAT, "70000 trailing bytes");
    }
    unsigned char buf[16];
    size_t h = fx_idx_header(buf, DDP_IDX_U8, 1, dims);
    memset(buf + h, 0, sizeof buf - h);
    ddp_idx idx;
    assert_int_equal(ddp_idx_parse(buf, sizeof buf, "mem-long", &idx), DDP_ERR_FORMAT);
    assert_msg_has("mem-long");
    assert_msg_has("4 trailing bytes");
}

static void test_rejects_wrong_magic(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "magic");
    unsigned char buf[12] = {0x12, 0x34, DDP_IDX_U8, 1, 0, 0, 0, 4, 1, 2, 3, 4};
    fx_write(path, buf, sizeof buf, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "bad magic 0x12 0x34");
    assert_msg_has("not an IDX file");
}

static void test_rejects_unknown_type(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "type.gz");
    unsigned char buf[12] = {0, 0, 0x07, 1, 0, 0, 0, 4, 1, 2, 3, 4};
    fx_write(path, buf, sizeof buf, 1);
    expect_read_fails(path, DDP_ERR_FORMAT, "unknown element type code 0x07");
}

static void test_rejects_zero_or_too_many_dims(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "dims0");
    unsigned char buf[32] = {0, 0, DDP_IDX_U8, 0};
    fx_write(path, buf, 4, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "declares 0 dimensions");

    fx_path(path, sizeof path, *state, "dims5");
    const uint32_t dims[5] = {1, 1, 1, 1, 1};
    fx_write_idx(path, DDP_IDX_U8, 5, dims, "x", 1, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "declares 5 dimensions");
}

static void test_rejects_overflowing_and_huge_dims(void **state) {
    unsigned char buf[32];
    const uint32_t dims[4] = {65536, 65536, 65536, 65536}; /* 2^64 elements */
    size_t h = fx_idx_header(buf, DDP_IDX_U8, 4, dims);
    ddp_idx idx;
    assert_int_equal(ddp_idx_parse(buf, h, "overflow", &idx), DDP_ERR_FORMAT);
    assert_msg_has("overflows");
    assert_msg_has("65536 x 65536 x 65536 x 65536");

    /* 8 GiB declared in a tiny file: refused before any data is read or allocated. */
    char path[512];
    fx_path(path, sizeof path, *state, "huge.gz");
    const uint32_t big[3] = {65536, 65536, 2};
    fx_write_idx(path, DDP_IDX_U8, 3, big, NULL, 0, 1);
    expect_read_fails(path, DDP_ERR_FORMAT, "4 GiB");
}

static void test_rejects_empty_file(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "empty");
    fx_write(path, NULL, 0, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "is empty");
    fx_path(path, sizeof path, *state, "empty.gz");
    fx_write(path, NULL, 0, 1);
    expect_read_fails(path, DDP_ERR_FORMAT, "is empty");
}

static void test_rejects_missing_file_and_directory(void **state) {
    char path[512];
    fx_path(path, sizeof path, *state, "no-such-file.gz");
    expect_read_fails(path, DDP_ERR_IO, "No such file or directory");
    assert_msg_has("cannot open");
    /* A directory opens but cannot be read. */
    expect_read_fails(*state, DDP_ERR_IO, "Is a directory");
}

static void test_rejects_corrupt_gzip(void **state) {
    const uint32_t dims[2] = {64, 64};
    unsigned char data[4096];
    for (int i = 0; i < 4096; i++)
        data[i] = (unsigned char)((i * 7919) >> 3);
    unsigned char file[4096 + 12];
    size_t h = fx_idx_header(file, DDP_IDX_U8, 2, dims);
    memcpy(file + h, data, sizeof data);

    char path[512];
    fx_path(path, sizeof path, *state, "corrupt.gz");
    size_t len;
    unsigned char *gz = fx_gzip_bytes(path, file, h + sizeof data, &len);

    /* Damaged compressed data: zlib sees an invalid stream or a CRC mismatch. */
    unsigned char *bad = malloc(len);
    assert_non_null(bad);
    memcpy(bad, gz, len);
    for (size_t i = len / 2; i < len / 2 + 16 && i < len - 8; i++)
        bad[i] ^= 0x5A;
    fx_write(path, bad, len, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "corrupt");

    /* A gzip stream cut off in the middle of the data. */
    fx_write(path, gz, len / 2, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "corrupt or truncated");

    /* Cut off right after the gzip header, before any IDX byte. */
    fx_write(path, gz, 12, 0);
    expect_read_fails(path, DDP_ERR_FORMAT, "truncated");
    free(bad);
    free(gz);
}

static void test_parse_rejects_bad_arguments(void **state) {
    ddp_idx idx;
    assert_int_equal(ddp_idx_parse(NULL, 10, "x", &idx), DDP_ERR_INVALID_ARG);
    assert_int_equal(ddp_idx_read(NULL, &idx), DDP_ERR_INVALID_ARG);
    /* A NULL name still gives a usable message. */
    assert_int_equal(ddp_idx_parse("", 0, NULL, &idx), DDP_ERR_FORMAT);
    assert_msg_has("<memory>");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reads_u8_raw_and_gzip, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_converts_i32_from_big_endian, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_converts_f32_from_big_endian, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test(test_converts_i8_i16_f64),
        cmocka_unit_test(test_accepts_four_dims_and_an_empty_tensor),
        cmocka_unit_test_setup_teardown(test_rejects_truncated_header, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_truncated_data, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_trailing_bytes, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_wrong_magic, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_unknown_type, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_zero_or_too_many_dims, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_overflowing_and_huge_dims, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_empty_file, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_missing_file_and_directory, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_rejects_corrupt_gzip, fx_tmpdir_setup,
                                        fx_tmpdir_teardown),
        cmocka_unit_test(test_parse_rejects_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
