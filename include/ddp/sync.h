/*
 * sync: how the ranks keep gradients and parameters in step. One type, ddp_sync, with the
 * strategy behind a table of functions (src/sync/), chosen by the ZeRO stage:
 *   0 "replicated": every rank holds and updates everything; the gradients are all-reduced
 *     (in node-shared memory where the comm offers it);
 *   1 the optimizer state is sharded: the gradients are reduce-scattered, each rank updates
 *     its shard, the parameters are all-gathered while the next forward runs;
 *   2 the averaged gradients too: every micro-batch's are reduce-scattered and added into the
 *     shard, and the gradient buffer's pages go back to the system bucket by bucket;
 *   3 the parameters too: each unit of the model (a GPT block, a CNN stage, a dense layer) is
 *     all-gathered just before its forward and again before its backward and given back
 *     after, the next unit's gather running while the current one computes.
 * It owns the shard layout (ddp/shard.h), the reducer and its collectives, the optimizer's
 * view (which part of the flat buffers a rank updates), the global gradient norm, the
 * parameters' gathers and the memory accounting, so that the training step calls it the
 * same way whatever the stage.
 *
 * A step, on every rank (the trainer's):
 *   ddp_sync_step_begin(s, K)
 *   for k < K: forward (the model calls the sync's unit hook);
 *              ddp_sync_forward_end(s, k, &stats);
 *              ddp_sync_backward_begin(s, k, &pass); backward(pass.first, pass.ready, ..);
 *              if (pass.send) ddp_sync_backward_end(s, &stats)
 *   ddp_sync_grad_norm(s, &norm); ddp_sync_update(s, optim, lr, coef) (unless skipped)
 *   ddp_sync_step_end(s)
 */
#ifndef DDP_SYNC_H
#define DDP_SYNC_H

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/model.h"
#include "ddp/optim.h"
#include "ddp/reducer.h"
#include "ddp/shard.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_SYNC_MAX_STAGE 3
/* ZeRO-3: units gathered (or being gathered) at once, the one computing included. */
#define DDP_SYNC_MAX_GATHERS 3

typedef struct {
    int stage;                   /* 0 (replicated) to DDP_SYNC_MAX_STAGE */
    ddp_reducer_options reducer; /* buckets, overlap, progress, the gradients' dtype */
    /* Stage 3: units gathered or being gathered at once (1: none ahead of the one
     * computing, 2: the next one prefetched while it computes). */
    int gathers;
    /* Stage 3 with accumulation: keep each unit's gathered parameters from its first use
     * in a step to its last instead of gathering it again for every micro-batch (all the
     * parameters are then resident during the step). */
    int keep;
    int no_init; /* leave the parameters unwritten (a memory plan, which runs nothing) */
} ddp_sync_options;

typedef struct ddp_sync ddp_sync;

/* The local part of the set-up: the layout, the optimizer's view, the parameters'
 * initial values from seed (stage 3: this rank's shard only) and their bf16 copy where the
 * backend computes in bf16. comm carries the gradients, ctrl the host-side control (the
 * gradient norm of the shards, the evaluation's agreement, reads of sharded parameters).
 * Not collective. */
ddp_status ddp_sync_create(const ddp_sync_options *o, ddp_backend *b, ddp_comm *comm,
                           ddp_comm *ctrl, ddp_model *m, uint64_t seed, ddp_sync **out);
void ddp_sync_free(ddp_sync *s);
/* Nonzero when the strategy gathers on a communicator of its own (stage 3): the caller
 * creates one (collectively) and hands it over with ddp_sync_set_gather_comm, which the
 * sync then owns. */
int ddp_sync_needs_gather_comm(const ddp_sync *s);
void ddp_sync_set_gather_comm(ddp_sync *s, ddp_comm *gather);
/* Moves the gradients into memory the node's ranks share where the strategy keeps them
 * whole and the comm offers it (stages 0 and 1). COLLECTIVE over comm. */
ddp_status ddp_sync_share_gradients(ddp_sync *s);
int ddp_sync_grads_shared(const ddp_sync *s);
/* The rest of the set-up: the reducer (and its thread), the model's unit hook, the
 * gathers' thread. Local (a thread may fail to start): the caller agrees on it. */
ddp_status ddp_sync_start(ddp_sync *s);

/* ---- a training step --------------------------------------------------------------- */

/* Seconds of communication, as the step's statistics report them. */
typedef struct {
    double t_comm;     /* the gradients' collectives (all-reduce or reduce-scatters) */
    double t_exposed;  /* time spent waiting for communication */
    double t_comm_cpu; /* CPU seconds that driving it took */
    double t_gather;   /* the parameters' gathers */
    double t_fwd_wait; /* parts of t_exposed spent inside forward and backward (waiting for */
    double t_bwd_wait; /* parameters), which the step takes off their compute times */
} ddp_sync_stats;

/* What one micro-batch's backward does with its gradients. */
typedef struct {
    int first;               /* backward writes the gradients (else adds to what is there) */
    int send;                /* they leave as backward reports them final: ready is set */
    ddp_grad_ready_fn ready; /* (ctx) the sync's ready callback when sending, else NULL */
    void *ctx;
} ddp_sync_pass;

/* A step of `micro_batches` forward and backward passes begins, after `step` steps (which
 * decides whether --compress compresses yet). Not collective. */
ddp_status ddp_sync_step_begin(ddp_sync *s, int64_t step, int micro_batches);
/* After micro-batch k's forward: stages 1 and 2 finish the last step's parameter gather
 * (k 0; what forward waited for it goes into st). Not collective. */
ddp_status ddp_sync_forward_end(ddp_sync *s, int k, ddp_sync_stats *st);
/* Before micro-batch k's backward: whether it writes or adds, whether it sends (and
 * then starts the reducer's pass). Not collective. */
ddp_status ddp_sync_backward_begin(ddp_sync *s, int k, ddp_sync_pass *p);
/* The ready callback of a sending backward (ctx = the sync): see ddp_reducer_ready.
 * COLLECTIVE in effect: every rank reports the same ranges in the same order. */
ddp_status ddp_sync_grad_ready(void *sync, size_t offset, size_t count);
/* Nonzero once the sending backward in progress has started a bucket's collective. */
int ddp_sync_started_sending(const ddp_sync *s);
/* After a sending backward: waits for its gradients' collectives. COLLECTIVE. */
ddp_status ddp_sync_backward_end(ddp_sync *s, ddp_sync_stats *st);
/* The global norm of the averaged gradients: of the whole buffer, or the shards' sums of
 * squares summed over ranks. COLLECTIVE over ctrl where sharded. */
ddp_status ddp_sync_grad_norm(ddp_sync *s, double *norm);
/* The optimizer's update of this rank's view at learning rate lr, the gradients scaled by
 * gscale (the clipping coefficient). Not collective. */
ddp_status ddp_sync_update(ddp_sync *s, ddp_optim *o, float lr, float gscale);
/* Adds the step's parameter-gather statistics (stage 3: the waits in forward and backward,
 * the gathers' time) into st, once per step after the last backward. */
void ddp_sync_gather_stats(ddp_sync *s, ddp_sync_stats *st);
/* The step's update is done (or skipped, alike on every rank): stages 1 and 2 start the
 * all-gather of the updated parameters, stage 3 the gathers of the next forward's first
 * units, all of which the next forward waits for unit by unit. COLLECTIVE. */
ddp_status ddp_sync_step_end(ddp_sync *s);
/* Finishes every gather in flight and gives back the units held (stage 3), so that the
 * parameters may be read or written outside a step. Not collective itself, but completes
 * collectives that every rank started. */
ddp_status ddp_sync_settle(ddp_sync *s);

/* ---- evaluation: forward passes outside a step --------------------------------------- */

/* Under stage 3 every forward gathers, so every rank must run as many as the others even
 * where its part of the evaluation set is shorter: each rank calls ddp_sync_eval_pass
 * before each of its forward passes, and ddp_sync_eval_end after its last, which runs
 * passes without data (gathers only) while another rank still has one. COLLECTIVE over
 * ctrl under stage 3 (one integer per pass); nothing elsewhere. */
ddp_status ddp_sync_eval_pass(ddp_sync *s);
ddp_status ddp_sync_eval_end(ddp_sync *s);

/* ---- the parameters outside a step --------------------------------------------------- */

/* The optimizer's view: elements [*begin, *begin + *len) of the flat buffers, whose
 * optimizer state and averaged gradients this rank keeps (all, or its shard). */
void ddp_sync_view(const ddp_sync *s, size_t *begin, size_t *len);
/* The parameters this rank holds between steps: all of them, or (stage 3) its shard;
 * elements [*begin, *begin + *len) of ddp_model_params. */
void ddp_sync_param_range(const ddp_sync *s, size_t *begin, size_t *len);
/* The layout of the shards (meaningful where the stage shards). */
const ddp_shard_layout *ddp_sync_layout(const ddp_sync *s);
int ddp_sync_stage(const ddp_sync *s);
/* Nonzero when every rank holds every parameter (stages 0 to 2), which a bitwise check
 * across ranks can compare. */
int ddp_sync_params_replicated(const ddp_sync *s);
/* Nonzero when every micro-batch's gradients leave during its backward (stages 2 and 3),
 * so that nothing is left in the buffer to measure afterwards. */
int ddp_sync_sends_each_micro_batch(const ddp_sync *s);
/* The parameters were written from outside (a checkpoint loaded into the param range):
 * their bf16 copy is rewritten. Not collective. */
ddp_status ddp_sync_params_changed(ddp_sync *s);
/* Parameters [a, b) into host (b - a floats) on every rank: a copy where this rank holds
 * them, else (stage 3) gathered over ctrl in pieces of at most one unit's size, so that no
 * rank holds more than that beyond its shard at a time. COLLECTIVE under stage 3 (every
 * rank asks for the same range), not collective elsewhere. */
ddp_status ddp_sync_read_params(ddp_sync *s, size_t a, size_t b, float *host);
/* The most elements ddp_sync_read_params should be asked for at once to keep that bound
 * (the largest unit; the whole buffer where nothing is sharded). */
size_t ddp_sync_read_chunk(const ddp_sync *s);

/* The gradients' compressor (--compress powersgd; its state goes into checkpoints), or
 * NULL. */
ddp_powersgd *ddp_sync_compressor(ddp_sync *s);

/* What the gradients' collectives of a step cost as they are and compressed: the inputs of
 * --compress auto's prediction. */
typedef struct {
    int buckets;       /* all-reduces per step as they are */
    size_t bytes;      /* sent per rank per step as they are */
    int psgd_calls;    /* all-reduces per step compressed (0: no compressor) */
    size_t psgd_bytes; /* sent per rank per step compressed */
    double psgd_work;  /* seconds of compression work per step on this rank */
} ddp_compress_cost;
/* Fills c; the work is timed on a copy of the gradient buffer as it is (after a step:
 * real gradients) over `local`, a communicator of this rank alone. Not collective. */
ddp_status ddp_sync_compress_cost(ddp_sync *s, ddp_comm *local, ddp_compress_cost *c);
/* What the reducer sends per rank per step now (compressed where the compressor is
 * compressing): *bytes and *collectives, the buckets' all-reduces or reduce-scatters, and
 * its *buckets (under --zero, one parameter all-gather each). */
void ddp_sync_wire(const ddp_sync *s, size_t *bytes, int *collectives, int *buckets);
/* The compressor compresses from step `step` on (--compress auto's decision). */
void ddp_sync_compress_from(ddp_sync *s, int64_t step);

/* ---- memory ---------------------------------------------------------------------------- */

/* Bytes per rank that the strategy holds at its peak (ddp_memory_use takes them). */
typedef struct {
    size_t params;      /* fp32 parameters: all, or (stage 3) the shard and the units in flight */
    size_t params_bf16; /* their bf16 copy for the products (--precision bf16) */
    size_t grads;       /* the gradient buffer's resident part */
    size_t grad_shard;  /* the averaged gradients of the shard */
    size_t view;        /* elements of the optimizer's view (times the state buffers' bytes) */
    /* Communication buffers outside those: MPI's reduce-scatter of a bucket from ordinary
     * host memory works in temporaries of up to twice the bucket's size (of the largest
     * bucket, where stages 2 and 3 reduce-scatter so; measured in bench/results/zero.md) */
    size_t comm;
} ddp_sync_memory;
/* For this run (ranks 0), or for the same settings on `ranks` ranks (a plan: the largest
 * shard's figures). Not collective. */
void ddp_sync_memory_use(const ddp_sync *s, int ranks, ddp_sync_memory *m);

#ifdef __cplusplus
}
#endif
#endif
