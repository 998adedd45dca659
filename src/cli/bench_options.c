/*
 * ddp-bench's options: allreduce's table, and train's own options, which it takes beside
 * ddp-train's whole table (ddp/cli.h).
 */
#include <string.h>

#include "cli/cli_impl.h"

/* ---- ddp-bench allreduce ------------------------------------------------------------ */

static const char *const ar_comms[] = {"mpi", "nccl", NULL};
static const int ar_comm_values[] = {DDP_COMM_MPI, DDP_COMM_NCCL};

/* The largest buffer: 2^30 floats, well within the int counts of MPI. */
#define MAX_BYTES ((uint64_t)4 << 30)

#define OPT_BASE ddp_cli_allreduce_options
static const ddp_cli_opt allreduce_opts[] = {
    OPT_HEADING("Sizes and repetitions"),
    OPT(CHOICE, "comm", comm, NULL, "(default mpi; nccl needs GPUs)", .choices = ar_comms,
        .values = ar_comm_values),
    OPT(BYTES, "min-bytes", min_bytes, "BYTES",
        "smallest size (default 8); sizes double up to --max-bytes", .lo = 4, .hi = MAX_BYTES),
    OPT(BYTES, "max-bytes", max_bytes, "BYTES", "largest size (default 256M)", .lo = 4,
        .hi = MAX_BYTES),
    OPT(INT, "iters", iters, "N", "timed all-reduces per size (default 20)", .lo = 1,
        .hi = 1000000000),
    OPT(INT, "warmup-iters", warmup_iters, "N",
        "untimed all-reduces per size before them (default 5)", .lo = 0, .hi = 1000000000),
    OPT(FLAG, "shared", shared, NULL,
        "buffers in memory shared by the node's ranks, as the trainer\n"
        "keeps its gradients on the CPU: sums of 64 KiB and more then\n"
        "need no MPI message",
        .lo = 1),
    OPT_HEADING("Through the gradient reducer"),
    OPT(FLAG, "reducer", reducer, NULL, "also time the same sizes through the gradient reducer",
        .lo = 1),
    OPT(MB, "tensor-mb", tensor_bytes, "MB", "--reducer: a tensor boundary every MB (default 1)",
        .min = 1e-6, .max = 1e5),
    OPT_BUCKET_ENTRIES(ropt.bucket_bytes, ropt.first_bucket_bytes),
    OPT_PROGRESS_ENTRY(ropt.progress),
    OPT_HEADING("Output and failures"),
    OPT(PATH, "json", json, "FILE", "the results as JSON (rank 0)", .per_rank = 1),
    OPT_TIMEOUT_ENTRY(timeout_s),
    OPT_VERBOSE_ENTRY(verbose),
    OPT_HELP_ENTRY(help),
};
#undef OPT_BASE

const ddp_cli_opt *ddp_cli_allreduce_table(size_t *n) {
    *n = sizeof allreduce_opts / sizeof *allreduce_opts;
    return allreduce_opts;
}

ddp_status ddp_cli_parse_allreduce(int argc, char **argv, ddp_cli_allreduce_options *a) {
    *a = (ddp_cli_allreduce_options){.comm = DDP_COMM_MPI,
                                     .min_bytes = 8,
                                     .max_bytes = 256u << 20,
                                     .iters = 20,
                                     .warmup_iters = 5,
                                     .tensor_bytes = 1u << 20,
                                     .ropt = {.bucket_bytes = 25u << 20,
                                              .first_bucket_bytes = 1u << 20,
                                              .grad_dtype = DDP_F32,
                                              .overlap = 1,
                                              .progress = DDP_PROGRESS_AUTO},
                                     .timeout_s = 300.0f};
    ddp_cli_table t = {.base = a};
    t.opts = ddp_cli_allreduce_table(&t.n);
    DDP_CHECK(ddp_cli_parse_tables(argc, argv, &t, 1));
    if (a->max_bytes < a->min_bytes)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--max-bytes %zu is below --min-bytes %zu",
                        a->max_bytes, a->min_bytes);
    return DDP_OK;
}

void ddp_cli_allreduce_usage(FILE *f) {
    ddp_cli_table t = {.base = NULL};
    t.opts = ddp_cli_allreduce_table(&t.n);
    ddp_cli_print_help(
        f,
        "usage: mpirun -np N ddp-bench allreduce [options]\n"
        "In-place fp32 sums of every size from --min-bytes to --max-bytes, each checked\n"
        "element by element; time per all-reduce (max over ranks), algbw and busbw.\n\n",
        &t, 1);
}

/* ---- ddp-bench train ---------------------------------------------------------------- */

#define OPT_BASE ddp_cli_bench_train_options
static const ddp_cli_opt bench_train_opts[] = {
    OPT_HEADING("Benchmark (ddp-bench train only)"),
    OPT(INT, "warmup-steps", warmup_steps, "W", "untimed training steps first (default 5)", .lo = 0,
        .hi = 1000000000),
    OPT(INT, "bench-steps", bench_steps, "S", "timed steps (default 20); --steps S sets it too",
        .lo = 1, .hi = 1000000000),
    OPT(PATH, "json", json, "FILE", "the results as JSON (rank 0; also printed)", .per_rank = 1),
    OPT(FLAG, "no-allreduce", no_allreduce, NULL,
        "skip gradient averaging altogether (the replicas drift\n"
        "apart): the throughput N ranks would reach if communication\n"
        "were free, the ceiling of a scaling measurement",
        .lo = 1),
};
#undef OPT_BASE

const ddp_cli_opt *ddp_cli_bench_train_table(size_t *n) {
    *n = sizeof bench_train_opts / sizeof *bench_train_opts;
    return bench_train_opts;
}

/* Both tables, ddp-train's first; o may be NULL for --help. */
static void bench_train_tables(ddp_cli_bench_train_options *o, ddp_cli_table t[2]) {
    t[0] = (ddp_cli_table){.base = o ? &o->cli : NULL};
    t[0].opts = ddp_cli_train_table(&t[0].n);
    t[1] = (ddp_cli_table){.base = o};
    t[1].opts = ddp_cli_bench_train_table(&t[1].n);
}

ddp_status ddp_cli_parse_bench_train(int argc, char **argv, ddp_cli_bench_train_options *o) {
    memset(o, 0, sizeof *o);
    ddp_train_config_defaults_for(&o->cli.train, ddp_cli_model_kind(argc, argv));
    /* No --data means the synthetic dataset: the directory stays empty unless given. And
     * only a --steps given here counts the timed steps, not a model's default run length. */
    o->cli.train.data_dir[0] = '\0';
    o->cli.train.max_steps = 0;
    o->warmup_steps = 5;
    o->bench_steps = 20;
    ddp_cli_table t[2];
    bench_train_tables(o, t);
    DDP_CHECK(ddp_cli_parse_tables(argc, argv, t, 2));
    o->have_data = o->cli.train.data_dir[0] != '\0';
    /* --steps, if given, is the number of timed steps. */
    int64_t steps = o->cli.train.max_steps;
    if (steps > 0) {
        if (steps > 1000000000)
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "--steps %lld: ddp-bench train times at most 1000000000 steps",
                            (long long)steps);
        o->bench_steps = (int)steps;
    }
    if ((int64_t)o->warmup_steps + o->bench_steps > 1000000000)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--warmup-steps %d and %d timed steps: at most 1000000000 in all",
                        o->warmup_steps, o->bench_steps);
    return DDP_OK;
}

void ddp_cli_bench_train_usage(FILE *f) {
    ddp_cli_table t[2];
    bench_train_tables(NULL, t);
    ddp_cli_print_help(
        f,
        "usage: mpirun -np N ddp-bench train [ddp-train options] [benchmark options]\n"
        "Times training steps and prints throughput and per-phase step times as JSON.\n"
        "Without --data, a synthetic dataset shaped like Fashion-MNIST is used.\n\n",
        t, 2);
}
