/*
 * shm_node: what the ranks of one node share in memory, for the MPI comm: the node's
 * communicator, its arrival gate (shm_gate.h), and regions of memory that every rank of
 * the node maps (one MPI shared window each), with the collectives that run in them
 * without messages: an fp32 sum in place, and a reduce-scatter of a region's blocks.
 *
 * Why. When all ranks are on one node and compute on the CPU, the gradients can live in
 * such a region (ddp_comm_alloc_shared): a bucket's all-reduce is then each rank adding up
 * its share of the elements over all ranks' parts, between two passes of the gate, with
 * no copies and no MPI message; the same bits land on every rank.
 */
#ifndef DDP_SHM_NODE_H
#define DDP_SHM_NODE_H

#include <mpi.h>

#include "comm/shm_gate.h"
#include "ddp/core.h"

/* Memory of every rank of the node, from one MPI shared window (or, on a node of one rank
 * under the hierarchical scheme, the rank's own memory: win MPI_WIN_NULL, base[0] owned). */
typedef struct {
    MPI_Win win;
    char **base;  /* (size): each rank's part, mapped here */
    size_t bytes; /* of each part */
    int unused;   /* made, but not every rank of the job got one: never found */
} ddp_shm_region;

/* The hierarchical scheme across nodes: the i-th rank of every node carries slice i of a
 * buffer between the nodes, over `cross` (the i-th ranks of all nodes, in the order of
 * their ranks in the job). `slices` is the smallest node's number of ranks, the same on
 * every rank; ranks of a node beyond it carry nothing (cross is MPI_COMM_NULL there). */
typedef struct {
    int on;     /* the job's ranks span nodes and use the scheme */
    int slices; /* carriers per node */
    int nodes;  /* nodes of the job */
    MPI_Comm cross;
    /* Every node's ranks are consecutive in the job (as mpirun places them by slot): the
     * reduce-scatter and all-gather need it, a node's blocks being one range. */
    int contiguous;
    int first;       /* this node's first rank in the job */
    int *node_first; /* (nodes, on carriers, when contiguous): each node's first rank, */
    int *node_size;  /* and its number of ranks, in the order of cross's ranks */
} ddp_shm_hier;

/* Regions per comm (one per trainer built on it; they live as long as the comm). */
#define DDP_SHM_MAX_REGIONS 16

typedef struct {
    MPI_Comm node;      /* the ranks on this node */
    int rank, size;     /* this rank's place in it */
    ddp_shm_gate *gate; /* NULL: no gate (and no regions) */
    ddp_shm_region region[DDP_SHM_MAX_REGIONS];
    int n_regions;
    ddp_shm_hier hier;
} ddp_shm_node;

/* The node of comm (MPI_COMM_TYPE_SHARED) and its gate, which exists only if want and
 * every rank of the node wants it (n->gate NULL otherwise). On failure n->node may be
 * made and must be freed with ddp_shm_node_free. COLLECTIVE over comm. */
ddp_status ddp_shm_node_create(MPI_Comm comm, int want_gate, ddp_shm_node *n);
/* A region of `bytes` per rank; *ptr gets this rank's part, or stays NULL where the node
 * has no gate, all its regions are taken, /dev/shm lacks room (a warning says so) or the
 * window cannot be made: every rank of the node gets the same answer. COLLECTIVE over the
 * node. Under the hierarchical scheme (n->hier.on) a node of one rank gets a region of its
 * own memory, and the ranks of every node agree: the region is found on all of them or on
 * none (COLLECTIVE over `job` then). */
ddp_status ddp_shm_node_alloc(ddp_shm_node *n, MPI_Comm job, size_t bytes, void **ptr);
/* Sets up the hierarchical scheme over `job` (n's node communicator made from it) when
 * `want` on every rank and it applies: the ranks span nodes, some node holds more than one
 * rank, and every node of several ranks has its gate. n->hier.on says whether it does,
 * the same on every rank. COLLECTIVE over job. */
ddp_status ddp_shm_node_hier_create(ddp_shm_node *n, MPI_Comm job, int want);
/* The fp32 sum over every rank of the job of count elements at `offset` bytes into r, in
 * place, in every rank's part: between two passes of the node's gate, the i-th rank of the
 * node adds slice i up over the node's ranks (in node-rank order), all-reduces that over
 * the i-th ranks of the other nodes (MPI_Allreduce on hier.cross) and writes it into every
 * part. The order is documented so: the node sums first, then MPI's sum over the nodes,
 * which on two nodes is exact whatever its order. Every rank of the job takes part. */
ddp_status ddp_shm_node_hier_sum_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset,
                                     size_t count);
/* The region holding [buf, buf + bytes) in this rank's part, or NULL. */
ddp_shm_region *ddp_shm_node_find(ddp_shm_node *n, const void *buf, size_t bytes);
/* In-place fp32 sum of count elements at `offset` bytes into every rank's part of r.
 * Between two passes of the gate: every rank of the node takes part. The ranks compare
 * their offsets and counts at the first pass: where they differ (a desync) nothing is
 * summed and every rank that sees it fails with DDP_ERR_COMM naming the other rank. */
ddp_status ddp_shm_node_sum_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset, size_t count);
/* This rank's block (counts[rank] elements after those of the ranks before it) of the fp32
 * elements at `offset` in r, summed over the node's ranks into recv. Between two passes of
 * the gate: every rank of the node takes part. */
ddp_status ddp_shm_node_reduce_scatter_f32(ddp_shm_node *n, ddp_shm_region *r, size_t offset,
                                           const size_t *counts, float *recv);
/* The reduce-scatter of counts[r] elements to each rank r of the `world` ranks of the job (blocks
 * in rank order) from send (every block) into recv (this rank's block), across nodes: the node's
 * ranks reduce-scatter the buffer into one slice per carrier (MPI on the node), each
 * carrier reduce-scatters its slice between the nodes so that each node gets the part of
 * the slice in its ranks' blocks, and the node's ranks exchange the pieces of their blocks
 * (an all-to-all on the node). Each node sends (N-1)/N of the buffer for N nodes. Needs
 * n->hier.on and .contiguous; the ranks' blocks fit an int. COLLECTIVE over the job. */
ddp_status ddp_shm_hier_reduce_scatterv(ddp_shm_node *n, int world, const void *send, void *recv,
                                        const size_t *counts, MPI_Datatype type, size_t esize,
                                        MPI_Op op);
/* The all-gather, in place in buf, of counts[r] elements from each rank r of the job: the
 * node's ranks hand each carrier the part of their blocks in its slice (an all-to-all on
 * the node), each carrier all-gathers its slice between the nodes, and the node's ranks
 * all-gather the slices. As ddp_shm_hier_reduce_scatterv: COLLECTIVE over the job. */
ddp_status ddp_shm_hier_allgatherv(ddp_shm_node *n, int world, void *buf, const size_t *counts,
                                   MPI_Datatype type, size_t esize);

/* Frees the regions, the gate and the node's communicator (the MPI calls only while MPI is
 * not finalized). COLLECTIVE over the node. */
void ddp_shm_node_free(ddp_shm_node *n);

#endif
