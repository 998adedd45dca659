/* The trainer's state, shared by the files of src/train/ (step, run loop, checkpoints,
 * data sources). */
#ifndef DDP_TRAINER_IMPL_H
#define DDP_TRAINER_IMPL_H

#include <stdio.h>

#include "ddp/sync.h"
#include "ddp/train.h"
#include "train/noise_scale.h"
#include "train/straggler.h"

/* Where the batches come from: a data source per ddp_data_kind (sources.c), labelled
 * samples (source_idx.c) or windows of a text (source_text.c). A source keeps its state in
 * a struct of its own that starts with ddp_source; the trainer holds only the pointer. */
typedef struct ddp_source_ops ddp_source_ops;
typedef struct {
    const ddp_source_ops *ops;
} ddp_source;

/* Where a source is in its data: what checkpoints save and the run loop reads. */
typedef struct {
    uint64_t epoch;         /* of the next step */
    size_t step;            /* the next step's place in its epoch */
    size_t pos;             /* samples of the epoch's order used before it */
    size_t steps_per_epoch; /* at the current batch */
    size_t n;               /* samples in an epoch; 0 where windows are drawn at random */
} ddp_cursor;

struct ddp_source_ops {
    const char *name;
    /* Its options (offsets into ddp_train_config), with their defaults. */
    const ddp_opt *opts;
    size_t n_opts;
    /* ---- the data (ddp_train_data_*) ---- */
    ddp_status (*prepare)(const ddp_train_config *cfg); /* may be NULL */
    ddp_status (*load)(const ddp_train_config *cfg, ddp_train_data *d);
    ddp_status (*synthetic)(const ddp_train_config *cfg, ddp_train_data *d); /* may be NULL */
    const char *(*data_name)(const ddp_train_config *cfg);
    /* ---- training; every function runs on every rank ---- */
    /* Checks the data against the configuration, fills in what the model takes from the
     * data (t->cfg.model: input size, classes, image geometry), sets t->max_batch (the
     * samples of the model's activations), sets up the cursor and puts the data where the
     * backend computes. Not collective. */
    ddp_status (*create)(ddp_trainer *t, const ddp_train_data *d, ddp_source **out);
    void (*free)(ddp_source *s, ddp_backend *b);
    /* Positions predicted per sample: 1, or the context length. */
    size_t (*positions)(const ddp_source *s);
    /* Loads this rank's share of the next global batch and advances the cursor; *epoch
     * gets the batch's epoch. */
    ddp_status (*next)(ddp_source *s, ddp_trainer *t, uint64_t *epoch);
    /* Micro-batch k of the batch loaded by next. */
    ddp_status (*micro_batch)(ddp_source *s, ddp_trainer *t, int k, ddp_batch *out);
    /* Runs the model over this rank's share of the evaluation set (all of it, or, with
     * full 0, the part cfg.eval_tokens allows), adding the loss sum, the correct
     * predictions and the predictions made to sums[0..2]. */
    ddp_status (*evaluate)(ddp_source *s, ddp_trainer *t, double sums[3], int full);
    ddp_cursor (*cursor)(const ddp_source *s);
    /* Moves the cursor so that the next batch is step `step` of epoch `epoch`. */
    ddp_status (*seek)(ddp_source *s, uint64_t epoch, size_t step);
    /* A batch that changes (--batch-schedule adaptive); NULL where the source keeps one
     * batch. set_batch: global_batch from the next step on; seek_pos: the next batch is
     * step `step` of epoch `epoch`, starting at sample pos of its order. */
    ddp_status (*set_batch)(ddp_source *s, size_t global_batch);
    ddp_status (*seek_pos)(ddp_source *s, uint64_t epoch, size_t step, size_t pos);
    /* Appends to buf what identifies the training data (sizes, a CRC), for the
     * fingerprint and the checkpoint settings. Returns the length written. */
    size_t (*identify)(const ddp_source *s, char *buf, size_t cap);
    /* An evaluation's result in the data's terms. */
    void (*eval_text)(double accuracy, double loss, char *buf, size_t cap);
};

/* The source of data kind `data` (sources.c), and its options (NULL, 0 when none). */
const ddp_source_ops *ddp_source_of(ddp_data_kind data);
const ddp_opt *ddp_source_options(ddp_data_kind data, size_t *n);

/* An evaluation's forward pass over batch (sources call it for each): the model's forward
 * in evaluation mode, adding to t->d_stats, after the sync's agreement where every rank
 * must run as many (ZeRO-3). Every rank's evaluation calls it. */
ddp_status ddp_trainer_eval_forward(ddp_trainer *t, const ddp_batch *batch);

/* Finishes a parameter all-gather in flight (--zero), so that the parameters may be read:
 * every function that reads them outside a training step calls it first. Not collective
 * itself, but completes a collective that every rank started. */
ddp_status ddp_trainer_settle(ddp_trainer *t);

struct ddp_trainer {
    ddp_train_config cfg;
    ddp_backend *backend;
    ddp_comm *comm; /* gradients */
    ddp_comm *ctrl; /* host-side control: agreement, counts, fingerprints */
    /* The model's own communicator, for layers that communicate in forward and backward
     * (synchronized batch norm); NULL when none does. */
    ddp_comm *model_comm;
    int rank, world;
    ddp_train_data data; /* what the source reads (the arrays are the caller's) */
    ddp_source *src;     /* the model kind's data source, with its state */
    ddp_model *model;
    ddp_optim *optim;
    ddp_sync *sync;        /* how the ranks keep gradients and parameters in step (the stage) */
    int64_t skipped_steps; /* updates skipped for non-finite gradients */
    int checkpoints_ready; /* ddp_trainer_prepare_checkpoints has run (and agreed) */
    size_t num_params;
    int64_t step;    /* steps completed */
    int64_t samples; /* samples trained on over all ranks (steps x their global batches) */
    int64_t total_steps;
    uint64_t epoch;        /* epoch of the last step */
    size_t max_batch;      /* samples the model's activations hold */
    float *d_stats;        /* (2) device: loss sum, correct count */
    float *h_params;       /* (num_params) host scratch for checks, made on first use */
    double peak_flops;     /* measured matrix-product FLOP/s of this rank's device (MFU) */
    double last_eval_loss; /* of the run's last evaluation; < 0: none */
    FILE *metrics;
    /* gradient noise scale (noise_scale.c) */
    ddp_gns_ema gns;
    double *d_gns_sq;   /* (1) device: this step's squares of this rank's micro-batch
                         * gradient, summed as backward reports them; read once per step */
    size_t gns_covered; /* elements summed into d_gns_sq so far */
    double gns_time;    /* seconds this step spent measuring it */
    /* the batch schedule (batch_schedule.c); cfg.global_batch and cfg.accum are the
     * current ones */
    size_t start_batch; /* cfg.global_batch as configured */
    int start_accum;
    int64_t batch_step;      /* the step after which the batch last changed */
    ddp_straggler straggler; /* the straggler report over the logging steps (run.c) */
    /* --compress auto (compress_auto.c): steps seen, sums of their timings, the
     * uncompressed steps' mean, the model's predictions, the verdict */
    struct {
        int seen, decided, compressing;
        double fwd, bwd, comm, exposed, step;
        double step_plain, pred_plain, pred_psgd;
    } autoc;
};

/* --compress auto: after each step; measures the first steps uncompressed, then some
 * compressed, and decides, every rank alike, whether PowerSGD goes on. COLLECTIVE over comm
 * and ctrl on the steps where it switches (the same steps on every rank). */
ddp_status ddp_trainer_compress_auto(ddp_trainer *t, const ddp_step_stats *st);

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

/* The progress line's part for the noise scale: " | B_simple 183.2" where it is resolved,
 * else "" (the metrics keep the raw estimates). */
void ddp_trainer_gns_text(const ddp_step_stats *st, char *buf, size_t cap);

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
