/*
 * The NCCL comm: collectives on device buffers of a CUDA backend, one rank per GPU.
 *
 * Bootstrap: rank 0 makes the unique id, MPI broadcasts it, every rank joins with
 * ncclCommInitRank on its backend's GPU. Collectives run on a high-priority stream of
 * their own, ordered against the backend's compute stream by events, never by host
 * waits: before each collective the comm stream waits for what compute has queued so
 * far, and compute waits for the collective before it touches the buffer again.
 * Blocking calls therefore return once the work is queued; the host waits only in the
 * barrier, at shutdown, and in backend calls that return data (D2H copies, sumsq).
 *
 * Where the host does wait, it polls ncclCommGetAsyncError, so that a dead peer or a
 * network failure aborts the communicator and returns DDP_ERR_COMM instead of hanging.
 *
 * Small host-memory collectives (ddp_comm_agree, configuration checks) go through MPI
 * on a private duplicate of MPI_COMM_WORLD: NCCL itself only reads device memory.
 */
#include <mpi.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda_backend.h"
#include "comm/comm_impl.h"
#include "ddp/watchdog.h"

typedef struct {
    struct ddp_comm base;
    ncclComm_t nccl;            /* NULL once aborted */
    MPI_Comm host_comm;         /* host-memory collectives and the bootstrap */
    int device;                 /* the backend's GPU */
    cudaStream_t compute;       /* the backend's stream: producer and consumer of buffers */
    cudaStream_t stream;        /* collectives run here */
    cudaEvent_t ready;          /* recorded on compute: the comm stream waits for it */
    cudaEvent_t done;           /* recorded on the comm stream: compute waits for it */
    int32_t *barrier_buf;       /* (1) device int reduced by the barrier */
    volatile int *hang_release; /* DDP_INJECT_FAULT=nccl_hang: set to end the stand-in */
} nccl_comm;

struct ddp_comm_req {
    ddp_comm_req_head head; /* first: see comm_impl.h */
    cudaEvent_t event;      /* recorded on the comm stream after the collective */
};

/* ---- errors --------------------------------------------------------------------------- */

static ddp_status nccl_fail(nccl_comm *c, ncclResult_t r, const char *call, const char *file,
                            int line) {
    const char *hint;
    switch (r) {
    case ncclSystemError:
    case ncclRemoteError:
        hint = "another rank or the network failed: check the other ranks' messages, and "
               "rerun with NCCL_DEBUG=WARN for NCCL's own account";
        break;
    case ncclInvalidUsage:
    case ncclInvalidArgument:
        hint = "please report this as a bug in ddp (rerun with NCCL_DEBUG=WARN for details)";
        break;
    case ncclUnhandledCudaError:
        hint = "a CUDA call inside NCCL failed: check the GPU with nvidia-smi";
        break;
    default: hint = "rerun with NCCL_DEBUG=WARN for details"; break;
    }
    const char *detail = ncclGetLastError(c ? c->nccl : NULL);
    return ddp_error_set(DDP_ERR_COMM, file, line, "%s failed on rank %d: %s (%s); %s", call,
                         c ? c->base.rank : -1, ncclGetErrorString(r),
                         detail && detail[0] ? detail : "no detail", hint);
}

#define NCCL_TRY(c, call)                                                                          \
    do {                                                                                           \
        ncclResult_t nccl_r_ = (call);                                                             \
        if (nccl_r_ != ncclSuccess) return nccl_fail((c), nccl_r_, #call, __FILE__, __LINE__);     \
    } while (0)

static ddp_status mpi_fail(int rc, const char *call, const char *file, int line) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return ddp_error_set(DDP_ERR_COMM, file, line, "%s failed: %s", call, msg);
}

#define MPI_TRY(call)                                                                              \
    do {                                                                                           \
        int mpi_rc_ = (call);                                                                      \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(mpi_rc_, #call, __FILE__, __LINE__);           \
    } while (0)

static ddp_status check_alive(nccl_comm *c) {
    if (!c->nccl)
        return DDP_FAIL(DDP_ERR_COMM,
                        "the NCCL communicator of rank %d was aborted after an "
                        "earlier error (reported above); the job must stop",
                        c->base.rank);
    return DDP_OK;
}

/* Aborts the communicator: its kernels stop, so the streams waiting for them drain. */
static void abort_nccl(nccl_comm *c) {
    if (c->nccl) ncclCommAbort(c->nccl);
    c->nccl = NULL;
    if (c->hang_release) *c->hang_release = 1;
}

/* Turns an asynchronous NCCL error into DDP_ERR_COMM and aborts the communicator, so
 * that nothing else is queued behind a collective that will never finish. */
static ddp_status check_async(nccl_comm *c) {
    DDP_CHECK(check_alive(c));
    ncclResult_t async = ncclSuccess;
    NCCL_TRY(c, ncclCommGetAsyncError(c->nccl, &async));
    if (ddp_comm_inject_due(c->base.rank, "nccl_async")) async = ncclRemoteError;
    if (async == ncclSuccess || async == ncclInProgress) return DDP_OK;
    const char *detail = ncclGetLastError(c->nccl);
    ddp_status s = DDP_FAIL(DDP_ERR_COMM,
                            "NCCL failed asynchronously on rank %d: %s (%s); the communicator "
                            "was aborted. Another rank probably failed (see its message) or "
                            "the network went down; rerun with NCCL_DEBUG=WARN for details",
                            c->base.rank, ncclGetErrorString(async),
                            detail && detail[0] ? detail : "no detail");
    abort_nccl(c);
    return s;
}

/* After the watchdog fired (the wait it armed outlived --timeout): abort, so that this
 * rank's GPU is freed and the wait ends with the reason. */
static ddp_status check_timeout(nccl_comm *c) {
    if (!ddp_watchdog_fired()) return DDP_OK;
    abort_nccl(c);
    return DDP_FAIL(DDP_ERR_TIMEOUT,
                    "rank %d: NCCL collectives did not complete within the watchdog's timeout "
                    "(another rank died or stopped responding); the NCCL communicator was "
                    "aborted",
                    c->base.rank);
}

/* The backend's wait check (ddp_backend_add_wait_check): while the host waits for compute
 * work that may be queued behind this communicator's collectives. */
static ddp_status wait_check(void *ctx) {
    nccl_comm *c = ctx;
    if (!c->nccl) return DDP_OK; /* aborted: nothing of it is left to wait for */
    DDP_CHECK(check_async(c));
    DDP_CHECK(check_timeout(c));
    return DDP_OK;
}

/* Waits on the host until ev has completed, watching for asynchronous NCCL errors. */
static ddp_status host_wait(nccl_comm *c, cudaEvent_t ev) {
    const struct timespec pause = {0, 20 * 1000}; /* 20 us: cheap, and quick to notice */
    for (;;) {
        cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) return DDP_OK;
        if (e != cudaErrorNotReady) return ddp_cuda_error(e, "cudaEventQuery", __FILE__, __LINE__);
        (void)cudaGetLastError(); /* "not ready" is an answer, not an error to keep */
        DDP_CHECK(check_async(c));
        DDP_CHECK(check_timeout(c));
        nanosleep(&pause, NULL);
    }
}

/* ---- types ---------------------------------------------------------------------------- */

static ddp_status nccl_type(ddp_dtype t, ncclDataType_t *out) {
    switch (t) {
    case DDP_F32: *out = ncclFloat32; return DDP_OK;
    case DDP_BF16: *out = ncclBfloat16; return DDP_OK;
    case DDP_F64: *out = ncclFloat64; return DDP_OK;
    case DDP_I32: *out = ncclInt32; return DDP_OK;
    case DDP_I64: *out = ncclInt64; return DDP_OK;
    case DDP_U8: *out = ncclUint8; return DDP_OK;
    case DDP_U32: *out = ncclUint32; return DDP_OK;
    case DDP_U64: *out = ncclUint64; return DDP_OK;
    case DDP_DTYPE_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "NCCL comm: unknown dtype %d", (int)t);
}

static ddp_status nccl_op(ddp_redop op, ncclRedOp_t *out) {
    switch (op) {
    case DDP_SUM: *out = ncclSum; return DDP_OK;
    case DDP_MAX: *out = ncclMax; return DDP_OK;
    case DDP_MIN: *out = ncclMin; return DDP_OK;
    case DDP_AVG: *out = ncclAvg; return DDP_OK;
    case DDP_REDOP_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "NCCL comm: unknown reduction %d", (int)op);
}

/* ---- host-memory collectives through MPI ---------------------------------------------- */

/* Nonzero when p is host memory (pageable or pinned), which NCCL cannot read. */
static int is_host_pointer(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 1;
    }
    return a.type == cudaMemoryTypeHost || a.type == cudaMemoryTypeUnregistered;
}

static ddp_status host_type(ddp_dtype t, MPI_Datatype *out) {
    switch (t) {
    case DDP_F32: *out = MPI_FLOAT; return DDP_OK;
    case DDP_F64: *out = MPI_DOUBLE; return DDP_OK;
    case DDP_I32: *out = MPI_INT32_T; return DDP_OK;
    case DDP_I64: *out = MPI_INT64_T; return DDP_OK;
    case DDP_U8: *out = MPI_UINT8_T; return DDP_OK;
    case DDP_U32: *out = MPI_UINT32_T; return DDP_OK;
    case DDP_U64: *out = MPI_UINT64_T; return DDP_OK;
    case DDP_BF16:
    case DDP_DTYPE_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                    "NCCL comm: a host buffer of dtype %d cannot be reduced; host buffers "
                    "support f32, f64 and integer types (pass a device buffer for bf16)",
                    (int)t);
}

static ddp_status host_count(size_t count, int *out) {
    if (count > (size_t)0x7fffffff)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "NCCL comm: host buffer of %zu elements is too "
                        "large for MPI; pass a device buffer",
                        count);
    *out = (int)count;
    return DDP_OK;
}

static ddp_status host_allreduce(nccl_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op) {
    MPI_Datatype mt = MPI_BYTE;
    int n = 0;
    DDP_CHECK(host_type(t, &mt));
    DDP_CHECK(host_count(count, &n));
    MPI_Op mo = op == DDP_SUM   ? MPI_SUM
                : op == DDP_MAX ? MPI_MAX
                : op == DDP_MIN ? MPI_MIN
                                : MPI_OP_NULL;
    if (mo == MPI_OP_NULL)
        return DDP_FAIL(DDP_ERR_UNSUPPORTED, "NCCL comm: host buffers support sum, max and min; "
                                             "average a device buffer instead");
    /* COLLECTIVE: every rank reaches this with its host buffer. */
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf, n, mt, mo, c->host_comm));
    return DDP_OK;
}

static ddp_status host_broadcast(nccl_comm *c, void *buf, size_t count, ddp_dtype t, int root) {
    int n = 0;
    DDP_CHECK(host_count(count * ddp_dtype_size(t), &n));
    /* COLLECTIVE: every rank reaches this with its host buffer. */
    MPI_TRY(MPI_Bcast(buf, n, MPI_BYTE, root, c->host_comm));
    return DDP_OK;
}

static ddp_status need_device(const void *p, const char *what) {
    if (is_host_pointer(p))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "NCCL comm: %s got a host buffer, but NCCL reads only device memory; "
                        "allocate it with ddp_backend_alloc, or use --comm mpi",
                        what);
    return DDP_OK;
}

/* ---- stream ordering ------------------------------------------------------------------ */

/* The comm stream waits for everything queued on compute so far. */
static ddp_status begin(nccl_comm *c) {
    DDP_CHECK(check_alive(c));
    /* Any thread may call the comm: make the backend's GPU current in this one. */
    DDP_CUDA_CHECK(cudaSetDevice(c->device));
    DDP_CUDA_CHECK(cudaEventRecord(c->ready, c->compute));
    DDP_CUDA_CHECK(cudaStreamWaitEvent(c->stream, c->ready, 0));
    /* Fault injection: this collective never completes, as if a peer had stopped. */
    if (ddp_comm_inject_due(c->base.rank, "nccl_hang"))
        DDP_CHECK(ddp_cuda_inject_hang(c->stream, &c->hang_release));
    return DDP_OK;
}

/* Compute waits for the collective just queued on the comm stream. */
static ddp_status finish(nccl_comm *c) {
    DDP_CUDA_CHECK(cudaEventRecord(c->done, c->stream));
    DDP_CUDA_CHECK(cudaStreamWaitEvent(c->compute, c->done, 0));
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

/* ---- collectives ---------------------------------------------------------------------- */

static ddp_status nccl_allreduce(ddp_comm *base, void *buf, size_t count, ddp_dtype t,
                                 ddp_redop op) {
    nccl_comm *c = (nccl_comm *)base;
    if (is_host_pointer(buf)) {
        DDP_CHECK(host_allreduce(c, buf, count, t, op));
        return DDP_OK;
    }
    ncclDataType_t nt = ncclFloat32;
    ncclRedOp_t no = ncclSum;
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(nccl_op(op, &no));
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank queues the same all-reduce in the same order. */
    NCCL_TRY(c, ncclAllReduce(buf, buf, count, nt, no, c->nccl, c->stream));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

/* A request that completes when everything queued on the comm stream so far has. */
static ddp_status make_request(nccl_comm *c, ddp_comm_req **out) {
    ddp_comm_req *r = calloc(1, sizeof *r);
    if (!r) return DDP_FAIL(DDP_ERR_NOMEM, "NCCL comm: out of host memory for a request");
    cudaError_t e = cudaEventCreateWithFlags(&r->event, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(r->event, c->stream);
    if (e != cudaSuccess) {
        if (r->event) cudaEventDestroy(r->event);
        free(r);
        return ddp_cuda_error(e, "creating a request's event", __FILE__, __LINE__);
    }
    *out = r;
    return DDP_OK;
}

static ddp_status nccl_iallreduce(ddp_comm *base, void *buf, size_t count, ddp_dtype t,
                                  ddp_redop op, ddp_comm_req **out) {
    nccl_comm *c = (nccl_comm *)base;
    *out = NULL;
    if (count == 0) return DDP_OK; /* nothing to reduce: a NULL request is complete */
    ncclDataType_t nt = ncclFloat32;
    ncclRedOp_t no = ncclSum;
    DDP_CHECK(need_device(buf, "a non-blocking all-reduce"));
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(nccl_op(op, &no));
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank queues the same all-reduce in the same order. */
    NCCL_TRY(c, ncclAllReduce(buf, buf, count, nt, no, c->nccl, c->stream));
    DDP_CHECK(make_request(c, out));
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

static ddp_status nccl_test(ddp_comm *base, ddp_comm_req *r, int *done) {
    nccl_comm *c = (nccl_comm *)base;
    *done = 0;
    cudaError_t e = cudaEventQuery(r->event);
    if (e == cudaSuccess) {
        *done = 1;
        return DDP_OK;
    }
    if (e != cudaErrorNotReady) return ddp_cuda_error(e, "cudaEventQuery", __FILE__, __LINE__);
    (void)cudaGetLastError();
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

/* Orders compute after the collective and frees the request; the host does not wait. */
static ddp_status nccl_wait(ddp_comm *base, ddp_comm_req *r) {
    nccl_comm *c = (nccl_comm *)base;
    ddp_status s = DDP_OK;
    cudaError_t e = cudaStreamWaitEvent(c->compute, r->event, 0);
    if (e != cudaSuccess) s = ddp_cuda_error(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
    cudaEventDestroy(r->event);
    free(r);
    DDP_CHECK(s);
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

static ddp_status nccl_broadcast(ddp_comm *base, void *buf, size_t count, ddp_dtype t, int root) {
    nccl_comm *c = (nccl_comm *)base;
    if (is_host_pointer(buf)) {
        DDP_CHECK(host_broadcast(c, buf, count, t, root));
        return DDP_OK;
    }
    ncclDataType_t nt = ncclFloat32;
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank queues the same broadcast in the same order. */
    NCCL_TRY(c, ncclBroadcast(buf, buf, count, nt, root, c->nccl, c->stream));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

static ddp_status nccl_allgather(ddp_comm *base, const void *send, void *recv, size_t count,
                                 ddp_dtype t) {
    nccl_comm *c = (nccl_comm *)base;
    ncclDataType_t nt = ncclFloat32;
    DDP_CHECK(need_device(send, "all-gather"));
    DDP_CHECK(need_device(recv, "all-gather"));
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank queues the same all-gather in the same order. */
    NCCL_TRY(c, ncclAllGather(send, recv, count, nt, c->nccl, c->stream));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

static ddp_status nccl_reduce_scatter(ddp_comm *base, const void *send, void *recv, size_t count,
                                      ddp_dtype t, ddp_redop op) {
    nccl_comm *c = (nccl_comm *)base;
    ncclDataType_t nt = ncclFloat32;
    ncclRedOp_t no = ncclSum;
    DDP_CHECK(need_device(send, "reduce-scatter"));
    DDP_CHECK(need_device(recv, "reduce-scatter"));
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(nccl_op(op, &no));
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank queues the same reduce-scatter in the same order. */
    NCCL_TRY(c, ncclReduceScatter(send, recv, count, nt, no, c->nccl, c->stream));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

/* The common size of all blocks, or 0 when they differ (or are all empty). */
static size_t equal_blocks(const nccl_comm *c, const size_t *counts) {
    for (int r = 1; r < c->base.size; r++)
        if (counts[r] != counts[0]) return 0;
    return counts[0];
}

/* Queues the reduce-scatter of blocks of any size on the comm stream. Equal blocks are one
 * ncclReduceScatter; NCCL takes only equal ones, so otherwise each block is its own
 * reduce to the block's rank, grouped so that NCCL runs them as one operation. */
static ddp_status queue_reduce_scatterv(nccl_comm *c, const void *send, void *recv,
                                        const size_t *counts, ddp_dtype t, ddp_redop op) {
    ncclDataType_t nt = ncclFloat32;
    ncclRedOp_t no = ncclSum;
    DDP_CHECK(need_device(send, "reduce-scatter"));
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(nccl_op(op, &no));
    DDP_CHECK(begin(c));
    size_t esize = ddp_dtype_size(t), at = 0, each = equal_blocks(c, counts);
    if (each > 0) {
        /* COLLECTIVE: every rank queues the same reduce-scatter in the same order. */
        NCCL_TRY(c, ncclReduceScatter(send, recv, each, nt, no, c->nccl, c->stream));
        return DDP_OK;
    }
    /* COLLECTIVE: every rank queues the same reduces in the same order. */
    NCCL_TRY(c, ncclGroupStart());
    for (int r = 0; r < c->base.size; r++) {
        if (counts[r] > 0) {
            ncclResult_t nr = ncclReduce((const char *)send + at * esize, recv, counts[r], nt, no,
                                         r, c->nccl, c->stream);
            if (nr != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, nr, "ncclReduce", __FILE__, __LINE__);
            }
        }
        at += counts[r];
    }
    NCCL_TRY(c, ncclGroupEnd());
    return DDP_OK;
}

/* Queues the in-place all-gather of blocks of any size: one ncclAllGather for equal
 * blocks, else a grouped broadcast from each block's rank. */
static ddp_status queue_allgatherv(nccl_comm *c, void *buf, const size_t *counts, ddp_dtype t) {
    ncclDataType_t nt = ncclFloat32;
    DDP_CHECK(need_device(buf, "all-gather"));
    DDP_CHECK(nccl_type(t, &nt));
    DDP_CHECK(begin(c));
    size_t esize = ddp_dtype_size(t), at = 0, each = equal_blocks(c, counts);
    if (each > 0) {
        const char *mine = (const char *)buf + (size_t)c->base.rank * each * esize;
        /* COLLECTIVE: every rank queues the same all-gather in the same order. */
        NCCL_TRY(c, ncclAllGather(mine, buf, each, nt, c->nccl, c->stream));
        return DDP_OK;
    }
    /* COLLECTIVE: every rank queues the same broadcasts in the same order. */
    NCCL_TRY(c, ncclGroupStart());
    for (int r = 0; r < c->base.size; r++) {
        if (counts[r] > 0) {
            char *p = (char *)buf + at * esize;
            ncclResult_t nr = ncclBroadcast(p, p, counts[r], nt, r, c->nccl, c->stream);
            if (nr != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, nr, "ncclBroadcast", __FILE__, __LINE__);
            }
        }
        at += counts[r];
    }
    NCCL_TRY(c, ncclGroupEnd());
    return DDP_OK;
}

static ddp_status nccl_reduce_scatterv(ddp_comm *base, const void *send, void *recv,
                                       const size_t *counts, ddp_dtype t, ddp_redop op) {
    nccl_comm *c = (nccl_comm *)base;
    DDP_CHECK(queue_reduce_scatterv(c, send, recv, counts, t, op));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

static ddp_status nccl_allgatherv(ddp_comm *base, void *buf, const size_t *counts, ddp_dtype t) {
    nccl_comm *c = (nccl_comm *)base;
    DDP_CHECK(queue_allgatherv(c, buf, counts, t));
    DDP_CHECK(finish(c));
    return DDP_OK;
}

static ddp_status nccl_ireduce_scatterv(ddp_comm *base, const void *send, void *recv,
                                        const size_t *counts, ddp_dtype t, ddp_redop op,
                                        ddp_comm_req **out) {
    nccl_comm *c = (nccl_comm *)base;
    *out = NULL;
    DDP_CHECK(queue_reduce_scatterv(c, send, recv, counts, t, op));
    DDP_CHECK(make_request(c, out));
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

static ddp_status nccl_iallgatherv(ddp_comm *base, void *buf, const size_t *counts, ddp_dtype t,
                                   ddp_comm_req **out) {
    nccl_comm *c = (nccl_comm *)base;
    *out = NULL;
    DDP_CHECK(queue_allgatherv(c, buf, counts, t));
    DDP_CHECK(make_request(c, out));
    DDP_CHECK(check_async(c));
    return DDP_OK;
}

/* A one-element all-reduce that the host waits for: on return every rank has reached
 * the barrier and this rank's queued GPU work is done. */
static ddp_status nccl_barrier(ddp_comm *base) {
    nccl_comm *c = (nccl_comm *)base;
    DDP_CHECK(begin(c));
    /* COLLECTIVE: every rank reaches the barrier. */
    NCCL_TRY(c, ncclAllReduce(c->barrier_buf, c->barrier_buf, 1, ncclInt32, ncclSum, c->nccl,
                              c->stream));
    DDP_CUDA_CHECK(cudaEventRecord(c->done, c->stream));
    DDP_CHECK(host_wait(c, c->done));
    return DDP_OK;
}

static void nccl_abort(ddp_comm *base, int code) {
    nccl_comm *c = (nccl_comm *)base;
    /* Aborting NCCL first frees this rank's GPU from collectives that will never finish;
     * MPI_Abort then ends every rank of the job. */
    abort_nccl(c);
    MPI_Abort(MPI_COMM_WORLD, code);
}

/* ---- lifetime ------------------------------------------------------------------------- */

static void nccl_destroy(ddp_comm *base) {
    nccl_comm *c = (nccl_comm *)base;
    if (!c) return;
    if (c->base.backend) ddp_backend_remove_wait_check(c->base.backend, c);
    if (cudaSetDevice(c->device) != cudaSuccess) (void)cudaGetLastError();
    if (c->nccl) {
        /* Let queued collectives finish, watching for a failed peer rather than hanging. */
        ddp_status s = DDP_OK;
        if (cudaEventRecord(c->done, c->stream) == cudaSuccess)
            s = host_wait(c, c->done);
        else
            (void)cudaGetLastError();
        if (s != DDP_OK) ddp_log_current_error("NCCL comm shutdown");
        if (c->nccl) {
            /* COLLECTIVE: ncclCommDestroy flushes the communicator on every rank. */
            ncclResult_t r = ncclCommDestroy(c->nccl);
            if (r != ncclSuccess) ddp_log_warn("ncclCommDestroy failed: %s", ncclGetErrorString(r));
        }
    }
    if (c->barrier_buf) cudaFree(c->barrier_buf);
    if (c->hang_release) cudaFreeHost((void *)c->hang_release);
    if (c->ready) cudaEventDestroy(c->ready);
    if (c->done) cudaEventDestroy(c->done);
    if (c->stream) cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (c->host_comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&c->host_comm);
    free(c);
}

/* What each rank can set up on its own: device, stream, events, and the GPU's UUID. */
static ddp_status setup_local(nccl_comm *c, cudaUUID_t *uuid) {
    DDP_CUDA_CHECK(cudaSetDevice(c->device));
    struct cudaDeviceProp prop;
    DDP_CUDA_CHECK(cudaGetDeviceProperties(&prop, c->device));
    *uuid = prop.uuid;
    /* Highest priority, so that collectives are scheduled ahead of the backward kernels
     * that they overlap with. */
    int least = 0, greatest = 0;
    DDP_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    DDP_CUDA_CHECK(cudaStreamCreateWithPriority(&c->stream, cudaStreamNonBlocking, greatest));
    DDP_CUDA_CHECK(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
    DDP_CUDA_CHECK(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));
    DDP_CUDA_CHECK(cudaMalloc((void **)&c->barrier_buf, sizeof(int32_t)));
    DDP_CUDA_CHECK(cudaMemset(c->barrier_buf, 0, sizeof(int32_t)));
    return DDP_OK;
}

/* NCCL refuses two ranks on one GPU; say so before it does, with the way out. */
static ddp_status check_one_rank_per_gpu(nccl_comm *c, const cudaUUID_t *all) {
    static const cudaUUID_t zero;
    int me = c->base.rank;
    for (int r = 0; r < c->base.size; r++) {
        if (r == me || memcmp(&all[r], &zero, sizeof zero) == 0) continue;
        if (memcmp(&all[r], &all[me], sizeof zero) == 0) {
            int ngpu = 0;
            if (cudaGetDeviceCount(&ngpu) != cudaSuccess) (void)cudaGetLastError();
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "NCCL cannot put two ranks on one GPU: ranks %d and %d both use GPU "
                            "%d of this node (%d ranks on the node, %d GPU(s) visible); start "
                            "at most one rank per GPU, or use --comm mpi to share GPUs",
                            r < me ? r : me, r < me ? me : r, c->device, c->base.local_size, ngpu);
        }
    }
    return DDP_OK;
}

/* Every rank learns whether any rank failed; the failing ones keep their own message. */
static ddp_status agree(nccl_comm *c, ddp_status local, const char *stage) {
    int mine = local == DDP_OK ? c->base.size : c->base.rank, lowest = mine;
    /* COLLECTIVE: every rank reaches each stage of the bootstrap, failed or not. */
    MPI_TRY(MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, c->host_comm));
    if (local != DDP_OK) return local;
    if (lowest < c->base.size)
        return DDP_FAIL(DDP_ERR_REMOTE,
                        "NCCL comm: rank %d failed during %s (see its "
                        "message); rank %d stops as well",
                        lowest, stage, c->base.rank);
    return DDP_OK;
}

/* all: (world size) room for every rank's GPU identity, allocated by the caller before
 * the first collective. */
static ddp_status bootstrap(nccl_comm *c, cudaUUID_t *all) {
    /* COLLECTIVE: a private communicator for the bootstrap and host-memory collectives. */
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &c->host_comm));
    MPI_Comm_set_errhandler(c->host_comm, MPI_ERRORS_RETURN);
    MPI_TRY(MPI_Comm_rank(c->host_comm, &c->base.rank));
    MPI_TRY(MPI_Comm_size(c->host_comm, &c->base.size));
    DDP_CHECK(ddp_mpi_local_rank(&c->base.local_rank, &c->base.local_size));

    /* Local set-up; a failure is carried to the agreement below so that no rank is left
     * waiting in a collective that a failed rank never reaches. */
    cudaUUID_t uuid;
    memset(&uuid, 0, sizeof uuid);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ddp_status s = setup_local(c, &uuid);
    if (s == DDP_OK && c->base.rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) s = nccl_fail(c, r, "ncclGetUniqueId", __FILE__, __LINE__);
    }

    /* COLLECTIVE: every rank shares its GPU's identity. */
    int rc = MPI_Allgather(&uuid, (int)sizeof uuid, MPI_BYTE, all, (int)sizeof uuid, MPI_BYTE,
                           c->host_comm);
    if (rc != MPI_SUCCESS)
        return mpi_fail(rc, "MPI_Allgather of GPU identities", __FILE__, __LINE__);
    if (s == DDP_OK) s = check_one_rank_per_gpu(c, all);
    DDP_CHECK(agree(c, s, "device set-up"));

    /* COLLECTIVE: rank 0's unique id reaches every rank. */
    MPI_TRY(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, c->host_comm));
    /* COLLECTIVE: every rank joins the NCCL communicator on its own GPU. */
    ncclResult_t r = ncclCommInitRank(&c->nccl, c->base.size, id, c->base.rank);
    if (r != ncclSuccess) {
        c->nccl = NULL;
        s = nccl_fail(c, r, "ncclCommInitRank", __FILE__, __LINE__);
    }
    s = agree(c, s, "ncclCommInitRank");
    if (s != DDP_OK && c->nccl) {
        /* Some other rank has no communicator: a collective destroy would wait for it. */
        ncclCommAbort(c->nccl);
        c->nccl = NULL;
    }
    DDP_CHECK(s);
    return DDP_OK;
}

static const ddp_comm_ops nccl_ops = {
    .name = "nccl",
    .kind = DDP_COMM_NCCL,
    /* Its work progresses on the GPU, queued in stream order: no thread is needed to move
     * it (and none drives it: the reducer keeps one thread for every call, so that the
     * events ordering compute and the comm stream are recorded where the work is made). */
    .caps = DDP_COMM_CAP_DEVICE_QUEUE,
    .destroy = nccl_destroy,
    .allreduce = nccl_allreduce,
    .iallreduce = nccl_iallreduce,
    .test = nccl_test,
    .wait = nccl_wait,
    .broadcast = nccl_broadcast,
    .allgather = nccl_allgather,
    .reduce_scatter = nccl_reduce_scatter,
    .reduce_scatterv = nccl_reduce_scatterv,
    .allgatherv = nccl_allgatherv,
    .ireduce_scatterv = nccl_ireduce_scatterv,
    .iallgatherv = nccl_iallgatherv,
    .barrier = nccl_barrier,
    .abort = nccl_abort,
};

ddp_status ddp_comm_nccl_create(ddp_backend *b, ddp_comm **out) {
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) return DDP_FAIL(DDP_ERR_COMM, "NCCL comm: call ddp_mpi_init first");
    int world_rank = 0, world_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    /* Everything local first, then agreement: a rank that returned early would leave the
     * others waiting in the bootstrap's first collective. */
    ddp_status s = ddp_comm_inject_create_fault(world_rank, world_size);
    if (s == DDP_OK && (!b || ddp_backend_device(b) != DDP_DEVICE_CUDA))
        s = DDP_FAIL(DDP_ERR_INVALID_ARG,
                     "the NCCL comm needs the CUDA backend (buffers in GPU memory): use "
                     "--device cuda, or --comm mpi on the CPU");
    nccl_comm *c = s == DDP_OK ? calloc(1, sizeof *c) : NULL;
    cudaUUID_t *all = s == DDP_OK ? calloc((size_t)world_size, sizeof *all) : NULL;
    if (s == DDP_OK && (!c || !all)) s = DDP_FAIL(DDP_ERR_NOMEM, "NCCL comm: out of host memory");
    /* COLLECTIVE over the world. */
    s = ddp_mpi_agree_local(MPI_COMM_WORLD, s, "creating the NCCL communicator");
    if (s != DDP_OK) {
        free(c);
        free(all);
        DDP_CHECK(s);
    }
    c->base.ops = &nccl_ops;
    c->base.backend = b;
    c->host_comm = MPI_COMM_NULL;
    c->device = ddp_cuda_device(b);
    c->compute = ddp_cuda_stream(b);
    s = bootstrap(c, all);
    free(all);
    /* From here on, host waits for the backend's work watch this communicator. */
    if (s == DDP_OK) s = ddp_backend_add_wait_check(b, wait_check, c);
    if (s != DDP_OK) {
        ddp_error_trace(__FILE__, __LINE__);
        nccl_destroy(&c->base);
        return s;
    }
    *out = &c->base;
    return DDP_OK;
}
