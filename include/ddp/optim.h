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

#define DDP_OPTIM_KINDS(X) X(DDP_OPTIM_SGD, "sgd") X(DDP_OPTIM_ADAMW, "adamw")
typedef enum { DDP_OPTIM_KINDS(DDP_X_VALUE) DDP_OPTIM_KIND_COUNT } ddp_optim_kind;
extern const char *const ddp_optim_names[];

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
/* Leaves the given ranges [offset, offset + count) (ascending, disjoint, within the
 * optimizer's n elements) out of weight decay: biases, normalization parameters and
 * position embeddings, as PyTorch users set it up with parameter groups. Replaces any
 * earlier setting; by default weight decay applies to every element. */
ddp_status ddp_optim_set_no_decay(ddp_optim *o, const size_t (*ranges)[2], int n);
/* One update of params (n) from gscale * grads (n) at learning rate lr; gscale is the
 * clipping coefficient (ddp_clip_coef), applied inside the update instead of in a pass of
 * its own. Not collective: every rank applies it to identical inputs and gets identical
 * outputs. */
ddp_status ddp_optim_step(ddp_optim *o, float *params, const float *grads, float lr, float gscale);
/* Steps taken so far. */
int64_t ddp_optim_steps(const ddp_optim *o);
/* State buffers (device), for checkpoints: SGD has 1 (momentum), AdamW 2 (m, v). */
int ddp_optim_num_states(const ddp_optim *o);
float *ddp_optim_state(ddp_optim *o, int i);
size_t ddp_optim_size(const ddp_optim *o);
void ddp_optim_set_steps(ddp_optim *o, int64_t steps);

#define DDP_SCHED_KINDS(X) X(DDP_SCHED_CONSTANT, "constant") X(DDP_SCHED_COSINE, "cosine")
typedef enum { DDP_SCHED_KINDS(DDP_X_VALUE) DDP_SCHED_KIND_COUNT } ddp_sched_kind;
extern const char *const ddp_sched_names[];

typedef struct {
    ddp_sched_kind kind;
    float base_lr;
    float min_lr;         /* cosine: the floor reached at total_steps */
    int64_t warmup_steps; /* linear from base_lr/warmup to base_lr */
    int64_t total_steps;
} ddp_schedule;

/* Learning rate for 0-based step `step`. */
float ddp_schedule_lr(const ddp_schedule *s, int64_t step);

/* The L2 norm of grads (n) in one pass, into a host double. Synchronizes the backend. A
 * NaN or infinity anywhere makes the norm non-finite: the same pass serves the non-finite
 * check, the logged norm and the clipping coefficient. */
ddp_status ddp_grad_norm(ddp_backend *b, const float *grads, size_t n, double *norm);
/* The factor that brings a gradient of L2 norm `norm` down to max_norm: max_norm /
 * (norm + 1e-6) when max_norm > 0 and norm exceeds it, else 1 (also for a non-finite
 * norm, which the caller reports instead of spreading it). As PyTorch's clip_grad_norm_. */
float ddp_clip_coef(double norm, float max_norm);

#ifdef __cplusplus
}
#endif
#endif
