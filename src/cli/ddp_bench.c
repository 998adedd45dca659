/*
 * ddp-bench: measurements of the communication and of whole training steps, one process
 * per rank under mpirun.
 *
 *   ddp-bench allreduce [options]   all-reduce time and bandwidth (bench_allreduce.c)
 *   ddp-bench train [options]       training throughput (bench_train.c)
 *
 * Both take their options from tables (ddp/cli.h; train takes every ddp-train option
 * besides its own), compare them over the ranks, and run under the watchdog of
 * --timeout, as ddp-train does: a rank that dies or hangs ends the job with exit status 3
 * instead of leaving the others waiting.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "ddp/watchdog.h"

ddp_status ddp_bench_max_over_ranks(ddp_comm *ctrl, double *t) {
    DDP_CHECK(ddp_comm_allreduce(ctrl, t, 1, DDP_F64, DDP_MAX));
    return DDP_OK;
}

ddp_status ddp_bench_write_json(json_t *o, const char *path) {
    if (json_dump_file(o, path, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) != 0)
        return DDP_FAIL(DDP_ERR_IO, "--json %s: could not write the results", path);
    return DDP_OK;
}

static const char usage[] =
    "usage: ddp-bench allreduce [options]   all-reduce bandwidth (--help for options)\n"
    "       ddp-bench train [options]       training throughput (--help for options)\n";

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "allreduce") != 0 && strcmp(argv[1], "train") != 0)) {
        int help = argc >= 2 && strcmp(argv[1], "--help") == 0;
        fputs(usage, help ? stdout : stderr);
        return help ? 0 : DDP_CLI_EXIT_USAGE;
    }
    /* Before anything else: this may start the program again with other BLAS kernels. */
    ddp_blas_choose_kernels(argv);
    if (ddp_mpi_init(&argc, &argv) != DDP_OK) {
        fprintf(stderr, "ddp-bench: %s\n", ddp_error_message());
        return 1;
    }
    ddp_comm *ctrl = NULL;
    if (ddp_comm_create(DDP_COMM_MPI, NULL, &ctrl) != DDP_OK) {
        fprintf(stderr, "ddp-bench: %s\n", ddp_error_message());
        ddp_mpi_finalize();
        return 1;
    }
    ddp_log_init(ddp_comm_rank(ctrl), ddp_comm_size(ctrl), DDP_LOG_INFO);
    ddp_cli_log_blas_note();
    int code;
    if (strcmp(argv[1], "allreduce") == 0)
        code = ddp_bench_allreduce_main(ctrl, argc - 1, argv + 1);
    else
        code = ddp_bench_train_main(ctrl, argc - 1, argv + 1);
    /* The subcommands freed everything else: ctrl, the watchdog's way out, goes last. */
    ddp_watchdog_free();
    ddp_cli_stop_flight();
    ddp_comm_free(ctrl);
    ddp_mpi_finalize();
    return code;
}
