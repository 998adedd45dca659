/*
 * ddp-bench's options: allreduce's table, and train's own options, which it takes beside
 * ddp-train's whole table (ddp/cli.h).
 */
#include <string.h>

#include "cli/cli_impl.h"

/* ---- ddp-bench allreduce ------------------------------------------------------------ */

static const char *const ar_comms[] = {"mpi", "nccl", NULL};
static const int ar_comm_values[] = {DDP_COMM_MPI, DDP_COMM_NCCL};
static const char *const ar_collectives[] = {"allreduce", "reduce-scatter", "allgather", NULL};
static const int ar_collective_values[] = {DDP_BENCH_ALLREDUCE, DDP_BENCH_REDUCE_SCATTER,
                                           DDP_BENCH_ALLGATHER};

/* The largest buffer: 2^30 floats, well within the int counts of MPI. */
#define MAX_BYTES ((uint64_t)4 << 30)

#define OPT_BASE ddp_cli_allreduce_options
static const ddp_opt allreduce_opts[] = {
    OPT_HEADING("Sizes and repetitions"),
    OPT(CHOICE, "comm", comm, NULL, "(nccl needs GPUs)", .choices = ar_comms,
        .values = ar_comm_values, .def = "mpi"),
    OPT(CHOICE, "collective", collective, NULL,
        "what is timed: the all-reduce, or the reduce-scatter and\n"
        "all-gather of --zero's shards (in place, blocks of size / ranks)",
        .choices = ar_collectives, .values = ar_collective_values, .def = "allreduce"),
    OPT(BYTES, "min-bytes", min_bytes, "BYTES", "smallest size; sizes double up to --max-bytes",
        .lo = 4, .hi = MAX_BYTES, .def = "8"),
    OPT(BYTES, "max-bytes", max_bytes, "BYTES", "largest size", .lo = 4, .hi = MAX_BYTES,
        .def = "256M"),
    OPT(INT, "iters", iters, "N", "timed all-reduces per size", .lo = 1, .hi = 1000000000,
        .def = "20"),
    OPT(INT, "warmup-iters", warmup_iters, "N", "untimed all-reduces per size before them", .lo = 0,
        .hi = 1000000000, .def = "5"),
    OPT(FLOAT, "gap-ms", gap_ms, "MS",
        "each rank computes MS milliseconds of CPU time before every\n"
        "collective, as a training step does, and the time given is\n"
        "what the collectives add to that compute alone (0: back to back)",
        .min = 0, .max = 1e4, .def = "0"),
    OPT(FLAG, "shared", shared, NULL,
        "buffers in memory shared by the node's ranks, as the trainer\n"
        "keeps its gradients on the CPU: sums of 64 KiB and more then\n"
        "need no MPI message",
        .lo = 1, .def = "0"),
    OPT_HEADING("Through the gradient reducer"),
    OPT(FLAG, "reducer", reducer, NULL, "also time the same sizes through the gradient reducer",
        .lo = 1, .def = "0"),
    OPT(MB, "tensor-mb", tensor_bytes, "MB", "--reducer: a tensor boundary every MB", .min = 1e-6,
        .max = 1e5, .def = "1"),
    DDP_TRAIN_OPT_BUCKETS(OPT_BASE, ropt.bucket_bytes, ropt.first_bucket_bytes),
    DDP_TRAIN_OPT_PROGRESS(OPT_BASE, ropt.progress),
    DDP_TRAIN_OPT_HIERARCHICAL(OPT_BASE, hierarchical),
    OPT_HEADING("Output and failures"),
    OPT(PATH, "json", json, "FILE", "the results as JSON (rank 0)", .per_rank = 1),
    DDP_TRAIN_OPT_TIMEOUT(OPT_BASE, timeout_s),
    OPT_VERBOSE_ENTRY(verbose),
    OPT_HELP_ENTRY(help),
};
#undef OPT_BASE

const ddp_opt *ddp_cli_allreduce_table(size_t *n) {
    *n = sizeof allreduce_opts / sizeof *allreduce_opts;
    return allreduce_opts;
}

ddp_status ddp_cli_parse_allreduce(int argc, char **argv, ddp_cli_allreduce_options *a) {
    /* The reducer's settings that no option sets: one fp32 all-reduce per bucket during
     * backward, as the trainer's. */
    *a = (ddp_cli_allreduce_options){.ropt = {.grad_dtype = DDP_F32, .overlap = 1}};
    ddp_opt_table t = {.base = a};
    t.opts = ddp_cli_allreduce_table(&t.n);
    DDP_CHECK(ddp_opt_set_defaults(&t, 1, 0));
    DDP_CHECK(ddp_opt_parse(argc, argv, &t, 1));
    if (a->max_bytes < a->min_bytes)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--max-bytes %zu is below --min-bytes %zu",
                        a->max_bytes, a->min_bytes);
    if (a->reducer && a->collective != DDP_BENCH_ALLREDUCE)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--reducer times the gradient reducer's all-reduces: it needs "
                        "--collective allreduce");
    return DDP_OK;
}

void ddp_cli_allreduce_usage(FILE *f) {
    ddp_opt_table t = {.base = NULL};
    t.opts = ddp_cli_allreduce_table(&t.n);
    ddp_opt_print_help(
        f,
        "usage: mpirun -np N ddp-bench allreduce [options]\n"
        "In-place fp32 sums of every size from --min-bytes to --max-bytes, each checked\n"
        "element by element; time per all-reduce (max over ranks), algbw and busbw.\n\n",
        &t, 1, 0);
}

/* ---- ddp-bench train ---------------------------------------------------------------- */

#define OPT_BASE ddp_cli_bench_train_options
static const ddp_opt bench_train_opts[] = {
    OPT_HEADING("Benchmark (ddp-bench train only)"),
    OPT(INT, "warmup-steps", warmup_steps, "W", "untimed training steps first", .lo = 0,
        .hi = 1000000000, .def = "5"),
    OPT(INT, "bench-steps", bench_steps, "S", "timed steps; --steps S sets it too", .lo = 1,
        .hi = 1000000000, .def = "20"),
    OPT(PATH, "json", json, "FILE", "the results as JSON (rank 0; also printed)", .per_rank = 1),
    OPT(FLAG, "no-allreduce", no_allreduce, NULL,
        "skip gradient averaging altogether (the replicas drift\n"
        "apart): the throughput N ranks would reach if communication\n"
        "were free, the ceiling of a scaling measurement",
        .lo = 1, .def = "0"),
};
#undef OPT_BASE

const ddp_opt *ddp_cli_bench_train_table(size_t *n) {
    *n = sizeof bench_train_opts / sizeof *bench_train_opts;
    return bench_train_opts;
}

/* ddp-train's tables, then the bench's own (bases in o, or NULL for --help); tt keeps the
 * notes of the inactive ones. Returns how many. */
static int bench_train_tables(ddp_cli_bench_train_options *o, ddp_model_kind kind,
                              ddp_train_tables *tt, ddp_opt_table *t) {
    int n = ddp_cli_train_tables(o ? &o->cli : NULL, kind, tt, t);
    t[n] = (ddp_opt_table){.base = o};
    t[n].opts = ddp_cli_bench_train_table(&t[n].n);
    /* Active, though after the inactive tables: --help and the checks skip those. */
    return n + 1;
}

ddp_status ddp_cli_parse_bench_train(int argc, char **argv, ddp_cli_bench_train_options *o) {
    memset(o, 0, sizeof *o);
    ddp_model_kind kind = ddp_cli_model_kind(argc, argv);
    ddp_train_tables tt;
    ddp_opt_table t[DDP_CLI_MAX_TABLES + 1];
    int n = bench_train_tables(o, kind, &tt, t);
    ddp_train_config_defaults_for(&o->cli.train, kind);
    DDP_CHECK(ddp_opt_set_defaults(&t[tt.n_active], 1, (int)kind)); /* ddp-train's own */
    DDP_CHECK(ddp_opt_set_defaults(&t[n - 1], 1, (int)kind));       /* the bench's */
    /* No --data means the synthetic dataset: the directory stays empty unless given. And
     * only a --steps given here counts the timed steps, not a model's default run length. */
    o->cli.train.data_dir[0] = '\0';
    o->cli.train.max_steps = 0;
    DDP_CHECK(ddp_opt_parse(argc, argv, t, n));
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

void ddp_cli_bench_train_usage(FILE *f, ddp_model_kind kind) {
    char intro[2048];
    int n =
        snprintf(intro, sizeof intro,
                 "usage: mpirun -np N ddp-bench train [ddp-train options] [benchmark options]\n"
                 "Times training steps and prints throughput and per-phase step times as JSON.\n"
                 "Without --data, a synthetic dataset shaped like Fashion-MNIST is used (a\n"
                 "language model reads its text).\n\n");
    ddp_cli_models_intro(intro + n, sizeof intro - (size_t)n, kind);
    ddp_train_tables tt;
    ddp_opt_table t[DDP_CLI_MAX_TABLES + 1];
    int nt = bench_train_tables(NULL, kind, &tt, t);
    ddp_opt_print_help(f, intro, t, nt, (int)kind);
}
