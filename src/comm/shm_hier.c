/*
 * The reduce-scatter and all-gather of the hierarchical scheme (shm_node.h), for the
 * sharded stages across nodes: MPI on the node's communicator (shared memory inside
 * Open MPI) and on the carriers' communicator between the nodes.
 *
 * The buffer of `total` elements is cut into one slice per carrier (slice i: elements
 * [total * i / S, total * (i + 1) / S)), and the job's blocks (counts[r] for rank r, in
 * rank order) fall into the nodes' ranges, one range per node since its ranks are
 * consecutive. Carrier i of node j moves "slice i within node j's range" between the
 * nodes: that is all that crosses the wire, (N-1)/N of the buffer per node.
 */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "comm/shm_node.h"

/* What one call needs: slice bounds, node ranges, and the MPI count tables. */
typedef struct {
    int k, me, slices, nodes;
    size_t total;
    size_t *slice_at;                 /* (slices + 1) */
    size_t *node_at;                  /* (nodes + 1), carriers only: the nodes' ranges */
    size_t block_lo, block_hi;        /* this rank's block */
    size_t node_lo, node_hi;          /* this node's range */
    size_t piece_lo, piece_hi;        /* a carrier's slice within this node's range */
    int *node_counts, *node_displs;   /* (k): the slices on the node (0 beyond the carriers) */
    int *cross_counts, *cross_displs; /* (nodes): this slice within each node's range */
    int *a2a; /* (4k): send counts and displacements, receive counts and displacements */
} plan;

static size_t overlap(size_t a, size_t b, size_t c, size_t d) {
    size_t lo = a > c ? a : c, hi = b < d ? b : d;
    return hi > lo ? hi - lo : 0;
}

static void plan_free(plan *p) {
    free(p->slice_at);
    free(p->node_at);
    free(p->node_counts);
    free(p->node_displs);
    free(p->cross_counts);
    free(p->cross_displs);
    free(p->a2a);
}

/* The tables for counts over a job of `world` ranks. `to_carriers`: the node's all-to-all
 * hands the pieces of every rank's block to the carriers (the all-gather); otherwise the
 * carriers' pieces to the blocks' ranks (the reduce-scatter). */
static ddp_status plan_make(const ddp_shm_node *n, int world, const size_t *counts, int to_carriers,
                            plan *p) {
    const ddp_shm_hier *h = &n->hier;
    memset(p, 0, sizeof *p);
    int k = p->k = n->size, me = p->me = n->rank, S = p->slices = h->slices;
    p->nodes = h->nodes;
    int carrier = me < S;
    p->slice_at = malloc((size_t)(S + 1) * sizeof(size_t));
    p->node_counts = malloc((size_t)k * sizeof(int));
    p->node_displs = malloc((size_t)k * sizeof(int));
    p->a2a = calloc(4 * (size_t)k, sizeof(int));
    size_t *rank_at = malloc((size_t)(world + 1) * sizeof *rank_at);
    if (carrier) {
        p->node_at = malloc((size_t)(p->nodes + 1) * sizeof(size_t));
        p->cross_counts = malloc((size_t)p->nodes * sizeof(int));
        p->cross_displs = malloc((size_t)p->nodes * sizeof(int));
    }
    if (!p->slice_at || !p->node_counts || !p->node_displs || !p->a2a || !rank_at ||
        (carrier && (!p->node_at || !p->cross_counts || !p->cross_displs))) {
        free(rank_at);
        plan_free(p);
        return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    }
    rank_at[0] = 0;
    for (int r = 0; r < world; r++)
        rank_at[r + 1] = rank_at[r] + counts[r];
    p->total = rank_at[world];
    p->node_lo = rank_at[h->first];
    p->node_hi = rank_at[h->first + k];
    p->block_lo = rank_at[h->first + me];
    p->block_hi = rank_at[h->first + me + 1];
    for (int i = 0; i <= S; i++)
        p->slice_at[i] = p->total * (size_t)i / (size_t)S;
    for (int q = 0; q < k; q++) {
        p->node_counts[q] = q < S ? (int)(p->slice_at[q + 1] - p->slice_at[q]) : 0;
        p->node_displs[q] = q < S ? (int)p->slice_at[q] : 0;
    }
    if (carrier) {
        size_t lo = p->slice_at[me], hi = p->slice_at[me + 1], d = 0;
        for (int j = 0; j < p->nodes; j++) {
            p->node_at[j] = rank_at[h->node_first[j]];
            size_t c = overlap(lo, hi, rank_at[h->node_first[j]],
                               rank_at[h->node_first[j] + h->node_size[j]]);
            p->cross_counts[j] = (int)c;
            p->cross_displs[j] = (int)d;
            d += c;
        }
        p->node_at[p->nodes] = p->total;
        p->piece_lo = p->node_lo > lo ? p->node_lo : lo;
        p->piece_hi = p->node_hi < hi ? p->node_hi : hi;
        if (p->piece_hi < p->piece_lo) p->piece_hi = p->piece_lo;
    }
    /* The node's all-to-all: this rank's block against every carrier's slice, relative to
     * the block; and, as a carrier, every block of the node against this slice, relative
     * to the piece. */
    int *sc = p->a2a, *sd = p->a2a + k, *rc = p->a2a + 2 * k, *rd = p->a2a + 3 * k;
    int *bc = to_carriers ? sc : rc, *bd = to_carriers ? sd : rd;
    int *cc = to_carriers ? rc : sc, *cd = to_carriers ? rd : sd;
    for (int q = 0; q < k; q++) {
        size_t c =
            q < S ? overlap(p->block_lo, p->block_hi, p->slice_at[q], p->slice_at[q + 1]) : 0;
        bc[q] = (int)c;
        bd[q] =
            c ? (int)((p->slice_at[q] > p->block_lo ? p->slice_at[q] : p->block_lo) - p->block_lo)
              : 0;
        if (!carrier) continue;
        size_t lo = rank_at[h->first + q], hi = rank_at[h->first + q + 1];
        c = overlap(lo, hi, p->piece_lo, p->piece_hi);
        cc[q] = (int)c;
        cd[q] = c ? (int)((lo > p->piece_lo ? lo : p->piece_lo) - p->piece_lo) : 0;
    }
    free(rank_at);
    return DDP_OK;
}

ddp_status ddp_shm_hier_reduce_scatterv(ddp_shm_node *n, int world, const void *send, void *recv,
                                        const size_t *counts, MPI_Datatype type, size_t esize,
                                        MPI_Op op) {
    plan p;
    DDP_CHECK(plan_make(n, world, counts, 0, &p));
    int carrier = p.me < p.slices;
    size_t slice = carrier ? p.slice_at[p.me + 1] - p.slice_at[p.me] : 0;
    size_t piece = carrier ? p.piece_hi - p.piece_lo : 0;
    char *tmp = malloc((slice + piece + 1) * esize);
    if (!tmp) {
        plan_free(&p);
        return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    }
    /* 1. The node's sum of each slice, at its carrier. */
    int rc = MPI_Reduce_scatter(send, tmp, p.node_counts, type, op, n->node);
    const char *what = "MPI_Reduce_scatter (on the node, hierarchical)";
    /* 2. Between the nodes: each node gets the sum of its range's part of the slice. */
    if (rc == MPI_SUCCESS && carrier) {
        rc = MPI_Reduce_scatter(tmp, tmp + slice * esize, p.cross_counts, type, op, n->hier.cross);
        what = "MPI_Reduce_scatter (between nodes, hierarchical)";
    }
    /* 3. On the node: every rank's block from the carriers' pieces. */
    if (rc == MPI_SUCCESS) {
        int k = p.k;
        rc = MPI_Alltoallv(tmp + slice * esize, p.a2a, p.a2a + k, type, recv, p.a2a + 2 * k,
                           p.a2a + 3 * k, type, n->node);
        what = "MPI_Alltoallv (on the node, hierarchical)";
    }
    free(tmp);
    plan_free(&p);
    if (rc != MPI_SUCCESS) return ddp_mpi_fail(rc, what, __FILE__, __LINE__);
    return DDP_OK;
}

ddp_status ddp_shm_hier_allgatherv(ddp_shm_node *n, int world, void *buf, const size_t *counts,
                                   MPI_Datatype type, size_t esize) {
    plan p;
    DDP_CHECK(plan_make(n, world, counts, 1, &p));
    int carrier = p.me < p.slices, k = p.k;
    size_t piece = carrier ? p.piece_hi - p.piece_lo : 0;
    char *tmp = malloc((piece + 1) * esize), *b = buf;
    if (!tmp) {
        plan_free(&p);
        return DDP_FAIL(DDP_ERR_NOMEM, "MPI comm: out of memory");
    }
    /* 1. On the node: each carrier gets the part of its slice in the node's blocks. */
    int rc = MPI_Alltoallv(b + p.block_lo * esize, p.a2a, p.a2a + k, type, tmp, p.a2a + 2 * k,
                           p.a2a + 3 * k, type, n->node);
    const char *what = "MPI_Alltoallv (on the node, hierarchical)";
    /* 2. Between the nodes: every node's part of the slice, into its place in buf. */
    if (rc == MPI_SUCCESS && carrier) {
        rc = MPI_Allgatherv(tmp, (int)piece, type, b + p.slice_at[p.me] * esize, p.cross_counts,
                            p.cross_displs, type, n->hier.cross);
        what = "MPI_Allgatherv (between nodes, hierarchical)";
    }
    /* 3. On the node: the slices. */
    if (rc == MPI_SUCCESS) {
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, p.node_counts, p.node_displs,
                            type, n->node);
        what = "MPI_Allgatherv (on the node, hierarchical)";
    }
    free(tmp);
    plan_free(&p);
    if (rc != MPI_SUCCESS) return ddp_mpi_fail(rc, what, __FILE__, __LINE__);
    return DDP_OK;
}
