/*
 * The local comm: a world of one rank. Every collective is the identity (or a copy), so
 * the trainer runs unchanged without MPI traffic; tests use it as the single-process
 * reference that N ranks must match.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

struct ddp_comm_req {
    ddp_comm_req_head head; /* never made: every call completes at once */
};

static ddp_status local_allreduce(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op) {
    return DDP_OK; /* sum, max, min and average over one rank are the identity */
}

static ddp_status local_iallreduce(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op,
                                   ddp_comm_req **req) {
    *req = NULL; /* complete at once; wait and test accept NULL */
    return DDP_OK;
}

static ddp_status local_test(ddp_comm *c, ddp_comm_req *req, int *done) {
    *done = 1;
    return DDP_OK;
}

static ddp_status local_wait(ddp_comm *c, ddp_comm_req *req) { return DDP_OK; }

static ddp_status local_broadcast(ddp_comm *c, void *buf, size_t count, ddp_dtype t, int root) {
    return DDP_OK;
}

static ddp_status copy(ddp_comm *c, const void *send, void *recv, size_t bytes) {
    if (send == recv) return DDP_OK;
    if (c->backend) {
        DDP_CHECK(ddp_backend_copy(c->backend, recv, send, bytes, DDP_COPY_D2D));
        return DDP_OK;
    }
    memmove(recv, send, bytes);
    return DDP_OK;
}

static ddp_status local_allgather(ddp_comm *c, const void *send, void *recv, size_t count,
                                  ddp_dtype t) {
    DDP_CHECK(copy(c, send, recv, count * ddp_dtype_size(t)));
    return DDP_OK;
}

static ddp_status local_reduce_scatter(ddp_comm *c, const void *send, void *recv, size_t count,
                                       ddp_dtype t, ddp_redop op) {
    DDP_CHECK(copy(c, send, recv, count * ddp_dtype_size(t)));
    return DDP_OK;
}

static ddp_status local_reduce_scatterv(ddp_comm *c, const void *send, void *recv,
                                        const size_t *counts, ddp_dtype t, ddp_redop op) {
    DDP_CHECK(copy(c, send, recv, counts[0] * ddp_dtype_size(t)));
    return DDP_OK;
}

static ddp_status local_allgatherv(ddp_comm *c, void *buf, const size_t *counts, ddp_dtype t) {
    return DDP_OK; /* the only block is already in place */
}

static ddp_status local_barrier(ddp_comm *c) { return DDP_OK; }

static void local_abort(ddp_comm *c, int code) {
    /* Even a world of one may sit inside an MPI job (tests run it on every rank as a
     * reference); ending the whole job is what abort promises. */
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    _Exit(code ? code : 1);
}

static void local_destroy(ddp_comm *c) { free(c); }

static const ddp_comm_ops local_ops = {
    .name = "local",
    .kind = DDP_COMM_LOCAL,
    .caps = DDP_COMM_CAP_THREADS, /* every collective is a local copy */
    .destroy = local_destroy,
    .allreduce = local_allreduce,
    .iallreduce = local_iallreduce,
    .test = local_test,
    .wait = local_wait,
    .broadcast = local_broadcast,
    .allgather = local_allgather,
    .reduce_scatter = local_reduce_scatter,
    .reduce_scatterv = local_reduce_scatterv,
    .allgatherv = local_allgatherv,
    .barrier = local_barrier,
    .abort = local_abort,
};

ddp_status ddp_comm_local_create(ddp_backend *b, ddp_comm **out) {
    ddp_comm *c = calloc(1, sizeof *c);
    if (!c) return DDP_FAIL(DDP_ERR_NOMEM, "local comm: out of memory");
    c->ops = &local_ops;
    c->backend = b;
    c->rank = 0;
    c->size = 1;
    c->local_rank = 0;
    c->local_size = 1;
    *out = c;
    return DDP_OK;
}
