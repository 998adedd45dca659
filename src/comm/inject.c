/*
 * Fault injection for tests, in the communicator's wrappers (comm.c), so that every error
 * path runs with the real communicator and the real programs.
 *
 * DDP_INJECT_FAULT="OP:RANK:N" names the N-th call (1-based) of operation OP on rank RANK:
 *   OP                 allreduce, iallreduce, broadcast, allgather, reduce_scatter or
 *                      barrier: the call fails with DDP_ERR_COMM, as a broken link would;
 *                      a labelled communicator's all-reduces are TAG_allreduce
 *                      (ddp_comm_set_label): "bn_allreduce" for batch norm's;
 *   skip_OP            the call returns success without communicating, as a rank whose
 *                      code took another path would (a desync);
 *   count_OP           the call goes ahead with half its count (allreduce, iallreduce,
 *                      broadcast, allgather; a desync of sizes);
 *   comm_create        the N-th communicator creation fails locally, as an allocation
 *                      would;
 *   thread_single      (N = 1) MPI gives rank RANK only MPI_THREAD_SINGLE, as a library
 *                      installed apart from the others' would (ddp_mpi_init);
 *   nccl_hang, nccl_async  staged by the NCCL comm itself (comm_nccl.c): the N-th
 *                      collective never completes (a stopped peer), the N-th check for
 *                      asynchronous errors reports one (a dead peer).
 * DDP_INJECT_DELAY="OP:RANK:MS" makes rank RANK sleep MS milliseconds before every call of
 * OP: a slow but live rank, which the watchdog must tolerate; OP may also be a point of the
 * trainer's step (ddp_comm_inject_delay: "data", before each batch is loaded).
 * Both are read once, at the first call.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"

static struct {
    int parsed;
    ddp_inject_kind kind;
    char op[32]; /* the operation counted: OP without its skip_ or count_ */
    int rank;
    long n;
    atomic_long calls; /* the main thread and the reducer's both call */
} fault;

static struct {
    int parsed;
    char op[32];
    int rank;
    long ms;
} delay;

static void parse_fault(void) {
    if (fault.parsed) return;
    fault.parsed = 1;
    fault.rank = -1;
    char op[32];
    const char *env = getenv("DDP_INJECT_FAULT");
    if (!env || sscanf(env, "%31[a-z_]:%d:%ld", op, &fault.rank, &fault.n) != 3) {
        fault.rank = -1;
        return;
    }
    fault.kind = DDP_INJECT_FAIL;
    const char *base = op;
    if (strncmp(op, "skip_", 5) == 0) {
        fault.kind = DDP_INJECT_SKIP;
        base = op + 5;
    } else if (strncmp(op, "count_", 6) == 0) {
        fault.kind = DDP_INJECT_COUNT;
        base = op + 6;
    }
    snprintf(fault.op, sizeof fault.op, "%s", base);
}

void ddp_comm_inject_delay(int rank, const char *op) {
    if (!delay.parsed) {
        delay.parsed = 1;
        delay.rank = -1;
        const char *env = getenv("DDP_INJECT_DELAY");
        if (env && sscanf(env, "%31[a-z_]:%d:%ld", delay.op, &delay.rank, &delay.ms) != 3)
            delay.rank = -1;
    }
    if (delay.rank != rank || delay.ms <= 0 || strcmp(op, delay.op) != 0) return;
    struct timespec ts = {.tv_sec = delay.ms / 1000, .tv_nsec = (delay.ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The fault due at this call of op on rank, counting it. */
static ddp_inject_kind due(int rank, const char *op) {
    parse_fault();
    if (fault.rank != rank || strcmp(op, fault.op) != 0) return DDP_INJECT_NONE;
    return atomic_fetch_add(&fault.calls, 1) + 1 == fault.n ? fault.kind : DDP_INJECT_NONE;
}

int ddp_comm_inject_due(int rank, const char *op) {
    parse_fault();
    return fault.kind == DDP_INJECT_FAIL && due(rank, op) == DDP_INJECT_FAIL;
}

ddp_inject_kind ddp_comm_inject(int rank, int size, const char *op) {
    ddp_comm_inject_delay(rank, op);
    /* A broken link or a desync needs a second rank: never in a world of one. */
    return size > 1 ? due(rank, op) : DDP_INJECT_NONE;
}

long ddp_comm_inject_call(void) { return fault.n; }

ddp_status ddp_comm_inject_create_fault(int rank, int size) {
    if (size < 2 || !ddp_comm_inject_due(rank, "comm_create")) return DDP_OK;
    return DDP_FAIL(DDP_ERR_NOMEM,
                    "creating a communicator: injected local failure on rank %d at creation %ld "
                    "(DDP_INJECT_FAULT)",
                    rank, fault.n);
}
