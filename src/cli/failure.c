/*
 * How ddp-train and ddp-bench end a failed job: the watchdog's expiry, an abort after an
 * error, a failure that another rank reports; each through the flight recorder
 * (ddp/flight.h), which writes every rank's ring and, on the rank that gathers (rank 0),
 * says in one line which ranks are where, before the job ends. And its set-up: the ring,
 * its directory, the side channel, --check-collectives and the fatal signals.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ddp/cli.h"
#include "ddp/flight.h"
#include "ddp/watchdog.h"

/* The flight recorder's part of ending the job, then the end. `main_thread`: the caller is
 * the thread that initialized MPI. Does not return. */
static void end_job(ddp_comm *ctrl, const char *reason, int code, int main_thread) {
    /* Should the recorder or the abort hang, SIGALRM's default action ends this process,
     * and mpirun ends the others when it sees a rank exit without finalizing. The
     * recorder returns within about 15 s (ddp_flight_conclude). */
    alarm(45);
    ddp_flight_outcome o;
    ddp_flight_conclude(reason, code, &o);
    if (o.gathered) {
        if (o.rank0_silent)
            ddp_log_error("flight recorder: rank 0 did not end the job when told: this rank "
                          "gathered instead");
        ddp_log_error("flight recorder: %s", o.verdict);
        ddp_log_error("flight recorder: ranks %s wrote their last collectives to "
                      "flight-rankR.json in their --flight-dir (here %s); cluster/ddp-flight "
                      "merges them into one timeline",
                      o.answered, ddp_flight_dump_path());
    }
    /* The abort gets a bound of its own: where the launcher's daemon on this node is gone
     * (a failed node under srun) MPI_Abort can wait for it indefinitely, and the time the
     * recorder took must not come out of the time this process may linger. */
    alarm(10);
    /* MPI_Abort from a second thread is allowed only at MPI_THREAD_MULTIPLE; without it,
     * exiting is the safe way to make mpirun end the job. */
    if (main_thread || ddp_mpi_thread_multiple()) ddp_comm_abort(ctrl, o.code);
    _exit(o.code);
}

void ddp_cli_abort(ddp_comm *ctrl, int code, const char *reason) { end_job(ctrl, reason, code, 1); }

/* The watchdog's way out, on its own thread: a collective waited longer than --timeout,
 * so a peer died or hangs, and only ending every rank (the hung one too) frees the job. */
void ddp_cli_watchdog_expired(void *ctx, const char *message) {
    end_job((ddp_comm *)ctx, message, DDP_CLI_EXIT_TIMEOUT, 0);
}

/* On the watchdog's thread at every wake-up: answers the other ranks' questions; on rank
 * 0, a failure that another rank reports makes it gather and end the job. */
static void flight_tick(void *ctx) {
    int from = -1, code = 1;
    char why[512];
    if (!ddp_flight_channel_service(&from, &code, why, sizeof why)) return;
    char reason[640];
    snprintf(reason, sizeof reason, "reported by rank %d: %s", from, why);
    end_job((ddp_comm *)ctx, reason, code, 0);
}

int ddp_cli_start_flight(ddp_comm *ctrl, const ddp_train_config *cfg) {
    ddp_comm_set_name(ctrl, "control");
    /* --check-collectives adds collectives: every rank must have it, or none. The flag is
     * compared here, before the first collective it would add. */
    int first = -1, n = 0, mine = 0;
    ddp_status s = ddp_comm_compare(ctrl, (uint32_t)cfg->check_collectives, &first, &n, &mine);
    int at_rank0 = mine ? !cfg->check_collectives : cfg->check_collectives;
    if (s == DDP_OK && first >= 0)
        s = DDP_FAIL(DDP_ERR_MISMATCH,
                     "--check-collectives is given to rank %d but not to rank %d (%d rank(s) "
                     "differ from rank 0): give it to every rank or to none",
                     at_rank0 ? 0 : first, at_rank0 ? first : 0, n);
    if (!ddp_cli_phase_ok(ctrl, s, "comparing --check-collectives")) return DDP_CLI_EXIT_USAGE;
    /* Per rank: the ring and where it goes. */
    const char *dir = cfg->flight_dir[0] ? cfg->flight_dir : cfg->checkpoint_dir;
    s = ddp_flight_configure((size_t)cfg->flight_ring);
    if (s == DDP_OK && dir[0]) s = ddp_mkdirs(dir, "--flight-dir");
    if (s == DDP_OK) s = ddp_flight_set_dir(dir[0] ? dir : ".");
    if (!ddp_cli_phase_ok(ctrl, s, "setting up the flight recorder")) return 1;
    /* Collective: every rank opens the channel and says how often it answers. */
    s = ddp_flight_channel_open(ddp_watchdog_poll_s());
    if (s == DDP_OK && cfg->check_collectives) {
        s = ddp_comm_check_collectives(ctrl);
        ddp_comm_check_all(1);
    }
    if (!ddp_cli_phase_ok(ctrl, s, "opening the flight recorder's channel")) return 1;
    ddp_flight_catch_signals();
    ddp_watchdog_set_tick(flight_tick, ctrl);
    return 0;
}

void ddp_cli_stop_flight(void) {
    /* The watchdog is stopped first (ddp_watchdog_free): no tick runs any more. */
    ddp_watchdog_set_tick(NULL, NULL);
    ddp_comm_check_all(0);
    ddp_flight_channel_close();
}
