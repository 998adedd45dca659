/*
 * shm_gate: an arrival gate for the ranks on one node, in shared memory, whose waiters
 * sleep instead of spinning.
 *
 * Why. A blocking MPI collective spins on its core while it waits for a late rank. With
 * one rank per core and the gradient all-reduce running on a communication thread beside
 * the compute thread, that spinning takes the core from the backward pass it was meant to
 * overlap. Passing the gate first (all ranks of the node have reached the same
 * collective) makes the waiting a futex sleep; MPI then starts with every local peer
 * present and spends its time moving data, not polling.
 *
 * Each rank owns one counter on its own cache line in a shared window. pass() stores the
 * rank's next sequence number, wakes sleepers, then sleeps until every local counter has
 * reached that number. Ranks pass in the same order as their collectives, so the n-th
 * pass of every rank pairs up. A rank that never arrives (stopped, dead, stuck) leaves the
 * others asleep in bounded futex waits inside a collective the watchdog is timing, so the
 * job still ends with a message.
 */
#ifndef DDP_SHM_GATE_H
#define DDP_SHM_GATE_H

#include <mpi.h>

#include "ddp/core.h"

typedef struct ddp_shm_gate ddp_shm_gate;

/* Creates the gate over `node` (the ranks sharing memory; MPI_COMM_TYPE_SHARED). Every
 * rank passes `want`; the gate exists only if all of them want it and the shared window
 * could be made on all of them, otherwise *out is NULL on every rank and the status is
 * DDP_OK (the caller simply does not gate). COLLECTIVE over node. */
ddp_status ddp_shm_gate_create(MPI_Comm node, int want, ddp_shm_gate **out);
/* Waits, asleep, until every rank of the node has passed as often as this one. Not an
 * MPI call: it needs no progress and any one thread per gate may call it. */
void ddp_shm_gate_pass(ddp_shm_gate *g);
/* The same, first announcing what this rank is about to do with the others (two numbers:
 * an offset and a count), and then comparing: returns the lowest rank of the node whose
 * announcement differs from this rank's (its numbers in *their_a, *their_b), or -1 when
 * all agree. Ranks that meet in a pass but were called for different collectives (a
 * desync) learn it here, where they would otherwise sum unrelated ranges without a word.
 * An announcement stays readable until its rank's next announcing pass, so the pass that
 * closes an announced operation must be a plain one. */
int ddp_shm_gate_pass_compare(ddp_shm_gate *g, uint64_t a, uint64_t b, uint64_t *their_a,
                              uint64_t *their_b);
/* COLLECTIVE over the node while MPI is not finalized (frees the shared window). */
void ddp_shm_gate_free(ddp_shm_gate *g);

#endif
