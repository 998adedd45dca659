/*
 * optim: optimizers over a flat slice of parameters, learning-rate schedules, and
 * gradient-norm clipping. An optimizer owns state for exactly the elements it was
 * created for, so that with optimizer-state sharding each rank creates one for its own
 * slice and nothing here assumes it holds the whole model.
 */
#ifndef DDP_OPTIM_H
#define DDP_OPTIM_H

#include "ddp/backend.h"
#include "ddp/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DDP_OPTIM_SGD = 0, DDP_OPTIM_ADAMW } ddp_optim_kind;

typedef struct {
    ddp_optim_kind kind;
    float momentum;          /* SGD */
    int nesterov;            /* SGD */
    float beta1, beta2, eps; /* AdamW */
    float weight_decay;
} ddp_optim_config;

typedef struct ddp_optim ddp_optim;

ddp_status ddp_optim_create(ddp_backend *b, const ddp_optim_config *cfg, size_t n, ddp_optim **out);
void ddp_optim_free(ddp_optim *o);
/* One update of params (n) from grads (n) at learning rate lr. Not collective: every
 * rank applies it to identical inputs and gets identical outputs. */
ddp_status ddp_optim_step(ddp_optim *o, float *params, const float *grads, float lr);
/* Steps taken so far. */
int64_t ddp_optim_steps(const ddp_optim *o);
/* State buffers (device), for checkpoints: SGD has 1 (momentum), AdamW 2 (m, v). */
int ddp_optim_num_states(const ddp_optim *o);
float *ddp_optim_state(ddp_optim *o, int i);
size_t ddp_optim_size(const ddp_optim *o);
void ddp_optim_set_steps(ddp_optim *o, int64_t steps);

typedef enum { DDP_SCHED_CONSTANT = 0, DDP_SCHED_COSINE } ddp_sched_kind;

typedef struct {
    ddp_sched_kind kind;
    float base_lr;
    float min_lr;         /* cosine: the floor reached at total_steps */
    int64_t warmup_steps; /* linear from base_lr/warmup to base_lr */
    int64_t total_steps;
} ddp_schedule;

/* Learning rate for 0-based step `step`. */
float ddp_schedule_lr(const ddp_schedule *s, int64_t step);

/* Scales grads so that their L2 norm is at most max_norm (when max_norm > 0) and
 * returns the norm before clipping. Synchronizes the backend. */
ddp_status ddp_clip_grad_norm(ddp_backend *b, float *grads, size_t n, float max_norm, double *norm);

#ifdef __cplusplus
}
#endif
#endif
