/* The monotonic clock, the peak resident memory, enum names, CRC-32 (through zlib, which the
 * data reader needs anyway) and directory creation. */
#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "ddp/core.h"

double ddp_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double ddp_peak_rss_mb(void) {
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u) != 0) return -1.0;
    /* Linux gives kilobytes (KiB). */
    return round((double)u.ru_maxrss / 1024.0 * 10.0) / 10.0;
}

double ddp_rss_mb(void) {
    /* statm: pages of the whole program, then resident ones. */
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1.0;
    unsigned long size = 0, resident = 0;
    int ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
    fclose(f);
    if (!ok) return -1.0;
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

double ddp_thread_cpu_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *ddp_enum_name(const char *const *names, int v) {
    for (int i = 0; v >= 0 && names[i]; i++)
        if (i == v) return names[i];
    return "?";
}

int ddp_enum_find(const char *const *names, const char *s) {
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

uint32_t ddp_crc32(uint32_t crc, const void *data, size_t bytes) {
    return (uint32_t)crc32_z((uLong)crc, data, bytes); /* size_t lengths (zlib 1.2.9+) */
}

ddp_status ddp_mkdirs(const char *dir, const char *what) {
    if (dir == NULL || dir[0] == '\0')
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: the directory name is empty", what);
    char p[4096];
    int n = snprintf(p, sizeof p, "%s", dir);
    if (n < 0 || (size_t)n >= sizeof p)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s %s: the name is too long; use a shorter path",
                        what, dir);
    /* Each prefix in turn, so that missing parents are created as well. */
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            return DDP_FAIL(DDP_ERR_IO, "%s %s: cannot create %s: %s", what, dir, p,
                            strerror(errno));
        *s = c;
        if (c == '\0') break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return DDP_FAIL(DDP_ERR_IO, "%s %s exists but is not a directory", what, dir);
    return DDP_OK;
}
