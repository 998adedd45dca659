/*
 * The default number of BLAS threads per rank (ddp_cli_threads_for): --threads wins; an
 * OPENBLAS_NUM_THREADS or OMP_NUM_THREADS in the environment is left to the library (0);
 * otherwise the node's CPUs, capped by a cgroup quota, are shared among its ranks, and a
 * rank bound to fewer CPUs than its share gets those. First the arithmetic with made-up
 * machines, then the environment as the programs read it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "ddp/cli.h"
#include "test_util.h"

/* A machine: node CPUs, CPUs in this rank's mask, quota in CPUs (0: none). */
static ddp_cli_cpu_info machine(int node, int mask, double quota) {
    ddp_cli_cpu_info m = {.env_threads = 0, .node_cpus = node, .mask_cpus = mask, .quota = quota};
    return m;
}

static void explicit_threads_win(void **state) {
    ddp_cli_cpu_info m = machine(64, 64, 0.0);
    assert_int_equal(ddp_cli_threads_for(3, 8, &m), 3);
    m.env_threads = 1;
    assert_int_equal(ddp_cli_threads_for(5, 1, &m), 5); /* over the environment too */
    m = machine(2, 1, 0.5);
    assert_int_equal(ddp_cli_threads_for(16, 4, &m), 16); /* and over the machine */
}

/* mpirun -np 1 ddp-train --threads 2 on a 2-core machine: Open MPI bound the rank to one
 * core, and its two threads share it. */
static void more_threads_than_the_mask_are_warned_about(void **state) {
    char buf[512] = "";
    ddp_cli_cpu_info m = machine(2, 1, 0.0);
    assert_int_equal(ddp_cli_threads_warning(2, &m, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "--threads 2 is more than the 1 CPU"));
    assert_non_null(strstr(buf, "mpirun --bind-to none"));
    assert_non_null(strstr(buf, "launch/ddp-run"));
    m = machine(16, 4, 0.0);
    assert_int_equal(ddp_cli_threads_warning(8, &m, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "the 4 CPUs"));
    /* Nothing to say: they fit, none were asked for, or the mask is unknown. */
    buf[0] = '\0';
    assert_int_equal(ddp_cli_threads_warning(4, &m, buf, sizeof buf), 0);
    assert_int_equal(ddp_cli_threads_warning(0, &m, buf, sizeof buf), 0);
    m = machine(16, 0, 0.0);
    assert_int_equal(ddp_cli_threads_warning(8, &m, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

/* mpirun -np 4 -H host:4 on a 2-CPU node: Open MPI counts 4 slots, so its waiting ranks
 * spin (yields 0) on the CPUs the others compute on. */
static void ranks_spinning_on_too_few_cpus_are_warned_about(void **state) {
    char buf[640] = "";
    ddp_cli_cpu_info m = machine(2, 2, 0.0);
    assert_int_equal(ddp_cli_spin_warning(4, 0, &m, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "4 ranks share this node's 2 CPUs and wait in MPI by spinning"));
    assert_non_null(strstr(buf, "OMPI_MCA_mpi_yield_when_idle=1"));
    assert_non_null(strstr(buf, "at most 2 ranks per node"));
    /* The quota is what the ranks may keep busy: 1.5 CPUs of 16 keep one. */
    m = machine(16, 16, 1.5);
    assert_int_equal(ddp_cli_spin_warning(2, 0, &m, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "2 ranks share this node's 1 CPU and"));
    assert_non_null(strstr(buf, "at most 1 rank per node"));
    /* Nothing to say: the CPUs suffice, the ranks yield, or nobody knows. */
    buf[0] = '\0';
    m = machine(2, 2, 0.0);
    assert_int_equal(ddp_cli_spin_warning(2, 0, &m, buf, sizeof buf), 0);
    assert_int_equal(ddp_cli_spin_warning(4, 1, &m, buf, sizeof buf), 0);
    assert_int_equal(ddp_cli_spin_warning(4, -1, &m, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

static void environment_is_left_to_the_library(void **state) {
    ddp_cli_cpu_info m = machine(64, 64, 0.0);
    m.env_threads = 1;
    assert_int_equal(ddp_cli_threads_for(0, 4, &m), 0);
}

static void unbound_ranks_share_the_node(void **state) {
    ddp_cli_cpu_info m = machine(16, 16, 0.0);
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 16);
    assert_int_equal(ddp_cli_threads_for(0, 4, &m), 4);
    assert_int_equal(ddp_cli_threads_for(0, 3, &m), 5);  /* rounded down */
    assert_int_equal(ddp_cli_threads_for(0, 32, &m), 1); /* at least one */
    assert_int_equal(ddp_cli_threads_for(0, 0, &m), 16); /* no node size known: alone */
}

static void bound_ranks_get_their_mask_up_to_their_share(void **state) {
    /* ddp-run's --bind-to core with 4 cores per rank on 16 cores, 4 ranks. */
    ddp_cli_cpu_info m = machine(16, 4, 0.0);
    assert_int_equal(ddp_cli_threads_for(0, 4, &m), 4);
    /* Open MPI's default of one core each with two ranks. */
    m = machine(16, 1, 0.0);
    assert_int_equal(ddp_cli_threads_for(0, 2, &m), 1);
    /* One rank bound to half the machine uses that half. */
    m = machine(16, 8, 0.0);
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 8);
    /* Bound to sockets (Open MPI's default beyond two ranks): 4 ranks over 2 sockets of
     * 8 share each socket, so 4 each, not 8. */
    assert_int_equal(ddp_cli_threads_for(0, 4, &m), 4);
    /* An unknown mask (0) changes nothing. */
    m = machine(16, 0, 0.0);
    assert_int_equal(ddp_cli_threads_for(0, 2, &m), 8);
}

static void quota_caps_the_node(void **state) {
    ddp_cli_cpu_info m = machine(64, 64, 8.0);
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 8);
    assert_int_equal(ddp_cli_threads_for(0, 2, &m), 4);
    m.quota = 2.5; /* 2 CPUs kept busy without being throttled */
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 2);
    m.quota = 0.5;
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 1);
    m.quota = 128.0; /* above the CPUs there are: no cap */
    assert_int_equal(ddp_cli_threads_for(0, 4, &m), 16);
    /* Bound to 2 CPUs under a quota of 8 for 2 ranks: the mask is the smaller. */
    m = machine(64, 2, 8.0);
    assert_int_equal(ddp_cli_threads_for(0, 2, &m), 2);
}

/* The environment as ddp-train and ddp-bench read it (the tests run with
 * OPENBLAS_NUM_THREADS=1, see tests/CMakeLists.txt). */
static void environment_variables_are_respected(void **state) {
    ddp_cli_cpu_info m;
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    unsetenv("OMP_NUM_THREADS");
    ddp_cli_cpu_info_read(&m);
    assert_int_equal(m.env_threads, 1);
    assert_int_equal(ddp_cli_default_threads(0, 2, NULL), 0);
    assert_int_equal(ddp_cli_default_threads(3, 2, NULL), 3);

    unsetenv("OPENBLAS_NUM_THREADS");
    setenv("OMP_NUM_THREADS", "2", 1);
    assert_int_equal(ddp_cli_default_threads(0, 1, NULL), 0);

    /* Empty means unset. */
    setenv("OMP_NUM_THREADS", "", 1);
    ddp_cli_cpu_info_read(&m);
    assert_int_equal(m.env_threads, 0);
    unsetenv("OMP_NUM_THREADS");
    ddp_cli_cpu_info_read(&m);
    assert_int_equal(m.env_threads, 0);
    assert_true(m.node_cpus >= 1);
    assert_true(m.mask_cpus >= 1 && m.mask_cpus <= m.node_cpus);
    int t = ddp_cli_default_threads(0, 1, NULL);
    assert_true(t >= 1 && t <= m.mask_cpus);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
}

/* A made-up cgroup tree: `root`/`rel` holds `text`, folders made as needed. */
static void put(const char *root, const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0700);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* What ddp_cli_cgroup_limits finds in a made-up tree (`root`/proc, `root`/fs) on a
 * machine of 64 CPUs without a quota. */
static ddp_cli_cpu_info limits_of(const char *root) {
    char proc[600], fs[600];
    snprintf(proc, sizeof proc, "%s/proc", root);
    snprintf(fs, sizeof fs, "%s/fs", root);
    ddp_cli_cpu_info m = machine(64, 64, 0.0);
    ddp_cli_cgroup_limits(proc, fs, &m);
    return m;
}

static void remove_tree(const char *root) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

static void cgroup_v2_levels_give_the_tightest_quota_and_nearest_cpuset(void **state) {
    char root[] = "/tmp/ddp-cgroup-v2.XXXXXX";
    assert_non_null(mkdtemp(root));
    put(root, "proc", "0::/job/rank\n");
    put(root, "fs/job/rank/cpu.max", "max 100000\n"); /* no limit at this level */
    put(root, "fs/job/cpu.max", "150000 100000\n");   /* 1.5 CPUs */
    put(root, "fs/cpu.max", "400000 100000\n");
    put(root, "fs/job/rank/cpuset.cpus.effective", "0-3,8\n");
    put(root, "fs/job/cpuset.cpus.effective", "0-15\n");
    ddp_cli_cpu_info m = limits_of(root);
    assert_true(m.quota == 1.5);
    assert_int_equal(m.node_cpus, 5);
    assert_int_equal(ddp_cli_threads_for(0, 1, &m), 1);
    remove_tree(root);
}

static void cgroup_v1_quota_and_cpuset_are_read_too(void **state) {
    /* As in a container on a cgroup v1 host: /proc/self/cgroup names the host's path, which
     * does not exist inside; the container's own cgroup is at the mount. */
    char root[] = "/tmp/ddp-cgroup-v1.XXXXXX";
    assert_non_null(mkdtemp(root));
    put(root, "proc",
        "12:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n"
        "1:name=systemd:/docker/abc\n");
    put(root, "fs/cpu,cpuacct/cpu.cfs_quota_us", "250000\n");
    put(root, "fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put(root, "fs/cpuset/cpuset.effective_cpus", "2-9\n");
    put(root, "fs/memory/cpu.cfs_quota_us", "1000\n"); /* not the cpu hierarchy: ignored */
    ddp_cli_cpu_info m = limits_of(root);
    assert_true(m.quota == 2.5);
    assert_int_equal(m.node_cpus, 8);
    assert_int_equal(ddp_cli_threads_for(0, 2, &m), 1); /* 2.5 CPUs keep 2 busy: 1 each */
    /* -1 is no quota. */
    put(root, "fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    m = limits_of(root);
    assert_true(m.quota == 0.0);
    remove_tree(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cgroup_v2_levels_give_the_tightest_quota_and_nearest_cpuset),
        cmocka_unit_test(cgroup_v1_quota_and_cpuset_are_read_too),
        cmocka_unit_test(explicit_threads_win),
        cmocka_unit_test(environment_is_left_to_the_library),
        cmocka_unit_test(unbound_ranks_share_the_node),
        cmocka_unit_test(bound_ranks_get_their_mask_up_to_their_share),
        cmocka_unit_test(more_threads_than_the_mask_are_warned_about),
        cmocka_unit_test(ranks_spinning_on_too_few_cpus_are_warned_about),
        cmocka_unit_test(quota_caps_the_node),
        cmocka_unit_test(environment_variables_are_respected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
