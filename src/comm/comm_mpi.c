/*
 * The MPI comm. Buffers are in host memory, or in device memory of a non-host backend,
 * in which case each collective stages through page-locked host buffers (the path that
 * lets several ranks share one GPU, which NCCL refuses).
 *
 * MPI errors are returned, not fatal: MPI_COMM_WORLD gets MPI_ERRORS_RETURN so that a
 * failure becomes a ddp_status with MPI's own message, and the caller decides to abort.
 * The node's shared memory (the arrival gate, and the gradients' all-reduce without
 * messages) is shm_node.c's.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "comm/shm_node.h"

/* Blocking all-reduces of at least this many bytes first pass the node's arrival gate
 * (shm_gate.h); smaller ones are latency-bound, and a futex round trip would double
 * them. The same on every rank, so every rank gates the same calls. */
#define GATE_MIN_BYTES (64 * 1024)

#define MPI_TRY(call, what)                                                                        \
    do {                                                                                           \
        int mpi_rc_ = (call);                                                                      \
        if (mpi_rc_ != MPI_SUCCESS) return ddp_mpi_fail(mpi_rc_, (what), __FILE__, __LINE__);      \
    } while (0)

/* ---- types and reductions ------------------------------------------------------------ */

/* bf16 has no MPI type: it travels as 16-bit words with a user-defined sum that widens
 * to fp32, adds, and rounds to nearest even. */
static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++)
        b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

static MPI_Datatype mpi_type(ddp_dtype t) {
    switch (t) {
    case DDP_F32: return MPI_FLOAT;
    case DDP_BF16: return MPI_UINT16_T;
    case DDP_F64: return MPI_DOUBLE;
    case DDP_I32: return MPI_INT32_T;
    case DDP_I64: return MPI_INT64_T;
    case DDP_U8: return MPI_UINT8_T;
    case DDP_U32: return MPI_UINT32_T;
    case DDP_U64: return MPI_UINT64_T;
    case DDP_DTYPE_COUNT: break;
    }
    return MPI_DATATYPE_NULL;
}

const char *const ddp_hier_names[] = {DDP_HIER_MODES(DDP_X_NAME) NULL};
/* For the MPI comms created from now on (ddp_comm_set_hierarchical). */
static ddp_hier_mode hier_mode = DDP_HIER_AUTO;

void ddp_comm_set_hierarchical(ddp_hier_mode m) { hier_mode = m; }

typedef struct {
    void *ptr;
    size_t bytes;
    int in_use;
} stage_buf;

#define MAX_STAGE 64

typedef struct {
    struct ddp_comm base;
    MPI_Comm comm;
    MPI_Op bf16_sum_op;
    int device_buffers; /* stage through host memory */
    stage_buf stage[MAX_STAGE];
    /* The node's ranks, their gate (NULL: wait inside MPI) and shared memory. */
    ddp_shm_node shm;
} mpi_comm;

struct ddp_comm_req {
    ddp_comm_req_head head; /* first: see comm_impl.h */
    MPI_Request req;
    void *user_buf;    /* where the result must end up */
    stage_buf *staged; /* host copy used by MPI, or NULL */
    size_t count;
    ddp_dtype type;
    int average; /* divide by size after the sum */
};

static ddp_status mpi_op(mpi_comm *c, ddp_dtype t, ddp_redop op, MPI_Op *out) {
    if (t == DDP_BF16) {
        if (op != DDP_SUM && op != DDP_AVG)
            return DDP_FAIL(DDP_ERR_UNSUPPORTED, "MPI comm: bf16 supports only sum and average");
        *out = c->bf16_sum_op;
        return DDP_OK;
    }
    switch (op) {
    case DDP_SUM:
    case DDP_AVG: *out = MPI_SUM; return DDP_OK;
    case DDP_MAX: *out = MPI_MAX; return DDP_OK;
    case DDP_MIN: *out = MPI_MIN; return DDP_OK;
    case DDP_REDOP_COUNT: break;
    }
    return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown reduction %d", (int)op);
}

static ddp_status divide_by_size(void *buf, size_t count, ddp_dtype t, int size) {
    if (t == DDP_F32) {
        float *x = buf, s = 1.0f / (float)size;
        for (size_t i = 0; i < count; i++)
            x[i] *= s;
    } else if (t == DDP_F64) {
        double *x = buf;
        for (size_t i = 0; i < count; i++)
            x[i] /= (double)size;
    } else if (t == DDP_BF16) {
        uint16_t *x = buf;
        for (size_t i = 0; i < count; i++)
            x[i] = f32_to_bf16(bf16_to_f32(x[i]) / (float)size);
    } else {
        return DDP_FAIL(DDP_ERR_UNSUPPORTED, "average is defined only for floating types");
    }
    return DDP_OK;
}

/* ---- staging through host memory --------------------------------------------------- */

static ddp_status stage_get(mpi_comm *c, size_t bytes, stage_buf **out) {
    stage_buf *free_slot = NULL;
    for (int i = 0; i < MAX_STAGE; i++) {
        stage_buf *s = &c->stage[i];
        if (s->in_use) continue;
        if (s->ptr && s->bytes >= bytes) {
            s->in_use = 1;
            *out = s;
            return DDP_OK;
        }
        if (!free_slot) free_slot = s;
    }
    if (!free_slot)
        return DDP_FAIL(DDP_ERR_INTERNAL, "MPI comm: more than %d staged operations in flight",
                        MAX_STAGE);
    ddp_backend_host_dealloc(c->base.backend, free_slot->ptr);
    free_slot->ptr = NULL;
    DDP_CHECK(ddp_backend_host_alloc(c->base.backend, bytes, &free_slot->ptr));
    free_slot->bytes = bytes;
    free_slot->in_use = 1;
    *out = free_slot;
    return DDP_OK;
}

/* ---- operations ------------------------------------------------------------------- */

/* MPI counts are ints: refuse what would be cut short. */
static ddp_status check_count(size_t count) {
    if (count > (size_t)INT32_MAX)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "MPI comm: %zu elements in one call (max %d)", count,
                        INT32_MAX);
    return DDP_OK;
}

static ddp_status mpi_iallreduce(ddp_comm *base, void *buf, size_t count, ddp_dtype t, ddp_redop op,
                                 ddp_comm_req **out) {
    mpi_comm *c = (mpi_comm *)base;
    DDP_CHECK(check_count(count));
    MPI_Op mop = MPI_OP_NULL;
    DDP_CHECK(mpi_op(c, t, op, &mop));
    ddp_comm_req *r = calloc(1, sizeof *r);
    if (!r) return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    r->user_buf = buf;
    r->count = count;
    r->type = t;
    r->average = op == DDP_AVG;
    void *host = buf;
    size_t bytes = count * ddp_dtype_size(t);
    if (c->device_buffers) {
        ddp_status s = stage_get(c, bytes, &r->staged);
        if (s == DDP_OK)
            s = ddp_backend_copy(base->backend, r->staged->ptr, buf, bytes, DDP_COPY_D2H);
        if (s != DDP_OK) {
            if (r->staged) r->staged->in_use = 0;
            free(r);
            DDP_CHECK(s);
        }
        host = r->staged->ptr;
    }
    int rc = MPI_Iallreduce(MPI_IN_PLACE, host, (int)count, mpi_type(t), mop, c->comm, &r->req);
    if (rc != MPI_SUCCESS) {
        if (r->staged) r->staged->in_use = 0;
        free(r);
        return ddp_mpi_fail(rc, "MPI_Iallreduce", __FILE__, __LINE__);
    }
    *out = r;
    return DDP_OK;
}

static ddp_status finish(mpi_comm *c, ddp_comm_req *r) {
    void *host = r->staged ? r->staged->ptr : r->user_buf;
    ddp_status s = DDP_OK;
    if (r->average) s = divide_by_size(host, r->count, r->type, c->base.size);
    if (s == DDP_OK && r->staged)
        s = ddp_backend_copy(c->base.backend, r->user_buf, host, r->count * ddp_dtype_size(r->type),
                             DDP_COPY_H2D);
    /* Host-to-device copies may still read the staging buffer: wait before reusing it. */
    if (s == DDP_OK && r->staged) s = ddp_backend_sync(c->base.backend);
    if (r->staged) r->staged->in_use = 0;
    free(r);
    DDP_CHECK(s);
    return DDP_OK;
}

static ddp_status mpi_test(ddp_comm *base, ddp_comm_req *r, int *done) {
    int flag = 0;
    if (r->req == MPI_REQUEST_NULL) {
        *done = 1;
        return DDP_OK;
    }
    MPI_TRY(MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    *done = flag;
    return DDP_OK;
}

static ddp_status mpi_wait(ddp_comm *base, ddp_comm_req *r) {
    int rc = MPI_Wait(&r->req, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        if (r->staged) r->staged->in_use = 0;
        free(r);
        return ddp_mpi_fail(rc, "MPI_Wait (all-reduce)", __FILE__, __LINE__);
    }
    DDP_CHECK(finish((mpi_comm *)base, r));
    return DDP_OK;
}

/* ---- node-shared memory (shm_node.c) --------------------------------------------- */

static ddp_status mpi_alloc_shared(ddp_comm *base, size_t bytes, void **ptr) {
    mpi_comm *c = (mpi_comm *)base;
    /* The same on every rank: the backend kind and the world are the same everywhere. The
     * gradients of ranks on other nodes are not in the node's memory. */
    if (c->device_buffers || (base->local_size != base->size && !c->shm.hier.on)) return DDP_OK;
    DDP_CHECK(ddp_shm_node_alloc(&c->shm, c->comm, bytes, ptr));
    return DDP_OK;
}

static ddp_status mpi_allreduce(ddp_comm *base, void *buf, size_t count, ddp_dtype t,
                                ddp_redop op) {
    mpi_comm *c = (mpi_comm *)base;
    size_t bytes = count * ddp_dtype_size(t);
    ddp_shm_region *sr;
    if (t == DDP_F32 && op == DDP_SUM && bytes >= GATE_MIN_BYTES &&
        (sr = ddp_shm_node_find(&c->shm, buf, bytes)) != NULL) {
        size_t offset = (size_t)((char *)buf - sr->base[base->local_rank]);
        if (c->shm.hier.on)
            DDP_CHECK(ddp_shm_node_hier_sum_f32(&c->shm, sr, offset, count));
        else
            DDP_CHECK(ddp_shm_node_sum_f32(&c->shm, sr, offset, count));
        return DDP_OK;
    }
    /* Sleep until the node's ranks are all here, rather than spin in MPI for them. */
    if (c->shm.gate && bytes >= GATE_MIN_BYTES) ddp_shm_gate_pass(c->shm.gate);
    if (!c->device_buffers) {
        /* The blocking call lets MPI pick its best algorithm for the size. */
        MPI_Op mop = MPI_OP_NULL;
        DDP_CHECK(mpi_op(c, t, op, &mop));
        DDP_CHECK(check_count(count));
        MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(t), mop, c->comm),
                "MPI_Allreduce");
        if (op == DDP_AVG) DDP_CHECK(divide_by_size(buf, count, t, base->size));
        return DDP_OK;
    }
    ddp_comm_req *r;
    DDP_CHECK(mpi_iallreduce(base, buf, count, t, op, &r));
    DDP_CHECK(mpi_wait(base, r));
    return DDP_OK;
}

/* Host pointer for a (possibly device) buffer: the buffer itself, or a staged copy. */
static ddp_status to_host(mpi_comm *c, const void *buf, size_t bytes, int copy_in,
                          stage_buf **staged, void **host) {
    *staged = NULL;
    *host = (void *)buf;
    if (!c->device_buffers) return DDP_OK;
    DDP_CHECK(stage_get(c, bytes, staged));
    *host = (*staged)->ptr;
    if (copy_in) {
        ddp_status s = ddp_backend_copy(c->base.backend, *host, buf, bytes, DDP_COPY_D2H);
        if (s != DDP_OK) {
            (*staged)->in_use = 0;
            DDP_CHECK(s);
        }
    }
    return DDP_OK;
}

static ddp_status from_host(mpi_comm *c, stage_buf *staged, void *buf, size_t bytes) {
    if (!staged) return DDP_OK;
    ddp_status s = ddp_backend_copy(c->base.backend, buf, staged->ptr, bytes, DDP_COPY_H2D);
    /* Host-to-device copies may still read the staging buffer: wait before reusing it. */
    if (s == DDP_OK) s = ddp_backend_sync(c->base.backend);
    staged->in_use = 0;
    DDP_CHECK(s);
    return DDP_OK;
}

static ddp_status mpi_broadcast(ddp_comm *base, void *buf, size_t count, ddp_dtype t, int root) {
    DDP_CHECK(check_count(count));
    mpi_comm *c = (mpi_comm *)base;
    size_t bytes = count * ddp_dtype_size(t);
    stage_buf *st;
    void *host;
    DDP_CHECK(to_host(c, buf, bytes, base->rank == root, &st, &host));
    int rc = MPI_Bcast(host, (int)count, mpi_type(t), root, c->comm);
    if (rc != MPI_SUCCESS) {
        if (st) st->in_use = 0;
        return ddp_mpi_fail(rc, "MPI_Bcast", __FILE__, __LINE__);
    }
    DDP_CHECK(from_host(c, st, buf, bytes));
    return DDP_OK;
}

static ddp_status mpi_allgather(ddp_comm *base, const void *send, void *recv, size_t count,
                                ddp_dtype t) {
    DDP_CHECK(check_count(count));
    mpi_comm *c = (mpi_comm *)base;
    size_t bytes = count * ddp_dtype_size(t);
    stage_buf *ss, *rs;
    void *hs, *hr;
    DDP_CHECK(to_host(c, send, bytes, 1, &ss, &hs));
    ddp_status s = to_host(c, recv, bytes * (size_t)base->size, 0, &rs, &hr);
    if (s != DDP_OK) {
        if (ss) ss->in_use = 0;
        DDP_CHECK(s);
    }
    int rc = MPI_Allgather(hs, (int)count, mpi_type(t), hr, (int)count, mpi_type(t), c->comm);
    if (ss) ss->in_use = 0;
    if (rc != MPI_SUCCESS) {
        if (rs) rs->in_use = 0;
        return ddp_mpi_fail(rc, "MPI_Allgather", __FILE__, __LINE__);
    }
    DDP_CHECK(from_host(c, rs, recv, bytes * (size_t)base->size));
    return DDP_OK;
}

static ddp_status mpi_reduce_scatter(ddp_comm *base, const void *send, void *recv, size_t count,
                                     ddp_dtype t, ddp_redop op) {
    DDP_CHECK(check_count(count));
    mpi_comm *c = (mpi_comm *)base;
    MPI_Op mop = MPI_OP_NULL;
    DDP_CHECK(mpi_op(c, t, op, &mop));
    size_t bytes = count * ddp_dtype_size(t);
    stage_buf *ss, *rs;
    void *hs, *hr;
    DDP_CHECK(to_host(c, send, bytes * (size_t)base->size, 1, &ss, &hs));
    ddp_status s = to_host(c, recv, bytes, 0, &rs, &hr);
    if (s != DDP_OK) {
        if (ss) ss->in_use = 0;
        DDP_CHECK(s);
    }
    int rc = MPI_Reduce_scatter_block(hs, hr, (int)count, mpi_type(t), mop, c->comm);
    if (ss) ss->in_use = 0;
    if (rc == MPI_SUCCESS && op == DDP_AVG) s = divide_by_size(hr, count, t, base->size);
    if (rc != MPI_SUCCESS || s != DDP_OK) {
        if (rs) rs->in_use = 0;
        if (rc != MPI_SUCCESS)
            return ddp_mpi_fail(rc, "MPI_Reduce_scatter_block", __FILE__, __LINE__);
        DDP_CHECK(s);
    }
    DDP_CHECK(from_host(c, rs, recv, bytes));
    return DDP_OK;
}

/* MPI's int counts and displacements for blocks of size_t counts. *out: malloc'd, size
 * counts then size displacements. */
static ddp_status int_blocks(const mpi_comm *c, const size_t *counts, int **out, size_t *total) {
    int n = c->base.size;
    int *v = malloc(2 * (size_t)n * sizeof *v);
    if (!v) return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    size_t at = 0;
    for (int r = 0; r < n; r++) {
        if (counts[r] > (size_t)INT32_MAX || at > (size_t)INT32_MAX) {
            free(v);
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "MPI comm: blocks beyond %d elements in one call (rank %d's block "
                            "has %zu at element %zu)",
                            INT32_MAX, r, counts[r], at);
        }
        v[r] = (int)counts[r];
        v[n + r] = (int)at;
        at += counts[r];
    }
    *out = v;
    *total = at;
    return DDP_OK;
}

/* Whether a reduce-scatter or all-gather of `bytes` in all goes the hierarchical way: the
 * scheme is on, the nodes' ranks are consecutive, and the call is large enough to be
 * bandwidth-bound (the same on every rank: the same threshold as the gate). Host buffers
 * only: the scheme is never on for device buffers. */
static int hier_blocks(const mpi_comm *c, size_t bytes) {
    return c->shm.hier.on && c->shm.hier.contiguous && bytes >= GATE_MIN_BYTES;
}

static ddp_status mpi_reduce_scatterv(ddp_comm *base, const void *send, void *recv,
                                      const size_t *counts, ddp_dtype t, ddp_redop op) {
    mpi_comm *c = (mpi_comm *)base;
    int *v;
    size_t total;
    DDP_CHECK(int_blocks(c, counts, &v, &total));
    size_t esize = ddp_dtype_size(t), mine = counts[base->rank];
    ddp_shm_region *sr;
    /* (Node-shared memory holds the whole job's blocks only when the job is one node.) */
    if (t == DDP_F32 && op == DDP_SUM && total * esize >= GATE_MIN_BYTES && !c->shm.hier.on &&
        (sr = ddp_shm_node_find(&c->shm, send, total * esize)) != NULL) {
        free(v);
        DDP_CHECK(ddp_shm_node_reduce_scatter_f32(
            &c->shm, sr, (size_t)((const char *)send - sr->base[base->local_rank]), counts, recv));
        return DDP_OK;
    }
    MPI_Op mop = MPI_OP_NULL;
    ddp_status s = mpi_op(c, t, op, &mop);
    if (s == DDP_OK && hier_blocks(c, total * esize)) {
        free(v);
        if (c->shm.gate) ddp_shm_gate_pass(c->shm.gate);
        DDP_CHECK(ddp_shm_hier_reduce_scatterv(&c->shm, base->size, send, recv, counts, mpi_type(t),
                                               esize, mop));
        if (op == DDP_AVG) DDP_CHECK(divide_by_size(recv, mine, t, base->size));
        return DDP_OK;
    }
    stage_buf *ss = NULL, *rs = NULL;
    void *hs = NULL, *hr = NULL;
    if (s == DDP_OK) s = to_host(c, send, total * esize, 1, &ss, &hs);
    if (s == DDP_OK) s = to_host(c, recv, mine * esize, 0, &rs, &hr);
    if (s == DDP_OK && c->shm.gate && total * esize >= GATE_MIN_BYTES)
        ddp_shm_gate_pass(c->shm.gate);
    int rc = MPI_SUCCESS;
    if (s == DDP_OK) rc = MPI_Reduce_scatter(hs, hr, v, mpi_type(t), mop, c->comm);
    free(v);
    if (ss) ss->in_use = 0;
    if (s == DDP_OK && rc == MPI_SUCCESS && op == DDP_AVG)
        s = divide_by_size(hr, mine, t, base->size);
    if (s != DDP_OK || rc != MPI_SUCCESS) {
        if (rs) rs->in_use = 0;
        if (s == DDP_OK) return ddp_mpi_fail(rc, "MPI_Reduce_scatter", __FILE__, __LINE__);
        DDP_CHECK(s);
    }
    DDP_CHECK(from_host(c, rs, recv, mine * esize));
    return DDP_OK;
}

static ddp_status mpi_allgatherv(ddp_comm *base, void *buf, const size_t *counts, ddp_dtype t) {
    mpi_comm *c = (mpi_comm *)base;
    int *v;
    size_t total;
    DDP_CHECK(int_blocks(c, counts, &v, &total));
    size_t bytes = total * ddp_dtype_size(t);
    if (hier_blocks(c, bytes)) {
        free(v);
        if (c->shm.gate) ddp_shm_gate_pass(c->shm.gate);
        DDP_CHECK(ddp_shm_hier_allgatherv(&c->shm, base->size, buf, counts, mpi_type(t),
                                          ddp_dtype_size(t)));
        return DDP_OK;
    }
    stage_buf *st = NULL;
    void *host = NULL;
    ddp_status s = to_host(c, buf, bytes, 1, &st, &host);
    if (s == DDP_OK && c->shm.gate && bytes >= GATE_MIN_BYTES) ddp_shm_gate_pass(c->shm.gate);
    int rc = MPI_SUCCESS;
    if (s == DDP_OK)
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, host, v, v + base->size,
                            mpi_type(t), c->comm);
    free(v);
    if (s != DDP_OK || rc != MPI_SUCCESS) {
        if (st) st->in_use = 0;
        if (s == DDP_OK) return ddp_mpi_fail(rc, "MPI_Allgatherv", __FILE__, __LINE__);
        DDP_CHECK(s);
    }
    DDP_CHECK(from_host(c, st, buf, bytes));
    return DDP_OK;
}

static ddp_status mpi_barrier(ddp_comm *base) {
    MPI_TRY(MPI_Barrier(((mpi_comm *)base)->comm), "MPI_Barrier");
    return DDP_OK;
}

static void mpi_abort(ddp_comm *base, int code) {
    /* Ends every process of the job, including ranks blocked in a collective. */
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
}

static void mpi_destroy(ddp_comm *base) {
    mpi_comm *c = (mpi_comm *)base;
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (int i = 0; i < MAX_STAGE; i++)
        ddp_backend_host_dealloc(base->backend, c->stage[i].ptr);
    ddp_shm_node_free(&c->shm);
    if (!finalized) {
        if (c->bf16_sum_op != MPI_OP_NULL) MPI_Op_free(&c->bf16_sum_op);
        if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    }
    free(c);
}

static unsigned mpi_dynamic_caps(const ddp_comm *c) {
    return ddp_mpi_thread_multiple() ? DDP_COMM_CAP_THREADS : 0u;
}

static const ddp_comm_ops mpi_ops = {
    .name = "mpi",
    .kind = DDP_COMM_MPI,
    .caps = DDP_COMM_CAP_HOST_PROGRESS,
    .dynamic_caps = mpi_dynamic_caps,
    .destroy = mpi_destroy,
    .allreduce = mpi_allreduce,
    .iallreduce = mpi_iallreduce,
    .test = mpi_test,
    .wait = mpi_wait,
    .broadcast = mpi_broadcast,
    .allgather = mpi_allgather,
    .reduce_scatter = mpi_reduce_scatter,
    .reduce_scatterv = mpi_reduce_scatterv,
    .allgatherv = mpi_allgatherv,
    .barrier = mpi_barrier,
    .abort = mpi_abort,
    .alloc_shared = mpi_alloc_shared,
};

ddp_status ddp_comm_mpi_create(ddp_backend *b, ddp_comm **out) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) return DDP_FAIL(DDP_ERR_COMM, "MPI comm: call ddp_mpi_init first");
    int world_rank = 0, world_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    /* Everything local first: a rank that failed here and returned would leave the others
     * waiting in MPI_Comm_dup until the watchdog fired (or forever, before it runs). */
    ddp_status s = ddp_comm_inject_create_fault(world_rank, world_size);
    mpi_comm *c = s == DDP_OK ? calloc(1, sizeof *c) : NULL;
    if (s == DDP_OK && !c) s = DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    if (c) {
        c->base.ops = &mpi_ops;
        c->base.backend = b;
        c->comm = c->shm.node = MPI_COMM_NULL;
        c->bf16_sum_op = MPI_OP_NULL;
        c->device_buffers = b && !ddp_backend_is_host(b);
        int rc = MPI_Op_create(bf16_sum, 1, &c->bf16_sum_op);
        if (rc != MPI_SUCCESS) {
            c->bf16_sum_op = MPI_OP_NULL;
            s = ddp_mpi_fail(rc, "MPI_Op_create", __FILE__, __LINE__);
        }
    }
    /* COLLECTIVE over the world: every rank learns the outcome, so all go on or all stop. */
    s = ddp_mpi_agree_local(MPI_COMM_WORLD, s, "creating the MPI communicator");
    if (s != DDP_OK) {
        if (c) mpi_destroy(&c->base); /* nothing collective made yet */
        DDP_CHECK(s);
    }
    /* A private duplicate keeps our collectives from matching anyone else's. */
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
    if (rc != MPI_SUCCESS) {
        c->comm = MPI_COMM_NULL;
        mpi_destroy(&c->base);
        return ddp_mpi_fail(rc, "MPI_Comm_dup", __FILE__, __LINE__);
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->base.rank);
    MPI_Comm_size(c->comm, &c->base.size);
    /* The node's ranks give the local rank and size and share the gate. DDP_MPI_GATE=0
     * turns the gate off (to compare, or where futexes misbehave); it is used only if
     * every rank of the node agrees, and never on a node of one rank. */
    const char *env = getenv("DDP_MPI_GATE");
    s = ddp_shm_node_create(c->comm, !(env && strcmp(env, "0") == 0), &c->shm);
    if (s == DDP_OK) {
        c->base.local_rank = c->shm.rank;
        c->base.local_size = c->shm.size;
        c->base.sleeping_wait = c->shm.gate != NULL;
        /* Across nodes, for the buffers of node-shared memory (the gradients, on the CPU). */
        s = ddp_shm_node_hier_create(&c->shm, c->comm,
                                     hier_mode != DDP_HIER_OFF && !c->device_buffers);
    }
    if (s == DDP_OK) {
        c->base.hierarchical = c->shm.hier.on;
        if (hier_mode == DDP_HIER_ON && !c->shm.hier.on && c->base.rank == 0)
            ddp_log_warn("--hierarchical on: not used (%s)",
                         c->device_buffers ? "the buffers are in device memory"
                         : c->base.local_size == c->base.size
                             ? "all ranks are on one node, which shares memory already"
                             : "no node holds more than one rank, or a node has no gate "
                               "(DDP_MPI_GATE=0)");
    }
    if (s != DDP_OK) {
        mpi_destroy(&c->base);
        DDP_CHECK(s);
    }
    *out = &c->base;
    return DDP_OK;
}
