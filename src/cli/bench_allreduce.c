/*
 * ddp-bench allreduce, after nccl-tests: every size is checked (inputs are small
 * integers, so the sums are exact and each rank verifies its own result), the time of a
 * size is the mean over the timed iterations, maximum over ranks, and bandwidth is
 * reported as algbw = bytes / time and busbw = algbw * 2(n-1)/n, the bytes a ring moves
 * through each link ((n-1)/n for --collective reduce-scatter and allgather, which time
 * --zero's collectives on a whole buffer of the size instead). With --gap-ms each rank
 * computes before every collective and the time is what the collectives add to that. With
 * --reducer the same total size also goes through the gradient reducer (tensors of
 * --tensor-mb, buckets as in training), and the table gives its busbw and its ratio to the
 * plain all-reduce.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ddp/watchdog.h"

/* Everything one size needs: the buffer in the backend's memory and a host mirror. */
typedef struct {
    ddp_backend *b;
    ddp_comm *comm, *ctrl;
    float *dev;     /* (max_count) backend memory */
    float *host;    /* (max_count) */
    float *shard;   /* (max_count / world + 1) backend memory: the reduce-scatter's result */
    size_t *counts; /* (world) the blocks of --collective reduce-scatter and allgather */
    int rank, world;
    ddp_bench_collective op;
} bench_ctx;

static const char *const op_names[] = {"all-reduce", "reduce-scatter", "all-gather"};

/* The ranks' blocks of count elements, as --zero shards a bucket: the first count % world
 * ranks one element more. Returns where this rank's block starts. */
static size_t set_blocks(bench_ctx *c, size_t count) {
    size_t begin = 0;
    for (int r = 0; r < c->world; r++) {
        c->counts[r] = count / (size_t)c->world + ((size_t)r < count % (size_t)c->world);
        if (r < c->rank) begin += c->counts[r];
    }
    return begin;
}

/* Every rank fills with rank + 1, so each element of a sum is n(n+1)/2, exact in fp32. For
 * the all-gather a rank fills its own block and zeroes the others, which must then hold
 * their owner's rank + 1. */
static ddp_status fill(bench_ctx *c, size_t count) {
    float v = (float)(c->rank + 1);
    size_t begin = set_blocks(c, count), end = begin + c->counts[c->rank];
    for (size_t i = 0; i < count; i++)
        c->host[i] = c->op != DDP_BENCH_ALLGATHER || (i >= begin && i < end) ? v : 0.0f;
    DDP_CHECK(ddp_backend_copy(c->b, c->dev, c->host, count * sizeof(float), DDP_COPY_H2D));
    DDP_CHECK(ddp_backend_sync(c->b));
    return DDP_OK;
}

/* Elements of the collective's result that are wrong: all of the all-reduce's, the
 * reduce-scatter's shard (this rank's block of the sum), every block of the all-gather's. */
static ddp_status count_wrong(bench_ctx *c, size_t count, long *wrong) {
    float sum = (float)c->world * (float)(c->world + 1) / 2.0f;
    set_blocks(c, count);
    long w = 0;
    if (c->op == DDP_BENCH_REDUCE_SCATTER) {
        size_t n = c->counts[c->rank];
        DDP_CHECK(ddp_backend_copy(c->b, c->host, c->shard, n * sizeof(float), DDP_COPY_D2H));
        for (size_t i = 0; i < n; i++)
            w += c->host[i] != sum;
    } else {
        DDP_CHECK(ddp_backend_copy(c->b, c->host, c->dev, count * sizeof(float), DDP_COPY_D2H));
        size_t i = 0;
        for (int r = 0; r < c->world; r++)
            for (size_t k = 0; k < c->counts[r]; k++, i++)
                w += c->host[i] != (c->op == DDP_BENCH_ALLGATHER ? (float)(r + 1) : sum);
    }
    *wrong = w;
    return DDP_OK;
}

/* One collective of count elements of the buffer, as --collective says (the blocks are
 * set). The reduce-scatter sums into a shard of its own, as --zero's reducer does (the
 * node-shared buffer is read by the node's other ranks while the sums are written).
 * COLLECTIVE. */
static ddp_status run_op(bench_ctx *c, size_t count) {
    switch (c->op) {
    case DDP_BENCH_REDUCE_SCATTER:
        return ddp_comm_reduce_scatterv(c->comm, c->dev, c->shard, c->counts, DDP_F32, DDP_SUM);
    case DDP_BENCH_ALLGATHER: return ddp_comm_allgatherv(c->comm, c->dev, c->counts, DDP_F32);
    default: return ddp_comm_allreduce(c->comm, c->dev, count, DDP_F32, DDP_SUM);
    }
}

/* One reducer pass over the buffer: begin, every tensor reported ready from the end of
 * the buffer towards its start (as backward does), finish. COLLECTIVE. */
static ddp_status reducer_pass(ddp_reducer *r, const size_t *bounds, int nb, size_t count) {
    DDP_CHECK(ddp_reducer_begin(r));
    size_t end = count;
    for (int i = nb - 1; i >= 0; i--) {
        DDP_CHECK(ddp_reducer_ready(r, bounds[i], end - bounds[i]));
        end = bounds[i];
    }
    DDP_CHECK(ddp_reducer_finish(r, NULL));
    return DDP_OK;
}

typedef struct {
    double t_plain, t_reducer; /* seconds per collective, max over ranks */
    long wrong;                /* elements wrong, summed over ranks and both paths */
    int n_buckets;
} size_result;

/* Computes for ms milliseconds of this thread's CPU time (what a rank's compute needs,
 * however the machine's cores are shared). */
static void compute_for(double ms) {
    if (ms <= 0) return;
    double end = ddp_thread_cpu_time() + ms * 1e-3;
    volatile double x = 1.0;
    while (ddp_thread_cpu_time() < end)
        for (int i = 0; i < 1000; i++)
            x = x * 1.0000001 + 1e-9;
}

/* Seconds per iteration of the timed loop: --gap-ms of compute, then the collective (none
 * where with_op is 0). Max over ranks. COLLECTIVE. */
static ddp_status time_loop(bench_ctx *c, const ddp_cli_allreduce_options *a, size_t count,
                            int with_op, double *t) {
    DDP_CHECK(ddp_backend_sync(c->b));
    DDP_CHECK(ddp_comm_barrier(c->ctrl));
    double t0 = ddp_time_now();
    for (int i = 0; i < a->iters; i++) {
        compute_for(a->gap_ms);
        if (with_op) DDP_CHECK(run_op(c, count));
    }
    DDP_CHECK(ddp_backend_sync(c->b));
    /* The loop ends when the last rank's last collective ends. */
    if (!with_op) DDP_CHECK(ddp_comm_barrier(c->ctrl));
    *t = (ddp_time_now() - t0) / a->iters;
    DDP_CHECK(ddp_bench_max_over_ranks(c->ctrl, t));
    return DDP_OK;
}

/* Times one size. COLLECTIVE. */
static ddp_status bench_size(bench_ctx *c, const ddp_cli_allreduce_options *a, size_t count,
                             size_t *bounds, size_result *res) {
    memset(res, 0, sizeof *res);
    long wrong = 0, w;
    /* Check: one collective of fresh inputs. */
    DDP_CHECK(fill(c, count));
    DDP_CHECK(run_op(c, count));
    DDP_CHECK(ddp_backend_sync(c->b));
    DDP_CHECK(count_wrong(c, count, &w));
    wrong += w;
    /* Timing: the values keep growing (a power-of-n multiple of the first sum); they are
     * only moved, so what they are does not change the time. */
    for (int i = 0; i < a->warmup_iters; i++)
        DDP_CHECK(run_op(c, count));
    DDP_CHECK(time_loop(c, a, count, 1, &res->t_plain));
    /* With compute between the collectives: what they add to the compute alone (the
     * ranks computing on shared cores reach each collective at different times). */
    if (a->gap_ms > 0) {
        double alone;
        DDP_CHECK(time_loop(c, a, count, 0, &alone));
        /* (Noise can make the difference negative where the collective is far shorter.) */
        res->t_plain = res->t_plain > alone ? res->t_plain - alone : 0.0;
    }

    if (a->reducer) {
        size_t step = a->tensor_bytes / sizeof(float);
        if (step == 0) step = 1;
        int nb = 0;
        for (size_t off = 0; off < count; off += step)
            bounds[nb++] = off;
        ddp_reducer *r;
        DDP_CHECK(ddp_reducer_create(c->comm, c->b, c->dev, count, bounds, nb, &a->ropt, &r));
        res->n_buckets = ddp_reducer_num_buckets(r);
        ddp_status s = fill(c, count);
        if (s == DDP_OK) s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        if (s == DDP_OK) s = count_wrong(c, count, &w);
        if (s == DDP_OK) wrong += w;
        for (int i = 0; s == DDP_OK && i < a->warmup_iters; i++)
            s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        if (s == DDP_OK) s = ddp_comm_barrier(c->ctrl);
        double t0 = ddp_time_now();
        for (int i = 0; s == DDP_OK && i < a->iters; i++)
            s = reducer_pass(r, bounds, nb, count);
        if (s == DDP_OK) s = ddp_backend_sync(c->b);
        res->t_reducer = (ddp_time_now() - t0) / a->iters;
        ddp_reducer_free(r);
        DDP_CHECK(s);
        DDP_CHECK(ddp_bench_max_over_ranks(c->ctrl, &res->t_reducer));
    }
    DDP_CHECK(ddp_comm_allreduce(c->ctrl, &wrong, 1, DDP_I64, DDP_SUM));
    res->wrong = wrong;
    return DDP_OK;
}

static ddp_status run_allreduce(bench_ctx *c, const ddp_cli_allreduce_options *a,
                                long *total_wrong) {
    size_t max_count = a->max_bytes / sizeof(float);
    size_t step = a->tensor_bytes / sizeof(float);
    size_t *bounds = malloc((max_count / (step ? step : 1) + 2) * sizeof *bounds);
    json_t *rows = json_array();
    if (!bounds || !rows) {
        free(bounds);
        json_decref(rows);
        return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    }
    double factor =
        c->world > 1 ? (c->op == DDP_BENCH_ALLREDUCE ? 2.0 : 1.0) * (c->world - 1) / c->world : 0.0;
    const char *name = op_names[c->op];
    if (c->rank == 0) {
        printf("# ddp-bench allreduce: %d rank(s), comm %s, fp32 %s in place, %d warm-up + %d "
               "timed iterations; waits for late ranks %s\n",
               c->world, ddp_comm_name(c->comm), name, a->warmup_iters, a->iters,
               ddp_comm_sleeping_wait(c->comm) ? "asleep (node gate)" : "in the library");
        if (a->shared)
            printf("# buffers in node-shared memory%s\n",
                   ddp_comm_hierarchical(c->comm) ? "; hierarchical across nodes" : "");
        printf("# time: mean per %s, max over ranks; busbw = algbw * %s(n-1)/n\n", name,
               c->op == DDP_BENCH_ALLREDUCE ? "2" : "");
        if (a->gap_ms > 0)
            printf("# %.3g ms of compute before each: the time is what the collective adds to "
                   "it\n",
                   a->gap_ms);
        printf("%10s %12s %12s %10s %10s", "size", "count", "time(us)", "algbw GB/s", "busbw GB/s");
        if (a->reducer) printf(" %8s %12s %10s %7s", "buckets", "red. time", "red. busbw", "ratio");
        printf(" %6s\n", "wrong");
    }
    ddp_status s = DDP_OK;
    *total_wrong = 0;
    for (size_t bytes = a->min_bytes; s == DDP_OK && bytes <= a->max_bytes; bytes *= 2) {
        char where[96];
        snprintf(where, sizeof where, "in the %ss of %zu bytes", name, bytes);
        ddp_watchdog_set_where(where);
        size_t count = bytes / sizeof(float);
        size_result res;
        s = bench_size(c, a, count, bounds, &res);
        if (s != DDP_OK) break;
        *total_wrong += res.wrong;
        size_t nbytes = count * sizeof(float);
        /* (0 where --gap-ms found the collective adding nothing measurable.) */
        double algbw = res.t_plain > 0 ? nbytes / res.t_plain / 1e9 : 0.0, busbw = algbw * factor;
        double ralg = a->reducer ? nbytes / res.t_reducer / 1e9 : 0.0, rbus = ralg * factor;
        /* With one rank busbw is 0 by definition; compare algbw then. */
        double ratio = !a->reducer || algbw <= 0 ? 0.0 : factor > 0 ? rbus / busbw : ralg / algbw;
        if (c->rank == 0) {
            char sz[32];
            ddp_opt_format_bytes(nbytes, sz, sizeof sz);
            printf("%10s %12zu %12.1f %10.3f %10.3f", sz, count, res.t_plain * 1e6, algbw, busbw);
            if (a->reducer)
                printf(" %8d %12.1f %10.3f %7.3f", res.n_buckets, res.t_reducer * 1e6, rbus, ratio);
            printf(" %6ld\n", res.wrong);
            fflush(stdout);
            json_t *row =
                json_pack("{s:I, s:I, s:f, s:f, s:f, s:I}", "bytes", (json_int_t)nbytes, "count",
                          (json_int_t)count, "time_us", res.t_plain * 1e6, "algbw_gbs", algbw,
                          "busbw_gbs", busbw, "wrong", (json_int_t)res.wrong);
            if (row && a->reducer) {
                json_object_set_new(row, "reducer_buckets", json_integer(res.n_buckets));
                json_object_set_new(row, "reducer_time_us", json_real(res.t_reducer * 1e6));
                json_object_set_new(row, "reducer_busbw_gbs", json_real(rbus));
                json_object_set_new(row, "reducer_ratio", json_real(ratio));
            }
            if (row) json_array_append_new(rows, row);
        }
    }
    ddp_watchdog_set_where(NULL); /* the JSON summary after: back to "set-up" */
    free(bounds);
    if (s == DDP_OK && c->rank == 0) {
        printf("# wrong elements in all: %ld\n", *total_wrong);
        if (a->json[0]) {
            json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:i, s:O}", "bench", "allreduce", "ranks",
                                  c->world, "comm", ddp_comm_name(c->comm), "iters", a->iters,
                                  "warmup_iters", a->warmup_iters, "sizes", rows);
            if (!o)
                s = DDP_FAIL(DDP_ERR_INTERNAL, "could not build the JSON results");
            else {
                json_object_set_new(o, "wrong", json_integer(*total_wrong));
                json_object_set_new(o, "collective", json_string(name));
                json_object_set_new(o, "gap_ms", json_real(a->gap_ms));
                json_object_set_new(o, "sleeping_wait",
                                    json_boolean(ddp_comm_sleeping_wait(c->comm)));
                json_object_set_new(o, "shared", json_boolean(a->shared));
                json_object_set_new(o, "hierarchical",
                                    json_boolean(ddp_comm_hierarchical(c->comm)));
                s = ddp_bench_write_json(o, a->json);
                json_decref(o);
            }
        }
    }
    json_decref(rows);
    return s;
}

/* Set-up that every rank agrees on, then the sizes. */
int ddp_bench_allreduce_main(ddp_comm *ctrl, int argc, char **argv) {
    int rank = ddp_comm_rank(ctrl);
    ddp_cli_allreduce_options a;
    ddp_status s = ddp_cli_parse_allreduce(argc, argv, &a);
    if (!ddp_cli_phase_ok(ctrl, s, "parsing options")) {
        if (rank == 0 || s != DDP_OK) fprintf(stderr, "usage: see ddp-bench allreduce --help\n");
        return DDP_CLI_EXIT_USAGE;
    }
    if (a.help) {
        if (rank == 0) ddp_cli_allreduce_usage(stdout);
        return 0;
    }
    if (a.verbose) ddp_log_show_traces(1);
    /* Ranks started with other sizes (an MPMD launch) would pair all-reduces of
     * different lengths: compare before the first one. */
    ddp_opt_table t = {.base = &a};
    t.opts = ddp_cli_allreduce_table(&t.n);
    s = ddp_cli_check_same_options(ctrl, &t, 1);
    if (!ddp_cli_phase_ok(ctrl, s, "comparing the options of the ranks")) return DDP_CLI_EXIT_USAGE;
    /* From here on a rank that dies or hangs ends the job after --timeout seconds. */
    if (!ddp_cli_start_watchdog(ctrl, a.timeout_s)) return 1;

    bench_ctx c = {.ctrl = ctrl, .rank = rank, .world = ddp_comm_size(ctrl), .op = a.collective};
    ddp_backend_options bo = {.device = a.comm == DDP_COMM_NCCL ? DDP_DEVICE_CUDA : DDP_DEVICE_CPU,
                              .threads = 1};
    if (bo.device == DDP_DEVICE_CUDA) {
        int gpus = ddp_backend_cuda_device_count();
        bo.device_index = gpus > 0 ? ddp_comm_local_rank(ctrl) % gpus : 0;
    }
    int code = 1, dev_is_shared = 0;
    s = ddp_backend_create(&bo, &c.b);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the backend")) goto done;
    size_t max_count = a.max_bytes / sizeof(float);
    c.host = malloc(max_count * sizeof(float));
    c.counts = malloc((size_t)c.world * sizeof *c.counts);
    s = c.host && c.counts ? ddp_backend_alloc(c.b, max_count * sizeof(float), (void **)&c.dev)
                           : DDP_FAIL(DDP_ERR_NOMEM, "out of memory for %zu bytes", a.max_bytes);
    if (s == DDP_OK && a.collective == DDP_BENCH_REDUCE_SCATTER)
        s = ddp_backend_alloc(c.b, (max_count / (size_t)c.world + 1) * sizeof(float),
                              (void **)&c.shard);
    if (!ddp_cli_phase_ok(ctrl, s, "allocating the buffers")) goto done;
    ddp_comm_set_hierarchical(a.hierarchical);
    s = ddp_comm_create(a.comm, c.b, &c.comm);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the communicator")) goto done;
    float *shared = NULL;
    if (a.shared) {
        /* Collective; every rank gets memory, or none does. */
        s = ddp_comm_alloc_shared(c.comm, max_count * sizeof(float), (void **)&shared);
        if (s == DDP_OK && !shared)
            s = DDP_FAIL(DDP_ERR_UNSUPPORTED,
                         "--shared: no node-shared memory here (it needs the MPI comm with "
                         "all ranks on one node or, across nodes, --hierarchical not off and "
                         "a node of several ranks; and DDP_MPI_GATE not 0)");
        if (!ddp_cli_phase_ok(ctrl, s, "allocating shared memory")) goto done;
        ddp_backend_dealloc(c.b, c.dev);
        c.dev = shared; /* freed with the comm */
        dev_is_shared = 1;
    }
    long wrong = 0;
    s = run_allreduce(&c, &a, &wrong);
    if (s != DDP_OK) {
        ddp_log_current_error("benchmarking the collective");
        ddp_comm_abort(ctrl, 1);
    }
    code = wrong == 0 ? 0 : 1;
    if (wrong != 0 && rank == 0) ddp_log_error("%ld elements had a wrong sum", wrong);
done:
    if (c.b && !dev_is_shared) ddp_backend_dealloc(c.b, c.dev);
    if (c.b && c.shard) ddp_backend_dealloc(c.b, c.shard);
    ddp_comm_free(c.comm);
    free(c.host);
    free(c.counts);
    ddp_backend_free(c.b);
    return code;
}
