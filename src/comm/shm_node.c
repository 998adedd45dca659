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
    n->hier.cross = MPI_COMM_NULL;
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
        ddp_shm_region *r = &n->region[i];
        if (r->win == MPI_WIN_NULL)
            free(r->base[0]); /* a node of one rank: its own memory */
        else if (!finalized)
            MPI_Win_free(&r->win);
        free(r->base);
    }
    n->n_regions = 0;
    if (!finalized && n->hier.cross != MPI_COMM_NULL) MPI_Comm_free(&n->hier.cross);
    free(n->hier.node_first);
    free(n->hier.node_size);
    n->hier.node_first = n->hier.node_size = NULL;
    n->hier.cross = MPI_COMM_NULL;
    n->hier.on = 0;
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
        if (!r->unused && p >= mine && p + bytes <= mine + r->bytes) return r;
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

/* Elements [lo, hi) of the fp32 values at `offset` in r, summed over the node's ranks in
 * node-rank order, into every rank's part (to_all) or only this rank's. */
static void node_sum(const ddp_shm_node *n, ddp_shm_region *r, size_t offset, size_t lo, size_t hi,
                     int to_all) {
    enum { BLOCK = 1024 };
    float acc[BLOCK];
    for (size_t i = lo; i < hi; i += BLOCK) {
        size_t m = hi - i < BLOCK ? hi - i : BLOCK;
        const float *x0 = (const float *)(r->base[0] + offset) + i;
        for (size_t k = 0; k < m; k++)
            acc[k] = x0[k];
        for (int q = 1; q < n->size; q++) {
            const float *x = (const float *)(r->base[q] + offset) + i;
            for (size_t k = 0; k < m; k++)
                acc[k] += x[k];
        }
        for (int q = to_all ? 0 : n->rank; q < (to_all ? n->size : n->rank + 1); q++)
            memcpy((float *)(r->base[q] + offset) + i, acc, m * sizeof(float));
    }
}

/* Each rank sums its share of the elements over all ranks, in rank order, and writes the
 * sum into every rank's part: identical bits everywhere, no copies, no messages. Passing
 * the gate before makes every rank's values final; passing it after makes every sum
 * written. */
ddp_status ddp_shm_node_sum_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset, size_t count) {
    int size = n->size, me = n->rank;
    size_t lo = count * (size_t)me / (size_t)size, hi = count * (size_t)(me + 1) / (size_t)size;
    DDP_CHECK(open_pass(n, "all-reduce", offset, count));
    node_sum(n, r, offset, lo, hi, 1);
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

/* The node's region (see ddp_shm_node_alloc), agreed on by the node's ranks only. */
static ddp_status alloc_node(ddp_shm_node *n, size_t bytes, void **ptr) {
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

/* A region of this rank's own memory, for a node of one rank under the hierarchical
 * scheme: the sums find it like a shared one. */
static ddp_status alloc_own(ddp_shm_node *n, size_t bytes, void **ptr) {
    if (n->n_regions == DDP_SHM_MAX_REGIONS) return DDP_OK;
    ddp_shm_region *r = &n->region[n->n_regions];
    void *mem = NULL;
    r->base = calloc(1, sizeof *r->base);
    if (!r->base || posix_memalign(&mem, 64, bytes ? bytes : 64) != 0) {
        free(r->base);
        r->base = NULL;
        return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory for %zu bytes", bytes);
    }
    memset(mem, 0, bytes);
    r->win = MPI_WIN_NULL;
    r->base[0] = mem;
    r->bytes = bytes;
    r->unused = 0;
    n->n_regions++;
    *ptr = mem;
    return DDP_OK;
}

ddp_status ddp_shm_node_alloc(ddp_shm_node *n, MPI_Comm job, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (!n->hier.on) return alloc_node(n, bytes, ptr);
    void *mine = NULL;
    ddp_status s = n->size == 1 ? alloc_own(n, bytes, &mine) : alloc_node(n, bytes, &mine);
    /* Every node's answer is its own: the job agrees, so that no rank sums in its node's
     * memory while a rank of another node calls MPI for the same buffer. */
    DDP_CHECK(ddp_mpi_agree_local(job, s, "preparing node-shared memory"));
    int ok = mine != NULL;
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, job) != MPI_SUCCESS)
        return DDP_FAIL(DDP_ERR_COMM, "MPI comm: agreement on shared memory failed");
    /* A region that only some nodes got stays mapped until the comm is freed, unused. */
    if (!ok && mine) n->region[n->n_regions - 1].unused = 1;
    *ptr = ok ? mine : NULL;
    return DDP_OK;
}

ddp_status ddp_shm_node_hier_create(ddp_shm_node *n, MPI_Comm job, int want) {
    memset(&n->hier, 0, sizeof n->hier);
    n->hier.cross = MPI_COMM_NULL;
    int job_size;
    MPI_Comm_size(job, &job_size);
    /* One reduction: the smallest of "wants it and can", of the node sizes, and of their
     * negatives (the largest node size), and the number of nodes (one first rank each). */
    int v[3] = {want && (n->size == 1 || n->gate != NULL), n->size, -n->size};
    int nodes = n->rank == 0;
    if (MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT, MPI_MIN, job) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, &nodes, 1, MPI_INT, MPI_SUM, job) != MPI_SUCCESS)
        return DDP_FAIL(DDP_ERR_COMM, "MPI comm: agreement on the hierarchical scheme failed");
    int largest = -v[2];
    if (!v[0] || largest == job_size || largest < 2) return DDP_OK;
    n->hier.slices = v[1];
    n->hier.nodes = nodes;
    int rank;
    MPI_Comm_rank(job, &rank);
    int rc = MPI_Comm_split(job, n->rank < n->hier.slices ? n->rank : MPI_UNDEFINED, rank,
                            &n->hier.cross);
    if (rc != MPI_SUCCESS) {
        n->hier.cross = MPI_COMM_NULL;
        return ddp_mpi_fail(rc, "MPI_Comm_split (the ranks that carry a slice between nodes)",
                            __FILE__, __LINE__);
    }
    if (n->hier.cross != MPI_COMM_NULL) MPI_Comm_set_errhandler(n->hier.cross, MPI_ERRORS_RETURN);
    n->hier.on = 1;
    /* Whether every node's ranks are consecutive, and where each node begins. */
    int span[2] = {rank, -rank}, contiguous;
    rc = MPI_Allreduce(MPI_IN_PLACE, span, 2, MPI_INT, MPI_MIN, n->node);
    n->hier.first = span[0];
    contiguous = -span[1] - span[0] + 1 == n->size;
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, &contiguous, 1, MPI_INT, MPI_MIN, job);
    if (rc != MPI_SUCCESS)
        return ddp_mpi_fail(rc, "MPI_Allreduce (the nodes' ranks)", __FILE__, __LINE__);
    /* Carriers: each node's first rank and size, in the order of cross's ranks; every
     * carrier learns whether every carrier could make the tables. */
    int ok = 1;
    if (contiguous && n->hier.cross != MPI_COMM_NULL) {
        int mine[2] = {n->hier.first, n->size}, *all = malloc(2 * (size_t)nodes * sizeof *all);
        n->hier.node_first = malloc((size_t)nodes * sizeof(int));
        n->hier.node_size = malloc((size_t)nodes * sizeof(int));
        ok = all && n->hier.node_first && n->hier.node_size;
        rc = MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, n->hier.cross);
        if (rc == MPI_SUCCESS && ok)
            rc = MPI_Allgather(mine, 2, MPI_INT, all, 2, MPI_INT, n->hier.cross);
        for (int j = 0; rc == MPI_SUCCESS && ok && j < nodes; j++) {
            n->hier.node_first[j] = all[2 * j];
            n->hier.node_size[j] = all[2 * j + 1];
        }
        free(all);
        if (rc != MPI_SUCCESS)
            return ddp_mpi_fail(rc, "MPI_Allgather (the nodes' ranks)", __FILE__, __LINE__);
    }
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, job) != MPI_SUCCESS)
        return DDP_FAIL(DDP_ERR_COMM, "MPI comm: agreement on the hierarchical scheme failed");
    if (!ok) return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    n->hier.contiguous = contiguous;
    return DDP_OK;
}

ddp_status ddp_shm_node_hier_sum_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset,
                                     size_t count) {
    /* MPI counts are ints: a slice goes between the nodes in pieces of at most this. */
    const size_t PIECE = (size_t)1 << 30;
    int size = n->size, me = n->rank, slices = n->hier.slices;
    if (n->gate) DDP_CHECK(open_pass(n, "all-reduce", offset, count));
    int rc = MPI_SUCCESS;
    if (me < slices) {
        size_t lo = count * (size_t)me / (size_t)slices;
        size_t hi = count * (size_t)(me + 1) / (size_t)slices;
        float *mine = (float *)(r->base[me] + offset);
        /* The node's sum of the slice, in node-rank order, into this rank's part. */
        if (size > 1) node_sum(n, r, offset, lo, hi, 0);
        /* Between the nodes, then into the other ranks' parts. */
        for (size_t i = lo; rc == MPI_SUCCESS && i < hi; i += PIECE) {
            size_t m = hi - i < PIECE ? hi - i : PIECE;
            rc = MPI_Allreduce(MPI_IN_PLACE, mine + i, (int)m, MPI_FLOAT, MPI_SUM, n->hier.cross);
        }
        for (int q = 0; rc == MPI_SUCCESS && q < size; q++)
            if (q != me && hi > lo)
                memcpy((float *)(r->base[q] + offset) + lo, mine + lo, (hi - lo) * sizeof(float));
    }
    /* Passed even after a failure: the node's other ranks are waiting in it. */
    if (n->gate) ddp_shm_gate_pass(n->gate);
    if (rc != MPI_SUCCESS)
        return ddp_mpi_fail(rc, "MPI_Allreduce (between nodes, hierarchical)", __FILE__, __LINE__);
    return DDP_OK;
}
