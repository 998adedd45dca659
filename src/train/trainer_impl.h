/* The trainer's state, shared by the files of src/train/ (step, run loop, checkpoints,
 * data sources). */
#ifndef DDP_TRAINER_IMPL_H
#define DDP_TRAINER_IMPL_H

#include <stdio.h>

#include "ddp/train.h"
#include "train/noise_scale.h"

/* Where the batches come from: labelled samples (IDX images, source_idx.c) or windows of
 * a text (source_text.c). Every function runs on every rank. */
typedef struct {
    const char *kind;
    /* Checks the data against the configuration, fills in what the model takes from the
     * data (input size, classes), sets up the cursor (t->sampler's steps_per_epoch,
     * epoch and step) and puts the data where the backend computes. Not collective. */
    ddp_status (*setup)(ddp_trainer *t);
    /* Positions predicted per sample: 1, or the context length. */
    size_t (*positions)(const ddp_trainer *t);
    /* Loads this rank's share of the next global batch and advances the cursor. */
    ddp_status (*next)(ddp_trainer *t);
    /* Micro-batch k of the batch loaded by next. */
    ddp_status (*micro_batch)(ddp_trainer *t, int k, ddp_batch *out);
    /* Runs the model over this rank's share of the evaluation set (all of it, or, with
     * full 0, the part cfg.eval_tokens allows), adding the loss sum, the correct
     * predictions and the predictions made to sums[0..2]. */
    ddp_status (*evaluate)(ddp_trainer *t, double sums[3], int full);
    /* Moves the cursor so that the next batch is step `step` of epoch `epoch`. */
    ddp_status (*seek)(ddp_trainer *t, uint64_t epoch, size_t step);
    /* Appends to buf what identifies the training data (sizes, a CRC), for the
     * fingerprint and the checkpoint settings. Returns the length written. */
    size_t (*identify)(const ddp_trainer *t, char *buf, size_t cap);
    void (*release)(ddp_trainer *t);
} ddp_source_ops;

/* Finishes a parameter all-gather in flight (--zero), so that the parameters may be read:
 * every function that reads them outside a training step calls it first. Not collective
 * itself, but completes a collective that every rank started. */
ddp_status ddp_trainer_settle(ddp_trainer *t);

extern const ddp_source_ops ddp_source_idx;
extern const ddp_source_ops ddp_source_text;

struct ddp_trainer {
    ddp_train_config cfg;
    ddp_backend *backend;
    ddp_comm *comm;    /* gradients */
    ddp_comm *ctrl;    /* host-side control: agreement, counts, fingerprints */
    ddp_comm *bn_comm; /* --sync-bn: the batch-norm statistics' own communicator */
    int rank, world;
    const ddp_source_ops *src;
    const ddp_dataset *train, *test; /* samples (source_idx) */
    const ddp_text *text;            /* a text (source_text) */
    ddp_model *model;
    ddp_optim *optim;
    ddp_sampler sampler; /* the cursor: epoch, step in epoch, steps per epoch */
    ddp_reducer *reducer;
    int64_t skipped_steps; /* updates skipped for non-finite gradients */
    int checkpoints_ready; /* ddp_trainer_prepare_checkpoints has run (and agreed) */
    int grads_shared;      /* the gradients live in node-shared memory (share_gradients) */
    size_t num_params;
    /* --zero 1, 2: this rank's shard [shard_begin, shard_begin + shard_len) of the flat
     * buffers; every shard but the last ones holds shard_size elements (a multiple of 16,
     * so that shards start on cache lines; the last may be short or empty) */
    size_t shard_size, shard_begin, shard_len;
    float *shard_grads;   /* (shard_size) device: this shard's averaged gradients */
    int64_t step;         /* steps completed */
    int64_t samples;      /* samples trained on over all ranks (steps x their global batches) */
    int64_t total_steps;
    uint64_t epoch;        /* epoch of the last step */
    size_t max_batch;      /* samples the model's activations hold */
    float *d_stats;        /* (2) device: loss sum, correct count */
    float *h_params;       /* (num_params) host scratch for checks */
    double peak_flops;     /* measured matrix-product FLOP/s of this rank's device (MFU) */
    double last_eval_loss; /* of the run's last evaluation; < 0: none */
    FILE *metrics;
    /* gradient noise scale (noise_scale.c) */
    ddp_gns_ema gns;
    double *d_gns_sq;   /* (1) device: this step's squares of this rank's micro-batch
                         * gradient, summed as backward reports them; read once per step */
    size_t gns_covered; /* elements summed into d_gns_sq so far */
    double gns_time;     /* seconds this step spent measuring it */
    /* the batch schedule (batch_schedule.c); cfg.global_batch and cfg.accum are the
     * current ones */
    size_t start_batch; /* cfg.global_batch as configured */
    int start_accum;
    int64_t batch_step; /* the step after which the batch last changed */
    /* source_idx: samples on the device (or the host arrays themselves on the CPU) */
    size_t dim;
    int num_classes;
    float *d_train_x, *d_test_x;   /* (n, dim) */
    int32_t *d_train_y, *d_test_y; /* (n) */
    int owns_device_data;
    int32_t *h_idx, *d_idx; /* (local_batch) */
    float *d_x;             /* (max_batch, dim) */
    int32_t *d_y;           /* (max_batch) */
    /* source_text: this rank's windows of a step, and of the validation split */
    ddp_window_sampler windows;
    ddp_val_windows val, val_part; /* the whole validation split; its first eval_tokens */
    ddp_text text_part;            /* the text with the validation split cut to that part */
    size_t *h_offsets;             /* (local_batch) */
    int32_t *h_tok, *h_tgt;        /* (max(local_batch, max_batch), ctx) host */
    int32_t *d_tok, *d_tgt;        /* the same on the device (the host arrays on the CPU) */
};

/* Where the small-batch gradient of the noise scale comes from (noise_scale.c). */
enum { DDP_GNS_NONE = 0, DDP_GNS_MICRO0 = 1, DDP_GNS_READY = 2 };
int ddp_trainer_gns_source(const ddp_trainer *t);
/* The ready callback for the backward of micro-batch k, one that sends: the reducer's, or
 * a wrapper that measures each range before handing it on. */
void ddp_trainer_gns_ready_fn(ddp_trainer *t, int k, ddp_grad_ready_fn *fn, void **ctx);
/* After micro-batch k's backward, before the reducer's finish(). */
ddp_status ddp_trainer_gns_after_backward(ddp_trainer *t, int k);
/* After the averaged gradient's norm (st->grad_norm): one more estimate. Not collective. */
ddp_status ddp_trainer_gns_observe(ddp_trainer *t, ddp_step_stats *st);
/* This rank's averages, for the logging step's all-reduce, and their sums over ranks
 * back (every rank then holds the mean; st gets the noise scale). */
void ddp_trainer_gns_pack(const ddp_trainer *t, double out[2]);
void ddp_trainer_gns_unpack(ddp_trainer *t, const double sums[2], ddp_step_stats *st);

/* Makes every rank's share of the noise scale's averages their mean (before a
 * checkpoint saves them). COLLECTIVE over ctrl when the noise scale is estimated. */
ddp_status ddp_trainer_gns_sync(ddp_trainer *t);

/* The batch schedule (batch_schedule.c). */
int ddp_trainer_adaptive(const ddp_trainer *t);
/* Whether the schedule fits the run (source, length, a noise scale to follow). */
ddp_status ddp_trainer_batch_check(const ddp_trainer *t);
/* The most samples a rank's share of a batch will hold. */
size_t ddp_trainer_max_local_batch(const ddp_trainer *t);
/* This step's learning rate: the schedule's, scaled to the batch. */
float ddp_trainer_batch_lr(const ddp_trainer *t);
/* Epochs done, with the fraction of the current one. */
double ddp_trainer_epoch_progress(const ddp_trainer *t);
/* Makes the batch micro x accum x world from the next step on (sampler, run length). */
ddp_status ddp_trainer_batch_set(ddp_trainer *t, int accum);
/* After a logged step: doubles the batch when the noise scale says so. Every rank
 * decides alike (the noise scale was just reduced). Not collective. */
ddp_status ddp_trainer_batch_adapt(ddp_trainer *t, const ddp_step_stats *st);
/* Resuming: the batch of a checkpoint's next step and the sampler's cursor. */
ddp_status ddp_trainer_batch_resume(ddp_trainer *t, size_t batch, uint64_t epoch, size_t step,
                                    size_t pos);
/* Sets the run length from the sampler's cursor, the batch and cfg.epochs. */
void ddp_trainer_batch_steps_left(ddp_trainer *t);

#endif
