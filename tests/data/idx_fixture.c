/*
 * Temporary directories and exact-byte IDX writers for the data tests (see
 * idx_fixture.h).
 */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "data/idx_fixture.h"

char *fx_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0') base = "/tmp";
    char *dir = malloc(strlen(base) + 32);
    assert_non_null(dir);
    sprintf(dir, "%s/ddp-data-test-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

void fx_rmdir(char *dir) {
    if (dir == NULL) return;
    /* Depth first, so that the directory is empty when its turn comes. */
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

const char *fx_path(char *buf, size_t cap, const char *dir, const char *name) {
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < cap);
    return buf;
}

void fx_write(const char *path, const void *buf, size_t len, int gz) {
    if (gz) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        if (len > 0) assert_int_equal(gzwrite(f, buf, (unsigned)len), (int)len);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        if (len > 0) assert_int_equal(fwrite(buf, 1, len, f), len);
        assert_int_equal(fclose(f), 0);
    }
}

unsigned char *fx_gzip_bytes(const char *path, const void *buf, size_t len, size_t *out_len) {
    fx_write(path, buf, len, 1);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size > 0);
    rewind(f);
    unsigned char *bytes = malloc((size_t)size);
    assert_non_null(bytes);
    assert_int_equal(fread(bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *out_len = (size_t)size;
    return bytes;
}

void fx_be16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

void fx_be32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

void fx_be64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

size_t fx_idx_header(unsigned char *buf, int type, int ndims, const uint32_t *dims) {
    buf[0] = 0;
    buf[1] = 0;
    buf[2] = (unsigned char)type;
    buf[3] = (unsigned char)ndims;
    for (int i = 0; i < ndims; i++)
        fx_be32(buf + 4 + 4 * i, dims[i]);
    return 4 + 4 * (size_t)ndims;
}

void fx_write_idx(const char *path, int type, int ndims, const uint32_t *dims, const void *data,
                  size_t data_len, int gz) {
    unsigned char *buf = malloc(4 + 4 * (size_t)ndims + data_len);
    assert_non_null(buf);
    size_t h = fx_idx_header(buf, type, ndims, dims);
    if (data_len > 0) memcpy(buf + h, data, data_len);
    fx_write(path, buf, h + data_len, gz);
    free(buf);
}

int fx_tmpdir_setup(void **state) {
    *state = fx_tmpdir();
    return 0;
}

int fx_tmpdir_teardown(void **state) {
    fx_rmdir(*state);
    return 0;
}
