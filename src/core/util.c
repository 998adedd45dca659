/* The monotonic clock and CRC-32 (through zlib, which the data reader needs anyway). */
#include <time.h>
#include <zlib.h>

#include "ddp/core.h"

double ddp_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double ddp_thread_cpu_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint32_t ddp_crc32(uint32_t crc, const void *data, size_t bytes) {
    return (uint32_t)crc32_z((uLong)crc, data, bytes); /* size_t lengths (zlib 1.2.9+) */
}
