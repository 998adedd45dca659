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

/* The CPUs the node's ranks may keep busy: its CPUs, capped by the quota (a quota of 2.5
 * CPUs keeps 2 busy without being throttled). */
static int usable_cpus(const ddp_cli_cpu_info *info) {
    int node = info->node_cpus > 0 ? info->node_cpus : 1;
    if (info->quota > 0.0 && info->quota < (double)node)
        node = info->quota >= 1.0 ? (int)info->quota : 1;
    return node;
}

int ddp_cli_threads_for(int requested, int local_size, const ddp_cli_cpu_info *info) {
    if (requested > 0) return requested;
    /* Whoever set the library's own variables decided already. */
    if (info->env_threads) return 0;
    int node = usable_cpus(info);
    int share = node / (local_size > 0 ? local_size : 1);
    if (share < 1) share = 1;
    /* A mask narrower than the node's CPUs means the launcher bound this rank: it uses
     * those CPUs, but not more than its share, since a launcher binding ranks to sockets
     * (Open MPI's default beyond two ranks) gives several ranks the same mask. */
    if (info->mask_cpus > 0 && info->mask_cpus < share) return info->mask_cpus;
    return share;
}

static int read_line(const char *dir, const char *file, char *buf, size_t cap) {
    char path[1440]; /* a level (up to 1400) and a file name */
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

/* The quota in CPUs one level sets, 0 = none: cgroup v2's cpu.max ("max 100000" or
 * "QUOTA PERIOD"), or v1's cpu.cfs_quota_us (-1 = none) over cpu.cfs_period_us. */
static double level_quota(const char *dir, int v1) {
    char line[256];
    long long quota = 0, period = 0;
    if (!v1) {
        if (read_line(dir, "cpu.max", line, sizeof line) &&
            sscanf(line, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0)
            return (double)quota / (double)period;
        return 0.0;
    }
    if (read_line(dir, "cpu.cfs_quota_us", line, sizeof line) &&
        sscanf(line, "%lld", &quota) == 1 && quota > 0 &&
        read_line(dir, "cpu.cfs_period_us", line, sizeof line) &&
        sscanf(line, "%lld", &period) == 1 && period > 0)
        return (double)quota / (double)period;
    return 0.0;
}

/* Every level from `path` under `mount` up to `mount` itself may limit: the tightest quota
 * counts, and the nearest effective cpuset (each level's is already within its parent's).
 * Levels that do not exist are passed over: inside a container, /proc/self/cgroup names
 * the host's path while the container sees its own cgroup mounted at the root. */
static void scan_levels(const char *mount, const char *path, int v1, int quota, int cpuset,
                        ddp_cli_cpu_info *info) {
    char dir[1400], line[1024];
    snprintf(dir, sizeof dir, "%s%s", mount, strcmp(path, "/") == 0 ? "" : path);
    size_t root_len = strlen(mount);
    int have_cpuset = 0;
    while (1) {
        if (quota) {
            double q = level_quota(dir, v1);
            if (q > 0.0 && (info->quota == 0.0 || q < info->quota)) info->quota = q;
        }
        if (cpuset && !have_cpuset &&
            read_line(dir, v1 ? "cpuset.effective_cpus" : "cpuset.cpus.effective", line,
                      sizeof line)) {
            int n = count_cpu_list(line);
            if (n > 0) info->node_cpus = n, have_cpuset = 1;
        }
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= root_len || !slash || (size_t)(slash - dir) < root_len) break;
        *slash = '\0';
    }
}

/* Whether the comma-separated controller list names `want` ("cpu,cpuacct" has "cpu"). */
static int has_controller(const char *list, size_t len, const char *want) {
    size_t w = strlen(want);
    for (const char *p = list; p < list + len;) {
        const char *comma = memchr(p, ',', (size_t)(list + len - p));
        size_t n = comma ? (size_t)(comma - p) : (size_t)(list + len - p);
        if (n == w && strncmp(p, want, w) == 0) return 1;
        p += n + 1;
    }
    return 0;
}

void ddp_cli_cgroup_limits(const char *proc_cgroup, const char *root, ddp_cli_cpu_info *info) {
    FILE *f = fopen(proc_cgroup, "r");
    if (!f) return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        /* "ID:CONTROLLERS:PATH"; cgroup v2's line is "0::PATH". */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/') continue;
        const char *list = c1 + 1, *path = c2 + 1;
        size_t len = (size_t)(c2 - list);
        char mount[1100];
        if (strncmp(line, "0::", 3) == 0) {
            scan_levels(root, path, 0, 1, 1, info);
            continue;
        }
        /* cgroup v1: each hierarchy is mounted by its controllers' names ("cpu,cpuacct";
         * distributions also link "cpu" to it). */
        int cpu = has_controller(list, len, "cpu"), cpuset = has_controller(list, len, "cpuset");
        if (!cpu && !cpuset) continue;
        snprintf(mount, sizeof mount, "%s/%.*s", root, (int)len, list);
        if (access(mount, F_OK) != 0)
            snprintf(mount, sizeof mount, "%s/%s", root, cpu ? "cpu" : "cpuset");
        scan_levels(mount, path, 1, cpu, cpuset, info);
    }
    fclose(f);
}

void ddp_cli_cpu_info_read(ddp_cli_cpu_info *info) {
    memset(info, 0, sizeof *info);
    const char *a = getenv("OPENBLAS_NUM_THREADS"), *b = getenv("OMP_NUM_THREADS");
    info->env_threads = (a && a[0]) || (b && b[0]);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    info->node_cpus = online > 0 ? (int)online : 1;
    ddp_cli_cgroup_limits("/proc/self/cgroup", CGROUP_ROOT, info);
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) info->mask_cpus = CPU_COUNT(&set);
}

int ddp_cli_threads_warning(int requested, const ddp_cli_cpu_info *info, char *buf, size_t cap) {
    if (requested <= 0 || info->mask_cpus <= 0 || requested <= info->mask_cpus) return 0;
    snprintf(buf, cap,
             "--threads %d is more than the %d CPU%s this rank may run on (its affinity mask: "
             "a launcher bound it, as mpirun binds each of a few ranks to one core, or "
             "taskset did), so the threads share %s and run slower than %d would: start the "
             "ranks with mpirun --bind-to none, or with launch/ddp-run, or lower --threads",
             requested, info->mask_cpus, info->mask_cpus == 1 ? "" : "s",
             info->mask_cpus == 1 ? "it" : "them", info->mask_cpus);
    return 1;
}

int ddp_cli_spin_warning(int local_size, int yields, const ddp_cli_cpu_info *info, char *buf,
                         size_t cap) {
    int node = usable_cpus(info);
    if (yields != 0 || local_size <= node) return 0;
    snprintf(buf, cap,
             "%d ranks share this node's %d CPU%s and wait in MPI by spinning, so a waiting "
             "rank holds a CPU that another rank needs to compute (Open MPI yields by itself "
             "only on a node it counts oversubscribed, and a hostfile's slots or mpirun -H "
             "host:N can overstate a node): set OMPI_MCA_mpi_yield_when_idle=1 (mpirun -x "
             "OMPI_MCA_mpi_yield_when_idle=1), or start at most %d rank%s per node",
             local_size, node, node == 1 ? "" : "s", node, node == 1 ? "" : "s");
    return 1;
}

int ddp_cli_default_threads(int requested, int local_size, const ddp_cli_cpu_info *info) {
    ddp_cli_cpu_info read;
    if (!info) {
        ddp_cli_cpu_info_read(&read);
        info = &read;
    }
    char warning[512];
    if (ddp_cli_threads_warning(requested, info, warning, sizeof warning))
        ddp_log_warn("%s", warning);
    return ddp_cli_threads_for(requested, local_size, info);
}
