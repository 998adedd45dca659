/*
 * Fuzz target: the checkpoint loader on arbitrary bytes, from memory (ddp_checkpoint_parse)
 * and from a file (ddp_checkpoint_read). Each input is also parsed once more with its
 * trailing CRC-32 recomputed, so that mutations get past the checksum to the header
 * checks behind it, where a damaged file that happens to carry a valid CRC would land.
 * A parse that succeeds must describe only bytes inside the buffer: every range it
 * returns is checked and its last byte read, for AddressSanitizer to see.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ddp/checkpoint.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_checkpoint: broken invariant: %s\n", what);
        abort();
    }
}

/* [p, p + bytes) lies inside [buf, buf + len); computed without overflow. */
static int inside(const void *buf, size_t len, const void *p, uint64_t count, uint64_t size) {
    uint64_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) return 0;
    const unsigned char *b = buf, *q = p;
    if (bytes == 0) return q >= b && q <= b + len;
    return q >= b && q <= b + len && bytes <= (uint64_t)(b + len - q);
}

static void touch(const void *p, uint64_t bytes) {
    if (bytes == 0) return;
    volatile unsigned char sink = ((const unsigned char *)p)[0];
    sink ^= ((const unsigned char *)p)[bytes - 1];
    (void)sink;
}

static void check_result(const void *buf, size_t len, ddp_status s,
                         const ddp_checkpoint_info *info) {
    if (s != DDP_OK) {
        check(ddp_error_message()[0] != '\0', "a failure has a message");
        return;
    }
    check(info->version >= 1 && info->version <= DDP_CKPT_VERSION, "version");
    check(inside(buf, len, info->settings, info->settings_len, 1), "settings inside the file");
    check(inside(buf, len, info->model, info->model_len, 1), "model text inside the file");
    check(inside(buf, len, info->params, info->num_params, 4), "parameters inside the file");
    uint64_t state_elems;
    check(!__builtin_mul_overflow((uint64_t)info->num_states, info->state_size, &state_elems),
          "state size does not overflow");
    check(inside(buf, len, info->states, state_elems, 4), "optimizer state inside the file");
    touch(info->settings, info->settings_len);
    touch(info->model, info->model_len);
    touch(info->params, info->num_params * 4);
    touch(info->states, state_elems * 4);
}

static int file_fd = -1;
static char file_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ddp_checkpoint_info info;
    ddp_error_clear();
    ddp_status sm = ddp_checkpoint_parse(data, size, "fuzz", &info);
    check_result(data, size, sm, &info);

    if (size >= 12) {
        unsigned char *fixed = malloc(size);
        if (fixed) {
            memcpy(fixed, data, size);
            uint32_t crc = ddp_crc32(0, fixed, size - 4);
            for (int i = 0; i < 4; i++)
                fixed[size - 4 + i] = (unsigned char)(crc >> (8 * i));
            ddp_error_clear();
            ddp_status sf = ddp_checkpoint_parse(fixed, size, "fuzz+crc", &info);
            check_result(fixed, size, sf, &info);
            free(fixed);
        }
    }

    if (file_fd < 0) {
        file_fd = memfd_create("fuzz_checkpoint", 0);
        check(file_fd >= 0, "memfd_create");
        snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
    }
    check(ftruncate(file_fd, 0) == 0, "ftruncate");
    check(size == 0 || pwrite(file_fd, data, size, 0) == (ssize_t)size, "pwrite");
    void *buf = NULL;
    size_t len = 0;
    ddp_error_clear();
    ddp_status sd = ddp_checkpoint_read(file_path, &buf, &len, &info);
    check((sd == DDP_OK) == (sm == DDP_OK), "memory and file loaders agree");
    if (sd == DDP_OK) {
        check(len == size && memcmp(buf, data, size) == 0, "the file read back whole");
        check_result(buf, len, sd, &info);
    }
    free(buf);
    return 0;
}
