/*
 * Optimizers over a flat slice, the learning-rate schedule, and gradient clipping. The
 * arithmetic lives in the backend's fused kernels; this file owns the state buffers
 * and the step counter.
 */
#include <math.h>
#include <stdlib.h>

#include "ddp/optim.h"

struct ddp_optim {
    ddp_backend *backend;
    ddp_optim_config cfg;
    size_t n;
    int64_t t;       /* steps taken */
    float *state[2]; /* SGD: momentum; AdamW: m, v (device, n each) */
    int n_states;
};

ddp_status ddp_optim_create(ddp_backend *b, const ddp_optim_config *cfg, size_t n,
                            ddp_optim **out) {
    *out = NULL;
    if (cfg->kind != DDP_OPTIM_SGD && cfg->kind != DDP_OPTIM_ADAMW)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "unknown optimizer %d", (int)cfg->kind);
    if (cfg->weight_decay < 0.0f)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "weight decay %g is negative", cfg->weight_decay);
    if (cfg->kind == DDP_OPTIM_SGD && (cfg->momentum < 0.0f || cfg->momentum >= 1.0f))
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "SGD momentum %g must be in [0, 1)", cfg->momentum);
    if (cfg->kind == DDP_OPTIM_ADAMW &&
        (cfg->beta1 < 0.0f || cfg->beta1 >= 1.0f || cfg->beta2 < 0.0f || cfg->beta2 >= 1.0f ||
         cfg->eps <= 0.0f))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "AdamW betas (%g, %g) must be in [0, 1) and eps %g positive", cfg->beta1,
                        cfg->beta2, cfg->eps);
    ddp_optim *o = calloc(1, sizeof *o);
    if (!o) return DDP_FAIL(DDP_ERR_NOMEM, "optimizer: out of memory");
    o->backend = b;
    o->cfg = *cfg;
    o->n = n;
    o->n_states = cfg->kind == DDP_OPTIM_SGD ? 1 : 2;
    ddp_status s = DDP_OK;
    for (int i = 0; s == DDP_OK && i < o->n_states; i++) {
        s = ddp_backend_alloc(b, n * sizeof(float), (void **)&o->state[i]);
        if (s == DDP_OK) s = ddp_backend_zero(b, o->state[i], n * sizeof(float));
    }
    if (s != DDP_OK) {
        ddp_optim_free(o);
        DDP_CHECK(s);
    }
    *out = o;
    return DDP_OK;
}

void ddp_optim_free(ddp_optim *o) {
    if (!o) return;
    for (int i = 0; i < 2; i++)
        ddp_backend_dealloc(o->backend, o->state[i]);
    free(o);
}

ddp_status ddp_optim_step(ddp_optim *o, float *params, const float *grads, float lr, float gscale) {
    const ddp_optim_config *c = &o->cfg;
    if (c->kind == DDP_OPTIM_SGD)
        DDP_CHECK(ddp_backend_sgd_step(o->backend, params, grads, o->state[0], o->n, lr,
                                       c->momentum, c->weight_decay, c->nesterov, o->t == 0,
                                       gscale));
    else
        DDP_CHECK(ddp_backend_adamw_step(o->backend, params, grads, o->state[0], o->state[1], o->n,
                                         lr, c->beta1, c->beta2, c->eps, c->weight_decay, o->t + 1,
                                         gscale));
    o->t++;
    return DDP_OK;
}

int64_t ddp_optim_steps(const ddp_optim *o) { return o->t; }
void ddp_optim_set_steps(ddp_optim *o, int64_t steps) { o->t = steps; }
int ddp_optim_num_states(const ddp_optim *o) { return o->n_states; }
float *ddp_optim_state(ddp_optim *o, int i) {
    return i >= 0 && i < o->n_states ? o->state[i] : NULL;
}
size_t ddp_optim_size(const ddp_optim *o) { return o->n; }

float ddp_schedule_lr(const ddp_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->base_lr * (float)(step + 1) / (float)s->warmup_steps;
    if (s->kind == DDP_SCHED_CONSTANT) return s->base_lr;
    int64_t span = s->total_steps - s->warmup_steps;
    if (span <= 0) return s->base_lr;
    double progress = (double)(step - s->warmup_steps) / (double)span;
    if (progress > 1.0) progress = 1.0;
    double cosine = 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(s->min_lr + (s->base_lr - s->min_lr) * cosine);
}

ddp_status ddp_grad_norm(ddp_backend *b, const float *grads, size_t n, double *norm) {
    double sumsq;
    DDP_CHECK(ddp_backend_sumsq(b, grads, n, &sumsq));
    *norm = sqrt(sumsq);
    return DDP_OK;
}

float ddp_clip_coef(double norm, float max_norm) {
    /* A non-finite norm is left for the caller to report; scaling would spread it. */
    if (max_norm > 0.0f && isfinite(norm) && norm > (double)max_norm)
        return (float)((double)max_norm / (norm + 1e-6));
    return 1.0f;
}
