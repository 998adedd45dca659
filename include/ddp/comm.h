/*
 * comm: collectives over all ranks. One opaque handle; the implementation is chosen at
 * run time from a table (src/comm/): "mpi" (buffers in host memory, or device memory
 * staged through pinned host buffers), "nccl" (device buffers), "local" (a world of
 * one; every collective is a copy).
 *
 * Every function marked COLLECTIVE must be reached by all ranks of the communicator, in
 * the same order, with the same count and type; otherwise the job hangs or corrupts
 * data. A rank that cannot go on calls ddp_comm_abort, which ends every rank.
 */
#ifndef DDP_COMM_H
#define DDP_COMM_H

#include "ddp/backend.h"
#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DDP_COMM_AUTO = 0, DDP_COMM_MPI, DDP_COMM_NCCL, DDP_COMM_LOCAL } ddp_comm_kind;
/* Element types and reductions, with their names (ddp_dtype_names, ddp_redop_names). */
#define DDP_DTYPES(X)                                                                              \
    X(DDP_F32, "f32")                                                                              \
    X(DDP_BF16, "bf16")                                                                            \
    X(DDP_F64, "f64")                                                                              \
    X(DDP_I32, "i32")                                                                              \
    X(DDP_I64, "i64")                                                                              \
    X(DDP_U8, "u8")                                                                                \
    X(DDP_U32, "u32")                                                                              \
    X(DDP_U64, "u64")
typedef enum { DDP_DTYPES(DDP_X_VALUE) DDP_DTYPE_COUNT } ddp_dtype;
#define DDP_REDOPS(X) X(DDP_SUM, "sum") X(DDP_MAX, "max") X(DDP_MIN, "min") X(DDP_AVG, "avg")
typedef enum { DDP_REDOPS(DDP_X_VALUE) DDP_REDOP_COUNT } ddp_redop;
extern const char *const ddp_dtype_names[];
extern const char *const ddp_redop_names[];

size_t ddp_dtype_size(ddp_dtype t);

/* The calling site of a collective, for the flight recorder (ddp/flight.h) and
 * --check-collectives: "src/train/trainer.c:301" (paths relative to the source tree). Every
 * collective below is a macro that passes its caller's site to the function named *_at;
 * a caller that knows better ("reducer bucket 3", from ddp_flight_site) calls that one. */
#define DDP_STR_(x) #x
#define DDP_STR(x)  DDP_STR_(x)
#define DDP_SITE    __FILE__ ":" DDP_STR(__LINE__)

typedef struct ddp_comm ddp_comm;
typedef struct ddp_comm_req ddp_comm_req;

/* Initializes MPI (with thread level MPI_THREAD_MULTIPLE where available, else the best
 * offered) if nobody has yet. Call once at program start, before any comm is created.
 * The job runs at the lowest thread level any rank obtained (rank 0 warns, naming the
 * rank, where ranks got different levels; ddp_mpi_thread_multiple answers with it).
 * Tells the flight recorder this process's rank (ddp_flight_set_rank). COLLECTIVE over
 * MPI_COMM_WORLD. */
ddp_status ddp_mpi_init(int *argc, char ***argv);
/* Nonzero when the job runs with MPI_THREAD_MULTIPLE (any thread may call MPI), on every
 * rank: the level ddp_mpi_init agreed on. */
int ddp_mpi_thread_multiple(void);
/* Finalizes MPI if ddp_mpi_init initialized it. COLLECTIVE. */
void ddp_mpi_finalize(void);
/* Whether this rank yields its CPU while it waits in MPI (Open MPI's control variable
 * mpi_yield_when_idle, read through MPI_T): 1 it yields, 0 it spins, -1 unknown (MPI not
 * initialized, no MPI_T, or a library without that variable). Not collective. */
int ddp_mpi_yields_when_idle(void);

/* Creates a communicator over all ranks of the job (MPI_COMM_WORLD). The backend says
 * where buffers live; NCCL needs a CUDA backend. AUTO picks NCCL for a CUDA backend
 * when NCCL is built in, else MPI. COLLECTIVE (MPI, NCCL). */
ddp_status ddp_comm_create(ddp_comm_kind kind, ddp_backend *b, ddp_comm **out);
/* Frees the communicator. COLLECTIVE (MPI frees its node comm and shared windows, NCCL
 * its communicator): every rank frees it, or none does. */
void ddp_comm_free(ddp_comm *c);

const char *ddp_comm_name(const ddp_comm *c);

/* What a communicator can do, for callers that choose how to drive it. */
enum {
    /* Its non-blocking collectives move only while some thread is inside the library
     * (MPI on the host), so a communication thread helps them along. */
    DDP_COMM_CAP_HOST_PROGRESS = 1u << 0,
    /* Collectives may be called from a second thread while another thread uses the
     * library (MPI_THREAD_MULTIPLE). */
    DDP_COMM_CAP_THREADS = 1u << 1,
    /* Its collectives are queued on the device and complete in stream order (NCCL): a
     * non-blocking call returns at once, whatever thread makes it, and the backend's
     * later work waits for it only where ddp_comm_wait says so. */
    DDP_COMM_CAP_DEVICE_QUEUE = 1u << 2,
};
unsigned ddp_comm_caps(const ddp_comm *c);
/* The kind that made it (MPI, NCCL, local), to make another of the same kind. */
ddp_comm_kind ddp_comm_kind_of(const ddp_comm *c);
/* Names what this communicator's all-reduces are for: in the watchdog's message ("allreduce
 * of the <label> at step 12 did not complete ...") and, as "<tag>_allreduce", for the
 * fault injection of tests (DDP_INJECT_FAULT, DDP_INJECT_DELAY). Not collective. */
void ddp_comm_set_label(ddp_comm *c, const char *tag, const char *label);
/* Names the communicator in the flight recorder's records and verdicts ("gradients",
 * "control"); by default "commN", N its place in the order of creation. Not collective. */
void ddp_comm_set_name(ddp_comm *c, const char *name);
/* --check-collectives: from now on, before every collective on c its ranks compare the
 * collective's fingerprint (its number on c, operation, type, count, root, reduction,
 * calling site) in one small all-gather on a communicator of its own, and the first that
 * differs fails on every rank with DDP_ERR_MISMATCH, naming both ranks and both sites.
 * Nothing for a world of one. COLLECTIVE (every rank of c calls it). */
ddp_status ddp_comm_check_collectives(ddp_comm *c);
/* Whether every communicator created from now on checks its collectives (set it alike on
 * every rank). Not collective. */
void ddp_comm_check_all(int on);
int ddp_comm_check_all_on(void);
int ddp_comm_rank(const ddp_comm *c);
int ddp_comm_size(const ddp_comm *c);
/* Rank among the ranks on this node, and their number (from MPI_COMM_TYPE_SHARED). */
int ddp_comm_local_rank(const ddp_comm *c);
int ddp_comm_local_size(const ddp_comm *c);
/* Nonzero when a large blocking all-reduce sleeps (a futex in shared memory) until the
 * other ranks of this node have reached it, instead of spinning inside MPI: the default
 * of the MPI comm with several ranks on a node, so that a communication thread waiting
 * for a late peer leaves its core to the compute thread. DDP_MPI_GATE=0 turns it off. */
int ddp_comm_sleeping_wait(const ddp_comm *c);

/* Across nodes (--hierarchical): the MPI comm sums a buffer of node-shared memory
 * (ddp_comm_alloc_shared) in the node's memory first, then the i-th rank of every node
 * carries slice i of the node's sum between the nodes, and the node shares the result
 * back through its memory; each node sends 2(N-1)/N of the buffer for N nodes, every
 * local rank driving the wire. auto: used when the ranks span nodes and a node holds more
 * than one rank; on: the same, with a warning where it does not apply; off: one flat
 * all-reduce over all ranks. */
#define DDP_HIER_MODES(X) X(DDP_HIER_AUTO, "auto") X(DDP_HIER_ON, "on") X(DDP_HIER_OFF, "off")
typedef enum { DDP_HIER_MODES(DDP_X_VALUE) DDP_HIER_COUNT } ddp_hier_mode;
extern const char *const ddp_hier_names[];
/* For every MPI comm created from now on (set it alike on every rank). Not collective. */
void ddp_comm_set_hierarchical(ddp_hier_mode m);
/* Nonzero when c uses the hierarchical scheme (the same on every rank). */
int ddp_comm_hierarchical(const ddp_comm *c);

/* Host memory that the other ranks of this node can address, for a buffer that is
 * all-reduced again and again (the gradients). A blocking fp32 sum over a part of it,
 * at the same offset on every rank, then sends no MPI message: after all ranks of the
 * node have arrived, each adds up its share of the elements straight from the others'
 * buffers and writes the sums into all of them. COLLECTIVE (every rank asks for the
 * same size). *ptr is NULL, with DDP_OK, where this comm cannot share memory (ranks on
 * several nodes, device buffers, NCCL, one rank, DDP_MPI_GATE=0, /dev/shm without room
 * for twice the node's buffers, 16 buffers already): use ordinary memory then. The
 * memory lives until the comm is freed. */
ddp_status ddp_comm_alloc_shared_at(ddp_comm *c, const char *site, size_t bytes, void **ptr);
#define ddp_comm_alloc_shared(c, ...) ddp_comm_alloc_shared_at((c), DDP_SITE, __VA_ARGS__)

/* In-place all-reduce of count elements. COLLECTIVE; blocking. */
ddp_status ddp_comm_allreduce_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                 ddp_dtype t, ddp_redop op);
#define ddp_comm_allreduce(c, ...) ddp_comm_allreduce_at((c), DDP_SITE, __VA_ARGS__)
/* Starts an in-place all-reduce and returns at once. COLLECTIVE (all ranks start the
 * same operations in the same order). Complete it with ddp_comm_wait. */
ddp_status ddp_comm_iallreduce_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                  ddp_dtype t, ddp_redop op, ddp_comm_req **req);
#define ddp_comm_iallreduce(c, ...) ddp_comm_iallreduce_at((c), DDP_SITE, __VA_ARGS__)
/* Lets outstanding operations progress; *done = 1 when req is complete (req stays
 * valid until ddp_comm_wait). Not collective. */
ddp_status ddp_comm_test(ddp_comm *c, ddp_comm_req *req, int *done);
/* Waits for req and frees it. Not collective, but blocks until all ranks started it (on a
 * device-queued communicator, the backend's later work waits instead of the host). */
ddp_status ddp_comm_wait(ddp_comm *c, ddp_comm_req *req);
/* root's buf is copied to every rank. COLLECTIVE. */
ddp_status ddp_comm_broadcast_at(ddp_comm *c, const char *site, void *buf, size_t count,
                                 ddp_dtype t, int root);
#define ddp_comm_broadcast(c, ...) ddp_comm_broadcast_at((c), DDP_SITE, __VA_ARGS__)
/* recv (size * count) receives every rank's send (count), in rank order. COLLECTIVE. */
ddp_status ddp_comm_allgather_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                 size_t count, ddp_dtype t);
#define ddp_comm_allgather(c, ...) ddp_comm_allgather_at((c), DDP_SITE, __VA_ARGS__)
/* Reduces send (size * count) over ranks; rank r receives block r (count). COLLECTIVE. */
ddp_status ddp_comm_reduce_scatter_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                      size_t count, ddp_dtype t, ddp_redop op);
#define ddp_comm_reduce_scatter(c, ...) ddp_comm_reduce_scatter_at((c), DDP_SITE, __VA_ARGS__)
/* Blocks of any size, for shards of a buffer that do not divide evenly: send holds the
 * blocks of all ranks in rank order (counts[r] elements for rank r, every rank passing
 * the same counts), and rank r receives in recv the reduction over ranks of its own
 * block. Empty blocks are allowed (a rank with counts[rank] == 0 receives nothing).
 * COLLECTIVE; blocking on the host for MPI, ordered on the comm stream for NCCL. */
ddp_status ddp_comm_reduce_scatterv_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                       const size_t *counts, ddp_dtype t, ddp_redop op);
#define ddp_comm_reduce_scatterv(c, ...) ddp_comm_reduce_scatterv_at((c), DDP_SITE, __VA_ARGS__)
/* In place: buf holds the blocks of all ranks in rank order (counts as above); each rank's
 * own block is copied into every other rank's buf. COLLECTIVE. */
ddp_status ddp_comm_allgatherv_at(ddp_comm *c, const char *site, void *buf, const size_t *counts,
                                  ddp_dtype t);
#define ddp_comm_allgatherv(c, ...) ddp_comm_allgatherv_at((c), DDP_SITE, __VA_ARGS__)
/* The same two, non-blocking where the communicator queues on the device
 * (DDP_COMM_CAP_DEVICE_QUEUE): they return once queued and complete with ddp_comm_wait,
 * which makes the backend's later work wait for them; until then neither buffer may be
 * touched. Elsewhere they are the blocking calls and *req is NULL (complete). COLLECTIVE:
 * every rank starts the same operations in the same order. */
ddp_status ddp_comm_ireduce_scatterv_at(ddp_comm *c, const char *site, const void *send, void *recv,
                                        const size_t *counts, ddp_dtype t, ddp_redop op,
                                        ddp_comm_req **req);
#define ddp_comm_ireduce_scatterv(c, ...) ddp_comm_ireduce_scatterv_at((c), DDP_SITE, __VA_ARGS__)
ddp_status ddp_comm_iallgatherv_at(ddp_comm *c, const char *site, void *buf, const size_t *counts,
                                   ddp_dtype t, ddp_comm_req **req);
#define ddp_comm_iallgatherv(c, ...) ddp_comm_iallgatherv_at((c), DDP_SITE, __VA_ARGS__)
/* COLLECTIVE. */
ddp_status ddp_comm_barrier_at(ddp_comm *c, const char *site);
#define ddp_comm_barrier(c) ddp_comm_barrier_at((c), DDP_SITE)
/* Ends every rank of the job with exit status `code`. Not collective: any rank may call
 * it, and it does not return when the job is really distributed. */
void ddp_comm_abort(ddp_comm *c, int code);

/* For tests: sleeps as DDP_INJECT_DELAY="POINT:RANK:MS" asks when POINT and rank match
 * (src/comm/inject.c); the trainer calls it with "data" before loading each batch, a slow
 * input pipeline. Not collective. */
void ddp_comm_inject_delay(int rank, const char *point);

/* Agreement on success: every rank passes its own status; on return *failed_rank is the
 * lowest rank whose status was not DDP_OK, or -1 if all succeeded. Lets all ranks leave
 * together with a clear message instead of some waiting forever in the next collective.
 * COLLECTIVE, except after a communication error: with local == DDP_ERR_COMM the ranks
 * may be out of step, so it returns local at once without communicating, and the caller
 * must end the job (ddp_comm_abort). */
ddp_status ddp_comm_agree_at(ddp_comm *c, const char *site, ddp_status local, int *failed_rank);
#define ddp_comm_agree(c, ...) ddp_comm_agree_at((c), DDP_SITE, __VA_ARGS__)

/* Compares a value that must be the same on every rank (a CRC of a configuration): on
 * return *first_differing is the lowest rank whose value differs from rank 0's (-1 when
 * all agree), *n_differing how many do, and *mine_differs whether this rank's does.
 * COLLECTIVE. */
ddp_status ddp_comm_compare_at(ddp_comm *c, const char *site, uint32_t value, int *first_differing,
                               int *n_differing, int *mine_differs);
#define ddp_comm_compare(c, ...) ddp_comm_compare_at((c), DDP_SITE, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
