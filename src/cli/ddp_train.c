/*
 * ddp-train: data-parallel training from the command line, one process per rank under
 * mpirun.
 *
 * Failure policy. Set-up (options, device, data, communicator, model) may fail on one
 * rank alone; after each phase all ranks agree on the outcome, so every rank exits with
 * a message and a non-zero status and none waits in a collective. Once training runs,
 * the other ranks may already be inside a collective, so a failing rank reports and
 * aborts the whole job through the communicator.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/checkpoint.h"
#include "ddp/cli.h"
#include "ddp/watchdog.h"

/* Every rank takes part (the parameters may be sharded); rank 0 writes. */
static ddp_status dump_params(ddp_trainer *t, const char *path, int rank) {
    ddp_model *m = ddp_trainer_model(t);
    size_t n = ddp_model_num_params(m);
    float *host = malloc(n * sizeof(float));
    if (!host) return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    ddp_status s = ddp_trainer_get_params(t, host);
    if (s == DDP_OK && rank == 0) {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(host, sizeof(float), n, f) != n || fclose(f) != 0)
            s = DDP_FAIL(DDP_ERR_IO, "--dump-params %s: could not write %zu floats", path, n);
    }
    free(host);
    return s;
}

/* --memory-plan: one JSON line of bytes per rank, for scripts that size models. "total" is
 * the training state the trainer allocates; "peak" adds the communication buffers and
 * `runtime`, what this process held before the trainer (libraries, MPI, the data), which
 * every rank holds too: the peak resident memory a rank should reach. */
static void print_memory_plan(ddp_trainer *t, int ranks, double runtime_mb) {
    ddp_memory_use m;
    ddp_trainer_memory(t, ranks, &m);
    size_t total = m.params + m.params_bf16 + m.grads + m.grad_shard + m.optim + m.activations;
    size_t runtime = runtime_mb > 0.0 ? (size_t)(runtime_mb * 1024.0 * 1024.0) : 0;
    printf("{\"ranks\": %d, \"num_params\": %zu, \"params\": %zu, \"params_bf16\": %zu, "
           "\"grads\": %zu, \"grad_shard\": %zu, \"optim\": %zu, \"activations\": %zu, "
           "\"total\": %zu, \"comm\": %zu, \"runtime\": %zu, \"peak\": %zu}\n",
           ranks, ddp_model_num_params(ddp_trainer_model(t)), m.params, m.params_bf16, m.grads,
           m.grad_shard, m.optim, m.activations, total, m.comm, runtime, total + m.comm + runtime);
    fflush(stdout);
}

int main(int argc, char **argv) {
    /* Before anything else: this may start the program again with other BLAS kernels. */
    ddp_blas_choose_kernels(argv);
    if (ddp_mpi_init(&argc, &argv) != DDP_OK) {
        fprintf(stderr, "ddp-train: %s\n", ddp_error_message());
        return 1;
    }
    ddp_comm *ctrl = NULL, *comm = NULL;
    ddp_backend *backend = NULL;
    ddp_trainer *trainer = NULL;
    ddp_train_data data = {0};
    int code = 1;
    ddp_status s = ddp_comm_create(DDP_COMM_MPI, NULL, &ctrl);
    if (s != DDP_OK) {
        fprintf(stderr, "ddp-train: %s\n", ddp_error_message());
        ddp_mpi_finalize();
        return 1;
    }
    int rank = ddp_comm_rank(ctrl), world = ddp_comm_size(ctrl);
    ddp_log_init(rank, world, DDP_LOG_INFO);
    ddp_cli_log_blas_note();

    ddp_cli_options opt;
    s = ddp_cli_parse(argc, argv, &opt);
    if (!ddp_cli_phase_ok(ctrl, s, "parsing options")) {
        if (rank == 0 || s != DDP_OK) fprintf(stderr, "usage: see %s --help\n", argv[0]);
        code = DDP_CLI_EXIT_USAGE;
        goto done;
    }
    if (opt.help || opt.version) {
        if (rank == 0) {
            if (opt.help) ddp_cli_usage(stdout, argv[0], opt.train.model.kind);
            if (opt.version) printf("ddp-train 0.1.0\n");
        }
        code = 0;
        goto done;
    }
    if (opt.verbose) ddp_log_show_traces(1);
    ddp_train_config *cfg = &opt.train;
    s = ddp_train_config_resolve(cfg, world);
    if (!ddp_cli_phase_ok(ctrl, s, "checking the batch configuration")) {
        code = DDP_CLI_EXIT_USAGE;
        goto done;
    }
    /* From here on, a rank that dies or hangs must not leave the others waiting forever in
     * a collective: the watchdog ends the job after --timeout seconds. */
    if (!ddp_cli_start_watchdog(ctrl, cfg->timeout_s)) goto done;
    /* Where the watchdog and aborts write what each rank was doing, and how rank 0 learns
     * it from the others. */
    int flight = ddp_cli_start_flight(ctrl, cfg);
    if (flight != 0) {
        code = flight;
        goto done;
    }

    if (!ddp_cli_create_backend(ctrl, cfg, &backend)) goto done;

    if (!ddp_cli_load_data(ctrl, cfg, &data)) goto done;
    /* What a rank holds before the training state: part of the plan's peak. */
    double runtime_mb = ddp_rss_mb();
    cfg->plan_only = opt.memory_plan > 0;
    if (!ddp_cli_create_trainer(ctrl, cfg, backend, &data, &comm, &trainer)) goto done;
    if (opt.memory_plan > 0) {
        if (rank == 0) print_memory_plan(trainer, opt.memory_plan, runtime_mb);
        code = 0;
        goto done;
    }
    if (cfg->resume) {
        /* Collective, and it agrees on failure itself; the failing rank prints why. */
        s = ddp_trainer_resume(trainer, cfg->checkpoint_dir, NULL);
        if (s != DDP_OK) {
            ddp_cli_agreed_failure(ctrl, s, "resuming");
            goto done;
        }
    }
    /* An unusable checkpoint directory is a set-up error, found before training. */
    s = ddp_trainer_prepare_checkpoints(trainer);
    if (s != DDP_OK) {
        ddp_cli_agreed_failure(ctrl, s, "checkpoints");
        goto done;
    }

    if (!ddp_cli_open_trace(ctrl, cfg->trace_path)) goto done;
    double accuracy = -1.0;
    s = ddp_trainer_run(trainer, &accuracy);
    if (s != DDP_OK) {
        /* Other ranks may be inside a collective already: end the whole job. */
        ddp_log_current_error("training");
        ddp_log_error("aborting all %d ranks", world);
        char why[1100];
        snprintf(why, sizeof why, "training failed: %s", ddp_error_message());
        ddp_cli_abort(ctrl, 1, why);
    }
    if (accuracy >= 0.0) {
        char what[160];
        ddp_trainer_eval_text(trainer, accuracy, ddp_trainer_last_eval_loss(trainer), what,
                              sizeof what);
        ddp_log_info("final %s", what);
    }
    if (s == DDP_OK) s = ddp_trace_close();
    /* Collective where the parameters are sharded: every rank that trained to the end
     * reaches these (a failed one aborted the job above). */
    if (s == DDP_OK && opt.dump_params[0]) {
        s = dump_params(trainer, opt.dump_params, rank);
        if (s != DDP_OK) ddp_log_current_error("writing parameters");
    }
    if (opt.export_path[0] && s == DDP_OK) {
        s = ddp_trainer_export(trainer, opt.export_path);
        if (s != DDP_OK) ddp_log_current_error("exporting parameters");
    }
    if (!ddp_cli_phase_ok(ctrl, s, "finishing")) goto done;
    code = 0;
done:
    /* Freeing the trainer and comm is collective too (shared windows, node comms), so
     * the watchdog stays armed-capable until only ctrl is left, which it aborts through. */
    ddp_trainer_free(trainer);
    ddp_comm_free(comm);
    ddp_train_data_free(&data);
    ddp_backend_free(backend);
    ddp_watchdog_free();
    ddp_cli_stop_flight();
    ddp_comm_free(ctrl);
    ddp_mpi_finalize();
    return code;
}
