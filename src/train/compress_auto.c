/*
 * --compress auto: whether PowerSGD pays, predicted from what this run measures. The
 * first steps run uncompressed (the compressor idle); after AUTO_WARM unmeasured and
 * AUTO_MEASURED measured steps every rank takes the slowest rank's timings, the latency of
 * one all-reduce of a float on the gradients' communicator, and the compression work timed
 * on a copy of the last step's gradients, and predicts both step times:
 *
 *   step  = forward + backward + other + max(0, C - W)       (as it is: C the measured
 *                                                             collectives' time)
 *   step' = forward + backward + other + work + max(0, C' - W)   (compressed)
 *   C' = calls' x latency + bytes' x (C - calls x latency) / bytes
 *
 * the per-byte cost being the one this job's all-reduce showed (its algorithm, node
 * sharing and link included). W, the backward time that hides communication, is C minus
 * the measured exposed time where some was exposed, else the whole backward. The work runs
 * beside backward on a communication thread, but the cores are busy computing: it counts
 * in full. Compression is chosen where step' < 0.9 step: the margin that the model's error
 * (docs/perfmodel.md) leaves. Rank 0 prints the verdict with its numbers.
 */
#include <math.h>
#include <stdint.h>

#include "train/trainer_impl.h"

#define AUTO_WARM     1
#define AUTO_MEASURED 4
#define AUTO_MARGIN   0.9

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

static ddp_status decide(ddp_trainer *t) {
    double m = AUTO_MEASURED;
    /* The slowest rank's figures, the same on every rank. */
    double v[7] = {t->autoc.fwd / m, t->autoc.bwd / m,     t->autoc.comm / m, t->autoc.exposed / m,
                   t->autoc.step / m, 0.0, 0.0};
    ddp_compress_cost cost;
    ddp_comm *local = NULL;
    ddp_status s = ddp_comm_create(DDP_COMM_LOCAL, t->backend, &local);
    if (s == DDP_OK) s = ddp_sync_compress_cost(t->sync, local, &cost);
    ddp_comm_free(local);
    if (s == DDP_OK) v[5] = cost.psgd_work;
    /* Every rank reaches these on the same step. The gradients' communicator is free: no
     * gather may be in flight on it. */
    int failed;
    ddp_status agree = ddp_comm_agree(t->ctrl, s, &failed);
    DDP_CHECK(s);
    DDP_CHECK(agree);
    if (failed >= 0)
        return DDP_FAIL(DDP_ERR_REMOTE,
                        "rank %d failed to measure PowerSGD's work (its message says why)", failed);
    DDP_CHECK(ddp_trainer_settle(t));
    DDP_CHECK(latency(t->comm, &v[6]));
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, v, 7, DDP_F64, DDP_MAX));
    double fwd = v[0], bwd = v[1], comm = v[2], exposed = v[3], step = v[4], work = v[5];
    double alpha = v[6];
    double per_byte = cost.bytes > 0 ? fmax(0.0, comm - cost.buckets * alpha) / (double)cost.bytes
                                     : 0.0;
    double window = exposed > 0.0 ? fmax(0.0, comm - exposed) : bwd;
    double other = fmax(0.0, step - fwd - bwd - exposed);
    double c2 = cost.psgd_calls * alpha + (double)cost.psgd_bytes * per_byte;
    double pred = fwd + bwd + other + fmax(0.0, comm - window);
    double pred2 = fwd + bwd + other + work + fmax(0.0, c2 - window);
    int yes = cost.psgd_calls > 0 && pred2 < AUTO_MARGIN * pred;
    t->autoc.decided = 1;
    t->autoc.compressing = yes;
    if (yes) ddp_sync_compress_from(t->sync, t->step);
    if (t->rank == 0) {
        if (cost.psgd_calls == 0)
            ddp_log_info("--compress auto: not compressing (PowerSGD needs the CPU backend and "
                         "--zero 0 or 1)");
        else
            ddp_log_info(
                "--compress auto: %s. Measured over steps %d-%d (slowest rank): forward %.1f "
                "ms, backward %.1f ms, collectives %.1f ms (%.1f exposed) for %.2f MB in %d "
                "all-reduces, latency %.1f us, so %.1f MB/s; predicted step %.1f ms as it "
                "is (measured %.1f), %.1f ms with PowerSGD rank %d (%.3f MB in %d all-reduces, "
                "%.1f ms of compression work)",
                yes ? "compressing from the next step on" : "not compressing", AUTO_WARM + 1,
                AUTO_WARM + AUTO_MEASURED, fwd * 1e3, bwd * 1e3, comm * 1e3, exposed * 1e3,
                (double)cost.bytes / 1e6, cost.buckets, alpha * 1e6,
                per_byte > 0.0 ? 1e-6 / per_byte : INFINITY, pred * 1e3, step * 1e3, pred2 * 1e3,
                t->cfg.reducer.compress_rank, (double)cost.psgd_bytes / 1e6, cost.psgd_calls,
                work * 1e3);
    }
    return DDP_OK;
}

ddp_status ddp_trainer_compress_auto(ddp_trainer *t, const ddp_step_stats *st) {
    if (++t->autoc.seen <= AUTO_WARM) return DDP_OK;
    t->autoc.fwd += st->t_forward;
    t->autoc.bwd += st->t_backward;
    t->autoc.comm += st->t_allreduce;
    t->autoc.exposed += st->t_exposed;
    t->autoc.step += st->t_step;
    if (t->autoc.seen < AUTO_WARM + AUTO_MEASURED) return DDP_OK;
    DDP_CHECK(decide(t));
    return DDP_OK;
}
