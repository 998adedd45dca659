/*
 * Optimizers over a flat slice, the learning-rate schedule, and gradient clipping. The
 * arithmetic lives in the backend's fused kernels; this file owns the state buffers
 * and the step counter.
 */
#include <math.h>
#include <stdlib.h>

#include "ddp/optim.h"

const char *const ddp_optim_names[] = {DDP_OPTIM_KINDS(DDP_X_NAME) NULL};
const char *const ddp_sched_names[] = {DDP_SCHED_KINDS(DDP_X_NAME) NULL};

struct ddp_optim {
    ddp_backend *backend;
    ddp_optim_config cfg;
    size_t n;
    int64_t t;       /* steps taken */
    float *state[2]; /* SGD: momentum; AdamW: m, v (device, n each) */
    int n_states;
    /* The update runs over segments that alternate between with and without weight
     * decay: seg[i] starts segment i, nodecay[i] says which it is. */
    size_t *seg;
    int *nodecay;
    int n_seg;
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
        /* Zeroed pages taken on first touch: no pass over them here. */
        s = ddp_backend_alloc_pages(b, n * sizeof(float), (void **)&o->state[i]);
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
        ddp_backend_free_pages(o->backend, o->state[i], o->n * sizeof(float));
    free(o->seg);
    free(o->nodecay);
    free(o);
}

ddp_status ddp_optim_set_no_decay(ddp_optim *o, const size_t (*ranges)[2], int n) {
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (ranges[i][0] < at || ranges[i][1] > o->n || ranges[i][0] > o->n - ranges[i][1])
            return DDP_FAIL(DDP_ERR_INVALID_ARG,
                            "optimizer: no-decay range %d [%zu, +%zu) is out of order or outside "
                            "the %zu elements",
                            i, ranges[i][0], ranges[i][1], o->n);
        at = ranges[i][0] + ranges[i][1];
    }
    size_t *seg = malloc((2 * (size_t)n + 1) * sizeof *seg);
    int *nodecay = malloc((2 * (size_t)n + 1) * sizeof *nodecay);
    if (!seg || !nodecay) {
        free(seg);
        free(nodecay);
        return DDP_FAIL(DDP_ERR_NOMEM, "optimizer: out of memory");
    }
    int k = 0;
    at = 0;
    for (int i = 0; i < n; i++) {
        if (ranges[i][1] == 0) continue;
        if (ranges[i][0] > at) { /* decayed elements before this range */
            seg[k] = at;
            nodecay[k++] = 0;
        }
        seg[k] = ranges[i][0];
        nodecay[k++] = 1;
        at = ranges[i][0] + ranges[i][1];
    }
    if (at < o->n || k == 0) {
        seg[k] = at;
        nodecay[k++] = 0;
    }
    free(o->seg);
    free(o->nodecay);
    o->seg = seg;
    o->nodecay = nodecay;
    o->n_seg = k;
    return DDP_OK;
}

/* The update of elements [a, a + n) with weight decay wd. */
static ddp_status step_range(ddp_optim *o, float *params, const float *grads, float lr,
                             float gscale, size_t a, size_t n, float wd) {
    const ddp_optim_config *c = &o->cfg;
    if (c->kind == DDP_OPTIM_SGD)
        DDP_CHECK(ddp_backend_sgd_step(o->backend, params + a, grads + a, o->state[0] + a, n, lr,
                                       c->momentum, wd, c->nesterov, o->t == 0, gscale));
    else
        DDP_CHECK(ddp_backend_adamw_step(o->backend, params + a, grads + a, o->state[0] + a,
                                         o->state[1] + a, n, lr, c->beta1, c->beta2, c->eps, wd,
                                         o->t + 1, gscale));
    return DDP_OK;
}

ddp_status ddp_optim_step(ddp_optim *o, float *params, const float *grads, float lr, float gscale) {
    if (o->n_seg == 0) {
        DDP_CHECK(step_range(o, params, grads, lr, gscale, 0, o->n, o->cfg.weight_decay));
    } else {
        for (int i = 0; i < o->n_seg; i++) {
            size_t end = i + 1 < o->n_seg ? o->seg[i + 1] : o->n;
            float wd = o->nodecay[i] ? 0.0f : o->cfg.weight_decay;
            DDP_CHECK(step_range(o, params, grads, lr, gscale, o->seg[i], end - o->seg[i], wd));
        }
    }
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
