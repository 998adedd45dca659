/*
 * The comm's table of operations, private to src/. Implementations: mpi, nccl, local.
 * The public wrappers in comm.c check arguments and dispatch through it; they are also
 * where faults can be injected in tests.
 */
#ifndef DDP_COMM_IMPL_H
#define DDP_COMM_IMPL_H

#include <mpi.h>

#include "ddp/comm.h"
#include "ddp/flight.h"

typedef struct {
    const char *name;
    ddp_comm_kind kind;
    /* DDP_COMM_CAP_* bits that hold for every communicator of this kind; caps() may add
     * what depends on how the library was initialized. */
    unsigned caps;
    unsigned (*dynamic_caps)(const ddp_comm *c); /* may be NULL */
    void (*destroy)(ddp_comm *c);
    ddp_status (*allreduce)(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op);
    ddp_status (*iallreduce)(ddp_comm *c, void *buf, size_t count, ddp_dtype t, ddp_redop op,
                             ddp_comm_req **req);
    ddp_status (*test)(ddp_comm *c, ddp_comm_req *req, int *done);
    ddp_status (*wait)(ddp_comm *c, ddp_comm_req *req);
    ddp_status (*broadcast)(ddp_comm *c, void *buf, size_t count, ddp_dtype t, int root);
    ddp_status (*allgather)(ddp_comm *c, const void *send, void *recv, size_t count, ddp_dtype t);
    ddp_status (*reduce_scatter)(ddp_comm *c, const void *send, void *recv, size_t count,
                                 ddp_dtype t, ddp_redop op);
    /* counts: (size) elements of each rank's block, blocks in rank order; see the public
     * wrappers. Blocks may be empty. */
    ddp_status (*reduce_scatterv)(ddp_comm *c, const void *send, void *recv, const size_t *counts,
                                  ddp_dtype t, ddp_redop op);
    ddp_status (*allgatherv)(ddp_comm *c, void *buf, const size_t *counts, ddp_dtype t);
    /* Optional (NULL: the wrappers call the blocking ones): queued, completed by wait. */
    ddp_status (*ireduce_scatterv)(ddp_comm *c, const void *send, void *recv, const size_t *counts,
                                   ddp_dtype t, ddp_redop op, ddp_comm_req **req);
    ddp_status (*iallgatherv)(ddp_comm *c, void *buf, const size_t *counts, ddp_dtype t,
                              ddp_comm_req **req);
    ddp_status (*barrier)(ddp_comm *c);
    /* Optional (NULL: no shared memory): see ddp_comm_alloc_shared. */
    ddp_status (*alloc_shared)(ddp_comm *c, size_t bytes, void **ptr);
    void (*abort)(ddp_comm *c, int code);
} ddp_comm_ops;

/* --check-collectives (comm_check.c): a communicator of its own over which the ranks
 * compare every collective's fingerprint before it runs. */
typedef struct ddp_comm_check ddp_comm_check;

/* Every comm struct starts with this header; implementations extend it. */
struct ddp_comm {
    const ddp_comm_ops *ops;
    ddp_backend *backend;
    int rank, size;
    int local_rank, local_size;
    int sleeping_wait;       /* see ddp_comm_sleeping_wait */
    int hierarchical;        /* see ddp_comm_hierarchical */
    char allreduce_what[80]; /* what the watchdog names for an all-reduce ("" = "allreduce") */
    char allreduce_tag[32];  /* its name for fault injection ("" = "allreduce") */
    int flight_id;           /* its name's id in the flight recorder (ddp_flight_comm_register) */
    uint64_t flight_seq;     /* collectives called on it so far: the last one's number */
    ddp_comm_check *check;   /* --check-collectives; NULL when off */
};

/* Every request struct of an implementation starts with this: the flight recorder's
 * ticket of its collective, which ddp_comm_wait and ddp_comm_test mark complete. */
typedef struct {
    uint64_t flight_ticket;
} ddp_comm_req_head;

/* The i-th slot of the flight recorder's ring counting from the oldest (ticket 0: empty),
 * copied into *out; -1 past the last. For the dump, which may not allocate a copy. */
int ddp_flight_snapshot_slot(size_t i, ddp_flight_entry *out);

/* Compares e (this rank's next collective on c, with its site) over the ranks: DDP_OK when
 * every rank's is the same, else DDP_ERR_MISMATCH naming the first rank that differs from
 * rank 0, both collectives and both sites, on every rank. COLLECTIVE over c's ranks. */
ddp_status ddp_comm_check_compare(ddp_comm *c, const ddp_flight_entry *e);
void ddp_comm_check_free(ddp_comm_check *k);

/* Constructors, called only by the registry (comm_registry.c). */
ddp_status ddp_comm_mpi_create(ddp_backend *b, ddp_comm **out);
ddp_status ddp_comm_local_create(ddp_backend *b, ddp_comm **out);
#ifdef DDP_HAVE_NCCL
ddp_status ddp_comm_nccl_create(ddp_backend *b, ddp_comm **out);
#endif

/* Fault injection for tests (inject.c, which lists what DDP_INJECT_FAULT and
 * DDP_INJECT_DELAY can do). */
typedef enum {
    DDP_INJECT_NONE = 0,
    DDP_INJECT_FAIL,
    DDP_INJECT_SKIP,
    DDP_INJECT_COUNT
} ddp_inject_kind;
/* Before a call of `op` on `rank` of a world of `size`: sleeps as DDP_INJECT_DELAY asks,
 * counts the call and returns what DDP_INJECT_FAULT makes of it (never a fault in a world
 * of one). Not collective. */
ddp_inject_kind ddp_comm_inject(int rank, int size, const char *op);
/* The call number N of DDP_INJECT_FAULT, for messages. */
long ddp_comm_inject_call(void);
/* DDP_INJECT_FAULT=comm_create:RANK:N: fails the N-th communicator creation on world rank
 * RANK before its first collective, as a local allocation failure would. DDP_OK
 * otherwise. Not collective. */
ddp_status ddp_comm_inject_create_fault(int rank, int size);
/* Nonzero when DDP_INJECT_FAULT names this call: the N-th call of `op` on `rank`, also in
 * a world of one (for faults a communicator implementation stages itself: NCCL's
 * nccl_hang and nccl_async, see comm_nccl.c). */
int ddp_comm_inject_due(int rank, const char *op);

/* Agreement on a local outcome before a collective that a rank which failed would skip:
 * every rank of `comm` passes its own status. Returns DDP_OK when all succeeded; on a
 * rank that failed, its own status (its message kept); on the others DDP_ERR_REMOTE,
 * naming the lowest failing rank of MPI_COMM_WORLD and `what`. COLLECTIVE over comm. */
ddp_status ddp_mpi_agree_local(MPI_Comm comm, ddp_status local, const char *what);
/* A failed MPI call's status (DDP_ERR_COMM) with MPI's own message, recorded at file:line
 * ("<what> failed: <MPI's message>"). */
ddp_status ddp_mpi_fail(int rc, const char *what, const char *file, int line);

/* Local rank and size on this node, from MPI_COMM_TYPE_SHARED (for the NCCL comm; the
 * MPI comm keeps a node comm of its own). */
ddp_status ddp_mpi_local_rank(int *local_rank, int *local_size);

#endif
