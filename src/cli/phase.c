/*
 * Agreement on the outcome of the set-up phases of ddp-train and ddp-bench: set-up may
 * fail on one rank alone (a missing file, no device), and the others must learn it
 * instead of waiting in the next collective.
 */
#include <stdio.h>

#include "ddp/cli.h"

/* A collective that failed may have left the ranks out of step (the others still inside
 * it): one more collective to agree could then pair with the wrong call and wait until
 * the watchdog fires, so a communication error ends the job at once. */
static void abort_if_comm_failed(ddp_comm *ctrl, ddp_status s, const char *phase) {
    if (s != DDP_ERR_COMM) return;
    ddp_log_error("%s: communication failed; aborting all %d ranks", phase, ddp_comm_size(ctrl));
    ddp_comm_abort(ctrl, 1);
}

int ddp_cli_phase_ok(ddp_comm *ctrl, ddp_status s, const char *phase) {
    if (s != DDP_OK) ddp_log_current_error(phase);
    abort_if_comm_failed(ctrl, s, phase);
    int failed = -1;
    if (ddp_comm_agree(ctrl, s, &failed) != DDP_OK) {
        ddp_log_current_error("agreeing on the outcome of set-up");
        ddp_comm_abort(ctrl, 1);
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
