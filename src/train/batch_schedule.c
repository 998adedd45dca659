/*
 * The batch schedule. Fixed: the global batch of the configuration throughout. Adaptive
 * (--batch-schedule adaptive): the global batch grows during training when the measured
 * gradient noise scale B_simple exceeds it, by doubling the accumulation steps, so that
 * the per-rank micro-batch and the memory stay the same, up to --max-batch. The
 * learning rate follows the batch (--lr-scaling linear, the rule of Goyal et al. 2017,
 * or sqrt), and its schedule (warm-up, cosine) runs in samples rather than steps:
 * position samples / B0 in a schedule of epochs x (n / B0) steps, B0 the starting batch.
 *
 * Decisions are taken on logging steps, the steps where the noise scale's averages are
 * reduced over ranks, so every rank decides alike, and at least one averaging window
 * (gns_every / (1 - gns_ema) steps) after the previous change. The sampler continues from where
 * the last batch ended in the epoch's order, so every sample is still used once per epoch.
 */
#include <math.h>

#include "train/trainer_impl.h"

int ddp_trainer_adaptive(const ddp_trainer *t) {
    return t->cfg.batch_schedule == DDP_BATCH_ADAPTIVE;
}

ddp_status ddp_trainer_batch_check(const ddp_trainer *t) {
    const ddp_train_config *c = &t->cfg;
    if (!ddp_trainer_adaptive(t)) return DDP_OK;
    if (!t->src->ops->set_batch)
        return DDP_FAIL(DDP_ERR_UNSUPPORTED,
                        "--batch-schedule adaptive trains on labelled samples (the MLP, the "
                        "CNN); a %s's windows are not supported yet",
                        t->src->ops->name);
    if (c->max_steps > 0)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--batch-schedule adaptive runs for --epochs, not --steps: the number of "
                        "steps depends on how the batch grows");
    if (!c->gns || (c->accum < 2 && t->world < 2))
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--batch-schedule adaptive needs the gradient noise scale, which needs a "
                        "gradient over a smaller batch than the global one: use %s",
                        c->gns ? "--accum 2 or more, or more ranks" : "it without --no-gns");
    size_t n = t->src->ops->cursor(t->src).n;
    if (c->max_global_batch < c->global_batch || c->max_global_batch > n)
        return DDP_FAIL(DDP_ERR_INVALID_ARG,
                        "--max-batch %zu must lie between --batch %zu and the %zu training "
                        "samples",
                        c->max_global_batch, c->global_batch, n);
    return DDP_OK;
}

size_t ddp_trainer_max_local_batch(const ddp_trainer *t) {
    size_t most = ddp_trainer_adaptive(t) ? t->cfg.max_global_batch : t->cfg.global_batch;
    return most / (size_t)t->world;
}

/* The factor on the learning rate at the current batch. */
static double lr_factor(const ddp_trainer *t) {
    double ratio = (double)t->cfg.global_batch / (double)t->start_batch;
    return t->cfg.lr_scaling == DDP_LR_SCALING_SQRT ? sqrt(ratio) : ratio;
}

float ddp_trainer_batch_lr(const ddp_trainer *t) {
    const ddp_train_config *c = &t->cfg;
    if (!ddp_trainer_adaptive(t)) return ddp_schedule_lr(&c->sched, t->step);
    int64_t at = t->samples / (int64_t)t->start_batch;
    return (float)(ddp_schedule_lr(&c->sched, at) * lr_factor(t));
}

double ddp_trainer_epoch_progress(const ddp_trainer *t) {
    ddp_cursor c = t->src->ops->cursor(t->src);
    if (!ddp_trainer_adaptive(t)) return (double)t->step / (double)c.steps_per_epoch;
    return (double)c.epoch + (double)c.pos / (double)c.n;
}

/* Steps left: the rest of the sampler's epoch and the remaining epochs at this batch. */
static int64_t steps_to_end(const ddp_trainer *t) {
    ddp_cursor s = t->src->ops->cursor(t->src);
    if (s.epoch >= (uint64_t)t->cfg.epochs) return 0;
    int64_t rest = (int64_t)((s.n - s.pos) / t->cfg.global_batch);
    int64_t epochs = (int64_t)t->cfg.epochs - 1 - (int64_t)s.epoch;
    return rest + epochs * (int64_t)s.steps_per_epoch;
}

void ddp_trainer_batch_steps_left(ddp_trainer *t) { t->total_steps = t->step + steps_to_end(t); }

ddp_status ddp_trainer_batch_set(ddp_trainer *t, int accum) {
    ddp_train_config *c = &t->cfg;
    c->accum = accum;
    c->global_batch = c->micro_batch * (size_t)accum * (size_t)t->world;
    DDP_CHECK(t->src->ops->set_batch(t->src, c->global_batch));
    ddp_trainer_batch_steps_left(t);
    return DDP_OK;
}

ddp_status ddp_trainer_batch_resume(ddp_trainer *t, size_t batch, uint64_t epoch, size_t step,
                                    size_t pos) {
    /* The batch grows by doublings of the accumulation steps: batch / start batch of
     * them, on any number of ranks that splits the starting batch. */
    size_t ratio = batch / t->start_batch;
    if (batch % t->start_batch != 0 || batch > t->cfg.max_global_batch ||
        (ratio & (ratio - 1)) != 0)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "the checkpoint's batch %zu is not the starting batch %zu doubled, up to "
                        "--max-batch %zu: was it written with other batch options?",
                        batch, t->start_batch, t->cfg.max_global_batch);
    DDP_CHECK(ddp_trainer_batch_set(t, t->start_accum * (int)ratio));
    DDP_CHECK(t->src->ops->seek_pos(t->src, epoch, step, pos));
    return DDP_OK;
}

ddp_status ddp_trainer_batch_adapt(ddp_trainer *t, const ddp_step_stats *st) {
    const ddp_train_config *c = &t->cfg;
    if (!ddp_trainer_adaptive(t)) return DDP_OK;
    if (!st->gns_valid || !(st->gns_b_simple > (double)c->global_batch)) return DDP_OK;
    if (2 * c->global_batch > c->max_global_batch) return DDP_OK;
    double window = (double)c->gns_every / (1.0 - (double)c->gns_ema);
    if ((double)(t->step - t->batch_step) < window) return DDP_OK;
    size_t from = c->global_batch;
    DDP_CHECK(ddp_trainer_batch_set(t, 2 * c->accum));
    t->batch_step = t->step;
    if (!c->quiet)
        ddp_log_info("step %lld: B_simple %.4g > batch %zu: batch %zu -> %zu (%d micro-batches "
                     "of %zu per rank), learning rate x %.3g of the starting one",
                     (long long)t->step, st->gns_b_simple, from, from, c->global_batch, c->accum,
                     c->micro_batch, lr_factor(t));
    return DDP_OK;
}
