/* The trainer's state, shared by the files of src/train/ (step, run loop, checkpoints). */
#ifndef DDP_TRAINER_IMPL_H
#define DDP_TRAINER_IMPL_H

#include <stdio.h>

#include "ddp/train.h"

struct ddp_trainer {
    ddp_train_config cfg;
    ddp_backend *backend;
    ddp_comm *comm; /* gradients */
    ddp_comm *ctrl; /* host-side control: agreement, counts, fingerprints */
    int rank, world;
    const ddp_dataset *train, *test;
    ddp_model *model;
    ddp_optim *optim;
    ddp_sampler sampler;
    ddp_reducer *reducer;
    int64_t skipped_steps; /* updates skipped for non-finite gradients */
    int checkpoints_ready; /* ddp_trainer_prepare_checkpoints has run (and agreed) */
    int grads_shared;      /* the gradients live in node-shared memory (share_gradients) */
    size_t num_params;
    int num_classes;
    size_t dim;
    int64_t step; /* steps completed */
    int64_t total_steps;
    uint64_t epoch; /* epoch of the last step */
    /* device copies of the data (or the host arrays themselves on the CPU backend) */
    float *d_train_x, *d_test_x;   /* (n, dim) */
    int32_t *d_train_y, *d_test_y; /* (n) */
    int owns_device_data;
    /* per-step buffers */
    int32_t *h_idx, *d_idx; /* (local_batch) */
    float *d_x;             /* (max_batch, dim) */
    int32_t *d_y;           /* (max_batch) */
    float *d_dlogits;       /* (max_batch, classes) */
    float *d_stats;         /* (2): loss sum, correct count */
    size_t max_batch;
    float *h_params; /* (num_params) host scratch for checks */
    FILE *metrics;
};

#endif
