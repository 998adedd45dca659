/*
 * The run loop: steps, progress lines and metrics on rank 0, evaluation at epoch ends
 * (or every eval_every steps), and the periodic parameter sync check.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>

#include "ddp/watchdog.h"
#include "train/checkpoint_impl.h"
#include "train/trainer_impl.h"

static void format_eta(double seconds, char *buf, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60)
        snprintf(buf, cap, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, cap, "%lds", s);
}

/* JSON has no NaN or infinity (jansson's json_real refuses them): those become null, so a
 * diverging run still gets its records. */
static json_t *number(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static ddp_status write_metrics(ddp_trainer *t, const ddp_step_stats *st, double samples_per_s,
                                double accuracy) {
    json_t *o = json_object();
    if (!o) return DDP_FAIL(DDP_ERR_INTERNAL, "metrics: could not build the JSON record");
    json_object_set_new(o, "step", json_integer((json_int_t)st->step));
    json_object_set_new(o, "epoch", json_integer((json_int_t)st->epoch));
    const struct {
        const char *key;
        double value;
    } nums[] = {{"loss", st->loss},
                {"lr", (double)st->lr},
                {"samples_per_s", samples_per_s},
                {"t_forward", st->t_forward},
                {"t_backward", st->t_backward},
                {"t_allreduce", st->t_allreduce},
                {"t_optim", st->t_optim},
                {"t_step", st->t_step},
                {"t_exposed_comm", st->t_exposed},
                {"t_comm_cpu", st->t_comm_cpu},
                {"grad_norm", st->grad_norm}};
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++)
        json_object_set_new(o, nums[i].key, number(nums[i].value));
    if (t->skipped_steps > 0)
        json_object_set_new(o, "skipped_steps", json_integer(t->skipped_steps));
    if (accuracy >= 0.0) json_object_set_new(o, "test_accuracy", json_real(accuracy));
    int rc = json_dumpf(o, t->metrics, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(o);
    if (rc != 0 || fputc('\n', t->metrics) == EOF || fflush(t->metrics) != 0)
        return DDP_FAIL(DDP_ERR_IO, "metrics: could not write to %s", t->cfg.metrics_path);
    return DDP_OK;
}

ddp_status ddp_trainer_run(ddp_trainer *t, double *final_accuracy) {
    const ddp_train_config *c = &t->cfg;
    if (c->metrics_path[0] && t->rank == 0 && !t->metrics) {
        /* A resumed run continues the records of the run it resumes. */
        t->metrics = fopen(c->metrics_path, t->step > 0 ? "a" : "w");
        if (!t->metrics)
            return DDP_FAIL(DDP_ERR_IO, "--metrics %s: cannot open for writing", c->metrics_path);
    }
    DDP_CHECK(ddp_trainer_prepare_checkpoints(t));
    size_t spe = t->sampler.steps_per_epoch;
    if (!c->quiet)
        ddp_log_info("training %s (%zu parameters) on %d rank(s), %s backend, %s comm: batch %zu "
                     "= %zu micro x %d accum x %d ranks, %lld steps (%zu per epoch; the last %zu "
                     "samples of each epoch are dropped)",
                     ddp_model_describe(t->model), t->num_params, t->world,
                     ddp_backend_name(t->backend), ddp_comm_name(t->comm), c->global_batch,
                     c->micro_batch, c->accum, t->world, (long long)t->total_steps, spe,
                     t->train->n - spe * c->global_batch);
    double accuracy = -1.0, loss;
    double window_start = ddp_time_now(), run_start = window_start;
    int64_t window_steps = 0, first_step = t->step;
    while (t->step < t->total_steps) {
        ddp_step_stats st;
        ddp_watchdog_set_step(t->step + 1); /* named if a collective of this step hangs */
        DDP_CHECK(ddp_trainer_step(t, &st));
        window_steps++;
        int epoch_end = spe > 0 && t->step % (int64_t)spe == 0;
        int eval_now = (c->eval_every > 0 ? t->step % c->eval_every == 0 : epoch_end) ||
                       t->step == t->total_steps;
        double step_accuracy = -1.0;
        if (c->check_sync > 0 && t->step % c->check_sync == 0) DDP_CHECK(ddp_trainer_check_sync(t));
        if (eval_now) {
            DDP_CHECK(ddp_trainer_evaluate(t, &accuracy, &loss));
            step_accuracy = accuracy;
            if (!c->quiet)
                ddp_log_info("eval step %lld epoch %.2f: test accuracy %.4f, test loss %.4f",
                             (long long)t->step, (double)t->step / (double)spe, accuracy, loss);
        }
        if (st.logged) { /* the loss was reduced over all ranks (and may be NaN or inf) */
            double now = ddp_time_now();
            double sps = (double)window_steps * (double)c->global_batch / (now - window_start);
            double eta = (now - run_start) / (double)(t->step - first_step) *
                         (double)(t->total_steps - t->step);
            char eta_s[32];
            format_eta(eta, eta_s, sizeof eta_s);
            if (!c->quiet)
                ddp_log_info("step %lld/%lld | epoch %.2f | loss %.4f | lr %.5f | %.0f samples/s | "
                             "left %s",
                             (long long)t->step, (long long)t->total_steps,
                             (double)t->step / (double)spe, st.loss, st.lr, sps, eta_s);
            if (t->metrics) DDP_CHECK(write_metrics(t, &st, sps, step_accuracy));
            window_start = now;
            window_steps = 0;
        }
        DDP_CHECK(ddp_checkpoint_run_step(t));
    }
    if (final_accuracy) *final_accuracy = accuracy;
    return DDP_OK;
}
