/*
 * The set-up of ddp-train and ddp-bench, shared: agreement on the outcome of each phase
 * (set-up may fail on one rank alone, a missing file or no device, and the others must
 * learn it instead of waiting in the next collective), the backend and trainer made that
 * way, and the comparison of options over the ranks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/cli.h"
#include "ddp/watchdog.h"

/* A collective that failed may have left the ranks out of step (the others still inside
 * it): one more collective to agree could then pair with the wrong call and wait until
 * the watchdog fires, so a communication error ends the job at once. */
static void abort_if_comm_failed(ddp_comm *ctrl, ddp_status s, const char *phase) {
    if (s != DDP_ERR_COMM) return;
    ddp_log_error("%s: communication failed; aborting all %d ranks", phase, ddp_comm_size(ctrl));
    char why[512];
    snprintf(why, sizeof why, "%s: %s", phase, ddp_error_message());
    ddp_cli_abort(ctrl, 1, why);
}

void ddp_cli_log_blas_note(void) {
    char note[256];
    if (ddp_blas_kernels_note(note, sizeof note)) ddp_log_info("%s", note);
}

int ddp_cli_phase_ok(ddp_comm *ctrl, ddp_status s, const char *phase) {
    if (s != DDP_OK) ddp_log_current_error(phase);
    abort_if_comm_failed(ctrl, s, phase);
    int failed = -1;
    if (ddp_comm_agree(ctrl, s, &failed) != DDP_OK) {
        ddp_log_current_error("agreeing on the outcome of set-up");
        ddp_cli_abort(ctrl, 1, "agreeing on the outcome of set-up failed");
    }
    if (failed >= 0 && s == DDP_OK && ddp_comm_rank(ctrl) == 0)
        ddp_log_error("%s failed on rank %d (see its message); stopping all ranks", phase, failed);
    return failed < 0;
}

void ddp_cli_agreed_failure(ddp_comm *ctrl, ddp_status s, const char *phase) {
    if (ddp_error_status() != DDP_ERR_REMOTE) ddp_log_current_error(phase);
    abort_if_comm_failed(ctrl, s, phase);
}

int ddp_cli_open_trace(ddp_comm *ctrl, const char *path) {
    /* Agreed even without --trace: it is not in the configuration fingerprint, so ranks
     * started with and without it must still make the same collectives. */
    if (!path[0]) return ddp_cli_phase_ok(ctrl, DDP_OK, "opening the trace");
    int rank = ddp_comm_rank(ctrl);
    char file[DDP_PATH_MAX + 32];
    if (ddp_comm_size(ctrl) == 1)
        snprintf(file, sizeof file, "%s", path);
    else
        snprintf(file, sizeof file, "%s.rank%d.json", path, rank);
    return ddp_cli_phase_ok(ctrl, ddp_trace_open(file, rank), "opening the trace");
}

int ddp_cli_start_watchdog(ddp_comm *ctrl, double timeout_s) {
    ddp_status s =
        ddp_watchdog_init(timeout_s, ddp_comm_rank(ctrl), ddp_cli_watchdog_expired, ctrl);
    return ddp_cli_phase_ok(ctrl, s, "starting the watchdog");
}

int ddp_cli_create_backend(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend **out) {
    int gpus = ddp_backend_cuda_device_count();
    ddp_cli_cpu_info info;
    ddp_cli_cpu_info_read(&info);
    if (ddp_comm_local_rank(ctrl) == 0) {
        char warning[640];
        if (ddp_cli_spin_warning(ddp_comm_local_size(ctrl), ddp_mpi_yields_when_idle(), &info,
                                 warning, sizeof warning))
            ddp_log_warn("%s", warning);
    }
    ddp_backend_options bo = {
        .device = cfg->device,
        .device_index = gpus > 0 ? ddp_comm_local_rank(ctrl) % gpus : 0,
        .threads = ddp_cli_default_threads(cfg->threads, ddp_comm_local_size(ctrl), &info),
        .math = cfg->math,
    };
    return ddp_cli_phase_ok(ctrl, ddp_backend_create(&bo, out), "creating the compute backend");
}

int ddp_cli_load_data(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_train_data *d) {
    memset(d, 0, sizeof *d);
    /* The first rank of each node prepares its node's files (it may be the only one that
     * sees that directory); the others wait for it here. */
    ddp_status s = ddp_comm_local_rank(ctrl) == 0 ? ddp_train_data_prepare(cfg) : DDP_OK;
    if (!ddp_cli_phase_ok(ctrl, s, "preparing the data")) return 0;
    return ddp_cli_phase_ok(ctrl, ddp_train_data_load(cfg, d), "loading the data");
}

int ddp_cli_create_trainer(ddp_comm *ctrl, const ddp_train_config *cfg, ddp_backend *b,
                           const ddp_train_data *data, ddp_comm **comm, ddp_trainer **trainer) {
    /* Every rank creates the gradient communicator (collective). */
    ddp_comm_set_hierarchical(cfg->hierarchical);
    ddp_status s = ddp_comm_create(cfg->comm, b, comm);
    if (!ddp_cli_phase_ok(ctrl, s, "creating the communicator")) return 0;
    s = ddp_trainer_create(cfg, b, *comm, ctrl, data, trainer);
    if (s != DDP_OK) {
        /* ddp_trainer_create agrees on failure itself; the failing rank prints why. */
        ddp_cli_agreed_failure(ctrl, s, "setting up training");
        return 0;
    }
    return 1;
}

ddp_status ddp_cli_check_same_options(ddp_comm *ctrl, const ddp_opt_table *tables, int n_tables) {
    char canon[4096];
    size_t len = ddp_opt_canonical(tables, n_tables, 0, canon, sizeof canon);
    int first = -1, n = 0, mine = 0;
    DDP_CHECK(ddp_comm_compare(ctrl, ddp_crc32(0, canon, len), &first, &n, &mine));
    if (first < 0) return DDP_OK;
    /* Each rank that differs says what it got; rank 0's line is the reference. */
    if (mine || ddp_comm_rank(ctrl) == 0) ddp_log_error("my options: %s", canon);
    return DDP_FAIL(DDP_ERR_MISMATCH,
                    "rank %d (and %d rank(s) in all) was given other options than rank 0: "
                    "every rank must get the same ones, or the ranks' collectives would not match",
                    first, n);
}
