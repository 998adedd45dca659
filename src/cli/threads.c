/*
 * The default number of BLAS threads of a rank. OpenBLAS starts one thread per online
 * CPU in every process; with several ranks on a node that oversubscribes the cores many
 * times over, and it ignores the CPUs a launcher bound the rank to and a container's CPU
 * quota. The rule (ddp/cli.h) is pure arithmetic over what ddp_cli_cpu_info_read finds.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddp/cli.h"

#define CGROUP_ROOT "/sys/fs/cgroup"

int ddp_cli_threads_for(int requested, int local_size, const ddp_cli_cpu_info *info) {
    if (requested > 0) return requested;
    /* Whoever set the library's own variables decided already. */
    if (info->env_threads) return 0;
    int node = info->node_cpus > 0 ? info->node_cpus : 1;
    /* A quota of 2.5 CPUs keeps 2 busy without being throttled. */
    if (info->quota > 0.0 && info->quota < (double)node)
        node = info->quota >= 1.0 ? (int)info->quota : 1;
    int share = node / (local_size > 0 ? local_size : 1);
    if (share < 1) share = 1;
    /* A mask narrower than the node's CPUs means the launcher bound this rank: it uses
     * those CPUs, but not more than its share, since a launcher binding ranks to sockets
     * (Open MPI's default beyond two ranks) gives several ranks the same mask. */
    if (info->mask_cpus > 0 && info->mask_cpus < share) return info->mask_cpus;
    return share;
}

/* This process's cgroup v2 directory ("0::/path" in /proc/self/cgroup). */
static int own_cgroup(char *dir, size_t cap) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) != 0) continue;
        line[strcspn(line, "\n")] = '\0';
        /* "/" is the root: no trailing slash, so that parents are cut at slashes. */
        snprintf(dir, cap, "%s%s", CGROUP_ROOT, strcmp(line + 3, "/") == 0 ? "" : line + 3);
        found = 1;
    }
    fclose(f);
    return found;
}

static int read_line(const char *dir, const char *file, char *buf, size_t cap) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    return ok;
}

/* CPUs in a list like "0-3,8,10-11". */
static int count_cpu_list(const char *s) {
    int n = 0;
    while (*s && *s != '\n') {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s) return 0;
        if (*end == '-') {
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s || b < a) return 0;
        }
        n += (int)(b - a + 1);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Every level from this cgroup up to the root may limit: the tightest quota counts, and
 * the nearest effective cpuset (each level's is already within its parent's). */
static void read_cgroup(ddp_cli_cpu_info *info) {
    char dir[1100], line[256];
    if (!own_cgroup(dir, sizeof dir)) return;
    int have_cpuset = 0;
    while (1) {
        long long quota = 0, period = 0;
        if (read_line(dir, "cpu.max", line, sizeof line) &&
            sscanf(line, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0) {
            double q = (double)quota / (double)period;
            if (info->quota == 0.0 || q < info->quota) info->quota = q;
        }
        if (!have_cpuset && read_line(dir, "cpuset.cpus.effective", line, sizeof line)) {
            int n = count_cpu_list(line);
            if (n > 0) info->node_cpus = n, have_cpuset = 1;
        }
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= strlen(CGROUP_ROOT) || !slash) break;
        *slash = '\0';
    }
}

void ddp_cli_cpu_info_read(ddp_cli_cpu_info *info) {
    memset(info, 0, sizeof *info);
    const char *a = getenv("OPENBLAS_NUM_THREADS"), *b = getenv("OMP_NUM_THREADS");
    info->env_threads = (a && a[0]) || (b && b[0]);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    info->node_cpus = online > 0 ? (int)online : 1;
    read_cgroup(info);
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) info->mask_cpus = CPU_COUNT(&set);
}

int ddp_cli_default_threads(int requested, int local_size) {
    ddp_cli_cpu_info info;
    ddp_cli_cpu_info_read(&info);
    return ddp_cli_threads_for(requested, local_size, &info);
}
