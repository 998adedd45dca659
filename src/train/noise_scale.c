/*
 * The gradient noise scale: the estimator of McCandlish et al. (2018, appendix A.1) and
 * the trainer's hooks that feed it, at no extra pass over memory that stays cold and no
 * extra collective.
 *
 * Two squared norms are needed each step. The large batch is the global batch B: the
 * averaged gradient's squared norm is grad_norm^2, which the step computes anyway for
 * logging and clipping. The small batch is the micro-batch b = B / (accum x world):
 *  - with accumulation, the buffer after micro-batch 0's backward holds micro-batch 0's
 *    gradient alone (later ones add to it), so one sum of squares over it then;
 *  - without, on several ranks, the last (only) backward hands every range of the buffer
 *    to the reducer as soon as it is final; a wrapper around the reducer's ready callback
 *    sums its squares first, while it is still in cache and before the all-reduce
 *    overwrites it with the sum over ranks;
 *  - on one rank without accumulation both batches are the same and nothing is estimated.
 * Each rank keeps moving averages of the estimates made from its own small-batch norm;
 * they are linear in it, so their mean over ranks is exactly the moving average of the
 * estimates from the rank-averaged small-batch norm. That mean rides along with the loss
 * in the all-reduce of logging steps (two more doubles), after which every rank holds the
 * same averages again.
 */
#include <math.h>

#include "train/trainer_impl.h"

void ddp_gns_estimate(double b_small, double small_sq, double b_big, double big_sq, double *g2,
                      double *trace) {
    *g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small);
    *trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big);
}

void ddp_gns_ema_init(ddp_gns_ema *e, double beta) {
    e->beta = beta;
    e->g2 = e->tr = 0.0;
    e->n = 0;
}

void ddp_gns_ema_add(ddp_gns_ema *e, double g2, double trace) {
    e->g2 = e->beta * e->g2 + (1.0 - e->beta) * g2;
    e->tr = e->beta * e->tr + (1.0 - e->beta) * trace;
    e->n++;
}

void ddp_gns_ema_read(const ddp_gns_ema *e, double *g2, double *trace) {
    double corr = e->n > 0 ? 1.0 - pow(e->beta, (double)e->n) : 0.0;
    *g2 = corr > 0.0 ? e->g2 / corr : 0.0;
    *trace = corr > 0.0 ? e->tr / corr : 0.0;
}

double ddp_gns_b_simple(const ddp_gns_ema *e) {
    double g2, tr;
    ddp_gns_ema_read(e, &g2, &tr);
    if (e->n == 0 || !(g2 > 0.0)) return NAN;
    return tr / g2;
}

/* ---- the trainer's hooks ------------------------------------------------------------ */

int ddp_trainer_gns_source(const ddp_trainer *t) {
    if (!t->cfg.gns || t->cfg.reducer.skip) return DDP_GNS_NONE;
    if (t->cfg.accum > 1) return DDP_GNS_MICRO0;
    return t->world > 1 ? DDP_GNS_READY : DDP_GNS_NONE;
}

/* Where this step's small-batch gradient is measured: every gns_every-th step only (the
 * step's index is the same on every rank, and does not change until the step ends). */
static int measured_now(const ddp_trainer *t) {
    if (t->step % t->cfg.gns_every != 0) return DDP_GNS_NONE;
    return ddp_trainer_gns_source(t);
}

/* Adds the squares of n gradients at x to the step's sum on the device: queued, no host
 * wait (ddp_trainer_gns_observe reads the sum once, after the step's norm). */
static ddp_status measure(ddp_trainer *t, const float *x, size_t n) {
    double t0 = ddp_time_now();
    DDP_CHECK(ddp_backend_sumsq_add(t->backend, x, n, t->d_gns_sq));
    t->gns_time += ddp_time_now() - t0;
    t->gns_covered += n;
    return DDP_OK;
}

/* A ddp_grad_ready_fn (ctx = the trainer): adds the squares of the range, then hands it
 * to the reducer, which may start all-reducing it at once (queued after the sum). */
static ddp_status gns_ready(void *ctx, size_t offset, size_t count) {
    ddp_trainer *t = ctx;
    DDP_CHECK(measure(t, ddp_model_grads(t->model) + offset, count));
    DDP_CHECK(ddp_sync_grad_ready(t->sync, offset, count));
    return DDP_OK;
}

/* The micro-batch whose gradient this rank measures: the first, or the only one. */
static int measured_micro_batch(const ddp_trainer *t, int src) {
    return src == DDP_GNS_MICRO0 ? 0 : t->cfg.accum - 1;
}

/* Whether the micro-batch's ranges are measured as backward reports them: without
 * accumulation (the reducer then overwrites them with the sums over ranks), and where every
 * micro-batch is sent as backward goes and the buffer's pages go back (--zero 2 and 3), so
 * that nothing is left to measure afterwards. */
static int measured_in_flight(const ddp_trainer *t, int src) {
    return src == DDP_GNS_READY ||
           (src == DDP_GNS_MICRO0 && ddp_sync_sends_each_micro_batch(t->sync));
}

void ddp_trainer_gns_ready_fn(ddp_trainer *t, int k, ddp_grad_ready_fn *fn, void **ctx) {
    int src = measured_now(t);
    if (src != DDP_GNS_NONE && measured_in_flight(t, src) && k == measured_micro_batch(t, src)) {
        *fn = gns_ready;
        *ctx = t;
    } else {
        *fn = ddp_sync_grad_ready;
        *ctx = t->sync;
    }
}

ddp_status ddp_trainer_gns_after_backward(ddp_trainer *t, int k) {
    int src = measured_now(t);
    if (src == DDP_GNS_NONE) return DDP_OK;
    const float *grads = ddp_model_grads(t->model);
    if (!measured_in_flight(t, src)) {
        if (k == 0) DDP_CHECK(measure(t, grads, t->num_params));
        return DDP_OK;
    }
    if (k != measured_micro_batch(t, src) || t->gns_covered == t->num_params) return DDP_OK;
    /* Every range the model did not report is sent by the reducer's finish(); without
     * overlap nothing has been sent yet and the buffer is still this rank's own. */
    if (!ddp_sync_started_sending(t->sync)) {
        DDP_CHECK(measure(t, grads, t->num_params));
        return DDP_OK;
    }
    return DDP_FAIL(DDP_ERR_INTERNAL,
                    "noise scale: backward reported %zu of %zu gradients ready and the "
                    "reducer has started sending; the rest cannot be measured (use --no-gns)",
                    t->gns_covered, t->num_params);
}

ddp_status ddp_trainer_gns_observe(ddp_trainer *t, ddp_step_stats *st) {
    int src = measured_now(t);
    st->t_gns = t->gns_time;
    t->gns_covered = 0;
    t->gns_time = 0.0;
    if (src == DDP_GNS_NONE) return DDP_OK;
    /* One read per measured step, after the step's norm has waited for the device. */
    double local = 0.0;
    DDP_CHECK(ddp_backend_copy(t->backend, &local, t->d_gns_sq, sizeof local, DDP_COPY_D2H));
    DDP_CHECK(ddp_backend_zero(t->backend, t->d_gns_sq, sizeof(double)));
    if (st->skipped) return DDP_OK;
    /* The buffer holds gradients summed over samples and scaled by 1 / B: the micro-batch's
     * mean gradient is the buffer times B / b. */
    double B = (double)t->cfg.global_batch, b = (double)t->cfg.micro_batch;
    double small_sq = local * (B / b) * (B / b), big_sq = st->grad_norm * st->grad_norm;
    double g2, tr;
    ddp_gns_estimate(b, small_sq, B, big_sq, &g2, &tr);
    if (!isfinite(g2) || !isfinite(tr)) return DDP_OK;
    ddp_gns_ema_add(&t->gns, g2, tr);
    st->gns_b_small = b;
    st->gns_b_big = B;
    st->gns_small_sq = small_sq;
    st->gns_big_sq = big_sq;
    return DDP_OK;
}

void ddp_trainer_gns_pack(const ddp_trainer *t, double out[2]) {
    out[0] = t->gns.g2;
    out[1] = t->gns.tr;
}

void ddp_trainer_gns_unpack(ddp_trainer *t, const double sums[2], ddp_step_stats *st) {
    if (ddp_trainer_gns_source(t) == DDP_GNS_NONE || t->gns.n == 0) return;
    /* Every rank holds the same averages from here on. */
    t->gns.g2 = sums[0] / (double)t->world;
    t->gns.tr = sums[1] / (double)t->world;
    ddp_gns_ema_read(&t->gns, &st->gns_g2, &st->gns_trace);
    st->gns_b_simple = ddp_gns_b_simple(&t->gns);
    st->gns_valid = 1;
}

ddp_status ddp_trainer_gns_sync(ddp_trainer *t) {
    if (ddp_trainer_gns_source(t) == DDP_GNS_NONE) return DDP_OK;
    double v[2];
    ddp_trainer_gns_pack(t, v);
    /* The caller's every rank reaches this at the same step. */
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, v, 2, DDP_F64, DDP_SUM));
    t->gns.g2 = v[0] / (double)t->world;
    t->gns.tr = v[1] / (double)t->world;
    return DDP_OK;
}

void ddp_trainer_gns_text(const ddp_step_stats *st, char *buf, size_t cap) {
    /* Near convergence the estimate of |G|^2 can fall to zero or below: the noise then
     * swamps the signal that the batches can resolve, and B_simple is beyond measurement;
     * the line leaves it out rather than fill half its width with why. */
    buf[0] = '\0';
    if (st->gns_valid && isfinite(st->gns_b_simple))
        snprintf(buf, cap, " | B_simple %.4g", st->gns_b_simple);
}
