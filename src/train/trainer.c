/*
 * The trainer: set-up (model, optimizer, sampler, data on the device, the check that
 * all ranks agree), one training step, evaluation, and the parameter sync check.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddp/powersgd.h"
#include "train/trainer_impl.h"

/* Every rank must run the same configuration on the same data with the same model, or
 * the collectives would mismatch; compare fingerprints and name the rank that differs. */
static ddp_status check_fingerprints(ddp_trainer *t) {
    char canon[2048];
    size_t len = ddp_train_config_canonical(&t->cfg, canon, sizeof canon);
    uint32_t fp = ddp_crc32(0, canon, len);
    const char *shape = ddp_model_describe(t->model);
    fp = ddp_crc32(fp, shape, strlen(shape));
    char data[256];
    size_t dlen = t->src->ops->identify(t->src, data, sizeof data);
    fp = ddp_crc32(fp, data, dlen);
    /* All ranks reach this comparison in ddp_trainer_create. */
    int first_bad = -1, n_bad = 0, mine_differs = 0;
    DDP_CHECK(ddp_comm_compare(t->ctrl, fp, &first_bad, &n_bad, &mine_differs));
    if (first_bad < 0) return DDP_OK;
    if (mine_differs)
        ddp_log_error("my configuration: %s | model %s | data %s", canon, shape, data);
    return DDP_FAIL(DDP_ERR_MISMATCH,
                    "rank %d (and %d rank(s) in all) runs a different configuration, model or "
                    "data than rank 0: every rank must get the same options and dataset",
                    first_bad, n_bad);
}

/* The ranges of the flat buffer that weight decay must leave alone (biases,
 * normalization, position embeddings), merged where adjacent; with a sharded optimizer,
 * their parts inside this rank's shard, relative to its start. */
static ddp_status set_decay(ddp_trainer *t) {
    int nv = ddp_model_num_views(t->model);
    size_t(*ranges)[2] = malloc((size_t)nv * sizeof *ranges);
    if (!ranges) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    size_t lo, len;
    ddp_sync_view(t->sync, &lo, &len);
    size_t hi = lo + len;
    int n = 0;
    for (int i = 0; i < nv; i++) {
        const ddp_param_view *v = ddp_model_view(t->model, i);
        size_t a = v->offset > lo ? v->offset : lo;
        size_t e = v->offset + v->count < hi ? v->offset + v->count : hi;
        if (v->decay || e <= a) continue;
        if (n > 0 && ranges[n - 1][0] + ranges[n - 1][1] == a - lo)
            ranges[n - 1][1] += e - a;
        else {
            ranges[n][0] = a - lo;
            ranges[n][1] = e - a;
            n++;
        }
    }
    ddp_status s = ddp_optim_set_no_decay(t->optim, (const size_t(*)[2])ranges, n);
    free(ranges);
    DDP_CHECK(s);
    return DDP_OK;
}

/* Everything in set-up that involves no collective: it may fail on one rank alone. */
static ddp_status setup_local(ddp_trainer *t, ddp_backend *b) {
    DDP_CHECK(ddp_train_config_resolve(&t->cfg, t->world));
    const ddp_source_ops *src = ddp_source_of(ddp_model_kind_data(t->cfg.model.kind));
    if (!src)
        return DDP_FAIL(DDP_ERR_INVALID_ARG, "--model %s: no data source for what it trains on",
                        ddp_model_kind_name(t->cfg.model.kind));
    DDP_CHECK(src->create(t, &t->data, &t->src));
    t->total_steps =
        t->cfg.max_steps > 0
            ? t->cfg.max_steps
            : (int64_t)t->cfg.epochs * (int64_t)t->src->ops->cursor(t->src).steps_per_epoch;
    t->cfg.sched.total_steps = t->total_steps;
    t->start_batch = t->cfg.global_batch;
    t->start_accum = t->cfg.accum;
    DDP_CHECK(ddp_trainer_batch_check(t));
    DDP_CHECK(ddp_model_create(b, &t->cfg.model, t->max_batch, &t->model));
    t->num_params = ddp_model_num_params(t->model);
    /* How the ranks keep in step: the stage's strategy, which also writes the initial
     * parameters (from the seed, the same on every rank) that this rank holds. */
    ddp_sync_options so = {.stage = t->cfg.zero,
                           .reducer = t->cfg.reducer,
                           .gathers = t->cfg.gathers,
                           .keep = t->cfg.keep_gathered,
                           .no_init = t->cfg.plan_only};
    DDP_CHECK(ddp_sync_create(&so, b, t->comm, t->ctrl, t->model, t->cfg.seed, &t->sync));
    size_t view_begin, view_len;
    ddp_sync_view(t->sync, &view_begin, &view_len);
    DDP_CHECK(ddp_optim_create(b, &t->cfg.optim, view_len, &t->optim));
    DDP_CHECK(set_decay(t));
    DDP_CHECK(ddp_backend_alloc(b, 2 * sizeof(float), (void **)&t->d_stats));
    DDP_CHECK(ddp_backend_alloc(b, sizeof(double), (void **)&t->d_gns_sq));
    DDP_CHECK(ddp_backend_zero(b, t->d_gns_sq, sizeof(double)));
    return DDP_OK;
}

/* The set-up common to every source: local parts, agreement, fingerprints, shared
 * gradients, the reducer. COLLECTIVE. */
static ddp_status create(ddp_trainer *t, ddp_backend *b, ddp_comm *comm, ddp_comm *ctrl,
                         ddp_trainer **out) {
    t->backend = b;
    t->comm = comm;
    t->ctrl = ctrl;
    t->last_eval_loss = -1.0;
    ddp_gns_ema_init(&t->gns, t->cfg.gns_ema);
    ddp_straggler_init(&t->straggler);
    t->rank = ddp_comm_rank(comm);
    t->world = ddp_comm_size(comm);
    /* What the flight recorder calls it (ctrl may be the same communicator). */
    if (comm != ctrl) ddp_comm_set_name(comm, "gradients");
    ddp_status s = setup_local(t, b);
    if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
    /* All ranks agree on the outcome before the first collective of the run, so a rank
     * that failed alone does not leave the others waiting in it. */
    int failed;
    ddp_status agree = ddp_comm_agree(ctrl, s, &failed);
    if (s == DDP_OK && agree != DDP_OK) s = agree;
    if (s == DDP_OK && failed >= 0)
        s = DDP_FAIL(DDP_ERR_REMOTE, "rank %d failed to set up training (its message says why)",
                     failed);
    if (s == DDP_OK) s = check_fingerprints(t);
    if (s == DDP_OK && ddp_model_needs_comm(t->model)) {
        /* A communicator of the model's own (synchronized batch norm): its collectives run
         * inside forward and backward while the reducer's thread may be all-reducing
         * gradients on comm. Every rank creates it (the model's options are in the
         * fingerprint). */
        s = ddp_comm_create(ddp_comm_kind_of(comm), b, &t->model_comm);
        if (s == DDP_OK) {
            /* Batch norm is the one layer that communicates; the label names it in the
             * watchdog's messages and in DDP_INJECT_* ("bn_allreduce"). */
            ddp_comm_set_label(t->model_comm, "bn", "batch-norm statistics");
            ddp_model_set_comm(t->model, t->model_comm);
        }
    }
    if (s == DDP_OK && ddp_sync_needs_gather_comm(t->sync)) {
        /* ZeRO-3 gathers the parameters on a thread of its own while the reducer's thread
         * sends gradients on comm: a communicator of its own. Every rank creates it (the
         * stage is in the fingerprint). The label names it in the watchdog's messages. */
        ddp_comm *gather = NULL;
        s = ddp_comm_create(ddp_comm_kind_of(comm), b, &gather);
        if (s == DDP_OK) {
            ddp_comm_set_label(gather, "gather", "parameters' gathers");
            ddp_sync_set_gather_comm(t->sync, gather);
        }
    }
    /* Gradients in memory that the node's ranks share where the strategy keeps them whole
     * and the comm offers it: the all-reduce then sums them in place, without messages.
     * COLLECTIVE over comm. */
    if (s == DDP_OK) s = ddp_sync_share_gradients(t->sync);
    if (s == DDP_OK) {
        /* Local again (a thread that could not start), so agreed on once more. */
        s = ddp_sync_start(t->sync);
        if (s != DDP_OK) ddp_error_trace(__FILE__, __LINE__);
        agree = ddp_comm_agree(ctrl, s, &failed);
        if (s == DDP_OK && agree != DDP_OK) s = agree;
        if (s == DDP_OK && failed >= 0)
            s = DDP_FAIL(DDP_ERR_REMOTE,
                         "rank %d failed to set up the gradient reducer (its message says why)",
                         failed);
    }
    if (s != DDP_OK) {
        ddp_trainer_free(t);
        return s;
    }
    *out = t;
    return DDP_OK;
}

ddp_status ddp_trainer_create(const ddp_train_config *cfg, ddp_backend *b, ddp_comm *comm,
                              ddp_comm *ctrl, const ddp_train_data *data, ddp_trainer **out) {
    *out = NULL;
    ddp_trainer *t = calloc(1, sizeof *t);
    if (!t) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
    t->cfg = *cfg;
    t->data = *data;
    return create(t, b, comm, ctrl, out);
}

ddp_status ddp_trainer_settle(ddp_trainer *t) {
    if (t->sync) DDP_CHECK(ddp_sync_settle(t->sync));
    return DDP_OK;
}

void ddp_trainer_free(ddp_trainer *t) {
    if (!t) return;
    ddp_backend *b = t->backend;
    /* A parameter gather in flight is a collective the other ranks are in too. */
    if (ddp_trainer_settle(t) != DDP_OK) ddp_log_current_error("freeing the trainer");
    if (t->src) t->src->ops->free(t->src, b);
    ddp_backend_dealloc(b, t->d_stats);
    ddp_backend_dealloc(b, t->d_gns_sq);
    free(t->h_params);
    ddp_sync_free(t->sync);
    ddp_comm_free(t->model_comm);
    ddp_optim_free(t->optim);
    ddp_model_free(t->model);
    if (t->metrics) fclose(t->metrics);
    free(t);
}

void ddp_trainer_memory(const ddp_trainer *t, int ranks, ddp_memory_use *m) {
    size_t f = sizeof(float), states = (size_t)ddp_optim_num_states(t->optim);
    ddp_sync_memory sm;
    ddp_sync_memory_use(t->sync, ranks, &sm);
    memset(m, 0, sizeof *m);
    m->params = sm.params;
    m->params_bf16 = sm.params_bf16;
    m->grads = sm.grads;
    m->grad_shard = sm.grad_shard;
    /* This run: what this rank allocated. A plan: the largest shard of `ranks`. */
    m->optim = states * (ranks > 0 && ranks != t->world ? sm.view : ddp_optim_size(t->optim)) * f;
    m->optim_full = states * t->num_params * f;
    m->activations = ddp_model_activation_bytes(t->model);
    m->comm = sm.comm;
}

int64_t ddp_trainer_total_steps(const ddp_trainer *t) { return t->total_steps; }
ddp_model *ddp_trainer_model(ddp_trainer *t) { return t->model; }
int ddp_trainer_grads_shared(const ddp_trainer *t) { return ddp_sync_grads_shared(t->sync); }
int ddp_trainer_compressing(const ddp_trainer *t) {
    ddp_powersgd *p = ddp_sync_compressor(t->sync);
    return p && ddp_powersgd_compressing(p);
}
void ddp_trainer_wire(const ddp_trainer *t, size_t *bytes, int *collectives, int *buckets) {
    ddp_sync_wire(t->sync, bytes, collectives, buckets);
}
double ddp_trainer_last_eval_loss(const ddp_trainer *t) { return t->last_eval_loss; }

void ddp_trainer_eval_text(const ddp_trainer *t, double accuracy, double loss, char *buf,
                           size_t cap) {
    t->src->ops->eval_text(accuracy, loss, buf, cap);
}

ddp_status ddp_trainer_get_params(ddp_trainer *t, float *host) {
    DDP_CHECK(ddp_trainer_settle(t));
    size_t chunk = ddp_sync_read_chunk(t->sync);
    /* In pieces that every rank asks for alike (they are gathered where sharded). */
    for (size_t a = 0; a < t->num_params; a += chunk) {
        size_t b = t->num_params - a < chunk ? t->num_params : a + chunk;
        DDP_CHECK(ddp_sync_read_params(t->sync, a, b, host + a));
    }
    return DDP_OK;
}

/* Reads the device stats (loss sum, correct count) and sums them over all ranks.
 * COLLECTIVE over ctrl. */
static ddp_status reduce_stats(ddp_trainer *t, double out[4]) {
    float h[2];
    DDP_CHECK(ddp_backend_copy(t->backend, h, t->d_stats, sizeof h, DDP_COPY_D2H));
    out[0] = h[0];
    out[1] = h[1];
    /* The noise scale's moving averages ride along (noise_scale.c). */
    ddp_trainer_gns_pack(t, out + 2);
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, out, 4, DDP_F64, DDP_SUM));
    return DDP_OK;
}

ddp_status ddp_trainer_step(ddp_trainer *t, ddp_step_stats *st) {
    ddp_backend *b = t->backend;
    const ddp_train_config *c = &t->cfg;
    /* Scaling by 1 / (predictions in the global batch) here makes the summed all-reduce
     * the gradient of the mean loss, with no separate division. */
    float grad_scale = 1.0f / (float)(c->global_batch * t->src->ops->positions(t->src));
    memset(st, 0, sizeof *st);
    /* Phase timings need the device to be idle at the boundaries; on the CPU that is
     * free, on a GPU it costs syncs, so only the logged steps pay for it there. */
    int log_step = (t->step + 1) % c->log_every == 0 || t->step + 1 == t->total_steps;
    int timed = ddp_backend_is_host(b) || log_step;
    double t0 = ddp_time_now(), t1;

    /* Loading the batch is the data phase (with each micro-batch's, below): a rank slow
     * at it is named by the straggler report (run.c). */
    ddp_comm_inject_delay(t->rank, "data");
    DDP_CHECK(t->src->ops->next(t->src, t, &t->epoch));
    double t_data = ddp_time_now() - t0;
    DDP_CHECK(ddp_backend_zero(b, t->d_stats, 2 * sizeof(float)));
    ddp_sync_stats cs = {0};
    DDP_CHECK(ddp_sync_step_begin(t->sync, t->step, c->accum));
    for (int k = 0; k < c->accum; k++) {
        t1 = ddp_time_now();
        ddp_batch batch;
        DDP_CHECK(t->src->ops->micro_batch(t->src, t, k, &batch));
        t_data += ddp_time_now() - t1;
        t1 = ddp_time_now();
        DDP_CHECK(ddp_trace_begin("forward", "compute"));
        DDP_CHECK(ddp_model_forward(t->model, &batch, DDP_MODE_TRAIN, grad_scale, t->d_stats));
        if (timed) DDP_CHECK(ddp_backend_sync(b));
        DDP_CHECK(ddp_trace_end());
        st->t_forward += ddp_time_now() - t1;
        DDP_CHECK(ddp_sync_forward_end(t->sync, k, &cs));
        t1 = ddp_time_now();
        DDP_CHECK(ddp_trace_begin("backward", "compute"));
        /* Whether this backward writes or adds to the gradients, and whether it hands each
         * bucket over as soon as the bucket's gradients are final (the sync says). */
        ddp_sync_pass pass;
        DDP_CHECK(ddp_sync_backward_begin(t->sync, k, &pass));
        ddp_grad_ready_fn ready = pass.ready;
        void *ready_ctx = pass.ctx;
        if (pass.send) ddp_trainer_gns_ready_fn(t, k, &ready, &ready_ctx);
        DDP_CHECK(ddp_model_backward(t->model, pass.first, ready, ready_ctx));
        DDP_CHECK(ddp_trainer_gns_after_backward(t, k));
        if (timed) DDP_CHECK(ddp_backend_sync(b));
        DDP_CHECK(ddp_trace_end());
        st->t_backward += ddp_time_now() - t1;
        if (!pass.send) continue;
        /* Every rank reaches this after the same micro-batches. */
        DDP_CHECK(ddp_trace_begin("allreduce wait", "comm"));
        DDP_CHECK(ddp_sync_backward_end(t->sync, &cs));
        if (timed) DDP_CHECK(ddp_backend_sync(b));
        DDP_CHECK(ddp_trace_end());
    }
    st->t_data = t_data;
    st->timed = timed;
    ddp_sync_gather_stats(t->sync, &cs);
    /* Waiting for parameters is communication, not compute. */
    st->t_forward -= cs.t_fwd_wait;
    st->t_backward -= cs.t_bwd_wait;
    st->t_allreduce = cs.t_comm;
    st->t_allgather = cs.t_gather;
    st->t_exposed = cs.t_exposed;
    st->t_comm_cpu = cs.t_comm_cpu;

    t1 = ddp_time_now();
    DDP_CHECK(ddp_trace_begin("optimizer", "compute"));
    /* The averaged gradients' norm is the same on every rank, so every rank reaches the
     * same verdict on it without communicating more. One pass gives it: it is logged, it
     * decides whether the gradients are finite, and clipping is its coefficient applied
     * inside the update. */
    DDP_CHECK(ddp_sync_grad_norm(t->sync, &st->grad_norm));
    st->lr = ddp_trainer_batch_lr(t);
    if (!isfinite(st->grad_norm)) {
        if (c->on_nonfinite == DDP_NONFINITE_ABORT)
            return DDP_FAIL(DDP_ERR_NONFINITE,
                            "step %lld: the averaged gradients are not finite (NaN or inf); lower "
                            "--lr, add --clip, or pass --on-nonfinite skip to skip such steps",
                            (long long)t->step + 1);
        st->skipped = 1;
        t->skipped_steps++;
        ddp_log_warn("step %lld: non-finite gradients, update skipped (%lld so far)",
                     (long long)t->step + 1, (long long)t->skipped_steps);
    } else {
        DDP_CHECK(
            ddp_sync_update(t->sync, t->optim, st->lr, ddp_clip_coef(st->grad_norm, c->clip_norm)));
    }
    DDP_CHECK(ddp_trainer_gns_observe(t, st));
    /* Running statistics of batch norm on a rank's own share of the batch differ between
     * ranks; their average keeps every rank's model, evaluation and checkpoint the same.
     * (With --sync-bn they come from the global batch and are the same already.) All ranks
     * reach this after every step when the model has buffers. */
    size_t nbuf = ddp_model_num_buffer_elems(t->model);
    if (nbuf > 0 && t->world > 1 && !t->model_comm)
        DDP_CHECK(ddp_comm_allreduce(t->comm, ddp_model_buffers(t->model), nbuf, DDP_F32, DDP_AVG));
    /* The parameters of the next forward start on their way (also after a skipped update,
     * so that the collectives never depend on a verdict). Every rank reaches this. */
    DDP_CHECK(ddp_sync_step_end(t->sync));
    if (timed) DDP_CHECK(ddp_backend_sync(b));
    DDP_CHECK(ddp_trace_end());
    st->t_optim = ddp_time_now() - t1;

    t->step++;
    t->samples += (int64_t)c->global_batch;
    st->step = t->step;
    st->epoch = t->epoch;
    if (log_step) {
        double sums[4];
        /* All ranks log on the same steps (log_every is in the fingerprint). */
        DDP_CHECK(reduce_stats(t, sums));
        ddp_trainer_gns_unpack(t, sums + 2, st);
        DDP_CHECK(ddp_trainer_batch_adapt(t, st));
        st->loss = sums[0] / ((double)c->global_batch * (double)t->src->ops->positions(t->src));
        st->logged = 1;
    }
    st->t_step = ddp_time_now() - t0;
    if (c->reducer.compress == DDP_COMPRESS_AUTO && !t->autoc.decided)
        DDP_CHECK(ddp_trainer_compress_auto(t, st));
    return DDP_OK;
}

ddp_status ddp_trainer_eval_forward(ddp_trainer *t, const ddp_batch *batch) {
    /* Where forward gathers parameters, every rank runs as many passes (the sync agrees). */
    DDP_CHECK(ddp_sync_eval_pass(t->sync));
    DDP_CHECK(ddp_model_forward(t->model, batch, DDP_MODE_EVAL, 0.0f, t->d_stats));
    return DDP_OK;
}

ddp_status ddp_trainer_evaluate_part(ddp_trainer *t, int full, double *accuracy, double *loss) {
    DDP_CHECK(ddp_trainer_settle(t));
    double sums[3] = {0.0, 0.0, 0.0};
    DDP_CHECK(t->src->ops->evaluate(t->src, t, sums, full));
    /* Passes without data while another rank still has one. Every rank reaches this. */
    DDP_CHECK(ddp_sync_eval_end(t->sync));
    /* Every rank evaluates at the same steps; its part of the split may be empty but it still
     * contributes to the sums. */
    DDP_CHECK(ddp_comm_allreduce(t->ctrl, sums, 3, DDP_F64, DDP_SUM));
    *accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0.0;
    *loss = sums[2] > 0 ? sums[0] / sums[2] : 0.0;
    return DDP_OK;
}

ddp_status ddp_trainer_evaluate(ddp_trainer *t, double *accuracy, double *loss) {
    DDP_CHECK(ddp_trainer_evaluate_part(t, 1, accuracy, loss));
    return DDP_OK;
}

ddp_status ddp_trainer_check_sync(ddp_trainer *t) {
    uint32_t crc = 0;
    /* Where each rank holds its own shard of the parameters (ZeRO-3) there is nothing of
     * them to compare. */
    if (ddp_sync_params_replicated(t->sync)) {
        if (!t->h_params) t->h_params = malloc(t->num_params * sizeof(float));
        if (!t->h_params) return DDP_FAIL(DDP_ERR_NOMEM, "trainer: out of memory");
        DDP_CHECK(ddp_trainer_get_params(t, t->h_params));
        crc = ddp_crc32(0, t->h_params, t->num_params * sizeof(float));
    } else {
        DDP_CHECK(ddp_trainer_settle(t));
    }
    /* The buffers (running statistics) must agree as well. */
    size_t nbuf = ddp_model_num_buffer_elems(t->model);
    if (nbuf > 0) {
        float *h = malloc(nbuf * sizeof *h);
        if (!h) return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
        ddp_status cs = ddp_backend_copy(t->backend, h, ddp_model_buffers(t->model),
                                         nbuf * sizeof *h, DDP_COPY_D2H);
        crc = ddp_crc32(crc, h, nbuf * sizeof *h);
        free(h);
        DDP_CHECK(cs);
    }
    uint32_t *all = calloc((size_t)t->world, sizeof *all);
    if (!all) return DDP_FAIL(DDP_ERR_NOMEM, "out of memory");
    ddp_status s = ddp_comm_allgather(t->ctrl, &crc, all, 1, DDP_U32);
    int bad = -1;
    for (int r = 1; s == DDP_OK && r < t->world; r++)
        if (all[r] != all[0]) {
            bad = r;
            break;
        }
    uint32_t c0 = all[0], cb = bad >= 0 ? all[bad] : 0;
    free(all);
    DDP_CHECK(s);
    if (bad >= 0)
        return DDP_FAIL(DDP_ERR_MISMATCH,
                        "parameters diverged after step %lld: rank %d's checksum %08x differs "
                        "from rank 0's %08x (a rank computed a different update)",
                        (long long)t->step, bad, cb, c0);
    return DDP_OK;
}
