/*
 * The IDX reader. A file is a big-endian header (two zero bytes, a type code, the number
 * of dimensions, then each dimension as a 32-bit integer) followed by exactly
 * product(dims) elements, also big-endian. Files are read through zlib, which passes raw
 * files through unchanged, so one path serves both gzip-compressed and raw files.
 *
 * Reading validates the header before it reads any data, so a corrupt or hostile header
 * can never make the reader allocate more than the size the header declares, and that
 * size is capped.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ddp/data.h"

/* Larger than any dataset this reader is meant for (Fashion-MNIST is 47 MB), small enough
 * that a wrong header fails with a message instead of exhausting host memory. */
#define IDX_MAX_BYTES  ((size_t)4 << 30)
#define IDX_MAX_HEADER (4 + 4 * DDP_IDX_MAX_DIMS)

typedef struct {
    ddp_idx_type type;
    int ndims;
    uint32_t dims[DDP_IDX_MAX_DIMS];
    size_t elem_size;
    size_t count;        /* product of dims */
    size_t header_bytes; /* 4 + 4 * ndims */
    size_t total_bytes;  /* header_bytes + count * elem_size */
} idx_header;

static const char *type_name(int code) {
    switch (code) {
    case DDP_IDX_U8: return "u8";
    case DDP_IDX_I8: return "i8";
    case DDP_IDX_I16: return "i16";
    case DDP_IDX_I32: return "i32";
    case DDP_IDX_F32: return "f32";
    case DDP_IDX_F64: return "f64";
    default: return NULL;
    }
}

static size_t type_size(ddp_idx_type type) {
    switch (type) {
    case DDP_IDX_U8:
    case DDP_IDX_I8: return 1;
    case DDP_IDX_I16: return 2;
    case DDP_IDX_I32:
    case DDP_IDX_F32: return 4;
    case DDP_IDX_F64: return 8;
    }
    return 0;
}

static uint32_t load_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* "60000 x 28 x 28", for messages. */
static const char *dims_str(const idx_header *h, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < h->ndims && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, i ? " x %u" : "%u", (unsigned)h->dims[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    return buf;
}

/* Decodes and validates the header in the first `len` bytes of buf; everything except
 * whether the data that follows has the right length. */
static ddp_status parse_header(const unsigned char *buf, size_t len, const char *name,
                               idx_header *h) {
    memset(h, 0, sizeof *h);
    if (len == 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' is empty (0 bytes): re-download or re-extract it", name);
    if (len < 4)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' is truncated: it has %zu bytes, fewer than the 4-byte "
                        "magic number; re-download it",
                        name, len);
    if (buf[0] != 0 || buf[1] != 0)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "'%s' is not an IDX file: it starts with bad magic 0x%02x 0x%02x where "
                        "IDX has two zero bytes; check that the path names an MNIST-style "
                        "images or labels file",
                        name, buf[0], buf[1]);
    if (type_name(buf[2]) == NULL)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' has unknown element type code 0x%02x; known codes are "
                        "0x08 (u8), 0x09 (i8), 0x0B (i16), 0x0C (i32), 0x0D (f32) and "
                        "0x0E (f64); the file is corrupt or not IDX",
                        name, buf[2]);
    h->type = (ddp_idx_type)buf[2];
    h->elem_size = type_size(h->type);
    h->ndims = buf[3];
    if (h->ndims < 1 || h->ndims > DDP_IDX_MAX_DIMS)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' declares %d dimensions; ddp reads files with 1 to %d "
                        "dimensions, so the file is corrupt or not a dataset file",
                        name, h->ndims, DDP_IDX_MAX_DIMS);
    h->header_bytes = 4 + 4 * (size_t)h->ndims;
    if (len < h->header_bytes)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' is truncated in its header: %d dimensions need a "
                        "%zu-byte header but the file has %zu bytes; re-download it",
                        name, h->ndims, h->header_bytes, len);

    size_t count = 1;
    for (int i = 0; i < h->ndims; i++) {
        h->dims[i] = load_be32(buf + 4 + 4 * i);
        if (__builtin_mul_overflow(count, (size_t)h->dims[i], &count)) {
            char dims[128];
            return DDP_FAIL(DDP_ERR_FORMAT,
                            "IDX file '%s' has dimensions %s whose product overflows; the "
                            "header is corrupt",
                            name, dims_str(h, dims, sizeof dims));
        }
    }
    h->count = count;
    size_t data_bytes;
    if (__builtin_mul_overflow(count, h->elem_size, &data_bytes) ||
        __builtin_add_overflow(data_bytes, h->header_bytes, &h->total_bytes)) {
        char dims[128];
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' has dimensions %s of %s whose size in bytes overflows; "
                        "the header is corrupt",
                        name, dims_str(h, dims, sizeof dims), type_name(h->type));
    }
    return DDP_OK;
}

/* The one message for a length that disagrees with the header; `at_least` when the
 * reader stopped counting before the end of the file. */
static ddp_status size_mismatch(const idx_header *h, size_t actual, int at_least,
                                const char *name) {
    char dims[128];
    dims_str(h, dims, sizeof dims);
    if (actual < h->total_bytes)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' is truncated: its header declares %s %s elements, "
                        "expected %zu bytes (%zu header + %zu x %zu), but it has %zu bytes; "
                        "re-download it",
                        name, dims, type_name(h->type), h->total_bytes, h->header_bytes, h->count,
                        h->elem_size, actual);
    return DDP_FAIL(DDP_ERR_FORMAT,
                    "IDX file '%s' has %s%zu trailing bytes: its header declares %s %s "
                    "elements, expected %zu bytes, but it has %s%zu bytes; the file is "
                    "corrupt or two files were concatenated",
                    name, at_least ? "at least " : "", actual - h->total_bytes, dims,
                    type_name(h->type), h->total_bytes, at_least ? "at least " : "", actual);
}

/* Copies count big-endian elements of `size` bytes into host order. Assembling each
 * value from its bytes is correct on any host, and floats travel as their bit patterns. */
static void copy_from_be(void *dst, const unsigned char *src, size_t count, size_t size) {
    if (size == 1) {
        memcpy(dst, src, count);
        return;
    }
    unsigned char *d = dst;
    for (size_t i = 0; i < count; i++, src += size, d += size) {
        uint64_t v = 0;
        for (size_t b = 0; b < size; b++)
            v = v << 8 | src[b];
        if (size == 2) {
            uint16_t v16 = (uint16_t)v;
            memcpy(d, &v16, 2);
        } else if (size == 4) {
            uint32_t v32 = (uint32_t)v;
            memcpy(d, &v32, 4);
        } else {
            memcpy(d, &v, 8);
        }
    }
}

ddp_status ddp_idx_parse(const void *buf, size_t len, const char *name, ddp_idx *out) {
    if (out == NULL || (buf == NULL && len > 0))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "ddp_idx_parse: out is NULL or buf is NULL with len %zu", len);
    memset(out, 0, sizeof *out);
    if (name == NULL) name = "<memory>";

    idx_header h;
    DDP_CHECK(parse_header(buf, len, name, &h));
    if (len != h.total_bytes) return size_mismatch(&h, len, 0, name);

    /* Never a NULL data pointer, even for an empty tensor, so callers need not
     * special-case it. */
    size_t bytes = h.count * h.elem_size;
    void *data = malloc(bytes ? bytes : 1);
    if (data == NULL)
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for %zu bytes of IDX file '%s'", bytes,
                        name);
    copy_from_be(data, (const unsigned char *)buf + h.header_bytes, h.count, h.elem_size);

    out->type = h.type;
    out->ndims = h.ndims;
    memcpy(out->dims, h.dims, sizeof h.dims);
    out->count = h.count;
    out->elem_size = h.elem_size;
    out->data = data;
    return DDP_OK;
}

/* Reads up to `want` bytes; fewer only at the end of the file. A stream error (corrupt
 * gzip data, a read error) fails. */
static ddp_status read_upto(gzFile f, void *buf, size_t want, size_t *got, const char *path) {
    unsigned char *p = buf;
    *got = 0;
    while (*got < want) {
        /* gzread takes an unsigned length and returns an int. */
        size_t left = want - *got;
        unsigned chunk = left > (1u << 30) ? (1u << 30) : (unsigned)left;
        int n = gzread(f, p + *got, chunk);
        if (n < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            if (zerr == Z_ERRNO) msg = strerror(errno);
            return DDP_FAIL(zerr == Z_ERRNO ? DDP_ERR_IO : DDP_ERR_FORMAT,
                            "cannot read IDX file '%s': %s; if it is gzip-compressed the "
                            "stream is corrupt, so re-download it",
                            path, msg);
        }
        if (n == 0) break;
        *got += (size_t)n;
    }
    return DDP_OK;
}

/* zlib reports a gzip stream that ends early as a soft error at the end of the file, not
 * as a failed read, so it is checked once the data has been read. */
static ddp_status check_stream_end(gzFile f, const char *path) {
    int zerr;
    const char *msg = gzerror(f, &zerr);
    if (zerr != Z_OK)
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "gzip stream of IDX file '%s' is corrupt or truncated (zlib: %s); "
                        "re-download it",
                        path, msg);
    return DDP_OK;
}

/* Counts what is left in the stream (up to IDX_MAX_BYTES) for the trailing-bytes message. */
static ddp_status count_rest(gzFile f, size_t *rest, int *at_least, const char *path) {
    unsigned char scratch[1 << 16];
    *rest = 0;
    *at_least = 0;
    for (;;) {
        size_t got;
        DDP_CHECK(read_upto(f, scratch, sizeof scratch, &got, path));
        *rest += got;
        if (got < sizeof scratch) return DDP_OK;
        if (*rest >= IDX_MAX_BYTES) {
            *at_least = 1;
            return DDP_OK;
        }
    }
}

/* Reads up to `want` bytes of the file, of which the first head_len (the header) are
 * already in `head`, into a buffer that grows with the data that actually arrives
 * (doubling from 1 MiB) rather than one of the size the header declares: a file of a
 * few bytes whose header claims gigabytes then costs a few bytes, not a huge allocation
 * that fails, or succeeds and is freed a moment later. */
static ddp_status read_body(gzFile f, const char *path, const unsigned char *head, size_t head_len,
                            size_t want, unsigned char **out, size_t *len) {
    size_t cap = want < ((size_t)1 << 20) ? want : ((size_t)1 << 20);
    if (cap < head_len) cap = head_len;
    unsigned char *buf = malloc(cap);
    if (buf == NULL)
        return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for %zu bytes of IDX file '%s'", cap,
                        path);
    memcpy(buf, head, head_len);
    size_t n = head_len;
    for (;;) {
        size_t got;
        ddp_status s = read_upto(f, buf + n, cap - n, &got, path);
        if (s != DDP_OK) {
            free(buf);
            DDP_CHECK(s);
        }
        n += got;
        if (n < cap || cap == want) break; /* the end of the file, or all that was wanted */
        size_t next = cap > want / 2 ? want : 2 * cap;
        unsigned char *grown = realloc(buf, next);
        if (grown == NULL) {
            free(buf);
            return DDP_FAIL(DDP_ERR_NOMEM, "out of host memory for %zu bytes of IDX file '%s'",
                            next, path);
        }
        buf = grown;
        cap = next;
    }
    *out = buf;
    *len = n;
    return DDP_OK;
}

static ddp_status read_open(gzFile f, const char *path, ddp_idx *out) {
    unsigned char head[IDX_MAX_HEADER];
    size_t got, more = 0;
    DDP_CHECK(read_upto(f, head, 4, &got, path));
    if (got == 4 && head[3] >= 1 && head[3] <= DDP_IDX_MAX_DIMS)
        DDP_CHECK(read_upto(f, head + 4, 4 * (size_t)head[3], &more, path));
    size_t head_len = got + more;
    idx_header h;
    ddp_status st = parse_header(head, head_len, path, &h);
    if (st != DDP_OK) {
        /* A gzip stream that broke inside the header is the root cause, not the header. */
        DDP_CHECK(check_stream_end(f, path));
        DDP_CHECK(st);
    }
    if (h.total_bytes > IDX_MAX_BYTES) {
        char dims[128];
        return DDP_FAIL(DDP_ERR_FORMAT,
                        "IDX file '%s' declares %s %s elements, %zu bytes, more than the %zu "
                        "bytes (4 GiB) ddp reads; the header is corrupt or the file is not "
                        "a dataset ddp supports",
                        path, dims_str(&h, dims, sizeof dims), type_name(h.type), h.total_bytes,
                        IDX_MAX_BYTES);
    }

    /* One byte more than the header declares, so that trailing data shows up. */
    unsigned char *buf = NULL;
    size_t len = 0;
    ddp_status s;
    DDP_CHECK_GOTO(read_body(f, path, head, head_len, h.total_bytes + 1, &buf, &len), s, done);
    DDP_CHECK_GOTO(check_stream_end(f, path), s, done);
    if (len > h.total_bytes) {
        size_t rest;
        int at_least;
        DDP_CHECK_GOTO(count_rest(f, &rest, &at_least, path), s, done);
        DDP_CHECK_GOTO(check_stream_end(f, path), s, done);
        s = size_mismatch(&h, len + rest, at_least, path);
        goto done;
    }
    DDP_CHECK_GOTO(ddp_idx_parse(buf, len, path, out), s, done);
done:
    free(buf);
    return s;
}

ddp_status ddp_idx_read(const char *path, ddp_idx *out) {
    if (path == NULL || out == NULL)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "ddp_idx_read: path or out is NULL");
    memset(out, 0, sizeof *out);
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (f == NULL) {
        /* gzopen leaves errno at 0 when it failed for want of memory, not in open(). */
        int e = errno;
        return DDP_FAIL(e ? DDP_ERR_IO : DDP_ERR_NOMEM,
                        "cannot open IDX file '%s': %s; check the path (and --data DIR)", path,
                        e ? strerror(e) : "out of memory");
    }
    gzbuffer(f, 1u << 18); /* fewer system calls than zlib's 8 KiB default */
    ddp_status s = read_open(f, path, out);
    /* Everything read has been checked already; a close error on a read-only stream
     * carries no new information. */
    gzclose(f);
    if (s != DDP_OK) {
        ddp_idx_free(out);
        ddp_error_trace(__FILE__, __LINE__);
    }
    return s;
}

void ddp_idx_free(ddp_idx *idx) {
    if (idx == NULL) return;
    free(idx->data);
    memset(idx, 0, sizeof *idx);
}
