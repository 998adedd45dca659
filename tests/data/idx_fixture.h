/*
 * Test fixtures for the data module: a private temporary directory, and writers for
 * IDX files (raw or gzip) whose bytes the test controls exactly, so that every
 * malformation the reader must reject can be produced.
 */
#ifndef DDP_TESTS_IDX_FIXTURE_H
#define DDP_TESTS_IDX_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

/* A fresh directory under $TMPDIR (or /tmp); fails the test if it cannot be made. */
char *fx_tmpdir(void);
/* Removes the directory and everything in it, and frees the name. */
void fx_rmdir(char *dir);
/* CMocka group setup and teardown: *state is a fresh fx_tmpdir(), removed after. */
int fx_tmpdir_setup(void **state);
int fx_tmpdir_teardown(void **state);
/* Writes "<dir>/<name>" into buf (cap bytes) and returns buf. */
const char *fx_path(char *buf, size_t cap, const char *dir, const char *name);

/* Writes len bytes to path, through gzip when gz is set. */
void fx_write(const char *path, const void *buf, size_t len, int gz);
/* Writes a gzip file and returns its bytes (malloc'ed) so a test can damage them. */
unsigned char *fx_gzip_bytes(const char *path, const void *buf, size_t len, size_t *out_len);

/* Writes an IDX header into buf (at least 4 + 4 * ndims bytes); returns its length. */
size_t fx_idx_header(unsigned char *buf, int type, int ndims, const uint32_t *dims);
/* An IDX file with the given header followed by `data` exactly as given (big-endian
 * already). */
void fx_write_idx(const char *path, int type, int ndims, const uint32_t *dims, const void *data,
                  size_t data_len, int gz);

/* Big-endian encoders for building element data. */
void fx_be16(unsigned char *p, uint16_t v);
void fx_be32(unsigned char *p, uint32_t v);
void fx_be64(unsigned char *p, uint64_t v);

#endif
