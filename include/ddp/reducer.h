/*
 * reducer: averages the flat gradient buffer over all ranks, overlapping communication
 * with the backward pass.
 *
 * The buffer is cut into buckets in reverse layer order (the last layers' gradients are
 * final first, and they sit at the end of the buffer): a small first bucket so that
 * communication starts early, then buckets of about bucket_bytes, with boundaries on
 * tensor boundaries. During the backward of the last micro-batch the model reports
 * ranges of gradients as final, in any order; each bucket counts the elements still
 * pending and its all-reduce starts as soon as the count reaches zero, while earlier
 * layers still compute. finish() starts whatever is left and waits for all.
 *
 * Progress. An MPI non-blocking collective moves only while some thread is inside MPI.
 * DDP_PROGRESS_THREAD runs each bucket's blocking all-reduce on a communication thread
 * (needs MPI_THREAD_MULTIPLE); DDP_PROGRESS_TEST starts non-blocking all-reduces and
 * tests them between layers (what NCCL needs anyway: its work runs on the GPU).
 */
#ifndef DDP_REDUCER_H
#define DDP_REDUCER_H

#include "ddp/backend.h"
#include "ddp/comm.h"
#include "ddp/shard.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DDP_PROGRESS_MODES(X)                                                                      \
    X(DDP_PROGRESS_AUTO, "auto") X(DDP_PROGRESS_THREAD, "thread") X(DDP_PROGRESS_TEST, "test")
typedef enum { DDP_PROGRESS_MODES(DDP_X_VALUE) DDP_PROGRESS_COUNT } ddp_progress;
extern const char *const ddp_progress_names[];

/* Gradient compression: none, PowerSGD's low-rank factors with error feedback
 * (ddp/powersgd.h), or auto: PowerSGD's compressor set up but idle until the first steps'
 * measurements predict that it pays (src/train/compress_auto.c). */
#define DDP_COMPRESS_KINDS(X)                                                                      \
    X(DDP_COMPRESS_NONE, "none") X(DDP_COMPRESS_POWERSGD, "powersgd") X(DDP_COMPRESS_AUTO, "auto")
typedef enum { DDP_COMPRESS_KINDS(DDP_X_VALUE) DDP_COMPRESS_COUNT } ddp_compress;
extern const char *const ddp_compress_names[];

typedef struct {
    size_t bucket_bytes;       /* of fp32 gradients per bucket (default 25 MB) */
    size_t first_bucket_bytes; /* the first (last-layer) bucket (default 1 MB) */
    ddp_dtype grad_dtype;      /* DDP_F32, or DDP_BF16 to halve the bytes sent */
    int overlap;               /* 0: one all-reduce of the whole buffer after backward */
    ddp_progress progress;
    /* --compress: the kind, PowerSGD's rank R and the first step it compresses (the steps
     * before are all-reduced as they are); the sync makes the compressor
     * (ddp_reducer_set_compressor). */
    ddp_compress compress;
    int compress_rank;
    int64_t compress_start;
    /* Benchmarks only: no communication at all, every rank keeps its own gradients and
     * the replicas drift apart. Measures what N ranks could reach with free
     * communication (ddp-bench train --no-allreduce). */
    int skip;
    /* Set by the trainer: gradients [0, tail_elems) are final last (the first layer,
     * reported in slices), so they are cut into buckets of first_bucket_bytes, like the
     * first bucket, to leave little to send once backward has ended. */
    size_t tail_elems;
} ddp_reducer_options;

typedef struct {
    double t_comm;    /* seconds the buckets' all-reduces took, summed */
    double t_exposed; /* seconds finish() waited: communication not hidden by backward */
    /* CPU seconds spent driving the all-reduces (the communication thread's, or the
     * waits in finish()): what communication costs the cores when they are all busy
     * computing. Excludes the MPI_Test calls between layers of --progress test. */
    double t_comm_cpu;
    int n_buckets;
} ddp_reducer_stats;

typedef struct ddp_reducer ddp_reducer;

/* boundaries: offsets (elements, ascending) where tensors start; buckets are cut only
 * there. Not collective. */
ddp_status ddp_reducer_create(ddp_comm *comm, ddp_backend *b, float *grads, size_t n,
                              const size_t *boundaries, int n_boundaries,
                              const ddp_reducer_options *opt, ddp_reducer **out);
void ddp_reducer_free(ddp_reducer *r);

/* Sharded gradients (ZeRO): instead of all-reducing each bucket, reduce-scatter it, so
 * that rank q receives the sum of the part of the bucket that falls into its shard of the
 * layout l (ddp/shard.h; shards are cut without regard to buckets, so a bucket may feed
 * several shards). This rank's sums land in shard (l->size elements, device), at the
 * offset of the element within the shard; with grad_dtype BF16 they travel in bf16 and are
 * widened there. release_grads: after a bucket has been sent, the pages of the gradient
 * buffer that no bucket still to be sent shares are given back to the system
 * (ddp_backend_release_pages: host memory), so that the full gradients never stay
 * resident: the buffer must come from ddp_backend_alloc_pages, not be shared with other
 * ranks. Call once, after create. Not collective. */
ddp_status ddp_reducer_set_shard(ddp_reducer *r, float *shard, const ddp_shard_layout *l,
                                 int release_grads);
/* Every bucket's sum goes through the compressor p (not owned; ddp/powersgd.h): two
 * blocking all-reduces of factors per bucket, on the communication thread where there is
 * one, else at the bucket's launch. Sharded (stage 1), the bucket is summed whole and this
 * rank's part copied into the shard; a strategy that adds into the shard or releases the
 * pages (stage 2) is refused. Host memory only. Call once, after set_shard. Not
 * collective. */
typedef struct ddp_powersgd ddp_powersgd;
ddp_status ddp_reducer_set_compressor(ddp_reducer *r, ddp_powersgd *p);
/* Starts a communicating backward pass. */
ddp_status ddp_reducer_begin(ddp_reducer *r);
/* The same for a sharded reducer: add 0 makes the bucket sums overwrite the shard, add 1
 * adds them to it (the later micro-batches of a step whose gradients are sent once per
 * micro-batch). */
ddp_status ddp_reducer_begin_sharded(ddp_reducer *r, int add);
/* A ddp_grad_ready_fn (ctx = the reducer): gradients [offset, offset + count) are final
 * for this backward pass. Starts the all-reduce of each bucket that this completes (in
 * bucket order when several complete at once). A range that overlaps one reported before
 * in the same pass fails with DDP_ERR_INTERNAL. COLLECTIVE in effect: all ranks report the
 * same ranges in the same order, so all start the same buckets in the same order. */
ddp_status ddp_reducer_ready(void *reducer, size_t offset, size_t count);
/* Buckets started so far in this backward pass. */
int ddp_reducer_num_launched(const ddp_reducer *r);
/* Starts what is left, waits for every bucket; afterwards the buffer holds the sum over
 * ranks (callers scale by 1/global batch beforehand), or, sharded, the shard holds its
 * part of it. COLLECTIVE. */
ddp_status ddp_reducer_finish(ddp_reducer *r, ddp_reducer_stats *stats);

/* Sharded: starts the all-gather of the parameters (device, the reducer's n elements),
 * each rank contributing its shard, bucket by bucket in the order forward reads them (from
 * the start of the buffer), on the communication thread where there is one (elsewhere
 * each bucket's all-gather runs here: queued on the GPU's comm stream, or blocking on the
 * host). Nothing else may use the reducer's communicator until the gather is finished.
 * COLLECTIVE. */
ddp_status ddp_reducer_start_gather(ddp_reducer *r, float *params);
/* Returns once parameters [0, end) are gathered (at once when no gather is in flight).
 * Not collective. */
ddp_status ddp_reducer_wait_params(void *reducer, size_t end);
/* Waits for the whole gather started last (returns at once when none is in flight); stats
 * (may be NULL) receives its buckets' communication time and the time spent waiting for
 * it, here and in ddp_reducer_wait_params. Not collective, but every rank calls it before
 * its next collective on the reducer's communicator (ddp_reducer_begin does). */
ddp_status ddp_reducer_finish_gather(ddp_reducer *r, ddp_reducer_stats *stats);

int ddp_reducer_num_buckets(const ddp_reducer *r);
/* Element range [*begin, *end) of bucket i (bucket 0 is at the end of the buffer). */
void ddp_reducer_bucket(const ddp_reducer *r, int i, size_t *begin, size_t *end);

#ifdef __cplusplus
}
#endif
#endif
