/*
 * Public comm wrappers: argument checks, then dispatch through the ops table. This thin
 * layer is also the seam where tests inject faults into the real communicator.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"
#include "ddp/watchdog.h"

/* Fault injection for tests: DDP_INJECT_FAULT="OP:RANK:N" makes the N-th call (1-based)
 * of operation OP (allreduce, iallreduce, broadcast, allgather, reduce_scatter, barrier) on
 * rank RANK
 * fail with DDP_ERR_COMM, as a broken link would; OP comm_create makes the N-th
 * communicator creation fail locally, as an allocation would; the NCCL comm stages two of
 * its own (comm_nccl.c): nccl_hang (the N-th collective never completes, as with a
 * stopped peer) and nccl_async (the N-th check for asynchronous errors reports one, as
 * with a dead peer). A labelled communicator's
 * all-reduces are called TAG_allreduce (ddp_comm_set_label): "bn_allreduce" for batch
 * norm's. Read once, at the first call. */
static struct {
    int parsed;
    char op[32];
    int rank;
    long n;
    long calls;
} fault;

/* DDP_INJECT_DELAY="OP:RANK:MS" makes rank RANK sleep MS milliseconds before every call
 * of OP: a slow but live rank, which the watchdog must tolerate. Read once. */
static struct {
    int parsed;
    char op[32];
    int rank;
    long ms;
} delay;

static void maybe_delay(const ddp_comm *c, const char *op) {
    if (!delay.parsed) {
        delay.parsed = 1;
        delay.rank = -1;
        const char *env = getenv("DDP_INJECT_DELAY");
        if (env && sscanf(env, "%31[a-z_]:%d:%ld", delay.op, &delay.rank, &delay.ms) != 3)
            delay.rank = -1;
    }
    if (delay.rank != c->rank || delay.ms <= 0 || strcmp(op, delay.op) != 0) return;
    struct timespec ts = {.tv_sec = delay.ms / 1000, .tv_nsec = (delay.ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int ddp_comm_inject_due(int rank, const char *op) {
    if (!fault.parsed) {
        fault.parsed = 1;
        fault.rank = -1;
        const char *env = getenv("DDP_INJECT_FAULT");
        if (env && sscanf(env, "%31[a-z_]:%d:%ld", fault.op, &fault.rank, &fault.n) != 3)
            fault.rank = -1;
    }
    if (fault.rank != rank || strcmp(op, fault.op) != 0) return 0;
    return ++fault.calls == fault.n;
}

/* 1 when DDP_INJECT_FAULT names this call: the n-th call of op on this rank (a broken
 * link needs a second rank: never in a world of one). */
static int fault_due(int rank, int size, const char *op) {
    return size > 1 && ddp_comm_inject_due(rank, op);
}

static ddp_status maybe_inject(const ddp_comm *c, const char *op) {
    maybe_delay(c, op);
    if (!fault_due(c->rank, c->size, op)) return DDP_OK;
    return DDP_FAIL(DDP_ERR_COMM, "%s: injected fault on rank %d at call %ld (DDP_INJECT_FAULT)",
                    op, c->rank, fault.n);
}

ddp_status ddp_comm_inject_create_fault(int rank, int size) {
    if (!fault_due(rank, size, "comm_create")) return DDP_OK;
    return DDP_FAIL(DDP_ERR_NOMEM,
                    "creating a communicator: injected local failure on rank %d at creation %ld "
                    "(DDP_INJECT_FAULT)",
                    rank, fault.n);
}

size_t ddp_dtype_size(ddp_dtype t) {
    switch (t) {
    case DDP_F32: return 4;
    case DDP_BF16: return 2;
    case DDP_F64: return 8;
    case DDP_I32: return 4;
    case DDP_I64: return 8;
    case DDP_U8: return 1;
    case DDP_U32: return 4;
    case DDP_U64: return 8;
    }
    return 0;
}

const char *ddp_comm_name(const ddp_comm *c) { return c->ops->name; }
ddp_comm_kind ddp_comm_kind_of(const ddp_comm *c) { return c->ops->kind; }
void ddp_comm_set_label(ddp_comm *c, const char *tag, const char *label) {
    snprintf(c->allreduce_tag, sizeof c->allreduce_tag, "%s_allreduce", tag);
    snprintf(c->allreduce_what, sizeof c->allreduce_what, "allreduce of the %s", label);
}
unsigned ddp_comm_caps(const ddp_comm *c) {
    return c->ops->caps | (c->ops->dynamic_caps ? c->ops->dynamic_caps(c) : 0u);
}
int ddp_comm_rank(const ddp_comm *c) { return c->rank; }
int ddp_comm_size(const ddp_comm *c) { return c->size; }
int ddp_comm_local_rank(const ddp_comm *c) { return c->local_rank; }
int ddp_comm_local_size(const ddp_comm *c) { return c->local_size; }
int ddp_comm_sleeping_wait(const ddp_comm *c) { return c->sleeping_wait; }

void ddp_comm_free(ddp_comm *c) {
    if (!c) return;
    /* Collective (windows, communicators): watched like any other collective. */
    int wd = ddp_watchdog_arm("freeing a communicator");
    c->ops->destroy(c);
    ddp_watchdog_disarm(wd);
}

static ddp_status check_type(ddp_dtype t) {
    if (ddp_dtype_size(t) == 0) return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown dtype %d", (int)t);
    return DDP_OK;
}

ddp_status ddp_comm_allreduce(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, c->allreduce_tag[0] ? c->allreduce_tag : "allreduce"));
    if (count == 0) return DDP_OK;
    /* Every blocking call is watched: a peer that died or hangs would block it forever. */
    int wd = ddp_watchdog_arm(c->allreduce_what[0] ? c->allreduce_what : "allreduce");
    ddp_status s = c->ops->allreduce(c, buf, count, t, op);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_iallreduce(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op,
                               ddp_comm_req **req) {
    *req = NULL;
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "iallreduce"));
    DDP_CHECK(c->ops->iallreduce(c, buf, count, t, op, req));
    return DDP_OK;
}

ddp_status ddp_comm_test(ddp_comm *c, ddp_comm_req *req, int *done) {
    *done = 1;
    if (!req) return DDP_OK;
    DDP_CHECK(c->ops->test(c, req, done));
    return DDP_OK;
}

ddp_status ddp_comm_wait(ddp_comm *c, ddp_comm_req *req) {
    if (!req) return DDP_OK;
    int wd = ddp_watchdog_arm("wait (non-blocking collective)");
    ddp_status s = c->ops->wait(c, req);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_broadcast(ddp_comm *c, void *buf, size_t count, ddp_dtype t, int root) {
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "broadcast"));
    if (root < 0 || root >= c->size)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "broadcast: root %d outside [0, %d)", root, c->size);
    if (count == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("broadcast");
    ddp_status s = c->ops->broadcast(c, buf, count, t, root);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_allgather(ddp_comm *c, const void *send, void *recv, size_t count,
                              ddp_dtype t) {
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "allgather"));
    if (count == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("allgather");
    ddp_status s = c->ops->allgather(c, send, recv, count, t);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_reduce_scatter(ddp_comm *c, const void *send, void *recv, size_t count,
                                   ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    if (count == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("reduce_scatter");
    ddp_status s = c->ops->reduce_scatter(c, send, recv, count, t, op);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

/* The total of counts, refusing a sum that wraps. */
static ddp_status total_count(const ddp_comm *c, const size_t *counts, const char *what,
                              size_t *total) {
    *total = 0;
    for (int r = 0; r < c->size; r++) {
        if (counts[r] > SIZE_MAX - *total)
            return DDP_FAIL(DDP_ERR_INVALID_ARG, "%s: the blocks' sizes overflow", what);
        *total += counts[r];
    }
    return DDP_OK;
}

ddp_status ddp_comm_reduce_scatterv(ddp_comm *c, const void *send, void *recv, const size_t *counts,
                                    ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "reduce_scatter"));
    size_t total;
    DDP_CHECK(total_count(c, counts, "reduce-scatter", &total));
    if (total == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("reduce-scatter of the gradients");
    ddp_status s = c->ops->reduce_scatterv(c, send, recv, counts, t, op);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_allgatherv(ddp_comm *c, void *buf, const size_t *counts, ddp_dtype t) {
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "allgather"));
    size_t total;
    DDP_CHECK(total_count(c, counts, "all-gather", &total));
    if (total == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("all-gather of the parameters");
    ddp_status s = c->ops->allgatherv(c, buf, counts, t);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_ireduce_scatterv(ddp_comm *c, const void *send, void *recv,
                                     const size_t *counts, ddp_dtype t, ddp_redop op,
                                     ddp_comm_req **req) {
    *req = NULL;
    if (!c->ops->ireduce_scatterv) return ddp_comm_reduce_scatterv(c, send, recv, counts, t, op);
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "reduce_scatter"));
    size_t total;
    DDP_CHECK(total_count(c, counts, "reduce-scatter", &total));
    if (total == 0) return DDP_OK;
    DDP_CHECK(c->ops->ireduce_scatterv(c, send, recv, counts, t, op, req));
    return DDP_OK;
}

ddp_status ddp_comm_iallgatherv(ddp_comm *c, void *buf, const size_t *counts, ddp_dtype t,
                                ddp_comm_req **req) {
    *req = NULL;
    if (!c->ops->iallgatherv) return ddp_comm_allgatherv(c, buf, counts, t);
    DDP_CHECK(check_type(t));
    DDP_CHECK(maybe_inject(c, "allgather"));
    size_t total;
    DDP_CHECK(total_count(c, counts, "all-gather", &total));
    if (total == 0) return DDP_OK;
    DDP_CHECK(c->ops->iallgatherv(c, buf, counts, t, req));
    return DDP_OK;
}

ddp_status ddp_comm_barrier(ddp_comm *c) {
    DDP_CHECK(maybe_inject(c, "barrier"));
    int wd = ddp_watchdog_arm("barrier");
    ddp_status s = c->ops->barrier(c);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

void ddp_comm_abort(ddp_comm *c, int code) { c->ops->abort(c, code); }

ddp_status ddp_comm_alloc_shared(ddp_comm *c, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (!c->ops->alloc_shared || bytes == 0) return DDP_OK;
    int wd = ddp_watchdog_arm("allocating shared memory");
    ddp_status s = c->ops->alloc_shared(c, bytes, ptr);
    ddp_watchdog_disarm(wd);
    DDP_CHECK(s);
    return DDP_OK;
}

ddp_status ddp_comm_agree(ddp_comm *c, ddp_status local, int *failed_rank) {
    /* After a failed collective the ranks may be one call apart: agreeing could pair this
     * all-reduce with another call and wait forever. The caller must abort the job. */
    if (local == DDP_ERR_COMM) {
        *failed_rank = c->rank;
        return local;
    }
    /* MIN over (rank if failed, else size): the lowest failing rank, or size if none. */
    int32_t v = local == DDP_OK ? c->size : c->rank;
    DDP_CHECK(ddp_comm_allreduce(c, &v, 1, DDP_I32, DDP_MIN));
    *failed_rank = v == c->size ? -1 : v;
    return DDP_OK;
}

ddp_status ddp_comm_compare(ddp_comm *c, uint32_t value, int *first_differing, int *n_differing,
                            int *mine_differs) {
    uint32_t *all = calloc((size_t)c->size, sizeof *all);
    /* Agreed before the allgather: a rank that cannot take part must not leave the others
     * waiting in it. */
    int failed = -1;
    ddp_status s = all ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "comparing across ranks: out of memory");
    ddp_status agreed = ddp_comm_agree(c, s, &failed);
    if (s == DDP_OK && agreed == DDP_OK && failed >= 0)
        s = DDP_FAIL(DDP_ERR_REMOTE, "rank %d could not take part in a comparison", failed);
    if (s == DDP_OK) s = agreed;
    if (s == DDP_OK) s = ddp_comm_allgather(c, &value, all, 1, DDP_U32);
    if (s != DDP_OK) {
        free(all);
        DDP_CHECK(s);
    }
    *first_differing = -1;
    *n_differing = 0;
    *mine_differs = all[c->rank] != all[0];
    for (int r = 1; r < c->size; r++)
        if (all[r] != all[0]) {
            if (*first_differing < 0) *first_differing = r;
            (*n_differing)++;
        }
    free(all);
    return DDP_OK;
}
