/*
 * The run loop: steps, progress lines and metrics on rank 0, evaluation at epoch ends
 * (or every eval_every steps), and the periodic parameter sync check.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* What one logged step reports besides its stats. */
typedef struct {
    double samples_per_s;
    double tokens_per_s; /* samples/s x positions (token models) */
    double mfu;          /* model FLOPs utilisation, 0..1; < 0 when not measured */
    double train_s;      /* seconds of training since the run (or resume) started,
                            evaluations excluded */
    int evaluated;       /* this step ran an evaluation: */
    double eval_loss;    /* mean loss per prediction */
    double eval_accuracy;
    /* (world, RANK_STATS) each rank's peak resident memory so far (MiB), and its mean forward,
     * backward, data and step seconds over the timed steps since the last logging step */
    const double *ranks;
    int straggler; /* the straggler report names a rank (trainer's t->straggler) */
} step_report;

enum { RANK_RSS = 0, RANK_FORWARD, RANK_BACKWARD, RANK_DATA, RANK_STEP, RANK_STATS };

static ddp_status write_metrics(ddp_trainer *t, const ddp_step_stats *st, const step_report *r) {
    json_t *o = json_object();
    if (!o) return DDP_FAIL(DDP_ERR_INTERNAL, "metrics: could not build the JSON record");
    json_object_set_new(o, "step", json_integer((json_int_t)st->step));
    json_object_set_new(o, "epoch", json_integer((json_int_t)st->epoch));
    const struct {
        const char *key;
        double value;
    } nums[] = {{"loss", st->loss},
                {"lr", (double)st->lr},
                {"samples_per_s", r->samples_per_s},
                {"t_forward", st->t_forward},
                {"t_backward", st->t_backward},
                {"t_allreduce", st->t_allreduce},
                {"t_allgather", st->t_allgather},
                {"t_optim", st->t_optim},
                {"t_step", st->t_step},
                {"t_exposed_comm", st->t_exposed},
                {"t_comm_cpu", st->t_comm_cpu},
                {"grad_norm", st->grad_norm},
                {"t_gns", st->t_gns}};
    if (st->gns_valid) {
        json_object_set_new(o, "gns_b_simple", number(st->gns_b_simple));
        json_object_set_new(o, "gns_g2", number(st->gns_g2));
        json_object_set_new(o, "gns_trace", number(st->gns_trace));
    }
    json_object_set_new(o, "batch", json_integer((json_int_t)t->cfg.global_batch));
    json_object_set_new(o, "samples", json_integer((json_int_t)t->samples));
    json_object_set_new(o, "train_s", number(r->train_s));
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++)
        json_object_set_new(o, nums[i].key, number(nums[i].value));
    if (t->skipped_steps > 0)
        json_object_set_new(o, "skipped_steps", json_integer(t->skipped_steps));
    int tokens = t->src->ops->positions(t->src) > 1;
    if (tokens) json_object_set_new(o, "tokens_per_s", number(r->tokens_per_s));
    if (r->mfu >= 0.0) json_object_set_new(o, "mfu", number(r->mfu));
    /* Per rank, in rank order: memory and the phases the straggler report compares. */
    static const struct {
        const char *key;
        int at;
    } per_rank[] = {{"peak_rss_mb", RANK_RSS},
                    {"t_forward_ranks", RANK_FORWARD},
                    {"t_backward_ranks", RANK_BACKWARD},
                    {"t_data_ranks", RANK_DATA},
                    {"t_step_ranks", RANK_STEP}};
    for (size_t k = 0; k < sizeof per_rank / sizeof *per_rank; k++) {
        json_t *a = json_array();
        for (int i = 0; a && i < t->world; i++)
            json_array_append_new(a, number(r->ranks[i * RANK_STATS + per_rank[k].at]));
        if (a) json_object_set_new(o, per_rank[k].key, a);
    }
    if (r->straggler)
        json_object_set_new(o, "straggler",
                            json_pack("{s:i, s:s, s:f, s:f, s:i}", "rank", t->straggler.rank,
                                      "phase", ddp_enum_name(ddp_phase_names, t->straggler.phase),
                                      "t_phase", t->straggler.time, "t_median", t->straggler.median,
                                      "logging_steps", t->straggler.streak));
    if (r->evaluated && tokens) {
        /* Byte-level vocabulary: the loss per byte in bits is the loss in nats / ln 2. */
        json_object_set_new(o, "val_loss", number(r->eval_loss));
        json_object_set_new(o, "val_bpb", number(r->eval_loss / M_LN2));
        json_object_set_new(o, "val_accuracy", number(r->eval_accuracy));
    } else if (r->evaluated) {
        json_object_set_new(o, "test_accuracy", number(r->eval_accuracy));
        json_object_set_new(o, "test_loss", number(r->eval_loss));
    }
    int rc = json_dumpf(o, t->metrics, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(o);
    if (rc != 0 || fputc('\n', t->metrics) == EOF || fflush(t->metrics) != 0)
        return DDP_FAIL(DDP_ERR_IO, "metrics: could not write to %s", t->cfg.metrics_path);
    return DDP_OK;
}

/* The rate of matrix products this rank could reach, for MFU: measured in the run's
 * precision with the rank's threads, at the model's own largest product and at a large
 * square, the higher of the two (a step's products cannot beat both, so MFU stays under
 * 100%); 0 when it could not be measured. */
static double measure_peak(ddp_trainer *t) {
    int M, N, K, sq = ddp_backend_is_host(t->backend) ? 1024 : 8192;
    ddp_model_largest_product(t->model, t->cfg.micro_batch, &M, &N, &K);
    double shape = 0.0, square = 0.0;
    ddp_status s = ddp_backend_gemm_peak(t->backend, M, N, K, 1.0, &shape);
    if (s == DDP_OK) s = ddp_backend_gemm_peak(t->backend, sq, sq, sq, 1.0, &square);
    if (s != DDP_OK) {
        ddp_log_warn("could not measure the matrix-product peak: %s (MFU not reported)",
                     ddp_error_message());
        ddp_error_clear();
        return 0.0;
    }
    double peak = shape > square ? shape : square;
    if (!t->cfg.quiet)
        ddp_log_info("matrix-product peak %.1f GFLOP/s per rank in %s (measured: the model's "
                     "largest product %dx%dx%d %.1f, a %d-cube %.1f), x %d rank(s) for MFU",
                     peak / 1e9, ddp_math_names[ddp_backend_math(t->backend)], M, N, K, shape / 1e9,
                     sq, square / 1e9, t->world);
    return peak;
}

/* One progress line and one metrics record. */
static ddp_status report(ddp_trainer *t, const ddp_step_stats *st, const step_report *r,
                         double eta) {
    const ddp_train_config *c = &t->cfg;
    char eta_s[32], rate[64], mfu[32] = "";
    format_eta(eta, eta_s, sizeof eta_s);
    if (t->src->ops->positions(t->src) > 1)
        snprintf(rate, sizeof rate, "%.0f tok/s", r->tokens_per_s);
    else
        snprintf(rate, sizeof rate, "%.0f samples/s", r->samples_per_s);
    if (r->mfu >= 0.0) snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * r->mfu);
    char gns[48], slow[160] = "";
    ddp_trainer_gns_text(st, gns, sizeof gns);
    if (r->straggler) {
        slow[0] = ' ';
        slow[1] = '|';
        slow[2] = ' ';
        ddp_straggler_text(&t->straggler, slow + 3, sizeof slow - 3);
    }
    if (!c->quiet)
        ddp_log_info("step %lld/%lld | epoch %.2f | loss %.4f | lr %.5f%s | %s%s | left %s%s",
                     (long long)t->step, (long long)t->total_steps, ddp_trainer_epoch_progress(t),
                     st->loss, st->lr, gns, rate, mfu, eta_s, slow);
    if (t->metrics) DDP_CHECK(write_metrics(t, st, r));
    return DDP_OK;
}

/* What each rank holds under the chosen settings, before the first step. */
static void log_memory(const ddp_trainer *t) {
    ddp_memory_use m;
    ddp_trainer_memory(t, 0, &m);
    size_t whole = t->num_params * sizeof(float);
    char params[96] = "", grads[96] = "", optim[96] = "";
    /* Parameters held in part (ZeRO-3): the shard and the units gathered at once. */
    snprintf(params, sizeof params, m.params < whole ? "%.1f MB at most of %.1f MB" : "%.1f MB",
             (double)m.params / 1e6, (double)whole / 1e6);
    if (m.params_bf16)
        snprintf(params + strlen(params), sizeof params - strlen(params), " + %.1f MB bf16 copy",
                 (double)m.params_bf16 / 1e6);
    if (m.grads < whole)
        snprintf(grads, sizeof grads, "%.1f MB in flight at most", (double)m.grads / 1e6);
    else
        snprintf(grads, sizeof grads, "%.1f MB%s", (double)m.grads / 1e6,
                 m.grad_shard ? "" : " (the all-reduced buffer)");
    if (m.grad_shard)
        snprintf(grads + strlen(grads), sizeof grads - strlen(grads), " + %.1f MB shard",
                 (double)m.grad_shard / 1e6);
    snprintf(optim, sizeof optim,
             m.optim < m.optim_full ? "%.1f MB (1/%d shard of %.1f MB)" : "%.1f MB",
             (double)m.optim / 1e6, t->world, (double)m.optim_full / 1e6);
    ddp_log_info("memory per rank (--zero %d): parameters %s, gradients %s, optimizer state %s, "
                 "activations %.1f MB",
                 t->cfg.zero, params, grads, optim, (double)m.activations / 1e6);
}

/* Means over the timed steps since the last logging step, for the straggler report. */
typedef struct {
    double sum[RANK_STATS];
    int steps;
} phase_window;

static void window_add(phase_window *w, const ddp_step_stats *st) {
    if (!st->timed) return;
    w->sum[RANK_FORWARD] += st->t_forward;
    w->sum[RANK_BACKWARD] += st->t_backward;
    w->sum[RANK_DATA] += st->t_data;
    w->sum[RANK_STEP] += st->t_step;
    w->steps++;
}

/* Gathers every rank's peak resident memory and phase times, updates the straggler report
 * and reports the step. COLLECTIVE on the control communicator: all ranks reach it at the
 * same steps, the logged ones (log_every is in the configuration they agreed on), so other
 * steps pay no collective. */
static ddp_status gather_and_report(ddp_trainer *t, const ddp_step_stats *st, step_report *r,
                                    phase_window *w, double eta) {
    double mine[RANK_STATS];
    for (int k = 0; k < RANK_STATS; k++)
        mine[k] = w->steps > 0 ? w->sum[k] / w->steps : 0.0;
    mine[RANK_RSS] = ddp_peak_rss_mb();
    memset(w, 0, sizeof *w);
    double *all = calloc((size_t)t->world * RANK_STATS, sizeof *all);
    double *phases = calloc((size_t)t->world * DDP_PHASE_COUNT, sizeof *phases);
    double *steps = calloc((size_t)t->world, sizeof *steps);
    ddp_status s =
        all && phases && steps ? DDP_OK : DDP_FAIL(DDP_ERR_NOMEM, "metrics: out of memory");
    /* Every rank reaches this at the logged steps (see above). */
    if (s == DDP_OK) s = ddp_comm_allgather(t->ctrl, mine, all, RANK_STATS, DDP_F64);
    if (s == DDP_OK) {
        for (int q = 0; q < t->world; q++) {
            phases[q * DDP_PHASE_COUNT + DDP_PHASE_FORWARD] = all[q * RANK_STATS + RANK_FORWARD];
            phases[q * DDP_PHASE_COUNT + DDP_PHASE_BACKWARD] = all[q * RANK_STATS + RANK_BACKWARD];
            phases[q * DDP_PHASE_COUNT + DDP_PHASE_DATA] = all[q * RANK_STATS + RANK_DATA];
            steps[q] = all[q * RANK_STATS + RANK_STEP];
        }
        /* The same numbers on every rank: every rank keeps the same report. */
        int was = t->straggler.streak >= DDP_STRAGGLER_LOGS, who = t->straggler.rank;
        r->straggler = ddp_straggler_update(&t->straggler, phases, steps, t->world);
        if (r->straggler && (!was || who != t->straggler.rank) && t->rank == 0) {
            char text[160];
            ddp_straggler_text(&t->straggler, text, sizeof text);
            ddp_log_warn("%s: more than %.0f%% slower than the median rank, which every rank "
                         "waits for at each all-reduce",
                         text, 100.0 * (DDP_STRAGGLER_RATIO - 1.0));
        }
        r->ranks = all;
        s = report(t, st, r, eta);
    }
    free(all);
    free(phases);
    free(steps);
    r->ranks = NULL;
    DDP_CHECK(s);
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
    size_t spe = t->src->ops->cursor(t->src).steps_per_epoch;
    size_t positions = t->src->ops->positions(t->src);
    if (!c->quiet)
        ddp_log_info("training %s (%zu parameters) on %d rank(s), %s backend, %s comm%s: batch "
                     "%zu = %zu micro x %d accum x %d ranks%s, %lld steps (%zu per epoch)",
                     ddp_model_describe(t->model), t->num_params, t->world,
                     ddp_backend_name(t->backend), ddp_comm_name(t->comm),
                     ddp_comm_hierarchical(t->comm) ? " (hierarchical)" : "", c->global_batch,
                     c->micro_batch, c->accum, t->world,
                     positions > 1 ? " of windows of the context length" : "",
                     (long long)t->total_steps, spe);
    if (!c->quiet && t->rank == 0) log_memory(t);
    /* Emulated bf16 computes what bf16 hardware would, slower than fp32 (measured: 0.7-0.9x,
     * bench/results/mixed-precision.md): worth saying, on every rank's behalf once. */
    if (!c->quiet && t->rank == 0 && ddp_backend_math(t->backend) == DDP_MATH_BF16 &&
        !ddp_backend_bf16_native(t->backend))
        ddp_log_warn("the bf16 products are emulated on fp32 kernels (this CPU has neither "
                     "AVX512-BF16 nor AMX, or DDP_BF16_KERNELS=emulate): the numbers of bf16 "
                     "hardware, but slower than --precision fp32, which is faster here");
    /* MFU needs the peak: measured once, where someone reads it. */
    if ((!c->quiet || c->metrics_path[0]) && t->peak_flops == 0.0) t->peak_flops = measure_peak(t);
    /* Training costs about 3 forward passes (forward, and backward's two products). */
    double train_flops = 3.0 * ddp_model_flops_per_sample(t->model);
    double accuracy = -1.0, loss = 0.0;
    int loss_seen = 0;
    double window_start = ddp_time_now(), run_start = window_start;
    int64_t window_steps = 0, first_step = t->step, window_samples = t->samples;
    /* Seconds spent evaluating in the window: not training, so not in its throughput. */
    double eval_time = 0.0, eval_total = 0.0;
    phase_window phases = {0};
    while (t->step < t->total_steps) {
        ddp_step_stats st;
        ddp_watchdog_set_step(t->step + 1); /* named if a collective of this step hangs */
        DDP_CHECK(ddp_trainer_step(t, &st));
        window_steps++;
        window_add(&phases, &st);
        /* The cursor is at the start of an epoch (also when the batch has changed). */
        int epoch_end = spe > 0 && t->src->ops->cursor(t->src).step == 0;
        int eval_now = (c->eval_every > 0 ? t->step % c->eval_every == 0 : epoch_end) ||
                       t->step == t->total_steps;
        step_report r = {.mfu = -1.0};
        if (c->check_sync > 0 && t->step % c->check_sync == 0) DDP_CHECK(ddp_trainer_check_sync(t));
        if (eval_now) {
            /* The last evaluation covers the whole set; earlier ones may take a part. */
            double e0 = ddp_time_now();
            DDP_CHECK(ddp_trainer_evaluate_part(t, t->step == t->total_steps, &accuracy, &loss));
            eval_time += ddp_time_now() - e0;
            eval_total += ddp_time_now() - e0;
            loss_seen = 1;
            r.evaluated = 1;
            r.eval_accuracy = accuracy;
            r.eval_loss = loss;
            char what[160];
            ddp_trainer_eval_text(t, accuracy, loss, what, sizeof what);
            if (!c->quiet)
                ddp_log_info("eval step %lld epoch %.2f: %s", (long long)t->step,
                             ddp_trainer_epoch_progress(t), what);
        }
        if (st.logged) { /* the loss was reduced over all ranks (and may be NaN or inf) */
            double now = ddp_time_now();
            r.samples_per_s =
                (double)(t->samples - window_samples) / (now - window_start - eval_time);
            r.tokens_per_s = r.samples_per_s * (double)positions;
            if (t->peak_flops > 0.0) {
                /* A step is products and more, so its rate is a measurement of the peak too:
                 * where it beats the measured one (by the noise of the two), the peak is the
                 * step's, and MFU cannot pass 100%. */
                double rate = train_flops * r.samples_per_s / (double)t->world;
                if (rate > t->peak_flops) {
                    if (!c->quiet)
                        ddp_log_info("training reached %.1f GFLOP/s per rank, past the measured "
                                     "matrix-product peak of %.1f: the peak is now that rate",
                                     rate / 1e9, t->peak_flops / 1e9);
                    t->peak_flops = rate;
                }
                r.mfu = rate / t->peak_flops;
            }
            double eta = (now - run_start) / (double)(t->step - first_step) *
                         (double)(t->total_steps - t->step);
            r.train_s = now - run_start - eval_total;
            DDP_CHECK(gather_and_report(t, &st, &r, &phases, eta));
            window_start = now;
            window_steps = 0;
            window_samples = t->samples;
            eval_time = 0.0;
        }
        DDP_CHECK(ddp_checkpoint_run_step(t));
        /* The accuracy was reduced over all ranks: every rank stops at the same step. */
        if (c->target_accuracy > 0.0f && r.evaluated && accuracy >= c->target_accuracy) {
            if (!c->quiet)
                ddp_log_info("test accuracy %.4f reached the target %.4f at step %lld: stopping",
                             accuracy, c->target_accuracy, (long long)t->step);
            break;
        }
        /* Likewise the loss, reduced over all ranks. */
        if (c->target_loss > 0.0f && r.evaluated && loss <= c->target_loss) {
            if (!c->quiet)
                ddp_log_info("evaluation loss %.4f reached the target %.4f at step %lld: stopping",
                             loss, c->target_loss, (long long)t->step);
            break;
        }
    }
    if (final_accuracy) *final_accuracy = accuracy;
    t->last_eval_loss = loss_seen ? loss : -1.0;
    return DDP_OK;
}
