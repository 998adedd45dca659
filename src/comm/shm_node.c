/*
 * The node's shared memory for the MPI comm (shm_node.h): its communicator and gate, the
 * regions every rank of the node maps, and the fp32 sums that run in them in place.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "comm/comm_impl.h"
#include "comm/shm_node.h"

ddp_status ddp_shm_node_create(MPI_Comm comm, int want_gate, ddp_shm_node *n) {
    memset(n, 0, sizeof *n);
    /* Every rank splits, whatever its node's size (nodes may hold different numbers of
     * ranks). */
    int rc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &n->node);
    if (rc != MPI_SUCCESS) {
        n->node = MPI_COMM_NULL;
        return ddp_mpi_fail(rc, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", __FILE__, __LINE__);
    }
    MPI_Comm_rank(n->node, &n->rank);
    MPI_Comm_size(n->node, &n->size);
    /* COLLECTIVE over the node; NULL on every rank unless all want it. */
    DDP_CHECK(ddp_shm_gate_create(n->node, want_gate, &n->gate));
    return DDP_OK;
}

void ddp_shm_node_free(ddp_shm_node *n) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (int i = 0; i < n->n_regions; i++) {
        if (!finalized) MPI_Win_free(&n->region[i].win);
        free(n->region[i].base);
    }
    n->n_regions = 0;
    ddp_shm_gate_free(n->gate);
    n->gate = NULL;
    if (!finalized && n->node != MPI_COMM_NULL) MPI_Comm_free(&n->node);
    n->node = MPI_COMM_NULL;
}

ddp_shm_region *ddp_shm_node_find(ddp_shm_node *n, const void *buf, size_t bytes) {
    const char *p = buf;
    for (int i = 0; i < n->n_regions; i++) {
        ddp_shm_region *r = &n->region[i];
        const char *mine = r->base[n->rank];
        if (p >= mine && p + bytes <= mine + r->bytes) return r;
    }
    return NULL;
}

/* The first pass of an operation in the node's memory, with the comparison of what each
 * rank is about to do; on a mismatch, the closing pass too (the others are waiting in it)
 * and the error. */
static ddp_status open_pass(ddp_shm_node *n, const char *what, size_t offset, size_t count) {
    uint64_t their_off = 0, their_count = 0;
    int other = ddp_shm_gate_pass_compare(n->gate, offset, count, &their_off, &their_count);
    if (other < 0) return DDP_OK;
    ddp_shm_gate_pass(n->gate);
    char theirs[32], mine[32];
    ddp_flight_count_text(their_count, theirs, sizeof theirs);
    ddp_flight_count_text(count, mine, sizeof mine);
    return DDP_FAIL(DDP_ERR_COMM,
                    "%s in node-shared memory: node rank %d has %s elements at byte %llu, this "
                    "rank %s at byte %zu: the ranks' collectives do not match (a desync)",
                    what, other, theirs, (unsigned long long)their_off, mine, offset);
}

/* Each rank sums its share of the elements over all ranks, in rank order, and writes the
 * sum into every rank's part: identical bits everywhere, no copies, no messages. Passing
 * the gate before makes every rank's values final; passing it after makes every sum
 * written. */
ddp_status ddp_shm_node_sum_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset, size_t count) {
    enum { BLOCK = 1024 };
    int size = n->size, me = n->rank;
    size_t lo = count * (size_t)me / (size_t)size, hi = count * (size_t)(me + 1) / (size_t)size;
    float acc[BLOCK];
    DDP_CHECK(open_pass(n, "all-reduce", offset, count));
    for (size_t i = lo; i < hi; i += BLOCK) {
        size_t m = hi - i < BLOCK ? hi - i : BLOCK;
        const float *x0 = (const float *)(r->base[0] + offset) + i;
        for (size_t k = 0; k < m; k++)
            acc[k] = x0[k];
        for (int q = 1; q < size; q++) {
            const float *x = (const float *)(r->base[q] + offset) + i;
            for (size_t k = 0; k < m; k++)
                acc[k] += x[k];
        }
        for (int q = 0; q < size; q++)
            memcpy((float *)(r->base[q] + offset) + i, acc, m * sizeof(float));
    }
    ddp_shm_gate_pass(n->gate);
    return DDP_OK;
}

/* In rank order, as ddp_shm_node_sum_f32. Passing the gate before makes every rank's
 * values final; passing it after keeps every rank from overwriting its buffer while
 * another reads it. */
ddp_status ddp_shm_node_reduce_scatter_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset,
                                           const size_t *counts, float *recv) {
    int size = n->size, me = n->rank;
    size_t lo = 0, total = 0;
    for (int q = 0; q < size; q++) {
        if (q < me) lo += counts[q];
        total += counts[q];
    }
    size_t m = counts[me];
    DDP_CHECK(open_pass(n, "reduce-scatter", offset, total));
    if (m > 0) {
        const float *x0 = (const float *)(r->base[0] + offset) + lo;
        if (recv != x0) memmove(recv, x0, m * sizeof(float));
        for (int q = 1; q < size; q++) {
            const float *x = (const float *)(r->base[q] + offset) + lo;
            for (size_t k = 0; k < m; k++)
                recv[k] += x[k];
        }
    }
    ddp_shm_gate_pass(n->gate);
    return DDP_OK;
}

/* Open MPI backs a shared window with a file in /dev/shm. A tmpfs too small for it (a
 * container's 64 MB, say) only makes Open MPI warn and carry on, and the job then hangs
 * or dies of SIGBUS once the pages are touched; so ask for room to spare first. */
static int devshm_has_room(size_t bytes) {
    struct statvfs st;
    if (statvfs("/dev/shm", &st) != 0) return 1; /* none: Open MPI uses its session dir */
    return (double)st.f_bavail * (double)st.f_frsize >= 2.0 * (double)bytes;
}

ddp_status ddp_shm_node_alloc(ddp_shm_node *n, size_t bytes, void **ptr) {
    /* The same on every rank of the node: the gate was agreed on, and every rank makes the
     * same calls. */
    if (!n->gate || n->n_regions == DDP_SHM_MAX_REGIONS) return DDP_OK;
    /* Agreed before allocating: one rank short of room must not leave the others in a
     * window that cannot be made. */
    int room = devshm_has_room(bytes * (size_t)n->size);
    if (MPI_Allreduce(MPI_IN_PLACE, &room, 1, MPI_INT, MPI_MIN, n->node) != MPI_SUCCESS)
        return DDP_FAIL(DDP_ERR_COMM, "MPI comm: agreement on shared memory failed");
    if (!room) {
        if (n->rank == 0)
            ddp_log_warn("/dev/shm has too little room for %zu bytes of gradients per rank: "
                         "all-reducing them through MPI instead of shared memory",
                         bytes);
        return DDP_OK;
    }
    ddp_shm_region *r = &n->region[n->n_regions];
    r->base = calloc((size_t)n->size, sizeof *r->base);
    /* Agreed before the window: a rank without its table must not leave the others in a
     * collective it skips. */
    ddp_status s = r->base ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    s = ddp_mpi_agree_local(n->node, s, "preparing node-shared memory");
    if (s != DDP_OK) {
        free(r->base);
        r->base = NULL;
        DDP_CHECK(s);
    }
    void *mine = NULL;
    int rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 64, MPI_INFO_NULL, n->node, &mine, &r->win);
    int made = rc == MPI_SUCCESS, ok = made;
    for (int q = 0; ok && q < n->size; q++) {
        MPI_Aint size;
        int disp;
        ok = MPI_Win_shared_query(r->win, q, &size, &disp, &r->base[q]) == MPI_SUCCESS &&
             (size_t)size >= bytes;
    }
    /* All ranks use the region, or none does. */
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, n->node) != MPI_SUCCESS) {
        free(r->base);
        r->base = NULL;
        return DDP_FAIL(DDP_ERR_COMM, "MPI comm: agreement on shared memory failed");
    }
    if (!ok) {
        if (made) MPI_Win_free(&r->win);
        free(r->base);
        r->base = NULL;
        return DDP_OK;
    }
    r->bytes = bytes;
    n->n_regions++;
    *ptr = mine;
    return DDP_OK;
}
