/*
 * --compress auto: whether PowerSGD pays, decided from this run's own steps. The first
 * steps run uncompressed (the compressor idle): after AUTO_WARM unmeasured steps,
 * AUTO_MEASURED measured ones. Then the performance model predicts the compressed step
 * from them, and the next steps run compressed (AUTO_WARM unmeasured, AUTO_MEASURED
 * measured). Every rank takes the slowest rank's figures (so all decide alike), and the
 * run keeps compressing where the compressed steps took under AUTO_MARGIN of the
 * uncompressed ones; otherwise it goes back, and the next all-reduce carries the error
 * feedback that the compressed steps had not sent yet, so nothing is lost either way.
 *
 * The model (the alpha-beta terms of docs/perfmodel.md with this job's own rates):
 *   step  = forward + backward + other + max(0, C - W)       (C: the measured collectives)
 *   step' = forward + backward + other + work + max(0, C' - W)
 *   C' = calls' x latency + bytes' x (C - calls x latency) / bytes
 * where latency is one float's all-reduce, the work is timed on a copy of the gradients,
 * and W, the backward time that hides communication, is C minus the exposed time where
 * some was exposed, else the whole backward. It is printed beside the measured steps: where
 * ranks share cores, each of the compressed collectives waits for ranks that the scheduler
 * has not run, which a latency measured between steps does not see, and the measurement
 * decides.
 */
#include <math.h>
#include <stdint.h>

#include "train/trainer_impl.h"

#define AUTO_WARM     1
#define AUTO_MEASURED 4
#define AUTO_MARGIN   0.95

/* Seconds per all-reduce of one float on c, the best of a few (every rank calls it). */
static ddp_status latency(ddp_comm *c, double *out) {
    float x = 0.0f;
    double best = INFINITY;
    for (int i = 0; i < 12; i++) {
        double t0 = ddp_time_now();
        DDP_CHECK(ddp_comm_allreduce(c, &x, 1, DDP_F32, DDP_SUM));
        double dt = ddp_time_now() - t0;
        if (i >= 2 && dt < best) best = dt;
    }
    *out = best;
    return DDP_OK;
}

/* The slowest rank's means of the measured steps: forward, backward, collectives, exposed,
 * step. COLLECTIVE over ctrl. */
static ddp_status slowest(ddp_trainer *t, double v[5]) {
    double m = AUTO_MEASURED;
    v[0] = t->autoc.fwd / m;
    v[1] = t->autoc.bwd / m;
    v[2] = t->autoc.comm / m;
    v[3] = t->autoc.exposed / m;
    v[4] = t->autoc.step / m;
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, v, 5, DDP_F64, DDP_MAX));
    t->autoc.fwd = t->autoc.bwd = t->autoc.comm = t->autoc.exposed = t->autoc.step = 0.0;
    return DDP_OK;
}

/* After the uncompressed steps: the prediction, and the compressed steps begin. */
static ddp_status predict(ddp_trainer *t) {
    double v[5];
    DDP_CHECK(slowest(t, v));
    t->autoc.step_plain = v[4];
    ddp_compress_cost cost;
    ddp_comm *local = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_LOCAL, t->backend, &local);
    if (s == DDP_OK) s = ddp_sync_compress_cost(t->sync, local, &cost);
    ddp_comm_free(local);
    int failed;
    ddp_status agree = ddp_comm_agree(t->ctrl, s, &failed);
    DDP_CHECK(s);
    DDP_CHECK(agree);
    if (failed >= 0)
        return DDP_FAIL(DDP_ERR_REMOTE,
                        "rank %d failed to measure PowerSGD's work (its message says why)", failed);
    if (cost.psgd_calls == 0) {
        t->autoc.decided = 1;
        if (t->rank == 0)
            ddp_log_info("--compress auto: not compressing (PowerSGD needs the CPU backend and "
                         "--zero 0 or 1)");
        return DDP_OK;
    }
    /* Every rank reaches this on the same step; no gather may be in flight on the
     * gradients' communicator. */
    DDP_CHECK(ddp_trainer_settle(t));
    double w[2] = {cost.psgd_work, 0.0};
    DDP_CHECK(latency(t->comm, &w[1]));
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, w, 2, DDP_F64, DDP_MAX));
    double fwd = v[0], bwd = v[1], comm = v[2], exposed = v[3], step = v[4];
    double work = w[0], alpha = w[1];
    double per_byte = fmax(0.0, comm - cost.buckets * alpha) / (double)cost.bytes;
    double window = exposed > 0.0 ? fmax(0.0, comm - exposed) : bwd;
    double other = fmax(0.0, step - fwd - bwd - exposed);
    double c2 = cost.psgd_calls * alpha + (double)cost.psgd_bytes * per_byte;
    t->autoc.pred_plain = fwd + bwd + other + fmax(0.0, comm - window);
    t->autoc.pred_psgd = fwd + bwd + other + work + fmax(0.0, c2 - window);
    if (t->rank == 0)
        ddp_log_info(
            "--compress auto: steps %d-%d uncompressed (slowest rank): forward %.1f ms, "
            "backward %.1f ms, collectives %.1f ms (%.1f exposed) for %.2f MB in %d "
            "all-reduces, latency %.1f us, so %.1f MB/s. Predicted step %.1f ms as it is "
            "(measured %.1f), %.1f ms with PowerSGD rank %d (%.3f MB in %d all-reduces, %.1f ms "
            "of compression work); measuring compressed steps %lld-%lld",
            AUTO_WARM + 1, AUTO_WARM + AUTO_MEASURED, fwd * 1e3, bwd * 1e3, comm * 1e3,
            exposed * 1e3, (double)cost.bytes / 1e6, cost.buckets, alpha * 1e6,
            per_byte > 0.0 ? 1e-6 / per_byte : INFINITY, t->autoc.pred_plain * 1e3, step * 1e3,
            t->autoc.pred_psgd * 1e3, t->cfg.reducer.compress_rank, (double)cost.psgd_bytes / 1e6,
            cost.psgd_calls, work * 1e3, (long long)t->step + AUTO_WARM + 1,
            (long long)t->step + AUTO_WARM + AUTO_MEASURED);
    ddp_sync_compress_from(t->sync, t->step);
    return DDP_OK;
}

/* After the compressed steps: the verdict. */
static ddp_status decide(ddp_trainer *t) {
    double v[5];
    DDP_CHECK(slowest(t, v));
    double plain = t->autoc.step_plain, psgd = v[4];
    int yes = psgd < AUTO_MARGIN * plain;
    t->autoc.decided = 1;
    t->autoc.compressing = yes;
    if (!yes) ddp_sync_compress_from(t->sync, INT64_MAX);
    if (t->rank == 0)
        ddp_log_info("--compress auto: %s: a step took %.1f ms compressed, %.1f ms as it is "
                     "(the model predicted %.1f and %.1f)",
                     yes ? "compressing from here on" : "not compressing", psgd * 1e3, plain * 1e3,
                     t->autoc.pred_psgd * 1e3, t->autoc.pred_plain * 1e3);
    return DDP_OK;
}

ddp_status ddp_trainer_compress_auto(ddp_trainer *t, const ddp_step_stats *st) {
    if (t->world == 1) {
        /* Nothing crosses a wire. */
        t->autoc.decided = 1;
        if (t->rank == 0) ddp_log_info("--compress auto: not compressing (one rank)");
        return DDP_OK;
    }
    int phase = t->autoc.seen++ % (AUTO_WARM + AUTO_MEASURED);
    if (phase < AUTO_WARM) return DDP_OK;
    t->autoc.fwd += st->t_forward;
    t->autoc.bwd += st->t_backward;
    t->autoc.comm += st->t_allreduce;
    t->autoc.exposed += st->t_exposed;
    t->autoc.step += st->t_step;
    if (phase < AUTO_WARM + AUTO_MEASURED - 1) return DDP_OK;
    if (t->autoc.seen == AUTO_WARM + AUTO_MEASURED)
        DDP_CHECK(predict(t));
    else
        DDP_CHECK(decide(t));
    return DDP_OK;
}
