/*
 * Fuzz target: the IDX reader on arbitrary bytes, both from memory (ddp_idx_parse) and
 * from a file (ddp_idx_read, which reads the header first and the data in pieces). On
 * any input both must either fail with a message or return a tensor whose shape and
 * size agree with each other; for raw (not gzip) input the two paths must agree.
 * Anything else, or any sanitizer report, is a crash.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ddp/data.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_idx: broken invariant: %s\n", what);
        abort();
    }
}

/* A tensor that came back must describe itself consistently; touching every byte lets
 * AddressSanitizer catch a buffer smaller than it claims. */
static void check_tensor(const ddp_idx *t) {
    check(t->ndims >= 1 && t->ndims <= DDP_IDX_MAX_DIMS, "ndims in range");
    size_t count = 1;
    for (int i = 0; i < t->ndims; i++)
        count *= t->dims[i];
    check(count == t->count, "count is the product of dims");
    check(t->elem_size == 1 || t->elem_size == 2 || t->elem_size == 4 || t->elem_size == 8,
          "element size");
    check(t->data != NULL, "data is never NULL on success");
    volatile unsigned char sink = 0;
    const unsigned char *p = t->data;
    for (size_t i = 0; i < t->count * t->elem_size; i++)
        sink ^= p[i];
    (void)sink;
}

static void check_failure(const ddp_idx *t, ddp_status s) {
    check(s != DDP_OK, "failed");
    check(t->data == NULL, "no data after a failure");
    check(ddp_error_message()[0] != '\0', "a failure has a message");
}

/* One in-memory file, reused: the reader opens it by path, like a dataset file. */
static int file_fd = -1;
static char file_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ddp_idx mem, disk;
    ddp_error_clear();
    ddp_status sm = ddp_idx_parse(data, size, "fuzz", &mem);
    if (sm == DDP_OK)
        check_tensor(&mem);
    else
        check_failure(&mem, sm);

    if (file_fd < 0) {
        file_fd = memfd_create("fuzz_idx", 0);
        check(file_fd >= 0, "memfd_create");
        snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
    }
    check(ftruncate(file_fd, 0) == 0, "ftruncate");
    check(size == 0 || pwrite(file_fd, data, size, 0) == (ssize_t)size, "pwrite");
    ddp_error_clear();
    ddp_status sd = ddp_idx_read(file_path, &disk);
    if (sd == DDP_OK)
        check_tensor(&disk);
    else
        check_failure(&disk, sd);

    /* zlib passes a file through unchanged unless it starts with the gzip magic. */
    int gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    if (!gzip) {
        check((sm == DDP_OK) == (sd == DDP_OK), "memory and file readers agree on success");
        if (sm == DDP_OK) {
            check(mem.type == disk.type && mem.ndims == disk.ndims && mem.count == disk.count,
                  "same header from memory and file");
            check(memcmp(mem.data, disk.data, mem.count * mem.elem_size) == 0,
                  "same elements from memory and file");
        }
    }
    ddp_idx_free(&mem);
    ddp_idx_free(&disk);
    return 0;
}
