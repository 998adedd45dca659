/*
 * ddp-bench train: ddp_trainer_step on the model's synthetic data where its source has
 * some (labelled images with the shape of Fashion-MNIST: 784 features, 10 classes, 60000
 * samples), or on the real data when --data is given or the source has none (a text);
 * reports throughput and per-phase step times as JSON. Takes every ddp-train option and
 * its own (ddp_cli_parse_bench_train).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct {
    double fwd, bwd, ar, exposed, optim, step, comm_cpu, gather, data;
} phase_sums;

int ddp_bench_train_main(ddp_comm *ctrl, int argc, char **argv) {
    int rank = ddp_comm_rank(ctrl), world = ddp_comm_size(ctrl);
    ddp_cli_bench_train_options a;
    ddp_status s = ddp_cli_parse_bench_train(argc, argv, &a);
    if (!ddp_cli_phase_ok(ctrl, s, "parsing options")) {
        if (rank == 0 || s != DDP_OK) fprintf(stderr, "usage: see ddp-bench train --help\n");
        return DDP_CLI_EXIT_USAGE;
    }
    if (a.cli.help || a.cli.version) {
        if (rank == 0 && a.cli.help) ddp_cli_bench_train_usage(stdout, a.cli.train.model.kind);
        if (rank == 0 && a.cli.version) printf("ddp-bench 0.1.0\n");
        return 0;
    }
    if (a.cli.verbose) ddp_log_show_traces(1);
    ddp_train_config *cfg = &a.cli.train;
    /* One step more than are run keeps every timed step off the logging path (which adds
     * a reduction of the loss). */
    cfg->max_steps = a.warmup_steps + a.bench_steps + 1;
    cfg->log_every = (int)cfg->max_steps + 1;
    cfg->quiet = 1;
    cfg->check_sync = 0;
    cfg->reducer.skip = a.no_allreduce;
    s = ddp_train_config_resolve(cfg, world);
    if (!ddp_cli_phase_ok(ctrl, s, "checking the batch configuration")) return DDP_CLI_EXIT_USAGE;
    /* From here on a rank that dies or hangs ends the job after --timeout seconds. */
    if (!ddp_cli_start_watchdog(ctrl, cfg->timeout_s)) return 1;
    int flight = ddp_cli_start_flight(ctrl, cfg);
    if (flight != 0) return flight;

    ddp_backend *backend = NULL;
    ddp_comm *comm = NULL;
    ddp_trainer *trainer = NULL;
    ddp_train_data data = {0};
    json_t *o = NULL;
    int code = 1;
    if (!ddp_cli_create_backend(ctrl, cfg, &backend)) goto done;
    /* Synthetic data unless --data is given or the model's source has none (a language
     * model reads its text, the default corpus without --text). */
    int synthetic = 0;
    if (!a.have_data) {
        s = ddp_train_data_synthetic(cfg, &data);
        synthetic = s == DDP_OK;
        if (s == DDP_ERR_UNSUPPORTED) {
            ddp_error_clear();
            s = DDP_OK;
        }
        if (!ddp_cli_phase_ok(ctrl, s, "preparing the data")) goto done;
    }
    if (!synthetic && !ddp_cli_load_data(ctrl, cfg, &data)) goto done;
    if (!ddp_cli_create_trainer(ctrl, cfg, backend, &data, &comm, &trainer)) goto done;

    ddp_step_stats st;
    for (int i = 0; s == DDP_OK && i < a.warmup_steps; i++)
        s = ddp_trainer_step(trainer, &st);
    /* --trace records the timed steps only. */
    if (s == DDP_OK && !ddp_cli_open_trace(ctrl, cfg->trace_path)) goto done;
    /* All ranks start the timed steps together. */
    if (s == DDP_OK) s = ddp_comm_barrier(ctrl);
    phase_sums sum = {0};
    double t0 = ddp_time_now(), cpu0 = ddp_thread_cpu_time();
    for (int i = 0; s == DDP_OK && i < a.bench_steps; i++) {
        s = ddp_trainer_step(trainer, &st);
        sum.fwd += st.t_forward;
        sum.bwd += st.t_backward;
        sum.ar += st.t_allreduce;
        sum.exposed += st.t_exposed;
        sum.optim += st.t_optim;
        sum.step += st.t_step;
        sum.comm_cpu += st.t_comm_cpu;
        sum.gather += st.t_allgather;
        sum.data += st.t_data;
    }
    if (s == DDP_OK) s = ddp_backend_sync(backend);
    if (s == DDP_OK) s = ddp_trace_close();
    /* The step ends on every rank when the slowest rank's all-reduce ends; the barrier
     * is cheap next to a step. */
    if (s == DDP_OK) s = ddp_comm_barrier(ctrl);
    double wall = ddp_time_now() - t0, cpu = ddp_thread_cpu_time() - cpu0;
    if (s != DDP_OK) {
        ddp_log_current_error("training");
        ddp_cli_abort(ctrl, 1, "training failed");
    }
    /* Phase times: mean over steps and over ranks; the wall time: max over ranks. The
     * training thread's CPU seconds (mean too) are what a step costs in compute, which
     * other processes on the machine inflate less than they do the wall-clock times. */
    double v[10] = {sum.fwd,  sum.bwd,      sum.ar, sum.exposed, sum.optim,
                    sum.step, sum.comm_cpu, cpu,    sum.gather,  sum.data};
    s = ddp_comm_allreduce(ctrl, v, 10, DDP_F64, DDP_SUM);
    if (s == DDP_OK) s = ddp_bench_max_over_ranks(ctrl, &wall);
    /* Peak resident memory: the largest of any rank (all ranks reach this, as the above). */
    double rss = ddp_peak_rss_mb();
    if (s == DDP_OK) s = ddp_bench_max_over_ranks(ctrl, &rss);
    if (s != DDP_OK) {
        ddp_log_current_error("gathering the timings");
        ddp_cli_abort(ctrl, 1, "gathering the timings failed");
    }
    double per = 1.0 / ((double)a.bench_steps * world);
    for (int i = 0; i < 10; i++)
        v[i] *= per;
    double sps = (double)a.bench_steps * (double)cfg->global_batch / wall;
    ddp_model *m = ddp_trainer_model(trainer);
    double flops = ddp_model_flops_per_sample(m) * 3.0 * sps;
    if (rank == 0) {
        o = json_object();
        json_object_set_new(o, "bench", json_string("train"));
        json_object_set_new(o, "model", json_string(ddp_model_describe(m)));
        json_object_set_new(o, "params", json_integer((json_int_t)ddp_model_num_params(m)));
        json_object_set_new(o, "recompute", json_boolean(cfg->model.recompute));
        json_object_set_new(o, "activation_bytes",
                            json_integer((json_int_t)ddp_model_activation_bytes(m)));
        const char *data_name = synthetic ? "synthetic" : ddp_train_data_name(cfg);
        json_object_set_new(o, "data", json_string(data_name));
        json_object_set_new(o, "ranks", json_integer(world));
        json_object_set_new(o, "threads", json_integer(ddp_backend_threads(backend)));
        json_object_set_new(o, "backend", json_string(ddp_backend_name(backend)));
        json_object_set_new(o, "comm", json_string(ddp_comm_name(comm)));
        json_object_set_new(o, "sleeping_wait", json_boolean(ddp_comm_sleeping_wait(comm)));
        json_object_set_new(o, "shared_gradients", json_boolean(ddp_trainer_grads_shared(trainer)));
        json_object_set_new(o, "hierarchical", json_boolean(ddp_comm_hierarchical(comm)));
        json_object_set_new(o, "global_batch", json_integer((json_int_t)cfg->global_batch));
        json_object_set_new(o, "micro_batch", json_integer((json_int_t)cfg->micro_batch));
        json_object_set_new(o, "accum", json_integer(cfg->accum));
        json_object_set_new(o, "zero", json_integer(cfg->zero));
        json_object_set_new(o, "overlap", json_boolean(cfg->reducer.overlap));
        json_object_set_new(o, "allreduce", json_boolean(!cfg->reducer.skip));
        json_object_set_new(
            o, "compress",
            json_string(ddp_enum_name(ddp_compress_names, (int)cfg->reducer.compress)));
        json_object_set_new(o, "compress_rank", json_integer(cfg->reducer.compress_rank));
        json_object_set_new(o, "compressing", json_boolean(ddp_trainer_compressing(trainer)));
        size_t wire_bytes;
        int wire_calls, buckets;
        ddp_trainer_wire(trainer, &wire_bytes, &wire_calls, &buckets);
        json_object_set_new(o, "grad_wire_bytes", json_integer((json_int_t)wire_bytes));
        json_object_set_new(o, "grad_collectives", json_integer(wire_calls));
        json_object_set_new(o, "buckets", json_integer(buckets));
        json_object_set_new(
            o, "progress",
            json_string(ddp_enum_name(ddp_progress_names, (int)cfg->reducer.progress)));
        json_object_set_new(o, "bucket_mb",
                            json_real((double)cfg->reducer.bucket_bytes / (1024.0 * 1024.0)));
        json_object_set_new(o, "warmup_steps", json_integer(a.warmup_steps));
        json_object_set_new(o, "bench_steps", json_integer(a.bench_steps));
        json_object_set_new(o, "samples_per_s", json_real(sps));
        json_object_set_new(o, "tokens_per_s", json_real(sps * (double)ddp_model_max_positions(m)));
        json_object_set_new(o, "t_data", json_real(v[9]));
        json_object_set_new(o, "t_forward", json_real(v[0]));
        json_object_set_new(o, "t_backward", json_real(v[1]));
        json_object_set_new(o, "t_allreduce", json_real(v[2]));
        json_object_set_new(o, "t_allgather", json_real(v[8]));
        json_object_set_new(o, "t_exposed", json_real(v[3]));
        json_object_set_new(o, "t_optim", json_real(v[4]));
        json_object_set_new(o, "t_step", json_real(v[5]));
        json_object_set_new(o, "t_comm_cpu", json_real(v[6]));
        json_object_set_new(o, "t_step_wall", json_real(wall / a.bench_steps));
        json_object_set_new(o, "t_step_cpu", json_real(v[7]));
        json_object_set_new(o, "exposed_fraction", json_real(v[5] > 0 ? v[3] / v[5] : 0.0));
        json_object_set_new(o, "model_flops_per_s", json_real(flops));
        json_object_set_new(o, "peak_rss_mb", json_real(rss));
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
        printf("\n");
        fflush(stdout);
        s = a.json[0] ? ddp_bench_write_json(o, a.json) : DDP_OK;
    }
    if (!ddp_cli_phase_ok(ctrl, s, "writing the results")) goto done;
    code = 0;
done:
    json_decref(o);
    ddp_trainer_free(trainer);
    ddp_comm_free(comm);
    ddp_train_data_free(&data);
    ddp_backend_free(backend);
    return code;
}
