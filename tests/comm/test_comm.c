/*
 * The MPI comm under mpirun: exact all-reduce results on both sides of the size where
 * the node's arrival gate starts, that a rank waiting for a late peer sleeps instead of
 * burning its core, and that the gate is used on all ranks of a node or on none; the
 * reduce-scatter and all-gather of blocks of uneven (and empty) sizes that sharded
 * optimizers use, from ordinary and from node-shared memory. Across nodes (run on the
 * emulated cluster by tests/cluster/test_hierarchical.sh) the hierarchical scheme is on
 * exactly where the ranks span nodes and a node holds several, and its sums equal the flat
 * all-reduce's within the rounding bound of the two orders, the same bits on every rank.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ddp/comm.h"
#include "test_util.h"

static ddp_backend *backend;
static ddp_comm *world_comm;
static int rank, world;

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Fills x with values whose sum over ranks is exact in fp32, and checks the sum. */
static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rank + (int)(i % 7));
}

static size_t count_wrong(const float *x, size_t n) {
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) {
        float want = (float)(world * (int)(i % 7) + world * (world - 1) / 2);
        if (x[i] != want) wrong++;
    }
    return wrong;
}

static void allreduce_sums_exactly_across_the_gate_threshold(void **state) {
    /* 16384 floats = 64 KiB is where gating starts; odd sizes split unevenly. */
    const size_t sizes[] = {1, 1000, 16383, 16384, 16385, 262147, 2000003};
    float *x = malloc(sizes[6] * sizeof(float));
    assert_non_null(x);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        fill(x, sizes[k]);
        assert_int_equal(ddp_comm_allreduce(world_comm, x, sizes[k], DDP_F32, DDP_SUM), DDP_OK);
        if (count_wrong(x, sizes[k]) != 0)
            fail_msg("rank %d: %zu of %zu elements wrong", rank, count_wrong(x, sizes[k]),
                     sizes[k]);
    }
    /* A gated double all-reduce: the threshold is in bytes, not elements. */
    double *d = (double *)x;
    for (size_t i = 0; i < 10000; i++)
        d[i] = (double)rank * 0.5 + (double)i;
    assert_int_equal(ddp_comm_allreduce(world_comm, d, 10000, DDP_F64, DDP_SUM), DDP_OK);
    for (size_t i = 0; i < 10000; i++)
        assert_true(d[i] == 0.25 * world * (world - 1) + (double)world * (double)i);
    free(x);
}

static void sleeping_wait_is_on_with_several_ranks_on_a_node(void **state) {
    assert_int_equal(ddp_comm_sleeping_wait(world_comm) != 0, ddp_comm_local_size(world_comm) > 1);
}

static void late_peer_is_awaited_asleep(void **state) {
    /* Rank 0 arrives 400 ms late; the others must wait for it in the all-reduce without
     * spending that time on the CPU (a spinning wait costs about as much CPU as wall). */
    /* (Across nodes a peer on another node is awaited inside MPI.) */
    if (!ddp_comm_sleeping_wait(world_comm) || ddp_comm_local_size(world_comm) < world) skip();
    const size_t n = 1 << 18; /* 1 MiB: gated */
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    fill(x, n);
    assert_int_equal(ddp_comm_barrier(world_comm), DDP_OK);
    if (rank == 0) usleep(400 * 1000);
    double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    assert_int_equal(ddp_comm_allreduce(world_comm, x, n, DDP_F32, DDP_SUM), DDP_OK);
    double wall = clock_s(CLOCK_MONOTONIC) - w0, cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    assert_int_equal(count_wrong(x, n), 0);
    free(x);
    if (rank != 0) {
        if (wall < 0.3) fail_msg("rank %d waited only %.3f s for a peer 0.4 s late", rank, wall);
        if (cpu > 0.25 * wall)
            fail_msg("rank %d used %.3f s of CPU in %.3f s of waiting: it spun", rank, cpu, wall);
    }
}

static void shared_memory_allreduce_sums_exactly_in_place(void **state) {
    /* Gradients in node-shared memory are summed without MPI: every rank adds its share
     * of the elements over all ranks and writes the sums into every rank's buffer. */
    const size_t n = 1000003; /* odd: the ranks' shares differ by one */
    float *sh = NULL;
    assert_int_equal(ddp_comm_alloc_shared(world_comm, n * sizeof(float), (void **)&sh), DDP_OK);
    if (ddp_comm_local_size(world_comm) == 1 && !ddp_comm_hierarchical(world_comm)) {
        assert_null(sh); /* nothing to share with */
        skip();
    }
    /* (Across nodes, hierarchical: a node of one rank gets memory of its own.) */
    assert_non_null(sh);
    /* Whole buffer, an unaligned middle part, and parts just at and just below the size
     * where the shared path starts (16384 floats); the rest must stay untouched. */
    const size_t parts[][2] = {{0, n}, {3, 262147}, {500001, 16384}, {700000, 16383}};
    for (size_t k = 0; k < sizeof parts / sizeof *parts; k++) {
        size_t off = parts[k][0], cnt = parts[k][1];
        for (size_t i = 0; i < n; i++)
            sh[i] = -1.0f;
        fill(sh + off, cnt);
        assert_int_equal(ddp_comm_allreduce(world_comm, sh + off, cnt, DDP_F32, DDP_SUM), DDP_OK);
        if (count_wrong(sh + off, cnt) != 0)
            fail_msg("part %zu: %zu of %zu sums wrong", k, count_wrong(sh + off, cnt), cnt);
        for (size_t i = 0; i < n; i++)
            if ((i < off || i >= off + cnt) && sh[i] != -1.0f)
                fail_msg("part %zu: element %zu outside the part changed", k, i);
        /* Every rank has returned with its sums before anyone refills for the next part. */
        assert_int_equal(ddp_comm_barrier(world_comm), DDP_OK);
    }
}

/* Blocks of the sizes that shards of n elements over the ranks have, or (skew) a first
 * block of everything and empty ones after it. */
static void block_counts(size_t n, int skew, size_t *counts) {
    size_t s = (n + (size_t)world - 1) / (size_t)world, at = 0;
    for (int r = 0; r < world; r++) {
        counts[r] = skew ? (r == 0 ? n : 0) : (n - at < s ? n - at : s);
        at += counts[r];
    }
}

/* reduce_scatterv of n floats from `send` (ordinary or shared memory): each rank gets the
 * exact sums of its block; all_gatherv then gives every rank all blocks. */
static void check_scatter_gather(float *send, size_t n, int skew) {
    size_t counts[64], lo = 0;
    block_counts(n, skew, counts);
    for (int r = 0; r < rank; r++)
        lo += counts[r];
    size_t mine = counts[rank];
    float *recv = malloc((mine ? mine : 1) * sizeof(float));
    assert_non_null(recv);
    fill(send, n);
    assert_int_equal(ddp_comm_reduce_scatterv(world_comm, send, recv, counts, DDP_F32, DDP_SUM),
                     DDP_OK);
    for (size_t i = 0; i < mine; i++) {
        float want = (float)(world * (int)((lo + i) % 7) + world * (world - 1) / 2);
        if (recv[i] != want)
            fail_msg("rank %d, %zu elements (skew %d): sum %zu is %g, not %g", rank, n, skew,
                     lo + i, recv[i], want);
    }
    /* Every rank has read the others' send buffers before anyone changes them. */
    assert_int_equal(ddp_comm_barrier(world_comm), DDP_OK);
    float *all = malloc(n * sizeof(float));
    assert_non_null(all);
    for (size_t i = 0; i < n; i++)
        all[i] = -1.0f;
    for (size_t i = 0; i < mine; i++)
        all[lo + i] = recv[i];
    assert_int_equal(ddp_comm_allgatherv(world_comm, all, counts, DDP_F32), DDP_OK);
    if (count_wrong(all, n) != 0)
        fail_msg("rank %d: %zu of %zu gathered elements wrong", rank, count_wrong(all, n), n);
    free(all);
    free(recv);
}

static void uneven_reduce_scatter_and_all_gather_are_exact(void **state) {
    const size_t sizes[] = {1, 5, 1000, 16385, 262147};
    float *x = malloc(262147 * sizeof(float));
    assert_non_null(x);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (int skew = 0; skew <= 1; skew++)
            check_scatter_gather(x, sizes[k], skew);
    free(x);
    /* From node-shared memory, the path of sharded gradients on one node. */
    float *sh = NULL;
    assert_int_equal(ddp_comm_alloc_shared(world_comm, 262147 * sizeof(float), (void **)&sh),
                     DDP_OK);
    if (!sh) return; /* one rank: nothing is shared */
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (int skew = 0; skew <= 1; skew++)
            check_scatter_gather(sh, sizes[k], skew);
}

/* A new MPI comm, made with DDP_MPI_GATE=0 on this rank when `off`. COLLECTIVE. */
static ddp_comm *comm_with_gate_off(int off) {
    if (off) setenv("DDP_MPI_GATE", "0", 1);
    ddp_comm *c = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_MPI, backend, &c);
    unsetenv("DDP_MPI_GATE");
    assert_int_equal(s, DDP_OK);
    return c;
}

/* An all-reduce of n floats in ordinary memory over c gives exact sums. COLLECTIVE. */
static void check_allreduce(ddp_comm *c, size_t n) {
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    fill(x, n);
    assert_int_equal(ddp_comm_allreduce(c, x, n, DDP_F32, DDP_SUM), DDP_OK);
    assert_int_equal(count_wrong(x, n), 0);
    free(x);
}

static void gate_can_be_turned_off(void **state) {
    ddp_comm *c = comm_with_gate_off(1);
    assert_int_equal(ddp_comm_sleeping_wait(c), 0);
    void *sh = (void *)1;
    assert_int_equal(ddp_comm_alloc_shared(c, 4096, &sh), DDP_OK);
    assert_null(sh); /* shared memory needs the gate */
    check_allreduce(c, 100003);
    ddp_comm_free(c);
}

static void one_rank_refusing_the_gate_turns_it_off_everywhere(void **state) {
    /* If one rank gated and another did not, the gated one would wait at the gate for a
     * peer already inside MPI: a hang. The ranks agree, so nobody gates. */
    if (world < 2 || ddp_comm_local_size(world_comm) < world) skip(); /* per node */
    ddp_comm *c = comm_with_gate_off(rank == world - 1);
    assert_int_equal(ddp_comm_sleeping_wait(c), 0);
    check_allreduce(c, 300000);
    ddp_comm_free(c);
}

/* ---- the hierarchical scheme across nodes ------------------------------------------- */

static void hierarchical_scheme_is_on_where_ranks_span_nodes(void **state) {
    /* Expected: the ranks span nodes and some node holds more than one. */
    int local[2] = {ddp_comm_local_size(world_comm), -ddp_comm_local_size(world_comm)};
    assert_int_equal(ddp_comm_allreduce(world_comm, local, 2, DDP_I32, DDP_MIN), DDP_OK);
    int largest = -local[1];
    int want = largest > 1 && largest < world;
    const char *env = getenv("DDP_TEST_EXPECT_HIERARCHICAL");
    if (env) assert_int_equal(want, atoi(env)); /* the placement the caller meant */
    assert_int_equal(ddp_comm_hierarchical(world_comm) != 0, want);
    ddp_comm_set_hierarchical(DDP_HIER_OFF);
    ddp_comm *flat = NULL;
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, backend, &flat), DDP_OK);
    ddp_comm_set_hierarchical(DDP_HIER_AUTO);
    assert_int_equal(ddp_comm_hierarchical(flat), 0);
    ddp_comm_free(flat);
}

/* Values of every sign and magnitude from a seed: sums that rounding makes order-dependent. */
static void fill_random(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(seed >> 11) / 9007199254740992.0;
        x[i] = (float)((u - 0.5) * ldexp(1.0, (int)(seed >> 60) - 4));
    }
}

/* FNV-1a of the bytes: the same bits on every rank when the minimum and maximum over the
 * ranks agree. */
static void assert_same_bits_everywhere(const void *p, size_t bytes, const char *what) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < bytes; i++)
        h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ULL;
    uint64_t lo = h, hi = h;
    assert_int_equal(ddp_comm_allreduce(world_comm, &lo, 1, DDP_U64, DDP_MIN), DDP_OK);
    assert_int_equal(ddp_comm_allreduce(world_comm, &hi, 1, DDP_U64, DDP_MAX), DDP_OK);
    if (lo != hi) fail_msg("rank %d: %s differ between ranks", rank, what);
}

/* a (one order of summation) against b (another): each is within (world - 1) u sum|x| of
 * the exact sum, so they differ by at most twice that; abs_sum holds sum|x| per element. */
static void assert_within_rounding(const float *a, const float *b, const double *abs_sum, size_t n,
                                   const char *what) {
    const double u = ldexp(1.0, -24);
    for (size_t i = 0; i < n; i++) {
        double bound = 2.0 * (world - 1) * u * abs_sum[i];
        if (fabs((double)a[i] - (double)b[i]) > bound)
            fail_msg("rank %d, %s, element %zu: %.9g against the flat %.9g (bound %.3g)", rank,
                     what, i, a[i], b[i], bound);
    }
}

static void hierarchical_sums_match_the_flat_ones_within_rounding(void **state) {
    if (!ddp_comm_hierarchical(world_comm)) skip();
    const size_t n = 300007;
    ddp_comm_set_hierarchical(DDP_HIER_OFF);
    ddp_comm *flat = NULL;
    assert_int_equal(ddp_comm_create(DDP_COMM_MPI, backend, &flat), DDP_OK);
    ddp_comm_set_hierarchical(DDP_HIER_AUTO);
    float *sh = NULL, *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    double *abs_sum = malloc(n * sizeof(double));
    assert_true(x && y && abs_sum);
    assert_int_equal(ddp_comm_alloc_shared(world_comm, n * sizeof(float), (void **)&sh), DDP_OK);
    assert_non_null(sh); /* across nodes, every rank gets node-shared memory or its own */
    fill_random(x, n, 1000 + (uint64_t)rank);
    for (size_t i = 0; i < n; i++)
        abs_sum[i] = fabs((double)x[i]);
    assert_int_equal(ddp_comm_allreduce(world_comm, abs_sum, n, DDP_F64, DDP_SUM), DDP_OK);
    /* All-reduce: node-shared memory (hierarchical) against ordinary memory (flat). */
    memcpy(sh, x, n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    assert_int_equal(ddp_comm_allreduce(world_comm, sh, n, DDP_F32, DDP_SUM), DDP_OK);
    assert_int_equal(ddp_comm_allreduce(flat, y, n, DDP_F32, DDP_SUM), DDP_OK);
    assert_within_rounding(sh, y, abs_sum, n, "all-reduce");
    assert_same_bits_everywhere(sh, n * sizeof(float), "the hierarchical all-reduce's sums");
    /* Reduce-scatter of uneven blocks (the last one shorter), then their all-gather. */
    size_t counts[64], lo = 0;
    block_counts(n, 0, counts);
    for (int r = 0; r < rank; r++)
        lo += counts[r];
    float *mine = malloc((counts[rank] + 1) * sizeof(float));
    float *theirs = malloc((counts[rank] + 1) * sizeof(float));
    assert_true(mine && theirs);
    memcpy(sh, x, n * sizeof(float));
    assert_int_equal(ddp_comm_barrier(world_comm), DDP_OK);
    assert_int_equal(ddp_comm_reduce_scatterv(world_comm, sh, mine, counts, DDP_F32, DDP_SUM),
                     DDP_OK);
    assert_int_equal(ddp_comm_reduce_scatterv(flat, x, theirs, counts, DDP_F32, DDP_SUM), DDP_OK);
    assert_within_rounding(mine, theirs, abs_sum + lo, counts[rank], "reduce-scatter");
    assert_int_equal(ddp_comm_barrier(world_comm), DDP_OK);
    for (size_t i = 0; i < n; i++)
        x[i] = y[i] = -1.0f;
    memcpy(x + lo, mine, counts[rank] * sizeof(float));
    memcpy(y + lo, mine, counts[rank] * sizeof(float));
    assert_int_equal(ddp_comm_allgatherv(world_comm, x, counts, DDP_F32), DDP_OK);
    assert_int_equal(ddp_comm_allgatherv(flat, y, counts, DDP_F32), DDP_OK);
    assert_memory_equal(x, y, n * sizeof(float)); /* moved, not summed: the same bits */
    free(mine);
    free(theirs);
    free(abs_sum);
    free(y);
    free(x);
    ddp_comm_free(flat);
}

int main(int argc, char **argv) {
    mpi_test_init(&argc, &argv, &backend, &world_comm, &rank, &world);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(allreduce_sums_exactly_across_the_gate_threshold),
        cmocka_unit_test(sleeping_wait_is_on_with_several_ranks_on_a_node),
        cmocka_unit_test(late_peer_is_awaited_asleep),
        cmocka_unit_test(shared_memory_allreduce_sums_exactly_in_place),
        cmocka_unit_test(uneven_reduce_scatter_and_all_gather_are_exact),
        cmocka_unit_test(gate_can_be_turned_off),
        cmocka_unit_test(one_rank_refusing_the_gate_turns_it_off_everywhere),
        cmocka_unit_test(hierarchical_scheme_is_on_where_ranks_span_nodes),
        cmocka_unit_test(hierarchical_sums_match_the_flat_ones_within_rounding),
    };
    return mpi_test_finish(cmocka_run_group_tests(tests, NULL, NULL), backend, world_comm);
}
