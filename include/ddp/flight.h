/*
 * flight: the flight recorder of collectives, part of the comm module. Every collective
 * that goes through the comm wrappers (src/comm/comm.c) gets a sequence number on its
 * communicator and a fingerprint (operation, type, count, root, reduction, the
 * communicator, the calling site); each process keeps the last N (default 256) in a ring,
 * with the times it saw each one enqueued, handed to the library and complete.
 *
 * When the job fails (the watchdog, an abort, a fatal signal) every rank that can writes
 * its ring to DIR/flight-rankR.json, and one rank gathers every rank's summary over a side
 * channel within a bounded time (ddp_flight_channel_*, flight_channel.c) and says in one
 * line which ranks are where: in the same collective, in different ones (a desync), or
 * silent (stopped or dead). cluster/ddp-flight merges the files into one timeline.
 *
 * Recording costs a few stores and two clock reads per collective, without a lock (a slot
 * is claimed with one atomic add), so it is always on unless the ring has 0 entries.
 */
#ifndef DDP_FLIGHT_H
#define DDP_FLIGHT_H

#include <stddef.h>
#include <stdint.h>

#include "ddp/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The operations, as fingerprints and dumps name them. A non-blocking call is an
 * operation of its own: MPI never pairs it with its blocking form. */
#define DDP_FLIGHT_OPS(X)                                                                          \
    X(DDP_FLIGHT_ALLREDUCE, "allreduce")                                                           \
    X(DDP_FLIGHT_IALLREDUCE, "iallreduce")                                                         \
    X(DDP_FLIGHT_BROADCAST, "broadcast")                                                           \
    X(DDP_FLIGHT_ALLGATHER, "allgather")                                                           \
    X(DDP_FLIGHT_REDUCE_SCATTER, "reduce_scatter")                                                 \
    X(DDP_FLIGHT_REDUCE_SCATTERV, "reduce_scatterv")                                               \
    X(DDP_FLIGHT_ALLGATHERV, "allgatherv")                                                         \
    X(DDP_FLIGHT_IREDUCE_SCATTERV, "ireduce_scatterv")                                             \
    X(DDP_FLIGHT_IALLGATHERV, "iallgatherv")                                                       \
    X(DDP_FLIGHT_BARRIER, "barrier")                                                               \
    X(DDP_FLIGHT_ALLOC_SHARED, "alloc_shared")
typedef enum { DDP_FLIGHT_OPS(DDP_X_VALUE) DDP_FLIGHT_OP_COUNT } ddp_flight_op;
extern const char *const ddp_flight_op_names[];

/* Where a recorded collective is: enqueued (a non-blocking call returned), started (handed
 * to the library, not yet seen complete), done, or failed (the call returned an error). */
#define DDP_FLIGHT_STATES(X)                                                                       \
    X(DDP_FLIGHT_ENQUEUED, "enqueued")                                                             \
    X(DDP_FLIGHT_STARTED, "started")                                                               \
    X(DDP_FLIGHT_DONE, "done")                                                                     \
    X(DDP_FLIGHT_FAILED, "failed")
typedef enum { DDP_FLIGHT_STATES(DDP_X_VALUE) DDP_FLIGHT_STATE_COUNT } ddp_flight_state;
extern const char *const ddp_flight_state_names[];

/* One recorded collective. */
typedef struct {
    uint64_t ticket;  /* the record's number in this process (claims the slot) */
    uint64_t seq;     /* on its communicator, from 1: the same call has the same on every rank */
    uint64_t count;   /* elements (the v-collectives: all ranks' blocks; alloc_shared: bytes) */
    const char *site; /* static storage: a literal or ddp_flight_site's */
    int64_t step;     /* the training step being worked on (ddp_watchdog_set_step) */
    double t_enqueue; /* ddp_time_now() when the wrapper was called */
    double t_start;   /* when it was handed to the library (after any check); 0: not yet */
    double t_end;     /* when this rank saw it complete (a wait or test); 0: not yet */
    int32_t root;     /* broadcast's; -1 for the others */
    uint16_t comm;    /* the communicator's id (ddp_flight_comm_register) */
    uint8_t op;       /* ddp_flight_op */
    uint8_t dtype;    /* ddp_dtype */
    uint8_t redop;    /* ddp_redop (reductions; 0 for the others) */
    uint8_t state;    /* ddp_flight_state */
} ddp_flight_entry;

/* ---- recording ------------------------------------------------------------------------ */

/* Sets the ring's size (0 turns recording off; at most DDP_FLIGHT_MAX_RING). The ring
 * starts with DDP_FLIGHT_DEFAULT_RING entries at the first record; resizing drops what it
 * held. Call before threads other than the caller's communicate. Not collective. */
#define DDP_FLIGHT_DEFAULT_RING 256
#define DDP_FLIGHT_MAX_RING     (1 << 20)
ddp_status ddp_flight_configure(size_t entries);
size_t ddp_flight_ring_size(void);

/* Records a collective (ticket, t_start, t_end and state are filled in here): returns its
 * ticket for ddp_flight_mark, or 0 when recording is off. Any thread; lock-free. */
uint64_t ddp_flight_record(const ddp_flight_entry *e);
/* Marks a recorded collective started, done or failed at time t (its t_start or t_end).
 * Nothing when its slot has been reused since (ticket 0 too). Any thread. */
void ddp_flight_mark(uint64_t ticket, ddp_flight_state state, double t);

/* A communicator's id, named `name` until renamed (copied, up to 23 bytes): creation is
 * collective and in the same order on every rank, so ids are the same on every rank. Ids
 * wrap after 64 communicators in one process. Not thread-safe (set-up). */
int ddp_flight_comm_register(const char *name);
void ddp_flight_comm_rename(int id, const char *name);
const char *ddp_flight_comm_name(int id);

/* A site built at run time ("reducer bucket 3"), kept for the life of the process (the
 * recorder keeps pointers to sites); the same text gives the same pointer. When its
 * store (16 KiB) is full, `fallback` is returned. Thread-safe. */
const char *ddp_flight_site(const char *fallback, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A copy of the ring's valid entries, oldest first, into out (cap entries); returns how
 * many. Entries being written as it reads may be torn: it is for diagnostics. */
size_t ddp_flight_snapshot(ddp_flight_entry *out, size_t cap);
/* Empties the ring (tests). */
void ddp_flight_reset(void);

/* ---- dumps ---------------------------------------------------------------------------- */

/* This process's place in the job and where its dump goes: DIR/flight-rankR.json (DIR
 * copied; it must exist). A new path may be written once more. Not thread-safe (set-up). */
void ddp_flight_set_rank(int rank, int world);
ddp_status ddp_flight_set_dir(const char *dir);
/* The path of this process's dump. */
const char *ddp_flight_dump_path(void);
/* Writes the ring as JSON to the dump path, once per path: returns 1 when this call
 * wrote it, 0 when it had been written already, is being written, recording is off, or
 * the file could not be written. `reason` says why ("watchdog: ..."). Async-signal-safe
 * (no allocation, no stdio, no locks): a fatal signal's handler calls it. */
int ddp_flight_dump(const char *reason);
/* The same to any path, every time (tests). Returns 1 when written. */
int ddp_flight_dump_to(const char *path, const char *reason);
/* Dumps on SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTERM and SIGINT, then hands the
 * signal to the handler that was there before (MPI's, a sanitizer's) or to the default
 * action. Not thread-safe (set-up). */
void ddp_flight_catch_signals(void);

/* ---- the verdict ---------------------------------------------------------------------- */

/* A recorded collective as one rank reports it to another. */
typedef struct {
    uint64_t seq, count;
    int64_t step;
    double age; /* seconds since it was enqueued (not done) or completed (done) */
    int32_t comm, root;
    uint8_t op, dtype, redop, state;
    char site[64];
    char comm_name[24];
} ddp_flight_brief;

/* What one rank reports: the newest collectives of each of its communicators. */
#define DDP_FLIGHT_BRIEFS   16
#define DDP_FLIGHT_PER_COMM 4
typedef struct {
    int32_t rank, n;
    ddp_flight_brief e[DDP_FLIGHT_BRIEFS];
} ddp_flight_summary;

/* This process's summary: for each communicator (the most recently active first, up to
 * DDP_FLIGHT_BRIEFS / DDP_FLIGHT_PER_COMM of them) its newest DDP_FLIGHT_PER_COMM
 * collectives. Not collective. */
void ddp_flight_summarize(int rank, ddp_flight_summary *out);
/* The same from given entries, with `now` the time the ages count to (pure; tests). */
void ddp_flight_summarize_entries(int rank, const ddp_flight_entry *entries, size_t n, double now,
                                  ddp_flight_summary *out);

/* The verdict over the ranks' summaries (all[r] NULL for a rank that did not answer,
 * which `silent_s` seconds of waiting did not bring), as one line: the first collective
 * where two ranks' fingerprints differ ("desync"), or the collective the ranks wait in
 * longest and where each of the others is (past it, in a later collective: ahead; in
 * another collective that the ranks stuck have completed: behind; in another one: a
 * desync; in none: busy outside communication; no answer: stopped or dead). Returns 1 for
 * a desync, else 0. Pure. */
int ddp_flight_verdict(const ddp_flight_summary *const *all, int world, double silent_s, char *buf,
                       size_t cap);
/* A count with thousands separated ("4,096"). */
void ddp_flight_count_text(uint64_t count, char *buf, size_t cap);
/* "0-2, 5" for the ranks whose flag is set ("" for none); returns how many there are. */
int ddp_flight_rank_list(const int *flags, int world, char *buf, size_t cap);

/* ---- the side channel (flight_channel.c) ---------------------------------------------- */

/* Opens the side channel over all ranks: a communicator of its own on which every rank
 * keeps a receive posted, answered by ddp_flight_channel_service. `poll_s` is how often
 * this rank services it (its watchdog's wake-up interval, ddp_watchdog_poll_s(); 0:
 * never); the ranks exchange theirs, so that a gatherer knows whom to wait for and how
 * long. Also tells the dump this rank's place (ddp_flight_set_rank). Nothing is opened in
 * a world of one or without MPI_THREAD_MULTIPLE (DDP_OK). COLLECTIVE. */
ddp_status ddp_flight_channel_open(double poll_s);
/* Closes it (frees the communicator while MPI runs). COLLECTIVE. */
void ddp_flight_channel_close(void);
/* Answers the requests that arrived (each after writing this rank's ring to its file).
 * Returns 1 when another rank reported a failure to this one, with its rank, exit code and
 * reason: this rank (0) should then gather and end the job (ddp_flight_conclude). Never
 * blocks. Any thread; not collective. */
int ddp_flight_channel_service(int *from, int *code, char *why, size_t cap);

/* What ddp_flight_conclude found. */
typedef struct {
    int code;         /* the exit status the job should end with */
    int dumped;       /* this rank's ring was written (or had been) */
    int gathered;     /* this rank asked the others: verdict and answered are set */
    int desync;       /* the verdict is a desync */
    int rank0_silent; /* this rank told rank 0, which did not end the job */
    char verdict[2048];
    char answered[256]; /* the ranks that answered (and wrote their rings), "0-2, 5" */
} ddp_flight_outcome;
/* After a failure on this rank (`reason`, ending the job with `code`): writes the ring to
 * its file, then, where the side channel is open, either gathers every rank's summary and
 * sets the verdict (on rank 0; elsewhere when rank 0 did not end the job in time), or
 * tells rank 0 and answers requests until rank 0 ends the job. Returns within a bounded
 * time (about 15 s at most); the caller then ends the job. Once per process: a second
 * caller waits up to 30 s for the first to end it, then returns. Not collective. */
void ddp_flight_conclude(const char *reason, int code, ddp_flight_outcome *out);

#ifdef __cplusplus
}
#endif
#endif
