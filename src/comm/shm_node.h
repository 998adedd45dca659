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

/* Memory of every rank of the node, from one MPI shared window. */
typedef struct {
    MPI_Win win;
    char **base;  /* (size): each rank's part, mapped here */
    size_t bytes; /* of each part */
} ddp_shm_region;

/* Regions per comm (one per trainer built on it; they live as long as the comm). */
#define DDP_SHM_MAX_REGIONS 16

typedef struct {
    MPI_Comm node;      /* the ranks on this node */
    int rank, size;     /* this rank's place in it */
    ddp_shm_gate *gate; /* NULL: no gate (and no regions) */
    ddp_shm_region region[DDP_SHM_MAX_REGIONS];
    int n_regions;
} ddp_shm_node;

/* The node of comm (MPI_COMM_TYPE_SHARED) and its gate, which exists only if want and
 * every rank of the node wants it (n->gate NULL otherwise). On failure n->node may be
 * made and must be freed with ddp_shm_node_free. COLLECTIVE over comm. */
ddp_status ddp_shm_node_create(MPI_Comm comm, int want_gate, ddp_shm_node *n);
/* A region of `bytes` per rank; *ptr gets this rank's part, or stays NULL where the node
 * has no gate, all its regions are taken, /dev/shm lacks room (a warning says so) or the
 * window cannot be made: every rank of the node gets the same answer. COLLECTIVE over the
 * node. */
ddp_status ddp_shm_node_alloc(ddp_shm_node *n, size_t bytes, void **ptr);
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
/* Frees the regions, the gate and the node's communicator (the MPI calls only while MPI is
 * not finalized). COLLECTIVE over the node. */
void ddp_shm_node_free(ddp_shm_node *n);

#endif
